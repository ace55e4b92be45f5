"""Per-particle measurements against shapes and blobs whose true values are known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from nptrack.measure.props import describe, digital_solidity, is_convex, measure_particles

RNG_SEED = 20240601


def draw(kind: str, size: float, angle: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A shape digitised by pixel centres, at a random sub-pixel position, with its truth.

    size: diameter (disk), major axis (ellipse, minor = size/2), side (square), long side
    (rectangle, short = size/2).
    """
    n = int(size * 1.6) + 20
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    cy, cx = n / 2 + rng.uniform(-0.5, 0.5, 2)
    x, y = xx - cx, yy - cy
    u = np.cos(angle) * x + np.sin(angle) * y
    v = -np.sin(angle) * x + np.cos(angle) * y
    if kind == "disk":
        r = size / 2
        mask = x**2 + y**2 <= r * r
        area, perim, fmin, fmax = np.pi * r * r, 2 * np.pi * r, size, size
    elif kind == "ellipse":
        a, b = size / 2, size / 4
        mask = (u / a) ** 2 + (v / b) ** 2 <= 1
        h = ((a - b) / (a + b)) ** 2  # Ramanujan's perimeter
        area, perim = np.pi * a * b, np.pi * (a + b) * (1 + 3 * h / (10 + np.sqrt(4 - 3 * h)))
        fmin, fmax = 2 * b, 2 * a
    elif kind == "square":
        mask = (np.abs(u) <= size / 2) & (np.abs(v) <= size / 2)
        area, perim, fmin, fmax = size**2, 4 * size, size, size * np.sqrt(2)
    else:  # rectangle
        a, b = size, size / 2
        mask = (np.abs(u) <= a / 2) & (np.abs(v) <= b / 2)
        area, perim, fmin, fmax = a * b, 2 * (a + b), b, np.hypot(a, b)
    truth = {
        "area": area,
        "diameter": 2 * np.sqrt(area / np.pi),
        "perimeter": perim,
        "circularity": 4 * np.pi * area / perim**2,
        "feret_min": fmin,
        "feret_max": fmax,
    }
    return mask, truth


def measured(mask: np.ndarray) -> dict[str, float]:
    cols = measure_particles(mask.astype(np.int32))
    return {
        "area": cols["area_px2"][0],
        "diameter": cols["diameter_px"][0],
        "perimeter": cols["perimeter_px"][0],
        "circularity": cols["circularity"][0],
        "feret_min": cols["feret_min_px"][0],
        "feret_max": cols["feret_max_px"][0],
    }


# Sizes from 20 px across (disk diameter, ellipse minor axis 20-30 px, square side, rectangle
# short side). Straight edges meeting at a corner are extended to where their fitted lines
# meet (a digitised 90° corner would lose ~0.3 px of perimeter and make the circularity of a
# 20-px square ~3 % high).
CASES = [("disk", 20), ("disk", 40), ("ellipse", 40), ("ellipse", 60), ("square", 20),
         ("square", 30), ("square", 50), ("square", 80), ("rectangle", 40),
         ("rectangle", 80)]  # fmt: skip


@pytest.mark.parametrize(("kind", "size"), CASES)
def test_geometry_of_drawn_shapes(kind: str, size: int) -> None:
    rng = np.random.default_rng(RNG_SEED + size)
    errors: dict[str, list[float]] = {}
    for k in range(6):
        angle = 0.0 if k == 0 else rng.uniform(0, np.pi)
        mask, truth = draw(kind, size, angle, rng)
        got = measured(mask)
        for key, value in truth.items():
            errors.setdefault(key, []).append(got[key] / value - 1)
    for key, errs in errors.items():
        errs_arr = np.abs(errs)
        # Mean within 2 %; a single placement may be off by up to one pixel of digitisation.
        assert np.mean(errs) == pytest.approx(0, abs=0.02), (key, errs)
        assert errs_arr.max() < 0.04, (key, errs)


@pytest.mark.parametrize(("kind", "size"), [("square", 20), ("square", 30), ("rectangle", 40)])
def test_cornered_shapes_within_2_percent_at_most_placements(kind: str, size: int) -> None:
    # Within 2 % at 90 % of placements. The worst are lattice-aligned: an edge near 0° or
    # 45° is placed only to the lattice spacing (1 or 0.7 px, ~3 % of a 20-px diagonal), and
    # an edge a few degrees off an axis has one or two steps, too few to fit its line well.
    rng = np.random.default_rng(RNG_SEED + 7 * size)
    errors: dict[str, list[float]] = {}
    for _ in range(20):
        mask, truth = draw(kind, size, rng.uniform(0, np.pi), rng)
        got = measured(mask)
        for key in ("perimeter", "circularity", "feret_min", "feret_max"):
            errors.setdefault(key, []).append(abs(got[key] / truth[key] - 1))
    for key, errs in errors.items():
        assert np.quantile(errs, 0.9) < 0.02, (key, errs)
        assert max(errs) < 0.035, (key, errs)


def test_disk_perimeter_within_2_percent_from_20_px() -> None:
    rng = np.random.default_rng(RNG_SEED)
    for diameter in (20, 24, 30, 50, 100):
        for _ in range(4):
            mask, truth = draw("disk", diameter, 0.0, rng)
            assert describe(mask).perimeter == pytest.approx(truth["perimeter"], rel=0.02)


