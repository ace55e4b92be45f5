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

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from scipy import ndimage as ndi

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
# Straight edges between corners (see `_sharpen_corners`): fitted from this far from the
# corners, at least this long, and straight when within a strip this wide and bowed less.
_EDGE_MARGIN_PX = 1.5
_EDGE_MIN_PX = 6.0
_EDGE_STRIP_PX = 1.1
_EDGE_BOW_PX = 0.75
# A Douglas-Peucker edge this short between two twice as long, the outline turning this much
# over the three, is a cut corner (a disk's polygon turns less: ~2 sqrt(2 eps / r) per edge).
_CHAMFER_PX = 5.0
_CHAMFER_TURN = np.deg2rad(70.0)
_CORNER_REACH_PX = 1.5  # a corner is moved at most this far to where its edges meet
_TRUNCATE = 4.0  # Gaussian kernel radius in sigmas (scipy.ndimage's default)


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


# All particles of a frame are outlined at once: loops (closed polylines) are stored
# concatenated, ``points[offsets[k]:offsets[k + 1]]`` being loop k, so that each step is a
# few array operations over every loop instead of a Python loop over particles.

# Marching-squares segments of a 2 × 2 square by its case (bits: 1 upper left, 2 upper right,
# 4 lower left, 8 lower right in the particle), drawn as skimage.measure.find_contours draws
# them with fully_connected='high' (particle on the right of each segment): from, to, from,
# to (a saddle has two), as edges 0 top, 1 bottom, 2 left, 3 right; -1 none.
_SEGMENTS = np.array(
    [[-1, -1, -1, -1], [0, 2, -1, -1], [3, 0, -1, -1], [3, 2, -1, -1],
     [2, 1, -1, -1], [0, 1, -1, -1], [2, 0, 3, 1], [3, 1, -1, -1],
     [1, 3, -1, -1], [0, 3, 1, 2], [1, 0, -1, -1], [1, 2, -1, -1],
     [2, 3, -1, -1], [0, 3, -1, -1], [2, 0, -1, -1], [-1, -1, -1, -1]],
    dtype=np.int64,
)  # fmt: skip
# Edge midpoints on the doubled grid, from the square's upper-left pixel (top, bottom, left,
# right).
_EDGE_DY = np.array([0, 2, 1, 1], dtype=np.int64)
_EDGE_DX = np.array([1, 1, 0, 2], dtype=np.int64)


