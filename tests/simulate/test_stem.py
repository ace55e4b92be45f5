"""Image formation: noise statistics, exact masks and truth, contrast, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nptrack.simulate.particles import Particles, particle_footprints, random_particles
from nptrack.simulate.presets import load_preset, simulate_image, with_field
from nptrack.simulate.stem import (
    AdfOptics,
    BfOptics,
    ScanDistortion,
    paste_particles,
    render_adf,
    render_bf,
)
from nptrack.simulate.support import amorphous_phase, support_thickness


def _sphere(x: float, y: float, d: float, pid: int = 1, **kw: float) -> Particles:
    cols = dict(
        id=[pid],
        x=[x],
        y=[y],
        diameter_nm=[d],
        height_ratio=[1.0],
        aspect=[1.0],
        angle_rad=[0.0],
        facets=[0],
        facet_strength=[0.0],
        layer=[0],
        lattice_angle_rad=[np.nan],
    )
    cols.update({k: [v] for k, v in kw.items()})
    return Particles(**cols)


@pytest.mark.parametrize(("dose", "read_noise"), [(1000.0, 0.0), (200.0, 0.0), (4000.0, 3.0)])
def test_poisson_variance_equals_mean_on_flat_support(dose: float, read_noise: float) -> None:
    support = np.full((256, 256), 20.0, np.float32)
    optics = AdfOptics(
        dose_e_per_px=dose,
        background_fraction=0.1,
        reference_thickness_nm=20.0,
        read_noise_e=read_noise,
    )
    sim = render_adf(
        Particles.empty(), support, pixel_size_nm=0.2, optics=optics, rng=np.random.default_rng(3)
    )
    mean, var = float(sim.image.mean()), float(sim.image.var())
    assert mean == pytest.approx(0.1 * dose, rel=0.01)  # the set dose, scattered fraction 0.1
    assert (var - read_noise**2) / mean == pytest.approx(1.0, abs=0.05)


def test_footprint_volume_and_area_are_exact() -> None:
    rng = np.random.default_rng(0)
    for px in (0.39, 0.1):
        for _ in range(10):
            d = rng.uniform(1.5, 5.0)
            p = _sphere(
                60 + rng.random(),
                60 + rng.random(),
                d,
                aspect=rng.uniform(1, 1.4),
                angle_rad=rng.uniform(0, np.pi),
                facets=int(rng.choice([0, 5, 6])),
                facet_strength=0.6,
                height_ratio=rng.uniform(0.6, 1.0),
            )
            shape = (120 + int(2 * d / px),) * 2
            p.x += shape[0] / 2 - 60
            p.y += shape[0] / 2 - 60
            fp = particle_footprints(p, shape, pixel_size_nm=px)
            volume = fp.thickness_nm.sum() * px * px
            assert volume == pytest.approx(p.volume_nm3()[0], rel=3e-3)
            # The mask (pixels at least half covered) is exact up to its pixel edge.
            true_px = np.pi * (d / px) ** 2 / 4
            assert abs(fp.area_px[0] - true_px) <= max(0.05 * true_px, 0.3 * np.pi * d / px)


def test_mask_intensity_above_local_background_matches_truth() -> None:
    """At infinite dose, Σ(image − local background) over each mask equals the truth (±2 %)."""
    rng = np.random.default_rng(7)
    shape, px = (256, 256), 0.2
    parts = random_particles(
        shape, pixel_size_nm=px, n=30, diameter_nm=3.0, diameter_sd_nm=0.6, min_gap_nm=3.0, rng=rng
    )
    support = support_thickness(
        shape,
        pixel_size_nm=px,
        thickness_nm=20.0,
        variation=0.15,
        correlation_nm=40.0,
        texture=0.01,
        rng=rng,
    )
    sim = render_adf(
        parts, support, pixel_size_nm=px, optics=AdfOptics(probe_fwhm_nm=0.12), noise=False, rng=rng
    )
    checked = 0
    # Particles of 2 nm (10 px) and more: below, the pixels less than half covered (outside
    # the mask) hold more than 1 % of the signal.
    for row in sim.truth[(sim.truth["border"] == 0) & (sim.truth["diameter_nm"] >= 2.0)]:
        mask = sim.labels == row["id"]
        grown = ndimage.binary_dilation(mask, iterations=2)
        ring = ndimage.binary_dilation(mask, iterations=6) & ~grown & (sim.labels == 0)
        background = float(sim.image[ring].mean())
        measured = float((sim.image[mask] - background).sum())
        assert measured == pytest.approx(row["intensity"], rel=0.02), row
        checked += 1
    assert checked >= 20


def test_truth_centres_follow_scan_distortion() -> None:
    """Centroids of the rendered particles sit at the truth centres, with shear and jitter."""
    rng = np.random.default_rng(11)
    shape, px = (256, 256), 0.1
    parts = random_particles(
        shape,
        pixel_size_nm=px,
        n=25,
        diameter_nm=3.0,
        diameter_sd_nm=0.3,
        aspect_max=1.0,
        facet_fraction=0.0,
        min_gap_nm=3.0,
        rng=rng,
    )
    support = np.full(shape, 20.0, np.float32)
    scan = ScanDistortion(line_jitter_px=0.4, jitter_correlation=0.9, shear_px_per_row=0.02)
    sim = render_adf(parts, support, pixel_size_nm=px, scan=scan, noise=False, rng=rng)
    moved = sim.truth["x"] - parts.take(np.isin(parts.id, sim.truth["id"])).x
    assert np.abs(moved).max() > 2.0  # the shear really moved them
    bg = float(np.median(sim.image[sim.labels == 0]))
    for row in sim.truth[sim.truth["border"] == 0]:
        mask = ndimage.binary_dilation(sim.labels == row["id"], iterations=2)
        w = np.clip(sim.image - bg, 0, None) * mask
        yy, xx = np.indices(shape)
        assert (w * xx).sum() / w.sum() == pytest.approx(row["x"], abs=0.15)
        assert (w * yy).sum() / w.sum() == pytest.approx(row["y"], abs=0.15)


def test_heavier_particles_are_brighter_by_z_alpha() -> None:
    support = np.full((64, 64), 20.0, np.float32)
    kw = dict(pixel_size_nm=0.2, noise=False, rng=np.random.default_rng(0))
    for alpha in (1.3, 1.8):
        pd = render_adf(
            _sphere(32, 32, 3.0), support, optics=AdfOptics(particle="Pd", alpha=alpha), **kw
        )
        pt = render_adf(
            _sphere(32, 32, 3.0), support, optics=AdfOptics(particle="Pt", alpha=alpha), **kw
        )
        ratio = (pt.image.max() - pt.image.min()) / (pd.image.max() - pd.image.min())
        expected = (66.2 * 78**alpha) / (68.0 * 46**alpha)  # ρ Z^α per nm of thickness
        assert ratio == pytest.approx(expected, rel=0.02)


def test_bf_particles_dark_on_speckled_carbon() -> None:
    rng = np.random.default_rng(5)
    shape, px = (256, 256), 0.064
    parts = random_particles(
        shape, pixel_size_nm=px, n=8, diameter_nm=2.0, diameter_sd_nm=0.2, min_gap_nm=1.0, rng=rng
    )
    carbon = support_thickness(shape, pixel_size_nm=px, thickness_nm=10.0, texture=0.0, rng=rng)
    texture = amorphous_phase(shape, pixel_size_nm=px, rng=rng)
    sim = render_bf(
        parts, carbon, texture, pixel_size_nm=px, optics=BfOptics(), noise=False, rng=rng
    )
    background = sim.image[ndimage.binary_dilation(sim.labels > 0, iterations=8) == 0]
    inside = sim.image[ndimage.binary_erosion(sim.labels > 0, iterations=2)]
    assert inside.mean() < 0.85 * background.mean()  # dark particles
    assert 0.04 < background.std() / background.mean() < 0.3  # speckle, not flat, not noise
    # The speckle is the film's phase seen through the lens: band-passed, with little power
    # at the lowest frequencies (a bare film is nearly invisible in focus).
    bare = render_bf(Particles.empty(), carbon, texture, pixel_size_nm=px, noise=False, rng=rng)
    spec = np.abs(np.fft.fft2(bare.image - bare.image.mean())) ** 2
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(256, px), np.fft.fftfreq(256, px)))
    edges = np.arange(0.0, 7.5, 0.5)
    radial = [spec[(k >= a) & (k < a + 0.5) & (k > 0)].mean() for a in edges]
    peak = int(np.argmax(radial))
    assert 1.0 <= edges[peak] <= 3.0  # the first pass band of the CTF at 60 nm underfocus
    assert radial[peak] > 1.5 * radial[0] and radial[peak] > 100 * radial[-1]
    assert set(np.unique(sim.labels)) - {0} == set(sim.truth["id"])


@pytest.mark.parametrize("contrast", ["bright", "dark"])
def test_paste_on_real_support(contrast: str) -> None:
    rng = np.random.default_rng(2)
    support = rng.poisson(200.0, (192, 192)).astype(np.float32)
    parts = random_particles(
        support.shape, pixel_size_nm=0.2, n=10, diameter_nm=3.0, min_gap_nm=2.0, rng=rng
    )
    sim = paste_particles(
        support,
        parts,
        pixel_size_nm=0.2,
        contrast=contrast,
        peak_contrast=0.5,
        noise=False,
        rng=rng,
    )
    delta = sim.image - support
    inside = ndimage.binary_dilation(sim.labels > 0, iterations=3)
    if contrast == "bright":
        assert delta[inside].sum() == pytest.approx(sim.truth["intensity"].sum(), rel=0.02)
    else:
        assert -delta[inside].sum() == pytest.approx(sim.truth["intensity"].sum(), rel=0.05)
    assert np.abs(delta[~inside]).max() < 1e-3 * support.mean()  # support untouched elsewhere


def test_same_seed_same_image_different_seed_different() -> None:
    for name in ("table1", "bf_gold"):
        cfg = load_preset(name)
        cfg.field.height_px = cfg.field.width_px = 128
        a = simulate_image(cfg, rng=np.random.default_rng(1))
        b = simulate_image(cfg, rng=np.random.default_rng(1))
        c = simulate_image(cfg, rng=np.random.default_rng(2))
        assert a.image.tobytes() == b.image.tobytes()
        assert a.labels.tobytes() == b.labels.tobytes()
        assert a.truth.tobytes() == b.truth.tobytes()
        assert a.image.tobytes() != c.image.tobytes()


def test_real_support_mode_keeps_density_and_calibration() -> None:
    cfg = load_preset("table1")  # 46 particles per (100 nm)²
    rng = np.random.default_rng(0)
    support = rng.poisson(80.0, (250, 500)).astype(np.float32)  # 50 × 100 nm at 0.2 nm/px
    sim = simulate_image(cfg, rng=rng, support_image=support, support_pixel_size_nm=0.2)
    assert sim.pixel_size_nm == 0.2 and sim.image.shape == support.shape
    assert 20 <= len(sim.truth) <= 23  # half the preset's area, so half its particles
    assert (sim.image >= support - 1e-3).all()  # ADF: pasted particles only add signal


def test_with_field_keeps_the_particles_per_nm2() -> None:
    base = load_preset("table1")
    f = base.field
    per_nm2 = base.particles.count / (f.height_px * f.width_px * f.pixel_size_nm**2)
    for size, px in ((1024, 0.2), (512, None)):
        cfg = with_field(base, size, pixel_size_nm=px)
        g = cfg.field
        assert (g.height_px, g.width_px) == (size, size)
        assert g.pixel_size_nm == (f.pixel_size_nm if px is None else px)
        area = size * size * g.pixel_size_nm**2
        assert abs(cfg.particles.count - per_nm2 * area) < 1
        assert cfg.particles.count > base.particles.count  # a larger field in nm²
    assert base.field.height_px == 256  # the preset itself is not changed
