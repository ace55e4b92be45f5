"""Atomic-resolution ADF-STEM images of faceted nanoparticles, with column occupancy truth.

A particle is cut from a crystal (fluorite CeO2 viewed along [110] is the preset; fcc Au and
Pt along [110] and [100] too) as a truncated octahedron ({111} facets, {100} truncations, a
flat base on the support, per-facet jitter). Atoms are grouped into the columns of the zone
axis; a column's *occupancy* is its number of atoms (its local thickness along the beam).

Image formation is incoherent (ADF-like) and linear: every atom is a Gaussian spot of peak
``(Z / Z_ref) ** alpha`` where ``Z_ref`` is the atomic number of the labelled (heavy) species,
so a column of ``n`` cations on the zone axis peaks at ``n`` "atom units" and anion columns are
much fainter. Spots are blurred by the probe (FWHM) and a defocus blur (Gaussian sd), small
crystal tilts smear the columns, vacancies remove random atoms, a scan drift shears the frame,
and an amorphous support (random light atoms, thickness variations) lies underneath. Noise is
Poisson at the dose that gives the requested SNR.

SNR (as used everywhere in nptrack): for every labelled column in the frame, take the pixel
nearest its centre; ``h`` is the noise-free particle signal there (image minus the support-only
image) and ``I`` the noise-free total there, both in counts at the dose ``D`` (electrons per
unit signal). The column's SNR is ``D h / sqrt(D I)`` (peak above background over the Poisson
noise sd at the peak); the frame's SNR is the mean over its labelled columns. Per pixel of the
given pixel size.

Labels (the paper's trick of labels smoothed toward the background at column edges): every
labelled column of occupancy ``n`` gets a Gaussian membership ``g(r) = exp(-r² / 2σ²)`` of its
distance ``r`` to the column centre, ``σ = label_radius_A / sqrt(2 ln 2)`` (set to 0 below
``g = 0.05``). The soft target is class ``min(n, K)`` with probability ``g`` and background
with ``1 - g``; the hard label map is the class where ``g >= 0.5`` (a disc of radius
``label_radius_A``), else 0; the loss weight is ``1 + (column_weight - 1) g``.

Coordinates: Å in the crystal, px in images (x = column, y = row, origin at the centre of the
top-left pixel); ``pixel_size_A`` is Å per px.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

__all__ = [
    "CRYSTALS",
    "ColumnImage",
    "ColumnSequence",
    "ColumnSimConfig",
    "Crystal",
    "Particle",
    "build_particle",
    "column_label_maps",
    "column_spacing_A",
    "simulate_column_image",
    "simulate_column_sequence",
]

_FCC = ((0.0, 0.0, 0.0), (0.0, 0.5, 0.5), (0.5, 0.0, 0.5), (0.5, 0.5, 0.0))
_FLUORITE_ANIONS = tuple(product((0.25, 0.75), repeat=3))


@dataclass(frozen=True)
class Crystal:
    """A cubic crystal seen along a zone axis.

    Attributes
    ----------
    name : str
    a_A : float
        Cubic lattice constant (Å).
    sites : tuple of (species, (fx, fy, fz))
        Atoms of the conventional cell, fractional coordinates.
    z : dict of str to int
        Atomic number of each species.
    zone : (int, int, int)
        Viewing direction (beam), crystal coordinates.
    x_axis : (int, int, int)
        Crystal direction along the image x axis (perpendicular to `zone`).
    labelled : tuple of str
        Species whose columns are labelled (anion columns of oxides are too faint in ADF).
    """

    name: str
    a_A: float
    sites: tuple[tuple[str, tuple[float, float, float]], ...]
    z: dict[str, int]
    zone: tuple[int, int, int]
    x_axis: tuple[int, int, int]
    labelled: tuple[str, ...]

    def frame(self) -> np.ndarray:
        """Rows: image x, image y, beam direction (unit vectors in crystal coordinates)."""
        d = np.asarray(self.zone, float) / np.linalg.norm(self.zone)
        ex = np.asarray(self.x_axis, float) / np.linalg.norm(self.x_axis)
        return np.stack([ex, np.cross(d, ex), d])


def _fcc(name: str, el: str, a: float, z: int, zone: tuple, x: tuple) -> Crystal:
    return Crystal(name, a, tuple((el, s) for s in _FCC), {el: z}, zone, x, (el,))


_CEO2_SITES = tuple(("Ce", s) for s in _FCC) + tuple(("O", s) for s in _FLUORITE_ANIONS)
CRYSTALS: dict[str, Crystal] = {
    "ceo2_110": Crystal(
        "CeO2 [110]", 5.411, _CEO2_SITES, {"Ce": 58, "O": 8}, (1, 1, 0), (0, 0, 1), ("Ce",)
    ),
    "au_110": _fcc("Au [110]", "Au", 4.078, 79, (1, 1, 0), (0, 0, 1)),
    "au_100": _fcc("Au [100]", "Au", 4.078, 79, (0, 0, 1), (1, 0, 0)),
    "pt_110": _fcc("Pt [110]", "Pt", 3.924, 78, (1, 1, 0), (0, 0, 1)),
    "pt_100": _fcc("Pt [100]", "Pt", 3.924, 78, (0, 0, 1), (1, 0, 0)),
}


def column_spacing_A(crystal: Crystal) -> float:
    """Smallest projected distance (Å) between two labelled columns of a perfect crystal."""
    frac = np.array([s for sp, s in crystal.sites if sp in crystal.labelled])
    cells = np.array(list(product(range(-1, 2), repeat=3)), float)
    pts = (cells[:, None, :] + frac[None]).reshape(-1, 3) * crystal.a_A
    p = pts @ crystal.frame()[:2].T
    d = np.hypot(*(p[:, None, :] - p[None, :, :]).transpose(2, 0, 1))
    return float(d[d > 1e-3].min())


class ColumnSimConfig(BaseModel):
    """One atomic-resolution scene and its imaging conditions (lengths in Å unless px)."""

    model_config = ConfigDict(extra="forbid")

    crystal: str = Field("ceo2_110", description="key of CRYSTALS")
    shape_px: tuple[int, int] = Field((256, 256), description="image (height, width)")
    pixel_size_A: float = Field(0.3, gt=0, description="Å per pixel")
    diameter_A: float = Field(30.0, gt=0, description="2 × distance of the {111} facets")
    d100_ratio: float = Field(1.25, gt=0, description="{100} / {111} facet distance")
    truncation: float = Field(0.3, ge=0, lt=1, description="share of the half-height cut")
    facet_jitter: float = Field(0.05, ge=0, description="relative sd of facet distances")
    center_px: tuple[float, float] | None = Field(None, description="(x, y); None: centre")
    rotation_deg: float = Field(0.0, description="in-plane rotation of the crystal")
    tilt_deg: tuple[float, float] = Field((0.0, 0.0), description="about image x and y")
    vacancy_fraction: float = Field(0.0, ge=0, lt=1, description="atoms removed at random")
    alpha: float = Field(1.7, gt=0, description="Z-contrast exponent")
    probe_fwhm_A: float = Field(0.8, gt=0)
    defocus_blur_A: float = Field(0.0, ge=0, description="extra Gaussian sd")
    drift_shear: float = Field(0.0, description="x shift per row (px/px) from scan drift")
    drift_stretch: float = Field(0.0, description="relative stretch of y from scan drift")
    support_level: float = Field(0.5, ge=0, description="mean support signal (atom units)")
    support_variation: float = Field(0.2, ge=0, le=0.9, description="thickness variation")
    support_z: int = Field(7, ge=1, description="atomic number of the amorphous support")
    snr: float | None = Field(2.0, gt=0, description="mean column peak SNR; None: no noise")
    n_classes: int = Field(16, ge=1, le=254, description="K: occupancy classes 1..K")
    label_radius_A: float = Field(0.8, gt=0, description="radius where labels reach 1/2")
    column_weight: float = Field(5.0, ge=1, description="loss weight at column centres")


@dataclass
class Particle:
    """Lattice sites of a particle (and a shell around it) in crystal coordinates (Å).

    ``present`` marks the atoms there now; ``column`` groups sites into the columns of the zone
    axis (index into ``column_xy_A``, the projected column positions of the untilted crystal).
    """

    crystal: Crystal
    xyz_A: np.ndarray  # (N, 3)
    species: np.ndarray  # (N,) str
    present: np.ndarray  # (N,) bool
    surface_A: np.ndarray  # (N,) signed distance to the shape (< 0 inside)
    column: np.ndarray  # (N,) int
    column_xy_A: np.ndarray  # (M, 2)
    column_species: np.ndarray  # (M,) str

    def occupancy(self) -> np.ndarray:
        """Atoms present in every column, shape (M,)."""
        return np.bincount(self.column[self.present], minlength=len(self.column_xy_A))


def build_particle(
    crystal: Crystal,
    *,
    diameter_A: float,
    d100_ratio: float = 1.25,
    truncation: float = 0.3,
    facet_jitter: float = 0.05,
    shell_A: float = 2.0,
    rng: np.random.Generator,
) -> Particle:
    """Cut a truncated octahedron from `crystal`, centred at a random point of the cell.

    Parameters
    ----------
    crystal : Crystal
    diameter_A : float
        Twice the distance of the {111} facets from the centre (Å).
    d100_ratio : float
        {100} facet distance over {111} facet distance (>= 1.73: no {100} facets).
    truncation : float
        Share of the half-height along the beam cut away by the flat base on the support.
    facet_jitter : float
        Relative standard deviation of each facet's distance (asymmetric particles).
    shell_A : float
        Sites up to this far outside the shape are kept (absent) for atoms to arrive on.
    rng : numpy.random.Generator
    """
    a, r111 = crystal.a_A, diameter_A / 2
    normals = [np.array(n) / np.sqrt(3) for n in product((-1, 1), repeat=3)]
    dists = [r111] * 8
    for k in range(3):
        for s in (-1, 1):
            n = np.zeros(3)
            n[k] = s
            normals.append(n)
            dists.append(r111 * d100_ratio)
    frame = crystal.frame()
    normals.append(-frame[2])  # flat base facing the support, below the particle
    dists.append(r111 * 1.2247 * (1 - truncation))  # 1.2247 R: half-thickness along <110>
    n_mat = np.stack(normals)
    d_vec = np.asarray(dists) * (1 + facet_jitter * rng.standard_normal(len(dists)))
    # The shape lies inside the {100} cube and inside the {111} octahedron (vertex at sqrt(3) R).
    extent = min(np.sqrt(3) * d_vec[:8].max(), d_vec[8:14].max()) + shell_A
    half = int(np.ceil(extent / a)) + 1
    cells = np.mgrid[-half : half + 1, -half : half + 1, -half : half + 1].reshape(3, -1).T
    frac = np.array([s for _, s in crystal.sites])
    names = np.array([sp for sp, _ in crystal.sites])
    offset = rng.random(3)  # the centre falls anywhere in the cell
    xyz = ((cells[:, None, :] + frac[None] - offset) * a).reshape(-1, 3)
    species = np.tile(names, len(cells))
    ball = np.einsum("ij,ij->i", xyz, xyz) <= extent**2  # cheap pre-cut
    xyz, species = xyz[ball], species[ball]
    surface = (xyz @ n_mat.T - d_vec).max(axis=1)
    keep = surface <= shell_A
    xyz, species, surface = xyz[keep], species[keep], surface[keep]
    proj = xyz @ frame[:2].T
    key = np.round(proj / 0.01).astype(np.int64)
    _, first, column = np.unique(key, axis=0, return_index=True, return_inverse=True)
    column = column.ravel()
    return Particle(
        crystal, xyz, species, surface <= 0, surface, column, proj[first], species[first]
    )


def _rotation(cfg: ColumnSimConfig, crystal: Crystal) -> np.ndarray:
    tx, ty = np.deg2rad(cfg.tilt_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(tx), -np.sin(tx)], [0, np.sin(tx), np.cos(tx)]])
    ry = np.array([[np.cos(ty), 0, np.sin(ty)], [0, 1, 0], [-np.sin(ty), 0, np.cos(ty)]])
    t = np.deg2rad(cfg.rotation_deg)
    rz = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    return rz @ ry @ rx @ crystal.frame()


def _atom_px(particle: Particle, cfg: ColumnSimConfig, shift_px: tuple[float, float]) -> np.ndarray:
    """Image positions (x, y) in px of every site: rotation, tilt, scan drift, shift."""
    h, w = cfg.shape_px
    cx, cy = cfg.center_px if cfg.center_px is not None else ((w - 1) / 2, (h - 1) / 2)
    p = particle.xyz_A @ _rotation(cfg, particle.crystal)[:2].T / cfg.pixel_size_A
    y = p[:, 1] * (1 + cfg.drift_stretch)
    x = p[:, 0] + cfg.drift_shear * y
    return np.stack([x + cx + shift_px[0], y + cy + shift_px[1]], axis=1)


def _splat(shape: tuple[int, int], xy: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Bilinear deposit of point weights on the pixel grid."""
    img = np.zeros((shape[0] + 2, shape[1] + 2))
    x0, y0 = np.floor(xy[:, 0]), np.floor(xy[:, 1])
    fx, fy = xy[:, 0] - x0, xy[:, 1] - y0
    ix, iy = x0.astype(int) + 1, y0.astype(int) + 1
    ok = (ix >= 0) & (iy >= 0) & (ix < shape[1] + 1) & (iy < shape[0] + 1)
    for dx, dy, f in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy)):
        np.add.at(img, (iy[ok] + dy, ix[ok] + dx), (weight * f)[ok])
    np.add.at(img, (iy[ok] + 1, ix[ok] + 1), (weight * fx * fy)[ok])
    return img[1:-1, 1:-1]


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    # Scaled so that a unit point keeps a unit peak: intensities stay in atom units.
    return ndimage.gaussian_filter(img, sigma_px, mode="constant") * (2 * np.pi * sigma_px**2)


