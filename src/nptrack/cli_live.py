"""Command-line interface of the live pipeline: watch, demo, track, reoptimize, stage.

Registered on `nptrack.cli.main`; thin like the rest of the CLI: parse, load the config,
call one function of `nptrack.pipeline`, print progress and a summary.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from nptrack.cli import UserError, friendly, main

__all__: list[str] = []

_FORMATS = click.Choice(["csv", "parquet", "hdf5"])


def _config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override one config key, e.g. --set track.window_frames=12 (repeatable).",
    )(func)
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="TOML configuration (configs/default.toml lists every key).",
    )(func)


def _say(msg: str) -> None:
    click.echo(f"nptrack: {msg}", err=True)


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"nptrack: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    root = logging.getLogger("nptrack")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    root.propagate = False


@contextmanager
def _graceful_stop() -> Iterator[threading.Event]:
    """An event set by SIGTERM (a service manager stopping the session): finish cleanly."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def _progress(row: dict[str, Any], summary: Any) -> None:
    cc = row["reg_cc"]
    cc_text = "n/a" if cc is None or cc != cc else f"{cc:.3f}"
    click.echo(
        f"frame {row['frame']:5d}  {Path(str(row['source'])).name}  reg {row['status']} "
        f"(cc {cc_text})  {row['n_detections']} particles  latency {row['latency_s']:.2f} s"
    )


def _gui_available(no_gui: bool) -> bool:
    """Whether to open the dashboard (needs the [gui] extra and a display)."""
    import os

    if no_gui:
        return False
    try:
        import pyqtgraph  # noqa: F401
        from pyqtgraph.Qt import QtWidgets  # noqa: F401
    except Exception:  # ImportError, or a Qt binding that fails to load
        _say("no dashboard: install the [gui] extra (pip install 'nptrack[gui]'); "
             "running as with --no-gui")  # fmt: skip
        return False
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        if os.environ.get("QT_QPA_PLATFORM") != "offscreen" and sys.platform.startswith("linux"):
            _say("no display: running as with --no-gui")
            return False
    return True


def _run_with_dashboard(run: Callable[[threading.Event], Any], address: str | None) -> Any:
    """Run `run(stop)` in a worker thread while the dashboard shows `address`; its result.

    Closing the window stops the session cleanly (frames in flight stored, exports written).
    """
    import pyqtgraph as pg
    from pyqtgraph.Qt import QtCore

    from nptrack.dashboard.app import DashboardWindow, close_window
    from nptrack.pipeline.publish import Subscriber

    stop = threading.Event()
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            box["result"] = run(stop)
        except BaseException as exc:  # re-raised in the main thread
            box["error"] = exc

    thread = threading.Thread(target=worker, name="nptrack-session", daemon=True)
    app = pg.mkQApp("nptrack")
    sub = Subscriber(address) if address else None
    win = DashboardWindow(subscriber=sub)
    win.resize(1600, 1000)
    win.show()
    watchdog = QtCore.QTimer()
    watchdog.timeout.connect(
        lambda: None if thread.is_alive() else win.health_label.setText("session finished")
    )
    watchdog.start(500)
    thread.start()
    try:
        app.exec()
    finally:
        stop.set()  # the window was closed: finish the session
        watchdog.stop()
        close_window(win)
        if sub is not None:
            sub.close()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _finish_report(result: Any) -> None:
    summary_path = result.session_dir / "summary.json"
    counts = json.loads(summary_path.read_text())["counts"] if summary_path.is_file() else {}
    lat = result.summary.latencies_s
    p50 = sorted(lat)[len(lat) // 2] if lat else float("nan")
    click.echo(
        f"session {result.session_dir}: {counts.get('frames', 0)} frame(s) "
        f"({result.resumed_frames} from before), {counts.get('detections', 0)} detections, "
        f"{counts.get('tracks', 0)} tracks, track version {result.track_version}; "
        f"median latency {p50:.2f} s"
    )
    for problem in result.problems:
        _say(f"problem: {problem}")


def _load(config_path: Path | None, overrides: tuple[str, ...]) -> Any:
    from nptrack.config import load_config

    return load_config(config_path, list(overrides))


def _address_pair(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    parts = [v.strip() for v in value.split(",")]
    if len(parts) != 2 or not all(p.startswith("tcp://") for p in parts):
        raise click.BadParameter("expected two tcp:// addresses separated by a comma")
    return parts[0], parts[1]


def _remote_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--detect-bind",
        callback=_address_pair,
        default=None,
        metavar="FRAMES,RESULTS",
        help="Bind these tcp:// addresses so `nptrack stage detect` processes on other hosts "
        "share detection, e.g. tcp://0.0.0.0:5555,tcp://0.0.0.0:5556.",
    )(func)
    return click.option(
        "--workers",
        type=click.IntRange(min=0),
        default=None,
        help="Local detect workers (default pipeline.detect_workers; 0: remote stages only).",
    )(func)


def _series_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--format", "formats", type=_FORMATS, multiple=True, help="Extra export format."
    )(func)
    return click.option(
        "--pixel-size-nm",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Pixel size (nm) for files that carry no calibration.",
    )(func)


