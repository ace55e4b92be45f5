"""The scales measured from the data (`estimate_params`) on short series."""

from __future__ import annotations

import numpy as np
import pytest

from nptrack.track import Detections, track_detections
from nptrack.track.cem import params_from_config
from nptrack.track.initial import estimate_params


def _grid_walk(n_frames: int, step_px: float, seed: int = 0) -> Detections:
    rng = np.random.default_rng(seed)
    start = np.stack(np.meshgrid(np.arange(20, 200, 30), np.arange(20, 200, 30)), -1).reshape(-1, 2)
    xy = [start.astype(float)]
    for _ in range(n_frames - 1):
        xy.append(xy[-1] + rng.normal(0, step_px, start.shape))
    frame = np.repeat(np.arange(n_frames), len(start))
    pos = np.concatenate(xy)
    n = pos.shape[0]
    return Detections.from_arrays(
        frame, pos[:, 0], pos[:, 1], diameter_nm=np.full(n, 3.0), intensity=np.full(n, 500.0),
        pixel_size_nm=0.4, frame_shape=(220, 220),
    )  # fmt: skip


@pytest.mark.parametrize("n_frames", [4, 5])
def test_short_series_track_without_error(n_frames: int) -> None:
    # every chain has n_frames positions: lag 4 holds no pairs in a 4-frame series
    dets = _grid_walk(n_frames, step_px=0.7)
    params = estimate_params(dets, params_from_config(None, dets, estimate=False))
    assert np.isfinite(params.step_sigma_px) and params.step_sigma_px > 0
    res = track_detections(dets)
    assert np.unique(res.tracks.track_id).size == 36  # one track per particle
    assert len(res.tracks) == 36 * n_frames


def test_measured_step_matches_the_walk() -> None:
    dets = _grid_walk(30, step_px=0.8)
    params = estimate_params(dets, params_from_config(None, dets, estimate=False))
    assert params.step_sigma_px == pytest.approx(0.8, rel=0.15)


def _sized_walk(
    n_frames: int,
    *,
    noise_at_3nm: float,
    exponent: float,
    seed: int = 0,
    diameters_nm: tuple[float, float] = (1.6, 5.0),
    n_small: int = 0,
) -> Detections:
    """A grid of particles in Brownian motion (σ ∝ 1/d) whose measured log intensity
    scatters by ``noise_at_3nm · (d / 3 nm)^exponent`` around ∝ d³: sizes spread evenly
    over `diameters_nm`, or `n_small` of 1.6 nm among ones of the upper size."""
    rng = np.random.default_rng(seed)
    start = np.stack(np.meshgrid(np.arange(20, 200, 30), np.arange(20, 200, 30)), -1).reshape(-1, 2)
    if n_small:
        diam = np.full(len(start), diameters_nm[1])
        diam[:n_small] = diameters_nm[0]
    else:
        diam = np.linspace(*diameters_nm, len(start))
    diam = rng.permutation(diam)
    sigma_px = 1.2 * 3.0 / diam
    xy = [start.astype(float)]
    for _ in range(n_frames - 1):
        xy.append(xy[-1] + rng.normal(0, 1, start.shape) * sigma_px[:, None])
    pos = np.concatenate(xy)
    d = np.tile(diam, n_frames)
    noise = noise_at_3nm * (d / 3.0) ** exponent
    intensity = 40.0 * d**3 * np.exp(noise * rng.standard_normal(d.size))
    frame = np.repeat(np.arange(n_frames), len(start))
    return Detections.from_arrays(
        frame, pos[:, 0], pos[:, 1], diameter_nm=d, intensity=intensity,
        pixel_size_nm=0.4, frame_shape=(220, 220),
    )  # fmt: skip


@pytest.mark.parametrize("exponent", [-2.0, 0.0])
def test_measured_intensity_scatter_follows_particle_size(exponent: float) -> None:
    dets = _sized_walk(30, noise_at_3nm=0.08, exponent=exponent)
    params = estimate_params(dets, params_from_config(None, dets, estimate=False))
    assert params.intensity_noise_exponent == pytest.approx(exponent, abs=0.4)
    # ε_d is 2.5 per-detection σ up to the median size, and that of the median size above
    d_ref = params.reference_diameter_nm
    assert d_ref == pytest.approx(3.3, abs=0.1)
    for d_nm in (2.0, 3.0, d_ref, 4.5):
        sd = 0.08 * (min(d_nm, d_ref) / 3.0) ** exponent
        assert float(params.intensity_tol(d_nm)) == pytest.approx(2.5 * sd, rel=0.25)


def test_small_particle_with_noisy_intensity_stays_one_track() -> None:
    # a 1.6 nm particle's measured mass jumps by ~±30 % from frame to frame: its detections
    # still belong to its track (an ε_d fitted to the big, steady particles rejected them)
    n = 20
    dets = _sized_walk(n, noise_at_3nm=0.08, exponent=-2.0, seed=1, n_small=4)
    small = np.flatnonzero(dets.diameter_nm < 2.0)
    tracks = track_detections(dets).tracks
    rows = np.asarray(tracks.det_id)
    tid = np.asarray(tracks.track_id)
    on_small = np.isin(rows, small)
    assert on_small.sum() >= 0.95 * small.size  # attached, not left as gaps
    assert np.unique(tid[on_small]).size == 4  # one track each
