"""The session's track stage: online commits, background global versions, replay on resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nptrack.config import TrackConfig
from nptrack.evaluate.mot import evaluate_tracks, read_table_csv
from nptrack.pipeline.store import SessionStore
from nptrack.pipeline.tracking import SessionTracker, tracker_input
from nptrack.simulate.write import prepare_sequence

PIXEL_NM = 0.390625  # table1


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("truth")
    prepare_sequence(out, config="table1", frames=16, seed=2)  # truth only, no images
    return read_table_csv(out / "ground_truth.csv")


def _frames(truth: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The true particles as detections (positions jittered by 0.2 px), frame by frame."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(int(truth["frame"].max()) + 1):
        m = truth["frame"] == k
        n = int(m.sum())
        out.append({
            "x": truth["x"][m] + rng.normal(0, 0.2, n), "y": truth["y"][m] + rng.normal(0, 0.2, n),
            "diameter_nm": truth["diameter_nm"][m], "intensity": truth["intensity"][m],
            "score": np.full(n, 0.9), "det_id": np.arange(n),
        })  # fmt: skip
    return out


def test_online_commits_background_and_final_versions(truth, tmp_path: Path) -> None:
    cfg = TrackConfig(reoptimize_every_frames=6)
    frames = _frames(truth)
    with SessionStore(tmp_path) as store:
        tracker = SessionTracker(store, cfg, pixel_size_nm=PIXEL_NM, frame_shape=(256, 256))
        for k, dets in enumerate(frames[:12]):
            tracker.update(k, dets)
        tracker.wait_background()  # the one started at frame 6 or 12
        assert tracker.global_versions, "a background re-optimisation was stored"
        background = store.versions()[-1]
        assert background["kind"] == "global" and background["last_frame"] in (5, 11)
        # Online: frame t − L committed at frame t, never changed afterwards.
        online = store.tracks(tracker.version)
        assert {r["frame"] for r in online} == set(range(12 - cfg.commit_lag_frames))
        for k, dets in enumerate(frames[12:], start=12):
            tracker.update(k, dets)
        final = tracker.finish()
        later = [
            r for r in store.tracks(tracker.version) if r["frame"] < 12 - cfg.commit_lag_frames
        ]
        assert later == online  # committed rows are final
        rows = store.tracks(final)
    tracks = {c: np.array([r[c] for r in rows]) for c in ("frame", "track_id", "x", "y")}
    scores = evaluate_tracks(truth, tracks)
    assert scores["mota"] > 97.0 and scores["idsw"] <= 1


def test_replay_rebuilds_the_same_commits(truth, tmp_path: Path) -> None:
    frames = _frames(truth)
    cfg = TrackConfig()
    with SessionStore(tmp_path / "a") as a, SessionStore(tmp_path / "b") as b:
        straight = SessionTracker(a, cfg, pixel_size_nm=PIXEL_NM, frame_shape=(256, 256),
                                  background=False)  # fmt: skip
        for k, dets in enumerate(frames):
            straight.update(k, dets)
        resumed = SessionTracker(b, cfg, pixel_size_nm=PIXEL_NM, frame_shape=(256, 256),
                                 background=False)  # fmt: skip
        assert resumed.replay(enumerate(frames[:9])) == 9
        for k, dets in enumerate(frames[9:], start=9):
            resumed.update(k, dets)
        assert b.tracks(resumed.version) == a.tracks(straight.version)


def test_tracker_input_drops_low_scores_and_keeps_masses_positive() -> None:
    cols = tracker_input(
        {"x": np.arange(4.0), "y": np.zeros(4), "diameter_nm": np.full(4, 2.0),
         "intensity": np.array([10.0, -5.0, np.nan, 20.0]),
         "score": np.array([0.9, 0.8, 0.7, 0.3]), "det_id": np.arange(4)},
        min_score=0.5,
    )  # fmt: skip
    np.testing.assert_array_equal(cols["det_id"], [0, 1, 2])
    assert (cols["intensity"] > 0).all() and cols["intensity"][0] == 10.0


def test_each_frames_registration_reaches_the_tracker_as_its_field(truth, tmp_path: Path) -> None:
    from nptrack.pipeline.store import frame_record
    from nptrack.pipeline.tracking import stack_fields

    frames = _frames(truth)[:4]
    shifts = [(0.0, 0.0), (1.5, -0.5), (3.0, -1.0), (4.5, -1.5)]
    with SessionStore(tmp_path) as store:
        tracker = SessionTracker(store, TrackConfig(), pixel_size_nm=PIXEL_NM,
                                 frame_shape=(256, 256), background=False)  # fmt: skip
        for k, (dets, (tx, ty)) in enumerate(zip(frames, shifts, strict=True)):
            matrix = np.array([[1.0, 0.002, tx], [-0.002, 1.0, ty]])
            status = "failed" if k == 2 else "ok"  # a failed frame's affine is a placeholder
            row = frame_record(
                frame=k, time_s=None, source=f"f{k}.tif", pixel_size_nm=None,
                matrix=matrix, reg_cc=0.9, status=status, shape=(256, 256),
            )  # fmt: skip
            store.add_frame(row, {} if status == "failed" else dets)
            tracker.update(k, {} if status == "failed" else dets)
        fields = tracker._args()[1]["fields"]  # what the global re-optimisation is given
        assert fields.shape == (4, 2, 3)
        np.testing.assert_allclose(fields[[0, 1, 3], :, 2], np.array(shifts)[[0, 1, 3]])
        np.testing.assert_allclose(fields[1, :, :2], [[1.0, 0.002], [-0.002, 1.0]])
        np.testing.assert_array_equal(fields[2], [[1, 0, 0], [0, 1, 0]])  # frame 0's field
        assert tracker.finish() is not None
    assert stack_fields([None, None]) is None  # no frame known: the tracker's default


def test_final_reoptimisation_keeps_the_lower_energy_of_two_starts(
    truth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nptrack.pipeline import tracking
    from nptrack.track import energy

    runs = []
    real = tracking.track_detections

    def spy(dets: Any, **kwargs: Any) -> Any:
        runs.append((dets, kwargs, real(dets, **kwargs)))
        return runs[-1][2]

    monkeypatch.setattr(tracking, "track_detections", spy)
    with SessionStore(tmp_path) as store:
        tracker = SessionTracker(store, TrackConfig(), pixel_size_nm=PIXEL_NM,
                                 frame_shape=(256, 256), background=False)  # fmt: skip
        for k, dets in enumerate(_frames(truth)[:10]):
            tracker.update(k, dets)
        final = store.tracks(tracker.finish())
        online = store.tracks(tracker.version)
    (dets, cold, a), (_, warm, b) = runs  # the Hungarian start, then the online solution
    assert cold.get("init") is None and cold["params"] is warm["params"]
    init = warm["init"]
    assert init is not None and init.frozen_until == -1  # every frame free to change
    # Its detection indices are rows of the global detections: each online track explains
    # the same (frame, det_id) detections in both.
    by_track: dict[int, set] = {}
    for r in online:
        if r["det_id"] is not None:
            by_track.setdefault(r["track_id"], set()).add((r["frame"], r["det_id"]))
    from_init = {
        frozenset((int(dets.frame[d]), int(dets.det_id[d])) for d in t.det if d >= 0)
        for t in init.tracks.values()
    }
    assert {frozenset(s) for s in by_track.values()} == from_init - {frozenset()}
    p = cold["params"]
    best = min((a, b), key=lambda r: energy(r.solution, dets, p))
    kept = sorted((r["frame"], r["track_id"], r["x"]) for r in final)
    assert kept == sorted(
        (r["frame"], r["track_id"], r["x"]) for r in tracking.table_rows(best.tracks)
    )
