"""Statistical atom counting: column occupancy from the raw ADF intensities.

Incoherent (ADF-like) imaging is linear in the atoms: the intensity a column scatters,
integrated and taken above the support underneath, is ``occupancy × u`` where ``u`` is the
integrated intensity of one atom (the faint anion columns nearby add a small share that only
rescales ``u``). The network of :mod:`nptrack.segment.columns_infer` sees per-frame normalised
images and cannot know ``u``; here the occupancy is read from the raw image instead
(statistical counting as in Van Aert et al., Nature 470, 2011; De Backer et al.,
Ultramicroscopy 134, 2013):

1. :func:`fit_columns`: one linear least-squares model of the frame around the columns,
   Gaussian columns (with width and position corrections) on a smooth support, gives every
   column's integrated intensity ``I_j`` above the support and its standard error. The
   support's thickness varies under the particle; the gaps between columns pin it.
2. :func:`estimate_unit`: the ``I_j`` cluster at integer multiples of ``u``. The prior scale
   ``u0 = median(I / prior occupancy)`` (the network's) is refined to the period of that
   comb when the comb is significant; the search range excludes the ``u/2``, ``u/3`` aliases.
3. :func:`count_columns`: ``occupancy_count = max(1, round(I / u))`` and, by default, the
   *combined* occupancy: the most probable ``k`` under the network's class probabilities
   times the counting likelihood ``N(I; k u, s²)`` (``s`` the standard error scaled by
   ``sd_scale``), so that counting decides where it is precise (high dose) and the network's
   shape prior where the shot noise dominates.

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
from scipy import ndimage, sparse

__all__ = [
    "UnitFit",
    "assign_occupancy",
    "column_cells",
    "count_columns",
    "estimate_unit",
    "fit_columns",
]


def column_cells(xy_px: np.ndarray, shape: tuple[int, int], *, radius_px: float) -> np.ndarray:
    """Label map of column cells: the nearest column within `radius_px` of every pixel.

    Parameters
    ----------
    xy_px : ndarray, shape (M, 2)
        Column centres (x, y) in px.
    shape : (int, int)
        Image (height, width).
    radius_px : float
        Largest distance of a pixel from its column (about half the column spacing).

    Returns
    -------
    ndarray of int32, shape (H, W)
        ``j + 1`` for pixels of column ``j``, 0 elsewhere.
    """
    h, w = shape
    cells = np.zeros(shape, np.int32)
    xy = np.asarray(xy_px, float).reshape(-1, 2)
    if len(xy) == 0:
        return cells
    # Nearest column by the distance transform of the columns' pixels (O(frame), whatever
    # the number of columns); a boundary pixel may go to the neighbour when two centres
    # round unevenly, which moves only the faint tails between columns.
    ix = np.clip(np.round(xy[:, 0]).astype(int), 0, w - 1)
    iy = np.clip(np.round(xy[:, 1]).astype(int), 0, h - 1)
    # Only the bounding box of the columns (one particle in a big frame costs little).
    r = int(np.ceil(radius_px)) + 1
    x0, x1 = max(int(ix.min()) - r, 0), min(int(ix.max()) + r + 1, w)
    y0, y1 = max(int(iy.min()) - r, 0), min(int(iy.max()) + r + 1, h)
    seeds = np.zeros((y1 - y0, x1 - x0), np.int32)
    seeds[iy - y0, ix - x0] = np.arange(1, len(xy) + 1)
    near_y, near_x = ndimage.distance_transform_edt(
        seeds == 0, return_distances=False, return_indices=True
    )
    owner = seeds[near_y, near_x] - 1
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d2 = (xx - xy[owner, 0]) ** 2 + (yy - xy[owner, 1]) ** 2
    inside = d2 <= radius_px**2
    cells[y0:y1, x0:x1][inside] = owner[inside] + 1
    return cells


def _solve_normal(
    a: sparse.csr_matrix, y: np.ndarray, basis: tuple[np.ndarray, ...], ok: np.ndarray, m: int
) -> np.ndarray:
    """Least squares ``min |a x - y|`` by conjugate gradients on the normal equations.

    A direct sparse solve fills in badly once the support knots couple thousands of columns
    (4 s for 3,700 columns); CG preconditioned by each column's own 4 × 4 block (exact when
    the column windows do not overlap) and the knots' diagonal converges in tens of steps.
    """
    ata = (a.T @ a).tocsr()
    rhs = a.T @ y
    n = ata.shape[0]
    ridge = 1e-9 * float(ata.diagonal().mean())  # columns whose window leaves the frame
    blocks = np.zeros((m, 4, 4))
    j = np.broadcast_to(np.arange(m)[:, None], ok.shape)[ok]
    for t in range(4):
        for u in range(t, 4):
            blocks[:, t, u] = blocks[:, u, t] = np.bincount(
                j, weights=basis[t][ok] * basis[u][ok], minlength=m
            )
    inv = np.linalg.inv(blocks + ridge * np.eye(4))
    knot_diag = np.maximum(ata.diagonal()[4 * m :], ridge)

    def precondition(r: np.ndarray) -> np.ndarray:
        out = np.empty_like(r)
        out[: 4 * m] = np.einsum("mij,mj->mi", inv, r[: 4 * m].reshape(m, 4)).ravel()
        out[4 * m :] = r[4 * m :] / knot_diag
        return out

    # Plain PCG: vector products as ``(a * b).sum()`` — BLAS ``dot`` on these short vectors
    # costs ~20× more when its threads compete with other work on the machine.
    sol = np.zeros(n)
    r = rhs.astype(np.float64, copy=True)
    z = precondition(r)
    p = z.copy()
    rz = float((r * z).sum())
    stop = 1e-14 * float((rhs * rhs).sum())  # |r| < 1e-7 |rhs|: < 1e-3 atom, also on offsets
    for _ in range(1000):
        if float((r * r).sum()) <= stop:
            break
        q = ata @ p + ridge * p
        alpha = rz / float((p * q).sum())
        sol += alpha * p
        r -= alpha * q
        z = precondition(r)
        rz, rz_old = float((r * z).sum()), rz
        p = z + (rz / rz_old) * p
    return sol


def _basis(ux: np.ndarray, uy: np.ndarray, sigma_px: float) -> tuple[np.ndarray, ...]:
    """Peak-1 Gaussian ``G``, its width term ``σ² ∂G/∂σ²`` and its position terms."""
    q = (ux**2 + uy**2) / (2 * sigma_px**2)
    g = np.exp(-q)
    return g, g * q, g * ux / sigma_px, g * uy / sigma_px


def fit_columns(
    image: np.ndarray,
    xy_px: np.ndarray,
    *,
    sigma_px: float,
    spacing_px: float,
    knot_px: float,
    reach: float = 1.0,
) -> dict[str, np.ndarray]:
    """Integrated column intensities from a linear model of Gaussian columns on a support.

    Over the pixels within ``reach × spacing_px`` of a column,
    ``image ≈ Σ_j (a_j G_j + b_j H_j + c_j X_j + d_j Y_j) + S`` where ``G_j`` is a Gaussian
    of sd `sigma_px` and peak 1 at column ``j``, ``H_j = σ² ∂G_j/∂σ²`` lets a column be wider
    (probe, defocus, the smear of a tilted column), ``X_j``, ``Y_j`` (position derivatives)
    absorb small centre errors and ``S`` is a bilinear field on knots `knot_px` apart (the
    support). ``I_j = 2πσ² (a_j + b_j)``, the integral of the column's terms: a matched
    filter, much less sensitive to the support's graininess and to the shot noise than a sum
    over the column's cell (which a narrow `sigma_px` helps: the width term widens it).

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Raw intensities (linear in the signal; any gain and offset).
    xy_px : ndarray, shape (M, 2)
        Column centres (x, y) in px.
    sigma_px : float
        Sd of the basis Gaussian (px).
    spacing_px : float
        Smallest column spacing (px).
    knot_px : float
        Knot spacing of the support field (px).
    reach : float
        Pixels fitted: within ``reach × spacing_px`` of a column.

    Returns
    -------
    dict of str to ndarray
        ``intensity`` (M,): ``I_j`` (image units × px); ``intensity_sd`` (M,): its standard
        error from the residual variance in the column's cell (an underestimate by ~1.5 on
        simulated frames: the support grains are not white noise); ``background`` (M,): the
        support field at each column (image units); ``column_sigma_px`` (M,): the frame's
        mean column width (Gaussian sd, px) that sets the integral's width correction.
    """
    img = np.asarray(image, np.float64)
    h, w = img.shape
    xy = np.asarray(xy_px, float).reshape(-1, 2)
    m = len(xy)
    if m == 0:
        keys = ("intensity", "intensity_sd", "background", "column_sigma_px")
        return {k: np.zeros(0) for k in keys}
    cells = column_cells(xy, img.shape, radius_px=reach * spacing_px)
    pix = np.flatnonzero(cells)
    rank = np.full(h * w, -1)
    rank[pix] = np.arange(len(pix))
    r = int(np.ceil(4 * sigma_px))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    ix, iy = np.round(xy[:, 0]).astype(int), np.round(xy[:, 1]).astype(int)
    wx, wy = ix[:, None] + dx.ravel()[None], iy[:, None] + dy.ravel()[None]
    inside = (wx >= 0) & (wy >= 0) & (wx < w) & (wy < h)
    row = rank[np.clip(wy, 0, h - 1) * w + np.clip(wx, 0, w - 1)]
    ok = inside & (row >= 0)
    basis = _basis(wx - xy[:, :1], wy - xy[:, 1:], sigma_px)
    col_j = np.broadcast_to(np.arange(m)[:, None], ok.shape)[ok]
    rows = [row[ok]] * 4
    cols = [4 * col_j + t for t in range(4)]
    vals = [b[ok] for b in basis]
    # Bilinear support field: 4 knots per pixel.
    py, px = np.divmod(pix, w)
    gx, gy = (px - px.min()) / knot_px, (py - py.min()) / knot_px
    kx, ky = np.floor(gx).astype(int), np.floor(gy).astype(int)
    fx, fy = gx - kx, gy - ky
    nkx = int(kx.max()) + 2
    for ox, oy, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                       (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):  # fmt: skip
        rows.append(np.arange(len(pix)))
        cols.append(4 * m + (ky + oy) * nkx + kx + ox)
        vals.append(wt)
    cols_all = np.concatenate(cols)
    # Keep every column's 4 parameters, drop knots no pixel touches.
    used = np.flatnonzero(np.bincount(cols_all) > 0)
    used = np.union1d(np.arange(4 * m), used)
    remap = np.zeros(int(used.max()) + 1, int)
    remap[used] = np.arange(len(used))
    a = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), remap[cols_all])),
        shape=(len(pix), len(used)),
    )
    y = img.ravel()[pix]
    sol = _solve_normal(a, y, basis, ok, m)
    coef = np.zeros(int(used.max()) + 1)
    coef[used] = sol
    ca, cb = coef[0 : 4 * m : 4], coef[1 : 4 * m : 4]
    lone = np.stack([b.ravel() for b in _basis(dx, dy, sigma_px)] + [np.ones(dx.size)], 1)
    proj = np.linalg.pinv(lone.T @ lone) @ lone.T
    # The width term is first order in σ²: for columns much wider than the basis a + b
    # falls short of the integral. Correct with the frame's mean width: the sd at which a
    # lone Gaussian projects to the same b / a has integral ``gain × 2πσ²(a + b)``.
    s_t = sigma_px * np.linspace(0.6, 3.0, 121)
    ab = np.array([proj[:2] @ np.exp(-(dx**2 + dy**2).ravel() / (2 * s**2)) for s in s_t])
    rho = ab[:, 1] / ab[:, 0]
    gain_t = s_t**2 / (sigma_px**2 * ab.sum(axis=1))
    order = np.argsort(rho)
    rho_frame = float(np.sum(cb) / np.sum(ca)) if np.sum(ca) > 0 else 0.0
    gain = float(np.interp(rho_frame, rho[order], gain_t[order]))
    width_px = float(np.interp(rho_frame, rho[order], s_t[order]))
    intensity = gain * (ca + cb) * 2 * np.pi * sigma_px**2
    # Standard error: residual variance of the cell times the squared weights of a lone
    # column's estimator (its 4 functions and a constant background).
    lab = cells.ravel()[pix] - 1
    resid2 = (y - a @ sol) ** 2
    var = np.bincount(lab, weights=resid2, minlength=m) / np.maximum(
        np.bincount(lab, minlength=m), 1
    )
    wts = proj.T @ np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    sd = gain * np.sqrt(var * np.sum(wts**2)) * 2 * np.pi * sigma_px**2
    # Support field at the column centres (bilinear, same knots).
    cx = np.maximum(xy[:, 0] - px.min(), 0) / knot_px
    cy = np.maximum(xy[:, 1] - py.min(), 0) / knot_px
    kcx, kcy = np.floor(cx).astype(int), np.floor(cy).astype(int)
    fcx, fcy = cx - kcx, cy - kcy
    bg = np.zeros(m)
    for ox, oy, wt in ((0, 0, (1 - fcx) * (1 - fcy)), (1, 0, fcx * (1 - fcy)),
                       (0, 1, (1 - fcx) * fcy), (1, 1, fcx * fcy)):  # fmt: skip
        idx = 4 * m + (kcy + oy) * nkx + kcx + ox
        bg += wt * coef[np.clip(idx, 0, len(coef) - 1)] * (idx < len(coef))
    return {
        "intensity": intensity,
        "intensity_sd": sd,
        "background": bg,
        "column_sigma_px": np.full(m, width_px),
    }


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
        for "combined" the posterior probability of the chosen occupancy). Per frame:
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
            i_col, prior_occupancy=prior_occupancy, prior_unit=prior_unit, min_z=min_z
        )
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
    (shape (M,) each).
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
    post = np.exp(logp - logp.max(axis=1, keepdims=True))
    post /= post.sum(axis=1, keepdims=True)
    return {**out, "occupancy": k[post.argmax(axis=1)], "confidence": post.max(axis=1)}
