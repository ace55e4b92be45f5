"""Run the live pipeline: stages as threads over inproc:// ZeroMQ, results into the store.

The processing steps are passed in (`Steps`), so the same plumbing runs the live `watch`,
the offline `track` and the `demo`, and tests can drive it with simple steps.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import zmq

from nptrack.frames import Frame
from nptrack.pipeline.messages import Message
from nptrack.pipeline.stages import (
    StageThread,
    frame_message,
    join_frame,
    pull_socket,
    push_socket,
    receive,
    send,
    serve_detect,
)
from nptrack.pipeline.store import SessionStore, frame_record

__all__ = ["RunSummary", "Source", "Steps", "Tracker", "run_pipeline"]

log = logging.getLogger(__name__)

# Detection columns published with each frame's status (plus the frame-0 thumbnail).
_PUBLISHED = ("x", "y", "diameter_nm", "intensity", "score", "border", "preview")

Source = Callable[[Callable[[Frame], None], threading.Event], None]


class Tracker(Protocol):
    """What the track stage needs from a tracker (it stores its own results).

    ``update`` is called once per stored frame, in frame order, failed frames included (with
    no detections) so that frame numbers stay aligned; ``finish`` once at the end of the
    source, returning the number of the final track version (or None).
    """

    def update(self, frame: int, detections: dict[str, np.ndarray]) -> None: ...

    def finish(self) -> int | None: ...


@dataclass
class Steps:
    """The processing steps of one run.

    Attributes
    ----------
    register : callable
        ``register(frame) -> (matrix (2, 3), reg_cc, status)``; called in frame order by the
        single register stage (it may keep state).
    make_detector : callable
        ``make_detector() -> detect``; one detector per worker (e.g. one ONNX session each).
        ``detect(image, pixel_size_nm) -> dict of columns`` (x, y in px of the acquired frame).
    tracker : Tracker or None
        Fed with each frame's detections in frame-0 coordinates, in frame order.
    """

    register: Callable[[Frame], tuple[np.ndarray, float, str]]
    make_detector: Callable[[], Callable[[np.ndarray, Any], dict[str, np.ndarray]]]
    tracker: Tracker | None = None


@dataclass
class RunSummary:
    """What a run did."""

    frames_stored: int = 0
    frames_failed: int = 0
    detections: int = 0
    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    track_version: int | None = None
    problems: list[str] = field(default_factory=list)


def run_pipeline(
    source: Source,
    steps: Steps,
    store: SessionStore,
    *,
    workers: int = 1,
    hwm: int = 4,
    first_index: int = 0,
    run_id: int | None = None,
    source_stop: threading.Event | None = None,
    on_frame: Callable[[dict[str, Any], RunSummary], None] | None = None,
    publish: Callable[[Message], None] | None = None,
    detect_addresses: tuple[str, str] | None = None,
) -> RunSummary:
    """Run source → register → detect ×`workers` → track + store until the source ends.

    Parameters
    ----------
    source : callable
        ``source(deliver, stop)`` calls ``deliver(frame)`` for each new frame in order and
        returns when there are no more (or when `stop` is set).
    steps : Steps
        Registration, detector factory, tracker.
    store : SessionStore
        Where each frame is committed (one transaction per frame).
    workers : int
        Detect workers (threads; ONNX Runtime releases the GIL).
    hwm : int
        High-water mark of every PUSH/PULL link (frames in flight per link).
    first_index : int
        Index of the first new frame (frames already in the store when resuming).
    source_stop : threading.Event, optional
        Set it (e.g. on Ctrl-C) to stop taking new frames; frames in flight are drained.
    on_frame : callable, optional
        Called in the track stage after each frame is stored (progress lines).
    publish : callable, optional
        Receives a 'status' message per stored frame (the dashboard PUB socket).
    detect_addresses : (str, str), optional
        Endpoints to bind instead of inproc:// for the register → detect PUSH and the
        detect → track PULL (e.g. ``tcp://0.0.0.0:5555``, ``tcp://0.0.0.0:5556``), so that
        `nptrack stage detect` processes on other hosts share the work; `workers` may be 0.

    Returns
    -------
    RunSummary
    """
    ctx = zmq.Context()
    tag = uuid.uuid4().hex[:8]
    addr = {k: f"inproc://nptrack-{tag}-{k}" for k in ("frames", "to_detect", "detections")}
    bind = dict(addr)
    if detect_addresses is not None:  # remote detect stages may join over tcp://
        bind["to_detect"], bind["detections"] = detect_addresses
        addr["to_detect"], addr["detections"] = (_local(a) for a in detect_addresses)
    abort = threading.Event()
    source_stop = source_stop or threading.Event()
    summary = RunSummary()
    t_start = time.monotonic()
    delivered = [first_index]  # frames handed to the chain so far (for the queue depth)

    # Bind every PULL end first: inproc requires bind before connect.
    reg_in = pull_socket(ctx, addr["frames"], bind=True, hwm=hwm)
    try:  # bound here, used by the register thread: a busy port is an error before anything runs
        reg_out = push_socket(ctx, bind["to_detect"], bind=True, hwm=hwm)
    except zmq.ZMQError as exc:
        reg_in.close(linger=0)
        ctx.term()
        raise RuntimeError(f"cannot bind {bind['to_detect']}: {exc}") from exc
    try:
        trk_in = pull_socket(ctx, bind["detections"], bind=True, hwm=hwm)
    except zmq.ZMQError as exc:
        reg_in.close(linger=0)
        reg_out.close(linger=0)
        ctx.term()
        raise RuntimeError(f"cannot bind {bind['detections']}: {exc}") from exc

    def source_body(stop: threading.Event) -> None:
        out = push_socket(ctx, addr["frames"], bind=False, hwm=hwm)
        sent = 0
        both = _Either(stop, source_stop)

        def deliver(frame: Frame) -> None:
            nonlocal sent
            fields = {
                "preview": publish is not None,
                "index": first_index + sent,
                "source": frame.source,
                "time_s": frame.time_s,
                "pixel_size_nm": frame.pixel_size_nm,
                "t_complete": time.time(),
            }
            if send(out, frame_message("frame", fields, frame.data), stop):
                sent += 1
                delivered[0] = first_index + sent

        try:
            source(deliver, both)
            send(out, Message("end", {"n_frames": sent}), stop)
            stop.wait()  # until the tracker is done: nothing queued here is dropped
        finally:
            out.close(linger=0)

    def register_body(stop: threading.Event) -> None:
        # Bound PUSH: each detect worker connects its own PULL (sockets are not thread-safe).
        out = reg_out
        # Connected now, long before END: a tcp:// connection is made asynchronously, and a
        # message queued on a socket closed with linger 0 before it connects is lost.
        end_out = push_socket(ctx, addr["detections"], bind=False, hwm=hwm)
        try:
            while (msg := receive(reg_in, stop)) is not None:
                if msg.kind == "end":
                    # Straight to the tracker, which counts frames: it does not matter how many
                    # detect workers (local or remote) there are or in which order they finish.
                    send(end_out, msg, stop)
                    # Keep both sockets open until the tracker is done: frames still queued
                    # for a remote detect stage would be lost by closing with linger 0.
                    stop.wait()
                    return
                f = msg.fields
                # detection does not wait for the registration: the frame goes on now and
                # its matrix follows it to the track stage (the two run at the same time)
                send(out, frame_message("frame", f, msg.arrays["image"]), stop)
                frame = Frame(
                    np.asarray(msg.arrays["image"]),
                    tuple(f["pixel_size_nm"]) if f["pixel_size_nm"] else None,
                    f["index"],
                    f["time_s"],
                    f["source"],
                )
                try:
                    matrix, cc, status = steps.register(frame)
                except Exception as exc:  # one bad frame must not stop the series
                    log.warning("registration of frame %s failed: %s", f["index"], exc)
                    matrix, cc, status = np.eye(2, 3), float("nan"), "failed"
                reg = {"index": f["index"], "matrix": np.asarray(matrix).tolist(), "reg_cc": cc}
                send(end_out, Message("registration", {**reg, "status": status}), stop)
        finally:
            out.close(linger=0)
            end_out.close(linger=0)

    def detect_body(stop: threading.Event) -> None:
        out = push_socket(ctx, addr["detections"], bind=False, hwm=hwm)
        det_in = pull_socket(ctx, addr["to_detect"], bind=False, hwm=hwm)
        try:
            serve_detect(det_in, out, steps.make_detector(), stop)
        finally:
            det_in.close(linger=0)
            out.close(linger=0)

    def track_body(stop: threading.Event) -> None:
        pending: dict[int, Message] = {}  # detections, by frame
        registered: dict[int, dict[str, Any]] = {}  # registrations, by frame
        expected: int | None = None
        next_index = first_index
        while expected is None or next_index < first_index + expected:
            msg = receive(trk_in, stop, 30.0)
            if msg is None:
                if stop.is_set():
                    return
                if workers == 0:
                    log.warning("no detections for 30 s: is an `nptrack stage detect` connected?")
                continue
            if msg.kind == "end":
                expected = msg.fields["n_frames"] if expected is None else expected
                continue
            if msg.kind == "registration":
                registered[msg.fields["index"]] = msg.fields
            else:
                pending[msg.fields["index"]] = msg  # workers may deliver out of order
            while next_index in pending and next_index in registered:
                _store_frame(*join_frame(pending.pop(next_index), registered.pop(next_index)))
                next_index += 1
        if steps.tracker is not None:
            summary.track_version = steps.tracker.finish()

    def _store_frame(f: dict[str, Any], dets: dict[str, np.ndarray]) -> None:
        row = frame_record(
            frame=f["index"], time_s=f["time_s"], source=f["source"],
            pixel_size_nm=f["pixel_size_nm"], matrix=f["matrix"], reg_cc=f["reg_cc"],
            status=f["status"], shape=(f["height"], f["width"]),
        )  # fmt: skip
        store.add_frame(row, dets, run_id=run_id)
        if steps.tracker is not None:
            steps.tracker.update(f["index"], {} if f["status"] == "failed" else dict(dets))
        summary.frames_stored += 1
        summary.frames_failed += f["status"] == "failed"
        summary.detections += len(dets.get("det_id", ()))
        latency = time.time() - f["t_complete"]
        summary.latencies_s.append(latency)
        if "error" in f:
            summary.problems.append(f"{f['source']}: {f['error']}")
        if on_frame is not None:
            on_frame(
                {**row, "n_detections": len(dets.get("det_id", ())), "latency_s": latency}, summary
            )
        if publish is not None:
            fields = {
                **row,
                "n_detections": len(dets.get("det_id", ())),
                "latency_s": latency,
                "detect_s": f.get("detect_s"),
                "queue_depth": delivered[0] - first_index - summary.frames_stored,
                "frames_stored": summary.frames_stored,
                "error": f.get("error"),
            }
            publish(Message("status", fields, {k: v for k, v in dets.items() if k in _PUBLISHED}))

    threads = [
        StageThread("source", source_body, abort),
        StageThread("register", register_body, abort),
        *(StageThread(f"detect-{k}", detect_body, abort) for k in range(workers)),
    ]
    tracker_thread = StageThread("track", track_body, abort)
    try:
        for t in [tracker_thread, *threads]:
            t.start()
        while tracker_thread.is_alive():
            tracker_thread.join(0.2)
    except KeyboardInterrupt:
        source_stop.set()  # stop taking frames; what is in flight drains and is stored
        while tracker_thread.is_alive():
            tracker_thread.join(0.2)
    finally:
        abort.set()  # the tracker is done (or failed): release the other stages
        errors = []
        for t in [tracker_thread, *threads]:
            t.join(10)
            if t.error is not None:
                errors.append(t)
        for sock in (reg_in, trk_in):
            sock.close(linger=0)
        ctx.term()
    summary.wall_s = time.monotonic() - t_start
    if errors:
        first = errors[0]
        raise RuntimeError(f"stage {first.stage} failed: {first.error}") from first.error
    return summary


def _local(address: str) -> str:
    """The address this process connects to for an endpoint it binds (any interface)."""
    return address.replace("://0.0.0.0:", "://127.0.0.1:").replace("://*:", "://127.0.0.1:")


class _Either:
    """An Event-like view that is set when either of two events is set."""

    def __init__(self, a: threading.Event, b: threading.Event) -> None:
        self._a, self._b = a, b

    def is_set(self) -> bool:
        return self._a.is_set() or self._b.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._b.wait(0.05)
        return True

    def set(self) -> None:
        self._b.set()
