"""Command-line interface: parses arguments, loads config, calls one function per command.

Errors that a user can fix (bad input file, wrong config key, missing pixel size) become one
line on stderr and exit status 1; bad usage exits 2 (click's convention); ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from nptrack import __version__

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """An error whose message is all the user needs (no traceback)."""


def _expected_errors() -> tuple[type[BaseException], ...]:
    from nptrack.config import ConfigError
    from nptrack.io.errors import ReadError

    return (UserError, ConfigError, ReadError, FileNotFoundError, ValueError)


def friendly(func: F) -> F:
    """Turn expected exceptions into one clear line on stderr and exit status 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug"))
        try:
            return func(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except _expected_errors() as exc:
            if debug:
                raise
            click.echo(f"nptrack {ctx.info_name}: error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo(f"nptrack {ctx.info_name}: interrupted", err=True)
            ctx.exit(130)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nptrack")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    """nptrack: live analysis of in situ (E)TEM / STEM series of supported nanoparticles."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file per line.")
@friendly
def info(files: tuple[Path, ...], as_json: bool) -> None:
    """What nptrack sees in each FILE: kind, frames, shape, dtype, pixel size (nm), complete.

    Exit status 1 if any file could not be read as an image (refused, truncated, unknown).
    """
    from nptrack.io.read import probe

    failed = 0
    for path in files:
        result = probe(path)
        if as_json:
            click.echo(json.dumps(result.to_dict()))
        else:
            click.echo(result.describe())
        if result.kind == "refused":
            failed += 1
            if not as_json:
                click.echo(f"nptrack info: error: {path}: {result.reason}", err=True)
    if failed:
        sys.exit(1)


# --- simulate commands (nptrack.simulate) ---------------------------------------------------
@main.group()
def simulate() -> None:
    """Simulated data: training images with masks, sequences with ground truth.

    Presets (configs/sim/*.toml): table1 (256² px, 100 nm field, 50 frames, like Faraz et al.),
    pd250 (2048² ADF-STEM, Pd on alumina, 0.1 nm/px, 3 min per frame), bf_gold (1024² BF-TEM,
    2 nm Au on carbon, 0.064 nm/px), dense (550 particles, fusions and crossings). A path to
    a TOML file works too.
    """


@simulate.command("images")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Number of images.")
@click.option("--preset", default="table1", show_default=True, help="Preset name or TOML path.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@friendly
def simulate_images(out: Path, n: int, preset: str, seed: int) -> None:
    """Write N images with masks into OUT.

    OUT/images/sim_NNNN.tif: float32 detected electrons per pixel, pixel size (nm) stored as
    ImageJ calibration; OUT/masks/sim_NNNN.png: 16-bit instance labels (0 = background);
    OUT/particles.csv: per particle x, y (pixels, x = column), diameter_nm, intensity
    (integrated electrons above background), area_px, layer, border.
    """
    from nptrack.simulate.write import write_images

    write_images(out, n=n, config=preset, seed=seed)
    click.echo(f"wrote {n} images with masks to {out}")


@simulate.command("sequence")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--frames", type=click.IntRange(min=1), default=None, help="Number of frames.")
@click.option("--preset", default="table1", show_default=True, help="Preset name or TOML path.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tif", "emd", "mrc"]),
    default=None,
    help="File format of the frames (default: the preset's).",
)
@click.option(
    "--mode",
    type=click.Choice(["chunks", "rename", "stack"]),
    default=None,
    help="Write each file in pieces, to a temp name then rename, or grow one stack file.",
)
@click.option(
    "--cadence-s",
    type=click.FloatRange(min=0),
    default=None,
    help="Wall-clock seconds between frames, like a live acquisition (default 0: no wait).",
)
@click.option("--masks", is_flag=True, help="Also write OUT/masks/frame_NNNN.png (track ids).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@friendly
def simulate_sequence(
    out: Path,
    frames: int | None,
    preset: str,
    fmt: str | None,
    mode: str | None,
    cadence_s: float | None,
    masks: bool,
    seed: int,
) -> None:
    """Simulate a time series and play it into OUT/frames like a microscope.

    Ground truth in OUT: ground_truth.csv (frame, id, x, y in pixels of frame 0 before drift,
    diameter_nm, intensity in detected electrons, layer), events.csv, transforms_truth.csv
    (affine from each acquired frame to frame 0, pixels), sequence.json (settings; pixel size
    in nm, frame interval in s).
    """
    from nptrack.simulate.write import write_sequence

    overrides = {"format": fmt, "mode": mode, "cadence_s": cadence_s}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    write_sequence(out, config=preset, frames=frames, seed=seed, masks=masks, **overrides)
    click.echo(f"wrote sequence to {out} (frames in {out / 'frames'})")


# (end simulate commands)

# --- register command (nptrack.register) -----------------------------------------------------


@main.command("register")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (created): frames.csv, registered.tif, drift.png.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML configuration (section [register]).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one config key, e.g. --set register.working_size_px=1024.",
)
@friendly
def register_command(
    inputs: tuple[Path, ...], out_dir: Path, config_path: Path | None, overrides: tuple[str, ...]
) -> None:
    """Register a series (files, stacks or a folder) to its first frame.

    Writes OUT/frames.csv (the affine map from each acquired frame to frame 0, in pixels,
    x = column, y = row, origin at the centre of the top-left pixel; reg_cc; status
    ok / degraded / failed), OUT/registered.tif (float32 stack in frame-0 pixels, linear
    interpolation, 0 outside the field) and OUT/drift.png (shift, scale / shear, rotation
    and correlation over time).
    """
    from nptrack.config import load_config
    from nptrack.io.read import read_series

    config = load_config(config_path, list(overrides))
    frames = read_series(inputs)
    _register_outputs(frames, config.register, out_dir)


