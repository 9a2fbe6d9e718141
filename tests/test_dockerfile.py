"""Docker cannot run here: check the Dockerfile statically (every COPY source exists and is not
ignored, dependencies come from requirements.txt, non-root user, volume, health check, app entry)."""
from __future__ import annotations

import fnmatch
import json
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _instructions():
    lines, current = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            op, _, rest = current.partition(" ")
            lines.append((op.upper(), rest.strip()))
            current = ""
    return lines


def _ignored(path: str) -> bool:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    return any(fnmatch.fnmatch(path, p) or path.split("/")[0] == p for p in patterns)


def test_every_copied_file_exists_and_is_not_ignored():
    copies = [rest for op, rest in _instructions() if op == "COPY"]
    assert copies
    for rest in copies:
        parts = shlex.split(rest)
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        for src in sources:
            assert (REPO / src).exists(), f"COPY source {src} missing"
            assert not _ignored(src), f"COPY source {src} is excluded by .dockerignore"


def test_install_uses_requirements_and_app_is_entry_point():
    ins = _instructions()
    runs = " ".join(rest for op, rest in ins if op == "RUN")
    assert "pip install -r requirements.txt" in runs
    assert ins[0][0] == "FROM" and "cuda" in ins[0][1] and "runtime" in ins[0][1]
    users = [rest for op, rest in ins if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(op == "VOLUME" for op, _ in ins) and any(op == "HEALTHCHECK" for op, _ in ins)
    entry = json.loads(next(rest for op, rest in ins if op == "ENTRYPOINT"))
    assert entry[0] == "condinst-app" and "/data/workspace" in entry
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'condinst-app = "app.__main__:main"' in pyproject
