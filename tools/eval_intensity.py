"""Integrated intensity on simulator truth: what the noise allows, and what the estimator gets.

For each preset, ``--n`` images drawn as ``nptrack simulate images D --n N --preset P --seed
S`` draws them (image i from the generator ``[seed, i]``). For ADF-STEM presets the same
image is also rendered without noise, and without its particles (the support alone, same
scan distortion), so that the error of an integrated intensity can be taken apart. Particles
of at least ``--min-diameter-nm`` not cut by the border are scored; the figure is the median
|relative error| against the simulator's intensity (and the median signed error).

Rows, for a margin m (the particle's true footprint grown by m px, pixels nearer to it than
to any other particle):

- ``shot m``: Σ(image − noise-free image) over the zone: shot and read noise alone;
- ``rim m``: Σ(noise-free image − support) − truth: the signal outside the zone (and the
  footprint's sampling of the volume), no noise;
- ``true support m``: Σ(image − support): noise and rim, the background known exactly
  (the floor of any estimator that integrates this zone);
- ``untextured support m``: Σ(image − support without its fine texture): what an
  estimator that knew the support's smooth thickness, grains, steps and pores, but not its
  atomic-scale texture under the particle, would get;
- ``ring on clean support m``: the background as the mean of the ring of `measure_particles`
  (the 4 px beyond the largest margin, 2 px) taken on the noise-free support: what the
  texture under the particle costs, without noise;
- ``ring m``: the same ring on the image: the estimator with the true footprint;
- ``measure_particles``: the shipped estimator (margin chosen per frame) on the true
  footprints, and ``test protocol`` / ``test protocol, margin 2``: the union of the true
  masks separated by `detect_particles` and measured, adaptive and with the fixed 2 px of
  the previous code (what ``tests/measure/test_analyze.py`` measures on two images, seed 1).

BF-TEM presets (phase contrast: no additive support) get the last rows only.

    python tools/eval_intensity.py                                # table1, seed 1, images 0-1
    python tools/eval_intensity.py --presets table1 dense pd250 bf_gold --n 12
    python tools/eval_intensity.py --dose-scale 1000              # the shot-noise limit
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from nptrack.measure import detect_particles  # noqa: E402
from nptrack.measure.props import _squared_edt, measure_particles  # noqa: E402
from nptrack.simulate.particles import random_particles  # noqa: E402
from nptrack.simulate.presets import (  # noqa: E402
    SimConfig,
    _draw,
    _optics,
    _particle_options,
    _support,
    load_preset,
    simulate_image,
)
from nptrack.simulate.stem import AdfOptics, ScanDistortion, SimImage, render_adf  # noqa: E402

MARGINS = (0, 1, 2)
RING_PX = 4
LARGEST = 2  # the ring of measure_particles starts beyond its largest margin


def render_parts(
    cfg: SimConfig, seed: int, i: int
) -> tuple[SimImage, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Image i of `cfg` as `simulate_image` draws it, with noise-free and support renders.

    The draws of `nptrack.simulate.presets.simulate_image` are repeated one for one; the
    noise-free image, the support alone (no particles) and the support without its fine
    (atomic-scale) texture are rendered from copies of the generator taken before the
    render, so the scan distortion is the same. For BF presets the last three are None.
    """
    rng = np.random.default_rng([seed, i])
    ref = simulate_image(cfg, rng=copy.deepcopy(rng))
    if cfg.modality != "adf":
        return ref, None, None, None
    smooth = copy.deepcopy(rng)
    clean, bare = _render_adf(cfg, rng, ref)
    # The same draws with a vanishing texture: its field is drawn, then scaled to ~0.
    quiet = cfg.model_copy(update={"support": cfg.support.model_copy(update={"texture": 1e-12})})
    _, smooth_bare = _render_adf(quiet, smooth, None)
    return ref, clean, bare, smooth_bare


def _render_adf(
    cfg: SimConfig, rng: np.random.Generator, ref: SimImage | None
) -> tuple[np.ndarray, np.ndarray]:
    px = cfg.field.pixel_size_nm
    optics = _optics(cfg, rng)
    n = _draw(cfg.particles.count, rng)
    opts = _particle_options(cfg, rng)
    shape = (cfg.field.height_px, cfg.field.width_px)
    parts = random_particles(shape, pixel_size_nm=px, n=n, rng=rng, **opts)
    support = _support(cfg, shape, rng)
    assert isinstance(optics, AdfOptics)
    scan = ScanDistortion(
        float(_draw(cfg.adf.line_jitter_px, rng)),
        cfg.adf.jitter_correlation,
        float(_draw(cfg.adf.shear_px_per_row, rng)),
    )
    state = copy.deepcopy(rng)
    if ref is not None:
        sim = render_adf(parts, support, pixel_size_nm=px, optics=optics, scan=scan, rng=rng)
        if not np.array_equal(sim.image, ref.image):
            raise RuntimeError("the simulator's draws changed: update render_parts")
    kw: dict[str, Any] = {"pixel_size_nm": px, "optics": optics, "scan": scan, "noise": False}
    clean = render_adf(parts, support, rng=copy.deepcopy(state), **kw).image
    bare = render_adf(parts.take(np.zeros(0, np.int64)), support, rng=copy.deepcopy(state), **kw)
    return clean.astype(np.float64), bare.image.astype(np.float64)


