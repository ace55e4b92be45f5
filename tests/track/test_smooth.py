"""Position smoother: RTS on a track's own detections, noise by maximum likelihood."""

from __future__ import annotations

import numpy as np

from nptrack.config import TrackConfig
from nptrack.track import OnlineTracker, TrackTable, track_detections
from nptrack.track.energy import EnergyParams, Track
from nptrack.track.smooth import (
    estimate_motion_noise,
    own_detections,
    smooth_solution,
    smoothed_at,
    smoothed_xy,
)
from tests.track import Scene, make_scene


def _walks(
    rng: np.random.Generator, k: int, n: int, step: float, loc: float, diam: np.ndarray
) -> tuple[list[Track], np.ndarray, np.ndarray, np.ndarray]:
    """k random walks (step σ ∝ 1/d at 3 nm) and noisy detections of every point."""
    tracks, truth, dets, dd = [], [], [], []
    row = 0
    for j in range(k):
        s = step * (diam[j] / 3.0) ** -1.0
        x = np.cumsum(rng.normal(0, s, (n, 2)), axis=0) + 50.0
        z = x + rng.normal(0, loc, (n, 2))
        tracks.append(Track(j, 0, z.copy(), np.zeros(n), np.arange(row, row + n)))
        truth.append(x)
        dets.append(z)
        dd.append(np.full(n, diam[j]))
        row += n
    return tracks, np.concatenate(truth), np.concatenate(dets), np.concatenate(dd)


def _steady_rts_var(q: float, r: float) -> float:
    """Steady-state smoothed variance of a random walk (step var q) seen with noise var r."""
    pp = 0.5 * (q + np.sqrt(q * q + 4.0 * q * r))  # predicted
    pf = pp * r / (pp + r)  # filtered
    j = pf / pp
    return (pf - j * j * pp) / (1.0 - j * j)


def test_smoother_reaches_the_kalman_variance() -> None:
    """Steps as large as the localisation error: the smoother's error is the theoretical RTS
    variance (≈ 0.43 r), far below a raw detection's."""
    rng = np.random.default_rng(1)
    q, r = 0.3**2, 0.3**2
    tracks, truth, z, _ = _walks(rng, 20, 200, 0.3, 0.3, np.full(20, 3.0))
    own = own_detections(tracks, len(z))
    out = np.concatenate(smoothed_xy(tracks, own, z, np.full(20, q), r))
    err_raw = float(((z - truth) ** 2).mean())
    err = float(((out - truth) ** 2).mean())
    assert abs(err_raw - r) < 0.1 * r
    assert abs(err - _steady_rts_var(q, r)) < 0.1 * _steady_rts_var(q, r)
    assert err < 0.55 * err_raw


def test_points_without_own_detection_keep_cem_shifted() -> None:
    """A shared or missed point keeps its CEM position plus the correction interpolated from
    its neighbours; a track with one own point is left alone."""
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [3.0, 0.0], [4.0, 0.0]])
    det_xy = np.array([[0.2, 0.0], [1.2, 0.0], [9.0, 9.0], [3.4, 0.0], [4.4, 0.0]])
    t = Track(0, 0, xy, np.zeros(5), np.array([0, 1, 2, 3, 4]))
    single = Track(1, 0, np.array([[20.0, 20.0], [21.0, 20.0]]), np.zeros(2), np.array([2, -1]))
    own = [np.array([True, True, False, True, True]), np.array([False, False])]
    out = smoothed_xy([t, single], own, det_xy, np.array([1e6, 1.0]), 1e-6)
    # huge steps, tiny noise: own points are their detections
    np.testing.assert_allclose(out[0][[0, 1, 3, 4]], det_xy[[0, 1, 3, 4]], atol=1e-4)
    # the shared point: CEM (5, 5) + mean of the corrections at frames 1 and 3 (0.2, 0.4)
    np.testing.assert_allclose(out[0][2], [5.3, 5.0], atol=1e-4)
    np.testing.assert_array_equal(out[1], single.xy)


def test_noise_levels_by_maximum_likelihood() -> None:
    """σ0 and the localisation error come back from the tracks alone, with particles of
    different sizes moving by the mobility law, whatever the starting guess in `params`
    (the search starts from moment estimates: from (2, 1) px it stalls at r ≈ 1 px)."""
    p = EnergyParams(
        reference_diameter_nm=3.0, mobility_exponent=-2.0, step_sigma_px=2.0, localisation_px=1.0
    )
    for seed, step, tol_loc in ((4, 0.3, 0.03), (0, 1.1, 0.045)):
        rng = np.random.default_rng(seed)
        diam = rng.uniform(2.0, 4.5, 30)
        tracks, _, z, dd = _walks(rng, 30, 60, step, 0.3, diam)
        sigma, loc = estimate_motion_noise(tracks, z, dd, p)
        assert abs(sigma - step) < 0.1 * step
        assert abs(loc - 0.3) < tol_loc


