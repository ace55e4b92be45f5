"""Per-particle properties of a label image: position, size, shape, intensity.

Lengths are measured on a sub-pixel outline: the marching-squares contour of the binary
particle, smoothed along its arc length (Gaussian, sigma 1 px) separately between detected
corners. The raw contour overstates the perimeter of a disk by ~6 % (digital staircase) and a
plain smoothing rounds the corners of a square; smoothing between corners keeps both within
~1 % from 20 px diameter. Feret diameters use the convex hull of the same outline: the hull of
pixel corners would overstate the Feret max of a 20 px disk by ~6 %; a 1-px-wide line still
has Feret min 1 px.

Coordinates: x = column, y = row, origin at the centre of the top-left pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.measure import find_contours

__all__ = [
    "DETECTION_COLUMNS",
    "Outline",
    "convexity_test",
    "describe",
    "digital_solidity",
    "edt",
    "is_convex",
    "measure_particles",
    "outline",
]

# detections.csv measurement columns (DESIGN.md), in order, after frame / det_id.
DETECTION_COLUMNS: tuple[str, ...] = (
    "x",
    "y",
    "x_nm",
    "y_nm",
    "area_nm2",
    "diameter_nm",
    "feret_min_nm",
    "feret_max_nm",
    "perimeter_nm",
    "circularity",
    "convexity",
    "intensity",
    "background",
    "score",
    "separated",
    "border",
)

_STEP_PX = 0.5  # resampling step of the outline before smoothing
_SMOOTH_PX = 1.0  # Gaussian sigma along the outline; removes the digital staircase
_CORNER_EPS_PX = 1.0  # Douglas-Peucker tolerance to find corners
_CORNER_TURN = np.deg2rad(55.0)  # a turn this sharp is a corner and is not smoothed over
_MAX_CORNERS = 8


@dataclass(frozen=True)
class Outline:
    """Shape descriptors of one binary particle, in the units of `spacing`.

    Attributes
    ----------
    perimeter : float
        Length of the smoothed outline (outer boundary plus holes).
    area : float
        Area enclosed by the smoothed outline (the reported area is the pixel count).
    hull_perimeter, hull_area : float
        Perimeter and area of the convex hull of the outline.
    feret_min, feret_max : float
        Minimum and maximum caliper width of the hull.
    """

    perimeter: float
    area: float
    hull_perimeter: float
    hull_area: float
    feret_min: float
    feret_max: float

    @property
    def convexity(self) -> float:
        """Hull perimeter / perimeter (1 for a convex shape)."""
        return self.hull_perimeter / self.perimeter if self.perimeter > 0 else 1.0


def _resample(points: np.ndarray, closed: bool) -> np.ndarray:
    pts = np.vstack([points, points[:1]]) if closed else points
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(np.ceil(s[-1] / _STEP_PX)), 4)
    t = np.linspace(0.0, s[-1], n, endpoint=not closed)
    return np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], axis=1)


def _smooth_closed(points: np.ndarray, sigma: float) -> np.ndarray:
    r = _resample(points, closed=True)
    return ndi.gaussian_filter1d(r, sigma / _STEP_PX, axis=0, mode="wrap")


def _smooth_open(points: np.ndarray, sigma: float) -> np.ndarray:
    r = _resample(points, closed=False)
    k = min(int(4 * sigma / _STEP_PX) + 1, len(r) - 1)
    if k < 1:
        return r
    # Odd reflection about the end points keeps a straight piece straight up to the corner.
    head = 2 * r[0] - r[1 : k + 1][::-1]
    tail = 2 * r[-1] - r[-k - 1 : -1][::-1]
    padded = np.vstack([head, r, tail])
    return ndi.gaussian_filter1d(padded, sigma / _STEP_PX, axis=0, mode="nearest")[k:-k]


def _corners(contour: np.ndarray) -> list[int]:
    """Indices of contour vertices where the outline turns by more than `_CORNER_TURN`."""
    scale = 64.0  # approxPolyDP wants integer points; keep 1/64 px resolution
    pts = np.round(contour[:, ::-1] * scale).astype(np.int32).reshape(-1, 1, 2)
    poly = cv2.approxPolyDP(pts, _CORNER_EPS_PX * scale, True).reshape(-1, 2)
    if len(poly) < 3:
        return []
    # approxPolyDP returns a subset of its input points: find their indices by value.
    key = pts[:, 0, 0].astype(np.int64) * (1 << 31) + pts[:, 0, 1]
    idx = np.nonzero(np.isin(key, poly[:, 0].astype(np.int64) * (1 << 31) + poly[:, 1]))[0]
    if len(idx) < 3:
        return []
    v = contour[idx]
    d_in = v - np.roll(v, 1, axis=0)
    d_out = np.roll(v, -1, axis=0) - v
    cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
    turn = np.abs(np.arctan2(cross, (d_in * d_out).sum(axis=1)))
    return [int(i) for i in idx[turn >= _CORNER_TURN]]


def _smooth_contour(contour: np.ndarray) -> np.ndarray:
    """Smooth a closed contour along its length, without smoothing across corners."""
    seg = np.hypot(*np.diff(np.vstack([contour, contour[:1]]), axis=0).T)
    length = float(seg.sum())
    # A tiny particle would be shrunk by a 1 px smoothing: cap sigma at a quarter radius.
    sigma = min(_SMOOTH_PX, length / (8 * np.pi))
    if sigma < 0.1 or len(contour) < 4:
        return contour
    corners = _corners(contour)
    # A polygon has a few corners; a ragged outline many, and is smoothed as a whole.
    if not 2 <= len(corners) <= _MAX_CORNERS:
        return _smooth_closed(contour, sigma)
    n = len(contour)
    pieces = []
    for a, b in zip(corners, corners[1:] + corners[:1], strict=True):
        idx = np.arange(a, b + 1) if b > a else np.concatenate([np.arange(a, n), np.arange(b + 1)])
        pieces.append(_smooth_open(contour[idx], sigma)[:-1])
    return np.vstack(pieces)


def outline(mask: np.ndarray) -> list[np.ndarray]:
    """Smoothed sub-pixel outlines of a binary shape.

    Parameters
    ----------
    mask : ndarray of bool, shape (h, w)
        The particle (8-connected foreground); typically a bounding-box crop.

    Returns
    -------
    list of ndarray, shape (n, 2)
        Closed (row, col) polylines in pixel coordinates of `mask`: the outer boundary first,
        then holes; the last point is not repeated.
    """
    padded = np.pad(np.asarray(mask, dtype=np.float32), 1)
    contours = find_contours(padded, 0.5, fully_connected="high")
    out = []
    for c in contours:
        c = c[:-1] - 1.0 if len(c) > 1 and np.allclose(c[0], c[-1]) else c - 1.0
        if len(c) >= 3:
            out.append(_smooth_contour(c))
    out.sort(key=len, reverse=True)
    return out


def _polygon_area(p: np.ndarray) -> float:
    y, x = p[:, 0], p[:, 1]
    return 0.5 * abs(float(x[:-1] @ y[1:] - y[:-1] @ x[1:] + x[-1] * y[0] - y[-1] * x[0]))


def _closed_length(p: np.ndarray) -> float:
    d = np.diff(p, axis=0, append=p[:1])
    return float(np.sqrt((d * d).sum(axis=1)).sum())


_MAX_HULL_VERTICES = 96


def _calipers(hull: np.ndarray) -> tuple[float, float]:
    """(min width, max diameter) of a convex polygon given counter-clockwise.

    The smoothed outline of a large particle has hundreds of hull vertices; every k-th is
    kept (at most 96), which moves the Feret diameters by under 0.1 px (chord sagitta), and
    keeps the all-pairs work small.
    """
    if len(hull) > _MAX_HULL_VERTICES:
        hull = hull[:: int(np.ceil(len(hull) / _MAX_HULL_VERTICES))]
    edges = np.roll(hull, -1, axis=0) - hull
    norms = np.hypot(edges[:, 0], edges[:, 1])
    keep = norms > 1e-12
    normals = np.stack([-edges[keep, 1], edges[keep, 0]], axis=1) / norms[keep, None]
    proj = hull @ normals.T
    width = float((proj.max(axis=0) - proj.min(axis=0)).min())
    diff = hull[:, None, :] - hull[None, :, :]
    diameter = float(np.sqrt((diff**2).sum(axis=-1)).max())
    return width, diameter


def describe(mask: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> Outline:
    """Perimeter, hull and Feret diameters of a binary shape.

    Parameters
    ----------
    mask : ndarray of bool, shape (h, w)
        One particle (a crop is enough).
    spacing : (float, float)
        Pixel size along (y, x); the results are in these units.
    """
    lines = outline(mask)
    if not lines:
        return Outline(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    scale = np.asarray(spacing, dtype=float)
    lines = [p * scale for p in lines]
    perimeter = sum(_closed_length(p) for p in lines)
    area = _polygon_area(lines[0]) - sum(_polygon_area(p) for p in lines[1:])
    # Holes lie inside the outer outline: its hull is the particle's hull.
    hull = cv2.convexHull(lines[0].astype(np.float32)).reshape(-1, 2).astype(np.float64)
    if len(hull) < 3:  # degenerate (collinear) outline
        d = float(np.hypot(*(hull.max(axis=0) - hull.min(axis=0)))) if len(hull) else 0.0
        return Outline(perimeter, area, perimeter, 0.0, 0.0, d)
    width, diameter = _calipers(hull)
    return Outline(perimeter, area, _closed_length(hull), _polygon_area(hull), width, diameter)


def _scaled(shape: Outline, factor: float) -> Outline:
    return Outline(
        shape.perimeter * factor,
        shape.area * factor**2,
        shape.hull_perimeter * factor,
        shape.hull_area * factor**2,
        shape.feret_min * factor,
        shape.feret_max * factor,
    )


def digital_solidity(mask: np.ndarray) -> float:
    """Pixels / pixels of the filled convex hull of the pixel centres (1 for a convex shape).

    Counting lattice points makes a digitised convex shape score exactly 1 whatever its size;
    an area ratio on the outline penalises the staircase of thin rotated shapes (a 22 × 7 px
    rotated rectangle scores ~0.95). The hull's lattice points come from Pick's theorem
    (points inside or on = area + boundary points / 2 + 1), no rasterisation needed.
    """
    mask = np.asarray(mask, dtype=bool)
    count = int(mask.sum())
    if count < 3:
        return 1.0
    rows, cols = np.nonzero(mask)
    hull = cv2.convexHull(np.stack([cols, rows], axis=1).astype(np.int32)).reshape(-1, 2)
    hull = hull.astype(np.int64)
    edges = np.roll(hull, -1, axis=0) - hull
    boundary = int(np.gcd(np.abs(edges[:, 0]), np.abs(edges[:, 1])).sum())
    area2 = abs(
        int(np.dot(hull[:, 0], np.roll(hull[:, 1], -1)))
        - int(np.dot(hull[:, 1], np.roll(hull[:, 0], -1)))
    )
    lattice = area2 // 2 + boundary // 2 + 1 if len(hull) > 2 else boundary // 2 + 1
    return count / max(lattice, count)


def convexity_test(
    mask: np.ndarray, *, threshold: float = 0.95, shape: Outline | None = None
) -> tuple[bool, float]:
    """Whether a binary shape is convex by the ANTEMA criterion.

    Convex means convexity (hull perimeter / perimeter) and solidity (`digital_solidity`) both
    reach `threshold`. Note that this is blind to strong overlaps: two disks overlapping by
    40 % of their area have convexity 0.99 and solidity 0.98 (see `nptrack.measure.split`).

    Parameters
    ----------
    mask : ndarray of bool, shape (h, w)
        One connected shape.
    threshold : float
        Convexity and solidity threshold, 0-1.
    shape : Outline, optional
        Descriptors of `mask` if already computed.

    Returns
    -------
    (bool, float)
        The verdict and the solidity of `mask`.
    """
    shape = shape if shape is not None else describe(mask)
    solidity = digital_solidity(mask)
    return bool(shape.convexity >= threshold and solidity >= threshold), solidity


def is_convex(mask: np.ndarray, *, threshold: float = 0.95, shape: Outline | None = None) -> bool:
    """`convexity_test` without the solidity: True for a convex shape."""
    return convexity_test(mask, threshold=threshold, shape=shape)[0]


def edt(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of each True pixel to the nearest False pixel (float32).

    OpenCV's exact transform is several times faster than SciPy's on small crops, which is
    where per-particle work happens.
    """
    return cv2.distanceTransform(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
    )


