"""`nptrack demo`: simulated microscope + live session + scores, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from nptrack.cli import main


def test_demo_tracks_score_against_the_truth(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--frames", "20", "--no-gui", "--out", str(out), "--cadence-s", "0.2",
            "--set", "pipeline.publish_address='tcp://127.0.0.1:*'"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "MOTA %" in result.output and result.output.count("reg ok") == 20
    # Frames are written in chunks: none may be read before it is complete.
    assert "files found half-written when read: 0" in result.output
    scores = json.loads((out / "session" / "evaluation.json").read_text())
    # The bar. With models/nptrack-unet-v3.onnx (its int8 copy on CPU) this default
    # demo (seed 0) scores 95.2 % (seeds 1-4 by the `track` route: 98.4, 97.7, 97.5, 96.2;
    # the README's table). Most of its misses are a particle on a support pore's rim that the
    # U-Net does not segment (17 of 43) and particles merged into a neighbour's mask.
    assert scores["mota"] >= 95.0, scores
    assert scores["num_objects"] > 800  # ~45 particles x 20 frames really were scored
    frames = (out / "session" / "frames.csv").read_text().splitlines()
    assert len(frames) == 21  # header + every frame once
