"""3D shape prior for column occupancy: a convex faceted particle on the known lattice.

Per-column atom counting (:mod:`nptrack.segment.columns_count`) is limited by the shot noise:
at SNR 2 even a counter that knows everything but the noise gets ~30 % of the columns exactly
right. The columns of one particle are not independent, though: a crystalline nanoparticle
is a polyhedron cut from a known lattice, so once its facets are placed, every column's
occupancy is the number of lattice sites of that column inside it (atom counting followed by
a 3D reconstruction, as in Van Aert et al., Nature 470, 2011; De Backer et al., Nanoscale 9,
2017). Here a few discrete facet positions are fitted to all columns' counting posteriors at
once, and each column then takes the occupancy its own likelihood prefers under a prior
peaked at the shape's prediction.

Physical assumptions (each is used where said):

1. **Known crystal and zone axis** (:class:`nptrack.simulate.columns.Crystal`; the column
   model's training crystal by default). The counted (heavy) species forms a 3D Bravais
   lattice (fcc for the cations of fluorite and for fcc metals), so the projected columns
   form a 2D lattice and the sites of a column are equally spaced along the beam.
2. **Convex, faceted on low-index planes**: the particle is the intersection of half-spaces
   whose normals belong to given families ({111} and {100} by default) plus a flat base
   perpendicular to the beam on either side (the support in plan view); each plane sits at
   a discrete atomic-plane position. No symmetry is assumed: every plane's distance is free,
   so the shape may be any truncated, asymmetric polyhedron of those facets.
3. **Rigid lattice in the image**: in-plane rotation, lattice offset and a small affine
   distortion (scan drift, pixel-size error, ≤ `max_strain`) are fitted to the detected
   column positions; tilts are small enough that columns stay columns.
4. **Point defects are rare**: vacancies and adatoms move a column by ±1 (probability
   `p_one`) or ±2 atoms (`p_two`) from the shape's prediction; anything else is allowed
   with a small floor (`p_floor`), so a column whose own evidence is decisive keeps it.

Where these fail (too few columns, columns not on the lattice, a shape that does not explain
the posteriors better than no shape, see :func:`shape_occupancy`), the input posterior's mode
(``nptrack columns --occupancy combined``) is kept.

Coordinates: image px (x = column, y = row) in and out; the crystal's zone-axis frame in Å
inside (x along ``Crystal.x_axis``, z along the beam). Pure numpy / scipy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import permutations, product

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from nptrack.simulate.columns import Crystal

__all__ = [
    "ColumnLattice",
    "LatticeFit",
    "ShapeFit",
    "column_lattice",
    "fit_column_lattice",
    "fit_shape",
    "shape_occupancy",
]

_EPS_A = 1e-3  # sites this close to a plane count as on it (Å)


@dataclass(frozen=True)
class ColumnLattice:
    """The counted species' columns of a crystal seen along its zone axis.

    Attributes
    ----------
    basis_A : ndarray, shape (2, 2)
        Rows: the 2D lattice vectors b1, b2 of the projected columns (Å, zone-axis frame,
        right-handed, Gauss-reduced).
    period_A : float
        Site spacing along a column (Å).
    z_step_A : ndarray, shape (2,)
        Column ``(i, j)`` has its sites at ``z = i z1 + j z2 + m × period`` (Å).
    normals : ndarray, shape (P, 3)
        Unit plane normals in the zone-axis frame (the facet families, then ±beam).
    plane_step_A : ndarray, shape (P,)
        Spacing of the atomic planes of each normal (Å); plane index ``t`` keeps the sites
        with ``n · r <= t × step``.
    family : tuple of str
        Family of every normal ("111", "100", "base").
    """

    basis_A: np.ndarray
    period_A: float
    z_step_A: np.ndarray
    normals: np.ndarray
    plane_step_A: np.ndarray
    family: tuple[str, ...]

    @property
    def spacing_A(self) -> float:
        """Smallest projected column distance (Å)."""
        b1, b2 = self.basis_A
        return float(min(np.hypot(*b1), np.hypot(*b2), np.hypot(*(b1 - b2))))


def _family_normals(hkl: tuple[int, int, int]) -> list[np.ndarray]:
    out: list[tuple[int, ...]] = []
    for perm in set(permutations(hkl)):
        for signs in product((-1, 1), repeat=3):
            v = tuple(int(s * p) for s, p in zip(signs, perm, strict=True))
            if v not in out and any(v):
                out.append(v)
    return [np.asarray(v, float) / np.linalg.norm(v) for v in sorted(out)]


def column_lattice(
    crystal: Crystal,
    *,
    families: tuple[tuple[int, int, int], ...] = ((1, 1, 1), (1, 0, 0)),
    base: bool = True,
) -> ColumnLattice:
    """The projected column lattice and the facet planes of `crystal` (assumptions 1, 2).

    Parameters
    ----------
    crystal : Crystal
    families : tuple of (h, k, l)
        Facet families (all sign / permutation variants are used).
    base : bool
        Add the two planes perpendicular to the beam (a flat base on the support).

    Returns
    -------
    ColumnLattice

    Raises
    ------
    ValueError
        When the counted species is not a Bravais lattice (not handled).
    """
    a = crystal.a_A
    frac = np.array([s for sp, s in crystal.sites if sp in crystal.labelled], float)
    # Bravais: the conventional cell's sites are all lattice translations of the first.
    trans = (frac - frac[0]) % 1.0
    keys = {tuple(np.round(f, 6) % 1.0) for f in frac}
    for t in trans:
        if {tuple(np.round((f + t) % 1.0, 6) % 1.0) for f in frac} != keys:
            raise ValueError(f"{crystal.name}: counted species is not a Bravais lattice")
    frame = crystal.frame()
    n = 3
    cells = np.array(list(product(range(-n, n + 1), repeat=3)), float)
    xyz = ((cells[:, None, :] + (frac - frac[0])[None]).reshape(-1, 3) * a) @ frame.T
    key = np.round(xyz[:, :2] / 1e-3).astype(np.int64)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    p = xyz[first, :2]
    length = np.hypot(p[:, 0], p[:, 1])
    order = np.argsort(length, kind="stable")
    nonzero = order[length[order] > 1e-6]
    b1 = p[nonzero[0]]
    b2 = None
    for q in nonzero[1:]:
        if abs(b1[0] * p[q, 1] - b1[1] * p[q, 0]) > 1e-6 * length[q] * length[nonzero[0]]:
            b2 = p[q]
            break
    assert b2 is not None
    if b1[0] * b2[1] - b1[1] * b2[0] < 0:
        b2 = -b2
    basis = np.stack([b1, b2])
    origin_col = int(np.argmin(length))
    z0 = np.sort(xyz[inverse == origin_col, 2])
    period = float(np.min(np.diff(z0)))

    def z_of(v: np.ndarray) -> float:
        col = int(np.argmin(np.hypot(*(p - v).T)))
        return float(xyz[inverse == col, 2].min() % period)

    z_step = np.array([z_of(b1), z_of(b2)])
    normals: list[np.ndarray] = []
    fam: list[str] = []
    for hkl in families:
        for v in _family_normals(hkl):
            normals.append(frame @ v)
            fam.append("".join(str(abs(h)) for h in hkl))
    if base:
        normals += [np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, -1.0])]
        fam += ["base", "base"]
    nrm = np.stack(normals)
    steps = []
    for v in nrm:
        ds = np.diff(np.sort(xyz @ v))
        steps.append(float(np.min(ds[ds > 1e-6])))
    return ColumnLattice(basis, period, z_step, nrm, np.asarray(steps), tuple(fam))


@dataclass
class LatticeFit:
    """Detected columns placed on the projected lattice (:func:`fit_column_lattice`).

    Attributes
    ----------
    ij : ndarray of int, shape (M, 2)
        Lattice indices of every column.
    affine_A : ndarray, shape (2, 2)
        Rows: the images of b1, b2 in the frame (Å): ``xy ≈ ij @ affine + offset``.
    offset_A : ndarray, shape (2,)
    residual_A : ndarray, shape (M,)
        Distance of each column from its lattice position (Å).
    on_lattice : ndarray of bool, shape (M,)
        Residual below the tolerance and no other column on the same site.
    rotation_deg : float
        In-plane rotation of the crystal (deg).
    strain : float
        Largest relative deviation of the affine map from a rotation.
    """

    ij: np.ndarray
    affine_A: np.ndarray
    offset_A: np.ndarray
    residual_A: np.ndarray
    on_lattice: np.ndarray
    rotation_deg: float
    strain: float


def _rot(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def fit_column_lattice(
    xy_A: np.ndarray, lattice: ColumnLattice, *, tolerance: float = 0.3, max_pairs: int = 4000
) -> LatticeFit:
    """Rotation, offset and affine distortion of the lattice from column positions.

    Parameters
    ----------
    xy_A : ndarray, shape (M, 2)
        Column positions (Å) in the image (x, y), M >= 3.
    lattice : ColumnLattice
    tolerance : float
        Largest residual of an on-lattice column, as a share of the column spacing.
    max_pairs : int
        Neighbour pairs used for the rotation search (a random subset beyond).

    Returns
    -------
    LatticeFit
    """
    xy = np.asarray(xy_A, float).reshape(-1, 2)
    m = len(xy)
    b = lattice.basis_A
    spacing = lattice.spacing_A
    tol = tolerance * spacing
    # Lattice vectors up to the pair radius (the nearest few shells).
    reach = 1.2 * max(np.hypot(*b[0]), np.hypot(*b[1]))
    g = np.array(list(product(range(-3, 4), repeat=2)), float)
    e = g @ b
    keep = (np.hypot(*e.T) > 1e-6) & (np.hypot(*e.T) <= reach)
    e_tree = cKDTree(e[keep])
    pairs = cKDTree(xy).query_pairs(1.05 * reach, output_type="ndarray")
    if len(pairs) == 0:
        ij = np.zeros((m, 2), int)
        return LatticeFit(ij, b.copy(), xy[0].copy(), np.full(m, np.inf),
                          np.zeros(m, bool), 0.0, np.inf)  # fmt: skip
    if len(pairs) > max_pairs:
        pairs = pairs[np.random.default_rng(0).choice(len(pairs), max_pairs, replace=False)]
    v = xy[pairs[:, 1]] - xy[pairs[:, 0]]

    def score(thetas: np.ndarray) -> np.ndarray:
        c, s = np.cos(thetas)[:, None], np.sin(thetas)[:, None]
        # Rotate the image vectors back into the crystal frame (by -theta).
        vx, vy = c * v[:, 0] + s * v[:, 1], -s * v[:, 0] + c * v[:, 1]
        d, _ = e_tree.query(np.stack([vx.ravel(), vy.ravel()], 1))
        return np.minimum(d.reshape(len(thetas), -1) ** 2, tol**2).sum(axis=1)

    grid = np.deg2rad(np.arange(0.0, 360.0, 1.0))
    th = float(grid[np.argmin(score(grid))])
    for width, step in ((1.0, 0.05), (0.06, 0.005)):
        fine = th + np.deg2rad(np.arange(-width, width + step / 2, step))
        th = float(fine[np.argmin(score(fine))])
    # Local affine map from the pairs: each pair vector is a lattice vector.
    rb = b @ _rot(th).T  # rows: rotated b1, b2
    dij = np.round(np.linalg.solve(rb.T, v.T).T)
    good = np.hypot(*(dij @ rb - v).T) < tol
    aff = rb.copy()
    if good.sum() >= 3 and np.linalg.matrix_rank(dij[good]) == 2:
        aff = np.linalg.lstsq(dij[good], v[good], rcond=None)[0]
    # Global indices from the column nearest the centroid, then the affine fit with offset.
    origin = xy[int(np.argmin(np.hypot(*(xy - xy.mean(0)).T)))]
    off = origin.copy()
    ij = np.zeros((m, 2), int)
    res = np.full(m, np.inf)
    for _ in range(4):
        ij = np.round(np.linalg.solve(aff.T, (xy - off).T).T).astype(int)
        res = np.hypot(*(ij @ aff + off - xy).T)
        ok = res < tol
        if ok.sum() < 3 or np.linalg.matrix_rank(ij[ok]) < 2:
            break
        design = np.column_stack([ij[ok], np.ones(int(ok.sum()))])
        sol = np.linalg.lstsq(design, xy[ok], rcond=None)[0]
        aff, off = sol[:2], sol[2]
    ij = np.round(np.linalg.solve(aff.T, (xy - off).T).T).astype(int)
    res = np.hypot(*(ij @ aff + off - xy).T)
    on = res < tol
    # One column per site: the nearest keeps it.
    order = np.argsort(res, kind="stable")
    seen: set[tuple[int, int]] = set()
    for k in order:
        key = (int(ij[k, 0]), int(ij[k, 1]))
        if key in seen:
            on[k] = False
        elif on[k]:
            seen.add(key)
    sv = np.linalg.svd(np.linalg.solve(b, aff), compute_uv=False)
    rot = np.linalg.solve(b, aff)
    theta = float(np.degrees(np.arctan2(rot[0, 1] - rot[1, 0], rot[0, 0] + rot[1, 1])))
    strain = float(np.max(np.abs(sv - 1)))
    return LatticeFit(ij, aff, off, res, on, theta % 360.0, strain)


@dataclass
class ShapeFit:
    """A fitted polyhedron and the occupancies it predicts (:func:`fit_shape`).

    Attributes
    ----------
    plane_index : ndarray of int, shape (P,)
        Position of every plane (in units of its atomic-plane step).
    predicted : ndarray of int, shape (M,)
        Sites inside the shape in each detected column (0: outside).
    predicted_missing : ndarray of int, shape (Q,)
        The same for the undetected lattice positions considered.
    score : float
        Sum over the columns of the log marginal likelihood under the shape (nats).
    gain_per_column : float
        ``(score - flat - penalty) / M``: evidence for the shape over a flat prior per
        column (``flat = Σ_j log mean_k L_j(k)``), minus a complexity penalty for the
        discrete plane choices (nats).
    sweeps : int
        Coordinate-descent sweeps run.
    """

    plane_index: np.ndarray
    predicted: np.ndarray
    predicted_missing: np.ndarray
    score: float
    gain_per_column: float
    sweeps: int


@dataclass
class _Columns:
    """Geometry of the columns considered in a fit (detected first, then missing)."""

    a: np.ndarray  # (P, N) in-plane part of n · r
    nz: np.ndarray  # (P,)
    z0: np.ndarray  # (N,)
    period: float
    edge_on: np.ndarray  # (P,) bool
    steps: np.ndarray  # (P,)
    extra: dict = field(default_factory=dict)

    def bounds(self, thr: np.ndarray) -> np.ndarray:
        """Per plane and column: the z bound (inclined) or inside flag (edge-on).

        ``thr`` (..., P) thresholds (Å) → (..., P, N).
        """
        num = thr[..., :, None] + _EPS_A - self.a
        with np.errstate(divide="ignore", invalid="ignore"):
            zb = num / np.where(self.edge_on, 1.0, self.nz)[:, None]
        return np.where(self.edge_on[:, None], np.where(num >= 0, np.inf, -np.inf), zb)

    def count_one(self, zb: np.ndarray, pl: int, col_b: np.ndarray) -> np.ndarray:
        """:meth:`count` with plane `pl`'s bounds ``zb[pl]`` (P, N) replaced by each row of
        `col_b` (C, N) → (C, N); O(C N) (the other planes are reduced once)."""
        others = np.arange(len(self.nz)) != pl
        up = (self.nz > 1e-9) & others
        lo = (self.nz < -1e-9) & others
        edge = self.edge_on & others
        zhi = np.min(np.where(up[:, None], zb, np.inf), axis=0)
        zlo = np.max(np.where(lo[:, None], zb, -np.inf), axis=0)
        inside = np.all(np.where(edge[:, None], zb > 0, True), axis=0)
        if self.edge_on[pl]:
            inside = inside & (col_b > 0)
            zhi, zlo = np.broadcast_to(zhi, col_b.shape), np.broadcast_to(zlo, col_b.shape)
        elif self.nz[pl] > 0:
            zhi, zlo = np.minimum(zhi, col_b), np.broadcast_to(zlo, col_b.shape)
        else:
            zhi, zlo = np.broadcast_to(zhi, col_b.shape), np.maximum(zlo, col_b)
        n = np.floor((zhi - self.z0) / self.period) - np.ceil((zlo - self.z0) / self.period) + 1
        return np.where(inside & np.isfinite(n), np.maximum(n, 0), 0).astype(int)

    def count(self, zb: np.ndarray) -> np.ndarray:
        """Sites between the bounds ``zb`` (..., P, N) → (..., N) int."""
        up = self.nz > 1e-9
        lo = self.nz < -1e-9
        edge = self.edge_on
        zhi = np.min(np.where(up[:, None], zb, np.inf), axis=-2)
        zlo = np.max(np.where(lo[:, None], zb, -np.inf), axis=-2)
        inside = np.all(np.where(edge[:, None], zb > 0, True), axis=-2)
        n = np.floor((zhi - self.z0) / self.period) - np.ceil((zlo - self.z0) / self.period) + 1
        return np.where(inside & np.isfinite(n), np.maximum(n, 0), 0).astype(int)


def _score_table(
    log_post: np.ndarray,
    n_missing: int,
    *,
    p_one: float,
    p_two: float,
    p_floor: float,
    p_outside: float,
    p_miss: float,
) -> np.ndarray:
    """Log marginal likelihood of every column for a predicted occupancy 0..K, (N, K + 1).

    Detected column ``j``: ``log Σ_k L_j(k) prior(k | s)`` with the defect prior of
    assumption 4 (``L_j``: its likelihood, any scale; ``s = 0``: the column lies outside
    the shape, ``p_outside`` times its mean likelihood); an
    undetected lattice position: 0 when the shape leaves it empty, ``log p_miss`` otherwise.
    """
    m, k = log_post.shape
    top = log_post.max(axis=1, keepdims=True)
    post = np.exp(log_post - top)
    prior = defect_prior(k, p_one=p_one, p_two=p_two, p_floor=p_floor)
    table = np.empty((m + n_missing, k + 1))
    # s = 0: the column's evidence under a flat prior, times the chance of an outlier.
    table[:m, 0] = np.log(p_outside) + np.log(post.mean(axis=1)) + top[:, 0]
    table[:m, 1:] = np.log(np.maximum(post @ prior.T, 1e-300)) + top
    table[m:, 0] = 0.0
    table[m:, 1:] = np.log(p_miss)
    return table


def defect_prior(k: int, *, p_one: float, p_two: float, p_floor: float) -> np.ndarray:
    """``prior[s - 1, k - 1]``: probability of occupancy k given the shape's s (K × K)."""
    s = np.arange(1, k + 1)
    d = np.abs(s[:, None] - s[None, :])
    prior = np.where(d == 0, 1 - p_one - p_two - p_floor, 0.0)
    prior = prior + np.where(d == 1, p_one / 2, 0.0) + np.where(d == 2, p_two / 2, 0.0)
    return prior + p_floor / k


