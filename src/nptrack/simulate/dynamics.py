"""A population of supported nanoparticles over time, with its exact ground truth.

Per frame interval: fusion of close pairs on the same surface (volume conserved, mass-weighted
centre), Ostwald ripening (volume exchanged between particles through the support, conserved
overall or with a set loss), vanishing below a size, Brownian motion with mobility falling with
size (``D = D_ref · (d / d_ref)^exponent``), births of small particles, and optionally a
prescribed growth law of the mean radius (``growth_rate_nm_n_per_s``). Particles sit on the top
(layer 0) or bottom (layer 1) surface of the support: particles on different surfaces cross
each other in projection without fusing. The microscope drifts over the sample and each frame
is seen through a small random affine; the true transforms are kept.

Coordinates of the ground truth are pixels of frame 0 (x = column, y = row, origin at the
centre of the top-left pixel), before the per-frame drift / affine: the coordinates a perfect
registration to frame 0 would give. The particle as seen in acquired frame t sits at
``inverse(transform_t)(x, y)``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.spatial import cKDTree

from nptrack.simulate.particles import Particles, random_particles

__all__ = [
    "GROUND_TRUTH_DTYPE",
    "DynamicsConfig",
    "Event",
    "SequenceTruth",
    "ground_truth_rows",
    "random_transforms",
    "simulate_population",
    "write_ground_truth",
]


class DynamicsConfig(BaseModel):
    """How the population evolves between frames (units in the names).

    Prescribed kinetics (for testing kinetics fits on an exact truth): when
    ``growth_rate_nm_n_per_s`` K > 0, at the end of every frame t ≥ 1 (after fusion, ripening,
    motion, births and the visibility test) every particle's diameter is multiplied by one
    common factor chosen so that the mean radius (``diameter_nm / 2``) of the particles
    *visible* in frame t is exactly ``(R̄ⁿ(0) + K·t·frame_interval_s)^(1/n)``, with n =
    ``growth_law_exponent`` and R̄(0) the mean radius of the particles visible in frame 0.
    These are exactly the rows of `ground_truth_rows`, so the law holds there to rounding.
    Volume is then not conserved (the scaling stands for supply from the gas or the support);
    fusions still sum volumes at the step they happen. Frames with no visible particle are
    not rescaled. With K = 0 (default) nothing changes and no random numbers are drawn.
    """

    model_config = ConfigDict(extra="forbid")

    frame_interval_s: float = Field(1.0, gt=0, description="physical time between frames")
    diffusion_nm2_per_s: float = Field(0.05, ge=0, description="D at reference_diameter_nm")
    reference_diameter_nm: float = Field(3.0, gt=0)
    mobility_exponent: float = Field(-2.0, description="D ∝ diameter^exponent")
    ripening_nm3_per_s: float = Field(0.0, ge=0, description="Ostwald exchange rate")
    volume_loss_per_frame: float = Field(
        0.0, lt=1, description="fraction of particle volume lost per frame; < 0: net gain"
    )
    fusion_gap_nm: float = Field(0.3, description="fuse when surfaces are closer than this")
    fusion_probability: float = Field(0.5, ge=0, le=1, description="per close pair per frame")
    exclusion: bool = Field(
        True,
        description="particles on the same surface do not overlap: after each step, pairs "
        "whose discs overlap (and did not fuse) are pushed apart to contact, the more mobile "
        "one further; False: they pass through each other (the simulator before 2026-12-05)",
    )
    relax_frames: float = Field(5.0, gt=0, description="a fused particle rounds up in ~this")
    birth_rate_per_frame: float = Field(0.0, ge=0, description="expected births in the field")
    birth_diameter_nm: float = Field(1.2, gt=0)
    vanish_diameter_nm: float = Field(0.8, ge=0, description="smaller particles vanish")
    drift_nm_per_frame: tuple[float, float] = Field((0.0, 0.0), description="(x, y)")
    drift_jitter_nm: float = Field(0.0, ge=0, description="random walk of the drift")
    rotation_deg: float = Field(0.0, ge=0, description="per-frame affine: rotation sd")
    scale_sd: float = Field(0.0, ge=0, description="per-frame affine: relative scale sd")
    shear_sd: float = Field(0.0, ge=0, description="per-frame affine: shear sd")
    margin_nm: float = Field(5.0, ge=0, description="sample beyond the fields of view")
    growth_law_exponent: float = Field(
        3.0, gt=0, description="n of the prescribed law R̄ⁿ(t) = R̄ⁿ(0) + K·t"
    )
    growth_rate_nm_n_per_s: float = Field(
        0.0,
        ge=0,
        description="K of the prescribed law (nm^n / s); 0 = off (the mean radius is free)",
    )


@dataclass
class Event:
    """One event of the ground truth (DESIGN.md contract for `events.csv`).

    `track_ids`: "a" (birth, death, exit), "a+b>c" (fusion), "a,b" (crossing).
    """

    frame: int
    type: str
    track_ids: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class SequenceTruth:
    """The simulated history.

    Attributes
    ----------
    states : list of Particles
        Every particle alive at each frame (visible or not), positions in frame-0 pixels.
    visible : list of ndarray of bool
        Which of them have their centre inside acquired frame t.
    transforms : ndarray, shape (frames, 2, 3)
        Affine map from acquired-frame pixels to frame-0 pixels: ``p0 = A p + b``.
    events : list of Event
    shape : (height, width)
    pixel_size_nm : float
    """

    states: list[Particles]
    visible: list[np.ndarray]
    transforms: np.ndarray
    events: list[Event]
    shape: tuple[int, int]
    pixel_size_nm: float

    def acquired(self, t: int) -> Particles:
        """Particles of frame t with centres in acquired-frame pixels."""
        p = self.states[t].take(slice(None))
        a, b = self.transforms[t, :, :2], self.transforms[t, :, 2]
        q = np.linalg.solve(a, np.vstack([p.x - b[0], p.y - b[1]]))
        p.x, p.y = q[0], q[1]
        return p


def random_transforms(
    frames: int,
    shape: tuple[int, int],
    config: DynamicsConfig,
    *,
    pixel_size_nm: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Acquired → frame-0 affines (frames, 2, 3): accumulated drift plus a small random affine
    about the image centre, identity at frame 0."""
    h, w = shape
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    out = np.zeros((frames, 2, 3))
    drift = np.zeros(2)
    for t in range(frames):
        a = np.eye(2)
        if t > 0:
            step = np.asarray(config.drift_nm_per_frame, float)
            step = step + config.drift_jitter_nm * rng.standard_normal(2)
            drift = drift + step / pixel_size_nm
            th = np.deg2rad(config.rotation_deg) * rng.standard_normal()
            s = 1.0 + config.scale_sd * rng.standard_normal()
            sh = config.shear_sd * rng.standard_normal()
            rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
            a = rot @ np.array([[s, sh], [0.0, s]])
        out[t, :, :2] = a
        out[t, :, 2] = c - a @ c + drift
    return out