def _register_outputs(frames: list[Any], config: Any, out_dir: Path) -> None:
    """Register `frames` and write the three outputs (the I/O glue of `nptrack register`)."""
    import csv

    import tifffile
    from tqdm import tqdm

    from nptrack.register import FRAMES_COLUMNS, Registrar, frames_rows, warp_to_reference

    registrar = Registrar(config=config)
    results = [
        registrar.update(f.data) for f in tqdm(frames, desc="register", unit="frame", disable=None)
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "frames.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FRAMES_COLUMNS)
        writer.writeheader()
        writer.writerows(frames_rows(frames, results))
    shape = frames[0].shape
    pages = (
        warp_to_reference(f.data, r.matrix, output_shape=shape)
        for f, r in zip(frames, results, strict=True)
    )
    extra: dict[str, Any] = {"metadata": {"axes": "TYX"}}
    if frames[0].pixel_size_nm is not None:
        py, px = frames[0].pixel_size_nm
        extra = {"resolution": (1 / px, 1 / py), "metadata": {"axes": "TYX", "unit": "nm"}}
    with tifffile.TiffWriter(out_dir / "registered.tif", imagej=True) as tif:
        tif.write(pages, shape=(len(frames), *shape), dtype="float32", **extra)
    _drift_plot(frames, results, out_dir / "drift.png")
    bad = sum(r.status == "failed" for r in results)
    click.echo(
        f"registered {len(frames)} frame(s) to frame 0 ({bad} failed) -> {out_dir}", err=True
    )


def _drift_plot(frames: list[Any], results: list[Any], path: Path) -> None:
    """Shift, scale / shear, rotation and correlation against time (or frame) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from nptrack.register import decompose

    times = [f.time_s for f in frames]
    if all(t is not None for t in times) and len(set(times)) == len(times):
        x, xlabel = np.array(times, float) - float(times[0]), "time since frame 0 (s)"
    else:
        x, xlabel = np.arange(len(frames)), "frame"
    d = [decompose(r.matrix, shape=f.shape) for f, r in zip(frames, results, strict=True)]
    col = {k: np.array([v[k] for v in d]) for k in d[0]}
    failed = np.array([r.status == "failed" for r in results])
    degraded = np.array([r.status == "degraded" for r in results])
    fig, ax = plt.subplots(4, 1, figsize=(7, 8), sharex=True, constrained_layout=True)
    ax[0].plot(x, col["shift_x_px"], ".-", label="x")
    ax[0].plot(x, col["shift_y_px"], ".-", label="y")
    if failed.any():
        ax[0].plot(x[failed], col["shift_x_px"][failed], "rx", label="failed (kept previous)")
    ax[0].set_ylabel("shift of the\nfield centre (px)")
    ax[1].plot(x, 100 * (col["scale_x"] - 1), ".-", label="scale x - 1")
    ax[1].plot(x, 100 * (col["scale_y"] - 1), ".-", label="scale y - 1")
    ax[1].plot(x, 100 * col["shear"], ".-", label="shear")
    ax[1].set_ylabel("%")
    ax[2].plot(x, col["rotation_deg"], ".-")
    ax[2].set_ylabel("rotation (deg)")
    cc = np.array([r.cc for r in results], float)
    ax[3].plot(x, cc, ".-", color="0.3")
    if degraded.any():
        ax[3].plot(x[degraded], cc[degraded], "o", mfc="none", color="orange", label="degraded")
    if failed.any():
        ax[3].plot(x[failed], np.nan_to_num(cc[failed]), "rx", label="failed")
    ax[3].set_ylabel("reg_cc")
    ax[3].set_xlabel(xlabel)
    for a in ax:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize="small", loc="best")
    ax[0].set_title("Registration to frame 0 (acquired frame -> frame 0)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


# (end register command)

# --- analyze command (nptrack.measure) -------------------------------------------------------


@main.command("analyze")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (created): particles.csv, summary.csv/.json, overlays/, histograms.png.",
)
@click.option(
    "--pixel-size-nm",
    type=click.FloatRange(min=0, min_open=True),
    help="Pixel size in nm for every image, overriding the files' calibration.",
)
@click.option(
    "--contrast",
    type=click.Choice(["bright", "dark", "auto"]),
    help="Particles brighter (ADF-STEM) or darker (BF-TEM) than the support [config: auto].",
)
@click.option("--masks", is_flag=True, help="Also write masks/<image>.png (16-bit labels).")
@click.option(
    "--split",
    type=click.Choice(["watershed", "uecs", "none"]),
    help="Separation of touching particles [config: watershed].",
)
@click.option(
    "--segmenter",
    type=click.Choice(["unet", "classic"]),
    help="U-Net (default when a model file exists) or classic background-corrected threshold.",
)
@click.option("--xlsx", is_flag=True, help="Also write particles.xlsx (needs openpyxl).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML configuration (sections [measure], [segment]).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one config key, e.g. --set measure.min_diameter_nm=1.0.",
)
@friendly
def analyze_command(
    images: tuple[Path, ...],
    out_dir: Path,
    pixel_size_nm: float | None,
    contrast: str | None,
    masks: bool,
    split: str | None,
    segmenter: str | None,
    xlsx: bool,
    config_path: Path | None,
    overrides: tuple[str, ...],
) -> None:
    """Measure the particles of single images, stacks or folders, pooled.

    Lengths are in nm when the images carry a pixel size (or --pixel-size-nm is given), else
    in px. An image that cannot be read or analysed is reported on one line and skipped; exit
    status 1 only if none could be analysed.
    """
    from nptrack.config import load_config
    from nptrack.measure.analyze import analyze, load_segmenter

    config = load_config(config_path, [*overrides] + ([f"measure.split={split}"] if split else []))
    seg, name = load_segmenter(segmenter, config)  # type: ignore[arg-type]
    debug = bool(click.get_current_context().find_root().params.get("debug"))
    result = analyze(
        images,
        out_dir,
        segmenter=seg,
        config=config,
        pixel_size_nm=pixel_size_nm,
        contrast=contrast,  # type: ignore[arg-type]
        masks=masks,
        xlsx=xlsx,
        debug=debug,
        segmenter_name=name,
    )
    click.echo(
        f"analysed {result.analysed} image(s) ({len(result.failed)} skipped), "
        f"{result.particles} particles, lengths in {result.unit} -> {out_dir}",
        err=True,
    )


# (end analyze command)


# --- train / export-model commands (nptrack.segment) -----------------------------------------
def _need_torch(command: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        msg = f"{command} needs the [train] extra: pip install 'nptrack[train]'"
        raise UserError(msg) from None


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Training TOML (configs/train/*.toml); defaults when omitted.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="ONNX model file to write (with its metadata).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override one training setting, e.g. optim.steps=500 (repeatable).",
)
@click.option(
    "--checkpoint-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where last.pt / best.pt go (default: OUT.ckpt/); reruns resume from it.",
)
@click.option("--fresh", is_flag=True, help="Start over even if a last.pt exists.")
@click.option(
    "--finetune",
    type=click.Path(path_type=Path),
    default=None,
    help="Start from the weights of this training checkpoint (.pt) or exported model "
    "(.onnx, BatchNorm kept as folded).",
)
@click.option(
    "--supports",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder of particle-free images of your support: synthetic particles are pasted on "
    "them (fine-tuning; sets data.supports_dir).",
)
@friendly
def train(
    config_path: Path | None,
    out: Path,
    overrides: tuple[str, ...],
    checkpoint_dir: Path | None,
    fresh: bool,
    finetune: Path | None,
    supports: Path | None,
) -> None:
    """Train the segmentation U-Net on simulated data and export it to OUT (ONNX)."""
    _need_torch("nptrack train")
    from nptrack.segment.train import load_train_config
    from nptrack.segment.train import train as run_training

    extra = [f"data.supports_dir={json.dumps(str(supports))}"] if supports else []
    cfg = load_train_config(config_path, [*overrides, *extra])
    result = run_training(
        cfg, out, checkpoint_dir=checkpoint_dir, resume=not fresh, init_from=finetune
    )
    click.echo(result.export.describe())
    click.echo(
        f"{result.steps} steps in {result.minutes:.1f} min; validation {result.val}; "
        f"checkpoint {result.checkpoint}"
    )


@main.command(name="export-model")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="ONNX file to write.")
@click.option("--fp16", is_flag=True, help="Float16 weights (GPU inference); I/O stay float32.")
@click.option(
    "--int8",
    is_flag=True,
    help="Int8 convolutions calibrated on simulated tiles (CPU inference); CHECKPOINT may "
    "then also be an exported .onnx model.",
)
@friendly
def export_model(checkpoint: Path, out: Path, fp16: bool, int8: bool) -> None:
    """Export a training CHECKPOINT (.pt) to ONNX with metadata; prints torch/ORT parity."""
    if fp16 and int8:
        raise UserError("--fp16 and --int8 exclude each other")
    if int8 and checkpoint.suffix.lower() == ".onnx":
        if not checkpoint.is_file():
            raise UserError(f"{checkpoint}: model file not found")
        _need_onnx("nptrack export-model --int8")
        from nptrack.segment.quantize import quantize_int8

        click.echo(quantize_int8(checkpoint, out).describe())
        return
    _need_torch("nptrack export-model")
    from nptrack.segment.export import export_checkpoint

    if not int8:
        click.echo(export_checkpoint(checkpoint, out, fp16=fp16).describe())
        return
    from nptrack.segment.quantize import quantize_int8

    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "float.onnx"
        click.echo(export_checkpoint(checkpoint, staged).describe())
        click.echo(quantize_int8(staged, out).describe())


def _need_onnx(command: str) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        msg = f"{command} needs the [train] extra (onnx): pip install 'nptrack[train]'"
        raise UserError(msg) from None


# (end train / export-model commands)


# --- evaluate command (nptrack.evaluate, nptrack.track) --------------------------------------
@main.command()
@click.option(
    "--truth",
    "truth_path",
    required=True,
    type=click.Path(path_type=Path),
    help="ground_truth.csv (frame, id, x, y, ...; px of frame 0).",
)
@click.option(
    "--tracks",
    "tracks_path",
    required=True,
    type=click.Path(path_type=Path),
    help="tracks.csv (frame, track_id, x, y, ...).",
)
@click.option(
    "--events-truth",
    "events_truth_path",
    type=click.Path(path_type=Path),
    help="True events.csv (fusion rows 'a+b>c').",
)
@click.option(
    "--events", "events_path", type=click.Path(path_type=Path), help="Tracker events.csv."
)
@click.option(
    "--gate-px",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Largest distance (px) at which a track point matches a true particle.",
)
@click.option(
    "--frame-tolerance",
    default=2,
    show_default=True,
    type=click.IntRange(min=0),
    help="Frames by which a fusion event may be early or late.",
)
@click.option(
    "--fusion-distance-px",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Distance (px) between a found and a true fusion.",
)
@friendly
def evaluate(
    truth_path: Path,
    tracks_path: Path,
    events_truth_path: Path | None,
    events_path: Path | None,
    gate_px: float,
    frame_tolerance: int,
    fusion_distance_px: float,
) -> None:
    """CLEAR-MOT (MOTA, MOTP %), IDF1, IDSW, FP, FN, mostly tracked, and fusion-event precision
    and recall (with --events-truth and --events) of TRACKS against TRUTH, as JSON on stdout."""
    from nptrack.evaluate.mot import evaluate as score
    from nptrack.evaluate.mot import read_events_csv, read_table_csv

    if (events_truth_path is None) != (events_path is None):
        raise click.UsageError("--events-truth and --events go together")
    need = ("frame", "x", "y")
    truth = read_table_csv(truth_path, required=(*need, "id"))
    tracks = read_table_csv(tracks_path, required=(*need, "track_id"))
    ev_t = read_events_csv(events_truth_path) if events_truth_path else None
    ev_h = read_events_csv(events_path) if events_path else None
    scores = score(
        truth,
        tracks,
        truth_events=ev_t,
        events=ev_h,
        gate_px=gate_px,
        frame_tolerance=frame_tolerance,
        distance_px=fusion_distance_px,
    )
    click.echo(json.dumps(scores, indent=2))


# (end evaluate command)


# The live pipeline's commands (watch, demo, track, reoptimize, stage) register themselves.
from nptrack import cli_batch as _cli_batch  # noqa: E402, F401  (nptrack batch)
from nptrack import cli_columns as _cli_columns  # noqa: E402, F401  (nptrack columns)
from nptrack import cli_live as _cli_live  # noqa: E402, F401
from nptrack import cli_science as _cli_science  # noqa: E402, F401  (nptrack report)

if __name__ == "__main__":  # pragma: no cover
    main()