def _sigma_px(cfg: ColumnSimConfig) -> float:
    s = np.hypot(cfg.probe_fwhm_A / 2.3548, cfg.defocus_blur_A)
    return float(s / cfg.pixel_size_A)


def _support(cfg: ColumnSimConfig, z_ref: int, rng: np.random.Generator) -> np.ndarray:
    """Amorphous support in atom units: random light atoms on the pixel grid (Poisson) with a
    smooth thickness variation (correlation ~30 Å), blurred by the probe."""
    h, w = cfg.shape_px
    sig = _sigma_px(cfg)
    w_atom = (cfg.support_z / z_ref) ** cfg.alpha
    # Smooth field drawn on a coarse grid (one node per 10 Å) and interpolated: cheap at any
    # frame size, correlation length ~30 Å.
    step = 10.0 / cfg.pixel_size_A
    coarse = rng.standard_normal((int(h / step) + 4, int(w / step) + 4))
    coarse = ndimage.gaussian_filter(coarse, 1.5, mode="wrap")
    yy, xx = np.mgrid[0:h, 0:w] / step + 1.5
    field = ndimage.map_coordinates(coarse, [yy, xx], order=1)
    field = 1 + cfg.support_variation * field / max(float(coarse.std()), 1e-12)
    lam = np.clip(field, 0.05, None) * cfg.support_level / (w_atom * 2 * np.pi * sig**2)
    return _blur(rng.poisson(lam).astype(float) * w_atom, sig)


