"""The session's track stage: online commits, background global versions, replay on resume."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nptrack.config import TrackConfig
from nptrack.evaluate.mot import evaluate_tracks, read_table_csv
from nptrack.pipeline.store import SessionStore, frame_record
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


def _store(store: SessionStore, k: int, dets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Store frame k (identity registration) with `dets`, as the track stage does before it
    feeds the tracker; returns `dets`."""
    row = frame_record(
        frame=k, time_s=None, source=f"f{k}.tif", pixel_size_nm=(PIXEL_NM, PIXEL_NM),
        matrix=np.eye(2, 3), reg_cc=1.0, status="ok", shape=(256, 256),
    )  # fmt: skip
    store.add_frame(row, dets)
    return dets


def _feed(store: SessionStore, tracker: SessionTracker, k: int, dets: dict[str, Any]) -> None:
    tracker.update(k, _store(store, k, dets))


def test_online_commits_background_and_final_versions(truth, tmp_path: Path) -> None:
    cfg = TrackConfig(reoptimize_every_frames=6)
    frames = _frames(truth)
    with SessionStore(tmp_path) as store:
        tracker = SessionTracker(store, cfg, pixel_size_nm=PIXEL_NM, frame_shape=(256, 256))
        for k, dets in enumerate(frames[:12]):
            _feed(store, tracker, k, dets)
        tracker.wait_background()  # the one started at frame 6 or 12
        assert tracker.global_versions, "a background re-optimisation was stored"
        background = store.versions()[-1]
        assert background["kind"] == "global" and background["last_frame"] in (5, 11)
        # stored by the worker process itself; the session learns its number only
        assert tracker.global_versions[-1] == background["version"]
        bg_rows = store.tracks(background["version"])
        assert {r["frame"] for r in bg_rows} == set(range(background["last_frame"] + 1))
        # Online: frame t − L committed at frame t, never changed afterwards.
        online = store.tracks(tracker.version)
        assert {r["frame"] for r in online} == set(range(12 - cfg.commit_lag_frames))
        for k, dets in enumerate(frames[12:], start=12):
            _feed(store, tracker, k, dets)
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
            _feed(a, straight, k, dets)
        resumed = SessionTracker(b, cfg, pixel_size_nm=PIXEL_NM, frame_shape=(256, 256),
                                 background=False)  # fmt: skip
        assert resumed.replay((k, _store(b, k, d)) for k, d in enumerate(frames[:9])) == 9
        for k, dets in enumerate(frames[9:], start=9):
            _feed(b, resumed, k, dets)
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
            _feed(store, tracker, k, dets)
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


@pytest.fixture(scope="module")
def long_truth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("long_truth")
    prepare_sequence(out, config="table1", frames=60, seed=3)  # truth only, no images
    return read_table_csv(out / "ground_truth.csv")


def test_session_tracker_holds_a_window_and_commits_what_a_full_history_tracker_does(
    long_truth, tmp_path: Path
) -> None:
    """The memory design: the live tracker keeps the rows of its last frames and the tracks
    alive, the history is in the store, and nothing it commits or hands to the global
    re-optimisation differs from a tracker that keeps everything in memory."""
    from operator import itemgetter

    from nptrack.pipeline.tracking import (
        StoredTracks,
        feed_online,
        stored_start,
        table_rows,
        unfrozen,
    )
    from nptrack.track import OnlineTracker

    cfg = TrackConfig()
    frames = _frames(long_truth)
    full = OnlineTracker(pixel_size_nm=PIXEL_NM, frame_shape=(256, 256), config=cfg)
    committed: list[dict[str, Any]] = []
    keep = {"min_score": cfg.min_detection_score,
            "min_diameter_nm": cfg.min_detection_diameter_px * PIXEL_NM}  # fmt: skip
    with SessionStore(tmp_path) as store:
        tracker = SessionTracker(store, cfg, pixel_size_nm=PIXEL_NM, frame_shape=(256, 256),
                                 background=False)  # fmt: skip
        online = tracker.online
        for k, dets in enumerate(frames):
            _feed(store, tracker, k, dets)
            commit = feed_online(full, tracker_input(dets, **keep), np.eye(2, 3))
            committed += [] if commit is None else table_rows(commit.tracks)
            if k == 40:
                capacity = len(online._buf)
        n_frames = len(frames)
        # Detection rows in memory: those of the last frames only, not the whole series.
        kept = online._keep_frames + cfg.window_frames
        per_frame = np.diff(online._offsets)
        assert online._row0 >= online._offsets[n_frames - kept] > 0
        assert online._offsets[-1] - online._row0 <= per_frame[-kept:].sum()
        assert len(online._buf) == capacity < per_frame.sum()  # no growth after warm-up
        with pytest.raises(RuntimeError, match="let go"):
            _ = online.detections
        # Finished tracks are in the store, not in memory (only their ids are); so are the
        # old parts of live tracks: what is in memory starts with the frames still held.
        assert isinstance(online._archive, StoredTracks) and not online._archive._pending
        n_archived = len(list(store.online_tracks("archive")))
        assert n_archived == len(online._archive) == len(full._archive) > 0
        first_held = online._offsets.index(online._row0)
        assert min(tr.start for tr in online.sol.tracks.values()) >= first_held
        long_lived = [tr for tr in full.sol.tracks.values() if tr.start < 10]
        assert long_lived and all(online.sol.tracks[tr.id].start > 10 for tr in long_lived)
        # Same commits as the tracker that keeps everything.
        key = itemgetter("track_id", "frame")
        assert store.tracks(tracker.version) == sorted(committed, key=key)
        # The history read back from the store is what the tracker was fed.
        cols = tracker.columns()
        dets_all = full.detections
        np.testing.assert_array_equal(cols["frame"], dets_all.frame)
        np.testing.assert_array_equal(cols["x"], dets_all.xy[:, 0])
        np.testing.assert_array_equal(cols["diameter_nm"], dets_all.diameter_nm)
        # The background worker's start (live tracks + the store's archive) is the full one.
        assert list(store.online_tracks("part"))  # live tracks' old parts are stored
        init = stored_start(store, unfrozen(online.live_solution()), until=n_frames - 1)
        ref = unfrozen(full.solution)
        assert list(init.tracks) == list(ref.tracks) and init.fusions == ref.fusions
        for tid, tr in ref.tracks.items():
            got = init.tracks[tid]
            assert got.start == tr.start
            np.testing.assert_array_equal(got.xy, tr.xy)
            np.testing.assert_array_equal(got.det, tr.det)
            np.testing.assert_array_equal(got.u, tr.u)
        assert list(tracker.warm_start().tracks) == list(ref.tracks)


