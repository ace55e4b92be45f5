"""`watch --mode columns`: the atomic-column model through the live pipeline (shipped model)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

tifffile = pytest.importorskip("tifffile")

from nptrack.cli import main  # noqa: E402
from nptrack.pipeline.columns import DEFAULT_COLUMN_MODEL, run_column_session  # noqa: E402
from nptrack.pipeline.session import files_source  # noqa: E402
from nptrack.pipeline.store import SessionStore  # noqa: E402
from nptrack.segment.columns_infer import ColumnLinker, match_columns, track_columns  # noqa: E402
from nptrack.simulate.columns import ColumnSimConfig, simulate_column_sequence  # noqa: E402

PIXEL_SIZE_NM = 0.03
pytestmark = pytest.mark.skipif(not DEFAULT_COLUMN_MODEL.is_file(), reason="no shipped model")


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], object]:
    """5 frames of CeO2 [110] at SNR 3 drifting ~1 px per frame, one TIFF each."""
    folder = tmp_path_factory.mktemp("colframes")
    cfg = ColumnSimConfig(shape_px=(192, 192), diameter_A=26.0, snr=3.0, rotation_deg=11)
    seq = simulate_column_sequence(
        cfg, frames=5, events_per_frame=2.0, drift_px_per_frame=1.0, rng=np.random.default_rng(3)
    )
    paths = []
    for i, fr in enumerate(seq.frames):
        path = folder / f"frame_{i:03d}.tif"
        tifffile.imwrite(path, fr.image.astype(np.float32), photometric="minisblack")
        paths.append(path)
    return paths, seq


def _run(paths: list[Path], session: Path, skip: set[str] | None = None) -> object:
    return run_column_session(
        files_source(paths, skip=skip or ()),
        session,
        pixel_size_nm=PIXEL_SIZE_NM,
        intra_op_threads=2,
    )


def _by_frame(rows: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in rows:
        out.setdefault(int(r["frame"]), []).append(r)
    return out


def test_column_ids_follow_the_true_columns(series: tuple, tmp_path: Path) -> None:
    paths, seq = series
    result = _run(paths, tmp_path / "s")
    assert result.summary.frames_stored == 5
    with SessionStore(tmp_path / "s") as store:
        rows = store.atom_columns()
    assert all(r["column_id"] is not None for r in rows)
    truth = seq.truth
    ids_of_truth: dict[int, set[int]] = {}
    found = []
    for frame, group in _by_frame(rows).items():
        t = truth["frame"] == frame
        txy = np.column_stack([truth["x"][t], truth["y"][t]])
        dxy = np.array([[r["x"], r["y"]] for r in group])
        it, idet = match_columns(txy, dxy, max_distance_px=1.5)
        found.append(len(it) / len(txy))
        for a, b in zip(truth["column_id"][t][it], idet, strict=True):
            ids_of_truth.setdefault(int(a), set()).add(int(group[b]["column_id"]))
    assert min(found) > 0.9  # the shipped model finds the columns at SNR 3
    seen = [ids for ids in ids_of_truth.values()]
    stable = np.mean([len(ids) == 1 for ids in seen])
    assert stable > 0.95, stable  # one id per true column despite the ~1 px/frame drift


def test_same_columns_as_the_columns_command(series: tuple, tmp_path: Path) -> None:
    paths, _ = series
    _run(paths, tmp_path / "s")
    res = CliRunner().invoke(
        main,
        ["columns", *map(str, paths), "--out", str(tmp_path / "c"), "--no-figures",
         "--pixel-size-A", str(10 * PIXEL_SIZE_NM), "--threads", "2"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with open(tmp_path / "c" / "columns.csv", newline="") as fh:
        offline = _by_frame(list(csv.DictReader(fh)))
    with open(tmp_path / "s" / "columns.csv", newline="") as fh:
        live = _by_frame(list(csv.DictReader(fh)))
    assert sorted(live) == sorted(offline) == list(range(5))
    for frame in live:
        keys = ("column_id", "x", "y", "occupancy", "confidence", "occupancy_net",
                "occupancy_count", "intensity")  # fmt: skip
        a = sorted(tuple(r[k] for k in keys) for r in live[frame])
        b = sorted(tuple(r[k] for k in keys) for r in offline[frame])
        assert a == b


def test_resume_continues_ids_and_stores_each_frame_once(series: tuple, tmp_path: Path) -> None:
    paths, _ = series
    _run(paths[:3], tmp_path / "r")  # the microscope has written 3 frames when it stops
    with SessionStore(tmp_path / "r") as store:
        skip = store.sources()
    again = _run(paths, tmp_path / "r", skip=skip)
    assert again.resumed_frames == 3 and again.summary.frames_stored == 2
    _run(paths, tmp_path / "once")
    with SessionStore(tmp_path / "r") as a, SessionStore(tmp_path / "once") as b:
        assert [f["source"] for f in a.frames()] == [str(p) for p in paths]
        key = [(r["frame"], r["det_id"], r["column_id"], r["occupancy"]) for r in a.atom_columns()]
        ref = [(r["frame"], r["det_id"], r["column_id"], r["occupancy"]) for r in b.atom_columns()]
    assert key == ref


def test_a_particle_session_is_refused(tmp_path: Path) -> None:
    with SessionStore(tmp_path / "p") as store:
        row = {"frame": 0, "source": "a.tif", "status": "ok", "height": 8, "width": 8}
        store.add_frame(row, {"det_id": np.array([0]), "x": np.array([1.0])})
    with pytest.raises(ValueError, match="particles session"):
        _run([], tmp_path / "p")


def test_linker_keeps_ids_through_drift_and_gaps() -> None:
    """A lattice drifting ~1 px per frame (random walk, sd 0.7 px per axis; spacing 6 px, 16 px
    in all), 5 % of columns missing in each frame: every site keeps the id it got when first
    seen."""
    rng = np.random.default_rng(0)
    lattice = np.stack(np.meshgrid(np.arange(10) * 6.0, np.arange(8) * 6.0), -1).reshape(-1, 2)
    linker = ColumnLinker()
    first_id: dict[int, int] = {}
    drift = np.zeros(2)
    agree = total = 0
    for _ in range(16):
        drift += rng.normal(0, 0.7, 2)
        sites = np.flatnonzero(rng.random(len(lattice)) > 0.05)
        xy = lattice[sites] + drift + rng.normal(0, 0.2, (len(sites), 2))
        ids = linker.assign(xy, max_distance_px=3.0)
        assert len(set(ids.tolist())) == len(ids)  # one id per column in a frame
        for site, cid in zip(sites.tolist(), ids.tolist(), strict=True):
            if site in first_id:
                total += 1
                agree += first_id[site] == cid
            else:
                first_id[site] = cid
    assert agree == total > 400
    assert track_columns([{"x": lattice[:, 0], "y": lattice[:, 1]}], max_distance_px=3.0)[
        0
    ].tolist() == list(range(len(lattice)))


def test_watch_mode_columns_command(series: tuple, tmp_path: Path) -> None:
    paths, _ = series
    folder = tmp_path / "incoming"
    folder.mkdir()
    for p in paths[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    res = CliRunner().invoke(
        main,
        ["watch", str(folder), "--session", str(tmp_path / "w"), "--mode", "columns",
         "--until-idle", "1", "--no-gui", "--pixel-size-nm", str(PIXEL_SIZE_NM),
         "--set", "watch.stable_s=0.2"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "2 frame(s)" in res.output and "columns" in res.output
    for name in ("columns.csv", "frames.csv", "occupancy_time.csv", "summary.json"):
        assert (tmp_path / "w" / name).is_file(), name
    bad = CliRunner().invoke(
        main,
        ["watch", str(folder), "--session", str(tmp_path / "w2"), "--mode", "columns",
         "--columns-model", str(tmp_path / "none.onnx"), "--no-gui", "--until-idle", "1"],
    )  # fmt: skip
    assert bad.exit_code == 1 and "no such column model" in bad.output
