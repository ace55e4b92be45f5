"""The polarity cut of `detect_particles`: pores out, particles sitting in pores kept."""

from __future__ import annotations

import numpy as np

from nptrack.config import MeasureConfig
from nptrack.measure import detect_particles


def _disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """ADF-like frame: support 100, a pore (floor 45) with a particle (70) in it, a pore
    alone, and a particle on the support (160); Poisson-like noise sd 4."""
    shape = (96, 128)
    regions = {
        "pore_with_particle": _disk(shape, 30, 32, 12),
        "in_pore": _disk(shape, 30, 32, 3.5),
        "bare_pore": _disk(shape, 60, 90, 10),
        "on_support": _disk(shape, 70, 30, 4),
    }
    img = np.full(shape, 100.0)
    img[regions["pore_with_particle"] | regions["bare_pore"]] = 45.0
    img[regions["in_pore"]] = 70.0
    img[regions["on_support"]] = 160.0
    return img + rng.normal(0.0, 4.0, shape), regions


def test_particle_in_a_pore_is_kept_and_the_pore_is_not() -> None:
    rng = np.random.default_rng(2)
    img, reg = _scene(rng)
    # What a two-contrast segmenter marks: the three particles-or-pores, as their disks.
    prob = (reg["in_pore"] | reg["bare_pore"] | reg["on_support"]).astype(float)
    found = detect_particles(prob, img, contrast="bright", threshold=0.5)
    ys, xs = np.round(found.columns["y"]).astype(int), np.round(found.columns["x"]).astype(int)
    at = {(y, x) for y, x in zip(ys.tolist(), xs.tolist(), strict=True)}
    assert found.count == 2, at
    assert any(abs(y - 30) <= 1 and abs(x - 32) <= 1 for y, x in at)  # in the pore
    assert any(abs(y - 70) <= 1 and abs(x - 30) <= 1 for y, x in at)  # on the support
    # The rule off: the particle in the pore, darker than the support, goes with the pore.
    off = MeasureConfig(opposite_contrast_keep_sigma=0.0)
    assert detect_particles(prob, img, contrast="bright", threshold=0.5, config=off).count == 1


def test_a_faint_blob_in_a_pore_is_not_rescued() -> None:
    # The same scene with the "particle" only 1 noise sd above the pore floor: it does not
    # stand 3 smoothed-noise sigmas above its ring, so the polarity cut still removes it.
    rng = np.random.default_rng(4)
    img, reg = _scene(rng)
    img[reg["in_pore"]] -= 70.0 - 46.0
    prob = (reg["in_pore"] | reg["bare_pore"]).astype(float)
    assert detect_particles(prob, img, contrast="bright", threshold=0.5).count == 0
