"""Simulation presets (`configs/sim/*.toml`) and the functions that turn one into data:
training images with masks, and dynamic sequences with ground truth.

A value written as ``[low, high]`` where the model says `Range` is drawn uniformly per image
(`simulate images`) or once per sequence, which is how one preset yields varied training data.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nptrack.simulate.dynamics import DynamicsConfig, SequenceTruth, simulate_population
from nptrack.simulate.particles import random_particles
from nptrack.simulate.stem import (
    AdfOptics,
    BfOptics,
    ScanDistortion,
    SimImage,
    paste_particles,
    render_adf,
    render_bf,
)
from nptrack.simulate.support import amorphous_phase, get_material, support_thickness

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "PRESETS_DIR",
    "AcquisitionConfig",
    "AdfConfig",
    "BfConfig",
    "FieldConfig",
    "ParticleConfig",
    "SimConfig",
    "SupportConfig",
    "intensity_per_nm3",
    "load_preset",
    "preset_names",
    "render_frames",
    "simulate_image",
    "simulate_sequence",
    "with_field",
]

PRESETS_DIR = Path(__file__).resolve().parents[3] / "configs" / "sim"

Range = float | tuple[float, float]
IntRange = int | tuple[int, int]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FieldConfig(_Model):
    """The acquired field."""

    height_px: int = Field(256, ge=16)
    width_px: int = Field(256, ge=16)
    pixel_size_nm: float = Field(0.39, gt=0)


class ParticleConfig(_Model):
    """The particles: material, number, size distribution, shape."""

    material: str = "Pd"
    count: IntRange = Field(50, description="in the field at the start")
    diameter_nm: Range = 3.0
    diameter_sd_nm: Range = 0.6
    height_ratio: tuple[float, float] = (0.8, 1.0)
    aspect_max: float = Field(1.25, ge=1)
    facet_fraction: float = Field(0.5, ge=0, le=1)
    min_gap_nm: Range = 0.3
    bottom_fraction: float = Field(0.0, ge=0, le=1, description="share on the bottom surface")
    lattice_fraction: float = Field(0.6, ge=0, le=1, description="share showing fringes (BF)")


class SupportConfig(_Model):
    """The support film; `images` switches to real-support mode (particles pasted on them)."""

    material: str = "Al2O3"
    thickness_nm: Range = 20.0
    variation: Range = 0.15
    correlation_nm: Range = 40.0
    texture: Range = 0.04
    texture_nm: float = 0.4
    grain_nm: Range = 0.0
    step_nm: Range = 0.0
    pore_fraction: Range = 0.0
    pore_size_nm: Range = 6.0
    pore_depth: Range = 0.8
    images: list[str] = Field(default=[], description="particle-free real support images")
    images_pixel_size_nm: float | None = Field(None, gt=0, description="if files lack it")
    paste_peak_contrast: Range = Field(0.5, description="pasted particle centre vs support")
    paste_lattice_contrast: Range = Field(0.1, description="lattice fringes of pasted (BF)")


class AdfConfig(_Model):
    """ADF-STEM acquisition (see `stem.AdfOptics`), plus scan distortions."""

    alpha: Range = 1.6
    dose_e_per_px: Range = 2000.0
    background_fraction: Range = 0.05
    probe_fwhm_nm: Range = 0.12
    bottom_blur_nm: float = 0.0
    read_noise_e: float = 1.0
    line_jitter_px: Range = 0.0
    jitter_correlation: float = 0.6
    shear_px_per_row: Range = 0.0


class BfConfig(_Model):
    """BF-TEM acquisition (see `stem.BfOptics`)."""

    dose_e_per_px: Range = 400.0
    voltage_kv: float = 200.0
    defocus_nm: Range = 60.0
    cs_mm: float = 1.2
    focal_spread_nm: float = 4.0
    convergence_mrad: float = 0.2
    aperture_mrad: float = 25.0
    speckle_rad: Range = 0.08
    lattice_contrast: Range = 0.6
    mtf_sigma_px: float = 0.6
    read_noise_e: float = 0.0


class AcquisitionConfig(_Model):
    """How a sequence is written (see `microscope.play`)."""

    frames: int = Field(50, ge=1)
    format: Literal["tif", "emd", "mrc"] = "tif"
    mode: Literal["chunks", "rename", "stack"] = "chunks"
    chunks: int = Field(4, ge=1, description="pieces each file is written in")
    chunk_interval_s: float = Field(0.0, ge=0, description="wall-clock pause between pieces")
    cadence_s: float = Field(0.0, ge=0, description="wall-clock seconds between frames")
    dtype: Literal["float32", "uint16"] = "float32"


class SimConfig(_Model):
    """A whole simulation preset."""

    name: str = "custom"
    description: str = ""
    modality: Literal["adf", "bf"] = "adf"
    field: FieldConfig = FieldConfig()
    particles: ParticleConfig = ParticleConfig()
    support: SupportConfig = SupportConfig()
    adf: AdfConfig = AdfConfig()
    bf: BfConfig = BfConfig()
    dynamics: DynamicsConfig = DynamicsConfig()
    acquisition: AcquisitionConfig = AcquisitionConfig()


def preset_names() -> list[str]:
    """Names of the presets shipped in `configs/sim/`."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def load_preset(preset: str | Path) -> SimConfig:
    """A preset by name (`table1`, `pd250`, `bf_gold`, `dense`) or by path to a TOML file.

    Raises
    ------
    nptrack.config.ConfigError
        One line naming the file and the offending key.
    """
    from nptrack.config import ConfigError

    path = Path(preset)
    if path.suffix != ".toml" and not path.exists():
        path = PRESETS_DIR / f"{preset}.toml"
        if not path.is_file():
            names = ", ".join(preset_names())
            raise ConfigError(f"unknown simulation preset '{preset}' (known: {names})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: preset file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    data.setdefault("name", path.stem)
    try:
        return SimConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{path}: unknown key '{key}'") from None
        raise ConfigError(f"{path}: key '{key}': {err['msg']}") from None


def with_field(cfg: SimConfig, size_px: int, *, pixel_size_nm: float | None = None) -> SimConfig:
    """The same scene on a size_px² field (and pixel size), at the same particles per nm².

    Parameters
    ----------
    cfg : SimConfig
    size_px : int
        Side of the new square field, pixels.
    pixel_size_nm : float, optional
        New pixel size (default: the preset's).

    Returns
    -------
    SimConfig
        A copy; the particle count scales with the field's area in nm².
    """
    f = cfg.field
    px = f.pixel_size_nm if pixel_size_nm is None else pixel_size_nm
    scale = (size_px * px) ** 2 / (f.height_px * f.width_px * f.pixel_size_nm**2)
    return cfg.model_copy(
        update={
            "field": f.model_copy(
                update={"height_px": size_px, "width_px": size_px, "pixel_size_nm": px}
            ),
            "particles": cfg.particles.model_copy(
                update={"count": int(cfg.particles.count * scale)}
            ),
        }
    )


def _draw(value: Any, rng: np.random.Generator) -> Any:
    """A `Range`: a number as is, ``(low, high)`` drawn uniformly."""
    if isinstance(value, tuple | list):
        lo, hi = value
        if isinstance(lo, int) and isinstance(hi, int):
            return int(rng.integers(lo, hi + 1))
        return float(rng.uniform(lo, hi))
    return value


def _drawn(model: BaseModel, rng: np.random.Generator) -> dict[str, Any]:
    """The model's values with every `Range` field drawn (others as they are)."""
    out = model.model_dump()
    for name, info in type(model).model_fields.items():
        if info.annotation in (Range, IntRange):
            out[name] = _draw(out[name], rng)
    return out


def _optics(cfg: SimConfig, rng: np.random.Generator) -> AdfOptics | BfOptics:
    if cfg.modality == "adf":
        a = _drawn(cfg.adf, rng)
        scan_keys = ("line_jitter_px", "jitter_correlation", "shear_px_per_row")
        kw = {k: v for k, v in a.items() if k not in scan_keys}
        ref = float(np.mean(cfg.support.thickness_nm))
        return AdfOptics(
            particle=cfg.particles.material,
            support=cfg.support.material,
            reference_thickness_nm=ref,
            **kw,
        )
    b = _drawn(cfg.bf, rng)
    return BfOptics(particle=cfg.particles.material, support=cfg.support.material, **b)


def _particle_options(cfg: SimConfig, rng: np.random.Generator) -> dict[str, Any]:
    p = _drawn(cfg.particles, rng)
    p.pop("material"), p.pop("count")
    return p


def _support(cfg: SimConfig, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    s = _drawn(cfg.support, rng)
    for k in ("material", "images", "images_pixel_size_nm", "paste_peak_contrast"):
        s.pop(k)
    s.pop("paste_lattice_contrast")
    return support_thickness(shape, pixel_size_nm=cfg.field.pixel_size_nm, rng=rng, **s)


def intensity_per_nm3(cfg: SimConfig, optics: AdfOptics | BfOptics) -> float:
    """Ground-truth intensity per nm³ of particle volume in a frame-0 pixel."""
    px2 = cfg.field.pixel_size_nm**2
    if isinstance(optics, AdfOptics):
        return optics.counts_per_nm(optics.particle) / px2
    lam = get_material(optics.particle).absorption_length_nm()
    return optics.dose_e_per_px / (lam * px2)


def simulate_image(
    cfg: SimConfig,
    *,
    rng: np.random.Generator,
    support_image: np.ndarray | None = None,
    support_pixel_size_nm: float | None = None,
) -> SimImage:
    """One image of the preset, its ranges drawn from `rng`.

    With `support_image` (real-support mode, Faraz et al.'s fine-tuning data), particles are
    pasted onto that particle-free image of pixel size `support_pixel_size_nm` instead of
    rendering a synthetic support; the particle density (count per preset field area) is kept.
    """
    px = cfg.field.pixel_size_nm
    optics = _optics(cfg, rng)
    n = _draw(cfg.particles.count, rng)
    opts = _particle_options(cfg, rng)
    if support_image is not None:
        spx = float(support_pixel_size_nm or px)
        area = support_image.shape[0] * support_image.shape[1] * spx**2
        n = round(n * area / (cfg.field.height_px * cfg.field.width_px * px**2))
        parts = random_particles(support_image.shape, pixel_size_nm=spx, n=n, rng=rng, **opts)
        contrast = "bright" if cfg.modality == "adf" else "dark"
        lattice = float(_draw(cfg.support.paste_lattice_contrast, rng))
        return paste_particles(
            support_image,
            parts,
            pixel_size_nm=spx,
            contrast=contrast,
            peak_contrast=float(_draw(cfg.support.paste_peak_contrast, rng)),
            blur_fwhm_nm=float(_draw(cfg.adf.probe_fwhm_nm, rng))
            if contrast == "bright"
            else 2 * spx,
            lattice_contrast=lattice if contrast == "dark" else 0.0,
            d_spacing_nm=get_material(cfg.particles.material).d_spacing_nm or 0.23,
            rng=rng,
        )
    shape = (cfg.field.height_px, cfg.field.width_px)
    parts = random_particles(shape, pixel_size_nm=px, n=n, rng=rng, **opts)
    support = _support(cfg, shape, rng)
    if isinstance(optics, AdfOptics):
        scan = ScanDistortion(
            float(_draw(cfg.adf.line_jitter_px, rng)),
            cfg.adf.jitter_correlation,
            float(_draw(cfg.adf.shear_px_per_row, rng)),
        )
        return render_adf(parts, support, pixel_size_nm=px, optics=optics, scan=scan, rng=rng)
    texture = amorphous_phase(shape, pixel_size_nm=px, rng=rng)
    return render_bf(parts, support, texture, pixel_size_nm=px, optics=optics, rng=rng)


def simulate_sequence(
    cfg: SimConfig, *, frames: int | None = None, rng: np.random.Generator
) -> tuple[SequenceTruth, AdfOptics | BfOptics, Iterator[SimImage]]:
    """The population history, the optics drawn for it, and a lazy iterator of its frames."""
    frames = frames or cfg.acquisition.frames
    optics = _optics(cfg, rng)
    n = _draw(cfg.particles.count, rng)
    opts = _particle_options(cfg, rng)
    truth = simulate_population(
        (cfg.field.height_px, cfg.field.width_px),
        pixel_size_nm=cfg.field.pixel_size_nm,
        frames=frames,
        n_particles=n,
        config=cfg.dynamics,
        rng=rng,
        particle_options=opts,
    )
    return truth, optics, render_frames(truth, cfg, optics, rng=rng)


def render_frames(
    truth: SequenceTruth,
    cfg: SimConfig,
    optics: AdfOptics | BfOptics,
    *,
    rng: np.random.Generator,
) -> Iterator[SimImage]:
    """Render every frame of `truth`: one support for the whole sample, seen through each
    frame's affine; particles rendered in place with the same affine (exact shapes)."""
    h, w = truth.shape
    px = truth.pixel_size_nm
    corners = np.array([[-0.5, w - 0.5, -0.5, w - 0.5], [-0.5, -0.5, h - 0.5, h - 0.5]])
    pts = np.concatenate([m[:, :2] @ corners + m[:, 2:] for m in truth.transforms], axis=1)
    ox, oy = np.floor(pts.min(axis=1)) - 8
    canvas = (int(np.ceil(pts[1].max() - oy)) + 8, int(np.ceil(pts[0].max() - ox)) + 8)
    support = _support(cfg, canvas, rng)
    texture = amorphous_phase(canvas, pixel_size_nm=px, rng=rng) if cfg.modality == "bf" else None
    jitter = float(_draw(cfg.adf.line_jitter_px, rng))
    for t, m in enumerate(truth.transforms):
        warp = np.hstack([m[:, :2], (m[:, 2] - [ox, oy])[:, None]])
        flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
        sup = cv2.warpAffine(support, warp, (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT)
        parts = truth.acquired(t)
        reach = parts.diameter_nm / px
        near = (
            (parts.x > -reach) & (parts.x < w + reach) & (parts.y > -reach) & (parts.y < h + reach)
        )
        parts = parts.take(near)
        if isinstance(optics, AdfOptics):
            scan = ScanDistortion(jitter, cfg.adf.jitter_correlation, 0.0)
            img = render_adf(
                parts, sup, pixel_size_nm=px, optics=optics, scan=scan, linear=m[:, :2], rng=rng
            )
        else:
            tex = cv2.warpAffine(texture, warp, (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT)
            img = render_bf(
                parts, sup, tex, pixel_size_nm=px, optics=optics, linear=m[:, :2], rng=rng
            )
        img.meta["frame"] = t
        img.meta["time_s"] = t * cfg.dynamics.frame_interval_s
        yield img
