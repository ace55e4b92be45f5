"""Fit results and small numeric helpers shared by the analysis modules."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "DiffusionFit",
    "KineticsFit",
    "LinearFit",
    "PowerLawFit",
    "fit_line",
    "sphere_volume_nm3",
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
