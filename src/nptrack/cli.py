"""Command-line interface: parses arguments, loads config, calls one function per command.

Errors that a user can fix (bad input file, wrong config key, missing pixel size) become one
line on stderr and exit status 1; bad usage exits 2 (click's convention); ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import json
import sys
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
# (end register command)

# --- analyze command (nptrack.measure) -------------------------------------------------------
# (end analyze command)

# --- train / export-model commands (nptrack.segment) -----------------------------------------
# (end train / export-model commands)

# --- evaluate command (nptrack.evaluate, nptrack.track) --------------------------------------
# (end evaluate command)


if __name__ == "__main__":  # pragma: no cover
    main()
