"""tools/peers.py: the peers' outputs become tracks and events that nptrack.evaluate scores."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nptrack.evaluate.mot import evaluate
from tests.track import make_scene

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import peers


def test_laptrack_merge_becomes_one_fusion_event() -> None:
    # A sits still; B walks into it and ends at frame 2; laptrack starts a child segment.
    rows = [(f, 10.0 + 0.1 * f, 10.0) for f in range(6)]
    rows += [(f, 14.0 - 0.8 * f, 10.0) for f in range(3)]
    df = pd.DataFrame(rows, columns=["frame", "x", "y"])
    df["diameter_nm"], df["intensity"] = 2.0, 1.0
    tracks, events = peers.run_laptrack(df, cutoff_px=3.0, gap_frames=2, merging_cutoff_px=3.0)
    assert len(events) == 1
    ev = events[0]
    assert ev.type == "fusion" and ev.frame == 3
    parents, child = ev.track_ids.split(">")
    assert len(parents.split("+")) == 2
    child_rows = tracks["track_id"] == int(child)
    assert tracks["frame"][child_rows].min() == 3
    assert ev.detail["x"] == pytest.approx(10.3)
    # without merging, B's end is no event and A is one track over all six frames
    tracks, events = peers.run_laptrack(df, cutoff_px=3.0, gap_frames=2, merging_cutoff_px=None)
    assert events == []
    assert np.unique(tracks["track_id"]).size == 2


def test_peers_track_a_scripted_scene() -> None:
    scene = make_scene(seed=3, fusions=1, crossing=False, fp_per_frame=0.0, miss=0.0)
    truth_events = [{"frame": f, "type": t, "track_ids": ids} for f, t, ids in scene.events]
    df = peers.detections_frame(scene.dets)
    assert len(df) == len(scene.dets)
    tp = peers.run_trackpy(df, search_range_px=5.0, memory_frames=2)
    lt, lt_events = peers.run_laptrack(df, cutoff_px=5.0, gap_frames=2, merging_cutoff_px=6.0)
    for tracks in (tp, lt):
        assert set(tracks) >= {"frame", "track_id", "x", "y", "diameter_nm", "intensity"}
        assert len(tracks["frame"]) == len(df)  # both keep every detection
        r = evaluate(scene.truth, tracks)
        assert r["mota"] > 85.0
    r = evaluate(scene.truth, lt, truth_events=truth_events, events=lt_events)
    assert r["fusion_recall"] == 1.0


def test_interpolate_gaps_fills_skipped_frames_linearly() -> None:
    tracks = {
        "frame": np.array([0, 1, 4, 0, 1]),
        "track_id": np.array([7, 7, 7, 8, 8]),
        "x": np.array([0.0, 1.0, 4.0, 5.0, 5.0]),
        "y": np.array([0.0, 0.0, 6.0, 1.0, 1.0]),
        "diameter_nm": np.array([2.0, 2.0, 2.0, 3.0, 3.0]),
        "intensity": np.array([1.0, 1.0, 4.0, 1.0, 1.0]),
    }
    out = peers.interpolate_gaps(tracks)
    assert len(out["frame"]) == 7  # frames 2 and 3 of track 7 added, track 8 untouched
    new = (out["track_id"] == 7) & np.isin(out["frame"], [2, 3])
    assert out["frame"][new].tolist() == [2, 3]
    np.testing.assert_allclose(out["x"][new], [2.0, 3.0])
    np.testing.assert_allclose(out["y"][new], [2.0, 4.0])
    np.testing.assert_allclose(out["intensity"][new], [2.0, 3.0])
