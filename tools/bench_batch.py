"""`nptrack batch` throughput: frames/s with 1 and 2 local Dask workers, and a serial reference.

Simulated series (the table1 ADF-STEM scene at the shipped model's pixel size, 0.2 nm/px, so
that an N² frame is N² pixels through the network; table1's particle density), each a folder
of TIFF frames, are processed by `run_batch` on a `LocalCluster` of W worker processes with one
thread each (one ONNX Runtime thread each), for each W asked; the serial reference is
``nptrack track`` (`run_session`, one detect worker, ONNX Runtime choosing its threads) on
each series in turn. Time is wall time from submission to the last series written (exports
included; reports only with ``--report``, as the serial reference writes none), without the
cluster's start-up and a warm-up series (ONNX sessions made), which are reported apart.

    python tools/bench_batch.py --size 1024 --series 3 --frames 8 --out bench_batch.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from distributed import get_task_stream

from nptrack.batch import open_client, run_batch
from nptrack.config import load_config
from nptrack.pipeline.session import files_source, run_session
from nptrack.simulate import load_preset, prepare_sequence
from nptrack.simulate.presets import with_field


def make_series(folder: Path, *, size_px: int, frames: int, seed: int) -> Path:
    """A folder of `frames` simulated size_px² TIFF frames at 0.2 nm/px; the folder."""
    from nptrack.simulate.microscope import play

    cfg = with_field(load_preset("table1"), size_px, pixel_size_nm=0.2)
    stream, options = prepare_sequence(folder, config=cfg, frames=frames, seed=seed, cadence_s=0)
    options["mode"] = "rename"
    for _ in play(stream, folder / "frames", **options):
        pass
    return folder / "frames"


def bench_batch(
    inputs: list[Path], out: Path, *, workers: int, config: Any, report: bool
) -> dict[str, Any]:
    t0 = time.monotonic()
    with open_client(n_workers=workers, dashboard_address=":0") as client:
        client.wait_for_workers(workers)
        startup = time.monotonic() - t0
        # Warm-up: one ONNX session per worker (made once per worker process, then kept).
        warm = time.monotonic()
        run_batch(inputs[:1], out / "warmup", config=config, client=client, progress=False,
                  report=False)  # fmt: skip
        warm = time.monotonic() - warm
        t1 = time.monotonic()
        with get_task_stream(client) as stream:
            result = run_batch(
                inputs, out / "run", config=config, client=client, progress=False, report=report
            )
        wall = time.monotonic() - t1
    frames = sum(int(r["frames"]) for r in result.rows)
    assert not result.failed, result.failed
    return {
        "workers": workers,
        "threads_per_worker": 1,
        "reports": report,
        "cluster_startup_s": round(startup, 2),
        "warmup_series_s": round(warm, 2),
        "frames": frames,
        "wall_s": round(wall, 2),
        "frames_per_s": round(frames / wall, 3),
        "tasks": task_times(stream.data),
        # Worker time spent computing over worker time available: < 1 when workers waited.
        "busy_share": round(
            sum(t["total_s"] for t in task_times(stream.data).values()) / (wall * workers), 3
        ),
    }


def task_times(stream: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Compute time per kind of task (register, detect, finish) from a Dask task stream.

    Per-task times that grow with the workers mean the cores were not free for them.
    """
    out: dict[str, dict[str, float]] = {}
    for task in stream:
        kind = str(task["key"]).split("-")[0]
        if kind not in ("register", "detect", "finish"):
            continue
        for s in task["startstops"]:
            if s["action"] == "compute":
                row = out.setdefault(kind, {"n": 0, "total_s": 0.0})
                row["n"] += 1
                row["total_s"] += s["stop"] - s["start"]
    for row in out.values():
        row["mean_s"] = round(row["total_s"] / row["n"], 3)
        row["total_s"] = round(row["total_s"], 2)
    return out


def bench_serial(inputs: list[Path], out: Path, *, config: Any) -> dict[str, Any]:
    frames, t0 = 0, time.monotonic()
    for k, path in enumerate(inputs):
        res = run_session(files_source([path]), out / f"s{k}", config=config, command="bench",
                          background_reoptimize=False)  # fmt: skip
        frames += res.summary.frames_stored
    wall = time.monotonic() - t0
    return {"frames": frames, "wall_s": round(wall, 2), "frames_per_s": round(frames / wall, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="frame side (px)")
    ap.add_argument("--series", type=int, default=3)
    ap.add_argument("--frames", type=int, default=8, help="frames per series")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-serial", action="store_true", help="skip the serial reference")
    ap.add_argument("--report", action="store_true", help="also write each series' report")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    args = ap.parse_args(argv)
    config = load_config(None)
    tmp = Path(tempfile.mkdtemp(prefix="nptrack-bench-batch-"))
    try:
        inputs = [
            make_series(tmp / f"series{k}", size_px=args.size, frames=args.frames, seed=k)
            for k in range(args.series)
        ]
        report: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "load_avg_at_start": os.getloadavg(),
            },
            "size_px": args.size,
            "series": args.series,
            "frames_per_series": args.frames,
            "batch": [],
        }
        if not args.no_serial:
            report["serial_track"] = bench_serial(inputs, tmp / "serial", config=config)
            print(f"serial track: {report['serial_track']}", file=sys.stderr)
        for w in args.workers:
            row = bench_batch(
                inputs, tmp / f"batch{w}", workers=w, config=config, report=args.report
            )
            report["batch"].append(row)
            print(f"batch, {w} worker(s): {row}", file=sys.stderr)
        base = report["batch"][0]["frames_per_s"]
        for row in report["batch"]:
            row["speedup_vs_first"] = round(row["frames_per_s"] / base, 3)
        report["machine"]["load_avg_at_end"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
