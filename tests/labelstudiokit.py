"""A real Label Studio for tests: its cached venv, a server on a free port, our ML backend, the SDK driver.

    venv = label_studio_venv()                       # builds it once (tools/label_studio_env.py) or skips
    with label_studio(venv, tmp, documents) as ls:   # ls.url, ls.token, ls.username, ls.password
        with ml_backend(ls, tmp, port) as backend:   # `python -m app ml-backend` (backend.url, backend.auth)
            with sdk_driver(venv, ls) as sdk:        # sdk.call("create_project", title=..., ...)

Every server is a child in its own process group, waited for by its /health answering (no fixed
sleeps) and stopped by its process group (SIGTERM, then SIGKILL) - never by name.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.retrain.process import stop_group

REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).resolve().parent / "app" / "label_studio_driver.py"
BUILD_TIMEOUT_S = 1800
START_TIMEOUT_S = 300


def _env_tool():
    """tools/label_studio_env.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("label_studio_env", REPO / "tools" / "label_studio_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def built_label_studio_venv() -> Path:
    """The Label Studio venv if it is already built; skip otherwise (fast tests never build it)."""
    tool = _env_tool()
    folder = tool.venv_dir()
    if (tool.ready(folder) or {}).get("label_studio") != tool.VERSION:
        pytest.skip(f"the Label Studio test environment is not built yet ({folder}): make label-studio-env")
    return folder


def label_studio_venv() -> Path:
    """The Label Studio venv (built now if missing, a few minutes once); skip if it cannot be built."""
    done = subprocess.run([sys.executable, str(REPO / "tools" / "label_studio_env.py")], capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        pytest.skip(f"cannot build the Label Studio test environment: {done.stderr.strip().splitlines()[-1:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], log: Path, env: dict, cwd: Path | None = None) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)


def wait_up(url: str, process: subprocess.Popen, log: Path, auth=None, timeout: float = START_TIMEOUT_S) -> None:
    """Poll `url` until it answers 200; fail with the log's tail if the process ends or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{url} exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, auth=auth, timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"{url} did not come up in {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    token: str = ""
    username: str = ""
    password: str = ""
    auth: tuple[str, str] | None = None


@contextlib.contextmanager
def label_studio(venv: Path, tmp: Path, documents: Path):
    """Label Studio on a free 127.0.0.1 port: SQLite copied from the template, local files under `documents`."""
    data = tmp / "label-studio"
    shutil.copytree(venv / "template", data)
    account = json.loads((data / "credentials.json").read_text())
    port = free_port()
    env = _env_tool().quiet_env(data)
    env.update(LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true", LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(documents),
               ML_BLOCK_LOCAL_IP="false", SSRF_PROTECTION_ENABLED="false")  # the backend listens on 127.0.0.1
    log = tmp / "label-studio.log"
    process = start([str(venv / "bin" / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1",
                     "--port", str(port), "--data-dir", str(data), "--database", str(data / "label_studio.sqlite3"),
                     "--enable-legacy-api-token"], log, env)
    try:
        server = Server(f"http://127.0.0.1:{port}", process, log, account["token"], account["username"],
                        account["password"])
        wait_up(server.url + "/health", process, log)
        yield server
    finally:
        stop_group(process.pid, None, process)


@contextlib.contextmanager
def ml_backend(studio: Server, tmp: Path, *args: str):
    """`python -m app ml-backend` for `studio` on a free port with basic auth; extra `args` passed on."""
    port, auth = free_port(), ("label-studio", "backend-secret")
    env = dict(os.environ, LABEL_STUDIO_API_KEY=studio.token, BASIC_AUTH_USER=auth[0], BASIC_AUTH_PASS=auth[1],
               PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    log = tmp / "ml-backend.log"
    process = start([sys.executable, "-m", "app", "ml-backend", "--port", str(port), "--label-studio-url", studio.url,
                     "--workdir", str(tmp / "ml-backend"), *args], log, env, cwd=REPO)
    try:
        server = Server(f"http://127.0.0.1:{port}", process, log, auth=auth)
        wait_up(server.url + "/health", process, log, auth=auth)
        yield server
    finally:
        stop_group(process.pid, None, process, grace=30)


class Driver:
    """tests/app/label_studio_driver.py in Label Studio's venv, one JSON line per call."""

    def __init__(self, venv: Path):
        self.process = subprocess.Popen([str(venv / "bin" / "python"), str(DRIVER)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, start_new_session=True)

    def call(self, op: str, **arguments):
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            pytest.fail(f"the Label Studio SDK driver ended (exit {self.process.wait(10)}) during {op}")
        answer = json.loads(line)
        if not answer.pop("ok"):
            pytest.fail(f"{op}: {answer['error']}\n{answer.get('trace', '')}")
        return answer

    def close(self) -> None:
        self.process.stdin.close()
        stop_group(self.process.pid, None, self.process)


@contextlib.contextmanager
def sdk_driver(venv: Path, studio: Server | None = None):
    driver = Driver(venv)
    try:
        if studio is not None:
            driver.call("connect", url=studio.url, token=studio.token)
        yield driver
    finally:
        driver.close()
