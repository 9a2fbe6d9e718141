"""`python -m app` commands and the Label Studio commands report expected failures the way `condinst` does
(`condinst.errors.reported`): a UserError or an OSError naming a file is one `error:` line and exit 2; a bug keeps
its traceback."""
from __future__ import annotations

import errno

import pytest

from app import commands
from app.interop.ml_backend import cli as ml_cli


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/data/out/report.json")


def _bug(*args, **kwargs):
    raise ZeroDivisionError("a bug")


@pytest.mark.parametrize("module, argv, target", [
    (commands, ["users", "add", "--role", "admin", "--users", "{tmp}/users.json", "anna"], "run_users"),
    (ml_cli, ["ls-predictions", "--coco", "{tmp}/c.json", "--image-url", "http://x/{{file_name}}", "--out", "{tmp}/t.json"], "run_predictions"),
])
def test_an_os_error_naming_a_file_is_one_line(module, argv, target, tmp_path, monkeypatch, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    monkeypatch.setattr(module, target, _disk_full)
    monkeypatch.setattr(commands, "check_users", lambda args: None)
    assert module.main(argv) == 2
    err = capsys.readouterr().err
    assert err == "error: /data/out/report.json: No space left on device\n"


@pytest.mark.parametrize("module, argv, target", [
    (commands, ["users", "add", "--role", "admin", "--users", "{tmp}/users.json", "anna"], "run_users"),
    (ml_cli, ["ls-predictions", "--coco", "{tmp}/c.json", "--image-url", "http://x/{{file_name}}", "--out", "{tmp}/t.json"], "run_predictions"),
])
def test_a_bug_keeps_its_traceback(module, argv, target, tmp_path, monkeypatch):
    argv = [a.format(tmp=tmp_path) for a in argv]
    monkeypatch.setattr(module, target, _bug)
    monkeypatch.setattr(commands, "check_users", lambda args: None)
    with pytest.raises(ZeroDivisionError):
        module.main(argv)


def test_a_multi_line_user_error_is_its_first_line(tmp_path, monkeypatch, capsys):
    from app.errors import WorkspaceError

    def refuse(args):
        raise WorkspaceError("the workspace is locked\n  (held by pid 12)")

    monkeypatch.setattr(commands, "run_qa_command", refuse)
    monkeypatch.setattr(commands, "check_qa", lambda args: None)
    assert commands.main(["qa", "--workspace", str(tmp_path), "--out", str(tmp_path / "qa.json")]) == 2
    assert capsys.readouterr().err == "error: the workspace is locked\n"