def _slow_scene() -> Scene:
    """Particles stepping about as far as their detections err (0.3 px)."""
    return make_scene(seed=0, sigma0_px=0.3, noise_px=0.3, fusions=0, crossing=False,
                      exit=False, birth=False, vanish=False)  # fmt: skip


def _mean_error(table: TrackTable, truth: dict) -> float:
    """Mean distance of each written point with a detection to the true particle nearest it."""
    err = []
    for f in np.unique(table.frame):
        sel = table.frame == f
        ts = truth["frame"] == f
        d = np.hypot(
            table.x[sel, None] - truth["x"][None, ts], table.y[sel, None] - truth["y"][None, ts]
        ).min(1)
        err.append(d[(table.det_id[sel] >= 0) & (d < 2.0)])
    return float(np.concatenate(err).mean())


def test_global_output_is_smoothed_and_closer_to_truth() -> None:
    """Slow particles (steps ≈ the localisation error): the written positions are closer to
    the truth than CEM's, which the solution keeps."""
    sc = _slow_scene()
    on = track_detections(sc.dets)
    off = track_detections(sc.dets, config=TrackConfig(smooth_positions=False))
    e_on, e_off = _mean_error(on.tracks, sc.truth), _mean_error(off.tracks, sc.truth)
    assert e_on < 0.93 * e_off
    # the association is the same, only positions move
    np.testing.assert_array_equal(on.tracks.det_id, off.tracks.det_id)
    sm = smooth_solution(on.solution, sc.dets, on.params)
    moved = [float(np.abs(sm.tracks[i].xy - t.xy).max()) for i, t in on.solution.tracks.items()]
    assert max(moved) > 0.05  # the solution holds CEM's positions, not the smoothed ones


def test_online_commits_smoothed_positions() -> None:
    """Each committed frame gets the fixed-lag smoother's position (it sees L frames ahead),
    closer to the truth than the tracker's own state once the noise levels are measured
    (at frame W + 10, so from committed frame W + 10 − L on)."""
    sc = _slow_scene()
    d = sc.dets
    tables = {}
    for smooth in (True, False):
        cfg = TrackConfig(smooth_positions=smooth)
        ot = OnlineTracker(pixel_size_nm=d.pixel_size_nm, frame_shape=d.frame_shape, config=cfg)
        commits = []
        for f in range(d.n_frames):
            r = d.rows(f)
            c = ot.update(
                d.xy[r, 0], d.xy[r, 1], diameter_nm=d.diameter_nm[r],
                intensity=d.intensity[r], score=d.score[r], det_id=d.det_id[r],
            )  # fmt: skip
            commits += [c] if c else []
        commits += ot.finish()
        tab = TrackTable.concat([c.tracks for c in commits])
        tables[smooth] = tab.select(tab.frame >= cfg.window_frames + 10 - cfg.commit_lag_frames)
    assert _mean_error(tables[True], sc.truth) < 0.94 * _mean_error(tables[False], sc.truth)


def test_one_frame_smoother_matches_the_whole_track_one() -> None:
    """`smoothed_at` (online commits) gives `smoothed_xy`'s positions in that frame, with
    misses, a detection shared with a context track and tracks of different spans."""
    rng = np.random.default_rng(5)
    tracks, _, z, _ = _walks(rng, 6, 25, 0.4, 0.3, np.full(6, 3.0))
    tracks[1].det[[3, 10, 11]] = -1
    tracks[2] = tracks[2].cut(4, 20)
    tracks[3] = tracks[3].cut(12, 24)
    ctx = Track(99, 9, z[[tracks[0].det[9]]], np.zeros(1), tracks[0].det[[9]])  # shares frame 9
    q = np.linspace(0.1, 0.3, 6)
    whole = smoothed_xy(tracks, own_detections([*tracks, ctx], len(z))[:6], z, q, 0.09)
    for frame in (9, 12, 20):
        alive = [j for j, t in enumerate(tracks) if t.start <= frame <= t.end]
        got = smoothed_at([tracks[j] for j in alive], z, q[alive], 0.09, frame, since=0,
                          context=[ctx])  # fmt: skip
        want = np.array([whole[j][frame - tracks[j].start] for j in alive])
        np.testing.assert_allclose(got, want, atol=1e-9)
