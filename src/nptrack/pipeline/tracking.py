"""The track stage of a session: online NP-Tracker, background global re-optimisation, store.

`SessionTracker` is fed each stored frame's detections (frame-0 pixels) in frame order. It
runs the sliding-window `OnlineTracker`, appends each committed frame to the session's
``online`` track version, and every ``reoptimize_every_frames`` frames starts a global
re-optimisation of the whole history in a *separate process* (the CEM is pure Python: in a
thread it would hold the GIL and slow the live chain), from the gated Hungarian start and
from the online solution so far (`SessionTracker.warm_start`), keeping the lower energy.
When that finishes, its result is stored as a new ``global`` version; the live pipeline
never waits for it. `finish` commits the last frames and runs the final global
re-optimisation (waiting for it).

A resumed session rebuilds the tracker by replaying the stored detections (`replay`): the
online tracker is deterministic, so the replayed commits equal those of the crashed run.

Memory: the history is the store's, not the process's. A frame is stored before it is
tracked; the global re-optimisation reads the detections and fields of frames 0..t from the
store (`stored_history`) in its worker process and stores its version there itself; the
online tracker keeps only its window's rows (``keep_history=False``), and its finished
tracks and the old parts of its live tracks go to the store (`StoredTracks`). Of the older
frames the process keeps, for the last `window.HISTORY_FRAMES` only, each detection's
diameter and the live tracks' detection rows (12 bytes a detection): nothing that grows with
the length of the session.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from nptrack.config import TrackConfig
from nptrack.pipeline.allocator import release_freed_memory
from nptrack.pipeline.store import SessionStore
from nptrack.track import (
    Detections,
    Event,
    OnlineTracker,
    Progress,
    Solution,
    Track,
    TrackTable,
    energy,
    track_detections,
)
from nptrack.track.cem import params_from_config

__all__ = [
    "SessionTracker",
    "StoredTracks",
    "event_rows",
    "feed_online",
    "frame_field",
    "global_track_columns",
    "global_tracks",
    "stack_fields",
    "stored_history",
    "stored_start",
    "table_rows",
    "tracker_input",
    "unfrozen",
]

log = logging.getLogger(__name__)

Row = dict[str, Any]
_TRACK_INPUT = ("x", "y", "diameter_nm", "intensity", "score", "det_id")


def table_rows(table: TrackTable) -> list[dict[str, Any]]:
    """tracks.csv rows of a `TrackTable` (det_id None where the tracker interpolated)."""
    cols = table.as_columns()
    rows = []
    for i in range(len(table)):
        row = {k: v[i].item() if isinstance(v[i], np.generic) else v[i] for k, v in cols.items()}
        if row["det_id"] < 0:
            row["det_id"] = None
        rows.append(row)
    return rows


def event_rows(events: Iterable[Event]) -> list[dict[str, Any]]:
    """events.csv rows of tracker events."""
    return [
        {"frame": e.frame, "type": e.type, "track_ids": e.track_ids, "detail": e.detail}
        for e in events
    ]


def global_track_columns(
    columns: Mapping[str, np.ndarray],
    *,
    pixel_size_nm: float,
    frame_shape: tuple[int, int] | None,
    n_frames: int,
    config: dict[str, Any],
    fields: np.ndarray | None = None,
    init: Solution | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Global CEM over a whole series: (tracks columns, events rows).

    Plain arguments so that it runs in a worker process. The tracks come as the
    `TRACK_COLUMNS` arrays (det_id −1 where interpolated, state fixed-width strings): one
    buffer per column to hand back, not an object per row (`global_tracks` gives rows).

    Parameters
    ----------
    columns : mapping of str to ndarray, each of shape (N,)
        ``frame, x, y`` (frame-0 px), ``diameter_nm, intensity, score, det_id``.
    pixel_size_nm : float
    frame_shape : (height, width) in px, optional
    n_frames : int
        Frames of the series (frames without detections count).
    config : dict
        `TrackConfig` fields.
    fields : ndarray, shape (n_frames, 2, 3), optional
        Each frame's registration affine (acquired px -> frame-0 px): where that frame's
        field of view lies in frame-0 coordinates (the tracker does not write interpolated
        points that were out of view). None: every frame sees frame 0's field.
    init : Solution, optional
        A second start whose detection indices are rows of `columns` (the online tracker's
        solution, `SessionTracker.warm_start`). The CEM then runs from both it and the gated
        Hungarian start (same energy parameters) and the lower-energy result is kept: each
        start ends in a local minimum, and neither is always the lower one. None: the
        Hungarian start only.
    progress : callable, optional
        Receives a one-line status every few seconds while the CEM runs (which start, epoch,
        moves applied, seconds so far; for the second start, about how long is left, judged
        by the first), and a line when a start that took that long ends. Plain function:
        not passed to a worker process.
    """
    cfg = TrackConfig.model_validate(config)
    if not len(columns["frame"]):
        return _track_columns(None), []
    dets = Detections.from_arrays(
        columns["frame"],
        columns["x"],
        columns["y"],
        diameter_nm=columns["diameter_nm"],
        intensity=columns["intensity"],
        score=columns["score"],
        det_id=columns["det_id"],
        pixel_size_nm=pixel_size_nm,
        frame_shape=frame_shape,
        n_frames=n_frames,
        fields=fields,
    )
    params = params_from_config(cfg, dets)
    starts = 1 if init is None else 2
    what = f"global re-optimisation of {n_frames} frames"

    def run(k: int, start: Solution | None, expected_s: float | None) -> tuple[Any, float]:
        ticker = None
        if progress is not None:
            how = "gated Hungarian links" if start is None else "online tracks"
            label = f"{what}, start {k} of {starts} ({how})"
            ticker = Progress(progress, label, expected_s=expected_s)
        t0 = time.monotonic()
        res = track_detections(dets, config=cfg, params=params, init=start, progress=ticker)
        took = time.monotonic() - t0
        if ticker is not None and took >= ticker.every_s:
            progress(f"{what}: start {k} of {starts} done in {took:.0f} s")
        return res, took

    result, took = run(1, None, None)
    if init is not None:
        # the second start costs about what the first did: that is the estimate of what is left
        warm, _ = run(2, init, took)
        if energy(warm.solution, dets, params) < energy(result.solution, dets, params):
            result = warm
    return _track_columns(result.tracks), event_rows(result.events)


