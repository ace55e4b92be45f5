"""Each jump move lowers the energy on a case crafted for it."""

from __future__ import annotations

import numpy as np
import pytest

from nptrack.track.cem import Mover, refine
from nptrack.track.energy import Detections, EnergyParams, Fusion, Solution, Track, energy
from nptrack.track.initial import _track_from_rows
from nptrack.track.moves import GENERATORS, Move

P = EnergyParams(
    weight_detection=2.0,
    pixel_size_nm=0.5,
    frame_shape=(100, 100),
    detection_scale_px=0.8,
    localisation_px=0.3,
    intensity_tolerance=0.12,
    intensity_smoothness=0.02,
    mass_tolerance=0.03,
    step_sigma_px=0.6,
    reference_diameter_nm=3.0,
    border_margin_px=6.0,
    small_diameter_nm=1.5,
    max_gap_frames=4,
)
N_FRAMES = 16


class Scene:
    """Detections of labelled particles; ``rows(label, f0, f1)`` finds their rows."""

    def __init__(self, parts: dict[str, list[tuple[int, float, float, float]]], score=0.95):
        rng = np.random.default_rng(0)
        rows = [
            (f, x + rng.normal(0, 0.1), y + rng.normal(0, 0.1), 3.0, i, score, lab)
            for lab, pts in parts.items()
            for f, x, y, i in pts
        ]
        # a reference particle spanning the whole sequence, far from everything
        rows += [(f, 90.0, 90.0, 3.0, 1000.0, 0.95, "ref") for f in range(N_FRAMES)]
        rows.sort(key=lambda r: r[0])
        a = np.array([r[:6] for r in rows], dtype=float)
        self.dets = Detections.from_arrays(
            a[:, 0], a[:, 1], a[:, 2], diameter_nm=a[:, 3], intensity=a[:, 4], score=a[:, 5],
            pixel_size_nm=0.5, frame_shape=(100, 100), n_frames=N_FRAMES,
        )  # fmt: skip
        self.index = {(r[6], int(r[0])): k for k, r in enumerate(rows)}

    def rows(self, label: str, f0: int, f1: int) -> np.ndarray:
        return np.array(
            [self.index[(label, f)] for f in range(f0, f1 + 1) if (label, f) in self.index]
        )

    def track(self, tid: int, *parts: tuple[str, int, int]) -> Track:
        rows = np.concatenate([self.rows(*p) for p in parts])
        return _track_from_rows(tid, self.dets, rows)

    def solution(self, *tracks: Track, fusions: tuple[Fusion, ...] = ()) -> Solution:
        ref = self.track(99, ("ref", 0, N_FRAMES - 1))
        return Solution(
            {t.id: t for t in (*tracks, ref)},
            {f.child: f for f in fusions},
            first_frame=0,
            last_frame=N_FRAMES - 1,
            next_id=100,
        )


def still(x: float, y: float, f0: int, f1: int, inten: float = 1000.0, vx: float = 0.0):
    return [(f, x + vx * (f - f0), y, inten) for f in range(f0, f1 + 1)]


def _best(kind: str, sol: Solution, dets: Detections) -> tuple[Move, float, Mover]:
    refine(sol, dets, P)
    mv = Mover(sol, dets, P)
    moves = [m for g in GENERATORS[kind](mv) for m in g if m.kind == kind]
    assert moves, f"no {kind} move proposed"
    deltas = [mv.delta(m) for m in moves]
    k = int(np.argmin(deltas))
    return moves[k], deltas[k], mv


def _check_lowers(kind: str, sc: Scene, sol: Solution) -> Solution:
    """The best move of `kind` has ΔE < 0 and, applied and refined, lowers the energy."""
    e0 = energy(sol, sc.dets, P) if refine(sol, sc.dets, P) is not None else None
    move, d, mv = _best(kind, sol, sc.dets)
    assert d < 0, f"{kind}: best ΔE = {d}"
    mv.apply(move)
    refine(sol, sc.dets, P)
    assert energy(sol, sc.dets, P) < e0
    return sol


