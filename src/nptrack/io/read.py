"""Read any supported microscope file into `Frame`s.

Formats: DM3/DM4 (images and stacks), TIA SER (+ EMI companion), Berkeley EMD, Velox EMD,
MRC, TIFF (ImageJ, OME, FEI, plain; multi-page = stack), PNG/JPEG (no pixel size).
ncempy reads DM/SER/EMD, tifffile reads TIFF; MRC calibration is taken from the header cell
(ncempy would invent 1 Å for an uncalibrated file). Every unit string is normalised to nm; a
file without a calibration gives ``pixel_size_nm=None``, never a made-up value.

Before parsing, `nptrack.io.complete.check_complete` verifies the file structure, so a partial
or corrupt file raises `IncompleteFileError` instead of yielding garbage.
"""

from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nptrack.frames import Frame
from nptrack.io.complete import SUPPORTED_SUFFIXES, check_complete, is_complete
from nptrack.io.errors import (
    IncompleteFileError,
    NotAnImageError,
    ReadError,
    UnsupportedFormatError,
)

__all__ = ["FileInfo", "natural_key", "probe", "read_frames", "read_series", "unit_to_nm"]

_NM_PER_UNIT = {
    "m": 1e9,
    "mm": 1e6,
    "um": 1e3,
    "µm": 1e3,  # micro sign U+00B5
    "μm": 1e3,  # greek mu U+03BC
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "nm": 1.0,
    "n_m": 1.0,  # Berkeley EMD
    "nanometer": 1.0,
    "nanometre": 1.0,
    "a": 0.1,
    "å": 0.1,  # A-ring U+00C5 (lower-cased)
    "Å": 0.1,  # angstrom sign U+212B
    "angstrom": 0.1,
    "ang": 0.1,
    "pm": 1e-3,
}
_ENERGY_UNITS = {"ev", "kev", "mev"}


def unit_to_nm(unit: str | None) -> float | None:
    """Nanometres per `unit` ('m', 'nm', 'n_m', 'µm', 'um', 'micron', 'A', 'Å', 'pm' ...).

    Returns ``None`` for an empty, pixel or unknown unit (no calibration).
    """
    if unit is None:
        return None
    key = str(unit).strip().strip("[]").strip()
    return _NM_PER_UNIT.get(key.lower())


def _pixel_size(sizes: Sequence[float], units: Sequence[str | None]) -> tuple[float, float] | None:
    """(y, x) pixel size in nm from per-axis scale and unit, or None if uncalibrated."""
    out = []
    for size, unit in zip(sizes, units, strict=True):
        factor = unit_to_nm(unit)
        if factor is None or not np.isfinite(size) or size <= 0:
            return None
        out.append(float(size) * factor)
    return (out[0], out[1])


def _refuse_non_image(path: Path, shape: tuple[int, ...], units: Sequence[str | None]) -> None:
    lowered = [str(u or "").strip().strip("[]").lower() for u in units]
    if any(u in _ENERGY_UNITS for u in lowered):
        raise NotAnImageError(path, f"spectrum, not an image (axis units {list(units)})")
    if any(u.startswith("1/") or "^-1" in u for u in lowered):
        raise NotAnImageError(path, f"diffraction data in reciprocal units {list(units)}")
    if len(shape) < 2 or min(shape[-2:]) < 2:
        raise NotAnImageError(path, f"1-D data of shape {shape}, not an image")
    if len(shape) > 3:
        raise NotAnImageError(path, f"{len(shape)}-D dataset {shape} (e.g. 4D-STEM), not a series")


@dataclass
class _Raw:
    """What a format loader returns: frames first, then rows, then columns."""

    data: np.ndarray  # (n, h, w)
    pixel_size_nm: tuple[float, float] | None
    time_s: list[float | None]
    meta: dict[str, Any]


