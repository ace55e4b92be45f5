"""Particle measurement quality (the README's "Whole chain" and "Real micrographs" tables).

Two sets, both fixed, nothing tuned per image:

- whole chain (simulated): for each ``--presets`` preset, ``--n`` images drawn with ``--seed``
  exactly as ``nptrack simulate images D --n N --preset P --seed S`` draws them (image i from
  the generator ``[seed, i]``), analysed in process by the chain of ``nptrack analyze``
  (`nptrack.measure.analyze.analyze_frame`: segmenter, then `nptrack.measure.detect_particles`)
  at the simulator's pixel size. Detections are matched to the simulator's particles by
  centre, within half the true diameter, one-to-one (Hungarian). Reported for the particles
  of at least ``--min-diameter-nm`` not cut by the border: matched, missed, median
  |diameter error| and median signed error in % of the true equivalent diameter, the same
  for the integrated intensity; and the extra detections (matched to no true particle at
  all, whatever its size or border flag).
- EMPS (``../shared/samples/emps``): 99 real TEM/SEM micrographs with hand-drawn instances,
  no pixel size, both contrasts. Three inputs to the separation (the classical segmenter
  `nptrack.measure.classic`; the U-Net with its own scale estimate; the union of the
  hand-drawn instances, i.e. the separation alone: no image, so no polarity cut) × the three
  separation methods of ``MeasureConfig.split``, all through `detect_particles` with the
  default settings for uncalibrated images. Semantic Dice of the final particle mask and
  instance F1 at IoU ≥ 0.5 (the metrics of tools/eval_segmentation.py), mean and median
  over images.

    python tools/eval_sizing.py --out sizing.json                      # U-Net v2, both sets
    python tools/eval_sizing.py --segmenter classic --skip-emps        # classical whole chain
    python tools/eval_sizing.py --model models/nptrack-unet-v3.onnx    # another model
    python tools/eval_sizing.py --skip-emps --set measure.refine_outline=false
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_segmentation import _f1, _match_iou
from nptrack.config import Config, load_config
from nptrack.frames import Frame
from nptrack.measure import detect_particles

REPO = Path(__file__).resolve().parents[1]
EMPS = REPO.parent / "shared" / "samples" / "emps"
PRESETS = ("table1", "pd250", "bf_gold", "dense")
SPLITS = ("watershed", "uecs", "none")


def match_centres(
    true_xy_px: np.ndarray, true_diameter_px: np.ndarray, found_xy_px: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches of detections to true particles by centre distance.

    A detection can match a true particle when its centre lies within half that particle's
    diameter; among those pairs the assignment minimises the summed distance (Hungarian).

    Parameters
    ----------
    true_xy_px : ndarray of float, shape (T, 2)
        True centres (x, y) in px.
    true_diameter_px : ndarray of float, shape (T,)
        True equivalent diameters in px.
    found_xy_px : ndarray of float, shape (D, 2)
        Detected centres (x, y) in px.

    Returns
    -------
    true_index, found_index : ndarray of int, shape (M,)
        Matched pairs, sorted by true index.
    """
    t = np.asarray(true_xy_px, dtype=float).reshape(-1, 2)
    f = np.asarray(found_xy_px, dtype=float).reshape(-1, 2)
    if not len(t) or not len(f):
        return np.zeros(0, int), np.zeros(0, int)
    dist = np.hypot(t[:, None, 0] - f[None, :, 0], t[:, None, 1] - f[None, :, 1])
    ok = dist <= np.asarray(true_diameter_px, dtype=float)[:, None] / 2
    # Forbidden pairs get a cost above any sum of allowed ones, so they are only chosen when
    # nothing else is left and are dropped below.
    big = 1.0 + dist[ok].sum() if ok.any() else 1.0
    rows, cols = linear_sum_assignment(np.where(ok, dist, big))
    keep = ok[rows, cols]
    return rows[keep], cols[keep]