def _descend(
    cols: _Columns,
    total,
    idx: np.ndarray,
    offsets: np.ndarray,
    pairs: bool,
    max_sweeps: int,
) -> tuple[np.ndarray, float, int]:
    """Coordinate descent over the plane indices: one plane at a time (``offsets`` around
    the current index), then, when that converges, pairs of planes moved by ±1 together."""
    steps, edge, n_pl = cols.steps, cols.edge_on, len(cols.steps)
    zb = cols.bounds(idx * steps)
    score = float(total(cols.count(zb)))

    def plane_bound(pl: int, trial: np.ndarray) -> np.ndarray:
        num = trial[:, None] * steps[pl] + _EPS_A - cols.a[pl][None, :]
        return np.where(num >= 0, np.inf, -np.inf) if edge[pl] else num / cols.nz[pl]

    pair_list = [(p, q) for p in range(n_pl) for q in range(p + 1, n_pl)]
    pair_moves = np.array([(u, v) for u in (-1, 1) for v in (-1, 1)])
    sweeps = 0
    while sweeps < max_sweeps:
        sweeps += 1
        changed = False
        for pl in range(n_pl):
            trial = idx[pl] + offsets
            col_b = plane_bound(pl, trial)
            sc = total(cols.count_one(zb, pl, col_b))
            j = int(np.argmax(sc))
            if sc[j] > score + 1e-9:
                idx[pl], score, zb[pl], changed = trial[j], float(sc[j]), col_b[j], True
        if changed or not pairs:
            if not changed:
                break
            continue
        for p, q in pair_list:
            bp = plane_bound(p, idx[p] + pair_moves[:, 0])
            bq = plane_bound(q, idx[q] + pair_moves[:, 1])
            zz = np.repeat(zb[None], len(pair_moves), axis=0)
            zz[:, p, :], zz[:, q, :] = bp, bq
            sc = total(cols.count(zz))
            j = int(np.argmax(sc))
            if sc[j] > score + 1e-9:
                idx[p] += pair_moves[j, 0]
                idx[q] += pair_moves[j, 1]
                zb[p], zb[q], score, changed = bp[j], bq[j], float(sc[j]), True
        if not changed:
            break
    return idx, score, sweeps


