"""Live pipeline speed: latency and throughput per frame size, memory over a long run (JSON).

Frames come from the simulator (the table1 ADF-STEM scene at the shipped model's pixel size,
0.2 nm/px, so that an N² frame is N² pixels through the network; the particle density of
table1), written as TIFF files, then fed to the real session (`run_session`: registration,
U-Net, measurement, online NP-Tracker, SQLite store) the way the folder watcher does.

- latency: frames delivered at a cadence slower than the pipeline (no queueing): time from
  "file complete" (handed over by the source) to "frame stored and tracked" (its detections
  committed and fed to the online tracker), p50 / p95; the cadence is 1.5 / the throughput
  measured just before unless ``--cadence S`` fixes it (to compare two settings at the same
  cadence), and ``--latency-runs N`` repeats the run (single runs spread by ±0.03–0.05 s on
  a shared machine) and adds each run's p50 / p95 and their medians (``latency_runs``);
- throughput: frames delivered as fast as the pipeline takes them (back-pressure), frames/s;
- memory: resident set size every 25 frames over a long run (``--long N``; a few rendered
  frames, ``--long-rendered``, played forward and back, 0 1 .. 5 4 .. 0 1 .., so that the
  particles move continuously as in a real series), with the slope in MiB per 100 frames,
  and the wall time of the final global re-optimisation over the whole history
  (``final_reoptimize_s``; ``frames_per_s_before_final`` leaves it out). The scene has no
  fusions (played backwards a fusion would be a split the tracker does not model). The
  earlier playback, the frames replayed in a cycle (``--long-playback cycle``: every 6 frames
  each particle jumps back to where it was), is not a series a microscope gives; it is kept
  to compare with earlier runs;
- ``--stand-in-detect S``: the latency / throughput runs with a detect step that sleeps S
  seconds and finds nothing (it leaves the CPU free, as a GPU detector would): the
  pipeline's own latency around a detector of that speed;
- measurement (``--measure``): per frame, outside the pipeline, the U-Net, then
  `detect_particles` (threshold, clean, polarity cut, separation, measurement) and
  `measure_particles` alone on its probability, median of ``--repeats`` runs, in s and ms per
  particle.

    python tools/bench.py --sizes 1024 2048 --frames 12 --out bench.json
    python tools/bench.py --sizes 1024 --frames 12 --cadence 0.8 --latency-runs 5
    python tools/bench.py --sizes 1024 --frames 0 --long 1000 --out bench_memory.json
    python tools/bench.py --sizes 1024 2048 --frames 0 --measure --out bench_measure.json
    python tools/bench.py --sizes 1024 --frames 16 --stand-in-detect 0.2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nptrack.config import add_override_argument, load_config
from nptrack.frames import Frame
from nptrack.io.read import read_frames
from nptrack.pipeline.session import run_session
from nptrack.simulate import load_preset, prepare_sequence
from nptrack.simulate.presets import with_field


def make_series(folder: Path, size_px: int, frames: int, *, fusions: bool = True) -> list[Frame]:
    """Simulated frames of size_px² at 0.2 nm/px (table1 scene and density); `fusions`
    False: particles that touch do not coalesce (a series to play backwards too)."""
    cfg = with_field(load_preset("table1"), size_px, pixel_size_nm=0.2)
    if not fusions:
        cfg = cfg.model_copy(
            update={"dynamics": cfg.dynamics.model_copy(update={"fusion_probability": 0.0})}
        )
    from nptrack.simulate.microscope import play

    stream, options = prepare_sequence(folder, config=cfg, frames=frames, seed=0, cadence_s=0.0)
    options["mode"] = "rename"
    for _ in play(stream, folder / "frames", **options):
        pass
    paths = sorted((folder / "frames").glob("*.tif"))
    return [read_frames(p)[0] for p in paths]


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def playback_index(k: int, m: int, playback: str = "cycle") -> int:
    """Which of `m` rendered frames is delivered as frame `k`.

    ``cycle``: 0 1 .. m−1 0 1 .. (each particle jumps back every m frames); ``pingpong``:
    0 1 .. m−1 m−2 .. 1 0 1 .. (forward and back: every step is one the particle took, so
    the motion stays continuous).
    """
    if playback == "cycle" or m == 1:
        return k % m
    if playback != "pingpong":
        raise ValueError(f"unknown playback {playback!r}")
    j = k % (2 * (m - 1))
    return j if j < m else 2 * (m - 1) - j


def paced_source(
    frames: list[Frame],
    n: int,
    cadence_s: float,
    rss: list[tuple[int, float]] | None = None,
    playback: str = "cycle",
) -> Callable[[Callable[[Frame], None], threading.Event], None]:
    """Deliver `n` frames (played from `frames` as `playback_index` says) every `cadence_s`
    (0: back-pressure)."""

    def source(deliver: Callable[[Frame], None], stop: threading.Event) -> None:
        t0 = time.monotonic()
        for k in range(n):
            if stop.is_set():
                return
            f = frames[playback_index(k, len(frames), playback)]
            deliver(Frame(f.data, f.pixel_size_nm, k, None, f"bench_{k:05d}.tif"))
            if rss is not None and k % 25 == 0:
                rss.append((k, round(_rss_mib(), 1)))
            if cadence_s:
                stop.wait(max(0.0, t0 + (k + 1) * cadence_s - time.monotonic()))

    return source


def sleeping_detector(seconds: float) -> Callable[[], Callable[[np.ndarray, Any], dict]]:
    """`run_session`'s ``make_detector`` for a detect step that sleeps and finds nothing."""

    def make() -> Callable[[np.ndarray, Any], dict]:
        def detect(image: np.ndarray, pixel_size_nm: Any) -> dict:
            time.sleep(seconds)
            return {}

        return detect

    return make


