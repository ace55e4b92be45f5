"""``nptrack columns``: atomic-column positions, occupancy (depth) and confidence.

Registered on `nptrack.cli.main` by one import at the bottom of cli.py. Thin: read frames,
run :class:`nptrack.segment.columns_infer.ColumnSegmenter`, find columns, count their atoms
(:mod:`nptrack.segment.columns_count`) and track them, write the tables and figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from nptrack.cli import UserError, friendly, main

__all__: list[str] = []

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "nptrack-columns-v1.onnx"


def _name(source: str) -> str:
    return Path(source.split("#")[0]).stem


def _figures(
    image: np.ndarray,
    classes: np.ndarray,
    cols: dict[str, np.ndarray],
    n_classes: int,
    depth_png: Path,
    overlay_png: Path,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = image.shape
    size = (7.5, 6.2 * h / w + 0.4)
    cmap = plt.get_cmap("viridis").with_extremes(bad="black")
    norm = matplotlib.colors.Normalize(vmin=0.5, vmax=n_classes + 0.5)
    fig, ax = plt.subplots(figsize=size, constrained_layout=True)
    depth = np.ma.masked_equal(classes, 0)
    im = ax.imshow(depth, cmap=cmap, norm=norm, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="column occupancy (atoms); black: background", shrink=0.8)
    ax.set_title(f"{title}: depth map", fontsize=9)
    ax.set_axis_off()
    fig.savefig(depth_png, dpi=110)
    plt.close(fig)

    lo, hi = np.percentile(image, [1, 99.5])
    fig, ax = plt.subplots(figsize=size, constrained_layout=True)
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ax.scatter(
        cols["x"],
        cols["y"],
        s=max(4.0, 9000.0 / max(h, w)),
        facecolors="none",
        edgecolors=cmap(norm(cols["occupancy"])),
        linewidths=0.8,
    )
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label="column occupancy (atoms)", shrink=0.8)
    ax.set_title(f"{title}: {len(cols['x'])} columns", fontsize=9)
    ax.set_axis_off()
    fig.savefig(overlay_png, dpi=110)
    plt.close(fig)


@main.command(name="columns")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Output folder (created).")  # fmt: skip
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="Column model (ONNX); default models/nptrack-columns-v1.onnx.")  # fmt: skip
@click.option("--pixel-size-A", "pixel_size_A", type=float, default=None,
              help="Å per pixel; default: the files', else the model's.")  # fmt: skip
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads (default: all).")
@click.option("--providers", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="ONNX Runtime execution providers.")  # fmt: skip
@click.option("--no-figures", is_flag=True, help="Tables only (no depth-map / overlay PNGs).")
@click.option("--occupancy", "method",
              type=click.Choice(["combined", "count", "net", "shape"]),
              default="combined", show_default=True,
              help="combined: the network's class probabilities times statistical atom "
              "counting of the raw intensities; count: counting alone; net: the network "
              "alone; shape: combined with a 3D shape prior (a convex particle of the "
              "model's crystal faceted on {111} / {100}, fitted to all columns; falls back "
              "to combined where it does not fit). The counting columns are written "
              "either way.")  # fmt: skip
@click.option("--pool-unit/--no-pool-unit", default=False, show_default=True,
              help="On a series: one single-atom intensity for all frames (constant dose; "
              "no better than per frame on simulated series).")  # fmt: skip
@click.option("--column-spacing-A", "spacing_A", type=float, default=None,
              help="Smallest column spacing (Å) for counting; default: the model's.")  # fmt: skip
@friendly
def columns_command(
    images: tuple[Path, ...],
    out_dir: Path,
    model_path: Path | None,
    pixel_size_A: float | None,
    threads: int | None,
    providers: str,
    no_figures: bool,
    method: str,
    pool_unit: bool,
    spacing_A: float | None,
) -> None:
    """Atomic columns of IMAGE files (images, stacks or folders; several frames = a series).

    Writes OUT/columns.csv (image, frame, column_id, x, y in px, occupancy in atoms and its
    confidence as --occupancy says, occupancy_net, occupancy_count, intensity = integrated
    column intensity above the support in image units × px), OUT/depth/*.png (occupancy
    map) and OUT/overlay/*.png; on a series also OUT/occupancy_time.csv and .png (columns
    matched across frames by nearest position); OUT/summary.json (with the single-atom
    intensity of every frame).
    """
    from nptrack.io.columns import COLUMN_TABLE, formatted_rows, write_occupancy_time
    from nptrack.io.export import write_tables
    from nptrack.io.read import read_series
    from nptrack.segment.columns_count import assign_occupancy, column_cells, estimate_unit
    from nptrack.segment.columns_frame import apply_shape_prior, columns_of_frame, model_crystal
    from nptrack.segment.columns_infer import ColumnSegmenter, track_columns

    if pixel_size_A is not None and not pixel_size_A > 0:
        raise UserError(f"--pixel-size-A must be positive, got {pixel_size_A}")
    if spacing_A is not None and not spacing_A > 0:
        raise UserError(f"--column-spacing-A must be positive, got {spacing_A}")
    seg = ColumnSegmenter.from_path(
        model_path or DEFAULT_MODEL, providers=providers, intra_op_threads=threads
    )
    frames = read_series(images)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not no_figures:
        (out_dir / "depth").mkdir(exist_ok=True)
        (out_dir / "overlay").mkdir(exist_ok=True)
    if spacing_A is None:
        spacing_A = float(seg.metadata.get("column_spacing_A", 3.0))
    per_frame: list[dict[str, Any]] = []
    frame_shapes: list[tuple[int, int]] = []
    figures: list[tuple[Any, np.ndarray | None, str, str, dict[str, Any], float]] = []
    assumed = 0
    per_file: dict[str, int] = {}
    with click.progressbar(frames, label="columns", file=sys.stderr) as bar:
        for fr in bar:
            if pixel_size_A is not None:
                px_A = pixel_size_A
            elif fr.pixel_size_nm is not None:
                px_A = 10.0 * float(np.mean(fr.pixel_size_nm))
            else:
                px_A, assumed = seg.pixel_size_A, assumed + 1
            cols, pred = columns_of_frame(
                seg, fr.data, pixel_size_A=px_A, spacing_A=spacing_A,
                method=method,  # type: ignore[arg-type]
            )  # fmt: skip
            name = _name(fr.source)
            k = per_file.get(name, 0)
            per_file[name] = k + 1
            cols["image"] = np.full(len(cols["x"]), name, object)
            cols["frame"] = np.full(len(cols["x"]), fr.index)
            cols["pixel_size_A"] = np.full(len(cols["x"]), px_A)
            per_frame.append(cols)
            frame_shapes.append(fr.data.shape[:2])
            if not no_figures:
                stem = f"{name}_{k}" if k or "#" in fr.source else name
                classes = pred.classes if method == "net" else None
                figures.append((fr, classes, stem, f"{name} frame {fr.index}", cols, px_A))
    units = [c["unit"] for c in per_frame if len(c["x"])]
    pooled = None
    if pool_unit and method != "net" and len(units) > 1:
        # Constant dose: one unit from the columns of all frames (a sharper comb).
        pooled = estimate_unit(
            np.concatenate([c["intensity"] for c in per_frame]),
            prior_occupancy=np.concatenate([c["occupancy_net"] for c in per_frame]),
        )
        for cols, shape_px in zip(per_frame, frame_shapes, strict=True):
            occ = assign_occupancy(
                cols["intensity"], cols["intensity_sd"], pooled.unit,
                class_probability=cols["class_probability"],
                method="combined" if method == "shape" else method,  # type: ignore[arg-type]
            )  # fmt: skip
            for key in ("occupancy", "confidence", "occupancy_count"):
                cols[key] = occ[key]
            if method == "shape" and len(cols["x"]):
                apply_shape_prior(
                    cols, frame_shape=shape_px, pixel_size_A=float(cols["pixel_size_A"][0]),
                    crystal=model_crystal(seg.metadata), unit=pooled.unit,
                    unit_trusted=pooled.from_comb,
                )  # fmt: skip
    # Figures after the pooled unit is known (read_series holds the frames anyway).
    for fr, classes, stem, title, cols, px_A in figures:
        if classes is None:  # depth map from the counted occupancies: label-radius discs
            r_px = float(seg.metadata.get("label_radius_A", 0.8)) / px_A
            cells = column_cells(
                np.stack([cols["x"], cols["y"]], axis=1), fr.data.shape, radius_px=r_px
            )
            lut = np.concatenate([[0], np.asarray(cols["occupancy"], int)])
            classes = lut[cells]
        _figures(
            fr.data, classes, cols, seg.n_classes, out_dir / "depth" / f"{stem}.png",
            out_dir / "overlay" / f"{stem}.png", title,
        )  # fmt: skip
    px_mean = float(np.mean([c["pixel_size_A"][0] for c in per_frame if len(c["x"])] or [1.0]))
    ids = track_columns(per_frame, max_distance_px=0.5 * spacing_A / px_mean)
    rows: list[dict[str, Any]] = []
    for cols, cid in zip(per_frame, ids, strict=True):
        for i in range(len(cols["x"])):
            rows.append({
                "image": cols["image"][i], "frame": int(cols["frame"][i]),
                "column_id": int(cid[i]), "x": float(cols["x"][i]), "y": float(cols["y"][i]),
                "occupancy": int(cols["occupancy"][i]),
                "confidence": float(cols["confidence"][i]),
                "occupancy_net": int(cols["occupancy_net"][i]),
                "occupancy_count": int(cols["occupancy_count"][i]),
                "intensity": float(cols["intensity"][i]),
            })  # fmt: skip
    write_tables({"columns": (("image", *COLUMN_TABLE), formatted_rows(rows))}, out_dir)
    changed = write_occupancy_time(rows, len(frames), out_dir) if len(frames) > 1 else 0
    summary = {
        "frames": len(frames),
        "columns": len(rows),
        "columns_tracked": len({r["column_id"] for r in rows}),
        "columns_changed": changed,
        "model": str(model_path or DEFAULT_MODEL),
        "model_version": seg.metadata.get("model_version"),
        "model_pixel_size_A": seg.pixel_size_A,
        "frames_without_pixel_size": assumed,
        "occupancy_method": method,
        "column_spacing_A": spacing_A,
        "unit_per_frame": [
            {
                "unit": float(u["unit"]),
                "prior_unit": float(u["prior_unit"]),
                "comb_z": round(float(u["comb_z"]), 2),
                "from_comb": bool(u["from_comb"]),
            }
            for u in units
        ],
        "shape_per_frame": None
        if method != "shape"
        else [
            {
                "particles": len(c.get("shape", [])),
                "particles_fitted": sum(bool(p.get("used")) for p in c.get("shape", [])),
                "columns_from_shape": int(np.sum(c.get("shape_used", []))),
            }
            for c in per_frame
        ],
        "unit_pooled": None
        if pooled is None
        else {
            "unit": pooled.unit,
            "comb_z": round(pooled.comb_z, 2),
            "from_comb": pooled.from_comb,
        },
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if assumed:
        click.echo(
            f"nptrack columns: {assumed} frame(s) without a pixel size: assumed the model's "
            f"{seg.pixel_size_A:g} Å/px (give --pixel-size-A)",
            err=True,
        )
    click.echo(
        f"{len(frames)} frame(s), {len(rows)} columns"
        + (f", {changed} changed occupancy" if len(frames) > 1 else "")
        + f" -> {out_dir}",
        err=True,
    )
