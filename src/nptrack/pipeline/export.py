"""Exports of a session from its store: the DESIGN.md tables and ``summary.json``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nptrack.io.export import write_json, write_tables
from nptrack.pipeline.run import RunSummary
from nptrack.pipeline.store import (
    DETECTION_COLUMNS,
    EVENT_COLUMNS,
    FRAME_COLUMNS,
    TRACK_COLUMNS,
    SessionStore,
)

__all__ = ["export_session", "session_summary"]


def session_summary(store: SessionStore, summary: RunSummary | None = None) -> dict[str, Any]:
    """Counts and settings of a session (the content of ``summary.json``)."""
    frames = store.frames()
    version = store.latest_version()
    kinds = {v["version"]: v for v in store.versions()}
    tracks = store.tracks(version) if version is not None else []
    events = store.events(version) if version is not None else []
    status = Counter(r["status"] for r in frames)
    out: dict[str, Any] = {
        "counts": {
            "frames": len(frames),
            "frames_ok": status.get("ok", 0),
            "frames_degraded": status.get("degraded", 0),
            "frames_failed": status.get("failed", 0),
            "detections": store.n_detections(),
            "tracks": len({t["track_id"] for t in tracks}),
            "track_positions": len(tracks),
            **{f"events_{k}": n for k, n in sorted(Counter(e["type"] for e in events).items())},
        },
        "track_version": version,
        "track_version_kind": kinds[version]["kind"] if version is not None else None,
        "versions": len(kinds),
        "pixel_size_nm": frames[0]["pixel_size_nm"] if frames else None,
        "settings": store.get_meta("config", {}),
    }
    if summary is not None:
        lat = np.asarray(summary.latencies_s)
        out["last_run"] = {
            "frames_stored": summary.frames_stored,
            "frames_failed": summary.frames_failed,
            "wall_s": round(summary.wall_s, 3),
            "latency_p50_s": round(float(np.percentile(lat, 50)), 4) if lat.size else None,
            "latency_p95_s": round(float(np.percentile(lat, 95)), 4) if lat.size else None,
            "problems": summary.problems,
        }
    return out


def export_session(
    store: SessionStore,
    out_dir: str | Path,
    *,
    formats: Sequence[str] = ("csv",),
    summary: RunSummary | None = None,
) -> list[Path]:
    """frames / detections / tracks / events tables (newest track version) + summary.json.

    CSV is always written (the data contract); `formats` may add 'parquet' and 'hdf5'.
    """
    formats = ["csv", *(f for f in formats if f != "csv")]
    tables = {
        "frames": (FRAME_COLUMNS, store.frames()),
        "detections": (DETECTION_COLUMNS, store.detections()),
        "tracks": (TRACK_COLUMNS, store.tracks()),
        "events": (EVENT_COLUMNS, store.events()),
    }
    paths = write_tables(tables, out_dir, formats=formats)
    paths.append(write_json(Path(out_dir) / "summary.json", session_summary(store, summary)))
    return paths
