"""Table exports: CSV (always), Parquet (pyarrow) and HDF5 (h5py), written atomically.

A table is a column order and a list of row dicts (what the session store returns). Every
file is written under a temporary name and renamed, so a reader never sees half an export.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EXPORT_FORMATS", "write_json", "write_tables"]

EXPORT_FORMATS = ("csv", "parquet", "hdf5")

Table = tuple[Sequence[str], Sequence[Mapping[str, Any]]]


def _column(rows: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    values = [r[name] for r in rows]
    if all(v is None or isinstance(v, (int, float, np.number)) for v in values):
        if all(isinstance(v, (int, np.integer)) for v in values):
            return np.array(values, dtype=np.int64)
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return np.array(["" if v is None else str(v) for v in values], dtype=object)


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row[c] is None else row[c] for c in columns])


def _write_parquet(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise ValueError("--format parquet needs pyarrow: pip install pyarrow") from None
    arrays = {}
    for c in columns:
        col = _column(rows, c)
        arrays[c] = pa.array(col.tolist() if col.dtype == object else col)
    pq.write_table(pa.table(arrays), path)


def write_tables(
    tables: Mapping[str, Table], out_dir: str | Path, *, formats: Sequence[str] = ("csv",)
) -> list[Path]:
    """Write every table in each format; returns the paths written.

    Parameters
    ----------
    tables : mapping of name to (columns, rows)
        E.g. ``{"frames": (FRAME_COLUMNS, store.frames()), ...}``.
    out_dir : path-like
    formats : sequence of {'csv', 'parquet', 'hdf5'}
        CSV: ``<name>.csv``; Parquet: ``<name>.parquet``; HDF5: one ``tables.h5`` with a group
        per table and a dataset per column (strings UTF-8, missing numbers NaN).
    """
    unknown = set(formats) - set(EXPORT_FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)} (csv, parquet, hdf5)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, (columns, rows) in tables.items():
        for fmt, writer in (("csv", _write_csv), ("parquet", _write_parquet)):
            if fmt in formats:
                path = out / f"{name}.{fmt}"
                tmp = path.with_name(path.name + ".tmp")
                writer(tmp, columns, rows)
                tmp.replace(path)
                written.append(path)
    if "hdf5" in formats:
        import h5py

        path = out / "tables.h5"
        tmp = path.with_name(path.name + ".tmp")
        with h5py.File(tmp, "w") as h5:
            for name, (columns, rows) in tables.items():
                group = h5.create_group(name)
                group.attrs["columns"] = json.dumps(list(columns))
                for c in columns:
                    col = _column(rows, c)
                    if col.dtype == object:
                        group.create_dataset(c, data=col.astype(str).tolist(),
                                             dtype=h5py.string_dtype())  # fmt: skip
                    else:
                        group.create_dataset(c, data=col)
        tmp.replace(path)
        written.append(path)
    return written


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (numpy scalars as Python numbers)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
