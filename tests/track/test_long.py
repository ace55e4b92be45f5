"""Long series: the global CEM's per-move work stays local (fresh-track index), progress."""

from __future__ import annotations

import re

import numpy as np

from nptrack.track import Progress, energy, optimize, params_from_config
from nptrack.track.cem import FreshTracks, Mover
from nptrack.track.energy import FRAME_SEP, Solution, Track
from tests.track import make_scene


def _random_track(rng: np.random.Generator, tid: int, n_frames: int, field: float) -> Track:
    n = int(rng.integers(1, 12))
    start = int(rng.integers(0, n_frames - n + 1))
    xy = rng.uniform(0, field, 2) + np.cumsum(rng.normal(0, 1.5, (n, 2)), axis=0)
    return Track(tid, start, xy, np.zeros(n), np.full(n, -1, np.int64))


def _brute(tracks: dict[int, Track], query: list[Track], radius: float) -> set[int]:
    """Ids with a point within `radius` of a query point in the same frame (every pair)."""
    out = set()
    for tid, t in tracks.items():
        for q in query:
            for k in range(max(t.start, q.start), min(t.end, q.end) + 1):
                d = np.hypot(*(t.xy[k - t.start] - q.xy[k - q.start]))
                if d < radius:
                    out.add(tid)
    return out


def test_fresh_index_near_is_a_superset_of_every_hit_and_skips_far_tracks() -> None:
    rng = np.random.default_rng(0)
    fresh = FreshTracks()
    tracks = {i: _random_track(rng, i, 60, 200.0) for i in range(300)}
    for i, t in tracks.items():
        fresh[i] = t
    for i in range(0, 300, 3):  # removed tracks are never returned
        assert fresh.pop(i) is tracks[i]
        del tracks[i]
    fresh[1] = tracks[1] = _random_track(rng, 1, 60, 200.0)  # replaced under the same id
    assert len(fresh) == len(tracks) and 0 not in fresh and fresh[1] is tracks[1]
    for _ in range(40):
        q = _random_track(rng, -1, 60, 200.0)
        pts = np.column_stack([q.xy, np.arange(q.start, q.end + 1) * FRAME_SEP])
        got = dict(fresh.near(pts, 6.0))
        assert _brute(tracks, [q], 6.0) <= set(got)
        assert all(got[i] is tracks[i] for i in got)
        # only tracks that overlap the query in frames come back: not the whole history
        assert all(t.end >= q.start and t.start <= q.end for t in got.values())
        assert len(got) < len(tracks) / 4


def test_neighbours_of_fresh_tracks_equal_a_brute_force_search() -> None:
    sc = make_scene(seed=3)
    rng = np.random.default_rng(1)
    n_frames = sc.dets.n_frames
    sol = Solution(first_frame=0, last_frame=n_frames - 1)
    for i in range(40):
        sol.tracks[i] = _random_track(rng, i, n_frames, 60.0)
    mover = Mover(sol, sc.dets, params_from_config(None, sc.dets))
    # tracks added after the index was built (as moves add them during an epoch)
    for i in range(40, 120):
        t = _random_track(rng, i, n_frames, 60.0)
        sol.tracks[i] = t
        mover.fresh[i] = t
    for i in range(40, 120, 4):  # and some of them removed again
        del sol.tracks[i]
        mover.fresh.pop(i)
    for _ in range(30):
        q = _random_track(rng, -1, n_frames, 60.0)
        for radius in (2.0, 5.0, 12.0):
            assert mover.neighbours([q], radius) == _brute(sol.tracks, [q], radius)


def test_progress_reports_at_most_every_interval_with_time_left() -> None:
    now = [100.0]
    lines: list[str] = []
    pr = Progress(lines.append, "final pass", expected_s=60.0, every_s=5.0, clock=lambda: now[0])
    calls = []

    def stage() -> str:
        calls.append(1)
        return "epoch 2"

    for _ in range(10):  # within the interval: nothing, and the line is not even built
        now[0] += 0.4
        pr.tick(stage)
    assert lines == [] and calls == []
    now[0] = 106.0
    pr.tick(stage)
    assert lines == ["final pass: epoch 2; 6 s, about 54 s left"]
    pr.tick(stage)
    assert len(lines) == 1
    now[0] = 200.0
    pr.tick(stage)
    assert lines[-1] == "final pass: epoch 2; 100 s, should end soon"


def test_optimize_with_progress_reports_and_gives_the_same_solution() -> None:
    sc = make_scene(seed=3)
    params = params_from_config(None, sc.dets)
    plain = optimize(sc.dets, params=params)
    lines: list[str] = []
    ticked = optimize(sc.dets, params=params, progress=Progress(lines.append, "x", every_s=0.0))
    assert any("conjugate gradient on" in s for s in lines)
    assert any(
        re.match(r"x: epoch 1, \w+ moves \(\d+ of 10 kinds\), \d+ applied; 0 s$", s) for s in lines
    )
    assert energy(ticked, sc.dets, params) == energy(plain, sc.dets, params)
    assert sorted(ticked.tracks) == sorted(plain.tracks)
    for tid, t in plain.tracks.items():
        assert np.array_equal(ticked.tracks[tid].xy, t.xy)