def _grid_shapes(
    cols: _Columns, lattice: ColumnLattice, centre_A: np.ndarray, m: int
) -> np.ndarray:
    """Plane indices (S, P) of the starting grid (see :func:`_initial_shapes`)."""
    nrm, steps, edge = lattice.normals, lattice.plane_step_A, cols.edge_on
    fam = np.array(lattice.family)
    is_base = fam == "base"
    hull = np.ceil((cols.a[:, :m].max(axis=1) - _EPS_A) / steps)  # all detected inside
    centre_a = nrm[:, :2] @ centre_A
    r_edge = hull * steps - centre_a
    ring = edge & (fam == "111") if np.any(edge & (fam == "111")) else edge
    r111 = float(np.mean(r_edge[ring])) if np.any(ring) else 10.0
    cands = []
    for f in (0.75, 0.9, 1.05, 1.2, 1.4):
        for rho in (1.0, 1.15, 1.3, 1.5, 1.8):
            for zc in np.arange(4) * lattice.period_A / 4:
                for cut in (None, (1.0, 0.8), (1.0, 0.6), (-1.0, 0.8), (-1.0, 0.6)):
                    r = f * r111
                    t = centre_a + nrm[:, 2] * zc + np.where(fam == "100", rho * r, r)
                    t = np.where(is_base, nrm[:, 2] * zc + 1e3, t)  # base planes open
                    if cut is not None:  # half-thickness along the beam: 1.22 r
                        t = np.where(is_base & (nrm[:, 2] == cut[0]),
                                     nrm[:, 2] * zc + 1.2247 * r * cut[1], t)  # fmt: skip
                    cands.append(np.where(edge, hull, np.round(t / steps)))
    return np.asarray(cands)


