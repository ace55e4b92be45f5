"""Block-averaged image pyramids and the maps between their levels and full resolution.

Level k of a pyramid is the full image averaged over ``f × f`` blocks (``f = factors[k]``),
the ragged right / bottom edge dropped. A level pixel (x, y) then has its centre at
``(f·x + (f−1)/2, f·y + (f−1)/2)`` in full-resolution pixels (x = column, y = row, origin at
the centre of the top-left pixel); `to_level` and `to_full` carry affine maps across.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from nptrack.register.warp import compose, invert

__all__ = ["Pyramid", "block_mean", "build_pyramid", "mask_pyramid", "to_full", "to_level"]

# Levels smaller than this carry too little texture for ECC's 6 parameters.
_MIN_LEVEL_PX = 64
# A mask pixel at a coarse level is usable only if (nearly) all its full-resolution pixels are.
_MASK_KEEP = 0.99


@dataclass(frozen=True, eq=False)
class Pyramid:
    """Block-averaged copies of one image, ready to register (reusable across calls).

    Attributes
    ----------
    shape : (int, int)
        (height, width) of the full-resolution image.
    images : tuple of ndarray of float32
        Finest (working) level first; level k is block-averaged by ``factors[k]``.
    factors : tuple of int
        Downsampling factor of each level. A level pixel (x, y) has its centre at
        ``(f·x + (f−1)/2, f·y + (f−1)/2)`` in full-resolution pixels.
    """

    shape: tuple[int, int]
    images: tuple[np.ndarray, ...]
    factors: tuple[int, ...]


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Average `factor`×`factor` blocks (the ragged right/bottom edge is dropped)."""
    if factor == 1:
        return np.ascontiguousarray(image, dtype=np.float32)
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    # INTER_AREA with an integer factor is an exact block mean.
    return cv2.resize(
        np.asarray(image[:h, :w], dtype=np.float32),
        (w // factor, h // factor),
        interpolation=cv2.INTER_AREA,
    )


def build_pyramid(image: np.ndarray, *, working_size_px: int = 512, levels: int = 5) -> Pyramid:
    """Block-averaged pyramid of `image`: the working level (≤ `working_size_px`) and coarser.

    Parameters
    ----------
    image : ndarray, shape (H, W)
    working_size_px : int
        The finest level is the full image divided by the smallest integer factor that
        brings its larger side to at most this size.
    levels : int
        Number of levels (each half the previous); levels below 64 px are not built.

    Returns
    -------
    Pyramid
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {img.shape}")
    factor = max(1, -(-max(img.shape) // int(working_size_px)))
    images = [block_mean(img, factor)]
    factors = [factor]
    while len(images) < levels and min(images[-1].shape) // 2 >= _MIN_LEVEL_PX:
        images.append(block_mean(images[-1], 2))
        factors.append(factors[-1] * 2)
    return Pyramid((int(img.shape[0]), int(img.shape[1])), tuple(images), tuple(factors))


def _level_map(factor: int) -> np.ndarray:
    """Level → full-resolution coordinate map of a level with this block factor."""
    o = (factor - 1) / 2.0
    return np.array([[factor, 0.0, o], [0.0, factor, o]])


def to_level(matrix: np.ndarray, factor: int) -> np.ndarray:
    """A full-resolution affine map expressed on the grid of a level with this factor."""
    s = _level_map(factor)
    return compose(invert(s), compose(matrix, s))


def to_full(matrix: np.ndarray, factor: int) -> np.ndarray:
    """A level's affine map expressed in full-resolution pixels (inverse of `to_level`)."""
    s = _level_map(factor)
    return compose(s, compose(matrix, invert(s)))


def mask_pyramid(mask: np.ndarray, factors: tuple[int, ...]) -> list[np.ndarray]:
    """A full-resolution usable-pixel mask at each level (uint8, 1 = usable)."""
    m = np.asarray(mask, dtype=np.float32)
    return [(block_mean(m, f) >= _MASK_KEEP).astype(np.uint8) for f in factors]
