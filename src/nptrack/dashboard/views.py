"""The dashboard's panels (pyqtgraph): each draws one part of a `DashboardState`.

Readable from two metres: large labels, thick lines, few colours. Images are row-major uint8
with fixed levels (chosen once, or on request), so the contrast does not flicker.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from nptrack.dashboard.state import DashboardState, treacy_rice_fit

__all__ = [
    "CURRENT_PEN",
    "FIRST_PEN",
    "HealthPanel",
    "HistogramPanel",
    "ImagePanel",
    "SeriesPanel",
    "TrackPanel",
    "TreacyRicePanel",
]

CURRENT_PEN = pg.mkPen((255, 170, 0), width=3)  # amber: now
FIRST_PEN = pg.mkPen((80, 170, 255), width=3)  # blue: frame 0 / reference
_TAIL_COLOURS = ((0, 255, 120, 230), (0, 255, 120, 120), (0, 255, 120, 50))  # fading with age
_STATUS_BRUSH = {"ok": (0, 200, 90), "degraded": (255, 170, 0), "failed": (255, 60, 60)}


def _plot(title: str, left: str, bottom: str) -> pg.PlotWidget:
    w = pg.PlotWidget(title=f"<span style='font-size:14pt'>{title}</span>")
    w.setLabel("left", left)
    w.setLabel("bottom", bottom)
    w.showGrid(x=True, y=True, alpha=0.25)
    return w


class ImagePanel(pg.PlotWidget):
    """Latest registered frame (frame-0 px) with outlines, trajectory tails and fusions.

    Outlines are circles of each particle's equivalent diameter; tails fade over the last
    15 frames; fusions are stars at the child's position. Click a particle: `on_pick(x, y)`.
    """

    def __init__(self, on_pick: Callable[[float, float], None] | None = None) -> None:
        super().__init__(title="<span style='font-size:14pt'>registered frame</span>")
        self.setAspectLocked(True)
        self.invertY(True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.addItem(self.image)
        self.tails = [pg.PlotDataItem(pen=pg.mkPen(c, width=2), connect="finite")
                      for c in _TAIL_COLOURS]  # fmt: skip
        for t in self.tails:
            self.addItem(t)
        self.outlines = pg.ScatterPlotItem(
            pxMode=False, symbol="o", pen=pg.mkPen((255, 200, 0), width=2), brush=None
        )
        self.outlines.sigClicked.connect(self._clicked)
        self.addItem(self.outlines)
        self.fusions = pg.ScatterPlotItem(
            symbol="star", size=22, pen=pg.mkPen("w", width=1), brush=(255, 40, 200, 220)
        )
        self.addItem(self.fusions)
        self.levels: tuple[float, float] | None = None
        self._on_pick = on_pick
        self._shape: tuple[int, int] | None = None

    def auto_levels(self, image: np.ndarray | None) -> None:
        """Choose display levels (1st / 99.5th percentile) from `image`; kept until asked."""
        if image is None:
            return
        finite = image[np.isfinite(image)]
        if finite.size:
            lo, hi = np.percentile(finite, [1.0, 99.5])
            self.levels = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)

    def update_from(self, state: DashboardState) -> None:
        px = state.pixel_size_nm or 1.0
        if state.preview is not None:
            if self.levels is None:
                self.auto_levels(state.preview)
            lo, hi = self.levels or (0.0, 1.0)
            img = np.nan_to_num((state.preview - lo) / (hi - lo), nan=0.0)
            u8 = (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
            self.image.setImage(u8, levels=(0, 255), autoLevels=False)
            s = state.preview_scale
            h, w = u8.shape
            self.image.setRect(QtCore.QRectF(-0.5, -0.5, w / s, h / s))
            if self._shape != (h, w):
                self._shape = (h, w)
                self.getViewBox().autoRange(padding=0.01)
        cur = state.current
        if "x" in cur and len(cur["x"]):
            size = np.nan_to_num(cur.get("diameter_nm", np.full(len(cur["x"]), px)) / px, nan=4.0)
            self.outlines.setData(x=cur["x"], y=cur["y"], size=np.maximum(size, 3.0))
        else:
            self.outlines.setData(x=[], y=[])
        buckets: list[list[np.ndarray]] = [[], [], []]
        for tail in state.tails():
            for b, (lo_age, hi_age) in enumerate(((0, 5), (5, 10), (10, 16))):
                seg = tail[(tail[:, 2] >= lo_age) & (tail[:, 2] <= hi_age)]
                if len(seg) >= 2:
                    buckets[b].append(np.vstack([seg[:, :2], [np.nan, np.nan]]))
        for item, parts in zip(self.tails, buckets, strict=True):
            if parts:
                xy = np.vstack(parts)
                item.setData(xy[:, 0], xy[:, 1], skipFiniteCheck=True)
            else:
                item.setData([], [])
        fx = [f["x"] for f in state.fusions if "x" in f]
        fy = [f["y"] for f in state.fusions if "y" in f]
        self.fusions.setData(x=fx, y=fy)

    def _clicked(self, _item: object, points: list, *_: object) -> None:
        if points and self._on_pick is not None:
            p = points[0].pos()
            self._on_pick(float(p.x()), float(p.y()))


class SeriesPanel(QtWidgets.QWidget):
    """Count, mean ± sd equivalent diameter and total volume against time."""

    def __init__(self) -> None:
        super().__init__()
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.count = _plot("particle count", "N", "time")
        self.diameter = _plot("mean diameter ± sd", "D (nm)", "time")
        self.volume = _plot("total volume", "V (nm³)", "time")
        for w in (self.count, self.diameter, self.volume):
            layout.addWidget(w)
        self.count_curve = self.count.plot(pen=CURRENT_PEN, symbol="o", symbolSize=5)
        self.d_mean = self.diameter.plot(pen=CURRENT_PEN)
        self.d_hi = self.diameter.plot(pen=pg.mkPen((255, 170, 0, 90)))
        self.d_lo = self.diameter.plot(pen=pg.mkPen((255, 170, 0, 90)))
        self.diameter.addItem(pg.FillBetweenItem(self.d_lo, self.d_hi, brush=(255, 170, 0, 50)))
        self.volume_curve = self.volume.plot(pen=CURRENT_PEN)

    def update_from(self, state: DashboardState) -> None:
        s = state.series()
        unit = "time (s)" if state.time_axis_is_seconds else "frame"
        for w in (self.count, self.diameter, self.volume):
            w.setLabel("bottom", unit)
        self.count_curve.setData(s["t"], s["count"])
        sd = np.nan_to_num(s["sd_d"])
        self.d_mean.setData(s["t"], s["mean_d"])
        self.d_hi.setData(s["t"], s["mean_d"] + sd)
        self.d_lo.setData(s["t"], s["mean_d"] - sd)
        self.volume_curve.setData(s["t"], s["volume"])


class HistogramPanel(pg.PlotWidget):
    """Equivalent-diameter histogram of the current frame over the first frame's."""

    def __init__(self) -> None:
        title = "size: now (amber) vs first frame (blue)"
        super().__init__(title=f"<span style='font-size:14pt'>{title}</span>")
        self.setLabel("bottom", "equivalent diameter (nm)")
        self.setLabel("left", "particles")
        self.first = self.plot(stepMode="center", pen=FIRST_PEN)
        self.now = self.plot(stepMode="center", pen=CURRENT_PEN, fillLevel=0,
                             brush=(255, 170, 0, 80))  # fmt: skip

    def update_from(self, state: DashboardState) -> None:
        now = np.asarray(state.current.get("diameter_nm", np.zeros(0)), float)
        first = np.asarray(state.first_diameters_nm if state.first_diameters_nm is not None
                           else np.zeros(0), float)  # fmt: skip
        both = np.concatenate([now[np.isfinite(now)], first[np.isfinite(first)]])
        if not both.size:
            return
        edges = np.linspace(0.0, float(both.max()) * 1.1 + 1e-9, 25)
        self.now.setData(edges, np.histogram(now[np.isfinite(now)], edges)[0])
        self.first.setData(edges, np.histogram(first[np.isfinite(first)], edges)[0])


