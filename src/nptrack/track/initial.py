"""Initial solution for the CEM tracker: gated Hungarian linking, then gap closing.

Frame-to-frame links minimise a cost that combines the squared step, normalised by the expected
Brownian step of a particle of that size, and the squared change of log intensity. The gate
scales with the mobility (χ² gate of a 2-D Gaussian step), so large slow particles are linked
tightly and small fast ones loosely. Track segments are then joined across up to
`max_gap_frames` missed detections by a second assignment (ends to starts), as in u-track.

The same links measure the data (`estimate_params`): the mean squared displacement at lags 1–3
gives the Brownian step and the localisation noise (MSD(k) = 2k·σ_B² f(d) + 4σ_loc² per axis
pair), the frame-to-frame scatter of log intensity gives the intensity tolerances.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from nptrack.track.energy import FRAME_SEP, Detections, EnergyParams, Solution, Track

__all__ = ["estimate_params", "initial_solution", "link_frames", "solve_lap"]

_GATE = 16.0  # normalised cost gate: a step of 4σ with equal intensity
_BIG = 1e9


def solve_lap(
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    cost: NDArray[np.float64],
    nonlink_row: NDArray[np.float64],
    nonlink_col: NDArray[np.float64],
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Sparse linear assignment with the option of leaving anything unlinked.

    Parameters
    ----------
    rows, cols, cost : ndarray, shape (K,)
        Candidate links and their costs.
    nonlink_row, nonlink_col : ndarray
        Price of leaving each row / column unlinked (indexed by row / column number).

    Returns
    -------
    rows, cols : ndarray
        The accepted links; the problem is split into connected components and each one is
        solved exactly with the augmented (u-track) matrix.
    """
    if rows.size == 0:
        return rows, cols
    ur, r_inv = np.unique(rows, return_inverse=True)
    uc, c_inv = np.unique(cols, return_inverse=True)
    nr, nc = ur.size, uc.size
    g = coo_matrix((np.ones(rows.size), (r_inv, nr + c_inv)), shape=(nr + nc, nr + nc))
    _, lab = connected_components(g, directed=False)
    comp = lab[r_inv]
    order = np.argsort(comp, kind="stable")
    bounds = np.flatnonzero(np.diff(comp[order])) + 1
    out_r: list[NDArray[np.int64]] = []
    out_c: list[NDArray[np.int64]] = []
    singles = np.zeros(rows.size, bool)
    counts = np.diff(np.concatenate([[0], bounds, [rows.size]]))
    first = np.concatenate([[0], bounds])
    for k0, cnt in zip(first, counts, strict=True):
        idx = order[k0 : k0 + cnt]
        if cnt == 1:
            singles[idx[0]] = True
            continue
        lr, lr_inv = np.unique(r_inv[idx], return_inverse=True)
        lc, lc_inv = np.unique(c_inv[idx], return_inverse=True)
        a, b = lr.size, lc.size
        m = np.full((a + b, b + a), _BIG)
        m[lr_inv, lc_inv] = cost[idx]
        m[np.arange(a), b + np.arange(a)] = nonlink_row[ur[lr]]
        m[a + np.arange(b), np.arange(b)] = nonlink_col[uc[lc]]
        m[a + lc_inv, b + lr_inv] = 0.0
        ri, ci = linear_sum_assignment(m)
        ok = (ri < a) & (ci < b)
        ok &= m[ri, ci] < _BIG
        out_r.append(ur[lr[ri[ok]]])
        out_c.append(uc[lc[ci[ok]]])
    s = np.flatnonzero(singles)
    s = s[cost[s] < nonlink_row[rows[s]] + nonlink_col[cols[s]]]
    out_r.append(rows[s])
    out_c.append(cols[s])
    return np.concatenate(out_r).astype(np.int64), np.concatenate(out_c).astype(np.int64)


def _link_cost(
    dets: Detections,
    a: NDArray[np.int64],
    b: NDArray[np.int64],
    var: NDArray[np.float64],
    eps: float | NDArray[np.float64],
) -> NDArray[np.float64]:
    d2 = ((dets.xy[a] - dets.xy[b]) ** 2).sum(1)
    dv = dets.log_intensity[a] - dets.log_intensity[b]
    return d2 / (2.0 * var) + dv * dv / (2.0 * eps * eps)


