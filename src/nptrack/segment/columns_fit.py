"""Integrated column intensities: a linear model of Gaussian columns on a smooth support.

The measuring half of statistical atom counting (:mod:`nptrack.segment.columns_count` turns
the intensities into occupancies). :func:`column_cells` assigns pixels to their nearest
column; :func:`fit_columns` fits the frame around the columns by linear least squares and
returns every column's integrated intensity above the support with its standard error.

Tilt (``model_tilt``): a crystal tilted by θ off the zone axis smears a column of depth t
into a segment of length ``t θ`` along one image direction, the same for all columns; a
thick column (~60 Å) at 1° is smeared by ~1 Å, more than the probe's sd. With one round
basis for all columns the thick columns' integrals come out low relative to the thin ones:
``I ≈ b + g k`` with an offset ``b`` of up to ~0.7 atom on simulated frames (tilts ≤ 1°),
which a shape prior cannot tell from one more atomic layer. The fit then models the smear:
a first pass with anisotropic width terms measures each column's elongation, a frame model
(one probe sd, one smear direction, a length proportional to the column's intensity) is
fitted to them, and a second pass fits every column with the probe Gaussian swept along its
own segment, each column's integral corrected for its own width.
Pure numpy / scipy; coordinates in px (x = column, y = row).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage, sparse

__all__ = ["column_cells", "fit_columns"]


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


class _Solver:
    """Least squares ``min |a x - y|`` by conjugate gradients on the normal equations.

    A direct sparse solve fills in badly once the support knots couple thousands of columns
    (4 s for 3,700 columns); CG preconditioned by each column's own block of its
    ``len(basis)`` functions (exact when the column windows do not overlap) and the knots'
    diagonal converges in tens of steps. Built once per design, solved for several images.
    """

    def __init__(
        self, a: sparse.csr_matrix, basis: tuple[np.ndarray, ...], ok: np.ndarray, m: int
    ) -> None:
        nt = len(basis)
        self.a, self.nt, self.m = a, nt, m
        self.ata = (a.T @ a).tocsr()
        self.ridge = 1e-9 * float(self.ata.diagonal().mean())  # windows leaving the frame
        blocks = np.zeros((m, nt, nt))
        j = np.broadcast_to(np.arange(m)[:, None], ok.shape)[ok]
        for t in range(nt):
            for u in range(t, nt):
                blocks[:, t, u] = blocks[:, u, t] = np.bincount(
                    j, weights=basis[t][ok] * basis[u][ok], minlength=m
                )
        self.inv = np.linalg.inv(blocks + self.ridge * np.eye(nt))
        self.knot_diag = np.maximum(self.ata.diagonal()[nt * m :], self.ridge)

    def _precondition(self, r: np.ndarray) -> np.ndarray:
        nt, m = self.nt, self.m
        out = np.empty_like(r)
        out[: nt * m] = np.einsum("mij,mj->mi", self.inv, r[: nt * m].reshape(m, nt)).ravel()
        out[nt * m :] = r[nt * m :] / self.knot_diag
        return out

    def solve(self, y: np.ndarray) -> np.ndarray:
        """Coefficients for the pixel values `y` (the design's pixels)."""
        # Plain PCG: vector products as ``(a * b).sum()`` — BLAS ``dot`` on these short
        # vectors costs ~20× more when its threads compete with other work on the machine.
        rhs = self.a.T @ y
        sol = np.zeros(self.ata.shape[0])
        r = rhs.astype(np.float64, copy=True)
        z = self._precondition(r)
        p = z.copy()
        rz = float((r * z).sum())
        stop = 1e-14 * float((rhs * rhs).sum())  # |r| < 1e-7 |rhs|: < 1e-3 atom
        for _ in range(1000):
            if float((r * r).sum()) <= stop:
                break
            q = self.ata @ p + self.ridge * p
            alpha = rz / float((p * q).sum())
            sol += alpha * p
            r -= alpha * q
            z = self._precondition(r)
            rz, rz_old = float((r * z).sum()), rz
            p = z + (rz / rz_old) * p
        return sol


def _basis(
    ux: np.ndarray, uy: np.ndarray, sigma_px: float, aniso: bool = False
) -> tuple[np.ndarray, ...]:
    """Peak-1 Gaussian ``G``, its width term ``σ² ∂G/∂σ²`` and its position terms; with
    `aniso` also the two elongation terms ``G Re((ux + i uy)² / 2σ²)`` and its Im part."""
    q = (ux**2 + uy**2) / (2 * sigma_px**2)
    g = np.exp(-q)
    out = (g, g * q, g * ux / sigma_px, g * uy / sigma_px)
    if aniso:
        out += (g * (ux**2 - uy**2) / (2 * sigma_px**2), g * ux * uy / sigma_px**2)
    return out


def _swept_basis(
    ux: np.ndarray,
    uy: np.ndarray,
    sigma_px: float,
    sx: np.ndarray,
    sy: np.ndarray,
    only_peak: bool = False,
) -> tuple[np.ndarray, ...]:
    """:func:`_basis` averaged along each column's segment ``(sx, sy)`` (centred, px;
    broadcasting against `ux`): a tilted column's profile (`only_peak`: ``G`` alone)."""
    length = float(np.max(np.hypot(sx, sy), initial=0.0))
    n = max(1, int(np.ceil(2 * length / sigma_px)) + 1)  # sub-steps ≤ σ / 2
    acc = [np.zeros(np.broadcast(ux, sx).shape) for _ in range(1 if only_peak else 4)]
    for t in (np.arange(n) + 0.5) / n - 0.5:
        vx, vy = ux - t * sx, uy - t * sy
        if only_peak:
            acc[0] += np.exp(-(vx**2 + vy**2) / (2 * sigma_px**2))
            continue
        for a_t, b_t in zip(acc, _basis(vx, vy, sigma_px), strict=True):
            a_t += b_t
    return tuple(a_t / n for a_t in acc)


_SIG_RATIO = np.linspace(0.8, 3.0, 23)  # column sd / basis sd of the tables
_LEN_RATIO = np.linspace(0.0, 8.0, 17)  # smear length / basis sd
_SCAN_N = 81


def _lone_fit(design: list[np.ndarray], data: np.ndarray) -> np.ndarray:
    x = np.stack([d.ravel() for d in design] + [np.ones(data.size)], 1)
    return np.linalg.lstsq(x, data.ravel(), rcond=None)[0]


@lru_cache(maxsize=32)
def _lone_tables(sigma_px: float) -> dict[str, np.ndarray]:
    """How a lone column of sd ``s × sigma_px`` and smear length ``l × sigma_px`` (along x)
    projects on the round six-term basis (pixel grid, constant background): ``rho`` and
    ``elong``, its width and first elongation coefficients over its amplitude, on the grid
    ``_SIG_RATIO × _LEN_RATIO``."""
    ns, nl = len(_SIG_RATIO), len(_LEN_RATIO)
    rho, elong = np.zeros((ns, nl)), np.zeros((ns, nl))
    r1 = int(np.ceil(4 * sigma_px))
    d1y, d1x = np.mgrid[-r1 : r1 + 1, -r1 : r1 + 1].astype(float)
    round6 = list(_basis(d1x, d1y, sigma_px, aniso=True))
    for li, lr in enumerate(_LEN_RATIO):
        for si, sr in enumerate(_SIG_RATIO):
            c1 = _lone_fit(
                round6, _swept_basis(d1x, d1y, sr * sigma_px, lr * sigma_px, 0.0, True)[0]
            )
            rho[si, li], elong[si, li] = c1[1] / c1[0], c1[4] / c1[0]
    return {"rho": rho, "elong": elong}


def _interp_len(table_row: np.ndarray, lr: np.ndarray) -> np.ndarray:
    return np.interp(np.clip(lr, 0.0, _LEN_RATIO[-1]), _LEN_RATIO, table_row)


def _fit_tilt(
    coef: np.ndarray, rel: np.ndarray, sigma_px: float, var: np.ndarray
) -> tuple[float, float, float]:
    """Frame model of the first pass's coefficients ``(a, b, ..., e1, e2)`` per column:
    probe sd ``s``, a smear of length ``l × rel_j`` (``× sigma_px``) at angle φ; least squares
    of ``b - a rho(s, l_j)`` and ``e - a elong(s, l_j) e^{2iφ}`` (weights: the coefficients'
    noise variances `var` of b, e1, e2) over the grid of the tables. Returns (s, l, φ)."""
    tab = _lone_tables(round(float(sigma_px) / 0.05) * 0.05)  # px: few tables
    a, b = coef[:, 0], coef[:, 1]
    e = coef[:, 4] + 1j * coef[:, 5]
    best = (np.inf, 1.0, 0.0, 0.0)
    scan = np.linspace(0.0, _LEN_RATIO[-1], _SCAN_N)  # finer than the tables (interpolated)
    for si in range(len(_SIG_RATIO)):
        lr = scan[:, None] * rel[None, :]  # (L, M)
        t_rho = np.stack([_interp_len(tab["rho"][si], row) for row in lr])
        t_el = np.stack([_interp_len(tab["elong"][si], row) for row in lr])
        cost_b = np.sum((b[None] - a[None] * t_rho) ** 2, axis=1) / var[0]
        proj = np.sum(a[None] * t_el * e[None], axis=1)
        cost_e = (np.sum(np.abs(e) ** 2) + np.sum((a[None] * t_el) ** 2, axis=1)
                  - 2 * np.abs(proj)) / var[1]  # fmt: skip
        cost = cost_b + cost_e
        li = int(np.argmin(cost))
        if cost[li] < best[0]:
            best = (float(cost[li]), float(_SIG_RATIO[si]), float(scan[li]),
                    float(np.angle(proj[li])) / 2)  # fmt: skip
    return best[1], best[2], best[3]


def _design(
    img: np.ndarray,
    xy: np.ndarray,
    cells: np.ndarray,
    sigma_px: float,
    knot_px: float,
    aniso: bool,
    smear: np.ndarray | None,
) -> dict:
    """Sparse design matrix of the column terms and the bilinear support knots."""
    h, w = img.shape
    m = len(xy)
    pix = np.flatnonzero(cells)
    rank = np.full(h * w, -1)
    rank[pix] = np.arange(len(pix))
    half = 0.0 if smear is None else 0.5 * float(np.max(np.hypot(*smear.T), initial=0.0))
    r = int(np.ceil(4 * sigma_px + half))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    ix, iy = np.round(xy[:, 0]).astype(int), np.round(xy[:, 1]).astype(int)
    wx, wy = ix[:, None] + dx.ravel()[None], iy[:, None] + dy.ravel()[None]
    inside = (wx >= 0) & (wy >= 0) & (wx < w) & (wy < h)
    row = rank[np.clip(wy, 0, h - 1) * w + np.clip(wx, 0, w - 1)]
    ok = inside & (row >= 0)
    ux, uy = wx - xy[:, :1], wy - xy[:, 1:]
    if smear is None:
        basis = _basis(ux, uy, sigma_px, aniso=aniso)
    else:
        basis = _swept_basis(ux, uy, sigma_px, smear[:, :1], smear[:, 1:2])
    nt = len(basis)
    col_j = np.broadcast_to(np.arange(m)[:, None], ok.shape)[ok]
    rows = [row[ok]] * nt
    cols = [nt * col_j + t for t in range(nt)]
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
        cols.append(nt * m + (ky + oy) * nkx + kx + ox)
        vals.append(wt)
    cols_all = np.concatenate(cols)
    # Keep every column's parameters, drop knots no pixel touches.
    used = np.flatnonzero(np.bincount(cols_all) > 0)
    used = np.union1d(np.arange(nt * m), used)
    remap = np.zeros(int(used.max()) + 1, int)
    remap[used] = np.arange(len(used))
    a = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), remap[cols_all])),
        shape=(len(pix), len(used)),
    )
    y = img.ravel()[pix]
    solver = _Solver(a, basis, ok, m)
    sol = solver.solve(y)
    coef = np.zeros(int(used.max()) + 1)
    coef[used] = sol
    return {"coef": coef[: nt * m].reshape(m, nt), "all": coef, "nt": nt, "a": a, "y": y,
            "sol": sol, "pix": pix, "px": px, "py": py, "nkx": nkx, "solver": solver,
            "used": used}  # fmt: skip


