"""Lineages: track lengths, fusion counts and the coalescence share of growth."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from nptrack.analysis.fits import (
    NAN,
    _i64,
    _runs,
    sphere_volume_nm3,
)

__all__ = [
    "coalescence_share",
    "fusion_counts",
    "track_lengths",
]


def track_lengths(frame: ArrayLike, track_id: ArrayLike) -> dict[str, np.ndarray]:
    """Per track: ``track_id``, ``first_frame``, ``last_frame``, ``n_frames`` (positions)."""
    f, tid = _i64(frame), _i64(track_id)
    ids, inv, counts = np.unique(tid, return_inverse=True, return_counts=True)
    first = np.full(ids.size, np.iinfo(np.int64).max)
    last = np.full(ids.size, np.iinfo(np.int64).min)
    np.minimum.at(first, inv, f)
    np.maximum.at(last, inv, f)
    return {"track_id": ids, "first_frame": first, "last_frame": last, "n_frames": counts}


def fusion_counts(event_frame: ArrayLike, event_type: ArrayLike, *, n_frames: int) -> np.ndarray:
    """Fusions per frame, shape (n_frames,); events outside 0..n_frames − 1 are ignored."""
    f = _i64(event_frame)
    kind = np.asarray(event_type, dtype=object).ravel()
    sel = (kind == "fusion") & (f >= 0) & (f < n_frames)
    return np.bincount(f[sel], minlength=int(n_frames)).astype(np.int64)


def _event_rows(events: Any) -> list[Mapping[str, Any]]:
    if isinstance(events, Mapping):  # a table of columns
        n = len(np.asarray(events["frame"]))
        return [{k: np.asarray(v, dtype=object)[i] for k, v in events.items()} for i in range(n)]
    return [e if isinstance(e, Mapping) else vars(e) for e in events]


def _parse_fusions(events: Any) -> dict[int, list[tuple[int, list[int]]]]:
    """child → [(frame, parents)] of the fusion events (``"a+b>c"``)."""
    out: dict[int, list[tuple[int, list[int]]]] = {}
    for e in _event_rows(events):
        if str(e.get("type", "")) != "fusion":
            continue
        left, _, right = str(e["track_ids"]).partition(">")
        if not right:
            continue
        out.setdefault(int(right), []).append((int(e["frame"]), [int(p) for p in left.split("+")]))
    return out


def coalescence_share(
    track_frame: ArrayLike,
    track_id: ArrayLike,
    diameter_nm: ArrayLike,
    events: Sequence[Mapping[str, Any]],
) -> dict[str, float]:
    """Share of the survivors' growth that came from fusions (the rest: Ostwald ripening and
    any other continuous exchange).

    Definition. Volumes are spheres π d³ / 6 of the tracked diameters. The survivors are the
    tracks present in the last frame of the table. The main line of a survivor is followed
    back through fusion events ``"a+b>c"`` from the child to its largest parent (largest
    volume at the parent's last position before the fusion frame; parents without a position
    are ignored), until a track that was not born from a fusion. Along it:

    - the fusion gain of each fusion is the child's volume at its first position (from the
      fusion frame on) minus that largest parent's last volume: the volume brought in by the
      other parent(s);
    - the growth is the survivor's volume in the last frame minus the volume at the first
      position of the main line.

    growth = Σ fusion gains + continuous change, exactly, for every survivor; the share is
    Σ fusion gains / Σ growth over survivors (NaN when the net growth is ≤ 0). In the
    simulator, fusions conserve volume, so a fusion gain is the smaller parent's volume and
    the continuous change is ripening: the share is 1 without ripening, 0 without fusions.
    A share > 1 means the survivors lost volume besides their fusions.

    Parameters
    ----------
    track_frame, track_id : array_like of int, shape (n,)
    diameter_nm : array_like, shape (n,)
    events : sequence of mappings (or objects with attributes), or a mapping of columns
        Rows with ``frame``, ``type`` and ``track_ids``; only fusions are used.

    Returns
    -------
    dict
        ``coalescence_share`` with ``coalescence_share_se`` (ratio-estimator se over the
        survivors), ``coalescence_volume_nm3`` (Σ fusion gains),
        ``growth_volume_nm3`` (Σ growth), ``ripening_volume_nm3`` (their difference),
        ``n_fusions`` (fusions on survivors' main lines), ``n_fusion_events`` (all fusions
        in `events`), ``n_survivors``.
    """
    f, tid, v = _i64(track_frame), _i64(track_id), sphere_volume_nm3(diameter_nm)
    ok = np.isfinite(v)
    f, tid, v = f[ok], tid[ok], v[ok]
    fusions = _parse_fusions(events)
    order = np.lexsort((f, tid))
    f, tid, v = f[order], tid[order], v[order]
    ids, starts, stops = _runs(tid)
    rows = {int(t): (f[a:b], v[a:b]) for t, a, b in zip(ids, starts, stops, strict=True)}

    def first_from(t: int, frame0: int) -> float:
        ft, vt = rows[t]
        k = np.searchsorted(ft, frame0)
        return float(vt[k]) if k < ft.size else NAN

    def last_before(t: int, frame0: int) -> float:
        if t not in rows:
            return NAN
        ft, vt = rows[t]
        k = np.searchsorted(ft, frame0) - 1
        return float(vt[k]) if k >= 0 else NAN

    last_frame = int(f.max()) if f.size else 0
    survivors = [t for t, (ft, _) in rows.items() if ft[-1] == last_frame]
    gains, growths = np.zeros(len(survivors)), np.zeros(len(survivors))
    n_fus = 0
    for k, s in enumerate(survivors):
        track, bound = s, last_frame
        while True:  # back along the main line; `bound` falls at every step, so it ends
            earlier = [(fr, ps) for fr, ps in fusions.get(track, []) if fr <= bound]
            if not earlier:
                break
            fr, parents = max(earlier, key=lambda e: e[0])
            pv = {p: last_before(p, fr) for p in parents}
            pv = {p: x for p, x in pv.items() if np.isfinite(x)}
            child_v = first_from(track, fr)
            if not pv or not np.isfinite(child_v):
                break
            big = max(pv, key=pv.__getitem__)
            gains[k] += child_v - pv[big]
            n_fus += 1
            track, bound = big, fr - 1
        # the main line starts at the first position of the track the walk stopped on
        growths[k] = float(rows[s][1][-1]) - float(rows[track][1][0])
    gain_total, growth_total = float(gains.sum()), float(growths.sum())
    share, share_se = NAN, NAN
    if growth_total > 0:
        share = gain_total / growth_total
        m = len(survivors)
        if m > 1:  # ratio estimator over survivors (lineage scatter and measurement noise)
            resid = gains - share * growths
            share_se = float(np.sqrt(m / (m - 1) * np.sum(resid**2)) / growth_total)
    return {
        "coalescence_share": float(share),
        "coalescence_share_se": share_se,
        "coalescence_volume_nm3": float(gain_total),
        "growth_volume_nm3": float(growth_total),
        "ripening_volume_nm3": float(growth_total - gain_total),
        "n_fusions": int(n_fus),
        "n_fusion_events": int(sum(len(x) for x in fusions.values())),
        "n_survivors": len(survivors),
    }
