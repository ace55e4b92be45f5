"""A simulated microscope: writes frames into a folder the way acquisition software does.

Three ways of writing, each a trap for a naive watcher:

- ``chunks``: each frame is its own file, written in several pieces over time under its final
  name (a watcher sees the file appear, grow, and only then become complete);
- ``rename``: each frame is written under a temporary name (``<name>.part``) and renamed when
  complete (the final name never holds a partial file);
- ``stack``: one file grows frame by frame (a TIFF with appended pages, an MRC whose header
  counts the sections written so far, a Berkeley EMD whose dataset is extended).

Formats: TIFF (ImageJ calibration in µm; growing stacks use centimetre resolution tags, which
ImageJ-style files cannot carry while they grow), Berkeley EMD (via ncempy, dims in nm) and MRC
(via ncempy, voxel size in Å). The pixel size is stored in every file.

`play` is a generator (one step per write, for tests that look between writes);
`SimulatedMicroscope` runs it on a worker thread with a stop event, LiberTEM-live style: errors
of the worker are re-raised in the caller by `join`, `stop` or leaving the ``with`` block.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["SimulatedMicroscope", "WriteStep", "encode_frame", "play"]

Format = Literal["tif", "emd", "mrc"]
Mode = Literal["chunks", "rename", "stack"]


@dataclass(frozen=True)
class WriteStep:
    """What the microscope just did.

    Attributes
    ----------
    path : Path
        The file written to (the temporary name while a ``rename`` file is being written).
    index : int
        Frame index, from 0.
    part, parts : int
        Piece just written, of how many (``parts`` for the last one).
    done : bool
        After this step, `path` is a complete file (for a stack: holding frames 0..index).
    """

    path: Path
    index: int
    part: int
    parts: int
    done: bool


def _as_dtype(image: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint16":
        return np.clip(np.rint(image), 0, 65535).astype(np.uint16)
    return np.ascontiguousarray(image, dtype=np.float32)


def encode_frame(image: np.ndarray, *, pixel_size_nm: float, format: Format) -> bytes:
    """The bytes of a one-frame file of `image` with its pixel size.

    Parameters
    ----------
    image : ndarray, shape (height, width)
        float32 or uint16.
    pixel_size_nm : float
    format : {'tif', 'emd', 'mrc'}
    """
    if format == "tif":
        import tifffile

        buf = io.BytesIO()
        per_um = 1.0 / (pixel_size_nm * 1e-3)  # ImageJ: resolution is pixels per unit
        tifffile.imwrite(
            buf,
            image,
            imagej=True,
            resolution=(per_um, per_um),
            metadata={"unit": "um", "axes": "YX"},
        )
        return buf.getvalue()
    if format == "emd":
        import ncempy.io.emd as emd

        buf = io.BytesIO()
        f = emd.fileEMD(buf, readonly=False)  # adds the version attrs and standard groups
        h, w = image.shape
        dims = (
            (np.arange(h, dtype=np.float64) * pixel_size_nm, "y", "nm"),
            (np.arange(w, dtype=np.float64) * pixel_size_nm, "x", "nm"),
        )
        f.put_emdgroup("frame", image, dims)
        f.file_hdl.close()
        return buf.getvalue()
    if format == "mrc":
        import ncempy.io.mrc as mrc

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "frame.mrc"
            angstrom = pixel_size_nm * 10.0
            mrc.mrcWriter(str(path), image[None], (angstrom, angstrom, angstrom))
            return path.read_bytes()
    raise ValueError(f"unknown format {format!r} (tif, emd, mrc)")


def _pieces(data: bytes, parts: int) -> list[bytes]:
    edges = np.linspace(0, len(data), max(parts, 1) + 1).astype(int)
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def _write_pieces(
    path: Path,
    pieces: list[bytes],
    index: int,
    pause_s: float,
    stop: threading.Event,
    *,
    append: bool = False,
    final: bool = True,
) -> Iterator[WriteStep]:
    """Write `pieces` one by one (flushed), yielding after each; the last is `done` if final."""
    with path.open("ab" if append else "wb") as fh:
        for k, piece in enumerate(pieces):
            fh.write(piece)
            fh.flush()
            if k < len(pieces) - 1:
                yield WriteStep(path, index, k + 1, len(pieces), False)
                if pause_s > 0 and stop.wait(pause_s):
                    return
    if final:
        yield WriteStep(path, index, len(pieces), len(pieces), True)


def _mrc_set_sections(path: Path, n: int, angstrom: float) -> None:
    """Update the section count of a growing MRC stack (nz, mz, cell z), as SerialEM does."""
    with path.open("r+b") as fh:
        fh.seek(8)
        fh.write(struct.pack("<i", n))
        fh.seek(36)
        fh.write(struct.pack("<i", n))
        fh.seek(48)
        fh.write(struct.pack("<f", angstrom * n))


def _emd_append(path: Path, image: np.ndarray, pixel_size_nm: float, time_s: float) -> None:
    """Create or extend a Berkeley EMD stack (frames, y, x); dims in s and nm."""
    import h5py
    import ncempy.io.emd as emd

    if not path.exists():
        f = emd.fileEMD(path, readonly=False)
        h, w = image.shape
        dims = (
            (np.array([time_s]), "time", "s"),
            (np.arange(h, dtype=np.float64) * pixel_size_nm, "y", "nm"),
            (np.arange(w, dtype=np.float64) * pixel_size_nm, "x", "nm"),
        )
        f.put_emdgroup("stack", image[None], dims, maxshape=(None, h, w), chunks=(1, h, w))
        f.file_hdl.close()
        return
    with h5py.File(path, "a") as h5:
        grp = h5["data/stack"]
        n = grp["data"].shape[0]
        grp["data"].resize(n + 1, axis=0)
        grp["data"][n] = image
        times = np.append(grp["dim1"][()], time_s)
        attrs = dict(grp["dim1"].attrs)
        del grp["dim1"]
        grp.create_dataset("dim1", data=times)
        grp["dim1"].attrs.update(attrs)


def play(
    frames: Iterable[np.ndarray],
    folder: str | Path,
    *,
    pixel_size_nm: float,
    format: Format = "tif",
    mode: Mode = "chunks",
    cadence_s: float = 0.0,
    chunks: int = 4,
    chunk_interval_s: float = 0.0,
    frame_interval_s: float = 1.0,
    dtype: Literal["float32", "uint16"] = "float32",
    prefix: str = "frame_",
    stop: threading.Event | None = None,
) -> Iterator[WriteStep]:
    """Write `frames` into `folder` like acquisition software; yield after every write.

    Parameters
    ----------
    frames : iterable of ndarray, shape (height, width)
        May be lazy (frames rendered while playing).
    folder : path-like
        Created if missing.
    pixel_size_nm : float
        Stored in every file.
    format : {'tif', 'emd', 'mrc'}
    mode : {'chunks', 'rename', 'stack'}
        See the module docstring. Files are ``<prefix><index:04d>.<format>``; a stack is
        ``<prefix>stack.<format>``.
    cadence_s : float
        Wall-clock seconds between the starts of successive frames (0: as fast as possible).
    chunks : int
        Pieces each file (or each MRC section) is written in.
    chunk_interval_s : float
        Wall-clock pause between pieces.
    frame_interval_s : float
        Physical time between frames, stored as the time axis of EMD stacks.
    dtype : {'float32', 'uint16'}
        Stored pixel type (uint16: rounded and clipped counts, as cameras write).
    prefix : str
    stop : threading.Event, optional
        Set it to end playing at the next write boundary.

    Yields
    ------
    WriteStep
    """
    import time

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stop = stop or threading.Event()
    if format not in ("tif", "emd", "mrc"):
        raise ValueError(f"unknown format {format!r} (tif, emd, mrc)")
    if mode not in ("chunks", "rename", "stack"):
        raise ValueError(f"unknown mode {mode!r} (chunks, rename, stack)")
    start = time.monotonic()
    stack = folder / f"{prefix}stack.{format}"
    for index, frame in enumerate(frames):
        wait = start + index * cadence_s - time.monotonic()
        if stop.wait(wait) if wait > 0 else stop.is_set():
            return
        image = _as_dtype(np.asarray(frame), dtype)
        name = folder / f"{prefix}{index:04d}.{format}"
        if mode == "stack" and index == 0:
            stack.unlink(missing_ok=True)  # a new acquisition, not more frames of an old one
        if mode == "chunks":
            data = encode_frame(image, pixel_size_nm=pixel_size_nm, format=format)
            yield from _write_pieces(name, _pieces(data, chunks), index, chunk_interval_s, stop)
        elif mode == "rename":
            data = encode_frame(image, pixel_size_nm=pixel_size_nm, format=format)
            temp = name.with_name(name.name + ".part")
            yield from _write_pieces(
                temp, _pieces(data, chunks), index, chunk_interval_s, stop, final=False
            )
            if stop.is_set():
                return
            os.replace(temp, name)
            yield WriteStep(name, index, chunks, chunks, True)
        elif format == "tif":
            import tifffile

            per_cm = 1.0 / (pixel_size_nm * 1e-7)
            tifffile.imwrite(
                stack,
                image,
                append=index > 0,
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
            )
            yield WriteStep(stack, index, 1, 1, True)
        elif format == "mrc":
            data = encode_frame(image, pixel_size_nm=pixel_size_nm, format="mrc")
            body = data if index == 0 else data[1024:]  # later sections: data only
            yield from _write_pieces(
                stack,
                _pieces(body, chunks),
                index,
                chunk_interval_s,
                stop,
                append=index > 0,
                final=False,
            )
            if stop.is_set():
                return
            _mrc_set_sections(stack, index + 1, pixel_size_nm * 10.0)
            yield WriteStep(stack, index, chunks, chunks, True)
        else:
            _emd_append(stack, image, pixel_size_nm, index * frame_interval_s)
            yield WriteStep(stack, index, 1, 1, True)
        if stop.is_set():
            return


class SimulatedMicroscope:
    """Play frames into a folder on a worker thread.

    Parameters
    ----------
    frames : iterable of ndarray
        Consumed on the worker thread (lazy rendering happens there too).
    folder : path-like
    **options
        Keyword arguments of `play` (pixel_size_nm is required).

    Examples
    --------
    >>> with SimulatedMicroscope(frames, folder, pixel_size_nm=0.1, cadence_s=1.0) as scope:
    ...     scope.wait_for(5, timeout=30)   # five complete frames on disk
    """

    def __init__(self, frames: Iterable[np.ndarray], folder: str | Path, **options: object):
        self.folder = Path(folder)
        self._frames, self._options = frames, options
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._done: list[WriteStep] = []
        self._finished = False
        self._thread = threading.Thread(target=self._run, name="nptrack-microscope", daemon=True)

    def _run(self) -> None:
        try:
            for step in play(self._frames, self.folder, stop=self._stop, **self._options):  # type: ignore[arg-type]
                if step.done:
                    with self._cond:
                        self._done.append(step)
                        self._cond.notify_all()
        except BaseException as exc:  # handed to the caller in join()
            self._error = exc
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def start(self) -> SimulatedMicroscope:
        self._thread.start()
        return self

    @property
    def written(self) -> list[WriteStep]:
        """Completed writes so far (one per frame)."""
        with self._cond:
            return list(self._done)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait_for(self, n_frames: int, timeout: float | None = None) -> bool:
        """Block until `n_frames` frames are complete on disk (or the player ended)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._done) >= n_frames or self._finished, timeout)
            ok = len(self._done) >= n_frames
        self._raise()
        return ok

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the end of playing; re-raise an error of the worker. True if ended."""
        self._thread.join(timeout)
        self._raise()
        return not self._thread.is_alive()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the worker to stop at the next write boundary and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self.join(timeout)
        else:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def __enter__(self) -> SimulatedMicroscope:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.stop()
        else:  # do not mask the caller's exception with the worker's
            self._stop.set()
            self._thread.join(10.0)