def test_merge_bridges_missed_detections() -> None:
    sc = Scene({"a": still(50, 50, 0, 4) + still(50, 50, 7, 15)})
    sol = sc.solution(sc.track(1, ("a", 0, 4)), sc.track(2, ("a", 7, 15)))
    sol = _check_lowers("merge", sc, sol)
    assert 2 not in sol.tracks and (sol.tracks[1].start, sol.tracks[1].end) == (0, 15)


def test_grow_follows_unexplained_detections() -> None:
    sc = Scene({"a": still(50, 50, 0, 15)})
    sol = _check_lowers("grow", sc, sc.solution(sc.track(1, ("a", 0, 9))))
    assert sol.tracks[1].end > 9


def test_shrink_drops_points_without_detections() -> None:
    sc = Scene({"a": still(50, 50, 0, 7)})
    t = sc.track(1, ("a", 0, 7))
    extra = Track(1, 0, np.vstack([t.xy, np.repeat(t.xy[-1:], 4, 0)]),
                  np.r_[t.u, np.repeat(t.u[-1], 4)], np.r_[t.det, -np.ones(4, int)])  # fmt: skip
    sol = _check_lowers("shrink", sc, sc.solution(extra))
    assert sol.tracks[1].end < 11


def test_add_explains_a_run_of_detections() -> None:
    sc = Scene({"a": still(40, 40, 3, 12)})
    sol = _check_lowers("add", sc, sc.solution())
    assert any(t.start == 3 and t.end == 12 for t in sol.tracks.values())


def test_remove_drops_a_false_track() -> None:
    sc = Scene({"fp": [(5, 30.0, 30.0, 300.0), (6, 33.0, 31.0, 900.0)]}, score=0.3)
    sol = _check_lowers("remove", sc, sc.solution(sc.track(1, ("fp", 5, 6))))
    assert 1 not in sol.tracks


def test_split_cuts_a_wrong_link() -> None:
    sc = Scene({"a": still(30, 50, 0, 15), "b": still(45, 50, 0, 15, inten=1000.0)})
    wrong = sc.track(1, ("a", 0, 7), ("b", 8, 15))
    sol = _check_lowers("split", sc, sc.solution(wrong, sc.track(2, ("b", 0, 7)),
                                                sc.track(3, ("a", 8, 15))))  # fmt: skip
    assert sol.tracks[1].end == 7


def test_fuse_links_parents_to_child() -> None:
    # two parents touching (sum of radii = 6 px) become one child with their summed mass
    sc = Scene({
        "a": still(45, 50, 0, 7, 1000.0), "b": still(51, 50, 0, 7, 1200.0),
        "c": still(48.3, 50, 8, 15, 2200.0),
    })  # fmt: skip
    sol = sc.solution(sc.track(1, ("a", 0, 7)), sc.track(2, ("b", 0, 7), ("c", 8, 15)))
    sol = _check_lowers("fuse", sc, sol)
    (f,) = sol.fusions.values()
    assert set(f.parents) == {1, 2} and sol.tracks[f.child].start == 8


@pytest.mark.parametrize(("gap_px", "online", "fuses"), [
    (8.5, False, True),  # beyond contact (7.8 px) at the parents' last frame, within a step
    (8.5, True, False),  # online keeps the plain contact gate (its fusions are committed)
    (10.5, False, False),  # more than a frame's relative step (9.0 px) apart: no fusion
])  # fmt: skip
def test_fuse_gate_allows_one_frame_of_approach(gap_px: float, online: bool, fuses: bool) -> None:
    # the parents meet between their last frame and the child's first one
    xa, xb = 50.0 - gap_px * 1200 / 2200, 50.0 + gap_px * 1000 / 2200
    sc = Scene({
        "a": still(xa, 50, 0, 7, 1000.0), "b": still(xb, 50, 0, 7, 1200.0),
        "c": still(50.0, 50, 8, 15, 2200.0),
    })  # fmt: skip
    sol = sc.solution(sc.track(1, ("a", 0, 7)), sc.track(2, ("b", 0, 7)), sc.track(3, ("c", 8, 15)))
    refine(sol, sc.dets, P)
    mv = Mover(sol, sc.dets, P)
    mv.fusion_gate_step = not online
    moves = [m for g in GENERATORS["fuse"](mv) for m in g if m.kind == "fuse"]
    assert bool(moves) == fuses
    if fuses:
        best = min(moves, key=mv.delta)
        assert mv.delta(best) < 0
        assert set(best.fusions[0].parents) == {1, 2} and best.fusions[0].child == 3


