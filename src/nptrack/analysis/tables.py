"""The tables of a session or output folder, read for `nptrack report`.

A session store (newest track version), CSV exports (frames / detections / tracks / events)
or an ``nptrack analyze`` folder (particles.csv) become columns of 1-D arrays; a corrupt
table is a `ReadError` naming the file and line. The frame images are read again from their
source files for the trajectory figure.
"""

from __future__ import annotations

import csv
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nptrack.io.errors import ReadError

__all__ = ["ReportTables", "frame_image", "load_tables", "read_csv_table"]

Columns = dict[str, np.ndarray]

# Text columns of the data contract; every other column is numeric.
_TEXT = frozenset({"source", "status", "state", "type", "track_ids", "detail", "image"})
# Numeric columns the report uses: a value there that is not a number is a corrupt file.
_USED = frozenset(
    {
        "frame",
        "time_s",
        "pixel_size_nm",
        "a11",
        "a12",
        "tx",
        "a21",
        "a22",
        "ty",
        "track_id",
        "x",
        "y",
        "diameter_nm",
        "diameter_px",
        "intensity",
        "border",
    }
)
_REQUIRED = {
    "frames.csv": ("frame",),
    "detections.csv": ("frame", "x", "y", "diameter_nm"),
    "tracks.csv": ("frame", "track_id", "x", "y", "diameter_nm"),
    "events.csv": ("frame", "type", "track_ids"),
    "particles.csv": ("image",),
}


@dataclass
class ReportTables:
    """The tables of one session or output folder (columns as 1-D arrays; None: absent).

    Attributes
    ----------
    source : Path
        The folder read.
    kind : {'session', 'exports', 'analyze'}
        ``session.sqlite`` (newest track version), CSV exports, or ``particles.csv``.
    frames, detections, tracks, events : dict of str to ndarray, or None
        The data-contract tables; text columns are object arrays, empty cells NaN.
    particles : dict of str to ndarray, or None
        ``particles.csv`` of ``nptrack analyze`` with a ``frame`` column added: the index of
        its image in `images`.
    images : list of str
        Image names of an analyze folder, in file order.
    field_shape : (int, int) or None
        (height, width) of frame 0 in pixels when the store records it.
    track_version : int or None
    unit : {'nm', 'px'}
        Length unit of the diameters (px only for an uncalibrated analyze run).
    """

    source: Path
    kind: str
    frames: Columns | None = None
    detections: Columns | None = None
    tracks: Columns | None = None
    events: Columns | None = None
    particles: Columns | None = None
    images: list[str] = field(default_factory=list)
    field_shape: tuple[int, int] | None = None
    track_version: int | None = None
    unit: str = "nm"

    @property
    def sizes(self) -> Columns | None:
        """Per-particle frame, diameter, intensity used for size statistics (border excluded).

        Detections (measured) where they exist, else analyze particles, else observed track
        points. Particles cut by the field border are left out: their size is not known.
        """
        for table in (self.detections, self.particles):
            if table is not None and "diameter" in table:
                keep = ~(table.get("border", np.zeros(len(table["frame"]))) > 0)
                return {k: v[keep] for k, v in table.items()}
        if self.tracks is not None:
            state = self.tracks.get("state")
            keep = (
                np.ones(len(self.tracks["frame"]), bool)
                if state is None
                else state != "interpolated"
            )
            return {k: v[keep] for k, v in self.tracks.items()}
        return None

    @property
    def frame_numbers(self) -> np.ndarray:
        """Every frame (or image) number present, sorted."""
        found = [
            t["frame"]
            for t in (self.frames, self.detections, self.tracks, self.particles)
            if t is not None
        ]
        if not found:
            return np.zeros(0, int)
        return np.unique(np.concatenate(found)[np.isfinite(np.concatenate(found))]).astype(int)

    @property
    def pixel_size_nm(self) -> float | None:
        """Median pixel size of the frames (nm), or None when uncalibrated or unknown."""
        if self.frames is None or "pixel_size_nm" not in self.frames:
            return None
        px = self.frames["pixel_size_nm"].astype(float)
        px = px[np.isfinite(px) & (px > 0)]
        return float(np.median(px)) if px.size else None

    def times_s(self, *, frame_interval_s: float | None = None) -> tuple[np.ndarray | None, str]:
        """Time of each frame number since the first frame, and its unit ('s' or 'frame').

        Returns ``(t, unit)`` with ``t[k]`` the time of frame ``k`` (NaN where unknown);
        ``t`` is None for an analyze folder (no time axis). A given ``frame_interval_s`` wins
        (the user knows better than files whose clocks may be wrong); else the acquisition
        times recorded in the files; else frame numbers (unit 'frame').
        """
        if self.kind == "analyze":
            return None, "frame"
        frames = self.frame_numbers
        t = np.full(int(frames.max()) + 1 if frames.size else 0, np.nan)
        if frame_interval_s is None and self.frames is not None and "time_s" in self.frames:
            k, ts = self.frames["frame"].astype(int), self.frames["time_s"].astype(float)
            if np.isfinite(ts).sum() >= 2 and len(np.unique(ts[np.isfinite(ts)])) > 1:
                t[k] = ts - np.nanmin(ts)
                return t, "s"
        if frame_interval_s is not None:
            return np.arange(t.size) * float(frame_interval_s), "s"
        return np.arange(t.size, dtype=float), "frame"


