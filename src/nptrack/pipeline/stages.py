"""Pipeline stages as threads connected by ZeroMQ PUSH/PULL sockets.

    source ──> register ──> detect ×N ──> track + store ──PUB──> dashboards
                   └──── registration ────────┘

Every stage is a `StageThread`: a loop with a stop event whose exception is kept and
re-raised in the main thread by `StageThread.join_and_raise` (LiberTEM-live style). A failure
while processing *one frame* does not stop the stage: the frame travels on marked ``failed``
with the reason, so the tracker's count of frames stays exact and the session goes on.

Detection does not need the registration (it runs on the frame as acquired and its points
are mapped afterwards), so the register stage hands each frame on to detection first and then
computes its registration, which goes straight to the track stage; there a frame is stored
once both its detections and its registration have arrived. The two run at the same time:
a frame's latency is the longer of them, not their sum.

The END message carries the number of frames sent and goes from register straight to the
track stage, which finishes when it has stored that many, whatever order the detect workers
delivered them in.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from nptrack.pipeline.messages import Message, decode, encode
from nptrack.register.warp import map_detections

__all__ = [
    "POLL_MS",
    "StageThread",
    "join_frame",
    "preview",
    "pull_socket",
    "push_socket",
    "serve_detect",
    "thumbnail",
    "warp_thumbnail",
]

log = logging.getLogger(__name__)
POLL_MS = 100  # how often a blocked stage looks at its stop event


def push_socket(ctx: zmq.Context, address: str, *, bind: bool, hwm: int) -> zmq.Socket:
    """A PUSH socket with a small send high-water mark (back-pressure) and linger 0."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(address) if bind else sock.connect(address)
    return sock


def pull_socket(ctx: zmq.Context, address: str, *, bind: bool, hwm: int) -> zmq.Socket:
    """A PULL socket with a small receive high-water mark and linger 0."""
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(address) if bind else sock.connect(address)
    return sock


def send(sock: zmq.Socket, message: Message, stop: threading.Event) -> bool:
    """Send, waiting on back-pressure but giving up when `stop` is set; False if stopped."""
    parts = encode(message)
    while not stop.is_set():
        if sock.poll(POLL_MS, zmq.POLLOUT):
            sock.send_multipart(parts, copy=False)
            return True
    return False


