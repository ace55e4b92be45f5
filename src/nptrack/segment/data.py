"""Training batches made on the fly: physics-simulated frames plus randomised particle scenes.

Two sources, mixed per batch (no dataset on disk):

- ``simulate_sample``: ADF-STEM (bright particles) and BF-TEM (dark particles, Fresnel and
  lattice fringes) frames from :mod:`nptrack.simulate` at a random pixel size around the
  model's, with random materials, supports (thickness, pores, grains), doses, particle sizes
  (1–10 nm) and densities. This is what the microscope-side model must get right.
- ``shapes_sample``: randomised scenes of
  spheres, cubes, rods, polygons and blobs with flat, thickness, rim-lit or shaded looks,
  textures, halos, both polarities, additive (TEM) or occluding (SEM) composition, uneven
  backgrounds, support edges, burned-in text and scale bars (labelled background), blur,
  noise, 8-bit and JPEG artefacts. Real micrographs without a simulator of their own (the
  EMPS set) look like this, not like our simulator.

Every sample is then augmented (flips, 90° rotations, gamma, blur, intensity scale/offset after
normalisation) and normalised exactly as :func:`nptrack.segment.infer.normalise` does at
inference time.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nptrack.measure.split import label_range
from nptrack.segment.infer import normalise

__all__ = [
    "COLUMN_NORMALISATION",
    "NORMALISATION",
    "ColumnDataConfig",
    "DataConfig",
    "augment",
    "centre_target",
    "column_sample",
    "load_supports",
    "make_batch",
    "make_column_batch",
    "separation_target",
    "shapes_sample",
    "simulate_frame",
    "simulate_sample",
    "support_sample",
]

#: Input normalisation written into the model metadata and used for every training sample.
NORMALISATION = {"method": "percentile", "low": 1.0, "high": 99.0, "clip": [-0.5, 1.5]}


class DataConfig(BaseModel):
    """Where training samples come from (the ``[data]`` table of a training config)."""

    model_config = ConfigDict(extra="forbid")

    tile_px: int = Field(256, ge=32, description="side of a training tile")
    pixel_size_nm: float = Field(0.2, gt=0, description="pixel size the model expects")
    pixel_size_range: tuple[float, float] = Field(
        (0.7, 1.4), description="simulated pixel size relative to pixel_size_nm"
    )
    diameter_nm: tuple[float, float] = Field((1.0, 10.0), description="simulated particles")
    sim_fraction: float = Field(0.5, ge=0, le=1, description="share of simulator frames")
    adf_fraction: float = Field(0.5, ge=0, le=1, description="ADF share of simulator frames")
    adf_dose_e_per_px: tuple[float, float] = (300.0, 30000.0)
    bf_dose_e_per_px: tuple[float, float] = (100.0, 5000.0)
    shapes_diameter_px: tuple[float, float] = Field(
        (4.0, 110.0), description="particle diameters of the randomised scenes (px)"
    )
    coverage: tuple[float, float] = Field((0.02, 0.8), description="particle area fraction")
    overlay_probability: float = Field(0.3, ge=0, le=1, description="burned-in text, bars")
    max_blur_px: float = Field(1.5, ge=0)
    intensity_jitter: float = Field(0.1, ge=0, description="scale/offset after normalising")
    supports_dir: str | None = Field(None, description="particle-free support images (fine-tune)")
    supports_fraction: float = Field(0.7, ge=0, le=1, description="share pasted on supports")
    supports_contrast: str = Field("bright", pattern="^(bright|dark)$")
    supports_pixel_size_nm: float | None = Field(
        None, gt=0, description="for support files without a calibration"
    )
    separation_px: int = Field(
        0,
        ge=0,
        le=4,
        description="particle pixels this close to another particle are taught as background "
        "(a line 2 x separation_px wide between touching particles); 0 = off",
    )
    separation_weight: float = Field(10.0, ge=1, description="loss weight of those pixels")
    centres: bool = Field(
        False,
        description="a second output: each particle's distance to its own outline over its "
        "largest one (1 at its inner point), which keeps touching particles apart as markers",
    )
    centre_core_level: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="teach the centre channel as binary cores, the pixels whose centre map is "
        "above this level, instead of the continuous map; unset = the continuous map",
    )

    @model_validator(mode="after")
    def _one_second_channel(self) -> DataConfig:
        if self.centres and self.separation_px > 0:
            raise ValueError("centres and separation_px both use the second channel: pick one")
        return self


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def simulate_sample(
    cfg: DataConfig,
    *,
    rng: np.random.Generator,
    modality: str | None = None,
    instances: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One simulator frame of ``cfg.tile_px``² and its particle mask.

    See :func:`simulate_frame`, which also returns the per-particle truth.

    Returns
    -------
    image : ndarray of float32, shape (tile_px, tile_px)
        Counts (not normalised).
    mask : ndarray of uint8, shape (tile_px, tile_px)
        1 on particles; with ``instances``, int32 particle ids (0 = background).
    """
    sim = simulate_frame(cfg, rng=rng, modality=modality)
    return sim.image.astype(np.float32), _mask_or_ids(sim.labels, instances)


