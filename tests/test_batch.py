"""`nptrack batch` on a 2-worker LocalCluster: same tracks as `nptrack track`, failures alone,
resume.

Three small simulated series (table1 preset, 256² px, 5 frames) as a folder of frames, a
second folder and a multi-frame TIFF stack (its frames fan out over both workers), plus a
session folder (the serial run of the first series: re-processed from its frames' files), a
folder holding a corrupt file and an uncalibrated image. Each good series is compared with a
serial `nptrack track` on the same input.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nptrack.batch import SUMMARY_COLUMNS, _names, run_batch
from nptrack.cli import main
from nptrack.simulate.write import write_sequence

N_FRAMES = 5
PX_NM = 0.390625  # table1


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _track(inputs: list[Path], out: Path) -> Path:
    result = CliRunner().invoke(main, ["track", *map(str, inputs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import tifffile

    from nptrack.io.read import read_frames

    root = tmp_path_factory.mktemp("batch")
    for i in range(3):
        write_sequence(root / f"s{i}", config="table1", frames=N_FRAMES, seed=i, progress=False)
    stack = np.stack([read_frames(p)[0].data for p in sorted((root / "s2/frames").iterdir())])
    tifffile.imwrite(root / "stack.tif", stack, imagej=True, resolution=(1 / PX_NM, 1 / PX_NM),
                     metadata={"unit": "nm"})  # fmt: skip
    (root / "bad").mkdir()
    (root / "bad" / "frame_0000.tif").write_bytes(b"II*\x00" + b"\x07" * 5000)  # corrupt
    tifffile.imwrite(root / "nocal.tif", stack[0])  # no calibration
    return {
        "a": root / "s0" / "frames",
        "b": root / "s1" / "frames",
        "stack": root / "stack.tif",
        "bad": root / "bad",
        "nocal": root / "nocal.tif",
        "root": root,
    }


@pytest.fixture(scope="module")
def serial(data: dict[str, Path]) -> dict[str, Path]:
    """`nptrack track` on each good series: the references."""
    ref = data["root"] / "serial"
    return {k: _track([data[k]], ref / k) for k in ("a", "b", "stack")}


@pytest.fixture(scope="module")
def client():  # type: ignore[no-untyped-def]
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    with Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def batch(data: dict[str, Path], serial: dict[str, Path], client) -> dict:  # type: ignore[no-untyped-def]
    inputs = [data["a"], data["b"], data["stack"], serial["a"], data["bad"], data["nocal"]]
    said: list[str] = []
    result = run_batch(inputs, data["root"] / "out", client=client, progress=False,
                       on_status=said.append)  # fmt: skip
    return {"result": result, "said": said, "inputs": inputs}


NAMES = {"a": "s0_frames", "b": "s1_frames", "stack": "stack", "session": "a"}


def test_series_are_named_after_their_inputs_uniquely(tmp_path: Path) -> None:
    paths = [tmp_path / "x" / "frames", tmp_path / "y" / "frames", tmp_path / "p" / "z.tif",
             tmp_path / "q" / "z.tif", tmp_path / "w.ser"]  # fmt: skip
    assert _names(paths) == ["x_frames", "y_frames", "p_z", "q_z", "w"]
    assert _names([tmp_path / "k" / "a b", tmp_path / "k" / "a b"]) == ["k_a_b-1", "k_a_b-2"]


def test_dashboard_is_announced_and_summary_pools_the_series(batch: dict) -> None:
    result = batch["result"]
    assert any(s.startswith("Dask dashboard: http") for s in batch["said"])
    rows = _rows(result.out_dir / "summary.csv")
    assert list(rows[0])[: len(SUMMARY_COLUMNS)] == list(SUMMARY_COLUMNS)
    status = {r["series"]: r["status"] for r in rows}
    assert status == {"s0_frames": "complete", "s1_frames": "complete", "stack": "complete",
                      "a": "complete", "bad": "failed", "nocal": "failed"}  # fmt: skip
    for r in rows[:4]:
        assert int(r["frames"]) == N_FRAMES and int(r["tracks"]) > 20
        assert float(r["diameter_mean_first_nm"]) > 1.0
        assert r["ripening_k_nm3_per_unit"] != "" and r["time_unit"] == "frame"
    index = (result.out_dir / "index.html").read_text()
    for name in ("s0_frames", "s1_frames", "stack", "a"):
        report = result.out_dir / name / "report" / "index.html"
        assert f'href="{name}/{"report/index.html" if report.is_file() else ""}"' in index


@pytest.mark.parametrize("key", ["a", "b", "stack", "session"])
def test_tracks_are_those_of_a_serial_track(batch: dict, serial: dict[str, Path], key: str) -> None:
    out = batch["result"].out_dir / NAMES[key]
    ref = serial["a" if key == "session" else key]
    for table in ("tracks.csv", "detections.csv", "events.csv", "frames.csv"):
        assert _rows(out / table) == _rows(ref / table), table
    assert json.loads((out / "batch.json").read_text())["status"] == "complete"
    assert (out / "session.sqlite").is_file() and (out / "anchor.npy").is_file()
    assert (out / "summary.json").is_file()


def test_report_is_that_of_nptrack_report(batch: dict, serial: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["report", str(serial["b"])])
    assert result.exit_code == 0, result.output
    ours = batch["result"].out_dir / NAMES["b"] / "report"
    assert (ours / "index.html").is_file()
    numbers = json.loads((ours / "key_numbers.json").read_text())
    assert numbers == json.loads((serial["b"] / "report" / "key_numbers.json").read_text())
    row = {r["series"]: r for r in _rows(batch["result"].out_dir / "summary.csv")}[NAMES["b"]]
    k = float(row["ripening_k_nm3_per_unit"])
    assert numbers["ripening rate K (n = 3)"]["value"].startswith(f"{k:.2g}"[:4])


def test_a_failing_series_fails_alone_with_its_error(batch: dict, data: dict[str, Path]) -> None:
    rows = {r["series"]: r for r in _rows(batch["result"].out_dir / "summary.csv")}
    assert rows["bad"]["error"].startswith(str(data["bad"] / "frame_0000.tif") + ": ")
    assert "no pixel size" in rows["nocal"]["error"]
    assert {r["series"] for r in batch["result"].failed} == {"bad", "nocal"}
    assert not (batch["result"].out_dir / "bad" / "batch.json").exists()


def test_second_run_skips_complete_series(batch: dict) -> None:
    out = batch["result"].out_dir
    stamp = {n: (out / n / "tracks.csv").stat().st_mtime_ns for n in NAMES.values()}
    args = ["batch", *map(str, batch["inputs"]), "--out", str(out), "--workers", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1  # the two bad series are tried again and fail again
    for name in NAMES.values():
        assert f"{name}: complete, skipped" in result.output
        assert (out / name / "tracks.csv").stat().st_mtime_ns == stamp[name]
    assert "2 series failed (bad, nocal)" in result.output
    assert [r["status"] for r in _rows(out / "summary.csv")].count("complete") == 4
