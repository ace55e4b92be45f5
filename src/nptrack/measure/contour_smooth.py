"""Sub-pixel outlines: marching-squares loops resampled and smoothed along their length.

The raw contour of a binary particle is a digital staircase (it overstates the perimeter of
a disk by ~6 %). Each loop is resampled every `_STEP_PX` and smoothed with a Gaussian
(sigma `_SMOOTH_PX`) along its arc length, separately between detected corners so that a
square keeps its corners; where two straight edges meet at a corner, the corner is put where
their fitted lines meet (`_sharpen_corners`). Loops are stored as in
`nptrack.measure.contour`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import cv2
import numpy as np
from scipy import ndimage as ndi

from nptrack.measure.contour import _group_starts, _ranges, _segmented_cumsum, _within

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