def _visible(p: Particles, m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    q = np.linalg.solve(m[:, :2], np.vstack([p.x - m[0, 2], p.y - m[1, 2]]))
    h, w = shape
    return (q[0] >= -0.5) & (q[0] < w - 0.5) & (q[1] >= -0.5) & (q[1] < h - 0.5)


def _diameter(volume: np.ndarray, height_ratio: np.ndarray) -> np.ndarray:
    return np.cbrt(6.0 * volume / (np.pi * height_ratio))


def _fields_box(transforms: np.ndarray, shape: tuple[int, int]) -> tuple[float, ...]:
    """Bounding box (x0, y0, x1, y1) in frame-0 pixels of every acquired field."""
    h, w = shape
    corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]]).T
    pts = np.concatenate([m[:, :2] @ corners + m[:, 2:] for m in transforms], axis=1)
    return (pts[0].min(), pts[1].min(), pts[0].max(), pts[1].max())


def simulate_population(
    shape: tuple[int, int],
    *,
    pixel_size_nm: float,
    frames: int,
    n_particles: int,
    config: DynamicsConfig,
    rng: np.random.Generator,
    particle_options: dict[str, Any] | None = None,
) -> SequenceTruth:
    """Evolve a random population for `frames` frames and record the truth.

    Parameters
    ----------
    shape : (height, width)
        Acquired field in pixels.
    pixel_size_nm : float
    frames : int
        Number of frames (frame 0 included).
    n_particles : int
        Particles in the frame-0 field at the start; the sample around it (the drifting fields
        of view plus `config.margin_nm`) is populated at the same density.
    config : DynamicsConfig
    rng : numpy.random.Generator
    particle_options : dict, optional
        Keyword arguments of `random_particles` (size distribution, shape, layers ...).

    Returns
    -------
    SequenceTruth
    """
    opts = dict(particle_options or {})
    h, w = shape
    px = pixel_size_nm
    transforms = random_transforms(frames, shape, config, pixel_size_nm=px, rng=rng)
    x0, y0, x1, y1 = _fields_box(transforms, shape)
    m = config.margin_nm / px
    x0, y0, x1, y1 = x0 - m, y0 - m, x1 + m, y1 + m
    area_ratio = (x1 - x0) * (y1 - y0) / float(h * w)
    region_shape = (int(np.ceil(y1 - y0)), int(np.ceil(x1 - x0)))
    p = random_particles(
        region_shape, pixel_size_nm=px, n=round(n_particles * area_ratio), rng=rng, **opts
    )
    p.x += x0 + 0.5
    p.y += y0 + 0.5
    next_id = len(p) + 1
    states, visible = [p], [_visible(p, transforms[0], shape)]
    events: list[Event] = []
    crossing = _crossings(p, visible[0], px)
    # Prescribed kinetics: R̄(0) of the particles seen in frame 0 (the ground-truth rows).
    r0_nm = float(p.diameter_nm[visible[0]].mean()) / 2.0 if visible[0].any() else np.nan
    for t in range(1, frames):
        prev, prev_vis = states[-1], visible[-1]
        was_visible = dict(zip(prev.id.tolist(), prev_vis.tolist(), strict=True))
        p, children, fused, next_id = _fuse(prev, config, px, next_id, rng)
        child_ids = {c for _, _, c, _ in fused}
        seen_fusions = set()
        for a, b, c, detail in fused:
            if was_visible[a] or was_visible[b]:  # one parent may come from outside the field
                detail["parents_visible"] = [was_visible[a], was_visible[b]]
                events.append(Event(t, "fusion", f"{a}+{b}>{c}", detail))
                seen_fusions.add(c)
        p, vanished = _ripen(p, ~children, config)
        for pid, d in vanished:
            if was_visible.get(pid):
                events.append(Event(t, "death", str(pid), {"cause": "vanished", "diameter_nm": d}))
        _move(p, ~np.isin(p.id, list(child_ids)), config, px, rng)
        if config.exclusion:
            _exclude(p, config, px, fixed=np.isin(p.id, list(child_ids)))
        p.aspect = 1.0 + (p.aspect - 1.0) * np.exp(-1.0 / config.relax_frames)
        births, next_id = _births(p, config, px, (x0, y0, x1, y1), area_ratio, next_id, opts, rng)
        p = p.concat(births)
        inside = (p.x >= x0) & (p.x < x1) & (p.y >= y0) & (p.y < y1)
        p = p.take(inside)
        vis = _visible(p, transforms[t], shape)
        born = set(births.id.tolist())
        for pid, v in zip(p.id.tolist(), vis.tolist(), strict=True):
            seen_before = was_visible.get(pid, False)
            if v and pid in born:
                events.append(Event(t, "birth", str(pid), {"cause": "nucleation"}))
            elif v and not seen_before and pid not in seen_fusions:
                events.append(Event(t, "birth", str(pid), {"cause": "entry"}))
            elif not v and seen_before:
                events.append(Event(t, "exit", str(pid), {"cause": "border"}))
        if config.growth_rate_nm_n_per_s > 0 and vis.any() and np.isfinite(r0_nm):
            _prescribe_mean_radius(p, vis, r0_nm, t * config.frame_interval_s, config)
        now = _crossings(p, vis, px)
        for a, b in sorted(now - crossing):
            events.append(Event(t, "crossing", f"{a},{b}", {}))
        crossing = now
        states.append(p)
        visible.append(vis)
    return SequenceTruth(states, visible, transforms, events, (h, w), float(px))


