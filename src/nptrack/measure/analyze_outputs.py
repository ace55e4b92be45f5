"""Tables of ``nptrack analyze``: ``particles.csv``, ``summary.csv``, ``particles.xlsx``.

Column sets of the particle table in nm or px, per-image and pooled summaries (N, mean ± sd
of each measure), and the CSV / xlsx / JSON writers. `nptrack.measure.analyze` runs the job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NM_COLUMNS",
    "PX_COLUMNS",
    "Table",
    "json_default",
    "particle_rows",
    "summary_rows",
    "write_csv",
    "write_xlsx",
]

# particles.csv after image, particle_id: the detections.csv columns (DESIGN.md) + agglomerate.
NM_COLUMNS = (
    "x", "y", "x_nm", "y_nm", "area_nm2", "diameter_nm", "feret_min_nm", "feret_max_nm",
    "perimeter_nm", "circularity", "convexity", "intensity", "background", "score",
    "separated", "border", "agglomerate",
)  # fmt: skip
# The same when no image is calibrated: lengths in px, no *_nm columns.
PX_COLUMNS = (
    "x", "y", "area_px2", "diameter_px", "feret_min_px", "feret_max_px", "perimeter_px",
    "circularity", "convexity", "intensity", "background", "score", "separated", "border",
    "agglomerate",
)  # fmt: skip
_SUMMARY = ("diameter", "feret_min", "feret_max", "area", "perimeter", "circularity",
            "convexity", "intensity")  # fmt: skip


def json_default(value: Any) -> Any:
    """`json.dumps` fallback for summary.json: NumPy scalars as Python numbers, NaN as null."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# -- tables ------------------------------------------------------------------------------------
Table = tuple[str, dict[str, np.ndarray]]


def _measure_key(name: str, unit: str) -> str:
    if name == "area":
        return f"area_{unit}2"
    if name in ("diameter", "feret_min", "feret_max", "perimeter"):
        return f"{name}_{unit}"
    return name


def particle_rows(tables: Sequence[Table], *, unit: str) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of ``particles.csv``: one row per particle of every (image, columns)."""
    cols = NM_COLUMNS if unit == "nm" else PX_COLUMNS
    rows: list[list[Any]] = []
    for image, columns in tables:
        for i in range(int(columns["label"].size)):
            rows.append([image, int(columns["label"][i]), *(columns[c][i] for c in cols)])
    return ["image", "particle_id", *cols], rows


def summary_rows(tables: Sequence[Table], *, unit: str) -> tuple[list[str], list[list[Any]]]:
    """``summary.csv``: counts, then mean and sd of each measure, per image and pooled (ALL).

    Particles cut by the border are counted but left out of the statistics.
    """
    keys = [_measure_key(m, unit) for m in _SUMMARY]
    header = ["image", "n", "n_border", "n_separated", "n_agglomerate"]
    header += [f"{k}_{stat}" for k in keys for stat in ("mean", "sd")]
    pooled = {
        k: np.concatenate([c[k] for _, c in tables])
        for k in (*keys, "border", "separated", "agglomerate")
    }
    rows = []
    for image, c in [*tables, ("ALL", pooled)]:
        inside = c["border"] == 0
        row: list[Any] = [
            image,
            int(c["border"].size),
            int(c["border"].sum()),
            int(c["separated"].sum()),
            int(c["agglomerate"].sum()),
        ]
        for k in keys:
            v = c[k][inside]
            v = v[np.isfinite(v)]
            row += [v.mean() if v.size else np.nan, v.std(ddof=1) if v.size > 1 else np.nan]
        rows.append(row)
    return header, rows


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else f"{float(value):.8g}"
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write a CSV (empty cells for NaN, 8 significant digits)."""
    import csv

    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([_cell(v) for v in row] for row in rows)
    return path


def write_xlsx(
    path: Path, sheets: dict[str, tuple[Sequence[str], Sequence[Sequence[Any]]]]
) -> Path:
    """Write tables as sheets of one workbook (needs openpyxl)."""
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)
    for title, (header, rows) in sheets.items():
        sheet = book.create_sheet(title)
        sheet.append(list(header))
        for row in rows:
            sheet.append([_xlsx_cell(v) for v in row])
    book.save(path)
    return path


def _xlsx_cell(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
