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
from scipy import ndimage as ndi

from nptrack.config import MeasureConfig
from nptrack.measure.props import DETECTION_COLUMNS, _median, fit_circle, measure_particles
from nptrack.measure.refine import refine_outlines
from nptrack.measure.split import (
    SplitResult,
    clean_mask,
    fill_separation_lines,
    split_centres,
    split_particles,
)

__all__ = [
    "DETECTION_COLUMNS",
    "Particles",
    "centre_in_field",
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
    separation_px: int = 0,
    centres: np.ndarray | None = None,
    centre_threshold: float | None = None,
    centre_dynamic: float | None = None,
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
    separation_px : int
        Half-width of the background lines the model leaves between touching particles
        (its metadata's ``separation_px``; 0 for models without): the lines are given back
        to the particles after separation (`fill_separation_lines`).
    centres : ndarray of float, shape (H, W), optional
        The model's centre map (a model with centres, ``Segmenter.predict_maps``): touching
        particles are cut between its cores (`split_centres`) when ``config.use_centres``.
    centre_threshold : float, optional
        Level of those cores: ``config.centre_threshold`` when set, else this (the model's,
        ``Segmenter.centre_threshold``), else 0.5.
    centre_dynamic : float, optional
        ``config.centre_dynamic`` when set, else this (``Segmenter.centre_dynamic``): the map
        is split at its maxima of at least this dynamic (`split_centres`' ``min_dynamic``)
        rather than at level cores.

    Returns
    -------
    Particles
    """
    config = config or MeasureConfig()
    speck, hole, _ = min_areas_px(config, pixel_size_nm)
    side: Literal["bright", "dark"] | None = None  # the particles' contrast, once known
    mask = clean_mask(np.asarray(probability) > threshold, min_area_px=speck, max_hole_px=hole)
    if config.reject_opposite_contrast and image is not None and mask.any():
        # A region darker (bright particles) or brighter (dark particles) than the support
        # around it has the other polarity: a pore in ADF, a hole in BF. A particle touching
        # a pore is merged with it into such a region: there, only the pixels of the
        # particles' polarity are kept. Regions that pass are left untouched (no rim trim).
        mask, sign = _cut_opposite_contrast(mask, image, contrast, config, speck, hole)
        side = "bright" if sign > 0 else "dark"
    labels, columns = _split_and_measure(
        mask, image, probability, pixel_size_nm, contrast, config, side=side,
        separation_px=separation_px, centres=centres if config.use_centres else None,
        centre_threshold=_first_set(config.centre_threshold, centre_threshold, 0.5),
        centre_dynamic=(
            config.centre_dynamic if config.centre_dynamic is not None else centre_dynamic
        ),
    )  # fmt: skip
    if config.reject_opposite_contrast and image is not None and columns["label"].size:
        # Measured against its own background ring, intensity is positive for the particles'
        # contrast: what is still at or below its ring is not a particle.
        keep = np.nan_to_num(columns["intensity"], nan=1.0) > 0
        if not keep.all():
            relabel = np.zeros(keep.size + 1, dtype=labels.dtype)
            relabel[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=labels.dtype)
            labels = relabel[labels]
            columns = {k: v[keep] for k, v in columns.items()}
            columns["label"] = np.arange(1, int(keep.sum()) + 1)
    return Particles(labels, columns)


def _first_set(*values: float | None) -> float:
    return next(float(v) for v in values if v is not None)


def _cut_opposite_contrast(
    mask: np.ndarray,
    image: np.ndarray,
    contrast: str,
    config: MeasureConfig,
    speck_px: float,
    hole_px: float,
) -> tuple[np.ndarray, float]:
    """The mask without the wrong-polarity pixels of regions that fail the polarity test,
    and the particles' polarity (+1 bright, -1 dark)."""
    import cv2

    img = np.asarray(image, dtype=np.float32)
    # 4-connected regions (OpenCV's labelling: faster than ndi.label, same regions); all
    # per-region sums run over the mask's pixels only.
    u8 = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    n, regions = cv2.connectedComponents(u8, connectivity=4)
    n -= 1
    at = np.flatnonzero(u8)
    region = regions.ravel()[at]
    sign = _polarity(img, mask, contrast, inside=img.ravel()[at])
    # Support level around the regions: Gaussian-weighted mean of the unmasked pixels
    # (normalised convolution), wider than the particles.
    areas = np.bincount(region, minlength=n + 1)[1:]
    sigma = float(max(8.0, 2.0 * np.sqrt(np.median(areas))))
    free = (~mask).astype(np.float32)
    # The support level is smooth: estimated on a copy binned by ~sigma / 4 (16x fewer pixels
    # for sigma 16), then interpolated back.
    f = max(1, int(sigma // 4))
    h, w = img.shape
    small = (max(1, w // f), max(1, h // f))
    num = cv2.resize(img * free, small, interpolation=cv2.INTER_AREA)
    den = cv2.resize(free, small, interpolation=cv2.INTER_AREA)
    num = cv2.GaussianBlur(num, (0, 0), sigma / f)
    den = cv2.GaussianBlur(den, (0, 0), sigma / f)
    support = cv2.resize(num / np.maximum(den, 1e-3), (w, h), interpolation=cv2.INTER_LINEAR)
    blurred = cv2.GaussianBlur(img, (0, 0), 1.0)
    contrast_map = np.float32(sign) * (blurred.ravel()[at] - support.ravel()[at])
    balance = np.bincount(region, weights=contrast_map, minlength=n + 1)
    bad = balance <= 0
    bad[0] = False
    if bad.any() and config.opposite_contrast_keep_sigma > 0:
        # A particle that sits in a pore is darker than the support around the pore but
        # brighter than the pore floor around itself: kept whole when it stands clear of its
        # own ring of unmasked pixels.
        noise = _smoothed_noise(img)
        keep = _stands_out(
            regions, np.flatnonzero(bad), blurred, mask, sign, noise=noise,
            sigmas=config.opposite_contrast_keep_sigma,
        )  # fmt: skip
        bad &= ~keep
    if not bad.any():
        return mask, sign
    out = mask.copy()
    out.ravel()[at[bad[region] & (contrast_map <= 0)]] = False
    return clean_mask(out, min_area_px=speck_px, max_hole_px=hole_px), sign


RING_PX = 3
"""Width (px) of the ring of unmasked pixels a region is compared with in `_stands_out`."""


def _stands_out(
    regions: np.ndarray,
    which: np.ndarray,
    blurred: np.ndarray,
    mask: np.ndarray,
    sign: float,
    *,
    noise: float,
    ring_px: int = RING_PX,
    sigmas: float = 3.0,
) -> np.ndarray:
    """Whether each region stands out of its surroundings in the particles' polarity.

    Parameters
    ----------
    regions : ndarray of int, shape (H, W)
        Region labels (0 = background).
    which : ndarray of int
        Labels to test.
    blurred : ndarray of float, shape (H, W)
        The frame smoothed by a 1 px Gaussian.
    mask : ndarray of bool, shape (H, W)
        All regions.
    sign : float
        +1 bright particles, -1 dark.
    noise : float
        Noise sigma of `blurred` (`_smoothed_noise` of the frame).
    ring_px, sigmas
        A region stands out when its mean exceeds the mean of the unmasked pixels within
        `ring_px` of it by `sigmas` × `noise`.

    Returns
    -------
    ndarray of bool, shape (max label + 1,)
        True at the labels in `which` that stand out.
    """
    import cv2

    out = np.zeros(int(regions.max()) + 1, dtype=bool)
    h, w = regions.shape
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1, 2 * ring_px + 1))
    boxes = ndi.find_objects(regions)
    for lab in which.tolist():
        rows, cols = boxes[lab - 1]
        r0, r1 = max(rows.start - ring_px, 0), min(rows.stop + ring_px, h)
        c0, c1 = max(cols.start - ring_px, 0), min(cols.stop + ring_px, w)
        own = regions[r0:r1, c0:c1] == lab
        ring = cv2.dilate(own.view(np.uint8), kernel).view(bool) & ~mask[r0:r1, c0:c1]
        if not ring.any():
            continue
        crop = blurred[r0:r1, c0:c1]
        out[lab] = sign * (float(crop[own].mean()) - float(crop[ring].mean())) > sigmas * noise
    return out


def _polarity(
    image: np.ndarray, mask: np.ndarray, contrast: str, *, inside: np.ndarray | None = None
) -> float:
    """+1 for bright particles, -1 for dark ('auto': median inside vs outside the mask)."""
    if contrast in ("bright", "dark"):
        return 1.0 if contrast == "bright" else -1.0
    img = np.asarray(image)
    inside = img[mask] if inside is None else inside
    outside = img[~mask]
    if not inside.size or not outside.size:
        return 1.0
    return 1.0 if _median(inside) >= _median(outside) else -1.0


def _side(image: np.ndarray, labels: np.ndarray, contrast: str) -> Literal["bright", "dark"]:
    """The particles' contrast; 'auto' decided on every k-th pixel (~1 Mpx: same answer)."""
    if contrast in ("bright", "dark"):
        return contrast  # type: ignore[return-value]
    step = max(labels.size // 1_000_000, 1)
    img, lab = np.asarray(image).ravel()[::step], np.asarray(labels).ravel()[::step]
    return "bright" if _polarity(img, lab > 0, "auto") > 0 else "dark"


def _split_and_measure(
    mask: np.ndarray,
    image: np.ndarray | None,
    probability: np.ndarray,
    pixel_size_nm: tuple[float, float] | None,
    contrast: str,
    config: MeasureConfig,
    *,
    side: Literal["bright", "dark"] | None = None,
    separation_px: int = 0,
    centres: np.ndarray | None = None,
    centre_threshold: float = 0.5,
    centre_dynamic: float | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    _, _, marker = min_areas_px(config, pixel_size_nm)
    if side is None and image is not None and contrast in ("bright", "dark"):
        side = contrast  # type: ignore[assignment]
    smooth, intensity_h = None, 0.0
    if config.split_intensity_sigma > 0 and image is not None and mask.any():
        # ADF-STEM: the intensity is the projected mass, so two overlapping particles show two
        # peaks even where their union is nearly convex. Not for dark particles: bright-field
        # contrast (diffraction, fringes) is no measure of thickness.
        side = side or _side(image, mask, contrast)
        if side == "bright":
            smooth = image  # smoothed by 1 px where a region is split (split_watershed)
            intensity_h = config.split_intensity_sigma * _smoothed_noise(image)

    def by_method(region: np.ndarray, region_image: np.ndarray | None) -> SplitResult:
        return split_particles(
            region,
            method=config.split,
            h_px=config.watershed_h_px,
            convexity_threshold=config.convexity_threshold,
            min_marker_px=marker,
            image=region_image,
            intensity_h=intensity_h,
        )

    if centres is not None:
        split = split_centres(
            mask, centres, threshold=centre_threshold, fallback=by_method, image=smooth,
            min_dynamic=centre_dynamic,
        )  # fmt: skip
    else:
        split = by_method(mask, smooth)
    labels, separated = split.labels, split.separated
    own = None  # the pixels the model itself gave to particles (not filled lines)
    if separation_px > 0:
        own = labels > 0
        labels, touching = fill_separation_lines(labels, separation_px=separation_px)
        separated = separated.copy()
        separated[touching - 1] = True
    if config.refine_band_px > 0 and image is not None and labels.max(initial=0) > 0:
        # The segmenter's threshold was chosen for overlap, not size: the outline is placed
        # at a fixed fraction of each particle's contrast over its surroundings in the image.
        labels = refine_outlines(
            labels,
            image,
            contrast=side or _side(image, labels, contrast),
            band_px=config.refine_band_px,
            level=config.refine_level,
            ring_px=config.background_ring_px,
        )
    columns = measure_particles(
        labels,
        image,
        probability,
        pixel_size_nm=pixel_size_nm,
        contrast=contrast,  # type: ignore[arg-type]
        background_ring_px=config.background_ring_px,
        intensity_margin_px=config.intensity_margin_px,
        convexity_threshold=config.convexity_threshold,
        separated=separated,
        fit_border_centres=config.fit_border_centres,
    )
    if own is not None and columns["label"].size:
        # The score is the model's confidence in the particle: filled line pixels, where the
        # model was taught to say background, would pull it down (and the tracker's
        # confidence gates with it) for every particle that touches another.
        n = int(labels.max())
        kept = np.where(own, labels, 0).ravel()
        area = np.bincount(kept, minlength=n + 1)[1:]
        prob = np.bincount(kept, weights=np.asarray(probability, float).ravel(), minlength=n + 1)
        own_score = prob[1:] / np.maximum(area, 1)
        columns["score"] = np.where(area > 0, own_score, columns["score"])
    return labels, columns


CENTRE_MARGIN_PX = 0.25
"""How far inside the field (px) the fitted centre of a particle cut by the border must lie."""


def _smoothed_noise(image: np.ndarray) -> float:
    """Noise sigma of the frame after a 1 px Gaussian, taking the noise as white.

    The pixel sigma is the robust spread (MAD) of differences between horizontal neighbours
    (every 8th row), over sqrt(2); a 1 px Gaussian leaves ``1 / (2 sqrt(pi))`` of it.
    Particle edges widen the spread a little (+2 % with 3 % of the frame covered, +10 % with
    11 %): the split then asks for a slightly deeper dip.
    """
    rows = np.asarray(image, dtype=np.float32)[::8]
    d = np.diff(rows, axis=1).ravel()
    mad = float(np.median(np.abs(d - np.median(d))))
    return 1.4826 * mad / np.sqrt(2.0) / (2.0 * np.sqrt(np.pi))


def centre_in_field(labels: np.ndarray, *, margin_px: float = CENTRE_MARGIN_PX) -> np.ndarray:
    """Whether each particle's centre lies inside the image, also for particles cut by the border.

    The field is the acquired pixel area, ``-0.5 <= x < W - 0.5`` and ``-0.5 <= y < H - 0.5``
    (the ground truth's convention). A particle that touches the border has its centre
    estimated by a least-squares circle through its visible outline (the pixel edges between
    the particle and its neighbours inside the image; the border itself is not outline), and
    is inside when that centre lies at least `margin_px` within the field: the fit of a short
    arc is pulled towards the visible part, by ~0.2 px for centres up to 1 px outside and
    ~0.8 px for centres 1-3 px outside (U-Net masks of simulated table1 series). With fewer
    than 6 outline points, the disk rule applies: a disk cut by a straight border has its
    centre inside exactly when its visible depth is at least half its extent along the border.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        0 = background, 1..N = particles.
    margin_px : float
        Margin inside the field for fitted centres (px).

    Returns
    -------
    ndarray of bool, shape (N,)
    """
    labels = np.asarray(labels)
    height, width = labels.shape
    n = int(labels.max(initial=0))
    inside = np.ones(n, dtype=bool)
    for i, sl in enumerate(ndi.find_objects(labels)):
        if sl is None:
            continue
        r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        if r0 > 0 and c0 > 0 and r1 < height and c1 < width:
            continue  # not cut by the border
        centre = _outline_centre(labels, i + 1, (r0, r1, c0, c1))
        if centre is not None:
            x, y = centre
            depth = min(x + 0.5, width - 0.5 - x, y + 0.5, height - 0.5 - y)
            inside[i] = depth >= margin_px
            continue
        rows, cols = r1 - r0, c1 - c0
        for touches, depth_px, along in (
            (c0 == 0, cols, rows),
            (c1 == width, cols, rows),
            (r0 == 0, rows, cols),
            (r1 == height, rows, cols),
        ):
            if touches and depth_px < along / 2:
                inside[i] = False
    return inside


def _outline_centre(
    labels: np.ndarray, label: int, box: tuple[int, int, int, int]
) -> tuple[float, float] | None:
    """(x, y) of the circle fitted to a particle's outline inside the image, or None."""
    height, width = labels.shape
    r0, r1, c0, c1 = box
    top, left = max(r0 - 1, 0), max(c0 - 1, 0)
    region = labels[top : min(r1 + 1, height), left : min(c1 + 1, width)] == label
    # Midpoints of the pixel edges between the particle and another pixel of the image.
    rr, cc = np.nonzero(region[:, :-1] != region[:, 1:])
    ry, cy = np.nonzero(region[:-1, :] != region[1:, :])
    x = np.concatenate([cc + 0.5, cy.astype(float)]) + left
    y = np.concatenate([rr.astype(float), ry + 0.5]) + top
    if x.size < 6:
        return None
    cy, cx, _ = fit_circle(np.column_stack([y, x]), iterations=0)  # the algebraic (Kåsa) fit
    return None if np.isnan(cx) else (cx, cy)
