"""The tasks of `nptrack batch` that run on Dask workers: pure functions of their arguments.

One series is processed as

    register_series(files)              one task, the frames in order (the Registrar is
                                        incremental: frame t starts from frame t-1's map and
                                        may be chained through the last registered frame)
    detect_part(file, part, parts) ×M   U-Net + measurement on the *acquired* frames, in
                                        parallel, independent of the registration
    finish_series(...)                  one task: detections mapped into frame-0 pixels with
                                        the registration, stored, tracked (online + final
                                        global CEM), exported, reported

which is what `run_session` does for ``nptrack track``, step for step (`store_frame` mirrors
the pipeline's track stage, which maps the detections with `map_detections`), so the tracks are
identical to a serial run. Each worker process keeps one detector (one ONNX Runtime session)
per configuration and thread, and the last stack file it read.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nptrack.config import Config
from nptrack.frames import Frame
from nptrack.pipeline.session import SessionError

__all__ = [
    "MARKER_FILE",
    "FrameDetections",
    "SeriesRegistration",
    "detect_part",
    "finish_series",
    "frame_count",
    "register_series",
]

#: Completion marker of a series folder: ``{"status": "complete" | "failed", ...}``.
MARKER_FILE = "batch.json"

_local = threading.local()
_file_lock = threading.Lock()
_last_file: dict[str, Any] = {}  # one multi-frame file per worker process


@dataclass
class SeriesRegistration:
    """Registration of a whole series (one row per frame, in series order)."""

    files: list[str]
    frames_per_file: list[int]
    rows: list[dict[str, Any]]  # frame, time_s, source, pixel_size_nm, matrix, reg_cc, status
    anchor: np.ndarray | None  # frame 0 (saved as anchor.npy, as a session does)
    t_start: float = field(default_factory=time.time)


@dataclass
class FrameDetections:
    """Detections of one acquired frame (pixels of that frame), or why detection failed."""

    index_in_file: int
    columns: dict[str, np.ndarray]
    shape: tuple[int, int]
    error: str | None = None
    detect_s: float = 0.0


# -- worker-side helpers ------------------------------------------------------------------------
def _worker_threads() -> int:
    """Threads of the Dask worker running this task (1 outside a worker)."""
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 1


def _read(path: str, *, cache: bool) -> list[Frame]:
    """The frames of one file; a multi-frame file is kept for the next task (parts of it)."""
    from nptrack.io.read import read_frames

    st = Path(path).stat()
    key = (path, st.st_mtime_ns, st.st_size)
    with _file_lock:
        if cache and _last_file.get("key") == key:
            return _last_file["frames"]
        frames = read_frames(path)
        if cache and len(frames) > 1:
            _last_file.clear()
            _last_file.update(key=key, frames=frames)
        return frames


def calibrated(frame: Frame, pixel_size_nm: float | None) -> Frame:
    """`frame` with a pixel size: its own, else `pixel_size_nm` (as `nptrack track` does)."""
    if frame.pixel_size_nm is not None:
        return frame
    if pixel_size_nm is None:
        raise SessionError(f"{frame.source}: no pixel size in the file; pass --pixel-size-nm")
    return Frame(
        frame.data, (pixel_size_nm, pixel_size_nm), frame.index, frame.time_s, frame.source,
        frame.meta,
    )  # fmt: skip


def _detector(config: Config) -> Callable[[np.ndarray, Any], dict[str, np.ndarray]]:
    """This worker thread's detector for `config` (one ONNX Runtime session, made once)."""
    from nptrack.pipeline.session import make_detector_factory

    cache = getattr(_local, "detectors", None)
    if cache is None:
        cache = _local.detectors = {}
    key = config.model_dump_json()
    if key not in cache:
        import cv2

        threads = _worker_threads()
        cv2.setNumThreads(threads)
        seg = config.segment
        # One ONNX Runtime thread per worker thread unless set: no oversubscription.
        cfg = config.model_copy(
            update={"segment": seg.model_copy(
                update={"intra_op_threads": seg.intra_op_threads or threads})}
        )  # fmt: skip
        cache[key] = make_detector_factory(cfg)()
    return cache[key]


