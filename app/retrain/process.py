"""The subprocesses of retraining jobs: started so they die with the app, found again by pid, stopped by group.

A step is ``python -m condinst <args>`` in a new session (its own process group, so stopping it stops
its data-loader workers too). On Linux the child first asks the kernel for PR_SET_PDEATHSIG =
SIGKILL, which fires when the *thread* that forked it ends: ``spawn`` must be called from a thread
that lives as long as the child (the job thread, which waits for it). A pid is identified by its
kernel start time, so a recorded pid that was reused by another process reads as dead.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# Run in the child before it becomes `python -m condinst ...`: ask for SIGKILL when the parent thread ends,
# and give up if the app already died between fork and prctl. The setting survives exec.
_LAUNCHER = (
    "import ctypes, os, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None).prctl(1, 9)\n"  # PR_SET_PDEATHSIG, SIGKILL
    "    if os.getppid() != int(sys.argv[1]):\n"
    "        os._exit(1)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'condinst', *sys.argv[2:]])\n")


def evaluate_args(job_dir: Path, weights: str, name: str, device: str) -> list[str]:
    """`condinst evaluate` of `weights` on the job's held-out images into <name>/results.json."""
    return ["evaluate", "--weights", weights, "--ann", str(job_dir / "val.json"),
            "--images", str(job_dir / "dataset" / "images"), "--output", str(job_dir / name / "results.json"),
            "--device", device, "--no-progress"]


def train_args(job_dir: Path, weights: str, max_iter: int, batch_size: int, device: str) -> list[str]:
    """`condinst train` of the job's schedule; metrics every 1% of the run, one checkpoint at the end."""
    return ["train", "--config", str(job_dir / "config.json"), "--train-ann", str(job_dir / "train.json"),
            "--train-images", str(job_dir / "dataset" / "images"), "--output-dir", str(job_dir / "train"),
            "--weights", weights, "--max-iter", str(max_iter), "--batch-size", str(batch_size), "--device", device,
            "--num-workers", "0" if device == "cpu" else "2", "--log-period", str(max(1, max_iter // 100)),
            "--checkpoint-period", str(max_iter), "--no-progress"]


def spawn(python: str, args: list[str], repo_root: Path, log_path: Path) -> subprocess.Popen:
    """Start `python -m condinst <args>` (cwd and PYTHONPATH = repo_root), stdout+stderr to log_path."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
    with open(log_path, "w") as log:
        return subprocess.Popen([python, "-c", _LAUNCHER, str(os.getpid()), *args], cwd=str(repo_root),
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields from the state on (index 0 = state, 19 = start time); None if unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_started(pid: int) -> int | None:
    """The kernel start time of a process in clock ticks (None if unknown, e.g. not on Linux)."""
    stat = _stat(pid)
    return int(stat[19]) if stat else None


def process_alive(pid: int | None, started: int | None = None) -> bool:
    """Whether `pid` runs (not a zombie) and, if `started` is given, is the process that started then."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _stat(pid)
    if stat is None:
        return sys.platform != "linux"
    return stat[0] not in ("Z", "X") and (started is None or int(stat[19]) == started)


def signal_group(pid: int, sig: int) -> bool:
    """Send `sig` to the process group led by `pid`; False if the group is gone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_group(pid: int, started: int | None, process: subprocess.Popen | None = None, grace: float = 10.0) -> None:
    """SIGTERM the process group led by `pid`, SIGKILL what is left after `grace` seconds.

    With `process` (our own child) the leader is also reaped; without it, a `pid` that no longer
    is the process started at `started` is left alone.
    """
    if process is None and not process_alive(pid, started):
        return

    def ended() -> bool:
        return process.poll() is not None if process is not None else not process_alive(pid, started)

    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not signal_group(pid, sig):
            break
        deadline = time.monotonic() + grace
        while not ended() and time.monotonic() < deadline:
            time.sleep(0.05)
        if ended():
            break
    if process is not None:
        signal_group(pid, signal.SIGKILL)  # data-loader workers the leader left behind
        process.wait(10)
