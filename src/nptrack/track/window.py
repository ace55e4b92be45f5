"""Online NP-Tracker: sliding-window CEM with bounded latency.

When frame t arrives its detections are linked to the tracks (gated Hungarian, as the initial
solution), then CEM runs on the window of the last `window_frames` frames: conjugate gradient
on the free points and one epoch of jump moves around the tracks that changed. Frames up to
``t − commit_lag_frames − 1`` are fixed boundary conditions; frame ``t − commit_lag_frames`` is
then committed: its rows (and the events decided by it) are returned and never change again.
Each window starts from the previous solution (warm start). `OnlineTracker.reoptimize` runs the
global CEM over the whole history at any time and returns a new version of all tracks.

With ``smooth_positions`` the committed rows hold the Rauch–Tung–Striebel position of frame
t − L given the track's detections of frames t − L − W .. t (a fixed-lag smoother,
`nptrack.track.smooth`); it is computed once, when the frame is committed, and the tracker's
own state is not changed by it.

Memory: the tracker keeps every detection it was given unless ``keep_history=False``; then it
keeps the full rows of the last frames only (those the window, the commit and the smoother
read) and each detection's diameter (the history a track's size may be looked up in). An
``archive`` mapping given by the caller may keep the tracks that ended elsewhere, and a
`TrackParts` the older parts of the tracks still alive (a live session keeps both in its
store); what stays in memory of the older frames is then, for the last `history_frames`
before those held in full, each detection's diameter and the detection rows of the live
tracks (for the sizes-apart test of the moves, `moves.sizes_apart`, and a track's typical
diameter): the memory of a long session does not grow with its length.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree

from nptrack.config import TrackConfig
from nptrack.track.cem import Mover, assign_detections, optimize, params_from_config, refine
from nptrack.track.energy import (
    Detections,
    EnergyParams,
    Fusion,
    Solution,
    Track,
)
from nptrack.track.events import (
    Event,
    TrackTable,
    _border_px,
    _fusion_detail,
    empty_table,
    out_of_view,
)
from nptrack.track.initial import _link_var, solve_lap
from nptrack.track.moves import _join, both_in_blob, relay_hidden, sizes_apart
from nptrack.track.retime import diameter_noise, retime_fusions
from nptrack.track.smooth import (
    estimate_motion_noise,
    relative_step_var,
    smoothed_at,
    written_output,
)

__all__ = ["Commit", "OnlineTracker", "TrackParts"]

_GATE = 16.0


@dataclass(frozen=True)
class Commit:
    """Rows of one committed frame (final) and the events decided by it."""

    frame: int
    tracks: TrackTable
    events: list[Event] = field(default_factory=list)


class TrackParts(Protocol):
    """Where an online tracker puts the old parts of live tracks (``keep_history=False``)."""

    def put(self, tid: int, part: Track) -> None:
        """Keep `part` of track `tid` (its frames before those the tracker still holds);
        the parts of a track come oldest first and never change."""

    def joined(self, tid: int, rest: Track) -> Track:
        """Track `tid` whole: the parts put so far, then `rest` (the frames after them)."""


class _History(Mapping[int, Track]):
    """Live tracks over their whole life for `moves.sizes_apart` (start, end and detection
    rows; no positions or intensities: those of old parts are not kept)."""

    def __init__(self, tracker: OnlineTracker) -> None:
        self.tracker = tracker

    def __getitem__(self, tid: int) -> Track:
        tk = self.tracker
        tr = tk.sol.tracks[tid]
        head = tk._head_det.get(tid)
        if head is None:
            return tr
        det = np.concatenate([head.astype(np.int64), tr.det])
        return Track(
            tid,
            tk._head_from[tid],
            np.broadcast_to(np.zeros(2), (det.size, 2)),
            np.broadcast_to(np.zeros(1), (det.size,)),
            det,
        )

    def __iter__(self) -> Iterator[int]:
        return iter(self.tracker.sol.tracks)

    def __len__(self) -> int:
        return len(self.tracker.sol.tracks)


class _OwnSizes(Mapping[int, float]):
    """Track id → median of its last 10 committed own diameters (computed when asked)."""

    def __init__(self) -> None:
        self._hist: dict[int, list[float]] = {}

    def add(self, ids: list[int], diameters: np.ndarray) -> None:
        for i, d in zip(ids, diameters.tolist(), strict=True):
            h = self._hist.setdefault(i, [])
            h.append(d)
            if len(h) > 20:
                del h[:-10]

    def drop(self, tid: int) -> None:
        self._hist.pop(tid, None)

    def __getitem__(self, tid: int) -> float:
        return float(np.median(self._hist[tid][-10:]))

    def __iter__(self) -> Iterator[int]:
        return iter(self._hist)

    def __len__(self) -> int:
        return len(self._hist)


HISTORY_FRAMES = 500
"""``keep_history=False`` with `TrackParts`: frames before those held in full in which the
sizes of live tracks are still looked up."""


class _RowValues:
    """One value per detection row (rows numbered over the whole series); the rows before
    `first` can be let go."""

    def __init__(self) -> None:
        self._a = np.zeros(1024)
        self.first = 0  # row of self._a[0]
        self.end = 0  # one past the last row put

    def put(self, row: int, values: np.ndarray) -> None:
        """Values of rows `row` … `row` + n − 1 (the next rows)."""
        i, n = row - self.first, values.size
        if i + n > self._a.size:  # geometric growth: amortised constant cost per row
            self._a = np.concatenate([self._a, np.zeros(max(i + n, self._a.size))])
        self._a[i : i + n] = values
        self.end = max(self.end, row + n)

    def drop_before(self, row: int) -> None:
        """Let go the values of the rows before `row`."""
        k = min(row, self.end) - self.first
        if k <= 0:
            return
        used = self.end - self.first
        self._a[: used - k] = self._a[k:used]
        self.first += k

    def __getitem__(self, rows: ArrayLike) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and int(rows.min()) < self.first:
            raise IndexError(f"detection row {int(rows.min())} was let go (history_frames)")
        return self._a[rows - self.first]


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
    keep_history : bool
        Keep every detection (`detections`, `reoptimize` need them). False: only the rows of
        the last `window_frames` + 2 `commit_lag_frames` + 2 frames and each detection's
        diameter are kept; the commits are the same.
    archive : mutable mapping of int to Track, optional
        Where tracks that ended before every window go (default: a dict). `solution` reads
        them back from it.
    parts : TrackParts, optional
        With ``keep_history=False``: where the parts of live tracks before the frames still
        held go (default: they stay in memory). `solution` joins them back.
    history_frames : int
        With ``keep_history=False`` and `parts`: how many frames before those held in full
        the diameters of detections and the detection rows of live tracks are kept. The
        sizes-apart test of a merge or fusion (two tracks in one blob) and a track's typical
        diameter look no further back; the commits are those of ``keep_history=True`` as
        long as they need not (two particles hidden in one blob for longer).
    """

    def __init__(
        self,
        *,
        pixel_size_nm: float,
        frame_shape: tuple[int, int] | None = None,
        config: TrackConfig | None = None,
        params: EnergyParams | None = None,
        keep_history: bool = True,
        archive: MutableMapping[int, Track] | None = None,
        parts: TrackParts | None = None,
        history_frames: int = HISTORY_FRAMES,
    ) -> None:
        self.cfg = config or TrackConfig()
        self.W, self.L = self.cfg.window_frames, self.cfg.commit_lag_frames
        if self.W < self.L + 2:
            raise ValueError("window_frames must be at least commit_lag_frames + 2")
        self.pixel_size_nm = float(pixel_size_nm)
        self.frame_shape = frame_shape
        self._fixed_params = params is not None
        self.keep_history = keep_history
        # x, y, diameter, intensity, score, det_id of the detection rows from _row0 on (the
        # rows are numbered over the whole series; earlier ones were let go, keep_history=False)
        self._buf = np.zeros((1024, 6))
        self._row0 = 0
        self._keep_frames = self.W + 2 * self.L + 2
        self._diameters = _RowValues()  # each detection's diameter, by row
        self.history_frames = int(history_frames)
        self._offsets = [0]  # first row of each frame
        self._field_buf = np.zeros((64, 2, 3))  # each frame's field (where given)
        self._field_given = np.zeros(64, dtype=bool)
        self.sol = Solution(first_frame=0, last_frame=-1, frozen_until=-1)
        self.params = params or params_from_config(self.cfg, self._dets(0, -1), estimate=False)
        self._names: dict[int, int] = {}
        self._diam: dict[int, float] = {}
        self._size_sigma: float | None = None  # log-diameter noise, measured once
        # each track's diameter where it was alone (median of its last committed own
        # detections): its size while it hides in a blob shared with another track
        self._own_size = _OwnSizes()
        # tracks (and their fusions) that ended before every window: kept apart so that the
        # work per frame does not grow with the length of the series
        self._archive: MutableMapping[int, Track] = {} if archive is None else archive
        self._archive_fusions: dict[int, Fusion] = {}
        # live tracks whose first frames were put in `parts`: first frame, detection rows
        self._parts = parts
        self._born: dict[int, int] = {}
        self._head_det: dict[int, np.ndarray] = {}
        self._head_from: dict[int, int] = {}  # first frame of each `_head_det`
        self._history = _History(self)
        self.t = -1
        self.committed_until = -1
        # (step σ0, localisation σ) of the position smoother, measured once on the tracks
        self._motion_noise: tuple[float, float] | None = None

    # -- detections ------------------------------------------------------------------------
    def _dets(self, f0: int, f1: int) -> Detections:
        """Detections of frames [f0, f1] (rows numbered from frame f0's first row)."""
        f0 = max(f0, 0)
        a = self._offsets[f0]
        b = self._offsets[f1 + 1] if f1 >= 0 else 0
        if a < self._row0:
            raise RuntimeError(f"detections of frame {f0} were let go (keep_history=False)")
        c = self._buf[a - self._row0 : b - self._row0]
        frame = np.repeat(np.arange(f0, f1 + 1), np.diff(self._offsets[f0 : f1 + 2]))
        return Detections.from_arrays(
            frame,
            c[:, 0],
            c[:, 1],
            diameter_nm=c[:, 2],
            intensity=c[:, 3],
            score=c[:, 4],
            det_id=c[:, 5].astype(np.int64),
            pixel_size_nm=self.pixel_size_nm,
            frame_shape=self.frame_shape,
            n_frames=f1 + 1,
            fields=self._field_stack(f1),
        )

    def _field_stack(self, f1: int) -> np.ndarray | None:
        """Fields of frames 0..f1 (frame 0's where one was not given), or None if none was."""
        given = self._field_given[: f1 + 1]
        if not given.any():
            return None
        eye = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        return np.where(given[:, None, None], self._field_buf[: f1 + 1], eye)

    @property
    def detections(self) -> Detections:
        """All detections received so far (with ``keep_history=False``: an error once the
        first frames were let go)."""
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
        field: ArrayLike | None = None,
    ) -> Commit | None:
        """Add the detections of the next frame; returns the frame committed now, if any.

        `field` (2 × 3): where the microscope looked in this frame, the affine map from its
        pixels to frame-0 pixels (see `Detections`); by default frame 0's field.
        """
        x = np.asarray(x, float).ravel()
        n = x.size
        self.t += 1
        t = self.t
        base = self._offsets[-1]
        lo = base - self._row0
        if lo + n > len(self._buf):  # grow geometrically: amortised constant cost per frame
            self._buf = np.concatenate([self._buf, np.zeros((max(lo + n, len(self._buf)), 6))])
        self._buf[lo : lo + n] = np.column_stack(
            [
                x,
                np.asarray(y, float).ravel(),
                np.asarray(diameter_nm, float).ravel(),
                np.asarray(intensity, float).ravel(),
                np.ones(n) if score is None else np.asarray(score, float).ravel(),
                np.arange(base, base + n) if det_id is None else np.asarray(det_id).ravel(),
            ]
        )
        self._diameters.put(base, self._buf[lo : lo + n, 2])
        self._offsets.append(base + n)
        if t >= len(self._field_given):
            self._field_buf = np.concatenate([self._field_buf, np.zeros_like(self._field_buf)])
            self._field_given = np.concatenate(
                [self._field_given, np.zeros_like(self._field_given)]
            )
        if field is not None:
            self._field_buf[t] = np.asarray(field, float).reshape(2, 3)
            self._field_given[t] = True
        if not self._fixed_params and t == self.W + 10:
            self.params = params_from_config(self.cfg, self._dets(0, t))
        self._step(t)
        if self._motion_noise is None and t >= self.W + 10 and self.cfg.smooth_positions:
            assert self._row0 == 0  # nothing is let go before frame W + 10
            sol = self.solution
            self._motion_noise = estimate_motion_noise(
                list(sol.tracks.values()), self._buf[:, :2], self._buf[:, 2], self.params
            ) or (self.params.step_sigma_px, self.params.localisation_px)
        c = t - self.L
        commit = self._commit(c) if c >= 0 else None
        if not self.keep_history and t > self.W + 10 and t % self.W == 0:
            self._let_go(t - self._keep_frames)
        return commit

    def _let_go(self, f: int) -> None:
        """Drop the full rows of frames before `f` (their diameters are kept), and put the
        parts of live tracks before `f` in `parts` (their detection rows are kept)."""
        r = self._offsets[max(f, 0)]
        if r <= self._row0:
            return
        k, used = r - self._row0, self._offsets[-1] - self._row0
        self._buf[: used - k] = self._buf[k:used]
        self._row0 = r
        if self._parts is None:
            return
        for tid, tr in list(self.sol.tracks.items()):
            if tr.start >= f or tr.end < f:
                continue
            head = tr.cut(tr.start, f - 1)
            self._parts.put(tid, head)
            self._born.setdefault(tid, tr.start)
            self._head_from.setdefault(tid, tr.start)
            det = head.det.astype(np.int32)
            old = self._head_det.get(tid)
            self._head_det[tid] = det if old is None else np.concatenate([old, det])
            self.sol.tracks[tid] = tr.cut(f, tr.end)
        # Sizes are looked up `history_frames` back at most: older rows are let go.
        start = f - self.history_frames
        for tid, since in self._head_from.items():
            if since < start:
                self._head_det[tid] = self._head_det[tid][start - since :].copy()
                self._head_from[tid] = start
        self._diameters.drop_before(self._offsets[max(start, 0)])

    def _whole(self, tid: int, tr: Track) -> Track:
        """Track `tid` over its whole life (`tr`: the part in memory)."""
        if tid not in self._born or self._parts is None:
            return tr
        return self._parts.joined(tid, tr)

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
        # bounded work per frame: a few CG iterations; each point is refined in L + 1 windows
        since = max(w0, sub.frozen_until - 1)
        refine(sub, dets, p, maxiter=2, since=since, relax_iterations=2)
        mover = Mover(
            sub, dets, p, size_hint=self._own_size, history=(self._history, self._diameters)
        )
        self._diam = mover.diam
        mover.active = self._active(sub, mover, t)
        mover.fusion_needs_drop = True
        mover.fusion_gate_step = False
        mover.run_epoch()
        changed = set(mover.touched) & set(sub.tracks)
        if changed:
            refine(sub, dets, p, ids=changed, maxiter=5, relax_iterations=2)
        assign_detections(sub, dets, p)
        if self._size_sigma is None and t >= self.W + 10 and sub.fusions:
            self._size_sigma = diameter_noise(sub, dets)  # constant work per frame after
        retime_fusions(sub, dets, sigma=self._size_sigma, unfuse_at_end=True)
        self._write_back(sub, w0, g0)

    def _active(self, sub: Solution, mover: Mover, t: int) -> set[int]:
        """Tracks worth moves now: started or ended in the free frames, or a jump at t."""
        free = sub.frozen_until + 1
        parents = sub.parent_of()
        act: set[int] = set()
        cand: list[Track] = []
        for tid, tr in sub.tracks.items():
            if tr.end < free:
                continue
            if tid in parents and sub.tracks[parents[tid]].start < t - 2:
                continue  # a fusion judged over three frames already
            if tr.end in (t - 1, free):  # just stopped, or last chance before commit:
                act.add(tid)  # merge, fuse, cross, grow, shrink or remove it
            elif tr.start > free and tr.n == 3:  # just long enough: was it under a blob?
                act.add(tid)
            elif tr.n >= 2 and tr.start < t:
                cand.append(tr)
        if cand:  # a jump at the newest step
            step = np.array([np.hypot(*(tr.xy[-1] - tr.xy[-2])) for tr in cand])
            d = np.array([mover.diam.get(tr.id, self.params.reference_diameter_nm) for tr in cand])
            var = self.params.step_var(d) + 2.0 * self.params.localisation_px**2
            reach = np.minimum(3.5 * np.sqrt(2.0 * var), self.params.max_step_px)
            act.update(tr.id for tr, jump in zip(cand, step > reach, strict=True) if jump)
        return act

    def _window(self, w0: int, t: int, g0: int) -> Solution:
        """Tracks of frames [w0, t] with detection rows renumbered for the window."""
        sub = Solution(first_frame=w0, last_frame=t, frozen_until=t - self.L - 1)
        sub.next_id = self.sol.next_id
        for tid, tr in self.sol.tracks.items():
            if tr.end >= w0:
                a = max(w0 - tr.start, 0)
                det = tr.det[a:]
                sub.tracks[tid] = Track(
                    tr.id,
                    tr.start + a,
                    tr.xy[a:].copy(),
                    tr.u[a:].copy(),
                    np.where(det >= 0, det - g0, -1),
                )
        for cid, f in self.sol.fusions.items():
            if all(m in sub.tracks for m in (cid, *f.parents)):
                sub.fusions[cid] = f
        return sub

    def _extend(self, sub: Solution, dets: Detections, t: int) -> None:
        """Link frame t's detections to track ends (gated Hungarian); the rest start tracks."""
        p = self.params
        sl = dets.rows(t)
        rows = np.arange(sl.start, sl.stop)
        parents = sub.parent_of()
        ends = [
            tr
            for tr in sub.tracks.values()
            if t - 1 - p.max_gap_frames <= tr.end < t
            and tr.end >= sub.frozen_until
            and tr.id not in parents
            and (tr.det >= 0).any()
        ]
        R = C = np.zeros(0, np.int64)
        K = np.zeros(0)
        if ends and rows.size:
            e_xy = np.array([tr.xy[-1] for tr in ends])
            e_u = np.array([tr.u[-1] for tr in ends])
            gap = np.array([t - tr.end for tr in ends], dtype=float)
            anchor = np.array([tr.det[tr.det >= 0][-1] for tr in ends])
            var = _link_var(dets, p, anchor) * gap
            # a track hiding in a shared blob: its mobility is its own size's, and it may sit
            # anywhere in the blob (up to the contact distance from the blob's centre)
            last = np.array([tr.det[-1] for tr in ends])
            hid = np.flatnonzero((last >= 0) & (np.bincount(np.maximum(last, 0))[last] > 1))
            for i in hid:
                d_own = self._own_size.get(ends[i].id)
                if d_own is not None:
                    var[i] = float(p.step_var(d_own)) * gap[i] + 2.0 * p.localisation_px**2
                    var[i] += float(p.contact_px(d_own, dets.diameter_nm[anchor[i]])) ** 2 / 4.0
            hits = cKDTree(dets.xy[rows]).query_ball_point(e_xy, p.max_step_px * np.sqrt(gap))
            R = np.repeat(np.arange(len(ends)), [len(h) for h in hits])
            C = rows[np.fromiter((j for h in hits for j in h), dtype=np.int64, count=R.size)]
            d2 = ((dets.xy[C] - e_xy[R]) ** 2).sum(1)
            dv = dets.log_intensity[C] - e_u[R]
            eps = 2.0 * p.intensity_tol(dets.diameter_nm[anchor[R]])
            K = d2 / (2.0 * var[R]) + dv * dv / (2.0 * eps**2)
            K += 0.5 * (gap[R] - 1)
            ok = K < _GATE
            R, C, K = R[ok], C[ok], K[ok]
        half_r = np.full(len(ends), _GATE / 2.0)
        half_c = np.full(len(dets), _GATE / 2.0)
        ra, rc = solve_lap(R, C, K, half_r, half_c)
        linked = set()
        self._relay_separated(sub, dets, ends, dict(zip(ra.tolist(), rc.tolist(), strict=True)))
        for i, g in zip(ra.tolist(), rc.tolist(), strict=True):
            tr = sub.tracks[ends[i].id]
            # views: _join copies them into the new arrays
            new = Track(tr.id, t, dets.xy[g : g + 1], dets.log_intensity[g : g + 1], np.array([g]))
            sub.tracks[tr.id] = _join(tr, new, tr.id)
            linked.add(g)
        self._carry_superposed(sub, dets, ends, dict(zip(ra.tolist(), rc.tolist(), strict=True)))
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

    def _relay_separated(
        self, sub: Solution, dets: Detections, ends: list[Track], link: dict[int, int]
    ) -> None:
        """Two tracks that shared a blob take two detections in frame t: they came apart.

        Inside the blob both sat at its centre; the one that comes out further from it is
        re-laid on a straight path to its new detection over the free frames of the shared
        run, its partner moving so that the pair's mass-weighted centre stays on the blob
        (`moves.relay_hidden`). Without it the step out of the blob looks like a jump.
        """
        linked = np.zeros(len(ends), bool)
        linked[list(link)] = True
        for pair in _sharing_last(ends, self.t - 1, linked):
            i, j = pair
            if link[i] == link[j]:
                continue
            blob = dets.xy[ends[i].det[-1]]
            out = [float(np.hypot(*(dets.xy[link[k]] - blob))) for k in pair]
            a_i, c_i = (i, j) if out[0] >= out[1] else (j, i)
            a, c = sub.tracks[ends[a_i].id], sub.tracks[ends[c_i].id]
            relaid = relay_hidden(a, c, dets.xy[link[a_i]], self.t, sub.frozen_until)
            if relaid is not None:
                sub.tracks[a.id], sub.tracks[c.id] = relaid

    def _carry_superposed(
        self, sub: Solution, dets: Detections, ends: list[Track], link: dict[int, int]
    ) -> None:
        """Carry a superposed pair on together: both tracks share frame t's blob.

        Two tracks that shared their last detection (one particle over the other, or two
        touching) compete for one blob in frame t; the one-to-one link gives it to one of them.
        The other one is carried on with it when the blob still holds both: its intensity is
        their sum rather than one mass (as in the energy's superposition test) and its size,
        over its last three frames, is at the summed-area level (`both_in_blob`), not the
        coalesced one nor the partner's own.
        """
        p = self.params
        for pair in _sharing_last(ends, self.t - 1):
            done = [i for i in pair if i in link]
            if len(done) != 1:
                continue
            c_i = done[0]
            a_i = pair[1] if pair[0] == c_i else pair[0]
            a, c, g = ends[a_i], sub.tracks[ends[c_i].id], link[c_i]
            v = dets.log_intensity[g]
            both = float(np.logaddexp(a.u[-1], c.u[-2]))
            one = float(max(a.u[-1], c.u[-2]))
            if not abs(v - both) + p.intensity_tolerance < abs(v - one):
                continue
            apart = sizes_apart(a, c, dets.diameter_nm)
            ha, hc = self._history.get(a.id), self._history.get(c.id)
            if apart is None and ha is not None and hc is not None:
                apart = sizes_apart(ha, hc, self._diameters)  # seen apart before the window
            shared = c.det[-3:]
            shared = shared[shared >= 0]
            if apart is None or not both_in_blob(np.log(dets.diameter_nm[shared]), *apart):
                continue
            new = Track(a.id, self.t, c.xy[-1:].copy(), a.u[-1:].copy(), np.array([g]))
            sub.tracks[a.id] = _join(a, new, a.id)

    def _write_back(self, sub: Solution, w0: int, g0: int) -> None:
        sol = self.sol
        for tid in [i for i, tr in sol.tracks.items() if tr.end >= w0]:
            if tid not in sub.tracks:
                del sol.tracks[tid]
        # `sub` is discarded after this: its tracks' arrays are taken over, not copied
        for tid, tr in sub.tracks.items():
            det = np.where(tr.det >= 0, tr.det + g0, -1)
            old = sol.tracks.get(tid)
            # keep the part before the window; inside it the window's version is the truth (a
            # fusion re-dated by its area drop starts its child later than before)
            if old is not None and old.start < min(tr.start, w0):
                k = tr.start - old.start  # frames of the head
                tr = Track(
                    tid,
                    old.start,
                    np.concatenate([old.xy[:k], tr.xy]),
                    np.concatenate([old.u[:k], tr.u]),
                    np.concatenate([old.det[:k], det]),
                )
            else:
                tr = Track(tid, tr.start, tr.xy, tr.u, det)
            sol.tracks[tid] = tr
        gone = [c for c in sol.fusions if c in sub.tracks or c not in sol.tracks]
        for cid in gone:
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
        alive = sorted(
            (tr for tr in sol.tracks.values() if tr.start <= c <= tr.end),
            key=lambda tr: (self._born.get(tr.id, tr.start), tr.id),
        )
        k = np.array([c - tr.start for tr in alive], dtype=np.int64)
        det = np.array([tr.det[i] for tr, i in zip(alive, k, strict=True)], dtype=np.int64)
        obs = det >= 0
        shared = obs & (np.bincount(np.where(obs, det, 0), obs, minlength=1)[det * obs] > 1)
        own = obs & ~shared
        typical = np.array([self._diameter(tr) for tr in alive])
        diam = typical.copy()
        diam[own] = self._diameters[det[own]]
        self._own_size.add([alive[i].id for i in np.flatnonzero(own)], diam[own])
        xy = self._smoothed(alive, c, typical)
        table = TrackTable(
            frame=np.full(len(alive), c, dtype=np.int64),
            track_id=np.array([self._name(tr.id) for tr in alive], dtype=np.int64),
            x=xy[:, 0],
            y=xy[:, 1],
            diameter_nm=diam,
            intensity=np.exp([tr.u[i] for tr, i in zip(alive, k, strict=True)]),
            det_id=np.where(obs, self._buf[np.maximum(det - self._row0, 0), 5], -1).astype(
                np.int64
            ),
            state=np.where(obs, "observed", "interpolated").astype(object),
        )
        if not len(alive):
            table = empty_table()
        elif (~obs).any():  # interpolated points more likely out of view than missed
            view = Detections.from_arrays(
                [], [], [], diameter_nm=[], intensity=[], pixel_size_nm=self.pixel_size_nm,
                frame_shape=self.frame_shape, n_frames=self.t + 1,
                fields=self._field_stack(self.t),
            )  # fmt: skip
            seen = obs.copy()
            for i in np.flatnonzero(~obs):
                tr = alive[i].cut(c - self.W, alive[i].end)
                seen[i] = not out_of_view(tr, view, self.params, diam[i])[c - tr.start]
            table = table.select(seen)
        events = self._events(c)
        self._archive_before(c - self.W - 2)
        return Commit(c, table, events)

    def _smoothed(self, alive: list[Track], c: int, diam: np.ndarray) -> np.ndarray:
        """Positions (n, 2) of the `alive` tracks in frame c as written: the tracker's own, or
        with ``smooth_positions`` and Brownian motion the RTS smoother's given the tracks'
        detections of frames c − W .. t (the frames after c are not committed yet); `diam`:
        the tracks' typical diameters (nm), which set their step variances."""
        xy = np.array([tr.xy[c - tr.start] for tr in alive]).reshape(-1, 2)
        if not (self.cfg.smooth_positions and alive and self.params.motion == "brownian"):
            return xy
        alive_ids = {tr.id for tr in alive}
        others = [tr for tr in self.sol.tracks.values() if tr.id not in alive_ids]
        sigma, loc = self._motion_noise or (self.params.step_sigma_px, self.params.localisation_px)
        q = sigma**2 * relative_step_var(self.params, diam)
        # the tracks from `since` on, with rows numbered as in the buffer (the smoother reads
        # nothing earlier): the same result whether or not earlier rows were let go
        since, r0 = c - self.L, self._row0

        near = [tr for tr in others if tr.end >= since]
        return smoothed_at(
            alive, self._buf[:, :2], q, loc**2, c, since=since, context=near, det_offset=r0
        )

    def _archive_before(self, f: int) -> None:
        """Move tracks that ended before frame f (and fusions into them) to the archive."""
        sol = self.sol
        old = [i for i, tr in sol.tracks.items() if tr.end < f]
        for i in old:
            self._archive[i] = self._whole(i, sol.tracks.pop(i))
            self._own_size.drop(i)
            self._born.pop(i, None)
            self._head_det.pop(i, None)
            self._head_from.pop(i, None)
        for c in [c for c in sol.fusions if c in self._archive]:
            self._archive_fusions[c] = sol.fusions.pop(c)

    @property
    def solution(self) -> Solution:
        """The whole online solution (archived and live tracks)."""
        sol = self.live_solution(whole=True)
        sol.tracks.update({i: t.copy() for i, t in self._archive.items()})
        return sol

    def live_solution(self, *, whole: bool = False) -> Solution:
        """`solution` without the archived tracks (every fusion included): adding the
        archive's tracks in its order gives `solution`. Live tracks are the parts in memory
        unless `whole` (then joined with their parts in `parts`)."""
        sol = self.sol.copy()
        if whole:
            sol.tracks = {i: self._whole(i, tr) for i, tr in sol.tracks.items()}
        sol.fusions.update(self._archive_fusions)
        return sol

    def _diameter(self, tr: Track) -> float:
        """Typical diameter of a track (median over the window, else its last detections)."""
        if tr.id in self._diam:
            return self._diam[tr.id]
        d = self._history[tr.id].det if tr.id in self._head_det else tr.det
        d = d[d >= 0][-10:]
        return float(self._diameters[d].mean()) if d.size else self.params.reference_diameter_nm

    def _events(self, c: int) -> list[Event]:
        """Events decided by committing frame c: births and fusions at c, ends at c − 1."""
        sol, p = self.sol, self.params
        parents = sol.parent_of()
        out: list[Event] = []
        for tr in sol.tracks.values():
            if tr.start == c and c > 0 and tr.id not in sol.fusions:
                b = _border_px(tr.xy[0], p.frame_shape)
                out.append(Event(c, "birth", str(self._name(tr.id)),
                                 {"at_border": bool(b < p.border_margin_px)}))  # fmt: skip
            if tr.end == c - 1 and tr.id not in parents:
                b = _border_px(tr.xy[-1], p.frame_shape)
                kind = "exit" if b < p.border_margin_px else "death"
                out.append(Event(c, kind, str(self._name(tr.id)), {"border_px": round(b, 3)}))
        for f in sol.fusions.values():
            child = sol.tracks.get(f.child)
            if child is not None and child.start == c:
                par = [sol.tracks[q] for q in sorted(f.parents)]
                diam = {t.id: self._diameter(t) for t in (*par, child)}
                label = "+".join(str(self._name(q.id)) for q in par)
                out.append(Event(c, "fusion", f"{label}>{self._name(child.id)}",
                                 _fusion_detail(par, child, diam, p)))  # fmt: skip
        return out + self._crossing_events(c)

    def _crossing_events(self, c: int) -> list[Event]:
        """Overlaps (contact or a shared detection) that ended at c − 1, both tracks alive at c."""
        sol, p = self.sol, self.params
        both = [tr for tr in sol.tracks.values() if tr.start <= c - 1 and tr.end >= c]
        if len(both) < 2:
            return []
        diam = np.array([self._diameter(tr) for tr in both])

        def touching(f: int, i: int, j: int) -> tuple[bool, float, bool]:
            a, b = both[i], both[j]
            if not (a.start <= f <= a.end and b.start <= f <= b.end):
                return False, np.inf, False
            da, db = a.det[f - a.start], b.det[f - b.start]
            d = float(np.hypot(*(a.xy[f - a.start] - b.xy[f - b.start])))
            share = bool(da >= 0 and da == db)
            return share or d < float(p.contact_px(diam[i], diam[j])), d, share

        xy = np.array([tr.xy[c - 1 - tr.start] for tr in both])
        r = float(p.contact_px(diam.max(), diam.max()))
        fused = {frozenset(f.parents) for f in sol.fusions.values()}
        out = []
        for i, j in cKDTree(xy).query_pairs(r):
            if not touching(c - 1, i, j)[0] or touching(c, i, j)[0]:
                continue
            if frozenset((both[i].id, both[j].id)) in fused:
                continue
            f, best, best_d, shared = c - 1, c - 1, np.inf, False
            while f >= max(0, c - 1 - self.W):
                ok, d, sh = touching(f, i, j)
                if not ok:
                    break
                shared |= sh
                if d < best_d:
                    best, best_d = f, d
                f -= 1
            if f < max(both[i].start, both[j].start):
                continue  # the overlap goes back to a start: a birth or a split, not a crossing
            a, b = sorted((self._name(both[i].id), self._name(both[j].id)))
            out.append(Event(best, "crossing", f"{a},{b}", {
                "frames": [f + 1, c - 1], "min_distance_px": round(best_d, 3),
                "superposed": shared,
            }))  # fmt: skip
        return out

    # -- global ----------------------------------------------------------------------------
    def reoptimize(
        self, *, warm_start: bool = False, max_epochs: int | None = None
    ) -> tuple[TrackTable, list[Event]]:
        """Global CEM over the whole history: a new version of all tracks (ids renumbered).

        By default it starts from the gated Hungarian solution, like the offline tracker: the
        online decisions were taken with at most `commit_lag_frames` of hindsight (a crossing
        that lasts longer looks like a fusion), and starting afresh does not inherit them.
        `warm_start=True` starts from the online solution instead.
        """
        dets = self.detections
        if not len(dets):
            return empty_table(), []
        p = self.params if self._fixed_params else params_from_config(self.cfg, dets)
        init = None
        if warm_start:
            init = self.solution
            init.frozen_until = -1
            init.last_frame = self.t
        sol = optimize(dets, config=self.cfg, params=p, init=init, max_epochs=max_epochs)
        return written_output(sol, dets, p, smooth=self.cfg.smooth_positions)


def _sharing_last(
    ends: list[Track], frame: int, keep: np.ndarray | None = None
) -> list[tuple[int, int]]:
    """Pairs (i < j) of `ends` (where `keep`, default all) ending in `frame` that are the only
    two to share their last detection, in the order of i."""
    last = np.array([tr.det[-1] if tr.end == frame else -1 for tr in ends], dtype=np.int64)
    idx = np.flatnonzero((last >= 0) if keep is None else keep & (last >= 0))
    if idx.size < 2:
        return []
    s = idx[np.argsort(last[idx], kind="stable")]  # stable: i before j within a detection
    v = last[s]
    first = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
    size = np.diff(np.r_[first, v.size])
    return sorted((int(s[k]), int(s[k + 1])) for k in first[size == 2])
