"""tools/bench.py: the long run plays its rendered frames so that particles move continuously."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import bench  # noqa: E402


def test_pingpong_playback_never_jumps_and_cycle_does() -> None:
    ping = [bench.playback_index(k, 6, "pingpong") for k in range(23)]
    assert ping[:12] == [0, 1, 2, 3, 4, 5, 4, 3, 2, 1, 0, 1]
    assert set(ping) == set(range(6))
    assert all(abs(b - a) == 1 for a, b in itertools.pairwise(ping))  # one step
    cyc = [bench.playback_index(k, 6, "cycle") for k in range(13)]
    assert cyc == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0]  # 5 -> 0: every particle jumps
    assert [bench.playback_index(k, 1, "pingpong") for k in range(3)] == [0, 0, 0]
    with pytest.raises(ValueError, match="unknown playback"):
        bench.playback_index(0, 6, "shuffle")


def test_stand_in_detector_sleeps_and_finds_nothing() -> None:
    import time

    import numpy as np

    detect = bench.sleeping_detector(0.05)()
    t0 = time.perf_counter()
    assert detect(np.zeros((8, 8), np.float32), None) == {}
    assert time.perf_counter() - t0 >= 0.05


def test_fixed_cadence_and_repeated_latency_runs(tmp_path: Path) -> None:
    import json

    out = tmp_path / "bench.json"
    argv = ["--sizes", "128", "--frames", "3", "--stand-in-detect", "0.01", "--cadence", "0.05"]
    assert bench.main([*argv, "--latency-runs", "2", "--out", str(out)]) == 0
    size = json.loads(out.read_text())["sizes"]["128x128"]
    assert size["latency"]["cadence_s"] == 0.05  # not 1.5 / the throughput
    assert size["latency"]["frames"] == 3
    runs = size["latency_runs"]
    assert len(runs["p50_s"]) == len(runs["p95_s"]) == 2
    assert runs["p50_s"][0] == size["latency"]["latency_p50_s"]
    assert min(runs["p50_s"]) <= runs["median_p50_s"] <= max(runs["p50_s"])
    with pytest.raises(SystemExit):
        bench.main([*argv, "--latency-runs", "0"])