# --- watch ----------------------------------------------------------------------------------
@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--session",
    "session_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Session folder (created; an existing one is resumed).",
)
@_config_options
@click.option("--no-gui", is_flag=True, help="No dashboard: one progress line per frame.")
@click.option("--poll", is_flag=True, help="Poll the folder (network shares: no inotify).")
@click.option(
    "--until-idle",
    "until_idle_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Finish after this many seconds without a new frame (default: run until Ctrl-C).",
)
@_series_options
@click.option("--publish", default=None, help="PUB address for dashboards (default: config).")
@click.option("--no-publish", is_flag=True, help="Do not publish for dashboards.")
@_remote_options
@click.option(
    "--mode",
    type=click.Choice(["particles", "columns"]),
    default="particles",
    show_default=True,
    help="particles: U-Net, measurement, NP-Tracker; columns: atomic columns and their "
    "occupancy (atomic-resolution frames, column model).",
)
@click.option(
    "--occupancy",
    "occupancy_method",
    type=click.Choice(["combined", "count", "net", "shape"]),
    default="combined",
    show_default=True,
    help="--mode columns: how occupancy is decided (as `nptrack columns --occupancy`).",
)
@click.option(
    "--columns-model",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Column model for --mode columns (default models/nptrack-columns-v1.onnx).",
)
@friendly
def watch(
    folder: Path,
    session_dir: Path,
    config_path: Path | None,
    overrides: tuple[str, ...],
    no_gui: bool,
    poll: bool,
    until_idle_s: float | None,
    pixel_size_nm: float | None,
    formats: tuple[str, ...],
    publish: str | None,
    no_publish: bool,
    workers: int | None,
    detect_bind: tuple[str, str] | None,
    mode: str,
    occupancy_method: str,
    columns_model: Path | None,
) -> None:
    """Live mode: analyse every frame the microscope writes into FOLDER.

    Frames are taken once complete (structure checked, size stable for watch.stable_s s),
    registered to frame 0, segmented, measured and tracked; each frame is committed to
    SESSION/session.sqlite as it completes. Ctrl-C (or SIGTERM, or --until-idle S) stops
    taking frames, stores those in flight, runs the global re-optimisation and writes the
    exports (frames.csv, detections.csv, tracks.csv, events.csv, summary.json). Running it
    again on the same SESSION resumes: stored frames are not processed again.

    With --mode columns, atomic-resolution frames go through the column model instead:
    SESSION/columns.csv (column ids stable over the series, occupancy, confidence),
    occupancy_time.csv / .png, frames.csv and summary.json; no dashboard.
    """
    from nptrack.pipeline.session import folder_source, run_session
    from nptrack.pipeline.store import SessionStore

    _setup_logging()
    config = _load(config_path, overrides)
    if poll:
        config.watch.poll = True
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder to watch")
    if mode == "columns":
        _watch_columns(folder, session_dir, config, until_idle_s, pixel_size_nm, workers,
                       columns_model, occupancy_method)  # fmt: skip
        return
    if columns_model is not None:
        raise UserError("--columns-model is for --mode columns")
    gui = _gui_available(no_gui)
    skip: set[str] = set()
    if (session_dir / "session.sqlite").is_file():
        with SessionStore(session_dir) as store:
            skip = store.sources()
    address = None if no_publish else (publish or config.pipeline.publish_address)
    problems: list[str] = []
    source = folder_source(folder, config=config, skip=skip, idle_s=until_idle_s,
                           problems=problems)  # fmt: skip
    _say(f"watching {folder} -> {session_dir}" + (" (polling)" if config.watch.poll else ""))

    def run(stop: threading.Event) -> Any:
        return run_session(
            source, session_dir, config=config, command="watch", pixel_size_nm=pixel_size_nm,
            publish_address=address, export_formats=formats, on_frame=_progress,
            on_status=_say, stop=stop, workers=workers, detect_addresses=detect_bind,
        )  # fmt: skip

    if gui and address:
        result = _run_with_dashboard(run, address)
    else:
        with _graceful_stop() as stop:
            result = run(stop)
    result.problems.extend(problems)
    _finish_report(result)