# -- tasks --------------------------------------------------------------------------------------
def register_series(
    files: Sequence[str], *, config: Config, pixel_size_nm: float | None = None
) -> SeriesRegistration:
    """Register every frame of a series to its frame 0, in order (the session's `Registrar`).

    Raises
    ------
    SessionError, ReadError
        A frame without pixel size (and no `pixel_size_nm`), an unreadable file.
    """
    from nptrack.register import Registrar

    start = time.time()
    registrar = Registrar(config=config.register)
    rows: list[dict[str, Any]] = []
    counts: list[int] = []
    anchor = None
    for path in files:
        frames = _read(path, cache=False)
        counts.append(len(frames))
        for frame in frames:
            frame = calibrated(frame, pixel_size_nm)
            if anchor is None:
                anchor = frame.data
            try:  # as the pipeline's register stage: one bad frame does not stop the series
                result = registrar.update(frame.data)
                matrix, cc, status = result.matrix, float(result.cc), result.status
            except Exception:
                matrix, cc, status = np.eye(2, 3), float("nan"), "failed"
            rows.append(
                {
                    "frame": len(rows),
                    "time_s": frame.time_s,
                    "source": frame.source,
                    "pixel_size_nm": list(frame.pixel_size_nm),  # type: ignore[arg-type]
                    "matrix": np.asarray(matrix, dtype=np.float64),
                    "reg_cc": cc,
                    "status": status,
                }
            )
    return SeriesRegistration(list(files), counts, rows, anchor, start)


def frame_count(registration: SeriesRegistration) -> int:
    """Frames of a registered series (for the progress bar)."""
    return len(registration.rows)


def detect_part(
    path: str,
    *,
    part: int,
    parts: int,
    config: Config,
    pixel_size_nm: float | None = None,
) -> list[FrameDetections]:
    """Detect the particles of the frames ``k ≡ part (mod parts)`` of one file.

    Detections are in pixels of the acquired frame (mapped to frame 0 by `finish_series`).
    A frame whose detection fails is returned with its error, as the pipeline marks it.
    """
    detect = _detector(config)
    out = []
    for frame in _read(path, cache=parts > 1)[part::parts]:
        frame = calibrated(frame, pixel_size_nm)
        t0 = time.perf_counter()
        try:
            cols, error = detect(frame.data, list(frame.pixel_size_nm)), None  # type: ignore[arg-type]
        except Exception as exc:
            cols, error = {}, str(exc)
        shape = (int(frame.data.shape[0]), int(frame.data.shape[1]))
        out.append(FrameDetections(frame.index, cols, shape, error, time.perf_counter() - t0))
    return out


def store_frame(
    store: Any,
    tracker: Any,
    reg: dict[str, Any],
    det: FrameDetections,
    *,
    run_id: int,
) -> tuple[int, str | None]:
    """Store one frame and feed the tracker, as the pipeline's track stage does.

    Returns (detections stored, problem or None).
    """
    from nptrack.pipeline.store import frame_record
    from nptrack.register.warp import map_detections

    matrix, px = reg["matrix"], reg["pixel_size_nm"]
    status = "failed" if det.error is not None else reg["status"]
    # into frame-0 pixels, as the pipeline's track stage does
    dets = map_detections(dict(det.columns), np.asarray(matrix), px)
    dets = {k: np.asarray(v) for k, v in dets.items()}
    row = frame_record(
        frame=reg["frame"], time_s=reg["time_s"], source=reg["source"], pixel_size_nm=px,
        matrix=matrix, reg_cc=reg["reg_cc"], status=status, shape=det.shape,
    )  # fmt: skip
    store.add_frame(row, dets, run_id=run_id)
    if tracker is not None:
        tracker.update(reg["frame"], {} if status == "failed" else dets)
    problem = None if det.error is None else f"{reg['source']}: {det.error}"
    return len(dets.get("det_id", ())), problem


def _write_report(series_dir: Path, frame_interval_s: float | None) -> str | None:
    """`nptrack report` on the series when the report module is installed; a problem or None."""
    try:
        from nptrack.analysis.report import write_report
    except ImportError:
        return "report skipped: nptrack.analysis.report is not available"
    try:
        write_report(series_dir, frame_interval_s=frame_interval_s)
    except Exception as exc:  # the series is tracked and exported: the report is extra
        return f"report failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


