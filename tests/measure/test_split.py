"""Separation of touching particles and mask cleaning, against drawn ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from nptrack.measure import detect_particles
from nptrack.measure.props import measure_particles
from nptrack.measure.split import border_mask, clean_mask, split_particles


def lens_area(r1: float, r2: float, d: float) -> float:
    if d >= r1 + r2:
        return 0.0
    a1 = r1 * r1 * np.arccos((d * d + r1 * r1 - r2 * r2) / (2 * d * r1))
    a2 = r2 * r2 * np.arccos((d * d + r2 * r2 - r1 * r1) / (2 * d * r2))
    k = 0.5 * np.sqrt((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2))
    return float(a1 + a2 - k)


def overlapping_disks(
    r1: float, r2: float, overlap: float, angle: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Two disks whose lens is `overlap` × the smaller disk's area; truth splits the union
    along the radical axis (the chord through the two intersection points)."""
    d = brentq(lambda d: lens_area(r1, r2, d) - overlap * np.pi * min(r1, r2) ** 2,
               abs(r1 - r2) + 1e-6, r1 + r2 - 1e-6)  # fmt: skip
    n = int(2 * (r1 + r2) + 20)
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    centre = np.array([n / 2, n / 2]) + rng.uniform(-0.5, 0.5, 2)
    u = np.array([np.sin(angle), np.cos(angle)])
    c1, c2 = centre - u * d * r2 / (r1 + r2), centre + u * d * r1 / (r1 + r2)
    d1 = (yy - c1[0]) ** 2 + (xx - c1[1]) ** 2
    d2 = (yy - c2[0]) ** 2 + (xx - c2[1]) ** 2
    union = (d1 <= r1 * r1) | (d2 <= r2 * r2)
    truth = np.where(union, np.where(d1 - r1 * r1 <= d2 - r2 * r2, 1, 2), 0)
    return union, truth


def matched_area_errors(labels: np.ndarray, truth: np.ndarray) -> list[float]:
    errors = []
    for t in (1, 2):
        overlap = np.bincount(labels[truth == t], minlength=labels.max() + 1)
        best = int(np.argmax(overlap[1:]) + 1)
        errors.append(abs((labels == best).sum() / (truth == t).sum() - 1))
    return errors


@pytest.mark.parametrize("method", ["watershed", "uecs"])
@pytest.mark.parametrize("overlap", [0.1, 0.2, 0.3, 0.4])
def test_two_overlapping_disks_are_split(method: str, overlap: float) -> None:
    rng = np.random.default_rng(int(overlap * 100))
    for angle in rng.uniform(0, np.pi, 3):
        union, truth = overlapping_disks(30, 30, overlap, angle, rng)
        result = split_particles(union, method=method)  # type: ignore[arg-type]
        assert result.count == 2, (method, overlap, angle)
        assert result.separated.all()
        assert max(matched_area_errors(result.labels, truth)) < 0.10


@pytest.mark.parametrize("overlap", [0.1, 0.25, 0.4])
def test_watershed_splits_smaller_and_unequal_disks(overlap: float) -> None:
    rng = np.random.default_rng(7)
    for r1, r2 in [(15, 15), (20, 20)] + ([(20, 15)] if overlap < 0.3 else []):
        union, truth = overlapping_disks(r1, r2, overlap, rng.uniform(0, np.pi), rng)
        result = split_particles(union, method="watershed")
        assert result.count == 2, (r1, r2, overlap)
        assert max(matched_area_errors(result.labels, truth)) < 0.10


def test_uecs_markers_below_minimum_are_dropped() -> None:
    # Disks of radius 20 overlapping by 40 % break apart only when the pieces are ~20 px,
    # under the 30 px marker minimum: the pair stays one (unsplit) particle.
    rng = np.random.default_rng(3)
    union, _ = overlapping_disks(20, 20, 0.4, 0.3, rng)
    assert split_particles(union, method="uecs").count == 1
    assert split_particles(union, method="uecs", min_marker_px=10).count == 2
    union, _ = overlapping_disks(20, 20, 0.2, 0.3, rng)
    assert split_particles(union, method="uecs").count == 2


