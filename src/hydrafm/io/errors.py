"""Errors raised by the readers: every one names the file and the reason."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AFMFileError",
    "UnsupportedFormatError",
    "CorruptFileError",
    "ChannelNotFoundError",
    "StackMismatchError",
]


class AFMFileError(Exception):
    """A file (or folder) could not be read as an AFM stack.

    Parameters
    ----------
    path
        The offending file or folder.
    reason
        What is wrong, in the user's words.
    """

    def __init__(self, path: str | Path | None, reason: str) -> None:
        self.path = None if path is None else Path(path)
        self.reason = reason
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{reason}")


class UnsupportedFormatError(AFMFileError):
    """The file is not in a format HydrAFM reads (wrong extension or magic)."""


class CorruptFileError(AFMFileError):
    """The file has the right format but broken content (truncated, bad header, NaN frames)."""


class ChannelNotFoundError(AFMFileError):
    """The requested channel (by default Δf) is not in the file."""


class StackMismatchError(AFMFileError):
    """Frames that should form one stack do not fit together (size, pixel size, channel)."""
