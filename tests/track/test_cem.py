"""Global CEM on small synthetic scenes: fusion, crossing, birth and vanishing recovered."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from nptrack.config import TrackConfig
from nptrack.evaluate.mot import evaluate
from nptrack.track import (
    Event,
    TrackTable,
    initial_solution,
    params_from_config,
    solution_to_table,
    track_detections,
)
from tests.track import Scene, make_scene

CFG = TrackConfig()


def _score(scene: Scene, tracks: TrackTable, events: Sequence[Event] = ()) -> dict[str, float]:
    truth_ev = [{"frame": f, "type": t, "track_ids": i} for f, t, i in scene.events]
    return evaluate(scene.truth, tracks.as_columns(), truth_events=truth_ev, events=list(events))


def _near(events: Sequence[Event], kind: str, frame: int, tol: int = 1) -> bool:
    return any(e.type == kind and abs(e.frame - frame) <= tol for e in events)


@pytest.mark.parametrize("seed", [1, 2])
def test_fusion_birth_and_vanishing_recovered(seed: int) -> None:
    sc = make_scene(seed=seed, crossing=False)
    res = track_detections(sc.dets, config=CFG)
    r = _score(sc, res.tracks, res.events)
    assert r["mota"] >= 99.0 and r["idsw"] == 0
    assert r["fusion_precision"] == 1.0 and r["fusion_recall"] == 1.0
    truth = {t: f for f, t, _ in sc.events}
    assert _near(res.events, "birth", truth["birth"], tol=2)
    assert _near(res.events, "death", truth["death"], tol=2)
    assert _near(res.events, "exit", truth["exit"], tol=2)
    (fusion,) = [e for e in res.events if e.type == "fusion"]
    assert fusion.detail["mass_conserved"] and fusion.detail["grows"]


@pytest.mark.parametrize("seed", [4, 5])
def test_crossing_on_two_surfaces_keeps_identities(seed: int) -> None:
    sc = make_scene(seed=seed, fusions=0, birth=False, vanish=False, exit=False)
    res = track_detections(sc.dets, config=CFG)
    r = _score(sc, res.tracks, res.events)
    assert r["idsw"] == 0 and r["fn"] <= 2
    assert not [e for e in res.events if e.type == "fusion"]
    assert _near(res.events, "crossing", sc.events[0][0], tol=6)


def test_better_than_the_initial_linker() -> None:
    sc = make_scene(seed=3)
    p = params_from_config(CFG, sc.dets)
    base = _score(sc, solution_to_table(initial_solution(sc.dets, p), sc.dets))
    res = track_detections(sc.dets, config=CFG, params=p)
    cem = _score(sc, res.tracks, res.events)
    assert cem["mota"] > base["mota"] and cem["fp"] < base["fp"]
    # the measured mobility follows the simulated one (σ = 0.8 px at 3 nm)
    assert p.step_sigma_px * (3.0 / p.reference_diameter_nm) == pytest.approx(0.8, rel=0.25)


def test_constant_velocity_option_runs() -> None:
    sc = make_scene(seed=2, crossing=False, n_frames=16)
    res = track_detections(sc.dets, config=TrackConfig(motion="constant_velocity"))
    assert _score(sc, res.tracks)["mota"] > 90.0
    assert np.all(np.isfinite(res.tracks.x))
