"""`nptrack analyze` end to end on small synthetic TIFFs with known particles."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from scipy import ndimage as ndi

from nptrack.cli import main
from nptrack.config import Config, load_config
from nptrack.measure.analyze import AnalyzeError, analyze, find_model, load_segmenter
from nptrack.measure.classic import ClassicSegmenter

PIXEL_NM = 0.2


def particles_image(
    centres: list[tuple[float, float, float]],
    *,
    shape: tuple[int, int] = (256, 256),
    dark: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """Flat particles (radius in px), blurred, on a sloped support with Gaussian noise."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    disks = np.zeros(shape)
    for cy, cx, r in centres:
        disks[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1.0
    signal = ndi.gaussian_filter(disks, 1.0) * 60.0
    support = 100.0 + 0.05 * xx + 0.04 * yy
    noise = np.random.default_rng(seed).normal(0, 4.0, shape)
    return (support + (-signal if dark else signal) + noise).astype(np.float32)


def write_tiff(path: Path, image: np.ndarray, pixel_nm: float | None = PIXEL_NM) -> Path:
    if pixel_nm is None:
        tifffile.imwrite(path, image)
    else:  # ImageJ calibration: resolution in pixels per µm, unit 'um'
        res = 1.0 / (pixel_nm / 1000.0)
        tifffile.imwrite(path, image, imagej=True, resolution=(res, res),
                         metadata={"unit": "um"})  # fmt: skip
    return path


A = [(50.3, 60.2, 10.0), (60.0, 180.4, 14.0), (150.2, 80.7, 12.0), (190.5, 190.1, 9.0),
     (120.0, 130.0, 11.5)]  # fmt: skip
B = [(70.0, 70.0, 15.0), (180.0, 120.0, 8.0), (128.0, 248.0, 12.0)]  # the last one cut


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture()
def two_images(tmp_path: Path) -> list[Path]:
    return [
        write_tiff(tmp_path / "a.tif", particles_image(A, seed=1)),
        write_tiff(tmp_path / "b.tif", particles_image(B, dark=True, seed=2)),
    ]


def test_end_to_end_counts_and_sizes(two_images: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = analyze(two_images, out, segmenter=ClassicSegmenter(), masks=True, progress=False)
    assert result.analysed == 2 and not result.failed and result.unit == "nm"
    rows = read_csv(out / "particles.csv")
    header = list(rows[0])
    assert header[:2] == ["image", "particle_id"]
    assert header[2:18] == ["x", "y", "x_nm", "y_nm", "area_nm2", "diameter_nm", "feret_min_nm",
                            "feret_max_nm", "perimeter_nm", "circularity", "convexity",
                            "intensity", "background", "score", "separated", "border"]  # fmt: skip
    assert len(rows) == len(A) + len(B) == result.particles
    for image, truth in ((two_images[0], A), (two_images[1], B)):
        mine = [r for r in rows if r["image"] == str(image)]
        assert len(mine) == len(truth)
        for cy, cx, r in truth:
            row = min(mine, key=lambda q: (float(q["x"]) - cx) ** 2 + (float(q["y"]) - cy) ** 2)
            assert float(row["x_nm"]) == pytest.approx(float(row["x"]) * PIXEL_NM, rel=1e-6)
            if row["border"] == "0":  # a cut particle has neither its centre nor its size
                assert float(row["x"]) == pytest.approx(cx, abs=0.3)
                assert float(row["y"]) == pytest.approx(cy, abs=0.3)
                assert float(row["diameter_nm"]) == pytest.approx(2 * r * PIXEL_NM, rel=0.03)
                assert float(row["intensity"]) > 0  # dark particles count positive too
    assert sum(r["border"] == "1" for r in rows) == 1
    summary = read_csv(out / "summary.csv")
    assert [s["image"] for s in summary] == [*map(str, two_images), "ALL"]
    assert [int(s["n"]) for s in summary] == [len(A), len(B), len(A) + len(B)]
    pooled = [float(r["diameter_nm"]) for r in rows if r["border"] == "0"]
    assert float(summary[-1]["diameter_nm_mean"]) == pytest.approx(np.mean(pooled), rel=1e-4)
    for name in ("a", "b"):
        assert (out / "overlays" / f"{name}.png").stat().st_size > 0
        labels = iio.imread(out / "masks" / f"{name}.png")
        assert labels.dtype == np.uint16
        assert labels.max() == len(A if name == "a" else B)
    assert (out / "histograms.png").stat().st_size > 0
    info = json.loads((out / "summary.json").read_text())
    assert info["particles"] == len(rows) and info["unit"] == "nm"
    assert info["contrast"] == {str(two_images[0]): "bright", str(two_images[1]): "dark"}


class ThresholdSegmenter:
    """A segmentation function passed in: anything with ``threshold`` and ``predict``."""

    threshold = 0.5

    def predict(self, image, *, pixel_size_nm=None, contrast="auto"):  # type: ignore[no-untyped-def]
        smooth = ndi.gaussian_filter(image, 1.0)
        return (np.abs(smooth - np.median(smooth)) > 25).astype(np.float32)


def test_segmenter_is_passed_in_and_split_is_configurable(tmp_path: Path) -> None:
    touching = [(100.0, 100.0, 14.0), (100.0, 124.0, 14.0)]  # overlap ~ 10 % of area
    path = write_tiff(tmp_path / "pair.tif", particles_image(touching, seed=3))
    counts = {}
    for split in ("watershed", "uecs", "none"):
        config = load_config(None, [f"measure.split={split}"])
        res = analyze([path], tmp_path / split, segmenter=ThresholdSegmenter(), config=config,
                      progress=False)  # fmt: skip
        counts[split] = res.particles
    assert counts == {"watershed": 2, "uecs": 2, "none": 1}


def test_unreadable_image_is_skipped_and_reported(two_images: list[Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\x00" * 20)
    lines: list[str] = []
    result = analyze([broken, *two_images], tmp_path / "out", segmenter=ClassicSegmenter(),
                     report=lines.append, progress=False)  # fmt: skip
    assert result.analysed == 2 and result.particles == len(A) + len(B)
    assert [f for f, _ in result.failed] == [str(broken)]
    assert len(lines) == 1 and "broken.tif" in lines[0] and "\n" not in lines[0]
    with pytest.raises(AnalyzeError, match="no image could be analysed"):
        analyze([broken], tmp_path / "none", segmenter=ClassicSegmenter(), report=lines.append,
                progress=False)  # fmt: skip


def test_units_px_when_uncalibrated_and_override(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "plain.tif", particles_image(A, seed=4), pixel_nm=None)
    res = analyze([path], tmp_path / "px", segmenter=ClassicSegmenter(), progress=False)
    rows = read_csv(tmp_path / "px" / "particles.csv")
    assert res.unit == "px" and "diameter_px" in rows[0] and "diameter_nm" not in rows[0]
    d_px = sorted(float(r["diameter_px"]) for r in rows)
    np.testing.assert_allclose(d_px, sorted(2 * r for _, _, r in A), rtol=0.03)
    analyze([path], tmp_path / "nm", segmenter=ClassicSegmenter(), pixel_size_nm=0.5,
            progress=False)  # fmt: skip
    d_nm = sorted(float(r["diameter_nm"]) for r in read_csv(tmp_path / "nm" / "particles.csv"))
    np.testing.assert_allclose(d_nm, np.array(d_px) * 0.5, rtol=1e-3)


def test_mixed_calibration_leaves_uncalibrated_out(two_images: list[Path], tmp_path: Path) -> None:
    plain = write_tiff(tmp_path / "plain.tif", particles_image(A, seed=5), pixel_nm=None)
    lines: list[str] = []
    res = analyze([plain, *two_images], tmp_path / "out", segmenter=ClassicSegmenter(),
                  report=lines.append, progress=False)  # fmt: skip
    assert res.unit == "nm" and res.analysed == 2
    assert len(lines) == 1 and "plain.tif" in lines[0] and "--pixel-size-nm" in lines[0]


def test_stack_frames_are_analysed(tmp_path: Path) -> None:
    stack = np.stack([particles_image(A, seed=6), particles_image(B, seed=7)])
    path = write_tiff(tmp_path / "stack.tif", stack)
    res = analyze([tmp_path], tmp_path / "out", segmenter=ClassicSegmenter(), progress=False)
    assert res.analysed == 2 and res.particles == len(A) + len(B)
    assert {r["image"] for r in read_csv(tmp_path / "out" / "particles.csv")} == {
        f"{path}#0",
        f"{path}#1",
    }


def test_xlsx_needs_openpyxl(two_images: list[Path], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "openpyxl", None)
    with pytest.raises(AnalyzeError, match="openpyxl"):
        analyze(two_images, tmp_path / "x", segmenter=ClassicSegmenter(), xlsx=True)


def test_segmenter_choice_falls_back_to_classic(tmp_path: Path) -> None:
    notices: list[str] = []
    seg, name = load_segmenter(None, Config(), notify=notices.append, root=tmp_path)
    assert isinstance(seg, ClassicSegmenter) and name.startswith("classic")
    assert len(notices) == 1 and "classic" in notices[0]
    with pytest.raises(AnalyzeError, match="unet"):
        load_segmenter("unet", Config(), notify=notices.append, root=tmp_path)


def test_cli_analyze(two_images: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["analyze", *map(str, two_images), "--out", str(out), "--segmenter", "classic",
            "--split", "uecs", "--masks"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(read_csv(out / "particles.csv")) == len(A) + len(B)
    assert json.loads((out / "summary.json").read_text())["measure"]["split"] == "uecs"
    missing = tmp_path / "missing.tif"
    result = CliRunner().invoke(main, ["analyze", str(missing), "--out", str(out),
                                       "--segmenter", "classic"])  # fmt: skip
    assert result.exit_code == 1
    err = result.stderr.strip().splitlines()
    assert len(err) == 2 and "missing.tif" in err[0] and "Traceback" not in result.stderr
    assert err[1].startswith("nptrack analyze: error: no image could be analysed")


@pytest.mark.parametrize("preset", ["table1", "dense", "pd250", "bf_gold"])
def test_sizing_and_intensity_on_simulated_images(preset: str, tmp_path: Path) -> None:
    """The measurement stage on simulator truth: separate the union of the true masks and
    compare equivalent diameters and integrated intensities with the simulator's.

    The issue's bars: median |diameter error| <= 5 % and integrated intensity within 5 %
    (median |error|) for particles >= 2 nm. What the noise leaves room for on table1
    (tools/eval_intensity.py, 12 images): shot noise alone 2.0 %, the support under the
    particle known 2.1 %, a ring mean of the noise-free support 3.7 %; measured 4.0 %, and
    5.7 % with the fixed 2 px margin of the previous code (this test's first two images).
    """
    from nptrack.io.read import read_frames
    from nptrack.measure import detect_particles

    out = tmp_path / preset
    args = ["simulate", "images", str(out), "--n", "2", "--preset", preset, "--seed", "1"]
    assert CliRunner().invoke(main, args).exit_code == 0
    d_err, i_err, found = [], [], {}
    for row in read_csv(out / "particles.csv"):
        if row["border"] == "1" or float(row["diameter_nm"]) < 2.0:
            continue
        if row["image"] not in found:
            frame = read_frames(out / "images" / f"{row['image']}.tif")[0]
            truth = iio.imread(out / "masks" / f"{row['image']}.png") > 0
            found[row["image"]] = detect_particles(truth.astype(np.float32), frame.data,
                                                   pixel_size_nm=frame.pixel_size_nm)  # fmt: skip
        particles = found[row["image"]]
        label = particles.labels[round(float(row["y"])), round(float(row["x"]))]
        assert label > 0
        d_err.append(particles.columns["diameter_nm"][label - 1] / float(row["diameter_nm"]) - 1)
        i_err.append(particles.columns["intensity"][label - 1] / float(row["intensity"]) - 1)
    margins = sorted({float(p.columns["intensity_margin_px"][0]) for p in found.values()})
    print(f"{preset}: {len(d_err)} particles >= 2 nm, median |diameter error| "
          f"{100 * np.median(np.abs(d_err)):.1f} %, median |intensity error| "
          f"{100 * np.median(np.abs(i_err)):.1f} % (signed {100 * np.median(i_err):+.1f} %), "
          f"intensity margins {margins} px")  # fmt: skip
    assert len(d_err) > 20
    assert np.median(np.abs(d_err)) <= 0.05
    assert np.median(np.abs(i_err)) <= 0.05
    assert abs(np.median(i_err)) <= 0.02  # scatter, not bias


def test_missing_model_path_falls_back_to_the_newest_particle_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    cfg = Config().segment.model_copy(update={"model_path": "models/gone.onnx"})
    assert find_model(cfg, tmp_path) is None
    for name in (
        "nptrack-columns-v1",
        "nptrack-unet-v2",
        "nptrack-unet-v10",
        "nptrack-unet-v11-int8",
    ):
        (models / f"{name}.onnx").write_bytes(b"")
    # v10, not v2 (numbers, not text order), and neither the column model nor an int8 copy.
    assert find_model(cfg, tmp_path) == models / "nptrack-unet-v10.onnx"
    (models / "gone.onnx").write_bytes(b"")
    assert find_model(cfg, tmp_path) == models / "gone.onnx"  # the configured file first
