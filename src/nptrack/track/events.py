"""Tracker outputs: the tracks table (tracks.csv) and events (events.csv).

Events (DESIGN.md contract), dated like the simulator's ground truth: ``birth`` (frame of the
first point; ``detail.at_border`` says whether it entered across the border), ``death`` (ends
inside the field) and ``exit`` (ends at the border), both dated by the first frame without the
particle, ``fusion`` (``"a+b>c"``: parents end in frame f − 1, the child starts in frame f) and
``crossing`` (``"a,b"``: two tracks overlap without fusing, e.g. on two surfaces; frame of
closest approach).

Fusions found by the tracker are reported with Faraz et al.'s three criteria in their detail:
one particle disappears (always true for a fusion link), the child is bigger and brighter than
each parent, and mass is conserved (child intensity / parents' sum within a tolerance).
`infer_fusions` applies the same criteria to any set of tracks, e.g. a baseline linker's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from nptrack.track.energy import (
    FRAME_SEP,
    Detections,
    EnergyParams,
    Solution,
    Track,
    out_of_view,
)

__all__ = [
    "Event",
    "TrackTable",
    "events_to_columns",
    "find_events",
    "infer_fusions",
    "out_of_view",
    "solution_to_table",
]


@dataclass(frozen=True)
class Event:
    """One row of events.csv."""

    frame: int
    type: str
    track_ids: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class TrackTable:
    """Columns of tracks.csv; ``det_id`` is −1 and ``state`` 'interpolated' where no detection."""

    frame: NDArray[np.int64]
    track_id: NDArray[np.int64]
    x: NDArray[np.float64]
    y: NDArray[np.float64]
    diameter_nm: NDArray[np.float64]
    intensity: NDArray[np.float64]
    det_id: NDArray[np.int64]
    state: NDArray[np.object_]

    def __len__(self) -> int:
        return int(self.frame.size)

    def as_columns(self) -> dict[str, NDArray[Any]]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def select(self, mask: ArrayLike) -> TrackTable:
        m = np.asarray(mask)
        return TrackTable(**{k: v[m] for k, v in self.as_columns().items()})

    @classmethod
    def concat(cls, tables: Sequence[TrackTable]) -> TrackTable:
        if not tables:
            return empty_table()
        return cls(
            **{k: np.concatenate([getattr(t, k) for t in tables]) for k in cls.__dataclass_fields__}
        )


def empty_table() -> TrackTable:
    z = np.zeros(0)
    zi = np.zeros(0, np.int64)
    return TrackTable(zi, zi, z, z, z, z, zi, np.zeros(0, dtype=object))


def _diameters(t: Track, dets: Detections, shared: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Detection diameter where the point has its own detection, interpolated elsewhere."""
    own = (t.det >= 0) & ~shared
    if not own.any():
        obs = t.det >= 0
        if obs.any():
            return np.full(t.n, float(np.median(dets.diameter_nm[t.det[obs]])) / np.sqrt(2.0))
        return np.full(t.n, float(np.median(dets.diameter_nm)) if len(dets) else np.nan)
    idx = np.flatnonzero(own)
    return np.interp(np.arange(t.n), idx, dets.diameter_nm[t.det[idx]])


def solution_to_table(
    sol: Solution,
    dets: Detections,
    *,
    ids: Mapping[int, int] | None = None,
    params: EnergyParams | None = None,
) -> TrackTable:
    """tracks.csv rows of a solution, sorted by frame then track id.

    `ids` maps internal track ids to the ids to write (default: unchanged). Interpolated
    points that were more likely out of view than missed (`out_of_view`; with `params`, by
    the positional uncertainty of the gap, else only points outside the field) are not
    written: the particle stepped out of the field there.
    """
    trs = sorted(sol.tracks.values(), key=lambda t: (t.start, t.id))
    if not trs:
        return empty_table()
    det_all = np.concatenate([t.det for t in trs])
    counts = np.bincount(det_all[det_all >= 0], minlength=len(dets))
    parts = []
    for t in trs:
        shared = (t.det >= 0) & (counts[np.maximum(t.det, 0)] > 1)
        obs = t.det >= 0
        own = obs & ~shared
        d = float(np.median(dets.diameter_nm[t.det[own]])) if own.any() else np.nan
        d = d if np.isfinite(d) else (params.reference_diameter_nm if params else 1.0)
        seen = ~out_of_view(t, dets, params, d)
        parts.append(
            TrackTable(
                frame=np.arange(t.start, t.end + 1, dtype=np.int64),
                track_id=np.full(t.n, t.id if ids is None else ids[t.id], dtype=np.int64),
                x=t.xy[:, 0].copy(),
                y=t.xy[:, 1].copy(),
                diameter_nm=_diameters(t, dets, shared),
                intensity=np.exp(t.u),
                det_id=np.where(obs, dets.det_id[np.maximum(t.det, 0)], -1).astype(np.int64),
                state=np.where(obs, "observed", "interpolated").astype(object),
            ).select(seen)
        )
    tab = TrackTable.concat(parts)
    return tab.select(np.lexsort((tab.track_id, tab.frame)))