def test_unfuse_drops_a_fusion_without_mass_gain() -> None:
    sc = Scene({
        "a": still(44, 50, 0, 7, 600.0), "b": still(50, 50, 0, 7, 2000.0),
        "c": still(50, 50, 8, 15, 2000.0),
    })  # fmt: skip
    sol = sc.solution(sc.track(1, ("a", 0, 7)), sc.track(2, ("b", 0, 7)),
                      sc.track(3, ("c", 8, 15)), fusions=(Fusion((1, 2), 3),))  # fmt: skip
    sol = _check_lowers("unfuse", sc, sol)
    assert not sol.fusions


def test_cross_continues_under_a_blob() -> None:
    # a (800) drifts over c (1200); while they overlap the detector sees one blob (2000)
    parts = {"c": [], "a": [], "blob": []}
    for f in range(N_FRAMES):
        xa, xc = 32.0 + 1.2 * f, 45.0
        if abs(xa - xc) < 4.0:
            w = (800 * xa + 1200 * xc) / 2000
            parts["blob"].append((f, w, 50.0, 2000.0))
        else:
            parts["a"].append((f, xa, 50.0, 800.0))
            parts["c"].append((f, xc, 50.0, 1200.0))
    sc = Scene(parts)
    fa = [f for f, *_ in parts["a"]]
    gap = [f for f, *_ in parts["blob"]]
    a1 = sc.track(1, ("a", 0, min(gap) - 1))
    a2 = sc.track(2, ("a", max(gap) + 1, N_FRAMES - 1))
    c = sc.track(3, ("c", 0, min(gap) - 1), ("blob", min(gap), max(gap)), ("c", max(gap) + 1, 15))
    assert max(fa) == N_FRAMES - 1
    sol = sc.solution(a1, a2, c)
    e0 = energy(sol, sc.dets, P)
    mv = Mover(sol, sc.dets, P)
    moves = [m for g in GENERATORS["fuse"](mv) for m in g if m.kind == "cross"]
    best = min(moves, key=mv.delta)
    assert mv.delta(best) < 0
    mv.apply(best)
    refine(sol, sc.dets, P)
    assert energy(sol, sc.dets, P) < e0
    assert (sol.tracks[1].start, sol.tracks[1].end) == (0, N_FRAMES - 1) and 2 not in sol.tracks


@pytest.mark.parametrize(("inten_a", "hidden"), [(800.0, True), (60.0, False)])
def test_emerge_needs_the_mass_in_the_blob(inten_a: float, hidden: bool) -> None:
    # c (1200) sits still; a appears next to it at frame 6. Before, the detector saw one blob
    # of c + a: a was under c, unless a is so faint that the blob does not show its mass.
    blob = [(f, 45.5, 50.0, 1200.0 + inten_a) for f in range(6)]
    sc = Scene({"blob": blob, "c": still(45.0, 50.0, 6, 15, 1200.0),
                "a": still(47.5, 50.0, 6, 15, inten_a)})  # fmt: skip
    c = sc.track(3, ("blob", 0, 5), ("c", 6, 15))
    sol = sc.solution(c, sc.track(1, ("a", 6, 15)))
    refine(sol, sc.dets, P)
    mv = Mover(sol, sc.dets, P)
    moves = [m for g in GENERATORS["emerge"](mv) for m in g]
    assert bool(moves) is hidden
    if hidden:
        best = min(moves, key=mv.delta)
        assert mv.delta(best) < 0
        mv.apply(best)
        assert sol.tracks[1].start == 0


