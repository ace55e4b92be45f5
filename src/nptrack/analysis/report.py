"""``nptrack report``: the science of a session as PNG figures, CSV tables and one HTML page.

No algorithm here: `nptrack.analysis.tables` reads the tables (session store, CSV exports or
an ``nptrack analyze`` folder), `nptrack.analysis.sections` computes each section with
`nptrack.analysis.stats` and draws it with `nptrack.analysis.figures`; this module holds the
report being built and writes the page. Whatever tables exist are reported; a figure whose
data is absent is left out with one line in the page saying why.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nptrack.analysis import sections
from nptrack.analysis.tables import ReportTables, load_tables

__all__ = ["ReportTables", "load_tables", "write_report"]


_TABLE_FILES = (
    "size_stats.csv",
    "treacy_rice.csv",
    "mean_radius.csv",
    "kinetics.csv",
    "diffusion.csv",
    "track_lengths.csv",
    "fusions.csv",
)


def _write_csv(path: Path, columns: Mapping[str, Any]) -> None:
    names = list(columns)
    values = [np.asarray(columns[n]).tolist() for n in names]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for row in zip(*values, strict=True):
            writer.writerow(
                ["" if isinstance(v, float) and not math.isfinite(v) else v for v in row]
            )


class Report:
    """One report being built: its tables, time axis, and what the page lists.

    The sections add CSV tables (`table`), figures (`figure`), key numbers and omitted
    items; `header` and `html` make the page.
    """

    def __init__(
        self,
        tables: ReportTables,
        out: Path,
        *,
        frame_interval_s: float | None,
        max_lag: int,
        min_positions: int,
        say: Callable[[str], None],
    ) -> None:
        from nptrack.analysis import figures, stats

        self.fig, self.stats, self.tables, self.out, self.say = figures, stats, tables, out, say
        self.max_lag, self.min_positions = max_lag, min_positions
        self.t, self.t_unit = tables.times_s(frame_interval_s=frame_interval_s)
        self.t_label = "time since frame 0 (s)" if self.t_unit == "s" else "frame"
        self.unit = tables.unit
        self.what = "image" if tables.kind == "analyze" else "frame"
        self.facts: list[tuple[str, str]] = []
        self.numbers: list[tuple[str, str, str]] = []  # name, value ± se unit, how
        self.figures: list[tuple[str, str]] = []  # file, caption
        self.omitted: list[tuple[str, str]] = []  # what, why
        self.csvs: list[tuple[str, str]] = []  # file, content

    def table(self, name: str, columns: Mapping[str, Any], content: str) -> None:
        _write_csv(self.out / name, columns)
        self.csvs.append((name, content))

    def figure(self, name: str, caption: str, draw: Callable[..., Any], **kwargs: Any) -> None:
        self.say(f"figure {name}")
        draw(self.out / name, **kwargs)
        self.figures.append((name, caption))

    def with_time(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        """A leading time column for per-frame tables (nothing for an analyze folder)."""
        if self.t is None or self.t_unit == "frame":
            return {}  # no time axis, or it is the frame number itself
        return {f"time_{self.t_unit}": self.t[np.asarray(frame, int)]}

    def title(self, k: int) -> str:
        """How frame (or image) `k` is named in titles."""
        if self.t is None:
            name = Path(self.tables.images[k]).name if k < len(self.tables.images) else str(k)
            return f"image {k}: {name if len(name) <= 28 else name[:25] + '...'}"
        if self.t_unit == "s" and np.isfinite(self.t[k]):
            return f"frame {k} (t = {self.t[k]:.4g} s)"
        return f"frame {k}"

    # -- the page ------------------------------------------------------------------------
    def header(self) -> None:
        tb = self.tables
        kind = {
            "session": f"session store, track version {tb.track_version}",
            "exports": "CSV exports",
            "analyze": "nptrack analyze output",
        }[tb.kind]
        frames = tb.frame_numbers
        self.facts.append(("source", f"{tb.source.resolve()} ({kind})"))
        if tb.kind == "analyze":
            self.facts.append(("images", str(len(tb.images))))
        elif frames.size:
            self.facts.append(("frames", f"{frames.size} ({frames.min()} to {frames.max()})"))
            t = self.t[frames] if self.t is not None else np.zeros(1)
            span = float(np.nanmax(t) - np.nanmin(t))
            self.facts.append(
                (
                    "time span",
                    f"{span:.4g} s"
                    if self.t_unit == "s"
                    else f"{span:.0f} frames (the files record no acquisition time: "
                    "rates are per frame; give --frame-interval-s)",
                )
            )
        px = tb.pixel_size_nm
        self.facts.append(
            ("pixel size", f"{px:.4g} nm" if px else f"unknown (lengths in {tb.unit})")
        )
        for name, table in (("detections", tb.detections), ("particles", tb.particles)):
            if table is not None:
                self.facts.append((name, str(len(table["frame"]))))
        if tb.tracks is not None:
            self.facts.append(
                (
                    "tracks",
                    f"{np.unique(tb.tracks['track_id']).size} "
                    f"({len(tb.tracks['frame'])} positions)",
                )
            )
        if tb.events is not None:
            self.facts.append(("fusion events", str(len(sections.fusion_rows(tb)))))

    def html(self) -> str:
        e = html.escape

        def rows(items: Sequence[Sequence[str]]) -> str:
            return "\n".join(
                "<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in items
            )

        rank = {n: i for i, n in enumerate(self.fig.FIGURE_FILES)}
        self.figures.sort(key=lambda item: rank.get(item[0], len(rank)))
        figs = "\n".join(
            f'<figure><a href="{e(n)}"><img src="{e(n)}" alt="{e(c)}"></a>'
            f"<figcaption>{e(c)}</figcaption></figure>"
            for n, c in self.figures
        )
        omitted = "\n".join(f"<li>{e(w)}: omitted, {e(why)}</li>" for w, why in self.omitted)
        csvs = "\n".join(f'<li><a href="{e(n)}">{e(n)}</a>: {e(c)}</li>' for n, c in self.csvs)
        numbers = (
            rows(self.numbers)
            if self.numbers
            else '<tr><td colspan="3">none: not enough data for any fit</td></tr>'
        )
        return _PAGE.format(
            title=e(f"nptrack report: {self.tables.source.resolve().name}"),
            facts=rows(self.facts),
            numbers=numbers,
            figures=figs,
            omitted=f"<ul>{omitted}</ul>" if omitted else "<p>none</p>",
            tables=f"<ul>{csvs}</ul>" if csvs else "<p>none</p>",
        )


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 1em auto; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td {{ border-bottom: 1px solid #ddd; padding: 3px 10px; vertical-align: top; }}
td:first-child {{ font-weight: bold; white-space: nowrap; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ color: #555; }}
</style></head><body>
<h1>{title}</h1>
<table>{facts}</table>
<h2>Key numbers</h2>
<table>{numbers}</table>
<h2>Figures</h2>
{figures}
<h3>Not shown</h3>
{omitted}
<h2>Tables (CSV)</h2>
{tables}
<p><a href="key_numbers.json">key_numbers.json</a>: the key numbers above.</p>
</body></html>
"""


