"""Prediction at scale: images decoded ahead in worker threads, batches of one padded size, shares of a
torchrun job, results kept per batch so that a killed run resumes where it stopped.

    stream = decoded(paths, workers=2, depth=8)          # (path, image or ImageError), in order
    store = PartStore(Path("results.json"))              # results.json.parts/: run.json + part-*.json
    store.write(rank, [(key, entries), ...])             # after every batch, atomically
    store.merge(keys)                                    # every image's entries, in input order

Memory is bounded: at most `depth` decoded images wait in the prefetch queue and at most
`2 * batch_size` in the batcher, whatever the number of inputs.
"""
from __future__ import annotations

import json
import shutil
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .errors import UserError
from .io import atomic_write_json, remove_stale_temp_files
from .preprocess import ImageError, read_image, input_resized_shape

RUN_FILE = "run.json"


class PartsError(UserError):
    """A parts folder that cannot be resumed (another run's, or not ours)."""


def shard(items: list, rank: int, world_size: int) -> list:
    """This rank's share of `items`: every `world_size`-th item from index `rank` (same order)."""
    return items[rank::world_size]


def _read(path: Path) -> np.ndarray | ImageError:
    try:
        return read_image(path)
    except ImageError as e:
        return e


def decoded(paths: Iterable[Path], workers: int, depth: int) -> Iterator[tuple[Path, np.ndarray | ImageError]]:
    """(path, RGB uint8 image or the ImageError) for each path, in order, decoded by `workers`
    threads at most `depth` images ahead of the consumer (PIL decodes without holding the GIL, so
    the model runs while the next images are read). `workers=0` decodes in the caller's thread."""
    if workers == 0:
        for path in paths:
            yield path, _read(path)
        return
    it = iter(paths)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque((p, pool.submit(_read, p)) for p in islice(it, max(depth, 1)))
        while pending:
            path, future = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_read, nxt)))
            yield path, future.result()


class SizeBatcher:
    """Groups images into batches of one padded input size, so that a batch gives each image exactly
    the input it would have alone (no extra padding, same results as batch size 1 up to float
    rounding). At most `2 * batch_size` images wait; past that the fullest group goes out as it is.

        batcher = SizeBatcher(4, min_size=800, max_size=1333, divisibility=32)
        for batch in batcher.add(item, height, width): ...   # full batches
        for batch in batcher.flush(): ...                    # the rest, at the end
    """

    def __init__(self, batch_size: int, min_size: int, max_size: int, divisibility: int,
                 resize: str = "shortest_edge"):
        self.batch_size, self.min_size, self.max_size, self.divisibility = batch_size, min_size, max_size, divisibility
        self.resize = resize  # InputConfig.resize
        self.groups: dict[tuple[int, int], list] = {}

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        h, w = input_resized_shape(height, width, self.resize, self.min_size, self.max_size)
        d = max(self.divisibility, 1)
        return -(-h // d) * d, -(-w // d) * d

    def add(self, item: Any, height: int, width: int) -> list[list]:
        size = self.padded_size(height, width)
        group = self.groups.setdefault(size, [])
        group.append(item)
        ready = []
        if len(group) >= self.batch_size:
            ready.append(self.groups.pop(size))
        if sum(len(g) for g in self.groups.values()) > 2 * self.batch_size:
            fullest = max(self.groups, key=lambda k: len(self.groups[k]))
            ready.append(self.groups.pop(fullest))
        return ready

    def flush(self) -> list[list]:
        ready, self.groups = list(self.groups.values()), {}
        return ready


class PartStore:
    """`<output>.parts/`: what a run has finished, one atomically written file per batch.

    run.json holds the run's settings (a folder of another run's parts is refused, not mixed in);
    each part-<rank>-<id>.json holds {"images": [[key, [COCO entries]], ...]}. A part is either
    whole or absent, so a killed run loses at most the batches in flight. File names never repeat,
    so ranks and resumed runs never overwrite one another's parts.
    """

    def __init__(self, output: Path, command: str = "condinst predict"):
        self.output, self.command = Path(output), command
        self.folder = self.output.with_name(self.output.name + ".parts")

    def exists(self) -> bool:
        return self.folder.is_dir()

    def check(self, settings: dict) -> None:
        """Raise PartsError unless the folder is absent or holds parts of a run with `settings`."""
        if not self.exists():
            return
        try:
            stored = json.loads((self.folder / RUN_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            raise PartsError(f"{self.folder}: not a parts folder of `{self.command}` (no readable {RUN_FILE}); "
                             "move it away or choose another --output") from None
        if stored != settings:
            changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            raise PartsError(f"{self.folder}: parts of a run with other settings ({', '.join(changed)} differ); "
                             "run with the same settings to resume, or delete the folder to start over")

    def has_parts(self) -> bool:
        """Whether anything was finished (a part file exists; temporary files start with a dot)."""
        return self.exists() and next(self.folder.glob("part-*"), None) is not None

    def discard_if_empty(self) -> None:
        """Remove the folder when it holds no finished part: what a run that stopped before its first
        batch (a bad --weights, a model that fails on the first image) leaves is nothing to resume."""
        if self.exists() and not self.has_parts():
            self.remove()

    def start(self, settings: dict) -> None:
        """Create (or resume) the folder; temporary files of writes a kill interrupted are removed
        (rank 0 calls this before any rank of this run writes)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.folder)
        atomic_write_json(self.folder / RUN_FILE, settings)

    def write(self, rank: int, images: list[tuple[str, list[dict]]]) -> Path:
        path = self.folder / f"part-{rank}-{uuid.uuid4().hex}.json"
        atomic_write_json(path, {"images": [[key, entries] for key, entries in images]})
        return path

    def done(self) -> dict[str, list[dict]]:
        """Every finished image's entries by key (the first part naming an image wins)."""
        found: dict[str, list[dict]] = {}
        for path in sorted(self.folder.glob("part-*.json")) if self.exists() else []:
            for key, entries in json.loads(path.read_text())["images"]:
                found.setdefault(key, entries)
        return found

    def merge(self, keys: list[str]) -> tuple[list[dict], list[str]]:
        """(entries of `keys` in that order, each image once; the keys no part holds)."""
        done = self.done()
        missing = [k for k in keys if k not in done]
        return [entry for k in keys if k in done for entry in done[k]], missing

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
