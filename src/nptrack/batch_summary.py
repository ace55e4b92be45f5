"""The pooled outputs of `nptrack batch`: each series' summary row, ``summary.csv``, ``index.html``.

A series' row is computed on the worker that finished it (`series_row`, from its store, with
the functions of `nptrack.analysis.stats` the report uses); the client writes the pooled
table and the index page.
"""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SUMMARY_COLUMNS", "series_row", "write_index", "write_summary"]

#: Columns of ``OUT/summary.csv``, one row per series.
SUMMARY_COLUMNS = (
    "series", "status", "error", "inputs", "frames", "frames_failed", "pixel_size_nm", "tracks",
    "particles_first", "particles_last", "diameter_mean_first_nm", "diameter_mean_last_nm",
    "time_unit", "ripening_k_nm3_per_unit", "ripening_k_se_nm3_per_unit",
    "diffusion_median_nm2_per_unit", "diffusion_tracks", "fusions", "fusion_share", "wall_s",
    "notes",
)  # fmt: skip


# -- the summary row ----------------------------------------------------------------------------
def _num(value: float, digits: int = 4) -> float | str:
    return round(float(value), digits) if value is not None and math.isfinite(value) else ""


def _science(frames: list[dict], dets: list[dict], tracks: list[dict], events: list[dict], *,
             px: float | None, frame_interval_s: float | None) -> dict[str, Any]:  # fmt: skip
    """Sizes, ripening rate K, diffusion D and fusion share from `nptrack.analysis.stats`.

    As the report computes them: sizes and K from the measured detections not cut by the
    border, D (median over tracks) and the fusion share from the tracks.
    """
    try:
        from nptrack.analysis import stats
    except ImportError:
        return {"notes": "no K, D, fusion share: nptrack.analysis.stats is not available"}
    f = np.array([t["frame"] for t in tracks], dtype=np.int64)
    tid = np.array([t["track_id"] for t in tracks], dtype=np.int64)
    d = np.array([t["diameter_nm"] for t in tracks], dtype=float)
    xy = np.array([(t["x"], t["y"]) for t in tracks], dtype=float).reshape(-1, 2)
    ts = np.array([np.nan if r["time_s"] is None else r["time_s"] for r in frames], float)
    # The report's time axis: recorded acquisition times, else the interval, else frames.
    if frame_interval_s is None and np.isfinite(ts).sum() >= 2 and np.nanstd(ts) > 0:
        t, unit = ts - np.nanmin(ts), "s"
    elif frame_interval_s is not None:
        t, unit = np.arange(len(frames)) * float(frame_interval_s), "s"
    else:
        t, unit = np.arange(len(frames), dtype=float), "frame"
    out: dict[str, Any] = {"time_unit": unit}
    if not len(f):
        return out
    measured = [r for r in dets if not r["border"] and r["diameter_nm"] is not None]
    fm = np.array([r["frame"] for r in measured], dtype=np.int64)
    dm = np.array([r["diameter_nm"] for r in measured], dtype=float)
    sizes = stats.frame_size_stats(fm, dm)
    if len(sizes["frame"]):
        out["diameter_mean_first_nm"] = _num(sizes["mean_diameter_nm"][0])
        out["diameter_mean_last_nm"] = _num(sizes["mean_diameter_nm"][-1])
    series = stats.mean_radius_series(fm, dm, time_s=t)
    fit = stats.ripening_fit(series["time_s"], series["mean_radius_nm"])
    out["ripening_k_nm3_per_unit"] = _num(fit.rate, 6)
    out["ripening_k_se_nm3_per_unit"] = _num(fit.rate_se, 6)
    steps = np.diff(t)
    dt = float(np.nanmedian(steps)) if steps.size and np.isfinite(steps).any() else 1.0
    fits = stats.diffusion_coefficients(f, tid, xy[:, 0], xy[:, 1], d, pixel_size_nm=px or 1.0,
                                        frame_interval_s=dt)  # fmt: skip
    dc = [x.diffusion_nm2_per_s for x in fits if math.isfinite(x.diffusion_nm2_per_s)]
    out["diffusion_median_nm2_per_unit"] = _num(float(np.median(dc)), 6) if dc else ""
    out["diffusion_tracks"] = len(dc)
    if any(e["type"] == "fusion" for e in events):
        share = stats.coalescence_share(f, tid, d, events)
        out["fusion_share"] = _num(share["coalescence_share"])
    else:
        out["fusion_share"] = 0.0
    return out