def _raw_loops(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marching-squares outlines (level 0.5) of every label's binary mask.

    The same loops as ``find_contours(padded mask, 0.5, fully_connected='high')`` of each
    label on its own, to the point: same vertices, start and direction (a loop starts at the
    end of its last segment in raster order, where skimage closes it), in skimage's order
    (by first segment in raster order).

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)

    Returns
    -------
    points : ndarray of float, shape (M, 2)
        (row, col) image coordinates of the loop vertices, loop after loop.
    offsets : ndarray of int, shape (L + 1,)
        Loop k is ``points[offsets[k]:offsets[k + 1]]``.
    loop_label : ndarray of int, shape (L,)
        Label of each loop, loops sorted by label.
    """
    padded = np.pad(np.asarray(labels, dtype=np.int32), 1)
    h2, w2 = padded.shape
    across = padded[:, 1:] != padded[:, :-1]
    down = padded[1:] != padded[:-1]
    rows, cols = np.nonzero(across[:-1] | across[1:] | down[:, :-1] | down[:, 1:])
    if rows.size == 0:
        return np.zeros((0, 2)), np.zeros(1, np.int64), np.zeros(0, np.int64)
    flat = padded.ravel()
    base = rows * w2 + cols
    corners = np.stack([flat[base], flat[base + 1], flat[base + w2], flat[base + w2 + 1]])
    # One (square, label) pair per distinct particle label among a square's corners.
    square, label = [], []
    for j in range(4):
        keep = corners[j] != 0
        for i in range(j):
            keep &= corners[j] != corners[i]
        square.append(np.nonzero(keep)[0])
        label.append(corners[j][square[-1]])
    sq = np.concatenate(square)
    lab = np.concatenate(label).astype(np.int64)
    c = corners[:, sq]
    case = (c[0] == lab) + 2 * (c[1] == lab) + 4 * (c[2] == lab) + 8 * (c[3] == lab)
    seg = _SEGMENTS[case]
    two = seg[:, 2] >= 0
    s_sq = np.concatenate([sq, sq[two]])
    s_lab = np.concatenate([lab, lab[two]])
    s_from = np.concatenate([seg[:, 0], seg[two, 2]])
    s_to = np.concatenate([seg[:, 1], seg[two, 3]])
    sub = np.concatenate([np.zeros(sq.size, np.int64), np.ones(int(two.sum()), np.int64)])
    # Segments by label, then in raster order (squares come row by row from nonzero).
    order = np.argsort(s_lab * (2 * rows.size) + 2 * s_sq + sub, kind="stable")
    s_sq, s_lab, s_from, s_to = s_sq[order], s_lab[order], s_from[order], s_to[order]
    y2, x2 = 2 * rows[s_sq], 2 * cols[s_sq]
    stride = 2 * w2 + 1
    n_points = (2 * h2 + 1) * stride
    from_y, from_x = y2 + _EDGE_DY[s_from], x2 + _EDGE_DX[s_from]
    key_from = s_lab * n_points + from_y * stride + from_x
    key_to = s_lab * n_points + (y2 + _EDGE_DY[s_to]) * stride + x2 + _EDGE_DX[s_to]
    by_from = np.argsort(key_from)
    nxt = by_from[np.searchsorted(key_from[by_from], key_to)]  # the segment that follows
    # Loops are the cycles of `nxt`. Pointer doubling gives each segment the first and last
    # segment of its loop (stable once a window covers the loop) ...
    idx = np.arange(nxt.size)
    last, first, ptr = idx.copy(), idx.copy(), nxt.copy()
    while True:
        last2, first2 = np.maximum(last, last[ptr]), np.minimum(first, first[ptr])
        ptr = ptr[ptr]
        if np.array_equal(last2, last) and np.array_equal(first2, first):
            break
        last, first = last2, first2
    # ... and its number of steps to the last one (list ranking).
    is_last = idx == last
    steps = (~is_last).astype(np.int64)
    ptr = np.where(is_last, idx, nxt)
    while not np.array_equal(ptr, last):
        steps = steps + steps[ptr]
        ptr = ptr[ptr]
    heads = np.nonzero(is_last)[0]  # one per loop, in label order
    length = np.bincount(last, minlength=nxt.size)
    loop_order = np.lexsort((first[heads], s_lab[heads]))
    heads = heads[loop_order]
    rank = np.empty(nxt.size, np.int64)
    rank[heads] = np.arange(heads.size)
    offsets = np.concatenate([[0], np.cumsum(length[heads])])
    # A loop's vertices are its segments' start points, from the segment after the last.
    at = offsets[rank[last]] + length[last] - 1 - steps
    points = np.empty((nxt.size, 2))
    points[at, 0] = from_y / 2.0 - 1.0
    points[at, 1] = from_x / 2.0 - 1.0
    return points, offsets, s_lab[heads]


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


def _group_starts(counts: np.ndarray) -> np.ndarray:
    """Offsets of groups of `counts` items stored one after another, shape (G + 1,)."""
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _within(counts: np.ndarray) -> np.ndarray:
    """Position of each item in its group: concatenated ``arange(c)`` for each count c."""
    return np.arange(int(counts.sum())) - np.repeat(_group_starts(counts)[:-1], counts)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + c)`` for each (s, c)."""
    return np.repeat(starts, counts) + _within(counts)