def _watch_columns(
    folder: Path,
    session_dir: Path,
    config: Any,
    until_idle_s: float | None,
    pixel_size_nm: float | None,
    workers: int | None,
    model: Path | None,
    method: str,
) -> None:
    """`watch --mode columns`: the column model on every frame, ids tracked over the series."""
    from nptrack.pipeline.columns import DEFAULT_COLUMN_MODEL, run_column_session
    from nptrack.pipeline.session import folder_source
    from nptrack.pipeline.store import SessionStore

    model = model or DEFAULT_COLUMN_MODEL
    if not model.is_file():
        raise UserError(f"{model}: no such column model (--columns-model)")
    skip: set[str] = set()
    if (session_dir / "session.sqlite").is_file():
        with SessionStore(session_dir) as store:
            skip = store.sources()
    problems: list[str] = []
    source = folder_source(folder, config=config, skip=skip, idle_s=until_idle_s,
                           problems=problems)  # fmt: skip
    _say(f"watching {folder} -> {session_dir} (atomic columns, {model.name})")

    def progress(row: dict[str, Any], summary: Any) -> None:
        click.echo(
            f"frame {row['frame']:5d}  {Path(str(row['source'])).name}  "
            f"{row['n_detections']} columns  latency {row['latency_s']:.2f} s"
        )

    with _graceful_stop() as stop:
        try:
            result = run_column_session(
                source, session_dir, model_path=model, method=method,  # type: ignore[arg-type]
                pixel_size_nm=pixel_size_nm,
                workers=config.pipeline.detect_workers if workers is None else max(workers, 1),
                intra_op_threads=config.segment.intra_op_threads,
                hwm=config.pipeline.high_water_mark,
                on_frame=progress, on_status=_say, stop=stop,
                settings={"pixel_size_nm": pixel_size_nm, "folder": str(folder)},
            )  # fmt: skip
        except ValueError as exc:  # a particle session, a bad model file
            raise UserError(str(exc)) from None
    lat = result.summary.latencies_s
    p50 = sorted(lat)[len(lat) // 2] if lat else float("nan")
    click.echo(
        f"session {result.session_dir}: {result.resumed_frames + result.summary.frames_stored} "
        f"frame(s) ({result.resumed_frames} from before), {result.columns_stored} columns, "
        f"{result.columns_tracked} column ids; median latency {p50:.2f} s"
    )
    for problem in [*result.problems, *problems]:
        _say(f"problem: {problem}")


# --- demo -----------------------------------------------------------------------------------
@main.command()
@click.option("--frames", type=click.IntRange(min=2), default=30, show_default=True)
@click.option("--no-gui", is_flag=True, help="No dashboard: progress lines and a summary.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where truth, frames/ and session/ go (default: a new temporary folder).",
)
@click.option("--preset", default="table1", show_default=True, help="Simulator preset.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--cadence-s",
    type=click.FloatRange(min=0),
    default=0.5,
    show_default=True,
    help="Wall-clock seconds between frames of the simulated microscope.",
)
@_config_options
@friendly
def demo(
    frames: int,
    no_gui: bool,
    out_dir: Path | None,
    preset: str,
    seed: int,
    cadence_s: float,
    config_path: Path | None,
    overrides: tuple[str, ...],
) -> None:
    """Play a simulated microscope into a folder and run the live session on it.

    The simulator writes ground truth, then frames at CADENCE_S into OUT/frames/ (in
    chunks, as acquisition software does); `watch` runs on that folder with the shipped
    model into OUT/session/. At the end the tracks are scored against the truth.
    """
    import tempfile

    from nptrack.pipeline.demo import run_demo

    _setup_logging()
    config = _load(config_path, overrides)
    gui = _gui_available(no_gui)
    out = out_dir or Path(tempfile.mkdtemp(prefix="nptrack-demo-"))
    address = config.pipeline.publish_address

    def run(stop: threading.Event) -> Any:
        return run_demo(
            out, config=config, frames=frames, preset=preset, seed=seed, cadence_s=cadence_s,
            publish_address=address, on_frame=_progress, on_status=_say, stop=stop,
        )  # fmt: skip

    if gui:
        result = _run_with_dashboard(run, address)
    else:
        with _graceful_stop() as stop:
            result = run(stop)
    _finish_report(result.session)
    s = result.scores
    rows = [
        ("MOTA %", f"{s['mota']:.1f}"),
        ("MOTP %", f"{s['motp']:.1f}"),
        ("IDF1 %", f"{s['idf1']:.1f}"),
        ("ID switches", f"{s['idsw']:.0f}"),
        ("false positives", f"{s['fp']:.0f}"),
        ("missed", f"{s['fn']:.0f}"),
        ("true positions", f"{s['num_objects']:.0f}"),
    ]
    if "fusion_precision" in s:
        rows.append(("fusion precision / recall",
                     f"{s['fusion_precision']:.2f} / {s['fusion_recall']:.2f}"))  # fmt: skip
    click.echo(f"files found half-written when read: {result.read_errors}")
    click.echo("tracks vs simulator truth:")
    for name, value in rows:
        click.echo(f"  {name:<26} {value:>10}")
    click.echo(f"outputs in {out} (session/, ground_truth.csv, frames/)")


# --- track ----------------------------------------------------------------------------------
@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (a new session): session.sqlite and the exports.",
)
@_config_options
@_series_options
@_remote_options
@friendly
def track(
    inputs: tuple[Path, ...],
    out_dir: Path,
    config_path: Path | None,
    overrides: tuple[str, ...],
    pixel_size_nm: float | None,
    formats: tuple[str, ...],
    workers: int | None,
    detect_bind: tuple[str, str] | None,
) -> None:
    """Offline: register, detect and track a series of files / a stack / a folder.

    The same stages as `watch`, with the files as the source and one global tracking at the
    end. Writes OUT/session.sqlite, frames.csv, detections.csv, tracks.csv, events.csv and
    summary.json.
    """
    from tqdm import tqdm

    from nptrack.pipeline.session import files_source, run_session

    _setup_logging()
    config = _load(config_path, overrides)
    if (out_dir / "session.sqlite").exists():
        raise UserError(f"{out_dir}: already holds a session (use another --out, or "
                        "`nptrack reoptimize` on it)")  # fmt: skip
    source = files_source(inputs)
    with tqdm(desc="track", unit="frame", file=sys.stderr) as bar:
        result = run_session(
            source, out_dir, config=config, command="track", pixel_size_nm=pixel_size_nm,
            background_reoptimize=False, export_formats=formats,
            on_frame=lambda row, s: bar.update(1), on_status=_say, workers=workers,
            detect_addresses=detect_bind,
        )  # fmt: skip
    _finish_report(result)


