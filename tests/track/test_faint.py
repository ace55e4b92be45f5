"""Tracks made of marginal detections only are dropped (`cem.drop_faint_tracks`)."""

from __future__ import annotations

import numpy as np

from nptrack.config import TrackConfig
from nptrack.evaluate.mot import evaluate
from nptrack.track import Detections, Fusion, Solution, Track, track_detections
from nptrack.track.cem import drop_faint_tracks, faint_track_score
from tests.track import PX_NM, SHAPE, make_scene

SPOT = np.array([100.0, 100.0])


def _with_faint_spot(score: float, frames: range) -> tuple[Detections, dict[str, np.ndarray]]:
    """A scene's detections plus a persistent low-score blob at SPOT (support texture)."""
    sc = make_scene(seed=3, crossing=False, fp_per_frame=0.0)
    d = sc.dets
    # keep the spot away from the scene's particles
    near = np.hypot(*(d.xy - SPOT).T) < 20.0
    assert not near.any(), "scene changed: pick another spot"
    k = len(frames)
    rng = np.random.default_rng(0)
    xy = SPOT + rng.normal(0.0, 0.2, (k, 2))
    dets = Detections.from_arrays(
        np.concatenate([d.frame, np.array(frames)]),
        np.concatenate([d.xy[:, 0], xy[:, 0]]),
        np.concatenate([d.xy[:, 1], xy[:, 1]]),
        diameter_nm=np.concatenate([d.diameter_nm, np.full(k, 1.4)]),
        intensity=np.concatenate([d.intensity, np.full(k, 400.0)]),
        score=np.concatenate([d.score, np.full(k, score)]),
        pixel_size_nm=PX_NM,
        frame_shape=SHAPE,
        n_frames=d.n_frames,
    )
    return dets, sc.truth


def _points_at_spot(res_tracks: dict[str, np.ndarray]) -> int:
    xy = np.column_stack([res_tracks["x"], res_tracks["y"]])
    return int((np.hypot(*(xy - SPOT).T) < 3.0).sum())


def test_threshold_is_halfway_from_the_detection_threshold() -> None:
    assert faint_track_score(TrackConfig()) == 0.7
    assert faint_track_score(TrackConfig(min_detection_score=0.6)) == 0.8


def test_persistent_low_score_blob_is_not_a_track() -> None:
    dets, truth = _with_faint_spot(0.55, range(5, 17))
    res = track_detections(dets, config=TrackConfig())
    assert _points_at_spot(res.tracks.as_columns()) == 0
    r = evaluate(truth, res.tracks.as_columns())
    assert r["fp"] <= 2 and r["mota"] >= 98.0
    # the same blob with a confident score is tracked (12 frames, all of them written)
    dets_ok, _ = _with_faint_spot(0.9, range(5, 17))
    res_ok = track_detections(dets_ok, config=TrackConfig())
    assert _points_at_spot(res_ok.tracks.as_columns()) == 12


def _track(tid: int, start: int, n: int, rows: np.ndarray) -> Track:
    return Track(tid, start, np.zeros((n, 2)), np.zeros(n), rows.astype(np.int64))


def test_drop_faint_tracks_keeps_fusions_committed_and_confident() -> None:
    score = np.array([0.5, 0.6, 0.65, 0.95, 0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.55, 0.6])
    dets = Detections.from_arrays(
        np.zeros(12), np.arange(12.0), np.zeros(12), diameter_nm=np.full(12, 3.0),
        intensity=np.full(12, 1e3), score=score, pixel_size_nm=PX_NM, n_frames=4,
    )  # fmt: skip
    assert np.array_equal(dets.score, score)  # rows as given
    sol = Solution(first_frame=0, last_frame=3)
    sol.tracks = {
        0: _track(0, 0, 3, np.array([0, 1, 2])),  # median 0.6: dropped
        1: _track(1, 0, 3, np.array([3, 4, 5])),  # median 0.9: kept
        2: _track(2, 0, 2, np.array([6, 7])),  # faint parent of a fusion: kept
        3: _track(3, 0, 2, np.array([8, -1])),  # faint parent of a fusion: kept
        4: _track(4, 2, 2, np.array([9, 10])),  # faint child of the fusion: kept
        5: _track(5, 1, 2, np.array([-1, -1])),  # no detection: kept
        6: _track(6, 0, 2, np.array([11, 0])),  # faint but starts in a committed frame: kept
    }
    sol.fusions = {4: Fusion((2, 3), 4)}
    sol.frozen_until = 0
    sol.tracks[0].start = 1  # free frames only
    assert drop_faint_tracks(sol, dets, 0.7) == {0}
    assert set(sol.tracks) == {1, 2, 3, 4, 5, 6}
