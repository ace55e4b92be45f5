"""Pairwise registration and the affine-map helpers, on synthetic scenes with known maps."""

from __future__ import annotations

import numpy as np
import pytest

from nptrack.register import (
    build_pyramid,
    compose,
    decompose,
    field_rms,
    identity,
    invert,
    map_points,
    phase_correlation,
    register,
    support_mask,
    warp_to_reference,
)
from tests.register._scenes import Scene, blobs, frame_map


def _pair(g: np.ndarray, *, shape=(256, 256), seed=0, dose=20.0):
    scene = Scene(shape, seed=seed, dose=dose)
    ref = scene.frame(scene.g0)
    mov = scene.frame(g)
    return ref, mov, scene.truth(g)


@pytest.mark.parametrize("shift", [(0.0, 0.0), (3.25, -1.5), (-11.7, 8.4)])
def test_translation_recovered(shift: tuple[float, float]) -> None:
    ref, mov, truth = _pair(frame_map(shift))
    result = register(ref, mov, model="translation")
    assert result.status == "ok", result
    assert field_rms(result.matrix, truth, shape=ref.shape) < 0.05
    np.testing.assert_allclose(result.matrix[:, 2], shift, atol=0.05)


def test_affine_recovered() -> None:
    g = frame_map((7.3, -4.1), scale=(1.005, 0.995), shear=0.005, rotation_deg=0.3)
    ref, mov, truth = _pair(g)
    result = register(ref, mov)
    assert result.status == "ok" and result.cc > 0.8
    assert field_rms(result.matrix, truth, shape=ref.shape) < 0.1
    np.testing.assert_allclose(result.matrix[:, :2], truth[:, :2], atol=1e-3)


def test_euclidean_model_recovers_rotation() -> None:
    g = frame_map((-5.5, 2.25), rotation_deg=0.8)
    ref, mov, truth = _pair(g)
    result = register(ref, mov, model="euclidean")
    assert result.status == "ok"
    assert field_rms(result.matrix, truth, shape=ref.shape) < 0.1


def test_40px_shift_defeats_plain_ecc_but_not_register() -> None:
    shape = (320, 320)
    g = frame_map((40.0, -23.5), scale=(1.003, 0.998), shear=0.003, shape=shape)
    ref, mov, truth = _pair(g, shape=shape, seed=3)
    plain = register(ref, mov, levels=1, phase=False, reject_outliers=False)
    assert plain.status != "ok" or field_rms(plain.matrix, truth, shape=shape) > 5.0
    result = register(ref, mov)
    assert result.status == "ok"
    assert field_rms(result.matrix, truth, shape=shape) < 0.1


def test_odd_shape_and_previous_guess() -> None:
    shape = (201, 263)
    g = frame_map((12.6, 9.2), scale=(1.004, 1.0), shape=shape)
    ref, mov, truth = _pair(g, shape=shape, seed=4)
    # A stale guess (the previous frame's map) must not prevent recovery.
    stale = truth.copy()
    stale[:, 2] += (-30.0, 14.0)
    result = register(ref, mov, initial=stale)
    assert result.status == "ok"
    assert field_rms(result.matrix, truth, shape=shape) < 0.15


def test_reduced_working_size_keeps_full_resolution_coordinates() -> None:
    shape = (384, 384)
    g = frame_map((21.4, -13.8), scale=(0.997, 1.004), shear=-0.004, shape=shape)
    ref, mov, truth = _pair(g, shape=shape, seed=5)
    result = register(ref, mov, working_size_px=128)  # factor 3 block means
    assert result.status == "ok"
    # 0.1 of a 128² working pixel; a wrong pixel-centre convention would cost 1 px.
    assert field_rms(result.matrix, truth, shape=shape) < 0.3


def test_noise_only_frame_fails_without_raising() -> None:
    ref, _, _ = _pair(frame_map())
    rng = np.random.default_rng(7)
    noise = rng.poisson(20.0, ref.shape).astype(np.float32)
    result = register(ref, noise)
    assert result.status == "failed" and result.detail
    assert np.all(np.isfinite(result.matrix))
    flat = register(ref, np.zeros_like(ref))
    assert flat.status == "failed"


def _particles_scene(seed: int):
    shape = (256, 256)
    scene = Scene(shape, seed=seed, n_particles=0, dose=50.0)
    rng = np.random.default_rng(seed)
    xy = rng.uniform(30, 226, size=(30, 2))
    g = frame_map((6.2, -3.1), scale=(1.003, 0.998))
    truth = scene.truth(g)
    ref = scene.frame(scene.g0) + 50.0 * blobs(shape, xy, 3.0, 2.0)

    def moving(xy_new: np.ndarray) -> np.ndarray:
        return scene.frame(g) + 50.0 * blobs(shape, map_points(xy_new, invert(truth)), 3.0, 2.0)

    return shape, ref, moving, xy, truth, rng


def test_mask_leaves_out_coherently_moving_particles() -> None:
    shape, ref, moving, xy, truth, _ = _particles_scene(8)
    # All particles glide 4 px to the right: a false motion that outweighs the support.
    glide = xy + np.array([4.0, 0.0])
    mov = moving(glide)
    plain = register(ref, mov, reject_outliers=False)
    particles = (blobs(shape, xy, 3.0, 1.0) > 0.05) | (blobs(shape, glide, 3.0, 1.0) > 0.05)
    masked = register(ref, mov, reject_outliers=False, mask=support_mask(particles))
    assert field_rms(masked.matrix, truth, shape=shape) < 0.1
    assert field_rms(plain.matrix, truth, shape=shape) > 0.5