def _posix(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    if dt.tzinfo is None:  # acquisition PCs record local time without a zone: taken as UTC
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _parse_datetime(text: str, formats: Sequence[str]) -> datetime | None:
    for fmt in formats:
        try:
            return datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
    return None


def _times(n: int, t0: float | None) -> list[float | None]:
    return [t0] + [None] * (n - 1)


def _load_dm(path: Path) -> _Raw:
    import ncempy.io.dm as dm

    with dm.fileDM(str(path)) as f:
        ds = f.getDataset(0)
        meta = f.getMetadata(0)
    data = np.asarray(ds["data"])
    units = list(ds.get("pixelUnit", []))
    sizes = list(ds.get("pixelSize", []))
    _refuse_non_image(path, data.shape, units)
    if data.ndim == 2:
        data = data[None]
    date, clock = meta.get("DataBar Acquisition Date"), meta.get("DataBar Acquisition Time")
    t0 = None
    if isinstance(date, str) and isinstance(clock, str):
        dt = _parse_datetime(
            f"{date} {clock}",
            ("%m/%d/%Y %I:%M:%S %p", "%d/%m/%Y %H:%M:%S", "%d.%m.%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S"),
        )
        t0 = _posix(dt)
    # The last two calibrated axes are (y, x); a stack's frame axis comes first.
    px = _pixel_size(sizes[-2:], units[-2:]) if len(sizes) >= 2 else None
    keep = {k: v for k, v in meta.items() if isinstance(v, str | int | float) and "Info" in k}
    return _Raw(data, px, _times(len(data), t0), {"format": f"DM{path.suffix[-1]}", **keep})


def _load_ser(path: Path) -> _Raw:
    import ncempy.io.ser as ser

    f = ser.fileSER(str(path))
    try:
        if f.head["DataTypeID"] != 0x4122:
            raise NotAnImageError(path, "TIA SER series of 1-D spectra, not images")
        frames, times = [], []
        px = None
        for k in range(int(f.head["ValidNumberElements"])):
            data, meta = f.getDataset(k)
            frames.append(np.asarray(data))
            if k == 0:
                cal_x, cal_y = meta["Calibration"][0], meta["Calibration"][1]
                # TIA stores calibrations in metres.
                px = _pixel_size([cal_y["CalibrationDelta"], cal_x["CalibrationDelta"]], ["m", "m"])
            with path.open("rb") as fh:
                fh.seek(int(f.head["TagOffsetArray"][k]) + 4)
                (t,) = struct.unpack("<i", fh.read(4))
            times.append(float(t) if t > 0 else None)
    finally:
        f._file_hdl.close()
    return _Raw(np.stack(frames), px, times, {"format": "TIA SER"})


def _load_emi(path: Path) -> _Raw:
    companions = sorted(path.parent.glob(f"{path.stem}_*.ser"), key=natural_key)
    if not companions:
        raise NotAnImageError(path, "TIA EMI metadata file without its .ser data file")
    return _load_ser(companions[0])


def _load_velox(path: Path, velox: Any) -> _Raw:
    data, md = velox.get_dataset(velox.list_data[0])
    data = np.asarray(data)
    if data.ndim == 3:  # Velox stores stacks as (height, width, frame)
        data = np.moveaxis(data, -1, 0)
    _refuse_non_image(path, data.shape, md.get("pixelUnit", []))
    if data.ndim == 2:
        data = data[None]
    size_x, size_y = md.get("pixelSize", (None, None))  # ncempy: (x, y), already in nm
    unit_x, unit_y = md.get("pixelUnit", ("nm", "nm"))
    px = None
    if size_x is not None:
        px = _pixel_size([size_y, size_x], ["nm" if unit_y else None, "nm" if unit_x else None])
    meta = {"format": "Velox EMD", "detector": str(md.get("detectorName", ""))}
    return _Raw(data, px, _times(len(data), _posix(md.get("AcquisitionTime"))), meta)


def _load_berkeley(path: Path) -> _Raw:
    import ncempy.io.emd as emd

    f = emd.fileEMD(str(path), readonly=True)
    try:
        if not f.list_emds:
            raise NotAnImageError(path, "EMD file holds no data group")
        data, dims = f.get_emdgroup(f.list_emds[0])
        data = np.asarray(data)
    finally:
        f.file_hdl.close()
    units = [str(d[2]) for d in dims]
    if data.ndim == 3:
        # The frame axis is the one not calibrated in a length unit (time, index); default 0.
        lengthless = [i for i, u in enumerate(units) if unit_to_nm(u) is None]
        frame_axis = lengthless[0] if lengthless else 0
        data = np.moveaxis(data, frame_axis, 0)
        dims = [dims[frame_axis]] + [d for i, d in enumerate(dims) if i != frame_axis]
        units = [str(d[2]) for d in dims]
    _refuse_non_image(path, data.shape, units)
    if data.ndim == 2:
        data = data[None]
    steps = [float(d[0][1] - d[0][0]) if len(d[0]) > 1 else float("nan") for d in dims[-2:]]
    px = _pixel_size(steps, units[-2:])
    return _Raw(data, px, _times(len(data), None), {"format": "Berkeley EMD"})


def _load_emd(path: Path) -> _Raw:
    import h5py
    import ncempy.io.emdVelox as emd_velox

    with h5py.File(path, "r") as h5:
        is_velox = "Data" in h5  # Berkeley EMD keeps its groups under lower-case "data"
    if not is_velox:
        return _load_berkeley(path)
    velox = emd_velox.fileEMDVelox(str(path))
    try:
        if not velox.list_data:
            raise NotAnImageError(path, "Velox EMD file holds no image data")
        return _load_velox(path, velox)
    finally:
        velox._file_hdl.close()


def _load_mrc(path: Path) -> _Raw:
    import ncempy.io.mrc as mrc

    with path.open("rb") as fh:
        head = fh.read(56)
    endian = "<" if 0 < struct.unpack("<i", head[:4])[0] < 1 << 20 else ">"
    nx, ny, nz = struct.unpack(endian + "3i", head[:12])
    mx, my, _mz = struct.unpack(endian + "3i", head[28:40])
    cell_x, cell_y, _cell_z = struct.unpack(endian + "3f", head[40:52])
    px = None
    if mx > 0 and my > 0 and cell_x > 0 and cell_y > 0:  # cell in Å over m grid steps
        px = _pixel_size([cell_y / my, cell_x / mx], ["A", "A"])
    data = np.asarray(mrc.mrcReader(str(path))["data"])
    if data.ndim == 2:
        data = data[None]
    return _Raw(data, px, _times(len(data), None), {"format": "MRC", "shape_xyz": [nx, ny, nz]})


def _tiff_pixel_size(tif: Any) -> tuple[tuple[float, float] | None, str]:
    """Calibration of a TIFF and where it came from; None when there is none."""
    page = tif.pages[0]
    tags = page.tags
    if tif.is_imagej and tif.imagej_metadata:
        unit = tif.imagej_metadata.get("unit")
        if unit and "XResolution" in tags and "YResolution" in tags:
            xr, yr = tags["XResolution"].value, tags["YResolution"].value
            if xr[0] > 0 and yr[0] > 0:  # resolution is pixels per unit
                return _pixel_size([yr[1] / yr[0], xr[1] / xr[0]], [unit, unit]), "ImageJ"
        return None, "ImageJ (uncalibrated)"
    if tif.is_ome and tif.ome_metadata:
        found = re.search(r"<Pixels[^>]*>", tif.ome_metadata)
        if found:
            attrs = dict(re.findall(r'(\w+)="([^"]*)"', found.group(0)))
            if "PhysicalSizeX" in attrs and "PhysicalSizeY" in attrs:
                ux = attrs.get("PhysicalSizeXUnit", "µm")
                uy = attrs.get("PhysicalSizeYUnit", "µm")
                sizes = [float(attrs["PhysicalSizeY"]), float(attrs["PhysicalSizeX"])]
                return _pixel_size(sizes, [uy, ux]), "OME"
        return None, "OME (uncalibrated)"
    if getattr(tif, "is_fei", False) and tif.fei_metadata:
        scan = tif.fei_metadata.get("Scan", {})
        if scan.get("PixelWidth") and scan.get("PixelHeight"):
            return _pixel_size([scan["PixelHeight"], scan["PixelWidth"]], ["m", "m"]), "FEI"
    # Plain TIFF: dots per inch are a print setting, not a calibration. Centimetre resolution
    # is taken only when it gives a microscopic pixel (< 1 µm), as some instruments write it.
    if "ResolutionUnit" in tags and int(tags["ResolutionUnit"].value) == 3:
        xr, yr = tags["XResolution"].value, tags["YResolution"].value
        if xr[0] > 0 and yr[0] > 0:
            px = _pixel_size([yr[1] / yr[0] * 1e-2, xr[1] / xr[0] * 1e-2], ["m", "m"])
            if px is not None and max(px) < 1000.0:
                return px, "TIFF resolution (cm)"
    return None, "none"


def _to_gray(data: np.ndarray, path: Path) -> np.ndarray:
    """Luminance of RGB(A) images (figures, screenshots); other data unchanged."""
    if data.ndim >= 3 and data.shape[-1] in (3, 4):
        rgb = data[..., :3].astype(np.float32)
        return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return data


def _load_tiff(path: Path) -> _Raw:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        same = [s for s in tif.series if s.shape == series.shape and s.dtype == series.dtype]
        # Pages appended one by one (growing stacks) form one series each: join them.
        data = np.stack([s.asarray() for s in same]) if len(same) > 1 else series.asarray()
        px, origin = _tiff_pixel_size(tif)
        stamp = tif.pages[0].tags.get("DateTime")
        dt = _parse_datetime(str(stamp.value), ("%Y:%m:%d %H:%M:%S",)) if stamp else None
    if axes.endswith("S"):
        data = _to_gray(data, path)
    if data.ndim < 2 or min(data.shape[-2:]) < 2:
        raise NotAnImageError(path, f"1-D data of shape {data.shape}, not an image")
    data = data.reshape(-1, *data.shape[-2:])
    return _Raw(data, px, _times(len(data), _posix(dt)), {"format": "TIFF", "calibration": origin})


def _load_raster(path: Path) -> _Raw:
    import imageio.v3 as iio

    data = _to_gray(np.asarray(iio.imread(path)), path)
    if data.ndim != 2:
        raise NotAnImageError(path, f"unexpected raster shape {data.shape}")
    return _Raw(data[None], None, [None], {"format": path.suffix[1:].upper()})


_LOADERS = {
    ".dm3": _load_dm,
    ".dm4": _load_dm,
    ".ser": _load_ser,
    ".emi": _load_emi,
    ".emd": _load_emd,
    ".h5": _load_emd,
    ".hdf5": _load_emd,
    ".mrc": _load_mrc,
    ".mrcs": _load_mrc,
    ".tif": _load_tiff,
    ".tiff": _load_tiff,
    ".png": _load_raster,
    ".jpg": _load_raster,
    ".jpeg": _load_raster,
}


def _load(path: Path) -> _Raw:
    if not path.is_file():
        raise ReadError(path, "no such file" if not path.exists() else "not a regular file")
    suffix = path.suffix.lower()
    if suffix not in _LOADERS:
        raise UnsupportedFormatError(path, f"unsupported file type '{suffix or path.name}'")
    check_complete(path, growing_ok=True)  # the valid part of a growing SER series is data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ncempy/tifffile chatter; errors still raise
            raw = _LOADERS[suffix](path)
    except ReadError:
        raise
    except Exception as exc:  # any library failure on a structurally complete file
        msg = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise IncompleteFileError(path, f"corrupt or unreadable: {msg}") from exc
    if np.iscomplexobj(raw.data):
        raise NotAnImageError(path, "complex-valued data (FFT or exit wave), not an image")
    return raw


def read_frames(path: str | Path) -> list[Frame]:
    """Read one file into a list of frames (one for an image, n for a stack).

    Parameters
    ----------
    path : path-like
        A supported microscope file.

    Returns
    -------
    list of Frame
        float32 (height, width) arrays with ``pixel_size_nm`` as (y, x) or None, ``index``
        counted from 0 within the file, ``time_s`` (POSIX seconds) where the file records it.

    Raises
    ------
    ReadError
        `IncompleteFileError` (truncated, being written, corrupt), `NotAnImageError`
        (spectrum, diffraction, 4-D), `UnsupportedFormatError`; the message names the file.
    """
    path = Path(path)
    raw = _load(path)
    n = len(raw.data)
    return [
        Frame(
            data=np.ascontiguousarray(raw.data[k], dtype=np.float32),
            pixel_size_nm=raw.pixel_size_nm,
            index=k,
            time_s=raw.time_s[k],
            source=str(path) if n == 1 else f"{path}#{k}",
            meta={**raw.meta, "dtype": str(raw.data.dtype)},
        )
        for k in range(n)
    ]


def natural_key(path: str | Path) -> list[Any]:
    """Sort key that orders 'frame_2' before 'frame_10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", Path(path).name)]


def read_series(inputs: Sequence[str | Path]) -> list[Frame]:
    """Frames of a series given as files, stacks and/or folders, renumbered from 0.

    Folders contribute their supported files (not ``.emi`` companions) in natural name order;
    explicit files keep the order given.
    """
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = [
                p
                for p in item.iterdir()
                if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and p.suffix != ".emi"
            ]
            if not found:
                raise ReadError(item, "folder holds no supported image files")
            paths.extend(sorted(found, key=natural_key))
        else:
            paths.append(item)
    frames: list[Frame] = []
    for path in paths:
        for frame in read_frames(path):
            frames.append(
                Frame(
                    frame.data,
                    frame.pixel_size_nm,
                    len(frames),
                    frame.time_s,
                    frame.source,
                    frame.meta,
                )
            )
    return frames


@dataclass
class FileInfo:
    """What nptrack sees in a file (the `nptrack info` record)."""

    file: str
    kind: str  # "image" | "stack" | "refused"
    reason: str | None
    frames: int
    height: int | None
    width: int | None
    dtype: str | None
    pixel_size_nm: list[float] | None
    complete: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the field order of the CLI contract."""
        return asdict(self)

    def describe(self) -> str:
        """One human-readable line."""
        if self.kind == "refused":
            return f"{self.file}: refused: {self.reason}"
        px = (
            "pixel size unknown"
            if self.pixel_size_nm is None
            else f"pixel size {self.pixel_size_nm[0]:.6g} x {self.pixel_size_nm[1]:.6g} nm (y, x)"
        )
        return (
            f"{self.file}: {self.kind}, {self.frames} frame(s) of {self.height} x {self.width} px "
            f"(height x width), {self.dtype}, {px}"
        )


def probe(path: str | Path) -> FileInfo:
    """Describe a file without raising: kind, frames, shape, dtype, pixel size, completeness."""
    path = Path(path)
    complete = is_complete(path)
    try:
        raw = _load(path)
    except ReadError as exc:
        return FileInfo(str(path), "refused", exc.reason, 0, None, None, None, None, complete)
    n, h, w = raw.data.shape
    px = None if raw.pixel_size_nm is None else [raw.pixel_size_nm[0], raw.pixel_size_nm[1]]
    kind = "stack" if n > 1 else "image"
    return FileInfo(str(path), kind, None, n, h, w, str(raw.data.dtype), px, complete)
