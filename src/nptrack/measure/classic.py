"""Classical segmentation: local-background-corrected global threshold (Otsu or Li).

A fallback for `nptrack analyze` when no U-Net model is available, with the same interface as
`nptrack.segment.infer.Segmenter`: ``predict(image, *, pixel_size_nm, contrast)`` returns a
probability map and ``threshold`` is the level that separates particles (0.5).

The support's intensity drifts across a TEM image (thickness, illumination), so a single
global threshold cuts particles on one side and support on the other. The background is
estimated by a wide Gaussian over the pixels not taken as particles (normalised convolution),
subtracted, and the threshold computed again; two rounds suffice.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_li, threshold_otsu

__all__ = ["ClassicSegmenter", "decide_contrast", "flatten_background"]

Contrast = Literal["bright", "dark", "auto"]


def flatten_background(
    image: np.ndarray, *, sigma_px: float, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Subtract a smooth background estimated away from `exclude`.

    Parameters
    ----------
    image : ndarray of float, shape (H, W)
    sigma_px : float
        Gaussian width of the background (pixels); larger than the particles.
    exclude : ndarray of bool, shape (H, W), optional
        Pixels left out of the estimate (the particles).

    Returns
    -------
    ndarray of float32, shape (H, W)
        `image` minus its background.
    """
    image = np.asarray(image, dtype=np.float32)
    weight = np.ones_like(image) if exclude is None else (~exclude).astype(np.float32)
    if weight.sum() < 0.05 * weight.size:  # nearly all particles: no usable background
        return image - float(np.median(image))
    # A wide Gaussian on a block-averaged image: the same result for a fraction of the time.
    f = max(int(sigma_px // 8), 1)
    small_img = _block_mean(image * weight, f)
    small_w = _block_mean(weight, f)
    num = ndi.gaussian_filter(small_img, sigma_px / f, mode="reflect")
    den = ndi.gaussian_filter(small_w, sigma_px / f, mode="reflect")
    bg_small = num / np.maximum(den, 1e-6)
    height, width = image.shape
    background = cv2.resize(bg_small, (width, height), interpolation=cv2.INTER_LINEAR)
    return image - background


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    return a[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def _threshold(values: np.ndarray, method: str) -> float:
    sample = values.ravel()
    if sample.size > 500_000:  # thresholds of a subsample are the same to < 0.1 %
        sample = sample[:: sample.size // 500_000 + 1]
    return float(threshold_li(sample) if method == "li" else threshold_otsu(sample))


def _largest_share(mask: np.ndarray) -> float:
    lab, n = ndi.label(mask)
    if n == 0:
        return 0.0
    return float(np.bincount(lab.ravel())[1:].max()) / float(mask.sum())


def decide_contrast(image: np.ndarray, mask: np.ndarray) -> Literal["bright", "dark"]:
    """Which side of a two-class split holds the particles: a vote of four cues.

    Particles are compact objects on a connected support, so the particle class (1) touches
    the image border less than its share of the image, (2) is split into many pieces while
    most of the support is one piece, (3) is usually the minority, and (4) forms the long tail
    of the histogram. On the 99 real EMPS micrographs the vote (ties decided by the border cue)
    picks the right side in 88-90 images (depending on the smoothing); the best single cue in
    83.

    Parameters
    ----------
    image : ndarray of float, shape (H, W)
        The (smoothed) image.
    mask : ndarray of bool, shape (H, W)
        The bright class of a two-class split of `image`.
    """
    frac = float(mask.mean())
    if frac <= 0.0:
        return "dark"
    if frac >= 1.0:
        return "bright"
    edge = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    edge_frac = float(edge.mean())
    border = edge_frac / frac < (1 - edge_frac) / (1 - frac)
    # Connectivity on a grid of at most ~512 x 512 points: the same verdict, 16x cheaper
    # on a 2048² frame.
    step = max(int(np.ceil(np.sqrt(mask.size / 262_144))), 1)
    coarse = mask[::step, ::step]
    pieces = _largest_share(coarse) < _largest_share(~coarse)
    minority = frac < 0.5
    values = np.asarray(image, dtype=np.float64).ravel()[:: max(image.size // 250_000, 1)]
    centred = values - values.mean()
    tail = float(np.mean(centred**3)) > 0.0
    votes = int(border) + int(pieces) + int(minority) + int(tail)
    if votes == 2:
        return "bright" if border else "dark"
    return "bright" if votes > 2 else "dark"


class ClassicSegmenter:
    """Background-corrected Otsu / Li threshold with the interface of the U-Net segmenter.

    Parameters
    ----------
    method : {'otsu', 'li'}
        Threshold rule on the background-corrected image.
    smooth_px : float
        Gaussian denoising before thresholding (pixels).
    background_frac : float
        Background Gaussian width as a fraction of the larger image side.

    Attributes
    ----------
    threshold : float
        0.5: `predict` maps the threshold to probability 0.5.
    last_contrast : {'bright', 'dark'} or None
        The contrast used by the last `predict` (decided there when asked for 'auto').
    """

    threshold: float = 0.5

    def __init__(
        self,
        *,
        method: Literal["otsu", "li"] = "otsu",
        smooth_px: float = 1.0,
        background_frac: float = 0.125,
    ) -> None:
        if method not in ("otsu", "li"):
            raise ValueError(f"unknown threshold method {method!r} (otsu or li)")
        self.method = method
        self.smooth_px = smooth_px
        self.background_frac = background_frac
        self.last_contrast: Literal["bright", "dark"] | None = None

    def predict(
        self,
        image: np.ndarray,
        *,
        pixel_size_nm: tuple[float, float] | None = None,
        contrast: Contrast = "auto",
    ) -> np.ndarray:
        """Probability that each pixel belongs to a particle.

        Parameters
        ----------
        image : ndarray of float, shape (H, W)
        pixel_size_nm : (float, float), optional
            Unused (the method has no absolute scale); accepted for interface parity.
        contrast : {'bright', 'dark', 'auto'}
            Particles brighter or darker than the support.

        Returns
        -------
        ndarray of float32, shape (H, W)
            A logistic of the background-corrected intensity, centred on the threshold and
            scaled by the background noise: 0.5 at the threshold.
        """
        del pixel_size_nm
        img = np.asarray(image, dtype=np.float32)
        if self.smooth_px > 0:
            img = cv2.GaussianBlur(img, (0, 0), self.smooth_px, borderType=cv2.BORDER_REFLECT)
        sigma_bg = max(img.shape) * self.background_frac
        # Round 0: global split to find the particles roughly; rounds 1-2: corrected.
        t = _threshold(img, self.method)
        bright = img > t
        side = contrast if contrast != "auto" else decide_contrast(img, bright)
        flat = img
        for _ in range(2):
            fg = bright if side == "bright" else ~bright
            grown = cv2.dilate(fg.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            flat = flatten_background(img, sigma_px=sigma_bg, exclude=grown)
            t = _threshold(flat, self.method)
            bright = flat > t
            if contrast == "auto":
                side = decide_contrast(flat, bright)
        self.last_contrast = side
        sign = 1.0 if side == "bright" else -1.0
        support = ~bright if side == "bright" else bright
        vals = flat[support] if support.any() else flat.ravel()
        noise = 1.4826 * float(np.median(np.abs(vals - np.median(vals))))
        noise = max(noise, 1e-3 * (float(flat.max() - flat.min()) or 1.0))
        z = np.clip((sign / noise) * (flat - t), -30.0, 30.0).astype(np.float32)
        return 1.0 / (1.0 + np.exp(-z))
