"""The field of view per frame: out-of-view points, border distances, gaps at the edge."""

from __future__ import annotations

import numpy as np

from nptrack.config import TrackConfig
from nptrack.track import OnlineTracker, TrackTable, track_detections
from nptrack.track.energy import Detections, EnergyParams, Solution, Track, pack
from nptrack.track.events import out_of_view, solution_to_table

SHAPE = (100, 100)


def _shifted(n: int, dy: float) -> np.ndarray:
    """Fields drifting by dy px per frame along y (frame t sees y0 ∈ [t·dy, t·dy + 99])."""
    f = np.zeros((n, 2, 3))
    f[:, 0, 0] = f[:, 1, 1] = 1.0
    f[:, 1, 2] = dy * np.arange(n)
    return f


def _dets(frames, xs, ys, fields=None) -> Detections:
    n = len(frames)
    return Detections.from_arrays(
        frames, xs, ys, diameter_nm=np.full(n, 3.0), intensity=np.full(n, 2700.0),
        pixel_size_nm=0.4, frame_shape=SHAPE, fields=fields, n_frames=max(frames) + 1,
    )  # fmt: skip


def test_field_border_follows_the_drifting_field() -> None:
    d = _dets([0, 1], [50, 50], [50, 50], fields=_shifted(10, 2.0))
    b, g = d.field_border([[50.0, 5.0], [50.0, 5.0], [50.0, 50.0]], [0, 2, 9])
    np.testing.assert_allclose(b, [5.0, 1.0, 32.0])  # frame 9 sees y ∈ [18, 117]: x edge 49
    np.testing.assert_allclose(g[:2], [[0.0, 1.0], [0.0, 1.0]])
    assert d.in_view([[50.0, 3.0]], [2]).tolist() == [False]
    assert _dets([0], [50], [50]).in_view([[50.0, 3.0]], [2]).tolist() == [True]


def test_gap_points_near_the_edge_are_out_of_view_not_missed() -> None:
    p = EnergyParams(pixel_size_nm=0.4, frame_shape=SHAPE, step_sigma_px=1.0, localisation_px=0.2)
    d = _dets([0], [50], [50])
    # a track along the top edge (y = 1) and one in the middle, both missed in frames 2-4
    det = np.array([0, 0, -1, -1, -1, 0, 0])
    edge = Track(0, 0, np.column_stack([np.full(7, 30.0), np.full(7, 1.0)]), np.zeros(7), det)
    mid = Track(1, 0, np.column_stack([np.full(7, 50.0), np.full(7, 50.0)]), np.zeros(7), det)
    assert out_of_view(edge, d, p, 3.0).tolist() == [False, False, True, True, True, False, False]
    assert not out_of_view(mid, d, p, 3.0).any()
    # without params only points outside the field go
    assert not out_of_view(edge, d, None, 3.0).any()
    tab = solution_to_table(Solution(tracks={0: edge, 1: mid}, last_frame=6), d, params=p)
    assert np.bincount(tab.track_id).tolist() == [4, 7]


def _edge_scene(hide: tuple[int, int]) -> tuple[dict[str, np.ndarray], Detections, np.ndarray]:
    """A particle walks near the top edge (y ≈ 4); in frames hide[0]..hide[1] the field is
    shifted down by 9 px (the stage moved) and the particle is out of view; three particles
    in the middle."""
    rng = np.random.default_rng(3)
    n = 30
    fields = np.zeros((n, 2, 3))
    fields[:, 0, 0] = fields[:, 1, 1] = 1.0
    fields[hide[0] : hide[1] + 1, 1, 2] = 9.0
    rows = []
    walk = np.cumsum(rng.normal(0, 0.5, (4, n, 2)), axis=1)
    start = np.array([[50.0, 4.0], [30.0, 50.0], [50.0, 60.0], [70.0, 40.0]])
    for t in range(n):
        for i in range(4):
            x, y = start[i] + walk[i, t]
            if y - fields[t, 1, 2] >= -0.5:  # in view (the simulator's rule)
                rows.append((t, i, x, y))
    a = np.array(rows)
    truth = {"frame": a[:, 0].astype(int), "id": a[:, 1].astype(int), "x": a[:, 2],
             "y": a[:, 3]}  # fmt: skip
    xy = truth["x"] + rng.normal(0, 0.2, len(a)), truth["y"] + rng.normal(0, 0.2, len(a))
    n_det = len(a)
    dets = Detections.from_arrays(
        truth["frame"], *xy, diameter_nm=np.full(n_det, 3.0),
        intensity=2700.0 * np.exp(rng.normal(0, 0.03, n_det)), pixel_size_nm=0.4,
        frame_shape=SHAPE, fields=fields, n_frames=n,
    )  # fmt: skip
    return truth, dets, fields