def run(frames: list[Frame], n: int, cadence_s: float, config: Any, **kw: Any) -> dict[str, Any]:
    from nptrack.pipeline.store import SessionStore

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        source = paced_source(
            frames, n, cadence_s, kw.pop("rss", None), kw.pop("playback", "cycle")
        )
        res = run_session(
            source,
            Path(tmp) / "session",
            config=config,
            command="bench",
            background_reoptimize=kw.pop("background", True),
            **kw,
        )
        wall = time.monotonic() - t0
        with SessionStore(Path(tmp) / "session", readonly=True) as store:
            final_s = store.get_meta("final_reoptimize_s")
            version = res.track_version
            n_tracks = (
                None if version is None else len({r["track_id"] for r in store.tracks(version)})
            )
    lat = np.asarray(res.summary.latencies_s)
    before_final = res.summary.wall_s - (final_s or 0.0)
    return {
        "frames": res.summary.frames_stored,
        "cadence_s": cadence_s,
        "pipeline_wall_s": round(res.summary.wall_s, 3),
        "total_wall_s": round(wall, 3),  # includes the final global re-optimisation, exports
        "latency_p50_s": round(float(np.percentile(lat, 50)), 3),
        "latency_p95_s": round(float(np.percentile(lat, 95)), 3),
        "latency_max_s": round(float(lat.max()), 3),
        "frames_per_s": round(res.summary.frames_stored / res.summary.wall_s, 3),
        # the end-of-run global re-optimisation over the whole history (in pipeline_wall_s)
        "final_reoptimize_s": final_s,
        "frames_per_s_before_final": round(res.summary.frames_stored / before_final, 3),
        "detections_per_frame": round(res.summary.detections / max(1, res.summary.frames_stored)),
        "tracks_final_version": n_tracks,
    }


