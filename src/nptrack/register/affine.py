"""Pairwise registration: phase correlation, then a coarse-to-fine pyramid of ECC.

After Faraz et al. (Sci. Rep. 12, 2022, 2484): every frame of an in situ series is mapped to
frame 0 by an affine transform that maximises the (enhanced) correlation coefficient,
estimated over a multiscale pyramid. ECC (Evangelidis & Psarakis, TPAMI 2008) is a local
optimiser: it fails for shifts larger than a few pixels of the coarsest level it starts from,
so a phase correlation (global, translation only, Hanning window) supplies the starting
translation. All the work happens on block-averaged copies no larger than `working_size_px`:
averaging 4×4 pixels of a 2048² frame raises the SNR fourfold and ECC converges to a small
fraction of a working pixel, which is what the 0.2 px budget at full resolution needs, at a
cost of a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from nptrack.register.warp import compose, identity, invert

__all__ = [
    "MODELS",
    "Pyramid",
    "Registration",
    "build_pyramid",
    "phase_correlation",
    "register",
    "support_mask",
]

MODELS = {
    "translation": cv2.MOTION_TRANSLATION,
    "euclidean": cv2.MOTION_EUCLIDEAN,
    "affine": cv2.MOTION_AFFINE,
}

# Levels smaller than this carry too little texture for ECC's 6 parameters.
_MIN_LEVEL_PX = 64
# Phase correlation at this size is accurate to ~0.2 of its pixels, plenty to start ECC.
_PHASE_SIZE_PX = 256
# A mask pixel at a coarse level is usable only if (nearly) all its full-resolution pixels are.
_MASK_KEEP = 0.99
# Smallest difference of the normalised frames (units of their standard deviation) that can
# count as a change.
_MIN_CHANGE = 0.25


@dataclass(frozen=True, eq=False)
class Registration:
    """Result of registering one frame.

    Attributes
    ----------
    matrix : ndarray of float64, shape (2, 3)
        Affine map from moving-frame pixel coordinates (x = column, y = row) to reference
        coordinates.
    cc : float
        Correlation coefficient between the reference and the aligned moving frame
        (smoothed, at the working resolution, over the overlap and the mask); NaN if it
        could not be measured.
    status : str
        ``"ok"`` (cc ≥ cc_ok), ``"degraded"`` (cc_failed ≤ cc < cc_ok) or ``"failed"``.
    detail : str
        Why a frame is not ok, or how it was registered.
    """

    matrix: np.ndarray
    cc: float
    status: str
    detail: str = ""


@dataclass(frozen=True, eq=False)
class Pyramid:
    """Block-averaged copies of one image, ready to register (reusable across calls).

    Attributes
    ----------
    shape : (int, int)
        (height, width) of the full-resolution image.
    images : tuple of ndarray of float32
        Finest (working) level first; level k is block-averaged by ``factors[k]``.
    factors : tuple of int
        Downsampling factor of each level. A level pixel (x, y) has its centre at
        ``(f·x + (f−1)/2, f·y + (f−1)/2)`` in full-resolution pixels.
    """

    shape: tuple[int, int]
    images: tuple[np.ndarray, ...]
    factors: tuple[int, ...]


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Average `factor`×`factor` blocks (the ragged right/bottom edge is dropped)."""
    if factor == 1:
        return np.ascontiguousarray(image, dtype=np.float32)
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    # INTER_AREA with an integer factor is an exact block mean.
    return cv2.resize(
        np.asarray(image[:h, :w], dtype=np.float32),
        (w // factor, h // factor),
        interpolation=cv2.INTER_AREA,
    )


def build_pyramid(image: np.ndarray, *, working_size_px: int = 512, levels: int = 5) -> Pyramid:
    """Block-averaged pyramid of `image`: the working level (≤ `working_size_px`) and coarser.

    Parameters
    ----------
    image : ndarray, shape (H, W)
    working_size_px : int
        The finest level is the full image divided by the smallest integer factor that
        brings its larger side to at most this size.
    levels : int
        Number of levels (each half the previous); levels below 32 px are not built.

    Returns
    -------
    Pyramid
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {img.shape}")
    factor = max(1, -(-max(img.shape) // int(working_size_px)))
    images = [_block_mean(img, factor)]
    factors = [factor]
    while len(images) < levels and min(images[-1].shape) // 2 >= _MIN_LEVEL_PX:
        images.append(_block_mean(images[-1], 2))
        factors.append(factors[-1] * 2)
    return Pyramid((int(img.shape[0]), int(img.shape[1])), tuple(images), tuple(factors))


def _level_map(factor: int) -> np.ndarray:
    """Level → full-resolution coordinate map of a level with this block factor."""
    o = (factor - 1) / 2.0
    return np.array([[factor, 0.0, o], [0.0, factor, o]])


def _to_level(matrix: np.ndarray, factor: int) -> np.ndarray:
    s = _level_map(factor)
    return compose(invert(s), compose(matrix, s))


def _to_full(matrix: np.ndarray, factor: int) -> np.ndarray:
    s = _level_map(factor)
    return compose(s, compose(matrix, invert(s)))


def phase_correlation(reference: np.ndarray, moving: np.ndarray) -> tuple[np.ndarray, float]:
    """Translation between two images by phase correlation (Hanning window, sub-pixel).

    Parameters
    ----------
    reference, moving : ndarray, shape (H, W)
        Same shape.

    Returns
    -------
    shift : ndarray of float64, shape (2,)
        (tx, ty) in pixels such that ``p ↦ p + shift`` maps the moving frame onto the
        reference.
    response : float
        Peak strength in [0, 1] (1: a single sharp peak).
    """
    ref = np.asarray(reference, dtype=np.float32)
    mov = np.asarray(moving, dtype=np.float32)
    window = cv2.createHanningWindow((ref.shape[1], ref.shape[0]), cv2.CV_32F)
    # Remove the mean so the window edge does not dominate the spectrum.
    (dx, dy), response = cv2.phaseCorrelate(ref - ref.mean(), mov - mov.mean(), window)
    # cv2 reports where the moving content went; the map back is the opposite shift.
    return np.array([-dx, -dy]), float(response)


def _correlation(
    template: np.ndarray, image: np.ndarray, matrix: np.ndarray, mask: np.ndarray | None
) -> tuple[float, float]:
    """Correlation coefficient of `template` with `image` pulled back by `matrix`, and overlap.

    Both are smoothed as ECC does, so the figure is comparable to ECC's own.
    """
    h, w = template.shape
    warped = cv2.warpAffine(
        image, matrix.astype(np.float32), (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    )
    valid_src = np.ones(image.shape, np.uint8) if mask is None else mask
    valid = cv2.warpAffine(
        valid_src, matrix.astype(np.float32), (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    ).astype(bool)
    overlap = float(valid.mean())
    if valid.sum() < 16:
        return float("nan"), overlap
    a = cv2.GaussianBlur(template, (5, 5), 0)[valid].astype(np.float64)
    b = cv2.GaussianBlur(warped, (5, 5), 0)[valid].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return (float((a * b).sum() / denom) if denom > 0 else float("nan")), overlap


def _changed(
    template: np.ndarray,
    image: np.ndarray,
    matrix: np.ndarray,
    mask: np.ndarray | None,
    *,
    sigma: float = 3.0,
    grow_px: int = 2,
) -> np.ndarray | None:
    """Reference-coordinate mask (True = keep) without the pixels where the aligned frames differ.

    The smoothed frames are normalised over their overlap and subtracted; pixels beyond
    `sigma` robust standard deviations (MAD) of the difference, grown by `grow_px`, are
    dropped. None when there is too little overlap to say.
    """
    h, w = template.shape
    m32 = matrix.astype(np.float32)
    warped = cv2.warpAffine(image, m32, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    valid_src = np.ones(image.shape, np.uint8) if mask is None else mask
    valid = cv2.warpAffine(
        valid_src, m32, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    ).astype(bool)
    if valid.sum() < 64:
        return None
    a = cv2.GaussianBlur(template, (5, 5), 0)
    b = cv2.GaussianBlur(warped, (5, 5), 0)
    av, bv = a[valid], b[valid]
    diff = (a - av.mean()) / (av.std() + 1e-12) - (b - bv.mean()) / (bv.std() + 1e-12)
    dv = diff[valid]
    # A subsample is plenty for a robust spread and keeps the median cheap.
    sub = dv[:: max(1, dv.size // 20000)]
    med = float(np.median(sub))
    mad = 1.4826 * float(np.median(np.abs(sub - med)))
    # The floor keeps noise-free frames from losing their sharpest (most informative) pixels
    # to interpolation residue: a real change is a sizeable fraction of the image contrast.
    bad = (np.abs(diff - med) > max(sigma * mad, _MIN_CHANGE)).astype(np.uint8)
    if grow_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow_px + 1, 2 * grow_px + 1))
        bad = cv2.dilate(bad, k)
    # Template → reference coordinates (forward map); outside the template: keep.
    bad_ref = cv2.warpAffine(
        bad, m32, (image.shape[1], image.shape[0]), flags=cv2.INTER_NEAREST, borderValue=0
    )
    return bad_ref == 0


def support_mask(particles: np.ndarray, *, dilate_px: int = 3) -> np.ndarray:
    """Pixels usable for registration: everything but the (dilated) particles.

    Parameters
    ----------
    particles : ndarray of bool or int, shape (H, W)
        Particle mask or label image in reference coordinates (nonzero = particle).
    dilate_px : int
        Margin around each particle also left out (halo, blur, motion since segmentation).

    Returns
    -------
    ndarray of bool, shape (H, W)
        True where the support can be used.
    """
    p = (np.asarray(particles) != 0).astype(np.uint8)
    if dilate_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
        p = cv2.dilate(p, k)
    return p == 0


def _mask_pyramid(mask: np.ndarray, factors: tuple[int, ...]) -> list[np.ndarray]:
    m = np.asarray(mask, dtype=np.float32)
    return [(_block_mean(m, f) >= _MASK_KEEP).astype(np.uint8) for f in factors]


def _status(cc: float, cc_ok: float, cc_failed: float) -> str:
    if not np.isfinite(cc) or cc < cc_failed:
        return "failed"
    return "ok" if cc >= cc_ok else "degraded"


def register(
    reference: np.ndarray | Pyramid,
    moving: np.ndarray | Pyramid,
    *,
    model: str = "affine",
    levels: int = 5,
    max_iterations: int = 50,
    epsilon: float = 1e-5,
    working_size_px: int = 512,
    mask: np.ndarray | None = None,
    initial: np.ndarray | None = None,
    phase: bool = True,
    gauss_filter_size: int = 5,
    cc_ok: float = 0.8,
    cc_failed: float = 0.3,
    reject_outliers: bool = True,
    outlier_sigma: float = 3.0,
    min_overlap: float = 0.25,
    max_strain: float = 0.1,
) -> Registration:
    """Affine map from `moving` to `reference` (phase correlation + pyramid ECC).

    Parameters
    ----------
    reference, moving : ndarray, shape (H, W), or Pyramid
        Images (any real dtype) or pyramids from `build_pyramid` built with the same
        `working_size_px` and `levels` (reuse saves the downsampling).
    model : {"translation", "euclidean", "affine"}
        Motion model of ECC.
    levels : int
        Pyramid levels of ECC, the working level included.
    max_iterations, epsilon : int, float
        ECC stops at each level after this many iterations or when the correlation gains
        less than `epsilon`.
    working_size_px : int
        Finest resolution worked at (larger side, pixels); the result is in full-resolution
        pixels all the same.
    mask : ndarray of bool, shape (H, W), optional
        True where the reference may be used (see `support_mask`): particles move, the
        support does not.
    initial : ndarray, shape (2, 3), optional
        Starting guess (e.g. the previous frame's map). Its linear part seeds the search;
        its translation competes with the phase-correlation one, the better correlated wins.
    phase : bool
        Use phase correlation for the starting translation (robust to large drift).
    reject_outliers : bool
        After the pyramid, leave out the pixels where the aligned frames still differ by
        more than `outlier_sigma` robust standard deviations (moving or new particles) and
        refine once more at the working level. Works without any segmentation.
    outlier_sigma : float
    gauss_filter_size : int
        Odd size of ECC's Gaussian pre-smoothing kernel (pixels of each level).
    cc_ok, cc_failed : float
        Status thresholds on the final correlation coefficient.
    min_overlap : float
        Fraction of the moving frame that must overlap the (masked) reference.
    max_strain : float
        Largest plausible ``|A − I|`` entry; beyond it the frame failed.

    Returns
    -------
    Registration
        ``matrix`` maps moving → reference pixels; never raises for bad image content
        (status ``"failed"`` instead).
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    ref = (
        reference
        if isinstance(reference, Pyramid)
        else build_pyramid(reference, working_size_px=working_size_px, levels=levels)
    )
    mov = (
        moving
        if isinstance(moving, Pyramid)
        else build_pyramid(moving, working_size_px=working_size_px, levels=levels)
    )
    if ref.shape != mov.shape or ref.factors != mov.factors:
        raise ValueError(
            f"reference {ref.shape} and moving {mov.shape} frames must have the same shape "
            "and pyramid"
        )
    masks: list[np.ndarray | None] = (
        _mask_pyramid(mask, ref.factors) if mask is not None else [None] * len(ref.factors)
    )

    start = identity() if initial is None else np.asarray(initial, dtype=np.float64).copy()
    if model == "translation":
        start[:, :2] = np.eye(2)
    elif model == "euclidean":
        # ECC's euclidean update reads the angle from the matrix; drop any scale or shear.
        theta = np.arctan2(start[1, 0], start[0, 0])
        start[:, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]

    # Starting translation: phase correlation at ≤ 256 px, competing with the given guess.
    k = next(
        i
        for i, im in enumerate(ref.images)
        if max(im.shape) <= _PHASE_SIZE_PX or i == len(ref.images) - 1
    )
    candidates = [start]
    if phase:
        shift, _ = phase_correlation(ref.images[k], mov.images[k])
        h, w = ref.shape
        centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        pc = start.copy()
        # The field centre moves by the measured shift (scaled to full resolution).
        pc[:, 2] = centre + shift * ref.factors[k] - start[:, :2] @ centre
        candidates.insert(0, pc)
    if len(candidates) > 1:
        scores = [
            _correlation(mov.images[k], ref.images[k], _to_level(c, ref.factors[k]), masks[k])[0]
            for c in candidates
        ]
        scores = [s if np.isfinite(s) else -np.inf for s in scores]
        start = candidates[int(np.argmax(scores))]

    matrix = start
    cc = float("nan")
    failures: list[str] = []
    n = len(ref.images)
    # Moving or new particles are found once the frames are aligned to a fraction of a
    # pixel, on the level just coarser than the working one, and left out of the finer
    # pass; a one-level pyramid runs its level twice. Coarse levels only need to land in
    # the capture range of the next one, hence their looser stopping rule.
    schedule = list(reversed(range(n)))
    detect_level = 1 if n > 1 else 0
    if reject_outliers and n == 1:
        schedule.append(0)
    change: np.ndarray | None = None
    for step, lvl in enumerate(schedule):
        f = ref.factors[lvl]
        keep = masks[lvl]
        if change is not None:
            h, w = ref.images[lvl].shape
            if change.shape != (h, w):
                change = cv2.resize(
                    change.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST
                ).astype(bool)
            keep = (change if keep is None else change & keep.astype(bool)).astype(np.uint8)
        eps = epsilon if lvl == 0 else max(epsilon, 1e-4)
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, int(max_iterations), eps)
        try:
            cc, warp = cv2.findTransformECC(
                mov.images[lvl],
                ref.images[lvl],
                _to_level(matrix, f).astype(np.float32),
                MODELS[model],
                criteria,
                keep,
                gauss_filter_size,
            )
        except cv2.error as exc:
            # No convergence (uncorrelated or no overlap): keep the coarser estimate.
            failures.append(f"level {f}: {str(exc).strip().splitlines()[-1][:80]}")
            cc = float("nan")
            continue
        matrix = _to_full(warp.astype(np.float64), f)
        if reject_outliers and lvl == detect_level and change is None and step < len(schedule) - 1:
            change = _changed(
                mov.images[lvl],
                ref.images[lvl],
                _to_level(matrix, f),
                masks[lvl],
                sigma=outlier_sigma,
            )

    cc_check, overlap = _correlation(
        mov.images[0], ref.images[0], _to_level(matrix, ref.factors[0]), masks[0]
    )
    if not np.isfinite(cc):
        cc = cc_check
    status = _status(cc, cc_ok, cc_failed)
    detail = "; ".join(failures)
    strain = float(np.abs(matrix[:, :2] - np.eye(2)).max())
    if not np.all(np.isfinite(matrix)):
        status, detail, matrix = "failed", "non-finite transform", start
    elif overlap < min_overlap:
        status, detail = "failed", f"overlap {overlap:.2f} < {min_overlap}"
    elif strain > max_strain:
        status, detail = "failed", f"implausible deformation |A - I| = {strain:.3f}"
    elif status != "ok" and not detail:
        detail = f"cc {cc:.3f} below {cc_ok if status == 'degraded' else cc_failed}"
    return Registration(matrix=matrix, cc=float(cc), status=status, detail=detail)