def _model_image(
    shape: tuple[int, int], xy: np.ndarray, amount: np.ndarray, sigma_px: float, smear: np.ndarray
) -> np.ndarray:
    """Columns of integral `amount`, probe sd `sigma_px`, swept along `smear` (flat, H·W)."""
    h, w = shape
    r = int(np.ceil(4 * sigma_px + 0.5 * float(np.max(np.hypot(*smear.T), initial=0.0))))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    ix, iy = np.round(xy[:, 0]).astype(int), np.round(xy[:, 1]).astype(int)
    wx, wy = ix[:, None] + dx.ravel()[None], iy[:, None] + dy.ravel()[None]
    inside = (wx >= 0) & (wy >= 0) & (wx < w) & (wy < h)
    g = _swept_basis(
        wx - xy[:, :1], wy - xy[:, 1:], sigma_px, smear[:, :1], smear[:, 1:2], only_peak=True
    )[0]
    vals = amount[:, None] * g / (2 * np.pi * sigma_px**2)
    return np.bincount((wy * w + wx)[inside], weights=vals[inside], minlength=h * w)


def _calibrate(
    fit: dict,
    xy: np.ndarray,
    shape: tuple[int, int],
    sigma_px: float,
    smear: np.ndarray,
    width_px: float,
) -> tuple[np.ndarray, float]:
    """Per-column width correction of the swept fit by fitting a model of the frame.

    The model image (every column with its fitted integral, the probe sd ``s`` and its own
    segment, no support) is fitted by the same design: ``s`` is the sd at which the model's
    ``Σ b / Σ a`` matches the data's (from three trial sds around `width_px`), and each
    column's correction is its model integral over the fitted one at that ``s`` (the basis
    window, the neighbours and the support knots included). Returns (gain (M,), s).
    """
    m, nt = len(xy), fit["nt"]
    ca, cb = fit["coef"][:, 0], fit["coef"][:, 1]
    area = 2 * np.pi * sigma_px**2
    amount = np.maximum(area * (ca + cb), 0.0)

    def run(s_c: float) -> tuple[np.ndarray, np.ndarray]:
        y = _model_image(shape, xy, amount, s_c, smear)[fit["pix"]]
        coef = np.zeros(len(fit["all"]))
        coef[fit["used"]] = fit["solver"].solve(y)
        c = coef[: nt * m].reshape(m, nt)
        return c[:, 0], c[:, 1]

    rho_data = float(np.sum(cb) / np.sum(ca)) if np.sum(ca) > 0 else 0.0
    trials = width_px * np.array([0.85, 1.0, 1.15])
    rhos = []
    for s_c in trials:
        a_s, b_s = run(float(s_c))
        rhos.append(float(np.sum(b_s) / max(float(np.sum(a_s)), 1e-300)))
    slope = (rhos[2] - rhos[0]) / (trials[2] - trials[0])
    s_c = float(np.interp(rho_data, rhos, trials)) if np.all(np.diff(rhos) > 0) else width_px
    if slope > 0 and not rhos[0] <= rho_data <= rhos[2]:  # extrapolate, at most ±30 %
        s_c = float(np.clip(width_px + (rho_data - rhos[1]) / slope, 0.7 * width_px,
                            1.3 * width_px))  # fmt: skip
    a_s, b_s = run(s_c)
    fitted = area * (a_s + b_s)
    bright = (
        amount > 0.2 * float(np.median(amount[amount > 0])) if np.any(amount > 0) else amount > 0
    )
    response = np.full(
        m, float(np.median(fitted[bright] / amount[bright])) if bright.any() else 1.0
    )
    response[bright] = fitted[bright] / amount[bright]
    return 1.0 / np.clip(response, 0.5, 2.0), s_c


