"""The figures of ``nptrack report``: matplotlib, headless (Agg canvas, no pyplot state).

Each function draws numbers it is given (computed by `nptrack.analysis.stats`) into one PNG;
nothing here fits or reads a file. Lengths are labelled with their unit, times with the
time axis the report chose (seconds since frame 0, or frame numbers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from matplotlib.ticker import LogFormatter, MaxNLocator

__all__ = [
    "FIGURE_FILES",
    "fusion_figure",
    "kinetics_figure",
    "mobility_figure",
    "population_figure",
    "sizes_figure",
    "track_length_figure",
    "trajectories_figure",
    "volume_figure",
]

# Every file a report may hold (stale ones are removed when a figure is not produced).
FIGURE_FILES = (
    "trajectories.png",
    "sizes_treacy_rice.png",
    "population.png",
    "volume.png",
    "kinetics.png",
    "mobility.png",
    "track_lengths.png",
    "fusions.png",
)

_STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
_DPI = 110


def _new(width_in: float, height_in: float, rows: int = 1, cols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=_DPI)
    return path


def _time_axis(ax: Any, t_label: str) -> None:
    ax.set_xlabel(t_label)
    if t_label == "frame":  # frame numbers: no 2.5-frame ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _note(ax: Any, text: str) -> None:
    ax.text(
        0.03,
        0.96,
        text,
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=9,
        bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.85},
    )


def sizes_figure(path: Path, *, panels: Sequence[Mapping[str, Any]], unit: str = "nm") -> Path:
    """Size histogram (top row) and Treacy-Rice plot (bottom row) of each chosen frame.

    Parameters
    ----------
    panels : sequence of mapping
        Per frame: ``title``; ``counts`` (k,) and ``edges`` (k + 1,) of the histogram of
        ``diameter`` (m,) in `unit`; ``intensity`` (p,) and ``diameter_fit`` (p,) of the
        particles with an intensity, or ``intensity`` None (no Treacy-Rice row); ``fit``:
        a `LinearFit` of I^(1/3) against D, or None.
    """
    with mpl.rc_context(_STYLE):
        tr = any(p["intensity"] is not None for p in panels)
        n = len(panels)
        fig, ax = _new(3.4 * n + 0.6, 6.2 if tr else 3.3, 2 if tr else 1, n)
        top = max((int(np.max(p["counts"])) for p in panels if len(p["counts"])), default=1)
        for j, p in enumerate(panels):
            a = ax[0, j]
            e, c = np.asarray(p["edges"]), np.asarray(p["counts"])
            if c.size:
                a.stairs(c, e, fill=True, color="tab:blue", alpha=0.75)
            d = np.asarray(p["diameter"], float)
            a.set_ylim(0, top * 1.25)
            a.set_title(p["title"])
            a.set_xlabel(f"equivalent diameter D ({unit})")
            if j == 0:
                a.set_ylabel("particles")
            if d.size:
                sd = f" ± {np.std(d, ddof=1):.2f}" if d.size > 1 else ""
                _note(a, f"N = {d.size}\nmean {np.mean(d):.2f}{sd} {unit}")
            if not tr:
                continue
            a = ax[1, j]
            if j:  # one scale for all frames: the slopes compare by eye
                a.sharex(ax[1, 0])
                a.sharey(ax[1, 0])
            if p["intensity"] is None or not len(p["intensity"]):
                a.text(0.5, 0.5, "no intensity", ha="center", transform=a.transAxes)
                continue
            dd, i3 = np.asarray(p["diameter_fit"], float), np.cbrt(np.asarray(p["intensity"]))
            a.plot(dd, i3, "o", ms=3.5, alpha=0.6, color="tab:orange")
            fit = p["fit"]
            a.set_xlabel(f"equivalent diameter D ({unit})")
            if j == 0:
                a.set_ylabel("I$^{1/3}$ (integrated intensity$^{1/3}$, a.u.)")
            if fit is not None and np.isfinite(fit.slope):
                xs = np.array([0.0, float(np.nanmax(dd)) * 1.05])
                a.plot(xs, fit.slope * xs + fit.intercept, "-", color="0.2", lw=1.2)
                _note(
                    a,
                    f"slope {fit.slope:.3g} ± {fit.slope_se:.2g}\n"
                    f"intercept {fit.intercept:.3g} ± {fit.intercept_se:.2g}\n"
                    f"R² = {fit.r2:.3f}, n = {fit.n}",
                )
            a.set_xlim(left=0)
            a.set_ylim(bottom=min(0.0, float(np.nanmin(i3))))
        return _save(fig, path)


def population_figure(
    path: Path,
    *,
    t: np.ndarray,
    n: np.ndarray,
    mean: np.ndarray,
    sd: np.ndarray,
    median: np.ndarray,
    t_label: str,
    unit: str = "nm",
) -> Path:
    """Particle count (top) and mean equivalent diameter with its ± sd band (bottom)."""
    with mpl.rc_context(_STYLE):
        fig, ax = _new(7.0, 5.2, 2, 1)
        ax[0, 0].plot(t, n, ".-", color="tab:blue")
        ax[0, 0].set_ylabel("particles N")
        ax[0, 0].set_ylim(bottom=0)
        a = ax[1, 0]
        a.fill_between(
            t, mean - sd, mean + sd, color="tab:orange", alpha=0.25, lw=0, label="± 1 sd"
        )
        a.plot(t, mean, ".-", color="tab:orange", label="mean")
        a.plot(t, median, "--", color="0.35", lw=1, label="median")
        a.set_ylabel(f"equivalent diameter D ({unit})")
        _time_axis(a, t_label)
        a.legend(loc="best")
        ax[0, 0].sharex(a)
        ax[0, 0].set_title("Particle count and size against time")
        return _save(fig, path)


def volume_figure(path: Path, *, t: np.ndarray, v_rel: np.ndarray, t_label: str) -> Path:
    """Total particle volume over its value in the first frame (mass conservation check)."""
    with mpl.rc_context(_STYLE):
        fig, ax = _new(7.0, 3.4)
        a = ax[0, 0]
        a.axhline(1.0, color="0.5", lw=1, ls=":")
        a.plot(t, v_rel, ".-", color="tab:green")
        _time_axis(a, t_label)
        a.set_ylabel("V(t) / V(0)")
        a.set_title("Total volume of the particles (spheres of diameter D), normalised")
        return _save(fig, path)


def kinetics_figure(
    path: Path,
    *,
    series: Mapping[str, np.ndarray],
    fit3: Any,
    free: Any,
    t_label: str,
    unit: str = "nm",
) -> Path:
    """Mean radius with both fits (left) and R³ − R³(0) with K·t (right).

    `fit3` and `free` are `KineticsFit` (fixed n = 3, free n); R(0) is the n = 3 fit's.
    """
    t = np.asarray(series["time_s"], float)
    r = np.asarray(series["mean_radius_nm"], float)
    sem = np.asarray(series["sem_radius_nm"], float)
    ts = np.linspace(np.nanmin(t), np.nanmax(t), 200)
    tu = "s" if "(s)" in t_label else "frame"

    def curve(k: Any) -> np.ndarray:
        return np.maximum(k.r0_nm**k.exponent + k.rate * ts, 0.0) ** (1.0 / k.exponent)

    with mpl.rc_context(_STYLE):
        fig, ax = _new(10.0, 4.0, 1, 2)
        a = ax[0, 0]
        a.errorbar(
            t,
            r,
            yerr=np.nan_to_num(sem),
            fmt="o",
            ms=3.5,
            color="tab:blue",
            ecolor="0.6",
            label="mean radius ± sem",
        )
        if np.isfinite(fit3.rate) and np.isfinite(fit3.r0_nm):
            a.plot(ts, curve(fit3), "-", color="tab:red", label="n = 3")
        if np.isfinite(free.rate) and np.isfinite(free.r0_nm):
            a.plot(
                ts,
                curve(free),
                "--",
                color="0.2",
                label=f"free n = {free.exponent:.3g} ± {free.exponent_se:.2g}",
            )
        _time_axis(a, t_label)
        a.set_ylabel(f"mean radius R ({unit})")
        a.set_title("Mean radius")
        a.legend(loc="lower right")
        a = ax[0, 1]
        y = r**3 - fit3.r0_nm**3
        a.errorbar(
            t,
            y,
            yerr=np.nan_to_num(3 * r**2 * sem),
            fmt="o",
            ms=3.5,
            color="tab:blue",
            ecolor="0.6",
            label="R³ − R³(0)",
        )
        if np.isfinite(fit3.rate):
            a.plot(
                ts,
                fit3.rate * ts,
                "-",
                color="tab:red",
                label=f"K·t, K = {fit3.rate:.3g} ± {fit3.rate_se:.2g} {unit}³/{tu}",
            )
        a.axhline(0.0, color="0.5", lw=0.8)
        _time_axis(a, t_label)
        a.set_ylabel(f"R³ − R³(0) ({unit}³)")
        a.set_title(f"R³ kinetics (R(0) = {fit3.r0_nm:.3g} {unit} fitted)")
        a.legend(loc="upper left")
        return _save(fig, path)


def mobility_figure(
    path: Path, *, fits: Sequence[Any], law: Any, unit: str = "nm", d_unit: str = "nm²/s"
) -> Path:
    """Diffusion coefficient of each track against its mean diameter, log-log, with
    ``D = prefactor · d^exponent`` (`law`, a `PowerLawFit`)."""
    d = np.array([f.mean_diameter_nm for f in fits], float)
    dc = np.array([f.diffusion_nm2_per_s for f in fits], float)
    se = np.array([f.diffusion_se for f in fits], float)
    ok = np.isfinite(d) & np.isfinite(dc) & (d > 0) & (dc > 0)
    with mpl.rc_context(_STYLE):
        fig, ax = _new(6.4, 4.4)
        a = ax[0, 0]
        lo = np.where(np.isfinite(se), np.minimum(se, dc * 0.95), 0.0)[ok]
        a.errorbar(
            d[ok],
            dc[ok],
            yerr=[lo, np.nan_to_num(se[ok])],
            fmt="o",
            ms=4,
            color="tab:purple",
            ecolor="0.7",
            label=f"tracks ({ok.sum()})",
        )
        if np.isfinite(law.exponent) and ok.any():
            xs = np.geomspace(d[ok].min() * 0.9, d[ok].max() * 1.1, 50)
            a.plot(
                xs,
                law.prefactor * xs**law.exponent,
                "-",
                color="0.2",
                label=f"D ∝ d$^{{{law.exponent:.2f} ± {law.exponent_se:.2f}}}$",
            )
        a.set_xscale("log")
        a.set_yscale("log")
        # plain numbers on the size axis (often less than a decade wide): 2, 3, 5 not 2×10⁰
        a.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        a.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 1)))
        a.set_xlabel(f"mean equivalent diameter d ({unit})")
        a.set_ylabel(f"diffusion coefficient D ({d_unit})")
        a.set_title("Mobility against size (MSD fits)")
        a.legend(loc="best")
        return _save(fig, path)


def track_length_figure(path: Path, *, n_frames: np.ndarray) -> Path:
    """Histogram of the number of positions per track (one bin per frame count)."""
    n = np.asarray(n_frames, int)
    with mpl.rc_context(_STYLE):
        fig, ax = _new(6.4, 3.6)
        a = ax[0, 0]
        edges = np.arange(0.5, n.max() + 1.5) if n.size else np.array([0.5, 1.5])
        if edges.size > 61:  # long series: about 60 bins
            edges = np.unique(np.round(np.linspace(0.5, n.max() + 0.5, 61)))
        a.hist(n, bins=edges, color="tab:cyan", edgecolor="white", lw=0.5)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_xlabel("trajectory length (frames with a position)")
        a.set_ylabel("tracks")
        a.set_title("Trajectory lengths")
        if n.size:
            _note(a, f"{n.size} tracks\nmedian {np.median(n):.0f} frames")
        return _save(fig, path)


def fusion_figure(path: Path, *, t: np.ndarray, counts: np.ndarray, t_label: str) -> Path:
    """Fusion events per frame (bars) and their running total (line, right axis)."""
    c = np.asarray(counts, int)
    with mpl.rc_context(_STYLE):
        fig, ax = _new(7.0, 3.4)
        a = ax[0, 0]
        step = float(np.nanmedian(np.diff(t))) if t.size > 1 else 1.0
        a.bar(t, c, width=0.8 * step, color="tab:red", alpha=0.8, label="per frame")
        _time_axis(a, t_label)
        a.set_ylabel("fusions per frame")
        a.yaxis.set_major_locator(MaxNLocator(integer=True))
        b = a.twinx()
        b.step(t, np.cumsum(c), where="post", color="0.2", lw=1.5, label="cumulative")
        b.yaxis.set_major_locator(MaxNLocator(integer=True))
        b.set_ylabel("fusions so far")
        b.grid(False)
        b.set_ylim(bottom=0)
        a.set_title(f"Fusion timeline ({int(c.sum())} fusions)")
        handles = a.get_legend_handles_labels()[0] + b.get_legend_handles_labels()[0]
        a.legend(handles, ["per frame", "cumulative"], loc="upper left")
        return _save(fig, path)


def trajectories_figure(
    path: Path,
    *,
    frame: np.ndarray,
    track_id: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    diameter: np.ndarray,
    panels: Sequence[tuple[str, np.ndarray | None, int]],
    field_shape: tuple[int, int] | None,
    pixel_size_nm: float | None,
    fusions: np.ndarray,
    note: str = "",
) -> Path:
    """Frames (registered to frame 0) with every trajectory and the particles of that frame.

    Parameters
    ----------
    frame, track_id, x, y, diameter : ndarray, shape (n,)
        Track points: x, y in pixels of frame 0, diameter in nm (px when uncalibrated).
    panels : sequence of (title, image or None, frame)
        Image (H, W) in frame-0 pixels (NaN outside the acquired field), or None: an empty
        field.
    field_shape : (int, int) or None
        (height, width) of frame 0; else from the images or the track extent.
    pixel_size_nm : float or None
        Turns diameters into circle radii in px (and draws a scale bar).
    fusions : ndarray, shape (k, 2)
        (x, y) of the fusion products where they appear (stars).
    note : str
        Added to the title (e.g. that the source files are not readable).
    """
    order = np.lexsort((frame, track_id))
    f, tid, xs, ys, d = (np.asarray(v)[order] for v in (frame, track_id, x, y, diameter))
    shape = field_shape or next((img.shape for _, img, _ in panels if img is not None), None)
    if shape is None:
        shape = (int(np.nanmax(ys)) + 10, int(np.nanmax(xs)) + 10)
    h, w = shape
    ids, starts = np.unique(tid, return_index=True)
    segs = np.split(np.column_stack([xs, ys]), starts[1:])
    colours = mpl.colormaps["tab20"](np.arange(ids.size) % 20)
    px = pixel_size_nm or 1.0
    with mpl.rc_context(_STYLE):
        fig, ax = _new(5.0 * len(panels), 5.4, 1, len(panels))
        for j, (title, img, k) in enumerate(panels):
            a = ax[0, j]
            a.grid(False)
            if img is not None:
                lo, hi = np.nanpercentile(img, [1, 99.5])
                a.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            else:
                a.set_facecolor("0.12")
            a.add_collection(LineCollection(segs, colors=colours, lw=0.9, alpha=0.9))
            now = f == k
            circles = [
                Circle((cx, cy), max(cd / px / 2, 1.0))
                for cx, cy, cd in zip(xs[now], ys[now], d[now], strict=True)
            ]
            col = colours[np.searchsorted(ids, tid[now])]
            a.add_collection(PatchCollection(circles, facecolor="none", edgecolor=col, lw=1.1))
            if j == len(panels) - 1 and len(fusions):
                a.plot(
                    fusions[:, 0],
                    fusions[:, 1],
                    "*",
                    ms=11,
                    mfc="yellow",
                    mec="k",
                    mew=0.6,
                    label="fusion",
                )
                a.legend(loc="lower right")
            if pixel_size_nm:
                bar_nm = _nice(w * px / 5)
                a.plot([w * 0.05, w * 0.05 + bar_nm / px], [h * 0.95] * 2, "-", color="w", lw=3)
                a.text(
                    w * 0.05 + bar_nm / px / 2,
                    h * 0.93,
                    f"{bar_nm:g} nm",
                    color="w",
                    ha="center",
                    va="bottom",
                    path_effects=[patheffects.withStroke(linewidth=2, foreground="k")],
                )
            a.set_xlim(-0.5, w - 0.5)
            a.set_ylim(h - 0.5, -0.5)
            a.set_aspect("equal")
            a.set_title(f"{title}: {int(now.sum())} particles")
            a.set_xlabel("x (px of frame 0)")
            if j == 0:
                a.set_ylabel("y (px of frame 0)")
        fig.suptitle(f"{ids.size} trajectories" + (f" ({note})" if note else ""))
        return _save(fig, path)


def _nice(length: float) -> float:
    """1, 2 or 5 times a power of ten, at most `length`."""
    if length <= 0:
        return 1.0
    p = 10 ** np.floor(np.log10(length))
    return float(max(m for m in (1, 2, 5) if m * p <= length) * p)