def sizing_errors(
    truth: np.ndarray,
    found_xy_px: np.ndarray,
    found_diameter_nm: np.ndarray,
    *,
    pixel_size_nm: float,
    min_diameter_nm: float = 2.0,
    found_intensity: np.ndarray | None = None,
) -> dict[str, Any]:
    """Counts and relative diameter (and intensity) errors of one image's detections.

    Parameters
    ----------
    truth : structured ndarray, shape (T,)
        The simulator's particles (fields x, y in px, diameter_nm, border).
    found_xy_px : ndarray of float, shape (D, 2)
        Detected centres (x, y) in px.
    found_diameter_nm : ndarray of float, shape (D,)
        Detected equivalent diameters in nm.
    pixel_size_nm : float
    min_diameter_nm : float
        Only true particles at least this large and not cut by the border are scored.
    found_intensity : ndarray of float, shape (D,), optional
        Detected integrated intensities, compared with the truth's ``intensity``.

    Returns
    -------
    dict
        ``scored`` (true particles scored), ``matched``, ``missed``, ``extra`` (detections
        matched to no true particle), ``detections``, ``particles`` (all true particles),
        ``errors_pct`` (list of signed errors of the matched scored particles, in %) and,
        with `found_intensity`, ``intensity_errors_pct`` (the same for the intensity).
    """
    d_true = np.asarray(truth["diameter_nm"], dtype=float)
    ti, fi = match_centres(
        np.stack([truth["x"], truth["y"]], axis=-1), d_true / pixel_size_nm, found_xy_px
    )
    scored = (d_true >= min_diameter_nm) & (np.asarray(truth["border"]) == 0)
    hit = scored[ti]
    d_found = np.asarray(found_diameter_nm, dtype=float)[fi[hit]]
    err = 100.0 * (d_found - d_true[ti[hit]]) / d_true[ti[hit]]
    out: dict[str, Any] = {
        "scored": int(scored.sum()),
        "matched": int(hit.sum()),
        "missed": int(scored.sum() - hit.sum()),
        "extra": int(len(found_diameter_nm) - len(fi)),
        "detections": len(found_diameter_nm),
        "particles": len(d_true),
        "errors_pct": err.tolist(),
    }
    if found_intensity is not None:
        i_true = np.asarray(truth["intensity"], dtype=float)[ti[hit]]
        i_found = np.asarray(found_intensity, dtype=float)[fi[hit]]
        out["intensity_errors_pct"] = (100.0 * (i_found - i_true) / i_true).tolist()
    return out


def _summarise(per_image: list[dict[str, Any]]) -> dict[str, Any]:
    lists = ("errors_pct", "intensity_errors_pct")
    err = np.concatenate([np.asarray(r["errors_pct"], dtype=float) for r in per_image])
    out = {k: int(sum(r[k] for r in per_image)) for k in per_image[0] if k not in lists}
    out["median_abs_error_pct"] = float(np.median(np.abs(err))) if err.size else float("nan")
    out["median_signed_error_pct"] = float(np.median(err)) if err.size else float("nan")
    out["mean_signed_error_pct"] = float(np.mean(err)) if err.size else float("nan")
    if all("intensity_errors_pct" in r for r in per_image):
        e = np.concatenate([np.asarray(r["intensity_errors_pct"], float) for r in per_image])
        nan = float("nan")
        out["intensity_median_abs_error_pct"] = float(np.median(np.abs(e))) if e.size else nan
        out["intensity_median_signed_error_pct"] = float(np.median(e)) if e.size else nan
    return out


def eval_whole_chain(
    segmenter: Any,
    preset: str,
    *,
    n: int,
    seed: int,
    config: Config,
    min_diameter_nm: float = 2.0,
) -> dict[str, Any]:
    """Simulate `n` images of `preset` and score the analysis chain on them."""
    from nptrack.measure.analyze import analyze_frame
    from nptrack.simulate.presets import load_preset, simulate_image
    from nptrack.simulate.write import _load_support

    cfg = load_preset(preset)
    supports = [_load_support(p, cfg) for p in cfg.support.images]
    rows = []
    for i in range(n):
        # The generator and draws of nptrack.simulate.write.write_images, image for image.
        rng = np.random.default_rng([seed, i])
        support, spx = None, None
        if supports:
            support, spx = supports[int(rng.integers(len(supports)))]
        sim = simulate_image(cfg, rng=rng, support_image=support, support_pixel_size_nm=spx)
        px = float(sim.pixel_size_nm)
        frame = Frame(data=np.asarray(sim.image, dtype=np.float32), pixel_size_nm=(px, px), index=i)
        particles, _ = analyze_frame(frame, segmenter, config=config)
        c = particles.columns
        found = np.stack([c["x"], c["y"]], axis=-1) if c["x"].size else np.zeros((0, 2))
        rows.append(
            sizing_errors(
                sim.truth,
                found,
                c["diameter_nm"],
                pixel_size_nm=px,
                min_diameter_nm=min_diameter_nm,
                found_intensity=c["intensity"],
            )
        )
    return {"preset": preset, "images": n, "seed": seed, **_summarise(rows)}


