"""Column finding, matching and tracking on hand-made predictions (pure numpy, no model)."""

from __future__ import annotations

import numpy as np

from nptrack.segment.columns_infer import (
    ColumnPrediction,
    decide_classes,
    find_columns,
    match_columns,
    track_columns,
)


def _prediction(
    centres: list[tuple[float, float, int]], shape: tuple[int, int]
) -> ColumnPrediction:
    k1 = 6
    prob = np.zeros((k1, *shape), np.float32)
    prob[0] = 1.0
    yy, xx = np.indices(shape)
    for x, y, occ in centres:
        g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0**2)).astype(np.float32)
        share = np.minimum(g, prob[0])
        prob[0] -= share
        prob[occ] += 0.7 * share  # the column's class, with a spread to its neighbours
        prob[max(occ - 1, 1)] += 0.3 * share
    return ColumnPrediction(decide_classes(prob), prob.max(0), prob)


def test_find_columns_gives_centres_occupancy_and_confidence() -> None:
    truth = [(10.3, 12.0, 3), (30.0, 12.6, 5), (20.0, 30.2, 1)]
    found = find_columns(_prediction(truth, (48, 48)), min_area_px=3)
    order = np.argsort(found["x"])
    ref = sorted(truth)
    np.testing.assert_allclose(found["x"][order], [t[0] for t in ref], atol=0.1)
    np.testing.assert_allclose(found["y"][order], [t[1] for t in ref], atol=0.1)
    assert list(found["occupancy"][order]) == [t[2] for t in ref]
    assert np.all((found["confidence"] > 1 / 6) & (found["confidence"] <= 1))


def test_decide_classes_calls_spread_columns_columns() -> None:
    p = np.array([0.3, 0.2, 0.25, 0.25])[:, None]  # argmax would say background
    assert decide_classes(p)[0] == 2  # first of the tied occupancies
    assert decide_classes(np.array([0.5, 0.5, 0.0, 0.0])[:, None])[0] == 0


def test_match_and_track_follow_a_drifting_lattice() -> None:
    rng = np.random.default_rng(0)
    lattice = np.stack(np.meshgrid(np.arange(5) * 11.0, np.arange(4) * 11.0), -1).reshape(-1, 2)
    frames, perms = [], []
    for t in range(5):
        xy = lattice + np.array([4.0 * t, -3.0 * t]) + 0.3 * rng.standard_normal(lattice.shape)
        perm = rng.permutation(len(xy))[: len(xy) - (t == 2)]  # one column missed in frame 2
        frames.append({"x": xy[perm, 0], "y": xy[perm, 1]})
        perms.append(perm)
    ids = track_columns(frames, max_distance_px=5.5)  # drift 5 px/frame: needs the drift step
    first = dict(zip(perms[0], ids[0], strict=True))
    for perm, cid in zip(perms, ids, strict=True):
        assert all(first[p] == c for p, c in zip(perm, cid, strict=True))
    ia, ib = match_columns(lattice, lattice[::-1] + 0.5, max_distance_px=1.0)
    assert sorted(zip(ia, ib, strict=True)) == [(i, len(lattice) - 1 - i) for i in range(20)]
