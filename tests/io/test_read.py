"""Readers against real microscope files: every row of EXPECTED.csv is a test."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from nptrack.io import IncompleteFileError, NotAnImageError, ReadError, UnsupportedFormatError
from nptrack.io.read import natural_key, probe, read_frames, read_series, unit_to_nm
from tests.conftest import SAMPLES

EXPECTED = SAMPLES / "formats" / "EXPECTED.csv"
ROWS = list(csv.DictReader(EXPECTED.open(encoding="utf-8"))) if EXPECTED.is_file() else []


def test_expected_table_is_present() -> None:
    assert len(ROWS) >= 18, f"{EXPECTED} missing or short"


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_expected_row(row: dict[str, str], formats_dir: Path) -> None:
    path = formats_dir / row["file"]
    if row["kind"] in ("image", "stack"):
        frames = read_frames(path)
        assert len(frames) == int(row["frames"])
        assert all(f.shape == (int(row["height"]), int(row["width"])) for f in frames)
        assert all(f.data.dtype == np.float32 and np.isfinite(f.data).all() for f in frames)
        assert [f.index for f in frames] == list(range(len(frames)))
        info = probe(path)
        assert info.kind == row["kind"] and info.complete
        if row["pixel_size_y_nm"]:
            want = np.array([float(row["pixel_size_y_nm"]), float(row["pixel_size_x_nm"])])
            got = np.array(frames[0].pixel_size_nm)
            np.testing.assert_allclose(got, want, rtol=1e-4)
            assert info.pixel_size_nm is not None
        else:
            assert frames[0].pixel_size_nm is None, "no calibration must not be invented"
            assert info.pixel_size_nm is None
    else:
        with pytest.raises(NotAnImageError) as err:
            read_frames(path)
        assert row["file"] in str(err.value)
        info = probe(path)
        assert info.kind == "refused" and info.reason


def test_stack_content_and_dm4_twin(formats_dir: Path) -> None:
    frames = read_frames(formats_dir / "dmTest_3D_int16_64_65_66.dm3")
    twins = read_frames(formats_dir / "dmTest_3D_int16_64_65_66.dm4")
    # The test file holds a column ramp: value == x in every row of every frame.
    np.testing.assert_array_equal(frames[5].data, np.tile(np.arange(64, dtype=np.float32), (65, 1)))
    for a, b in zip(frames, twins, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
    assert frames[3].source.endswith("#3")


def test_velox_stack_frame_axis_first(formats_dir: Path) -> None:
    import h5py

    frames = read_frames(formats_dir / "velox_tem_stack.emd")
    with h5py.File(formats_dir / "velox_tem_stack.emd", "r") as h5:
        group = next(iter(h5["Data/Image"].values()))
        raw = np.asarray(group["Data"])  # (height, width, frame) on disk
    for k, frame in enumerate(frames):
        np.testing.assert_array_equal(frame.data, raw[:, :, k].astype(np.float32))


def test_times_where_the_file_has_them(formats_dir: Path) -> None:
    (velox,) = read_frames(formats_dir / "velox_stem_haadf.emd")
    (dm,) = read_frames(formats_dir / "test_STEM_image.dm3")
    assert velox.time_s is not None and dm.time_s is not None
    assert abs(dm.time_s - 1470673597.0) < 1.0  # 8/8/2016 4:26:37 PM, taken as UTC
    (mrc, *_) = read_frames(formats_dir / "temp.mrc")
    assert mrc.time_s is None


@pytest.mark.parametrize(
    ("unit", "factor"),
    [
        ("m", 1e9),
        ("nm", 1.0),
        ("n_m", 1.0),
        ("µm", 1e3),
        ("μm", 1e3),
        ("um", 1e3),
        ("micron", 1e3),
        ("A", 0.1),
        ("Å", 0.1),
        ("Å", 0.1),
        ("pm", 1e-3),
        ("[n_m]", 1.0),
    ],
)
def test_unit_to_nm(unit: str, factor: float) -> None:
    assert unit_to_nm(unit) == pytest.approx(factor)


@pytest.mark.parametrize("unit", ["", "pixel", "eV", "1/nm", None, "furlong"])
def test_unit_unknown_is_none(unit: str | None) -> None:
    assert unit_to_nm(unit) is None


def test_png_has_no_pixel_size_and_is_gray(tmp_path: Path) -> None:
    import imageio.v3 as iio

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 1] = 200
    iio.imwrite(tmp_path / "a.png", rgb)
    (frame,) = read_frames(tmp_path / "a.png")
    assert frame.pixel_size_nm is None and frame.shape == (20, 30)
    np.testing.assert_allclose(frame.data, 0.587 * 200, rtol=1e-5)


def test_ome_tiff_calibration(tmp_path: Path) -> None:
    import tifffile

    data = np.arange(2 * 16 * 24, dtype=np.uint16).reshape(2, 16, 24)
    tifffile.imwrite(
        tmp_path / "x.ome.tif",
        data,
        metadata={
            "axes": "TYX",
            "PhysicalSizeX": 0.5,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 0.25,
            "PhysicalSizeYUnit": "nm",
        },
    )
    frames = read_frames(tmp_path / "x.ome.tif")
    assert len(frames) == 2
    assert frames[0].pixel_size_nm == pytest.approx((0.25, 0.5))
    np.testing.assert_array_equal(frames[1].data, data[1])


def test_plain_tiff_dpi_is_not_a_calibration(tmp_path: Path) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "p.tif", np.ones((8, 8), np.uint8), resolution=(72, 72))
    (frame,) = read_frames(tmp_path / "p.tif")
    assert frame.pixel_size_nm is None


def test_unsupported_and_missing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedFormatError):
        read_frames(tmp_path / "notes.txt")
    with pytest.raises(ReadError, match="no such file"):
        read_frames(tmp_path / "absent.dm4")


def test_garbage_with_image_extension_is_typed_error(tmp_path: Path) -> None:
    for name in ("bad.dm3", "bad.ser", "bad.emd", "bad.mrc", "bad.tif", "bad.png"):
        (tmp_path / name).write_bytes(b"\x01\x02" * 700)
        with pytest.raises(IncompleteFileError):
            read_frames(tmp_path / name)


def test_series_from_folder_natural_order(tmp_path: Path) -> None:
    import tifffile

    for k in (10, 2, 1):
        tifffile.imwrite(tmp_path / f"frame_{k}.tif", np.full((4, 5), k, np.uint16))
    frames = read_series([tmp_path])
    assert [int(f.data[0, 0]) for f in frames] == [1, 2, 10]
    assert [f.index for f in frames] == [0, 1, 2]
    assert sorted(["f10", "f9", "f1"], key=natural_key) == ["f1", "f9", "f10"]
