"""Tracker benchmark: speed (online window, global re-optimisation, scaling) and quality.

    .venv/bin/python tools/bench_track.py --speed --quality --out bench_track.json

Speed (CPU seconds of this process, and wall seconds) on a simulated population
(`nptrack.simulate.dynamics`, 1024² px at 0.4 nm, Brownian steps ~1 px, fusions, crossings,
births): the online window update at ~300 particles (ms per frame after warm-up) and the global
optimisation of 500 frames × ~300 particles, plus how the global time grows with particles and
frames. Quality on the simulator's `table1` preset (and optionally `dense`): NP-Tracker global
and online vs a plain frame-to-frame Hungarian linker and the same linker with gap closing,
scored by `nptrack.evaluate` (MOTA, MOTP, IDF1, IDSW, FP, FN, fusion precision / recall).

Detections are made from the ground truth by `tests.track.detections_from_truth` (localisation
noise, misses, false positives, one blob where two particles overlap): the tracker is measured
apart from the segmentation. `--detector unet` instead renders the preset's frames with the
simulator (`nptrack.simulate.write_sequence`) and runs the chain `nptrack track` runs on frames
(registration, the shipped U-Net segmenter, measurement, online and global tracking:
`nptrack.pipeline.session.run_session`), scoring the global (tracks.csv) and the online track
versions against the simulator's truth: the bars from the project's own detections.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from tests.track import detections_from_truth  # noqa: E402

from nptrack.config import TrackConfig, add_override_argument  # noqa: E402
from nptrack.evaluate.mot import evaluate  # noqa: E402
from nptrack.pipeline.tracking import unfrozen  # noqa: E402
from nptrack.simulate.dynamics import (  # noqa: E402
    DynamicsConfig,
    ground_truth_rows,
    simulate_population,
)
from nptrack.simulate.presets import (  # noqa: E402
    intensity_per_nm3,
    load_preset,
    simulate_sequence,
    with_field,
)
from nptrack.track import (  # noqa: E402
    Detections,
    OnlineTracker,
    Solution,
    TrackTable,
    infer_fusions,
    initial_solution,
    params_from_config,
    solution_to_table,
    track_detections,
)
from nptrack.track.energy import energy  # noqa: E402
from nptrack.track.initial import _chains, _track_from_rows, link_frames  # noqa: E402

NOISE = {"noise_px": 0.3, "miss": 0.01, "fp_per_frame": 0.5}


def _cpu() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _since(t: tuple[float, float]) -> dict[str, float]:
    return {
        "cpu_s": round(time.process_time() - t[0], 3),
        "wall_s": round(time.perf_counter() - t[1], 3),
    }


def population(n: int, frames: int, seed: int = 0) -> tuple[dict[str, np.ndarray], Detections]:
    """A 1024² field of ~n particles over `frames` frames, and detections of it."""
    cfg = DynamicsConfig(
        diffusion_nm2_per_s=0.05, ripening_nm3_per_s=0.05, fusion_probability=0.05,
        birth_rate_per_frame=0.2, birth_diameter_nm=1.6, vanish_diameter_nm=1.0,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    truth = simulate_population(
        (1024, 1024), pixel_size_nm=0.4, frames=frames, n_particles=n, config=cfg, rng=rng,
        particle_options={"bottom_fraction": 0.15, "diameter_nm": 3.2, "diameter_sd_nm": 0.8},
    )  # fmt: skip
    rows = ground_truth_rows(truth, intensity_per_nm3=100.0)
    table = {k: rows[k] for k in rows.dtype.names}
    dets = detections_from_truth(
        table, rng, shape=truth.shape, pixel_size_nm=0.4, clip=False, **NOISE
    )
    return table, dets


def bench_window(n: int, frames: int, warmup: int = 15) -> dict[str, Any]:
    _, dets = population(n, frames)
    ot = OnlineTracker(pixel_size_nm=dets.pixel_size_nm, frame_shape=dets.frame_shape)
    times = []
    for f in range(dets.n_frames):
        r = dets.rows(f)
        t0 = time.process_time()
        ot.update(dets.xy[r, 0], dets.xy[r, 1], diameter_nm=dets.diameter_nm[r],
                  intensity=dets.intensity[r], score=dets.score[r])  # fmt: skip
        times.append(time.process_time() - t0)
    ms = 1000.0 * np.array(times[warmup:])
    per_frame = np.bincount(dets.frame)[warmup:]
    return {
        "particles_per_frame": round(float(per_frame.mean()), 1),
        "frames": frames,
        "window_frames": ot.W,
        "commit_lag_frames": ot.L,
        "update_cpu_ms": {
            "mean": round(float(ms.mean()), 2),
            "median": round(float(np.median(ms)), 2),
            "p95": round(float(np.percentile(ms, 95)), 2),
            "max": round(float(ms.max()), 2),
        },
    }


def bench_global(n: int, frames: int) -> dict[str, Any]:
    truth, dets = population(n, frames)
    t = _cpu()
    res = track_detections(dets)
    out = {
        "particles_per_frame": round(len(dets) / dets.n_frames, 1),
        "frames": frames,
        "positions": len(truth["frame"]),
        **_since(t),
    }
    r = evaluate(truth, res.tracks.as_columns())
    out.update({k: round(float(r[k]), 3) for k in ("mota", "idf1", "idsw", "fp", "fn")})
    return out


def plain_linker(dets: Detections, params: Any) -> TrackTable:
    """Frame-to-frame gated Hungarian only (no gap closing, no CEM)."""
    sol = Solution(first_frame=0, last_frame=dets.n_frames - 1)
    for k, rows in enumerate(_chains(dets, link_frames(dets, params))):
        sol.tracks[k] = _track_from_rows(k, dets, rows)
    return solution_to_table(sol, dets)


def _score(name: str, truth: dict, table: TrackTable, events: list, truth_ev: list) -> dict:
    r = evaluate(truth, table.as_columns(), truth_events=truth_ev, events=events)
    keys = ("mota", "motp", "idf1", "idsw", "fp", "fn", "mostly_tracked", "num_objects",
            "fusion_precision", "fusion_recall")  # fmt: skip
    return {"method": name, **{k: round(float(r[k]), 4) for k in keys}}


def bench_quality(
    preset: str, seeds: list[int], merge_factor: float, use_fields: bool = True
) -> dict[str, Any]:
    rows_out = []
    for seed in seeds:
        sc = load_preset(preset)
        rng = np.random.default_rng(seed)
        truth, optics, _ = simulate_sequence(sc, rng=rng)
        rows = ground_truth_rows(truth, intensity_per_nm3=intensity_per_nm3(sc, optics))
        table = {k: rows[k] for k in rows.dtype.names}
        truth_ev = [{"frame": e.frame, "type": e.type, "track_ids": e.track_ids}
                    for e in truth.events]  # fmt: skip
        dets = detections_from_truth(
            table, rng, shape=truth.shape, pixel_size_nm=truth.pixel_size_nm, clip=False,
            merge_factor=merge_factor, **NOISE,
        )  # fmt: skip
        # where the microscope looked in each frame (what registration measures): drift moves
        # the field, particles at its edge step out of view and back
        fields = truth.transforms if use_fields else None
        dets = replace(dets, fields=fields)
        cfg = TrackConfig()
        p = params_from_config(cfg, dets)
        px, shape = dets.pixel_size_nm, dets.frame_shape

        def fus(tab: TrackTable) -> list:
            return infer_fusions(tab, pixel_size_nm=px, frame_shape=shape)  # noqa: B023

        t = _cpu()
        res = track_detections(dets, config=cfg, params=p)
        timing = _since(t)
        ot = OnlineTracker(pixel_size_nm=px, frame_shape=shape, config=cfg)
        commits = []
        for f in range(dets.n_frames):
            r = dets.rows(f)
            c = ot.update(dets.xy[r, 0], dets.xy[r, 1], diameter_nm=dets.diameter_nm[r],
                          intensity=dets.intensity[r], score=dets.score[r],
                          field=None if fields is None else fields[f])  # fmt: skip
            commits += [c] if c else []
        commits += ot.finish()
        online = TrackTable.concat([c.tracks for c in commits])
        onl = _score("np-tracker online", table, online, [e for c in commits for e in c.events],
                     truth_ev)  # fmt: skip
        # As the product's global pass (`global_track_columns`): a second start from the
        # online solution, the lower-energy result kept. cpu_s / wall_s: the first start only.
        warm = track_detections(dets, config=cfg, params=p, init=unfrozen(ot.solution))
        if energy(warm.solution, dets, p) < energy(res.solution, dets, p):
            res = warm
        glob = _score("np-tracker global", table, res.tracks, res.events, truth_ev)
        glob.update(timing)
        gap = solution_to_table(initial_solution(dets, p), dets)
        plain = plain_linker(dets, p)
        for r in (
            glob,
            onl,
            _score("hungarian + gap closing", table, gap, fus(gap), truth_ev),
            _score("hungarian frame-to-frame", table, plain, fus(plain), truth_ev),
        ):
            rows_out.append({"preset": preset, "seed": seed, **r})
        print(f"{preset} seed {seed}: " + "; ".join(
            f"{r['method']} MOTA {r['mota']:.2f} IDSW {r['idsw']:.0f}"
            for r in rows_out[-4:]), file=sys.stderr)  # fmt: skip
    means: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["method"] for r in rows_out):
        sel = [r for r in rows_out if r["method"] == name]
        means[name] = {
            k: round(float(np.mean([r[k] for r in sel])), 3)
            for k in sel[0]
            if isinstance(sel[0][k], float) and k not in ("seed",)
        }
    return {"preset": preset, "seeds": seeds, "merge_factor": merge_factor,
            "detections": NOISE, "fields": use_fields, "runs": rows_out,
            "mean": means}  # fmt: skip


def bench_unet(
    preset: str, seeds: list[int], frames: int | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Frames rendered by the simulator, detected and tracked by the project's own chain.

    Each seed's series (`frames` of them, default the preset's) is written to a temporary
    folder and run through `run_session` as ``nptrack track`` does (default config, the
    shipped model, plus ``--set`` `overrides`); the session's global and online track
    versions are scored against the simulator's ground truth and events.
    """
    import tempfile

    from nptrack.config import load_config
    from nptrack.evaluate.mot import read_events_csv, read_table_csv
    from nptrack.pipeline.session import files_source, run_session
    from nptrack.pipeline.store import SessionStore
    from nptrack.simulate.write import write_sequence

    config = load_config(None, overrides)
    rows_out = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="bench-track-unet-") as tmp:
            out = Path(tmp)
            write_sequence(out, config=preset, frames=frames, seed=seed, progress=False,
                           cadence_s=0.0)  # fmt: skip
            t = _cpu()
            run_session(files_source([out / "frames"]), out / "session", config=config,
                        command="track", background_reoptimize=False)  # fmt: skip
            took = _since(t)
            truth = read_table_csv(out / "ground_truth.csv")
            truth_ev = read_events_csv(out / "events.csv")
            keys = ("mota", "motp", "idf1", "idsw", "fp", "fn", "mostly_tracked",
                    "num_objects", "fusion_precision", "fusion_recall")  # fmt: skip
            with SessionStore(out / "session") as store:
                versions = {v["kind"]: v["version"] for v in store.versions()}
                for kind in ("global", "online"):
                    if kind not in versions:
                        continue
                    tr = store.tracks(versions[kind])
                    cols = {
                        k: np.array([r[k] for r in tr]) for k in ("frame", "track_id", "x", "y")
                    }
                    ev = store.events(versions[kind])
                    r = evaluate(truth, cols, truth_events=truth_ev, events=ev)
                    name = f"np-tracker {kind} (U-Net detections)"
                    score = {k: round(float(r[k]), 4) for k in keys}
                    rows_out.append({"preset": preset, "seed": seed, "method": name, **score,
                                     **took})  # fmt: skip
            print(f"{preset} seed {seed} (unet): " + "; ".join(
                f"{r['method']} MOTA {r['mota']:.2f} MOTP {r['motp']:.2f} IDSW {r['idsw']:.0f}"
                for r in rows_out if r["seed"] == seed), file=sys.stderr)  # fmt: skip
    means = {
        name: {k: round(float(np.mean([r[k] for r in rows_out if r["method"] == name])), 3)
               for k in rows_out[0] if isinstance(rows_out[0][k], float)}
        for name in dict.fromkeys(r["method"] for r in rows_out)
    }  # fmt: skip
    return {"preset": preset, "seeds": seeds, "detector": "unet", "overrides": overrides or [],
            "runs": rows_out, "mean": means}  # fmt: skip


