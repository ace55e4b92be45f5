"""Affine maps as 2×3 arrays: compose, invert, map points, warp images, compare.

Conventions (the data contract): x is the column, y the row, the origin is the centre of the
top-left pixel, and a matrix ``M = [[a11, a12, tx], [a21, a22, ty]]`` maps a point of the
acquired (moving) frame to the reference frame: ``(x', y') = A (x, y) + t``. OpenCV uses the
same pixel-centre convention, so ``cv2.warpAffine`` needs no half-pixel correction.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "compose",
    "decompose",
    "field_rms",
    "identity",
    "invert",
    "map_detections",
    "map_points",
    "to_homogeneous",
    "warp_mask_valid",
    "warp_to_reference",
]


def identity() -> np.ndarray:
    """The identity map, shape (2, 3), float64."""
    return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def to_homogeneous(matrix: np.ndarray) -> np.ndarray:
    """A 2×3 affine map as a 3×3 homogeneous matrix (float64)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"expected a 2x3 affine matrix, got shape {m.shape}")
    return np.vstack([m, [0.0, 0.0, 1.0]])


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The map ``outer ∘ inner``: apply `inner` first, then `outer`.

    Parameters
    ----------
    outer, inner : ndarray, shape (2, 3)
        Affine maps; e.g. ``compose(M_prev_to_0, M_t_to_prev)`` is ``M_t_to_0``.

    Returns
    -------
    ndarray, shape (2, 3), float64
    """
    return (to_homogeneous(outer) @ to_homogeneous(inner))[:2]


def invert(matrix: np.ndarray) -> np.ndarray:
    """The inverse affine map, shape (2, 3), float64."""
    return np.linalg.inv(to_homogeneous(matrix))[:2]


def map_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map points with an affine map.

    Parameters
    ----------
    points : array_like, shape (N, 2)
        Points as (x, y) = (column, row) in pixels of the source frame.
    matrix : ndarray, shape (2, 3)
        Source → destination map (e.g. acquired frame → frame 0).

    Returns
    -------
    ndarray, shape (N, 2), float64
        The points in destination pixels.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(matrix, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def map_detections(
    detections: dict[str, np.ndarray],
    matrix: np.ndarray,
    pixel_size_nm: tuple[float, float] | None,
) -> dict[str, np.ndarray]:
    """Detection columns with ``x, y`` mapped into frame-0 pixels (and ``x_nm, y_nm`` from them).

    Parameters
    ----------
    detections : dict of str to ndarray, each of shape (N,)
        ``x, y`` in pixels of the acquired frame, other columns passed through.
    matrix : ndarray, shape (2, 3)
        The frame's registration (acquired px → frame-0 px).
    pixel_size_nm : (row, column) pixel size in nm, optional
        Without it, no ``x_nm`` / ``y_nm`` columns are written.

    Returns
    -------
    dict of str to ndarray
        A new dict; the input is not changed.
    """
    out = dict(detections)
    if not len(out.get("x", ())):
        return out
    xy = np.column_stack([out["x"], out["y"]])
    out["x"], out["y"] = map_points(xy, matrix).T
    if pixel_size_nm:
        out["x_nm"] = out["x"] * pixel_size_nm[1]
        out["y_nm"] = out["y"] * pixel_size_nm[0]
    return out


def warp_to_reference(
    image: np.ndarray,
    matrix: np.ndarray,
    *,
    output_shape: tuple[int, int] | None = None,
    cval: float = 0.0,
    preserve_integral: bool = False,
) -> np.ndarray:
    """Resample an acquired image into reference (frame-0) coordinates, linear interpolation.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The acquired frame.
    matrix : ndarray, shape (2, 3)
        Acquired → reference map, as returned by `register`.
    output_shape : (int, int), optional
        (height, width) of the output; the input shape by default.
    cval : float
        Value outside the acquired field of view.
    preserve_integral : bool
        Divide by ``|det A|`` so that the sum of a particle's pixels (its integrated
        intensity) is the same before and after. Leave False to keep per-pixel intensities
        (the physical value of an ADF-STEM pixel); the two differ by the area change, which
        is ``≈ 1 %`` for a 0.5 % scale change.

    Returns
    -------
    ndarray of float32, shape `output_shape`
        ``out[p] = image[M⁻¹ p]``.
    """
    img = np.asarray(image, dtype=np.float32)
    h, w = output_shape if output_shape is not None else img.shape
    m = np.asarray(matrix, dtype=np.float64)
    # warpAffine inverts the forward map itself (WARP_INVERSE_MAP not set): dst(p) = src(M⁻¹p).
    out = cv2.warpAffine(
        img,
        m,
        (int(w), int(h)),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=float(cval),
    )
    if preserve_integral:
        det = abs(float(np.linalg.det(m[:, :2])))
        inside = warp_mask_valid(img.shape, m, (int(h), int(w)))
        out = np.where(inside, out / det, out).astype(np.float32)
    return out


def warp_mask_valid(
    input_shape: tuple[int, int], matrix: np.ndarray, output_shape: tuple[int, int]
) -> np.ndarray:
    """Boolean (H, W) mask of output pixels that fall inside the acquired field of view."""
    h, w = input_shape
    ones = np.ones((h, w), np.uint8)
    valid = cv2.warpAffine(
        ones,
        np.asarray(matrix, dtype=np.float64),
        (int(output_shape[1]), int(output_shape[0])),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return valid.astype(bool)


def decompose(matrix: np.ndarray, *, shape: tuple[int, int]) -> dict[str, float]:
    """Drift figures of an acquired → reference map, for plots and logs.

    Parameters
    ----------
    matrix : ndarray, shape (2, 3)
    shape : (int, int)
        (height, width) of the acquired frame; the shift is that of its centre.

    Returns
    -------
    dict
        ``shift_x_px``, ``shift_y_px`` (displacement of the field centre, pixels),
        ``scale_x``, ``scale_y`` (dimensionless, 1 = none), ``shear`` (dimensionless,
        tan of the skew angle) and ``rotation_deg``, from ``A = R(θ) [[sx, k·sy], [0, sy]]``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    a = m[:, :2]
    centre = np.array([(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0])
    shift = a @ centre + m[:, 2] - centre
    sx = float(np.hypot(a[0, 0], a[1, 0]))
    theta = float(np.arctan2(a[1, 0], a[0, 0]))
    det = float(np.linalg.det(a))
    sy = det / sx
    # Columns of R(-θ) A are [sx, 0] and [k·sy, sy].
    c, s = np.cos(theta), np.sin(theta)
    a12_rot = c * a[0, 1] + s * a[1, 1]
    return {
        "shift_x_px": float(shift[0]),
        "shift_y_px": float(shift[1]),
        "scale_x": sx,
        "scale_y": sy,
        "shear": float(a12_rot / sy),
        "rotation_deg": float(np.degrees(theta)),
    }


def field_rms(
    estimate: np.ndarray, truth: np.ndarray, *, shape: tuple[int, int], step_px: int = 8
) -> float:
    """RMS distance (pixels) between two maps over the whole field of view.

    Both maps are applied to a grid of points spaced `step_px` covering the (height, width)
    `shape` of the source frame, and the distances between the images are averaged in
    quadrature. The registration quality figure of the README.
    """
    h, w = shape
    ys, xs = np.mgrid[0 : h : max(1, step_px), 0 : w : max(1, step_px)]
    pts = np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64)
    d = map_points(pts, estimate) - map_points(pts, truth)
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1))))
