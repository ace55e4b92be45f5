"""Typed errors of the readers: each carries the file and one line of reason for the user."""

from __future__ import annotations

from pathlib import Path

__all__ = ["IncompleteFileError", "NotAnImageError", "ReadError", "UnsupportedFormatError"]


class ReadError(Exception):
    """A file could not be read as microscope image data.

    Parameters
    ----------
    path : path-like
        The file.
    reason : str
        One line saying what is wrong, for the user.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnsupportedFormatError(ReadError):
    """The file extension or content is not a format nptrack reads."""


class NotAnImageError(ReadError):
    """The file is valid but holds no image: a spectrum, a diffraction pattern, 4-D data..."""


class IncompleteFileError(ReadError):
    """The file is truncated, still being written, or corrupt."""
