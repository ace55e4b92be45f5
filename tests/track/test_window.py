"""Online tracking: committed frames never change; online close to global."""

from __future__ import annotations

import numpy as np
import pytest

from nptrack.config import TrackConfig
from nptrack.evaluate.mot import evaluate
from nptrack.track import Commit, Detections, OnlineTracker, TrackTable, track_detections
from tests.track import Scene, detections_from_truth, make_scene


def _frozen_points(ot: OnlineTracker) -> dict[tuple[int, int], tuple]:
    """(track, frame) → (x, y, u, det) for every committed point of the online state."""
    out = {}
    for tid, t in ot.solution.tracks.items():
        for f in range(t.start, min(t.end, ot.committed_until) + 1):
            k = f - t.start
            out[(tid, f)] = (*t.xy[k], t.u[k], int(t.det[k]))
    return out


def _run(
    seed: int, cfg: TrackConfig, check: bool = False, crossing: bool = True
) -> tuple[Scene, OnlineTracker, list[Commit]]:
    sc = make_scene(seed=seed, crossing=crossing)
    d = sc.dets
    ot = OnlineTracker(pixel_size_nm=d.pixel_size_nm, frame_shape=d.frame_shape, config=cfg)
    commits, seen = [], {}
    for f in range(d.n_frames):
        r = d.rows(f)
        c = ot.update(d.xy[r, 0], d.xy[r, 1], diameter_nm=d.diameter_nm[r],
                      intensity=d.intensity[r], score=d.score[r], det_id=d.det_id[r])  # fmt: skip
        if c is not None:
            assert c.frame == f - cfg.commit_lag_frames
            commits.append(c)
        if check:
            now = _frozen_points(ot)
            changed = [k for k, v in seen.items() if now.get(k) != v]
            assert not changed, f"committed points changed at frame {f}: {changed[:3]}"
            seen = now
    commits += ot.finish()
    return sc, ot, commits


def test_committed_frames_never_change() -> None:
    cfg = TrackConfig(window_frames=8, commit_lag_frames=3)
    sc, ot, commits = _run(0, cfg, check=True)
    assert [c.frame for c in commits] == list(range(sc.dets.n_frames))
    table = TrackTable.concat([c.tracks for c in commits])
    # every committed row is what the final online state holds for that frame
    for c in commits[::5]:
        assert np.all(np.diff(c.tracks.frame) == 0)
    assert len(table) == sum(t.n for t in ot.solution.tracks.values())


def test_online_close_to_global() -> None:
    """On a scene without a long crossing (a crossing longer than the commit lag looks like a
    fusion online: the re-emergence comes too late), online ≈ global."""
    cfg = TrackConfig()
    sc, ot, commits = _run(2, cfg, crossing=False)
    online = TrackTable.concat([c.tracks for c in commits])
    events = [e for c in commits for e in c.events]
    truth_ev = [{"frame": f, "type": t, "track_ids": i} for f, t, i in sc.events]
    r_on = evaluate(sc.truth, online.as_columns(), truth_events=truth_ev, events=events)
    glob = track_detections(sc.dets, config=cfg)
    r_gl = evaluate(sc.truth, glob.tracks.as_columns())
    assert r_on["mota"] >= r_gl["mota"] - 1.0
    assert r_on["fusion_recall"] == 1.0 and r_on["fusion_precision"] == 1.0
    # the global re-optimisation of the history returns a new version of every track
    table, _ = ot.reoptimize()
    assert evaluate(sc.truth, table.as_columns())["mota"] == pytest.approx(r_gl["mota"])
    warm, _ = ot.reoptimize(warm_start=True)
    assert evaluate(sc.truth, warm.as_columns())["mota"] >= r_on["mota"] - 1.0


def test_window_must_exceed_lag() -> None:
    with pytest.raises(ValueError, match="window_frames"):
        OnlineTracker(pixel_size_nm=0.4, config=TrackConfig(window_frames=5, commit_lag_frames=4))