def write_report(
    path: str | Path,
    *,
    out_dir: str | Path | None = None,
    frames_to_show: Sequence[int] | None = None,
    frame_interval_s: float | None = None,
    max_lag: int = 4,
    min_positions: int = 10,
    on_status: Callable[[str], None] | None = None,
) -> Path:
    """Write ``index.html`` with PNG figures and CSV tables of a session or output folder.

    Parameters
    ----------
    path : path-like
        What `load_tables` reads: a session, CSV exports or an ``nptrack analyze`` folder.
    out_dir : path-like, optional
        Default ``<path>/report``; created. Figures and tables of an earlier report that
        this one does not produce are removed.
    frames_to_show : sequence of int, optional
        Frames (images, for an analyze folder) of the size histograms and Treacy-Rice
        plots; default the first, middle and last frame with particles.
    frame_interval_s : float, optional
        Seconds between frames; overrides the acquisition times of the files. Without it
        and without recorded times the time axis is the frame number (rates per frame).
    max_lag : int
        Largest lag (frames) of the mean squared displacement fits.
    min_positions : int
        Shortest track (positions) whose diffusion coefficient is fitted.
    on_status : callable, optional
        Called with a one-line progress message per figure.

    Returns
    -------
    Path
        The ``index.html`` written.

    Raises
    ------
    ReadError
        No tables in `path`, or a corrupt one.
    ValueError
        A frame of `frames_to_show` has no particles.
    """
    tables = load_tables(path)
    out = Path(out_dir) if out_dir is not None else tables.source / "report"
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(
        tables,
        out,
        frame_interval_s=frame_interval_s,
        max_lag=max_lag,
        min_positions=min_positions,
        say=on_status or (lambda _m: None),
    )
    rep.header()
    frames = tables.frame_numbers
    sections.sizes(rep, frames_to_show)
    sections.tracks(rep)
    sections.fusions(rep, int(frames.max()) + 1 if frames.size else 0)
    produced = {n for n, _ in rep.figures} | {n for n, _ in rep.csvs}
    for old in (*rep.fig.FIGURE_FILES, *_TABLE_FILES):
        if old not in produced:
            (out / old).unlink(missing_ok=True)  # stale, from an earlier report
    numbers = {name: {"value": value, "how": how} for name, value, how in rep.numbers}
    (out / "key_numbers.json").write_text(
        json.dumps(numbers, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    index = out / "index.html"
    index.write_text(rep.html(), encoding="utf-8")
    return index
