"""Registration benchmark: time per frame and residual on synthetic drift + shear series.

Run as a script to print JSON::

    .venv/bin/python tools/bench_register.py                 # timing, 1024² and 2048²
    .venv/bin/python tools/bench_register.py --quality       # + residual RMS vs truth
    .venv/bin/python tools/bench_register.py --compare OUT/frames.csv SIM/transforms_truth.csv

The series are built here (no dependency on nptrack.simulate): a textured support (smoothed
noise at three scales, terraces, pores), bright Gaussian particles that move a little from
frame to frame, each frame sampled from the support with a known affine map (random drift
steps up to `max_step_px` per frame, scale / shear / rotation within ±`strain`), then
Poisson noise at `dose` counts per pixel of mean support.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from nptrack.config import RegisterConfig
from nptrack.register import Registrar, field_rms, invert
from nptrack.register.warp import compose

__all__ = [
    "SyntheticSeries",
    "bench_register",
    "compare_register",
    "quality_register",
    "synthetic_series",
]


_OVERSAMPLE = 2


@dataclass
class SyntheticSeries:
    """Frames (float32, (H, W)) and the true acquired → frame-0 maps (2, 3)."""

    frames: list[np.ndarray]
    truth: list[np.ndarray]


def _support(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    """Support thickness (mean ≈ 1) on a grid `scale` times finer than the frames."""
    h, w = shape
    img = np.ones((h, w), np.float32)
    for sigma, amp in ((1.0, 0.12), (4.0, 0.15), (16.0, 0.15)):
        noise = rng.standard_normal((h, w)).astype(np.float32)
        n = cv2.GaussianBlur(noise, (0, 0), sigma * scale)
        img += amp * n / n.std()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(3):  # thickness terraces: a half-plane one step thicker
        ang = rng.uniform(0, np.pi)
        off = rng.uniform(0.2, 0.8) * (h * abs(np.sin(ang)) + w * abs(np.cos(ang)))
        img += 0.15 * (xx * np.cos(ang) + yy * np.sin(ang) > off).astype(np.float32)
    pores = np.zeros((h, w), np.float32)
    for _ in range(max(2, int(h * w / 400_000 / scale**2))):
        centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        cv2.circle(pores, centre, int(rng.uniform(8, 30) * scale), 1.0, -1)
    img *= 1.0 - 0.6 * cv2.GaussianBlur(pores, (0, 0), 2.0 * scale)
    return np.clip(img, 0.05, None)


def _blobs(
    shape: tuple[int, int], xy: np.ndarray, sigma: np.ndarray, amp: np.ndarray
) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    h, w = shape
    for (x, y), s, a in zip(xy, sigma, amp, strict=True):
        r = int(np.ceil(4 * s))
        x0, x1 = max(0, int(x) - r), min(w, int(x) + r + 2)
        y0, y1 = max(0, int(y) - r), min(h, int(y) + r + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        out[y0:y1, x0:x1] += a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
    return out


def synthetic_series(
    shape: tuple[int, int] = (1024, 1024),
    n_frames: int = 20,
    *,
    max_step_px: float = 50.0,
    strain: float = 0.005,
    dose: float = 10.0,
    particles_per_mpx: float = 150.0,
    seed: int = 0,
) -> SyntheticSeries:
    """A drifting, shearing series with moving particles and known transforms.

    Parameters
    ----------
    shape : (int, int)
        (height, width) of every frame, pixels.
    n_frames : int
    max_step_px : float
        Largest drift between consecutive frames (pixels); the accumulated drift stays
        within a sixth of the field so that every frame overlaps frame 0.
    strain : float
        Scale, shear and rotation (radians) of each frame within ±strain of frame 0.
    dose : float
        Mean counts per pixel on the support (Poisson noise).
    particles_per_mpx : float
        Particles per megapixel; Gaussian, σ 2–5 px, peak 0.7–2× the support, each moving
        by a random step of ~1 px per frame.
    seed : int
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    bound = min(h, w) / 6.0
    margin = int(bound + max_step_px + 0.02 * max(h, w) + 8)
    # The support is drawn twice as fine as the frames and each frame pixel averages 2×2
    # samples (a detector pixel integrates): resampling texture near the frames' Nyquist
    # limit directly would itself misplace it by up to ~0.07 px.
    os_ = _OVERSAMPLE
    support = _support((os_ * (h + 2 * margin), os_ * (w + 2 * margin)), rng, os_)
    fine = np.array([[os_, 0.0, (os_ - 1) / 2], [0.0, os_, (os_ - 1) / 2]])
    n = max(1, int(particles_per_mpx * h * w / 1e6))
    pos = rng.uniform([margin, margin], [margin + w, margin + h], size=(n, 2))
    sig = rng.uniform(2.0, 5.0, n)
    amp = rng.uniform(0.7, 2.0, n)
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    offset = np.zeros(2)
    frames: list[np.ndarray] = []
    truth: list[np.ndarray] = []
    g0 = None
    for t in range(n_frames):
        if t:
            step = rng.uniform(0.3, 1.0) * max_step_px
            ang = rng.uniform(0, 2 * np.pi)
            offset = offset + step * np.array([np.cos(ang), np.sin(ang)])
            offset = np.clip(offset, -bound, bound)  # the series must keep overlapping frame 0
            pos = pos + rng.normal(0, 1.0, pos.shape)
            sx, sy, k, th = rng.uniform(-strain, strain, 4)
            a = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) @ np.array(
                [[1 + sx, k], [0, 1 + sy]]
            )
        else:
            a = np.eye(2)
        # g: frame pixel -> canvas pixel, about the frame centre.
        g = np.hstack([a, (centre + margin + offset - a @ centre)[:, None]])
        g0 = g if g0 is None else g0
        sampled = cv2.warpAffine(
            support,
            compose(fine, compose(g, invert(fine))),  # g between the fine grids
            (os_ * w, os_ * h),
            flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        )
        clean = cv2.resize(sampled, (w, h), interpolation=cv2.INTER_AREA)
        clean += _blobs((h, w), (pos - g[:, 2]) @ np.linalg.inv(g[:, :2]).T, sig, amp)
        frames.append(rng.poisson(np.clip(clean, 0, None) * dose).astype(np.float32))
        truth.append(compose(invert(g0), g))
    return SyntheticSeries(frames, truth)


