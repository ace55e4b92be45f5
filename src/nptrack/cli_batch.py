"""``nptrack batch``: many series on a Dask cluster (registered on `nptrack.cli.main`)."""

from __future__ import annotations

from pathlib import Path

import click

from nptrack.cli import UserError, friendly, main
from nptrack.cli_live import _config_options, _load, _say, _series_options, _setup_logging

__all__: list[str] = []


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: OUT/<series>/ per series, OUT/summary.csv, OUT/index.html.",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="tcp://HOST:8786",
    help="A running `dask scheduler` (workers on other hosts); default: a LocalCluster here.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="LocalCluster worker processes, one thread each (default: the cores); with "
    "--scheduler, wait until this many workers have joined.",
)
@click.option("--no-report", is_flag=True, help="Do not write each series' report.")
@click.option(
    "--frame-interval-s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds between frames for the reports and the rates K, D (overrides recorded "
    "times; without either, rates are per frame).",
)
@_config_options
@_series_options
@friendly
def batch(
    inputs: tuple[Path, ...],
    out_dir: Path,
    scheduler: str | None,
    workers: int | None,
    no_report: bool,
    frame_interval_s: float | None,
    config_path: Path | None,
    overrides: tuple[str, ...],
    pixel_size_nm: float | None,
    formats: tuple[str, ...],
) -> None:
    """Many series at once on a Dask cluster: each INPUT (a folder of frames, a stack file, a
    session folder) is one series, tracked as `nptrack track` would.

    Frames fan out to the workers for detection; registration, tracking and the report run
    as one task per series. Series already complete in OUT are skipped (resume); a series
    that fails is reported in summary.csv and the others finish (exit status 1 then).
    """
    from nptrack.batch import run_batch

    _setup_logging()
    config = _load(config_path, overrides)
    result = run_batch(
        inputs, out_dir, config=config, scheduler=scheduler, n_workers=workers,
        pixel_size_nm=pixel_size_nm, export_formats=formats, report=not no_report,
        frame_interval_s=frame_interval_s, on_status=_say,
    )  # fmt: skip
    done = len(result.rows) - len(result.failed)
    click.echo(f"batch {result.out_dir}: {done} of {len(result.rows)} series complete; "
               f"summary.csv, index.html")  # fmt: skip
    if result.failed:
        names = ", ".join(r["series"] for r in result.failed)
        raise UserError(f"{len(result.failed)} series failed ({names}): see summary.csv")
