"""What the dashboard shows, as plain data: built from pipeline messages or a stored session.

`DashboardState` has no Qt in it: it ingests the pipeline's PUB messages (``status`` per
stored frame with its detections and a frame-0 thumbnail, ``tracks`` per online commit) or
reads a session store, and keeps

- per frame: time, particle count, mean ± sd equivalent diameter, total volume (spheres),
  registration correlation, latency, queue depth;
- the current frame: thumbnail, detections (for outlines, the size histogram and the
  Treacy-Rice scatter); the first frame's diameters (the reference histogram);
- trajectories (frame, x, y, diameter, intensity per track) and fusion events;
- health: frames/s, stage errors.

Bounded memory: one thumbnail, per-frame scalars, and the track rows (which the store holds
anyway); the views draw from it on a timer, so message rate and drawing rate are decoupled.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DashboardState", "FrameStats", "treacy_rice_fit"]

_TAIL_FRAMES = 15  # length of the trajectory tails drawn on the image


@dataclass
class FrameStats:
    """Scalars of one frame (one point of every time plot)."""

    frame: int
    time_s: float | None
    count: int
    mean_diameter_nm: float
    sd_diameter_nm: float
    total_volume_nm3: float
    reg_cc: float
    status: str
    latency_s: float | None = None
    queue_depth: int | None = None


def treacy_rice_fit(diameter_nm: np.ndarray, intensity: np.ndarray) -> tuple[float, float, float]:
    """Least-squares line of I^(1/3) against D: (slope, intercept, R²); NaN if < 3 points.

    Treacy & Rice: the integrated ADF intensity of a particle is ∝ its number of atoms, so
    I^(1/3) ∝ D for particles of one composition (intercept ≈ 0).
    """
    d = np.asarray(diameter_nm, float)
    cube = np.cbrt(np.clip(np.asarray(intensity, float), 0, None))
    ok = np.isfinite(d) & np.isfinite(cube) & (cube > 0)
    if ok.sum() < 3 or np.ptp(d[ok]) == 0:
        return float("nan"), float("nan"), float("nan")
    slope, intercept = np.polyfit(d[ok], cube[ok], 1)
    pred = slope * d[ok] + intercept
    ss_res = float(((cube[ok] - pred) ** 2).sum())
    ss_tot = float(((cube[ok] - cube[ok].mean()) ** 2).sum())
    return float(slope), float(intercept), 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def _stats(row: dict[str, Any], diameter_nm: np.ndarray, **extra: Any) -> FrameStats:
    d = np.asarray(diameter_nm, float)
    d = d[np.isfinite(d)]
    return FrameStats(
        frame=int(row["frame"]),
        time_s=None if row.get("time_s") is None else float(row["time_s"]),
        count=int(d.size),
        mean_diameter_nm=float(d.mean()) if d.size else float("nan"),
        sd_diameter_nm=float(d.std()) if d.size > 1 else float("nan"),
        total_volume_nm3=float((np.pi / 6 * d**3).sum()),
        reg_cc=float("nan") if row.get("reg_cc") is None else float(row["reg_cc"]),
        status=str(row.get("status", "")),
        **extra,
    )


@dataclass
class DashboardState:
    """Everything the views draw; see the module docstring."""

    frames: dict[int, FrameStats] = field(default_factory=dict)
    current: dict[str, np.ndarray] = field(default_factory=dict)
    current_frame: int | None = None
    preview: np.ndarray | None = None
    preview_scale: float = 1.0
    first_diameters_nm: np.ndarray | None = None
    tracks: dict[int, list[tuple[int, float, float, float, float]]] = field(default_factory=dict)
    fusions: list[dict[str, Any]] = field(default_factory=list)
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    source: str = ""
    pixel_size_nm: float | None = None
    track_version: int | None = None
    _arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=30))
    updates: int = 0  # messages ingested (for the health panel)

    # -- live ---------------------------------------------------------------------------------
    def ingest(self, message: Any) -> None:
        """Take one pipeline message (`nptrack.pipeline.messages.Message`)."""
        self.updates += 1
        f, a = message.fields, message.arrays
        if message.kind == "status":
            dets = {k: np.asarray(v) for k, v in a.items() if k != "preview"}
            d = dets.get("diameter_nm", np.zeros(0))
            self.frames[int(f["frame"])] = _stats(
                f, d, latency_s=f.get("latency_s"), queue_depth=f.get("queue_depth")
            )
            if self.current_frame is None or f["frame"] >= self.current_frame:
                self.current_frame, self.current = int(f["frame"]), dets
                if "preview" in a:
                    self.preview = np.array(a["preview"])  # a copy: the buffer is reused
                    self.preview_scale = self.preview.shape[1] / max(1, int(f["width"]))
            if self.first_diameters_nm is None or f["frame"] == 0:
                self.first_diameters_nm = np.array(d, dtype=float)
            if f.get("error"):
                self.errors.append(f"frame {f['frame']}: {f['error']}")
            self.source = str(f.get("source", ""))
            if f.get("pixel_size_nm"):
                self.pixel_size_nm = float(f["pixel_size_nm"])
            self._arrivals.append(time.monotonic())
        elif message.kind == "tracks":
            if "track_id" in a:
                self._add_track_rows(a)
            for e in f.get("events") or ():
                self._add_event(e)
            if f.get("version") is not None:
                self.track_version = int(f["version"])
        elif message.kind == "error":
            self.errors.append(str(f.get("message", f)))

    def _add_track_rows(self, a: dict[str, np.ndarray]) -> None:
        cols = [
            np.asarray(a[c]) for c in ("track_id", "frame", "x", "y", "diameter_nm", "intensity")
        ]
        for tid, fr, x, y, d, i in zip(*cols, strict=True):
            self.tracks.setdefault(int(tid), []).append(
                (int(fr), float(x), float(y), float(d), float(i))
            )

    def _add_event(self, e: dict[str, Any]) -> None:
        if e.get("type") != "fusion":
            return
        detail = e.get("detail") or {}
        if isinstance(detail, str):
            detail = json.loads(detail)
        self.fusions.append({"frame": int(e["frame"]), "track_ids": e["track_ids"], **detail})

    @property
    def frames_per_s(self) -> float:
        """Stored frames per second over the last arrivals."""
        t = self._arrivals
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 2 and t[-1] > t[0] else float("nan")

    # -- stored session -----------------------------------------------------------------------
    @classmethod
    def from_session(cls, session_dir: str | Path, *, frame: int | None = None) -> DashboardState:
        """The state of a stored session at `frame` (default: its last frame).

        The thumbnail is read from the frame's source file when it is still there, and
        resampled into frame-0 pixels with the stored transform.
        """
        from nptrack.pipeline.store import SessionStore

        state = cls()
        with SessionStore(session_dir) as store:
            rows = store.frames()
            if not rows:
                return state
            dets_by_frame: dict[int, list[dict[str, Any]]] = {}
            for d in store.detections():
                dets_by_frame.setdefault(d["frame"], []).append(d)
            for r in rows:
                ds = dets_by_frame.get(r["frame"], [])
                diam = np.array([np.nan if d["diameter_nm"] is None else d["diameter_nm"]
                                 for d in ds], dtype=float)  # fmt: skip
                state.frames[r["frame"]] = _stats(r, diam)
            last = rows[-1]["frame"] if frame is None else int(frame)
            if last not in state.frames:
                raise ValueError(f"frame {last} is not in the session (0-{rows[-1]['frame']})")
            ds = dets_by_frame.get(last, [])
            state.current_frame = last
            state.current = {
                c: np.array([np.nan if d[c] is None else d[c] for d in ds], dtype=float)
                for c in ("x", "y", "diameter_nm", "intensity", "score", "border")
            }
            first = dets_by_frame.get(rows[0]["frame"], [])
            state.first_diameters_nm = np.array(
                [np.nan if d["diameter_nm"] is None else d["diameter_nm"] for d in first]
            )
            version = store.latest_version()
            state.track_version = version
            for t in store.tracks(version):
                if t["frame"] <= last:
                    state.tracks.setdefault(t["track_id"], []).append(
                        (t["frame"], t["x"], t["y"], t["diameter_nm"] or np.nan,
                         t["intensity"] or np.nan)
                    )  # fmt: skip
            for e in store.events(version):
                if e["frame"] <= last:
                    state._add_event(e)
            row = next(r for r in rows if r["frame"] == last)
            state.source = str(row["source"])
            state.pixel_size_nm = rows[0]["pixel_size_nm"]
            state._load_preview(row, store.frame_row(last))
        return state

    def _load_preview(self, row: dict[str, Any], full: dict[str, Any] | None) -> None:
        from nptrack.io.errors import ReadError
        from nptrack.io.read import read_frames
        from nptrack.pipeline.stages import preview

        source = str(row["source"])
        path, _, index = source.partition("#")
        try:
            frames = read_frames(path)
        except (ReadError, OSError):
            return  # moved or deleted since: the panel shows the overlays only
        data = frames[int(index) if index else 0].data
        m = np.array([[row["a11"], row["a12"], row["tx"]], [row["a21"], row["a22"], row["ty"]]])
        self.preview = preview(data, m)
        width = full["width"] if full and full.get("width") else data.shape[1]
        self.preview_scale = self.preview.shape[1] / width

    # -- views' helpers -----------------------------------------------------------------------
    def series(self) -> dict[str, np.ndarray]:
        """Time plots: t (s from the first frame, or frame numbers), count, mean/sd D, volume."""
        fs = [self.frames[k] for k in sorted(self.frames)]
        times = [f.time_s for f in fs]
        if fs and all(t is not None for t in times):
            t = np.array(times, float) - float(times[0])  # type: ignore[arg-type]
        else:
            t = np.array([f.frame for f in fs], float)
        return {
            "t": t,
            "frame": np.array([f.frame for f in fs], float),
            "count": np.array([f.count for f in fs], float),
            "mean_d": np.array([f.mean_diameter_nm for f in fs]),
            "sd_d": np.array([f.sd_diameter_nm for f in fs]),
            "volume": np.array([f.total_volume_nm3 for f in fs]),
            "reg_cc": np.array([f.reg_cc for f in fs]),
            "latency": np.array([np.nan if f.latency_s is None else f.latency_s for f in fs]),
        }

    @property
    def time_axis_is_seconds(self) -> bool:
        return bool(self.frames) and all(f.time_s is not None for f in self.frames.values())

    def tails(self, *, length: int = _TAIL_FRAMES) -> list[np.ndarray]:
        """Recent trajectory pieces (frame-0 px), one (n, 3) array (x, y, age) per track."""
        if self.current_frame is None:
            return []
        now = self.current_frame
        out = []
        for rows in self.tracks.values():
            pts = [(x, y, now - f) for f, x, y, _, _ in rows if 0 <= now - f <= length]
            if len(pts) >= 2:
                out.append(np.array(pts, float))
        return out

    def nearest_track(self, x: float, y: float, *, max_px: float = 10.0) -> int | None:
        """The track whose latest point (up to the current frame) is nearest to (x, y)."""
        best, best_d = None, max_px
        for tid, rows in self.tracks.items():
            _, tx, ty, _, _ = rows[-1]
            d = float(np.hypot(tx - x, ty - y))
            if d < best_d:
                best, best_d = tid, d
        return best

    def track_history(self, track_id: int) -> dict[str, np.ndarray]:
        """Frames, diameter (nm) and intensity of one track."""
        rows = sorted(self.tracks.get(track_id, []))
        return {
            "frame": np.array([r[0] for r in rows], float),
            "diameter_nm": np.array([r[3] for r in rows], float),
            "intensity": np.array([r[4] for r in rows], float),
        }
