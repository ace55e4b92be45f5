"""File input and output at the edges of nptrack: readers, completeness checks, exports."""

from nptrack.io.errors import (
    IncompleteFileError,
    NotAnImageError,
    ReadError,
    UnsupportedFormatError,
)

__all__ = ["IncompleteFileError", "NotAnImageError", "ReadError", "UnsupportedFormatError"]
