"""The sections of ``nptrack report``: what is computed, tabulated and drawn from the tables.

Each section takes the `Report` being built, computes with `nptrack.analysis.stats`, writes its
CSV tables, draws its figures with `nptrack.analysis.figures`, and adds key numbers or one
line saying why something is left out (absent data is not an error).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nptrack.analysis.tables import ReportTables, frame_image

if TYPE_CHECKING:
    from nptrack.analysis.report import Report

__all__ = ["fusion_rows", "fusions", "over_time", "sizes", "tracks"]


def _pm(value: float | None, se: float | None = None, unit: str = "") -> str:
    """``value ± se unit``, se to two significant digits and the value to the same place."""
    if value is None or not np.isfinite(value):
        return "n/a"
    unit = f" {unit}" if unit else ""
    if se is None or not np.isfinite(se) or se <= 0:
        return f"{value:.4g}{unit}"
    if abs(value) >= 1e5 or abs(value) < 1e-3 or se > 10 * abs(value):
        return f"{value:.3g} ± {se:.2g}{unit}"
    digits = min(6, max(0, 1 - math.floor(math.log10(se))))
    return f"{value:.{digits}f} ± {se:.{digits}f}{unit}"


def _nice(width: float) -> float:
    """The 1, 2 or 5 × 10^k nearest to `width` (> 0) on a log scale."""
    p = 10.0 ** math.floor(math.log10(width))
    return min((m * p for m in (1, 2, 5, 10)), key=lambda v: abs(math.log(v / width)))


def _choose(available: np.ndarray, wanted: Sequence[int] | None, what: str) -> list[int]:
    """First / middle / last of `available`, or the `wanted` ones after checking them."""
    if wanted is None:
        picks = [available[0], available[available.size // 2], available[-1]]
        return [int(k) for k in dict.fromkeys(picks)]
    bad = [str(k) for k in wanted if k not in set(available.tolist())]
    if bad:
        raise ValueError(
            f"{what} {', '.join(bad)} has no particles (there are {what}s "
            f"{available.min()} to {available.max()})"
        )
    return [int(k) for k in dict.fromkeys(wanted)]


def sizes(rep: Report, frames_to_show: Sequence[int] | None) -> None:
    s, st = rep.tables.sizes, rep.stats
    if s is None or len(s["frame"]) == 0:
        rep.omitted.append(
            ("size histograms, Treacy-Rice plots, kinetics", "no particles measured")
        )
        return
    f, d = s["frame"].astype(int), s["diameter"].astype(float)
    inten = s["intensity"].astype(float) if "intensity" in s else None
    per = st.frame_size_stats(f, d, frames=rep.tables.frame_numbers)
    rest = {k: v for k, v in per.items() if k != "frame"}
    rep.table(
        "size_stats.csv",
        {"frame": per["frame"], **rep.with_time(per["frame"]), **rest},
        f"per {rep.what}: N, mean / median / sd of the equivalent diameter D "
        f"({rep.unit}), total and mean volume of spheres of diameter D "
        f"({rep.unit}³); particles cut by the border left out",
    )
    show = _choose(np.unique(f), frames_to_show, rep.what)
    has_i = inten is not None and np.isfinite(inten).sum() >= 3
    if has_i:
        ok = np.isfinite(inten)  # type: ignore[arg-type]
        pool = st.treacy_rice(d[ok], inten[ok])  # type: ignore[index]
        rows = st.treacy_rice_per_frame(f[ok], d[ok], inten[ok])  # type: ignore[index]
        rep.table(
            "treacy_rice.csv",
            rows,
            f"per {rep.what} (≥ 5 particles): least "
            "squares I^(1/3) = slope·D + intercept, standard errors, R²",
        )
        rep.numbers += [
            (
                "Treacy-Rice slope",
                _pm(pool.slope, pool.slope_se, f"a.u.^(1/3)/{rep.unit}"),
                f"I^(1/3) against D, all {pool.n} particles, R² = {pool.r2:.3f}",
            ),
            (
                "Treacy-Rice intercept",
                _pm(pool.intercept, pool.intercept_se, "a.u.^(1/3)"),
                "≈ 0 when the intensity is ∝ D³ (mass-thickness contrast)",
            ),
        ]
    else:
        rep.omitted.append(("Treacy-Rice plots", "no integrated intensity in the tables"))
    # One bin width and range for every panel: the Freedman-Diaconis width of the frames
    # shown together, rounded to 1, 2 or 5 × 10^k so the bins are readable.
    _, pooled = st.size_histogram(d[np.isin(f, show)])
    width = _nice(float(pooled[1] - pooled[0])) if pooled.size > 1 else 1.0
    span = (width * np.floor(pooled[0] / width), width * np.ceil(pooled[-1] / width))
    panels = []
    for k in show:
        m = f == k
        counts, e = st.size_histogram(d[m], bin_width_nm=width, range_nm=span)
        m_i = m & np.isfinite(inten) if has_i else np.zeros_like(m)  # type: ignore[arg-type]
        fit = st.treacy_rice(d[m_i], inten[m_i]) if m_i.sum() >= 3 else None  # type: ignore[index]
        panels.append(
            {
                "title": rep.title(k),
                "counts": counts,
                "edges": e,
                "diameter": d[m],
                "intensity": inten[m_i] if has_i else None,  # type: ignore[index]
                "diameter_fit": d[m_i],
                "fit": fit,
            }
        )
    caption = f"Size histograms{' and Treacy-Rice plots' if has_i else ''} of {rep.what}s "
    rep.figure(
        "sizes_treacy_rice.png",
        caption + ", ".join(map(str, show)),
        rep.fig.sizes_figure,
        panels=panels,
        unit=rep.unit,
    )
    if rep.t is None or np.unique(f).size < 2:
        why = "an analyze folder has no time axis" if rep.t is None else "one frame only"
        rep.omitted.append(("count, size, volume and kinetics against time", why))
    else:
        over_time(rep, f, d, per)


def over_time(rep: Report, f: np.ndarray, d: np.ndarray, per: Mapping[str, np.ndarray]) -> None:
    st, t = rep.stats, rep.t
    assert t is not None
    k = np.asarray(per["frame"], int)
    rep.figure(
        "population.png",
        "Particle count and mean equivalent diameter (± sd) against time",
        rep.fig.population_figure,
        t=t[k],
        n=per["n"],
        mean=per["mean_diameter_nm"],
        sd=per["sd_diameter_nm"],
        median=per["median_diameter_nm"],
        t_label=rep.t_label,
        unit=rep.unit,
    )
    v = np.asarray(per["total_volume_nm3"], float)
    v0 = v[0] if v.size and v[0] > 0 else np.nan
    if np.isfinite(v0):
        rep.figure(
            "volume.png",
            "Total particle volume (spheres of diameter D) over "
            f"its value in {rep.title(int(k[0]))}",
            rep.fig.volume_figure,
            t=t[k],
            v_rel=v / v0,
            t_label=rep.t_label,
        )
    else:
        rep.omitted.append(("normalised volume", f"no particles in frame {k[0]}"))
    series = st.mean_radius_series(f, d, time_s=t)
    cols = {k: v for k, v in series.items() if k != "time_s" or rep.t_unit == "s"}
    rep.table(
        "mean_radius.csv",
        cols,
        f"per frame: mean radius R = D/2 ({rep.unit}) and its standard error",
    )
    fit3 = st.ripening_fit(series["time_s"], series["mean_radius_nm"])
    free = st.ripening_free_exponent(series["time_s"], series["mean_radius_nm"])
    if not np.isfinite(fit3.rate):
        rep.omitted.append(
            ("R³ kinetics", f"{fit3.n_points} frame(s) with particles and a time (3 needed)")
        )
        return
    rows = [("R^3", fit3), ("R^n, free n", free)]
    rep.table(
        "kinetics.csv",
        {
            "model": [m for m, _ in rows],
            **{
                c: [getattr(r, c) for _, r in rows]
                for c in (
                    "exponent",
                    "exponent_se",
                    "rate",
                    "rate_se",
                    "r0_nm",
                    "n_points",
                    "r2",
                )
            },
            "rate_unit": [f"{rep.unit}^{r.exponent:.3g}/{rep.t_unit}" for _, r in rows],
        },
        "R^n(t) - R^n(0) = K·t fits of the mean radius: fixed n = 3 and free n",
    )
    u, tu = rep.unit, rep.t_unit
    # the free fit keeps n in [0.2, 20]: at a bound, n is not determined by the data
    at_bound = np.isfinite(free.exponent) and not 0.21 < free.exponent < 19.9
    bound = " (n at the bound of the fit: too little growth to determine it)" if at_bound else ""
    rep.numbers += [
        (
            "ripening rate K (n = 3)",
            _pm(fit3.rate, fit3.rate_se, f"{u}³/{tu}"),
            f"R³(t) − R³(0) = K·t, R(0) = {fit3.r0_nm:.3g} {u}, {fit3.n_points} frames, "
            f"R² = {fit3.r2:.3f}",
        ),
        (
            "free exponent n",
            _pm(free.exponent, free.exponent_se),
            f"R^n(t) − R^n(0) = K·t, K = {_pm(free.rate, free.rate_se, f'{u}^n/{tu}')}"
            f"{bound}; n ≈ 3: diffusion-limited ripening (LSW), n ≈ 2: interface-limited",
        ),
    ]
    rep.figure(
        "kinetics.png",
        "Ripening kinetics: mean radius and R³(t) − R³(0) with the n = 3 and free-n fits",
        rep.fig.kinetics_figure,
        series=series,
        fit3=fit3,
        free=free,
        t_label=rep.t_label,
        unit=rep.unit,
    )


def tracks(rep: Report) -> None:
    tr, st = rep.tables.tracks, rep.stats
    if tr is None:
        rep.omitted.append(
            ("trajectories, mobility against size, track lengths", "no tracks in these tables")
        )
        return
    f, tid = tr["frame"].astype(int), tr["track_id"].astype(int)
    x, y, d = tr["x"].astype(float), tr["y"].astype(float), tr["diameter"].astype(float)
    lengths = st.track_lengths(f, tid)
    rep.table("track_lengths.csv", lengths, "per track: first and last frame, frames")
    rep.figure(
        "track_lengths.png",
        "Trajectory lengths",
        rep.fig.track_length_figure,
        n_frames=lengths["n_frames"],
    )
    shown = [int(f.min()), int(f.max())]
    images = [frame_image(rep.tables, k) for k in shown]
    readable = all(i is not None for i in images)
    note = "" if readable else "source image not readable: tracks on an empty field"
    rep.figure(
        "trajectories.png",
        f"First and last frame ({rep.title(shown[0])}, {rep.title(shown[1])}) registered to "
        "frame 0, with the trajectories" + (f" ({note})" if note else ""),
        rep.fig.trajectories_figure,
        frame=f,
        track_id=tid,
        x=x,
        y=y,
        diameter=d,
        panels=[(rep.title(k), img, k) for k, img in zip(shown, images, strict=True)],
        field_shape=rep.tables.field_shape,
        pixel_size_nm=rep.tables.pixel_size_nm,
        fusions=fusion_points(rep, f, tid, x, y),
        note=note,
    )
    px = rep.tables.pixel_size_nm
    length = "nm" if px else "px"
    t = rep.t if rep.t is not None else np.arange(f.max() + 1.0)
    steps = np.diff(t)
    dt = float(np.nanmedian(steps)) if steps.size and np.isfinite(steps).any() else 1.0
    fits = st.diffusion_coefficients(
        f,
        tid,
        x,
        y,
        d,
        pixel_size_nm=px or 1.0,
        frame_interval_s=dt,
        max_lag=rep.max_lag,
        min_positions=rep.min_positions,
    )
    du = f"{length}²/{rep.t_unit}"
    if fits:
        cols = (
            "track_id",
            "n_positions",
            "mean_diameter_nm",
            "diffusion_nm2_per_s",
            "diffusion_se",
            "localisation_nm",
        )
        rep.table(
            "diffusion.csv",
            {c: [getattr(r, c) for r in fits] for c in cols},
            f"per track with ≥ {rep.min_positions} positions: D from the mean "
            f"squared displacement (lags 1-{rep.max_lag}; {du}), localisation "
            f"error ({length})",
        )
    if len(fits) >= 3:
        law = st.mobility_vs_size(fits)
        rep.numbers.append(
            (
                "mobility exponent (D ∝ d^α)",
                _pm(law.exponent, law.exponent_se),
                f"{law.n} tracks, log-log least squares, R² = {law.r2:.3f}",
            )
        )
        rep.figure(
            "mobility.png",
            "Diffusion coefficient against particle size (log-log) with the power-law fit",
            rep.fig.mobility_figure,
            fits=fits,
            law=law,
            unit=rep.unit,
            d_unit=du,
        )
    else:
        rep.omitted.append(
            (
                "mobility against size",
                f"{len(fits)} track(s) with ≥ {rep.min_positions} positions (3 needed)",
            )
        )
    bc = st.brownian_check(f, tid, x, y, pixel_size_nm=px or 1.0)
    if bc.get("n_steps", 0) >= 10:
        rep.numbers.append(
            (
                "Brownian steps: KS p-value",
                f"{bc['p_value']:.3g}",
                f"{bc['n_steps']} steps against a Gaussian, excess kurtosis "
                f"{bc['excess_kurtosis']:.2f} (0 for Brownian motion)",
            )
        )


def fusion_rows(tables: ReportTables) -> list[dict[str, Any]]:
    """The fusion events of `tables` as rows (frame, type, track_ids)."""
    ev = tables.events
    if ev is None:
        return []
    return [
        {
            "frame": int(ev["frame"][i]),
            "type": str(ev["type"][i]),
            "track_ids": str(ev["track_ids"][i]),
        }
        for i in range(len(ev["frame"]))
        if ev["type"][i] == "fusion"
    ]


def fusion_points(
    rep: Report, f: np.ndarray, tid: np.ndarray, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """(x, y) of each fusion's child where it starts, shape (N, 2), px of frame 0."""
    pts = []
    for row in fusion_rows(rep.tables):
        child = row["track_ids"].rpartition(">")[2]
        m = (tid == int(child)) & (f == row["frame"]) if child.strip().isdigit() else []
        if np.any(m):
            pts.append((x[m][0], y[m][0]))
    return np.array(pts, float).reshape(-1, 2)


