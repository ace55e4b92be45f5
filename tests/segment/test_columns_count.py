"""Statistical atom counting on simulated frames with known truth (pure numpy, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from nptrack.segment.columns_count import (
    assign_occupancy,
    column_cells,
    count_columns,
    estimate_unit,
    fit_columns,
)
from nptrack.simulate.columns import (
    CRYSTALS,
    ColumnSimConfig,
    column_spacing_A,
    simulate_column_image,
)


def _frame(crystal: str, seed: int = 1, **kw):
    cfg = ColumnSimConfig(
        crystal=crystal, shape_px=(192, 192), diameter_A=36.0, snr=None, support_level=0.3,
        rotation_deg=11.0, tilt_deg=(0.3, -0.2), **kw,
    )  # fmt: skip
    im = simulate_column_image(cfg, rng=np.random.default_rng(seed))
    xy = np.stack([im.columns["x"], im.columns["y"]], axis=1)
    # The true integral of one labelled atom: a peak-1 Gaussian of the probe's sd, × dose.
    sig_px = np.hypot(cfg.probe_fwhm_A / 2.3548, cfg.defocus_blur_A) / cfg.pixel_size_A
    return cfg, im, xy, im.dose * 2 * np.pi * sig_px**2


def _count(image, xy, crystal, prior, **kw):
    return count_columns(
        image, xy, pixel_size_A=0.3, spacing_A=column_spacing_A(CRYSTALS[crystal]),
        prior_occupancy=prior, method="count", **kw,
    )  # fmt: skip


@pytest.mark.parametrize("crystal", ["ceo2_110", "au_100"])
def test_counting_is_exact_on_a_clean_frame_despite_a_wrong_prior(crystal: str) -> None:
    _, im, xy, _ = _frame(crystal)
    occ = im.columns["occupancy"]
    assert occ.max() >= 8  # a range of thicknesses, not only thin columns
    prior = np.maximum(np.round(1.15 * occ), 1).astype(int)  # a network 15 % off in scale
    res = _count(im.image, xy, crystal, prior)
    assert res["from_comb"] and res["comb_z"] > 6
    assert np.mean(res["occupancy"] == occ) >= 0.97
    assert np.mean(prior == occ) < 0.5  # the prior alone is far from it
    assert np.median(res["count_confidence"]) > 0.7  # I / u lands near an integer


def test_unit_matches_the_single_atom_intensity() -> None:
    # fcc Au: only Au columns; ~2.5 % low on [100] (close columns, 2.0 Å).
    for crystal, tol in (("au_110", 0.05), ("au_100", 0.05)):
        _, im, xy, u_atom = _frame(crystal)
        res = _count(im.image, xy, crystal, im.columns["occupancy"])
        assert abs(res["unit"] / u_atom - 1) < tol, (crystal, res["unit"] / u_atom)
    # CeO2: each Ce column's cell also holds two O atoms per Ce, (Z_O / Z_Ce)^α each, 1.35 Å
    # away; the width calibration of the fit (a model of Ce columns only) leaves them out:
    # the unit is the Ce atom's (the round basis without it counted them: +7 %).
    _, im, xy, u_atom = _frame("ceo2_110")
    res = _count(im.image, xy, "ceo2_110", im.columns["occupancy"])
    assert abs(res["unit"] / u_atom - 1) < 0.03, res["unit"] / u_atom


def test_a_scaled_and_offset_image_scales_the_unit_only() -> None:
    _, im, xy, _ = _frame("ceo2_110", seed=2)
    prior = im.columns["occupancy"]
    a = _count(im.image, xy, "ceo2_110", prior)
    b = _count(3.7 * im.image + 250.0, xy, "ceo2_110", prior)
    assert b["unit"] / a["unit"] == pytest.approx(3.7, rel=1e-4)  # CG tolerance
    np.testing.assert_array_equal(a["occupancy"], b["occupancy"])
    np.testing.assert_allclose(b["intensity"], 3.7 * a["intensity"], rtol=1e-3)  # ≪ 1 atom


def test_fit_columns_recovers_integrals_on_a_sloped_support() -> None:
    h = w = 80
    rng = np.random.default_rng(3)
    xy = np.stack(np.meshgrid(np.arange(12, 70, 9.0), np.arange(12, 70, 9.0)), -1).reshape(-1, 2)
    xy += rng.uniform(-0.3, 0.3, xy.shape)
    amp = rng.integers(1, 9, len(xy)).astype(float)
    yy, xx = np.mgrid[0:h, 0:w]
    sig = 1.4
    img = 5.0 + 0.02 * xx - 0.01 * yy  # sloped support
    for (x, y), a in zip(xy, amp, strict=True):
        img = img + a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sig**2))
    fit = fit_columns(img, xy, sigma_px=1.2, spacing_px=9.0, knot_px=15.0)
    # Within 0.1 atom: the basis (sd 1.2) is narrower than the columns (1.4).
    np.testing.assert_allclose(fit["intensity"] / (2 * np.pi * sig**2), amp, atol=0.1)
    assert fit["column_sigma_px"][0] == pytest.approx(sig, rel=0.05)
    np.testing.assert_allclose(fit["background"], 5.0 + 0.02 * xy[:, 0] - 0.01 * xy[:, 1],
                               atol=0.05)  # fmt: skip


def test_tilt_smear_is_modelled_so_intensities_stay_linear_in_the_occupancy() -> None:
    # 1.1° off the zone axis: a 10-atom column (38 Å deep) is smeared by ~0.7 Å, more than
    # the probe's sd (0.34 Å). One round basis for all columns reads the thick ones low:
    # I ≈ b + g k with b ~ +0.5-0.7 atom (the offset a shape prior takes for one more layer).
    cfg = ColumnSimConfig(
        crystal="ceo2_110", shape_px=(160, 160), diameter_A=36.0, truncation=0.1, snr=None,
        support_level=0.3, rotation_deg=11.0, tilt_deg=(0.9, -0.6),
    )  # fmt: skip
    im = simulate_column_image(cfg, rng=np.random.default_rng(0))
    xy = np.stack([im.columns["x"], im.columns["y"]], axis=1)
    k = im.columns["occupancy"]
    assert k.max() >= 10
    u_atom = im.dose * 2 * np.pi * (np.hypot(cfg.probe_fwhm_A / 2.3548, 0) / 0.3) ** 2
    kw = dict(sigma_px=0.25 / 0.3, spacing_px=column_spacing_A(CRYSTALS["ceo2_110"]) / 0.3,
              knot_px=5.0 / 0.3)  # fmt: skip
    design = np.stack([np.ones(len(k)), k], 1)
    offsets = {}
    for tilt in (False, True):
        fit = fit_columns(im.image, xy, model_tilt=tilt, **kw)
        (b, g), *_ = np.linalg.lstsq(design, fit["intensity"] / u_atom, rcond=None)
        offsets[tilt] = b / g
    assert offsets[False] > 0.4
    assert abs(offsets[True]) < 0.2
    # The smear found: along the tilt's image direction, ~the thickest column's depth × 1.1°.
    smear = fit["smear_px"]
    longest = smear[np.argmax(np.hypot(*smear.T))]
    depth_px = (k.max() - 1) * 3.826 * np.deg2rad(np.hypot(0.9, 0.6)) / 0.3
    assert 0.8 * depth_px < np.hypot(*longest) < 1.4 * depth_px
    # Absolute scale: the Ce atom's integral (see test_unit_matches_the_single_atom_intensity).
    assert g == pytest.approx(1.0, rel=0.03)


def test_estimate_unit_avoids_aliases_and_keeps_the_prior_without_a_comb() -> None:
    rng = np.random.default_rng(4)
    k = rng.integers(1, 13, 200)
    i_col = 7.0 * k + rng.normal(0, 0.4, k.size)
    fit = estimate_unit(i_col, prior_occupancy=np.round(k * 0.8).clip(1))
    assert fit.from_comb and fit.unit == pytest.approx(7.0, rel=0.005)
    noisy = 7.0 * k + rng.normal(0, 7.0, k.size)  # 1 atom sd: no comb
    fit = estimate_unit(noisy, prior_unit=6.5)
    assert not fit.from_comb and fit.unit == 6.5


def test_swept_basis_peak_only_is_the_first_term_and_keeps_the_integral() -> None:
    from nptrack.segment.columns_fit import _swept_basis

    dy, dx = np.mgrid[-12:13, -12:13].astype(float)
    full = _swept_basis(dx, dy, 1.1, np.array(3.0), np.array(-1.5))
    peak = _swept_basis(dx, dy, 1.1, np.array(3.0), np.array(-1.5), only_peak=True)
    assert len(full) == 4 and len(peak) == 1
    np.testing.assert_allclose(peak[0], full[0], rtol=1e-12)
    # Swept along a segment, a peak-1 Gaussian keeps its integral 2πσ² (lower, longer peak).
    assert peak[0].sum() == pytest.approx(2 * np.pi * 1.1**2, rel=1e-3)
    assert peak[0].max() < 0.8


def test_estimate_unit_trusts_no_ambiguous_comb_and_no_comb_hidden_by_the_noise() -> None:
    rng = np.random.default_rng(5)
    k = rng.integers(1, 13, 120)
    i_col = 7.0 * k + rng.normal(0, 0.3, k.size)
    assert estimate_unit(i_col, prior_unit=7.3).from_comb
    # Two combs as strong (7 and 7.7: e.g. two particles at different doses): no unit.
    k2 = rng.integers(1, 13, 120)
    both = np.concatenate([i_col, 7.7 * k2 + rng.normal(0, 0.3, k.size)])
    fit = estimate_unit(both, prior_unit=7.5)
    assert fit.comb_z > 3 and not fit.from_comb and fit.unit == 7.5
    # The same sharp comb, but the columns' errors say ~1 atom: it cannot be a comb of the
    # data (a chance peak of the search), so the prior is kept.
    fit = estimate_unit(i_col, prior_unit=7.3, intensity_sd=np.full(k.size, 5.0))
    assert fit.comb_z > 3 and not fit.from_comb and fit.unit == 7.3
    assert estimate_unit(i_col, prior_unit=7.3, intensity_sd=np.full(k.size, 0.2)).from_comb


def test_assign_occupancy_combined_follows_the_precise_evidence() -> None:
    probs = np.array([[0.1, 0.7, 0.2], [0.1, 0.7, 0.2]])  # the network says 2
    i_col = np.array([3.02, 3.02])  # counting says 3 (unit 1)
    sd = np.array([0.05, 5.0])  # precise, then hopeless
    out = assign_occupancy(i_col, sd, 1.0, class_probability=probs, method="combined")
    assert list(out["occupancy"]) == [3, 2] and list(out["occupancy_count"]) == [3, 3]
    net = assign_occupancy(i_col, sd, 1.0, class_probability=probs, method="net")
    assert list(net["occupancy"]) == [2, 2]
    with pytest.raises(ValueError):
        assign_occupancy(i_col, sd, 1.0, method="combined")


def test_column_cells_take_the_nearest_column_within_the_radius() -> None:
    cells = column_cells(np.array([[5.0, 5.0], [9.0, 5.0]]), (12, 16), radius_px=3.0)
    assert cells[5, 5] == 1 and cells[5, 9] == 2 and cells[5, 6] == 1 and cells[5, 8] == 2
    assert cells[0, 0] == 0 and cells[5, 13] == 0
