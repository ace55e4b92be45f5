"""tools/bench_track.py --detector unet: the project's own chain on rendered frames, scored."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import bench_track  # noqa: E402


def test_unet_mode_scores_both_track_versions_of_rendered_frames() -> None:
    out = bench_track.bench_unet("table1", [0], frames=6)
    methods = [r["method"] for r in out["runs"]]
    assert methods == [
        "np-tracker global (U-Net detections)",
        "np-tracker online (U-Net detections)",
    ]
    for r in out["runs"]:
        # ~46 particles in each of 6 frames, found and tracked by the segmenter + tracker
        assert 200 < r["num_objects"] < 400
        assert r["mota"] > 80.0 and r["motp"] > 85.0
    assert out["mean"]["np-tracker global (U-Net detections)"]["mota"] == pytest.approx(
        out["runs"][0]["mota"], abs=1e-3
    )


def test_final_mode_times_the_end_of_session_pass_on_a_continuous_series() -> None:
    out = bench_track.bench_final(12, size_px=256)
    assert out["frames"] == 12 and 30 < out["particles_per_frame"] < 70
    for part in ("online", "final_pass", "reoptimize"):
        assert out[part]["cpu_s"] > 0 and out[part]["wall_s"] > 0
    # continuous motion: the tracks of the final pass follow the particles
    assert out["final_pass"]["mota"] > 90.0 and out["final_pass"]["idsw"] <= 3


def test_long_series_moves_particles_continuously() -> None:
    truth, dets = bench_track.long_series(8, size_px=256)
    assert dets.fields is not None and dets.fields.shape == (8, 2, 3)
    ids, frame = truth["id"], truth["frame"]
    steps = []
    for i in np.unique(ids):
        m = ids == i
        order = np.argsort(frame[m])
        xy = np.column_stack([truth["x"][m], truth["y"][m]])[order]
        steps.append(np.hypot(*np.diff(xy, axis=0).T))
    # Brownian steps of 1-2 px per frame, no jumps back to where a particle was frames ago
    assert np.median(np.concatenate(steps)) < 3.0 and np.concatenate(steps).max() < 15.0
