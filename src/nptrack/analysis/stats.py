"""The science of a session as pure functions on the columns of its tables.

Inputs are the columns of DESIGN.md's tables: detections / tracks (frame, track_id, x, y in
pixels of frame 0, diameter_nm, intensity) and events (frame, type, track_ids, detail). Every
fit returns its number of points, so that error bars are honest; too few points give NaN fits,
never exceptions. Units: nm, nm², nm³, s; intensities in the detector's integrated units.

Sections: size distributions per frame; Treacy-Rice (I^(1/3) ∝ D: chemical homogeneity);
ripening kinetics (R̄ⁿ(t) − R̄ⁿ(0) = K·t, n = 3 volume-diffusion control, n = 2 interface
control); mobility (MSD, diffusion coefficients with localisation error, D vs size, Brownian
check); lineages (track lengths, fusion counts, coalescence share of growth).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

__all__ = [
    "DiffusionFit",
    "KineticsFit",
    "LinearFit",
    "PowerLawFit",
    "brownian_check",
    "coalescence_share",
    "diffusion_coefficients",
    "fit_line",
    "frame_size_stats",
    "fusion_counts",
    "mean_radius_series",
    "mean_squared_displacement",
    "mobility_vs_size",
    "ripening_fit",
    "ripening_free_exponent",
    "size_histogram",
    "sphere_volume_nm3",
    "track_lengths",
    "treacy_rice",
    "treacy_rice_per_frame",
]

NAN = float("nan")


@dataclass(frozen=True)
class LinearFit:
    """``y = slope · x + intercept`` by (weighted) least squares; standard errors from the
    residual scatter; NaN when fewer than 3 points."""

    slope: float
    slope_se: float
    intercept: float
    intercept_se: float
    r2: float
    n: int


@dataclass(frozen=True)
class KineticsFit:
    """``R̄ⁿ(t) − R̄ⁿ(0) = K·t``: n (`exponent`, se 0 when fixed), K (`rate`, nm^n / s), the
    fitted R̄(0) (`r0_nm`), the number of time points and the R² of the fit."""

    exponent: float
    exponent_se: float
    rate: float
    rate_se: float
    r0_nm: float
    n_points: int
    r2: float


@dataclass(frozen=True)
class DiffusionFit:
    """One track's ``MSD(τ) = 4 D τ + 4 σ_loc²`` (2-D): D (nm²/s) with its standard error,
    σ_loc (nm, per axis), number of positions and mean diameter (nm)."""

    track_id: int
    n_positions: int
    mean_diameter_nm: float
    diffusion_nm2_per_s: float
    diffusion_se: float
    localisation_nm: float


@dataclass(frozen=True)
class PowerLawFit:
    """``y = prefactor · x^exponent``, fitted as a line in log-log."""

    exponent: float
    exponent_se: float
    prefactor: float
    n: int
    r2: float


def _f64(a: ArrayLike) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).ravel()


def _i64(a: ArrayLike) -> np.ndarray:
    return np.asarray(a, dtype=np.int64).ravel()


def _runs(sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values of a sorted array with the start and stop index of each run."""
    ids, starts = np.unique(sorted_ids, return_index=True)
    return ids, starts, np.append(starts[1:], sorted_ids.size).astype(np.int64)[: ids.size]


def sphere_volume_nm3(diameter_nm: ArrayLike) -> np.ndarray:
    """π d³ / 6 (nm³) of each equivalent diameter (nm)."""
    return np.pi / 6.0 * _f64(diameter_nm) ** 3


def fit_line(x: ArrayLike, y: ArrayLike, *, weights: ArrayLike | None = None) -> LinearFit:
    """Least-squares line through the finite points (weights: relative inverse variances;
    the standard errors are scaled by the residual scatter, like ``curve_fit``'s default).

    Parameters
    ----------
    x, y : array_like, shape (n,)
    weights : array_like, shape (n,), optional
        Points with non-finite or non-positive weight are left out.
    """
    x, y = _f64(x), _f64(y)
    w = np.ones_like(x) if weights is None else _f64(weights)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(w) & (w > 0)
    x, y, w = x[ok], y[ok], w[ok]
    n = int(x.size)
    if n < 3 or np.ptp(x) == 0:
        return LinearFit(NAN, NAN, NAN, NAN, NAN, n)
    w = w / w.mean()
    xm, ym = np.average(x, weights=w), np.average(y, weights=w)
    sxx = float(np.sum(w * (x - xm) ** 2))
    slope = float(np.sum(w * (x - xm) * (y - ym)) / sxx)
    intercept = float(ym - slope * xm)
    res = y - (slope * x + intercept)
    s2 = float(np.sum(w * res**2)) / (n - 2)
    sst = float(np.sum(w * (y - ym) ** 2))
    r2 = 1.0 - float(np.sum(w * res**2)) / sst if sst > 0 else NAN
    slope_se = np.sqrt(s2 / sxx)
    intercept_se = np.sqrt(s2 * (1.0 / w.sum() + xm**2 / sxx))
    return LinearFit(slope, float(slope_se), intercept, float(intercept_se), r2, n)


