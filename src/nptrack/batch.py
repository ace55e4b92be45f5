"""Many series on a Dask cluster: ``nptrack batch`` (the scale-out of ``nptrack track``).

Each input (a folder of frames, a stack file, or a session folder: its frames' files) is one
series, written to ``OUT/<series>/`` exactly as ``nptrack track`` (+ ``nptrack report``)
would; ``OUT/summary.csv`` pools the series and ``OUT/index.html`` links their reports. The
tasks are in `nptrack.batch_tasks`; this module plans the series, submits them to a
`distributed.Client` (a `LocalCluster` by default), follows them with progress bars, and
writes the pooled outputs. A failing series gets a ``failed`` row with its error; the others
finish. A series whose folder holds a ``batch.json`` marker with status ``complete`` is skipped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import sqlite3
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nptrack.batch_summary import SUMMARY_COLUMNS, write_index, write_summary
from nptrack.batch_tasks import (
    MARKER_FILE,
    detect_part,
    finish_series,
    frame_count,
    register_series,
)
from nptrack.config import Config
from nptrack.pipeline.session import SessionError

__all__ = ["SUMMARY_COLUMNS", "BatchResult", "Series", "open_client", "plan_series", "run_batch"]

log = logging.getLogger(__name__)


@dataclass
class Series:
    """One series of a batch: its name (output folder), inputs and frame files."""

    name: str
    inputs: list[str]
    files: list[str] = field(default_factory=list)
    pixel_size_nm: float | None = None  # for frames without calibration
    error: str | None = None  # why it cannot be planned


@dataclass
class BatchResult:
    """What a batch did: one summary row per series."""

    out_dir: Path
    rows: list[dict[str, Any]]
    dashboard_link: str | None = None

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Rows of the series that failed."""
        return [r for r in self.rows if r["status"] == "failed"]


# -- planning -----------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _session_files(folder: Path) -> tuple[list[str], float | None]:
    """The files the frames of a stored session came from, and its frame-0 pixel size."""
    with sqlite3.connect(f"file:{folder / 'session.sqlite'}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT source, pixel_size_nm FROM frames ORDER BY frame").fetchall()
    if not rows:
        raise SessionError(f"{folder}: the session holds no frames")
    files: list[str] = []
    for source, _ in rows:
        path = re.sub(r"#\d+$", "", str(source))
        path = str(Path(path).absolute())
        if path not in files:
            files.append(path)
    return files, rows[0][1]


def _names(inputs: Sequence[Path]) -> list[str]:
    """Folder names from the inputs (stem of a file), unique; parents prefixed on a clash."""

    def clean(text: str) -> str:
        return re.sub(r"[^\w.+-]+", "_", text).strip("._") or "series"

    base = [clean(p.name if p.is_dir() or not p.suffix else p.stem) for p in inputs]
    names = [clean(f"{p.parent.name}_{b}") if base.count(b) > 1 else b
             for p, b in zip(inputs, base, strict=True)]  # fmt: skip
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(f"{name}-{seen[name]}" if names.count(name) > 1 else name)
    return unique


def plan_series(
    inputs: Sequence[str | Path], *, pixel_size_nm: float | None = None
) -> list[Series]:
    """One `Series` per input, with its frame files (paths made absolute for the workers).

    A series that cannot be planned (missing input, empty folder) carries its error.
    """
    from nptrack.measure.analyze import expand_inputs

    paths = [Path(p).absolute() for p in inputs]
    out = []
    for path, name in zip(paths, _names(paths), strict=True):
        series = Series(name, [str(path)], pixel_size_nm=pixel_size_nm)
        try:
            if not path.exists():
                raise SessionError(f"{path}: no such file or folder")
            if path.is_dir() and (path / "session.sqlite").is_file():
                series.files, stored_px = _session_files(path)
                if series.pixel_size_nm is None:
                    series.pixel_size_nm = stored_px
            else:
                series.files = [str(p) for p in expand_inputs([path])]
            missing = [f for f in series.files if not Path(f).exists()]
            if missing:
                raise SessionError(f"{missing[0]}: no such file")
        except (ValueError, OSError, sqlite3.Error) as exc:
            series.error = _one_line(exc)
        out.append(series)
    return out


