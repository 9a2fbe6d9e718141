"""Every command refuses bad arguments before any model loads: one `error:` line, non-zero exit, no traceback."""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from condinst import validate
from condinst.checkpoint import CheckpointError
from condinst.cli import CLIError
from condinst.config import ConfigError
from condinst.errors import UserError, run_reporting_errors, user_message
from condinst.preprocess import ImageError
from condinst.validate import ArgumentError
from testutils import run_condinst_here, scaled
from training.cli import UsageError
from training.data import DatasetError

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "assets" / "default_model" / "model.pth"


# ---- one mechanism for expected errors --------------------------------------------------------------

@pytest.mark.parametrize("cls", [ImageError, ConfigError, CheckpointError, CLIError, UsageError, DatasetError,
                                 ArgumentError])
def test_expected_error_classes_are_user_errors(cls):
    assert issubclass(cls, UserError)
    assert user_message(cls("first line\nsecond line")) == "first line"


def test_user_message_of_os_errors_and_bugs():
    assert user_message(PermissionError(13, "Permission denied", "/x/out.json")) == "/x/out.json: Permission denied"
    assert user_message(OSError("no path involved")) is None  # not about a user's file: a bug
    assert user_message(ValueError("bug")) is None
    assert user_message(UserError("")) == "UserError"


def test_run_reporting_errors_prints_one_line_and_lets_bugs_through(capsys):
    def fails(kind):
        raise kind("--output o.json: cannot write\n(detail)")

    assert run_reporting_errors(fails, UserError) == 2
    assert capsys.readouterr().err == "error: --output o.json: cannot write\n"
    with pytest.raises(KeyError):
        run_reporting_errors(fails, KeyError)
    assert run_reporting_errors(lambda: 0) == 0


def test_the_cli_reports_an_expected_error_in_one_line_and_a_bug_with_its_traceback(capsys, monkeypatch):
    from dataclasses import replace

    from condinst import cli

    bug = RuntimeError("a bug")

    def run(kind):
        def fails(args):
            raise kind
        return fails
    monkeypatch.setattr(cli, "PREDICT", replace(cli.PREDICT, run=run(UserError("--input: no such file\n(detail)"))))
    assert cli.main(["predict", "--weights", "w.pth", "--input", "x.jpg", "--output", "o.json"]) == 2
    assert capsys.readouterr().err == "error: --input: no such file\n"
    monkeypatch.setattr(cli, "PREDICT", replace(cli.PREDICT, run=run(bug)))
    with pytest.raises(RuntimeError) as raised:
        cli.main(["predict", "--weights", "w.pth", "--input", "x.jpg", "--output", "o.json"])
    assert raised.value is bug


# ---- the checks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "2", "-1", "1.0001", "abc", ""])
def test_probability_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        validate.probability(text)


def test_probability_accepts_the_closed_unit_interval():
    assert [validate.probability(t) for t in ("0", "0.5", "1", "1e-3")] == [0.0, 0.5, 1.0, 0.001]


@pytest.mark.parametrize("fn, good, bad", [(validate.positive_int, ["1", "800"], ["0", "-5", "1.5", "x", "nan"]),
                                           (validate.non_negative_int, ["0", "4"], ["-1", "2.0", "inf"])])
def test_integer_types(fn, good, bad):
    assert [fn(t) for t in good] == [int(t) for t in good]
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            fn(text)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write in (root ignores permission bits: then a folder under /proc)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        yield folder
    else:
        (folder / "probe").unlink()
        if not Path("/proc").is_dir():
            pytest.skip("running as root without /proc: no read-only folder available")
        yield Path("/proc") / "condinst-read-only"
    finally:
        folder.chmod(0o755)


def test_writable_file(tmp_path, read_only_dir):
    assert validate.writable_file(tmp_path / "new" / "deeper" / "out.json", "--output").name == "out.json"
    assert not (tmp_path / "new").exists()  # nothing is created by the check
    assert not list(tmp_path.glob(".condinst-write-probe-*"))  # the probe is removed
    with pytest.raises(ArgumentError, match="--output .*: is a folder"):
        validate.writable_file(tmp_path, "--output")
    with pytest.raises(ArgumentError, match="--output .*cannot write"):
        validate.writable_file(read_only_dir / "out.json", "--output")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArgumentError, match="is a file, not a folder"):
        validate.writable_file(tmp_path / "file" / "out.json", "--output")