def _mask_or_ids(labels: np.ndarray, instances: bool) -> np.ndarray:
    return labels.astype(np.int32) if instances else (labels > 0).astype(np.uint8)


def simulate_frame(
    cfg: DataConfig, *, rng: np.random.Generator, modality: str | None = None
) -> Any:
    """One simulated frame of ``cfg.tile_px``² with random sample and microscope settings.

    Parameters
    ----------
    cfg : DataConfig
    rng : numpy.random.Generator
    modality : {"adf", "bf"}, optional
        Random (``cfg.adf_fraction``) when None.

    Returns
    -------
    nptrack.simulate.stem.SimImage
        ``image`` (counts), ``labels`` (particle ids), ``truth`` (centres, diameters),
        ``pixel_size_nm``.
    """
    from nptrack.simulate import particles as sp
    from nptrack.simulate import stem, support

    n_px = cfg.tile_px
    shape = (n_px, n_px)
    px = cfg.pixel_size_nm * _log_uniform(rng, *cfg.pixel_size_range)
    if modality is None:
        modality = "adf" if rng.random() < cfg.adf_fraction else "bf"
    d_lo, d_hi = cfg.diameter_nm
    d_mean = _log_uniform(rng, d_lo * 1.2, d_hi * 0.8)
    d_sd = d_mean * rng.uniform(0.05, 0.4)
    area_nm2 = (n_px * px) ** 2
    cover = _log_uniform(rng, *cfg.coverage)
    n = max(1, int(cover * area_nm2 / (np.pi / 4 * d_mean**2)))
    parts = sp.random_particles(
        shape,
        pixel_size_nm=px,
        n=min(n, 400),
        diameter_nm=d_mean,
        diameter_sd_nm=d_sd,
        aspect_max=rng.uniform(1.0, 1.5),
        facet_fraction=rng.uniform(0, 1),
        min_gap_nm=rng.uniform(-0.3 * d_mean, 1.0),
        bottom_fraction=rng.uniform(0, 0.3) if modality == "adf" else 0.0,
        margin_px=d_mean / px / 2,
        rng=rng,
    )
    # Particles outside the requested range are clipped by random_particles' 0.3–3x bounds;
    # keep the simulated population inside [d_lo, d_hi] by construction of d_mean instead.
    thickness = rng.uniform(3.0, 30.0)
    sup = support.support_thickness(
        shape,
        pixel_size_nm=px,
        thickness_nm=thickness,
        variation=rng.uniform(0.02, 0.3),
        correlation_nm=rng.uniform(5.0, 60.0),
        texture=rng.uniform(0.0, 0.1),
        grain_nm=rng.uniform(3.0, 20.0) if rng.random() < 0.3 else 0.0,
        step_nm=rng.uniform(0.5, 5.0),
        pore_fraction=rng.uniform(0.0, 0.2) if rng.random() < 0.4 else 0.0,
        pore_size_nm=rng.uniform(2.0, 12.0),
        pore_depth=rng.uniform(0.3, 1.0),
        rng=rng,
    )
    if modality == "adf":
        optics = stem.AdfOptics(
            particle=str(rng.choice(["Pd", "Pt", "Au", "Ag", "Cu", "Ni", "Rh"])),
            support=str(rng.choice(["Al2O3", "C", "SiO2", "TiO2", "MgO"])),
            alpha=rng.uniform(1.3, 1.8),
            dose_e_per_px=_log_uniform(rng, *cfg.adf_dose_e_per_px),
            background_fraction=rng.uniform(0.01, 0.1),
            probe_fwhm_nm=rng.uniform(0.08, 0.3),
            bottom_blur_nm=rng.uniform(0.0, 0.5),
            read_noise_e=rng.uniform(0.0, 3.0),
        )
        sim = stem.render_adf(parts, sup, pixel_size_nm=px, optics=optics, rng=rng)
    else:
        optics = stem.BfOptics(
            particle=str(rng.choice(["Au", "Pt", "Pd", "Ag"])),
            support=str(rng.choice(["C", "SiO2", "Si3N4"])),
            dose_e_per_px=_log_uniform(rng, *cfg.bf_dose_e_per_px),
            defocus_nm=rng.uniform(-50.0, 250.0),
            speckle_rad=rng.uniform(0.05, 0.3),
            lattice_contrast=rng.uniform(0.0, 0.3),
            mtf_sigma_px=rng.uniform(0.3, 1.2),
        )
        texture = support.amorphous_phase(shape, pixel_size_nm=px, rng=rng)
        sim = stem.render_bf(parts, sup, texture, pixel_size_nm=px, optics=optics, rng=rng)
    return sim