class TreacyRicePanel(pg.PlotWidget):
    """I^(1/3) against D for the current frame, with the least-squares line."""

    def __init__(self) -> None:
        super().__init__(title="<span style='font-size:14pt'>Treacy-Rice</span>")
        self.setLabel("bottom", "equivalent diameter D (nm)")
        self.setLabel("left", "I^(1/3)")
        self.points = pg.ScatterPlotItem(size=7, brush=(255, 170, 0, 200), pen=None)
        self.addItem(self.points)
        self.line = self.plot(pen=FIRST_PEN)
        self.text = pg.TextItem(color="w", anchor=(0, 0))
        self.addItem(self.text)

    def update_from(self, state: DashboardState) -> None:
        d = np.asarray(state.current.get("diameter_nm", np.zeros(0)), float)
        i = np.asarray(state.current.get("intensity", np.zeros(0)), float)
        ok = np.isfinite(d) & np.isfinite(i) & (i > 0)
        self.points.setData(x=d[ok], y=np.cbrt(i[ok]))
        slope, intercept, r2 = treacy_rice_fit(d, i)
        if np.isfinite(slope):
            xs = np.array([0.0, float(d[ok].max())])
            self.line.setData(xs, slope * xs + intercept)
            self.text.setText(f"slope {slope:.3g}, intercept {intercept:.3g}, R² {r2:.2f}")
            self.text.setPos(0.0, float(np.cbrt(i[ok]).max()))
        else:
            self.line.setData([], [])
            self.text.setText("")


