"""Is a file fully written? Structural checks per format, plus a size-stable rule.

Acquisition software writes a frame over hundreds of milliseconds, in chunks, sometimes to a
temporary name first; a watcher that reads too early gets garbage. Each format carries enough
structure to tell a finished file from a partial one:

- DM3/DM4: the root-tag length in the header must match the file size (GMS writes it last);
- TIA SER: all elements valid, and every data element and tag lies inside the file;
- HDF5 (Velox / Berkeley EMD): the library opens it (its superblock stores the end-of-file
  address) and it is not locked by a writer;
- TIFF: every IFD parses, the IFD chain ends inside the file, every strip/tile lies inside it;
- MRC: the header's nx·ny·nz·bytes + extended header fits in the file;
- PNG: ends with the IEND chunk; JPEG: ends with the EOI marker.

On top of the structure, `is_complete(..., stable_s=S)` asks that the file was not modified
during the last S seconds, which catches writers that pre-allocate.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

from nptrack.io.errors import IncompleteFileError, UnsupportedFormatError

__all__ = ["SUPPORTED_SUFFIXES", "check_complete", "is_complete"]

SUPPORTED_SUFFIXES = (
    ".dm3",
    ".dm4",
    ".ser",
    ".emi",
    ".emd",
    ".h5",
    ".hdf5",
    ".mrc",
    ".mrcs",
    ".tif",
    ".tiff",
    ".png",
    ".jpg",
    ".jpeg",
)

# Bytes per element of TIA SER and MRC data-type codes.
_SER_DTYPE_BYTES = {1: 1, 2: 2, 3: 4, 4: 1, 5: 2, 6: 4, 7: 4, 8: 8, 9: 8, 10: 16}
_MRC_MODE_BYTES = {0: 1.0, 1: 2.0, 2: 4.0, 3: 4.0, 4: 8.0, 6: 2.0, 12: 2.0, 101: 0.5}


def _fail(path: Path, reason: str) -> None:
    raise IncompleteFileError(path, reason)


def _check_dm(path: Path, size: int) -> None:
    with path.open("rb") as f:
        head = f.read(16)
    if len(head) < 16:
        _fail(path, f"DM header cut short ({size} bytes)")
    version = struct.unpack(">i", head[:4])[0]
    if version == 3:
        root_len = struct.unpack(">I", head[4:8])[0]
        # GMS writes header (12) + tags + 8 zero bytes; old writers end after 4 zero bytes.
        expected = (root_len + 20, root_len + 16)
    elif version == 4:
        root_len = struct.unpack(">Q", head[4:12])[0]
        expected = (root_len + 24,)
    else:
        _fail(path, f"not a DM3/DM4 file (version field {version})")
        return
    if size not in expected:
        _fail(path, f"DM{version} file is {size} bytes, header says {expected[0]}")
    with path.open("rb") as f:
        f.seek(size - 4)
        if f.read(4) != b"\0\0\0\0":
            _fail(path, f"DM{version} file does not end with its zero terminator")


def _check_ser(path: Path, size: int, *, growing_ok: bool = False) -> None:
    with path.open("rb") as f:
        head = f.read(30)
        if len(head) < 30:
            _fail(path, f"SER header cut short ({size} bytes)")
        byte_order, series_id, version = struct.unpack("<hhh", head[:6])
        if byte_order != 0x4949 or series_id != 0x0197:
            _fail(path, "not a TIA SER file (bad magic)")
        data_type_id, tag_type_id, total, valid = struct.unpack("<iiii", head[6:22])
        if version >= 0x220:
            (table_offset,) = struct.unpack("<q", head[22:30])
            off_fmt, off_size = "q", 8
        else:
            (table_offset,) = struct.unpack("<i", head[22:26])
            off_fmt, off_size = "i", 4
        if valid < 1 or (valid < total and not growing_ok):
            _fail(path, f"SER series still being written ({valid} of {total} elements valid)")
        if table_offset + 2 * total * off_size > size:
            _fail(path, "SER offset table lies beyond the end of the file")
        f.seek(table_offset)
        offsets = struct.unpack(f"<{2 * total}{off_fmt}", f.read(2 * total * off_size))
        data_offsets, tag_offsets = offsets[:total], offsets[total:]
        for k in range(valid):
            f.seek(data_offsets[k])
            if data_type_id == 0x4122:  # 2-D element: calibration (40 bytes), type, nx, ny
                elem = f.read(50)
                if len(elem) < 50:
                    _fail(path, f"SER element {k} cut short")
                dtype, nx, ny = struct.unpack("<hii", elem[40:50])
                end = data_offsets[k] + 50 + nx * ny * _SER_DTYPE_BYTES.get(dtype, 0)
            else:  # 1-D element: calibration (20 bytes), type, length
                elem = f.read(26)
                if len(elem) < 26:
                    _fail(path, f"SER element {k} cut short")
                dtype, n = struct.unpack("<hi", elem[20:26])
                end = data_offsets[k] + 26 + n * _SER_DTYPE_BYTES.get(dtype, 0)
            if end > size:
                _fail(path, f"SER element {k} ends at byte {end}, file has {size}")
            # Tag: type id (int32) + time (int32) [+ stage x, y (float64)], as TIA writes it.
            tag_end = tag_offsets[k] + (24 if tag_type_id == 0x4142 else 8)
            if tag_end > size:
                _fail(path, f"SER tag {k} ends at byte {tag_end}, file has {size}")


def _check_hdf5(path: Path, size: int) -> None:
    import h5py

    try:
        # locking=True: a file still open for writing by the acquisition software is refused.
        with h5py.File(path, "r", locking=True) as h5:
            h5.visit(lambda name: None)  # walks every object header
    except Exception as exc:  # h5py raises OSError/KeyError/RuntimeError for broken files
        _fail(path, f"HDF5 file does not open ({str(exc).splitlines()[0][:120]})")


def _check_mrc(path: Path, size: int) -> None:
    with path.open("rb") as f:
        head = f.read(1024)
    if len(head) < 1024:
        _fail(path, f"MRC header cut short ({size} bytes)")
    for endian in "<>":
        nx, ny, nz, mode = struct.unpack(endian + "4i", head[:16])
        if 0 < nx < 1 << 20 and 0 < ny < 1 << 20 and 0 < nz < 1 << 24 and mode in _MRC_MODE_BYTES:
            break
    else:
        _fail(path, "not an MRC file (implausible header)")
    (ext_header_bytes,) = struct.unpack(endian + "i", head[92:96])
    expected = 1024 + max(ext_header_bytes, 0) + int(nx * ny * nz * _MRC_MODE_BYTES[mode])
    if size < expected:
        _fail(path, f"MRC file is {size} bytes, header says {expected}")


_TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_TIFF_TYPE_BYTES.update({13: 4, 16: 8, 17: 8, 18: 8})


def _walk_tiff_ifds(path: Path, size: int) -> int:
    """Walk the IFD chain; every IFD and every out-of-line tag value must lie in the file.

    tifffile skips broken tags and stops at a broken chain with only a log message, so the
    raw structure is checked here. Returns the number of IFDs.
    """
    with path.open("rb") as f:
        head = f.read(16)
        if head[:2] not in (b"II", b"MM"):
            _fail(path, "not a TIFF file (bad byte-order mark)")
        bo = "<" if head[:2] == b"II" else ">"
        (magic,) = struct.unpack(bo + "H", head[2:4])
        if magic == 42:
            cnt_fmt, cnt_size, ent_fmt, ent_size, off_fmt, off_size = "H", 2, "HHI", 12, "I", 4
            (offset,) = struct.unpack(bo + "I", head[4:8])
        elif magic == 43:
            cnt_fmt, cnt_size, ent_fmt, ent_size, off_fmt, off_size = "Q", 8, "HHQ", 20, "Q", 8
            (offset,) = struct.unpack(bo + "Q", head[8:16])
        else:
            _fail(path, f"not a TIFF file (magic {magic})")
        n_ifds, seen = 0, set()
        while offset:
            if offset in seen or offset + cnt_size > size:
                _fail(path, f"TIFF IFD {n_ifds} lies beyond the end of the file (cut short)")
            seen.add(offset)
            f.seek(offset)
            (n_tags,) = struct.unpack(bo + cnt_fmt, f.read(cnt_size))
            table = f.read(n_tags * ent_size + off_size)
            if len(table) < n_tags * ent_size + off_size:
                _fail(path, f"TIFF IFD {n_ifds} cut short")
            for k in range(n_tags):
                entry = table[k * ent_size : (k + 1) * ent_size]
                _code, dtype, count = struct.unpack(bo + ent_fmt, entry[: 4 + off_size])
                n_bytes = count * _TIFF_TYPE_BYTES.get(dtype, 1)
                if n_bytes > off_size:
                    (value_offset,) = struct.unpack(bo + off_fmt, entry[4 + off_size :])
                    if value_offset + n_bytes > size:
                        _fail(path, f"TIFF tag {_code} of IFD {n_ifds} ends beyond the file")
            (offset,) = struct.unpack(bo + off_fmt, table[-off_size:])
            n_ifds += 1
    return n_ifds


def _check_tiff(path: Path, size: int) -> None:
    import tifffile

    if _walk_tiff_ifds(path, size) == 0:
        _fail(path, "TIFF has no pages")
    try:
        with tifffile.TiffFile(path) as tif:
            for k, page in enumerate(tif.pages):
                for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
                    if offset + count > size:
                        _fail(path, f"TIFF page {k} data ends beyond the end of the file")
    except IncompleteFileError:
        raise
    except Exception as exc:
        _fail(path, f"TIFF does not parse ({str(exc).splitlines()[0][:120]})")


def _check_png(path: Path, size: int) -> None:
    with path.open("rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            _fail(path, "not a PNG file (bad signature)")
        f.seek(max(size - 12, 0))
        if f.read(12) != b"\0\0\0\0IEND\xaeB`\x82":
            _fail(path, "PNG has no IEND chunk at its end (file cut short)")


def _check_jpeg(path: Path, size: int) -> None:
    with path.open("rb") as f:
        if f.read(2) != b"\xff\xd8":
            _fail(path, "not a JPEG file (bad signature)")
        f.seek(max(size - 64, 0))
        if b"\xff\xd9" not in f.read(64):
            _fail(path, "JPEG has no end-of-image marker (file cut short)")


_CHECKERS = {
    ".dm3": _check_dm,
    ".dm4": _check_dm,
    ".ser": _check_ser,
    ".emd": _check_hdf5,
    ".h5": _check_hdf5,
    ".hdf5": _check_hdf5,
    ".mrc": _check_mrc,
    ".mrcs": _check_mrc,
    ".tif": _check_tiff,
    ".tiff": _check_tiff,
    ".png": _check_png,
    ".jpg": _check_jpeg,
    ".jpeg": _check_jpeg,
}


def check_complete(path: str | Path, *, stable_s: float = 0.0, growing_ok: bool = False) -> None:
    """Raise `IncompleteFileError` unless `path` is a fully written file.

    Parameters
    ----------
    path : path-like
        The file to check.
    stable_s : float, optional
        Also require that the file was not modified during the last `stable_s` seconds.
    growing_ok : bool, optional
        Accept a TIA SER series that is still being acquired when its valid elements are all
        in the file (they can be read; the rest will follow).

    Raises
    ------
    IncompleteFileError
        Truncated, still being written, or structurally corrupt; the message says why.
    UnsupportedFormatError
        The extension is not one nptrack reads.
    FileNotFoundError
        There is no such file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedFormatError(path, f"unsupported file type '{suffix or path.name}'")
    stat = path.stat()
    if stat.st_size == 0:
        _fail(path, "file is empty")
    if stable_s > 0 and time.time() - stat.st_mtime < stable_s:
        _fail(path, f"modified less than {stable_s:g} s ago")
    if suffix == ".ser":
        _check_ser(path, stat.st_size, growing_ok=growing_ok)
    elif suffix in _CHECKERS:
        _CHECKERS[suffix](path, stat.st_size)


def is_complete(path: str | Path, *, stable_s: float = 0.0) -> bool:
    """Whether `path` is fully written (see `check_complete`); never raises for bad files."""
    try:
        check_complete(path, stable_s=stable_s)
    except (IncompleteFileError, UnsupportedFormatError, OSError):
        return False
    return os.path.isfile(path)
