"""Date a fusion by the drop in projected area, not by the first contact of its parents.

Two particles that touch are segmented as one blob long before they coalesce: the blob holds
the mass of both (its intensity is the parents' sum, as after the fusion), so intensity cannot
tell contact from coalescence. The projected area can. Touching particles keep the sum of their
areas, so the blob's equivalent diameter is ``sqrt(Σ d_k²)``; once they have coalesced the
particle rounds up to one particle of the summed volume, ``(Σ d_k³)^(1/3)``, about 10 % smaller
for two equal parents. The fusion frame is the change point of the child's measured diameters
between those two levels; before it, the parents live on, superposed on the blob.

The step works on a finished solution (after CEM, or on each online window): for every fusion
whose child begins with blob-sized detections, the child starts later and its parents take its
first points (each keeps its own log intensity, so the shared blob is explained by their sum,
as for a crossing).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from nptrack.track.energy import Detections, Fusion, Solution, Track

__all__ = ["diameter_noise", "retime_fusions"]


def diameter_noise(sol: Solution, dets: Detections) -> float:
    """Scatter (log units, per detection) of the measured diameter along tracks.

    From successive own detections of each track (robust: median absolute difference), so the
    change point below is judged against the segmentation's real size noise.
    """
    diffs = []
    for t in sol.tracks.values():
        d = t.det[t.det >= 0]
        if d.size >= 3:
            diffs.append(np.diff(np.log(dets.diameter_nm[d])))
    if not diffs:
        return 0.05
    mad = float(np.median(np.abs(np.concatenate(diffs))))
    # a − b of two independent errors is N(0, 2σ²): its median |·| is 0.954 σ
    return max(mad / 0.954, 0.005)


def _own_diameter(t: Track, dets: Detections, counts: NDArray[np.int64], last: int) -> float:
    """Median diameter of the last `last` detections t holds alone (NaN if none)."""
    own = t.det[(t.det >= 0) & (counts[np.maximum(t.det, 0)] == 1)]
    if not own.size:
        return np.nan
    return float(np.median(dets.diameter_nm[own[-last:]]))


def _change_point(
    logd: NDArray[np.float64], blob: float, fused: float, sigma: float, min_gain: float
) -> int:
    """Number of leading blob-sized frames (0: keep the fusion where it is).

    Model: the first k diameters sit at the blob level, the rest at one level of their own
    (the child's size also drifts by ripening, and a neighbour on the other surface may add to
    its blob). k is kept when it beats "one level from the first frame" by `min_gain` σ² and
    the level after it is nearer the fused size than the blob size.
    """
    n = logd.size
    csum = np.concatenate([[0.0], np.cumsum(logd)])
    csq = np.concatenate([[0.0], np.cumsum(logd**2)])
    k = np.arange(n)  # k blob frames, at least one frame after
    m = n - k
    mean_after = (csum[n] - csum[k]) / m
    sse_after = (csq[n] - csq[k]) - m * mean_after**2
    sse_before = np.concatenate([[0.0], np.cumsum((logd - blob) ** 2)])[:-1]
    cost = sse_before + sse_after
    best = int(np.argmin(cost))
    gain = (cost[0] - cost[best]) / sigma**2
    nearer_fused = mean_after[best] - fused < 0.5 * (blob - fused)
    return best if gain >= min_gain and nearer_fused else 0


def retime_fusions(
    sol: Solution,
    dets: Detections,
    *,
    max_frames: int = 20,
    min_gain: float = 4.0,
    min_contrast: float = 2.0,
    sigma: float | None = None,
    unfuse_at_end: bool = False,
) -> set[int]:
    """Move each fusion to the frame where the child's diameter drops (in place).

    Parameters
    ----------
    sol : Solution
        Changed in place; committed frames (``≤ sol.frozen_until``) are never touched.
    dets : Detections
    max_frames : int
        How many of the child's first frames may still be touching parents.
    min_gain : float
        Evidence needed to move a fusion: the change point must explain the child's diameters
        better than "fused from its first frame" by this much (in units of σ², i.e. twice a
        log-likelihood ratio).
    min_contrast : float
        Skip fusions whose blob and fused diameters differ by less than this many σ (very
        unequal parents: the area barely changes).
    sigma : float, optional
        Log-diameter noise per detection (default: measured, `diameter_noise`).
    unfuse_at_end : bool
        Also drop fusions whose child keeps the blob size until the end of the series (the
        parents touch but have not coalesced yet). Only for a finished series: online, the
        drop may still come in the next frames.

    Returns
    -------
    set of int
        Ids of the tracks changed.
    """
    # only fusions whose child starts in free frames (online: most are committed already)
    todo = [
        (cid, f)
        for cid, f in sol.fusions.items()
        if cid in sol.tracks and sol.tracks[cid].start > sol.frozen_until + 1
    ]
    if not todo:
        return set()
    s = diameter_noise(sol, dets) if sigma is None else sigma
    det_all = np.concatenate([t.det for t in sol.tracks.values()])
    counts = np.bincount(det_all[det_all >= 0], minlength=len(dets))
    changed: set[int] = set()
    parent_of = sol.parent_of()
    for cid, f in todo:
        child = sol.tracks.get(cid)
        parents = [sol.tracks.get(p) for p in f.parents]
        if child is None or any(p is None for p in parents) or child.n < 2:
            continue
        if any(p.end != child.start - 1 for p in parents):  # type: ignore[union-attr]
            continue  # not a plain fusion link (e.g. a parent cut by a window)
        if child.start <= sol.frozen_until + 1:
            continue
        dp = np.array([_own_diameter(p, dets, counts, 8) for p in parents])  # type: ignore[arg-type]
        if not np.isfinite(dp).all():
            continue
        blob = 0.5 * np.log((dp**2).sum())
        fused = np.log((dp**3).sum()) / 3.0
        if blob - fused < min_contrast * s:
            continue
        head = child.det[:max_frames]
        obs = np.flatnonzero(head >= 0)
        if obs.size < 2:
            continue
        k = _change_point(np.log(dets.diameter_nm[head[obs]]), blob, fused, s, min_gain)
        if k > 0:
            n = int(obs[k])  # the child's first point at the fused size
        elif (
            unfuse_at_end
            and child.end >= sol.last_frame
            and _never_fused(child, dets, blob, fused, s, parent_of, max_frames)
        ):
            n = child.n
        else:
            continue
        _move_fusion(sol, f, child, parents, n)  # type: ignore[arg-type]
        changed.update((cid, *f.parents))
    return changed


def _move_fusion(sol: Solution, f: Fusion, child: Track, parents: list[Track], n: int) -> None:
    """The child's first `n` points become points of every parent (the parents touch)."""
    head = child.cut(child.start, child.start + n - 1)
    centre = _centre(parents)
    for p in parents:
        # each parent keeps its mass; its position follows the blob, offset as it arrived
        # (the blob's centre is the mass-weighted centre of the touching pair)
        off = p.xy[-1] - centre
        p.xy = np.concatenate([p.xy, head.xy + 0.5 * off])
        p.u = np.concatenate([p.u, np.full(n, p.u[-1])])
        p.det = np.concatenate([p.det, head.det])
    if n >= child.n:  # never coalesced: the parents go on touching to the end
        del sol.tracks[child.id], sol.fusions[child.id]
        return
    rest = child.cut(child.start + n, child.end)
    child.start, child.xy, child.u, child.det = rest.start, rest.xy, rest.u, rest.det
    sol.fusions[child.id] = f


def _never_fused(
    child: Track,
    dets: Detections,
    blob: float,
    fused: float,
    sigma: float,
    parent_of: dict[int, int],
    max_frames: int,
) -> bool:
    """The child keeps the blob size to the end of the series (clearly above the fused size).

    Judged on its first `max_frames` detections: over a long series the coalesced particle
    grows (ripening) past the blob size of its parents, and its mean over the whole series
    would undo a plain fusion, leaving the parents as two tracks on one particle to the end.
    """
    obs = child.det[child.det >= 0][:max_frames]
    if child.id in parent_of or obs.size < 3:
        return False
    logd = np.log(dets.diameter_nm[obs])
    level = float(logd.mean())
    nearer_blob = level - fused > 0.5 * (blob - fused)
    return nearer_blob and (level - fused) * np.sqrt(obs.size) / sigma >= 3.0


def _centre(parents: list[Track]) -> NDArray[np.float64]:
    """Mass-weighted centre of the parents' last points."""
    w = np.exp(np.array([p.u[-1] for p in parents]))
    xy = np.array([p.xy[-1] for p in parents])
    return (w[:, None] * xy).sum(0) / w.sum()
