"""tools/eval_sizing.py: centre matching, sizing errors and instance scores on tiny cases."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import eval_sizing


def test_match_is_one_to_one_and_within_half_the_diameter() -> None:
    truth = np.array([[10.0, 10.0], [14.0, 10.0], [50.0, 50.0]])
    diameter = np.array([10.0, 10.0, 4.0])
    # Detection 0 lies nearest truth 1 but only 1.5 px from truth 0; detection 1 can only be
    # truth 1: the assignment gives 0-0, 1-1. Detection 2 is 3 px from truth 2 (radius 2).
    found = np.array([[12.5, 10.0], [16.0, 10.0], [53.0, 50.0]])
    ti, fi = eval_sizing.match_centres(truth, diameter, found)
    assert ti.tolist() == [0, 1] and fi.tolist() == [0, 1]
    ti, fi = eval_sizing.match_centres(truth, diameter, np.zeros((0, 2)))
    assert ti.size == 0 and fi.size == 0


def test_sizing_errors_count_only_large_particles_off_the_border() -> None:
    dtype = [("x", "f8"), ("y", "f8"), ("diameter_nm", "f8"), ("border", "i8")]
    truth = np.array(
        [(10, 10, 2.0, 0), (40, 10, 4.0, 0), (70, 10, 1.0, 0), (100, 10, 3.0, 1), (10, 60, 2.5, 0)],
        dtype=dtype,
    )
    # px 0.1 nm: diameters 20, 40, 10, 30, 25 px. Found: the first three (sizes +10 %, -5 %,
    # +50 %), the border one, and one far from everything; the fifth is missed.
    found_xy = np.array([[11, 10], [40, 12], [70, 10], [100, 10], [200, 200]], float)
    found_d = np.array([2.2, 3.8, 1.5, 3.0, 2.0])
    r = eval_sizing.sizing_errors(truth, found_xy, found_d, pixel_size_nm=0.1)
    assert (r["scored"], r["matched"], r["missed"], r["extra"]) == (3, 2, 1, 1)
    assert sorted(r["errors_pct"]) == pytest.approx([-5.0, 10.0])
    s = eval_sizing._summarise([r, r])
    assert s["matched"] == 4 and s["median_abs_error_pct"] == pytest.approx(7.5)
    assert s["median_signed_error_pct"] == pytest.approx(2.5)


def test_instance_scores() -> None:
    truth = np.zeros((20, 20), int)
    truth[2:6, 2:6], truth[10:14, 10:14] = 1, 2  # 16 px each
    pred = np.zeros_like(truth)
    pred[2:6, 2:7] = 5  # IoU 16/20: a match
    pred[10:12, 10:14] = 7  # IoU 8/16 = 0.5: a match (≥)
    pred[17:19, 17:19] = 9  # nothing there
    s = eval_sizing.instance_scores(truth, pred)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 0)
    assert s["f1"] == pytest.approx(4 / 5)
    assert s["dice"] == pytest.approx(2 * 24 / (32 + 32))
