"""Materials and supports: composition tables, thickness maps with steps and pores, and the
atomic-scale texture of amorphous films.

All lengths are nanometres; maps are float32 arrays of shape (height, width); randomness comes
from an explicit `numpy.random.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "MATERIALS",
    "Material",
    "amorphous_phase",
    "get_material",
    "smooth_field",
    "support_thickness",
]

_AVOGADRO_PER_NM3 = 602.214  # N_A / (1e21 nm³ per cm³): g/cm³ ÷ g/mol → formula units per nm³
_REF_ABSORPTION_NM = 150.0  # BF: mean free path for scattering outside the aperture, a-C 200 kV


@dataclass(frozen=True)
class Material:
    """A material by composition and density.

    Attributes
    ----------
    name : str
    composition : tuple of (Z, atoms per formula unit)
    density_g_cm3, molar_mass_g_mol : float
    d_spacing_nm : float or None
        Strongest lattice spacing (lattice fringes in BF-TEM).
    inner_potential_v : float
        Mean inner potential (V), for the BF phase.
    """

    name: str
    composition: tuple[tuple[int, float], ...]
    density_g_cm3: float
    molar_mass_g_mol: float
    d_spacing_nm: float | None = None
    inner_potential_v: float = 10.0

    @property
    def number_density_nm3(self) -> float:
        """Formula units per nm³."""
        return self.density_g_cm3 / self.molar_mass_g_mol * _AVOGADRO_PER_NM3

    def scattering_power(self, alpha: float) -> float:
        """``ρ Σ n_k Z_k^α`` per nm³ (ADF signal per nm of thickness, up to a constant)."""
        return self.number_density_nm3 * sum(n * z**alpha for z, n in self.composition)

    def absorption_length_nm(self) -> float:
        """BF mean free path for scattering outside the objective aperture (nm), scaled from
        amorphous carbon with the high-angle cross-section ``∝ Z^1.5``."""
        carbon = MATERIALS["C"].scattering_power(1.5)
        return _REF_ABSORPTION_NM * carbon / self.scattering_power(1.5)


MATERIALS: dict[str, Material] = {
    m.name: m
    for m in (
        Material("Pd", ((46, 1),), 12.02, 106.42, 0.2246, 28.0),
        Material("Pt", ((78, 1),), 21.45, 195.08, 0.2265, 33.0),
        Material("Au", ((79, 1),), 19.30, 196.97, 0.2355, 30.0),
        Material("Ag", ((47, 1),), 10.49, 107.87, 0.2359, 24.0),
        Material("Cu", ((29, 1),), 8.96, 63.55, 0.2088, 23.0),
        Material("Ni", ((28, 1),), 8.91, 58.69, 0.2034, 22.0),
        Material("Rh", ((45, 1),), 12.41, 102.91, 0.2196, 28.0),
        Material("C", ((6, 1),), 2.0, 12.011, None, 9.0),
        Material("Al2O3", ((13, 2), (8, 3)), 3.6, 101.96, 0.1977, 15.0),
        Material("SiO2", ((14, 1), (8, 2)), 2.2, 60.08, None, 11.0),
        Material("TiO2", ((22, 1), (8, 2)), 4.23, 79.87, 0.3520, 17.0),
        Material("CeO2", ((58, 1), (8, 2)), 7.22, 172.11, 0.3124, 20.0),
        Material("MgO", ((12, 1), (8, 1)), 3.58, 40.30, 0.2106, 13.0),
        Material("Si3N4", ((14, 3), (7, 4)), 3.17, 140.28, None, 12.0),
    )
}


def get_material(m: str | Material) -> Material:
    """The `Material` named `m` (or `m` itself); ValueError naming the known ones."""
    if isinstance(m, Material):
        return m
    try:
        return MATERIALS[m]
    except KeyError:
        raise ValueError(f"unknown material '{m}' (known: {', '.join(MATERIALS)})") from None


# --- support -----------------------------------------------------------------------------------


def smooth_field(
    shape: tuple[int, int], *, correlation_px: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian random field of unit variance with correlation length `correlation_px`.

    Long correlations are drawn on a coarse grid and upsampled (cubic), which is what makes a
    2048² support cost milliseconds instead of seconds.
    """
    h, w = shape
    step = max(1, int(correlation_px / 3.0))
    ch, cw = h // step + 4, w // step + 4
    noise = rng.standard_normal((ch, cw), dtype=np.float32)
    sigma = max(correlation_px / step / 2.0, 0.5)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    if step > 1:
        noise = cv2.resize(noise, (cw * step, ch * step), interpolation=cv2.INTER_CUBIC)
    out = np.ascontiguousarray(noise[step : step + h, step : step + w])
    out -= out.mean()
    return out / max(float(out.std()), 1e-12)


