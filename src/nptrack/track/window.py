"""Online NP-Tracker: sliding-window CEM with bounded latency.

When frame t arrives its detections are linked to the tracks (gated Hungarian, as the initial
solution), then CEM runs on the window of the last `window_frames` frames: conjugate gradient
on the free points and one epoch of jump moves around the tracks that changed. Frames up to
``t − commit_lag_frames − 1`` are fixed boundary conditions; frame ``t − commit_lag_frames`` is
then committed: its rows (and the events decided by it) are returned and never change again.
Each window starts from the previous solution (warm start). `OnlineTracker.reoptimize` runs the
global CEM over the whole history at any time and returns a new version of all tracks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nptrack.config import TrackConfig
from nptrack.track.cem import Mover, assign_detections, optimize, params_from_config, refine
from nptrack.track.energy import Detections, EnergyParams, Solution, Track
from nptrack.track.events import (
    Event,
    TrackTable,
    _crossings,
    empty_table,
    find_events,
    solution_to_table,
)
from nptrack.track.initial import _link_var, solve_lap
from nptrack.track.moves import _join

__all__ = ["Commit", "OnlineTracker"]

_GATE = 16.0


@dataclass(frozen=True)
class Commit:
    """Rows of one committed frame (final) and the events decided by it."""

    frame: int
    tracks: TrackTable
    events: list[Event] = field(default_factory=list)


class OnlineTracker:
    """Sliding-window tracker; feed frames in order with `update`, then call `finish`.

    Parameters
    ----------
    pixel_size_nm : float
    frame_shape : (height, width) in px, optional
        Field of frame 0 (border distances for births and exits).
    config : TrackConfig, optional
        window_frames W, commit_lag_frames L (needs W ≥ L + 2), weights, mobility law.
    params : EnergyParams, optional
        Fixed energy parameters; by default they come from `config` and are measured on the
        first `window_frames` + 10 frames.
    """

    def __init__(
        self,
        *,
        pixel_size_nm: float,
        frame_shape: tuple[int, int] | None = None,
        config: TrackConfig | None = None,
        params: EnergyParams | None = None,
    ) -> None:
        self.cfg = config or TrackConfig()
        self.W, self.L = self.cfg.window_frames, self.cfg.commit_lag_frames
        if self.W < self.L + 2:
            raise ValueError("window_frames must be at least commit_lag_frames + 2")
        self.pixel_size_nm = float(pixel_size_nm)
        self.frame_shape = frame_shape
        self._fixed_params = params is not None
        self._cols: dict[str, list[NDArray]] = {k: [] for k in ("x", "y", "d", "i", "s", "id")}
        self._offsets = [0]
        self.sol = Solution(first_frame=0, last_frame=-1, frozen_until=-1)
        self.params = params or params_from_config(self.cfg, self._dets(0, -1), estimate=False)
        self._names: dict[int, int] = {}
        self.t = -1
        self.committed_until = -1

    # -- detections ------------------------------------------------------------------------
    def _dets(self, f0: int, f1: int) -> Detections:
        """Detections of frames [f0, f1] (rows numbered from frame f0's first row)."""
        a, b = self._offsets[max(f0, 0)], self._offsets[f1 + 1] if f1 >= 0 else 0
        cat = {k: np.concatenate(v)[a:b] if v else np.zeros(0) for k, v in self._cols.items()}
        frame = np.repeat(np.arange(len(self._offsets) - 1), np.diff(self._offsets))[a:b]
        return Detections.from_arrays(
            frame,
            cat["x"],
            cat["y"],
            diameter_nm=cat["d"],
            intensity=cat["i"],
            score=cat["s"],
            det_id=cat["id"].astype(np.int64),
            pixel_size_nm=self.pixel_size_nm,
            frame_shape=self.frame_shape,
            n_frames=f1 + 1,
        )

    @property
    def detections(self) -> Detections:
        """All detections received so far."""
        return self._dets(0, self.t)

    # -- one frame -------------------------------------------------------------------------
    def update(
        self,
        x: ArrayLike,
        y: ArrayLike,
        *,
        diameter_nm: ArrayLike,
        intensity: ArrayLike,
        score: ArrayLike | None = None,
        det_id: ArrayLike | None = None,
    ) -> Commit | None:
        """Add the detections of the next frame; returns the frame committed now, if any."""
        x = np.asarray(x, float).ravel()
        n = x.size
        self.t += 1
        t = self.t
        base = self._offsets[-1]
        self._cols["x"].append(x)
        self._cols["y"].append(np.asarray(y, float).ravel())
        self._cols["d"].append(np.asarray(diameter_nm, float).ravel())
        self._cols["i"].append(np.asarray(intensity, float).ravel())
        self._cols["s"].append(np.ones(n) if score is None else np.asarray(score, float).ravel())
        ids = np.arange(base, base + n) if det_id is None else np.asarray(det_id).ravel()
        self._cols["id"].append(ids.astype(float))
        self._offsets.append(base + n)
        if not self._fixed_params and t == self.W + 10:
            self.params = params_from_config(self.cfg, self._dets(0, t))
        self._step(t)
        c = t - self.L
        return self._commit(c) if c >= 0 else None

    def finish(self) -> list[Commit]:
        """Commit every remaining frame (end of the series)."""
        out = []
        self.sol.frozen_until = self.t  # nothing may change any more
        for c in range(self.committed_until + 1, self.t + 1):
            out.append(self._commit(c, final=True))
        return out

    def _step(self, t: int) -> None:
        w0 = max(0, t - self.W + 1)
        dets = self._dets(w0, t)
        g0 = self._offsets[w0]
        sub = self._window(w0, t, g0)
        self._extend(sub, dets, t)
        p = self.params
        refine(sub, dets, p, maxiter=3)
        mover = Mover(sub, dets, p)
        mover.active = {i for i, tr in sub.tracks.items() if tr.end > sub.frozen_until}
        mover.run_epoch()
        changed = set(mover.touched) & set(sub.tracks)
        if changed:
            refine(sub, dets, p, ids=changed, maxiter=5)
        assign_detections(sub, dets, p)
        self._write_back(sub, w0, g0)

    def _window(self, w0: int, t: int, g0: int) -> Solution:
        """Tracks of frames [w0, t] with detection rows renumbered for the window."""
        sub = Solution(first_frame=w0, last_frame=t, frozen_until=t - self.L - 1)
        sub.next_id = self.sol.next_id
        for tid, tr in self.sol.tracks.items():
            if tr.end >= w0:
                c = tr.cut(w0, tr.end)
                c.det = np.where(c.det >= 0, c.det - g0, -1)
                sub.tracks[tid] = c
        for cid, f in self.sol.fusions.items():
            if all(m in sub.tracks for m in (cid, *f.parents)):
                sub.fusions[cid] = f
        return sub

    def _extend(self, sub: Solution, dets: Detections, t: int) -> None:
        """Link frame t's detections to track ends (gated Hungarian); the rest start tracks."""
        p = self.params
        sl = dets.rows(t)
        rows = np.arange(sl.start, sl.stop)
        ends = [
            tr
            for tr in sub.tracks.values()
            if t - 1 - p.max_gap_frames <= tr.end < t and tr.end >= sub.frozen_until
        ]
        parents = sub.parent_of()
        ends = [tr for tr in ends if tr.id not in parents]
        R, C, K = [], [], []
        for i, tr in enumerate(ends):
            gap = t - tr.end
            g = tr.det[tr.det >= 0]
            anchor = int(g[-1]) if g.size else -1
            if anchor < 0 or not rows.size:
                continue
            var = _link_var(dets, p, np.array([anchor])) * gap
            d2 = ((dets.xy[rows] - tr.xy[-1]) ** 2).sum(1)
            dv = dets.log_intensity[rows] - tr.u[-1]
            cost = d2 / (2.0 * var) + dv * dv / (2.0 * (2.0 * p.intensity_tolerance) ** 2)
            cost += 0.5 * (gap - 1)
            ok = cost < _GATE
            R += [i] * int(ok.sum())
            C += rows[ok].tolist()
            K += cost[ok].tolist()
        half_r = np.full(len(ends), _GATE / 2.0)
        half_c = np.full(len(dets), _GATE / 2.0)
        ra, rc = solve_lap(np.array(R, int), np.array(C, int), np.array(K), half_r, half_c)
        linked = set()
        for i, g in zip(ra.tolist(), rc.tolist(), strict=True):
            tr = ends[i]
            new = Track(
                tr.id,
                t,
                dets.xy[g : g + 1].copy(),
                dets.log_intensity[g : g + 1].copy(),
                np.array([g]),
            )
            sub.tracks[tr.id] = _join(tr, new, tr.id)
            linked.add(g)
        for g in rows:
            if int(g) not in linked:
                tid = sub.new_id()
                sub.tracks[tid] = Track(
                    tid,
                    t,
                    dets.xy[g : g + 1].copy(),
                    dets.log_intensity[g : g + 1].copy(),
                    np.array([g], dtype=np.int64),
                )

    def _write_back(self, sub: Solution, w0: int, g0: int) -> None:
        sol = self.sol
        for tid in [i for i, tr in sol.tracks.items() if tr.end >= w0]:
            if tid not in sub.tracks:
                del sol.tracks[tid]
        for tid, tr in sub.tracks.items():
            tr = tr.copy()
            tr.det = np.where(tr.det >= 0, tr.det + g0, -1)
            old = sol.tracks.get(tid)
            if old is not None and old.start < tr.start:
                head = old.cut(old.start, tr.start - 1)
                tr = Track(
                    tid,
                    head.start,
                    np.concatenate([head.xy, tr.xy]),
                    np.concatenate([head.u, tr.u]),
                    np.concatenate([head.det, tr.det]),
                )
            sol.tracks[tid] = tr
        for cid in [c for c, f in sol.fusions.items() if c in sub.tracks or c not in sol.tracks]:
            sol.fusions.pop(cid)
        sol.fusions.update(sub.fusions)
        sol.next_id = max(sol.next_id, sub.next_id)
        sol.last_frame = sub.last_frame
        sol.frozen_until = sub.frozen_until

    # -- committing ------------------------------------------------------------------------
    def _name(self, tid: int) -> int:
        if tid not in self._names:
            self._names[tid] = len(self._names)
        return self._names[tid]

    def _commit(self, c: int, *, final: bool = False) -> Commit:
        """Freeze frame c and return its rows and the events it decides."""
        sol = self.sol
        sol.frozen_until = max(sol.frozen_until, c)
        self.committed_until = c
        lo = max(0, c - self.W)
        g0 = self._offsets[lo]
        dets = self._dets(lo, c)
        alive = [tr for tr in sol.tracks.values() if tr.start <= c and tr.end >= lo]
        mini = Solution(first_frame=lo if lo else 0, last_frame=c if not final else self.t)
        for tr in alive:
            cut = tr.cut(lo, c)
            cut.det = np.where(cut.det >= 0, cut.det - g0, -1)
            mini.tracks[tr.id] = cut
        for cid, f in sol.fusions.items():
            if all(m in mini.tracks for m in (cid, *f.parents)):
                mini.fusions[cid] = f
        now = [tr.id for tr in alive if tr.end >= c]
        for tid in sorted(now, key=lambda i: sol.tracks[i].start):
            self._name(tid)
        table = solution_to_table(mini, dets, ids=None)
        table = table.select(table.frame == c)
        if len(table):
            table = replace(table, track_id=np.array([self._name(int(i)) for i in table.track_id]))
        events = self._events(mini, dets, c, final)
        return Commit(c, table, events)

    def _events(self, mini: Solution, dets: Detections, c: int, final: bool) -> list[Event]:
        """Events whose frame is c: births and fusions starting at c, ends just before c."""
        p = self.params
        mini.last_frame = c if not final else self.t
        evs = [
            e
            for e in find_events(mini, dets, p, ids=_Names(self))
            if (e.type in ("birth", "fusion") and e.frame == c and c > 0)
            or (e.type in ("death", "exit") and e.frame == c)
        ]
        for e in _crossings(mini, dets, p, _diam(mini, dets), self._name):
            if e.detail["frames"][1] == c - 1:
                evs.append(e)
        return evs

    # -- global ----------------------------------------------------------------------------
    def reoptimize(self, *, max_epochs: int | None = None) -> tuple[TrackTable, list[Event]]:
        """Global CEM over the whole history, warm-started from the online solution."""
        dets = self.detections
        if not len(dets):
            return empty_table(), []
        p = self.params if self._fixed_params else params_from_config(self.cfg, dets)
        init = self.sol.copy()
        init.frozen_until = -1
        init.last_frame = self.t
        sol = optimize(dets, config=self.cfg, params=p, init=init, max_epochs=max_epochs)
        ids = {
            tid: k
            for k, tid in enumerate(sorted(sol.tracks, key=lambda i: (sol.tracks[i].start, i)))
        }
        return solution_to_table(sol, dets, ids=ids), find_events(sol, dets, p, ids=ids)


class _Names:
    """Mapping internal id → output id that allocates new names on first use."""

    def __init__(self, tracker: OnlineTracker) -> None:
        self.tracker = tracker

    def __getitem__(self, tid: int) -> int:
        return self.tracker._name(tid)


def _diam(sol: Solution, dets: Detections) -> dict[int, float]:
    out = {}
    for t in sol.tracks.values():
        d = t.det[t.det >= 0]
        out[t.id] = float(np.median(dets.diameter_nm[d])) if d.size else np.nan
    return out