def _border_px(xy: NDArray[np.float64], shape: tuple[int, int] | None) -> float:
    if shape is None:
        return np.inf
    h, w = shape
    return float(min(xy[0], xy[1], w - 1 - xy[0], h - 1 - xy[1]))


def _fusion_detail(
    parents: Sequence[Track], child: Track, diam: Mapping[int, float], params: EnergyParams
) -> dict[str, Any]:
    ip = np.array([np.exp(p.u[-1]) for p in parents])
    ic = float(np.exp(child.u[0]))
    dp = np.array([diam[p.id] for p in parents])
    pts = np.array([p.xy[-1] for p in parents])
    ratio = ic / float(ip.sum())
    return {
        "x": round(float(child.xy[0, 0]), 3),
        "y": round(float(child.xy[0, 1]), 3),
        "mass_ratio": round(ratio, 4),
        "distance_px": round(float(np.max(np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)))), 3),
        "grows": bool(ic > ip.max() and diam[child.id] > dp.max()),
        "mass_conserved": bool(abs(np.log(ratio)) <= 3.0 * params.mass_tolerance),
    }


def find_events(
    sol: Solution,
    dets: Detections,
    params: EnergyParams,
    *,
    ids: Mapping[int, int] | None = None,
) -> list[Event]:
    """Births, deaths, exits, fusions and crossings of a solution, sorted by frame."""
    name = (lambda i: i) if ids is None else ids.__getitem__
    trs = sol.tracks
    diam: dict[int, float] = {}
    for t in trs.values():
        d = t.det[t.det >= 0]
        diam[t.id] = float(np.median(dets.diameter_nm[d])) if d.size else np.nan
    parent_of = sol.parent_of()
    margin = params.border_margin_px
    out: list[Event] = []
    for f in sol.fusions.values():
        child = trs[f.child]
        parents = [trs[p] for p in sorted(f.parents)]
        label = "+".join(str(name(p.id)) for p in parents) + f">{name(child.id)}"
        out.append(
            Event(child.start, "fusion", label, _fusion_detail(parents, child, diam, params))
        )
    for t in trs.values():
        if t.start > sol.first_frame and t.id not in sol.fusions:
            b = _border_px(t.xy[0], params.frame_shape)
            out.append(Event(t.start, "birth", str(name(t.id)), {"at_border": bool(b < margin)}))
        if t.end < sol.last_frame and t.id not in parent_of:
            # as in the simulator's ground truth: the first frame without the particle
            b = _border_px(t.xy[-1], params.frame_shape)
            kind = "exit" if b < margin else "death"
            out.append(Event(t.end + 1, kind, str(name(t.id)), {"border_px": round(b, 3)}))
    out += _crossings(sol, dets, params, diam, name)
    return sorted(out, key=lambda e: (e.frame, e.type, e.track_ids))


