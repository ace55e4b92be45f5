"""The dashboard window: live from a pipeline's PUB socket, or browsing a stored session.

Updates run on a QTimer in the GUI thread: each tick drains the subscription (everything
that arrived; statistics take every message, the image only the newest), then redraws once.
So a fast pipeline is never slowed by the display and the display never lags behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from nptrack.dashboard.state import DashboardState
from nptrack.dashboard.views import (
    HealthPanel,
    HistogramPanel,
    ImagePanel,
    SeriesPanel,
    TrackPanel,
    TreacyRicePanel,
)

__all__ = ["DashboardWindow", "close_window", "run_dashboard"]

pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)
_BIG = "font-size: 22pt; font-weight: bold; padding: 4px 12px;"


class DashboardWindow(QtWidgets.QMainWindow):
    """Counts, sizes, trajectories and pipeline health.

    Parameters
    ----------
    subscriber : nptrack.pipeline.publish.Subscriber, optional
        Live mode: drained on every timer tick.
    session_dir : path-like, optional
        Browse mode: a slider picks the frame of the stored session.
    interval_ms : int
        Timer period (live mode).
    """

    def __init__(
        self,
        *,
        subscriber: object | None = None,
        session_dir: str | Path | None = None,
        interval_ms: int = 200,
    ) -> None:
        super().__init__()
        self.setWindowTitle("nptrack")
        self.subscriber = subscriber
        self.session_dir = None if session_dir is None else Path(session_dir)
        self.state = DashboardState()
        self._dirty = False

        central = QtWidgets.QWidget()
        grid = QtWidgets.QGridLayout(central)
        self.count_label = QtWidgets.QLabel("N —")
        self.size_label = QtWidgets.QLabel("D —")
        self.health_label = QtWidgets.QLabel("waiting for frames")
        for label in (self.count_label, self.size_label):
            label.setStyleSheet(_BIG + "color: #ffaa00;")
        self.health_label.setStyleSheet("font-size: 14pt; padding: 4px 12px;")
        top = QtWidgets.QHBoxLayout()
        top.addWidget(self.count_label)
        top.addWidget(self.size_label)
        top.addStretch(1)
        top.addWidget(self.health_label)
        self.levels_button = QtWidgets.QPushButton("auto contrast")
        self.levels_button.clicked.connect(self._auto_levels)
        top.addWidget(self.levels_button)
        grid.addLayout(top, 0, 0, 1, 3)

        self.image = ImagePanel(on_pick=self._pick)
        self.series = SeriesPanel()
        self.histogram = HistogramPanel()
        self.treacy_rice = TreacyRicePanel()
        self.health = HealthPanel()
        self.track = TrackPanel()
        grid.addWidget(self.image, 1, 0, 2, 2)
        grid.addWidget(self.series, 1, 2, 2, 1)
        grid.addWidget(self.histogram, 3, 0)
        grid.addWidget(self.treacy_rice, 3, 1)
        grid.addWidget(self.health, 3, 2)
        grid.addWidget(self.track, 4, 0, 1, 3)
        grid.setRowStretch(1, 3)
        grid.setRowStretch(2, 3)
        grid.setRowStretch(3, 2)
        grid.setRowStretch(4, 1)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(2, 1)

        self.slider: QtWidgets.QSlider | None = None
        if self.session_dir is not None:
            self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
            self.slider.valueChanged.connect(self.show_frame)
            grid.addWidget(self.slider, 5, 0, 1, 3)
        self.setCentralWidget(central)
        self.panels = {
            "image": self.image,
            "series": self.series,
            "histogram": self.histogram,
            "treacy_rice": self.treacy_rice,
            "health": self.health,
            "track": self.track,
        }
        self.timer = QtCore.QTimer(self)
        self.timer.timeout.connect(self.tick)
        if subscriber is not None:
            self.timer.start(interval_ms)
        if self.session_dir is not None:
            self.show_frame(None)

    # -- data ---------------------------------------------------------------------------------
    def tick(self) -> int:
        """Drain the subscription and redraw if anything came; returns messages taken."""
        if self.subscriber is None:
            return 0
        messages = self.subscriber.drain()  # type: ignore[attr-defined]
        for m in messages:
            self.state.ingest(m)
        if messages:
            self.redraw()
        return len(messages)

    def show_frame(self, frame: int | None) -> None:
        """Browse mode: show the stored session at `frame` (None: its last frame)."""
        assert self.session_dir is not None
        state = DashboardState.from_session(self.session_dir, frame=frame)
        levels = self.image.levels
        self.state = state
        self.image.levels = levels
        if self.slider is not None and state.frames and frame is None:
            self.slider.blockSignals(True)
            self.slider.setRange(min(state.frames), max(state.frames))
            self.slider.setValue(state.current_frame or 0)
            self.slider.blockSignals(False)
        self.redraw()

    # -- drawing ------------------------------------------------------------------------------
    def redraw(self) -> None:
        st = self.state
        cur = st.frames.get(st.current_frame) if st.current_frame is not None else None
        if cur is not None:
            self.count_label.setText(f"N {cur.count}")
            if np.isfinite(cur.mean_diameter_nm):
                sd = cur.sd_diameter_nm if np.isfinite(cur.sd_diameter_nm) else 0.0
                self.size_label.setText(f"D {cur.mean_diameter_nm:.2f} ± {sd:.2f} nm")
            parts = [f"frame {cur.frame}", f"reg {cur.status}"]
            if np.isfinite(st.frames_per_s):
                parts.append(f"{st.frames_per_s:.2f} frames/s")
            if cur.latency_s is not None:
                parts.append(f"latency {cur.latency_s:.2f} s")
            if cur.queue_depth is not None:
                parts.append(f"queue {cur.queue_depth}")
            parts.append(f"errors {len(st.errors)}")
            self.health_label.setText(" · ".join(parts))
            if st.errors:
                self.health_label.setToolTip("\n".join(st.errors))
        if self.track.track_id is None and st.tracks:
            # Until a particle is clicked: the longest track seen so far.
            self.track.track_id = max(st.tracks, key=lambda t: len(st.tracks[t]))
        for panel in self.panels.values():
            panel.update_from(st)  # type: ignore[attr-defined]

    def _auto_levels(self) -> None:
        self.image.auto_levels(self.state.preview)
        self.redraw()

    def _pick(self, x: float, y: float) -> None:
        self.track.show_track(self.state, self.state.nearest_track(x, y))

    def panel_rects(self) -> dict[str, QtCore.QRect]:
        """Each panel's rectangle in window coordinates (for tests and screenshots)."""
        return {
            name: QtCore.QRect(w.mapTo(self, QtCore.QPoint(0, 0)), w.size())
            for name, w in self.panels.items()
        }

    def screenshot(self, path: str | Path) -> Path:
        """Render the window now and save it as PNG."""
        QtWidgets.QApplication.processEvents()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.grab().save(str(path)):
            raise OSError(f"{path}: cannot write the screenshot")
        return path


