"""The session store: one SQLite file (WAL) that survives crashes, and the CSV exports.

Each frame's registration and detections are committed in one transaction, so after a crash
(kill -9 included) a frame is either fully stored or absent; `watch` on the same session
resumes from what is stored. Tracks are stored as numbered versions (each window commit or
global re-optimisation publishes one); exports use the newest.

The store is also where a live session's history stays (not in the process's memory): the
global re-optimisation reads the detections from it (`detection_columns`), and the online
tracker's finished tracks and the old parts of its live tracks go to ``online_tracks``
(rebuilt when a session resumes).
"""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nptrack.measure.props import DETECTION_COLUMNS as MEASURE_COLUMNS
from nptrack.register.incremental import FRAMES_COLUMNS

__all__ = [
    "ATOM_COLUMN_COLUMNS",
    "DETECTION_COLUMNS",
    "EVENT_COLUMNS",
    "FRAME_COLUMNS",
    "TRACK_COLUMNS",
    "SessionStore",
    "frame_record",
]

# The data contract's columns are defined where they are computed.
FRAME_COLUMNS = FRAMES_COLUMNS
DETECTION_COLUMNS = ("frame", "det_id", *MEASURE_COLUMNS)
TRACK_COLUMNS = ("frame", "track_id", "x", "y", "diameter_nm", "intensity", "det_id", "state")
EVENT_COLUMNS = ("frame", "type", "track_ids", "detail")
# Atomic-column mode (`watch --mode columns`): one row per column and frame, positions in px
# of the acquired frame; column_id is set by the column tracker after the frame is stored.
ATOM_COLUMN_COLUMNS = (
    "frame", "det_id", "column_id", "x", "y", "occupancy", "confidence", "occupancy_net",
    "occupancy_count", "intensity",
)  # fmt: skip

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL, command TEXT, config TEXT);
CREATE TABLE IF NOT EXISTS frames (
    frame INTEGER PRIMARY KEY, time_s REAL, source TEXT UNIQUE NOT NULL, pixel_size_nm REAL,
    a11 REAL, a12 REAL, tx REAL, a21 REAL, a22 REAL, ty REAL, reg_cc REAL, status TEXT,
    height INTEGER, width INTEGER, run_id INTEGER);
CREATE TABLE IF NOT EXISTS detections (
    {
    ", ".join(
        c + (" INTEGER" if c in ("frame", "det_id", "separated", "border") else " REAL")
        for c in DETECTION_COLUMNS
    )
},
    PRIMARY KEY (frame, det_id));
CREATE TABLE IF NOT EXISTS track_versions (
    version INTEGER PRIMARY KEY AUTOINCREMENT, created_at REAL, kind TEXT, last_frame INTEGER);
CREATE TABLE IF NOT EXISTS tracks (
    version INTEGER, frame INTEGER, track_id INTEGER, x REAL, y REAL, diameter_nm REAL,
    intensity REAL, det_id INTEGER, state TEXT);
CREATE INDEX IF NOT EXISTS tracks_version ON tracks (version, frame);
CREATE TABLE IF NOT EXISTS events (
    version INTEGER, frame INTEGER, type TEXT, track_ids TEXT, detail TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS online_tracks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, track_id INTEGER, start INTEGER,
    xy BLOB, u BLOB, det BLOB, stamp INTEGER);
CREATE INDEX IF NOT EXISTS online_tracks_id ON online_tracks (kind, track_id);
CREATE TABLE IF NOT EXISTS atom_columns (
    frame INTEGER, det_id INTEGER, column_id INTEGER, x REAL, y REAL, occupancy INTEGER,
    confidence REAL, occupancy_net INTEGER, occupancy_count INTEGER, intensity REAL,
    PRIMARY KEY (frame, det_id));