def _initial_shapes(
    cols: _Columns, lattice: ColumnLattice, centre_A: np.ndarray, m: int, total, n: int
) -> np.ndarray:
    """The `n` best distinct starting shapes (plane indices, (n, P)) of a grid of truncated
    octahedra (assumption 2): the outline's (edge-on) planes at the hull of the detected
    columns, the inclined ones at a size, {100} / {111} ratio, depth centre and base cut."""
    if "grid" not in cols.extra:
        cols.extra["grid"] = _grid_shapes(cols, lattice, centre_A, m)
    cand = cols.extra["grid"]
    steps = lattice.plane_step_A
    # The grid's occupancies do not depend on the likelihoods: kept for the next call on the
    # same columns (a scan of the unit re-scores them only).
    if "grid_occ" not in cols.extra:
        cols.extra["grid_occ"] = np.concatenate(
            [cols.count(cols.bounds(c * steps)) for c in np.array_split(cand, 8)]
        )
    scores = total(cols.extra["grid_occ"])
    out: list[np.ndarray] = []
    for i in np.argsort(scores)[::-1]:
        if not any(np.array_equal(cand[i], o) for o in out):
            out.append(cand[i])
        if len(out) == n:
            break
    return np.asarray(out)


def fit_shape(
    ij: np.ndarray,
    log_post: np.ndarray,
    lattice: ColumnLattice,
    *,
    missing_ij: np.ndarray | None = None,
    p_one: float = 0.15,
    p_two: float = 0.03,
    p_floor: float = 0.02,
    p_outside: float = 0.01,
    p_miss: float = 0.1,
    window: int = 3,
    max_sweeps: int = 30,
    restarts: int = 3,
    pairs: bool = True,
    init: np.ndarray | None = None,
    cache: dict | None = None,
) -> ShapeFit:
    """Plane positions of a convex faceted particle that best explain the columns.

    Maximises ``Σ_j log Σ_k P_j(k) prior(k | s_j(planes))`` over the integer plane indices,
    where ``s_j`` is the number of lattice sites of column ``j`` inside the polyhedron
    (assumptions 1, 2, 4 of the module): a grid of truncated octahedra (size, {100} ratio,
    depth centre, base cut) around the outline of the detected columns, then coordinate
    descent over one plane at a time (±`window` planes per move).

    Parameters
    ----------
    ij : ndarray of int, shape (M, 2)
        Lattice indices of the detected columns (:func:`fit_column_lattice`).
    log_post : ndarray, shape (M, K)
        Log of each column's occupancy likelihood (or posterior; any per-column constant)
        for 1..K (K: "K or more"). Unnormalised, scores of different inputs (e.g. of
        different single-atom intensities) compare.
    lattice : ColumnLattice
    missing_ij : ndarray of int, shape (Q, 2), optional
        Lattice positions in the field of view where no column was detected.
    p_one, p_two, p_floor : float
        Defect prior: a column differs from the shape by ±1 / ±2 atoms with these
        probabilities, anything else with `p_floor`.
    p_outside : float
        Probability that a detected column lies outside the shape (adatom, false detection).
    p_miss : float
        Probability that a column the shape predicts was not detected.
    window : int
        Plane positions tried on each side of the current one per move.
    max_sweeps : int
    restarts : int
        Descents started from this many of the best distinct grid shapes.
    pairs : bool
        Also try moving two planes at once by ±1 when single moves converge.
    init : ndarray of int, shape (P,), optional
        Start the descent here (e.g. a previous fit) instead of the grid.
    cache : dict, optional
        Shared by calls on the same columns (and lattice): the geometry and the starting
        grid's occupancies are computed once.

    Returns
    -------
    ShapeFit
    """
    ij = np.asarray(ij, int).reshape(-1, 2)
    lp = np.asarray(log_post, float)
    m, k = lp.shape
    miss = np.zeros((0, 2), int) if missing_ij is None else np.asarray(missing_ij, int)
    all_ij = np.concatenate([ij, miss.reshape(-1, 2)])
    p = all_ij @ lattice.basis_A
    z0 = (all_ij @ lattice.z_step_A) % lattice.period_A
    nrm = lattice.normals
    steps = lattice.plane_step_A
    key = (all_ij.tobytes(), m)
    if cache is not None and cache.get("key") == key:
        cols = cache["cols"]
    else:
        cols = _Columns(
            a=nrm[:, :2] @ p.T, nz=nrm[:, 2], z0=z0, period=lattice.period_A,
            edge_on=np.abs(nrm[:, 2]) < 1e-9, steps=steps,
        )  # fmt: skip
        if cache is not None:
            cache.update(key=key, cols=cols)
    table = _score_table(lp, len(miss), p_one=p_one, p_two=p_two, p_floor=p_floor,
                         p_outside=p_outside, p_miss=p_miss)  # fmt: skip
    rows = np.arange(len(all_ij))

    def total(occ: np.ndarray) -> np.ndarray:
        return table[rows, np.minimum(occ, k)].sum(axis=-1)

    offsets = np.arange(-window, window + 1)
    if init is not None:
        starts = np.asarray(init, float).reshape(1, -1)
    else:
        starts = _initial_shapes(cols, lattice, p[:m].mean(axis=0), m, total, restarts)
    best, best_score, sweeps = starts[0].copy(), -np.inf, 0
    for start in starts:
        idx, sc0, n_sw = _descend(cols, total, start.copy(), offsets, pairs, max_sweeps)
        sweeps += n_sw
        if sc0 > best_score:
            best, best_score = idx, sc0
    occ = cols.count(cols.bounds(best * steps))
    penalty = len(nrm) * np.log(2 * window + 1)
    top = lp.max(axis=1)
    flat = float(np.sum(np.log(np.mean(np.exp(lp - top[:, None]), axis=1)) + top))
    gain = (best_score - flat - penalty) / max(m, 1)
    return ShapeFit(best.astype(int), occ[:m], occ[m:], best_score, float(gain), sweeps)