def _superposition_scene(seed: int = 0) -> tuple[dict[str, np.ndarray], Detections]:
    """A small particle (A, bottom surface) drifts under a big one (C, top surface), stays
    under it for about 20 frames (longer than the commit lag), then comes out on the other
    side; both take Brownian steps, as do five particles far away. One blob (summed area
    and mass) while A and C overlap."""
    rng = np.random.default_rng(seed)
    n = 34
    walk = np.cumsum(rng.normal(0.0, 0.4, (7, n, 2)), axis=1)
    drift = 0.5 * np.arange(n)
    paths = [np.column_stack([42.0 + drift, np.full(n, 100.0)]), np.full((n, 2), [50.0, 100.0])]
    paths += [np.full((n, 2), [30.0 + 30.0 * k, 160.0]) for k in range(5)]
    sizes = [2.6, 3.4, 3.0, 2.8, 3.2, 3.0, 2.9]
    rows = [
        (t, i, *(paths[i][t] + walk[i, t]), sizes[i], int(i == 0))
        for t in range(n)
        for i in range(7)
    ]
    a = np.array(rows)
    truth = {
        "frame": a[:, 0].astype(int), "id": a[:, 1].astype(int), "x": a[:, 2], "y": a[:, 3],
        "diameter_nm": a[:, 4], "intensity": 100.0 * a[:, 4] ** 3, "layer": a[:, 5].astype(int),
    }  # fmt: skip
    dets = detections_from_truth(truth, rng, noise_px=0.2, miss=0.0, fp_per_frame=0.0)
    return truth, dets


def test_online_keeps_a_particle_under_a_blob_past_the_commit() -> None:
    """The hidden particle is carried on the blob (shared detections) frame by frame, so its
    identity survives a superposition longer than the commit lag."""
    truth, d = _superposition_scene()
    blob = d.diameter_nm > 3.8
    assert 15 <= blob.sum() <= 25  # the scene does hold a long superposition
    cfg = TrackConfig()
    ot = OnlineTracker(pixel_size_nm=d.pixel_size_nm, frame_shape=d.frame_shape, config=cfg)
    commits = []
    for f in range(d.n_frames):
        r = d.rows(f)
        c = ot.update(d.xy[r, 0], d.xy[r, 1], diameter_nm=d.diameter_nm[r],
                      intensity=d.intensity[r], score=d.score[r])  # fmt: skip
        commits += [c] if c else []
    commits += ot.finish()
    online = TrackTable.concat([c.tracks for c in commits])
    r = evaluate(truth, online.as_columns())
    assert r["idsw"] == 0
    assert r["fn"] <= 2
    # both tracks hold the blob's detections while they overlap
    shared = online.det_id[online.det_id >= 0]
    assert np.bincount(shared).max() == 2
    assert (np.bincount(shared) == 2).sum() >= blob.sum() - 2


def test_sharing_last_finds_the_pairs_that_alone_share_their_last_detection() -> None:
    from nptrack.track.energy import Track
    from nptrack.track.window import _sharing_last

    def ending(det: list[int], end: int = 9) -> Track:
        n = len(det)
        return Track(0, end - n + 1, np.zeros((n, 2)), np.zeros(n), np.array(det))

    ends = [
        ending([1, 5]),  # 0: shares 5 with 2
        ending([2, 7]),  # 1: shares 7 with 3 and 4 (three: no pair)
        ending([3, 5]),  # 2
        ending([4, 7]),  # 3
        ending([6, 7]),  # 4
        ending([8, 9], end=8),  # 5: ends a frame early
        ending([0, 9]),  # 6: 9 is shared with 5 only in a frame it does not end in
        ending([0, -1]),  # 7: interpolated end
        ending([2, 11]),  # 8: shares 11 with 9
        ending([3, 11]),  # 9
    ]
    keep = np.ones(len(ends), bool)
    assert _sharing_last(ends, 9, keep) == [(0, 2), (8, 9)]
    keep[9] = False
    assert _sharing_last(ends, 9, keep) == [(0, 2)]
    assert _sharing_last([], 9, np.zeros(0, bool)) == []
