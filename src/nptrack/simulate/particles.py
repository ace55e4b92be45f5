"""Particles: their parameters as columns, random placement, and exact rendering of their
projected thickness and footprint (labels) in local patches.

Positions are pixels, x = column, y = row, origin at the centre of the top-left pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

__all__ = ["Footprints", "Particles", "label_areas", "particle_footprints", "random_particles"]


@dataclass
class Particles:
    """A set of particles as columns (all arrays of length n).

    Attributes
    ----------
    id : int64
        Identity, ≥ 1 (0 is the background label).
    x, y : float64
        Centre in pixels (x = column, y = row).
    diameter_nm : float64
        Equivalent-disk diameter of the projected footprint.
    height_ratio : float64
        Height / diameter (1 = sphere, < 1 = flattened, wetting particle).
    aspect : float64
        In-plane major/minor axis ratio (≥ 1).
    angle_rad : float64
        Orientation of the major axis (and of the facets).
    facets : int64
        Number of facets of the outline (0 = smooth ellipse).
    facet_strength : float64
        Blend between ellipse (0) and polygon (1).
    layer : int64
        0 = top surface, 1 = bottom surface of the support.
    lattice_angle_rad : float64
        Orientation of the visible lattice planes; NaN = no fringes (off zone axis).
    """

    id: np.ndarray
    x: np.ndarray
    y: np.ndarray
    diameter_nm: np.ndarray
    height_ratio: np.ndarray
    aspect: np.ndarray
    angle_rad: np.ndarray
    facets: np.ndarray
    facet_strength: np.ndarray
    layer: np.ndarray
    lattice_angle_rad: np.ndarray

    def __post_init__(self) -> None:
        for f in fields(self):
            kind = np.int64 if f.name in ("id", "facets", "layer") else np.float64
            setattr(self, f.name, np.atleast_1d(np.asarray(getattr(self, f.name), dtype=kind)))
        n = len(self.id)
        if any(len(getattr(self, f.name)) != n for f in fields(self)):
            raise ValueError("all Particles columns must have the same length")

    def __len__(self) -> int:
        return len(self.id)

    @classmethod
    def empty(cls) -> Particles:
        return cls(**{f.name: np.zeros(0) for f in fields(cls)})

    def take(self, index: Any) -> Particles:
        """A subset (boolean mask or integer index), as a copy."""
        return Particles(**{f.name: getattr(self, f.name)[index].copy() for f in fields(self)})

    def concat(self, other: Particles) -> Particles:
        return Particles(
            **{
                f.name: np.concatenate([getattr(self, f.name), getattr(other, f.name)])
                for f in fields(self)
            }
        )

    def volume_nm3(self) -> np.ndarray:
        """Volume of each particle: π/6 · d³ · height_ratio (nm³), whatever its outline."""
        return np.pi / 6.0 * self.diameter_nm**3 * self.height_ratio


def random_particles(
    shape: tuple[int, int],
    *,
    pixel_size_nm: float,
    n: int,
    diameter_nm: float = 3.0,
    diameter_sd_nm: float = 0.6,
    height_ratio: tuple[float, float] = (0.8, 1.0),
    aspect_max: float = 1.25,
    facet_fraction: float = 0.5,
    min_gap_nm: float = 0.3,
    bottom_fraction: float = 0.0,
    lattice_fraction: float = 0.6,
    margin_px: float = 0.0,
    first_id: int = 1,
    rng: np.random.Generator,
) -> Particles:
    """Particles at random positions, log-normal sizes, mild ellipticity and faceting.

    Parameters
    ----------
    shape : (height, width)
        Field in pixels; centres fall in it, extended by `margin_px` on every side.
    pixel_size_nm : float
    n : int
        Number of particles wanted; fewer are returned when the field is too crowded for
        `min_gap_nm`.
    diameter_nm, diameter_sd_nm : float
        Mean and standard deviation of the (log-normal) diameter.
    height_ratio : (low, high)
        Uniform range of height / diameter.
    aspect_max : float
        Upper bound of the uniform in-plane aspect ratio.
    facet_fraction : float
        Share of particles with a faceted (4–8 sided) outline.
    min_gap_nm : float
        Smallest surface-to-surface gap between particles on the same surface (negative
        values let them overlap, as touching particles in dense samples do).
    bottom_fraction : float
        Share of particles on the bottom surface of the support.
    lattice_fraction : float
        Share of particles oriented so that their lattice fringes show.
    rng : numpy.random.Generator
    """
    h, w = shape
    sigma = np.sqrt(np.log1p((diameter_sd_nm / diameter_nm) ** 2))
    mu = np.log(diameter_nm) - sigma**2 / 2
    d = np.clip(rng.lognormal(mu, sigma, 4 * n + 16), 0.3 * diameter_nm, 3.0 * diameter_nm)
    cx = rng.uniform(-0.5 - margin_px, w - 0.5 + margin_px, d.size)
    cy = rng.uniform(-0.5 - margin_px, h - 0.5 + margin_px, d.size)
    layer = (rng.random(d.size) < bottom_fraction).astype(np.int64)
    keep: list[int] = []
    # Random sequential adsorption: accept a candidate if it keeps its gap to those accepted.
    for i in range(d.size):
        if len(keep) == n:
            break
        if keep:
            k = np.asarray(keep)
            same = layer[k] == layer[i]
            dist = np.hypot(cx[k] - cx[i], cy[k] - cy[i]) * pixel_size_nm
            if np.any(same & (dist < (d[k] + d[i]) / 2 + min_gap_nm)):
                continue
        keep.append(i)
    k = np.asarray(keep, dtype=np.int64)
    m = len(k)
    faceted = rng.random(m) < facet_fraction
    lattice = np.where(rng.random(m) < lattice_fraction, rng.uniform(0, np.pi, m), np.nan)
    return Particles(
        id=np.arange(first_id, first_id + m),
        x=cx[k],
        y=cy[k],
        diameter_nm=d[k],
        height_ratio=rng.uniform(*height_ratio, m),
        aspect=rng.uniform(1.0, max(aspect_max, 1.0), m),
        angle_rad=rng.uniform(0, np.pi, m),
        facets=np.where(faceted, rng.integers(4, 9, m), 0),
        facet_strength=np.where(faceted, rng.uniform(0.3, 0.8, m), 0.0),
        layer=layer[k],
        lattice_angle_rad=lattice,
    )


# --- rendering ---------------------------------------------------------------------------------


@dataclass
class Footprints:
    """Rendered particles before any optics.

    Attributes
    ----------
    thickness_nm : ndarray of float32, shape (2, height, width)
        Projected particle thickness per pixel (pixel average), top and bottom surface.
    labels : ndarray of int32, shape (height, width)
        Particle id per pixel (0 = background): a pixel belongs to a particle when at least
        half of it is covered; where particles overlap, to the thicker one.
    lattice_nm : ndarray of float32, shape (height, width), or None
        ``Σ t · cos(2π g·r)``: lattice-plane modulation of the particle thickness (BF phase).
    area_px : ndarray of int64, shape (n,)
        Labelled pixels per particle.
    """

    thickness_nm: np.ndarray
    labels: np.ndarray
    lattice_nm: np.ndarray | None
    area_px: np.ndarray


_N_THETA = 256


def _radius2(theta: np.ndarray, aspect: float, facets: int, strength: float) -> np.ndarray:
    """Squared outline radius r(θ)² of an elliptical, optionally faceted, outline."""
    a2, b2 = aspect, 1.0 / aspect
    r2 = 1.0 / (np.cos(theta) ** 2 / a2 + np.sin(theta) ** 2 / b2)
    if facets >= 3 and strength > 0:
        seg = 2.0 * np.pi / facets
        phi = np.mod(theta, seg) - seg / 2.0
        r2 = r2 * (1.0 - strength + strength * np.cos(seg / 2.0) / np.cos(phi)) ** 2
    return r2


def particle_footprints(
    particles: Particles,
    shape: tuple[int, int],
    *,
    pixel_size_nm: float,
    linear: np.ndarray | None = None,
    d_spacing_nm: float | None = None,
) -> Footprints:
    """Projected thickness, labels and lattice modulation of every particle.

    Each particle is an ellipsoid-like body: thickness ``t = 2c·sqrt(1 − ρ²/r(θ)²)`` with
    outline r(θ) (ellipse blended with a polygon) scaled to the area of a disk of
    `diameter_nm`, and ``c = height_ratio · diameter_nm / 2``; its volume is
    ``π/6 · d³ · height_ratio`` whatever the outline. Pixels are integrated by supersampling
    in a patch around each particle only, so cost grows with particle area, not image area.

    Parameters
    ----------
    particles : Particles
        Centres in pixels of this image.
    shape : (height, width)
    pixel_size_nm : float
    linear : ndarray, shape (2, 2), optional
        Maps pixel offsets of this image to pixel offsets of the sample frame (the linear part
        of the acquired → frame-0 affine): shapes are defined on the sample and seen through it.
    d_spacing_nm : float, optional
        Lattice spacing; when given, `lattice_nm` is computed for particles whose
        `lattice_angle_rad` is finite (a second, weaker set at 70.5° as in an fcc [110] zone).
    """
    h, w = shape
    L = np.eye(2) if linear is None else np.asarray(linear, dtype=np.float64)
    stretch = float(np.linalg.norm(np.linalg.inv(L), 2))
    thick = np.zeros((2, h, w), np.float32)
    best = np.zeros((h, w), np.float32)
    labels = np.zeros((h, w), np.int32)
    lattice = np.zeros((h, w), np.float32) if d_spacing_nm else None
    theta = np.linspace(0.0, 2.0 * np.pi, _N_THETA, endpoint=False)
    for i in range(len(particles)):
        d = particles.diameter_nm[i]
        aspect, nf, fs = particles.aspect[i], int(particles.facets[i]), particles.facet_strength[i]
        shape_r2 = _radius2(theta, aspect, nf, fs)
        k2 = (d / 2.0) ** 2 / shape_r2.mean()  # area = ½∮r² dθ = π(d/2)²
        r_max_px = np.sqrt(k2 * shape_r2.max()) * 1.02 / pixel_size_nm * stretch
        x, y = particles.x[i], particles.y[i]
        c0, c1 = max(int(np.floor(x - r_max_px)), 0), min(int(np.ceil(x + r_max_px)) + 1, w)
        r0, r1 = max(int(np.floor(y - r_max_px)), 0), min(int(np.ceil(y + r_max_px)) + 1, h)
        if c0 >= c1 or r0 >= r1:
            continue
        # Small particles need finer sampling for their volume to come out right.
        s = int(np.clip(np.ceil(40.0 / max(2.0 * r_max_px, 1.0)), 2, 8))
        sub = (np.arange(s) + 0.5) / s - 0.5
        dx = (np.arange(c0, c1)[:, None] + sub[None, :]).ravel() - x
        dy = (np.arange(r0, r1)[:, None] + sub[None, :]).ravel() - y
        dxg, dyg = np.meshgrid(dx, dy)
        u = (L[0, 0] * dxg + L[0, 1] * dyg) * pixel_size_nm
        v = (L[1, 0] * dxg + L[1, 1] * dyg) * pixel_size_nm
        ca, sa = np.cos(particles.angle_rad[i]), np.sin(particles.angle_rad[i])
        up, vp = ca * u + sa * v, -sa * u + ca * v
        r2 = k2 * _radius2(np.arctan2(vp, up), aspect, nf, fs)
        q = 1.0 - (up * up + vp * vp) / r2
        inside = q > 0
        c = particles.height_ratio[i] * d / 2.0
        t_sub = 2.0 * c * np.sqrt(np.where(inside, q, 0.0))
        nr, nc = r1 - r0, c1 - c0
        t_pix = t_sub.reshape(nr, s, nc, s).mean(axis=(1, 3)).astype(np.float32)
        cover = inside.reshape(nr, s, nc, s).mean(axis=(1, 3))
        thick[int(particles.layer[i]) & 1, r0:r1, c0:c1] += t_pix
        win = (cover >= 0.5) & (t_pix > best[r0:r1, c0:c1])
        best[r0:r1, c0:c1][win] = t_pix[win]
        labels[r0:r1, c0:c1][win] = particles.id[i]
        if lattice is not None and np.isfinite(particles.lattice_angle_rad[i]):
            g = 2.0 * np.pi / d_spacing_nm
            ph = (particles.id[i] * 0.6180339) % 1.0 * 2.0 * np.pi
            a1 = particles.lattice_angle_rad[i] - particles.angle_rad[i]
            a2 = a1 + np.deg2rad(70.53)
            mod = np.cos(g * (np.cos(a1) * up + np.sin(a1) * vp) + ph)
            mod += 0.5 * np.cos(g * (np.cos(a2) * up + np.sin(a2) * vp) + 2.0 * ph)
            lattice[r0:r1, c0:c1] += (t_sub * mod).reshape(nr, s, nc, s).mean(axis=(1, 3))
    area = label_areas(labels, particles.id)
    return Footprints(thick, labels, lattice, area)


def label_areas(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Number of pixels labelled with each of `ids` (0 for an id with none), int64."""
    if len(ids) == 0:
        return np.zeros(0, np.int64)
    uniq, counts = np.unique(labels[labels > 0], return_counts=True)
    pos = np.searchsorted(uniq, ids)
    pos = np.clip(pos, 0, max(len(uniq) - 1, 0))
    found = (uniq[pos] == ids) if len(uniq) else np.zeros(len(ids), bool)
    return np.where(found, counts[pos] if len(uniq) else 0, 0).astype(np.int64)
