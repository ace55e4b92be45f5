"""Per-particle properties of a label image: position, size, shape, intensity.

Lengths are measured on a sub-pixel outline: the marching-squares contour of the binary
particle, smoothed along its arc length (Gaussian, sigma 1 px) separately between detected
corners. The raw contour overstates the perimeter of a disk by ~6 % (digital staircase) and a
plain smoothing rounds the corners of a square; smoothing between corners keeps both within
~1 % from 20 px diameter. Where two straight edges meet at a corner, the corner is put where
their fitted lines meet (`_sharpen_corners`): the digitised outline cuts it (~0.3 px of
perimeter per 90° corner) and the staircase of a slanted edge bulges its hull. Feret
diameters use the convex hull of the same outline: the hull of pixel corners would overstate
the Feret max of a 20 px disk by ~6 %; a 1-px-wide line still has Feret min 1 px.

Coordinates: x = column, y = row, origin at the centre of the top-left pixel.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from nptrack.measure.contour import _group_starts, _raw_loops
from nptrack.measure.contour_smooth import _smooth_loops
from nptrack.measure.intensity import choose_margin, shell_sums

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


def _median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D array, the same number, in a fraction of the time on millions.

    The two middle order statistics lie between bounds taken from a sorted subsample;
    counting the values below and partitioning only those between the bounds finds them
    (the full ``np.median`` when the bounds miss, or with NaNs).
    """
    values = np.asarray(values)
    n = values.size
    if n < 50_000:
        return float(np.median(values))
    sample = np.sort(values[:: n // 4096])
    mid, margin = sample.size // 2, int(6 * np.sqrt(sample.size))
    lo, hi = sample[max(mid - margin, 0)], sample[min(mid + margin, sample.size - 1)]
    below = np.count_nonzero(values < lo)
    between = values[(values >= lo) & (values <= hi)]
    k = ((n - 1) // 2 - below, n // 2 - below)  # the middle one, or two
    if (
        not (k[0] >= 0 and k[1] < between.size)
        or below + between.size + np.count_nonzero(values > hi) != n
    ):
        return float(np.median(values))
    part = np.partition(between, k)
    return float(np.mean(part[k[0] : k[1] + 1]))


def _closed_polylines(
    points: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Length and enclosed area of closed polylines stored one after another.

    Returns the per-line length and area, and each vertex's line index.
    """
    line = np.repeat(np.arange(counts.size), counts)
    ahead = np.arange(len(points)) + 1
    ends = _group_starts(counts)
    ahead[ends[1:] - 1] = ends[:-1]
    d = points[ahead] - points
    length = np.bincount(line, weights=np.sqrt((d * d).sum(axis=1)), minlength=counts.size)
    y, x = points[:, 0], points[:, 1]
    area = 0.5 * np.abs(
        np.bincount(line, weights=x * y[ahead] - y * x[ahead], minlength=counts.size)
    )
    return length, area, line


_MAX_HULL_VERTICES = 96
_CALIPER_BATCH = 16  # hulls per batch: the all-pairs arrays (16 × 96 × 96) stay in cache


def _calipers(hulls: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(min width, max diameter) of convex polygons, each given counter-clockwise.

    The smoothed outline of a large particle has hundreds of hull vertices; every k-th is
    kept (at most 96), which moves the Feret diameters by under 0.1 px (chord sagitta), and
    keeps the all-pairs work small. Polygons are padded with their first vertex (which moves
    neither the widths nor the diameter) to batch them by size.
    """
    kept = [h[:: int(np.ceil(len(h) / _MAX_HULL_VERTICES))] for h in hulls]
    sizes = np.array([len(h) for h in kept], dtype=np.int64)
    width, diameter = np.zeros(len(kept)), np.zeros(len(kept))
    if not kept:
        return width, diameter
    flat = np.concatenate(kept)
    starts = _group_starts(sizes)[:-1]
    order = np.argsort(sizes, kind="stable")
    for b in range(0, len(order), _CALIPER_BATCH):
        which = order[b : b + _CALIPER_BATCH]
        size, start = sizes[which][:, None], starts[which][:, None]
        j = np.arange(int(size.max()))[None, :]
        inside = j < size
        pts = flat[start + np.where(inside, j, 0)]  # (B, M, 2)
        edges = flat[start + np.where(inside, (j + 1) % size, 0)] - pts
        norms = np.hypot(edges[..., 0], edges[..., 1])
        valid = inside & (norms > 1e-12)
        norms = np.where(valid, norms, 1.0)
        ny, nx = -edges[..., 1] / norms, edges[..., 0] / norms
        y, x = pts[..., 0], pts[..., 1]
        # Projections on each edge's normal, (B, edge, vertex); reductions run along the
        # last, contiguous axis.
        proj = ny[:, :, None] * y[:, None, :] + nx[:, :, None] * x[:, None, :]
        spans = np.where(valid, proj.max(axis=2) - proj.min(axis=2), np.inf)
        width[which] = spans.min(axis=1)
        dy, dx = y[:, :, None] - y[:, None, :], x[:, :, None] - x[:, None, :]
        diameter[which] = np.sqrt((dy * dy + dx * dx).reshape(len(which), -1).max(axis=1))
    return width, diameter


def _outer_loops(counts: np.ndarray, loop_particle: np.ndarray) -> np.ndarray:
    """Index of each particle's outer boundary among its loops (the longest: holes lie inside
    it), by ascending particle."""
    order = np.lexsort((np.arange(counts.size), -counts, loop_particle))
    if not order.size:
        return order
    particle = loop_particle[order]
    return order[np.r_[True, particle[1:] != particle[:-1]]]


def _outline_shapes(
    points: np.ndarray,
    offsets: np.ndarray,
    loop_particle: np.ndarray,
    n: int,
    spacing: tuple[float, float],
) -> dict[str, np.ndarray]:
    """`Outline` fields of every particle from its smoothed loops, in the units of `spacing`.

    Parameters
    ----------
    points : ndarray of float, shape (M, 2)
        Smoothed loops (pixel coordinates of each particle's crop), loop after loop.
    offsets : ndarray of int, shape (L + 1,)
    loop_particle : ndarray of int, shape (L,)
        Particle index (0 … n - 1) of each loop; a particle's loops are consecutive.
    n : int
        Number of particles; those without a loop get NaN.
    spacing : (float, float)
        Pixel size along (y, x).

    Returns
    -------
    dict of str to ndarray, each of shape (n,)
        ``perimeter``, ``area``, ``hull_perimeter``, ``hull_area``, ``feret_min``,
        ``feret_max``.
    """
    out = {k: np.full(n, np.nan) for k in _OUTLINE_FIELDS}
    counts = np.diff(offsets)
    if counts.size == 0:
        return out
    p = points * np.asarray(spacing, dtype=float)
    length, area, _ = _closed_polylines(p, counts)
    # The outer boundary is the longest loop (as the first of `outline`); holes lie inside it.
    outer = _outer_loops(counts, loop_particle)
    who = loop_particle[outer]
    out["perimeter"][who] = np.bincount(loop_particle, weights=length, minlength=n)[who]
    holes = np.bincount(loop_particle, weights=area, minlength=n)[who] - area[outer]
    out["area"][who] = area[outer] - holes
    hulls = [
        cv2.convexHull(p[offsets[k] : offsets[k + 1]].astype(np.float32))
        .reshape(-1, 2)
        .astype(np.float64)
        for k in outer
    ]
    sizes = np.array([len(h) for h in hulls], dtype=np.int64)
    h_len, h_area, _ = _closed_polylines(np.concatenate(hulls), sizes)
    ok = sizes >= 3
    out["hull_perimeter"][who] = np.where(ok, h_len, out["perimeter"][who])
    out["hull_area"][who] = np.where(ok, h_area, 0.0)
    width, diameter = _calipers([hulls[j] for j in np.nonzero(ok)[0]])
    out["feret_min"][who[ok]], out["feret_max"][who[ok]] = width, diameter
    for j in np.nonzero(~ok)[0]:  # a degenerate (collinear) outline
        h = hulls[j]
        out["feret_min"][who[j]] = 0.0
        out["feret_max"][who[j]] = np.hypot(*(h.max(axis=0) - h.min(axis=0))) if len(h) else 0.0
    return out


_OUTLINE_FIELDS = ("perimeter", "area", "hull_perimeter", "hull_area", "feret_min", "feret_max")


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
    points, offsets, _ = _raw_loops(np.asarray(mask, dtype=bool))
    points, offsets = _smooth_loops(points, offsets)
    lines = [points[a:b] for a, b in itertools.pairwise(offsets)]
    lines.sort(key=len, reverse=True)
    return lines


def describe(mask: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> Outline:
    """Perimeter, hull and Feret diameters of a binary shape.

    Parameters
    ----------
    mask : ndarray of bool, shape (h, w)
        One particle (a crop is enough).
    spacing : (float, float)
        Pixel size along (y, x); the results are in these units.
    """
    points, offsets, _ = _raw_loops(np.asarray(mask, dtype=bool))
    if offsets.size < 2:
        return Outline(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    points, offsets = _smooth_loops(points, offsets)
    shape = _outline_shapes(points, offsets, np.zeros(offsets.size - 1, np.int64), 1, spacing)
    return Outline(*(float(shape[k][0]) for k in _OUTLINE_FIELDS))


def _lattice_points(hulls: list[np.ndarray]) -> np.ndarray:
    """Lattice points inside or on integer convex polygons, by Pick's theorem (exact)."""
    if not hulls:
        return np.zeros(0, np.int64)
    sizes = np.array([len(h) for h in hulls], dtype=np.int64)
    h = np.concatenate(hulls).astype(np.int64)
    starts = _group_starts(sizes)
    ahead = np.arange(len(h)) + 1
    ahead[starts[1:] - 1] = starts[:-1]
    e = h[ahead] - h
    boundary = np.add.reduceat(np.gcd(np.abs(e[:, 0]), np.abs(e[:, 1])), starts[:-1])
    area2 = np.abs(np.add.reduceat(h[:, 0] * h[ahead, 1] - h[:, 1] * h[ahead, 0], starts[:-1]))
    return np.where(sizes > 2, area2 // 2, 0) + boundary // 2 + 1


def _pixel_hull(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return cv2.convexHull(np.stack([cols, rows], axis=1).astype(np.int32)).reshape(-1, 2)


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
    lattice = int(_lattice_points([_pixel_hull(*np.nonzero(mask))])[0])
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


def _squared_edt(free: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance to the nearest False pixel, exact integers (float32).

    OpenCV's float square root is one unit in the last place off for some pixels on some
    calls, not reproducibly (1 thread too), which moved ties between distances (plateaus of
    the split, zone borders) from run to run. The distances are square roots of integers:
    squaring and rounding gives those back exactly up to ~1000 px.
    """
    d = cv2.distanceTransform(
        np.ascontiguousarray(free, dtype=np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
    )
    return np.rint(d * d, out=d)


def edt(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of each True pixel to the nearest False pixel (float32).

    OpenCV's exact transform is several times faster than SciPy's on small crops, which is
    where per-particle work happens; its distances are made exact and repeatable (correctly
    rounded roots, see `_squared_edt`).
    """
    return np.sqrt(_squared_edt(mask))


def fit_circle(points: np.ndarray, *, iterations: int = 10) -> tuple[float, float, float]:
    """Least-squares circle through points: (y, x, radius), NaN where it is undefined.

    An algebraic (Kåsa) fit started, then Gauss–Newton steps on the geometric distances,
    which remove the algebraic fit's bias toward small circles on short arcs.

    Parameters
    ----------
    points : ndarray of float, shape (M, 2)
        (y, x) coordinates, M ≥ 3 and not collinear.
    iterations : int
        Gauss–Newton steps (0: the algebraic fit alone).

    Returns
    -------
    (float, float, float)
        Centre (y, x) and radius, in the units of `points`.
    """
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 3:
        return np.nan, np.nan, np.nan
    mean = p.mean(axis=0)
    q = p - mean  # centred: better conditioned
    a = np.column_stack([q, np.ones(len(q))])
    b = -(q * q).sum(axis=1)
    (d, e, f), _, rank, _ = np.linalg.lstsq(a, b, rcond=None)
    if rank < 3:  # collinear
        return np.nan, np.nan, np.nan
    c = np.array([-d / 2, -e / 2])
    r2 = c @ c - f
    if not np.isfinite(r2) or r2 <= 0:
        return np.nan, np.nan, np.nan
    r = float(np.sqrt(r2))
    for _ in range(iterations):
        v = q - c
        dist = np.hypot(v[:, 0], v[:, 1])
        if (dist <= 0).any():
            break
        jac = np.column_stack([-v / dist[:, None], -np.ones(len(q))])
        step, *_ = np.linalg.lstsq(jac, -(dist - r), rcond=None)
        c, r = c + step[:2], r + float(step[2])
        if np.abs(step).max() < 1e-6:
            break
    return float(c[0] + mean[0]), float(c[1] + mean[1]), abs(r)


def _border_centres(
    loops: np.ndarray,
    offsets: np.ndarray,
    loop_particle: np.ndarray,
    which: np.ndarray,
    shape: tuple[int, int],
) -> dict[int, tuple[float, float]]:
    """Centres of particles cut by the frame edge, from a circle through their visible arc.

    The centroid of the visible part lies inside the frame, up to a radius from the true
    centre; the arc of the outline that is not the frame edge says where the whole particle
    is. `loops` are the smoothed outlines in frame pixels. Accepted only when the arc is long
    enough to fix a circle (its chord at least the radius, radius at most 1.5 × the visible
    extent); otherwise the particle keeps its centroid. Centres are kept inside the frame
    (at most half a pixel outside its outer pixel centres).
    """
    height, width = shape
    out: dict[int, tuple[float, float]] = {}
    outer = _outer_loops(np.diff(offsets), loop_particle)
    loop_of = dict(zip(loop_particle[outer].tolist(), outer.tolist(), strict=True))
    for i in which.tolist():
        k = loop_of.get(i)
        if k is None:
            continue
        pts = loops[offsets[k] : offsets[k + 1]]
        y, x = pts[:, 0], pts[:, 1]
        # Outline vertices run along pixel edges at -0.5 and size - 0.5 where the frame cuts.
        arc = pts[(y > 0.0) & (y < height - 1.0) & (x > 0.0) & (x < width - 1.0)]
        if len(arc) < 8:
            continue
        extent = float(np.hypot(*(pts.max(axis=0) - pts.min(axis=0))))
        gaps = arc[:, None, :] - arc[None, :, :]
        chord = float(np.sqrt((gaps * gaps).sum(axis=2).max()))  # the arc's own extent
        cy, cx, r = fit_circle(arc)
        if not np.isfinite(r) or r > 1.5 * extent or chord < r:
            continue
        # A centre beyond the edge is put on it: a position outside the field reads as out
        # of view downstream (the tracker does not write such points), yet part of the
        # particle is seen.
        out[i] = (float(np.clip(cy, -0.5, height - 0.5)), float(np.clip(cx, -0.5, width - 0.5)))
    return out


def measure_particles(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    probability: np.ndarray | None = None,
    *,
    pixel_size_nm: tuple[float, float] | None = None,
    contrast: Literal["bright", "dark", "auto"] = "auto",
    background_ring_px: int = 4,
    intensity_margin_px: int = 2,
    adaptive_margin: bool = True,
    convexity_threshold: float = 0.95,
    separated: np.ndarray | None = None,
    fit_border_centres: bool = True,
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
        Largest margin: the intensity is integrated over the particle grown by a margin
        (pixels nearer to it than to any other particle), so that the blurred rim is not lost;
        the ring starts beyond this largest margin and leaves out other particles and their
        margins.
    adaptive_margin : bool
        Choose the margin of the frame, 1 … `intensity_margin_px` px, from all its particles
        (`nptrack.measure.intensity.choose_margin`: least rim lost plus noise added); False
        integrates out to `intensity_margin_px`. Either way the ring and the background are
        the same.
    convexity_threshold : float
        Threshold of `is_convex` for the ``agglomerate`` flag.
    separated : ndarray of bool, shape (N,), optional
        Which particles came out of a split region (from `nptrack.measure.split`).
    fit_border_centres : bool
        For particles cut by the image edge (``border``), ``x`` and ``y`` are the centre of
        the circle through the visible outline (`fit_circle` on the smoothed outline, the
        edge left out; kept inside the frame), not the centroid of the visible part, which
        lies up to a radius inside. Falls back to the centroid when the arc is too short to
        fix a circle.

    Returns
    -------
    dict of str to ndarray, each of shape (N,)
        ``label``, ``x``, ``y`` (px), ``x_nm``, ``y_nm``, ``area_px2``, ``area_nm2``,
        ``diameter_px`` / ``_nm`` (equivalent disk), ``feret_min_px`` / ``_nm``,
        ``feret_max_px`` / ``_nm``, ``perimeter_px`` / ``_nm``, ``circularity`` (4πA/P²,
        at most 1), ``convexity``, ``solidity``, ``intensity`` (integrated above the local
        background, image units × px), ``background`` (mean of the ring, image units),
        ``intensity_margin_px`` (the margin used, the same for the whole frame; NaN without
        an image), ``score``, ``separated``, ``border``, ``agglomerate`` (0/1, int8).
    """
    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    height, width = labels.shape
    flat = labels.ravel()
    area = np.zeros(n)  # pixels, counted on each particle's crop
    py, px = pixel_size_nm if pixel_size_nm is not None else (np.nan, np.nan)
    spacing = (py, px) if pixel_size_nm is not None else (1.0, 1.0)
    anisotropic = pixel_size_nm is not None and abs(py - px) > 1e-6 * max(py, px)

    sign = 1.0
    if image is not None:
        # Kept in its own type; crops are converted to float64 (a whole-frame copy is not).
        image = np.asarray(image)
        # Medians of a subsample (every k-th pixel): same answer, a fraction of the time.
        step = max(labels.size // 1_000_000, 1)
        sub_img, sub_lab = image.ravel()[::step].astype(np.float64), flat[::step]
        outside = sub_img[sub_lab == 0]
        global_bg = _median(outside) if outside.size else 0.0
        if contrast == "dark":
            sign = -1.0
        elif contrast == "auto" and n > 0 and outside.size:
            inside = sub_img[sub_lab > 0]
            if inside.size and _median(inside) < global_bg:
                sign = -1.0

    cols = {k: np.full(n, np.nan) for k in ("x", "y", "perimeter_nm")}
    for k in ("feret_min_nm", "feret_max_nm", "solidity", "intensity", "background"):
        cols[k] = np.full(n, np.nan)
    border = np.zeros(n, np.int8)

    # Outlines of all particles at once, each in the pixel coordinates of its bounding box
    # (the box of its outer loop's vertices, half a pixel outside its pixels).
    points, offsets, loop_label = _raw_loops(labels)
    loop_particle = loop_label - 1
    counts = np.diff(offsets)
    vertex_particle = np.repeat(loop_particle, counts)
    first = np.nonzero(np.r_[True, loop_particle[1:] != loop_particle[:-1]])[0]
    first = first[: loop_particle.size]  # none on an empty label image
    present = loop_particle[first]  # particles with pixels, ascending
    at = offsets[first] if present.size else np.zeros(0, np.int64)
    lo = np.minimum.reduceat(points, at, axis=0) + 0.5 if present.size else np.zeros((0, 2))
    hi = np.maximum.reduceat(points, at, axis=0) + 0.5 if present.size else np.zeros((0, 2))
    box = np.zeros((n, 4), np.int64)  # r0, r1, c0, c1
    box[present] = np.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]], axis=1).astype(np.int64)
    origin = np.zeros((n, 2))
    origin[present] = lo
    smoothed, smooth_offsets = _smooth_loops(points - origin[vertex_particle], offsets)
    shape_px = _outline_shapes(smoothed, smooth_offsets, loop_particle, n, (1.0, 1.0))
    shape = shape_px
    if pixel_size_nm is not None:
        # Square pixels: scale; anisotropic ones: measure again in nm (shape changes).
        if anisotropic:
            shape = _outline_shapes(smoothed, smooth_offsets, loop_particle, n, spacing)
        else:
            shape = {k: v * (px**2 if "area" in k else px) for k, v in shape_px.items()}
        cols["perimeter_nm"] = shape["perimeter"]
        cols["feret_min_nm"], cols["feret_max_nm"] = shape["feret_min"], shape["feret_max"]
    with np.errstate(divide="ignore", invalid="ignore"):
        convexity = np.where(
            shape["perimeter"] > 0, shape["hull_perimeter"] / shape["perimeter"], 1.0
        )
    convexity[~np.isfinite(shape["perimeter"])] = np.nan
    r0, r1, c0, c1 = box[present].T
    border[present] = (r0 == 0) | (c0 == 0) | (r1 == height) | (c1 == width)

    # The ring reaches margin + ring px from the particle and leaves out pixels within margin
    # px of another: the crop must hold the other particles that far out.
    pad = 2 * intensity_margin_px + background_ring_px + 1
    shells = np.full((n, intensity_margin_px + 1), np.nan)  # per particle, see shell_sums
    shell_counts = np.zeros((n, intensity_margin_px + 1))
    ring_var, ring_count = np.full(n, np.nan), np.zeros(n, np.int64)
    hulls, hull_of = [], []
    if probability is not None:
        probability = np.asarray(probability)
        prob_sum = np.zeros(n)
    for i, (r0, r1, c0, c1) in zip(present.tolist(), box[present].tolist(), strict=True):
        lab = i + 1
        if image is None:
            inside = labels[r0:r1, c0:c1] == lab
            rows, cs = np.nonzero(inside)
            cols["y"][i], cols["x"][i] = rows.mean() + r0, cs.mean() + c0
        else:
            # Bounding box grown by margin + ring: per-particle work stays on a small crop.
            R0, R1 = max(r0 - pad, 0), min(r1 + pad, height)
            C0, C1 = max(c0 - pad, 0), min(c1 + pad, width)
            crop = labels[R0:R1, C0:C1]
            img = image[R0:R1, C0:C1].astype(np.float64)
            own = crop == lab
            box_in = (slice(r0 - R0, r1 - R0), slice(c0 - C0, c1 - C0))
            inside = own[box_in]
            rows, cs = np.nonzero(inside)
            # Distances compared squared (exact integers); `free` is False on other particles.
            free = (crop == 0) | own
            d_own = _squared_edt(~own)
            d_other = (
                _squared_edt(free) if not free.all() else np.full(own.shape, np.inf, np.float32)
            )
            bg, shells[i], shell_counts[i], ring_var[i], ring_count[i] = shell_sums(
                img,
                d_own,
                d_other,
                own,
                margin_px=intensity_margin_px,
                ring_px=background_ring_px,
                fallback_background=global_bg,
            )
            cols["background"][i] = bg
            w = np.clip(sign * (img[box_in][inside] - bg), 0.0, None)
            w_sum = w.sum()
            if w_sum > 0:
                cols["y"][i] = float((w * rows).sum() / w_sum) + r0
                cols["x"][i] = float((w * cs).sum() / w_sum) + c0
            else:
                cols["y"][i], cols["x"][i] = rows.mean() + r0, cs.mean() + c0
        area[i] = rows.size
        if probability is not None:
            # Summed in raster order, one after another, as np.bincount does.
            prob_sum[i] = np.cumsum(probability[r0:r1, c0:c1][inside], dtype=np.float64)[-1]
        if rows.size >= 3:
            hulls.append(_pixel_hull(rows, cs))
            hull_of.append(i)
    cut = np.nonzero(border)[0] if fit_border_centres else np.zeros(0, np.int64)
    if cut.size:
        frame_loops = smoothed + np.repeat(origin[loop_particle], np.diff(smooth_offsets), axis=0)
        fitted = _border_centres(frame_loops, smooth_offsets, loop_particle, cut, (height, width))
        for i, (cy, cx) in fitted.items():
            cols["y"][i], cols["x"][i] = cy, cx
    margin = np.full(n, np.nan)
    if image is not None and n:
        m = intensity_margin_px
        if adaptive_margin:
            m, _ = choose_margin(sign * shells, shell_counts, ring_var, ring_count)
        cols["intensity"] = sign * np.cumsum(shells, axis=1)[:, m]
        margin[:] = m
    cols["solidity"][present] = 1.0
    hull_of_arr = np.asarray(hull_of, dtype=np.int64)
    cols["solidity"][hull_of_arr] = area[hull_of_arr] / np.maximum(
        _lattice_points(hulls), area[hull_of_arr]
    )
    agglomerate = np.zeros(n, np.int8)
    agglomerate[present] = ~(
        (convexity[present] >= convexity_threshold)
        & (cols["solidity"][present] >= convexity_threshold)
    )

    score = np.full(n, np.nan)
    if probability is not None and n:
        score = prob_sum / np.maximum(area, 1)
    diameter_px = 2.0 * np.sqrt(area / np.pi)
    with np.errstate(divide="ignore", invalid="ignore"):
        area_nm2 = area * py * px
        perim = cols["perimeter_nm"] if pixel_size_nm is not None else shape_px["perimeter"]
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
        "feret_min_px": shape_px["feret_min"],
        "feret_min_nm": cols["feret_min_nm"],
        "feret_max_px": shape_px["feret_max"],
        "feret_max_nm": cols["feret_max_nm"],
        "perimeter_px": shape_px["perimeter"],
        "perimeter_nm": cols["perimeter_nm"],
        "circularity": circularity,
        "convexity": convexity,
        "solidity": cols["solidity"],
        "intensity": cols["intensity"],
        "background": cols["background"],
        "intensity_margin_px": margin,
        "score": score,
        "separated": (
            np.zeros(n, np.int8) if separated is None else np.asarray(separated, np.int8)
        ),
        "border": border,
        "agglomerate": agglomerate,
    }
