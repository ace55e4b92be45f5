"""Dashboard, offscreen: built from a small stored session and from a live publisher."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pg = pytest.importorskip("pyqtgraph")
from pyqtgraph.Qt import QtCore, QtGui  # noqa: E402

from nptrack.dashboard.app import DashboardWindow, close_window  # noqa: E402
from nptrack.dashboard.state import DashboardState, treacy_rice_fit  # noqa: E402
from nptrack.pipeline.messages import Message  # noqa: E402
from nptrack.pipeline.publish import Publisher, Subscriber  # noqa: E402
from nptrack.pipeline.store import DETECTION_COLUMNS, SessionStore  # noqa: E402

N_FRAMES, SIZE = 15, 256
TRACK_Y = 200.0  # the known trajectory: along y = 200 px, x = 40 + 6 k px at frame k


def _image(k: int) -> np.ndarray:
    img = np.full((SIZE, SIZE), 100.0, np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for j in range(k % 3 + 20):  # a few bright discs (the particles counted)
        cx, cy = 20 + 10 * j, 40 + 3 * j
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < 9] = 300.0
    return img


@pytest.fixture
def session(tmp_path: Path) -> Path:
    acq, sdir = tmp_path / "acq", tmp_path / "session"
    acq.mkdir()
    with SessionStore(sdir) as store:
        for k in range(N_FRAMES):
            path = acq / f"f{k:02d}.tif"
            tifffile.imwrite(path, _image(k))
            n = k % 3 + 20
            row = {"frame": k, "time_s": 2.0 * k, "source": str(path), "pixel_size_nm": 0.25,
                   "a11": 1.0, "a12": 0.0, "tx": 0.0, "a21": 0.0, "a22": 1.0, "ty": 0.0,
                   "reg_cc": 0.95, "status": "ok", "height": SIZE, "width": SIZE}  # fmt: skip
            dets = {c: np.zeros(n) for c in DETECTION_COLUMNS if c != "frame"}
            dets.update(det_id=np.arange(n), x=20 + 10.0 * np.arange(n), y=40 + 3.0 * np.arange(n),
                        diameter_nm=np.full(n, 1.5 + 0.05 * k), intensity=np.full(n, 900.0),
                        score=np.full(n, 0.9))  # fmt: skip
            store.add_frame(row, dets)
        rows = [{"frame": k, "track_id": 7, "x": 40.0 + 6 * k, "y": TRACK_Y, "diameter_nm": 2.0,
                 "intensity": 1000.0 + k, "det_id": None, "state": "interpolated"}
                for k in range(N_FRAMES)]  # fmt: skip
        store.add_tracks(rows, kind="global", last_frame=N_FRAMES - 1)
    return sdir


@pytest.fixture
def window_factory():
    app = pg.mkQApp()
    made: list[DashboardWindow] = []

    def make(**kw) -> DashboardWindow:
        win = DashboardWindow(**kw)
        win.resize(1400, 900)
        win.show()
        app.processEvents()
        made.append(win)
        return win

    yield make
    for win in made:
        close_window(win)


def _grab(win: DashboardWindow) -> QtGui.QImage:
    pg.mkQApp().processEvents()
    return win.grab().toImage()


def _rgb(img: QtGui.QImage, x: int, y: int) -> tuple[int, int, int]:
    c = img.pixelColor(x, y)
    return c.red(), c.green(), c.blue()


def test_count_label_equals_the_store(session: Path, window_factory) -> None:
    win = window_factory(session_dir=session)
    with SessionStore(session) as store:
        last = len(store.detections(N_FRAMES - 1))
        first = len(store.detections(0))
    assert win.count_label.text() == f"N {last}"
    win.show_frame(0)
    assert win.count_label.text() == f"N {first}" and first != last


def test_every_panel_draws_something(session: Path, window_factory, tmp_path: Path) -> None:
    win = window_factory(session_dir=session)
    path = win.screenshot(tmp_path / "shot.png")
    img = QtGui.QImage(str(path))
    assert img.width() >= 1400
    for name, rect in win.panel_rects().items():
        inner = rect.adjusted(60, 40, -10, -30)  # inside the axes
        pixels = [_rgb(img, x, y) for x in range(inner.left(), inner.right(), 4)
                  for y in range(inner.top(), inner.bottom(), 4)]  # fmt: skip
        background = max(set(pixels), key=pixels.count)
        drawn = sum(p != background for p in pixels)
        assert drawn > 20, f"panel {name} looks empty"


def test_trajectory_appears_where_it_is(session: Path, window_factory) -> None:
    win = window_factory(session_dir=session)
    img = _grab(win)
    vb = win.image.getViewBox()

    def to_window(x: float, y: float) -> tuple[int, int]:
        scene = vb.mapViewToScene(QtCore.QPointF(x, y))
        local = win.image.mapFromScene(scene)
        p = win.image.mapTo(win, local)
        return p.x(), p.y()

    def greenish(x: float, y: float) -> bool:
        wx, wy = to_window(x, y)
        return any(g > 150 and g > r + 60 for dx in (-1, 0, 1) for dy in (-1, 0, 1)
                   for r, g, _ in [_rgb(img, wx + dx, wy + dy)])  # fmt: skip

    last_x = 40.0 + 6 * (N_FRAMES - 1)
    assert greenish(last_x - 9.0, TRACK_Y)  # on the recent tail
    assert not greenish(last_x - 9.0, TRACK_Y + 25.0)  # beside it: no tail


def test_treacy_rice_fit_recovers_a_cube_law() -> None:
    d = np.linspace(1.0, 5.0, 30)
    slope, intercept, r2 = treacy_rice_fit(d, (2.0 * d) ** 3)
    assert slope == pytest.approx(2.0) and intercept == pytest.approx(0.0, abs=1e-9)
    assert r2 == pytest.approx(1.0)


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def test_fast_updates_neither_grow_memory_nor_block(window_factory) -> None:
    pub = Publisher("tcp://127.0.0.1:*")
    sub = Subscriber(pub.address)
    win = window_factory(subscriber=sub)
    win.timer.stop()  # ticks driven below, at the dashboard's own pace
    app = pg.mkQApp()
    try:
        time.sleep(0.3)
        thumb = np.random.default_rng(0).random((512, 512)).astype(np.float32)
        rng = np.random.default_rng(1)
        sent, t0, before = 0, time.monotonic(), None
        for k in range(600):  # 200 per second for 3 s
            n = 300
            fields = {"frame": k, "time_s": k / 200, "source": f"f{k}", "pixel_size_nm": 0.2,
                      "reg_cc": 0.9, "status": "ok", "width": 1024, "latency_s": 0.3}  # fmt: skip
            arrays = {"x": rng.random(n) * 1024, "y": rng.random(n) * 1024,
                      "diameter_nm": rng.random(n) * 3 + 1, "intensity": rng.random(n) * 1e3,
                      "preview": thumb}  # fmt: skip
            sent += pub.send(Message("status", fields, arrays))
            if k % 40 == 0:  # the GUI timer's pace: every 0.2 s
                win.tick()
                app.processEvents()
                if k == 200:
                    before = _rss_mib()  # after warm-up
            time.sleep(max(0.0, t0 + (k + 1) / 200 - time.monotonic()))
        win.tick()
        grown = _rss_mib() - (before or 0.0)
    finally:
        pub.close()
    assert sent == 600  # the publisher never refused or blocked
    assert win.state.updates > 0 and win.state.current_frame is not None
    assert grown < 60, grown  # per-frame scalars only; one thumbnail


def test_dashboard_command_writes_a_screenshot(session: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from nptrack.cli import main

    out = tmp_path / "dash.png"
    args = ["dashboard", "--session", str(session), "--screenshot", str(out), "--frame", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    img = QtGui.QImage(str(out))
    assert img.width() == 1600 and img.height() == 1000
    bad = CliRunner().invoke(main, ["dashboard", "--session", str(tmp_path)])
    assert bad.exit_code == 1 and "not a session folder" in bad.output
    both = CliRunner().invoke(main, ["dashboard"])
    assert both.exit_code == 2


def test_state_takes_commits_and_fusions_from_messages() -> None:
    from nptrack.pipeline.messages import decode, encode
    from nptrack.pipeline.session import commit_message

    rows = [{"frame": 3, "track_id": t, "x": 10.0 * t, "y": 5.0, "diameter_nm": 2.0 + t,
             "intensity": 100.0, "det_id": t, "state": "observed"} for t in range(3)]  # fmt: skip
    events = [{"frame": 3, "type": "fusion", "track_ids": "0+1>2",
               "detail": {"x": 12.0, "y": 5.0, "mass_ratio": np.float64(1.02)}}]  # fmt: skip
    state = DashboardState()
    state.ingest(decode(encode(commit_message(rows, events))))  # as it crosses the socket
    assert sorted(state.tracks) == [0, 1, 2]
    assert state.tracks[2] == [(3, 20.0, 5.0, 4.0, 100.0)]
    assert state.fusions == [{"frame": 3, "track_ids": "0+1>2", "x": 12.0, "y": 5.0,
                              "mass_ratio": 1.02}]  # fmt: skip
    assert state.nearest_track(19.0, 6.0) == 2 and state.nearest_track(200.0, 6.0) is None


def test_clicking_a_particle_shows_its_track(session: Path, window_factory) -> None:
    win = window_factory(session_dir=session)
    win._pick(40.0 + 6 * (N_FRAMES - 1) + 2.0, TRACK_Y - 1.0)  # near the track's last point
    assert win.track.track_id == 7
    xs, ys = win.track.diameter.getData()
    np.testing.assert_array_equal(xs, np.arange(N_FRAMES))
    np.testing.assert_allclose(ys, 2.0)
    win._pick(5.0, 5.0)  # nothing there
    assert win.track.track_id is None