def long_series(
    frames: int, size_px: int = 512, seed: int = 0
) -> tuple[dict[str, np.ndarray], Detections]:
    """The `table1` scene on a size_px² field (same pixel size and particle density, so
    ~46·(size/256)² particles in frame 0), continuous motion over `frames` frames, and
    detections of it (as `bench_quality` makes them) with each frame's field of view."""
    sc = with_field(load_preset("table1"), size_px)
    rng = np.random.default_rng(seed)
    truth, optics, _ = simulate_sequence(sc, frames=frames, rng=rng)
    rows = ground_truth_rows(truth, intensity_per_nm3=intensity_per_nm3(sc, optics))
    table = {k: rows[k] for k in rows.dtype.names}
    dets = detections_from_truth(
        table, rng, shape=truth.shape, pixel_size_nm=truth.pixel_size_nm, clip=False, **NOISE
    )
    return table, replace(dets, fields=truth.transforms)


def bench_final(frames: int, size_px: int = 512, profile: int = 0) -> dict[str, Any]:
    """What the user waits for at the end of a long session, through the session code.

    A `long_series` is stored frame by frame in a temporary session (frame rows with the
    simulator's registration affines, then the detections) and fed to the session tracker
    as ``nptrack track`` does (no background re-optimisation): the online time over all
    frames, then `SessionTracker.finish` (the final global pass: two CEM starts, the
    lower-energy result stored), then `reoptimize_session` on the stored session (``nptrack
    reoptimize``: online tracker replayed, then the same global pass, exports). With
    `profile` > 0 the final pass is profiled and that many functions (cumulative time) are
    printed to stderr.
    """
    import cProfile
    import io
    import pstats
    import tempfile

    from nptrack.config import Config
    from nptrack.pipeline.session import reoptimize_session
    from nptrack.pipeline.store import SessionStore, frame_record
    from nptrack.pipeline.tracking import SessionTracker

    truth, dets = long_series(frames, size_px)
    cfg = Config()
    px = dets.pixel_size_nm
    out: dict[str, Any] = {
        "frames": frames, "frame_px": size_px, "detections": len(dets),
        "particles_per_frame": round(len(dets) / frames, 1),
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-track-final-") as tmp:
        with SessionStore(tmp) as store:
            store.set_meta("config", cfg.model_dump(mode="json"))
            tracker = SessionTracker(store, cfg.track, pixel_size_nm=px,
                                     frame_shape=dets.frame_shape, background=False)  # fmt: skip
            t = _cpu()
            for k in range(frames):
                r = dets.rows(k)
                cols = {"x": dets.xy[r, 0], "y": dets.xy[r, 1],
                        "diameter_nm": dets.diameter_nm[r], "intensity": dets.intensity[r],
                        "score": dets.score[r], "det_id": np.arange(r.stop - r.start)}  # fmt: skip
                row = frame_record(frame=k, time_s=float(k), source=f"f{k:05d}.tif",
                                   pixel_size_nm=(px, px), matrix=dets.fields[k], reg_cc=1.0,
                                   status="ok", shape=dets.frame_shape)  # fmt: skip
                store.add_frame(row, cols)
                tracker.update(k, cols)
            out["online"] = _since(t)
            prof = cProfile.Profile() if profile else None
            t = _cpu()
            if prof is not None:
                prof.enable()
            version = tracker.finish()
            if prof is not None:
                prof.disable()
            out["final_pass"] = _since(t)
            rows = store.tracks(version)
        cols = {k: np.array([r[k] for r in rows]) for k in ("frame", "track_id", "x", "y")}
        r = evaluate(truth, cols)
        out["final_pass"].update({k: round(float(r[k]), 3) for k in ("mota", "idsw", "fp", "fn")})
        t = _cpu()
        reoptimize_session(tmp)
        out["reoptimize"] = _since(t)
    if prof is not None:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(profile)
        print(text.getvalue(), file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--speed", action="store_true", help="window and global timings")
    ap.add_argument("--scaling", action="store_true", help="global time vs particles, frames")
    ap.add_argument("--quality", action="store_true", help="table1 scores vs baselines")
    ap.add_argument("--dense", action="store_true", help="also the dense preset (slow)")
    ap.add_argument(
        "--preset", default="table1", help="--quality: preset name or TOML path (default table1)"
    )
    ap.add_argument("--seeds", type=int, default=5, help="simulated series per preset")
    ap.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds FIRST .. FIRST + SEEDS - 1 (0-9 were looked at while tuning the tracker; "
        "10 and up are held out)",
    )
    ap.add_argument(
        "--merge-factor",
        type=float,
        default=0.8,
        help="overlapping particles closer than this × the sum of radii are one blob",
    )
    ap.add_argument(
        "--no-fields",
        action="store_true",
        help="do not tell the tracker where each frame's field lies (registration transforms)",
    )
    ap.add_argument(
        "--detector",
        choices=("truth", "unet"),
        default="truth",
        help="--quality detections: from the truth with noise (default), or the frames "
        "rendered by the simulator and detected by the shipped U-Net chain",
    )
    ap.add_argument(
        "--final",
        type=int,
        nargs="+",
        metavar="FRAMES",
        help="time the end-of-session global pass (`nptrack track`'s final pass and `nptrack "
        "reoptimize`) on continuous table1 series of these lengths (e.g. 250 500 1000)",
    )
    ap.add_argument("--final-size", type=int, default=512, help="--final frame size, px")
    ap.add_argument(
        "--profile", type=int, default=0, metavar="N", help="--final: print N profile lines"
    )
    add_override_argument(
        ap, help="--detector unet: config override, as in nptrack (e.g. segment.model_path=M)"
    )
    ap.add_argument("--out", type=Path, help="write the JSON here (else stdout)")
    args = ap.parse_args()
    if not (args.speed or args.scaling or args.quality or args.final):
        args.speed = args.quality = True
    out: dict[str, Any] = {"cpu_count_note": "CPU seconds of this process; wall seconds too"}
    if args.speed:
        out["window_300"] = bench_window(300, 80)
        print("window:", out["window_300"], file=sys.stderr)
        out["global_500x300"] = bench_global(340, 500)
        print("global:", out["global_500x300"], file=sys.stderr)
    if args.scaling:
        out["scaling"] = [bench_global(n, f) for n, f in
                          ((150, 100), (300, 100), (600, 100), (300, 200), (300, 300))]  # fmt: skip
    if args.final:
        out["final"] = []
        for n in args.final:
            out["final"].append(bench_final(n, args.final_size, args.profile))
            print("final:", out["final"][-1], file=sys.stderr)
    if args.quality:
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        fields = not args.no_fields
        if args.detector == "unet":
            out["quality"] = [bench_unet(args.preset, seeds, overrides=args.overrides)]
        else:
            out["quality"] = [bench_quality(args.preset, seeds, args.merge_factor, fields)]
        if args.dense and args.detector == "unet":
            out["quality"].append(bench_unet("dense", seeds[:2], overrides=args.overrides))
        elif args.dense:
            out["quality"].append(bench_quality("dense", seeds[:2], args.merge_factor, fields))
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)


if __name__ == "__main__":
    main()
