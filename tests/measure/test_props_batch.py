"""The batched outline measurement: all particles of a frame measured at once.

`measure_particles` outlines every particle in one pass over the label image. These tests
check that the batching changes nothing a particle-by-particle measurement would give, that
the marching-squares loops are skimage's, and the columns against simulator truth.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import find_contours

from nptrack.measure.props import DETECTION_COLUMNS, _raw_loops, measure_particles

GEOMETRY = ("area_px2", "diameter_px", "feret_min_px", "feret_max_px", "perimeter_px",
            "circularity", "convexity", "solidity", "agglomerate", "border")  # fmt: skip


def skimage_loops(mask: np.ndarray) -> list[np.ndarray]:
    """What the particle-by-particle outline started from: skimage on the padded mask."""
    loops = []
    for c in find_contours(np.pad(mask.astype(float), 1), 0.5, fully_connected="high"):
        loops.append(c[:-1] - 1.0)
    return loops


@pytest.mark.parametrize("seed", range(6))
def test_loops_are_skimage_contours_of_each_label(seed: int) -> None:
    # Random labels: touching particles, holes, diagonal (saddle) contacts, image borders.
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 60, 2)
    if seed % 2:
        labels = (rng.integers(0, 5, (h, w)) * (rng.random((h, w)) < 0.6)).astype(np.int32)
    else:
        blobs = ndi.gaussian_filter(rng.random((h, w)), 1.5)
        labels, _ = ndi.label(blobs > np.quantile(blobs, 0.5), structure=np.ones((3, 3)))
    points, offsets, loop_label = _raw_loops(labels)
    for k in range(1, int(labels.max()) + 1):
        mine = [points[a:b] for a, b, lab in zip(offsets[:-1], offsets[1:], loop_label,
                                                 strict=True) if lab == k]  # fmt: skip
        ref = skimage_loops(labels == k)
        assert len(mine) == len(ref)
        for a, b in zip(mine, ref, strict=True):  # same vertices, start and direction
            np.testing.assert_array_equal(a, b)


def scene() -> np.ndarray:
    """Particles that exercise every path: round, cornered, holed, tiny, thin, cut, touching."""
    labels = np.zeros((90, 120), np.int32)
    yy, xx = np.mgrid[0:90, 0:120]
    labels[(yy - 20.3) ** 2 + (xx - 20.6) ** 2 <= 12.0**2] = 1  # disk
    labels[(yy - 22.0) ** 2 + (xx - 42.0) ** 2 <= 9.5**2] = 2  # touches the disk
    labels[50:75, 10:40] = 3  # square corners: smoothed piece by piece
    ring = (yy - 60) ** 2 + (xx - 70) ** 2
    labels[(ring <= 14**2) & (ring > 5**2)] = 4  # a hole
    labels[30, 60:90] = 5  # one pixel wide
    labels[5, 100] = 6  # one pixel
    labels[0:12, 105:120] = 7  # cut by two borders
    u, v = xx - 95.0, yy - 75.0
    labels[(np.abs(0.8 * u + 0.6 * v) <= 9) & (np.abs(-0.6 * u + 0.8 * v) <= 4)] = 8  # rotated
    labels[40:45, 100:103] = 10  # label 9 is missing
    return labels


def test_batch_equals_one_particle_at_a_time() -> None:
    labels = scene()
    batch = measure_particles(labels, pixel_size_nm=(0.2, 0.2))
    assert np.isnan(batch["perimeter_px"][8]) and batch["agglomerate"][8] == 0  # missing
    for k in (1, 2, 3, 4, 5, 6, 7, 8, 10):
        alone = measure_particles((labels == k).astype(np.int32), pixel_size_nm=(0.2, 0.2))
        for col in (*GEOMETRY, "x", "y", "feret_max_nm", "perimeter_nm"):
            np.testing.assert_allclose(batch[col][k - 1], alone[col][0], rtol=1e-12, err_msg=col)
    assert batch["solidity"][3] < 0.95 and batch["agglomerate"][3] == 1  # the holed ring
    assert batch["feret_min_px"][4] == pytest.approx(1.0, abs=0.01)  # the line


def test_columns_against_simulator_truth() -> None:
    from nptrack.simulate import load_preset
    from nptrack.simulate.presets import simulate_image

    base = load_preset("pd250")
    cfg = base.model_copy(
        update={
            "field": base.field.model_copy(update={"height_px": 512, "width_px": 512}),
            "particles": base.particles.model_copy(update={"count": 40}),
        }
    )
    sim = simulate_image(cfg, rng=np.random.default_rng(3))
    ids = np.unique(sim.labels[sim.labels > 0])
    lut = np.zeros(int(sim.labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1)
    px = sim.pixel_size_nm
    labels = lut[sim.labels]
    probability = np.where(labels > 0, 0.9, 0.1)
    cols = measure_particles(labels, sim.image, probability, pixel_size_nm=(px, px))
    truth = {int(t["id"]): t for t in sim.truth}
    rows = [truth[int(i)] for i in ids]
    inside = np.array([t["border"] == 0 for t in rows])
    assert inside.sum() > 25
    assert set(DETECTION_COLUMNS) <= set(cols)
    for col in DETECTION_COLUMNS:
        assert np.isfinite(cols[col][inside]).all(), col
    np.testing.assert_array_equal(cols["area_px2"], [t["area_px"] for t in rows])
    np.testing.assert_array_equal(cols["border"], [t["border"] for t in rows])
    d_err = cols["diameter_nm"][inside] / np.array([t["diameter_nm"] for t in rows])[inside] - 1
    assert np.median(np.abs(d_err)) < 0.03
    offset = np.hypot(cols["x"] - [t["x"] for t in rows], cols["y"] - [t["y"] for t in rows])
    assert np.median(offset[inside]) < 0.5 and offset[inside].max() < 2.0
    # Invariants: isodiametric inequality, hull within the outline, sorted calipers.
    assert (cols["diameter_nm"] <= cols["feret_max_nm"] * 1.01).all()
    assert (cols["feret_min_nm"] <= cols["feret_max_nm"]).all()
    assert (cols["convexity"] <= 1 + 1e-9).all() and (cols["circularity"] <= 1).all()
    assert ((cols["solidity"] > 0) & (cols["solidity"] <= 1)).all()
    np.testing.assert_allclose(cols["score"], 0.9)


def test_distance_transform_is_exact_and_repeatable() -> None:
    # OpenCV's square root was one unit in the last place off on some calls: ties between
    # distances (split plateaus, zone borders) moved from run to run.
    from nptrack.measure.props import edt

    rng = np.random.default_rng(7)
    for _ in range(40):
        mask = rng.random((int(rng.integers(3, 70)), int(rng.integers(3, 70)))) < 0.9
        exact = ndi.distance_transform_edt(mask).astype(np.float32)
        for _ in range(3):
            np.testing.assert_array_equal(edt(mask), exact)


def test_median_is_numpys() -> None:
    from nptrack.measure.props import _median

    rng = np.random.default_rng(8)
    for values in (rng.normal(size=200_001), rng.exponential(size=100_000).astype(np.float32),
                   rng.integers(0, 4, 300_000).astype(float), np.r_[rng.random(60_000), np.nan],
                   np.sort(rng.random(80_000)), rng.random(101)):  # fmt: skip
        np.testing.assert_array_equal(_median(values), np.median(values))
