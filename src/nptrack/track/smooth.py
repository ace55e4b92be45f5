"""Positions written to tracks.csv: a Rauch–Tung–Striebel smoother of each track.

CEM decides which detections form a track (association); its positions are the minimum of an
energy whose weights were chosen for that decision, not for localisation. Once the tracks are
fixed, the best position of a Brownian particle given its detections is that of the linear
Gaussian model

    x_{t+1} = x_t + w_t,  w_t ~ N(0, σ²(d)),  σ²(d) = σ0² (d / d_ref)^mobility_exponent
    z_t = x_t + e_t,      e_t ~ N(0, r)

per axis, solved exactly by a Kalman filter and a Rauch–Tung–Striebel backward pass. Only a
track's *own* detections are measurements (a blob shared by two superposed particles measures
their mass-weighted centre, not either one); at the other points the CEM position is kept,
shifted by the smoother's correction interpolated from the neighbouring own points.

The two noise levels are not given: `estimate_motion_noise` finds σ0² and r by maximum
likelihood (the Kalman filter's innovations) on the tracks' own detections. With steps much
larger than the localisation error (σ0² ≫ r) the smoother gains little over a detection; its
gain grows as particles move less per frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize

from nptrack.track.energy import Detections, EnergyParams, Solution, Track
from nptrack.track.events import Event, TrackTable, find_events, solution_to_table

__all__ = [
    "estimate_motion_noise",
    "own_detections",
    "relative_step_var",
    "smooth_solution",
    "smoothed_at",
    "smoothed_xy",
]

_DIFFUSE = 1e12  # prior variance of a track's first position (px²): no prior


def own_detections(tracks: Sequence[Track], n_rows: int) -> list[NDArray[np.bool_]]:
    """Per track, the points explained by a detection no other track in `tracks` uses."""
    if not tracks:
        return []
    det = np.concatenate([t.det for t in tracks])
    counts = np.bincount(det[det >= 0], minlength=n_rows)
    return [(t.det >= 0) & (counts[np.maximum(t.det, 0)] == 1) for t in tracks]


@dataclass(frozen=True, eq=False)
class _Grid:
    """Tracks as padded columns over their joint frames [t0, t0 + T): measurements z (T, K, 2)
    where `has`, where each track lives (`alive`), the tracks' own positions `xy`, and the
    (row, column) of every track point in track order."""

    z: NDArray[np.float64]
    has: NDArray[np.bool_]
    alive: NDArray[np.bool_]
    xy: NDArray[np.float64]
    t0: int
    row: NDArray[np.int64]
    col: NDArray[np.int64]
    lens: NDArray[np.int64]


def _columns(
    tracks: Sequence[Track],
    own: Sequence[NDArray[np.bool_]] | NDArray[np.bool_],
    det_xy: NDArray[np.float64],
) -> _Grid:
    """`_Grid` of `tracks`; `own` per track, or for all their points in track order."""
    starts = np.array([t.start for t in tracks], dtype=np.int64)
    det = [t.det for t in tracks]
    o = own if isinstance(own, np.ndarray) else np.concatenate(own)
    return _grid(starts, det, [t.xy for t in tracks], o, det_xy)


def _grid(
    starts: NDArray[np.int64],
    det: Sequence[NDArray[np.int64]],
    xy: Sequence[NDArray[np.float64]],
    own: NDArray[np.bool_],
    det_xy: NDArray[np.float64],
    flat: NDArray[np.int64] | None = None,
) -> _Grid:
    """`flat`: the concatenated rows of `det` when already at hand (renumbered)."""
    lens = np.fromiter((d.size for d in det), dtype=np.int64, count=len(det))
    t0 = int(starts.min())
    n_t, k = int((starts + lens).max()) - t0, len(det)
    first = np.cumsum(lens) - lens
    col = np.repeat(np.arange(k), lens)
    row = np.repeat(starts - t0 - first, lens) + np.arange(int(lens.sum()))
    d = np.concatenate(det) if flat is None else flat
    z = np.zeros((n_t, k, 2))
    has = np.zeros((n_t, k), bool)
    alive = np.zeros((n_t, k), bool)
    pos = np.zeros((n_t, k, 2))
    alive[row, col] = True
    has[row[own], col[own]] = True
    z[row[own], col[own]] = det_xy[d[own]]
    pos[row, col] = np.concatenate(xy)
    return _Grid(z, has, alive, pos, t0, row, col, lens)


def _filter(
    z: NDArray[np.float64],
    has: NDArray[np.bool_],
    alive: NDArray[np.bool_],
    q: NDArray[np.float64],
    r: float,
) -> tuple[NDArray[np.float64], ...]:
    """Kalman filter of random walks, all columns at once (the variance is shared by axes).

    Returns filtered means (T, K, 2) and variances (T, K), predicted ones, and the summed
    negative log-likelihood of the innovations (first measurement of a track excluded).
    """
    n_t, k = has.shape
    m = np.zeros((n_t, k, 2))
    v = np.zeros((n_t, k))
    mp = np.zeros((n_t, k, 2))
    vp = np.zeros((n_t, k))
    cur_m = np.zeros((k, 2))
    cur_v = np.full(k, _DIFFUSE)
    nll = 0.0
    for t in range(n_t):
        born = alive[t] & ~(alive[t - 1] if t else np.zeros(k, bool))
        pv = np.where(born, _DIFFUSE, cur_v + q)
        pm = np.where(born[:, None], 0.0, cur_m)
        mp[t], vp[t] = pm, pv
        s = pv + r
        gain = np.where(has[t], pv / s, 0.0)
        innov = z[t] - pm
        cur_m = pm + gain[:, None] * innov
        cur_v = (1.0 - gain) * pv
        scored = has[t] & (pv < 0.5 * _DIFFUSE)
        if scored.any():
            ss = s[scored]
            nll += float((np.log(ss) + (innov[scored] ** 2).sum(1) / (2.0 * ss)).sum())
        m[t], v[t] = cur_m, cur_v
    return m, v, mp, vp, np.asarray(nll)


def _rts(g: _Grid, q: NDArray[np.float64], r: float) -> NDArray[np.float64]:
    """Smoothed means (T, K, 2) of every column (Kalman filter + RTS backward pass)."""
    m, v, mp, vp, _ = _filter(g.z, g.has, g.alive, q, r)
    ms = m.copy()
    for t in range(m.shape[0] - 2, -1, -1):
        cont = g.alive[t] & g.alive[t + 1]
        gain = np.where(cont, v[t] / vp[t + 1], 0.0)
        ms[t] = m[t] + gain[:, None] * (ms[t + 1] - mp[t + 1])
    return ms


def _smooth_grid(g: _Grid, q: NDArray[np.float64], r: float) -> NDArray[np.float64]:
    """Written positions (T, K, 2) of every column: RTS at own points, elsewhere the column's
    position plus the correction interpolated in time between its nearest own points; columns
    with fewer than two own points unchanged."""
    ms = _rts(g, q, r)
    n_t = g.has.shape[0]
    tt = np.arange(n_t)[:, None]
    corr = np.where(g.has[..., None], ms - g.xy, 0.0)
    prev = np.maximum.accumulate(np.where(g.has, tt, -1), axis=0)
    nxt = np.minimum.accumulate(np.where(g.has, tt, n_t)[::-1], axis=0)[::-1]
    p0, n0 = np.maximum(prev, 0), np.minimum(nxt, n_t - 1)
    c_prev = np.take_along_axis(corr, p0[..., None], axis=0)
    c_next = np.take_along_axis(corr, n0[..., None], axis=0)
    c_prev = np.where((prev >= 0)[..., None], c_prev, c_next)
    c_next = np.where((nxt < n_t)[..., None], c_next, c_prev)
    span = np.maximum(nxt - prev, 1)
    w = np.where((prev >= 0) & (nxt < n_t), (tt - prev) / span, 0.0)[..., None]
    out = np.where(g.has[..., None], ms, g.xy + (1.0 - w) * c_prev + w * c_next)
    few = g.has.sum(0) < 2
    out[:, few] = g.xy[:, few]
    return out


def _smooth_row(g: _Grid, q: NDArray[np.float64], r: float, row: int) -> NDArray[np.float64]:
    """`_smooth_grid` in one row only, shape (K, 2)."""
    ms = _rts(g, q, r)
    cols = np.arange(g.has.shape[1])
    before, after = g.has[row::-1], g.has[row:]
    has_prev, has_next = before.any(0), after.any(0)
    prev = row - np.argmax(before, axis=0)
    nxt = row + np.argmax(after, axis=0)
    corr = ms - g.xy
    c_prev = np.where(has_prev[:, None], corr[prev, cols], corr[nxt, cols])
    c_next = np.where(has_next[:, None], corr[nxt, cols], c_prev)
    span = np.maximum(nxt - prev, 1)
    w = np.where(has_prev & has_next, (row - prev) / span, 0.0)[:, None]
    out = np.where(g.has[row][:, None], ms[row], g.xy[row] + (1.0 - w) * c_prev + w * c_next)
    few = g.has.sum(0) < 2
    out[few] = g.xy[row, few]
    return out


def smoothed_xy(
    tracks: Sequence[Track],
    own: Sequence[NDArray[np.bool_]],
    det_xy: NDArray[np.float64],
    step_var: NDArray[np.float64],
    loc_var: float,
) -> list[NDArray[np.float64]]:
    """RTS-smoothed positions (n, 2) of each track.

    Parameters
    ----------
    tracks : sequence of Track
    own : sequence of bool arrays
        Per track, the points whose detection is a measurement of it (`own_detections`).
    det_xy : ndarray, shape (N, 2)
        Detection positions, indexed by ``Track.det``.
    step_var : ndarray, shape (K,)
        Brownian step variance per axis and frame of each track (px²).
    loc_var : float
        Localisation variance of a detection per axis (px²).

    Returns
    -------
    list of ndarray
        Tracks with fewer than two own points keep their positions. Elsewhere own points get
        the smoothed position; the other points keep theirs, shifted by the smoother's
        correction interpolated between the nearest own points.
    """
    if not tracks:
        return []
    g = _columns(tracks, own, det_xy)
    out = _smooth_grid(g, np.asarray(step_var, dtype=float), float(loc_var))
    return np.split(out[g.row, g.col], np.cumsum(g.lens)[:-1])


def smoothed_at(
    tracks: Sequence[Track],
    det_xy: NDArray[np.float64],
    step_var: NDArray[np.float64],
    loc_var: float,
    frame: int,
    *,
    since: int,
    context: Sequence[Track] = (),
    det_offset: int = 0,
) -> NDArray[np.float64]:
    """`smoothed_xy` of every track in `frame` (shape (K, 2)), from its points of frames
    ≥ `since` only; a detection is a track's own unless another of `tracks` or `context`
    uses it there. The tracks' detection rows minus `det_offset` index `det_xy` (online: the
    rows still held). Cheap enough to run at every online commit."""
    if not tracks:
        return np.zeros((0, 2))
    starts = np.array([t.start for t in tracks], dtype=np.int64)
    cut = np.maximum(since - starts, 0)
    det = [t.det[a:] for t, a in zip(tracks, cut.tolist(), strict=True)]
    more = [t.det[max(since - t.start, 0) :] for t in context if t.end >= since]
    every = np.concatenate(det + more)
    if det_offset:
        every = np.where(every >= 0, every - det_offset, -1)
    counts = np.bincount(every[every >= 0], minlength=det_xy.shape[0])
    mine = every[: sum(d.size for d in det)]
    own = (mine >= 0) & (counts[np.maximum(mine, 0)] == 1)
    xy = [t.xy[a:] for t, a in zip(tracks, cut.tolist(), strict=True)]
    g = _grid(starts + cut, det, xy, own, det_xy, flat=mine)
    return _smooth_row(g, np.asarray(step_var, dtype=float), float(loc_var), frame - g.t0)


def relative_step_var(params: EnergyParams, diameters: NDArray[np.float64]) -> NDArray[np.float64]:
    """Step variance of each track relative to the reference size (σ²(d) / σ0²)."""
    unit = replace(params, step_sigma_px=1.0, max_step_px=np.inf)
    return np.asarray(unit.step_var(diameters), dtype=float)


def _moments(
    tracks: Sequence[Track],
    own: Sequence[NDArray[np.bool_]],
    det_xy: NDArray[np.float64],
    f: NDArray[np.float64],
) -> tuple[float, float]:
    """Moment estimates of (σ0², r) that start the likelihood search (a covariance estimator,
    Vestergaard et al., PRE 2014): for consecutive own points, increments Δ of a random walk
    seen with noise have ``cov(Δ_t, Δ_{t+1}) = −r`` and ``var(Δ / √f) = σ0² + 2r / f``."""
    prod, sq, inv_f = [], [], []
    for t, o, fk in zip(tracks, own, f, strict=True):
        idx = np.flatnonzero(o)
        run = np.flatnonzero(np.diff(idx) == 1)  # steps between consecutive frames
        if not run.size:
            continue
        d = det_xy[t.det[idx[run + 1]]] - det_xy[t.det[idx[run]]]
        sq.append((d * d).mean(1) / fk)
        inv_f.append(np.full(run.size, 1.0 / fk))
        nxt = np.flatnonzero(np.diff(run) == 1)  # two steps in a row
        prod.append((d[nxt] * d[nxt + 1]).mean(1))
    if not sq:
        return 1.0, 0.1
    r = -float(np.mean(np.concatenate(prod))) if np.concatenate(prod).size else 0.0
    q_unit = float(np.mean(np.concatenate(sq) - 2.0 * max(r, 0.0) * np.concatenate(inv_f)))
    floor = 1e-4 * max(float(np.mean(np.concatenate(sq))), 1e-6)
    return max(q_unit, floor), max(r, floor)


def estimate_motion_noise(
    tracks: Sequence[Track],
    det_xy: NDArray[np.float64],
    diameter_nm: NDArray[np.float64],
    params: EnergyParams,
    *,
    min_points: int = 4,
) -> tuple[float, float] | None:
    """Maximum-likelihood Brownian step σ0 (px at the reference size) and localisation σ (px).

    The likelihood is the Kalman filter's (`smoothed_xy`'s model) on every track's own
    detections; the step variance of a track scales with its median own diameter by the
    mobility law of `params`. None when fewer than three tracks have `min_points` own points.
    """
    trs = list(tracks)
    own = own_detections(trs, det_xy.shape[0])
    keep = [j for j, o in enumerate(own) if o.sum() >= min_points]
    if len(keep) < 3:
        return None
    trs = [trs[j] for j in keep]
    own = [own[j] for j in keep]
    d = np.array([np.median(diameter_nm[t.det[o]]) for t, o in zip(trs, own, strict=True)])
    f = relative_step_var(params, d)
    g = _columns(trs, own, det_xy)

    def nll(theta: NDArray[np.float64]) -> float:
        a, r = np.exp(theta)
        return float(_filter(g.z, g.has, g.alive, a * f, r)[4])

    x0 = np.log(_moments(trs, own, det_xy, f))
    res = minimize(nll, x0, method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-3})
    a, r = np.exp(res.x)
    return float(np.sqrt(a)), float(np.sqrt(r))


def smooth_solution(
    sol: Solution,
    dets: Detections,
    params: EnergyParams,
    noise: tuple[float, float] | None = None,
) -> Solution:
    """A copy of `sol` whose positions are `smoothed_xy` (Brownian motion only).

    `noise` = (σ0, localisation σ) in px; by default `estimate_motion_noise` on `sol`
    (and `params`' own estimates when that is not possible). With constant-velocity motion
    the copy is unchanged.
    """
    out = sol.copy()
    if params.motion != "brownian" or not out.tracks:
        return out
    trs = list(out.tracks.values())
    if noise is None:
        noise = estimate_motion_noise(trs, dets.xy, dets.diameter_nm, params)
    sigma, loc = noise or (params.step_sigma_px, params.localisation_px)
    own = own_detections(trs, len(dets))
    d = np.array(
        [
            np.median(dets.diameter_nm[t.det[o]]) if o.any() else params.reference_diameter_nm
            for t, o in zip(trs, own, strict=True)
        ]
    )
    q = sigma**2 * relative_step_var(params, d)
    for t, xy in zip(trs, smoothed_xy(trs, own, dets.xy, q, loc**2), strict=True):
        t.xy = xy
    return out


def written_output(
    sol: Solution, dets: Detections, params: EnergyParams, *, smooth: bool
) -> tuple[TrackTable, list[Event]]:
    """tracks.csv / events.csv of a global solution: ids renumbered 0, 1, ... by first frame,
    positions from `smooth_solution` when `smooth` (events keep the CEM's)."""
    order = sorted(sol.tracks, key=lambda i: (sol.tracks[i].start, i))
    ids = {tid: k for k, tid in enumerate(order)}
    written = smooth_solution(sol, dets, params) if smooth else sol
    table = solution_to_table(written, dets, ids=ids, params=params)
    return table, find_events(sol, dets, params, ids=ids)
