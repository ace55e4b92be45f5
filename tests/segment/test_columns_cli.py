"""`nptrack columns` on a small simulated series, with a tiny model overfitted on frame 0."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
tifffile = pytest.importorskip("tifffile")

from nptrack.cli import main  # noqa: E402
from nptrack.segment.data import COLUMN_NORMALISATION  # noqa: E402
from nptrack.segment.export import export_onnx  # noqa: E402
from nptrack.segment.infer import normalise  # noqa: E402
from nptrack.segment.model import UNet, UNetSpec  # noqa: E402
from nptrack.segment.train import (  # noqa: E402
    _column_target,
    _metadata,
    column_loss,
    load_train_config,
)
from nptrack.simulate.columns import ColumnSimConfig, simulate_column_sequence  # noqa: E402


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    tmp = tmp_path_factory.mktemp("columns")
    cfg = ColumnSimConfig(shape_px=(96, 96), diameter_A=18.0, snr=None, n_classes=8)
    seq = simulate_column_sequence(
        cfg, frames=3, events_per_frame=2.0, drift_px_per_frame=0.0, rng=np.random.default_rng(7)
    )
    im = seq.frames[0]
    x = torch.from_numpy(normalise(im.image, COLUMN_NORMALISATION)[None, None])
    y = np.stack([im.owner_class.astype(np.float32), im.membership])[None]
    target = torch.from_numpy(_column_target(y, 5.0))
    torch.manual_seed(0)
    spec = UNetSpec(depth=3, base_width=8, max_width=32, first_level_convs=1, out_channels=9)
    model = UNet(spec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = column_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model_path = tmp / "tiny-columns.onnx"
    meta = _metadata(load_train_config(None, ['task="columns"', "columns.n_classes=8"]), 0)
    export_onnx(model.eval(), model_path, metadata=meta)
    stack = tmp / "series.tif"
    frames = np.stack([f.image for f in seq.frames]).astype(np.float32)
    tifffile.imwrite(stack, frames, photometric="minisblack")
    return model_path, stack, seq


def test_columns_on_a_series(series: tuple, tmp_path: Path) -> None:
    model_path, stack, seq = series
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main,
        ["columns", str(stack), "--out", str(out), "--model", str(model_path),
         "--pixel-size-A", "0.3"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with open(out / "columns.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "image", "frame", "column_id", "x", "y", "occupancy", "confidence",
        "occupancy_net", "occupancy_count", "intensity",
    ]  # fmt: skip
    truth0 = seq.truth["frame"] == 0
    found0 = [r for r in rows if r["frame"] == "0"]
    assert abs(len(found0) - truth0.sum()) <= 0.1 * truth0.sum()
    assert all(1 / 9 <= float(r["confidence"]) <= 1 for r in rows)
    # the same column keeps its id over the frames (no drift here)
    by_id: dict[str, set[str]] = {}
    for r in rows:
        by_id.setdefault(r["column_id"], set()).add(r["frame"])
    assert sum(len(f) == 3 for f in by_id.values()) >= 0.8 * len(found0)
    with open(out / "occupancy_time.csv") as fh:
        header = next(csv.reader(fh))
    assert header == ["column_id", "x", "y", "frame_0", "frame_1", "frame_2"]
    for sub in ("depth", "overlay"):
        pngs = sorted((out / sub).glob("*.png"))
        assert len(pngs) == 3 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert (out / "occupancy_time.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 3 and summary["columns"] == len(rows)
    assert summary["occupancy_method"] == "combined" and len(summary["unit_per_frame"]) == 3
    # Counting on these noise-free frames: the default occupancy is mostly exact, better
    # than the tiny network's alone.
    exact = {}
    for key in ("occupancy", "occupancy_net", "occupancy_count"):
        exact[key] = _exact_share(found0, seq, key)
    assert exact["occupancy"] >= 0.8 and exact["occupancy"] >= exact["occupancy_net"]


def _exact_share(rows: list[dict], seq, key: str) -> float:
    from nptrack.segment.columns_infer import match_columns

    t = seq.truth["frame"] == 0
    txy = np.stack([seq.truth["x"][t], seq.truth["y"][t]], 1)
    pxy = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    ip, it = match_columns(pxy, txy, max_distance_px=3.0)
    occ = np.array([int(r[key]) for r in rows])[ip]
    return float(np.mean(occ == np.minimum(seq.truth["occupancy"][t][it], 8)))


def test_columns_occupancy_net_option(series: tuple, tmp_path: Path) -> None:
    model_path, stack, _ = series
    out = tmp_path / "net"
    res = CliRunner().invoke(
        main,
        ["columns", str(stack), "--out", str(out), "--model", str(model_path),
         "--pixel-size-A", "0.3", "--occupancy", "net", "--no-figures"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with open(out / "columns.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["occupancy"] == r["occupancy_net"] for r in rows)
    assert json.loads((out / "summary.json").read_text())["unit_pooled"] is None


def test_columns_errors_are_one_line(series: tuple, tmp_path: Path) -> None:
    model_path, stack, _ = series
    runner = CliRunner()
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    for args in (
        [str(tmp_path / "missing.tif"), "--model", str(model_path)],
        [str(bad), "--model", str(model_path)],
        [str(stack), "--model", str(tmp_path / "none.onnx")],
        [str(stack), "--model", str(model_path), "--pixel-size-A", "-1"],
        [str(stack), "--model", str(model_path), "--column-spacing-A", "0"],
    ):
        res = runner.invoke(main, ["columns", *args, "--out", str(tmp_path / "o")])
        assert res.exit_code == 1, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert lines[-1].startswith("nptrack columns: error:") and "Traceback" not in res.output