def run_dashboard(
    *,
    connect: str | None = None,
    session_dir: str | Path | None = None,
    screenshot: str | Path | None = None,
    frame: int | None = None,
    wait_s: float = 5.0,
    size: tuple[int, int] = (1600, 1000),
) -> int:
    """Open the dashboard (blocks until the window is closed), or render one screenshot.

    Parameters
    ----------
    connect : str, optional
        A pipeline's PUB address (``tcp://HOST:PORT``).
    session_dir : path-like, optional
        A stored session to browse.
    screenshot : path-like, optional
        Render offscreen once and exit: live mode waits up to `wait_s` for frames first.
    frame : int, optional
        Session mode: the frame to show first.
    """
    if (connect is None) == (session_dir is None):
        raise ValueError("give either a pipeline address (--connect) or a session (--session)")
    if screenshot is not None and not os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from nptrack.pipeline.publish import Subscriber

    app = pg.mkQApp("nptrack")
    sub = Subscriber(connect) if connect else None
    win: DashboardWindow | None = None
    try:
        win = DashboardWindow(subscriber=sub, session_dir=session_dir)
        if session_dir is not None and frame is not None:
            win.show_frame(frame)
        win.resize(*size)
        win.show()
        if screenshot is not None:
            if sub is not None:
                # Collect for wait_s (a late subscriber starts from the frame it joins at).
                deadline = QtCore.QDeadlineTimer(int(wait_s * 1000))
                while not deadline.hasExpired():
                    win.tick()
                    app.processEvents()
                    QtCore.QThread.msleep(50)
            app.processEvents()
            win.redraw()
            win.screenshot(screenshot)
            return 0
        return int(app.exec())
    finally:
        if win is not None:
            close_window(win)
        if sub is not None:
            sub.close()


def close_window(win: DashboardWindow) -> None:
    """Stop, close and delete a window now (Qt objects left to interpreter shutdown can
    crash PySide6 while it finalises)."""
    win.timer.stop()
    win.close()
    win.deleteLater()
    QtWidgets.QApplication.processEvents()