def _zones(
    own: np.ndarray, others: np.ndarray, margin_px: float, ring_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Integration zone (particle + margin nearer to it than to others) and background ring."""
    d_own = edt(~own)
    d_other = edt(~others) if others.any() else np.full(own.shape, np.inf, dtype=np.float32)
    zone = own | ((d_own <= margin_px) & (d_own < d_other))
    ring = (d_own > margin_px) & (d_own <= margin_px + ring_px) & (d_other > margin_px)
    return zone, ring


def measure_particles(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    probability: np.ndarray | None = None,
    *,
    pixel_size_nm: tuple[float, float] | None = None,
    contrast: Literal["bright", "dark", "auto"] = "auto",
    background_ring_px: int = 4,
    intensity_margin_px: int = 2,
    convexity_threshold: float = 0.95,
    separated: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Measure every particle of a label image.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        0 = background, 1..N = particles (consecutive labels).
    image : ndarray of float, shape (H, W), optional
        Intensities for the weighted centroid and the integrated intensity; without it the
        centroid is geometric and intensity / background are NaN.
    probability : ndarray of float, shape (H, W), optional
        Segmentation probability; ``score`` is its mean over the particle (NaN without it).
    pixel_size_nm : (float, float), optional
        Pixel size along (y, x) in nm; the ``*_nm`` columns are NaN without it.
    contrast : {'bright', 'dark', 'auto'}
        Particles brighter or darker than the support; 'auto' compares the median inside the
        particles with the median outside. Intensity is counted positive for either contrast.
    background_ring_px : int
        Width of the background ring in pixels.
    intensity_margin_px : int
        The intensity is integrated over the particle grown by this margin (pixels nearer to it
        than to any other particle), so that the blurred rim is not lost; the ring starts
        beyond the margin and leaves out other particles and their margins.
    convexity_threshold : float
        Threshold of `is_convex` for the ``agglomerate`` flag.
    separated : ndarray of bool, shape (N,), optional
        Which particles came out of a split region (from `nptrack.measure.split`).

    Returns
    -------
    dict of str to ndarray, each of shape (N,)
        ``label``, ``x``, ``y`` (px), ``x_nm``, ``y_nm``, ``area_px2``, ``area_nm2``,
        ``diameter_px`` / ``_nm`` (equivalent disk), ``feret_min_px`` / ``_nm``,
        ``feret_max_px`` / ``_nm``, ``perimeter_px`` / ``_nm``, ``circularity`` (4πA/P²,
        at most 1), ``convexity``, ``solidity``, ``intensity`` (integrated above the local
        background, image units × px), ``background`` (mean of the ring, image units),
        ``score``, ``separated``, ``border``, ``agglomerate`` (0/1, int8).
    """
    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    height, width = labels.shape
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:].astype(float)
    py, px = pixel_size_nm if pixel_size_nm is not None else (np.nan, np.nan)
    spacing = (py, px) if pixel_size_nm is not None else (1.0, 1.0)
    anisotropic = pixel_size_nm is not None and abs(py - px) > 1e-6 * max(py, px)

    sign = 1.0
    if image is not None:
        image = np.asarray(image, dtype=np.float64)
        # Medians of a subsample (every k-th pixel): same answer, a fraction of the time.
        step = max(labels.size // 1_000_000, 1)
        sub_img, sub_lab = image.ravel()[::step], flat[::step]
        outside = sub_img[sub_lab == 0]
        global_bg = float(np.median(outside)) if outside.size else 0.0
        if contrast == "dark":
            sign = -1.0
        elif contrast == "auto" and n > 0 and outside.size:
            inside = sub_img[sub_lab > 0]
            if inside.size and np.median(inside) < global_bg:
                sign = -1.0

    cols = {k: np.full(n, np.nan) for k in ("x", "y", "perimeter_px", "perimeter_nm")}
    for k in ("feret_min_px", "feret_max_px", "feret_min_nm", "feret_max_nm"):
        cols[k] = np.full(n, np.nan)
    for k in ("convexity", "solidity", "intensity", "background"):
        cols[k] = np.full(n, np.nan)
    border = np.zeros(n, np.int8)
    agglomerate = np.zeros(n, np.int8)
    pad = intensity_margin_px + background_ring_px + 1
    for i, sl in enumerate(ndi.find_objects(labels)):
        if sl is None:
            continue
        lab = i + 1
        r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        border[i] = r0 == 0 or c0 == 0 or r1 == height or c1 == width
        own = labels[sl] == lab
        shape_px = describe(own)
        shape = shape_px
        if pixel_size_nm is not None:
            # Square pixels: scale; anisotropic ones: measure again in nm (shape changes).
            shape = describe(own, spacing) if anisotropic else _scaled(shape_px, px)
        cols["perimeter_px"][i] = shape_px.perimeter
        cols["feret_min_px"][i], cols["feret_max_px"][i] = shape_px.feret_min, shape_px.feret_max
        if pixel_size_nm is not None:
            cols["perimeter_nm"][i] = shape.perimeter
            cols["feret_min_nm"][i], cols["feret_max_nm"][i] = shape.feret_min, shape.feret_max
        convex, cols["solidity"][i] = convexity_test(
            own, threshold=convexity_threshold, shape=shape
        )
        cols["convexity"][i] = shape.convexity
        agglomerate[i] = not convex

        rows, cs = np.nonzero(own)
        if image is None:
            cols["y"][i], cols["x"][i] = rows.mean() + r0, cs.mean() + c0
            continue
        # Bounding box grown by margin + ring: per-particle work stays on a small crop.
        R0, R1 = max(r0 - pad, 0), min(r1 + pad, height)
        C0, C1 = max(c0 - pad, 0), min(c1 + pad, width)
        crop = labels[R0:R1, C0:C1]
        img = image[R0:R1, C0:C1]
        zone, ring = _zones(
            crop == lab, (crop != 0) & (crop != lab), intensity_margin_px, background_ring_px
        )
        bg = float(img[ring].mean()) if ring.any() else global_bg
        cols["background"][i] = bg
        cols["intensity"][i] = sign * float((img[zone] - bg).sum())
        w = np.clip(sign * (image[rows + r0, cs + c0] - bg), 0.0, None)
        if w.sum() > 0:
            cols["y"][i] = float((w * rows).sum() / w.sum()) + r0
            cols["x"][i] = float((w * cs).sum() / w.sum()) + c0
        else:
            cols["y"][i], cols["x"][i] = rows.mean() + r0, cs.mean() + c0

    score = np.full(n, np.nan)
    if probability is not None and n:
        s = np.bincount(flat, weights=np.asarray(probability, float).ravel(), minlength=n + 1)
        score = s[1:] / np.maximum(area, 1)
    diameter_px = 2.0 * np.sqrt(area / np.pi)
    with np.errstate(divide="ignore", invalid="ignore"):
        area_nm2 = area * py * px
        perim = cols["perimeter_nm"] if pixel_size_nm is not None else cols["perimeter_px"]
        a_phys = area_nm2 if pixel_size_nm is not None else area
        circularity = np.minimum(4.0 * np.pi * a_phys / perim**2, 1.0)
    return {
        "label": np.arange(1, n + 1),
        "x": cols["x"],
        "y": cols["y"],
        "x_nm": cols["x"] * px,
        "y_nm": cols["y"] * py,
        "area_px2": area,
        "area_nm2": area_nm2,
        "diameter_px": diameter_px,
        "diameter_nm": 2.0 * np.sqrt(area_nm2 / np.pi),
        "feret_min_px": cols["feret_min_px"],
        "feret_min_nm": cols["feret_min_nm"],
        "feret_max_px": cols["feret_max_px"],
        "feret_max_nm": cols["feret_max_nm"],
        "perimeter_px": cols["perimeter_px"],
        "perimeter_nm": cols["perimeter_nm"],
        "circularity": circularity,
        "convexity": cols["convexity"],
        "solidity": cols["solidity"],
        "intensity": cols["intensity"],
        "background": cols["background"],
        "score": score,
        "separated": (
            np.zeros(n, np.int8) if separated is None else np.asarray(separated, np.int8)
        ),
        "border": border,
        "agglomerate": agglomerate,
    }