def test_writable_dir(tmp_path, read_only_dir):
    assert validate.writable_dir(tmp_path / "vis", "--vis") == tmp_path / "vis"
    (tmp_path / "f.png").write_text("x")
    with pytest.raises(ArgumentError, match="--vis .*not a folder"):
        validate.writable_dir(tmp_path / "f.png", "--vis")
    with pytest.raises(ArgumentError, match="--vis .*cannot write"):
        validate.writable_dir(read_only_dir / "vis", "--vis")


def test_existing_paths(tmp_path):
    with pytest.raises(ArgumentError, match="--weights .*no such file"):
        validate.existing_file(tmp_path / "none.pth", "--weights")
    with pytest.raises(ArgumentError, match="is a folder"):
        validate.existing_file(tmp_path, "--weights")
    with pytest.raises(ArgumentError, match="--images .*no such folder"):
        validate.existing_dir(tmp_path / "nope", "--images")


@pytest.mark.parametrize("name", ["banana", "tpu", "cuda:99", "cuda:-1"])
def test_devices_that_do_not_exist(name):
    with pytest.raises(ArgumentError, match=f"--device {name}"):
        validate.check_device(name)


def test_devices_that_exist():
    for name in ("cpu", None, "auto"):
        validate.check_device(name)


# ---- every command, every bad value (in this process; one of each through `python -m condinst`) -----

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    Image.fromarray(np.full((60, 80, 3), 200, np.uint8)).save(root / "a.jpg")
    (root / "ann.json").write_text('{"images": [], "annotations": [], "categories": []}')
    (root / "images").mkdir()
    (root / "garbage.pth").write_bytes(b"not a checkpoint")
    (root / "afile").write_text("x")
    (root / "other.json.parts").mkdir()  # parts of a run with other settings
    (root / "other.json.parts" / "run.json").write_text('{"weights": "elsewhere.pth"}')
    (root / "stray.json.parts").mkdir()  # a folder of that name that is not ours
    ro = root / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").touch()
        (ro / "probe").unlink()
        ro = Path("/proc") / "condinst-read-only"  # root: permission bits do not stop it
    except OSError:
        pass
    yield {"root": root, "ro": ro}
    (root / "ro").chmod(0o755)


def _battery(f) -> list[list[str]]:
    root, ro = f["root"], f["ro"]
    img, ann, images, garbage = str(root / "a.jpg"), str(root / "ann.json"), str(root / "images"), str(root / "garbage.pth")
    predict = ["predict", "--weights", str(WEIGHTS), "--input", img, "--output", str(root / "o.json")]
    train = ["train", "--train-ann", ann, "--train-images", images, "--output-dir", str(root / "run"),
             "--weights", garbage]
    evaluate = ["evaluate", "--weights", garbage, "--ann", ann, "--images", images]
    cases = [predict + ["--score-threshold", v] for v in ("nan", "2", "inf", "-1", "x")]
    cases += [predict + ["--min-size", "0"], predict + ["--max-size", "-5"], predict + ["--min-size", "1.5"],
              predict + ["--device", "cuda:99"],  # device names: test_devices_that_do_not_exist (torch imports are slow)
              ["predict", "--weights", str(root / "none.pth"), "--input", img, "--output", str(root / "o.json")],
              ["predict", "--weights", str(WEIGHTS), "--input", str(root / "nope.jpg"), "--output", str(root / "o.json")],
              ["predict", "--weights", str(WEIGHTS), "--input", img, "--output", str(root)],
              ["predict", "--weights", str(WEIGHTS), "--input", img, "--output", str(ro / "o.json")],
              predict + ["--vis", str(ro / "vis")], predict + ["--vis", str(root / "afile")],
              ["predict", "--weights", str(WEIGHTS)], ["predict", "--weights", str(WEIGHTS), "--bogus-flag"],
              ["nonsense-command"]]
    cases += [predict + ["--batch-size", "0"], predict + ["--batch-size", "1.5"], predict + ["--workers", "-1"],
              predict + ["--fast", "yes"], predict + ["--resume"],  # --resume without parts to resume
              predict[:-1] + [str(root / "other.json")], predict[:-1] + [str(root / "stray.json"), "--resume"]]
    cases += [train + [flag, value] for flag, value in [
        ("--max-iter", "0"), ("--max-iter", "abc"), ("--batch-size", "-1"), ("--num-workers", "-1"),
        ("--eval-period", "-2"), ("--checkpoint-period", "0"), ("--log-period", "0"), ("--seed", "-1"),
        ("--device", "tpu"), ("--amp", "fp8"), ("--val-ann", ann),
        ("--output-dir", str(root / "afile")), ("--output-dir", str(ro / "run")), ("--lr-scale-batch", "--no-progress"),
        ("--train-images", str(root / "afile")), ("--train-ann", str(root / "nope.json")),
        ("--weights", str(root / "none.pth"))]]
    cases += [evaluate + [flag, value] for flag, value in [
        ("--max-images", "0"), ("--output", str(root)), ("--output", str(ro / "r.json")), ("--device", "cuda:99"),
        ("--ann", str(root / "nope.json")), ("--images", str(root / "nope")), ("--weights", str(root / "none.pth"))]]
    cases += [["export", "--weights", garbage, "--output", out] for out in
              (str(root / "model.txt"), str(ro / "model.onnx"), str(root))]
    cases += [["export", "--weights", str(root / "none.pth"), "--output", str(root / "m.onnx")]]
    return cases