def _scan_unit(
    loglike,
    ij: np.ndarray,
    intensity: np.ndarray,
    lattice: ColumnLattice,
    missing: np.ndarray | None,
    unit: float,
    log_range: tuple[float, float],
    step: float,
    fit_offset: bool,
    min_columns: int,
    fit_kw: dict,
) -> tuple[float, float, ShapeFit]:
    """Best (u, b, quick shape) of a scan of the single-atom intensity ``u``.

    ``loglike(u, b)`` gives the columns' log likelihoods (M, K). A coarse pass (2 steps)
    over the range; at each ``u`` one descent from the grid of starting shapes with
    ``b = 0`` (a start warm from another scale keeps its layers), then ``b`` from that
    shape's occupancies (median of ``I - u s`` over unsaturated columns inside, clipped to
    [0, 1] atom) and a warm descent with it; then the two steps beside the best.
    """
    best: list = []
    cache: dict = fit_kw.get("cache") or {}
    fit_kw = {k: v for k, v in fit_kw.items() if k != "cache"}

    def consider(u_try: float, b_try: float, init: np.ndarray | None) -> ShapeFit:
        lp = loglike(u_try, b_try)
        f_try = fit_shape(ij, lp, lattice, missing_ij=missing, restarts=1, pairs=False,
                          init=init, cache=cache, **fit_kw)  # fmt: skip
        if not best or f_try.score > best[0]:
            best[:] = [f_try.score, u_try, b_try, f_try]
        return f_try

    def offset(f_try: ShapeFit, u_try: float, k: int) -> float | None:
        s_try = np.minimum(f_try.predicted, k)
        ok = (s_try > 0) & (s_try < k)
        if ok.sum() < min_columns:
            return None
        rel = float(np.median(intensity[ok] - u_try * s_try[ok])) / u_try
        return float(np.clip(rel, 0.0, 1.0)) * u_try

    def quick(u_try: float, init: np.ndarray | None) -> None:
        f0 = consider(u_try, 0.0, init)
        if fit_offset:
            b_new = offset(f0, u_try, loglike(u_try, 0.0).shape[1])
            if b_new is not None and b_new > 0:
                consider(u_try, b_new, f0.plane_index)

    lo, hi = log_range
    for x in np.concatenate([np.arange(0.0, hi + 1e-9, 2 * step),
                             np.arange(-2 * step, lo - 1e-9, -2 * step)]):  # fmt: skip
        quick(unit * np.exp(x), None)
    u_c, warm = best[1], best[3].plane_index
    for x in (-step, step):
        if lo - 1e-9 <= np.log(u_c / unit) + x <= hi + 1e-9:
            quick(u_c * np.exp(x), warm)
    _, u, b, f = best
    return float(u), float(b), f