def test_a_particle_that_steps_out_of_view_keeps_its_track() -> None:
    truth, dets, _ = _edge_scene((8, 15))
    hidden = np.setdiff1d(np.arange(30), truth["frame"][truth["id"] == 0])
    assert hidden.size > TrackConfig().max_gap_frames + 1
    res = track_detections(dets)
    tab = res.tracks
    edge_ids = {int(i) for i in tab.track_id[tab.y < 12]}
    assert len(edge_ids) == 1  # one track across the out-of-view frames
    (tid,) = edge_ids
    # ... which writes no point while the particle is out of view
    assert not np.isin(tab.frame[tab.track_id == tid], hidden).any()
    # without the fields the same detections give two tracks (the gap is too long)
    blind = Detections.from_arrays(
        dets.frame, dets.xy[:, 0], dets.xy[:, 1], diameter_nm=dets.diameter_nm,
        intensity=dets.intensity, pixel_size_nm=0.4, frame_shape=SHAPE, n_frames=30,
    )  # fmt: skip
    t2 = track_detections(blind).tracks
    assert len({int(i) for i in t2.track_id[t2.y < 12]}) == 2


def test_online_writes_no_point_out_of_view() -> None:
    """A gap of three frames is bridged online (one track), but not written out of view."""
    _, dets, fields = _edge_scene((10, 12))
    ot = OnlineTracker(pixel_size_nm=0.4, frame_shape=SHAPE)
    commits = []
    for f in range(dets.n_frames):
        r = dets.rows(f)
        c = ot.update(dets.xy[r, 0], dets.xy[r, 1], diameter_nm=dets.diameter_nm[r],
                      intensity=dets.intensity[r], field=fields[f])  # fmt: skip
        commits += [c] if c else []
    commits += ot.finish()
    tab = TrackTable.concat([c.tracks for c in commits])
    # every written edge point is in view: its frame holds a detection of the edge particle
    frames_with_edge = set(dets.frame[dets.xy[:, 1] < 12].tolist())
    written = set(tab.frame[tab.y < 12].tolist())
    assert written and written <= frames_with_edge
    assert len(set(tab.track_id[tab.y < 12].tolist())) == 1


def test_lambda_is_not_charged_out_of_view() -> None:
    p = EnergyParams(pixel_size_nm=0.4, frame_shape=SHAPE, step_sigma_px=1.0, localisation_px=0.2)
    d = _dets([0, 1, 5, 6], [30, 30, 30, 30], [1, 1, 1, 1])
    det = np.array([0, 1, -1, -1, -1, 2, 3])
    xy = np.column_stack([np.full(7, 30.0), np.full(7, 1.0)])
    edge = Track(0, 0, xy, np.full(7, np.log(2700.0)), det)
    mid = Track(0, 0, xy + np.array([0.0, 49.0]), np.full(7, np.log(2700.0)), det)
    assert pack([edge], d, p).n_lambda == 4  # the three gap points were out of view
    assert pack([mid], d, p).n_lambda == 7
    # a track without any detection (a window's cut) is uncertain from its first point
    blind = Track(1, 0, xy[:3], np.zeros(3), np.full(3, -1))
    assert out_of_view(blind, d, p, 3.0).all()
