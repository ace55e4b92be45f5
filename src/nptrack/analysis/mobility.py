"""Mobility: MSD, diffusion coefficients with localisation error, D vs size, Brownian check."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from nptrack.analysis.fits import (
    NAN,
    DiffusionFit,
    PowerLawFit,
    _f64,
    _i64,
    _runs,
    fit_line,
)

__all__ = [
    "brownian_check",
    "diffusion_coefficients",
    "mean_squared_displacement",
    "mobility_vs_size",
]


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
