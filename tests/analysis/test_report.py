"""`nptrack report`: figures, tables and page from a session, CSV exports or an analyze folder.

The session is built cheaply from the simulator's ground truth (20 frames of the table1
preset, rendered to TIFF files so the trajectory figure has real images): frames with the
true affine maps and times, detections and tracks from the true particles, the true events.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from nptrack.analysis import stats
from nptrack.analysis.figures import FIGURE_FILES
from nptrack.analysis.report import load_tables, write_report
from nptrack.cli import main
from nptrack.io.errors import ReadError
from nptrack.measure.analyze import NM_COLUMNS
from nptrack.pipeline.store import SessionStore
from nptrack.simulate.write import write_sequence

N_FRAMES = 20
FRAME_INTERVAL_S = 2.0
BORDER_PX = 4.0  # truth particles this close to the field edge are flagged border = 1


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _column(rows: list[dict[str, str]], name: str) -> np.ndarray:
    return np.array([float(r[name]) if r[name] != "" else np.nan for r in rows])


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seq")
    write_sequence(out, config="table1", frames=N_FRAMES, seed=1, progress=False)
    return out


@pytest.fixture(scope="module")
def session(truth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    gt = _rows(truth / "ground_truth.csv")
    transforms = {int(r["frame"]): r for r in _rows(truth / "transforms_truth.csv")}
    meta = json.loads((truth / "sequence.json").read_text())
    h, w = meta["shape"]
    out = tmp_path_factory.mktemp("session")
    with SessionStore(out) as store:
        for k in range(N_FRAMES):
            rows = [r for r in gt if int(r["frame"]) == k]
            x, y = (np.array([float(r[c]) for r in rows]) for c in ("x", "y"))
            near = (np.minimum(x, y) < BORDER_PX) | (x > w - BORDER_PX) | (y > h - BORDER_PX)
            frame = {
                "frame": k,
                "time_s": 1.7e9 + FRAME_INTERVAL_S * k,  # POSIX seconds, as readers give
                "source": str(truth / "frames" / f"frame_{k:04d}.tif"),
                "pixel_size_nm": meta["pixel_size_nm"],
                **{c: float(transforms[k][c]) for c in ("a11", "a12", "tx", "a21", "a22", "ty")},
                "reg_cc": 0.99,
                "status": "ok",
                "height": h,
                "width": w,
            }
            dets = {
                "det_id": np.arange(len(rows)),
                "x": x,
                "y": y,
                "diameter_nm": np.array([float(r["diameter_nm"]) for r in rows]),
                "intensity": np.array([float(r["intensity"]) for r in rows]),
                "border": near.astype(int),
                "separated": np.zeros(len(rows), int),
            }
            store.add_frame(frame, dets)
        tracks = [
            {
                "frame": int(r["frame"]),
                "track_id": int(r["id"]),
                "x": float(r["x"]),
                "y": float(r["y"]),
                "diameter_nm": float(r["diameter_nm"]),
                "intensity": float(r["intensity"]),
                "det_id": None,
                "state": "observed",
            }
            for r in gt
        ]
        events = [{**e, "frame": int(e["frame"]), "detail": json.loads(e["detail"])}
                  for e in _rows(truth / "events.csv")]  # fmt: skip
        store.add_tracks(tracks, events, kind="global", last_frame=N_FRAMES - 1)
    return out


@pytest.fixture(scope="module")
def report(session: Path) -> Path:
    return write_report(session)


def _check_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    assert img.shape[0] >= 300 and img.shape[1] >= 500, (path.name, img.shape)
    rgb = img[..., :3].reshape(-1, 3)
    assert len(np.unique(rgb, axis=0)) > 20, f"{path.name} is (almost) one colour"
    assert (rgb.mean(axis=1) < 0.5).mean() > 0.005, f"{path.name} has nothing dark drawn"


def test_page_links_every_figure_and_table(report: Path) -> None:
    assert report == report.parent / "index.html" and report.parent.name == "report"
    page = report.read_text(encoding="utf-8")
    images = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(images) == sorted(FIGURE_FILES)  # every figure: this session has it all
    for name in images:
        _check_png(report.parent / name)
    links = set(re.findall(r'href="([^"]+\.csv)"', page))
    assert links == {"size_stats.csv", "treacy_rice.csv", "mean_radius.csv", "kinetics.csv",
                     "diffusion.csv", "track_lengths.csv", "fusions.csv"}  # fmt: skip
    assert all((report.parent / n).is_file() for n in links)
    assert "0.3906 nm" in page and f"{N_FRAMES} (0 to {N_FRAMES - 1})" in page
    assert f"{(N_FRAMES - 1) * FRAME_INTERVAL_S:.4g} s" in page  # time span from the times
    assert "not readable" not in page  # the TIFF sources were read back


def test_tables_match_the_stats(session: Path, report: Path) -> None:
    with SessionStore(session) as store:
        dets, tracks, events = store.detections(), store.tracks(), store.events()
    inside = [d for d in dets if not d["border"]]
    assert 0 < len(inside) < len(dets)  # some border particles to leave out
    f = np.array([d["frame"] for d in inside])
    d = np.array([d["diameter_nm"] for d in inside])
    i = np.array([d["intensity"] for d in inside])
    out = report.parent

    rows = _rows(out / "size_stats.csv")
    assert list(rows[0]) == ["frame", "time_s", "n", "mean_diameter_nm", "median_diameter_nm",
                             "sd_diameter_nm", "mean_volume_nm3", "total_volume_nm3"]  # fmt: skip
    want = stats.frame_size_stats(f, d, frames=np.arange(N_FRAMES))
    np.testing.assert_array_equal(_column(rows, "n"), want["n"])
    np.testing.assert_allclose(_column(rows, "mean_diameter_nm"), want["mean_diameter_nm"])
    np.testing.assert_allclose(_column(rows, "time_s"), FRAME_INTERVAL_S * np.arange(N_FRAMES))

    tr = _rows(out / "treacy_rice.csv")
    np.testing.assert_allclose(_column(tr, "slope"), stats.treacy_rice_per_frame(f, d, i)["slope"])

    kin = {r["model"]: r for r in _rows(out / "kinetics.csv")}
    fit3 = stats.ripening_fit(
        FRAME_INTERVAL_S * np.unique(f), stats.mean_radius_series(f, d)["mean_radius_nm"]
    )
    assert float(kin["R^3"]["rate"]) == pytest.approx(fit3.rate)
    assert kin["R^3"]["rate_unit"] == "nm^3/s"

    tf = np.array([t["frame"] for t in tracks])
    tid = np.array([t["track_id"] for t in tracks])
    x, y = np.array([t["x"] for t in tracks]), np.array([t["y"] for t in tracks])
    td = np.array([t["diameter_nm"] for t in tracks])
    fits = stats.diffusion_coefficients(tf, tid, x, y, td, pixel_size_nm=0.390625,
                                        frame_interval_s=FRAME_INTERVAL_S)  # fmt: skip
    diff = _rows(out / "diffusion.csv")
    assert [int(r["track_id"]) for r in diff] == [fit.track_id for fit in fits]
    np.testing.assert_allclose(_column(diff, "diffusion_nm2_per_s"),
                               [fit.diffusion_nm2_per_s for fit in fits])  # fmt: skip

    lengths = _rows(out / "track_lengths.csv")
    assert sum(int(r["n_frames"]) for r in lengths) == len(tracks)

    fus = _rows(out / "fusions.csv")
    n_fusions = sum(e["type"] == "fusion" for e in events)
    assert n_fusions >= 1 and int(fus[-1]["cumulative"]) == n_fusions
    assert [int(r["frame"]) for r in fus] == list(range(N_FRAMES))

    numbers = json.loads((out / "key_numbers.json").read_text(encoding="utf-8"))
    assert numbers["ripening rate K (n = 3)"]["value"].endswith("nm³/s")
    share = stats.coalescence_share(tf, tid, td, events)["coalescence_share"]
    assert numbers["coalescence share"]["value"] == f"{share:.3f}"


def test_exports_with_unreadable_sources_and_chosen_frames(session: Path, tmp_path: Path) -> None:
    with SessionStore(session) as store:
        store.export_csv(tmp_path)
    rows = _rows(tmp_path / "frames.csv")
    for r in rows:
        r["source"] = f"/gone/frame_{r['frame']}.tif"  # the acquisition folder was moved
    with (tmp_path / "frames.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tables = load_tables(tmp_path)
    assert tables.kind == "exports" and tables.tracks is not None
    index = write_report(tmp_path, frames_to_show=[3, 7])
    page = index.read_text(encoding="utf-8")
    assert "source image not readable: tracks on an empty field" in page
    assert "frames 3, 7" in page
    _check_png(index.parent / "trajectories.png")
    _check_png(index.parent / "sizes_treacy_rice.png")


def test_analyze_folder_gets_sizes_only(truth: Path, tmp_path: Path) -> None:
    gt = [r for r in _rows(truth / "ground_truth.csv") if int(r["frame"]) in (0, 9)]
    with (tmp_path / "particles.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "particle_id", *NM_COLUMNS])
        for k, r in enumerate(gt):
            values = {c: 0 for c in NM_COLUMNS} | {c: r[c] for c in ("x", "y", "diameter_nm",
                                                                    "intensity")}  # fmt: skip
            writer.writerow([f"img_{r['frame']}.tif", k, *(values[c] for c in NM_COLUMNS)])
    # a stale report of a session in the same place: its track figures must go
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "trajectories.png").write_bytes(b"old")
    index = write_report(tmp_path)
    page = index.read_text(encoding="utf-8")
    assert re.findall(r'<img src="([^"]+)"', page) == ["sizes_treacy_rice.png"]
    _check_png(index.parent / "sizes_treacy_rice.png")
    assert "trajectories, mobility against size, track lengths: omitted, no tracks" in page
    assert "an analyze folder has no time axis" in page
    assert not (index.parent / "trajectories.png").exists()
    rows = _rows(index.parent / "size_stats.csv")
    assert [int(r["n"]) for r in rows] == [sum(int(g["frame"]) == f for g in gt) for f in (0, 9)]


def test_cli_prints_the_page_and_fails_in_one_line(session: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "rep"
    ok = runner.invoke(main, ["report", str(session), "--out", str(out), "--frames", "0,19"])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip() == str(out / "index.html")
    assert "figure kinetics.png" in ok.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    bad = runner.invoke(main, ["report", str(empty)])
    assert bad.exit_code == 1
    lines = bad.stderr.strip().splitlines()
    assert lines[-1].startswith("nptrack report: error: ") and "not an nptrack session" in lines[-1]
    assert "Traceback" not in bad.stderr

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "tracks.csv").write_text("frame,track_id,x,y,diameter_nm\n0,1,2.0,3.0,2.5\n"
                                        "1,1,abc,3.1,2.5\n")  # fmt: skip
    bad = runner.invoke(main, ["report", str(corrupt)])
    assert bad.exit_code == 1
    assert "tracks.csv: line 3: x = 'abc' is not a number" in bad.stderr.strip().splitlines()[-1]
    with pytest.raises(ReadError, match="missing column"):
        (corrupt / "tracks.csv").write_text("frame,x\n0,1\n")
        load_tables(corrupt)

    missing = runner.invoke(main, ["report", str(session), "--out", str(out), "--frames", "99"])
    assert missing.exit_code == 1 and "frame 99 has no particles" in missing.stderr
