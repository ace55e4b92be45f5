"""Tracking scores: CLEAR-MOT by hand vs motmetrics, fusion P/R, CSV helpers, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nptrack.cli import main
from nptrack.evaluate.mot import (
    evaluate,
    evaluate_fusions,
    evaluate_tracks,
    parse_fusion,
    read_events_csv,
    read_table_csv,
)


def _truth() -> dict[str, np.ndarray]:
    """Two particles over 10 frames, 20 px apart."""
    f = np.repeat(np.arange(10), 2)
    ids = np.tile([1, 2], 10)
    x = np.where(ids == 1, 10.0, 30.0) + 0.1 * f
    return {"frame": f, "id": ids, "x": x, "y": np.full(f.size, 50.0)}


def _tracks(truth: dict[str, np.ndarray], ids: np.ndarray, dx: float = 0.0) -> dict:
    return {"frame": truth["frame"], "track_id": ids, "x": truth["x"] + dx, "y": truth["y"]}


def test_perfect_tracks() -> None:
    gt = _truth()
    r = evaluate_tracks(gt, _tracks(gt, gt["id"] + 100), gate_px=5.0)
    assert r["mota"] == 100.0 and r["idf1"] == 100.0 and r["motp"] == 100.0
    assert r["idsw"] == r["fp"] == r["fn"] == 0 and r["mostly_tracked"] == 2


def test_errors_counted_like_clear_mot_by_hand() -> None:
    gt = _truth()
    ids = gt["id"].copy()
    # swap identities from frame 5 on (2 switches), offset every point by 1 px (MOTP)
    late = gt["frame"] >= 5
    ids[late] = 3 - ids[late]
    hyp = _tracks(gt, ids, dx=1.0)
    keep = ~((gt["frame"] == 2) & (gt["id"] == 1))  # one miss
    hyp = {k: v[keep] for k, v in hyp.items()}
    extra = {"frame": [7], "track_id": [9], "x": [80.0], "y": [80.0]}  # one false positive
    hyp = {k: np.concatenate([v, extra[k]]) for k, v in hyp.items()}
    r = evaluate_tracks(gt, hyp, gate_px=4.0)
    n = gt["frame"].size
    fn, fp, sw = 1, 1, 2
    assert (r["fn"], r["fp"], r["idsw"]) == (fn, fp, sw)
    assert r["mota"] == pytest.approx(100.0 * (1 - (fn + fp + sw) / n))
    assert r["motp"] == pytest.approx(100.0 * (1 - 1.0 / 4.0))
    # a point beyond the gate is a miss and a false positive
    far = evaluate_tracks(gt, _tracks(gt, gt["id"], dx=6.0), gate_px=5.0)
    assert far["fn"] == n and far["fp"] == n


def test_fusion_precision_recall_with_tolerances() -> None:
    truth_ev = [
        {"frame": 10, "type": "fusion", "track_ids": "1+2>5", "detail": {"x": 10, "y": 10}},
        {"frame": 20, "type": "fusion", "track_ids": "3+4>6", "detail": {"x": 50, "y": 50}},
        {"frame": 20, "type": "birth", "track_ids": "7", "detail": {}},
    ]
    found = [
        {"frame": 11, "type": "fusion", "track_ids": "8+9>10", "detail": {"x": 12, "y": 10}},
        {"frame": 20, "type": "fusion", "track_ids": "11+12>13", "detail": {"x": 90, "y": 90}},
    ]
    r = evaluate_fusions(truth_ev, found, frame_tolerance=2, distance_px=5.0)
    assert (r["fusion_tp"], r["fusion_fp"], r["fusion_fn"]) == (1, 1, 1)
    assert r["fusion_precision"] == 0.5 and r["fusion_recall"] == 0.5
    late = [{**found[0], "frame": 14}]
    assert evaluate_fusions(truth_ev, late, frame_tolerance=2)["fusion_tp"] == 0
    assert parse_fusion("1+2+3>4") == ((1, 2, 3), 4)
    with pytest.raises(ValueError, match="a\\+b>c"):
        parse_fusion("1,2")


def test_fusion_location_from_tracks_and_id_consistency() -> None:
    gt = {"frame": [4, 4, 5], "id": [1, 2, 3], "x": [9.0, 11.0, 10.0], "y": [5.0, 5.0, 5.0]}
    hyp = {"frame": [4, 4, 5], "track_id": [7, 8, 9], "x": [9.1, 11.0, 10.2], "y": [5.0] * 3}
    r = evaluate(
        gt, hyp,
        truth_events=[{"frame": 5, "type": "fusion", "track_ids": "1+2>3"}],
        events=[{"frame": 5, "type": "fusion", "track_ids": "7+8>9"}],
    )  # fmt: skip
    assert r["fusion_recall"] == 1.0 and r["fusion_id_consistent"] == 1.0


def _write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_csv_helpers_and_cli(tmp_path: Path) -> None:
    gt = _write(tmp_path / "ground_truth.csv", "frame,id,x,y,diameter_nm,intensity,layer",
                ["0,1,10,10,3,100,0", "1,1,10.5,10,3,100,0", "1,2,40,40,3,100,1"])  # fmt: skip
    tr = _write(tmp_path / "tracks.csv", "frame,track_id,x,y,diameter_nm,intensity,det_id,state",
                ["0,0,10,10,3,100,4,observed", "1,0,10.4,10,3,100,,interpolated"])  # fmt: skip
    ev = _write(tmp_path / "events.csv", "frame,type,track_ids,detail",
                ['1,fusion,1+3>2,"{""x"": 40, ""y"": 40}"'])  # fmt: skip
    table = read_table_csv(tr)
    assert np.isnan(table["det_id"][1]) and table["state"][1] == "interpolated"
    assert read_events_csv(ev)["detail"][0].startswith("{")
    res = CliRunner().invoke(
        main, ["evaluate", "--truth", str(gt), "--tracks", str(tr),
               "--events-truth", str(ev), "--events", str(ev)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["fn"] == 1 and out["fp"] == 0 and out["fusion_recall"] == 1.0
    bad = CliRunner().invoke(main, ["evaluate", "--truth", str(tr), "--tracks", str(tr)])
    assert bad.exit_code == 1 and "missing column" in bad.output
    usage = CliRunner().invoke(
        main, ["evaluate", "--truth", str(gt), "--tracks", str(tr), "--events", str(ev)]
    )
    assert usage.exit_code == 2