def _median_s(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    out, times = run(), []  # the first run warms up (arenas, caches) and is not counted
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def measure_speed(frame: Frame, config: Any, repeats: int) -> dict[str, Any]:
    """Seconds per frame of the U-Net, `detect_particles` and `measure_particles`."""
    from nptrack.measure import detect_particles, measure_particles
    from nptrack.measure.analyze import analyze_frame, find_model
    from nptrack.segment.infer import Segmenter

    model = find_model(config.segment)
    segmenter = Segmenter.from_config(config.segment.model_copy(update={"model_path": str(model)}))
    px, contrast = frame.pixel_size_nm, config.segment.contrast
    _, used = analyze_frame(frame, segmenter, config=config, contrast=contrast)
    unet_s, (prob, centres) = _median_s(
        lambda: segmenter.predict_maps(frame.data, pixel_size_nm=px, contrast=contrast), repeats
    )
    m = config.measure
    detect_s, particles = _median_s(
        lambda: detect_particles(
            prob,
            frame.data,
            threshold=segmenter.threshold,
            pixel_size_nm=px,
            contrast=used,
            config=m,
            centres=centres,
            centre_threshold=segmenter.centre_threshold,
            centre_dynamic=segmenter.centre_dynamic,
        ),
        repeats,
    )
    measure_s, _ = _median_s(
        lambda: measure_particles(
            particles.labels,
            frame.data,
            prob,
            pixel_size_nm=px,
            contrast=used,
            background_ring_px=m.background_ring_px,
            intensity_margin_px=m.intensity_margin_px,
            convexity_threshold=m.convexity_threshold,
            separated=particles.columns["separated"],
        ),
        repeats,
    )
    n = max(particles.count, 1)
    return {
        "particles": particles.count,
        "unet_s": round(unet_s, 3),
        "detect_particles_s": round(detect_s, 3),
        "detect_particles_ms_per_particle": round(1e3 * detect_s / n, 3),
        "measure_particles_s": round(measure_s, 3),
        "measure_particles_ms_per_particle": round(1e3 * measure_s / n, 3),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--frames", type=int, default=12, help="frames per latency / throughput run")
    ap.add_argument("--long", type=int, default=0, help="memory run of this many frames")
    ap.add_argument("--long-size", type=int, default=1024, help="frame size of the memory run")
    ap.add_argument(
        "--long-rendered", type=int, default=6, help="frames rendered for the memory run"
    )
    ap.add_argument(
        "--long-playback",
        choices=("pingpong", "cycle"),
        default="pingpong",
        help="memory run: rendered frames played forward and back (continuous motion, no "
        "fusions in the scene), or in a cycle as before (each particle jumps back every N frames)",
    )
    ap.add_argument("--workers", type=int, default=1, help="detect workers")
    ap.add_argument(
        "--cadence",
        type=float,
        default=None,
        metavar="S",
        help="latency runs: a frame every S seconds (default: 1.5 / the throughput measured "
        "just before, which gives a faster pipeline a faster cadence)",
    )
    ap.add_argument(
        "--latency-runs",
        type=int,
        default=1,
        metavar="N",
        help="latency runs per size; with N > 1 also each run's p50 / p95 and their medians",
    )
    ap.add_argument(
        "--stand-in-detect",
        type=float,
        default=None,
        metavar="S",
        help="detect step that sleeps S seconds and finds nothing (a GPU stand-in)",
    )
    ap.add_argument("--measure", action="store_true", help="time the measurement stage alone")
    ap.add_argument("--repeats", type=int, default=5, help="runs per --measure timing")
    add_override_argument(ap, help="config override, e.g. segment.intra_op_threads=1 (repeatable)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.latency_runs < 1 or (args.cadence is not None and args.cadence <= 0):
        ap.error("--latency-runs must be at least 1 and --cadence above 0")
    config = load_config(None, [f"pipeline.detect_workers={args.workers}", *args.overrides])
    result: dict[str, Any] = {
        "tool": "tools/bench.py",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "detect_workers": args.workers,
        "overrides": args.overrides,
        "model": config.segment.model_path,
        "pixel_size_nm": 0.2,
        "sizes": {},
        "stand_in_detect_s": args.stand_in_detect,
    }
    kw: dict[str, Any] = {"background": False}
    if args.stand_in_detect is not None:
        kw["make_detector"] = sleeping_detector(args.stand_in_detect)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes if args.frames else []:
            print(f"simulating {size}² frames ...", file=sys.stderr)
            frames = make_series(Path(tmp) / str(size), size, min(args.frames, 6))
            through = run(frames, args.frames, 0.0, config, **kw)
            cadence = args.cadence or round(1.5 / through["frames_per_s"], 3)
            runs = [
                run(frames, args.frames, cadence, config, **kw) for _ in range(args.latency_runs)
            ]
            entry: dict[str, Any] = {"throughput": through, "latency": runs[0]}
            if len(runs) > 1:
                p50s, p95s = ([r[k] for r in runs] for k in ("latency_p50_s", "latency_p95_s"))
                entry["latency_runs"] = {
                    "p50_s": p50s,
                    "p95_s": p95s,
                    "median_p50_s": round(float(np.median(p50s)), 3),
                    "median_p95_s": round(float(np.median(p95s)), 3),
                }
            result["sizes"][f"{size}x{size}"] = entry
            print(json.dumps({size: result["sizes"][f"{size}x{size}"]}), file=sys.stderr)
        for size in args.sizes if args.measure else []:
            print(f"measurement of a {size}² frame ...", file=sys.stderr)
            frame = make_series(Path(tmp) / f"m{size}", size, 1)[0]
            result.setdefault("measure", {})[f"{size}x{size}"] = measure_speed(
                frame, config, args.repeats
            )
            print(json.dumps(result["measure"][f"{size}x{size}"]), file=sys.stderr)
        if args.long:
            frames = make_series(
                Path(tmp) / "long",
                args.long_size,
                args.long_rendered,
                fusions=args.long_playback == "cycle",
            )
            rss: list[tuple[int, float]] = []
            long_run = run(frames, args.long, 0.0, config, rss=rss, playback=args.long_playback)
            long_run.update(playback=args.long_playback, rendered_frames=args.long_rendered)
            ks, mib = np.array(rss, dtype=float).T
            half = ks >= ks.max() / 2  # after warm-up (caches, first re-optimisations)
            slope = float(np.polyfit(ks[half], mib[half], 1)[0] * 100) if half.sum() > 2 else None
            result[f"memory_{args.long_size}"] = {
                **long_run,
                "rss_mib": rss,
                "rss_slope_mib_per_100_frames_second_half": None
                if slope is None
                else round(slope, 2),
            }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
