"""The app's workspace: open, or the reason it is not (a damaged database the page can recover).

Every part of the app holds this slot rather than the workspace itself, so recovering a damaged
workspace (`app.service.Service.recover_workspace`) reaches them all at once.
"""
from __future__ import annotations

from pathlib import Path

from app.errors import ServiceError
from app.store.workspace import Workspace


class WorkspaceSlot:
    """The open workspace (`ws`), or the error saying why there is none."""

    def __init__(self, workspace: Workspace | None, root: Path, error: str | None = None):
        self.workspace = workspace
        self.root = Path(workspace.root if workspace else root)
        self.error = error

    @property
    def ws(self) -> Workspace:
        """The open workspace, or ServiceError explaining why there is none."""
        if self.workspace is None:
            raise ServiceError(f"The workspace cannot be used: {self.error} "
                               "Use 'Recover workspace' to move the damaged database aside.")
        return self.workspace
