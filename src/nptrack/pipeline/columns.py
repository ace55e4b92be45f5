"""Atomic-column mode of the live pipeline: ``nptrack watch FOLDER --mode columns``.

The plumbing is the particle sessions' (`run_pipeline`: watcher → register → detect ×N →
track + store, one transaction per frame, resume after a crash); the steps differ:

- register: none. At atomic resolution a phase correlation can lock onto the lattice one
  period off; the column tracker removes each frame's drift itself (median displacement of
  the matched columns), which is all that column identities need.
- detect: `columns_of_frame` per frame, the step of `nptrack columns` (the column U-Net finds
  the columns, statistical atom counting decides their occupancy); one ONNX Runtime session
  per worker.
- track: `ColumnTracker` gives every column a stable id (nearest position after drift removal)
  and stores it beside the column in ``atom_columns``.

Exports: ``columns.csv`` (the columns of `nptrack columns`' table, with source for image),
``frames.csv``, ``occupancy_time.csv`` / ``.png`` and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nptrack.frames import Frame
from nptrack.io.export import write_tables
from nptrack.pipeline.run import RunSummary, Source, Steps, run_pipeline
from nptrack.pipeline.session import calibrated
from nptrack.pipeline.store import FRAME_COLUMNS, SessionStore
from nptrack.segment.columns_frame import OccupancyMethod
from nptrack.segment.columns_infer import ColumnLinker

__all__ = [
    "ColumnSessionResult",
    "ColumnTracker",
    "export_columns",
    "make_column_detector_factory",
    "run_column_session",
]

log = logging.getLogger(__name__)

Detect = Callable[[np.ndarray, Any], dict[str, np.ndarray]]
DEFAULT_COLUMN_MODEL = Path(__file__).resolve().parents[3] / "models" / "nptrack-columns-v1.onnx"
_MODE_KEY = "mode"
_STORED = ("x", "y", "occupancy", "confidence", "occupancy_net", "occupancy_count", "intensity")


@dataclass
class ColumnSessionResult:
    """What a column session run did."""

    session_dir: Path
    resumed_frames: int
    summary: RunSummary
    columns_stored: int
    columns_tracked: int
    exports: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def make_column_detector_factory(
    model_path: str | Path,
    *,
    method: OccupancyMethod = "combined",
    intra_op_threads: int | None = None,
    providers: str = "auto",
    on_assumed_pixel_size: Callable[[str], None] | None = None,
) -> tuple[Callable[[], Detect], dict[str, Any]]:
    """``make() -> detect`` for column frames, and the model's metadata.

    ``detect(image, pixel_size_nm)`` runs `columns_of_frame` (the step of `nptrack columns`)
    and returns det_id, x, y (px of the frame), occupancy (atoms, as `method` says),
    confidence, occupancy_net, occupancy_count, intensity and pixel_size_A per column. A
    frame without a pixel size is run at the model's own (said once through
    `on_assumed_pixel_size`).
    """
    from nptrack.segment.columns_frame import columns_of_frame
    from nptrack.segment.columns_infer import ColumnSegmenter

    probe = ColumnSegmenter.from_path(model_path, providers=providers, intra_op_threads=1)
    metadata = dict(probe.metadata)
    model_px_A = probe.pixel_size_A
    spacing_A = float(metadata.get("column_spacing_A", 3.0))
    del probe
    said = threading.Event()

    def make() -> Detect:
        seg = ColumnSegmenter.from_path(
            model_path, providers=providers, intra_op_threads=intra_op_threads
        )

        def detect(image: np.ndarray, pixel_size_nm: Any) -> dict[str, np.ndarray]:
            if pixel_size_nm:
                # As `nptrack columns`: the mean of the two axes.
                px_A = 10.0 * float(np.mean(pixel_size_nm))
            else:
                px_A = model_px_A
                if not said.is_set() and on_assumed_pixel_size is not None:
                    said.set()
                    on_assumed_pixel_size(
                        f"frames without a pixel size: assumed the model's {model_px_A:g} Å/px "
                        "(give --pixel-size-nm)"
                    )
            cols, _ = columns_of_frame(
                seg, np.asarray(image), pixel_size_A=px_A, spacing_A=spacing_A, method=method
            )
            n = len(cols["x"])
            out = {k: np.asarray(cols[k]) for k in _STORED}
            out["det_id"] = np.arange(n, dtype=np.int64)
            out["pixel_size_A"] = np.full(n, px_A)
            return out

        return detect

    return make, metadata


class ColumnTracker:
    """The track stage of a column session (`nptrack.pipeline.run.Tracker`).

    Parameters
    ----------
    store : SessionStore
    column_spacing_A : float
        Typical column spacing (model metadata); a column moves less than half of it
        between frames once the drift is removed.
    """

    def __init__(self, store: SessionStore, *, column_spacing_A: float) -> None:
        self.store = store
        self.max_distance_A = 0.5 * column_spacing_A
        self.linker = ColumnLinker()  # the rule of `nptrack columns`

    def _assign(self, x: np.ndarray, y: np.ndarray, pixel_size_A: float) -> np.ndarray:
        return self.linker.assign(
            np.column_stack([x, y]), max_distance_px=self.max_distance_A / pixel_size_A
        )

    def update(self, frame: int, detections: dict[str, np.ndarray]) -> None:
        """Give the columns of `frame` their ids and store them."""
        if not len(detections.get("det_id", ())):
            return
        px_A = float(np.asarray(detections["pixel_size_A"])[0])
        ids = self._assign(detections["x"], detections["y"], px_A)
        self.store.set_column_ids(frame, detections["det_id"], ids)

    def resume(self, *, default_pixel_size_A: float) -> int:
        """Replay the stored columns (a resumed session) so that the ids go on as before.

        The linker is deterministic, so replaying gives the stored ids again; they are only
        written for a frame stored without them (a crash between the two commits).
        Returns the number of frames replayed.
        """
        px_nm = {r["frame"]: r["pixel_size_nm"] for r in self.store.frames()}
        by_frame: dict[int, list[dict[str, Any]]] = {}
        for r in self.store.atom_columns():
            by_frame.setdefault(r["frame"], []).append(r)
        for frame in sorted(by_frame):
            group = by_frame[frame]
            px_A = 10.0 * px_nm[frame] if px_nm.get(frame) else default_pixel_size_A
            ids = self._assign(
                np.array([r["x"] for r in group]), np.array([r["y"] for r in group]), px_A
            )
            if any(r["column_id"] is None for r in group):
                self.store.set_column_ids(frame, [r["det_id"] for r in group], ids)
        return len(by_frame)

    def finish(self) -> int | None:
        """No track versions in column mode."""
        return None


def _register(frame: Frame) -> tuple[np.ndarray, float, str]:
    return np.eye(2, 3), float("nan"), "ok"


def export_columns(store: SessionStore, out_dir: str | Path, *, model: str) -> list[Path]:
    """columns.csv, frames.csv, occupancy_time.csv / .png and summary.json of a column session."""
    from nptrack.io.columns import COLUMN_TABLE, formatted_rows, write_occupancy_time

    out = Path(out_dir)
    frames = store.frames()
    source = {f["frame"]: f["source"] for f in frames}
    rows = store.atom_columns()
    table = [{**r, "source": source.get(r["frame"], "")} for r in formatted_rows(rows)]
    keys = (*COLUMN_TABLE, "source")
    paths = write_tables({"columns": (keys, table), "frames": (FRAME_COLUMNS, frames)}, out)
    tracked = [r for r in rows if r["column_id"] is not None]
    changed = 0
    if len(frames) > 1 and tracked:
        changed = write_occupancy_time(tracked, max(f["frame"] for f in frames) + 1, out)
        paths += [out / "occupancy_time.csv", out / "occupancy_time.png"]
    summary = {
        "mode": "columns",
        "counts": {
            "frames": len(frames),
            "columns": len(rows),
            "columns_tracked": len({r["column_id"] for r in tracked}),
            "columns_changed": changed,
        },
        "model": model,
        "settings": store.get_meta("config", {}),
    }
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    return [*paths, path]


def run_column_session(
    source: Source,
    session_dir: str | Path,
    *,
    model_path: str | Path = DEFAULT_COLUMN_MODEL,
    method: OccupancyMethod = "combined",
    command: str = "watch --mode columns",
    settings: dict[str, Any] | None = None,
    pixel_size_nm: float | None = None,
    workers: int = 1,
    intra_op_threads: int | None = None,
    providers: str = "auto",
    hwm: int = 4,
    on_frame: Callable[[dict[str, Any], RunSummary], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> ColumnSessionResult:
    """Run (or resume) an atomic-column session: frames in, column tables out.

    Parameters
    ----------
    source : callable
        ``source(deliver, stop)``; frames already stored must not be delivered again.
    session_dir : path-like
        Created if missing; an existing column session is resumed (a particle session is
        refused).
    model_path : path-like
        The column model (ONNX, ``nptrack.task = "columns"``).
    method : {"combined", "count", "net", "shape"}
        How occupancy is decided (as ``nptrack columns --occupancy``; "shape" adds the 3D
        shape prior of the model's crystal in each detect worker).
    settings : dict, optional
        Recorded in the store (the command's options).
    pixel_size_nm : float, optional
        For frames without a calibration (else the model's pixel size is assumed).
    workers : int
        Detect workers, one ONNX Runtime session each.
    on_frame, on_status, stop
        As for `nptrack.pipeline.session.run_session`.
    """
    session_dir = Path(session_dir)
    say = on_status or (lambda msg: log.info(msg))
    problems: list[str] = []

    def assumed(msg: str) -> None:
        problems.append(msg)
        say(msg)

    make, metadata = make_column_detector_factory(
        model_path,
        method=method,
        intra_op_threads=intra_op_threads,
        providers=providers,
        on_assumed_pixel_size=assumed,
    )
    store = SessionStore(session_dir)
    try:
        resumed = store.n_frames()
        mode = store.get_meta(_MODE_KEY, "particles" if resumed else None)
        if mode not in (None, "columns"):
            raise ValueError(
                f"{session_dir}: a {mode} session; use another --session for column mode"
            )
        store.set_meta(_MODE_KEY, "columns")
        recorded = {"model": str(model_path), "occupancy": method, **(settings or {})}
        store.set_meta("config", recorded)
        run_id = store.start_run(command, recorded)
        tracker = ColumnTracker(
            store, column_spacing_A=float(metadata.get("column_spacing_A", 3.0))
        )
        if resumed:
            say(f"resuming column session {session_dir}: {resumed} frame(s) stored")
            tracker.resume(default_pixel_size_A=float(metadata.get("pixel_size_A", 0.3)))
        steps = Steps(register=_register, make_detector=make, tracker=tracker)
        summary = run_pipeline(
            calibrated(source, pixel_size_nm, required=False),
            steps,
            store,
            workers=workers,
            hwm=hwm,
            first_index=resumed,
            run_id=run_id,
            source_stop=stop,
            on_frame=on_frame,
        )
        say(f"stored {summary.frames_stored} new frame(s); exporting")
        exports = export_columns(store, session_dir, model=str(model_path))
        rows = store.atom_columns()
        return ColumnSessionResult(
            session_dir,
            resumed,
            summary,
            len(rows),
            len({r["column_id"] for r in rows if r["column_id"] is not None}),
            exports,
            [*problems, *summary.problems],
        )
    finally:
        store.close()