def series_row(
    series_dir: Path,
    *,
    name: str,
    status: str,
    notes: Sequence[str] = (),
    frame_interval_s: float | None = None,
) -> dict[str, Any]:
    """Counts, sizes, kinetics and fusions of a finished series (its ``summary.csv`` row)."""
    from nptrack.pipeline.store import SessionStore

    with SessionStore(series_dir) as store:
        frames, tracks, events = store.frames(), store.tracks(), store.events()
        dets = store.detections()
    px = frames[0]["pixel_size_nm"] if frames else None
    last = max((t["frame"] for t in tracks), default=-1)
    row: dict[str, Any] = {
        "series": name,
        "status": status,
        "error": "",
        "frames": len(frames),
        "frames_failed": sum(f["status"] == "failed" for f in frames),
        "pixel_size_nm": px,
        "tracks": len({t["track_id"] for t in tracks}),
        "particles_first": sum(t["frame"] == 0 for t in tracks),
        "particles_last": sum(t["frame"] == last for t in tracks),
        "fusions": sum(e["type"] == "fusion" for e in events),
    }
    try:
        science = _science(frames, dets, tracks, events, px=px, frame_interval_s=frame_interval_s)
    except Exception as exc:  # the series is done; its numbers are extra
        science = {"notes": f"stats failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"}
    notes = [*notes, *([science.pop("notes")] if "notes" in science else [])]
    return {**row, **science, "notes": "; ".join(notes)[:500]}


# -- pooled outputs -----------------------------------------------------------------------------
def write_summary(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """``summary.csv``: one row per series (`SUMMARY_COLUMNS`, then any extra columns)."""
    extra = sorted({k for r in rows for k in r} - set(SUMMARY_COLUMNS))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, [*SUMMARY_COLUMNS, *extra], restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_index(path: Path, rows: Sequence[dict[str, Any]], out: Path) -> Path:
    """``index.html``: a table of the series linking each one's report (or its folder)."""
    cells = []
    for r in rows:
        name = html.escape(str(r["series"]))
        report = out / r["series"] / "report" / "index.html"
        target = f"{r['series']}/report/index.html" if report.is_file() else f"{r['series']}/"
        status = html.escape(r["status"] + (f": {r['error']}" if r.get("error") else ""))
        figures = ("tracks", "particles_first", "diameter_mean_first_nm",
                   "diameter_mean_last_nm", "fusions")  # fmt: skip
        numbers = "".join(f"<td>{html.escape(str(r.get(k, '')))}</td>" for k in figures)
        cells.append(f'<tr><td><a href="{html.escape(target)}">{name}</a></td>'
                     f"<td>{status}</td><td>{r.get('frames', '')}</td>{numbers}</tr>")  # fmt: skip
    titles = ("series", "status", "frames", "tracks", "particles (frame 0)",
              "mean d first (nm)", "mean d last (nm)", "fusions")  # fmt: skip
    head = "".join(f"<th>{h}</th>" for h in titles)
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>nptrack batch</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}</style>"
        f"</head><body><h1>nptrack batch: {len(rows)} series</h1>"
        f"<p><a href='summary.csv'>summary.csv</a></p><table><tr>{head}</tr>"
        + "".join(cells)
        + "</table></body></html>\n"
    )
    return path