@pytest.mark.parametrize("seed", [8, 10])
def test_outlier_rejection_handles_randomly_moving_particles(seed: int) -> None:
    shape, ref, moving, xy, truth, rng = _particles_scene(seed)
    mov = moving(xy + rng.normal(0, 3.0, xy.shape))  # no segmentation, no mask
    plain = register(ref, mov, reject_outliers=False)
    robust = register(ref, mov)
    assert robust.status == "ok"
    err_robust = field_rms(robust.matrix, truth, shape=shape)
    assert err_robust < 0.1
    assert field_rms(plain.matrix, truth, shape=shape) > 3 * err_robust


def test_pyramid_levels_and_pixel_centres() -> None:
    shape = (500, 700)
    x0, y0 = 301.3, 177.8
    img = blobs(shape, np.array([[x0, y0]]), 8.0, 1.0)
    pyr = build_pyramid(img, working_size_px=256, levels=5)
    assert pyr.shape == shape and pyr.factors == (3, 6)
    assert pyr.images[0].shape == (166, 233) and pyr.images[1].shape == (83, 116)
    for level, f in zip(pyr.images, pyr.factors, strict=True):
        yy, xx = np.mgrid[0 : level.shape[0], 0 : level.shape[1]]
        cx, cy = (level * xx).sum() / level.sum(), (level * yy).sum() / level.sum()
        # A level pixel x sits at f·x + (f − 1)/2 in full-resolution pixels.
        assert abs(f * cx + (f - 1) / 2 - x0) < 0.05 * f
        assert abs(f * cy + (f - 1) / 2 - y0) < 0.05 * f


def test_phase_correlation_sign() -> None:
    ref, mov, truth = _pair(frame_map((17.0, -9.0)))
    shift, response = phase_correlation(ref, mov)
    np.testing.assert_allclose(shift, truth[:, 2], atol=0.5)
    assert 0 < response <= 1


def test_bad_arguments() -> None:
    ref, mov, _ = _pair(frame_map())
    with pytest.raises(ValueError, match="model"):
        register(ref, mov, model="homography")
    with pytest.raises(ValueError, match="shape"):
        register(ref, mov[:200])


# --- affine-map helpers -----------------------------------------------------------------------


def _random_affine(rng: np.random.Generator) -> np.ndarray:
    return np.hstack([np.eye(2) + rng.normal(0, 0.05, (2, 2)), rng.normal(0, 30, (2, 1))])


def test_compose_and_invert_are_exact() -> None:
    rng = np.random.default_rng(1)
    a, b, c = (_random_affine(rng) for _ in range(3))
    np.testing.assert_allclose(compose(invert(a), a), identity(), atol=1e-12)
    np.testing.assert_allclose(
        compose(compose(a, b), c), compose(a, compose(b, c)), rtol=1e-13, atol=1e-12
    )
    pts = rng.uniform(0, 500, (50, 2))
    np.testing.assert_allclose(
        map_points(pts, compose(a, b)), map_points(map_points(pts, b), a), atol=1e-10
    )
    np.testing.assert_allclose(map_points(map_points(pts, a), invert(a)), pts, atol=1e-10)


def test_mapping_points_and_warping_agree() -> None:
    shape = (240, 260)
    rng = np.random.default_rng(2)
    pts = rng.uniform(60, 180, (5, 2))
    m = np.array([[1.004, 0.005, 9.37], [-0.003, 0.996, -6.81]])
    rot = np.radians(1.5)
    m[:, :2] = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]]) @ m[:, :2]
    expected = map_points(pts, m)
    for p, q in zip(pts, expected, strict=True):
        img = blobs(shape, p[None], 3.0, 100.0)
        out = warp_to_reference(img, m, preserve_integral=True)
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        centroid = np.array([(out * xx).sum(), (out * yy).sum()]) / out.sum()
        np.testing.assert_allclose(centroid, q, atol=0.02)
        # Integrated intensity of the particle: the same within 1 %.
        assert abs(out.sum() / img.sum() - 1) < 0.01


def test_integrated_intensity_without_rescaling() -> None:
    shape = (200, 200)
    img = blobs(shape, np.array([[97.4, 103.9]]), 2.5, 50.0)
    for m in (
        np.array([[1.0, 0.0, 13.6], [0.0, 1.0, -7.2]]),  # shift
        np.array([[1.0, 0.005, -3.3], [0.0, 1.0, 4.9]]),  # shear keeps the area
    ):
        out = warp_to_reference(img, m)
        assert abs(out.sum() / img.sum() - 1) < 0.01
    grown = warp_to_reference(img, np.array([[1.005, 0, 0], [0, 1.005, 0]]))
    # Per-pixel values kept: the particle covers 1 % more frame-0 pixels.
    assert abs(grown.sum() / img.sum() - 1.005**2) < 0.002


def test_decompose_and_field_rms() -> None:
    th = np.radians(0.4)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    a = rot @ np.array([[1.003, 0.002 * 0.996], [0.0, 0.996]])
    centre = np.array([99.5, 49.5])
    m = np.hstack([a, (centre + np.array([5.0, -2.0]) - a @ centre)[:, None]])
    d = decompose(m, shape=(100, 200))
    assert d["shift_x_px"] == pytest.approx(5.0) and d["shift_y_px"] == pytest.approx(-2.0)
    assert d["scale_x"] == pytest.approx(1.003) and d["scale_y"] == pytest.approx(0.996)
    assert d["shear"] == pytest.approx(0.002) and d["rotation_deg"] == pytest.approx(0.4)
    shifted = identity()
    shifted[0, 2] = 1.0
    assert field_rms(shifted, identity(), shape=(64, 64)) == pytest.approx(1.0)
    assert field_rms(m, m, shape=(64, 64)) == 0.0