def finish_series(
    name: str,
    series_dir: str,
    registration: SeriesRegistration,
    parts: Sequence[Sequence[Sequence[FrameDetections]]],
    *,
    config: Config,
    inputs: Sequence[str] = (),
    export_formats: Sequence[str] = ("csv",),
    report: bool = True,
    frame_interval_s: float | None = None,
) -> dict[str, Any]:
    """Store, track, export (and report) one series from its registration and detections.

    Parameters
    ----------
    name : str
        Series name (its folder under the batch output).
    series_dir : str
        Written anew (a half-written folder of an interrupted run is replaced).
    registration : SeriesRegistration
    parts : sequence (per file) of sequences (per part) of FrameDetections lists
    config : Config
    inputs : sequence of str
        What the series was made of (recorded in the marker).
    export_formats : sequence of {'csv', 'parquet', 'hdf5'}
    report : bool
        Also write ``report/index.html`` (when `nptrack.analysis.report` is installed).
    frame_interval_s : float, optional
        Time between frames for the report and the rates (files without acquisition times).

    Returns
    -------
    dict
        The series' row of ``summary.csv`` (also written to ``batch.json``).
    """
    from nptrack.pipeline.export import export_session
    from nptrack.pipeline.run import RunSummary
    from nptrack.pipeline.session import ANCHOR_FILE, _save_atomic
    from nptrack.pipeline.store import SessionStore
    from nptrack.pipeline.tracking import SessionTracker

    out = Path(series_dir)
    if out.exists():  # a retried task, or the rest of an interrupted run
        shutil.rmtree(out)
    out.mkdir(parents=True)
    by_frame: list[FrameDetections] = []
    for path, n, file_parts in zip(
        registration.files, registration.frames_per_file, parts, strict=True
    ):
        found = {d.index_in_file: d for p in file_parts for d in p}
        if sorted(found) != list(range(n)):
            raise SessionError(f"{path}: changed while the batch read it ({n} frames, then "
                               f"{len(found)})")  # fmt: skip
        by_frame += [found[k] for k in range(n)]
    if not by_frame:
        raise SessionError("the series holds no frames")
    summary = RunSummary()
    if registration.anchor is not None:
        _save_atomic(out / ANCHOR_FILE, registration.anchor)
    store = SessionStore(out)
    tracker = None
    try:
        run_id = store.start_run("batch", config.model_dump(mode="json"))
        store.set_meta("config", config.model_dump(mode="json"))
        first = registration.rows[0]
        if not first["pixel_size_nm"]:
            raise SessionError("frame 0 has no pixel size: the tracker needs one")
        px0 = first["pixel_size_nm"]
        tracker = SessionTracker(
            store,
            config.track,
            pixel_size_nm=float(np.sqrt(px0[0] * px0[1])),
            frame_shape=by_frame[0].shape,
            background=False,
        )
        for reg, det in zip(registration.rows, by_frame, strict=True):
            n_det, problem = store_frame(store, tracker, reg, det, run_id=run_id)
            summary.frames_stored += 1
            summary.frames_failed += det.error is not None or reg["status"] == "failed"
            summary.detections += n_det
            if problem:
                summary.problems.append(problem)
        summary.track_version = tracker.finish()
        summary.wall_s = time.time() - registration.t_start
        export_session(store, out, formats=export_formats, summary=summary)
    finally:
        if tracker is not None:
            tracker.close()
        store.close()
    notes = list(summary.problems)
    if report:
        problem = _write_report(out, frame_interval_s)
        if problem:
            notes.append(problem)
    from nptrack.batch_summary import series_row

    row = series_row(out, name=name, status="complete", notes=notes,
                     frame_interval_s=frame_interval_s)  # fmt: skip
    row["wall_s"] = round(summary.wall_s, 2)
    marker = {"status": "complete", "series": name, "inputs": list(inputs), "row": row,
              "config": config.model_dump(mode="json")}  # fmt: skip
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2, default=str))
    return row