def _segmented_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sum within each group, as np.cumsum of each group on its own (bit for bit).

    Groups of similar size are stacked (zero padded) and summed along rows, so that no sum
    runs across groups: a global cumsum minus the group's start would carry the rounding of
    everything before it (a straight piece 12 px long would come out 12 + 4e-15 px, and be
    resampled at one more point).
    """
    out = np.empty_like(values)
    starts = _group_starts(counts)[:-1]
    order = np.argsort(counts, kind="stable")
    sorted_counts = counts[order]
    i = 0
    while i < order.size:  # buckets of groups up to twice the smallest one's size
        j = int(np.searchsorted(sorted_counts, 2 * max(int(sorted_counts[i]), 1), side="right"))
        which = order[i:j]
        col = np.arange(int(counts[which].max()))
        valid = col[None, :] < counts[which][:, None]
        at = starts[which][:, None] + col[None, :]
        block = np.where(valid, values[np.where(valid, at, 0)], 0.0)
        out[at[valid]] = np.cumsum(block, axis=1)[valid]
        i = j
    return out


@functools.lru_cache(maxsize=512)
def _gaussian_weights(sigma: float) -> np.ndarray:
    """Half of scipy.ndimage.gaussian_filter1d's kernel (centre first), computed the same way."""
    radius = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return (phi / phi.sum())[radius:]


