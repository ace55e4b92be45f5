"""Ripening kinetics: R̄ⁿ(t) − R̄ⁿ(0) = K·t with n fixed (3: volume diffusion) or free."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize

from nptrack.analysis.fits import (
    NAN,
    KineticsFit,
    _f64,
    fit_line,
)

__all__ = [
    "ripening_fit",
    "ripening_free_exponent",
]


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