# --- reoptimize -----------------------------------------------------------------------------
@main.command()
@click.argument("session_dir", type=click.Path(file_okay=False, path_type=Path))
@_config_options
@click.option("--format", "formats", type=_FORMATS, multiple=True, help="Extra export format.")
@friendly
def reoptimize(
    session_dir: Path,
    config_path: Path | None,
    overrides: tuple[str, ...],
    formats: tuple[str, ...],
) -> None:
    """Global re-optimisation of a finished (or crashed) session: a new track version.

    Uses the session's stored settings unless --config / --set are given; the exports are
    rewritten from the new version.
    """
    from nptrack.pipeline.session import reoptimize_session

    _setup_logging()
    config = _load(config_path, overrides) if (config_path or overrides) else None
    _say(f"re-optimising {session_dir} (global CEM over every stored frame)")
    version, paths = reoptimize_session(
        session_dir, config=config, export_formats=formats, on_status=_say
    )
    click.echo(f"track version {version} written; exports: {', '.join(p.name for p in paths)}")


# --- stage ----------------------------------------------------------------------------------
@main.command()
@click.argument("name", type=click.Choice(["detect"]))
@click.option(
    "--connect",
    "addresses",
    required=True,
    callback=_address_pair,
    metavar="FRAMES,RESULTS",
    help="The session's --detect-bind addresses, e.g. tcp://acq-pc:5555,tcp://acq-pc:5556.",
)
@_config_options
@friendly
def stage(
    name: str,
    addresses: tuple[str, str],
    config_path: Path | None,
    overrides: tuple[str, ...],
) -> None:
    """Run one pipeline stage as its own process, e.g. detection on a GPU server.

    `detect` takes registered frames from a session started with --detect-bind, runs the
    U-Net (CUDA when this host has it) and the measurement, and sends the detections back.
    It serves until Ctrl-C or SIGTERM, across sessions.
    """
    from nptrack.pipeline.session import serve_detect_stage

    _setup_logging()
    config = _load(config_path, overrides)
    with _graceful_stop() as stop:
        try:
            n = serve_detect_stage(*addresses, config=config, stop=stop, on_ready=_say)
        except KeyboardInterrupt:
            stop.set()
            n = None
    if n is not None:
        _say(f"detect stage stopped after {n} frame(s)")


