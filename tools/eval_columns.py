"""Evaluate an atomic-column model on held-out simulated frames; prints JSON.

    python tools/eval_columns.py --model models/nptrack-columns-v1.onnx --snr 2 1

Frames come from the training simulator (``ColumnDataConfig`` of the config, the particle
fully random: size, shape, orientation, tilt, vacancies, probe, support, drift) at a fixed
SNR, from seeds never used in training (training draws from ``[seed, step, worker]``,
validation from 12345). Each frame is run at its known pixel size. Predicted columns
(connected regions of the class map, :func:`find_columns`) are matched one-to-one to the true
labelled columns within half the smallest column spacing; columns within 2 px of the frame
border are left out on both sides. Occupancy is scored on matched columns against
``min(true occupancy, K)``. Timing: one 1024² frame, ``ColumnSegmenter.predict`` +
``find_columns``, ONNX Runtime with ``--threads`` intra-op threads, median of 5 after a
warm-up.

Occupancy three ways on the same matched columns (``nptrack.segment.columns_count``): the
network's (``net_*``), statistical counting ``round(I / u)`` (``count_*``) and the default of
``nptrack columns``, the network's class probabilities times the counting likelihood
(``combined_*``); ``count_true_unit_*`` counts with the unit a least-squares fit to the true
occupancies gives (what a perfect unit estimate would reach). ``unit_within_2pct``: share of
frames whose estimated unit is within 2 % of that fit. Timing adds ``count_columns`` on the
1024² frame. ``--series N``: N simulated series per SNR (a particle whose surface atoms come
and go), occupancy with the unit of each frame vs one unit pooled over the series.

``shape_*``: ``nptrack columns --occupancy shape``, the counting posterior with the 3D
shape prior of :mod:`nptrack.segment.columns_shape` (a convex {111} / {100} faceted particle
of the frame's crystal fitted to all columns; `combined` where it falls back);
``shape_fitted`` is the share of scored columns whose occupancy came from a fitted shape.
Timing adds the shape step on the 1024² frame and on a frame of 4 × 4 particles tiled from
256² frames (a 1024² frame full of columns), and per particle.

``--causes N``: where the per-column intensity offset comes from. On N noise-free scenes of
the training ranges (seed ``[seed, 5]``), at the true column positions, each image is fitted
(``fit_columns``, without and with the tilt model) and the calibration ``I = b + g k``
regressed on the true occupancies; ``b / g`` (atoms) of the whole image is split into
differences of images of the same scene: the labelled columns alone untilted (the fit's own
bias), their tilt (tilted minus untilted), the anion columns (with minus without) and the
support (with minus without); mean and sd over the scenes, and the residual sd per column.

``oracle_*``: the occupancy a maximum-likelihood counter gets that knows every column's
position, the support and the exact spot of one atom (Poisson likelihood of the pixels within
1.5 probe sd of the centre for occupancies 1..K): the ceiling set by the shot noise at that
SNR, whatever the network.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from nptrack.segment.columns_count import (
    assign_occupancy,
    count_columns,
    estimate_unit,
    fit_columns,
)
from nptrack.segment.columns_frame import apply_shape_prior
from nptrack.segment.columns_infer import (
    ColumnSegmenter,
    default_min_area_px,
    find_columns,
    match_columns,
)
from nptrack.segment.data import column_sample
from nptrack.segment.train import load_train_config
from nptrack.simulate.columns import (
    CRYSTALS,
    ColumnSimConfig,
    column_spacing_A,
    simulate_column_sequence,
)

REPO = Path(__file__).resolve().parents[1]


def _inside(x: np.ndarray, y: np.ndarray, shape: tuple[int, int], margin: float) -> np.ndarray:
    return (
        (x >= margin) & (y >= margin) & (x <= shape[1] - 1 - margin) & (y <= shape[0] - 1 - margin)
    )


def crystal_of(im, cfg) -> str:
    """CRYSTALS key of a simulated frame (the eval configs hold one crystal)."""
    return str(cfg.crystals[0])


def oracle_counts(im, k: int, radius_px: float) -> np.ndarray:
    """Maximum-likelihood occupancy of every true column from the noisy counts (see above)."""
    h, w = im.image.shape
    out = np.zeros(len(im.columns["x"]), int)
    r = int(np.ceil(radius_px))
    cand = np.arange(1, k + 1)[:, None]
    cols = zip(im.columns["x"], im.columns["y"], im.columns["occupancy"], strict=True)
    for i, (x, y, n) in enumerate(cols):
        ix, iy = round(float(x)), round(float(y))
        ys, xs = np.mgrid[max(iy - r, 0) : min(iy + r + 1, h), max(ix - r, 0) : min(ix + r + 1, w)]
        m = np.hypot(xs - x, ys - y) <= radius_px
        if not m.any():
            continue
        sup, cl, cnt = im.support[ys[m], xs[m]], im.clean[ys[m], xs[m]], im.image[ys[m], xs[m]]
        lam = np.maximum(sup + (cl - sup) * cand / n, 1e-9)  # (K, pixels)
        out[i] = 1 + int(np.argmax((cnt * np.log(lam) - lam).sum(axis=1)))
    return out


def evaluate(
    seg: ColumnSegmenter,
    cfg,
    snr: float | None,
    n: int,
    seed: int,
    min_area_px: int,
    prior_sd: float | None = None,
) -> dict:
    """Score one SNR (None: no noise). `prior_sd`: skip the network, count at the true
    column positions with a prior ``round(true × exp(N(0, prior_sd)))`` (one factor per
    frame, like the network's scale error); ``net`` is then that prior."""
    rng = np.random.default_rng([seed, int(1000 * (snr or 0))])
    k = seg.n_classes
    tp = fp = fn = o_exact = o_within1 = o_n = 0
    methods = ("net", "count", "combined", "shape", "count_true_unit")
    shape_fitted: list[np.ndarray] = []
    shape_ms: list[float] = []
    errors: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    unit_ok: list[bool] = []
    spacing = min(column_spacing_A(CRYSTALS[c]) for c in cfg.crystals)
    for _ in range(n):
        im = column_sample(cfg, rng=rng, snr=snr)
        if prior_sd is None:
            pred = find_columns(
                seg.predict(im.image, pixel_size_A=im.pixel_size_A), min_area_px=min_area_px
            )
        else:
            scale = np.exp(prior_sd * rng.standard_normal())
            prior = np.maximum(np.round(im.columns["occupancy"] * scale), 1).astype(int)
            onehot = np.eye(k)[np.minimum(prior, k) - 1]
            pred = {"x": im.columns["x"], "y": im.columns["y"], "occupancy": prior,
                    "class_probability": onehot}  # fmt: skip
        t_ok = _inside(im.columns["x"], im.columns["y"], im.image.shape, 2)
        if snr is not None:
            sig = np.hypot(0.8 / 2.3548, 0.15) / im.pixel_size_A  # mid-range probe
            o = oracle_counts(im, k, 1.5 * sig)[t_ok]
            o_d = o - np.minimum(im.columns["occupancy"][t_ok], k)
            o_exact += int((o_d == 0).sum())
            o_within1 += int((np.abs(o_d) <= 1).sum())
            o_n += len(o_d)
        p_ok = _inside(pred["x"], pred["y"], im.image.shape, 2)
        txy = np.stack([im.columns["x"], im.columns["y"]], axis=1)[t_ok]
        pxy = np.stack([pred["x"], pred["y"]], axis=1)[p_ok]
        t_occ = np.minimum(im.columns["occupancy"][t_ok], k)
        ip, it = match_columns(pxy, txy, max_distance_px=0.5 * spacing / im.pixel_size_A)
        tp += len(ip)
        fp += len(pxy) - len(ip)
        fn += len(txy) - len(it)
        if len(pred["x"]) == 0:
            continue
        cnt = count_columns(
            im.image, np.stack([pred["x"], pred["y"]], axis=1), pixel_size_A=im.pixel_size_A,
            spacing_A=spacing, class_probability=pred["class_probability"],
            prior_occupancy=pred["occupancy"],
        )  # fmt: skip
        sel = np.flatnonzero(p_ok)[ip]
        t = t_occ[it].astype(int)
        i_col = np.asarray(cnt["intensity"])[sel]
        u_true = float(np.sum(i_col * t) / max(np.sum(t * t), 1))
        if len(t):
            unit_ok.append(abs(float(cnt["unit"]) / u_true - 1) < 0.02)
        cols = {**pred, "intensity": cnt["intensity"], "intensity_sd": cnt["intensity_sd"]}
        t0 = time.perf_counter()
        apply_shape_prior(
            cols, frame_shape=im.image.shape, pixel_size_A=im.pixel_size_A,
            crystal=CRYSTALS[crystal_of(im, cfg)], unit=float(cnt["unit"]),
            unit_trusted=bool(cnt["from_comb"]),
        )  # fmt: skip
        shape_ms.append(1000 * (time.perf_counter() - t0))
        shape_fitted.append(np.asarray(cols["shape_used"])[sel])
        occ = {
            "net": pred["occupancy"][sel],
            "count": np.asarray(cnt["occupancy_count"])[sel],
            "combined": np.asarray(cnt["occupancy"])[sel],
            "shape": np.asarray(cols["occupancy"])[sel],
            "count_true_unit": np.maximum(np.round(i_col / u_true), 1) if u_true > 0 else t * 0,
        }
        for m in methods:
            errors[m].append(np.minimum(occ[m], k).astype(int) - t)
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    scores: dict[str, object] = {}
    for m in methods:
        d = np.concatenate(errors[m]) if errors[m] else np.zeros(0, int)
        scores[f"{m}_exact"] = round(float(np.mean(d == 0)), 4) if len(d) else None
        scores[f"{m}_within1"] = round(float(np.mean(np.abs(d) <= 1)), 4) if len(d) else None
        if m in ("net", "combined", "shape"):
            vals, counts = np.unique(d, return_counts=True)
            scores[f"{m}_error_histogram"] = {
                int(v): int(c) for v, c in zip(vals, counts, strict=True)
            }
    return {
        "snr": snr,
        "frames": n,
        "true_columns": tp + fn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": round(tp / max(tp + fp, 1), 4),
        "recall": round(tp / max(tp + fn, 1), 4),
        "f1": round(f1, 4),
        **scores,
        "unit_within_2pct": round(float(np.mean(unit_ok)), 4) if unit_ok else None,
        "shape_fitted": round(float(np.mean(np.concatenate(shape_fitted))), 4)
        if shape_fitted
        else None,
        "shape_ms_per_frame_median": round(float(np.median(shape_ms)), 1) if shape_ms else None,
        "oracle_exact": round(o_exact / o_n, 4) if o_n else None,
        "oracle_within1": round(o_within1 / o_n, 4) if o_n else None,
    }


def timing(seg: ColumnSegmenter, cfg, size: int, seed: int) -> dict:
    big = cfg.model_copy(update={"tile_px": size, "empty_fraction": 0.0})
    im = column_sample(big, rng=np.random.default_rng(seed), snr=2.0)
    seg.predict(im.image)
    spacing = min(column_spacing_A(CRYSTALS[c]) for c in cfg.crystals)
    times, find, count = [], [], []
    for _ in range(5):
        t0 = time.perf_counter()
        pred = seg.predict(im.image)
        t1 = time.perf_counter()
        cols = find_columns(pred, min_area_px=default_min_area_px(seg.metadata, seg.pixel_size_A))
        t2 = time.perf_counter()
        count_columns(
            im.image, np.stack([cols["x"], cols["y"]], axis=1), pixel_size_A=seg.pixel_size_A,
            spacing_A=spacing, class_probability=cols["class_probability"],
        )  # fmt: skip
        count.append(time.perf_counter() - t2)
        find.append(t2 - t1)
        times.append(t1 - t0)
    one = _shape_step(seg, im.image, seg.pixel_size_A, spacing, cfg)
    shape = _shape_timing(seg, cfg, size, seed, spacing)
    return {
        "ms_shape_this_frame": round(one["ms"], 1),
        "shape_this_frame_particles": len(one["shape"]),
        **shape,
        "frame_px": size,
        "columns": len(cols["x"]),
        "ms_predict": round(1000 * float(np.median(times)), 1),
        "ms_find_columns": round(1000 * float(np.median(find)), 1),
        "ms_count_columns": round(1000 * float(np.median(count)), 1),
        "ms_total": round(1000 * float(np.median(np.add(np.add(times, find), count))), 1),
    }


def _shape_step(seg: ColumnSegmenter, image: np.ndarray, px: float, spacing: float, cfg) -> dict:
    pred = find_columns(
        seg.predict(image, pixel_size_A=px),
        min_area_px=default_min_area_px(seg.metadata, px),
    )
    cnt = count_columns(
        image, np.stack([pred["x"], pred["y"]], axis=1), pixel_size_A=px, spacing_A=spacing,
        class_probability=pred["class_probability"],
    )  # fmt: skip
    cols = {**pred, "intensity": cnt["intensity"], "intensity_sd": cnt["intensity_sd"]}
    t0 = time.perf_counter()
    apply_shape_prior(
        cols, frame_shape=image.shape, pixel_size_A=px, crystal=CRYSTALS[str(cfg.crystals[0])],
        unit=float(cnt["unit"]), unit_trusted=bool(cnt["from_comb"]),
    )  # fmt: skip
    cols["ms"] = 1000 * (time.perf_counter() - t0)
    return cols


def _shape_timing(seg: ColumnSegmenter, cfg, size: int, seed: int, spacing: float) -> dict:
    """Shape step (after network and counting) on a frame of (size / 256)² particles tiled
    from 256² frames at SNR 2 (one pixel size), and per fitted particle."""
    n = max(size // 256, 1)
    small = cfg.model_copy(update={"tile_px": 256, "empty_fraction": 0.0,
                                   "pixel_size_range": (1.0, 1.0)})  # fmt: skip
    rng = np.random.default_rng([seed, 99])
    tiles = []
    for _ in range(n * n):
        im = column_sample(small, rng=rng, snr=2.0)
        tiles.append(im.image / max(im.dose, 1e-12))  # one dose scale for the whole frame
    big = np.block([[tiles[r * n + c] for c in range(n)] for r in range(n)]).astype(np.float32)
    cols = _shape_step(seg, big, cfg.pixel_size_A, spacing, cfg)
    fitted = [p for p in cols["shape"] if p.get("used")]
    return {
        "shape_tiled_frame_px": big.shape[0],
        "shape_tiled_columns": len(cols["x"]),
        "shape_tiled_particles": len(cols["shape"]),
        "shape_tiled_particles_fitted": len(fitted),
        "ms_shape_tiled_frame": round(cols["ms"], 1),
        "ms_shape_per_particle": round(cols["ms"] / max(len(fitted), 1), 1),
    }


def _series_config(cfg, rng: np.random.Generator, snr: float | None) -> ColumnSimConfig:
    """One scene drawn from the training ranges (as ``column_sample``), for a series."""

    def u(r: tuple[float, float]) -> float:
        return float(rng.uniform(r[0], r[1]))

    n, t = cfg.tile_px, cfg.tilt_deg
    centre = rng.uniform(0.3, 0.7, 2) * n
    return ColumnSimConfig(
        crystal=str(rng.choice(cfg.crystals)), shape_px=(n, n),
        pixel_size_A=cfg.pixel_size_A * u(cfg.pixel_size_range), diameter_A=u(cfg.diameter_A),
        d100_ratio=u(cfg.d100_ratio), truncation=u(cfg.truncation),
        facet_jitter=u(cfg.facet_jitter), center_px=(float(centre[0]), float(centre[1])),
        rotation_deg=float(rng.uniform(0, 360)),
        tilt_deg=(float(rng.uniform(-t, t)), float(rng.uniform(-t, t))),
        vacancy_fraction=u(cfg.vacancy_fraction), alpha=u(cfg.alpha),
        probe_fwhm_A=u(cfg.probe_fwhm_A), defocus_blur_A=u(cfg.defocus_blur_A),
        support_level=u(cfg.support_level), support_variation=u(cfg.support_variation),
        snr=snr, n_classes=cfg.n_classes,
    )  # fmt: skip


def offset_causes(cfg, n: int, seed: int) -> dict:
    """The per-column intensity offset split by cause (see ``--causes`` above)."""
    from nptrack.simulate.columns import _prepare, _render, _sigma_px

    rng = np.random.default_rng([seed, 5])
    causes = ("whole", "fit_bias", "tilt", "anions", "support")
    out: dict[str, dict[str, list[float]]] = {
        m: {c: [] for c in (*causes, "resid_sd")} for m in ("round", "tilt_model")
    }
    for _ in range(n):
        sim = _series_config(cfg, rng, None)
        scene_seed = int(rng.integers(2**32))

        def render(
            labelled_only: bool, support: bool, untilted: bool = False, sim=sim, seed_=scene_seed
        ):
            upd = {"tilt_deg": (0.0, 0.0), "drift_shear": 0.0, "drift_stretch": 0.0}
            s = sim.model_copy(update=upd) if untilted else sim
            particle, sup = _prepare(s, np.random.default_rng(seed_))
            if labelled_only:
                particle.present &= np.isin(particle.species, particle.crystal.labelled)
            img, cols = _render(particle, s, sup if support else 0 * sup)
            return img, np.stack([cols["x"], cols["y"]], 1), cols["occupancy"]

        images = {
            "whole": render(False, True),
            "labelled": render(True, False),
            "labelled_untilted": render(True, False, untilted=True),
            "with_anions": render(False, False),
        }
        u = 2 * np.pi * _sigma_px(sim) ** 2  # one labelled atom, noise-free atom units
        spacing = column_spacing_A(CRYSTALS[sim.crystal]) / sim.pixel_size_A
        for method, tilt in (("round", False), ("tilt_model", True)):
            b = {}
            for name, (img, xy, k) in images.items():
                fit = fit_columns(img, xy, sigma_px=0.25 / sim.pixel_size_A,
                                  spacing_px=spacing, knot_px=5.0 / sim.pixel_size_A,
                                  model_tilt=tilt)  # fmt: skip
                ok = _inside(xy[:, 0], xy[:, 1], img.shape, 2)
                design = np.stack([np.ones(ok.sum()), k[ok]], 1)
                i_col = fit["intensity"][ok] / u
                (b0, g), *_ = np.linalg.lstsq(design, i_col, rcond=None)
                b[name] = b0 / g
                if name == "whole":
                    out[method]["resid_sd"].append(float(np.std(i_col - design @ [b0, g]) / g))
            split = {"whole": b["whole"], "fit_bias": b["labelled_untilted"],
                     "tilt": b["labelled"] - b["labelled_untilted"],
                     "anions": b["with_anions"] - b["labelled"],
                     "support": b["whole"] - b["with_anions"]}  # fmt: skip
            for c in causes:
                out[method][c].append(float(split[c]))
    return {
        m: {f"{c}_{stat}": round(float(f(v)), 3) for c, v in d.items()
            for stat, f in (("mean", np.mean), ("sd", np.std))}
        for m, d in out.items()
    } | {"scenes": n}  # fmt: skip


def evaluate_series(
    seg: ColumnSegmenter, cfg, snr: float | None, n: int, frames: int, seed: int, min_area_px: int
) -> dict:
    """Per-frame vs pooled single-atom unit on simulated series (``nptrack columns`` pools).

    Each series: one particle, surface atoms leaving / arriving (3 events per frame), drift
    0.3 px per frame, constant dose; occupancy scored on matched columns as above.
    """
    rng = np.random.default_rng([seed, 7, int(1000 * (snr or 0))])
    k = seg.n_classes
    errs: dict[str, list[np.ndarray]] = {}
    for _ in range(n):
        sim = _series_config(cfg, rng, snr)
        seq = simulate_column_sequence(sim, frames=frames, events_per_frame=3.0, rng=rng)
        spacing = column_spacing_A(CRYSTALS[sim.crystal])
        fits, matches = [], []
        for im in seq.frames:
            pred = find_columns(
                seg.predict(im.image, pixel_size_A=im.pixel_size_A), min_area_px=min_area_px
            )
            cnt = count_columns(
                im.image, np.stack([pred["x"], pred["y"]], axis=1),
                pixel_size_A=im.pixel_size_A, spacing_A=spacing,
                class_probability=pred["class_probability"],
            )  # fmt: skip
            t_ok = _inside(im.columns["x"], im.columns["y"], im.image.shape, 2)
            p_ok = _inside(pred["x"], pred["y"], im.image.shape, 2)
            txy = np.stack([im.columns["x"], im.columns["y"]], axis=1)[t_ok]
            pxy = np.stack([pred["x"], pred["y"]], axis=1)[p_ok]
            ip, it = match_columns(pxy, txy, max_distance_px=0.5 * spacing / im.pixel_size_A)
            sel = np.flatnonzero(p_ok)[ip]
            fits.append((pred, cnt))
            matches.append((sel, np.minimum(im.columns["occupancy"][t_ok][it], k)))
        if not any(len(p["x"]) for p, _ in fits):
            continue
        pooled = estimate_unit(
            np.concatenate([np.asarray(c["intensity"]) for _, c in fits]),
            prior_occupancy=np.concatenate([p["occupancy"] for p, _ in fits]),
        )
        for (pred, cnt), (sel, t) in zip(fits, matches, strict=True):
            if len(pred["x"]) == 0:
                continue
            pool = assign_occupancy(
                cnt["intensity"], cnt["intensity_sd"], pooled.unit,
                class_probability=pred["class_probability"],
            )  # fmt: skip
            occ = {
                "net": pred["occupancy"], "count_frame": cnt["occupancy_count"],
                "combined_frame": cnt["occupancy"], "count_pooled": pool["occupancy_count"],
                "combined_pooled": pool["occupancy"],
            }  # fmt: skip
            for m, o in occ.items():
                errs.setdefault(m, []).append(np.minimum(np.asarray(o)[sel], k) - t)
    out: dict[str, object] = {"snr": snr, "series": n, "frames": frames}
    for m, v in errs.items():
        d = np.concatenate(v)
        out[f"{m}_exact"] = round(float(np.mean(d == 0)), 4)
        out[f"{m}_within1"] = round(float(np.mean(np.abs(d) <= 1)), 4)
    out["columns"] = int(sum(len(v) for v in errs.get("net", [])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "models" / "nptrack-columns-v1.onnx"))
    ap.add_argument("--config", default=str(REPO / "configs" / "train" / "columns.toml"))
    ap.add_argument("--snr", type=float, nargs="+", default=[2.0, 1.0])
    ap.add_argument("--clean", action="store_true", help="also score noise-free frames")
    ap.add_argument("--frames", type=int, default=24, help="frames per SNR")
    ap.add_argument("--size", type=int, default=256, help="frame side (px)")
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time-size", type=int, default=1024, help="0: no timing")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--min-area-px", type=int, default=None, help="default: as nptrack columns")
    ap.add_argument("--crystal", default=None, help="score this simulate.columns.CRYSTALS key")
    ap.add_argument("--true-positions", type=float, default=None, metavar="PRIOR_SD",
                    help="no network: count at true positions; prior scale error sd")  # fmt: skip
    ap.add_argument("--series", type=int, default=0, help="also score N series per SNR")
    ap.add_argument("--series-frames", type=int, default=6)
    ap.add_argument("--causes", type=int, default=0, help="offset split on N clean scenes")
    args = ap.parse_args()
    seg = ColumnSegmenter.from_path(args.model, providers="cpu", intra_op_threads=args.threads)
    update: dict = {"tile_px": args.size, "empty_fraction": 0.0}
    if args.crystal:
        update["crystals"] = [args.crystal]
    cfg = load_train_config(args.config).columns.model_copy(update=update)
    snrs: list[float | None] = list(args.snr) + ([None] if args.clean else [])
    min_area = args.min_area_px
    if min_area is None:
        min_area = default_min_area_px(seg.metadata, seg.pixel_size_A)
    report = {
        "model": args.model,
        "model_version": seg.metadata.get("model_version"),
        "seed": args.seed,
        "frame_px": args.size,
        "min_area_px": min_area,
        "crystals": cfg.crystals,
        "true_positions_prior_sd": args.true_positions,
        "results": [
            evaluate(seg, cfg, s, args.frames, args.seed, min_area, args.true_positions)
            for s in snrs
        ],
    }
    if args.series:
        report["series"] = [
            evaluate_series(seg, cfg, s, args.series, args.series_frames, args.seed, min_area)
            for s in snrs
        ]
    if args.causes:
        report["offset_causes"] = offset_causes(cfg, args.causes, args.seed)
    if args.time_size:
        report["timing"] = {"threads": args.threads, **timing(seg, cfg, args.time_size, args.seed)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