# -- the cluster --------------------------------------------------------------------------------
@contextmanager
def open_client(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    dashboard_address: str = ":8787",
) -> Iterator[Any]:
    """A `distributed.Client`: on `scheduler`, else on a new `LocalCluster` of this machine.

    The LocalCluster has `n_workers` processes (default: the cores) of one thread each; each
    worker's ONNX Runtime then runs one thread (see `nptrack.batch_tasks`). With a scheduler,
    `n_workers` means: wait until that many workers have joined.
    """
    from distributed import Client, LocalCluster

    if scheduler is not None:
        client = Client(scheduler)
        try:
            if n_workers:
                client.wait_for_workers(n_workers, timeout=300)
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=n_workers or os.cpu_count() or 1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=dashboard_address,
    )
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


# -- running ------------------------------------------------------------------------------------
def _marker(series_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((series_dir / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _clear(series_dir: Path) -> None:
    """Remove what an earlier, unfinished or failed run left in a series folder."""
    if not series_dir.exists():
        return
    ours = (series_dir / MARKER_FILE).exists() or (series_dir / "session.sqlite").exists()
    if not ours and any(series_dir.iterdir()):
        raise SessionError(f"{series_dir}: exists and is not a batch series folder")
    shutil.rmtree(series_dir)


def _failed_row(series: Series, error: str) -> dict[str, Any]:
    return {"series": series.name, "status": "failed", "error": error,
            "inputs": ";".join(series.inputs)}  # fmt: skip


def run_batch(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    config: Config | None = None,
    client: Any = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    pixel_size_nm: float | None = None,
    export_formats: Sequence[str] = ("csv",),
    report: bool = True,
    frame_interval_s: float | None = None,
    progress: bool = True,
    on_status: Callable[[str], None] | None = None,
) -> BatchResult:
    """Process many series on a Dask cluster; see the module docstring.

    Parameters
    ----------
    inputs : sequence of path-like
        One series each: a folder of frames, a stack file, or a session folder.
    out_dir : path-like
        ``OUT/<series>/`` per series, ``OUT/summary.csv``, ``OUT/index.html``.
    config : Config, optional
        The same settings as ``nptrack track`` (default: the defaults).
    client : distributed.Client, optional
        Use this client (and its cluster) instead of making one.
    scheduler : str, optional
        ``tcp://HOST:8786`` of a running ``dask scheduler``; default a `LocalCluster`.
    n_workers : int, optional
        LocalCluster worker processes (default: the cores); with `scheduler`, wait for them.
    pixel_size_nm : float, optional
        For frames whose files carry no calibration.
    export_formats : sequence of {'csv', 'parquet', 'hdf5'}
    report : bool
        Write each series' report (when `nptrack.analysis.report` is installed).
    frame_interval_s : float, optional
        Seconds between frames, for the report and the rates of files without times.
    progress : bool
        tqdm bars for frames and series (stderr).
    on_status : callable, optional
        One-line messages (dashboard address, skipped series, failures).

    Returns
    -------
    BatchResult
    """
    config = config or Config()
    say = on_status or log.info
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_series(inputs, pixel_size_nm=pixel_size_nm)
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for series in plans:
        marker = _marker(out / series.name)
        if marker and marker.get("status") == "complete":
            differ = marker.get("config") != config.model_dump(mode="json")
            say(f"{series.name}: complete, skipped" + (" (with other settings: use another "
                "--out to re-process)" if differ else ""))  # fmt: skip
            rows[series.name] = {**marker["row"], "inputs": ";".join(series.inputs)}
        elif series.error:
            rows[series.name] = _failed_row(series, series.error)
        else:
            todo.append(series)
    link = None
    finish_kw = {"config": config, "export_formats": tuple(export_formats), "report": report,
                 "frame_interval_s": frame_interval_s}  # fmt: skip
    if todo and client is None:
        with open_client(scheduler, n_workers=n_workers) as own:
            link = _run(own, todo, out, rows, finish_kw, progress=progress, say=say)
    elif todo:
        link = _run(client, todo, out, rows, finish_kw, progress=progress, say=say)
    ordered = [rows[s.name] for s in plans]
    write_summary(out / "summary.csv", ordered)
    write_index(out / "index.html", ordered, out)
    return BatchResult(out, ordered, link)


def _parts(series: Series, n_workers: int) -> int:
    """Tasks per file: 1 for a folder of many frames, the workers for a single stack."""
    return max(1, math.ceil(n_workers / max(1, len(series.files))))


def _run(
    client: Any,
    todo: list[Series],
    out: Path,
    rows: dict[str, dict[str, Any]],
    finish_kw: dict[str, Any],
    *,
    progress: bool,
    say: Callable[[str], None],
) -> str | None:
    """Submit the series, follow them (progress bars), fill `rows`; the dashboard link."""
    from distributed import as_completed
    from tqdm import tqdm

    link = client.dashboard_link
    say(f"Dask dashboard: {link}" if link else "Dask: no dashboard (install bokeh)")
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    futures: dict[Any, tuple[str, Series]] = {}  # future -> (kind, series)
    finish: dict[str, Any] = {}
    frames_total = 0
    tag = uuid.uuid4().hex[:8]  # task keys unique to this run
    config = finish_kw["config"]
    for n, series in enumerate(todo):
        # Series in order (each finished early: resume and memory), its registration first.
        first = -10 * n
        try:
            _clear(out / series.name)
        except SessionError as exc:
            rows[series.name] = _failed_row(series, str(exc))
            continue
        px = series.pixel_size_nm
        reg = client.submit(register_series, series.files, config=config, pixel_size_nm=px,
                            key=f"register-{series.name}-{tag}", priority=first + 5)  # fmt: skip
        k = _parts(series, n_workers)
        parts = [
            [
                client.submit(
                    detect_part,
                    path,
                    part=j,
                    parts=k,
                    config=config,
                    pixel_size_nm=px,
                    key=f"detect-{series.name}-{i}-{j}-{tag}",
                    priority=first,
                )
                for j in range(k)
            ]
            for i, path in enumerate(series.files)
        ]
        fin = client.submit(
            finish_series, series.name, str(out / series.name), reg, parts, **finish_kw,
            inputs=series.inputs, key=f"finish-{series.name}-{tag}", priority=first + 8,
        )  # fmt: skip
        finish[series.name] = (fin, reg, parts)
        futures[fin] = ("series", series)
        for file_parts in parts:
            for f in file_parts:
                futures[client.submit(len, f, priority=first + 9)] = ("frames", series)
        futures[client.submit(frame_count, reg, priority=first + 9)] = ("count", series)
        frames_total += len(series.files)  # at least one frame per file until registered
    bar = {"file": sys.stderr, "disable": not progress}
    bars = [
        tqdm(total=frames_total, desc="frames", unit="frame", **bar),
        tqdm(total=len(finish), desc="series", unit="series", **bar),
    ]
    try:
        for future in as_completed(list(futures)):
            kind, series = futures.pop(future)
            if kind in ("frames", "count"):
                if future.status == "finished":
                    n = future.result()
                    if kind == "count":  # the series' frames are known now
                        bars[0].total += n - len(series.files)
                        bars[0].refresh()
                    else:
                        bars[0].total = max(bars[0].total, bars[0].n + n)
                        bars[0].update(n)
                continue
            fin, reg, parts = finish[series.name]
            if future.status == "finished":
                rows[series.name] = {**future.result(), "inputs": ";".join(series.inputs)}
            else:
                error = _one_line(future.exception())
                rows[series.name] = _failed_row(series, error)
                say(f"{series.name}: failed: {error}")
                client.cancel([reg, *(f for fp in parts for f in fp)])
            bars[1].update(1)
    finally:
        for bar in bars:
            bar.close()
    return link