def receive(
    sock: zmq.Socket, stop: threading.Event, timeout_s: float | None = None
) -> Message | None:
    """The next message, or None once `stop` is set (or after `timeout_s` without one)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        if sock.poll(POLL_MS, zmq.POLLIN):
            return decode(sock.recv_multipart(copy=False))
    return None


class StageThread(threading.Thread):
    """A pipeline stage running `body(stop)` in a thread; errors are kept for the caller.

    Parameters
    ----------
    name : str
        Stage name for logs and errors.
    body : callable
        ``body(stop_event)``; returns when done or when the event is set.
    stop : threading.Event
        Shared by all stages of one run; set by any stage that fails.
    """

    def __init__(
        self, name: str, body: Callable[[threading.Event], None], stop: threading.Event
    ) -> None:
        super().__init__(name=f"nptrack-{name}", daemon=True)
        self.stage = name
        self._body = body
        self.stop_event = stop
        self.error: BaseException | None = None
        self.error_trace = ""

    def run(self) -> None:
        try:
            self._body(self.stop_event)
        except BaseException as exc:  # kept and re-raised in the main thread
            self.error = exc
            self.error_trace = traceback.format_exc()
            log.error("stage %s failed: %s", self.stage, exc)
            self.stop_event.set()  # stop the whole run cleanly rather than hang

    def join_and_raise(self, timeout: float | None = None) -> None:
        """Join; re-raise the stage's exception in the caller's thread."""
        self.join(timeout)
        if self.is_alive():
            raise RuntimeError(f"stage {self.stage} did not stop within {timeout} s")
        if self.error is not None:
            raise RuntimeError(f"stage {self.stage} failed: {self.error}") from self.error


def frame_message(kind: str, fields: dict[str, Any], image: np.ndarray | None) -> Message:
    """A message about one frame, optionally carrying its image."""
    arrays = {} if image is None else {"image": image}
    return Message(kind, {**fields, "t_sent": time.time()}, arrays)


PREVIEW_PX = 512  # long side of the frame thumbnails published for dashboards


def _thumbnail_scale(shape: tuple[int, int], max_px: int) -> float:
    return min(1.0, max_px / max(shape))


def thumbnail(image: np.ndarray, *, max_px: int = PREVIEW_PX) -> np.ndarray:
    """The frame as acquired, shrunk to a long side of at most `max_px` (float32)."""
    import cv2

    h, w = image.shape
    scale = _thumbnail_scale((h, w), max_px)
    small = np.ascontiguousarray(image, dtype=np.float32)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(small, size, interpolation=cv2.INTER_AREA)
    return small


def warp_thumbnail(
    small: np.ndarray,
    matrix: np.ndarray,
    frame_shape: tuple[int, int],
    *,
    max_px: int = PREVIEW_PX,
) -> np.ndarray:
    """A `thumbnail` of a frame of `frame_shape` resampled into frame-0 coordinates."""
    import cv2

    scale = _thumbnail_scale(frame_shape, max_px)
    m = np.array(matrix, dtype=np.float64)
    m[:, 2] *= scale  # same linear part, translation in thumbnail pixels
    size = (small.shape[1], small.shape[0])
    img = np.ascontiguousarray(small, dtype=np.float32)
    return cv2.warpAffine(img, m, size, flags=cv2.INTER_LINEAR, borderValue=float(np.nan))


def preview(image: np.ndarray, matrix: np.ndarray, *, max_px: int = PREVIEW_PX) -> np.ndarray:
    """A float32 thumbnail of the frame resampled into frame-0 coordinates.

    Its pixel (i, j) is frame-0 pixel (i, j) / scale with ``scale = min(1, max_px / max(H, W))``.
    """
    return warp_thumbnail(thumbnail(image, max_px=max_px), matrix, image.shape, max_px=max_px)


def serve_detect(
    det_in: zmq.Socket,
    out: zmq.Socket,
    detect: Callable[[np.ndarray, Any], dict[str, np.ndarray]],
    stop: threading.Event,
) -> int:
    """The detect stage: frames in, detections in the frame's own pixels out (`join_frame` maps
    them into frame-0 pixels with the frame's registration, at the track stage).

    Runs until `stop` is set (a detect worker keeps serving: frames of one run, or of many
    runs for a remote `nptrack stage detect`). A frame whose detection fails travels on
    marked failed with the reason. Returns the number of frames handled.
    """
    handled = 0
    while (msg := receive(det_in, stop)) is not None:
        f = dict(msg.fields)
        image = np.asarray(msg.arrays["image"])
        t0 = time.perf_counter()
        try:
            dets = detect(image, f["pixel_size_nm"])
        except Exception as exc:
            log.warning("detection in frame %s failed: %s", f["index"], exc)
            f["status"], f["error"] = "failed", str(exc)
            dets = {}
        f["detect_s"] = time.perf_counter() - t0
        f["height"], f["width"] = image.shape
        arrays = {k: np.asarray(v) for k, v in dets.items()}
        if f.get("preview"):  # for the dashboards (warped at the track stage); not stored
            arrays["preview"] = thumbnail(image)
        send(out, Message("detections", f, arrays), stop)
        handled += 1
    return handled


def join_frame(
    detections: Message, registration: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One frame's fields and detection columns in frame-0 pixels, from what the detect stage
    sent and the register stage's ``registration`` fields (matrix, reg_cc, status).

    The frame is ``failed`` when its detection failed, else it has its registration's status.
    """
    f = {**detections.fields, "matrix": registration["matrix"], "reg_cc": registration["reg_cc"]}
    f["status"] = "failed" if f.get("status") == "failed" else registration["status"]
    matrix = np.asarray(registration["matrix"], dtype=np.float64)
    dets = map_detections(dict(detections.arrays), matrix, f["pixel_size_nm"])
    if "preview" in dets:
        dets["preview"] = warp_thumbnail(dets["preview"], matrix, (f["height"], f["width"]))
    return f, dets
