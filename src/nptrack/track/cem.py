"""Global Continuous Energy Minimisation: conjugate gradient alternated with jump moves.

`optimize` starts from the gated Hungarian solution (`nptrack.track.initial`), runs conjugate
gradient (Polak–Ribière, scipy) on all positions and log intensities, then alternates epochs of
jump moves (merge, fuse, unfuse, grow, shrink, split, cross, add, remove; see
`nptrack.track.moves`) with conjugate gradient restricted to the tracks the moves changed and
their neighbours, until an epoch applies no move. `Mover` evaluates a move on the local
subproblem around it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.spatial import cKDTree

from nptrack.config import TrackConfig
from nptrack.track.energy import (
    FRAME_SEP,
    Detections,
    EnergyParams,
    Fusion,
    Packed,
    Solution,
    Track,
    endpoint_energy,
    group_median,
    pack,
    point_frames,
)
from nptrack.track.initial import estimate_params, initial_solution
from nptrack.track.moves import GENERATORS, MOVE_ORDER, Move, sizes_apart
from nptrack.track.retime import retime_fusions

__all__ = [
    "FreshTracks",
    "Mover",
    "Progress",
    "assign_detections",
    "drop_faint_tracks",
    "optimize",
    "params_from_config",
    "refine",
]


def params_from_config(
    config: TrackConfig | None, dets: Detections, *, estimate: bool = True
) -> EnergyParams:
    """Energy parameters: weights and laws from `config`, scales measured on `dets`."""
    cfg = config or TrackConfig()
    px = dets.pixel_size_nm
    max_step = cfg.max_step_nm / px
    p = EnergyParams(
        weight_detection=cfg.weight_detection,
        weight_dynamics=cfg.weight_dynamics,
        weight_intensity=cfg.weight_intensity,
        weight_exclusion=cfg.weight_exclusion,
        weight_persistence=cfg.weight_persistence,
        weight_regularisation=cfg.weight_regularisation,
        motion=cfg.motion,
        pixel_size_nm=px,
        frame_shape=dets.frame_shape,
        mobility_exponent=cfg.mobility_exponent,
        max_step_px=max_step,
        step_sigma_px=max_step / 4.0,
        max_gap_frames=cfg.max_gap_frames,
    )
    if estimate:
        p = estimate_params(dets, p)
        p = estimate_params(dets, p)  # second pass: gates from the measured mobility
    return p


class FreshTracks:
    """Tracks added since the last `Mover.reindex` (not in its point tree), with a box index.

    `Mover.neighbours` must look at each of them; checking every one in turn made each call
    cost as much as the moves applied so far in the epoch (thousands over a long series, so
    an epoch grew with the square of the history). Each track's frame range and position
    box are kept in arrays, and only tracks whose box comes within the radius of the query
    are checked point by point: the same answer, at a cost that stays local.
    """

    def __init__(self) -> None:
        self._tracks: dict[int, Track] = {}
        self._row: dict[int, int] = {}
        self._ids = np.zeros(64, dtype=np.int64)
        # start, end, x min, x max, y min, y max; rows of removed tracks are marked dead
        self._box = np.zeros((64, 6))
        self._alive = np.zeros(64, dtype=bool)
        self._n = 0

    def __len__(self) -> int:
        return len(self._tracks)

    def __contains__(self, tid: object) -> bool:
        return tid in self._tracks

    def __getitem__(self, tid: int) -> Track:
        return self._tracks[tid]

    def __setitem__(self, tid: int, track: Track) -> None:
        self.pop(tid)
        if self._n == self._ids.size:  # grow by doubling: appends stay O(1) amortised
            self._ids = np.concatenate([self._ids, np.zeros_like(self._ids)])
            self._box = np.concatenate([self._box, np.zeros_like(self._box)])
            self._alive = np.concatenate([self._alive, np.zeros_like(self._alive)])
        k = self._n
        self._n += 1
        self._tracks[tid], self._row[tid] = track, k
        self._ids[k] = tid
        if track.n:
            lo, hi = track.xy.min(axis=0), track.xy.max(axis=0)
            self._box[k] = (track.start, track.end, lo[0], hi[0], lo[1], hi[1])
            self._alive[k] = True

    def pop(self, tid: int, default: Track | None = None) -> Track | None:
        """Remove track `tid` (its row is marked dead); the track, else `default`."""
        k = self._row.pop(tid, None)
        if k is None:
            return default
        self._alive[k] = False
        return self._tracks.pop(tid)

    def near(self, q: NDArray[np.float64], radius: float) -> list[tuple[int, Track]]:
        """Tracks that may have a point within `radius` of a query point (x, y,
        frame·FRAME_SEP) in its frame: overlapping frames and boxes (a superset)."""
        if not self._tracks or not len(q):
            return []
        n, b = self._n, self._box[: self._n]
        f_lo, f_hi = q[:, 2].min() / FRAME_SEP, q[:, 2].max() / FRAME_SEP
        r = radius + 1e-9  # the exact test decides; the boxes only leave out what cannot hit
        lo, hi = q[:, :2].min(axis=0) - r, q[:, :2].max(axis=0) + r
        ok = self._alive[:n] & (b[:, 1] >= f_lo) & (b[:, 0] <= f_hi)
        ok &= (b[:, 3] >= lo[0]) & (b[:, 2] <= hi[0]) & (b[:, 5] >= lo[1]) & (b[:, 4] <= hi[1])
        return [(int(i), self._tracks[int(i)]) for i in self._ids[:n][ok]]


class Progress:
    """A one-line status of a long global optimisation, at most every `every_s` seconds.

    The global CEM of a long session runs for minutes; without a word the user cannot tell
    it from a hang. `optimize` calls `tick` often (after each group of moves, each CG
    iteration of the whole problem): it costs a clock reading unless a line is due.

    Parameters
    ----------
    report : callable
        Receives each line (e.g. the session's status output or a logger).
    label : str
        What runs, first in each line (e.g. "final global re-optimisation of 1000 frames,
        start 1 of 2").
    expected_s : float, optional
        How long it is expected to take (e.g. as long as a previous start did): the line then
        says how much is left, about.
    every_s : float
        Seconds between lines.
    clock : callable
        Seconds (monotonic); injectable for tests.
    """

    def __init__(
        self,
        report: Callable[[str], None],
        label: str = "global optimisation",
        *,
        expected_s: float | None = None,
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.report, self.label, self.expected_s = report, label, expected_s
        self.every_s, self.clock = every_s, clock
        self.t0 = self.last = clock()

    def elapsed(self) -> float:
        """Seconds since this progress was made."""
        return self.clock() - self.t0

    def tick(self, stage: Callable[[], str]) -> None:
        """Report ``label: stage(), elapsed[, left]`` if the last line is `every_s` old."""
        now = self.clock()
        if now - self.last < self.every_s:
            return
        self.last = now
        took = now - self.t0
        line = f"{self.label}: {stage()}; {took:.0f} s"
        if self.expected_s is not None:
            left = self.expected_s - took
            line += f", about {left:.0f} s left" if left >= 1 else ", should end soon"
        self.report(line)


class Mover:
    """Evaluates and applies moves on a solution (changed in place)."""

    def __init__(
        self,
        sol: Solution,
        dets: Detections,
        params: EnergyParams,
        *,
        size_hint: Mapping[int, float] | None = None,
        history: tuple[dict[int, Track], NDArray[np.float64]] | None = None,
    ) -> None:
        self.sol, self.dets, self.p = sol, dets, params
        # online: each track's size measured alone before the window, and its whole history
        # (detection rows, diameters) for sizes of two tracks seen apart before the window
        self.size_hint = size_hint or {}
        self.history = history
        self.touched: set[int] = set()
        self.active: set[int] | None = None  # tracks whose moves are tried (None: all)
        self.progress: Progress | None = None  # a status line now and then (long runs)
        self.epoch = 0  # epochs run (`run_epoch`), for the status line
        self.tabu: set[tuple] = set()  # fusion decisions taken in this run (no undoing)
        # online: a fusion is only made once the blob's size has dropped below the summed
        # area of the parents (the decision is committed before any later re-dating)
        self.fusion_needs_drop = False
        # a fusion's parents may still be one frame's relative step apart at their last frame
        # (global runs); online keeps the plain contact gate, its fusions are committed
        self.fusion_gate_step = True
        # frames around a change that enter its evaluation; intensities are re-solved in all
        # but the outer two (they anchor the window to the rest of the tracks)
        self.margin = 8
        # in a window the end terms are computed apart, on whole tracks
        self.p_win = replace(params, weight_persistence=0.0, weight_regularisation=0.0)
        self.add_tried = np.zeros(len(dets), bool)
        dmax = float(dets.diameter_nm.max()) if len(dets) else params.reference_diameter_nm
        self.rmax = float(params.contact_px(dmax, dmax))
        self.reindex()

    def reindex(self) -> None:
        """Rebuild the point index and the detection usage (after CG or a round of moves)."""
        trs = list(self.sol.tracks.values())
        ids = np.array([t.id for t in trs], dtype=np.int64)
        lens = np.array([t.n for t in trs], dtype=np.int64)
        self.point_ids = np.repeat(ids, lens)
        self.tree = None
        self.fresh = FreshTracks()
        self.used = np.zeros(len(self.dets), dtype=np.int64)
        self.diam = {}
        if not trs:
            return
        xy = np.concatenate([t.xy for t in trs])
        frames = point_frames(trs, lens)
        self.tree = cKDTree(np.column_stack([xy, frames * FRAME_SEP]))
        det = np.concatenate([t.det for t in trs])
        obs = det >= 0
        np.add.at(self.used, det[obs], 1)
        # a particle's size is measured where it is alone, not in a blob it shares
        own = obs & (self.used[np.maximum(det, 0)] == 1)
        grp = np.repeat(np.arange(len(trs)), lens)
        med = group_median(self.dets.diameter_nm[det[own]], grp[own], len(trs))
        for i in np.flatnonzero(np.isnan(med)):
            med[i] = self.track_diameter(trs[i])
        self.diam = dict(zip(ids.tolist(), med.tolist(), strict=True))

    def sizes_apart(self, a: Track, c: Track) -> tuple[float, float] | None:
        """Log diameters of A and C where both were seen apart (`moves.sizes_apart`), in the
        solution or else in the history before it."""
        out = sizes_apart(a, c, self.dets.diameter_nm)
        if out is None and self.history is not None:
            tracks, diam = self.history
            ha, hc = tracks.get(a.id), tracks.get(c.id)
            if ha is not None and hc is not None:
                out = sizes_apart(ha, hc, diam)
        return out

    def skip(self, tid: int) -> bool:
        """Leave moves of track `tid` out of this epoch (changed already, or not active)."""
        return tid in self.touched or (self.active is not None and tid not in self.active)

    def _use(self, t: Track, sign: int) -> None:
        np.add.at(self.used, t.det[t.det >= 0], sign)

    def track_diameter(self, t: Track) -> float:
        """Median diameter of t's own detections (not shared with a superposed partner); else
        of its own detections before the window (online), else of all its detections."""
        d = t.det[t.det >= 0]
        own = d[self.used[d] <= 1] if self.used.size else d
        if own.size:
            return float(np.median(self.dets.diameter_nm[own]))
        if t.id in self.size_hint:
            return self.size_hint[t.id]
        return (
            float(np.median(self.dets.diameter_nm[d])) if d.size else self.p.reference_diameter_nm
        )

    def reach_px(self, diameter_nm: float, frames: ArrayLike) -> NDArray[np.float64]:
        """Largest plausible displacement (px) over `frames` frames: 3.5σ of the 2-D step."""
        k = np.asarray(frames, dtype=float)
        var = float(self.p.step_var(diameter_nm)) * k + 2.0 * self.p.localisation_px**2
        return np.minimum(3.5 * np.sqrt(2.0 * var), self.p.max_step_px * np.sqrt(k))

    def neighbours(self, tracks: Iterable[Track], radius: float) -> set[int]:
        """Ids of tracks with a point within `radius` px of a point of `tracks`, same frame."""
        pts = [np.column_stack([t.xy, np.arange(t.start, t.end + 1) * FRAME_SEP]) for t in tracks]
        if not pts:
            return set()
        q = np.concatenate(pts)
        out: set[int] = set()
        if self.tree is not None:
            hits = self.tree.query_ball_point(q, radius)
            out.update(self.point_ids[[i for h in hits for i in h]].tolist())
        for tid, t in self.fresh.near(q, radius):
            if tid in out:
                continue
            ft = np.column_stack([t.xy, np.arange(t.start, t.end + 1) * FRAME_SEP])
            if np.isfinite(cKDTree(ft).query(q, distance_upper_bound=radius)[0]).any():
                out.add(tid)
        return {i for i in out if i in self.sol.tracks}

    # -- evaluation -------------------------------------------------------------------------
    @staticmethod
    def _touching(fusions: Iterable[Fusion], ids: set[int]) -> list[Fusion]:
        return [f for f in fusions if f.child in ids or any(q in ids for q in f.parents)]

    def _valid(self, move: Move, after: dict[int, Track], fus_after: list[Fusion]) -> bool:
        """Committed frames untouched; fusion links consistent (parents end before child)."""
        sol, fz = self.sol, self.sol.frozen_until
        removed = {i: sol.tracks[i] for i in move.remove}
        new_ids = {t.id for t in move.add}
        for t in move.add:
            old = removed.get(t.id)
            if old is None:
                if t.start <= fz or t.id in sol.tracks:
                    return False
            elif old.start <= fz:
                k = min(old.end, fz) - old.start + 1
                if t.start != old.start or t.n < k:
                    return False
                if not (
                    np.array_equal(t.det[:k], old.det[:k])
                    and np.array_equal(t.xy[:k], old.xy[:k])
                    and np.array_equal(t.u[:k], old.u[:k])
                ):
                    return False
        if any(i not in new_ids and old.start <= fz for i, old in removed.items()):
            return False
        parents: set[int] = set()
        for f in fus_after:
            c = after.get(f.child)
            if c is None or len(set(f.parents)) < 2 or c.start <= sol.first_frame:
                return False
            for q in f.parents:
                pt = after.get(q)
                if pt is None or pt.end != c.start - 1 or q in parents:
                    return False
                parents.add(q)
        changed = list(move.drop) + [f.child for f in move.fusions]
        for c in changed:
            tr = after.get(c) or sol.tracks.get(c)
            if tr is not None and tr.start <= fz:
                return False
        return True

    def delta(self, move: Move) -> float:
        """Energy change of `move` on its local subproblem (``inf`` if not allowed)."""
        sol = self.sol
        fus_after = dict(sol.fusions)
        members: set[int] = set()
        for c in move.drop:
            f = fus_after.pop(c, None)
            if f is not None:
                members.update((f.child, *f.parents))
        for f in move.fusions:
            fus_after[f.child] = f
            members.update((f.child, *f.parents))
        removed = set(move.remove)
        added = {t.id: t for t in move.add}

        def get(i: int) -> Track | None:
            return added[i] if i in added else (None if i in removed else sol.tracks.get(i))

        before_ids = removed | {i for i in members if i in sol.tracks}
        after_ids = {i for i in (before_ids - removed) | set(added) | members if get(i) is not None}
        before = [sol.tracks[i] for i in sorted(before_ids)]
        after = [get(i) for i in sorted(after_ids)]
        rel_after = self._touching(fus_after.values(), after_ids)
        lookup = {t.id: t for t in after if t is not None}
        for f in rel_after:
            for m in (f.child, *f.parents):
                if m not in lookup and (t := get(m)) is not None:
                    lookup[m] = t
        if not self._valid(move, lookup, rel_after):
            return np.inf
        rel_before = self._touching(sol.fusions.values(), before_ids)
        after = [t for t in after if t is not None]
        if not before and not after:
            return 0.0
        key = _fusion_keys(sol, move)
        if key & self.tabu:
            return np.inf  # would undo a fusion decision taken earlier in this run
        lo, hi = _changed_frames(before, after, rel_before, rel_after, sol)
        if lo > hi:
            return 0.0
        if move.kind == "cross":
            # a superposition changes the host's mass wherever the smooth intensity term
            # reaches: judged with the host's whole intensity re-solved, not a window of it
            lo = min(lo, *(t.start for t in after))
            hi = max(hi, *(t.end for t in after))
        # Judge on a window around what changes; whole-track terms (ends, length) exactly.
        lo, hi = lo - self.margin, hi + self.margin
        focus = before + after
        ctx = self.neighbours(
            [t.cut(lo, hi) for t in focus], 1.2 * self.rmax + 2.0 * self.p.detection_radius_px
        )
        for f in rel_before + rel_after:
            ctx.update((f.child, *f.parents))
        ctx -= before_ids | after_ids
        context = [c for i in sorted(ctx) if i in sol.tracks and (c := sol.tracks[i].cut(lo, hi)).n]
        diam = dict(self.diam)
        for t in after:
            if t.id not in diam or t.id in added:
                diam[t.id] = self.track_diameter(t)

        def ends(tracks: list[Track], fus: list[Fusion]) -> float:
            return endpoint_energy(
                tracks, self.p, children={f.child for f in fus},
                parents={q for f in fus for q in f.parents}, first_frame=sol.first_frame,
                last_frame=sol.last_frame, diameters=diam, dets=self.dets,
            )  # fmt: skip

        win = (lo + 2, hi - 2)
        cut_a = [c for t in after if (c := t.cut(lo, hi)).n]
        cut_b = [c for t in before if (c := t.cut(lo, hi)).n]
        e_after = self._local(
            cut_a, rel_after, context, diam, win if move.relax else None, cg=move.cg_iterations
        )
        e_before = self._local(cut_b, rel_before, context, diam, None)
        return e_after + ends(after, rel_after) - e_before - ends(before, rel_before)

    def _local(
        self,
        focus: list[Track],
        fusions: list[Fusion],
        context: list[Track],
        diam: dict[int, float],
        relax: tuple[int, int] | None,
        cg: int = 0,
    ) -> float:
        """Windowed energy of the focus tracks given the context, without the end terms.

        With `relax`, the intensities of the focus points in those frames are re-solved first
        (new points carry raw detection intensities); with `cg` > 0, positions and
        intensities there are then minimised by that many conjugate-gradient iterations.
        """
        pk = pack(
            focus + context,
            self.dets,
            self.p_win,
            n_focus=len(focus),
            fusions=fusions,
            first_frame=self.sol.first_frame,
            last_frame=self.sol.last_frame,
            frozen_until=self.sol.frozen_until,
            diameters=diam,
        )
        u = pk.u
        if relax is not None:
            pk.free &= (pk.t >= relax[0]) & (pk.t <= relax[1])
            if cg:
                return _minimise(pk, self.p_win, cg, relax_iterations=2)[0]
            u = pk.relax_intensity(pk.xy, pk.u, iterations=2)
        return pk.energy(pk.xy, u, grad=False)[0]

    def apply(self, move: Move) -> None:
        sol = self.sol
        for i in move.remove:
            self._use(sol.tracks.pop(i), -1)
            self.fresh.pop(i, None)
        for c in move.drop:
            sol.fusions.pop(c, None)
        for t in move.add:
            sol.tracks[t.id] = t
            self._use(t, 1)
            self.fresh[t.id] = t
            self.diam[t.id] = self.track_diameter(t)
        for f in move.fusions:
            sol.fusions[f.child] = f
        self.tabu |= _fusion_keys(sol, move, applied=True)
        self.touched.update(move.remove)
        self.touched.update(t.id for t in move.add)
        for f in move.fusions:
            self.touched.update((f.child, *f.parents))

    def run_epoch(self, kinds: Sequence[str] = MOVE_ORDER, tol: float = 1e-6) -> dict[str, int]:
        """One pass over every kind of move; returns how many of each were applied."""
        self.touched = set()
        self.epoch += 1
        applied = dict.fromkeys(kinds, 0)
        for i, kind in enumerate(kinds):
            for group in GENERATORS[kind](self):
                if self.progress is not None:
                    self.progress.tick(
                        lambda i=i, kind=kind: (
                            f"epoch {self.epoch}, {kind} moves "
                            f"({i + 1} of {len(kinds)} kinds), {sum(applied.values())} applied"
                        )
                    )
                best, best_d = None, -tol
                for mv in group:
                    ids = set(mv.remove) | {t.id for t in mv.add if t.id in self.sol.tracks}
                    if ids & self.touched:
                        continue
                    d = self.delta(mv)
                    if d < best_d:
                        best, best_d = mv, d
                if best is not None:
                    self.apply(best)
                    applied[kind] += 1
        return applied


def refine(
    sol: Solution,
    dets: Detections,
    params: EnergyParams,
    *,
    ids: Iterable[int] | None = None,
    maxiter: int = 30,
    mover: Mover | None = None,
    since: int | None = None,
    relax_iterations: int = 4,
    progress: Progress | None = None,
) -> float:
    """Conjugate gradient on positions and log intensities (in place); returns the energy.

    With `ids`, only those tracks are variables; their neighbours and fusion partners enter as
    fixed context (local re-optimisation around changed tracks). With `since` (online: two
    frames before the first free frame), only frames from `since` on are packed. `progress`
    is ticked after each CG iteration.
    """
    whole: list[Track] = []
    if ids is None and since is not None:
        whole = [t for t in sol.tracks.values() if t.end >= since]
        focus = [  # views (pack only reads them; results go back to `whole` below)
            t if t.start >= since else Track(t.id, since, t.xy[since - t.start :],
                                             t.u[since - t.start :], t.det[since - t.start :])
            for t in whole
        ]  # fmt: skip
        context: list[Track] = []
        fusions = list(sol.fusions.values())
    elif ids is None:
        focus = list(sol.tracks.values())
        context = []
        fusions = list(sol.fusions.values())
    else:
        keep = set(ids) & set(sol.tracks)
        focus = [sol.tracks[i] for i in sorted(keep)]
        if not focus:
            return 0.0
        fusions = Mover._touching(sol.fusions.values(), keep)
        ctx: set[int] = set()
        if mover is not None:
            ctx = mover.neighbours(focus, 1.2 * mover.rmax + 2.0 * params.detection_radius_px)
        for f in fusions:
            ctx.update((f.child, *f.parents))
        t0 = min(t.start for t in focus) - 1
        t1 = max(t.end for t in focus) + 1
        context = [sol.tracks[i].cut(t0, t1) for i in sorted(ctx - keep) if i in sol.tracks]
        context = [t for t in context if t.n > 0]
    pk = pack(
        focus + context,
        dets,
        params,
        n_focus=len(focus),
        fusions=fusions,
        first_frame=sol.first_frame if since is None else max(since, sol.first_frame),
        last_frame=sol.last_frame,
        frozen_until=sol.frozen_until,
    )
    e, xy, u = _minimise(pk, params, maxiter, relax_iterations=relax_iterations, progress=progress)
    for i, t in enumerate(focus):
        sl = slice(pk.starts[i], pk.starts[i] + t.n)
        dest = whole[i] if whole else t
        k = t.start - dest.start
        dest.xy[k:] = xy[sl]
        dest.u[k:] = u[sl]
    return e


def _minimise(
    pk: Packed,
    params: EnergyParams,
    maxiter: int,
    *,
    window: NDArray[np.bool_] | None = None,
    relax_iterations: int = 4,
    progress: Progress | None = None,
) -> tuple[float, NDArray[np.float64], NDArray[np.float64]]:
    """Minimise over the free points of `pk`: (energy, positions, log intensities).

    The log intensities of all free points are first solved directly
    (`Packed.relax_intensity`); conjugate gradient then moves positions and intensities
    together, only inside `window` if given.
    """
    xy, u = pk.xy.copy(), pk.u.copy()
    u = pk.relax_intensity(xy, u, iterations=relax_iterations)
    free = pk.free if window is None else pk.free & window
    nf = int(free.sum())
    if nf == 0:
        return pk.energy(xy, u, grad=False)[0], xy, u
    # Scale variables to about unit curvature: positions by s, log intensities by ε_s.
    sx, su = params.detection_scale_px, params.intensity_smoothness

    def fun(z: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        xy[free] = z[: 2 * nf].reshape(-1, 2) * sx
        u[free] = z[2 * nf :] * su
        e, gx, gu, _ = pk.energy(xy, u)
        return e, np.concatenate([gx[free].ravel() * sx, gu[free] * su])

    z0 = np.concatenate([xy[free].ravel() / sx, u[free] / su])
    done = [0]

    def step(_z: NDArray[np.float64]) -> None:
        done[0] += 1
        if progress is not None:
            progress.tick(lambda: f"conjugate gradient on {nf} points, iteration {done[0]}")

    res = minimize(fun, z0, jac=True, method="CG", options={"maxiter": maxiter, "gtol": 1e-3},
                   callback=None if progress is None else step)  # fmt: skip
    xy[free] = res.x[: 2 * nf].reshape(-1, 2) * sx  # the minimiser's point (no energy needed)
    u[free] = res.x[2 * nf :] * su
    return float(res.fun), xy, u


def assign_detections(
    sol: Solution, dets: Detections, params: EnergyParams, *, ids: Iterable[int] | None = None
) -> None:
    """Re-attach each point to its nearest detection (one to one, except crossing blobs).

    A point further than ``max(1 px, 4·localisation_px)`` from every free detection becomes
    interpolated. Committed frames keep their attachment.
    """
    trs = (
        list(sol.tracks.values())
        if ids is None
        else [sol.tracks[i] for i in ids if i in sol.tracks]
    )
    if not trs or not len(dets):
        return
    lens = np.array([t.n for t in trs], dtype=np.int64)
    t_all = point_frames(trs, lens)
    xy = np.concatenate([t.xy for t in trs])
    u = np.concatenate([t.u for t in trs])
    old = np.concatenate([t.det for t in trs])
    free = t_all > sol.frozen_until
    gate = max(1.0, 4.0 * params.localisation_px)
    q = np.flatnonzero(free)
    dist, g = dets.tree.query(
        np.column_stack([xy[q], t_all[q] * FRAME_SEP]), k=3, distance_upper_bound=gate
    )
    ok = np.isfinite(dist)
    pp, gg, dd = np.repeat(q, 3)[ok.ravel()], g.ravel()[ok.ravel()], dist.ravel()[ok.ravel()]
    order = np.argsort(dd, kind="stable")
    new = np.where(free, -1, old)
    kept = np.flatnonzero(~free & (old >= 0))
    owner: dict[int, int] = dict(zip(old[kept].tolist(), kept.tolist(), strict=True))
    # a superposed pair keeps its shared blob while the pair's mass-weighted centre sits on
    # it and the blob holds both masses (the two may sit apart inside the blob)
    fo = q[old[q] >= 0]
    if fo.size:
        srt = fo[np.argsort(old[fo], kind="stable")]
        dup = np.flatnonzero(old[srt[1:]] == old[srt[:-1]])
        for p_, o_ in zip(srt[dup].tolist(), srt[dup + 1].tolist(), strict=True):
            g_ = int(old[p_])
            if g_ in owner or t_all[p_] != t_all[o_]:
                continue
            w_ = 1.0 / (1.0 + np.exp(u[o_] - u[p_]))
            centre = w_ * xy[p_] + (1.0 - w_) * xy[o_]
            v = dets.log_intensity[g_]
            both, one = np.logaddexp(u[p_], u[o_]), max(u[p_], u[o_])
            if np.hypot(*(centre - dets.xy[g_])) <= gate and (
                abs(v - both) + params.intensity_tolerance < abs(v - one)
            ):
                new[p_] = new[o_] = g_
                owner[g_] = -1
    # A candidate pair whose point and detection are in no other pair, of a point still
    # unattached and a detection not yet owned, is taken whatever the order: only the rest
    # need the greedy pass.
    lone = (np.bincount(pp, minlength=new.size)[pp] == 1) & (np.bincount(gg)[gg] == 1)
    lone &= new[pp] < 0
    if owner:
        lone &= ~np.isin(gg, np.fromiter(owner, dtype=np.int64, count=len(owner)))
    new[pp[lone]] = gg[lone]
    order = order[~lone[order]]
    for k in order.tolist():
        p_, g_ = int(pp[k]), int(gg[k])
        if new[p_] >= 0:
            continue
        o = owner.get(g_)
        if o is None:
            new[p_], owner[g_] = g_, p_
        elif o >= 0:
            # a blob may explain two crossing particles if its intensity is their sum
            v = dets.log_intensity[g_]
            both, one = np.logaddexp(u[p_], u[o]), max(u[p_], u[o])
            if abs(v - both) + params.intensity_tolerance < abs(v - one):
                new[p_] = g_
                owner[g_] = -1
    for t, part in zip(trs, np.split(new, np.cumsum(lens)[:-1]), strict=True):
        t.det = part.astype(np.int64)


def optimize(
    dets: Detections,
    *,
    config: TrackConfig | None = None,
    params: EnergyParams | None = None,
    init: Solution | None = None,
    max_epochs: int | None = None,
    cg_iterations: int | None = None,
    moves: Sequence[str] = MOVE_ORDER,
    progress: Progress | None = None,
) -> Solution:
    """Global CEM over all frames of `dets`.

    Parameters
    ----------
    dets : Detections
    config : TrackConfig, optional
        Weights, mobility law, epochs and CG iterations (defaults when None).
    params : EnergyParams, optional
        Overrides the parameters derived from `config` and measured on `dets`.
    init : Solution, optional
        Warm start (e.g. the online solution); copied, never changed.
    max_epochs, cg_iterations : int, optional
        Override the config.
    moves : sequence of str
        Kinds of jump moves, in the order they are tried.
    progress : Progress, optional
        Ticked throughout (a status line every few seconds on long series).

    Returns
    -------
    Solution
    """
    cfg = config or TrackConfig()
    params = params or params_from_config(cfg, dets)
    max_epochs = cfg.max_epochs if max_epochs is None else max_epochs
    cg = cfg.cg_iterations if cg_iterations is None else cg_iterations
    if init is None:
        sol = initial_solution(dets, params)
    else:
        sol = init.copy()
        sol.last_frame = max(sol.last_frame, dets.n_frames - 1)
    refine(sol, dets, params, maxiter=cg, progress=progress)
    assign_detections(sol, dets, params)
    mover = Mover(sol, dets, params)
    mover.progress = progress
    for _ in range(max_epochs):
        applied = mover.run_epoch(moves)
        if not sum(applied.values()):
            break
        changed = set(mover.touched) & set(sol.tracks)
        mover.reindex()
        refine(sol, dets, params, ids=changed, maxiter=cg, mover=mover, progress=progress)
        assign_detections(sol, dets, params, ids=changed)
        mover.reindex()
        # next epoch: only moves around what changed (elsewhere nothing would be accepted)
        near = mover.neighbours([sol.tracks[i] for i in changed], 2.0 * mover.rmax + 10.0)
        mover.active = changed | near | _fusion_members(sol, changed | near)
    # a track made of marginal detections only is segmentation noise (support texture, a
    # speckle), however long the CEM could chain it
    drop_faint_tracks(sol, dets, faint_track_score(cfg))
    # the energy cannot tell contact from coalescence (a blob holds both masses either way):
    # date each fusion by the drop in the child's measured size, last
    retime_fusions(sol, dets, unfuse_at_end=True)
    return sol


def faint_track_score(config: TrackConfig) -> float:
    """Median detection score below which a whole track is dropped (`drop_faint_tracks`).

    Halfway between ``min_detection_score`` (the least a single detection needs to be
    tracked) and 1: 0.7 with the default 0.4. On the shipped U-Net chain (`table1`, seeds
    0-9) every track on a real particle had a median score ≥ 0.71; 23 of the 53 tracks with
    no particle under them were below 0.7.
    """
    return 0.5 * (1.0 + config.min_detection_score)


def drop_faint_tracks(sol: Solution, dets: Detections, min_median_score: float) -> set[int]:
    """Remove tracks whose detections' median score is below `min_median_score` (in place).

    Each detection passed the per-detection threshold on its own; a track whose detections
    are *all* marginal is noise that happens to persist. Tracks with no detection, tracks in
    a fusion (parent or child) and tracks reaching into committed frames are kept.

    Returns
    -------
    set of int
        Ids of the removed tracks.
    """
    members = {i for f in sol.fusions.values() for i in (f.child, *f.parents)}
    out: set[int] = set()
    for tid, t in list(sol.tracks.items()):
        d = t.det[t.det >= 0]
        if tid in members or not d.size or t.start <= sol.frozen_until:
            continue
        if float(np.median(dets.score[d])) < min_median_score:
            del sol.tracks[tid]
            out.add(tid)
    return out


def _fusion_keys(sol: Solution, move: Move, *, applied: bool = False) -> set[tuple]:
    """Keys of the fusion decisions of a move: ("made" | "undone", frame, parents).

    Before applying, the keys that would *reverse* an earlier decision are returned; after
    applying, the keys of this decision.
    """
    if move.kind not in ("fuse", "unfuse"):  # a crossing may still replace a fusion
        return set()
    lookup = {t.id: t for t in move.add}
    out = set()
    new = {f.child for f in move.fusions}
    for f in move.fusions:
        child = lookup.get(f.child) or sol.tracks.get(f.child)
        if child is not None:
            k = (child.start, frozenset(f.parents))
            out.add(("made", *k) if applied else ("undone", *k))
    for c in move.drop:
        f = sol.fusions.get(c)
        if f is None or c in new:
            continue
        child = sol.tracks.get(c)
        if child is not None:
            k = (child.start, frozenset(f.parents))
            out.add(("undone", *k) if applied else ("made", *k))
    return out


def _changed_frames(
    before: list[Track],
    after: list[Track],
    fus_before: list[Fusion],
    fus_after: list[Fusion],
    sol: Solution,
) -> tuple[int, int]:
    """First and last frame where the points, their links or the fusion terms differ."""

    def rows(tracks: list[Track]) -> NDArray[np.float64]:
        if not tracks:
            return np.zeros((0, 7))
        out = []
        for t in tracks:
            f = np.arange(t.start, t.end + 1, dtype=float)
            prev = np.vstack([[np.nan, np.nan], t.xy[:-1]])
            out.append(np.column_stack([f, t.xy, t.u, t.det, prev]))
        return np.concatenate(out)

    a, b = rows(before), rows(after)
    both = np.concatenate([a, b])
    if both.size:
        # a point (with its link to the previous one) present on one side only has changed
        _, inv, cnt = np.unique(np.nan_to_num(both, nan=-1e9), axis=0, return_inverse=True,
                                return_counts=True)  # fmt: skip
        changed = both[cnt[inv.ravel()] == 1, 0]
    else:
        changed = np.zeros(0)
    fr = list(changed)

    def sigs(fus: list[Fusion], tracks: list[Track]) -> dict[tuple, int]:
        """Fusion terms by their points (ids may be renamed without changing a term)."""
        look = {t.id: t for t in tracks}
        out = {}
        for f in fus:
            c = look.get(f.child) or sol.tracks.get(f.child)
            ps = [look.get(q) or sol.tracks.get(q) for q in f.parents]
            if c is None or any(q is None for q in ps):
                continue
            key = (c.start, *c.xy[0], *sorted((q.end, *q.xy[-1]) for q in ps if q is not None))
            out[key] = c.start
        return out

    sb, sa = sigs(fus_before, before), sigs(fus_after, after)
    for k in sb.keys() ^ sa.keys():
        f0 = sb.get(k, sa.get(k))
        fr += [f0 - 1, f0]
    if not fr:
        return 0, -1
    return int(min(fr)), int(max(fr))


def _fusion_members(sol: Solution, ids: set[int]) -> set[int]:
    out: set[int] = set()
    for f in sol.fusions.values():
        members = {f.child, *f.parents}
        if members & ids:
            out |= members
    return out


def with_weights(params: EnergyParams, **weights: float) -> EnergyParams:
    """Copy of `params` with some weights changed (``detection=2.0`` → weight_detection)."""
    return replace(params, **{f"weight_{k}": v for k, v in weights.items()})