def _fuse(
    p: Particles, config: DynamicsConfig, px: float, next_id: int, rng: np.random.Generator
) -> tuple[Particles, np.ndarray, list[tuple[int, int, int, dict[str, Any]]], int]:
    """Fuse close pairs on the same surface; children get exact volume sums."""
    fused: list[tuple[int, int, int, dict[str, Any]]] = []
    if config.fusion_probability <= 0 or len(p) < 2:
        return p.take(slice(None)), np.zeros(len(p), bool), fused, next_id
    xy = np.column_stack([p.x, p.y]) * px
    reach = float(p.diameter_nm.max()) + max(config.fusion_gap_nm, 0.0)
    pairs = np.array(sorted(cKDTree(xy).query_pairs(reach)), dtype=np.int64).reshape(-1, 2)
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        dist = np.hypot(*(xy[i] - xy[j]).T)
        close = (p.layer[i] == p.layer[j]) & (
            dist < (p.diameter_nm[i] + p.diameter_nm[j]) / 2 + config.fusion_gap_nm
        )
        pairs = pairs[close][rng.permutation(int(close.sum()))]
    vol = p.volume_nm3()
    used = np.zeros(len(p), bool)
    kids: list[Particles] = []
    for i, j in pairs:
        if used[i] or used[j] or rng.random() >= config.fusion_probability:
            continue
        used[i] = used[j] = True
        va, vb = vol[i], vol[j]
        v = va + vb
        big = i if va >= vb else j
        hr = (va * p.height_ratio[i] + vb * p.height_ratio[j]) / v
        kid = p.take([big])
        kid.id[:] = next_id
        kid.x[:] = (va * p.x[i] + vb * p.x[j]) / v
        kid.y[:] = (va * p.y[i] + vb * p.y[j]) / v
        kid.height_ratio[:] = hr
        kid.diameter_nm[:] = _diameter(np.array([v]), np.array([hr]))
        kid.aspect[:] = 1.0 + 0.6 * min(va, vb) / max(va, vb)  # a neck: elongated, then rounds
        kid.angle_rad[:] = np.arctan2(p.y[j] - p.y[i], p.x[j] - p.x[i])
        kid.facets[:], kid.facet_strength[:] = 0, 0.0
        detail = {
            "volumes_nm3": [float(va), float(vb), float(v)],
            "mass_ratio": float(min(va, vb) / max(va, vb)),
            "distance_nm": float(np.hypot(p.x[i] - p.x[j], p.y[i] - p.y[j]) * px),
            "layer": int(p.layer[i]),
        }
        fused.append((int(p.id[i]), int(p.id[j]), next_id, detail))
        kids.append(kid)
        next_id += 1
    out = p.take(~used)
    for kid in kids:
        out = out.concat(kid)
    children = np.zeros(len(out), bool)
    children[len(out) - len(kids) :] = True
    return out, children, fused, next_id