def _crossings(
    sol: Solution, dets: Detections, params: EnergyParams, diam: Mapping[int, float], name: Any
) -> list[Event]:
    """Pairs that overlap (or share a detection) while neither ends in a fusion there."""
    trs = list(sol.tracks.values())
    if len(trs) < 2:
        return []
    tid = np.repeat([t.id for t in trs], [t.n for t in trs])
    fr = np.concatenate([np.arange(t.start, t.end + 1) for t in trs])
    xy = np.concatenate([t.xy for t in trs])
    det = np.concatenate([t.det for t in trs])
    dd = np.array([diam[i] for i in tid])
    dd = np.where(np.isfinite(dd), dd, params.reference_diameter_nm)
    r = float(params.contact_px(dd.max(), dd.max()))
    pairs = cKDTree(np.column_stack([xy, fr * FRAME_SEP])).query_pairs(r, output_type="ndarray")
    if not pairs.size:
        return []
    a, b = pairs.T
    dist = np.sqrt(((xy[a] - xy[b]) ** 2).sum(1))
    shared = (det[a] >= 0) & (det[a] == det[b])
    ok = (tid[a] != tid[b]) & ((dist < params.contact_px(dd[a], dd[b])) | shared)
    fused = {frozenset(f.parents) for f in sol.fusions.values()}
    out = []
    groups: dict[tuple[int, int], list[int]] = {}
    for k in np.flatnonzero(ok):
        key = (int(min(tid[a[k]], tid[b[k]])), int(max(tid[a[k]], tid[b[k]])))
        groups.setdefault(key, []).append(int(k))
    for (i, j), ks in groups.items():
        if any({i, j} <= s for s in fused):
            continue
        ti, tj = sol.tracks[i], sol.tracks[j]
        f_lo, f_hi = int(fr[a[ks]].min()), int(fr[a[ks]].max())
        # both must live on after the overlap (otherwise it is a fusion or a duplicate)
        if ti.end <= f_hi or tj.end <= f_hi or ti.start >= f_lo or tj.start >= f_lo:
            continue
        best = ks[int(np.argmin(dist[ks]))]
        out.append(
            Event(
                int(fr[a[best]]),
                "crossing",
                f"{name(i)},{name(j)}",
                {
                    "frames": [f_lo, f_hi],
                    "min_distance_px": round(float(dist[best]), 3),
                    "superposed": bool(shared[ks].any()),
                },
            )
        )
    return out


def infer_fusions(
    tracks: TrackTable | Mapping[str, ArrayLike],
    *,
    pixel_size_nm: float,
    frame_shape: tuple[int, int] | None = None,
    mass_tolerance: float = 0.25,
    radius_factor: float = 1.5,
) -> list[Event]:
    """Fusions in any set of tracks by the three criteria (for linkers without fusion moves).

    A track ending inside the field fuses into a neighbour alive in the next frame when the two
    were closer than `radius_factor` × the sum of their radii, and the neighbour's intensity
    rises by the lost track's intensity within `mass_tolerance` (log units).
    """
    cols = tracks.as_columns() if isinstance(tracks, TrackTable) else tracks
    f = np.asarray(cols["frame"], dtype=np.int64)
    tid = np.asarray(cols["track_id"], dtype=np.int64)
    xy = np.column_stack([np.asarray(cols["x"], float), np.asarray(cols["y"], float)])
    inten = np.asarray(cols["intensity"], float)
    d = np.asarray(cols["diameter_nm"], float)
    last_frame = int(f.max()) if f.size else 0
    key = {(int(a), int(b)): k for k, (a, b) in enumerate(zip(tid, f, strict=True))}
    out = []
    for t in np.unique(tid):
        sel = np.flatnonzero(tid == t)
        e = sel[np.argmax(f[sel])]
        fe = int(f[e])
        if fe >= last_frame or _border_px(xy[e], frame_shape) < 0.5 * d[e] / pixel_size_nm:
            continue
        same = np.flatnonzero((f == fe) & (tid != t))
        for k in same:
            reach = radius_factor * 0.5 * (d[e] + d[k]) / pixel_size_nm
            nxt = key.get((int(tid[k]), fe + 1))
            if nxt is None or np.hypot(*(xy[e] - xy[k])) > reach:
                continue
            ratio = inten[nxt] / (inten[e] + inten[k])
            if abs(np.log(max(ratio, 1e-9))) <= mass_tolerance and inten[nxt] > inten[k]:
                out.append(
                    Event(
                        fe + 1,
                        "fusion",
                        f"{int(min(t, tid[k]))}+{int(max(t, tid[k]))}>{int(tid[k])}",
                        {
                            "x": float(xy[nxt, 0]),
                            "y": float(xy[nxt, 1]),
                            "mass_ratio": float(ratio),
                        },
                    )
                )
                break
    return out


def events_to_columns(events: Sequence[Event]) -> dict[str, NDArray[Any]]:
    """events.csv columns (detail as a dict; the writer serialises it as JSON)."""
    return {
        "frame": np.array([e.frame for e in events], dtype=np.int64),
        "type": np.array([e.type for e in events], dtype=object),
        "track_ids": np.array([e.track_ids for e in events], dtype=object),
        "detail": np.array([e.detail for e in events], dtype=object),
    }