# --- dashboard ------------------------------------------------------------------------------
@main.command()
@click.option("--connect", default=None, help="A running pipeline's PUB address (tcp://HOST:PORT).")
@click.option(
    "--session",
    "session_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Browse a stored session frame by frame.",
)
@click.option(
    "--screenshot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Render once (offscreen without a display) into this PNG and exit.",
)
@click.option("--frame", type=click.IntRange(min=0), default=None, help="Session frame to show.")
@click.option(
    "--wait-s",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="With --connect --screenshot: how long to wait for frames.",
)
@friendly
def dashboard(
    connect: str | None,
    session_dir: Path | None,
    screenshot: Path | None,
    frame: int | None,
    wait_s: float,
) -> None:
    """Live counts, sizes, trajectories and pipeline health (pyqtgraph).

    --connect attaches to a running `watch` / `demo` (their --publish address, by default
    tcp://127.0.0.1:5557), also from another PC; --session browses a stored session.
    """
    if (connect is None) == (session_dir is None):
        raise click.UsageError("give one of --connect ADDR or --session DIR")
    if session_dir is not None and not (session_dir / "session.sqlite").is_file():
        raise UserError(f"{session_dir}: no session.sqlite (not a session folder)")
    try:
        from nptrack.dashboard.app import run_dashboard
    except ImportError as exc:
        raise UserError(f"the dashboard needs the [gui] extra ({exc})") from None
    code = run_dashboard(connect=connect, session_dir=session_dir, screenshot=screenshot,
                         frame=frame, wait_s=wait_s)  # fmt: skip
    if screenshot is not None:
        click.echo(f"screenshot written to {screenshot}")
    sys.exit(code)