def _ripen(
    p: Particles, active: np.ndarray, config: DynamicsConfig
) -> tuple[Particles, list[tuple[int, float]]]:
    """Ostwald ripening per surface: dV_i = k·dt·(r_i / r̄ − 1) sums to zero; particles below
    the vanishing size disappear and the survivors are rescaled to the set total volume."""
    loss, k = config.volume_loss_per_frame, config.ripening_nm3_per_s * config.frame_interval_s
    if k == 0 and loss == 0:
        return p, []
    vol = p.volume_nm3()
    new = vol.copy()
    dead = np.zeros(len(p), bool)
    for layer in (0, 1):
        sel = active & (p.layer == layer)
        if not sel.any():
            continue
        r = np.cbrt(3.0 * vol[sel] / (4.0 * np.pi))
        v = vol[sel] + k * (r / r.mean() - 1.0)
        gone = _diameter(np.maximum(v, 0.0), p.height_ratio[sel]) < config.vanish_diameter_nm
        target = vol[sel].sum() * (1.0 - loss)
        if (~gone).any():
            v[~gone] *= target / v[~gone].sum()
        new[sel], dead[np.flatnonzero(sel)[gone]] = v, True
    update = active & ~dead
    p.diameter_nm = np.where(
        update, _diameter(np.maximum(new, 1e-12), p.height_ratio), p.diameter_nm
    )
    vanished = [(int(i), float(d)) for i, d in zip(p.id[dead], p.diameter_nm[dead], strict=True)]
    return p.take(~dead), vanished


def _move(
    p: Particles, active: np.ndarray, config: DynamicsConfig, px: float, rng: np.random.Generator
) -> None:
    """Brownian step, per axis sd = sqrt(2 D(d) dt), D(d) = D_ref (d / d_ref)^exponent."""
    d = config.diffusion_nm2_per_s * (p.diameter_nm / config.reference_diameter_nm) ** (
        config.mobility_exponent
    )
    sd = np.sqrt(2.0 * d * config.frame_interval_s) / px
    step = rng.standard_normal((2, len(p))) * sd
    p.x = p.x + np.where(active, step[0], 0.0)
    p.y = p.y + np.where(active, step[1], 0.0)