# -- size distributions ------------------------------------------------------------------------


def frame_size_stats(
    frame: ArrayLike, diameter_nm: ArrayLike, *, frames: ArrayLike | None = None
) -> dict[str, np.ndarray]:
    """Count and size statistics per frame.

    Parameters
    ----------
    frame : array_like of int, shape (n,)
        Frame of each particle (detection or track point).
    diameter_nm : array_like, shape (n,)
        Equivalent diameters (nm); NaN entries are not counted.
    frames : array_like of int, optional
        Frames to report even if empty (n = 0, NaN statistics, total volume 0).

    Returns
    -------
    dict of ndarray, one row per frame (sorted)
        ``frame``, ``n``, ``mean_diameter_nm``, ``median_diameter_nm``, ``sd_diameter_nm``
        (ddof 1, NaN below 2 particles), ``total_volume_nm3`` and ``mean_volume_nm3`` (spheres
        π d³ / 6).
    """
    f, d = _i64(frame), _f64(diameter_nm)
    ok = np.isfinite(d)
    f, d = f[ok], d[ok]
    keys = np.unique(f) if frames is None else np.union1d(np.unique(f), _i64(frames))
    cols = ("mean_diameter_nm", "median_diameter_nm", "sd_diameter_nm", "mean_volume_nm3")
    out = {"frame": keys, "n": np.zeros(keys.size, np.int64)}
    out |= {c: np.full(keys.size, NAN) for c in cols}
    out["total_volume_nm3"] = np.zeros(keys.size)
    order = np.argsort(f, kind="stable")
    f, d = f[order], d[order]
    starts = np.searchsorted(f, keys, "left")
    stops = np.searchsorted(f, keys, "right")
    for k, (a, b) in enumerate(zip(starts, stops, strict=True)):
        if b == a:
            continue
        dk, vk = d[a:b], sphere_volume_nm3(d[a:b])
        out["n"][k] = b - a
        out["mean_diameter_nm"][k] = dk.mean()
        out["median_diameter_nm"][k] = np.median(dk)
        out["sd_diameter_nm"][k] = dk.std(ddof=1) if b - a > 1 else NAN
        out["total_volume_nm3"][k] = vk.sum()
        out["mean_volume_nm3"][k] = vk.mean()
    return out