def with_dose(cfg: SimConfig, scale: float) -> SimConfig:
    """`cfg` with its dose multiplied by `scale` (ADF or BF)."""
    if scale == 1.0:
        return cfg
    key = "adf" if cfg.modality == "adf" else "bf"
    block = getattr(cfg, key)
    dose = block.dose_e_per_px
    dose = [d * scale for d in dose] if isinstance(dose, list | tuple) else dose * scale
    return cfg.model_copy(update={key: block.model_copy(update={"dose_e_per_px": dose})})


def _zones(labels: np.ndarray, lab: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Zone (footprint + margin, nearer to it than to others) and the ring of measure_particles."""
    own = labels == lab
    free = (labels == 0) | own
    d_own, d_other = _squared_edt(~own), _squared_edt(free)
    zone = own | ((d_own <= margin * margin) & (d_own < d_other))
    big = LARGEST * LARGEST
    ring = (d_own > big) & (d_own <= (LARGEST + RING_PX) ** 2) & (d_other > big)
    return zone, ring


def _consecutive(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(labels[labels > 0])
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1)
    return lut[labels], lut


def image_errors(sim: SimImage, clean: np.ndarray | None, bare: np.ndarray | None,
                 smooth_bare: np.ndarray | None,
                 min_diameter_nm: float) -> dict[str, list[float]]:  # fmt: skip
    """Relative errors (fractions) of every scored particle of one image, per row."""
    out: dict[str, list[float]] = {}
    img = sim.image.astype(np.float64)
    px = sim.pixel_size_nm
    scored = [t for t in sim.truth if not t["border"] and t["diameter_nm"] >= min_diameter_nm]
    true_labels, lut = _consecutive(sim.labels)
    shipped = measure_particles(true_labels, sim.image, pixel_size_nm=(px, px))
    union = (sim.labels > 0).astype(np.float32)
    protocol = detect_particles(union, sim.image, pixel_size_nm=(px, px))
    fixed = measure_particles(
        protocol.labels, sim.image, pixel_size_nm=(px, px), adaptive_margin=False
    )
    for t in scored:
        truth = float(t["intensity"])
        rows: dict[str, float] = {}
        if clean is not None and bare is not None and smooth_bare is not None:
            for m in MARGINS:
                zone, ring = _zones(sim.labels, int(t["id"]), m)
                rows[f"shot {m}"] = float((img - clean)[zone].sum()) / truth
                rows[f"rim {m}"] = float((clean - bare)[zone].sum()) / truth - 1
                rows[f"true support {m}"] = float((img - bare)[zone].sum()) / truth - 1
                rows[f"untextured support {m}"] = float((img - smooth_bare)[zone].sum()) / truth - 1
                clean_bg = float(bare[ring].mean())
                rows[f"ring on clean support {m}"] = float((img[zone] - clean_bg).sum()) / truth - 1
                rows[f"ring {m}"] = float((img[zone] - img[ring].mean()).sum()) / truth - 1
        rows["measure_particles, true footprints"] = (
            shipped["intensity"][lut[int(t["id"])] - 1] / truth - 1
        )
        lab = protocol.labels[round(float(t["y"])), round(float(t["x"]))]
        if lab > 0:
            rows["test protocol"] = protocol.columns["intensity"][lab - 1] / truth - 1
            rows["test protocol, margin 2"] = fixed["intensity"][lab - 1] / truth - 1
        for k, v in rows.items():
            out.setdefault(k, []).append(v)
    out["_margin"] = [float(shipped["intensity_margin_px"][0])] if scored else []
    return out


def evaluate(preset: str, *, n: int, seed: int, dose_scale: float, min_diameter_nm: float,
             first: int = 0) -> dict[str, Any]:  # fmt: skip
    """Median |error| and median signed error (%) of every row over images `first` …
    `first + n - 1` of `preset`."""
    cfg = with_dose(load_preset(preset), dose_scale)
    pooled: dict[str, list[float]] = {}
    for i in range(first, first + n):
        sim, clean, bare, smooth_bare = render_parts(cfg, seed, i)
        for k, v in image_errors(sim, clean, bare, smooth_bare, min_diameter_nm).items():
            pooled.setdefault(k, []).extend(v)
    margins = pooled.pop("_margin", [])
    rows = {
        k: {
            "particles": len(v),
            "median_abs_error_pct": round(100 * float(np.median(np.abs(v))), 2),
            "median_signed_error_pct": round(100 * float(np.median(v)), 2),
        }
        for k, v in pooled.items()
    }
    return {"preset": preset, "images": [first, first + n], "seed": seed, "dose_scale": dose_scale,
            "margins_chosen": margins, "rows": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["table1"])
    ap.add_argument("--n", type=int, default=2, help="images per preset")
    ap.add_argument("--first", type=int, default=0, help="index of the first image")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dose-scale", type=float, default=1.0, help="dose × this")
    ap.add_argument("--min-diameter-nm", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=None, help="JSON file")
    args = ap.parse_args(argv)
    results = []
    for preset in args.presets:
        r = evaluate(preset, n=args.n, seed=args.seed, dose_scale=args.dose_scale,
                     min_diameter_nm=args.min_diameter_nm, first=args.first)  # fmt: skip
        results.append(r)
        print(f"{preset}: images {args.first}-{args.first + args.n - 1}, seed {args.seed}, "
              f"dose × {args.dose_scale:g}, "
              f"margins chosen {r['margins_chosen']}")  # fmt: skip
        for name, row in r["rows"].items():
            print(f"  {name:36s} {row['particles']:5d}  median |error| "
                  f"{row['median_abs_error_pct']:5.2f} %  signed "
                  f"{row['median_signed_error_pct']:+6.2f} %")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
