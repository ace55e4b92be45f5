"""Size distributions per frame, Treacy-Rice (I^(1/3) ∝ D) and the mean radius over time."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from nptrack.analysis.fits import (
    NAN,
    LinearFit,
    _f64,
    _i64,
    fit_line,
    sphere_volume_nm3,
)

__all__ = [
    "frame_size_stats",
    "mean_radius_series",
    "size_histogram",
    "treacy_rice",
    "treacy_rice_per_frame",
]


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
