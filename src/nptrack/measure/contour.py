"""Marching-squares outlines of every particle of a label image at once.

All particles of a frame are outlined together: loops (closed polylines) are stored
concatenated, ``points[offsets[k]:offsets[k + 1]]`` being loop k, and the helpers here work
on such groups (offsets, positions within a group, per-group cumulative sums) with a few
array operations over every loop instead of a Python loop over particles. Smoothing is in
`nptrack.measure.contour_smooth`, the measures in `nptrack.measure.props`.

Coordinates: (row, col), origin at the centre of the top-left pixel.
"""

from __future__ import annotations

import numpy as np

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