class HealthPanel(pg.PlotWidget):
    """Registration quality per frame (coloured by status) and pipeline latency."""

    def __init__(self) -> None:
        super().__init__(title="<span style='font-size:14pt'>pipeline health</span>")
        self.setLabel("bottom", "frame")
        self.setLabel("left", "reg cc / latency (s)")
        self.cc = pg.ScatterPlotItem(size=7, pen=None)
        self.addItem(self.cc)
        self.latency = self.plot(pen=pg.mkPen((200, 200, 200), width=2))

    def update_from(self, state: DashboardState) -> None:
        s = state.series()
        status = [state.frames[int(k)].status for k in s["frame"]]
        brushes = [pg.mkBrush(_STATUS_BRUSH.get(st, (150, 150, 150))) for st in status]
        self.cc.setData(x=s["frame"], y=np.nan_to_num(s["reg_cc"]), brush=brushes)
        if np.isfinite(s["latency"]).any():
            self.latency.setData(s["frame"], s["latency"], connect="finite")


class TrackPanel(pg.PlotWidget):
    """Diameter and intensity history of the particle last clicked."""

    def __init__(self) -> None:
        super().__init__(title="<span style='font-size:14pt'>clicked particle</span>")
        self.setLabel("bottom", "frame")
        self.setLabel("left", "D (nm), intensity (rel.)")
        self.diameter = self.plot(pen=CURRENT_PEN, symbol="o", symbolSize=5)
        self.intensity = self.plot(pen=FIRST_PEN)
        self.track_id: int | None = None

    def show_track(self, state: DashboardState, track_id: int | None) -> None:
        self.track_id = track_id
        self.update_from(state)

    def update_from(self, state: DashboardState) -> None:
        if self.track_id is None:
            return
        h = state.track_history(self.track_id)
        self.setTitle(f"<span style='font-size:14pt'>track {self.track_id}</span>")
        self.diameter.setData(h["frame"], h["diameter_nm"])
        inten = h["intensity"]
        scale = np.nanmax(inten) if inten.size and np.isfinite(inten).any() else 1.0
        mean_d = np.nanmean(h["diameter_nm"]) if h["diameter_nm"].size else 1.0
        self.intensity.setData(h["frame"], inten / scale * mean_d)  # on the diameter's scale
