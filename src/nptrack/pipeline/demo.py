"""`nptrack demo`: a simulated microscope writes a series while the live session runs on it.

The simulator (`nptrack.simulate`) writes its ground truth into ``OUT/``, then plays the
frames into ``OUT/frames/`` at a wall-clock cadence, in chunks (a watcher sees each file grow).
The live session watches that folder exactly as it would a real acquisition folder, with the
shipped model, into ``OUT/session/``. When the microscope is done and the folder has been
quiet, the session finishes (global re-optimisation, exports) and its tracks are scored
against the truth (``OUT/session/evaluation.json``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nptrack.config import Config
from nptrack.frames import Frame
from nptrack.io.export import write_json
from nptrack.pipeline.run import RunSummary
from nptrack.pipeline.session import SessionResult, run_session

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """A finished demo: the session and its scores against the simulator's truth."""

    out_dir: Path
    session: SessionResult
    scores: dict[str, float]
    read_errors: int  # files the watcher took for complete but could not read (should be 0)


def run_demo(
    out_dir: str | Path,
    *,
    config: Config,
    frames: int = 30,
    preset: str = "table1",
    seed: int = 0,
    cadence_s: float = 0.5,
    publish_address: str | None = None,
    on_frame: Callable[[dict[str, Any], RunSummary], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> DemoResult:
    """Simulate, watch, track, score.

    Parameters
    ----------
    out_dir : path-like
        Truth files, ``frames/`` and ``session/`` go here (must not hold a session yet).
    config : Config
        Session settings (the watcher's `stable_s` applies to the simulated files too).
    frames : int
        Frames to acquire.
    preset : str
        Simulator preset (``configs/sim/*.toml``) or a TOML path.
    seed : int
    cadence_s : float
        Wall-clock seconds between frames.
    """
    from nptrack.evaluate.mot import evaluate, read_events_csv, read_table_csv
    from nptrack.pipeline.watch import FolderWatcher
    from nptrack.simulate import SimulatedMicroscope, prepare_sequence

    out = Path(out_dir)
    if (out / "session" / "session.sqlite").exists():
        raise ValueError(f"{out}: already holds a demo session; choose another --out")
    say = on_status or (lambda msg: None)
    say(f"simulating {frames} frame(s) of '{preset}' (seed {seed}) into {out}")
    stream, options = prepare_sequence(
        out, config=preset, frames=frames, seed=seed, cadence_s=cadence_s, mode="chunks"
    )
    folder = out / "frames"
    folder.mkdir(parents=True, exist_ok=True)
    watcher = FolderWatcher(folder, config=config.watch)
    quiet_s = config.watch.stable_s + 1.0

    with SimulatedMicroscope(stream, folder, **options) as scope:

        def source(deliver: Callable[[Frame], None], stop_event: threading.Event) -> None:
            watcher.start_observer()
            try:
                quiet_since: float | None = None
                while not stop_event.is_set():
                    new = watcher.scan()
                    for frame in new:
                        deliver(frame)
                    if new or scope.running:
                        quiet_since = None
                    elif quiet_since is None:
                        quiet_since = time.monotonic()
                    elif time.monotonic() - quiet_since > quiet_s:
                        return  # the microscope is done and every file has been taken
                    stop_event.wait(0.1)
            finally:
                watcher.stop_observer()

        say(f"microscope writing into {folder} every {cadence_s:g} s; live session in "
            f"{out / 'session'}")  # fmt: skip
        session = run_session(
            source,
            out / "session",
            config=config,
            command="demo",
            publish_address=publish_address,
            on_frame=on_frame,
            on_status=on_status,
            stop=stop,
        )
    truth = read_table_csv(out / "ground_truth.csv")
    tracks = read_table_csv(out / "session" / "tracks.csv")
    scores = evaluate(
        truth,
        tracks,
        truth_events=read_events_csv(out / "events.csv"),
        events=read_events_csv(out / "session" / "events.csv"),
    )
    write_json(out / "session" / "evaluation.json", scores)
    return DemoResult(out, session, scores, watcher.read_errors)