def _clusters(xy_A: np.ndarray, reach_A: float) -> np.ndarray:
    """Connected groups of columns (neighbours within `reach_A`): one per particle."""
    m = len(xy_A)
    pairs = cKDTree(xy_A).query_pairs(reach_A, output_type="ndarray")
    graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
    return connected_components(graph, directed=False)[1]


def shape_occupancy(
    xy_px: np.ndarray,
    intensity: np.ndarray,
    intensity_sd: np.ndarray,
    unit: float,
    class_probability: np.ndarray,
    *,
    pixel_size_A: float,
    crystal: Crystal,
    frame_shape: tuple[int, int] | None = None,
    lattice: ColumnLattice | None = None,
    sd_scale: float = 1.5,
    net_weight: float = 0.3,
    combined_sd_scale: float = 3.0,
    unit_range: tuple[float, float] = (0.75, 1.33),
    unit_step: float = 0.03,
    fit_offset: bool = True,
    unit_trusted: bool = False,
    trusted_range: tuple[float, float] = (0.97, 1.03),
    min_columns: int = 12,
    min_on_lattice: float = 0.85,
    max_strain: float = 0.1,
    min_gain: float = 0.3,
    p_one: float = 0.15,
    p_two: float = 0.03,
    p_floor: float = 0.02,
    p_outside: float = 0.01,
    p_miss: float = 0.1,
) -> dict[str, np.ndarray | list]:
    """Occupancy of every column under the 3D shape prior, or the `combined` mode (fallback).

    Per column the likelihood is the network's class probabilities (to the power
    `net_weight`) times the counting likelihood ``N(I; b + k u, (sd_scale × se)²)`` (as the
    `combined` posterior of :func:`nptrack.segment.columns_count.assign_occupancy`). Columns are
    grouped into particles (neighbours within ~1.2 column spacings); for each group the
    lattice is fitted (:func:`fit_column_lattice`), then the shape (:func:`fit_shape`, with
    the undetected lattice positions inside the frame), and every on-lattice column takes
    ``argmax_k P(k) prior(k | shape)``. The shape also tests the absolute scale: the
    particle's single-atom intensity ``u`` is scanned over `unit_range` × `unit`, a shape
    (and the offset ``b``) fitted at each, and the ``u`` of the best joint likelihood kept.

    A group keeps the `combined` mode when it has fewer than `min_columns` columns, fewer
    than `min_on_lattice` of them on the lattice, a distortion above `max_strain`, or a
    shape gain below `min_gain` nats per column (the shape does not explain the
    posteriors); so do off-lattice columns and columns the shape leaves outside.

    Parameters
    ----------
    xy_px : ndarray, shape (M, 2)
        Column centres (x, y) in px.
    intensity, intensity_sd : ndarray, shape (M,)
        Integrated column intensities and their standard errors (image units × px).
    unit : float
        The frame's single-atom intensity (:func:`~nptrack.segment.columns_count.estimate_unit`).
    class_probability : ndarray, shape (M, K)
        The network's probabilities of occupancies 1..K.
    pixel_size_A : float
        Å per px.
    crystal : Crystal
        The crystal and zone axis (assumption 1).
    frame_shape : (int, int), optional
        Image (height, width): lattice positions inside it without a detected column count
        against shapes that fill them. None: missing columns are not considered.
    lattice : ColumnLattice, optional
        Precomputed :func:`column_lattice` of `crystal`.
    sd_scale : float
        Multiplies the counting standard error (as in `assign_occupancy`; smaller than its 3
        there, which also covers the unit's error: here the unit is fitted).
    net_weight : float
        Exponent of the network's class probabilities in the column likelihood (they carry
        the network's guess of the scale; 1: as in `combined`).
    fit_offset : bool
        Fit the offset ``b`` of the calibration (else ``I ≈ u k``).
    unit_trusted : bool
        `unit` comes from a significant comb of intensities (``from_comb`` of
        `estimate_unit`): scan only `trusted_range` (the shape cannot tell an extra layer
        from an intensity offset, a precise comb can; chosen on simulated tuning frames,
        seed 777).
    combined_sd_scale : float
        `sd_scale` of the `combined` occupancies kept where the shape is not used.
    unit_range : (float, float)
        Single-atom intensities tried, relative to `unit` (``(1, 1)``: keep `unit`).
    unit_step : float
        Relative step of that scan.
    min_columns, min_on_lattice, max_strain, min_gain : see above.
    p_one, p_two, p_floor, p_outside, p_miss : float
        See :func:`fit_shape`.

    Returns
    -------
    dict
        Per column (M,): ``occupancy`` (int), ``confidence`` (posterior probability of it),
        ``occupancy_shape`` (the shape's prediction, -1 where no shape was used),
        ``shape_used`` (bool), ``unit`` (the single-atom intensity used, image units × px).
        ``particles``: one dict per group (columns, on_lattice, strain, rotation_deg,
        gain_per_column, unit, used, reason).
    """
    from nptrack.segment.columns_count import assign_occupancy

    xy = np.asarray(xy_px, float).reshape(-1, 2)
    i_col = np.asarray(intensity, float)
    i_sd = np.asarray(intensity_sd, float)
    probs = np.asarray(class_probability, float)
    m = len(xy)

    kk = np.arange(1, probs.shape[1] + 1)

    def loglike(idx: np.ndarray, u: float, b: float = 0.0) -> np.ndarray:
        """log (network's probability ** net_weight × counting likelihood), unnormalised:
        comparable across u and b (the counting sd depends on neither)."""
        sd = np.maximum(sd_scale * i_sd[idx], 1e-12 * abs(u))[:, None]
        resid = i_col[idx, None] - b - kk * u
        return net_weight * np.log(np.maximum(probs[idx], 1e-6)) - resid**2 / (2 * sd**2)

    # The fallback: exactly the `combined` occupancies of nptrack columns.
    if m:
        lp = assign_occupancy(i_col, i_sd, unit, class_probability=probs,
                              sd_scale=combined_sd_scale)["log_posterior"]  # fmt: skip
    else:
        lp = np.zeros((0, probs.shape[1]))
    post = np.exp(lp)
    occ = post.argmax(axis=1) + 1 if m else np.zeros(0, int)
    conf = post.max(axis=1) if m else np.zeros(0)
    shape_pred = np.full(m, -1)
    used = np.zeros(m, bool)
    unit_col = np.full(m, float(unit))
    info: list[dict] = []
    out = {"occupancy": occ, "confidence": conf, "occupancy_shape": shape_pred,
           "shape_used": used, "unit": unit_col, "particles": info}  # fmt: skip
    if m < min_columns or not np.isfinite(unit) or unit <= 0:
        return out
    if lattice is None:
        lattice = column_lattice(crystal)
    k = probs.shape[1]
    xy_A = xy * pixel_size_A
    reach = 1.2 * max(np.hypot(*lattice.basis_A[0]), np.hypot(*lattice.basis_A[1]))
    groups = _clusters(xy_A, reach)
    all_tree = cKDTree(xy_A)
    prior = defect_prior(k, p_one=p_one, p_two=p_two, p_floor=p_floor)
    fit_kw = dict(p_one=p_one, p_two=p_two, p_floor=p_floor, p_outside=p_outside,
                  p_miss=p_miss)  # fmt: skip
    for g in np.unique(groups):
        sel = np.flatnonzero(groups == g)
        rec: dict = {"columns": len(sel), "used": False}
        info.append(rec)
        if len(sel) < min_columns:
            rec["reason"] = "too few columns"
            continue
        lat = fit_column_lattice(xy_A[sel], lattice)
        share = float(lat.on_lattice.mean())
        rec.update(on_lattice=round(share, 3), strain=round(lat.strain, 4),
                   rotation_deg=round(lat.rotation_deg, 2))  # fmt: skip
        if share < min_on_lattice or lat.strain > max_strain:
            rec["reason"] = "not on the lattice"
            continue
        on = sel[lat.on_lattice]
        ij = lat.ij[lat.on_lattice]
        missing = None
        if frame_shape is not None:
            lo, hi = ij.min(axis=0) - 2, ij.max(axis=0) + 3
            gi, gj = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]]
            grid = np.stack([gi.ravel(), gj.ravel()], 1)
            pos = (grid @ lat.affine_A + lat.offset_A) / pixel_size_A
            h, w = frame_shape
            inside = (pos[:, 0] >= 2) & (pos[:, 1] >= 2) & (pos[:, 0] <= w - 3)
            inside &= pos[:, 1] <= h - 3
            d, _ = all_tree.query(pos * pixel_size_A)
            missing = grid[inside & (d > 0.5 * lattice.spacing_A)]
        # The particle's intensity calibration I ≈ b + u k with the shape (the shape, not
        # the network's guess of the scale, then sets the thickness): a scan of u; at each a
        # quick shape fit, the offset b (what the column fit leaves: with the tilt smear
        # modelled |b| ~0.1-0.2 atom on simulated clean frames, mostly the support's grains;
        # up to ~0.7 without) from its occupancies, a refit; the best joint likelihood wins,
        # then a full fit there.
        rng_u = trusted_range if unit_trusted else unit_range
        lo_u, hi_u = np.log(rng_u[0]), np.log(rng_u[1])
        cache: dict = {}
        u, b_off, quick_fit = _scan_unit(
            lambda uu, bb, on=on: loglike(on, uu, bb), ij, i_col[on], lattice, missing,
            float(unit), (lo_u, hi_u), unit_step, fit_offset, min_columns,
            {**fit_kw, "cache": cache},
        )  # fmt: skip
        lp_on = loglike(on, u, b_off)
        fit = fit_shape(ij, lp_on, lattice, missing_ij=missing, cache=cache, **fit_kw)
        if quick_fit.score > fit.score:
            fit = quick_fit
        s = np.minimum(fit.predicted, k)
        post_s = np.exp(lp_on - lp_on.max(axis=1, keepdims=True)) * prior[np.maximum(s, 1) - 1]
        post_s /= post_s.sum(axis=1, keepdims=True)
        final = np.where(s > 0, post_s.argmax(axis=1) + 1, lp_on.argmax(axis=1) + 1)
        rec.update(gain_per_column=round(fit.gain_per_column, 3), sweeps=fit.sweeps,
                   unit=u, offset=b_off, plane_index=fit.plane_index.tolist())  # fmt: skip
        if fit.gain_per_column < min_gain:
            rec["reason"] = "shape gain too small"
            continue
        rec["used"] = True
        inside_shape = fit.predicted > 0
        cols = on[inside_shape]
        occ[cols] = final[inside_shape]
        conf[cols] = post_s.max(axis=1)[inside_shape]
        shape_pred[on] = fit.predicted
        used[cols] = True
        unit_col[on] = u
    return out