def _link_var(
    dets: Detections, params: EnergyParams, rows: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Variance of the observed step per axis: Brownian step plus localisation noise of both."""
    return params.step_var(dets.diameter_nm[rows]) + 2.0 * params.localisation_px**2


def link_frames(dets: Detections, params: EnergyParams) -> NDArray[np.int64]:
    """Optimal frame-to-frame links: ``nxt[i]`` is the detection row following row i, or −1."""
    n = len(dets)
    nxt = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return nxt
    pts = np.column_stack([dets.xy, dets.frame * FRAME_SEP])
    shifted = pts.copy()
    shifted[:, 2] += FRAME_SEP
    pairs = cKDTree(shifted).sparse_distance_matrix(
        cKDTree(pts), params.max_step_px, output_type="ndarray"
    )
    a = pairs["i"].astype(np.int64)
    b = pairs["j"].astype(np.int64)
    eps = 2.0 * params.intensity_tol(dets.diameter_nm[a])
    cost = _link_cost(dets, a, b, _link_var(dets, params, a), eps)
    ok = cost < _GATE
    a, b, cost = a[ok], b[ok], cost[ok]
    half = np.full(n, _GATE / 2.0)
    ra, rb = solve_lap(a, b, cost, half, half)
    nxt[ra] = rb
    return nxt


def _chains(dets: Detections, nxt: NDArray[np.int64]) -> list[NDArray[np.int64]]:
    """Follow links into chains of detection rows (one per segment)."""
    has_prev = np.zeros(len(dets), bool)
    has_prev[nxt[nxt >= 0]] = True
    chains = []
    for h in np.flatnonzero(~has_prev):
        rows = [h]
        while nxt[rows[-1]] >= 0:
            rows.append(nxt[rows[-1]])
        chains.append(np.array(rows, dtype=np.int64))
    return chains


def _close_gaps(
    dets: Detections, chains: list[NDArray[np.int64]], params: EnergyParams
) -> list[list[int]]:
    """Join chain ends to later chain starts across ≤ max_gap_frames missed frames."""
    groups = [[i] for i in range(len(chains))]
    if params.max_gap_frames < 1 or len(chains) < 2:
        return groups
    ends = np.array([c[-1] for c in chains])
    heads = np.array([c[0] for c in chains])
    head_pts = np.column_stack([dets.xy[heads], dets.frame[heads] * FRAME_SEP])
    tree = cKDTree(head_pts)
    R, C, K = [], [], []
    for gap in range(2, params.max_gap_frames + 2):
        q = np.column_stack([dets.xy[ends], (dets.frame[ends] + gap) * FRAME_SEP])
        lists = tree.query_ball_point(q, params.max_step_px * np.sqrt(gap))
        for i, js in enumerate(lists):
            for j in js:
                R.append(i)
                C.append(j)
                K.append(gap)
    if not R:
        return groups
    r, c, k = np.array(R), np.array(C), np.array(K, dtype=float)
    var = _link_var(dets, params, ends[r]) * k
    eps = 2.0 * params.intensity_tol(dets.diameter_nm[ends[r]])
    cost = _link_cost(dets, ends[r], heads[c], var, eps) + 0.5 * (k - 1)
    ok = cost < _GATE
    half = np.full(len(chains), _GATE / 2.0)
    ra, rc = solve_lap(r[ok], c[ok], cost[ok], half, half)
    follow = dict(zip(ra.tolist(), rc.tolist(), strict=True))
    has_prev = set(rc.tolist())
    out = []
    for i in range(len(chains)):
        if i in has_prev:
            continue
        g = [i]
        while g[-1] in follow:
            g.append(follow[g[-1]])
        out.append(g)
    return out


def _track_from_rows(tid: int, dets: Detections, rows: NDArray[np.int64]) -> Track:
    """A track through detection rows, linearly interpolated across missing frames."""
    f = dets.frame[rows]
    t = np.arange(f[0], f[-1] + 1)
    xy = np.column_stack([np.interp(t, f, dets.xy[rows, 0]), np.interp(t, f, dets.xy[rows, 1])])
    u = np.interp(t, f, dets.log_intensity[rows])
    det = np.full(t.size, -1, dtype=np.int64)
    det[f - f[0]] = rows
    return Track(tid, int(f[0]), xy, u, det)


def initial_solution(dets: Detections, params: EnergyParams) -> Solution:
    """Gated Hungarian frame-to-frame linking followed by gap closing.

    Returns
    -------
    Solution
        Tracks over frames ``[0, dets.n_frames − 1]``, no fusions (CEM adds them).
    """
    chains = _chains(dets, link_frames(dets, params))
    groups = _close_gaps(dets, chains, params)
    tracks: dict[int, Track] = {}
    groups.sort(key=lambda g: (int(dets.frame[chains[g[0]][0]]), int(chains[g[0]][0])))
    for tid, g in enumerate(groups):
        rows = np.concatenate([chains[i] for i in g])
        tracks[tid] = _track_from_rows(tid, dets, rows)
    return Solution(
        tracks=tracks,
        first_frame=0,
        last_frame=max(dets.n_frames - 1, 0),
        next_id=len(tracks),
    )


def estimate_params(dets: Detections, params: EnergyParams) -> EnergyParams:
    """Measure mobility, localisation noise and intensity scatter from confident links.

    The exponent of the mobility law is kept from `params` (config); its prefactor, the
    localisation noise (→ detection scale s), the intensity tolerances and the power of size
    by which ε_d grows for particles smaller than the median, the border margin and the size
    below which births and vanishing are free are set from the data.
    """
    if len(dets) < 10:
        return params
    d_ref = float(np.median(dets.diameter_nm))
    p = replace(params, reference_diameter_nm=d_ref, small_diameter_nm=0.6 * d_ref)
    nxt = link_frames(dets, p)
    chains = [c for c in _chains(dets, nxt) if c.size >= 4]
    if len(chains) < 3:
        return p
    # mean per-axis squared displacement at lags 1-4, normalised to the reference size
    dv = [np.diff(dets.log_intensity[c]) for c in chains]
    # lags the chains can hold (a 4-frame series has none at lag 4); two are needed to tell
    # the Brownian slope from the localisation offset
    lags = np.arange(1, min(4, max(c.size for c in chains) - 1) + 1)
    if lags.size < 2:
        return p
    med_d = [float(np.median(dets.diameter_nm[c])) for c in chains]  # once per chain
    msd = []
    for k in lags:
        ys = []
        for c, dc in zip(chains, med_d, strict=True):
            if c.size > k:
                f = (dc / d_ref) ** p.mobility_exponent
                d = dets.xy[c[k:]] - dets.xy[c[:-k]]
                ys.append(0.5 * (d * d).sum(1) / f)
        y = np.concatenate(ys)
        msd.append(y[y <= np.quantile(y, 0.98)].mean())  # wrong links out
    # MSD(k) = a·k + 2b: a the Brownian variance per frame, b the localisation variance
    (a, b2), *_ = np.linalg.lstsq(np.column_stack([lags, np.ones(lags.size)]), msd, rcond=None)
    a = float(max(a, 0.01))
    b = float(max(b2 / 2.0, 0.0))
    sigma = float(np.sqrt(a))
    dvv = np.concatenate(dv)
    # the scatter's power law in size: slope of log|Δ log I| on log d (a scale-free fit,
    # robust to the heavy tail) over links of particles of at least two sizes
    d_link = np.repeat(med_d, [c.size - 1 for c in chains])
    x_d = np.log(d_link / d_ref)
    k = 0.0
    if np.ptp(x_d) > 0.2:
        y_d = np.log(np.maximum(np.abs(dvv - np.median(dvv)), 1e-6))
        k = float(np.clip(np.polyfit(x_d, y_d, 1)[0], -3.0, 0.0))
    z = (dvv - np.median(dvv)) / np.exp(k * x_d)
    scatter = 1.4826 * float(np.median(np.abs(z))) / np.sqrt(2.0)
    scatter = max(scatter, 0.01)
    radius_px = 0.5 * d_ref / p.pixel_size_nm
    return replace(
        p,
        step_sigma_px=sigma,
        localisation_px=float(np.sqrt(b)),
        detection_scale_px=float(np.clip(2.5 * np.sqrt(b), 0.5, 3.0)),
        intensity_tolerance=float(np.clip(2.5 * scatter, 0.05, 0.5)),
        intensity_noise_exponent=k,
        intensity_smoothness=float(np.clip(0.3 * scatter, 0.01, 0.1)),
        # intensities at a fusion are averages over many frames: tighter than one detection
        mass_tolerance=float(np.clip(0.5 * scatter, 0.02, 0.3)),
        border_margin_px=float(max(3.0, radius_px + 3.0 * sigma)),
    )