def test_thin_line_has_feret_min_one_pixel() -> None:
    mask = np.zeros((20, 60), bool)
    mask[10, 5:45] = True
    shape = describe(mask)
    assert shape.feret_min == pytest.approx(1.0, abs=0.01)
    assert shape.feret_max == pytest.approx(40.0, rel=0.05)
    single = np.zeros((5, 5), bool)
    single[2, 2] = True
    cols = measure_particles(single.astype(int))
    assert cols["area_px2"][0] == 1 and 0.5 < cols["feret_min_px"][0] <= 1.0


def test_convexity_and_solidity_of_convex_and_concave_shapes() -> None:
    rng = np.random.default_rng(RNG_SEED)
    for kind in ("disk", "ellipse", "square", "rectangle"):
        mask, _ = draw(kind, 40, rng.uniform(0, np.pi), rng)
        assert is_convex(mask), kind
        assert digital_solidity(mask) == pytest.approx(1.0, abs=0.01)
    ell = np.zeros((60, 60), bool)  # an L: convexity < 0.95
    ell[10:50, 10:20] = True
    ell[40:50, 10:50] = True
    assert not is_convex(ell)
    assert digital_solidity(ell) == pytest.approx(700 / 1150, abs=0.02)  # hull of the L


def test_centroid_convention_and_flags() -> None:
    labels = np.zeros((40, 50), np.int32)
    labels[10:15, 20:31] = 1  # rows 10..14, cols 20..30: centre (y=12, x=25)
    labels[0:4, 40:45] = 2  # touches the top border
    cols = measure_particles(labels)
    assert cols["x"][0] == pytest.approx(25.0) and cols["y"][0] == pytest.approx(12.0)
    assert list(cols["border"]) == [0, 1]
    assert np.isnan(cols["x_nm"][0]) and np.isnan(cols["intensity"][0])
    cols = measure_particles(labels, pixel_size_nm=(0.5, 0.5))
    assert cols["x_nm"][0] == pytest.approx(12.5) and cols["area_nm2"][0] == pytest.approx(13.75)


def test_anisotropic_pixels_measure_in_nm() -> None:
    # A 20 nm disk on 0.25 x 0.5 nm pixels is an 80 x 40 px ellipse in the image.
    yy, xx = np.mgrid[0:120, 0:80].astype(float)
    mask = ((yy - 60.2) * 0.25) ** 2 + ((xx - 40.3) * 0.5) ** 2 <= 10.0**2
    cols = measure_particles(mask.astype(np.int32), pixel_size_nm=(0.25, 0.5))
    assert cols["diameter_nm"][0] == pytest.approx(20.0, rel=0.01)
    assert cols["feret_min_nm"][0] == pytest.approx(20.0, rel=0.03)
    assert cols["feret_max_nm"][0] == pytest.approx(20.0, rel=0.03)
    assert cols["circularity"][0] == pytest.approx(1.0, abs=0.02)


def blob_image(contrast: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list]:
    """Hemispherical particles (blurred, noisy) on a sloped support; truth = their sums."""
    shape = (160, 200)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    centres = [(40.3, 50.6, 12.0), (45.0, 140.2, 8.0), (115.7, 60.1, 15.0), (112.0, 92.0, 10.0)]
    truth, blobs = [], np.zeros(shape)
    for cy, cx, r in centres:
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        one = ndi.gaussian_filter(40.0 * np.sqrt(np.clip(1 - d2 / r**2, 0, None)), 1.0)
        truth.append(one.sum())
        blobs += one
    support = 200.0 + 0.05 * xx + 0.03 * yy
    image = support + (blobs if contrast == "bright" else -blobs)
    image = image + rng.normal(0, 1.0, shape)
    labels, _ = ndi.label(blobs > 4.0)
    order = [labels[int(cy), int(cx)] for cy, cx, _ in centres]
    relabel = np.zeros(labels.max() + 1, np.int32)
    relabel[order] = np.arange(1, len(order) + 1)
    return image, relabel[labels], truth


@pytest.mark.parametrize("contrast", ["bright", "dark"])
def test_integrated_intensity_within_5_percent(contrast: str) -> None:
    rng = np.random.default_rng(RNG_SEED)
    image, labels, truth = blob_image(contrast, rng)
    for asked in (contrast, "auto"):
        cols = measure_particles(labels, image, contrast=asked)  # type: ignore[arg-type]
        np.testing.assert_allclose(cols["intensity"], truth, rtol=0.05)
        assert np.all(np.abs(cols["background"] - 200.0) < 12.0)


def test_intensity_weighted_centroid() -> None:
    image = np.zeros((30, 30))
    labels = np.zeros((30, 30), np.int32)
    labels[10:13, 10:13] = 1
    image[10:13, 10:13] = [[1, 1, 1], [1, 1, 1], [1, 1, 7]]  # weight pulls to (12, 12)
    cols = measure_particles(labels, image, contrast="bright")
    w = image[10:13, 10:13]
    assert cols["x"][0] == pytest.approx((w * np.arange(10, 13)[None, :]).sum() / w.sum())
    assert cols["y"][0] == pytest.approx((w * np.arange(10, 13)[:, None]).sum() / w.sum())
    probability = np.where(labels > 0, 0.8, 0.1)
    assert measure_particles(labels, probability=probability)["score"][0] == pytest.approx(0.8)


def test_an_empty_frame_has_no_particles() -> None:
    # A blank frame (beam blanked, nothing segmented) is measured, not an error.
    from nptrack.measure import detect_particles

    empty = np.zeros((32, 40))
    found = detect_particles(empty, empty + 10.0, threshold=0.5, pixel_size_nm=(0.2, 0.2))
    assert found.count == 0 and found.columns["x"].shape == (0,)
    assert found.labels.shape == (32, 40) and not found.labels.any()