def fit_columns(
    image: np.ndarray,
    xy_px: np.ndarray,
    *,
    sigma_px: float,
    spacing_px: float,
    knot_px: float,
    reach: float = 1.0,
    model_tilt: bool = True,
    smear_px: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Integrated column intensities from a linear model of Gaussian columns on a support.

    Over the pixels within ``reach × spacing_px`` of a column,
    ``image ≈ Σ_j (a_j G_j + b_j H_j + c_j X_j + d_j Y_j) + S`` where ``G_j`` is a Gaussian
    of sd `sigma_px` and peak 1 at column ``j``, ``H_j = σ² ∂G_j/∂σ²`` lets a column be wider
    (probe, defocus), ``X_j``, ``Y_j`` (position derivatives) absorb small centre errors and
    ``S`` is a bilinear field on knots `knot_px` apart (the support). ``I_j = 2πσ² (a_j +
    b_j)`` times a width correction, the integral of the column's terms: a matched filter,
    much less sensitive to the support's graininess and to the shot noise than a sum over the
    column's cell (which a narrow `sigma_px` helps: the width term widens it).

    With `model_tilt` (the default) the column terms are swept along each column's smear
    segment (see the module docstring), estimated from a first pass that adds two elongation
    terms per column; each column's width correction then uses its own segment length.
    Without it (or when no smear is measured) all columns share the frame's mean width
    correction.

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
    model_tilt : bool
        Estimate and model the tilt smear of the columns.
    smear_px : ndarray, shape (M, 2), optional
        Use these smear segments (px, the vector from a column's first to its last atom)
        instead of estimating them (implies `model_tilt`).

    Returns
    -------
    dict of str to ndarray
        ``intensity`` (M,): ``I_j`` (image units × px); ``intensity_sd`` (M,): its standard
        error from the residual variance in the column's cell (an underestimate by ~1.5 on
        simulated frames: the support grains are not white noise); ``background`` (M,): the
        support field at each column (image units); ``column_sigma_px`` (M,): the frame's
        probe sd (Gaussian sd, px) that sets the integral's width correction;
        ``smear_px`` (M, 2): the smear segment used (zeros without tilt).
    """
    img = np.asarray(image, np.float64)
    xy = np.asarray(xy_px, float).reshape(-1, 2)
    m = len(xy)
    if m == 0:
        keys = ("intensity", "intensity_sd", "background", "column_sigma_px")
        return {**{k: np.zeros(0) for k in keys}, "smear_px": np.zeros((0, 2))}
    cells = column_cells(xy, img.shape, radius_px=reach * spacing_px)
    r = int(np.ceil(4 * sigma_px))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
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
    smear = None
    width_px = None
    if smear_px is not None:
        smear = np.asarray(smear_px, float).reshape(m, 2)
    elif model_tilt and m >= 8:
        first = _design(img, xy, cells, sigma_px, knot_px, aniso=True, smear=None)
        c1 = first["coef"]
        lone6 = np.stack(
            [b.ravel() for b in _basis(dx, dy, sigma_px, aniso=True)] + [np.ones(dx.size)], 1
        )
        cov = np.diag(np.linalg.pinv(lone6.T @ lone6))
        i1 = c1[:, 0] + c1[:, 1]
        pos = i1 > 0
        ref = float(np.percentile(i1[pos], 90)) if pos.sum() >= 8 else 0.0
        if ref > 0:
            rel = np.clip(i1 / ref, 0.0, 2.0)
            sub = slice(None, None, max(1, m // 500))  # three frame parameters: ≤ ~500 enough
            s_r, l_r, phi = _fit_tilt(c1[sub], rel[sub], sigma_px, np.array([cov[1], cov[4]]))
            width_px = s_r * sigma_px
            smear = (l_r * sigma_px * rel)[:, None] * np.array([np.cos(phi), np.sin(phi)])
    if smear is None:
        fit = _design(img, xy, cells, sigma_px, knot_px, aniso=False, smear=None)
        ca, cb = fit["coef"][:, 0], fit["coef"][:, 1]
        rho_frame = float(np.sum(cb) / np.sum(ca)) if np.sum(ca) > 0 else 0.0
        gain = np.full(m, float(np.interp(rho_frame, rho[order], gain_t[order])))
        width_px = float(np.interp(rho_frame, rho[order], s_t[order]))
    else:
        fit = _design(img, xy, cells, sigma_px, knot_px, aniso=False, smear=smear)
        ca, cb = fit["coef"][:, 0], fit["coef"][:, 1]
        if width_px is None:  # given segments: start from the round fit's mean width
            rho_frame = float(np.sum(cb) / np.sum(ca)) if np.sum(ca) > 0 else 0.0
            width_px = float(np.interp(rho_frame, rho[order], s_t[order]))
        gain, width_px = _calibrate(fit, xy, img.shape, sigma_px, smear, width_px)
    intensity = gain * (ca + cb) * 2 * np.pi * sigma_px**2
    # Standard error: residual variance of the cell times the squared weights of a lone
    # column's estimator (its 4 functions and a constant background).
    pix, nt = fit["pix"], fit["nt"]
    lab = cells.ravel()[pix] - 1
    resid2 = (fit["y"] - fit["a"] @ fit["sol"]) ** 2
    var = np.bincount(lab, weights=resid2, minlength=m) / np.maximum(
        np.bincount(lab, minlength=m), 1
    )
    wts = proj.T @ np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    sd = gain * np.sqrt(var * np.sum(wts**2)) * 2 * np.pi * sigma_px**2
    # Support field at the column centres (bilinear, same knots).
    coef, px, py, nkx = fit["all"], fit["px"], fit["py"], fit["nkx"]
    cx = np.maximum(xy[:, 0] - px.min(), 0) / knot_px
    cy = np.maximum(xy[:, 1] - py.min(), 0) / knot_px
    kcx, kcy = np.floor(cx).astype(int), np.floor(cy).astype(int)
    fcx, fcy = cx - kcx, cy - kcy
    bg = np.zeros(m)
    for ox, oy, wt in ((0, 0, (1 - fcx) * (1 - fcy)), (1, 0, fcx * (1 - fcy)),
                       (0, 1, (1 - fcx) * fcy), (1, 1, fcx * fcy)):  # fmt: skip
        idx = nt * m + (kcy + oy) * nkx + kcx + ox
        bg += wt * coef[np.clip(idx, 0, len(coef) - 1)] * (idx < len(coef))
    return {
        "intensity": intensity,
        "intensity_sd": sd,
        "background": bg,
        "column_sigma_px": np.full(m, width_px),
        "smear_px": np.zeros((m, 2)) if smear is None else smear,
    }