def _exclude(
    p: Particles,
    config: DynamicsConfig,
    px: float,
    *,
    fixed: np.ndarray | None = None,
    passes: int = 50,
) -> None:
    """Push apart pairs of particles on the same surface whose discs overlap.

    Supported particles cannot interpenetrate: two that touch either fuse (`_fuse`, the next
    frame) or stay side by side. Each overlapping pair is separated along its centre line to
    contact, the shift shared in proportion to mobility (D ∝ d^exponent: the small one moves
    further); repeated passes settle chains of neighbours (to < 1e-3 of a contact). Particles
    `fixed` (the children of this frame's fusions, which sit at their parents' centre of
    mass) are not moved unless both of a pair are. No random numbers are drawn.
    """
    if len(p) < 2:
        return
    mobility = (p.diameter_nm / config.reference_diameter_nm) ** config.mobility_exponent
    if fixed is not None and fixed.any():
        mobility = np.where(fixed, 1e-9 * mobility, mobility)
    for _ in range(passes):
        xy = np.column_stack([p.x, p.y])
        reach = float(p.diameter_nm.max()) / px
        pairs = cKDTree(xy).query_pairs(reach, output_type="ndarray")
        if not len(pairs):
            return
        i, j = pairs[:, 0], pairs[:, 1]
        v = xy[j] - xy[i]
        dist = np.hypot(v[:, 0], v[:, 1])
        contact = (p.diameter_nm[i] + p.diameter_nm[j]) / 2 / px
        over = (p.layer[i] == p.layer[j]) & (dist < contact * (1 - 1e-3))
        if not over.any():
            return
        i, j, v, dist, contact = i[over], j[over], v[over], dist[over], contact[over]
        # Coincident centres (rare): separate along x.
        u = np.where(dist[:, None] > 1e-9, v / np.maximum(dist, 1e-9)[:, None], [1.0, 0.0])
        gap = contact - dist
        share_j = mobility[j] / (mobility[i] + mobility[j])
        shift = np.zeros_like(xy)
        np.add.at(shift, i, -(gap * (1 - share_j))[:, None] * u)
        np.add.at(shift, j, (gap * share_j)[:, None] * u)
        p.x = p.x + shift[:, 0]
        p.y = p.y + shift[:, 1]


def _prescribe_mean_radius(
    p: Particles, vis: np.ndarray, r0_nm: float, time_s: float, config: DynamicsConfig
) -> None:
    """Scale all diameters by one factor: mean visible radius = (R̄ⁿ(0) + K t)^(1/n)."""
    n = config.growth_law_exponent
    target_nm = (r0_nm**n + config.growth_rate_nm_n_per_s * time_s) ** (1.0 / n)
    p.diameter_nm = p.diameter_nm * (target_nm / (float(p.diameter_nm[vis].mean()) / 2.0))


def _births(
    p: Particles,
    config: DynamicsConfig,
    px: float,
    box: tuple[float, float, float, float],
    area_ratio: float,
    next_id: int,
    opts: dict[str, Any],
    rng: np.random.Generator,
) -> tuple[Particles, int]:
    n = (
        int(rng.poisson(config.birth_rate_per_frame * area_ratio))
        if config.birth_rate_per_frame
        else 0
    )
    if n == 0:
        return Particles.empty(), next_id
    x0, y0, x1, y1 = box
    d = config.birth_diameter_nm * rng.uniform(0.85, 1.15, n)
    layer = (rng.random(n) < opts.get("bottom_fraction", 0.0)).astype(np.int64)
    new = Particles(
        id=np.arange(next_id, next_id + n),
        x=rng.uniform(x0, x1, n),
        y=rng.uniform(y0, y1, n),
        diameter_nm=d,
        height_ratio=rng.uniform(0.8, 1.0, n),
        aspect=rng.uniform(1.0, 1.1, n),
        angle_rad=rng.uniform(0, np.pi, n),
        facets=np.zeros(n, np.int64),
        facet_strength=np.zeros(n),
        layer=layer,
        lattice_angle_rad=np.where(
            rng.random(n) < opts.get("lattice_fraction", 0.6), rng.uniform(0, np.pi, n), np.nan
        ),
    )
    if len(p):  # no nucleus inside an existing particle of the same surface
        dist, idx = cKDTree(np.column_stack([p.x, p.y])).query(np.column_stack([new.x, new.y]))
        ok = (dist * px > (p.diameter_nm[idx] + d) / 2 + 0.2) | (p.layer[idx] != layer)
        new = new.take(ok)
        new.id = np.arange(next_id, next_id + len(new))
    return new, next_id + len(new)