def test_swap_restores_identities_after_an_encounter() -> None:
    p = [(f, 40.0 + 0.8 * f, 50.0, 1000.0) for f in range(N_FRAMES)]
    q = [(f, 52.0 - 0.8 * f, 53.0, 3000.0) for f in range(N_FRAMES)]
    sc = Scene({"p": p, "q": q})
    t1 = sc.track(1, ("p", 0, 7), ("q", 8, 15))
    t2 = sc.track(2, ("q", 0, 7), ("p", 8, 15))
    sol = _check_lowers("swap", sc, sc.solution(t1, t2))
    assert np.isclose(np.exp(sol.tracks[1].u), 1000.0, rtol=0.2).all()


def test_swap_candidates_of_active_tracks_equal_those_of_a_full_search() -> None:
    """Online only a few tracks are active: their swap candidates are found from their own
    points, and must be exactly those a search over all pairs gives them."""
    p = [(f, 40.0 + 0.8 * f, 50.0, 1000.0) for f in range(N_FRAMES)]
    q = [(f, 52.0 - 0.8 * f, 53.0, 3000.0) for f in range(N_FRAMES)]
    far = {f"s{k}": still(10.0 + 8.0 * k, 15.0, 0, N_FRAMES - 1) for k in range(10)}
    sc = Scene({"p": p, "q": q, **far})
    t1 = sc.track(1, ("p", 0, 7), ("q", 8, 15))
    t2 = sc.track(2, ("q", 0, 7), ("p", 8, 15))
    others = [sc.track(10 + k, (f"s{k}", 0, N_FRAMES - 1)) for k in range(10)]
    sol = sc.solution(t1, t2, *others)

    def swaps(active: set[int] | None) -> list[tuple[tuple[int, ...], list[tuple[int, int]]]]:
        mv = Mover(sol, sc.dets, P)
        mv.active = active
        return [
            (m.remove, [(t.start, t.end) for t in m.add]) for g in GENERATORS["swap"](mv) for m in g
        ]

    every = swaps(None)
    assert every, "the crossing gives swap candidates"
    assert swaps({1}) == [s for s in every if 1 in s[0]]
    assert swaps({10, 11}) == []  # still particles far from everything: nothing to swap


def test_committed_frames_are_never_changed() -> None:
    sc = Scene({"a": still(50, 50, 0, 4) + still(50, 50, 7, 15)})
    sol = sc.solution(sc.track(1, ("a", 0, 4)), sc.track(2, ("a", 7, 15)))
    sol.frozen_until = 8  # the start of track 2 is committed: it cannot be merged into 1
    mv = Mover(sol, sc.dets, P)
    merges = [m for g in GENERATORS["merge"](mv) for m in g]
    assert all(mv.delta(m) == np.inf for m in merges)


@pytest.mark.parametrize("kind", ["shrink", "remove"])
def test_local_delta_equals_global_change(kind: str) -> None:
    """Moves judged without relaxation: the local ΔE is exactly the global one."""
    sc = Scene({"a": still(50, 50, 0, 7), "fp": [(5, 20.0, 20.0, 300.0), (6, 22.0, 21.0, 300.0)]},
               score=0.9)  # fmt: skip
    t = sc.track(1, ("a", 0, 7))
    extra = Track(1, 0, np.vstack([t.xy, np.repeat(t.xy[-1:], 3, 0)]),
                  np.r_[t.u, np.repeat(t.u[-1], 3)], np.r_[t.det, -np.ones(3, int)])  # fmt: skip
    sol = sc.solution(extra, sc.track(2, ("fp", 5, 6)))
    refine(sol, sc.dets, P)
    mv = Mover(sol, sc.dets, P)
    move = next(m for g in GENERATORS[kind](mv) for m in g)
    e0 = energy(sol, sc.dets, P)
    d = mv.delta(move)
    mv.apply(move)
    assert energy(sol, sc.dets, P) - e0 == pytest.approx(d, abs=1e-6)