def _field(shape: tuple[int, int], corr_px: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance smooth noise with correlation length ~`corr_px` (coarse grid, upsampled)."""
    h, w = shape
    step = max(1, int(corr_px / 3))
    small = rng.standard_normal((h // step + 3, w // step + 3)).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), max(corr_px / step / 2, 0.5))
    big = cv2.resize(small, (small.shape[1] * step, small.shape[0] * step), cv2.INTER_CUBIC)
    out = big[step : step + h, step : step + w]
    return (out - out.mean()) / max(float(out.std()), 1e-6)


_KINDS = ("ellipse", "ellipse", "superellipse", "capsule", "polygon", "blob")
_LOOKS = ("flat", "thickness", "thickness", "rim", "shaded", "coreshell")


def _rho(kind: str, u: np.ndarray, v: np.ndarray, a: float, b: float, q: dict) -> np.ndarray:
    """Normalised radius of a shape in its own frame: < 1 inside, 1 on the outline."""
    if kind == "superellipse":
        p = q["p"]
        return (np.abs(u / a) ** p + np.abs(v / b) ** p) ** (1 / p)
    if kind == "capsule":
        return np.hypot(np.maximum(np.abs(u) - (a - b), 0), v) / b
    if kind == "polygon":
        ang = q["phase"] + 2 * np.pi * np.arange(q["sides"]) / q["sides"]
        proj = np.maximum(u[..., None] * np.cos(ang) + v[..., None] * np.sin(ang) * a / b, 0)
        return (proj**12).sum(-1) ** (1 / 12) / (a * np.cos(np.pi / q["sides"]))
    r, t = np.hypot(u / a, v / b), np.arctan2(v, u)
    if kind == "blob":
        k = np.arange(2, 6)
        r = r / (
            1
            + (q["amp"][:, None, None] * np.cos(k[:, None, None] * t + q["ph"][:, None, None])).sum(
                0
            )
        )
    return r


def shapes_sample(
    size_px: int,
    *,
    diameter_px: tuple[float, float],
    coverage: tuple[float, float],
    overlay_probability: float,
    rng: np.random.Generator,
    instances: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A randomised micrograph-like scene of particles and its mask.

    Parameters
    ----------
    size_px : int
        Side of the square image.
    diameter_px : (float, float)
        Range of the scene's median particle diameter (log-uniform), pixels.
    coverage : (float, float)
        Range of the particle area fraction (log-uniform).
    overlay_probability : float
        Chance of burned-in text and a scale bar (background in the mask).
    rng : numpy.random.Generator
    instances : bool
        Return particle ids instead of a mask (where shapes overlap, the later one's).

    Returns
    -------
    image : ndarray of float32, shape (size_px, size_px)
    mask : ndarray of uint8, shape (size_px, size_px)
        1 on particles; with ``instances``, int32 particle ids (0 = background).
    """
    shape = (size_px, size_px)
    sign = 1.0 if rng.random() < 0.5 else -1.0  # bright or dark particles
    # Every disturbance is scaled to the particle contrast: a scene in which the particles
    # cannot be seen teaches nothing but label noise.
    contrast = _log_uniform(rng, 0.08, 0.6)
    d_med = _log_uniform(rng, *diameter_px)
    bg = np.full(shape, rng.uniform(0.3, 0.7), np.float32)
    yy, xx = np.mgrid[0:size_px, 0:size_px].astype(np.float32)
    g = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(g) * xx + np.sin(g) * yy) / size_px - 0.5
    bg += rng.uniform(0, 1.5) * contrast * ramp
    bg += rng.uniform(0, 0.6) * contrast * _field(shape, rng.uniform(30, 300), rng)
    if rng.random() < 0.25:  # edge of the support film: vacuum is the particles' opposite
        corr = max(rng.uniform(80, 300), 3 * d_med)
        edge = _field(shape, corr, rng) > rng.uniform(-0.5, 1.5)
        soft = cv2.GaussianBlur(edge.astype(np.float32), (0, 0), rng.uniform(0.7, 4))
        bg -= sign * rng.uniform(0.2, 1.0) * contrast * soft
    tex_corr = _log_uniform(rng, 0.6, 8.0)
    bg += _log_uniform(rng, 0.01, 0.4) * contrast * _field(shape, tex_corr, rng)
    img, ids = bg.copy(), np.zeros(shape, np.int32)
    spread = rng.uniform(0.03, 0.35)
    kinds = rng.choice(_KINDS, size=rng.integers(1, 3))
    look = str(rng.choice(_LOOKS))
    occlude = rng.random() < 0.4
    aspect_hi = rng.choice([1.3, 2.0, 6.0], p=[0.6, 0.25, 0.15])
    halo = rng.uniform(0.0, 0.2) if rng.random() < 0.3 else 0.0
    tex_amp = rng.uniform(0, 0.3) if rng.random() < 0.4 else 0.0
    cover = _log_uniform(rng, *coverage)
    n = int(np.clip(cover * size_px**2 / (np.pi / 4 * d_med**2), 1, 300))
    avoid = rng.random() < 0.5  # otherwise particles may touch and overlap
    centres: list[tuple[float, float, float]] = []
    light = rng.uniform(0, 2 * np.pi)
    for _ in range(n * 3):
        if len(centres) >= n:
            break
        d = float(np.clip(d_med * np.exp(rng.normal(0, spread)), 2.5, size_px * 0.9))
        asp = rng.uniform(1.0, aspect_hi)
        a, b = d / 2 * np.sqrt(asp), d / 2 / np.sqrt(asp)
        cx, cy = rng.uniform(-a / 2, size_px + a / 2, 2)
        if avoid and any(np.hypot(cx - x, cy - y) < (a + r) * 1.05 for x, y, r in centres):
            continue
        centres.append((cx, cy, a))
        kind = str(rng.choice(kinds))
        q = {
            "p": rng.uniform(2.5, 10),
            "sides": int(rng.integers(3, 9)),
            "phase": rng.uniform(0, 2 * np.pi),
            "amp": rng.uniform(0, 0.15, 4) / np.arange(1, 5),
            "ph": rng.uniform(0, 2 * np.pi, 4),
        }
        r = int(np.ceil(a * 1.4)) + 3
        y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, size_px)
        x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, size_px)
        if y1 <= y0 or x1 <= x0:
            continue
        th = rng.uniform(0, np.pi)
        dx, dy = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
        u, v = dx * np.cos(th) + dy * np.sin(th), -dx * np.sin(th) + dy * np.cos(th)
        rho = _rho(kind, u, v, a, b, q)
        cov = np.clip((1 - rho) * np.sqrt(a * b) + 0.5, 0, 1).astype(np.float32)
        t = np.sqrt(np.clip(1 - rho**2, 0, 1))
        if look == "flat":
            prof = np.ones_like(t)
        elif look == "thickness":
            prof = t ** rng.uniform(0.2, 1.0)
        elif look == "rim":
            prof = 0.35 + 0.65 * np.clip(rho, 0, 1) ** 6
        elif look == "shaded":
            prof = 0.6 + 0.4 * np.clip(u / a * np.cos(light) + v / b * np.sin(light), -1, 1)
        else:
            prof = np.where(rho < rng.uniform(0.4, 0.85), 1.0, rng.uniform(0.3, 0.7))
        if tex_amp:
            prof = prof * (1 + tex_amp * _field(prof.shape, rng.uniform(0.7, 3), rng))
        val = (sign * contrast * rng.uniform(0.7, 1.3) * prof).astype(np.float32)
        patch = img[y0:y1, x0:x1]
        if occlude:
            level = float(np.median(bg)) + val
            patch[:] = patch * (1 - cov) + cov * level
        else:
            patch += cov * val
        if halo:
            ring = np.exp(-(((rho - 1) * np.sqrt(a * b) / 1.5) ** 2)) * (rho > 1)
            patch -= sign * halo * contrast * ring.astype(np.float32)
        ids[y0:y1, x0:x1][rho < 1] = len(centres)
    if rng.random() < overlay_probability:
        _overlay(img, ids, rng)
    blur = rng.uniform(0, 1.5)
    if blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    noise = _log_uniform(rng, 0.01, 0.5) * contrast
    img = img + noise * rng.standard_normal(shape).astype(np.float32)
    if rng.random() < 0.5:  # published figures: 8-bit, often JPEG-compressed
        lo, hi = np.percentile(img, [0.5, 99.5])
        u8 = np.clip((img - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            _, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 95))])
            u8 = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        img = u8.astype(np.float32)
    return img.astype(np.float32), _mask_or_ids(ids, instances)