def _crossings(p: Particles, vis: np.ndarray, px: float) -> set[tuple[int, int]]:
    """Pairs of visible particles on different surfaces whose projections overlap."""
    top, bot = p.take(vis & (p.layer == 0)), p.take(vis & (p.layer == 1))
    if not len(top) or not len(bot):
        return set()
    reach = (float(top.diameter_nm.max()) + float(bot.diameter_nm.max())) / 2 / px
    tree_b = cKDTree(np.column_stack([bot.x, bot.y]))
    out = set()
    for i, js in enumerate(tree_b.query_ball_point(np.column_stack([top.x, top.y]), reach)):
        for j in js:
            dist = np.hypot(top.x[i] - bot.x[j], top.y[i] - bot.y[j]) * px
            if dist < (top.diameter_nm[i] + bot.diameter_nm[j]) / 2:
                a, b = sorted((int(top.id[i]), int(bot.id[j])))
                out.add((a, b))
    return out


GROUND_TRUTH_DTYPE = np.dtype(
    [
        ("frame", "i8"),
        ("id", "i8"),
        ("x", "f8"),
        ("y", "f8"),
        ("diameter_nm", "f8"),
        ("intensity", "f8"),
        ("layer", "i8"),
    ]
)


def ground_truth_rows(truth: SequenceTruth, *, intensity_per_nm3: float) -> np.ndarray:
    """The rows of `ground_truth.csv`: visible particles per frame, frame-0 coordinates.

    Parameters
    ----------
    truth : SequenceTruth
    intensity_per_nm3 : float
        Integrated image signal per nm³ of particle for a frame-0 pixel (ADF: counts per nm of
        particle thickness / pixel area); frame t divides it by the pixel-area ratio
        ``|det A_t|`` of its affine.

    Returns
    -------
    structured ndarray of `GROUND_TRUTH_DTYPE`
    """
    parts = []
    for t, (p, vis) in enumerate(zip(truth.states, truth.visible, strict=True)):
        q = p.take(vis)
        rows = np.zeros(len(q), GROUND_TRUTH_DTYPE)
        det = abs(float(np.linalg.det(truth.transforms[t, :, :2])))
        rows["frame"], rows["id"], rows["x"], rows["y"] = t, q.id, q.x, q.y
        rows["diameter_nm"], rows["layer"] = q.diameter_nm, q.layer
        rows["intensity"] = intensity_per_nm3 * q.volume_nm3() / det
        parts.append(rows[np.argsort(rows["id"], kind="stable")])
    return np.concatenate(parts) if parts else np.zeros(0, GROUND_TRUTH_DTYPE)


def write_ground_truth(
    folder: str | Path, truth: SequenceTruth, *, intensity_per_nm3: float
) -> list[Path]:
    """Write `ground_truth.csv`, `events.csv` and `transforms_truth.csv` into `folder`.

    `transforms_truth.csv`: frame, a11, a12, tx, a21, a22, ty with ``x0 = a11 x + a12 y + tx``,
    ``y0 = a21 x + a22 y + ty`` mapping acquired-frame pixels to frame-0 pixels.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ground_truth_rows(truth, intensity_per_nm3=intensity_per_nm3)
    gt = folder / "ground_truth.csv"
    with gt.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(GROUND_TRUTH_DTYPE.names)
        for r in rows:
            out.writerow(
                [
                    int(r["frame"]),
                    int(r["id"]),
                    f"{r['x']:.6f}",
                    f"{r['y']:.6f}",
                    f"{r['diameter_nm']:.6f}",
                    f"{r['intensity']:.10g}",
                    int(r["layer"]),
                ]
            )
    ev = folder / "events.csv"
    with ev.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["frame", "type", "track_ids", "detail"])
        for e in truth.events:
            out.writerow([e.frame, e.type, e.track_ids, json.dumps(e.detail, sort_keys=True)])
    tr = folder / "transforms_truth.csv"
    with tr.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["frame", "a11", "a12", "tx", "a21", "a22", "ty"])
        for t, m in enumerate(truth.transforms):
            out.writerow([t, *(f"{v:.12g}" for v in m.ravel())])
    return [gt, ev, tr]