def _gaussian(
    n: np.ndarray,
    sigma_px: np.ndarray,
    extend: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """``gaussian_filter1d`` of many lines at once, to the bit.

    Each line (`n` samples, shape (N, 2) in all) is extended by the largest kernel radius at
    both ends by ``extend(position, line)`` (positions -radius … n + radius - 1 of each
    line, its boundary mode), and the extended lines are stored one after another. Lines at
    the common sigma are filtered by one scipy call over that array (its samples next to a
    line's own are its extension, so each output is scipy's on that line alone); the few
    others (small particles, narrower kernels) are summed tap by tap in scipy's order.
    """
    radius = (_TRUNCATE * sigma_px + 0.5).astype(np.int64)
    pad = int(radius.max(initial=0))
    size = n + 2 * pad
    line = np.repeat(np.arange(n.size), size)
    ext = extend(_within(size) - pad, line)
    at = _ranges(_group_starts(size)[:-1] + pad, n)  # each output sample in `ext`
    out = np.empty((len(at), 2))
    common = _SMOOTH_PX / _STEP_PX
    usual = np.repeat(sigma_px == common, n)
    if usual.any():
        out[usual] = ndi.gaussian_filter1d(ext, common, axis=0, mode="nearest")[at[usual]]
    rest = ~usual
    if rest.any():
        which = np.nonzero(sigma_px != common)[0]
        table = np.zeros((n.size, pad + 1))
        for k in which:
            w = _gaussian_weights(float(sigma_px[k]))
            table[k, : len(w)] = w
        w = table[np.repeat(np.arange(n.size), n)[rest]]
        j = at[rest]
        acc = ext[j] * w[:, :1]
        for m in range(pad, 0, -1):  # taps beyond a line's radius have weight 0
            acc += (ext[j - m] + ext[j + m]) * w[:, m : m + 1]
        out[rest] = acc
    return out


def _resample(
    points: np.ndarray, index: np.ndarray, counts: np.ndarray, closed: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Resample polylines at `_STEP_PX` along their length (np.interp per line, batched).

    `index` holds the lines' vertex indices into `points`, concatenated (`counts` each).
    Closed lines are resampled around back to their start, without repeating it; open lines
    include both end points. Returns the samples and their count per line.
    """
    if closed:  # repeat the first vertex at the end
        bounds = _group_starts(counts)
        index = np.insert(index, bounds[1:], index[bounds[:-1]])
        counts = counts + 1
    xy = points[index]
    starts = _group_starts(counts)
    d = np.diff(xy, axis=0)
    seg = np.hypot(d[:, 0], d[:, 1])
    step_in = np.concatenate([[0.0], seg])  # length of the step into each vertex
    step_in[starts[:-1]] = 0.0  # a line's first vertex (the step from the previous line)
    s = _segmented_cumsum(step_in, counts)  # arc length from the line's start
    end = s[starts[1:] - 1]
    n = np.maximum(np.ceil(end / _STEP_PX).astype(np.int64), 4)
    step = end / (n if closed else n - 1)
    line = np.repeat(np.arange(counts.size), n)
    t = _within(n) * step[line]  # as np.linspace
    if not closed:
        t[_group_starts(n)[1:] - 1] = end
    # Segment of each sample: searched on line-offset arc lengths, then checked locally.
    span = 2.0 ** np.ceil(np.log2(float(end.max()) + 2.0))
    j = np.searchsorted(s + np.repeat(np.arange(counts.size) * span, counts),
                        t + line * span, side="right") - 1  # fmt: skip
    first, final = starts[:-1][line], starts[1:][line] - 1
    j = np.clip(j, first, final - 1)
    j -= (t < s[j]) & (j > first)
    j += (t >= s[np.minimum(j + 1, final)]) & (j + 1 < final)
    slope = (xy[j + 1] - xy[j]) / (s[j + 1] - s[j])[:, None]
    out = slope * (t - s[j])[:, None] + xy[j]
    past = t >= end[line]
    out[past] = xy[final[past]]
    return out, n


def _sharpen_corners(
    r: np.ndarray, n: np.ndarray, c_next: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where two straight pieces of an outline meet, the corner at their lines' intersection.

    A digitised corner is cut (the marching-squares outline passes half a pixel inside the
    outermost pixel centres: a 90° corner loses ~0.3 px of perimeter), and the staircase
    of a slanted edge bulges the hull by up to half a pixel. Lines fitted (total least
    squares) to the edges away from the corners are unbiased, and the polygon of their
    intersections gives the perimeter and calipers of a polygonal particle.

    A piece is straight when it is long enough, its samples lie within a strip
    `_EDGE_STRIP_PX` wide about its line (a digital straight edge within ~1 px, an arc
    adds its sagitta) and it bows less than `_EDGE_BOW_PX`. Only pieces shorter than
    ~10 px of disks under ~15 px across pass for straight. A short piece between two
    straight ones (a corner that the Douglas-Peucker polygon cut with a chamfer) is
    replaced by their intersection.

    Parameters
    ----------
    r : ndarray of float, shape (M, 2)
        Pieces of outlines resampled along their length, both end points (corners)
        included, piece after piece.
    n : ndarray of int, shape (P,)
        Samples per piece.
    c_next : ndarray of int, shape (P,)
        The piece that follows each one around its loop (it starts at this one's end).

    Returns
    -------
    start : ndarray of float, shape (P, 2)
        Corner at the start of each piece, moved where `moved`.
    moved : ndarray of bool, shape (P,)
        Whether the piece's start corner lies where the straight pieces around it meet (not
        near parallel, and within `_CORNER_REACH_PX` of the outline: a rounded corner stays
        rounded).
    dropped : ndarray of bool, shape (P,)
        Chamfers replaced by an intersection: their samples are left out.
    """
    p = n.size
    idx = np.arange(p)
    piece = np.repeat(idx, n)
    head = _group_starts(n)[:-1]
    start = r[head].copy()
    d = np.diff(r, axis=0, prepend=r[:1])
    d[head] = 0.0
    arc = _segmented_cumsum(np.hypot(d[:, 0], d[:, 1]), n)  # arc length along the piece
    length = arc[_group_starts(n)[1:] - 1]
    # Fit away from the corners, where the digitised outline rounds off.
    fit = (arc >= _EDGE_MARGIN_PX) & (arc <= length[piece] - _EDGE_MARGIN_PX)
    fp = piece[fit]
    m = np.bincount(fp, minlength=p)
    mm = np.maximum(m, 1).astype(float)
    xy = r[fit]
    mean = np.stack([np.bincount(fp, weights=xy[:, j], minlength=p) for j in (0, 1)], 1)
    mean = mean.astype(float) / mm[:, None]  # bincount of nothing is int
    c = xy - mean[fp]
    saa = np.bincount(fp, weights=c[:, 0] * c[:, 0], minlength=p)
    sbb = np.bincount(fp, weights=c[:, 1] * c[:, 1], minlength=p)
    sab = np.bincount(fp, weights=c[:, 0] * c[:, 1], minlength=p)
    phi = 0.5 * np.arctan2(2.0 * sab, saa - sbb)  # principal axis
    u = np.stack([np.cos(phi), np.sin(phi)], axis=1)
    res = c[:, 1] * u[fp, 0] - c[:, 0] * u[fp, 1]  # signed distance to the line
    # Bow: the sagitta of the parabola fitted to the residuals along the line (an arc has
    # one, the zigzag of a straight staircase hardly; the axes are principal, so the
    # residuals have no linear term).
    t = c[:, 0] * u[fp, 0] + c[:, 1] * u[fp, 1]
    q = t * t - (np.bincount(fp, weights=t * t, minlength=p) / mm)[fp]
    qq = np.bincount(fp, weights=q * q, minlength=p)
    half = 0.5 * (length - 2 * _EDGE_MARGIN_PX)
    bow = np.abs(np.bincount(fp, weights=res * q, minlength=p)) / np.where(qq > 0, qq, 1.0)
    bow *= half * half
    spread = np.zeros(p)
    has = np.nonzero(m)[0]
    if has.size:
        at = _group_starts(m[has])[:-1]
        spread[has] = np.maximum.reduceat(res, at) - np.minimum.reduceat(res, at)
    straight = (
        (m >= 4)
        & (length - 2 * _EDGE_MARGIN_PX >= _EDGE_MIN_PX)
        & (spread <= _EDGE_STRIP_PX)
        & (bow <= _EDGE_BOW_PX)
    )
    prev = np.empty(p, np.int64)
    prev[c_next] = idx

    def meet(i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Intersection of the lines of pieces i and j, and whether they cross enough."""
        cross = u[i, 0] * u[j, 1] - u[i, 1] * u[j, 0]
        gap = mean[j] - mean[i]
        t = (gap[:, 0] * u[j, 1] - gap[:, 1] * u[j, 0]) / np.where(cross != 0, cross, 1.0)
        at = mean[i] + t[:, None] * u[i]
        return at, straight[i] & straight[j] & (np.abs(cross) >= np.sin(_CORNER_TURN)) & (i != j)

    # Two straight pieces meeting at the start of piece k.
    at, moved = meet(prev, idx)
    moved &= np.hypot(*(at - start).T) <= _CORNER_REACH_PX
    # A chamfer k between straight pieces: k's both corners go to their intersection.
    at2, chamfer = meet(prev, c_next)
    chamfer &= (length <= _CHAMFER_PX) & ~straight & (prev != c_next)
    reach = np.minimum(np.hypot(*(at2 - start).T), np.hypot(*(at2 - start[c_next]).T))
    chamfer &= (reach <= _CORNER_REACH_PX) & ~chamfer[prev] & ~chamfer[c_next]
    start[moved] = at[moved]
    k = np.nonzero(chamfer)[0]
    start[k] = start[c_next[k]] = at2[k]
    moved[k] = moved[c_next[k]] = True
    return start, moved, chamfer


def _smooth_loops(points: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smooth closed contours along their length, without smoothing across corners.

    Parameters
    ----------
    points : ndarray of float, shape (M, 2)
        Loop vertices (row, col), loop after loop; coordinates of each particle's crop.
    offsets : ndarray of int, shape (L + 1,)

    Returns
    -------
    (points, offsets) of the smoothed loops, in the same order.
    """
    counts = np.diff(offsets)
    n_loops = counts.size
    if n_loops == 0:
        return points, offsets
    loop = np.repeat(np.arange(n_loops), counts)
    ahead = np.arange(len(points)) + 1
    ahead[offsets[1:] - 1] = offsets[:-1]
    d = points[ahead] - points
    length = np.bincount(loop, weights=np.hypot(d[:, 0], d[:, 1]), minlength=n_loops)
    # A tiny particle would be shrunk by a 1 px smoothing: cap sigma at a quarter radius.
    sigma = np.minimum(_SMOOTH_PX, length / (8 * np.pi))
    smooth = (sigma >= 0.1) & (counts >= 4)

    # Corners: vertices of the Douglas-Peucker polygon where the outline turns sharply.
    scale = 64.0  # approxPolyDP wants integer points; keep 1/64 px resolution
    pts = np.ascontiguousarray(np.round(points[:, ::-1] * scale).astype(np.int32))
    key = (loop << 42) | ((pts[:, 0].astype(np.int64) + 64) << 21) | (pts[:, 1] + 64)
    poly_keys = []
    for k in np.nonzero(smooth)[0]:
        a, b = offsets[k], offsets[k + 1]
        poly = cv2.approxPolyDP(pts[a:b].reshape(-1, 1, 2), _CORNER_EPS_PX * scale, True)
        if len(poly) >= 3:
            poly = poly.reshape(-1, 2).astype(np.int64)
            poly_keys.append((int(k) << 42) | ((poly[:, 0] + 64) << 21) | (poly[:, 1] + 64))
    n_corners = np.zeros(n_loops, np.int64)
    corner = np.zeros(0, np.int64)
    if poly_keys:
        # approxPolyDP returns a subset of its input points: find them by value.
        vert = np.nonzero(np.isin(key, np.concatenate(poly_keys)))[0]
        vloop = loop[vert]
        head = np.r_[True, vloop[1:] != vloop[:-1]]
        tail = np.r_[vloop[1:] != vloop[:-1], True]
        prev, nxt = np.arange(vert.size) - 1, np.arange(vert.size) + 1
        prev[head], nxt[tail] = np.nonzero(tail)[0], np.nonzero(head)[0]
        v = points[vert]
        d_in, d_out = v - v[prev], v[nxt] - v
        cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
        turn = np.abs(np.arctan2(cross, (d_in * d_out).sum(axis=1)))
        enough = np.bincount(vloop, minlength=n_loops) >= 3
        is_corner = turn >= _CORNER_TURN
        # A corner that the polygon cut (two turns at the ends of a short edge between long
        # ones, summing to a corner's): both ends are corners; `_sharpen_corners` may join
        # the long edges across it.
        s_turn = np.arctan2(cross, (d_in * d_out).sum(axis=1))
        e_len = np.hypot(d_out[:, 0], d_out[:, 1])  # edge from each vertex to the next
        cut = (
            (e_len <= _CHAMFER_PX)
            & (e_len[prev] >= 2 * _CHAMFER_PX)
            & (e_len[nxt] >= 2 * _CHAMFER_PX)
            & (np.abs(s_turn + s_turn[nxt]) >= _CHAMFER_TURN)
            & (s_turn * s_turn[nxt] > 0)
        )
        is_corner |= cut
        is_corner[nxt[cut]] = True
        corner = vert[is_corner & enough[vloop]]
        n_corners = np.bincount(loop[corner], minlength=n_loops)
    # A polygon has a few corners; a ragged outline many, and is smoothed as a whole.
    pieces = smooth & (n_corners >= 2) & (n_corners <= _MAX_CORNERS)
    whole = smooth & ~pieces

    out_counts = counts.copy()
    parts: list[tuple[np.ndarray, np.ndarray]] = []  # (loops, their smoothed points)

    # Whole loops: resample around, Gaussian with wrap-around.
    k_whole = np.nonzero(whole)[0]
    if k_whole.size:
        r, n = _resample(points, _ranges(offsets[k_whole], counts[k_whole]), counts[k_whole], True)
        first = _group_starts(n)[:-1]

        def wrap(q: np.ndarray, line: np.ndarray) -> np.ndarray:
            return r[first[line] + q % n[line]]

        parts.append((k_whole, _gaussian(n, sigma[k_whole] / _STEP_PX, wrap)))
        out_counts[k_whole] = n

    # Loops with corners: each piece between corners resampled with its end points, smoothed
    # with an odd reflection about them (a straight piece stays straight up to the corner);
    # its last point is the next piece's first.
    k_piece = np.nonzero(pieces)[0]
    if k_piece.size:
        cloop = loop[corner]
        sel = pieces[cloop]
        c_at, cloop = corner[sel] - offsets[cloop[sel]], cloop[sel]
        bounds = _group_starts(n_corners[k_piece])
        c_next = np.arange(c_at.size) + 1  # the piece's end corner, around the loop
        c_next[bounds[1:] - 1] = bounds[:-1]
        size = counts[cloop]
        p_len = (c_at[c_next] - c_at) % size + 1
        local = (np.repeat(c_at, p_len) + _within(p_len)) % np.repeat(size, p_len)
        r, n = _resample(points, local + np.repeat(offsets[cloop], p_len), p_len, False)
        reach = np.minimum((4 * sigma[cloop] / _STEP_PX).astype(np.int64) + 1, n - 1)
        first = _group_starts(n)[:-1]

        def reflect(q: np.ndarray, line: np.ndarray) -> np.ndarray:
            nl, kl, f = n[line], reach[line], first[line]
            q = np.clip(q, -kl, nl - 1 + kl)  # 'nearest' beyond the reflected ends
            val = r[f + np.clip(q, 0, nl - 1)]
            lo, hi = q < 0, q >= nl
            val[lo] = 2 * r[f[lo]] - r[f[lo] - q[lo]]
            val[hi] = 2 * r[f[hi] + nl[hi] - 1] - r[f[hi] + 2 * (nl[hi] - 1) - q[hi]]
            return val

        smoothed = _gaussian(n, sigma[cloop] / _STEP_PX, reflect)
        # Straight pieces that meet at a corner are extended to the intersection of their
        # fitted lines, and a piece whose both corners moved is drawn straight between them.
        start, moved, dropped = _sharpen_corners(r, n, c_next)
        pos = _within(n)
        keep = (pos < np.repeat(n, n) - 1) & ((pos == 0) | ~np.repeat(moved & moved[c_next], n))
        keep &= ~np.repeat(dropped, n)
        head = _group_starts(n)[:-1]
        smoothed[head[moved]] = start[moved]
        out_counts[k_piece] = np.bincount(np.repeat(cloop, n)[keep], minlength=n_loops)[k_piece]
        parts.append((k_piece, smoothed[keep]))

    new_offsets = _group_starts(out_counts)
    out = np.empty((int(new_offsets[-1]), 2))
    plain = np.nonzero(~smooth)[0]
    out[_ranges(new_offsets[plain], counts[plain])] = points[_ranges(offsets[plain], counts[plain])]
    for ks, values in parts:
        out[_ranges(new_offsets[ks], out_counts[ks])] = values
    return out, new_offsets


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
    order = np.lexsort((np.arange(counts.size), -counts, loop_particle))
    particle = loop_particle[order]
    outer = order[np.r_[True, particle[1:] != particle[:-1]]]
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


def _zones(
    own: np.ndarray, free: np.ndarray, margin_px: float, ring_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Integration zone (particle + margin nearer to it than to others) and background ring.

    `free` is False on the other particles. Distances are compared squared (exact integers).
    """
    d_own = _squared_edt(~own)
    d_other = _squared_edt(free) if not free.all() else np.full(own.shape, np.inf, np.float32)
    m2, r2 = margin_px * margin_px, (margin_px + ring_px) ** 2
    zone = own | ((d_own <= m2) & (d_own < d_other))
    ring = (d_own > m2) & (d_own <= r2) & (d_other > m2)
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

    pad = intensity_margin_px + background_ring_px + 1
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
            zone, ring = _zones(own, (crop == 0) | own, intensity_margin_px, background_ring_px)
            in_ring = img[ring]
            bg = float(in_ring.mean()) if in_ring.size else global_bg
            cols["background"][i] = bg
            cols["intensity"][i] = sign * float((img[zone] - bg).sum())
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
        "score": score,
        "separated": (
            np.zeros(n, np.int8) if separated is None else np.asarray(separated, np.int8)
        ),
        "border": border,
        "agglomerate": agglomerate,
    }
