"""Truncated copies of every sample file are incomplete and refused, never garbage."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import pytest

from nptrack.io import IncompleteFileError
from nptrack.io.complete import check_complete, is_complete
from nptrack.io.read import read_frames
from tests.conftest import SAMPLES

EXPECTED = SAMPLES / "formats" / "EXPECTED.csv"
FILES = [r["file"] for r in csv.DictReader(EXPECTED.open())] if EXPECTED.is_file() else []
CUTS = {"10%": 0.1, "50%": 0.5, "90%": 0.9, "1 byte short": None}


@pytest.mark.parametrize("name", FILES)
def test_sample_is_complete(name: str, formats_dir: Path) -> None:
    assert is_complete(formats_dir / name)


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("name", FILES)
def test_truncated_copy(name: str, cut: str, formats_dir: Path, tmp_path: Path) -> None:
    original = (formats_dir / name).read_bytes()
    frac = CUTS[cut]
    n = len(original) - 1 if frac is None else int(len(original) * frac)
    path = tmp_path / name
    path.write_bytes(original[:n])
    if is_complete(path):
        # Only acceptable when nothing was lost: the cut removed padding after the last
        # record (TIA pads SER files); then the data read must equal the original's.
        assert frac is None, f"{name} cut at {cut} reported complete"
        whole = read_frames(formats_dir / name)
        for a, b in zip(read_frames(path), whole, strict=True):
            np.testing.assert_array_equal(a.data, b.data)
        assert original[n:] == b"\0" * (len(original) - n)
        return
    with pytest.raises(IncompleteFileError) as err:
        read_frames(path)
    assert name in str(err.value)


def test_stable_rule(tmp_path: Path, formats_dir: Path) -> None:
    path = tmp_path / "a.dm3"
    path.write_bytes((formats_dir / "test_STEM_image.dm3").read_bytes())
    assert not is_complete(path, stable_s=60.0)  # just written
    old = time.time() - 120
    os.utime(path, (old, old))
    assert is_complete(path, stable_s=60.0)


def test_growing_tiff_stack(tmp_path: Path) -> None:
    """A stack that grows frame by frame is complete after each appended frame."""
    import tifffile

    path = tmp_path / "grow.tif"
    for k in range(3):
        tifffile.imwrite(path, np.full((16, 16), k, np.uint16), append=True)
        assert is_complete(path)
        assert len(read_frames(path)) == k + 1
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(IncompleteFileError):
        check_complete(path)


def test_ser_series_being_written(tmp_path: Path, formats_dir: Path) -> None:
    import struct

    data = bytearray((formats_dir / "16_STOimage_1.ser").read_bytes())
    (table,) = struct.unpack("<i", data[22:26])
    data_offset, tag_offset = struct.unpack("<2i", data[table : table + 8])
    # Rewrite as a series of 5 elements with 1 valid: a new offset table (5 data offsets,
    # 5 tag offsets) appended at the end, as TIA leaves a series during acquisition.
    data[14:18] = struct.pack("<i", 5)
    data[22:26] = struct.pack("<i", len(data))
    data += struct.pack("<10i", data_offset, 0, 0, 0, 0, tag_offset, 0, 0, 0, 0)
    path = tmp_path / "series_1.ser"
    path.write_bytes(bytes(data))
    with pytest.raises(IncompleteFileError, match="1 of 5"):
        check_complete(path)
    assert not is_complete(path)
    # The element already acquired is readable (a growing series is read in part).
    (frame,) = read_frames(path)
    np.testing.assert_array_equal(
        frame.data, read_frames(formats_dir / "16_STOimage_1.ser")[0].data
    )
