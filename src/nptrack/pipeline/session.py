"""Sessions: the real processing steps joined into the jobs behind `watch`, `track`, `reoptimize`.

A session folder holds ``session.sqlite`` (the store), ``anchor.npy`` (frame 0, the
registration anchor, so that a resumed session registers to the same frame) and the exports.
`run_session` is the one function behind the live and the offline commands: it resumes what
the store holds (frames already stored are skipped by the source, the registrar restarts from
the anchor and the last transform, the tracker replays the stored detections), runs the
pipeline until the source ends, then finishes (final global re-optimisation) and exports.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nptrack.config import Config
from nptrack.frames import Frame
from nptrack.pipeline.allocator import limit_malloc_arenas, numpy_hugepages
from nptrack.pipeline.export import export_session
from nptrack.pipeline.gate import GatedSegmenter, ModelGate
from nptrack.pipeline.messages import Message
from nptrack.pipeline.publish import Publisher
from nptrack.pipeline.run import RunSummary, Source, Steps, run_pipeline
from nptrack.pipeline.store import DETECTION_COLUMNS, SessionStore
from nptrack.pipeline.tracking import SessionTracker, tracker_input

__all__ = [
    "SessionError",
    "SessionResult",
    "calibrated",
    "make_detector_factory",
    "make_register_step",
    "reoptimize_session",
    "run_session",
    "serve_detect_stage",
    "stored_frames",
]

log = logging.getLogger(__name__)

ANCHOR_FILE = "anchor.npy"


class SessionError(ValueError):
    """A session cannot run or go on; the message is one line for the user."""


@dataclass
class SessionResult:
    """What a session run did."""

    session_dir: Path
    resumed_frames: int
    summary: RunSummary
    track_version: int | None
    exports: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# -- steps --------------------------------------------------------------------------------------
def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def make_register_step(
    config: Config, session_dir: Path, store: SessionStore, *, gate: ModelGate | None = None
) -> Callable[[Frame], tuple[np.ndarray, float, str]]:
    """The register step: a `Registrar` anchored on frame 0, resumed from the store.

    With a `gate`, each frame's registration waits for that frame's U-Net to have run
    (`nptrack.pipeline.gate`).
    """
    from nptrack.register import Registrar

    anchor_path = session_dir / ANCHOR_FILE
    rows = store.frames()
    if rows:
        if not anchor_path.is_file():
            raise SessionError(f"{session_dir}: session has frames but no {ANCHOR_FILE}")
        last = rows[-1]
        matrix = np.array(
            [[last["a11"], last["a12"], last["tx"]], [last["a21"], last["a22"], last["ty"]]]
        )
        registrar = Registrar(
            config=config.register,
            anchor=np.load(anchor_path),
            initial_matrix=matrix,
            start_index=len(rows),
        )
    else:
        registrar = Registrar(config=config.register)

    def register(frame: Frame) -> tuple[np.ndarray, float, str]:
        if gate is not None:
            gate.wait_turn()
        if frame.index == 0:
            _save_atomic(anchor_path, frame.data)  # before frame 0 can be stored
        result = registrar.update(frame.data)
        return result.matrix, float(result.cc), result.status

    return register


def make_detector_factory(
    config: Config, *, root: Path | None = None, gate: ModelGate | None = None
) -> Callable[[], Callable[[np.ndarray, Any], dict[str, np.ndarray]]]:
    """``make() -> detect``: one U-Net session per worker, then measurement of the particles.

    With a `gate` (one worker only), the U-Net runs are counted for the register step.
    """
    from nptrack.measure import centre_in_field
    from nptrack.measure.analyze import analyze_frame, find_model
    from nptrack.segment.infer import Segmenter

    from_root = {} if root is None else {"root": root}
    model = find_model(config.segment, **from_root)
    if model is None:
        raise SessionError(f"no U-Net model at {config.segment.model_path} (segment.model_path)")
    seg_cfg = config.segment.model_copy(update={"model_path": str(model)})

    def make() -> Callable[[np.ndarray, Any], dict[str, np.ndarray]]:
        segmenter = Segmenter.from_config(seg_cfg)
        if gate is not None:
            segmenter = GatedSegmenter(segmenter, gate)

        def detect(image: np.ndarray, pixel_size_nm: Any) -> dict[str, np.ndarray]:
            px = None if not pixel_size_nm else (float(pixel_size_nm[0]), float(pixel_size_nm[1]))
            frame = Frame(image, px)
            particles, _ = analyze_frame(
                frame, segmenter, config=config, contrast=config.segment.contrast
            )
            # Tracks follow particle centres inside the field (as the ground truth does): a
            # particle cut by the border with its centre outside is not in this frame yet.
            # Blobs under `min_detection_diameter_px` across are below the frame's resolution
            # (noise, support texture): not particles, so not counted or stored either.
            keep = centre_in_field(particles.labels)
            diameter_px = particles.columns.get("diameter_px")
            if diameter_px is not None:
                keep &= ~(np.asarray(diameter_px) < config.track.min_detection_diameter_px)
            cols = {k: v[keep] for k, v in particles.columns.items() if k in DETECTION_COLUMNS}
            cols["det_id"] = np.arange(int(keep.sum()), dtype=np.int64)
            return cols

        return detect

    return make


class _Tracker:
    """Creates the `SessionTracker` at the first frame (pixel size and field known then)."""

    def __init__(
        self,
        store: SessionStore,
        config: Config,
        *,
        background: bool,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.store, self.config, self.background = store, config, background
        self.say = say  # status lines of the final global re-optimisation
        self.tracker: SessionTracker | None = None
        self.on_version: Callable[[int, str], None] | None = None
        self.on_commit: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None] | None = None

    def _make(self) -> SessionTracker:
        first = self.store.frame_row(0)
        if first is None or not first.get("pixel_size_nm"):
            raise SessionError("frame 0 has no pixel size: the tracker needs one")
        self.tracker = SessionTracker(
            self.store,
            self.config.track,
            pixel_size_nm=first["pixel_size_nm"],
            frame_shape=(first["height"], first["width"]),
            background=self.background,
            on_version=self.on_version,
            on_commit=self.on_commit,
            on_progress=self.say,
        )
        return self.tracker

    def resume(self) -> int:
        """Replay the stored frames (a resumed session); frames replayed."""
        if self.store.n_frames() == 0:
            return 0
        return self._make().replay(stored_frames(self.store))

    def update(self, frame: int, detections: dict[str, np.ndarray]) -> None:
        (self.tracker or self._make()).update(frame, detections)

    def finish(self) -> int | None:
        return None if self.tracker is None else self.tracker.finish()

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()


def stored_frames(store: SessionStore) -> Iterable[tuple[int, dict[str, np.ndarray]]]:
    """(frame, detection columns) of every stored frame in order; failed frames are empty."""
    by_frame: dict[int, list[dict[str, Any]]] = {}
    for row in store.detections():
        by_frame.setdefault(row["frame"], []).append(row)
    for row in store.frames():
        k = row["frame"]
        dets = by_frame.get(k, []) if row["status"] != "failed" else []
        cols = {
            c: np.array([np.nan if d[c] is None else d[c] for d in dets], dtype=float)
            for c in ("x", "y", "diameter_nm", "intensity", "score")
        }
        cols["det_id"] = np.array([d["det_id"] for d in dets], dtype=np.int64)
        yield k, cols


def commit_message(rows: list[dict[str, Any]], events: list[dict[str, Any]]) -> Message:
    """The 'tracks' message of one online commit: its rows as arrays, its events as JSON."""
    cols = {
        "frame": np.array([r["frame"] for r in rows], dtype=np.int64),
        "track_id": np.array([r["track_id"] for r in rows], dtype=np.int64),
        **{
            c: np.array([r[c] for r in rows], dtype=np.float64)
            for c in ("x", "y", "diameter_nm", "intensity")
        },
    }
    frame = int(cols["frame"].max()) if len(rows) else None
    safe_events = json.loads(json.dumps(events, default=float))
    fields = {"version_kind": "online", "frame": frame, "events": safe_events}
    return Message("tracks", fields, cols)


# -- sources ------------------------------------------------------------------------------------
def files_source(inputs: Sequence[str | Path], *, skip: Iterable[str] = ()) -> Source:
    """Frames of files, stacks and folders (natural order), read one file at a time."""
    from nptrack.io.read import read_frames
    from nptrack.measure.analyze import expand_inputs

    try:
        paths = expand_inputs(inputs)
    except ValueError as exc:
        raise SessionError(str(exc)) from None
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise SessionError(f"{missing[0]}: no such file or folder")
    done = set(skip)

    def source(deliver: Callable[[Frame], None], stop: threading.Event) -> None:
        for path in paths:
            for frame in read_frames(path):
                if stop.is_set():
                    return
                if frame.source not in done:
                    deliver(frame)

    return source


def folder_source(
    folder: str | Path,
    *,
    config: Config,
    skip: Iterable[str] = (),
    idle_s: float | None = None,
    problems: list[str] | None = None,
) -> Source:
    """Frames of a folder being written by the microscope (the `FolderWatcher`)."""
    from nptrack.pipeline.watch import FolderWatcher

    watcher = FolderWatcher(folder, config=config.watch, already_taken=skip)

    def source(deliver: Callable[[Frame], None], stop: threading.Event) -> None:
        try:
            watcher.run(deliver, stop, idle_s=idle_s)
        finally:
            if problems is not None:
                problems.extend(f"{p.path}: {p.reason}" for p in watcher.problems)

    return source


# -- running ------------------------------------------------------------------------------------
def calibrated(source: Source, pixel_size_nm: float | None, *, required: bool = True) -> Source:
    """Give uncalibrated frames `pixel_size_nm`; without it, stop the session with a clear
    error (`required`) or pass them on uncalibrated."""

    def wrapped(deliver: Callable[[Frame], None], stop: threading.Event) -> None:
        def check(frame: Frame) -> None:
            if frame.pixel_size_nm is None and (pixel_size_nm is not None or required):
                if pixel_size_nm is None:
                    raise SessionError(
                        f"{frame.source}: no pixel size in the file; pass --pixel-size-nm"
                    )
                frame = Frame(
                    frame.data, (pixel_size_nm, pixel_size_nm), frame.index, frame.time_s,
                    frame.source, frame.meta,
                )  # fmt: skip
            deliver(frame)

        source(check, stop)

    return wrapped


def run_session(
    source: Source,
    session_dir: str | Path,
    *,
    config: Config,
    command: str,
    pixel_size_nm: float | None = None,
    background_reoptimize: bool = True,
    publish_address: str | None = None,
    export_formats: Sequence[str] = ("csv",),
    on_frame: Callable[[dict[str, Any], RunSummary], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    make_detector: Callable[[], Callable[[np.ndarray, Any], dict[str, np.ndarray]]] | None = None,
    detect_addresses: tuple[str, str] | None = None,
    workers: int | None = None,
) -> SessionResult:
    """Run (or resume) a session: source → register → detect → track + store, then export.

    Parameters
    ----------
    source : callable
        ``source(deliver, stop)``; frames already in the store must not be delivered again
        (the folder watcher is given the stored sources).
    session_dir : path-like
        Created if missing; an existing session is resumed.
    config : Config
    command : str
        Recorded in the store's run table.
    pixel_size_nm : float, optional
        For frames whose files carry no calibration.
    background_reoptimize : bool
        Global re-optimisation every ``track.reoptimize_every_frames`` frames in a worker
        process (live sessions); the final one always runs.
    publish_address : str, optional
        PUB socket for dashboards (None: no publishing).
    export_formats : sequence of {'csv', 'parquet', 'hdf5'}
    on_frame : callable, optional
        Called after each frame is stored (progress lines).
    on_status : callable, optional
        One-line messages (resume, re-optimisation, exports).
    stop : threading.Event, optional
        Set it to stop taking new frames; what is in flight is stored, then the run finishes.
    make_detector : callable, optional
        Detector factory (default: the U-Net of ``config.segment``).
    detect_addresses : (str, str), optional
        tcp:// endpoints to bind for remote detect stages (`nptrack stage detect`): frames
        out, detections in.
    workers : int, optional
        Local detect workers (default ``pipeline.detect_workers``; 0 with remote stages).
    """
    session_dir = Path(session_dir)
    # before the stage threads start: they would each take an arena of their own
    limit_malloc_arenas(config.pipeline.malloc_arenas)
    numpy_hugepages(config.pipeline.numpy_hugepages)
    say = on_status or (lambda msg: log.info(msg))
    store = SessionStore(session_dir)
    publisher = Publisher.open(publish_address, notify=say) if publish_address else None
    tracker = _Tracker(store, config, background=background_reoptimize, say=say)
    try:
        resumed = store.n_frames()
        run_id = store.start_run(command, config.model_dump(mode="json"))
        store.set_meta("config", config.model_dump(mode="json"))
        if resumed:
            say(f"resuming session {session_dir}: {resumed} frame(s) stored, replaying tracker")
            tracker.resume()
        if publisher is not None:
            tracker.on_version = lambda v, kind: publisher.send(
                Message("tracks", {"version": v, "version_kind": kind})
            )
            tracker.on_commit = lambda rows, events: publisher.send(commit_message(rows, events))
        n_workers = config.pipeline.detect_workers if workers is None else workers
        # One local U-Net worker: its frame's registration waits for it (`pipeline.gate`).
        gate = (
            ModelGate()
            if config.pipeline.register_after_model
            and make_detector is None
            and n_workers == 1
            and detect_addresses is None
            else None
        )
        steps = Steps(
            register=make_register_step(config, session_dir, store, gate=gate),
            make_detector=make_detector or make_detector_factory(config, gate=gate),
            tracker=tracker,
        )
        try:
            summary = run_pipeline(
                calibrated(source, pixel_size_nm),
                steps,
                store,
                workers=n_workers,
                detect_addresses=detect_addresses,
                hwm=config.pipeline.high_water_mark,
                first_index=resumed,
                run_id=run_id,
                source_stop=stop,
                on_frame=on_frame,
                publish=None if publisher is None else publisher.send,
            )
        except RuntimeError as exc:  # a stage failed: one line (the cause with --debug)
            cause = exc.__cause__
            raise SessionError(str(cause) if isinstance(cause, SessionError) else str(exc)) from exc
        say(f"stored {summary.frames_stored} new frame(s); exporting")
        exports = export_session(store, session_dir, formats=export_formats, summary=summary)
        return SessionResult(
            session_dir, resumed, summary, summary.track_version, exports, summary.problems
        )
    finally:
        tracker.close()
        if publisher is not None:
            publisher.close()
        store.close()


def serve_detect_stage(
    frames_address: str,
    detections_address: str,
    *,
    config: Config,
    stop: threading.Event,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """A detect stage in its own process (e.g. on a GPU host) for a session elsewhere.

    Connects a PULL to `frames_address` (the session's registered frames) and a PUSH to
    `detections_address` (its tracker) and serves until `stop` is set; returns the frames
    handled. The same code as the in-process workers (`serve_detect`).
    """
    import zmq

    from nptrack.pipeline.stages import pull_socket, push_socket, serve_detect

    hwm = config.pipeline.high_water_mark
    detect = make_detector_factory(config)()
    ctx = zmq.Context()
    det_in = pull_socket(ctx, frames_address, bind=False, hwm=hwm)
    out = push_socket(ctx, detections_address, bind=False, hwm=hwm)
    try:
        if on_ready is not None:
            on_ready(f"detect stage: frames from {frames_address}, results to "
                     f"{detections_address}")  # fmt: skip
        return serve_detect(det_in, out, detect, stop)
    finally:
        det_in.close(linger=0)
        out.close(linger=0)
        ctx.term()


def reoptimize_session(
    session_dir: str | Path,
    *,
    config: Config | None = None,
    export_formats: Sequence[str] = ("csv",),
    on_status: Callable[[str], None] | None = None,
) -> tuple[int, list[Path]]:
    """Global re-optimisation of a stored session: a new track version, exports rewritten.

    `on_status` receives one-line progress messages every few seconds (the online replay,
    then each start of the global CEM) and the time taken; it runs for minutes on a long
    session.

    Returns
    -------
    (version, exported paths)
    """
    from nptrack.pipeline.tracking import (
        feed_online,
        frame_field,
        global_tracks,
        stack_fields,
        unfrozen,
    )
    from nptrack.track import OnlineTracker, Progress

    session_dir = Path(session_dir)
    if not (session_dir / "session.sqlite").is_file():
        raise SessionError(f"{session_dir}: no session.sqlite (not a session folder)")
    with SessionStore(session_dir) as store:
        if config is None:
            config = Config.model_validate(store.get_meta("config", {}))
        first = store.frame_row(0)
        if first is None:
            raise SessionError(f"{session_dir}: the session holds no frames")
        if not first.get("pixel_size_nm"):
            raise SessionError(f"{session_dir}: frame 0 has no pixel size")
        frames = list(stored_frames(store))
        keep = {
            "min_score": config.track.min_detection_score,
            "min_diameter_nm": config.track.min_detection_diameter_px * first["pixel_size_nm"],
        }
        shape = (first["height"], first["width"])
        fields = [frame_field(r) for r in store.frames()]
        # The online tracker replayed (as a resumed session does): the same second start
        # as the session's own global re-optimisations (`SessionTracker.warm_start`).
        t0 = time.monotonic()
        online = OnlineTracker(
            pixel_size_nm=first["pixel_size_nm"], frame_shape=shape, config=config.track
        )
        parts = []
        n = len(frames)
        ticker = None if on_status is None else Progress(on_status, "replaying the online tracker")
        for (k, dets), field in zip(frames, fields, strict=True):
            cols = tracker_input(dets, **keep)
            parts.append({"frame": np.full(len(cols["x"]), k, dtype=np.int64), **cols})
            feed_online(online, cols, field)
            if ticker is not None:
                # the whole replay at the pace so far (Progress subtracts what has run)
                ticker.expected_s = ticker.elapsed() * n / (k + 1)
                ticker.tick(lambda k=k: f"frame {k + 1} of {n}")
        online.finish()
        columns = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
        rows, events = global_tracks(
            columns,
            pixel_size_nm=first["pixel_size_nm"],
            frame_shape=shape,
            n_frames=len(frames),
            config=config.track.model_dump(),
            fields=stack_fields(fields),
            init=unfrozen(online.solution),
            progress=on_status,
        )
        version = store.add_tracks(rows, events, kind="global", last_frame=len(frames) - 1)
        took = round(time.monotonic() - t0, 3)
        store.set_meta("reoptimize_s", took)
        if on_status is not None:
            on_status(f"global re-optimisation of {n} frames took {took:.0f} s")
        exports = export_session(store, session_dir, formats=export_formats)
    return version, exports