@pytest.mark.parametrize("method", ["watershed", "uecs", "none"])
def test_single_convex_shapes_are_not_split(method: str) -> None:
    rng = np.random.default_rng(11)
    n = 150
    yy, xx = np.mgrid[0:n, 0:n].astype(float) - n / 2
    for a, b in [(10, 5), (20, 10), (30, 12), (40, 15), (60, 20), (60, 30)]:
        angle = rng.uniform(0, np.pi)
        u = np.cos(angle) * xx + np.sin(angle) * yy
        v = -np.sin(angle) * xx + np.cos(angle) * yy
        ellipse = (u / a) ** 2 + (v / b) ** 2 <= 1
        assert split_particles(ellipse, method=method).count == 1, (a, b)  # type: ignore[arg-type]
        rod = (np.abs(u) <= a) & (np.abs(v) <= b / 2)
        assert split_particles(rod, method=method).count == 1, (a, b)  # type: ignore[arg-type]


def test_chain_of_three_and_flags() -> None:
    n = 200
    yy, xx = np.mgrid[0:60, 0:n].astype(float)
    chain = np.zeros((60, n), bool)
    for cx in (40.0, 88.0, 136.0):  # radius 28, centre distance 48: overlap ~17 %
        chain |= (yy - 30.2) ** 2 + (xx - cx) ** 2 <= 28**2
    for method in ("watershed", "uecs"):
        result = split_particles(chain, method=method)  # type: ignore[arg-type]
        assert result.count == 3 and result.separated.all()
    kept = split_particles(chain, method="none")
    assert kept.count == 1 and not kept.separated.any()
    cols = measure_particles(kept.labels)
    assert cols["agglomerate"][0] == 1 and cols["convexity"][0] < 0.95


def test_non_convex_region_without_markers_is_flagged_not_split() -> None:
    ell = np.zeros((60, 60), bool)
    ell[10:50, 10:20] = True
    ell[40:50, 10:50] = True
    result = split_particles(ell, method="uecs")
    assert result.count == 1
    assert measure_particles(result.labels)["agglomerate"][0] == 1


def test_clean_mask_sizes() -> None:
    mask = np.zeros((60, 60), bool)
    mask[5, 5] = True  # speckle, 1 px
    mask[20:24, 20:24] = True  # 16 px, kept
    mask[30:50, 30:50] = True
    mask[35, 35] = False  # 1-px hole: filled
    mask[40:46, 40:46] = False  # 36-px hole: kept
    out = clean_mask(mask, min_area_px=10, max_hole_px=20)
    assert not out[5, 5] and out[20:24, 20:24].all()
    assert out[35, 35] and not out[40:46, 40:46].any()


def test_border_mask() -> None:
    labels = np.zeros((10, 10), np.int32)
    labels[0, 3] = 1
    labels[4:6, 4:6] = 2
    labels[5:7, 9] = 3
    assert list(border_mask(labels)) == [True, False, True]


def test_detect_particles_uses_nm_sizes() -> None:
    prob = np.zeros((100, 100), np.float32)
    yy, xx = np.mgrid[0:100, 0:100]
    prob[(yy - 30) ** 2 + (xx - 30) ** 2 <= 100] = 0.9  # 20 px = 2 nm at 0.1 nm/px
    prob[70:72, 70:72] = 0.9  # 4 px = 0.23 nm equivalent: a speckle below 0.5 nm
    found = detect_particles(prob, pixel_size_nm=(0.1, 0.1))
    assert found.count == 1
    assert found.columns["diameter_nm"][0] == pytest.approx(2.0, rel=0.03)
    assert (found.labels > 0).sum() == found.columns["area_px2"][0]


