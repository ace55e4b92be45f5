"""Statistical atom counting: column occupancy from the raw ADF intensities.

Incoherent (ADF-like) imaging is linear in the atoms: the intensity a column scatters,
integrated and taken above the support underneath, is ``occupancy × u`` where ``u`` is the
integrated intensity of one atom (the faint anion columns nearby add a small share that only
rescales ``u``). The network of :mod:`nptrack.segment.columns_infer` sees per-frame normalised
images and cannot know ``u``; here the occupancy is read from the raw image instead
(statistical counting as in Van Aert et al., Nature 470, 2011; De Backer et al.,
Ultramicroscopy 134, 2013):

1. :func:`fit_columns` (in :mod:`nptrack.segment.columns_fit`): one linear least-squares
   model of the frame around the columns, Gaussian columns (with width and position
   corrections) on a smooth support, gives every column's integrated intensity ``I_j``
   above the support and its standard error. The support's thickness varies under the
   particle; the gaps between columns pin it.
2. :func:`estimate_unit`: the ``I_j`` cluster at integer multiples of ``u``. The prior scale
   ``u0 = median(I / prior occupancy)`` (the network's) is refined to the period of that
   comb when the comb is significant; the search range excludes the ``u/2``, ``u/3`` aliases.
3. :func:`count_columns`: ``occupancy_count = max(1, round(I / u))`` and, by default, the
   *combined* occupancy: the most probable ``k`` under the network's class probabilities
   times the counting likelihood ``N(I; k u, s²)`` (``s`` the standard error scaled by
   ``sd_scale``), so that counting decides where it is precise (high dose) and the network's
   shape prior where the shot noise dominates.

The column fit models the tilt smear of the columns (a thick column at 1° off the zone axis
is smeared by more than the probe's sd); without it ``I ≈ b + u k`` with an offset ``b`` of
up to ~0.7 atom (mean +0.1, simulated clean frames of the training distribution: measured
against the simulator's truth, the faint anion columns and the support add no mean offset,
only the support's graininess per column), which a shape prior takes for one more layer.

What limits it (simulated, see tools/eval_columns.py): the amorphous support's graininess
under each column (random light atoms, blurred like the columns, so no filter separates them)
leaves ~0.3 atoms sd per column on noise-free frames; the shot noise at SNR 2 leaves ~1–1.5
atoms; and ``u`` per frame is only as good as the prior unless the comb is sharp.

Pure numpy / scipy. Coordinates in px (x = column, y = row); intensities in the image's
units × px (integrated), whatever the image's gain and offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from nptrack.segment.columns_fit import column_cells, fit_columns

__all__ = [
    "UnitFit",
    "assign_occupancy",
    "column_cells",
    "count_columns",
    "estimate_unit",
    "fit_columns",
]


@dataclass
class UnitFit:
    """Result of :func:`estimate_unit`.

    Attributes
    ----------
    unit : float
        Integrated intensity of one atom (image units × px).
    prior_unit : float
        ``u0`` from the prior occupancies.
    comb_z : float
        Significance of the comb at ``unit`` (its score over the sd of the score of random
        intensities); below ``min_z`` the comb was not used.
    from_comb : bool
        True when ``unit`` comes from the comb, False when it is ``prior_unit``.
    """

    unit: float
    prior_unit: float
    comb_z: float
    from_comb: bool


def estimate_unit(
    intensity: np.ndarray,
    *,
    prior_occupancy: np.ndarray | None = None,
    prior_unit: float | None = None,
    search: tuple[float, float] = (0.7, 1.45),
    step: float = 0.002,
    min_z: float = 3.0,
    min_columns: int = 8,
    min_margin: float = 1.5,
    intensity_sd: np.ndarray | None = None,
    sd_scale: float = 1.5,
) -> UnitFit:
    """Single-atom intensity ``u`` from the comb of integrated column intensities.

    Parameters
    ----------
    intensity : ndarray, shape (M,)
        Integrated column intensities (:func:`integrate_columns`).
    prior_occupancy : ndarray of int, shape (M,), optional
        Occupancies from elsewhere (the network); sets ``u0 = median(I / prior)``.
    prior_unit : float, optional
        ``u0`` directly (e.g. pooled over a series); overrides `prior_occupancy`.
    search : (float, float)
        Range of ``u / u0`` searched; it must exclude 1/2 (the ``u/2`` alias), so the prior
        has to be right to better than a factor ~1.4.
    step : float
        Relative grid step of the search.
    min_z : float
        Smallest comb significance trusted (3: chosen on simulated tuning frames, seed 777).
    min_columns : int
        Fewer columns: the prior is kept.
    min_margin : float
        The comb's score must beat every other local maximum of the score (periods more
        than 3 % away: the comb's side lobes at ``u k / (k ± 1)`` and chance peaks) by this
        much: two near-equal peaks are not a measurement of ``u`` (simulated clean frames,
        seed 777: a wrong period wins ~1 in 10 such ties).
    intensity_sd : ndarray, shape (M,), optional
        Standard errors of the intensities: a comb is trusted only when it could be seen
        through them, i.e. when the score expected of a true comb at that period (each
        column's phase blurred by ``N(0, (sd_scale × sd / u)²)``) also reaches `min_z`. At
        SNR 2 (~1 atom sd) none can, and the best of the periods searched exceeds 3 by
        chance in ~1 frame of 20 (simulated, tilt-modelled intensities): such a comb would
        fix a wrong unit.
    sd_scale : float
        Multiplies `intensity_sd` (~1.5: its underestimate, see :func:`fit_columns`).

    Returns
    -------
    UnitFit
    """
    i = np.asarray(intensity, np.float64)
    if prior_unit is None:
        if prior_occupancy is None:
            raise ValueError("give prior_occupancy or prior_unit")
        occ = np.asarray(prior_occupancy, np.float64)
        ok = (occ >= 1) & (i > 0)
        if not ok.any():
            raise ValueError("no column with a positive intensity and prior occupancy")
        prior_unit = float(np.median(i[ok] / occ[ok]))
    u0 = float(prior_unit)
    if len(i) < min_columns or not u0 > 0:
        return UnitFit(u0, u0, 0.0, False)
    grid = u0 * np.exp(np.arange(np.log(search[0]), np.log(search[1]), step))
    k = np.maximum(i / u0, 1.0)
    # Phase noise grows with the occupancy (Poisson): thick columns weigh less.
    wgt = 1.0 / np.sqrt(k)
    score = np.cos(2 * np.pi * i[None, :] / grid[:, None]) @ wgt
    z = score / np.sqrt(0.5 * np.sum(wgt**2))
    best = int(np.argmax(z))
    if z[best] < min_z:
        return UnitFit(u0, u0, float(z[best]), False)
    u = float(grid[best])
    peaks = np.flatnonzero((z[1:-1] > z[:-2]) & (z[1:-1] >= z[2:])) + 1
    others = peaks[np.abs(np.log(grid[peaks] / u)) > 0.03]
    if len(others) and z[best] - float(z[others].max()) < min_margin:
        return UnitFit(u0, u0, float(z[best]), False)
    if intensity_sd is not None:
        blur = sd_scale * np.asarray(intensity_sd, np.float64) / u
        z_true = float(np.exp(-2 * np.pi**2 * blur**2) @ wgt) / np.sqrt(0.5 * np.sum(wgt**2))
        if z_true < min_z:
            return UnitFit(u0, u0, float(z[best]), False)
    for _ in range(5):  # least squares on the integer comb (weights as above)
        kk = np.maximum(np.round(i / u), 1.0)
        u_new = float(np.sum(wgt * i * kk) / np.sum(wgt * kk**2))
        if abs(u_new - u) < 1e-9 * u:
            break
        u = u_new
    return UnitFit(u, u0, float(z[best]), True)


Method = Literal["combined", "count", "net"]


def count_columns(
    image: np.ndarray,
    xy_px: np.ndarray,
    *,
    pixel_size_A: float,
    spacing_A: float,
    class_probability: np.ndarray | None = None,
    prior_occupancy: np.ndarray | None = None,
    prior_unit: float | None = None,
    method: Method = "combined",
    sd_scale: float = 3.0,
    basis_sigma_A: float = 0.25,
    knot_A: float = 5.0,
    min_z: float = 3.0,
    unit: float | None = None,
) -> dict[str, np.ndarray | float | bool]:
    """Occupancy of every column by statistical atom counting (see the module docstring).

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Raw (not normalised) bright-column intensities, linear in the signal.
    xy_px : ndarray, shape (M, 2)
        Column centres (x, y) in px.
    pixel_size_A : float
        Å per px of `image`.
    spacing_A : float
        Smallest column spacing (Å).
    class_probability : ndarray, shape (M, K), optional
        The network's probabilities of occupancies 1..K per column (``find_columns``);
        needed by ``method="combined"``, and its arg-max is the default prior occupancy.
    prior_occupancy : ndarray of int, shape (M,), optional
        Occupancies setting ``u0`` (default: arg-max of `class_probability`).
    prior_unit : float, optional
        ``u0`` directly (e.g. from other frames of a series at the same dose).
    method : {"combined", "count", "net"}
        What ``occupancy`` is: the network-times-counting posterior mode, ``round(I / u)``,
        or the network's arg-max.
    sd_scale : float
        Multiplies the fitted standard error in the counting likelihood: ~1.5 corrects its
        underestimate, the rest allows for the error of ``u``; 3 was chosen on simulated
        tuning frames (seed 777; network's level at SNR 1–2, counting's on clean frames).
    basis_sigma_A, knot_A : float
        Sd of the column basis and knot spacing of the support (Å), see :func:`fit_columns`;
        chosen on the same tuning frames (probe FWHM 0.6–1.0 Å).
    min_z : float
        See :func:`estimate_unit`.
    unit : float, optional
        Use this single-atom intensity as it is (e.g. pooled over a series); no estimate.

    Returns
    -------
    dict
        Per column (M,): ``intensity``, ``intensity_sd`` (image units × px), ``background``
        (image units), ``occupancy_count`` (int >= 1), ``count_confidence`` (in [0, 1]: 1 on
        an integer of ``I / u``, 0 half-way), ``occupancy`` and ``confidence`` (by `method`;
        for "combined" the posterior probability of the chosen occupancy, and
        ``log_posterior``, shape (M, K)). Per frame:
        ``unit``, ``prior_unit``, ``comb_z`` (float) and ``from_comb`` (bool).
    """
    xy = np.asarray(xy_px, float).reshape(-1, 2)
    m = len(xy)
    probs = None if class_probability is None else np.asarray(class_probability, float)
    if probs is not None and probs.shape[0] != m:
        raise ValueError(f"class_probability has {probs.shape[0]} rows for {m} columns")
    if method == "combined" and probs is None:
        raise ValueError('method="combined" needs class_probability')
    if prior_occupancy is None and probs is not None:
        prior_occupancy = probs.argmax(axis=1) + 1
    fit = fit_columns(
        image, xy, sigma_px=basis_sigma_A / pixel_size_A, spacing_px=spacing_A / pixel_size_A,
        knot_px=knot_A / pixel_size_A,
    )  # fmt: skip
    i_col = fit["intensity"]
    if unit is not None:
        fitted = UnitFit(float(unit), float(unit), 0.0, False)
    elif m:
        fitted = estimate_unit(
            i_col, prior_occupancy=prior_occupancy, prior_unit=prior_unit, min_z=min_z,
            intensity_sd=fit["intensity_sd"],
        )  # fmt: skip
    else:
        fitted = UnitFit(float("nan"), float("nan"), 0.0, False)
    occ = assign_occupancy(
        i_col, fit["intensity_sd"], fitted.unit, class_probability=probs, method=method,
        sd_scale=sd_scale,
    )  # fmt: skip
    return {**fit, **occ, "unit": fitted.unit, "prior_unit": fitted.prior_unit,
            "comb_z": fitted.comb_z, "from_comb": fitted.from_comb}  # fmt: skip


def assign_occupancy(
    intensity: np.ndarray,
    intensity_sd: np.ndarray,
    unit: float,
    *,
    class_probability: np.ndarray | None = None,
    method: Method = "combined",
    sd_scale: float = 3.0,
) -> dict[str, np.ndarray]:
    """Occupancies from integrated intensities and a unit (see :func:`count_columns`).

    Returns ``occupancy_count``, ``count_confidence``, ``occupancy`` and ``confidence``
    (shape (M,) each); for "combined" also ``log_posterior`` (M, K): the log of the
    normalised posterior over occupancies 1..K (the input of the shape prior,
    :mod:`nptrack.segment.columns_shape`).
    """
    i_col = np.asarray(intensity, np.float64)
    m = len(i_col)
    ratio = i_col / unit if m else i_col
    occ_count = np.maximum(np.round(ratio), 1).astype(int)
    conf_count = np.clip(1 - 2 * np.abs(ratio - occ_count), 0, 1)
    out = {"occupancy_count": occ_count, "count_confidence": conf_count}
    probs = class_probability
    if method == "count":
        return {**out, "occupancy": occ_count, "confidence": conf_count}
    if method not in ("net", "combined"):
        raise ValueError(f"unknown method {method!r}; use combined, count or net")
    if probs is None:
        raise ValueError(f'method="{method}" needs class_probability')
    if m == 0:
        return {**out, "occupancy": np.zeros(0, int), "confidence": np.zeros(0)}
    probs = np.asarray(probs, np.float64)
    if method == "net":
        return {**out, "occupancy": probs.argmax(axis=1) + 1, "confidence": probs.max(axis=1)}
    k = np.arange(1, probs.shape[1] + 1)
    s = np.maximum(sd_scale * np.asarray(intensity_sd, np.float64), 1e-12 * abs(unit))[:, None]
    # Posterior over k: the network's belief times the Gaussian counting likelihood.
    logp = np.log(np.maximum(probs, 1e-6)) - (i_col[:, None] - k * unit) ** 2 / (2 * s**2)
    logp = logp - logp.max(axis=1, keepdims=True)
    post = np.exp(logp)
    norm = post.sum(axis=1, keepdims=True)
    post /= norm
    return {**out, "occupancy": k[post.argmax(axis=1)], "confidence": post.max(axis=1),
            "log_posterior": logp - np.log(norm)}  # fmt: skip