def fusions(rep: Report, n_frames: int) -> None:
    ev, st = rep.tables.events, rep.stats
    if ev is None:
        rep.omitted.append(("fusion timeline", "no events table"))
        return
    counts = np.asarray(st.fusion_counts(ev["frame"].astype(int), ev["type"], n_frames=n_frames))
    k = np.arange(counts.size)
    rep.table(
        "fusions.csv",
        {"frame": k, **rep.with_time(k), "fusions": counts, "cumulative": np.cumsum(counts)},
        "per frame: fusion events (a child track starts there) and running total",
    )
    if counts.sum() == 0:
        rep.omitted.append(("fusion timeline", "no fusion events"))
    else:
        t = rep.t if rep.t is not None else k.astype(float)
        rep.figure(
            "fusions.png",
            "Fusion timeline: events per frame and running total",
            rep.fig.fusion_figure,
            t=t[k],
            counts=counts,
            t_label=rep.t_label,
        )
    tr = rep.tables.tracks
    if tr is not None and counts.sum() > 0:
        share = st.coalescence_share(
            tr["frame"].astype(int),
            tr["track_id"].astype(int),
            tr["diameter"].astype(float),
            fusion_rows(rep.tables),
        )
        rep.numbers.append(
            (
                "coalescence share",
                f"{share['coalescence_share']:.3f}",
                "fraction of the survivors' volume growth brought by "
                f"{share['n_fusions']} fusion(s) on their main lines: "
                f"{share['coalescence_volume_nm3']:.4g} of "
                f"{share['growth_volume_nm3']:.4g} {rep.unit}³; the "
                "difference is ripening and exchange (> 1: they shrank the "
                "survivors)",
            )
        )
