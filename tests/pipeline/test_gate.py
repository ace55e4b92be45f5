"""The register step waits for its frame's U-Net: `nptrack.pipeline.gate`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from nptrack.config import load_config
from nptrack.frames import Frame
from nptrack.io.read import read_frames
from nptrack.pipeline import session
from nptrack.pipeline.gate import GatedSegmenter, ModelGate
from nptrack.simulate.write import write_sequence


def _waiter(gate: ModelGate) -> tuple[threading.Thread, list[bool]]:
    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(gate.wait_turn()))
    thread.start()
    return thread, outcome


def test_a_turn_comes_after_the_frames_model_run() -> None:
    gate = ModelGate(timeout_s=30.0)
    thread, outcome = _waiter(gate)
    thread.join(0.2)
    assert thread.is_alive()  # no model run yet
    with gate.model_run():
        thread.join(0.2)
        assert thread.is_alive()  # the run has begun, not ended
    thread.join(5.0)
    assert outcome == [True]


def test_a_later_run_begun_means_the_turns_run_ended() -> None:
    gate = ModelGate(timeout_s=30.0)
    with gate.model_run():
        pass
    with gate.model_run():  # the worker is on the next frame already: no wait for it
        assert gate.wait_turn() is True
        thread, outcome = _waiter(gate)  # the second frame's turn waits for this run
        thread.join(0.2)
        assert thread.is_alive()
    thread.join(5.0)
    assert outcome == [True]


def test_a_run_that_raises_ends_too() -> None:
    gate = ModelGate(timeout_s=30.0)
    with pytest.raises(ValueError), gate.model_run():
        raise ValueError("bad frame")
    assert gate.started == 1
    assert gate.wait_turn() is True


def test_a_time_out_resynchronises_the_turns() -> None:
    gate = ModelGate(timeout_s=0.05)
    assert gate.wait_turn() is False  # a frame whose model never ran
    with gate.model_run():
        pass
    # the next frame's turn is the run just made, not one still to come
    gate.timeout_s = 30.0
    assert gate.wait_turn() is True


class _Segmenter:
    threshold = 0.4

    def predict(self, image: np.ndarray, **kwargs: object) -> np.ndarray:
        return image * 2

    def predict_maps(self, image: np.ndarray, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        return image * 2, image * 3


def test_the_gated_segmenter_is_the_segmenter_counted() -> None:
    gate = ModelGate()
    gated = GatedSegmenter(_Segmenter(), gate)
    assert gated.threshold == 0.4
    np.testing.assert_array_equal(gated.predict(np.ones(3), contrast="auto"), np.full(3, 2.0))
    assert gate.started == 1
    _, centres = gated.predict_maps(np.ones(3), contrast="auto")  # a model with centres
    np.testing.assert_array_equal(centres, np.full(3, 3.0))
    assert gate.started == 2


class _RecordingGate(ModelGate):
    made: ClassVar[list[_RecordingGate]] = []

    def __init__(self) -> None:
        super().__init__(timeout_s=60.0)
        self.turns: list[tuple[bool, int]] = []  # (outcome, model runs begun then)
        _RecordingGate.made.append(self)

    def wait_turn(self) -> bool:
        ok = super().wait_turn()
        self.turns.append((ok, self.started))
        return ok


@pytest.fixture
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[Frame]:
    out = tmp_path_factory.mktemp("series")
    write_sequence(out, config="table1", frames=3, seed=2, progress=False)
    return [read_frames(p)[0] for p in sorted((out / "frames").glob("*.tif"))]


def _run(frames: list[Frame], tmp_path: Path, *sets: str, workers: int | None = None) -> None:
    def source(deliver, stop):  # type: ignore[no-untyped-def]
        for f in frames:
            deliver(f)

    session.run_session(
        source,
        tmp_path / "session",
        config=load_config(None, list(sets)),
        command="track",
        background_reoptimize=False,
        workers=workers,
    )


def test_a_session_registers_each_frame_after_its_u_net(
    frames: list[Frame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _RecordingGate.made.clear()
    monkeypatch.setattr(session, "ModelGate", _RecordingGate)
    _run(frames, tmp_path)
    (gate,) = _RecordingGate.made
    # every wait was ended by a model run, none timed out; frame k's after run k + 1 began
    assert [ok for ok, _ in gate.turns] == [True] * len(frames)
    assert all(begun >= k + 1 for k, (_, begun) in enumerate(gate.turns))


def test_no_gate_when_switched_off_or_with_two_workers(
    frames: list[Frame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _RecordingGate.made.clear()
    monkeypatch.setattr(session, "ModelGate", _RecordingGate)
    _run(frames[:1], tmp_path / "off", "pipeline.register_after_model=false")
    _run(frames[:1], tmp_path / "two", workers=2)
    assert _RecordingGate.made == []