def _track_columns(table: TrackTable | None) -> dict[str, np.ndarray]:
    if table is None:
        from nptrack.track.events import empty_table

        table = empty_table()
    cols = dict(table.as_columns())
    cols["state"] = np.asarray(cols["state"], dtype="U12")
    return cols


def global_tracks(
    columns: Mapping[str, np.ndarray], **kwargs: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`global_track_columns` as (tracks rows, events rows); same arguments."""
    cols, events = global_track_columns(columns, **kwargs)
    det = cols["det_id"].tolist()
    keys = [k for k in cols if k != "det_id"]
    values = [cols[k].tolist() for k in keys]
    rows = [
        {**dict(zip(keys, v, strict=True)), "det_id": None if d < 0 else d}
        for *v, d in zip(*values, det, strict=True)
    ]
    return rows, events


def stored_history(
    store: SessionStore, n_frames: int, *, min_score: float, min_diameter_nm: float
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Tracker input columns (`SessionTracker.columns`) and fields (`stack_fields`) of
    frames 0 .. `n_frames` − 1 as stored: what the session tracker was fed (a frame is
    stored before it is tracked; failed frames are empty)."""
    rows = store.frames()[:n_frames]
    if [r["frame"] for r in rows] != list(range(n_frames)):
        raise ValueError(f"the store does not hold frames 0-{n_frames - 1}")
    names = ("frame", *_TRACK_INPUT)
    det = store.detection_columns(names, frames_below=n_frames)
    bounds = np.searchsorted(det["frame"], np.arange(n_frames + 1), side="left")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for k, row in enumerate(rows):
        a, b = (0, 0) if row["status"] == "failed" else (bounds[k], bounds[k + 1])
        dets = {c: det[c][a:b] for c in _TRACK_INPUT} if b > a else {}
        cols = tracker_input(dets, min_score=min_score, min_diameter_nm=min_diameter_nm)
        parts["frame"].append(np.full(len(cols["x"]), k, dtype=np.int64))
        for c in _TRACK_INPUT:
            parts[c].append(cols[c])
    columns = {
        k: np.concatenate(v) if v else np.zeros(0, dtype=np.int64 if k == "frame" else float)
        for k, v in parts.items()
    }
    return columns, stack_fields(frame_field(r) for r in rows)


def _global_from_store(
    session_dir: str,
    n_frames: int,
    *,
    pixel_size_nm: float,
    frame_shape: tuple[int, int] | None,
    config: dict[str, Any],
    init: Solution | None,
    archived_until: int,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """The background re-optimisation (worker process): the history of frames 0 ..
    `n_frames` − 1 and the online tracks archived until then are read from the store; `init`
    holds the online tracks alive then (and every fusion)."""
    cfg = TrackConfig.model_validate(config)
    with SessionStore(session_dir, readonly=True) as store:
        columns, fields = stored_history(
            store,
            n_frames,
            min_score=cfg.min_detection_score,
            min_diameter_nm=cfg.min_detection_diameter_px * pixel_size_nm,
        )
        if init is not None:
            init = stored_start(store, init, until=archived_until)
    return global_track_columns(
        columns,
        pixel_size_nm=pixel_size_nm,
        frame_shape=frame_shape,
        n_frames=n_frames,
        config=config,
        fields=fields,
        init=init,
    )


def _store_global_from_store(session_dir: str, n_frames: int, **kwargs: Any) -> int:
    """`_global_from_store`, its result stored as a global version by the worker itself; the
    version number. The session process never holds the columns of the whole history (they
    grow with the session), so its memory does not either."""
    columns, events = _global_from_store(session_dir, n_frames, **kwargs)
    with SessionStore(session_dir) as store:
        return store.add_track_columns(columns, events, kind="global", last_frame=n_frames - 1)


def stored_start(store: SessionStore, live: Solution, *, until: int) -> Solution:
    """The online solution as of frame `until` (`OnlineTracker.solution`) from its live
    part (`OnlineTracker.live_solution` then) and the tracks and parts stored until then."""
    parts: dict[int, list[Track]] = {}
    for tid, part in _stored(store, "part", until=until):
        parts.setdefault(tid, []).append(part)
    live.tracks = {i: _join([*parts.get(i, []), tr]) for i, tr in live.tracks.items()}
    live.tracks.update(_stored(store, "archive", until=until))
    return live


def _join(parts: list[Track]) -> Track:
    """One track of consecutive parts (oldest first)."""
    if len(parts) == 1:
        return parts[0]
    return Track(
        parts[0].id,
        parts[0].start,
        np.concatenate([p.xy for p in parts]),
        np.concatenate([p.u for p in parts]),
        np.concatenate([p.det for p in parts]),
    )


def _stored(store: SessionStore, kind: str, **where: Any) -> Iterator[tuple[int, Track]]:
    for tid, start, xy, u, det in store.online_tracks(kind, **where):
        yield (
            tid,
            Track(
                tid,
                start,
                np.frombuffer(xy, dtype=np.float64).reshape(-1, 2).copy(),
                np.frombuffer(u, dtype=np.float64).copy(),
                np.frombuffer(det, dtype=np.int64).copy(),
            ),
        )


def _blobs(
    items: Iterable[tuple[int, Track]], frame: int
) -> Iterator[tuple[int, int, bytes, bytes, bytes, int]]:
    for tid, tr in items:
        yield (
            tid,
            tr.start,
            np.ascontiguousarray(tr.xy, dtype=np.float64).tobytes(),
            np.ascontiguousarray(tr.u, dtype=np.float64).tobytes(),
            np.ascontiguousarray(tr.det, dtype=np.int64).tobytes(),
            frame,
        )


class StoredTracks(MutableMapping[int, Track]):
    """The online tracker's finished tracks (a mapping: its archive) and the old parts of its
    live tracks (a `TrackParts`), kept in the store's ``online_tracks``.

    Both are written by `flush` (once per frame, stamped with the frame then tracked) and read
    back in the order they were added; only the ids of finished tracks stay in memory.
    """

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        store.clear_online_tracks()  # a tracker starts over (a resumed session replays)
        self._ids: dict[int, None] = {}  # archive order
        self._pending: dict[int, Track] = {}
        self._pending_parts: list[tuple[int, Track]] = []

    def flush(self, frame: int) -> None:
        """Write the tracks and parts added since the last flush, stamped `frame`."""
        if self._pending_parts:
            self.store.add_online_tracks("part", _blobs(self._pending_parts, frame))
            self._pending_parts.clear()
        if self._pending:
            self.store.add_online_tracks("archive", _blobs(self._pending.items(), frame))
            self._pending.clear()

    # -- TrackParts ---------------------------------------------------------------------------
    def put(self, tid: int, part: Track) -> None:
        """Keep an old part of live track `tid` (written at the next `flush`)."""
        self._pending_parts.append((tid, part))

    def joined(self, tid: int, rest: Track) -> Track:
        """Track `tid` whole: its parts (stored, then pending), then `rest`."""
        parts = [p for _, p in _stored(self.store, "part", track_id=tid)]
        parts += [p for i, p in self._pending_parts if i == tid]
        return _join([*parts, rest])

    # -- archive mapping ----------------------------------------------------------------------

    def __setitem__(self, tid: int, track: Track) -> None:
        if tid in self._ids:
            raise KeyError(f"track {tid} is archived already")
        self._ids[tid] = None
        self._pending[tid] = track

    def __getitem__(self, tid: int) -> Track:
        if tid in self._pending:
            return self._pending[tid]
        if tid not in self._ids:
            raise KeyError(tid)
        return next(_stored(self.store, "archive", track_id=tid))[1]

    def __delitem__(self, tid: int) -> None:
        raise TypeError("archived tracks are final")

    def __contains__(self, tid: object) -> bool:
        return tid in self._ids

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def items(self) -> Iterator[tuple[int, Track]]:  # type: ignore[override]
        """(id, track) in archive order, read in one query."""
        yield from _stored(self.store, "archive")
        yield from self._pending.items()


def feed_online(
    online: OnlineTracker, cols: Mapping[str, np.ndarray], field: np.ndarray | None
) -> Any:
    """One frame's tracker input columns (`tracker_input`) into `online`; its commit."""
    return online.update(
        cols["x"],
        cols["y"],
        diameter_nm=cols["diameter_nm"],
        intensity=cols["intensity"],
        score=cols["score"],
        det_id=cols["det_id"].astype(np.int64),
        field=field,
    )


def unfrozen(solution: Solution) -> Solution:
    """`solution` with every frame free to change again (a start for a global run)."""
    solution.frozen_until = -1
    return solution


def tracker_input(
    detections: Mapping[str, np.ndarray],
    *,
    min_score: float = 0.0,
    min_diameter_nm: float = 0.0,
) -> dict[str, np.ndarray]:
    """Tracker input columns of one frame's detections.

    Missing scores are 1; detections scoring below `min_score` or smaller than
    `min_diameter_nm` are left out; intensities are kept positive (they enter the energy as
    logarithms: a particle measured at or below its local background is given a small
    positive mass instead).
    """
    n = len(detections.get("x", ()))
    out = {}
    for key in _TRACK_INPUT:
        v = detections.get(key)
        out[key] = np.ones(n) if v is None else np.asarray(v, dtype=float)
    out["score"] = np.nan_to_num(out["score"], nan=1.0)
    keep = (out["score"] >= min_score) & ~(out["diameter_nm"] < min_diameter_nm)
    out = {k: v[keep] for k, v in out.items()}
    out["intensity"] = np.nan_to_num(out["intensity"], nan=0.0)
    floor = max(1e-6, 1e-3 * float(np.median(out["intensity"]))) if keep.any() else 1.0
    out["intensity"] = np.maximum(out["intensity"], floor)
    out["diameter_nm"] = np.nan_to_num(out["diameter_nm"], nan=1.0)
    return out


def frame_field(row: Mapping[str, Any] | None) -> np.ndarray | None:
    """A stored frame row's registration affine (acquired px -> frame-0 px), shape (2, 3).

    None for a missing row or a failed frame (its affine is a placeholder).
    """
    if row is None or row.get("status") == "failed" or row.get("a11") is None:
        return None
    return np.array(
        [[row["a11"], row["a12"], row["tx"]], [row["a21"], row["a22"], row["ty"]]], dtype=float
    )


def stack_fields(fields: Iterable[np.ndarray | None]) -> np.ndarray | None:
    """Per-frame fields of view for the tracker, shape (n_frames, 2, 3).

    Frames without one get frame 0's field (the identity); None when no frame has one.
    """
    fields = list(fields)
    if all(f is None for f in fields):
        return None
    eye = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    return np.stack([eye if f is None else np.asarray(f, dtype=float) for f in fields])


def _lower_priority() -> None:
    """Worker-process initialiser: lower its CPU priority where the OS allows it."""
    try:
        os.nice(10)
    except (AttributeError, OSError):  # Windows has no nice; a container may refuse it
        pass


class SessionTracker:
    """Tracker of a live session; see the module docstring.

    Parameters
    ----------
    store : SessionStore
        Where commits and new track versions go (written from the calling thread only). It
        holds the history: each frame must be stored before it is given to `update`.
    config : TrackConfig
    pixel_size_nm : float
        Pixel size of frame 0 (geometric mean of y and x), nm.
    frame_shape : (height, width) in px
        Field of frame 0.
    background : bool
        Run periodic global re-optimisations in a worker process (False: none until
        `finish`, e.g. offline `track`).
    on_version : callable, optional
        Called with ``(version, kind)`` whenever a track version is stored.
    on_commit : callable, optional
        Called with the ``(tracks rows, events rows)`` of each online commit once stored
        (not while replaying).
    on_progress : callable, optional
        One-line status messages of the final global re-optimisation (`finish`): when it
        starts, and every few seconds while it runs.
    """

    def __init__(
        self,
        store: SessionStore,
        config: TrackConfig,
        *,
        pixel_size_nm: float,
        frame_shape: tuple[int, int],
        background: bool = True,
        on_version: Callable[[int, str], None] | None = None,
        on_commit: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None] | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.pixel_size_nm = float(pixel_size_nm)
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.archive = StoredTracks(store)
        self.online = OnlineTracker(
            pixel_size_nm=self.pixel_size_nm,
            frame_shape=self.frame_shape,
            config=config,
            keep_history=False,
            archive=self.archive,
            parts=self.archive,
        )
        self.version = store.add_tracks([], kind="online", last_frame=-1)
        self.background = background
        self.on_version = on_version
        self.on_commit = on_commit
        self.on_progress = on_progress
        self._n_frames = 0
        self._pool: ProcessPoolExecutor | None = None
        self._future: Future | None = None
        self._future_frames = 0
        self.global_versions: list[int] = []

    # -- feeding ----------------------------------------------------------------------------
    def update(self, frame: int, detections: Mapping[str, np.ndarray]) -> None:
        """Detections of the next frame (frame-0 px); commits and versions go to the store."""
        if frame != self._n_frames:
            raise ValueError(f"tracker expected frame {self._n_frames}, got {frame}")
        self._feed(frame, detections)
        self._collect()
        every = self.config.reoptimize_every_frames
        if self.background and self._n_frames % every == 0 and self._future is None:
            self._submit()

    def replay(self, frames: Iterable[tuple[int, Mapping[str, np.ndarray]]]) -> int:
        """Rebuild the state from stored frames (a resumed session); returns frames replayed."""
        n = 0
        for frame, dets in frames:
            if frame != self._n_frames:
                raise ValueError(f"replay expected frame {self._n_frames}, got {frame}")
            self._feed(frame, dets, replaying=True)
            n += 1
        return n

    def _feed(
        self,
        frame: int,
        detections: Mapping[str, np.ndarray],
        *,
        replaying: bool = False,
    ) -> None:
        row = self.store.frame_row(frame)
        if row is None:
            raise ValueError(f"frame {frame} is not in the store: store a frame, then track it")
        cols = tracker_input(detections, **self._keep())
        self._n_frames += 1
        commit = feed_online(self.online, cols, frame_field(row))
        self.archive.flush(frame)
        if commit is not None:
            rows, events = self._store_commits([commit])
            if self.on_commit is not None and not replaying:
                self.on_commit(rows, events)

    def _keep(self) -> dict[str, float]:
        """Which detections the tracker takes (`tracker_input`)."""
        return {
            "min_score": self.config.min_detection_score,
            "min_diameter_nm": self.config.min_detection_diameter_px * self.pixel_size_nm,
        }

    def fields(self) -> np.ndarray | None:
        """The fields of all frames fed so far (see `stack_fields`), from the store."""
        return stored_history(self.store, self._n_frames, **self._keep())[1]

    def _store_commits(
        self, commits: list[Any]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        rows, events = [], []
        for c in commits:
            rows += table_rows(c.tracks)
            events += event_rows(c.events)
        if commits:
            self.store.append_tracks(self.version, rows, events, last_frame=commits[-1].frame)
        return rows, events

    # -- global re-optimisation ---------------------------------------------------------------
    def columns(self) -> dict[str, np.ndarray]:
        """All detections fed so far, as tracker input columns (read from the store)."""
        return stored_history(self.store, self._n_frames, **self._keep())[0]

    def warm_start(self) -> Solution:
        """The online solution so far, every frame free again: the global start.

        The global re-optimisation also starts from it (besides the gated Hungarian start,
        see `global_tracks`): the online tracker has already resolved the series window by
        window, and from there the CEM often reaches a lower energy of the whole series. Its
        detection indices are rows of `columns` (both hold every detection fed, in order).
        """
        return unfrozen(self.online.solution)

    def _args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Arguments of `global_track_columns` over frames 0..t (read from the store)."""
        columns, fields = stored_history(self.store, self._n_frames, **self._keep())
        return (columns,), {
            "pixel_size_nm": self.pixel_size_nm,
            "frame_shape": self.frame_shape,
            "n_frames": self._n_frames,
            "config": self.config.model_dump(),
            "fields": fields,
            "init": self.warm_start(),
        }

    def _submit(self) -> None:
        if self._pool is None:
            # spawn: forking a process that runs ZeroMQ and ONNX Runtime threads is unsafe.
            # niced: on a 2-core machine the live chain keeps priority over the re-optimisation.
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_lower_priority,
            )
        # The worker reads the history from the store and stores its version there; it is
        # given the live tracks only.
        self._future = self._pool.submit(
            _store_global_from_store,
            str(Path(self.store.dir)),
            self._n_frames,
            pixel_size_nm=self.pixel_size_nm,
            frame_shape=self.frame_shape,
            config=self.config.model_dump(),
            init=unfrozen(self.online.live_solution()),
            archived_until=self._n_frames - 1,
        )
        self._future_frames = self._n_frames
        log.info("global re-optimisation of %d frames started", self._n_frames)

    def _collect(self, *, wait: bool = False) -> None:
        if self._future is None or not (wait or self._future.done()):
            return
        future, self._future = self._future, None
        try:
            version = future.result()
        except Exception as exc:  # a failed re-optimisation must not stop the session
            log.warning("background global re-optimisation failed: %s", exc)
            return
        self._announce(version, self._future_frames - 1)
        del future
        release_freed_memory()  # pages the frames since the last version freed

    def _add_global(
        self, columns: Mapping[str, np.ndarray], events: list[dict[str, Any]], last: int
    ) -> int:
        version = self.store.add_track_columns(columns, events, kind="global", last_frame=last)
        self._announce(version, last)
        return version

    def _announce(self, version: int, last: int) -> None:
        self.global_versions.append(version)
        log.info("track version %d: global re-optimisation of frames 0-%d", version, last)
        if self.on_version is not None:
            self.on_version(version, "global")

    def wait_background(self) -> None:
        """Wait for a running background re-optimisation and store its version."""
        self._collect(wait=True)

    def finish(self) -> int | None:
        """Commit the remaining frames, run the final global re-optimisation; its version."""
        self._store_commits(self.online.finish())
        self.close()  # superseded by the final re-optimisation below
        if not self._n_frames:
            return None
        t0 = time.monotonic()
        if self.on_progress is not None:
            self.on_progress(f"final global re-optimisation of {self._n_frames} frames")
        args, kwargs = self._args()
        columns, events = global_track_columns(*args, **kwargs, progress=self.on_progress)
        version = self._add_global(columns, events, self._n_frames - 1)
        # how long the user waited for it after the last frame (benchmarks read it back)
        self.store.set_meta("final_reoptimize_s", round(time.monotonic() - t0, 3))
        return version

    def close(self) -> None:
        """Stop a background re-optimisation that is still running (its version is not stored:
        the worker stores it in one transaction, whole or not at all)."""
        self._future = None
        if self._pool is not None:
            # A running CEM cannot be interrupted; end its process so exit does not wait.
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.terminate()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
