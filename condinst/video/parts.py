"""What a `python -m condinst video` run has finished, kept on disk so that a killed run resumes.

    store = VideoParts(Path("results.json"))     # results.json.parts/: run.json, part-*.jsonl, spool-*.sqlite
    store.prepare(settings, resume=False)        # checks: --resume needs it, a stopped run's needs --resume
    store.start(settings)                        # create (or resume) it; leftovers of a kill are removed
    spool = store.spool_path()                   # where the running video's masks wait (VideoTracks)
    store.write(key, entries)                    # a finished video's tracks, streamed, atomically
    store.done()                                 # {key: part file} of the finished videos
    store.merge(keys, output)                    # one results JSON, streamed, atomically; then remove()

The folder is condinst/scale.py's PartStore folder (run.json settings, refused when they differ); a
part here is one video: a JSON Lines file whose first line is {"key": ...} and each next line one
YouTube-VIS entry. Parts and the merged file are written through condinst.io.atomic_open, so a part
is whole or absent: a killed run redoes at most the video in flight. Memory stays bounded by one
track: entries are streamed in and out, never gathered in a list.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Iterable

from ..io import atomic_open
from ..scale import PartsError, PartStore


class VideoParts:
    def __init__(self, output: Path):
        self.parts = PartStore(output, command="condinst video")
        self.folder = self.parts.folder

    def exists(self) -> bool:
        return self.parts.exists()

    def check(self, settings: dict) -> None:
        """scale.PartsError unless the folder is absent or holds parts of a run with `settings`."""
        self.parts.check(settings)

    def prepare(self, settings: dict, resume: bool) -> None:
        """The checks before a run (scale.PartsError, one line): `resume` needs the folder; without it a
        folder holding finished videos is refused, and one that holds none (a run stopped before its first
        video: run.json and scratch) is removed. A folder of other settings, or not ours, is refused."""
        if resume and not self.exists():
            raise PartsError(f"--resume: nothing to resume ({self.folder} does not exist)")
        self.check(settings)
        if self.exists() and not resume:
            if self.done():
                raise PartsError(f"{self.folder}: holds the finished videos of a run that was stopped; add --resume "
                                 "to continue it, or delete the folder to start over")
            self.remove()

    def start(self, settings: dict) -> None:
        """Create (or resume) the folder; what a kill left half-written (temporary files, spools) goes."""
        self.parts.start(settings)
        for stale in self.folder.glob("spool-*.sqlite*"):
            stale.unlink(missing_ok=True)

    def spool_path(self) -> Path:
        return self.folder / f"spool-{uuid.uuid4().hex}.sqlite"

    def write(self, key: str, entries: Iterable[dict]) -> int:
        """A finished video's `entries` as one part file; returns how many were written."""
        count = 0
        with atomic_open(self.folder / f"part-{uuid.uuid4().hex}.jsonl", "w", encoding="utf-8") as f:
            f.write(json.dumps({"key": key}) + "\n")
            for entry in entries:
                f.write(json.dumps(entry) + "\n")
                count += 1
        return count

    def done(self) -> dict[str, Path]:
        """{video key: its part file} of every finished video (the first part naming a video wins)."""
        found: dict[str, Path] = {}
        for path in sorted(self.folder.glob("part-*.jsonl")) if self.exists() else []:
            with open(path, encoding="utf-8") as f:
                found.setdefault(json.loads(f.readline())["key"], path)
        return found

    def merge(self, keys: list[str], output: Path) -> tuple[int, list[str]]:
        """Write `output`: the JSON list of the entries of `keys`' parts, in that order, streamed line
        by line (the bytes `json.dump(entries)` writes). Returns (entries written, keys with no part)."""
        done = self.done()
        count = 0
        with atomic_open(output, "w", encoding="utf-8") as out:
            out.write("[")
            for key in keys:
                if key not in done:
                    continue
                with open(done[key], encoding="utf-8") as f:
                    f.readline()
                    for line in f:
                        out.write((", " if count else "") + line.rstrip("\n"))
                        count += 1
            out.write("]")
        return count, [k for k in keys if k not in done]

    def remove(self) -> None:
        self.parts.remove()