def _caps(shape: tuple[int, int], disks: list[tuple[float, float, float]]) -> np.ndarray:
    """Projected thickness of spherical caps (cx, cy, r): what ADF-STEM images."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    out = np.zeros(shape)
    for cx, cy, r in disks:
        out += np.sqrt(np.clip(r * r - (xx - cx) ** 2 - (yy - cy) ** 2, 0, None))
    return out


@pytest.mark.parametrize("d", [8.0, 8.5, 9.0])
def test_watershed_keeps_a_shallow_maximum_the_image_peaks_at(d: float) -> None:
    # Disks of radius 5 and 4, d px apart; their masks 1 px wider all round (as a segmenter
    # draws them) touch through a wide neck: the smaller disk's distance maximum rises less
    # than 1 px above the pass, but the image has two peaks with a dip between them.
    shape = (40, 48)
    centres = [(20.0, 20.0, 5.0), (20.0 + d, 20.0, 4.0)]
    image = 10 * _caps(shape, centres)
    mask = _caps(shape, [(x, y, r + 1) for x, y, r in centres]) > 0
    assert split_particles(mask).count == 1  # distance only
    split = split_particles(mask, image=image, intensity_h=4.0)
    assert split.count == 2 and split.separated.all()
    assert {int(split.labels[20, 20]), int(split.labels[20, round(20 + d)])} == {1, 2}
    # Smoothed by 1 px, the smaller peak is 37 over a pass of 29, 25, 17 for d = 8, 8.5, 9:
    # a threshold above the dip merges them again, one below it does not.
    dip = {8.0: 8.0, 8.5: 12.0, 9.0: 20.0}[d]
    assert split_particles(mask, image=image, intensity_h=dip - 1).count == 2
    assert split_particles(mask, image=image, intensity_h=dip + 2).count == 1
    # the same outline with a flat image, or the image rule off, stays one particle
    assert split_particles(mask, image=np.where(mask, 50.0, 0.0), intensity_h=4.0).count == 1
    assert split_particles(mask, image=image, intensity_h=0.0).count == 1


def test_image_rule_leaves_one_ellipsoid_whole() -> None:
    # A 60 x 20 px ellipse has ripples of its distance transform along its ridge; its image
    # (an ellipsoid's thickness) has one peak: it stays one particle.
    yy, xx = np.mgrid[0:40, 0:80].astype(float)
    q = 1 - ((xx - 40) / 30) ** 2 - ((yy - 20) / 10) ** 2
    mask, image = q >= 0, 100 * np.sqrt(np.clip(q, 0, None))
    assert split_particles(mask, image=image, intensity_h=1.0).count == 1


def test_detect_particles_splits_by_the_image_for_bright_particles_only() -> None:
    from nptrack.config import MeasureConfig

    shape = (40, 48)
    centres = [(20.0, 20.0, 5.0), (28.5, 20.0, 4.0)]
    rng = np.random.default_rng(3)
    caps = _caps(shape, centres)
    prob = (_caps(shape, [(x, y, r + 1) for x, y, r in centres]) > 0).astype(float)
    bright = 40 + 12 * caps + rng.normal(0, 2, shape)  # noise sigma 2: dip ~25 sigma
    cfg = MeasureConfig(reject_opposite_contrast=False)
    assert detect_particles(prob, bright, contrast="bright", config=cfg).count == 2
    off = cfg.model_copy(update={"split_intensity_sigma": 0.0})
    assert detect_particles(prob, bright, contrast="bright", config=off).count == 1
    # bright-field (dark particles): contrast is no measure of thickness, distance only
    dark = 200 - 12 * caps + rng.normal(0, 2, shape)
    assert detect_particles(prob, dark, contrast="dark", config=cfg).count == 1


def test_noise_of_the_smoothed_frame_ignores_the_particles() -> None:
    import cv2

    from nptrack.measure import _smoothed_noise

    rng = np.random.default_rng(5)
    noise = rng.normal(0, 3.0, (512, 512)).astype(np.float32)
    smoothed_sigma = float(cv2.GaussianBlur(noise, (0, 0), 1.0).std())  # 3 / (2 sqrt(pi))
    assert abs(smoothed_sigma - 3.0 / (2 * np.sqrt(np.pi))) < 0.02
    assert abs(_smoothed_noise(noise) / smoothed_sigma - 1) < 0.02
    # Particles' edges widen the spread of neighbour differences a little: +2 % with 2.7 %
    # of the frame covered, +10 % with 10.6 % (steep caps, 240 over 6 px): a margin, not a
    # loss of the rule.
    for step, bias in ((64, 0.04), (32, 0.12)):
        centres = [(x, y, 6.0) for x in range(16, 512, step) for y in range(16, 512, step)]
        ratio = _smoothed_noise(60 + 40 * _caps((512, 512), centres) + noise) / smoothed_sigma
        assert 1.0 <= ratio < 1 + bias
