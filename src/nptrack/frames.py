"""The unit of data that flows through nptrack: one 2-D image with its calibration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Frame"]


@dataclass(frozen=True, eq=False)
class Frame:
    """One acquired image.

    Attributes
    ----------
    data : ndarray of float32, shape (height, width)
        Pixel values as read (no scaling), rows first.
    pixel_size_nm : (float, float) or None
        Pixel size along (y, x) in nanometres; ``None`` when the file carries no calibration.
    index : int
        Frame index within its series, counted from 0.
    time_s : float or None
        Acquisition time as POSIX seconds where the file records it (readers take clock times
        without a zone as UTC); exports make it relative to the series start.
    source : str
        File the frame came from (with ``#k`` appended for the k-th frame of a stack).
    meta : dict
        Format-specific metadata worth keeping (units as found, detector, ...).
    """

    data: np.ndarray
    pixel_size_nm: tuple[float, float] | None
    index: int = 0
    time_s: float | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim != 2:
            raise ValueError(f"Frame data must be 2-D, got shape {self.data.shape}")
        if self.data.dtype != np.float32:
            object.__setattr__(self, "data", np.ascontiguousarray(self.data, dtype=np.float32))
        if self.pixel_size_nm is not None:
            py, px = (float(v) for v in self.pixel_size_nm)
            if not (py > 0 and px > 0 and np.isfinite(py) and np.isfinite(px)):
                raise ValueError(
                    f"pixel_size_nm must be positive and finite, got {self.pixel_size_nm}"
                )
            object.__setattr__(self, "pixel_size_nm", (py, px))

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (int(self.data.shape[0]), int(self.data.shape[1]))
