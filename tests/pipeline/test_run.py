"""Pipeline plumbing with simple steps: order, completeness, failures, no hangs."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from nptrack.frames import Frame
from nptrack.pipeline.run import Steps, run_pipeline
from nptrack.pipeline.store import SessionStore


def blob_frames(n: int, shift_px: float = 2.0) -> list[Frame]:
    """Frames with k + 1 bright squares, shifted by `shift_px` per frame (known drift)."""
    frames = []
    for k in range(n):
        img = np.zeros((64, 64), np.float32)
        for j in range(k % 4 + 1):
            y0, x0 = 8 + 12 * j, 10 + int(shift_px * k)
            img[y0 : y0 + 4, x0 : x0 + 4] = 100.0
        frames.append(Frame(img, (0.5, 0.5), k, float(k), f"f{k}.tif"))
    return frames


def list_source(frames: list[Frame]):
    def source(deliver, stop) -> None:
        for f in frames:
            if stop.is_set():
                return
            deliver(f)

    return source


def shift_register(shift_px: float):
    def register(frame: Frame):
        m = np.array([[1.0, 0.0, -shift_px * frame.index], [0.0, 1.0, 0.0]])
        return m, 0.99, "ok"

    return register


def blob_detector(delay_s: float = 0.0, fail_on: int | None = None):
    def make():
        def detect(image: np.ndarray, pixel_size_nm):
            if delay_s:
                time.sleep(random.random() * delay_s)  # workers finish out of order
            if fail_on is not None and image.sum() == fail_on:
                raise ValueError("synthetic failure")
            labels, n = ndimage.label(image > 50)
            ys, xs = np.array(ndimage.center_of_mass(image, labels, range(1, n + 1))).T
            return {"det_id": np.arange(n), "x": xs, "y": ys, "diameter_nm": np.full(n, 2.0)}

        return detect

    return make


def test_frames_stored_in_order_with_mapped_coordinates(tmp_path: Path) -> None:
    frames = blob_frames(12)
    steps = Steps(shift_register(2.0), blob_detector(delay_s=0.02))
    with SessionStore(tmp_path) as store:
        summary = run_pipeline(list_source(frames), steps, store, workers=3, hwm=2)
        rows = store.frames()
        dets = store.detections()
    assert summary.frames_stored == 12 and summary.frames_failed == 0
    assert [r["frame"] for r in rows] == list(range(12))
    assert [r["source"] for r in rows] == [f"f{k}.tif" for k in range(12)]
    assert len(dets) == sum(k % 4 + 1 for k in range(12))
    # Registration undoes the drift: every blob maps back to x = 10 + 1.5 in frame 0.
    np.testing.assert_allclose([d["x"] for d in dets], 11.5, atol=1e-9)
    np.testing.assert_allclose([d["x_nm"] for d in dets], 11.5 * 0.5, atol=1e-9)


def test_failing_frame_is_marked_and_run_goes_on(tmp_path: Path) -> None:
    frames = blob_frames(6)
    bad_sum = float(frames[2].data.sum())
    steps = Steps(shift_register(0.0), blob_detector(fail_on=bad_sum))
    with SessionStore(tmp_path) as store:
        summary = run_pipeline(list_source(frames), steps, store, workers=2)
        status = [r["status"] for r in store.frames()]
    assert summary.frames_failed == 1 and status.count("failed") == 1
    assert status[2] == "failed" and len(status) == 6
    assert "synthetic failure" in summary.problems[0]


def test_crashing_stage_stops_run_with_error(tmp_path: Path) -> None:
    def make_detector():
        raise RuntimeError("no model here")

    steps = Steps(shift_register(0.0), make_detector)
    with SessionStore(tmp_path) as store:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="no model here"):
            run_pipeline(list_source(blob_frames(5)), steps, store)
        assert time.monotonic() - t0 < 30  # no hang


def test_source_stop_drains_in_flight_frames(tmp_path: Path) -> None:
    stop_taking = threading.Event()
    delivered = []

    def endless(deliver, stop) -> None:
        k = 0
        while not stop.is_set():
            frame = blob_frames(1)[0]
            deliver(Frame(frame.data, (0.5, 0.5), k, None, f"s{k}.tif"))
            delivered.append(k)
            k += 1
            if k == 8:
                stop_taking.set()

    steps = Steps(shift_register(0.0), blob_detector())
    with SessionStore(tmp_path) as store:
        summary = run_pipeline(endless, steps, store, source_stop=stop_taking)
        assert summary.frames_stored == len(delivered) == store.n_frames() == 8


def test_resume_continues_numbering(tmp_path: Path) -> None:
    frames = blob_frames(4)
    steps = Steps(shift_register(0.0), blob_detector())
    with SessionStore(tmp_path) as store:
        run_pipeline(list_source(frames[:2]), steps, store)
    with SessionStore(tmp_path) as store:
        done = store.sources()
        rest = [f for f in frames if f.source not in done]
        run_pipeline(list_source(rest), steps, store, first_index=store.n_frames())
        assert [r["frame"] for r in store.frames()] == [0, 1, 2, 3]
        assert [r["source"] for r in store.frames()] == [f.source for f in frames]


def test_detection_runs_while_the_frame_is_registered(tmp_path: Path) -> None:
    # Registration of each frame waits until that frame's detection has begun: with the two
    # in sequence (register, then detect) this run could not finish.
    started: dict[int, threading.Event] = {k: threading.Event() for k in range(6)}
    frames = blob_frames(6)
    shifted = shift_register(2.0)

    def register(frame: Frame):
        assert started[frame.index].wait(10.0), f"frame {frame.index} not detecting yet"
        return shifted(frame)

    def make():
        detect = blob_detector()()

        def first_mark(image: np.ndarray, pixel_size_nm):
            k = next(i for i, f in enumerate(frames) if np.array_equal(f.data, image))
            started[k].set()
            return detect(image, pixel_size_nm)

        return first_mark

    with SessionStore(tmp_path) as store:
        summary = run_pipeline(list_source(frames), Steps(register, make), store, workers=1)
        dets = store.detections()
        rows = store.frames()
    assert summary.frames_stored == 6 and summary.frames_failed == 0
    assert [r["status"] for r in rows] == ["ok"] * 6
    # the registration still reaches the detections (mapped at the track stage)
    np.testing.assert_allclose([d["x"] for d in dets], 11.5, atol=1e-9)