"""


def frame_record(
    *,
    frame: int,
    time_s: float | None,
    source: str,
    pixel_size_nm: Sequence[float] | None,
    matrix: np.ndarray,
    reg_cc: float,
    status: str,
    shape: tuple[int, int],
) -> dict[str, Any]:
    """The frames-table row of one frame.

    `pixel_size_nm` is (y, x) or None; the row keeps their geometric mean. `matrix` (2, 3) maps
    acquired-frame pixels to frame-0 pixels; `shape` is the acquired (height, width).
    """
    m = np.asarray(matrix, dtype=float)
    px = pixel_size_nm
    return {
        "frame": frame, "time_s": time_s, "source": source,
        "pixel_size_nm": None if not px else float(np.sqrt(px[0] * px[1])),
        "a11": m[0, 0], "a12": m[0, 1], "tx": m[0, 2],
        "a21": m[1, 0], "a22": m[1, 1], "ty": m[1, 2],
        "reg_cc": reg_cc, "status": status, "height": shape[0], "width": shape[1],
    }  # fmt: skip


def _py(value: Any) -> Any:
    """numpy scalars to Python for sqlite3."""
    return value.item() if isinstance(value, np.generic) else value


def _mapping_rows(tracks: Iterable[Mapping[str, Any]]) -> Iterator[tuple[Any, ...]]:
    """`TRACK_COLUMNS` tuples of track rows given as mappings."""
    for t in tracks:
        yield tuple(_py(t.get(c)) for c in TRACK_COLUMNS)


def _column_rows(columns: Mapping[str, np.ndarray], chunk: int = 4096) -> Iterator[tuple[Any, ...]]:
    """`TRACK_COLUMNS` tuples of track rows given as columns, a chunk at a time."""
    n = len(columns["frame"])
    for a in range(0, n, chunk):
        cols = [np.asarray(columns[c][a : a + chunk]).tolist() for c in TRACK_COLUMNS]
        k = TRACK_COLUMNS.index("det_id")
        cols[k] = [None if d < 0 else d for d in cols[k]]
        yield from zip(*cols, strict=True)


class SessionStore:
    """A session folder's ``session.sqlite``.

    Parameters
    ----------
    session_dir : path-like
        Created if missing.
    readonly : bool
        Only read an existing store (a worker process beside the session that writes it).
    """

    def __init__(self, session_dir: str | Path, *, readonly: bool = False) -> None:
        self.dir = Path(session_dir)
        self.path = self.dir / "session.sqlite"
        if readonly:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA query_only=1")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        # One connection per store object; the pipeline writes from one thread (the tracker).
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across crashes
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------------
    def start_run(self, command: str, config: Mapping[str, Any]) -> int:
        """Record a run (a start or a resume) and return its id."""
        with self._db:
            cur = self._db.execute(
                "INSERT INTO runs (started_at, command, config) VALUES (?, ?, ?)",
                (time.time(), command, json.dumps(config, default=str)),
            )
        return int(cur.lastrowid)

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under `key`."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=str))
            )

    def get_meta(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under `key`, or `default`."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def add_frame(
        self,
        frame: Mapping[str, Any],
        detections: Mapping[str, np.ndarray],
        *,
        run_id: int | None = None,
    ) -> None:
        """Commit one frame row and its detections in a single transaction.

        Parameters
        ----------
        frame : mapping
            The `FRAME_COLUMNS` (plus optional height, width).
        detections : mapping of column name to 1-D array
            The `DETECTION_COLUMNS` except ``frame`` (missing columns are stored as NULL); or,
            when it has an ``occupancy`` column, the atomic columns of the frame
            (`ATOM_COLUMN_COLUMNS` but frame and column_id), stored in ``atom_columns``.
        """
        n = len(detections.get("det_id", ()))
        atoms = "occupancy" in detections
        table, columns = (
            ("atom_columns", ATOM_COLUMN_COLUMNS) if atoms else ("detections", DETECTION_COLUMNS)
        )
        rows = [
            tuple(
                frame["frame"]
                if c == "frame"
                else _py(detections[c][i])
                if c in detections
                else None
                for c in columns
            )
            for i in range(n)
        ]
        values = [_py(frame.get(c)) for c in FRAME_COLUMNS]
        with self._db:  # one transaction: the frame is stored with all its detections or not
            self._db.execute(
                f"INSERT INTO frames ({', '.join(FRAME_COLUMNS)}, height, width, run_id) "
                f"VALUES ({', '.join('?' * (len(FRAME_COLUMNS) + 3))})",
                (*values, _py(frame.get("height")), _py(frame.get("width")), run_id),
            )
            self._db.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                rows,
            )

    def set_column_ids(self, frame: int, det_ids: Sequence[int], column_ids: Sequence[int]) -> None:
        """Store the column ids the column tracker gave to the atomic columns of `frame`."""
        with self._db:
            self._db.executemany(
                "UPDATE atom_columns SET column_id = ? WHERE frame = ? AND det_id = ?",
                [(int(c), int(frame), int(d)) for d, c in zip(det_ids, column_ids, strict=True)],
            )

    def add_tracks(
        self,
        tracks: Iterable[Mapping[str, Any]],
        events: Iterable[Mapping[str, Any]] = (),
        *,
        kind: str,
        last_frame: int,
    ) -> int:
        """Publish a new version of the tracks (and events); returns the version number."""
        return self._add_version(_mapping_rows(tracks), events, kind=kind, last_frame=last_frame)

    def add_track_columns(
        self,
        columns: Mapping[str, np.ndarray],
        events: Iterable[Mapping[str, Any]] = (),
        *,
        kind: str,
        last_frame: int,
    ) -> int:
        """`add_tracks` of rows given as columns (the `TRACK_COLUMNS`; det_id < 0 where
        interpolated, stored as NULL), inserted without a Python object per row."""
        return self._add_version(_column_rows(columns), events, kind=kind, last_frame=last_frame)

    def _add_version(
        self,
        rows: Iterable[tuple[Any, ...]],
        events: Iterable[Mapping[str, Any]],
        *,
        kind: str,
        last_frame: int,
    ) -> int:
        with self._db:
            cur = self._db.execute(
                "INSERT INTO track_versions (created_at, kind, last_frame) VALUES (?, ?, ?)",
                (time.time(), kind, last_frame),
            )
            version = int(cur.lastrowid)
            self._insert_tracks(version, rows, events)
        return version

    def append_tracks(
        self,
        version: int,
        tracks: Iterable[Mapping[str, Any]],
        events: Iterable[Mapping[str, Any]] = (),
        *,
        last_frame: int,
    ) -> None:
        """Add rows to an existing version (the online tracker's commits, frame by frame)."""
        with self._db:
            self._insert_tracks(version, _mapping_rows(tracks), events)
            self._db.execute(
                "UPDATE track_versions SET last_frame = ? WHERE version = ?", (last_frame, version)
            )

    def _insert_tracks(
        self,
        version: int,
        rows: Iterable[tuple[Any, ...]],
        events: Iterable[Mapping[str, Any]],
    ) -> None:
        # a generator: sqlite3 takes the rows one by one (no list of a whole version)
        self._db.executemany(
            "INSERT INTO tracks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((version, *row) for row in rows),
        )
        self._db.executemany(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
            [
                (
                    version,
                    _py(e["frame"]),
                    e["type"],
                    e["track_ids"],
                    json.dumps(e.get("detail", {}), default=float),
                )
                for e in events
            ],
        )

    def clear_online_tracks(self) -> None:
        """Empty ``online_tracks`` (a tracker starting over, e.g. replaying on resume)."""
        with self._db:
            self._db.execute("DELETE FROM online_tracks")

    def add_online_tracks(
        self, kind: str, tracks: Iterable[tuple[int, int, bytes, bytes, bytes, int]]
    ) -> None:
        """Add online tracks of `kind` ('archive': finished tracks; 'part': old parts of
        live tracks): (track_id, start, xy, u, det, stamp) each, the arrays as raw float64 /
        float64 / int64 bytes, `stamp` the frame tracked when they were added."""
        with self._db:
            self._db.executemany(
                "INSERT INTO online_tracks (kind, track_id, start, xy, u, det, stamp) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                ((kind, *t) for t in tracks),
            )

    def online_tracks(
        self, kind: str, *, until: int | None = None, track_id: int | None = None
    ) -> Iterator[tuple[int, int, bytes, bytes, bytes]]:
        """Online tracks of `kind` (track_id, start, xy, u, det) in the order they were
        added; only those added at frames ≤ `until`, and / or only `track_id`."""
        sql, args = "SELECT track_id, start, xy, u, det FROM online_tracks WHERE kind = ?", [kind]
        if until is not None:
            sql, args = sql + " AND stamp <= ?", [*args, until]
        if track_id is not None:
            sql, args = sql + " AND track_id = ?", [*args, track_id]
        yield from self._db.execute(sql + " ORDER BY seq", args)

    # -- reading ----------------------------------------------------------------------------
    def sources(self) -> set[str]:
        """Frame sources already stored (for resuming)."""
        return {r[0] for r in self._db.execute("SELECT source FROM frames")}

    def n_frames(self) -> int:
        """Number of stored frames."""
        return int(self._db.execute("SELECT COUNT(*) FROM frames").fetchone()[0])

    def n_detections(self) -> int:
        """Number of stored detections."""
        return int(self._db.execute("SELECT COUNT(*) FROM detections").fetchone()[0])

    def n_atom_columns(self) -> int:
        """Number of stored atomic columns (column mode; summed over frames)."""
        return int(self._db.execute("SELECT COUNT(*) FROM atom_columns").fetchone()[0])

    def atom_columns(self, frame: int | None = None) -> list[dict[str, Any]]:
        """Atomic-column rows (of one frame, or all) in (frame, det_id) order."""
        sql = f"SELECT {', '.join(ATOM_COLUMN_COLUMNS)} FROM atom_columns"
        args: tuple[Any, ...] = ()
        if frame is not None:
            sql, args = sql + " WHERE frame = ?", (frame,)
        cur = self._db.execute(sql + " ORDER BY frame, det_id", args)
        return [dict(zip(ATOM_COLUMN_COLUMNS, row, strict=True)) for row in cur]

    def frames(self) -> list[dict[str, Any]]:
        """All frame rows in frame order."""
        cur = self._db.execute(f"SELECT {', '.join(FRAME_COLUMNS)} FROM frames ORDER BY frame")
        return [dict(zip(FRAME_COLUMNS, row, strict=True)) for row in cur]

    def detections(self, frame: int | None = None) -> list[dict[str, Any]]:
        """Detection rows (of one frame, or all) in (frame, det_id) order."""
        sql = f"SELECT {', '.join(DETECTION_COLUMNS)} FROM detections"
        args: tuple[Any, ...] = ()
        if frame is not None:
            sql, args = sql + " WHERE frame = ?", (frame,)
        cur = self._db.execute(sql + " ORDER BY frame, det_id", args)
        return [dict(zip(DETECTION_COLUMNS, row, strict=True)) for row in cur]

    def detection_columns(
        self, columns: Sequence[str], *, frames_below: int | None = None
    ) -> dict[str, np.ndarray]:
        """Detection columns (float64; NULL as NaN) in (frame, det_id) order, of frames below
        `frames_below` (default: all), read in chunks (no Python object per row is kept)."""
        sql = f"SELECT {', '.join(columns)} FROM detections"
        args: tuple[Any, ...] = ()
        if frames_below is not None:
            sql, args = sql + " WHERE frame < ?", (frames_below,)
        cur = self._db.execute(sql + " ORDER BY frame, det_id", args)
        parts = []
        while chunk := cur.fetchmany(20000):
            parts.append(np.array(chunk, dtype=float).reshape(-1, len(columns)))
        data = np.concatenate(parts) if parts else np.zeros((0, len(columns)))
        return {c: np.ascontiguousarray(data[:, i]) for i, c in enumerate(columns)}

    def latest_version(self) -> int | None:
        """Newest track version, or None."""
        return self._db.execute("SELECT MAX(version) FROM track_versions").fetchone()[0]

    def versions(self) -> list[dict[str, Any]]:
        """Every track version: version, created_at, kind, last_frame (oldest first)."""
        cur = self._db.execute(
            "SELECT version, created_at, kind, last_frame FROM track_versions ORDER BY version"
        )
        return [
            dict(zip(("version", "created_at", "kind", "last_frame"), r, strict=True)) for r in cur
        ]

    def frame_row(self, frame: int) -> dict[str, Any] | None:
        """One frame's row (the `FRAME_COLUMNS` plus height, width), or None."""
        cols = (*FRAME_COLUMNS, "height", "width")
        row = self._db.execute(
            f"SELECT {', '.join(cols)} FROM frames WHERE frame = ?", (frame,)
        ).fetchone()
        return None if row is None else dict(zip(cols, row, strict=True))

    def tracks(self, version: int | None = None) -> list[dict[str, Any]]:
        """Track rows of `version` (default: newest) in (track_id, frame) order."""
        version = self.latest_version() if version is None else version
        cur = self._db.execute(
            f"SELECT {', '.join(TRACK_COLUMNS)} FROM tracks WHERE version = ? "
            "ORDER BY track_id, frame",
            (version,),
        )
        return [dict(zip(TRACK_COLUMNS, row, strict=True)) for row in cur]

    def events(self, version: int | None = None) -> list[dict[str, Any]]:
        """Event rows of `version` (default: newest) in frame order."""
        version = self.latest_version() if version is None else version
        cur = self._db.execute(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE version = ? ORDER BY frame",
            (version,),
        )
        return [dict(zip(EVENT_COLUMNS, row, strict=True)) for row in cur]

    # -- exports ----------------------------------------------------------------------------
    def export_csv(self, out_dir: str | Path | None = None) -> list[Path]:
        """Write frames.csv, detections.csv, tracks.csv, events.csv; returns the paths."""
        out = Path(out_dir) if out_dir is not None else self.dir
        out.mkdir(parents=True, exist_ok=True)
        written = []
        tables = (
            ("frames.csv", FRAME_COLUMNS, self.frames()),
            ("detections.csv", DETECTION_COLUMNS, self.detections()),
            ("tracks.csv", TRACK_COLUMNS, self.tracks()),
            ("events.csv", EVENT_COLUMNS, self.events()),
        )
        for name, columns, rows in tables:
            path = out / name
            tmp = path.with_suffix(".csv.tmp")
            with tmp.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(columns)
                for row in rows:
                    writer.writerow(["" if row[c] is None else row[c] for c in columns])
            tmp.replace(path)  # readers never see a half-written export
            written.append(path)
        return written
