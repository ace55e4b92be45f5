"""Session store: atomic frames, resume, versions, exports; survives kill -9."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nptrack.pipeline.store import DETECTION_COLUMNS, SessionStore


def _frame(k: int) -> dict:
    return {
        "frame": k,
        "time_s": 10.0 * k,
        "source": f"f{k}.tif",
        "pixel_size_nm": 0.5,
        "a11": 1.0,
        "a12": 0.0,
        "tx": 0.5 * k,
        "a21": 0.0,
        "a22": 1.0,
        "ty": -k,
        "reg_cc": 0.97,
        "status": "ok",
    }


def _dets(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {c: rng.random(n) for c in DETECTION_COLUMNS if c != "frame"}
    cols["det_id"] = np.arange(n)
    cols["separated"] = np.zeros(n, int)
    cols["border"] = np.zeros(n, int)
    return cols


def test_round_trip_and_exports(tmp_path: Path) -> None:
    with SessionStore(tmp_path) as store:
        store.add_frame(_frame(0), _dets(3, 0))
        store.add_frame(_frame(1), _dets(2, 1))
        v1 = store.add_tracks(
            [
                {
                    "frame": 0,
                    "track_id": 1,
                    "x": 1.0,
                    "y": 2.0,
                    "diameter_nm": 2.0,
                    "intensity": 5.0,
                    "det_id": 0,
                    "state": "observed",
                }
            ],
            kind="window",
            last_frame=0,
        )
        v2 = store.add_tracks(
            [
                {
                    "frame": f,
                    "track_id": 4,
                    "x": 1.0,
                    "y": 2.0,
                    "diameter_nm": 2.0,
                    "intensity": 5.0,
                    "det_id": None,
                    "state": "interpolated",
                }
                for f in (0, 1)
            ],
            [{"frame": 1, "type": "fusion", "track_ids": "1+2>4", "detail": {"mass_ratio": 1.01}}],
            kind="global",
            last_frame=1,
        )
        assert v2 == v1 + 1 and store.latest_version() == v2
        assert store.n_frames() == 2 and store.sources() == {"f0.tif", "f1.tif"}
        paths = store.export_csv()
    rows = {p.name: list(csv.DictReader(p.open())) for p in paths}
    assert len(rows["detections.csv"]) == 5
    assert [r["tx"] for r in rows["frames.csv"]] == ["0.0", "0.5"]
    assert len(rows["tracks.csv"]) == 2 and rows["tracks.csv"][0]["det_id"] == ""
    assert rows["events.csv"][0]["track_ids"] == "1+2>4"
    assert list(rows["detections.csv"][0]) == list(DETECTION_COLUMNS)


def test_duplicate_frame_is_rejected_whole(tmp_path: Path) -> None:
    import sqlite3

    with SessionStore(tmp_path) as store:
        store.add_frame(_frame(0), _dets(3, 0))
        with pytest.raises(sqlite3.IntegrityError):
            store.add_frame({**_frame(0), "frame": 1}, _dets(4, 1))  # same source
        assert store.n_frames() == 1 and len(store.detections()) == 3


def test_kill_9_mid_writing_leaves_whole_frames(tmp_path: Path) -> None:
    """A writer killed with SIGKILL leaves only complete frames (all detections or none)."""
    script = textwrap.dedent(f"""
        import numpy as np, os, signal
        from nptrack.pipeline.store import SessionStore, DETECTION_COLUMNS
        store = SessionStore({str(tmp_path)!r})
        for k in range(100000):
            n = 50
            cols = {{c: np.full(n, float(k)) for c in DETECTION_COLUMNS if c != "frame"}}
            cols["det_id"] = np.arange(n)
            store.add_frame({{"frame": k, "source": f"f{{k}}", "status": "ok"}}, cols)
            if k == 40:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait()
    with SessionStore(tmp_path) as store:
        n = store.n_frames()
        dets = store.detections()
    assert n >= 41
    counts = np.bincount([d["frame"] for d in dets], minlength=n)
    assert (counts == 50).all() and len(counts) == n