# --- loading ------------------------------------------------------------------------------
def _parse(path: Path, header: list[str], cols: list[list[str]]) -> Columns:
    out: Columns = {}
    for name, values in zip(header, cols, strict=True):
        if name in _TEXT:
            out[name] = np.array(values, dtype=object)
            continue
        try:
            out[name] = np.array([float(v) if v.strip() else np.nan for v in values])
        except ValueError:
            if name in _USED:
                line, bad = next((i + 2, v) for i, v in enumerate(values) if not _is_number(v))
                raise ReadError(path, f"line {line}: {name} = {bad!r} is not a number") from None
            out[name] = np.array(values, dtype=object)  # a column the report does not use
    return out


def _is_number(text: str) -> bool:
    try:
        float(text) if text.strip() else None
    except ValueError:
        return False
    return True


def read_csv_table(path: Path, required: Sequence[str] = ()) -> Columns:
    """One CSV table as columns; a corrupt file raises `ReadError` with one line of reason."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise ReadError(path, "empty file (no header row)")
            cols: list[list[str]] = [[] for _ in header]
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    reason = (
                        f"line {reader.line_num}: {len(row)} fields, the header has {len(header)}"
                    )
                    raise ReadError(path, reason)
                for c, v in zip(cols, row, strict=True):
                    c.append(v)
    except UnicodeDecodeError:
        raise ReadError(path, "not a text (UTF-8) CSV file") from None
    except csv.Error as exc:
        raise ReadError(path, f"not a valid CSV file ({exc})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise ReadError(path, f"missing column(s) {', '.join(missing)}")
    return _parse(path, header, cols)


def _rows_to_columns(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> Columns | None:
    if not rows:
        return None
    out: Columns = {}
    for c in names:
        values = [r[c] for r in rows]
        if c in _TEXT:
            out[c] = np.array(["" if v is None else str(v) for v in values], dtype=object)
        else:
            out[c] = np.array([np.nan if v is None else float(v) for v in values])
    return out


def _load_store(folder: Path) -> ReportTables:
    from nptrack.pipeline.store import (
        DETECTION_COLUMNS,
        EVENT_COLUMNS,
        FRAME_COLUMNS,
        TRACK_COLUMNS,
        SessionStore,
    )

    try:
        with SessionStore(folder) as store:
            frames = store.frames()
            row0 = store.frame_row(frames[0]["frame"]) if frames else None
            version = store.latest_version()
            out = ReportTables(
                folder,
                "session",
                frames=_rows_to_columns(frames, FRAME_COLUMNS),
                detections=_rows_to_columns(store.detections(), DETECTION_COLUMNS),
                tracks=_rows_to_columns(store.tracks(version), TRACK_COLUMNS) if version else None,
                events=_rows_to_columns(store.events(version), EVENT_COLUMNS) if version else None,
                track_version=version,
            )
    except sqlite3.DatabaseError as exc:
        raise ReadError(
            folder / "session.sqlite", f"not a readable session store ({exc})"
        ) from None
    if row0 and row0.get("height") and row0.get("width"):
        out.field_shape = (int(row0["height"]), int(row0["width"]))
    if out.frames is None:
        raise ReadError(folder / "session.sqlite", "the session holds no frames yet")
    return _alias(out)


def _alias(out: ReportTables) -> ReportTables:
    for table in (out.detections, out.tracks):
        if table is not None:
            table["diameter"] = table["diameter_nm"]
    return out


def load_tables(path: str | Path) -> ReportTables:
    """Read the tables of a session or output folder.

    Parameters
    ----------
    path : path-like
        A session folder (``session.sqlite``: the newest track version), a folder of CSV
        exports (frames.csv, detections.csv, tracks.csv, events.csv: whichever exist) or an
        ``nptrack analyze`` output (particles.csv).

    Returns
    -------
    ReportTables

    Raises
    ------
    ReadError
        The folder holds none of these tables, or one is corrupt (the message says which
        file and line).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ReadError(folder, "not a folder (give a session or an nptrack output folder)")
    if (folder / "session.sqlite").is_file():
        return _load_store(folder)
    found = {n: folder / n for n in _REQUIRED if (folder / n).is_file()}
    if not found:
        raise ReadError(
            folder,
            "no session.sqlite, frames/detections/tracks/events.csv or "
            "particles.csv here: not an nptrack session or output folder",
        )
    t = {n: read_csv_table(p, _REQUIRED[n]) for n, p in found.items()}
    if "particles.csv" in t and not ({"frames.csv", "detections.csv", "tracks.csv"} & set(t)):
        return _analyze_tables(folder, t["particles.csv"])
    out = ReportTables(
        folder,
        "exports",
        frames=t.get("frames.csv"),
        detections=t.get("detections.csv"),
        tracks=t.get("tracks.csv"),
        events=t.get("events.csv"),
    )
    for name in ("frames", "detections", "tracks", "events"):
        table = getattr(out, name)
        if table is not None and len(table["frame"]) == 0:
            setattr(out, name, None)  # a header alone: the table is absent
    return _alias(out)