def instance_scores(truth: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Semantic Dice and instance F1 (IoU ≥ 0.5) of a label image against the truth's."""
    t, p = truth > 0, labels > 0
    dice = 2 * int((t & p).sum()) / max(int(t.sum()) + int(p.sum()), 1)
    tp, fp, fn = _match_iou(truth, labels)
    return {"dice": dice, "f1": _f1(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn}


def eval_emps(unet: Any, folder: Path, *, config: Config) -> dict[str, Any]:
    """Dice and instance F1 on EMPS for 3 inputs × 3 separation methods."""
    import imageio.v3 as iio

    from nptrack.measure.classic import ClassicSegmenter

    m = config.measure
    classic = ClassicSegmenter(method=m.classic_threshold, smooth_px=m.classic_smooth_px)
    inputs = ("classic", "unet", "masks")
    per: dict[str, dict[str, list[dict[str, Any]]]] = {k: {s: [] for s in SPLITS} for k in inputs}
    contrast_right = 0
    paths = sorted((folder / "images").glob("*.png"))
    for path in paths:
        rgb = iio.imread(path)
        gray = rgb[..., :3].mean(-1).astype(np.float32) if rgb.ndim == 3 else rgb
        gray = np.asarray(gray, dtype=np.float32)
        truth = iio.imread(folder / "segmaps" / path.name).astype(np.int64)
        # True polarity: particles brighter or darker than the rest (for the classic count).
        brighter = np.median(gray[truth > 0]) >= np.median(gray[truth == 0])
        runs = []
        for name, seg in (("classic", classic), ("unet", unet)):
            prob = seg.predict(gray, pixel_size_nm=None, contrast="auto")
            used = getattr(seg, "last_contrast", None) or seg.last_info.get("contrast", "auto")
            if name == "classic":
                contrast_right += int((used == "bright") == brighter)
            runs.append((name, prob, gray, seg.threshold, used))
        runs.append(("masks", (truth > 0).astype(np.float32), None, 0.5, "auto"))
        for name, prob, image, threshold, used in runs:
            for split in SPLITS:
                parts = detect_particles(
                    prob,
                    image,
                    threshold=threshold,
                    pixel_size_nm=None,
                    contrast=used,
                    config=m.model_copy(update={"split": split}),
                )
                row = {"image": path.name, **instance_scores(truth, parts.labels)}
                per[name][split].append(row)
    out: dict[str, Any] = {"images": len(paths), "classic_contrast_right": contrast_right}
    for name in inputs:
        dice = [r["dice"] for r in per[name]["watershed"]]
        out[name] = {"dice_mean": float(np.mean(dice)), "dice_median": float(np.median(dice))}
        for split in SPLITS:
            f1 = [r["f1"] for r in per[name][split]]
            out[name][split] = {
                "f1_mean": float(np.mean(f1)),
                "f1_median": float(np.median(f1)),
                "dice_mean": float(np.mean([r["dice"] for r in per[name][split]])),
            }
    out["per_image"] = per
    return out


def _table(result: dict[str, Any]) -> str:
    lines = []
    for r in result.get("whole_chain", []):
        lines.append(
            f"{r['preset']:8s} matched {r['matched']:5d}/{r['scored']:5d} missed {r['missed']:5d}"
            f" extra {r['extra']:6d} (detections {r['detections']}, particles {r['particles']})"
            f"  |d err| {r['median_abs_error_pct']:.1f} %"
            f"  signed {r['median_signed_error_pct']:+.1f} %"
            f"  |I err| {r.get('intensity_median_abs_error_pct', float('nan')):.1f} %"
            f"  signed {r.get('intensity_median_signed_error_pct', float('nan')):+.1f} %"
        )
    emps = result.get("emps")
    if emps:
        for name in ("classic", "unet", "masks"):
            e = emps[name]
            f1 = "  ".join(f"{s} {e[s]['f1_mean']:.3f} ({e[s]['f1_median']:.3f})" for s in SPLITS)
            lines.append(
                f"EMPS {name:7s} Dice {e['dice_mean']:.3f} ({e['dice_median']:.3f})  F1 {f1}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "nptrack-unet-v3.onnx")
    ap.add_argument(
        "--segmenter", choices=("unet", "classic"), default="unet", help="of the whole chain"
    )
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--n", type=int, default=10, help="simulated images per preset")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--min-diameter-nm", type=float, default=2.0)
    ap.add_argument("--emps", type=Path, default=EMPS, help="EMPS folder (images/, segmaps/)")
    ap.add_argument("--skip-sim", action="store_true")
    ap.add_argument("--skip-emps", action="store_true")
    ap.add_argument("--config", type=Path, default=None, help="nptrack TOML config")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout only)")
    args = ap.parse_args(argv)

    from nptrack.measure.analyze import load_segmenter

    config = load_config(args.config, args.overrides)
    config = config.model_copy(
        update={
            "segment": config.segment.model_copy(
                update={"model_path": str(args.model.resolve()), "intra_op_threads": args.threads}
            )
        }
    )
    result: dict[str, Any] = {
        "model": str(args.model),
        "segmenter": args.segmenter,
        "measure": config.measure.model_dump(mode="json"),
    }
    t0 = time.perf_counter()
    unet = None
    if not args.skip_emps or args.segmenter == "unet":
        unet, result["unet"] = load_segmenter("unet", config)
    if not args.skip_sim:
        seg = unet
        if args.segmenter == "classic":
            seg, result["classic"] = load_segmenter("classic", config)
        result["whole_chain"] = [
            eval_whole_chain(
                seg,
                p,
                n=args.n,
                seed=args.seed,
                config=config,
                min_diameter_nm=args.min_diameter_nm,
            )
            for p in args.presets
        ]
    if not args.skip_emps:
        result["emps"] = eval_emps(unet, args.emps, config=config)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    summary = dict(result)
    if "emps" in summary:
        summary["emps"] = {k: v for k, v in result["emps"].items() if k != "per_image"}
    print(json.dumps(summary, indent=1))
    print(_table(result), file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
