"""tools/bench_track.py --detector unet: the project's own chain on rendered frames, scored."""

from __future__ import annotations

import sys
from pathlib import Path

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