def _analyze_tables(folder: Path, particles: Columns) -> ReportTables:
    path = folder / "particles.csv"
    unit = "nm" if "diameter_nm" in particles else "px"
    if f"diameter_{unit}" not in particles:
        raise ReadError(path, "missing column diameter_nm (or diameter_px)")
    images = list(dict.fromkeys(particles["image"].tolist()))
    index = {name: k for k, name in enumerate(images)}
    particles["frame"] = np.array([index[n] for n in particles["image"]], float)
    particles["diameter"] = particles[f"diameter_{unit}"]
    return ReportTables(folder, "analyze", particles=particles, images=images, unit=unit)


def frame_image(tables: ReportTables, frame: int) -> np.ndarray | None:
    """Frame `frame` read again from its source and warped into frame-0 pixels, or None."""
    from nptrack.io.read import read_frames
    from nptrack.register.warp import warp_to_reference

    if tables.frames is None or "source" not in tables.frames:
        return None
    rows = np.flatnonzero(tables.frames["frame"] == frame)
    if rows.size == 0:
        return None
    i = int(rows[0])
    name, _, page = str(tables.frames["source"][i]).partition("#")
    for candidate in (Path(name), tables.source / name):
        try:
            image = read_frames(candidate)[int(page or 0)].data
            break
        except (ReadError, OSError, IndexError, ValueError):
            continue
    else:
        return None
    keys = ("a11", "a12", "tx", "a21", "a22", "ty")
    if not all(k in tables.frames for k in keys):
        return image
    matrix = np.array([tables.frames[k][i] for k in keys], float).reshape(2, 3)
    if not np.isfinite(matrix).all():
        matrix = np.eye(2, 3)
    shape = tables.field_shape or image.shape
    return warp_to_reference(image, matrix, output_shape=shape, cval=np.nan)
