"""Outline refinement: each particle's edge placed at a fixed fraction of its own contrast.

A segmenter's threshold is chosen for overlap scores (Dice), not for sizes: a mask one pixel
too wide all round makes a 2 nm particle at 0.064 nm/px 7 % too large, and a retrained model
moves its masks again. `refine_outlines` takes the edge from the image instead, so the sizes
no longer depend on the model or threshold that drew the masks: within a band of a few
pixels around each mask, a pixel belongs to the particle when the lightly smoothed image is
beyond the particle's own edge level, ``background + level × (core − background)``, with the
core the mean over the mask eroded past the band and the background the mean over a ring
beyond the band that no other particle comes near.

Which level is the edge depends on the particle's profile. A flat-topped particle blurred
by the optics crosses half its contrast (0.5) at its edge. A particle that thins to its rim
(an ellipsoid or cap: thickness ∝ sqrt(1 − ρ²), as the simulator draws them) is at half its
central thickness at 0.87 of its radius, so half contrast sizes it ~13 % small; 0.25 of the
core's mean is reached at ~0.97 of the radius. Measured on simulator images (tools/eval_sizing.py)
the 0.25 level makes the sizes nearly independent of the U-Net threshold.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

__all__ = ["refine_outlines"]


def _disk(radius_px: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))


def refine_outlines(
    labels: np.ndarray,
    image: np.ndarray,
    *,
    contrast: Literal["bright", "dark"],
    band_px: int = 2,
    level: float = 0.25,
    ring_px: int = 4,
    smooth_px: float = 1.0,
) -> np.ndarray:
    """Move every particle's outline to its edge level in the image, within a band of the mask.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        0 = background, 1..N = particles (separated).
    image : ndarray of float, shape (H, W)
        The frame the labels were segmented from.
    contrast : {'bright', 'dark'}
        Particles brighter or darker than the support.
    band_px : int
        The outline moves at most this far out and ``band_px + 1`` in (px); 0 returns the
        labels unchanged.
    level : float
        Where the outline is placed between the background (0) and the core (1) level.
    ring_px : int
        Width of the background ring (px); it starts 2 px beyond the band.
    smooth_px : float
        Gaussian sigma (px) of the image the levels are compared on (noise, not shape).

    Returns
    -------
    ndarray of int32, shape (H, W)
        The refined labels, same ids (a label may lose pixels to the point of being in
        pieces, never all of them: its core stays). A particle keeps its mask when it has
        no core (narrower than about twice the band), no background ring, or no contrast; an
        outline pixel between two particles (both within `band_px`) is left as it was.
    """
    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    if band_px <= 0 or n == 0:
        return labels.astype(np.int32, copy=False)
    # Label images are grown with grey dilation (max) and erosion (min): exact in uint16 up
    # to 65535 particles, in float32 up to 2^24.
    ltype = np.uint16 if n < 65535 else np.float32
    lab = labels.astype(ltype)
    mask = lab > 0
    mask_u8 = mask.view(np.uint8)
    sign = np.float32(1.0 if contrast == "bright" else -1.0)
    g = sign * cv2.GaussianBlur(np.asarray(image, dtype=np.float32), (0, 0), smooth_px)

    # Core: the mask eroded beyond the band (pixels that no refinement can touch).
    deep = cv2.erode(mask_u8, _disk(band_px + 1), borderType=cv2.BORDER_REPLICATE).view(bool)
    core = np.flatnonzero(deep)
    core_lab = lab.ravel()[core].astype(np.int64)
    core_n = np.bincount(core_lab, minlength=n + 1)
    core_mean = np.bincount(core_lab, weights=g.ravel()[core], minlength=n + 1)
    core_mean /= np.maximum(core_n, 1)

    # Nearest particle of background pixels, where unambiguous: the largest and the smallest
    # label within reach agree. For the smallest, labels are shifted down by one so that the
    # background wraps round to the type's maximum. The wide window is a square (separable:
    # a fraction of a disk's cost), so the ring reaches up to ~1.4 x farther on diagonals.
    top = np.iinfo(np.uint16).max if ltype == np.uint16 else np.float32(2**24)
    low = lab - ltype(1) if ltype == np.uint16 else np.where(mask, lab - 1, top).astype(ltype)
    reach = np.ones((2 * (band_px + 2 + ring_px) + 1,) * 2, np.uint8)
    near_max = cv2.dilate(lab, reach)
    near_min = cv2.erode(low, reach)
    grown_gap = cv2.dilate(mask_u8, _disk(band_px + 2)).view(bool)
    ring = np.flatnonzero((near_max > 0) & (near_max == near_min + ltype(1)) & ~grown_gap)
    ring_lab = near_max.ravel()[ring].astype(np.int64)
    ring_n = np.bincount(ring_lab, minlength=n + 1)
    ring_mean = np.bincount(ring_lab, weights=g.ravel()[ring], minlength=n + 1)
    ring_mean /= np.maximum(ring_n, 1)

    # Band pixels: inside the mask but not core, and outside within the band, nearest to one
    # particle only (an outline pixel between two particles is left as it was).
    inner = np.flatnonzero(mask & ~deep)
    inner_who = lab.ravel()[inner].astype(np.int64)
    band_max = cv2.dilate(lab, _disk(band_px))
    band_min = cv2.erode(low, _disk(band_px))
    outer = np.flatnonzero((band_max > 0) & ~mask & (band_max == band_min + ltype(1)))
    outer_who = band_max.ravel()[outer].astype(np.int64)

    ok = (core_n > 0) & (ring_n > 0) & (core_mean > ring_mean)
    ok[0] = False
    threshold = ring_mean + level * (core_mean - ring_mean)
    threshold[~ok] = np.nan

    out = labels.astype(np.int32, copy=True)
    # Inside the band: drop pixels below their particle's level (NaN: not refined, False).
    drop = inner[g.ravel()[inner] < threshold[inner_who]]
    out.ravel()[drop] = 0
    # Outside, within the band: add pixels at or beyond the level.
    add = g.ravel()[outer] >= threshold[outer_who]
    out.ravel()[outer[add]] = outer_who[add]
    return out
