"""Image formation: ADF-STEM and BF-TEM images of supported nanoparticles, with exact masks.

ADF-STEM follows Faraz et al. (2022): the detected signal of a pixel is proportional to
``Σ_k n_k Z_k^α`` over the atoms in the probed column (``α`` 1.3–1.8), i.e. to ``P · t`` with
``P = ρ Σ n_k Z_k^α`` the scattering power of a material (per nm³) and ``t`` its projected
thickness (nm). Particles add to the support because they sit on it.

BF-TEM forms the image of a thin object through the objective lens: the exit wave
``A · exp(iφ)`` (phase from the projected potential of the amorphous film, the particles and
their lattice; amplitude from scattering outside the aperture) is propagated through the
contrast transfer function, which turns the film's random potential into the familiar defocus
speckle and gives the particles their Fresnel fringe and lattice fringes.

Functions take and return arrays; randomness comes from an explicit `numpy.random.Generator`.
Positions are pixels, x = column, y = row, origin at the centre of the top-left pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import cv2
import numpy as np
import scipy.fft

from nptrack.simulate.particles import Footprints, Particles, label_areas, particle_footprints
from nptrack.simulate.support import get_material

__all__ = [
    "TRUTH_DTYPE",
    "AdfOptics",
    "BfOptics",
    "ScanDistortion",
    "SimImage",
    "adf_intensity",
    "apply_scan",
    "bf_intensity",
    "paste_particles",
    "render_adf",
    "render_bf",
    "scan_offsets",
]


# --- optics, noise and truth -------------------------------------------------------------------

TRUTH_DTYPE = np.dtype(
    [
        ("id", "i8"),
        ("x", "f8"),
        ("y", "f8"),
        ("diameter_nm", "f8"),
        ("intensity", "f8"),
        ("area_px", "i8"),
        ("layer", "i8"),
        ("border", "i8"),
    ]
)


@dataclass
class SimImage:
    """A simulated image with its exact masks and per-particle truth.

    Attributes
    ----------
    image : ndarray of float32, shape (height, width)
        Detected electrons per pixel.
    labels : ndarray of int32, shape (height, width)
        Particle id per pixel, 0 = background (the exact footprint, before blur).
    truth : structured ndarray of `TRUTH_DTYPE`, shape (n,)
        One row per particle with a labelled pixel: id, centre x, y (pixels as seen in this
        image), diameter_nm (equivalent disk), intensity (integrated counts above the
        background), area_px, layer (0 top, 1 bottom), border (1 if cut by the image edge).
    pixel_size_nm : float
    meta : dict
        Settings used (modality, materials, dose ...), JSON-serialisable.
    """

    image: np.ndarray
    labels: np.ndarray
    truth: np.ndarray
    pixel_size_nm: float
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScanDistortion:
    """Distortions of a scanned (STEM) image.

    Attributes
    ----------
    line_jitter_px : float
        RMS horizontal offset of each scan line (fast-scan jitter, e.g. mains pickup).
    jitter_correlation : float
        Line-to-line correlation of the jitter (AR(1) coefficient, 0–1).
    shear_px_per_row : float
        Horizontal offset gained per row: drift during the slow scan shears the frame.
    """

    line_jitter_px: float = 0.0
    jitter_correlation: float = 0.6
    shear_px_per_row: float = 0.0


def scan_offsets(height: int, scan: ScanDistortion, *, rng: np.random.Generator) -> np.ndarray:
    """Horizontal offset of every scan line (pixels), shape (height,)."""
    rows = np.arange(height, dtype=np.float64)
    out = scan.shear_px_per_row * (rows - (height - 1) / 2.0)
    if scan.line_jitter_px > 0:
        rho = float(np.clip(scan.jitter_correlation, 0.0, 0.999))
        e = rng.standard_normal(height) * scan.line_jitter_px * np.sqrt(1.0 - rho**2)
        jit = np.empty(height)
        jit[0] = rng.standard_normal() * scan.line_jitter_px
        for i in range(1, height):
            jit[i] = rho * jit[i - 1] + e[i]
        out += jit
    return out


def apply_scan(image: np.ndarray, offsets: np.ndarray, *, labels: bool = False) -> np.ndarray:
    """Shift row i of `image` right by ``offsets[i]`` pixels (linear; nearest for labels)."""
    h, w = image.shape
    map_x = np.arange(w, dtype=np.float32)[None, :] - offsets[:, None].astype(np.float32)
    map_y = np.repeat(np.arange(h, dtype=np.float32)[:, None], w, axis=1)
    if labels:  # cv2.remap has no int32 nearest path for all builds: go through float64
        out = cv2.remap(
            image.astype(np.float64),
            map_x,
            map_y,
            cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        return out.astype(image.dtype)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px < 0.05:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)


def _poisson(expected: np.ndarray, read_noise_e: float, rng: np.random.Generator) -> np.ndarray:
    out = rng.poisson(np.maximum(expected, 0.0).astype(np.float64)).astype(np.float32)
    if read_noise_e > 0:
        out += read_noise_e * rng.standard_normal(out.shape, dtype=np.float32)
    return out


def _truth(
    particles: Particles,
    fp: Footprints,
    intensity: np.ndarray,
    offsets: np.ndarray | None,
    labels: np.ndarray,
) -> np.ndarray:
    h, w = labels.shape
    area = label_areas(labels, particles.id)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    x = particles.x.copy()
    if offsets is not None:
        # The scan moves each row of a particle by its own offset: its centre of mass moves by
        # the mass-weighted mean offset of its rows (the row at its centre where unlabelled).
        x += np.interp(particles.y, np.arange(h), offsets)
        rr, cc = np.nonzero(fp.labels)
        lab = fp.labels[rr, cc]
        mass = (fp.thickness_nm[0][rr, cc] + fp.thickness_nm[1][rr, cc]).astype(np.float64)
        n = int(max(lab.max(initial=0), particles.id.max(initial=0))) + 1
        m = np.bincount(lab, mass, n)[particles.id]
        ms = np.bincount(lab, mass * offsets[rr], n)[particles.id]
        ok = m > 0
        x[ok] = particles.x[ok] + ms[ok] / m[ok]
    out = np.zeros(len(particles), TRUTH_DTYPE)
    out["id"], out["x"], out["y"] = particles.id, x, particles.y
    out["diameter_nm"], out["intensity"], out["area_px"] = particles.diameter_nm, intensity, area
    out["layer"] = particles.layer
    outside = (x < -0.5) | (x >= w - 0.5) | (particles.y < -0.5) | (particles.y >= h - 0.5)
    out["border"] = (np.isin(particles.id, edge) | outside).astype(np.int64)
    return out[area > 0]


@dataclass(frozen=True)
class AdfOptics:
    """ADF-STEM acquisition: materials, Z-contrast exponent, dose, probe and detector.

    Attributes
    ----------
    particle, support : str
        Material names (see `MATERIALS`).
    alpha : float
        Exponent of Z in ``I = C Σ n_k Z_k^α`` (1.3–1.8; higher for higher inner angles).
    dose_e_per_px : float
        Incident electrons per pixel.
    background_fraction : float
        Fraction of the dose scattered onto the detector by `reference_thickness_nm` of
        support: sets ``C``.
    reference_thickness_nm : float
    probe_fwhm_nm : float
        Probe size (Gaussian FWHM).
    bottom_blur_nm : float
        Extra blur (FWHM) of particles on the bottom surface: the probe is focused on top.
    read_noise_e : float
        Gaussian detector noise (electrons RMS).
    """

    particle: str = "Pd"
    support: str = "Al2O3"
    alpha: float = 1.6
    dose_e_per_px: float = 2000.0
    background_fraction: float = 0.05
    reference_thickness_nm: float = 20.0
    probe_fwhm_nm: float = 0.12
    bottom_blur_nm: float = 0.0
    read_noise_e: float = 1.0

    def counts_per_nm(self, material: str) -> float:
        """Expected counts per pixel per nm of projected thickness of `material`."""
        kappa = self.background_fraction / (
            get_material(self.support).scattering_power(self.alpha) * self.reference_thickness_nm
        )
        return self.dose_e_per_px * kappa * get_material(material).scattering_power(self.alpha)


def adf_intensity(
    volume_nm3: np.ndarray, *, pixel_size_nm: float, optics: AdfOptics, area_scale: float = 1.0
) -> np.ndarray:
    """Integrated ADF counts of particles of `volume_nm3` above the support.

    ``area_scale`` is the area of an image pixel in sample pixels (det of the linear map).
    """
    per_px = optics.counts_per_nm(optics.particle)
    return per_px * np.asarray(volume_nm3) / (pixel_size_nm**2 * area_scale)


def render_adf(
    particles: Particles,
    support_nm: np.ndarray,
    *,
    pixel_size_nm: float,
    optics: AdfOptics = AdfOptics(),
    scan: ScanDistortion | None = None,
    noise: bool = True,
    linear: np.ndarray | None = None,
    rng: np.random.Generator,
) -> SimImage:
    """ADF-STEM image: bright particles on a support of thickness `support_nm`.

    Parameters
    ----------
    particles : Particles
        Centres in pixels of this image.
    support_nm : ndarray, shape (height, width)
        Projected support thickness (see `support_thickness`).
    pixel_size_nm : float
    optics : AdfOptics
    scan : ScanDistortion, optional
        Line jitter / shear, applied before the noise (it is geometry, noise is per pixel).
    noise : bool
        False gives the expected counts (infinite-dose limit, same scale).
    linear : ndarray (2, 2), optional
        See `particle_footprints`.
    rng : numpy.random.Generator

    Returns
    -------
    SimImage
        Truth intensity is ``counts_per_nm(particle) · V / pixel area``: the integrated counts
        above the support, blur conserving them.
    """
    shape = support_nm.shape
    fp = particle_footprints(particles, shape, pixel_size_nm=pixel_size_nm, linear=linear)
    k_s, k_p = optics.counts_per_nm(optics.support), optics.counts_per_nm(optics.particle)
    sigma = optics.probe_fwhm_nm / 2.3548 / pixel_size_nm
    img = _blur((k_s * support_nm + k_p * fp.thickness_nm[0]).astype(np.float32), sigma)
    if fp.thickness_nm[1].any():
        sb = np.hypot(optics.probe_fwhm_nm, optics.bottom_blur_nm) / 2.3548 / pixel_size_nm
        img += _blur(k_p * fp.thickness_nm[1], sb)
    labels, offsets = fp.labels, None
    if scan is not None and (scan.line_jitter_px > 0 or scan.shear_px_per_row != 0):
        offsets = scan_offsets(shape[0], scan, rng=rng)
        img, labels = apply_scan(img, offsets), apply_scan(labels, offsets, labels=True)
    if noise:
        img = _poisson(img, optics.read_noise_e, rng)
    det = 1.0 if linear is None else abs(float(np.linalg.det(linear)))
    inten = adf_intensity(
        particles.volume_nm3(), pixel_size_nm=pixel_size_nm, optics=optics, area_scale=det
    )
    meta = {"modality": "adf", **{f.name: getattr(optics, f.name) for f in fields(optics)}}
    return SimImage(
        img.astype(np.float32),
        labels,
        _truth(particles, fp, inten, offsets, labels),
        float(pixel_size_nm),
        meta,
    )


@dataclass(frozen=True)
class BfOptics:
    """BF-TEM acquisition: materials, lens, coherence, dose and camera.

    Attributes
    ----------
    particle, support : str
        Material names (see `MATERIALS`).
    dose_e_per_px : float
        Incident electrons per pixel.
    voltage_kv : float
    defocus_nm : float
        Underfocus is positive (Scherzer ≈ 1.2·sqrt(Cs·λ)).
    cs_mm : float
        Spherical aberration.
    focal_spread_nm, convergence_mrad : float
        Temporal and spatial coherence envelopes.
    aperture_mrad : float
        Objective aperture semi-angle.
    speckle_rad : float
        RMS phase of the amorphous film's atomic-scale potential per sqrt(10 nm) of film.
    lattice_contrast : float
        Relative modulation of the particle potential by its lattice planes.
    mtf_sigma_px : float
        Camera point-spread (Gaussian sigma, pixels).
    read_noise_e : float
    """

    particle: str = "Au"
    support: str = "C"
    dose_e_per_px: float = 400.0
    voltage_kv: float = 200.0
    defocus_nm: float = 60.0
    cs_mm: float = 1.2
    focal_spread_nm: float = 4.0
    convergence_mrad: float = 0.2
    aperture_mrad: float = 25.0
    speckle_rad: float = 0.08
    lattice_contrast: float = 0.6
    mtf_sigma_px: float = 0.6
    read_noise_e: float = 0.0

    @property
    def wavelength_nm(self) -> float:
        v = self.voltage_kv * 1e3
        return 1.22639 / np.sqrt(v * (1.0 + 0.97845e-6 * v))

    @property
    def interaction_rad_per_v_nm(self) -> float:
        """σ: phase per volt of projected potential per nm of thickness."""
        v = self.voltage_kv * 1e3
        return 2.0 * np.pi / (self.wavelength_nm * v) * (511e3 + v) / (2 * 511e3 + v)


def bf_intensity(
    volume_nm3: np.ndarray, *, pixel_size_nm: float, optics: BfOptics, area_scale: float = 1.0
) -> np.ndarray:
    """Electrons removed from the bright field by particles of `volume_nm3` (mass-thickness
    proxy, weak-absorption limit): ``dose · V / (Λ · pixel area)``. Phase contrast (fringes,
    Fresnel halo) redistributes intensity without removing it, so this is what an integral
    of background minus image over a generous region converges to."""
    lam = get_material(optics.particle).absorption_length_nm()
    return optics.dose_e_per_px * np.asarray(volume_nm3) / (lam * pixel_size_nm**2 * area_scale)


def _transfer(shape: tuple[int, int], pixel_size_nm: float, o: BfOptics) -> np.ndarray:
    """Objective-lens transfer exp(−iχ)·envelopes·aperture on the FFT grid (complex64)."""
    ky = scipy.fft.fftfreq(shape[0], d=pixel_size_nm)[:, None]
    kx = scipy.fft.fftfreq(shape[1], d=pixel_size_nm)[None, :]
    k2 = kx * kx + ky * ky
    lam, cs, df = o.wavelength_nm, o.cs_mm * 1e6, o.defocus_nm
    chi = np.pi * lam * k2 * (0.5 * cs * lam * lam * k2 - df)
    grad = cs * lam**3 * k2 * np.sqrt(k2) - df * lam * np.sqrt(k2)  # dχ/dk / 2π
    env = np.exp(-0.5 * (np.pi * lam * o.focal_spread_nm) ** 2 * k2 * k2)
    env *= np.exp(-((np.pi * o.convergence_mrad * 1e-3 / lam) ** 2) * grad**2)
    env *= np.sqrt(k2) * lam <= o.aperture_mrad * 1e-3
    return (env * np.exp(-1j * chi)).astype(np.complex64)


def render_bf(
    particles: Particles,
    support_nm: np.ndarray,
    texture: np.ndarray,
    *,
    pixel_size_nm: float,
    optics: BfOptics = BfOptics(),
    noise: bool = True,
    linear: np.ndarray | None = None,
    rng: np.random.Generator,
) -> SimImage:
    """BF-TEM image: dark particles (with lattice and Fresnel fringes) on amorphous film.

    Parameters
    ----------
    particles : Particles
    support_nm : ndarray, shape (height, width)
        Film thickness (nm), see `support_thickness`.
    texture : ndarray, shape (height, width)
        The film's unit-variance atomic-scale potential, see `amorphous_phase`.
    pixel_size_nm : float
    optics : BfOptics
    noise : bool
        False gives the expected counts.
    linear : ndarray (2, 2), optional
        See `particle_footprints`.
    rng : numpy.random.Generator

    Returns
    -------
    SimImage
        Truth intensity: `bf_intensity` (electrons removed, positive for dark particles).
    """
    shape = support_nm.shape
    pm, sm = get_material(optics.particle), get_material(optics.support)
    d_spacing = pm.d_spacing_nm if optics.lattice_contrast > 0 else None
    fp = particle_footprints(
        particles, shape, pixel_size_nm=pixel_size_nm, linear=linear, d_spacing_nm=d_spacing
    )
    t_p = fp.thickness_nm[0] + fp.thickness_nm[1]
    sig = optics.interaction_rad_per_v_nm
    phase = sig * (sm.inner_potential_v * support_nm + pm.inner_potential_v * t_p)
    phase += optics.speckle_rad * np.sqrt(np.maximum(support_nm, 0.0) / 10.0) * texture
    if fp.lattice_nm is not None:
        phase += sig * pm.inner_potential_v * optics.lattice_contrast * fp.lattice_nm
    amp = np.exp(-0.5 * (support_nm / sm.absorption_length_nm() + t_p / pm.absorption_length_nm()))
    wave = (amp * np.exp(1j * phase)).astype(np.complex64)
    # The lens delocalises detail by ~(Δf λ k + Cs λ³ k³) (k up to 5 nm⁻¹, beyond which the
    # film has little power): pad by that much (mirror), to a fast FFT size, so the FFT's
    # periodic wrap does not print the opposite edge.
    lam, k = optics.wavelength_nm, min(0.5 / pixel_size_nm, 5.0)
    reach = abs(optics.defocus_nm) * lam * k + optics.cs_mm * 1e6 * lam**3 * k**3
    pad = int(np.clip(np.ceil(reach / pixel_size_nm), 8, 256))
    h, w = shape
    fh, fw = scipy.fft.next_fast_len(h + 2 * pad), scipy.fft.next_fast_len(w + 2 * pad)
    wave = np.pad(wave, ((pad, fh - h - pad), (pad, fw - w - pad)), mode="reflect")
    wave = scipy.fft.ifft2(scipy.fft.fft2(wave) * _transfer(wave.shape, pixel_size_nm, optics))
    wave = wave[pad : pad + h, pad : pad + w]
    img = (np.abs(wave) ** 2).astype(np.float32) * np.float32(optics.dose_e_per_px)
    img = _blur(img, optics.mtf_sigma_px)
    if noise:
        img = _poisson(img, optics.read_noise_e, rng)
    det = 1.0 if linear is None else abs(float(np.linalg.det(linear)))
    inten = bf_intensity(
        particles.volume_nm3(), pixel_size_nm=pixel_size_nm, optics=optics, area_scale=det
    )
    meta = {"modality": "bf", **{f.name: getattr(optics, f.name) for f in fields(optics)}}
    return SimImage(
        img, fp.labels, _truth(particles, fp, inten, None, fp.labels), float(pixel_size_nm), meta
    )


def paste_particles(
    support_image: np.ndarray,
    particles: Particles,
    *,
    pixel_size_nm: float,
    contrast: str = "bright",
    peak_contrast: float = 0.5,
    blur_fwhm_nm: float = 0.15,
    lattice_contrast: float = 0.0,
    d_spacing_nm: float = 0.23,
    noise: bool = True,
    rng: np.random.Generator,
) -> SimImage:
    """Paste synthetic particles onto a real, particle-free support image (fine-tuning data).

    Parameters
    ----------
    support_image : ndarray, shape (height, width)
        A real image of the bare support, in its own units (counts if possible).
    particles : Particles
    pixel_size_nm : float
        Pixel size of `support_image`.
    contrast : {'bright', 'dark'}
        'bright' (ADF): particles add ``k · t``; 'dark' (BF): the support is multiplied by the
        transmission ``exp(−t/Λ)``.
    peak_contrast : float
        Signal at the centre of a median particle relative to the median support level
        (bright: added fraction; dark: removed fraction, < 1).
    blur_fwhm_nm : float
        Resolution of the pasted particles (probe / point spread).
    lattice_contrast : float
        Relative modulation by lattice fringes of spacing `d_spacing_nm` (dark mode).
    noise : bool
        Bright mode: add shot noise to the pasted signal with the gain estimated from the
        support's own pixel noise (variance / mean), so particles are as noisy as the image.
    rng : numpy.random.Generator

    Returns
    -------
    SimImage
        Truth intensity: integrated added signal (bright) or removed signal (dark), in the
        units of `support_image`.
    """
    support = np.asarray(support_image, dtype=np.float32)
    if support.ndim != 2:
        raise ValueError(f"support image must be 2-D, got shape {support.shape}")
    if contrast not in ("bright", "dark"):
        raise ValueError(f"contrast must be 'bright' or 'dark', got {contrast!r}")
    fp = particle_footprints(
        particles,
        support.shape,
        pixel_size_nm=pixel_size_nm,
        d_spacing_nm=d_spacing_nm if lattice_contrast > 0 else None,
    )
    t = fp.thickness_nm[0] + fp.thickness_nm[1]
    centre = (
        float(np.median(particles.diameter_nm * particles.height_ratio)) if len(particles) else 1.0
    )
    level = float(np.median(support))
    sigma = blur_fwhm_nm / 2.3548 / pixel_size_nm
    if contrast == "bright":
        k = peak_contrast * level / centre
        added = _blur(k * t, sigma)
        if noise:
            diff = np.diff(support[:, ::2], axis=1)  # pixel noise; slow structure cancels
            var = (1.4826 * float(np.median(np.abs(diff - np.median(diff))))) ** 2 / 2.0
            gain = var / level if level > 0 else 0.0
            if gain > 0:
                added = gain * rng.poisson(np.maximum(added, 0) / gain).astype(np.float32)
        img = support + added
        inten = k * particles.volume_nm3() / pixel_size_nm**2
    else:
        lam = centre / -np.log(max(1.0 - peak_contrast, 1e-3))
        tt = t + (lattice_contrast * fp.lattice_nm if fp.lattice_nm is not None else 0.0)
        trans = _blur(np.exp(-np.maximum(tt, 0.0) / lam).astype(np.float32), sigma)
        local = _blur(support, max(2.0 / pixel_size_nm, 2.0))
        removed = local * (1.0 - trans)
        img = support * trans
        inten = np.bincount(
            fp.labels.ravel(), removed.ravel(), int(particles.id.max()) + 1 if len(particles) else 1
        )[particles.id]
    meta = {"modality": f"paste-{contrast}", "peak_contrast": peak_contrast}
    return SimImage(
        img.astype(np.float32),
        fp.labels,
        _truth(particles, fp, inten, None, fp.labels),
        float(pixel_size_nm),
        meta,
    )
