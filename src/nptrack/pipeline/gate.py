"""Who uses the cores when: the register step waits for the U-Net of its frame.

On a 2-core machine the U-Net takes both cores (ONNX Runtime's intra-op threads) and the
measurement after it one. A frame goes to registration and to detection at the same time,
so the registration competed with the U-Net and made it slower, although only the U-Net
is on the latency path while the registration has time to spare: the tracker needs the
frame's matrix only once its particles are measured. With the gate the register step of a
frame starts when that frame's U-Net has run, beside the measurement.

The gate is a scheduling hint, never a condition of correctness: the wait has a time-out
after which the registration runs anyway, and the count of model runs is re-synchronised
then (a detector that failed before its model ran, or a detect worker several frames
behind, costs one time-out, not one per frame).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["GatedSegmenter", "ModelGate"]


class ModelGate:
    """Counts the model runs of one detect worker and lets a waiter in between them.

    Parameters
    ----------
    timeout_s : float
        Longest wait of `wait_turn`, in seconds.
    """

    def __init__(self, *, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._started = 0  # model runs begun
        self._running = 0  # model runs now in progress
        self._turns = 0  # `wait_turn` calls, re-synchronised on a time-out

    @property
    def started(self) -> int:
        """Model runs begun so far."""
        with self._cond:
            return self._started

    @contextmanager
    def model_run(self) -> Iterator[None]:
        """Mark a model run (its end is marked also when it raises)."""
        with self._cond:
            self._started += 1
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def wait_turn(self) -> bool:
        """Wait for the model run of the next frame to have begun and ended.

        Call once per frame, after the frame went to the detect worker. Returns False when
        the wait timed out; the frame's turn is then taken as given, and the count of turns
        is set back to the model runs begun.
        """
        with self._cond:
            self._turns += 1
            turn = self._turns
            # one worker runs its frames in order: a later run begun means this one ended
            if self._cond.wait_for(
                lambda: self._started > turn or (self._started == turn and not self._running),
                timeout=self.timeout_s,
            ):
                return True
            self._turns = self._started
            return False


class GatedSegmenter:
    """A segmenter whose `predict` / `predict_maps` runs are counted by a `ModelGate`; all else
    is the segmenter's."""

    def __init__(self, segmenter: Any, gate: ModelGate) -> None:
        self._segmenter, self._gate = segmenter, gate

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        with self._gate.model_run():
            return self._segmenter.predict(*args, **kwargs)

    def predict_maps(self, *args: Any, **kwargs: Any) -> Any:
        with self._gate.model_run():
            return self._segmenter.predict_maps(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._segmenter, name)
