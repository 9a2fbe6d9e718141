"""The app's expected failures: one base class whose message is meant for the person using it.

Anything raised as an `AppError` is shown as a one-line, non-blocking warning in the page (and
returned as an error message to API clients); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

from condinst.errors import UserError


class AppError(UserError):
    """An action could not be done; the message (one line) says why and what to do."""


class WorkspaceError(AppError):
    """The workspace could not store or read something (bad upload, damaged file, database)."""


class ServiceError(AppError):
    """A user action was refused (nothing selected, a point outside the image, ...)."""
