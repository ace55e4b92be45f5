"""Integrated intensity: zones, background ring and the margin chosen per frame."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from nptrack.measure.intensity import choose_margin
from nptrack.measure.props import measure_particles


def reference_sums(labels: np.ndarray, image: np.ndarray, margin: int, ring: int) -> np.ndarray:
    """Intensity by brute force: SciPy distances, zone and ring as documented."""
    out = []
    for lab in range(1, int(labels.max()) + 1):
        own = labels == lab
        d_own = ndi.distance_transform_edt(~own)
        d_other = ndi.distance_transform_edt((labels == 0) | own)
        zone = own | ((d_own <= margin) & (d_own < d_other))
        band = (d_own > margin) & (d_own <= margin + ring) & (d_other > margin)
        out.append(float((image[zone] - image[band].mean()).sum()))
    return np.array(out)


def blobs(sigma_px: float, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list]:
    """Flat-topped disks blurred by `sigma_px` on a sloped support; masks = the disks."""
    shape = (200, 200)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    labels = np.zeros(shape, np.int32)
    image = 100.0 + 0.05 * xx + 0.03 * yy
    truth = []
    centres = [(30.3 + 45 * (k // 4), 30.6 + 45 * (k % 4), 6.0 + (k % 3)) for k in range(16)]
    for k, (cy, cx, r) in enumerate(centres, start=1):
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        labels[disk] = k
        one = ndi.gaussian_filter(disk * 20.0, sigma_px)
        truth.append(one.sum())
        image = image + one
    image = image + np.random.default_rng(seed).normal(0.0, noise, shape)
    return labels, image, truth


def test_fixed_margin_is_the_documented_zone_and_ring() -> None:
    # Touching and near particles: the zones split the gap, rings leave the others out.
    labels = np.zeros((60, 80), np.int32)
    yy, xx = np.mgrid[0:60, 0:80]
    labels[(yy - 30) ** 2 + (xx - 20) ** 2 <= 64] = 1
    labels[(yy - 30) ** 2 + (xx - 36) ** 2 <= 49] = 2  # touches 1
    labels[(yy - 33) ** 2 + (xx - 56) ** 2 <= 36] = 3  # 5 px from 2
    image = np.random.default_rng(1).normal(50.0, 3.0, labels.shape) + 0.2 * xx
    image += np.where(labels > 0, 10.0 * labels, 0.0)
    for margin in (0, 1, 2, 3):
        cols = measure_particles(labels, image, contrast="bright", intensity_margin_px=margin,
                                 adaptive_margin=False)  # fmt: skip
        np.testing.assert_allclose(cols["intensity"], reference_sums(labels, image, margin, 4),
                                   rtol=1e-9)  # fmt: skip
        assert (cols["intensity_margin_px"] == margin).all()


def test_sharp_noisy_particles_take_the_small_margin() -> None:
    # Blur 0.3 px: nothing beyond 1 px, and noise to lose by going further.
    err, err2 = [], []
    for seed in range(6):
        labels, image, truth = blobs(0.3, noise=8.0, seed=seed)
        cols = measure_particles(labels, image, contrast="bright")
        assert (cols["intensity_margin_px"] == 1).all()
        err.extend(cols["intensity"] / truth - 1)
        fixed = measure_particles(labels, image, contrast="bright", adaptive_margin=False)
        err2.extend(fixed["intensity"] / truth - 1)
    rms, rms2 = np.sqrt(np.mean(np.square(err))), np.sqrt(np.mean(np.square(err2)))
    assert rms < 0.95 * rms2  # margin 2 only adds noise
    assert np.median(np.abs(err)) < 0.05


def test_blurred_particles_take_the_large_margin() -> None:
    # Blur 0.9 px with little noise: margin 1 would lose ~2 % of the signal.
    labels, image, truth = blobs(0.9, noise=0.5)
    cols = measure_particles(labels, image, contrast="bright")
    assert (cols["intensity_margin_px"] == 2).all()
    np.testing.assert_allclose(cols["intensity"], truth, rtol=0.01)
    small = measure_particles(labels, image, contrast="bright", intensity_margin_px=1)
    assert np.median(small["intensity"] / truth - 1) < -0.01
    one = measure_particles(labels, image, contrast="bright", intensity_margin_px=2,
                            adaptive_margin=False)  # fmt: skip
    np.testing.assert_array_equal(one["intensity"], cols["intensity"])
    # With a larger allowed margin the blur's tail beyond 2 px is taken too.
    wide = measure_particles(labels, image, contrast="bright", intensity_margin_px=4)
    assert wide["intensity_margin_px"][0] >= 2
    assert np.median(np.abs(wide["intensity"] / truth - 1)) < 0.02


def test_dark_particles_count_positive_and_choose_the_same() -> None:
    labels, image, _ = blobs(0.3, noise=8.0, seed=3)
    dark = 2 * 150.0 - image  # the same particles, dark on a bright support
    bright = measure_particles(labels, image, contrast="bright")
    cols = measure_particles(labels, dark, contrast="auto")
    assert (cols["intensity_margin_px"] == bright["intensity_margin_px"]).all()
    np.testing.assert_allclose(cols["intensity"], bright["intensity"], rtol=1e-9)
    assert (cols["intensity"] > 0).all()


def test_choose_margin_weighs_rim_against_noise() -> None:
    n = 40
    # A rim of 3 % in shell 2, noise of 1 % per particle there: take it.
    sums = np.tile([900.0, 70.0, 30.0], (n, 1))
    counts = np.tile([60.0, 30.0, 30.0], (n, 1))
    var, ring = np.full(n, (0.01 * 1000) ** 2 / 30), np.full(n, 100)
    margin, error = choose_margin(sums, counts, var, ring)
    assert margin == 2 and error[0] == np.inf and error[2] < error[1]
    # The same rim under ten times the noise: it costs more than it brings.
    margin, error = choose_margin(sums, counts, var * 100, ring)
    assert margin == 1 and error[1] < error[2]
    # Nothing to decide on: the largest margin.
    assert choose_margin(sums[:0], counts[:0], var[:0], ring[:0])[0] == 2
    assert choose_margin(-sums, counts, var, ring)[0] == 2  # no positive signal


def test_choose_margin_counts_the_spread_of_rims() -> None:
    # Half the particles (under the support, more blurred) lose 2 % beyond 1 px, half none:
    # the mean rim alone (1 %) would not pay for shell 2's noise, their rms (1.4 %) does.
    n = 40
    rims = np.where(np.arange(n) % 2 == 0, 20.0, 0.0)
    sums = np.stack([np.full(n, 900.0), 100.0 - rims, rims], axis=1)
    counts = np.tile([60.0, 30.0, 30.0], (n, 1))
    var, ring = np.full(n, 1.6), np.full(n, 100)
    margin, error = choose_margin(sums, counts, var, ring)
    noise1, noise2 = 1.6 * 90 * 1.9 / 1e6, 1.6 * 120 * 2.2 / 1e6
    assert error[2] == pytest.approx(np.sqrt(noise2))
    assert 0.01**2 + noise1 < noise2 < 0.02**2 / 2 + noise1  # mean² < rms² of the rims
    assert margin == 2
    # The same mean rim on every particle: the smaller margin.
    even = np.stack([np.full(n, 900.0), np.full(n, 90.0), np.full(n, 10.0)], axis=1)
    assert choose_margin(even, counts, var, ring)[0] == 1


@pytest.mark.parametrize("margin", [0, 1])
def test_small_largest_margin_is_respected(margin: int) -> None:
    labels, image, _ = blobs(1.2, noise=0.5)
    cols = measure_particles(labels, image, contrast="bright", intensity_margin_px=margin)
    assert (cols["intensity_margin_px"] == margin).all()