def test_final_pass_and_reoptimize_report_progress(
    truth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long final pass says what it does every few seconds (here: at every tick), and the
    time the user waited for it is stored."""
    import nptrack.track
    from nptrack.pipeline import tracking
    from nptrack.pipeline.session import reoptimize_session

    class Every(nptrack.track.Progress):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "every_s": 0.0})

    monkeypatch.setattr(tracking, "Progress", Every)
    monkeypatch.setattr(nptrack.track, "Progress", Every)
    said: list[str] = []
    with SessionStore(tmp_path) as store:
        tracker = SessionTracker(store, TrackConfig(), pixel_size_nm=PIXEL_NM,
                                 frame_shape=(256, 256), background=False,
                                 on_progress=said.append)  # fmt: skip
        for k, dets in enumerate(_frames(truth)[:10]):
            _feed(store, tracker, k, dets)
        assert said == []  # nothing while the frames come in
        tracker.finish()
        waited = store.get_meta("final_reoptimize_s")
    assert said[0] == "final global re-optimisation of 10 frames"
    what = "global re-optimisation of 10 frames"
    first = [s for s in said if s.startswith(f"{what}, start 1 of 2 (gated Hungarian links): ")]
    second = [s for s in said if s.startswith(f"{what}, start 2 of 2 (online tracks): ")]
    assert first and second
    assert any("epoch 1, " in s for s in first) and any("conjugate gradient" in s for s in first)
    # the second start is judged to take as long as the first
    assert all(s.endswith((" s left", "should end soon")) for s in second)
    assert any(re.fullmatch(f"{what}: start 1 of 2 done in \\d+ s", s) for s in said)
    assert isinstance(waited, float) and waited > 0
    lines: list[str] = []
    reoptimize_session(tmp_path, on_status=lines.append)
    assert any(s.startswith("replaying the online tracker: frame 10 of 10; ") for s in lines)
    assert any(s.startswith(f"{what}, start 2 of 2 (online tracks): ") for s in lines)
    assert lines[-1].startswith(f"{what} took ")


def test_a_long_session_lets_old_sizes_go(long_truth, tmp_path: Path) -> None:
    """Over a long session the tracker keeps the diameters and the live tracks' detection
    rows of its last `history_frames` only (memory flat), and commits what it did before."""
    from operator import itemgetter

    cfg = TrackConfig()
    frames = _frames(long_truth)
    history = 12
    committed: dict[int, list[dict[str, Any]]] = {}
    for h in (history, 500):
        with SessionStore(tmp_path / str(h)) as store:
            tracker = SessionTracker(store, cfg, pixel_size_nm=PIXEL_NM, frame_shape=(256, 256),
                                     background=False)  # fmt: skip
            online = tracker.online
            online.history_frames = h
            for k, dets in enumerate(frames):
                _feed(store, tracker, k, dets)
            committed[h] = sorted(
                store.tracks(tracker.version), key=itemgetter("track_id", "frame")
            )
            if h == history:
                diam = online._diameters
                per_frame = np.diff(online._offsets)
                first_held = online._offsets.index(online._row0)
                # the diameters of the frames from first_held - history on, no older ones
                assert diam.first == online._offsets[first_held - history] > 0
                assert diam.end - diam.first == per_frame[first_held - history :].sum()
                with pytest.raises(IndexError, match="let go"):
                    diam[[diam.first - 1]]
                heads = online._head_det
                assert heads and all(len(d) <= history for d in heads.values())
                assert min(online._head_from.values()) == first_held - history
    assert committed[history] == committed[500]