def _run(
    series: SyntheticSeries, config: RegisterConfig
) -> tuple[list[Any], list[float], list[float]]:
    """Results, wall-clock seconds and CPU seconds (all threads) per frame."""
    reg = Registrar(config=config)
    results, wall, cpu = [], [], []
    for frame in series.frames:
        t0, c0 = time.perf_counter(), time.process_time()
        results.append(reg.update(frame))
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return results, wall, cpu


def bench_register(sizes: tuple[int, ...] = (1024, 2048), *, n_frames: int = 12) -> dict[str, Any]:
    """Milliseconds per frame of `Registrar.update` (default config) at each frame size.

    Returns
    -------
    dict
        JSON-ready: ``{"register": {"1024": {"ms_per_frame_median": ..., ...}, ...},
        "threads": ..., "cpu_count": ...}``.
    """
    out: dict[str, Any] = {
        "threads": cv2.getNumThreads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    per_size: dict[str, Any] = {}
    for size in sizes:
        series = synthetic_series((size, size), n_frames, seed=size)
        _run(series, RegisterConfig())  # warm-up (allocations, OpenCV thread pool)
        _, wall, cpu = _run(series, RegisterConfig())
        ms = np.array(wall[1:]) * 1e3  # frame 0 only becomes the anchor
        per_size[str(size)] = {
            "ms_per_frame_median": round(float(np.median(ms)), 2),
            "ms_per_frame_p90": round(float(np.percentile(ms, 90)), 2),
            "ms_per_frame_max": round(float(ms.max()), 2),
            # CPU time summed over threads: robust to other load on the machine.
            "cpu_ms_per_frame_median": round(float(np.median(cpu[1:])) * 1e3, 2),
            "frames": len(ms),
        }
    out["register"] = per_size
    out["machine"] = platform.processor() or platform.machine()
    return out


def quality_register(
    sizes: tuple[int, ...] = (1024, 2048),
    *,
    n_frames: int = 30,
    dose: float = 10.0,
    seeds: tuple[int, ...] = (1, 2),
) -> dict[str, Any]:
    """Residual of the estimated maps against the truth, RMS over the field (pixels)."""
    out: dict[str, Any] = {}
    for size in sizes:
        rms, statuses, worst_ok = [], [], 0.0
        for seed in seeds:
            series = synthetic_series((size, size), n_frames, dose=dose, seed=seed)
            results, _, _ = _run(series, RegisterConfig())
            for res, true in zip(results[1:], series.truth[1:], strict=True):
                r = field_rms(res.matrix, true, shape=(size, size))
                rms.append(r)
                statuses.append(res.status)
                if res.status == "ok":
                    worst_ok = max(worst_ok, r)
        r = np.array(rms)
        out[str(size)] = {
            "frames": len(r),
            "rms_px": round(float(np.sqrt(np.mean(r**2))), 4),
            "median_px": round(float(np.median(r)), 4),
            "max_px": round(float(r.max()), 4),
            "max_ok_px": round(worst_ok, 4),
            "status": {s: statuses.count(s) for s in ("ok", "degraded", "failed")},
        }
    return {"dose_counts_per_px": dose, "max_step_px": 50.0, "strain": 0.005, "quality": out}


def _read_maps(path: Path) -> dict[int, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {
            int(row["frame"]): np.array(
                [
                    [float(row[k]) for k in ("a11", "a12", "tx")],
                    [float(row[k]) for k in ("a21", "a22", "ty")],
                ]
            )
            for row in csv.DictReader(fh)
        }


def compare_register(
    frames_csv: str | Path, truth_csv: str | Path, *, shape: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Residual of `nptrack register` output against a truth CSV (frame, a11 ... ty).

    `shape` (height, width) defaults to that of ``registered.tif`` beside `frames_csv`.
    """
    import tifffile

    frames_csv, truth_csv = Path(frames_csv), Path(truth_csv)
    if shape is None:
        with tifffile.TiffFile(frames_csv.parent / "registered.tif") as tif:
            shape = tuple(tif.pages[0].shape[:2])  # type: ignore[assignment]
    est, truth = _read_maps(frames_csv), _read_maps(truth_csv)
    with frames_csv.open(newline="", encoding="utf-8") as fh:
        status = {int(r["frame"]): r["status"] for r in csv.DictReader(fh)}
    rms = {k: field_rms(est[k], truth[k], shape=shape) for k in sorted(est) if k in truth and k}
    r = np.array(list(rms.values()))
    ok = [v for k, v in rms.items() if status[k] == "ok"]
    return {
        "frames": len(r),
        "shape": list(shape),
        "rms_px": round(float(np.sqrt(np.mean(r**2))), 4),
        "max_px": round(float(r.max()), 4),
        "max_ok_px": round(float(max(ok, default=0.0)), 4),
        "status": {s: list(status.values()).count(s) for s in ("ok", "degraded", "failed")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--quality", action="store_true", help="also measure residual vs truth")
    parser.add_argument("--dose", type=float, default=10.0, help="counts per support pixel")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("FRAMES_CSV", "TRUTH_CSV"),
        help="only compare a frames.csv of 'nptrack register' with true transforms",
    )
    args = parser.parse_args()
    if args.compare:
        print(json.dumps(compare_register(*args.compare), indent=2))
        return
    result = bench_register(tuple(args.sizes))
    if args.quality:
        result.update(quality_register(tuple(args.sizes), dose=args.dose))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
