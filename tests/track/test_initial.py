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
