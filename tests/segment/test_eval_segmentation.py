"""tools/eval_segmentation.py: border particles and the oracle centre maps."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import eval_segmentation  # noqa: E402
from nptrack.segment.infer import Segmenter  # noqa: E402


def test_oracle_centres_undo_the_merges() -> None:
    """The truth's own centre maps split what the shipped model's masks merge; the pixel
    scores do not depend on the split."""
    seg = Segmenter.from_path(ROOT / "models" / "nptrack-unet-v3-int8.onnx", intra_op_threads=2)
    plain = eval_segmentation._simulated_counts(seg, 6, 5, 512)
    oracle = eval_segmentation._simulated_counts(seg, 6, 5, 512, oracle_centres=True)
    merged = [sum(c[m]["fn_merged"] for m in ("adf", "bf")) for c in (plain, oracle)]
    assert merged[0] >= 10 and merged[1] <= 1
    tp = [sum(c[m]["tp"] for m in ("adf", "bf")) for c in (plain, oracle)]
    assert tp[1] > tp[0]
    for m in ("adf", "bf"):
        assert plain[m]["inter"] == oracle[m]["inter"] and plain[m]["truth"] > 0