def support_thickness(
    shape: tuple[int, int],
    *,
    pixel_size_nm: float,
    thickness_nm: float = 20.0,
    variation: float = 0.15,
    correlation_nm: float = 40.0,
    texture: float = 0.04,
    texture_nm: float = 0.4,
    grain_nm: float = 0.0,
    step_nm: float = 0.0,
    pore_fraction: float = 0.0,
    pore_size_nm: float = 6.0,
    pore_depth: float = 0.8,
    rng: np.random.Generator,
) -> np.ndarray:
    """Projected thickness of a support film (nm), float32, shape `shape`.

    Parameters
    ----------
    thickness_nm : float
        Mean thickness.
    variation : float
        Relative standard deviation of the smooth thickness map.
    correlation_nm : float
        Correlation length of the smooth map.
    texture, texture_nm : float
        Relative standard deviation and grain size of the fine (amorphous / atomic-scale)
        texture.
    grain_nm, step_nm : float
        Mean size of crystalline grains (0: none) and standard deviation of their thickness
        offsets: sharp steps between terraces of a polycrystalline support.
    pore_fraction, pore_size_nm, pore_depth : float
        Area fraction, size and depth (fraction of the thickness missing, 1 = hole through
        to vacuum) of pores: dark holes in ADF.
    """
    px = pixel_size_nm
    t = thickness_nm * (
        1.0 + variation * smooth_field(shape, correlation_px=correlation_nm / px, rng=rng)
    )
    if grain_nm > 0 and step_nm > 0:
        # Two overlapping tessellations: platelets stacked on platelets, as in a powder support.
        for scale in (1.0, 0.6):
            g = _grains(shape, grain_px=scale * grain_nm / px, edge_px=max(0.3 / px, 1.0), rng=rng)
            t += g * (step_nm * scale)
    if texture > 0:
        fine = rng.standard_normal(shape, dtype=np.float32)
        sigma = max(texture_nm / px / 2.0, 0.5)
        fine = cv2.GaussianBlur(fine, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        fine *= texture * thickness_nm / max(float(fine.std()), 1e-12)
        t += fine
    if pore_fraction > 0:
        f = smooth_field(shape, correlation_px=pore_size_nm / px, rng=rng)
        # Rough rims: a finer field added to the coarse one makes the outlines irregular.
        f += 0.35 * smooth_field(shape, correlation_px=pore_size_nm / px / 4.0, rng=rng)
        thr = np.quantile(
            f[:: max(1, shape[0] // 256), :: max(1, shape[1] // 256)], 1.0 - pore_fraction
        )
        # A soft edge of ~0.5 nm: pores in real supports have rounded rims, not cliffs.
        edge = max(0.5 / px, 1.0) / (pore_size_nm / px) * 3.0
        open_ = np.clip((f - thr) / edge, 0.0, 1.0)
        t *= 1.0 - pore_depth * open_
    return np.maximum(t, 0.0).astype(np.float32)


def _grains(
    shape: tuple[int, int], *, grain_px: float, edge_px: float, rng: np.random.Generator
) -> np.ndarray:
    """Voronoi grains with random offsets (unit variance) and soft (edge_px) boundaries.

    Each grain is a wedge, not a flat terrace: a random thickness gradient across it (up to
    about one offset per grain size) is what makes platelets of a powder support look real.
    The tessellation is a labelled distance transform (linear time), not a nearest-seed query.
    """
    # Computed on a grid of edge_px steps, then upsampled (linear): the upsampling makes the
    # soft grain boundaries, and the work is (edge_px)² times smaller.
    step = max(1, int(edge_px))
    pad = int(grain_px / step)  # seeds beyond the edges too, so border grains are not special
    ph, pw = shape[0] // step + 2 + 2 * pad, shape[1] // step + 2 + 2 * pad
    g = grain_px / step
    n = max(2, int(ph * pw / g**2))
    sy, sx = rng.integers(0, ph, n), rng.integers(0, pw, n)
    slope_y, slope_x = rng.normal(0.0, 0.7 / g, (2, n))
    const = rng.standard_normal(n) - slope_y * sy - slope_x * sx
    seeds = np.full((ph, pw), 255, np.uint8)
    seeds[sy, sx] = 0
    _, lab = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    # Labels are numbered by the library: find which seed each label is.
    owner = np.zeros(int(lab.max()) + 1, np.int64)
    owner[lab[sy, sx]] = np.arange(n)
    k = owner[lab]
    rows = np.arange(ph, dtype=np.float32)[:, None]
    cols = np.arange(pw, dtype=np.float32)[None, :]
    coarse = (const[k] + slope_y[k] * rows + slope_x[k] * cols).astype(np.float32)
    out = cv2.resize(coarse, (pw * step, ph * step), interpolation=cv2.INTER_LINEAR)
    o = pad * step
    return np.ascontiguousarray(out[o : o + shape[0], o : o + shape[1]])


def amorphous_phase(
    shape: tuple[int, int],
    *,
    pixel_size_nm: float,
    grain_nm: float = 0.1,
    rng: np.random.Generator,
) -> np.ndarray:
    """Unit-variance random potential of an amorphous film at the scale of its atoms (BF-TEM).

    The objective lens turns this into the defocus speckle of amorphous carbon; it is drawn
    once per sample and moves with it (sequences warp it with the support).
    """
    fine = rng.standard_normal(shape, dtype=np.float32)
    sigma = max(grain_nm / pixel_size_nm / 2.0, 0.5)
    fine = cv2.GaussianBlur(fine, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return fine / max(float(fine.std()), 1e-12)