def _overlay(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    """Burn a label, a scale bar and its text into a corner; they are not particles."""
    h, w = img.shape
    lo, hi = np.percentile(img, [1, 99])
    ink, box = (hi + 0.3 * (hi - lo), lo) if rng.random() < 0.5 else (lo - 0.3 * (hi - lo), hi)
    canvas = np.zeros((h, w), np.uint8)
    fills = np.zeros((h, w), np.uint8)
    scale = rng.uniform(0.3, 1.2) * w / 256
    thick = max(1, round(scale * 2))
    text = str(rng.choice(["(a)", "b", "(B)", "50 nm", "100 nm", "20 nm", "1 um", "c)", "A"]))
    x0, y0 = int(rng.uniform(0, 0.6) * w), int(rng.uniform(0.15, 1.0) * h)
    if rng.random() < 0.4:
        (tw, tht), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        cv2.rectangle(fills, (x0 - 3, y0 - tht - 3), (x0 + tw + 3, y0 + 5), 1, -1)
    cv2.putText(canvas, text, (x0, y0), cv2.FONT_HERSHEY_SIMPLEX, scale, 1, thick)
    if rng.random() < 0.7:
        bx, by = int(rng.uniform(0, 0.7) * w), int(rng.uniform(0.6, 0.97) * h)
        bl, bt = int(rng.uniform(0.1, 0.3) * w), max(2, int(rng.uniform(0.01, 0.03) * h))
        cv2.rectangle(canvas, (bx, by), (bx + bl, by + bt), 1, -1)
    img[fills > 0] = box
    img[canvas > 0] = ink
    mask[(canvas > 0) | (fills > 0)] = 0


def augment(
    image: np.ndarray, mask: np.ndarray, cfg: DataConfig, *, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flips, 90° rotations, gamma and blur, then normalisation and intensity jitter.

    Returns
    -------
    x : ndarray of float32, shape (H, W)
        Normalised as at inference, then scaled by ``1 ± intensity_jitter`` and offset by
        ``± intensity_jitter`` (robustness to imperfect normalisation).
    mask : ndarray of uint8, shape (H, W)
    """
    k = int(rng.integers(4))
    image, mask = np.rot90(image, k), np.rot90(mask, k)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    image = np.ascontiguousarray(image, dtype=np.float32)
    mask = np.ascontiguousarray(mask)
    if rng.random() < 0.3:  # a detector / display nonlinearity
        lo, hi = float(image.min()), float(image.max())
        if hi > lo:
            image = lo + (hi - lo) * ((image - lo) / (hi - lo)) ** rng.uniform(0.6, 1.6)
    if cfg.max_blur_px > 0 and rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, cfg.max_blur_px))
    x = normalise(image, NORMALISATION)
    j = cfg.intensity_jitter
    x = x * np.float32(1 + rng.uniform(-j, j)) + np.float32(rng.uniform(-j, j))
    return x.astype(np.float32), mask


def load_supports(cfg: DataConfig) -> list[np.ndarray]:
    """The support images of ``cfg.supports_dir``, resampled to ``cfg.pixel_size_nm``.

    Raises
    ------
    ValueError
        No readable image, or an image without pixel size and no
        ``supports_pixel_size_nm``.
    """
    from pathlib import Path

    from nptrack.io.read import read_frames

    if cfg.supports_dir is None:
        return []
    files = sorted(p for p in Path(cfg.supports_dir).iterdir() if p.is_file())
    out = []
    for path in files:
        for frame in read_frames(path):
            px = frame.pixel_size_nm[1] if frame.pixel_size_nm else cfg.supports_pixel_size_nm
            if px is None:
                raise ValueError(f"{path}: no pixel size; set data.supports_pixel_size_nm")
            z = px / cfg.pixel_size_nm
            h, w = frame.data.shape
            size = (max(8, round(w * z)), max(8, round(h * z)))
            out.append(cv2.resize(frame.data, size, interpolation=cv2.INTER_AREA))
    if not out:
        raise ValueError(f"{cfg.supports_dir}: no support images found")
    return out


def support_sample(
    supports: list[np.ndarray],
    cfg: DataConfig,
    *,
    rng: np.random.Generator,
    instances: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic particles pasted on a random crop of a real support image (Faraz et al.).

    Returns the image and the particle mask (int32 particle ids with ``instances``).
    """
    from nptrack.simulate.particles import random_particles
    from nptrack.simulate.stem import paste_particles

    n_px, px = cfg.tile_px, cfg.pixel_size_nm
    sup = supports[int(rng.integers(len(supports)))]
    if min(sup.shape) < n_px:  # small supports: mirror them up to a tile
        ph, pw = max(0, n_px - sup.shape[0]), max(0, n_px - sup.shape[1])
        sup = cv2.copyMakeBorder(sup, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
    y0 = int(rng.integers(sup.shape[0] - n_px + 1))
    x0 = int(rng.integers(sup.shape[1] - n_px + 1))
    crop = np.ascontiguousarray(sup[y0 : y0 + n_px, x0 : x0 + n_px])
    d_mean = _log_uniform(rng, cfg.diameter_nm[0] * 1.2, cfg.diameter_nm[1] * 0.8)
    cover = _log_uniform(rng, *cfg.coverage)
    n = max(1, int(cover * (n_px * px) ** 2 / (np.pi / 4 * d_mean**2)))
    parts = random_particles(
        (n_px, n_px),
        pixel_size_nm=px,
        n=min(n, 400),
        diameter_nm=d_mean,
        diameter_sd_nm=d_mean * rng.uniform(0.05, 0.4),
        min_gap_nm=rng.uniform(-0.3 * d_mean, 1.0),
        margin_px=d_mean / px / 2,
        rng=rng,
    )
    sim = paste_particles(
        crop,
        parts,
        pixel_size_nm=px,
        contrast=cfg.supports_contrast,
        peak_contrast=rng.uniform(0.1, 0.7),
        blur_fwhm_nm=rng.uniform(0.08, 0.3),
        rng=rng,
    )
    return sim.image, _mask_or_ids(sim.labels, instances)


def separation_target(
    ids: np.ndarray, *, separation_px: int, weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mask with background lines between touching particles, and the loss weight per pixel.

    A particle pixel with a pixel of another particle within ``separation_px`` (Chebyshev
    distance) becomes background, so touching particles are taught as separate blobs
    (Ronneberger et al., MICCAI 2015); those pixels get the loss weight ``weight``.

    Parameters
    ----------
    ids : ndarray of int, shape (H, W)
        Particle ids, 0 = background.
    separation_px : int
        Half-width of the line, pixels (0: plain mask, weight 1).
    weight : float

    Returns
    -------
    target : ndarray of float32, shape (H, W)
        0 or 1.
    weights : ndarray of float32, shape (H, W)
    """
    ids = np.asarray(ids, np.int32)
    inside = ids > 0
    if separation_px <= 0 or not inside.any():
        return inside.astype(np.float32), np.ones(ids.shape, np.float32)
    lowest, highest = label_range(ids, radius_px=separation_px)
    line = inside & ((highest > ids) | (lowest < ids))
    target = (inside & ~line).astype(np.float32)
    return target, np.where(line, np.float32(weight), np.float32(1.0))


def centre_target(ids: np.ndarray) -> np.ndarray:
    """Each particle's distance to its own outline, over the largest such distance.

    The map is 1 at each particle's innermost pixel and falls to 0 at its outline, including
    the line where it meets another particle, so the pixels above 1/2 form one core per
    particle even where the union of touching particles is nearly convex.

    Parameters
    ----------
    ids : ndarray of int, shape (H, W)
        Particle ids, 0 = background.

    Returns
    -------
    ndarray of float32, shape (H, W)
        In [0, 1]; 0 on the background.
    """
    ids = np.asarray(ids, np.int32)
    inside = ids > 0
    if not inside.any():
        return np.zeros(ids.shape, np.float32)
    # Outline pixels: a 4-neighbour of another id (background included). The frame's edge is
    # no outline: a particle cut by it continues outside.
    edge = np.zeros(ids.shape, bool)
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    # Inside a particle the nearest outline pixel is one of its own.
    core = np.pad(inside & ~edge, 1, mode="edge")
    dist = cv2.distanceTransform(core.view(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1] + 1.0
    top = np.zeros(int(ids.max()) + 1, np.float32)
    np.maximum.at(top, ids[inside], dist[inside])
    out = np.zeros(ids.shape, np.float32)
    out[inside] = dist[inside] / top[ids[inside]]
    return out


def make_batch(
    cfg: DataConfig,
    batch_size: int,
    *,
    rng: np.random.Generator,
    supports: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A training batch.

    Parameters
    ----------
    cfg : DataConfig
    batch_size : int
    rng : numpy.random.Generator
    supports : list of ndarray, optional
        Real support images (see :func:`load_supports`); when given, a share
        ``cfg.supports_fraction`` of the samples are particles pasted on them.

    Returns
    -------
    x : ndarray of float32, shape (batch_size, 1, tile_px, tile_px)
        Normalised images.
    y : ndarray of float32, shape (batch_size, C, tile_px, tile_px)
        Channel 0: particle masks (0 or 1). With ``cfg.separation_px`` > 0 (C = 2), the masks
        have background lines between touching particles (:func:`separation_target`) and
        channel 1 is the loss weight per pixel. With ``cfg.centres`` (C = 2), channel 1 is
        :func:`centre_target`, or its cores above ``cfg.centre_core_level`` (0 or 1).
    """
    xs, ys = [], []
    sep = cfg.separation_px
    ids = sep > 0 or cfg.centres
    for _ in range(batch_size):
        if supports and rng.random() < cfg.supports_fraction:
            img, mask = support_sample(supports, cfg, rng=rng, instances=ids)
        elif rng.random() < cfg.sim_fraction:
            img, mask = simulate_sample(cfg, rng=rng, instances=ids)
        else:
            img, mask = shapes_sample(
                cfg.tile_px,
                diameter_px=cfg.shapes_diameter_px,
                coverage=cfg.coverage,
                overlay_probability=cfg.overlay_probability,
                rng=rng,
                instances=ids,
            )
        x, m = augment(img, mask, cfg, rng=rng)
        xs.append(x)
        if cfg.centres:
            centre = centre_target(m)
            if cfg.centre_core_level is not None:
                centre = (centre > cfg.centre_core_level).astype(np.float32)
            ys.append(np.stack([(m > 0).astype(np.float32), centre]))
        elif sep > 0:
            ys.append(
                np.stack(separation_target(m, separation_px=sep, weight=cfg.separation_weight))
            )
        else:
            ys.append(m[None])
    return np.stack(xs)[:, None].astype(np.float32), np.stack(ys).astype(np.float32)


# -- atomic-column mode ------------------------------------------------------------------------
#: Normalisation of the column model: percentiles of the full-resolution frame (no shrinking:
#: averaging would change the statistics of shot noise between tiles and whole frames).
COLUMN_NORMALISATION = {
    "method": "percentile",
    "low": 1.0,
    "high": 99.5,
    "clip": [-1.0, 4.0],
    "stats_px": 1 << 16,
}


class ColumnDataConfig(BaseModel):
    """Simulated atomic-resolution tiles (the ``[columns]`` table of a training config).

    Ranges are sampled uniformly per tile (``snr`` log-uniformly); see
    :mod:`nptrack.simulate.columns` for the physics, the SNR definition and the labels.
    """

    model_config = ConfigDict(extra="forbid")

    crystals: list[str] = Field(["ceo2_110"], description="keys of simulate.columns.CRYSTALS")
    tile_px: int = Field(128, ge=32)
    pixel_size_A: float = Field(0.3, gt=0, description="pixel size the model expects (Å)")
    pixel_size_range: tuple[float, float] = Field((0.92, 1.08), description="sim / model")
    n_classes: int = Field(16, ge=1, le=254, description="K: occupancy classes 1..K")
    label_radius_A: float = Field(0.8, gt=0)
    column_weight: float = Field(5.0, ge=1)
    diameter_A: tuple[float, float] = (10.0, 45.0)
    d100_ratio: tuple[float, float] = (1.0, 1.8)
    truncation: tuple[float, float] = (0.0, 0.45)
    facet_jitter: tuple[float, float] = (0.0, 0.08)
    snr: tuple[float, float] = Field((0.7, 5.0), description="log-uniform")
    clean_fraction: float = Field(0.05, ge=0, le=1, description="tiles without noise")
    empty_fraction: float = Field(0.03, ge=0, le=1, description="support-only tiles")
    alpha: tuple[float, float] = (1.5, 1.9)
    probe_fwhm_A: tuple[float, float] = (0.6, 1.0)
    defocus_blur_A: tuple[float, float] = (0.0, 0.3)
    tilt_deg: float = Field(1.0, ge=0, description="max |tilt| about x and about y")
    vacancy_fraction: tuple[float, float] = (0.0, 0.05)
    drift: float = Field(0.015, ge=0, description="max |shear| and |stretch|")
    support_level: tuple[float, float] = (0.2, 3.0)
    support_variation: tuple[float, float] = (0.0, 0.4)
    intensity_jitter: float = Field(0.5, ge=0, description="log scale sd after normalising")


def _u(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1]))


def column_sample(
    cfg: ColumnDataConfig, *, rng: np.random.Generator, snr: float | None = -1.0
) -> Any:
    """One random atomic-resolution scene of ``cfg.tile_px``² px.

    Parameters
    ----------
    cfg : ColumnDataConfig
    rng : numpy.random.Generator
    snr : float or None
        Fixed SNR (None: no noise); the default -1 draws it from ``cfg``.

    Returns
    -------
    nptrack.simulate.columns.ColumnImage
    """
    from nptrack.simulate.columns import ColumnSimConfig, simulate_column_image

    n = cfg.tile_px
    if snr is not None and snr < 0:
        snr = None if rng.random() < cfg.clean_fraction else _log_uniform(rng, *cfg.snr)
    empty = rng.random() < cfg.empty_fraction
    centre = rng.uniform(0.15, 0.85, 2) * n + (10 * n if empty else 0)
    t = cfg.tilt_deg
    sim = ColumnSimConfig(
        crystal=str(rng.choice(cfg.crystals)),
        shape_px=(n, n),
        pixel_size_A=cfg.pixel_size_A * _u(rng, cfg.pixel_size_range),
        diameter_A=_u(rng, cfg.diameter_A),
        d100_ratio=_u(rng, cfg.d100_ratio),
        truncation=_u(rng, cfg.truncation),
        facet_jitter=_u(rng, cfg.facet_jitter),
        center_px=(float(centre[0]), float(centre[1])),
        rotation_deg=float(rng.uniform(0, 360)),
        tilt_deg=(float(rng.uniform(-t, t)), float(rng.uniform(-t, t))),
        vacancy_fraction=_u(rng, cfg.vacancy_fraction),
        alpha=_u(rng, cfg.alpha),
        probe_fwhm_A=_u(rng, cfg.probe_fwhm_A),
        defocus_blur_A=_u(rng, cfg.defocus_blur_A),
        drift_shear=float(rng.uniform(-cfg.drift, cfg.drift)),
        drift_stretch=float(rng.uniform(-cfg.drift, cfg.drift)),
        support_level=_u(rng, cfg.support_level),
        support_variation=_u(rng, cfg.support_variation),
        snr=snr if not empty else (snr or 2.0),
        n_classes=cfg.n_classes,
        label_radius_A=cfg.label_radius_A,
        column_weight=cfg.column_weight,
    )
    return simulate_column_image(sim, rng=rng)


def make_column_batch(
    cfg: ColumnDataConfig, batch_size: int, *, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A training batch of atomic-resolution tiles.

    Samples are flipped / rotated by 90° at random, normalised with
    :data:`COLUMN_NORMALISATION`, then scaled by ``exp(N(0, intensity_jitter))`` (the network
    must read occupancy from local intensity steps, not from the frame's percentiles, which
    depend on how much of the frame the particle fills).

    Returns
    -------
    x : ndarray of float32, shape (batch_size, 1, tile_px, tile_px)
    y : ndarray of float32, shape (batch_size, 2, tile_px, tile_px)
        Channel 0: class of the column owning the pixel (0 = none); channel 1: its label
        membership ``g`` in [0, 1] (soft target: class with ``g``, background with 1 - g).
    """
    xs, ys = [], []
    for _ in range(batch_size):
        im = column_sample(cfg, rng=rng)
        stack = np.stack([im.image, im.owner_class.astype(np.float32), im.membership])
        k = int(rng.integers(4))
        stack = np.rot90(stack, k, axes=(1, 2))
        if rng.random() < 0.5:
            stack = stack[:, :, ::-1]
        x = normalise(np.ascontiguousarray(stack[0]), COLUMN_NORMALISATION)
        x = x * np.float32(np.exp(cfg.intensity_jitter * rng.standard_normal()))
        xs.append(x)
        ys.append(np.ascontiguousarray(stack[1:]))
    return np.stack(xs)[:, None].astype(np.float32), np.stack(ys).astype(np.float32)