def size_histogram(
    diameter_nm: ArrayLike,
    *,
    bin_width_nm: float | None = None,
    range_nm: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of diameters (nm): ``counts`` shape (k,), ``edges`` shape (k + 1,) in nm.

    Bins are `bin_width_nm` wide, aligned on multiples of it, or by the Freedman–Diaconis rule
    when it is None. NaN diameters and diameters outside `range_nm` are not counted. Without
    data and without `range_nm`: no bins (``counts`` empty, ``edges`` a single 0).
    """
    d = _f64(diameter_nm)
    d = d[np.isfinite(d)]
    if range_nm is not None:
        lo, hi = float(range_nm[0]), float(range_nm[1])
        d = d[(d >= lo) & (d <= hi)]
    elif d.size:
        lo, hi = float(d.min()), float(d.max())
    else:
        return np.zeros(0, np.int64), np.zeros(1)
    if hi <= lo:
        hi = lo + (bin_width_nm or 1.0)
    if bin_width_nm is not None:
        w = float(bin_width_nm)
        edges = np.arange(np.floor(lo / w), np.ceil(hi / w) + 1) * w
        if range_nm is not None:
            edges = np.clip(edges, lo, hi)
            edges = np.unique(edges)
    elif d.size > 1:
        edges = np.histogram_bin_edges(d, bins="fd", range=(lo, hi))
    else:
        edges = np.array([lo, hi])
    counts, edges = np.histogram(d, bins=edges)
    return counts.astype(np.int64), edges


# -- Treacy-Rice -------------------------------------------------------------------------------


def treacy_rice(diameter_nm: ArrayLike, intensity: ArrayLike) -> LinearFit:
    """Fit ``I^(1/3) = slope · D + intercept`` (ordinary least squares).

    For particles of one composition and shape, the integrated ADF intensity is proportional
    to the volume, so I^(1/3) ∝ D: the intercept is ≈ 0 and the slope is the same in every
    frame (Treacy & Rice). Slope in intensity^(1/3) / nm, intercept in intensity^(1/3).

    Parameters
    ----------
    diameter_nm, intensity : array_like, shape (n,)
        Only particles with I > 0 and finite values enter.
    """
    d, i = _f64(diameter_nm), _f64(intensity)
    ok = np.isfinite(d) & np.isfinite(i) & (i > 0)
    return fit_line(d[ok], np.cbrt(i[ok]))


def treacy_rice_per_frame(
    frame: ArrayLike, diameter_nm: ArrayLike, intensity: ArrayLike, *, min_particles: int = 5
) -> dict[str, np.ndarray]:
    """`treacy_rice` in each frame: columns ``frame``, ``n``, ``slope``, ``slope_se``,
    ``intercept``, ``intercept_se``, ``r2``; NaN fits where fewer than `min_particles` valid
    particles (``n`` still counts them). A constant slope over time and intercepts ≈ 0 (within
    their se) are the chemical-homogeneity check."""
    f, d, i = _i64(frame), _f64(diameter_nm), _f64(intensity)
    keys = np.unique(f)
    names = ("slope", "slope_se", "intercept", "intercept_se", "r2")
    out = {"frame": keys, "n": np.zeros(keys.size, np.int64)}
    out |= {c: np.full(keys.size, NAN) for c in names}
    for k, t in enumerate(keys):
        sel = f == t
        fit = treacy_rice(d[sel], i[sel])
        out["n"][k] = fit.n
        if fit.n >= max(min_particles, 3):
            for c in names:
                out[c][k] = getattr(fit, c)
    return out


# -- ripening kinetics -------------------------------------------------------------------------


def mean_radius_series(
    frame: ArrayLike, diameter_nm: ArrayLike, *, time_s: ArrayLike | None = None
) -> dict[str, np.ndarray]:
    """Mean radius (``diameter_nm / 2``) per frame, for the kinetics fits.

    Parameters
    ----------
    frame, diameter_nm : array_like, shape (n,)
    time_s : array_like, shape (frames,), optional
        Time (s) of frame k at index k (frames.csv's time_s column); frames beyond it get NaN.
        Without it, time = frame number.

    Returns
    -------
    dict of ndarray
        ``frame``, ``time_s``, ``n``, ``mean_radius_nm``, ``sem_radius_nm`` (sd / √n, NaN
        below 2 particles); frames without a particle are left out.
    """
    s = frame_size_stats(frame, diameter_nm)
    keep = s["n"] > 0
    fr, n = s["frame"][keep], s["n"][keep]
    if time_s is None:
        t = fr.astype(np.float64)
    else:
        ts = _f64(time_s)
        inside = (fr >= 0) & (fr < ts.size)
        t = np.full(fr.size, NAN)
        t[inside] = ts[fr[inside]]
    return {
        "frame": fr,
        "time_s": t,
        "n": n,
        "mean_radius_nm": s["mean_diameter_nm"][keep] / 2.0,
        "sem_radius_nm": s["sd_diameter_nm"][keep] / 2.0 / np.sqrt(n),
    }


def _kinetics_points(
    time_s: ArrayLike, radius_nm: ArrayLike, weights: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t, r = _f64(time_s), _f64(radius_nm)
    w = np.ones_like(t) if weights is None else _f64(weights)
    ok = np.isfinite(t) & np.isfinite(r) & (r > 0) & np.isfinite(w) & (w > 0)
    return t[ok], r[ok], w[ok]


def ripening_fit(
    time_s: ArrayLike,
    mean_radius_nm: ArrayLike,
    *,
    exponent: float = 3.0,
    weights: ArrayLike | None = None,
) -> KineticsFit:
    """Fit ``R̄ⁿ(t) = R̄ⁿ(0) + K·t`` for a fixed n, as a line of R̄ⁿ against t.

    R̄(0) is a fitted intercept, not the (noisy) first point.

    Parameters
    ----------
    time_s, mean_radius_nm : array_like, shape (m,)
        Times (s) and mean radii (nm), e.g. from `mean_radius_series`.
    exponent : float
        n (3: volume-diffusion-limited Ostwald ripening, LSW; 2: interface-limited).
    weights : array_like, shape (m,), optional
        Relative inverse variances of the radii (e.g. ``1 / sem_radius_nm²``); they are
        propagated to R̄ⁿ (σ_y = n R̄ⁿ⁻¹ σ_R). The se are scaled by the residual scatter.

    Returns
    -------
    KineticsFit
        K in nm^n / s; NaN below 3 points.
    """
    t, r, w = _kinetics_points(time_s, mean_radius_nm, weights)
    n = float(exponent)
    y = r**n
    fit = fit_line(t, y, weights=w / (n * r ** (n - 1)) ** 2)
    r0 = fit.intercept ** (1.0 / n) if fit.intercept > 0 else NAN
    return KineticsFit(n, 0.0, fit.slope, fit.slope_se, float(r0), int(t.size), fit.r2)


def ripening_free_exponent(
    time_s: ArrayLike, mean_radius_nm: ArrayLike, *, weights: ArrayLike | None = None
) -> KineticsFit:
    """Fit n, K and R̄(0) of ``R̄ⁿ(t) − R̄ⁿ(0) = K·t`` by nonlinear least squares on R̄.

    The fit is parametrised by (n, R̄ at the first time, R̄ at the last time), which are
    well-conditioned, and K, R̄(0) follow; the se of n and K come from the covariance
    ``s² (JᵀWJ)⁻¹`` (delta method for K), s² the reduced residual scatter. n ≈ 3 points to
    volume-diffusion control, n ≈ 2 to interface control; n needs a radius that grows
    appreciably over the series to be determined (see `exponent_se`).

    Parameters
    ----------
    time_s, mean_radius_nm : array_like, shape (m,)
    weights : array_like, shape (m,), optional
        Relative inverse variances of the radii.

    Returns
    -------
    KineticsFit
        NaN below 4 points or when the fit fails.
    """
    t, r, w = _kinetics_points(time_s, mean_radius_nm, weights)
    m = int(t.size)
    bad = KineticsFit(NAN, NAN, NAN, NAN, NAN, m, NAN)
    if m < 4 or np.ptp(t) == 0:
        return bad
    t0, span = float(t.min()), float(np.ptp(t))
    u, sw = (t - t0) / span, np.sqrt(w / w.mean())

    def model(p: np.ndarray) -> np.ndarray:
        n, ra, rb = p
        return np.maximum(ra**n + (rb**n - ra**n) * u, 1e-300) ** (1.0 / n)

    def resid(p: np.ndarray) -> np.ndarray:
        return sw * (model(p) - r)

    ra0, rb0 = float(r[np.argmin(t)]), float(r[np.argmax(t)])
    best = None
    for n0 in (1.5, 3.0, 5.0):  # a few starts: the cost is flat along n for little growth
        try:
            sol = optimize.least_squares(
                resid, [n0, ra0, rb0], bounds=([0.2, 1e-6, 1e-6], [20.0, np.inf, np.inf])
            )
        except (ValueError, np.linalg.LinAlgError):
            continue
        if best is None or sol.cost < best.cost:
            best = sol
    if best is None or not best.success:
        return bad
    n, ra, rb = (float(v) for v in best.x)
    k = (rb**n - ra**n) / span
    r0n = ra**n - k * t0
    s2 = 2.0 * best.cost / (m - 3) if m > 3 else NAN
    res = r - model(best.x)
    sst = float(np.sum(w * (r - np.average(r, weights=w)) ** 2))
    r2 = 1.0 - float(np.sum(w * res**2)) / sst if sst > 0 else NAN
    try:
        cov = s2 * np.linalg.inv(best.jac.T @ best.jac)
    except np.linalg.LinAlgError:
        cov = np.full((3, 3), NAN)
    grad = np.array(
        [(rb**n * np.log(rb) - ra**n * np.log(ra)) / span, -n * ra ** (n - 1) / span,
         n * rb ** (n - 1) / span]
    )  # fmt: skip
    rate_se = float(np.sqrt(max(grad @ cov @ grad, 0.0)))
    n_se = float(np.sqrt(max(cov[0, 0], 0.0)))
    r0 = r0n ** (1.0 / n) if r0n > 0 else NAN
    return KineticsFit(n, n_se, float(k), rate_se, float(r0), m, r2)


# -- mobility ----------------------------------------------------------------------------------


def _lag_pairs(frame: np.ndarray, max_lag: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """For lags 1..max_lag (frames), index pairs (i, j) of sorted `frame` with f_j − f_i = lag."""
    out = []
    for lag in range(1, max_lag + 1):
        j = np.searchsorted(frame, frame + lag)
        hit = j < frame.size
        hit[hit] = frame[j[hit]] == frame[hit] + lag
        out.append((np.flatnonzero(hit), j[hit]))
    return out


def mean_squared_displacement(
    frame: ArrayLike, x_nm: ArrayLike, y_nm: ArrayLike, *, max_lag: int = 10
) -> dict[str, np.ndarray]:
    """Time-averaged MSD of one track over all pairs of positions `lag` frames apart.

    Parameters
    ----------
    frame : array_like of int, shape (n,)
        Frames of the track's positions (any order, gaps allowed; one position per frame).
    x_nm, y_nm : array_like, shape (n,)
        Positions (nm).
    max_lag : int
        Lags 1..max_lag, in frames.

    Returns
    -------
    dict of ndarray, shape (max_lag,)
        ``lag`` (frames), ``msd_nm2`` (2-D, NaN where no pair), ``n_pairs``.
    """
    f, x, y = _i64(frame), _f64(x_nm), _f64(y_nm)
    o = np.argsort(f, kind="stable")
    f, x, y = f[o], x[o], y[o]
    pairs = _lag_pairs(f, int(max_lag))
    n_pairs = np.array([i.size for i, _ in pairs], np.int64)
    msd = np.array(
        [np.mean((x[j] - x[i]) ** 2 + (y[j] - y[i]) ** 2) if i.size else NAN for i, j in pairs]
    )
    return {"lag": np.arange(1, int(max_lag) + 1), "msd_nm2": msd, "n_pairs": n_pairs}


def _msd_covariance(
    f: np.ndarray, pairs: Sequence[tuple[np.ndarray, np.ndarray]], step_var: float, s2: float
) -> np.ndarray:
    """Covariance of the 2-D MSD estimates of a Brownian track with Gaussian localisation
    error: per axis each MSD is a quadratic form of Gaussian positions, so
    Cov(m_k, m_l) = 2 ‖D_k Σ D_lᵀ‖² / (n_k n_l); the increments' covariance is step_var ×
    their overlap in frames plus the shared-endpoint noise terms. Two independent axes: ×2."""
    k = len(pairs)
    cov = np.zeros((k, k))
    for a, (ia, ja) in enumerate(pairs):
        for b, (ib, jb) in enumerate(pairs[: a + 1]):
            overlap = np.minimum(f[ja][:, None], f[jb][None]) - np.maximum(
                f[ia][:, None], f[ib][None]
            )
            c = step_var * np.maximum(overlap, 0)
            c = c + s2 * (
                (ja[:, None] == jb[None]).astype(float)
                - (ja[:, None] == ib[None])
                - (ia[:, None] == jb[None])
                + (ia[:, None] == ib[None])
            )
            cov[a, b] = cov[b, a] = 4.0 * np.sum(c**2) / (ia.size * ib.size)
    return cov


def diffusion_coefficients(
    frame: ArrayLike,
    track_id: ArrayLike,
    x: ArrayLike,
    y: ArrayLike,
    diameter_nm: ArrayLike,
    *,
    pixel_size_nm: float,
    frame_interval_s: float,
    max_lag: int = 4,
    min_positions: int = 10,
) -> list[DiffusionFit]:
    """Diffusion coefficient of every track from ``MSD(τ) = 4 D τ + 4 σ_loc²`` (2-D).

    An unweighted line through the MSD at lags 1..`max_lag` frames: slope 4 D, intercept
    4 σ_loc² (σ_loc per axis; a negative intercept gives σ_loc = 0). The MSD points of one
    track are strongly correlated, so the se of D is not the regression's: it is propagated
    from the exact covariance of the MSD estimates of a Brownian track with Gaussian
    localisation error (evaluated at the fitted D and σ_loc, gaps included).

    Parameters
    ----------
    frame, track_id : array_like of int, shape (n,)
    x, y : array_like, shape (n,)
        Positions in pixels of frame 0.
    diameter_nm : array_like, shape (n,)
    pixel_size_nm : float
    frame_interval_s : float
        Time between consecutive frames (s).
    max_lag : int
        Largest lag (frames) in the fit; few lags are best with localisation error.
    min_positions : int
        Tracks with fewer positions are left out.

    Returns
    -------
    list of DiffusionFit
        Sorted by track id; D in nm²/s (NaN when fewer than 2 lags have pairs).
    """
    f, tid = _i64(frame), _i64(track_id)
    xn, yn = _f64(x) * pixel_size_nm, _f64(y) * pixel_size_nm
    d = _f64(diameter_nm)
    order = np.lexsort((f, tid))
    f, tid, xn, yn, d = f[order], tid[order], xn[order], yn[order], d[order]
    ids, starts, stops = _runs(tid)
    out = []
    for t, a, b in zip(ids, starts, stops, strict=True):
        if b - a < min_positions:
            continue
        ft, xt, yt = f[a:b], xn[a:b], yn[a:b]
        pairs = [p for p in _lag_pairs(ft, int(max_lag)) if p[0].size]
        lags = np.array([ft[j[0]] - ft[i[0]] for i, j in pairs], float)
        dn, se, loc = NAN, NAN, NAN
        if lags.size >= 2:
            msd = np.array([np.mean((xt[j] - xt[i]) ** 2 + (yt[j] - yt[i]) ** 2) for i, j in pairs])
            tau = lags * frame_interval_s
            c = (tau - tau.mean()) / np.sum((tau - tau.mean()) ** 2)
            slope = float(c @ msd)
            intercept = float(msd.mean() - slope * tau.mean())
            dn, s2 = slope / 4.0, max(intercept / 4.0, 0.0)
            loc = float(np.sqrt(s2))
            step_var = max(dn, 0.0) * 2.0 * frame_interval_s  # per axis per frame
            cov = _msd_covariance(ft, pairs, step_var, s2)
            se = float(np.sqrt(max(c @ cov @ c, 0.0))) / 4.0
        out.append(DiffusionFit(int(t), int(b - a), float(np.nanmean(d[a:b])), dn, se, loc))
    return out


def mobility_vs_size(fits: Sequence[DiffusionFit]) -> PowerLawFit:
    """Fit ``D = prefactor · d^exponent`` to per-track fits, as a line of log D against log d
    (tracks with D > 0 and a finite diameter; prefactor in nm²/s at d = 1 nm).

    A noisy D̂ has E[log D̂] ≈ log D − ½ (se / D)² (delta method): with the 30–40 % relative
    errors of tracks of a few tens of positions the prefactor would come out ~5 % low, so
    each log D̂ is raised by ½ (se / D̂)² before the fit (no correction where se is NaN).
    """
    d = np.array([f.mean_diameter_nm for f in fits], float)
    dc = np.array([f.diffusion_nm2_per_s for f in fits], float)
    se = np.array([f.diffusion_se for f in fits], float)
    ok = np.isfinite(d) & np.isfinite(dc) & (d > 0) & (dc > 0)
    rel = np.where(np.isfinite(se[ok]), se[ok] / dc[ok], 0.0)
    fit = fit_line(np.log(d[ok]), np.log(dc[ok]) + 0.5 * rel**2)
    return PowerLawFit(fit.slope, fit.slope_se, float(np.exp(fit.intercept)), fit.n, fit.r2)


def brownian_check(
    frame: ArrayLike,
    track_id: ArrayLike,
    x: ArrayLike,
    y: ArrayLike,
    *,
    pixel_size_nm: float = 1.0,
    min_steps: int = 5,
) -> dict[str, float]:
    """Are the one-frame steps Gaussian, as Brownian motion's are?

    The x and y steps of each track (consecutive frames only; ≥ `min_steps` steps) are
    centred on the track's mean step per axis (drift) and divided by the track's own step sd
    leaving the step out (externally studentised), which makes them Student-t with
    2 s − 3 degrees of freedom for s steps; the t quantiles are mapped to N(0, 1), so a
    Brownian population gives exactly normal values however short its tracks. Localisation
    error correlates consecutive steps but keeps them Gaussian.

    Returns
    -------
    dict
        ``ks_statistic`` and ``p_value`` (Kolmogorov–Smirnov vs N(0, 1)), ``excess_kurtosis``
        (0 for Gaussian, > 0 for heavy tails, e.g. hops), ``n_steps`` (x and y values
        counted separately), ``n_tracks`` and ``step_sd_nm`` (median over tracks, per axis).
    """
    f, tid = _i64(frame), _i64(track_id)
    xn, yn = _f64(x) * pixel_size_nm, _f64(y) * pixel_size_nm
    order = np.lexsort((f, tid))
    f, tid, xn, yn = f[order], tid[order], xn[order], yn[order]
    step = (np.diff(f) == 1) & (tid[1:] == tid[:-1])
    dx, dy, owner = np.diff(xn)[step], np.diff(yn)[step], tid[1:][step]
    z_all, sds = [], []
    for t in np.unique(owner):
        sel = owner == t
        s = int(sel.sum())
        if s < max(min_steps, 3):
            continue
        e = np.concatenate([dx[sel] - dx[sel].mean(), dy[sel] - dy[sel].mean()])
        dof = 2 * s - 2  # 2 s values, 2 fitted means
        sd = np.sqrt(np.sum(e**2) / dof)
        if sd == 0:
            continue
        r = e / (sd * np.sqrt(1.0 - 1.0 / s))  # internally studentised, r² ≤ dof
        tt = r * np.sqrt((dof - 1) / np.maximum(dof - r**2, 1e-12))
        z_all.append(stats.norm.ppf(stats.t.cdf(tt, dof - 1)))
        sds.append(sd)
    if not z_all:
        return {
            "ks_statistic": NAN,
            "p_value": NAN,
            "excess_kurtosis": NAN,
            "n_steps": 0,
            "n_tracks": 0,
            "step_sd_nm": NAN,
        }
    z = np.concatenate(z_all)
    z = z[np.isfinite(z)]
    ks = stats.kstest(z, "norm")
    return {
        "ks_statistic": float(ks.statistic),
        "p_value": float(ks.pvalue),
        "excess_kurtosis": float(stats.kurtosis(z, fisher=True)),
        "n_steps": int(z.size),
        "n_tracks": len(z_all),
        "step_sd_nm": float(np.median(sds)),
    }


# -- lineages ----------------------------------------------------------------------------------


def track_lengths(frame: ArrayLike, track_id: ArrayLike) -> dict[str, np.ndarray]:
    """Per track: ``track_id``, ``first_frame``, ``last_frame``, ``n_frames`` (positions)."""
    f, tid = _i64(frame), _i64(track_id)
    ids, inv, counts = np.unique(tid, return_inverse=True, return_counts=True)
    first = np.full(ids.size, np.iinfo(np.int64).max)
    last = np.full(ids.size, np.iinfo(np.int64).min)
    np.minimum.at(first, inv, f)
    np.maximum.at(last, inv, f)
    return {"track_id": ids, "first_frame": first, "last_frame": last, "n_frames": counts}


def fusion_counts(event_frame: ArrayLike, event_type: ArrayLike, *, n_frames: int) -> np.ndarray:
    """Fusions per frame, shape (n_frames,); events outside 0..n_frames − 1 are ignored."""
    f = _i64(event_frame)
    kind = np.asarray(event_type, dtype=object).ravel()
    sel = (kind == "fusion") & (f >= 0) & (f < n_frames)
    return np.bincount(f[sel], minlength=int(n_frames)).astype(np.int64)


def _event_rows(events: Any) -> list[Mapping[str, Any]]:
    if isinstance(events, Mapping):  # a table of columns
        n = len(np.asarray(events["frame"]))
        return [{k: np.asarray(v, dtype=object)[i] for k, v in events.items()} for i in range(n)]
    return [e if isinstance(e, Mapping) else vars(e) for e in events]


def _parse_fusions(events: Any) -> dict[int, list[tuple[int, list[int]]]]:
    """child → [(frame, parents)] of the fusion events (``"a+b>c"``)."""
    out: dict[int, list[tuple[int, list[int]]]] = {}
    for e in _event_rows(events):
        if str(e.get("type", "")) != "fusion":
            continue
        left, _, right = str(e["track_ids"]).partition(">")
        if not right:
            continue
        out.setdefault(int(right), []).append((int(e["frame"]), [int(p) for p in left.split("+")]))
    return out


def coalescence_share(
    track_frame: ArrayLike,
    track_id: ArrayLike,
    diameter_nm: ArrayLike,
    events: Sequence[Mapping[str, Any]],
) -> dict[str, float]:
    """Share of the survivors' growth that came from fusions (the rest: Ostwald ripening and
    any other continuous exchange).

    Definition. Volumes are spheres π d³ / 6 of the tracked diameters. The survivors are the
    tracks present in the last frame of the table. The main line of a survivor is followed
    back through fusion events ``"a+b>c"`` from the child to its largest parent (largest
    volume at the parent's last position before the fusion frame; parents without a position
    are ignored), until a track that was not born from a fusion. Along it:

    - the fusion gain of each fusion is the child's volume at its first position (from the
      fusion frame on) minus that largest parent's last volume: the volume brought in by the
      other parent(s);
    - the growth is the survivor's volume in the last frame minus the volume at the first
      position of the main line.

    growth = Σ fusion gains + continuous change, exactly, for every survivor; the share is
    Σ fusion gains / Σ growth over survivors (NaN when the net growth is ≤ 0). In the
    simulator, fusions conserve volume, so a fusion gain is the smaller parent's volume and
    the continuous change is ripening: the share is 1 without ripening, 0 without fusions.
    A share > 1 means the survivors lost volume besides their fusions.

    Parameters
    ----------
    track_frame, track_id : array_like of int, shape (n,)
    diameter_nm : array_like, shape (n,)
    events : sequence of mappings (or objects with attributes), or a mapping of columns
        Rows with ``frame``, ``type`` and ``track_ids``; only fusions are used.

    Returns
    -------
    dict
        ``coalescence_share`` with ``coalescence_share_se`` (ratio-estimator se over the
        survivors), ``coalescence_volume_nm3`` (Σ fusion gains),
        ``growth_volume_nm3`` (Σ growth), ``ripening_volume_nm3`` (their difference),
        ``n_fusions`` (fusions on survivors' main lines), ``n_fusion_events`` (all fusions
        in `events`), ``n_survivors``.
    """
    f, tid, v = _i64(track_frame), _i64(track_id), sphere_volume_nm3(diameter_nm)
    ok = np.isfinite(v)
    f, tid, v = f[ok], tid[ok], v[ok]
    fusions = _parse_fusions(events)
    order = np.lexsort((f, tid))
    f, tid, v = f[order], tid[order], v[order]
    ids, starts, stops = _runs(tid)
    rows = {int(t): (f[a:b], v[a:b]) for t, a, b in zip(ids, starts, stops, strict=True)}

    def first_from(t: int, frame0: int) -> float:
        ft, vt = rows[t]
        k = np.searchsorted(ft, frame0)
        return float(vt[k]) if k < ft.size else NAN

    def last_before(t: int, frame0: int) -> float:
        if t not in rows:
            return NAN
        ft, vt = rows[t]
        k = np.searchsorted(ft, frame0) - 1
        return float(vt[k]) if k >= 0 else NAN

    last_frame = int(f.max()) if f.size else 0
    survivors = [t for t, (ft, _) in rows.items() if ft[-1] == last_frame]
    gains, growths = np.zeros(len(survivors)), np.zeros(len(survivors))
    n_fus = 0
    for k, s in enumerate(survivors):
        track, bound = s, last_frame
        while True:  # back along the main line; `bound` falls at every step, so it ends
            earlier = [(fr, ps) for fr, ps in fusions.get(track, []) if fr <= bound]
            if not earlier:
                break
            fr, parents = max(earlier, key=lambda e: e[0])
            pv = {p: last_before(p, fr) for p in parents}
            pv = {p: x for p, x in pv.items() if np.isfinite(x)}
            child_v = first_from(track, fr)
            if not pv or not np.isfinite(child_v):
                break
            big = max(pv, key=pv.__getitem__)
            gains[k] += child_v - pv[big]
            n_fus += 1
            track, bound = big, fr - 1
        # the main line starts at the first position of the track the walk stopped on
        growths[k] = float(rows[s][1][-1]) - float(rows[track][1][0])
    gain_total, growth_total = float(gains.sum()), float(growths.sum())
    share, share_se = NAN, NAN
    if growth_total > 0:
        share = gain_total / growth_total
        m = len(survivors)
        if m > 1:  # ratio estimator over survivors (lineage scatter and measurement noise)
            resid = gains - share * growths
            share_se = float(np.sqrt(m / (m - 1) * np.sum(resid**2)) / growth_total)
    return {
        "coalescence_share": float(share),
        "coalescence_share_se": share_se,
        "coalescence_volume_nm3": float(gain_total),
        "growth_volume_nm3": float(growth_total),
        "ripening_volume_nm3": float(growth_total - gain_total),
        "n_fusions": int(n_fus),
        "n_fusion_events": int(sum(len(x) for x in fusions.values())),
        "n_survivors": len(survivors),
    }
