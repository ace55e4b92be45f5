"""Synthetic test scenes for registration: textured support, particles, known affine maps.

Built here on purpose (no dependency on nptrack.simulate): smoothed random noise at three
scales with a terrace step and pores, bright Gaussian particles, Poisson noise. A frame is
sampled from a larger canvas with a known frame → canvas map ``g``; the true acquired →
frame-0 map is then ``g0⁻¹ ∘ g``. The canvas is twice as fine as the frames and each frame
pixel averages 2×2 canvas samples, as a detector pixel integrates: interpolating texture
that is near the frame's Nyquist limit directly would shift it by up to ~0.07 px, an error
of the test scene, not of the registration.
"""

from __future__ import annotations

import cv2
import numpy as np

from nptrack.register.warp import compose, invert

MARGIN = 96


OVERSAMPLE = 2
_S = np.array([[OVERSAMPLE, 0.0, (OVERSAMPLE - 1) / 2], [0.0, OVERSAMPLE, (OVERSAMPLE - 1) / 2]])


def support(shape: tuple[int, int], seed: int = 0, *, scale: float = 1.0) -> np.ndarray:
    """Textured support (mean ≈ 1) of the given (height, width); lengths × `scale`."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = np.ones((h, w), np.float32)
    for sigma, amp in ((1.0, 0.12), (3.0, 0.15), (10.0, 0.15)):
        n = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma * scale)
        img += amp * n / n.std()
    yy, xx = np.mgrid[0:h, 0:w]
    img += 0.15 * (xx + 0.4 * yy > 0.55 * w).astype(np.float32)  # a terrace step
    pores = np.zeros((h, w), np.float32)
    for _ in range(4):
        centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        cv2.circle(pores, centre, int(12 * scale), 1.0, -1)
    img *= 1.0 - 0.6 * cv2.GaussianBlur(pores, (0, 0), 2.0 * scale)
    return np.clip(img, 0.05, None)


def blobs(shape: tuple[int, int], xy: np.ndarray, sigma: float, amp: float) -> np.ndarray:
    """Sum of Gaussian particles centred at `xy` (N, 2) = (x, y) pixels."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    out = np.zeros(shape, np.float64)
    for x, y in np.asarray(xy, float).reshape(-1, 2):
        out += amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return out.astype(np.float32)


def frame_map(
    shift: tuple[float, float] = (0.0, 0.0),
    *,
    scale: tuple[float, float] = (1.0, 1.0),
    shear: float = 0.0,
    rotation_deg: float = 0.0,
    shape: tuple[int, int] = (256, 256),
) -> np.ndarray:
    """Frame → canvas map: a linear part about the frame centre, then `shift` + the margin."""
    th = np.radians(rotation_deg)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    a = rot @ np.array([[scale[0], shear], [0.0, scale[1]]])
    c = np.array([(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0])
    t = c + MARGIN + np.asarray(shift, float) - a @ c
    return np.hstack([a, t[:, None]])


class Scene:
    """A canvas with particles, from which frames are sampled by known maps."""

    def __init__(
        self,
        shape: tuple[int, int] = (256, 256),
        *,
        seed: int = 0,
        n_particles: int = 12,
        dose: float = 20.0,
    ) -> None:
        self.shape = shape
        self.dose = dose
        ch, cw = shape[0] + 2 * MARGIN, shape[1] + 2 * MARGIN
        self.canvas = support((OVERSAMPLE * ch, OVERSAMPLE * cw), seed, scale=OVERSAMPLE)
        self.rng = np.random.default_rng(seed + 1000)
        lo, hi = MARGIN + 10, np.array([shape[1], shape[0]]) + MARGIN - 10
        self.particles = self.rng.uniform(lo, hi, size=(n_particles, 2))  # canvas (x, y)
        self.g0 = frame_map(shape=shape)

    def frame(
        self, g: np.ndarray, *, particle_step_px: float = 0.0, noise: bool = True
    ) -> np.ndarray:
        """Sample a frame with the frame → canvas map `g`; particles move by a random step."""
        h, w = self.shape
        if particle_step_px:
            self.particles = self.particles + self.rng.normal(
                0, particle_step_px, self.particles.shape
            )
        fine = cv2.warpAffine(
            self.canvas,
            compose(_S, compose(g, invert(_S))),  # the same map between the fine grids
            (OVERSAMPLE * w, OVERSAMPLE * h),
            flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        )
        img = cv2.resize(fine, (w, h), interpolation=cv2.INTER_AREA)
        xy = (self.particles - g[:, 2]) @ np.linalg.inv(g[:, :2]).T
        img = img + blobs(self.shape, xy, 3.0, 1.5)
        if not noise:
            return img.astype(np.float32)
        return self.rng.poisson(np.clip(img, 0, None) * self.dose).astype(np.float32)

    def truth(self, g: np.ndarray) -> np.ndarray:
        """True acquired → frame-0 map of a frame sampled with `g`."""
        return compose(invert(self.g0), g)
