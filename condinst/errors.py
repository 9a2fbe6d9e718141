"""Expected failures, and the one place that turns them into a line of text for a person.

Every layer raises its own subclass of `UserError` (ImageError, ConfigError, CheckpointError, the
command lines' CLIError and UsageError, training's DatasetError, the app's errors), so a front end
needs a single rule: a `UserError`, or an `OSError` about a named path, is the user's input going
wrong and becomes `error: <one line>`; anything else is a bug and keeps its traceback.

    try:
        return run(args)
    except Exception as e:
        return reported(e)  # `error: <message>` on stderr and EXIT_USAGE, or the bug raised again
"""
from __future__ import annotations

import sys
from typing import Callable

EXIT_USAGE = 2  # exit code of a command that stopped on bad input


class UserError(Exception):
    """An expected, user-facing failure (bad argument, file, image, config, checkpoint, dataset).

    The message is one line meant for a person and names what is wrong (the flag, the file, the id).
    """


class CheckpointError(UserError, ValueError):
    """A weights file that cannot be read, or that does not fit the model (`condinst.checkpoint`)."""


def user_message(exc: BaseException) -> str | None:
    """The one-line message of an expected error, or None when `exc` is not one (a bug).

    Expected: any `UserError`, and an `OSError` that names a path (permission denied, disk full,
    no such file) raised while reading or writing a user's file.
    """
    if isinstance(exc, UserError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.filename is not None:
        reason = exc.strerror or type(exc).__name__
        text = f"{exc.filename}: {reason}" + (f" (-> {exc.filename2})" if exc.filename2 is not None else "")
    else:
        return None
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def reported(exc: BaseException) -> int:
    """Called in an ``except`` block: an expected error is printed as `error: <message>` on stderr and gives
    EXIT_USAGE; anything else (a bug) is raised again with its traceback."""
    message = user_message(exc)
    if message is None:
        raise exc
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_reporting_errors(fn: Callable[..., int], *args) -> int:
    """`fn(*args)`, its expected errors `reported`."""
    try:
        return fn(*args)
    except Exception as e:
        return reported(e)
