"""Command-line interface of the science outputs: ``nptrack report``.

Registered on `nptrack.cli.main`; thin like the rest of the CLI: parse, call
`nptrack.analysis.report.write_report`, print progress on stderr and the page's path.
"""

from __future__ import annotations

from pathlib import Path

import click

from nptrack.cli import friendly, main

__all__: list[str] = []


def _frame_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        frames = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            "expected frame numbers separated by commas, e.g. 0,25,49"
        ) from None
    if not frames or min(frames) < 0:
        raise click.BadParameter("expected frame numbers (0 or more) separated by commas")
    return frames


@main.command()
@click.argument("session_dir", metavar="SESSION", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report folder (created) [default: SESSION/report].",
)
@click.option(
    "--frames",
    "frames",
    callback=_frame_list,
    default=None,
    metavar="F,F,...",
    help="Frames (images, for an analyze folder) of the size histograms and Treacy-Rice "
    "plots, e.g. 0,25,49 [default: first, middle, last].",
)
@click.option(
    "--frame-interval-s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds between frames, for files that record no acquisition time (else rates "
    "are per frame); overrides recorded times.",
)
@click.option(
    "--max-lag",
    type=click.IntRange(min=2),
    default=4,
    show_default=True,
    help="Largest lag (frames) of the mean squared displacement fits.",
)
@click.option(
    "--min-positions",
    type=click.IntRange(min=3),
    default=10,
    show_default=True,
    help="Shortest track (positions) whose diffusion coefficient is fitted.",
)
@friendly
def report(
    session_dir: Path,
    out_dir: Path | None,
    frames: list[int] | None,
    frame_interval_s: float | None,
    max_lag: int,
    min_positions: int,
) -> None:
    """Figures (PNG), tables (CSV) and an HTML page of a session's science.

    SESSION is a session folder (session.sqlite: newest track version), a folder of
    `nptrack track` / `watch` exports (frames, detections, tracks, events .csv) or an
    `nptrack analyze` output (particles.csv). Writes SESSION/report/index.html with: first
    and last frame with the trajectories, size histograms and Treacy-Rice plots (I^(1/3)
    against D), count and mean diameter (nm) against time, normalised total volume, R³
    ripening kinetics (K in nm³/s, free exponent n), diffusion coefficient (nm²/s) against
    size, trajectory lengths and the fusion timeline. A figure whose data is absent is
    listed as omitted. Prints the path of index.html.
    """
    from nptrack.analysis.report import write_report

    def say(msg: str) -> None:
        click.echo(f"nptrack report: {msg}", err=True)

    say(f"reading {session_dir}")
    index = write_report(
        session_dir,
        out_dir=out_dir,
        frames_to_show=frames,
        frame_interval_s=frame_interval_s,
        max_lag=max_lag,
        min_positions=min_positions,
        on_status=say,
    )
    click.echo(str(index))