class _ModelLoaded(BaseException):
    """Raised by torch.load during the in-process battery: a model was read before the arguments were checked
    (a BaseException, so no `except Exception` on the way can turn it into a message)."""


def _no_model_load(*args, **kwargs):
    raise _ModelLoaded(f"torch.load{args} before the arguments were checked")


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "condinst", *argv], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=scaled(120))


def _assert_refused(cases: list[list[str]], results: list[subprocess.CompletedProcess]) -> None:
    """Each case: non-zero exit, one `error:` line on stderr, no traceback, no model loaded, no image processed."""
    for argv, proc in zip(cases, results):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0, argv
        assert "Traceback" not in proc.stderr, (argv, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, proc.stderr)
        assert "not a readable PyTorch checkpoint" not in lines[0], (argv, lines[0])  # no model was loaded
        assert "instances in" not in proc.stdout, (argv, proc.stdout)  # no image was processed


def test_every_command_refuses_bad_values_in_one_line_before_any_work(files, monkeypatch):
    """Garbage weights (a file that is not a checkpoint) make the point: were any model loaded before
    the argument check, the message would be about the checkpoint instead. Parsing and validation run in
    this process (torch.load refuses to run); `python -m condinst` itself: the test below."""
    import torch

    cases = _battery(files)
    monkeypatch.setattr(torch, "load", _no_model_load)
    results = [run_condinst_here(argv) for argv in cases]
    _assert_refused(cases, results)
    messages = [proc.stderr for proc in results]
    assert sum("--score-threshold" in m for m in messages) == 5
    assert any("--output" in m and "is a folder" in m for m in messages)
    assert any("--vis" in m and "cannot write" in m for m in messages)
    assert sum("predict: argument --batch-size" in m for m in messages) == 2 and any("--workers" in m for m in messages)
    assert any("--resume: nothing to resume" in m for m in messages)
    assert any("other settings (" in m and "weights" in m for m in messages) and any("not a parts folder" in m for m in messages)


def test_python_m_condinst_refuses_bad_values_of_every_command(files):
    """End to end, one bad value per command (and an unknown command) through `python -m condinst`: the
    exit code, one stderr line and no traceback of a real process."""
    battery = _battery(files)
    cases = [next(argv for argv in battery if argv[0] == command)
             for command in ("predict", "train", "evaluate", "export", "nonsense-command")]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(_run, cases))
    _assert_refused(cases, results)
    assert all(proc.returncode == 2 for proc in results), [(p.args, p.returncode) for p in results]
