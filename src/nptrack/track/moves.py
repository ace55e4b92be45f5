"""Jump moves of the CEM tracker and their evaluation on a local subproblem.

A `Move` replaces some tracks by others and may drop or add fusion links. Its energy change is
``E(focus after | context) − E(focus before | context)``: the focus holds the tracks the move
touches (and the members of the fusions it changes), the context holds every other track that
shares a term with them (overlapping neighbours, fusion partners), cut to the frames involved.
A move is applied only if it lowers the energy (greedy acceptance, as in Milan et al.), and it
may never change a point of a committed frame (``Solution.frozen_until``).

Milan's moves are joins and cuts in time (merge, split, grow, shrink, add, remove); the
physical moves are `fuse` (a track ends into a neighbour whose mass rises by its own),
`unfuse` and `cross` (two tracks exchange their futures where they overlap: the identity
decision at a crossing of particles on two surfaces).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from nptrack.track.energy import FRAME_SEP, Fusion, Track, out_of_view

if TYPE_CHECKING:
    from nptrack.track.cem import Mover

__all__ = ["GENERATORS", "MOVE_ORDER", "Move"]

# "fuse" also tries crossing a neighbour (moves of kind "cross"), see `gen_fuse`.
MOVE_ORDER = (
    "merge", "remove", "fuse", "emerge", "unfuse", "grow", "shrink", "split", "swap", "add"
)  # fmt: skip


@dataclass(frozen=True, eq=False)
class Move:
    """Replace tracks `remove` by `add`; drop fusions (by child id) and add fusions."""

    kind: str
    remove: tuple[int, ...]
    add: tuple[Track, ...]
    drop: tuple[int, ...] = ()
    fusions: tuple[Fusion, ...] = ()
    # Frames around which the continuous state is re-optimised before the move is judged
    # (intensities and positions adapt to a new topology); None: judged as constructed.
    at: tuple[int, int] | None = None
    # Re-solve the intensities of the tracks involved before judging (new points carry raw
    # detection intensities); not needed when points are only taken away.
    relax: bool = True
    # Conjugate-gradient iterations on the positions and intensities of the new tracks
    # (inside the relaxed frames) before judging: for a move whose constructed path is only
    # a guess (a particle hidden in a blob comes out somewhere else).
    cg_iterations: int = 0


def _retarget(fusions: Iterable[Fusion], old: int, new: int) -> list[Fusion]:
    """Fusions in which parent `old` is replaced by `new`."""
    return [
        Fusion(tuple(new if q == old else q for q in f.parents), f.child)
        for f in fusions
        if old in f.parents
    ]


def _join(a: Track, b: Track, tid: int) -> Track:
    """a then b (b starts after a ends), the gap interpolated linearly."""
    gap = b.start - a.end - 1
    if gap == 0:  # consecutive (the online tracker extends every track by one frame)
        return Track(
            tid,
            a.start,
            np.concatenate([a.xy, b.xy]),
            np.concatenate([a.u, b.u]),
            np.concatenate([a.det, b.det]),
        )
    w = (np.arange(1, gap + 1) / (gap + 1))[:, None]
    gxy = a.xy[-1] + w * (b.xy[0] - a.xy[-1])
    gu = a.u[-1] + w[:, 0] * (b.u[0] - a.u[-1])
    return Track(
        tid,
        a.start,
        np.concatenate([a.xy, gxy, b.xy]),
        np.concatenate([a.u, gu, b.u]),
        np.concatenate([a.det, np.full(gap, -1, np.int64), b.det]),
    )


def _swap(a: Track, b: Track, t: int) -> tuple[Track, Track]:
    """Exchange the futures of a and b after frame t (both alive at t and t + 1)."""
    ia, ib = t - a.start + 1, t - b.start + 1

    def mix(x: Track, ix: int, y: Track, iy: int) -> Track:
        return Track(
            x.id,
            x.start,
            np.concatenate([x.xy[:ix], y.xy[iy:]]),
            np.concatenate([x.u[:ix], y.u[iy:]]),
            np.concatenate([x.det[:ix], y.det[iy:]]),
        )

    return mix(a, ia, b, ib), mix(b, ib, a, ia)


def _split(t: Track, frame: int, new_id: int, fusions: Iterable[Fusion]) -> Move:
    """Cut t before `frame`; the tail takes a new id (and t's role as a fusion parent)."""
    head, tail = t.cut(t.start, frame - 1), t.cut(frame, t.end, id=new_id)
    fus = _retarget(fusions, t.id, new_id)
    return Move(
        "split",
        (t.id,),
        (head, tail),
        tuple(f.child for f in fus),
        tuple(fus),
        at=(frame - 1, frame),
    )


def _suspicious(mv: Mover, t: Track) -> NDArray[np.int64]:
    """Indices i (1 ≤ i < n) where the step i−1 → i is unlikely: big jump or intensity jump."""
    if t.n < 2:
        return np.zeros(0, np.int64)
    step = np.sqrt((np.diff(t.xy, axis=0) ** 2).sum(1))
    du = np.abs(np.diff(t.u))
    tol = float(mv.p.intensity_tol(mv.diam[t.id]))
    bad = (step > mv.reach_px(mv.diam[t.id], 1)) | (du > 3.0 * tol)
    obs = t.det >= 0
    # edges of interpolated runs of two or more frames
    run = ~obs[:-1] & ~obs[1:]
    edge = np.zeros(t.n - 1, bool)
    edge[:-1] |= obs[:-2] & run[1:]
    edge[1:] |= run[:-1] & obs[2:]
    return np.flatnonzero(bad | edge) + 1


def gen_merge(mv: Mover) -> Iterator[list[Move]]:
    """Join a track end to a later track start across a gap (interpolated)."""
    sol, p = mv.sol, mv.p
    parents = sol.parent_of()
    heads = [
        t
        for t in sol.tracks.values()
        if t.start > max(sol.first_frame, sol.frozen_until) and t.id not in sol.fusions
    ]
    if not heads:
        return
    h_t = np.array([t.start for t in heads])
    h_xy = np.array([t.xy[0] for t in heads])
    h_u = np.array([t.u[0] for t in heads])
    for a in sorted(sol.tracks.values(), key=lambda t: t.end):
        if mv.skip(a.id) or a.id in parents or a.end >= sol.last_frame or a.id not in sol.tracks:
            continue
        gap = h_t - a.end
        d = np.sqrt(((h_xy - a.xy[-1]) ** 2).sum(1))
        # a particle hidden in a blob may be anywhere in it: the blob's extent is added
        c = _blob_partner(mv, a)
        slack = 0.0 if c is None else _touch_px(mv, mv.diam[a.id], mv.diam[c.id])
        ok = (gap >= 1) & (gap <= p.max_gap_frames + 1)
        ok |= _out_of_view_gap(mv, a, gap, h_xy, h_t)
        ok &= d <= mv.reach_px(mv.diam[a.id], np.maximum(gap, 1)) + slack
        ok &= np.abs(h_u - a.u[-1]) < 4.0 * float(p.intensity_tol(mv.diam[a.id])) + 0.3
        group = []
        for j in np.flatnonzero(ok)[np.argsort(d[ok])][:4]:
            b = heads[j]
            if b.id == a.id or b.id in mv.touched or b.id not in sol.tracks:
                continue
            fus = _retarget(sol.fusions.values(), b.id, a.id)
            rm: tuple[int, ...] = (a.id, b.id)
            add: tuple[Track, ...]
            if c is not None and c.id != b.id and c.id not in mv.touched:
                relaid = _relay_hidden(mv, a, c, b)
                if relaid is None:
                    continue
                a2, c2 = relaid
                rm, add = (*rm, c.id), (_join(a2, b, a.id), c2)
            else:
                add = (_join(a, b, a.id),)
            group.append(
                Move("merge", rm, add, tuple(f.child for f in fus), tuple(fus),
                     at=(a.end, b.start), cg_iterations=10 if len(add) == 2 else 0)
            )  # fmt: skip
        if group:
            yield group


def _out_of_view_gap(
    mv: Mover, a: Track, gap: NDArray[np.int64], h_xy: NDArray[np.float64], h_t: NDArray[np.int64]
) -> NDArray[np.bool_]:
    """Heads reached across a longer gap in which A was out of view (it left the field).

    A missed detection is rare, a particle that steps out of the field near its edge is not
    seen until it steps back in: gap frames where it was more likely out of view than missed
    (`events.out_of_view`, from the Brownian bridge across the gap) do not count towards
    `max_gap_frames`.
    """
    p, dets = mv.p, mv.dets
    out = np.zeros(gap.size, bool)
    if dets.frame_shape is None:
        return out
    near = dets.field_border(a.xy[-1:], [a.end])[0][0] < p.border_margin_px
    cand = np.flatnonzero((gap > p.max_gap_frames + 1) & (gap <= 4 * (p.max_gap_frames + 1)))
    if not near or not cand.size:
        return out
    tail = a.cut(a.end, a.end)
    for j in cand:
        k = int(gap[j])
        head = Track(-1, a.end + k, h_xy[j][None], tail.u.copy(), np.zeros(1, np.int64))
        bridge = _join(tail, head, a.id)
        # gap frames where the particle was more likely out of view than missed
        hidden = int(out_of_view(bridge, dets, p, mv.diam[a.id]).sum())
        out[j] = k - hidden <= p.max_gap_frames + 1
    return out


def _blob_partner(mv: Mover, a: Track) -> Track | None:
    """The track sharing A's last detection (A hidden in its blob), if any."""
    g = int(a.det[-1])
    if g < 0 or mv.used[g] < 2:
        return None
    for cid in mv.neighbours([a.cut(a.end, a.end)], 2.0 * mv.rmax):
        c = mv.sol.tracks[cid]
        if cid != a.id and c.start <= a.end <= c.end and c.det[a.end - c.start] == g:
            return c
    return None


def _relay_hidden(mv: Mover, a: Track, c: Track, b: Track) -> tuple[Track, Track] | None:
    """`relay_hidden` towards B's first point (where A comes out of C's blob)."""
    return relay_hidden(a, c, b.xy[0], b.start, mv.sol.frozen_until)


def relay_hidden(
    a: Track, c: Track, target: NDArray[np.float64], frame: int, frozen_until: int
) -> tuple[Track, Track] | None:
    """A's path under C's blob re-laid towards `target` (A's position in `frame`, where it
    comes out); C moves to keep the blob's centroid (the pair's mass-weighted centre) where
    it was measured. None when no free point of A is hidden.

    While two particles share one blob only their mass-weighted centre is measured, so the
    hidden one may be anywhere in the blob; the straight path from where it went in (or from
    the last committed point) to where it comes out is the likeliest Brownian path. Only free
    frames (after `frozen_until`) of the shared run are re-laid.
    """
    k = a.n - 1
    while k > 0 and a.det[k - 1] >= 0 and c.start <= a.start + k - 1 <= c.end:
        if c.det[a.start + k - 1 - c.start] != a.det[k - 1]:
            break
        k -= 1
    k = max(k, frozen_until + 1 - a.start)  # first re-laid point of A
    if k < 1 or k >= a.n or a.end < c.start or a.end > c.end:
        return None
    frames = np.arange(a.start + k, a.end + 1)
    if frames[0] < c.start:
        return None
    w = ((frames - (frames[0] - 1)) / (frame - (frames[0] - 1)))[:, None]
    new_a = a.xy[k - 1] + w * (np.asarray(target, dtype=float) - a.xy[k - 1])
    ic = frames - c.start
    sw = 1.0 / (1.0 + np.exp(c.u[ic] - a.u[k:]))[:, None]
    centre = sw * a.xy[k:] + (1.0 - sw) * c.xy[ic]
    a2, c2 = a.copy(), c.copy()
    a2.xy[k:] = new_a
    c2.xy[ic] = (centre - sw * new_a) / (1.0 - sw)
    return a2, c2


def _touch_px(mv: Mover, d1: float, d2: float) -> float:
    """Centre distance (px) at which two particles touch, with 3σ of localisation error."""
    return 0.5 * (d1 + d2) / mv.p.pixel_size_nm + 3.0 * np.sqrt(2.0) * mv.p.localisation_px + 0.5


def _faint(mv: Mover, c: Track, lo: int, hi: int, u_a: float) -> bool:
    """A's mass is not seen in C's blob over points [lo, hi): no evidence of a superposition.

    As in the energy's superposition test, taking A's intensity out of the blob must change it
    by more than one tolerance; a small particle next to a big one otherwise "hides" under it
    on no evidence (and is then removed with its own detections).
    """
    det = c.det[lo:hi]
    v = mv.dets.log_intensity[det[det >= 0]]
    if not v.size:
        return True
    vm = float(np.median(v))
    rest = np.log(max(np.exp(vm) - np.exp(u_a), 1e-300))
    return vm - max(rest, u_a) < mv.p.intensity_tolerance


def sizes_apart(
    a: Track, c: Track, diameter_nm: NDArray[np.float64], last: int = 8
) -> tuple[float, float] | None:
    """Log diameters of A and C measured apart (None if they never were).

    Medians over the last frames (up to `last`) in which both were detected, each in a
    detection of its own. C's history may hold blob-sized detections of an earlier
    superposition; these frames are the ones where both were seen apart.
    """
    f0, f1 = max(a.start, c.start), min(a.end, c.end)
    if f1 < f0:
        return None
    ka = a.det[f0 - a.start : f1 - a.start + 1]
    kc = c.det[f0 - c.start : f1 - c.start + 1]
    ok = np.flatnonzero((ka >= 0) & (kc >= 0) & (ka != kc))[-last:]
    if not ok.size:
        return None
    return (
        float(np.median(np.log(diameter_nm[ka[ok]]))),
        float(np.median(np.log(diameter_nm[kc[ok]]))),
    )


def both_in_blob(log_d: NDArray[np.float64], log_da: float, log_dc: float) -> bool:
    """The blob's measured size says two particles, not one (touching or superposed).

    Projected areas add while two particles overlap or touch, ``d_blob² = d_a² + d_c²``;
    once they have coalesced the volumes add, ``d³ = d_a³ + d_c³`` (a smaller blob), and if
    A has left the blob only C's size is left. The blob must sit nearer the summed-area level
    than the coalesced one (median over `log_d`, the blob's log diameters).
    """
    if not log_d.size:
        return False
    da, dc = np.exp(log_da), np.exp(log_dc)
    pair = 0.5 * np.log(da * da + dc * dc)
    fused = np.log(da**3 + dc**3) / 3.0
    return bool(np.median(log_d) > 0.5 * (pair + fused))


def _still_both(mv: Mover, a: Track, b: Track, e: int) -> bool:
    """After frame e, B's blob (or the child's) still has the summed area of A and B.

    The particles touch or overlap but have not coalesced: a fusion there would be dated
    before the size drop that marks it.
    """
    nxt = [b] if b.end > e else [c for c in mv.sol.tracks.values() if c.start == e + 1]
    apart = mv.sizes_apart(a, b)
    if apart is None:
        return False
    for c in nxt:
        k = e + 1 - c.start
        det = c.det[k : k + 3]
        det = det[det >= 0]
        if det.size and np.hypot(*(c.xy[k] - b.xy[-1 if b.end <= e else e - b.start])) <= (
            mv.rmax + mv.p.max_step_px
        ):
            if both_in_blob(np.log(mv.dets.diameter_nm[det]), *apart):
                return True
    return False


def _fuse_group(mv: Mover, a: Track, parents: dict[int, int]) -> list[Move]:
    """Ways for track A to end by fusing into a neighbour (trimming up to two points)."""
    sol = mv.sol
    fz = sol.frozen_until
    if a.id in parents or a.end >= sol.last_frame or a.n < 3:
        return []
    group: list[Move] = []
    da = mv.diam[a.id]
    for k in (0, 1, 2):
        e = a.end - k
        if e < a.start or e + 1 <= fz or e + 1 <= sol.first_frame:
            break
        a2 = a.cut(a.start, e)
        for bid in mv.neighbours([a2.cut(e, e)], 2.0 * mv.rmax + mv.reach_px(da, 1)):
            b = sol.tracks[bid]
            if bid == a.id or bid in mv.touched or b.start > e or b.end < e:
                continue
            # parents fuse when they touch: sum of radii, plus localisation error; they meet
            # between frames e and e + 1, so one frame of their relative motion too
            rf = _touch_px(mv, da, mv.diam[bid])
            if mv.fusion_gate_step:
                rf += np.sqrt(2.0 * float(mv.p.step_var(da) + mv.p.step_var(mv.diam[bid])))
            if np.hypot(*(a2.xy[-1] - b.xy[e - b.start])) > rf:
                continue
            if mv.fusion_needs_drop and _still_both(mv, a2, b, e):
                continue
            base_rm = (a.id,) if k else ()
            base_add = (a2,) if k else ()
            at = (e, e + 1)
            if b.end == e:
                f_old = sol.fusions.get(parents[bid]) if bid in parents else None
                if f_old is not None:
                    f = Fusion((*f_old.parents, a.id), f_old.child)
                    group.append(Move("fuse", base_rm, base_add, (f_old.child,), (f,), at=at))
                    continue
                wa, wb = np.exp(a2.u[-1]), np.exp(b.u[-1])
                centre = (wa * a2.xy[-1] + wb * b.xy[-1]) / (wa + wb)
                for c in sol.tracks.values():
                    if (
                        c.start == e + 1
                        and c.id not in sol.fusions
                        and c.id not in mv.touched
                        and np.hypot(*(c.xy[0] - centre)) <= mv.reach_px(mv.diam[bid], 1)
                    ):
                        f = Fusion((a.id, bid), c.id)
                        group.append(Move("fuse", base_rm, base_add, (), (f,), at=at))
            else:
                sp = _split(b, e + 1, sol.new_id(), sol.fusions.values())
                f = Fusion((a.id, bid), sp.add[1].id)
                group.append(
                    Move(
                        "fuse",
                        (*base_rm, bid),
                        (*base_add, *sp.add),
                        sp.drop,
                        (*sp.fusions, f),
                        at=at,
                    )
                )
    return group


def gen_fuse(mv: Mover) -> Iterator[list[Move]]:
    """For each track end: fuse into a neighbour, or cross it (the better one is kept).

    Both explain a track that stops next to a neighbour that becomes brighter; judging them
    side by side keeps the greedy search from taking a crossing for a fusion or back.
    """
    heads = _heads(mv)
    for a in sorted(mv.sol.tracks.values(), key=lambda t: t.end):
        if mv.skip(a.id) or a.id not in mv.sol.tracks:
            continue
        parents = mv.sol.parent_of()
        group = _fuse_group(mv, a, parents) + _cross_group(mv, a, parents, heads)
        if group:
            yield group


def gen_unfuse(mv: Mover) -> Iterator[list[Move]]:
    """Drop a fusion link; optionally let one parent continue as the child."""
    sol = mv.sol
    for f in list(sol.fusions.values()):
        ids = (f.child, *f.parents)
        if (
            f.child not in sol.fusions
            or any(i in mv.touched for i in ids)
            or all(mv.skip(i) for i in ids)
        ):
            continue
        c = sol.tracks[f.child]
        at = (c.start - 1, c.start)
        group = [Move("unfuse", (), (), (f.child,), at=at)]
        for pid in f.parents:
            par = sol.tracks[pid]
            fus = _retarget(sol.fusions.values(), c.id, pid)
            m = _join(par, c, pid)
            group.append(
                Move(
                    "unfuse",
                    (pid, c.id),
                    (m,),
                    (f.child, *(g.child for g in fus)),
                    tuple(fus),
                    at=at,
                )
            )
        yield group


def _extend(mv: Mover, t: Track, forward: bool, max_obs: int = 10) -> list[Track]:
    """Versions of t grown frame by frame through free detections, one per observed point."""
    sol, dets, p = mv.sol, mv.dets, mv.p
    step = 1 if forward else -1
    f = t.end if forward else t.start
    pos = t.xy[-1] if forward else t.xy[0]
    u = t.u[-1] if forward else t.u[0]
    limit = sol.last_frame if forward else max(sol.first_frame, sol.frozen_until + 1)
    found: list[tuple[int, int]] = []
    miss = 0
    dv_max = 4.0 * float(p.intensity_tol(mv.diam[t.id])) + 0.3
    while len(found) < max_obs and miss <= p.max_gap_frames:
        f += step
        if (forward and f > limit) or (not forward and f < limit):
            break
        sl = dets.rows(f)
        rows = np.arange(sl.start, sl.stop)
        rows = rows[mv.used[rows] == 0]
        if rows.size:
            d = np.sqrt(((dets.xy[rows] - pos) ** 2).sum(1))
            dv = np.abs(dets.log_intensity[rows] - u)
            ok = (d <= mv.reach_px(mv.diam[t.id], miss + 1)) & (dv < dv_max)
            if ok.any():
                g = int(rows[ok][np.argmin(d[ok])])
                found.append((f, g))
                pos, miss = dets.xy[g], 0
                continue
        miss += 1
    out = []
    for j in range(len(found)):
        rows = np.array([g for _, g in found[: j + 1]], dtype=np.int64)
        ext = Track(
            -1,
            int(dets.frame[rows[0]]) if forward else int(dets.frame[rows[-1]]),
            dets.xy[rows if forward else rows[::-1]],
            dets.log_intensity[rows if forward else rows[::-1]],
            rows if forward else rows[::-1],
        )
        out.append(_join(t, ext, t.id) if forward else _join(ext, t, t.id))
    return out


def gen_grow(mv: Mover) -> Iterator[list[Move]]:
    """Extend a track end (or start) through unexplained detections."""
    sol = mv.sol
    parents = sol.parent_of()
    for t in list(sol.tracks.values()):
        if mv.skip(t.id) or t.id not in sol.tracks:
            continue
        group = []
        if t.end < sol.last_frame and t.id not in parents:
            group += [Move("grow", (t.id,), (g,)) for g in _extend(mv, t, True)]
        if t.start > max(sol.first_frame, sol.frozen_until + 1) and t.id not in sol.fusions:
            group += [Move("grow", (t.id,), (g,)) for g in _extend(mv, t, False)]
        if group:
            yield group


def gen_shrink(mv: Mover) -> Iterator[list[Move]]:
    """Trim a few points, or the interpolated points, at a track end or start."""
    sol = mv.sol
    parents = sol.parent_of()
    for t in list(sol.tracks.values()):
        if mv.skip(t.id) or t.n < 2:
            continue
        obs = t.det >= 0
        sus = set(_suspicious(mv, t).tolist())
        group = []
        if t.id not in parents and t.end > sol.frozen_until:
            tail_interp = int(np.argmax(obs[::-1])) if obs.any() else 0
            ks = {tail_interp} | ({1, 2, 3} if sus & {t.n - 1, t.n - 2, t.n - 3} else set())
            for k in sorted(ks):
                if 0 < k < t.n and t.end - k + 1 > sol.frozen_until:
                    group.append(Move("shrink", (t.id,), (t.cut(t.start, t.end - k),), relax=False))
        if t.id not in sol.fusions and t.start > sol.frozen_until:
            head_interp = int(np.argmax(obs)) if obs.any() else 0
            ks = {head_interp} | ({1, 2, 3} if sus & {1, 2, 3} else set())
            for k in sorted(ks):
                if 0 < k < t.n:
                    group.append(Move("shrink", (t.id,), (t.cut(t.start + k, t.end),), relax=False))
        if group:
            yield group


def gen_split(mv: Mover) -> Iterator[list[Move]]:
    """Cut a track where a step or an intensity change is implausible."""
    sol = mv.sol
    for t in list(sol.tracks.values()):
        if mv.skip(t.id):
            continue
        group = [
            _split(t, t.start + int(i), sol.new_id(), sol.fusions.values())
            for i in _suspicious(mv, t)
            if t.start + i > sol.frozen_until
        ]
        if group:
            yield group


def gen_swap(mv: Mover) -> Iterator[list[Move]]:
    """Exchange the futures of two tracks that overlap (identity after a crossing)."""
    sol = mv.sol
    if mv.tree is None:
        return
    # pairs closer than the sum of their radii in some frame
    radius = mv.rmax / mv.p.contact_factor
    live = None
    if mv.active is not None:  # only pairs with a track whose moves are tried
        live = np.flatnonzero(np.isin(mv.point_ids, [i for i in mv.active if not mv.skip(i)]))
        if not live.size:
            return
    if live is None or 4 * live.size > mv.point_ids.size:
        pairs = mv.tree.query_pairs(radius, output_type="ndarray")
    else:  # few (online): found from their points
        near = cKDTree(mv.tree.data[live]).sparse_distance_matrix(
            mv.tree, radius, output_type="ndarray"
        )
        pa, pb = live[near["i"].astype(np.int64)], near["j"].astype(np.int64)
        pairs = np.unique(np.column_stack([np.minimum(pa, pb), np.maximum(pa, pb)]), axis=0)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    if not pairs.size:
        return
    ia, ib = mv.point_ids[pairs[:, 0]], mv.point_ids[pairs[:, 1]]
    fr = np.rint(mv.tree.data[pairs[:, 0], 2] / FRAME_SEP).astype(np.int64)
    keep = ia != ib
    lo, hi = np.minimum(ia, ib)[keep], np.maximum(ia, ib)[keep]
    fr = fr[keep]
    order = np.lexsort((fr, hi, lo))
    lo, hi, fr = lo[order], hi[order], fr[order]
    bounds = np.flatnonzero((np.diff(lo) != 0) | (np.diff(hi) != 0)) + 1
    for s, e in zip(np.r_[0, bounds], np.r_[bounds, lo.size], strict=True):
        i, j = int(lo[s]), int(hi[s])
        if (
            i in mv.touched
            or j in mv.touched
            or (mv.skip(i) and mv.skip(j))
            or i not in sol.tracks
            or j not in sol.tracks
        ):
            continue
        a, b = sol.tracks[i], sol.tracks[j]
        ff = fr[s:e]
        ff = ff[(ff >= max(a.start, b.start)) & (ff <= min(a.end, b.end))]
        if not ff.size:
            continue
        dist = np.hypot(*(a.xy[ff - a.start] - b.xy[ff - b.start]).T)
        ff = ff[dist <= _touch_px(mv, mv.diam[i], mv.diam[j])]
        if not ff.size:
            continue
        f_lo, f_hi = int(ff.min()), int(ff.max())
        t_lo = max(a.start, b.start, sol.frozen_until)
        t_hi = min(a.end - 1, b.end - 1)
        # exchange before, in the middle of, or after the overlap
        group = []
        for t in sorted({f_lo - 1, (f_lo + f_hi) // 2, f_hi}):
            if not t_lo <= t <= t_hi or _swap_cost(mv, a, b, t) >= 0.0:
                continue
            a2, b2 = _swap(a, b, t)
            fus = _swap_roles(sol.fusions.values(), i, j)
            group.append(
                Move(
                    "swap", (i, j), (a2, b2), tuple(f.child for f in fus), tuple(fus), at=(t, t + 1)
                )
            )
        if group:
            yield group


def _swap_cost(mv: Mover, a: Track, b: Track, t: int) -> float:
    """Change of the step and intensity-jump costs if a and b exchange futures after t."""
    p = mv.p
    ia, ib = t - a.start, t - b.start
    va = float(p.step_var(mv.diam[a.id])) * p.dynamics_tolerance**2
    vb = float(p.step_var(mv.diam[b.id])) * p.dynamics_tolerance**2

    def d2(x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
        return float(((x - y) ** 2).sum())

    dyn = (d2(a.xy[ia], b.xy[ib + 1]) - d2(a.xy[ia], a.xy[ia + 1])) / (2 * va) + (
        d2(b.xy[ib], a.xy[ia + 1]) - d2(b.xy[ib], b.xy[ib + 1])
    ) / (2 * vb)
    # measured intensities: the smoothed u of a wrong track hides the jump it contains
    v = mv.dets.log_intensity

    def meas(x: Track, i: int) -> float:
        return float(v[x.det[i]]) if x.det[i] >= 0 else float(x.u[i])

    ua, ua1, ub, ub1 = meas(a, ia), meas(a, ia + 1), meas(b, ib), meas(b, ib + 1)
    e2 = 2.0 * float(p.intensity_tol(mv.diam[a.id]) * p.intensity_tol(mv.diam[b.id]))
    ints = ((ua - ub1) ** 2 + (ub - ua1) ** 2 - (ua - ua1) ** 2 - (ub - ub1) ** 2) / e2
    return p.weight_dynamics * dyn + p.weight_intensity * ints


def _swap_roles(fusions: Iterable[Fusion], i: int, j: int) -> list[Fusion]:
    """Fusions in which parents i and j exchange ids (their ends were swapped)."""
    out = []
    for f in fusions:
        if i in f.parents or j in f.parents:
            out.append(
                Fusion(tuple(j if q == i else i if q == j else q for q in f.parents), f.child)
            )
    return out


def _heads(mv: Mover) -> tuple[list[Track], NDArray[np.int64], NDArray[np.float64]]:
    """Tracks that may be continued from the past: (tracks, start frames, first positions)."""
    sol = mv.sol
    heads = [
        t for t in sol.tracks.values() if t.id not in sol.fusions and t.start > sol.frozen_until
    ]
    h_t = np.array([t.start for t in heads], dtype=np.int64)
    h_xy = np.array([t.xy[0] for t in heads]).reshape(-1, 2)
    return heads, h_t, h_xy


def _cross_group(
    mv: Mover,
    a: Track,
    parents: dict[int, int],
    heads: tuple[list[Track], NDArray[np.int64], NDArray[np.float64]],
) -> list[Move]:
    """Ways for track A to continue through a neighbour's blob (superposed, other surface).

    Track A ends next to track C; A follows C's positions (sharing its detections) until a
    track A' starts near C (A' becomes A's continuation) or C ends. C's intensity over the
    overlap is set to the blob's minus A's, so that the pair is seen as a superposition.
    """
    sol, p = mv.sol, mv.p
    heads_l, h_t, h_xy = heads
    e = a.end
    if e >= sol.last_frame or e + 1 <= sol.frozen_until or a.n < 2:
        return []
    # A may be a parent of a fusion into C: the fusion is dropped and the other parent
    # continues as C (a crossing mistaken for a fusion).
    f_a = sol.fusions.get(parents[a.id]) if a.id in parents else None
    if f_a is not None and len(f_a.parents) != 2:
        return []
    da = mv.diam[a.id]
    probe = Track(-1, e + 1, a.xy[-1:], a.u[-1:], a.det[-1:])
    group: list[Move] = []
    for cid in mv.neighbours([probe], mv.reach_px(da, 1) + mv.rmax):
        c = sol.tracks[cid]
        if cid == a.id or cid in mv.touched or c.start > e + 1:
            continue
        reach = _touch_px(mv, da, mv.diam[cid]) + mv.reach_px(da, 1)
        if np.hypot(*(c.xy[e + 1 - c.start] - a.xy[-1])) > reach:
            continue
        if f_a is not None and f_a.child != cid:
            continue
        # where A goes on after the overlap: a track starting next to C, or nowhere
        # only with evidence: A reappears after the overlap (a crossing is seen end to end)
        ends: list[tuple[int, Track | None]] = []
        if heads_l:
            ok = (h_t >= e + 2) & (h_t <= c.end + 1 + p.max_gap_frames)
            for j in np.flatnonzero(ok):
                k = min(int(h_t[j]) - 1, c.end)
                gap = int(h_t[j]) - k
                if heads_l[j].id in (a.id, cid) or heads_l[j].id in mv.touched:
                    continue
                if np.hypot(*(h_xy[j] - c.xy[k - c.start])) <= mv.reach_px(da, gap) + mv.rmax:
                    ends.append((k, heads_l[j]))
        cands: list[tuple[int, Track | None]] = ends[:4] if a.n >= 3 else []
        if c.end >= sol.last_frame and f_a is None:
            # no re-emergence seen yet (online: it may come after the commit): A stays in C's
            # blob up to the newest frame while the blob holds both masses and both areas
            cands = [*ends[:3], (c.end, None)]
        for k, nxt in cands:
            lo, hi = e + 1 - c.start, k - c.start + 1
            if hi <= lo or _faint(mv, c, lo, hi, float(a.u[-1])):
                continue
            if nxt is None:
                blob = c.det[lo:hi]
                blob = blob[blob >= 0]
                apart = mv.sizes_apart(a, c)
                if apart is None or not both_in_blob(np.log(mv.dets.diameter_nm[blob]), *apart):
                    continue
            ia = np.exp(a.u[-1])
            own = np.log(np.maximum(np.exp(c.u[lo:hi]) - ia, 0.2 * np.exp(c.u[lo:hi])))
            c2 = c.copy()
            c2.u[lo:hi] = own
            mid = Track(
                a.id, e + 1, c.xy[lo:hi].copy(), np.full(hi - lo, a.u[-1]), c.det[lo:hi].copy()
            )
            a2 = _join(a, mid, a.id)
            rm: tuple[int, ...] = (a.id, cid)
            fus: list[Fusion] = []
            drop: tuple[int, ...] = ()
            if nxt is not None:
                a2 = _join(a2, nxt, a.id)
                rm = (*rm, nxt.id)
                fus = _retarget(sol.fusions.values(), nxt.id, a.id)
                drop = tuple(f.child for f in fus)
            if f_a is not None:
                other = sol.tracks[next(q for q in f_a.parents if q != a.id)]
                if other.id in mv.touched or (nxt is not None and nxt.id == other.id):
                    continue
                c2 = _join(other, c2, other.id)
                fus += _retarget(sol.fusions.values(), cid, other.id)
                rm = (*rm, other.id)
                drop = (*drop, f_a.child, *(f.child for f in fus))
            # the hidden path is a guess when A comes out elsewhere: positions adapt first
            cg = 10 if nxt is not None else 0
            group.append(
                Move("cross", rm, (a2, c2), drop, tuple(fus), at=(e, k + 1), cg_iterations=cg)
            )
    return group


def gen_emerge(mv: Mover) -> Iterator[list[Move]]:
    """A track that appears next to a neighbour was under it: extend it back, superposed.

    The mirror of `_cross_group`: track A starts next to track C; before its start A shared
    C's blob, back to where a track A'' ends next to C (A'' + overlap + A become one track)
    or to C's start. C's intensity over the overlap is set to the blob's minus A's.
    """
    sol = mv.sol
    tails = [t for t in sol.tracks.values() if t.end > sol.frozen_until]
    parents = sol.parent_of()
    for a in sorted(sol.tracks.values(), key=lambda t: t.start):
        s0 = a.start
        if mv.skip(a.id) or a.id in sol.fusions or s0 <= sol.first_frame or a.n < 3:
            continue
        if s0 - 1 <= sol.frozen_until:
            continue
        da = mv.diam[a.id]
        probe = Track(-1, s0 - 1, a.xy[:1], a.u[:1], a.det[:1])
        group: list[Move] = []
        for cid in mv.neighbours([probe], mv.reach_px(da, 1) + mv.rmax):
            c = sol.tracks[cid]
            if cid == a.id or cid in mv.touched or c.end < s0 or c.start > s0 - 1:
                continue
            if np.hypot(*(c.xy[s0 - 1 - c.start] - a.xy[0])) > _touch_px(
                mv, da, mv.diam[cid]
            ) + mv.reach_px(da, 1):
                continue
            # where A was before the overlap: a track ending next to C, or nowhere
            # from C's start (superposed since the first frame), or from where A'' ended
            starts: list[tuple[int, Track | None]] = (
                [(c.start, None)] if c.start <= sol.first_frame else []
            )
            for b in tails:
                gap = s0 - b.end
                if b.id in (a.id, cid) or b.id in mv.touched:
                    continue
                if b.id in parents and parents[b.id] != cid:
                    continue  # b fused into something else
                if not (2 <= gap and b.end + 1 >= c.start and b.end < s0 - 1):
                    continue
                k = b.end + 1
                if np.hypot(*(b.xy[-1] - c.xy[k - c.start])) <= mv.reach_px(da, 1) + mv.rmax:
                    starts.append((k, b))
            for k, prev in starts[:4]:
                lo, hi = k - c.start, s0 - c.start
                if hi <= lo or _faint(mv, c, lo, hi, float(a.u[0])):
                    continue
                ia = np.exp(a.u[0])
                own = np.log(np.maximum(np.exp(c.u[lo:hi]) - ia, 0.2 * np.exp(c.u[lo:hi])))
                c2 = c.copy()
                c2.u[lo:hi] = own
                mid = Track(a.id, k, c.xy[lo:hi].copy(), np.full(hi - lo, a.u[0]),
                            c.det[lo:hi].copy())  # fmt: skip
                a2 = _join(mid, a, a.id)
                rm: tuple[int, ...] = (a.id, cid)
                fus: list[Fusion] = []
                drop: tuple[int, ...] = ()
                if prev is not None:
                    a2 = _join(prev, a2, prev.id)
                    a2 = Track(prev.id, a2.start, a2.xy, a2.u, a2.det)
                    rm = (*rm, prev.id)
                    fus = _retarget(sol.fusions.values(), a.id, prev.id)
                    f_c = sol.fusions.get(cid)
                    if f_c is not None and prev.id in f_c.parents:
                        # a fusion that was a crossing: the other parent continues as C
                        if len(f_c.parents) != 2:
                            continue
                        other = sol.tracks[next(q for q in f_c.parents if q != prev.id)]
                        if other.id in mv.touched or other.id == a.id:
                            continue
                        c2 = _join(other, c2, other.id)
                        fus += _retarget(sol.fusions.values(), cid, other.id)
                        rm = (*rm, other.id)
                        drop = (cid,)
                drop = (*drop, *(f.child for f in fus))
                cg = 10 if prev is not None else 0
                group.append(
                    Move("cross", rm, (a2, c2), drop, tuple(fus), at=(k - 1, s0), cg_iterations=cg)
                )
        if group:
            yield group


def gen_add(mv: Mover) -> Iterator[list[Move]]:
    """A new track through a chain of unexplained detections."""
    sol, dets = mv.sol, mv.dets
    start = dets.offsets[min(max(sol.frozen_until + 1, 0), dets.n_frames)]
    tried = mv.add_tried  # chains already judged stay judged (an isolated false positive)
    for g in range(int(start), len(dets)):
        if tried[g] or mv.used[g] > 0 or dets.frame[g] > sol.last_frame:
            continue
        seed = Track(
            sol.new_id(),
            int(dets.frame[g]),
            dets.xy[g : g + 1].copy(),
            dets.log_intensity[g : g + 1].copy(),
            np.array([g], dtype=np.int64),
        )
        mv.diam[seed.id] = float(dets.diameter_nm[g])
        grown = _extend(mv, seed, True, max_obs=50)
        tried[g] = True
        if not grown:
            continue  # a single detection cannot pay for a track
        t = grown[-1]
        t.id = seed.id
        tried[t.det[t.det >= 0]] = True
        yield [Move("add", (), (t,))]


def gen_remove(mv: Mover) -> Iterator[list[Move]]:
    """Delete a weak track (few, low-score detections)."""
    sol, dets = mv.sol, mv.dets
    parents = sol.parent_of()
    for t in list(sol.tracks.values()):
        if mv.skip(t.id) or t.id in parents or t.id in sol.fusions:
            continue
        if t.start <= sol.frozen_until:
            continue
        gain = float(dets.score[t.det[t.det >= 0]].sum())
        p = mv.p
        if p.weight_detection * (gain - p.detection_lambda * t.n) > 4.0 * (
            p.weight_regularisation + p.weight_persistence
        ):
            continue  # explains too much to be removed
        yield [Move("remove", (t.id,), (), relax=False)]


GENERATORS = {
    "merge": gen_merge,
    "fuse": gen_fuse,
    "unfuse": gen_unfuse,
    "grow": gen_grow,
    "shrink": gen_shrink,
    "split": gen_split,
    "swap": gen_swap,
    "emerge": gen_emerge,
    "add": gen_add,
    "remove": gen_remove,
}
