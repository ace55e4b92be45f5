"""Geometry errors of `nptrack.measure.measure_particles` (the README's geometry numbers).

Two sets, both against an exact truth:

- drawn shapes: disks, ellipses (minor = major / 2), squares and rectangles (short = long /
  2) digitised by pixel centres at random sub-pixel positions and rotations (the `draw` of
  tests/measure/test_props.py); per shape and size, max |error| and mean signed error in %
  of area, equivalent diameter, Feret min / max, perimeter and circularity;
- faceted particles of the simulator (`nptrack.simulate.particles`: an ellipse blended
  with a 4–8-sided polygon, i.e. sharp corners and slightly bulging facets), measured
  against their analytic outline: median, 95th percentile and max of |error| and the mean
  signed error of perimeter, Feret min / max and circularity.

    python tools/eval_geometry.py [--placements 40] [--facet-diameter-px 25] [--out J.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the shape drawer of the tests

from tests.measure.test_props import draw, measured  # noqa: E402

from nptrack.measure import measure_particles  # noqa: E402

KEYS = ("area", "diameter", "feret_min", "feret_max", "perimeter", "circularity")
SHAPES = (
    [("disk", s) for s in (20, 30, 50)]
    + [("ellipse", s) for s in (20, 30, 40, 50)]
    + [("square", s) for s in (20, 30, 50)]
    + [("rectangle", s) for s in (20, 30, 40, 50, 60)]
)


def drawn_shapes(placements: int) -> list[dict[str, Any]]:
    """Per (shape, size): max |error| and mean signed error (%) of each measure."""
    rows = []
    for kind, size in SHAPES:
        rng = np.random.default_rng(1000 + size)
        errors: dict[str, list[float]] = {k: [] for k in KEYS}
        for i in range(placements):
            angle = 0.0 if i == 0 else rng.uniform(0, np.pi)
            mask, truth = draw(kind, size, angle, rng)
            got = measured(mask)
            for k in KEYS:
                errors[k].append(100 * (got[k] / truth[k] - 1))
        row: dict[str, Any] = {"shape": kind, "size_px": size}
        for k in KEYS:
            e = np.asarray(errors[k])
            row[k] = {
                "max_abs": round(float(np.abs(e).max()), 3),
                "mean": round(float(e.mean()), 3),
            }
        rows.append(row)
    return rows


def faceted_particles(diameter_px: float, n: int = 400) -> dict[str, Any]:
    """Simulator particles with sharp corners against their analytic outline."""
    from nptrack.simulate.particles import _radius2, particle_footprints, random_particles

    px = 0.1
    shape = (1200, 1200)
    rng = np.random.default_rng(11)
    parts = random_particles(
        shape, pixel_size_nm=px, n=n, diameter_nm=diameter_px * px,
        diameter_sd_nm=0.15 * diameter_px * px, facet_fraction=1.0, min_gap_nm=0.5,
        margin_px=-40, rng=rng,
    )  # fmt: skip
    fp = particle_footprints(parts, shape, pixel_size_nm=px)
    ids = np.unique(fp.labels[fp.labels > 0])
    lut = np.zeros(fp.labels.max() + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1)
    labels = lut[fp.labels]
    theta = np.linspace(0, 2 * np.pi, 256, endpoint=False)
    fine = np.linspace(0, 2 * np.pi, 20000, endpoint=False)
    ang = np.linspace(0, np.pi, 3600, endpoint=False)
    truth = []
    for i in ids:
        j = int(np.nonzero(parts.id == i)[0][0])
        a, nf, fs = parts.aspect[j], int(parts.facets[j]), parts.facet_strength[j]
        k2 = (parts.diameter_nm[j] / 2) ** 2 / _radius2(theta, a, nf, fs).mean()
        r = np.sqrt(k2 * _radius2(fine, a, nf, fs)) / px
        xy = np.c_[r * np.cos(fine), r * np.sin(fine)]
        perim = np.hypot(*np.diff(np.r_[xy, xy[:1]], axis=0).T).sum()
        area = 0.5 * abs(
            np.sum(xy[:, 0] * np.roll(xy[:, 1], -1) - xy[:, 1] * np.roll(xy[:, 0], -1))
        )
        width = np.ptp(xy @ np.c_[np.cos(ang), np.sin(ang)].T, axis=0)
        truth.append((perim, width.min(), width.max(), 4 * np.pi * area / perim**2))
    t = np.asarray(truth)
    cols = measure_particles(labels)
    inside = cols["border"] == 0
    out: dict[str, Any] = {"particles": int(inside.sum()), "diameter_px": diameter_px}
    for k, name in enumerate(("perimeter_px", "feret_min_px", "feret_max_px", "circularity")):
        e = 100 * (cols[name][inside] / t[inside, k] - 1)
        a = np.abs(e)
        out[name] = {
            "median_abs": round(float(np.median(a)), 3),
            "p95_abs": round(float(np.percentile(a, 95)), 3),
            "max_abs": round(float(a.max()), 3),
            "mean": round(float(e.mean()), 3),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--placements", type=int, default=40, help="per drawn shape and size")
    ap.add_argument("--facet-diameter-px", type=float, default=25.0)
    ap.add_argument("--skip-facets", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout only)")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"drawn": drawn_shapes(args.placements)}
    print(f"{'shape':10s} {'size':>4s} " + " ".join(f"{k[:11]:>13s}" for k in KEYS))
    for r in result["drawn"]:
        cells = [f"{r[k]['max_abs']:5.2f}/{r[k]['mean']:+5.2f}" for k in KEYS]
        print(f"{r['shape']:10s} {r['size_px']:4d} " + " ".join(f"{c:>13s}" for c in cells))
    if not args.skip_facets:
        result["faceted"] = f = faceted_particles(args.facet_diameter_px)
        print(f"faceted particles: {f['particles']} of ~{f['diameter_px']:g} px; "
              "median / p95 / max |error| %, mean error %")  # fmt: skip
        for name in ("perimeter_px", "feret_min_px", "feret_max_px", "circularity"):
            v = f[name]
            print(f"  {name:13s} {v['median_abs']:5.2f} {v['p95_abs']:5.2f} {v['max_abs']:5.2f} "
                  f"{v['mean']:+5.2f}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
