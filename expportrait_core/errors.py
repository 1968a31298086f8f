"""User-facing errors.

Every problem a user can fix (a missing model file, an image without a face, a truncated
checkpoint) is raised as :class:`ExpPortraitError` with a message that names what was wrong and
how to fix it. Nodes let it propagate (ComfyUI shows the message); the CLI prints it as one line
and exits non-zero.
"""
from __future__ import annotations


class ExpPortraitError(RuntimeError):
    """An error whose message is meant for the user, not a traceback."""


class MissingModelError(ExpPortraitError, FileNotFoundError):
    """A model file the user must download and place in a folder is absent."""

    def __init__(self, what: str, folder: str, expected: str, source: str = "") -> None:
        msg = f"{what} not found: expected '{expected}' in folder '{folder}'."
        if source:
            msg += f" Get it from {source}."
        super().__init__(msg)
        self.folder = folder
        self.expected = expected


class InterruptedByUser(ExpPortraitError):
    """Raised by progress callbacks when the user cancelled the job."""
