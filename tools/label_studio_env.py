"""Build, once, the separate Label Studio environment the real-Label-Studio tests run against.

    python tools/label_studio_env.py          # prints the environment's folder; builds it first if missing
    make label-studio-env

Label Studio 1.23 and its SDK pin Django, NumPy 2.2 and OpenCV 4.12, which clash with our pins, so they
live in their own virtual environment under the user's cache folder
(``$XDG_CACHE_HOME/condinst-studio/label-studio-<version>``, or ``$CONDINST_LABEL_STUDIO_VENV``). Next
to the packages it keeps ``template/``: an empty, migrated SQLite database with one local test account
(``template/credentials.json``). A new Label Studio runs its ~200 database migrations first (2-3 minutes
on a busy machine); a copy of the template starts in about 20 s. ``ready.json`` records what was built
and how long it took; without it the folder counts as unbuilt and is rebuilt from scratch.
Exit code 1 with one ``error:`` line if the registry cannot be reached or the build fails.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "requirements-label-studio.txt"
VERSION = next(line.split("==")[1].strip() for line in REQUIREMENTS.read_text().splitlines()
               if line.startswith("label-studio=="))
READY = "ready.json"


def venv_dir() -> Path:
    if os.environ.get("CONDINST_LABEL_STUDIO_VENV"):
        return Path(os.environ["CONDINST_LABEL_STUDIO_VENV"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "condinst-studio" / f"label-studio-{VERSION}"


def quiet_env(data_dir: Path) -> dict[str, str]:
    """Label Studio's environment for tests: no update check, no analytics, its data in `data_dir`."""
    return dict(os.environ, LATEST_VERSION_CHECK="false", COLLECT_ANALYTICS="false", SENTRY_DSN="",
                FRONTEND_SENTRY_DSN="", LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
                LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true", PYTHONUNBUFFERED="1")


def ready(folder: Path) -> dict | None:
    try:
        return json.loads((folder / READY).read_text())
    except (OSError, ValueError):
        return None


def run(command: list[str], log: Path, env: dict | None = None, timeout: float = 1800) -> None:
    with open(log, "a") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if done.returncode != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        raise SystemExit(f"error: {' '.join(command[:4])} ... failed ({lines[-1] if lines else 'no output'}); "
                         f"see {log}")


def build(folder: Path) -> dict:
    """Create the venv, install the pinned packages and make the template database."""
    if folder.exists():
        if not (folder / "pyvenv.cfg").is_file() and any(folder.iterdir()):
            raise SystemExit(f"error: {folder} exists and is not a virtual environment; remove it or set "
                             "CONDINST_LABEL_STUDIO_VENV")
        shutil.rmtree(folder)  # an unfinished build of ours (no ready.json)
    folder.parent.mkdir(parents=True, exist_ok=True)
    log = folder.parent / f"{folder.name}.build.log"
    log.write_text("")
    start = time.monotonic()
    run([sys.executable, "-m", "venv", str(folder)], log)
    python = str(folder / "bin" / "python")
    run([python, "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)], log)
    installed = time.monotonic()
    account = {"username": "condinst-test@example.com", "password": secrets.token_urlsafe(12),
               "token": secrets.token_hex(20)}
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        data = Path(scratch) / "template"
        run([str(folder / "bin" / "label-studio"), "init", "--quiet", "--no-browser", "--data-dir", str(data),
             "--database", str(data / "label_studio.sqlite3"), "--username", account["username"], "--password",
             account["password"], "--user-token", account["token"], "--enable-legacy-api-token"], log,
            env=quiet_env(data))
        (data / "credentials.json").write_text(json.dumps(account))
        data.rename(folder / "template")
    record = {"label_studio": VERSION, "install_s": round(installed - start, 1),
              "template_s": round(time.monotonic() - installed, 1)}
    (folder / READY).write_text(json.dumps(record))
    return record


def main() -> int:
    folder = venv_dir()
    record = ready(folder)
    if record is None or record.get("label_studio") != VERSION:
        print(f"building the Label Studio {VERSION} test environment in {folder} (a few minutes, once)",
              file=sys.stderr, flush=True)
        record = build(folder)
        print(f"built: packages in {record['install_s']} s, template database in {record['template_s']} s",
              file=sys.stderr)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
