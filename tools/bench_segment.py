"""Segmentation speed: milliseconds per frame on CPU (JSON), for tools/bench.py.

Frames are synthetic particle images at the model's own pixel size (no resampling), so the
number is the cost of normalisation + tiled ONNX Runtime inference + blending; the median of
``--repeat`` runs after one warm-up is reported.

    python tools/bench_segment.py --model models/nptrack-unet-v3-int8.onnx --threads 2 --out b.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from nptrack.config import SegmentConfig
from nptrack.segment.infer import Segmenter

REPO = Path(__file__).resolve().parents[1]


def frame(size_px: int, *, seed: int = 0) -> np.ndarray:
    """A square test frame with ~3 % particle cover (Gaussian blobs on noise)."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.zeros((size_px, size_px), np.float32)
    n = size_px * size_px // 4000
    for y, x in rng.integers(0, size_px, (n, 2)):
        cv2.circle(img, (int(x), int(y)), int(rng.integers(3, 15)), 1.0, -1)
    img = cv2.GaussianBlur(img, (0, 0), 1.5) * 200 + 100
    return rng.poisson(img).astype(np.float32)


def bench(
    model: Path, *, sizes: list[int], threads: int, repeat: int, tile_px: int, overlap_px: int
) -> dict[str, Any]:
    seg = Segmenter.from_path(
        model,
        providers="cpu",
        intra_op_threads=threads,
        tile_px=tile_px,
        tile_overlap_px=overlap_px,
    )
    px = float(seg.metadata["pixel_size_nm"])
    out: dict[str, Any] = {
        "model": str(model),
        "version": seg.metadata["model_version"],
        "providers": seg.providers,
        "intra_op_threads": threads,
        "tile_px": tile_px,
        "tile_overlap_px": overlap_px,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "ms_per_frame": {},
    }
    for size in sizes:
        img = frame(size)
        seg.predict(img, pixel_size_nm=(px, px))  # warm-up: ORT allocates on the first run
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            seg.predict(img, pixel_size_nm=(px, px))
            times.append(time.perf_counter() - t0)
        out["ms_per_frame"][f"{size}x{size}"] = round(1000 * float(np.median(times)), 1)
    # Peak resident memory of the process so far (the largest size dominates; Linux: KiB).
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "nptrack-unet-v3.onnx")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--repeat", type=int, default=5)
    defaults = SegmentConfig()  # the product's tiling unless told otherwise
    ap.add_argument("--tile-px", type=int, default=defaults.tile_px)
    ap.add_argument("--overlap-px", type=int, default=defaults.tile_overlap_px)
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout only)")
    args = ap.parse_args(argv)
    result = bench(
        args.model,
        sizes=args.sizes,
        threads=args.threads,
        repeat=args.repeat,
        tile_px=args.tile_px,
        overlap_px=args.overlap_px,
    )
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