def column_label_maps(
    xy_px: np.ndarray,
    occupancy: np.ndarray,
    shape: tuple[int, int],
    *,
    sigma_px: float,
    n_classes: int,
    column_weight: float = 5.0,
    cutoff: float = 0.05,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Label maps of columns (see the module docstring for the smoothing).

    Parameters
    ----------
    xy_px : ndarray, shape (M, 2)
        Column centres (x, y) in px.
    occupancy : ndarray of int, shape (M,)
        Atoms per column (>= 1); classes are ``min(occupancy, n_classes)``.
    shape : (int, int)
    sigma_px : float
        Gaussian sd of the label membership (px).
    n_classes : int
    column_weight : float
    cutoff : float
        Memberships below this are set to 0.

    Returns
    -------
    labels : ndarray of uint8, shape (H, W)
        Hard labels: class where the membership is >= 0.5, else 0.
    owner_class : ndarray of uint8, shape (H, W)
        Class of the column each pixel belongs to where the membership is > 0, else 0.
    membership : ndarray of float32, shape (H, W)
        ``g`` in [0, 1] (of the nearest column).
    weight : ndarray of float32, shape (H, W)
        ``1 + (column_weight - 1) g``.
    """
    h, w = shape
    g = np.zeros(shape, np.float32)
    cls = np.zeros(shape, np.uint8)
    rad = int(np.ceil(sigma_px * np.sqrt(-2 * np.log(cutoff)))) + 1
    for (x, y), n in zip(xy_px, occupancy, strict=True):
        ix, iy = round(float(x)), round(float(y))
        x0, x1 = max(ix - rad, 0), min(ix + rad + 1, w)
        y0, y1 = max(iy - rad, 0), min(iy + rad + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        gi = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma_px**2)).astype(np.float32)
        sub_g, sub_c = g[y0:y1, x0:x1], cls[y0:y1, x0:x1]
        better = (gi > sub_g) & (gi >= cutoff)
        sub_g[better] = gi[better]
        sub_c[better] = min(int(n), n_classes)
    labels = np.where(g >= 0.5, cls, 0).astype(np.uint8)
    weight = (1 + (column_weight - 1) * g).astype(np.float32)
    return labels, cls, g, weight


@dataclass
class ColumnImage:
    """A simulated frame with its truth.

    Attributes
    ----------
    image : ndarray of float32, shape (H, W)
        Counts (Poisson) at ``dose``; the noise-free image when ``snr`` was None.
    clean : ndarray of float32, shape (H, W)
        Expected counts (no noise).
    support : ndarray of float32, shape (H, W)
        Expected counts of the support alone.
    labels, owner_class, membership, weight : ndarray, shape (H, W)
        See :func:`column_label_maps`.
    columns : dict of str to ndarray
        Labelled columns inside the frame: ``column_id``, ``x``, ``y`` (px), ``occupancy``.
    dose : float
        Counts per atom unit.
    snr : float or None
        Measured on ``clean`` with the definition of the module docstring.
    pixel_size_A : float
    atoms : int
        Atoms of the labelled species in the whole particle.
    """

    image: np.ndarray
    clean: np.ndarray
    support: np.ndarray
    labels: np.ndarray
    owner_class: np.ndarray
    membership: np.ndarray
    weight: np.ndarray
    columns: dict[str, np.ndarray]
    dose: float
    snr: float | None
    pixel_size_A: float
    atoms: int


def _peak_ratio(columns: dict[str, np.ndarray], total: np.ndarray, support: np.ndarray) -> float:
    """Mean over columns of ``h / sqrt(I)`` at unit dose (see the SNR definition)."""
    if len(columns["x"]) == 0:
        return float("nan")
    ix = np.clip(np.round(columns["x"]).astype(int), 0, total.shape[1] - 1)
    iy = np.clip(np.round(columns["y"]).astype(int), 0, total.shape[0] - 1)
    tot = total[iy, ix]
    return float(np.mean((tot - support[iy, ix]) / np.sqrt(np.maximum(tot, 1e-12))))


def _render(
    particle: Particle,
    cfg: ColumnSimConfig,
    support: np.ndarray,
    shift_px: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Noise-free image (atom units) and labelled columns inside the frame."""
    crystal = particle.crystal
    z_ref = crystal.z[crystal.labelled[0]]
    xy = _atom_px(particle, cfg, shift_px)
    on = particle.present
    weights = np.array([(crystal.z[s] / z_ref) ** cfg.alpha for s in particle.species])
    img = _blur(_splat(cfg.shape_px, xy[on], weights[on]), _sigma_px(cfg)) + support
    occ = particle.occupancy()
    sums = np.zeros((len(occ), 2))
    np.add.at(sums, particle.column[on], xy[on])
    keep = (occ > 0) & np.isin(particle.column_species, crystal.labelled)
    cxy = sums[keep] / occ[keep, None]
    h, w = cfg.shape_px
    inside = (cxy[:, 0] > -0.5) & (cxy[:, 0] < w - 0.5) & (cxy[:, 1] > -0.5)
    inside &= cxy[:, 1] < h - 0.5
    ids = np.flatnonzero(keep)[inside]
    cols = {"column_id": ids, "x": cxy[inside, 0], "y": cxy[inside, 1], "occupancy": occ[ids]}
    return img, cols


def _finish(
    particle: Particle,
    cfg: ColumnSimConfig,
    img: np.ndarray,
    support: np.ndarray,
    cols: dict[str, np.ndarray],
    dose: float,
    rng: np.random.Generator,
) -> ColumnImage:
    clean = (img * dose).astype(np.float32)
    noisy = clean if cfg.snr is None else rng.poisson(clean).astype(np.float32)
    sig_l = cfg.label_radius_A / np.sqrt(2 * np.log(2)) / cfg.pixel_size_A
    maps = column_label_maps(
        np.stack([cols["x"], cols["y"]], axis=1),
        cols["occupancy"],
        cfg.shape_px,
        sigma_px=sig_l,
        n_classes=cfg.n_classes,
        column_weight=cfg.column_weight,
    )
    snr = None if cfg.snr is None else float(np.sqrt(dose) * _peak_ratio(cols, img, support))
    heavy = particle.present & np.isin(particle.species, particle.crystal.labelled)
    return ColumnImage(
        noisy, clean, (support * dose).astype(np.float32), *maps, cols, dose, snr,
        cfg.pixel_size_A, int(heavy.sum()),
    )  # fmt: skip


def _prepare(cfg: ColumnSimConfig, rng: np.random.Generator) -> tuple[Particle, np.ndarray]:
    if cfg.crystal not in CRYSTALS:
        raise ValueError(f"unknown crystal {cfg.crystal!r}; known: {', '.join(CRYSTALS)}")
    crystal = CRYSTALS[cfg.crystal]
    particle = build_particle(
        crystal,
        diameter_A=cfg.diameter_A,
        d100_ratio=cfg.d100_ratio,
        truncation=cfg.truncation,
        facet_jitter=cfg.facet_jitter,
        rng=rng,
    )
    if cfg.vacancy_fraction > 0:
        particle.present &= rng.random(len(particle.present)) >= cfg.vacancy_fraction
    return particle, _support(cfg, crystal.z[crystal.labelled[0]], rng)


def _dose(cfg: ColumnSimConfig, cols: dict, img: np.ndarray, support: np.ndarray) -> float:
    ratio = _peak_ratio(cols, img, support)
    if cfg.snr is None or not np.isfinite(ratio) or ratio <= 0:
        return 1.0  # no noise (or no column to define the SNR on): atom units
    return float((cfg.snr / ratio) ** 2)


def simulate_column_image(cfg: ColumnSimConfig, *, rng: np.random.Generator) -> ColumnImage:
    """One frame of a particle (see the module docstring for the physics, SNR and labels)."""
    particle, support = _prepare(cfg, rng)
    img, cols = _render(particle, cfg, support)
    return _finish(particle, cfg, img, support, cols, _dose(cfg, cols, img, support), rng)


@dataclass
class ColumnSequence:
    """Frames of one particle whose surface atoms come and go.

    ``truth`` has one row per labelled column per frame: ``frame``, ``column_id`` (stable over
    frames), ``x``, ``y`` (px), ``occupancy``; ``changes`` lists (frame, column_id, +1 | -1).
    """

    frames: list[ColumnImage]
    truth: dict[str, np.ndarray]
    changes: list[tuple[int, int, int]]


def simulate_column_sequence(
    cfg: ColumnSimConfig,
    *,
    frames: int,
    events_per_frame: float = 2.0,
    drift_px_per_frame: float = 0.3,
    rng: np.random.Generator,
) -> ColumnSequence:
    """A series in which surface cations leave and arrive (vacancy formation, migration).

    Between consecutive frames ``Poisson(events_per_frame)`` events happen, each removing a
    present surface atom of the labelled species (within 1.5 Å of the shape's surface) or
    adding one on an empty site of the shell next to a column that has atoms. The frame drifts
    by a random walk of ``drift_px_per_frame`` px sd per axis. The support and the dose (set
    by ``cfg.snr`` on frame 0) stay fixed, noise is drawn per frame.
    """
    particle, support = _prepare(cfg, rng)
    heavy = np.isin(particle.species, particle.crystal.labelled)
    shift = np.zeros(2)
    out: list[ColumnImage] = []
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("frame", "column_id", "x", "y")}
    rows["occupancy"] = []
    changes: list[tuple[int, int, int]] = []
    dose = None
    for t in range(frames):
        if t > 0:
            shift += drift_px_per_frame * rng.standard_normal(2)
            occ = particle.occupancy()
            for _ in range(rng.poisson(events_per_frame)):
                if rng.random() < 0.5:
                    pool = np.flatnonzero(particle.present & heavy & (particle.surface_A > -1.5))
                    sign = -1
                else:
                    pool = np.flatnonzero(~particle.present & heavy & (occ[particle.column] > 0))
                    sign = +1
                if len(pool):
                    i = int(rng.choice(pool))
                    particle.present[i] = sign > 0
                    occ[particle.column[i]] += sign
                    changes.append((t, int(particle.column[i]), sign))
        img, cols = _render(particle, cfg, support, (float(shift[0]), float(shift[1])))
        dose = _dose(cfg, cols, img, support) if dose is None else dose
        out.append(_finish(particle, cfg, img, support, cols, dose, rng))
        rows["frame"].append(np.full(len(cols["x"]), t))
        for k in ("column_id", "x", "y", "occupancy"):
            rows[k].append(cols[k])
    truth = {k: np.concatenate(v) for k, v in rows.items()}
    return ColumnSequence(out, truth, changes)
