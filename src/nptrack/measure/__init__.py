"""Particle measurement: probability map → separated particles → physical measurements.

`detect_particles` is the whole chain for one frame (used by the live pipeline and by
``nptrack analyze``); `nptrack.measure.split` and `nptrack.measure.props` hold the steps,
`nptrack.measure.classic` a classical threshold segmenter, `nptrack.measure.analyze` the
static-analysis job (files in, tables and figures out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from nptrack.config import MeasureConfig
from nptrack.measure.props import DETECTION_COLUMNS, measure_particles
from nptrack.measure.split import SplitResult, clean_mask, split_particles

__all__ = [
    "DETECTION_COLUMNS",
    "Particles",
    "detect_particles",
    "measure_particles",
    "min_areas_px",
    "split_particles",
]


@dataclass(frozen=True)
class Particles:
    """Particles of one frame.

    Attributes
    ----------
    labels : ndarray of int32, shape (H, W)
        0 = background, k = particle k (row k - 1 of `columns`).
    columns : dict of str to ndarray, each of shape (N,)
        See `nptrack.measure.props.measure_particles`.
    """

    labels: np.ndarray
    columns: dict[str, np.ndarray]

    @property
    def count(self) -> int:
        return int(self.columns["label"].size)


def _disk_area_px(diameter_nm: float, pixel_size_nm: tuple[float, float]) -> float:
    return float(np.pi / 4 * diameter_nm**2 / (pixel_size_nm[0] * pixel_size_nm[1]))


def min_areas_px(
    config: MeasureConfig, pixel_size_nm: tuple[float, float] | None
) -> tuple[float, float, float]:
    """(speckle, hole, marker) minimum areas in pixels for a frame.

    Sizes given in nm apply when the pixel size is known; otherwise the ``*_px`` settings do.
    """
    if pixel_size_nm is None:
        d_speck, d_hole = config.min_diameter_px, config.fill_holes_px
        return (np.pi / 4 * d_speck**2, np.pi / 4 * d_hole**2, float(config.min_marker_px))
    return (
        _disk_area_px(config.min_diameter_nm, pixel_size_nm),
        _disk_area_px(config.fill_holes_nm, pixel_size_nm),
        max(float(config.min_marker_px), _disk_area_px(config.min_marker_nm, pixel_size_nm)),
    )


def detect_particles(
    probability: np.ndarray,
    image: np.ndarray | None = None,
    *,
    threshold: float = 0.5,
    pixel_size_nm: tuple[float, float] | None = None,
    contrast: Literal["bright", "dark", "auto"] = "auto",
    config: MeasureConfig | None = None,
) -> Particles:
    """Threshold, clean, separate and measure the particles of one frame.

    Parameters
    ----------
    probability : ndarray of float, shape (H, W)
        Particle probability (segmenter output).
    image : ndarray of float, shape (H, W), optional
        The frame, for intensity-weighted centroids and integrated intensities.
    threshold : float
        Probability above which a pixel is a particle (the model's, or 0.5).
    pixel_size_nm : (float, float), optional
        Pixel size along (y, x) in nm.
    contrast : {'bright', 'dark', 'auto'}
        Particle contrast for the intensity measures.
    config : MeasureConfig, optional
        Sizes, separation method and thresholds (defaults when None).

    Returns
    -------
    Particles
    """
    config = config or MeasureConfig()
    speck, hole, marker = min_areas_px(config, pixel_size_nm)
    mask = clean_mask(np.asarray(probability) > threshold, min_area_px=speck, max_hole_px=hole)
    split: SplitResult = split_particles(
        mask,
        method=config.split,
        h_px=config.watershed_h_px,
        convexity_threshold=config.convexity_threshold,
        min_marker_px=marker,
    )
    columns = measure_particles(
        split.labels,
        image,
        probability,
        pixel_size_nm=pixel_size_nm,
        contrast=contrast,
        background_ring_px=config.background_ring_px,
        intensity_margin_px=config.intensity_margin_px,
        convexity_threshold=config.convexity_threshold,
        separated=split.separated,
    )
    return Particles(split.labels, columns)
