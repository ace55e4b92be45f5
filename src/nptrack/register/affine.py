"""Pairwise registration: phase correlation, then a coarse-to-fine pyramid of ECC.

After Faraz et al. (Sci. Rep. 12, 2022, 2484): every frame of an in situ series is mapped to
frame 0 by an affine transform that maximises the (enhanced) correlation coefficient,
estimated over a multiscale pyramid. ECC (Evangelidis & Psarakis, TPAMI 2008) is a local
optimiser: it fails for shifts larger than a few pixels of the coarsest level it starts from,
so a phase correlation (global, translation only, Hanning window) supplies the starting
translation.

All the work happens on block-averaged copies no larger than `working_size_px` (512 by
default): averaging 4×4 pixels of a 2048² frame raises the SNR fourfold and ECC converges to
a small fraction of a working pixel, which keeps the residual at full resolution near 0.1 px
for ~15 ms per ECC pass. A full-resolution pass would cost 16 times more for a gain the
0.2 px budget does not need; raise `working_size_px` when it does.

Particles move while the support does not. Bright ones pull ECC toward their motion by a
pixel or more, so at the working level the regions where the aligned frames still differ
are found (hysteresis on the robust spread of the difference) and left out, and ECC is
redone until the estimate stops moving. A segmentation, when there is one, can exclude the
particles outright (`mask`, see `support_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from nptrack.register.pyramid import (
    Pyramid,
    build_pyramid,
    mask_pyramid,
    to_full,
    to_level,
)
from nptrack.register.warp import field_rms, identity

__all__ = ["MODELS", "Registration", "phase_correlation", "register", "support_mask"]

MODELS = {
    "translation": cv2.MOTION_TRANSLATION,
    "euclidean": cv2.MOTION_EUCLIDEAN,
    "affine": cv2.MOTION_AFFINE,
}

# Phase correlation at this size is accurate to ~0.2 of its pixels, plenty to start ECC.
_PHASE_SIZE_PX = 256
# Smallest difference of the normalised frames (units of their standard deviation) that can
# count as a change.
_MIN_CHANGE = 0.25
# Working-level rounds of outlier detection + ECC, and the shift (working pixels, over the
# field) of a repeated round below which another one is not worth its cost.
_REFINE_ROUNDS = 3
_REFINE_TOL = 0.02
# Another round is skipped when fewer pixels than this fraction change side in the mask.
_REFINE_FLIP = 0.01


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
        (5×5-smoothed, at ≤ 256 px, over the overlap, the mask and what did not change);
        NaN if it could not be measured.
    status : str
        ``"ok"`` (cc ≥ cc_ok), ``"degraded"`` (cc_failed ≤ cc < cc_ok) or ``"failed"``.
    detail : str
        Why a frame is not ok, or how it was registered.
    """

    matrix: np.ndarray
    cc: float
    status: str
    detail: str = ""


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


def _pull_back(
    template_shape: tuple[int, ...], image: np.ndarray, matrix: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """`image` (and its usable-pixel mask) resampled onto the template grid by `matrix`."""
    h, w = template_shape
    m32 = matrix.astype(np.float32)
    warped = cv2.warpAffine(image, m32, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    src = np.ones(image.shape, np.uint8) if mask is None else mask
    valid = cv2.warpAffine(src, m32, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
    return warped, valid.astype(bool)


def _overlap(
    template_shape: tuple[int, ...], image_shape: tuple[int, ...], matrix: np.ndarray
) -> float:
    """Fraction of the template grid that `matrix` maps inside the image."""
    h, w = template_shape
    ones = np.ones(image_shape, np.uint8)
    valid = cv2.warpAffine(
        ones, matrix.astype(np.float32), (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    )
    return cv2.countNonZero(valid) / float(h * w)


def _correlation(
    template: np.ndarray, image: np.ndarray, matrix: np.ndarray, mask: np.ndarray | None
) -> tuple[float, float]:
    """Correlation coefficient of `template` with `image` pulled back by `matrix`, and overlap.

    Both are smoothed as ECC does, so the figure is comparable to ECC's own.
    """
    warped, valid = _pull_back(template.shape, image, matrix, mask)
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
    sigma: float = 4.0,
    grow_px: int = 2,
) -> np.ndarray | None:
    """Reference-grid mask (True = keep) without the regions where the aligned frames differ.

    The smoothed frames are normalised over their overlap and subtracted. A region is
    dropped when it reaches `sigma` robust standard deviations (MAD) of the difference
    somewhere and extends over its connected pixels above `sigma`/2 (hysteresis), grown
    by `grow_px`. Trimming isolated noise extremes instead would pull the estimate toward
    itself. None when there is too little overlap to say.
    """
    warped, valid = _pull_back(template.shape, image, matrix, mask)
    valid8 = valid.view(np.uint8)
    if cv2.countNonZero(valid8) < 64:
        return None
    a = cv2.GaussianBlur(template, (5, 5), 0)
    b = cv2.GaussianBlur(warped, (5, 5), 0)
    # A subsample (~20 000 pixels) is plenty for the statistics and keeps them cheap.
    step = max(1, int(np.sqrt(a.size / 20000)))
    sub_valid = valid[::step, ::step]
    sub_a, sub_b = a[::step, ::step][sub_valid], b[::step, ::step][sub_valid]
    ma, sa = float(sub_a.mean()), float(sub_a.std()) + 1e-12
    mb, sb = float(sub_b.mean()), float(sub_b.std()) + 1e-12
    diff = cv2.addWeighted(a, 1.0 / sa, b, -1.0 / sb, mb / sb - ma / sa)
    sub = (sub_a - ma) / sa - (sub_b - mb) / sb
    med = float(np.median(sub))
    mad = 1.4826 * float(np.median(np.abs(sub - med)))
    dev = cv2.absdiff(diff, med)
    # The floor keeps noise-free frames from losing their sharpest (most informative) pixels
    # to interpolation residue: a real change is a sizeable fraction of the image contrast.
    high = max(sigma * mad, _MIN_CHANGE)
    region = (dev > 0.5 * high).view(np.uint8)
    n_labels, labels = cv2.connectedComponents(region, connectivity=8)
    hit = np.zeros(n_labels, bool)
    hit[labels[dev > high]] = True
    hit[0] = False
    bad = hit[labels].view(np.uint8)
    if grow_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow_px + 1, 2 * grow_px + 1))
        bad = cv2.dilate(bad, k)
    # Template → reference grid (forward map); outside the template: keep.
    h, w = image.shape
    bad_ref = cv2.warpAffine(bad, matrix.astype(np.float32), (w, h), flags=cv2.INTER_NEAREST)
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
    gauss_filter_size: int = 3,
    cc_ok: float = 0.8,
    cc_failed: float = 0.3,
    reject_outliers: bool = True,
    outlier_sigma: float = 4.0,
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
        At the working level, leave out the regions where the aligned frames still differ
        by more than `outlier_sigma` robust standard deviations (particles that moved,
        grew or appeared) and redo ECC, up to 3 rounds while the estimate still moves by
        more than 0.02 working pixels. Works without any segmentation.
    outlier_sigma : float
        Threshold of `reject_outliers`, in robust (MAD) standard deviations of the
        difference of the normalised, smoothed frames; regions extend down to half of it.
    gauss_filter_size : int
        Odd size of ECC's Gaussian pre-smoothing kernel (pixels of each level). 3 is ~20 %
        more accurate than OpenCV's default 5 on our test series.
    cc_ok, cc_failed : float
        Status thresholds on the correlation coefficient after alignment (5×5-smoothed
        frames, at the phase-correlation level of ≤ 256 px, over the overlap, the mask and
        what did not change).
    min_overlap : float
        Fraction of the moving frame that must fall inside the reference frame.
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
        mask_pyramid(mask, ref.factors) if mask is not None else [None] * len(ref.factors)
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
            _correlation(mov.images[k], ref.images[k], to_level(c, ref.factors[k]), masks[k])[0]
            for c in candidates
        ]
        scores = [s if np.isfinite(s) else -np.inf for s in scores]
        start = candidates[int(np.argmax(scores))]

    matrix = start
    cc = float("nan")
    failures: list[str] = []
    n = len(ref.images)
    change: np.ndarray | None = None  # True = unchanged (keep), on the last level's grid

    def ecc(lvl: int, guess: np.ndarray) -> tuple[float, np.ndarray] | None:
        """One ECC pass at level `lvl`; None (and a note) if it does not converge."""
        f = ref.factors[lvl]
        keep = masks[lvl]
        if change is not None:
            h, w = ref.images[lvl].shape
            ch = change
            if ch.shape != (h, w):
                ch = cv2.resize(ch.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
            keep = ch.astype(bool) if keep is None else ch.astype(bool) & keep.astype(bool)
            keep = keep.astype(np.uint8)
        # Coarse levels only need to land in the capture range of the next one.
        eps = epsilon if lvl == 0 else max(epsilon, 1e-4)
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, int(max_iterations), eps)
        try:
            rho, warp = cv2.findTransformECC(
                mov.images[lvl],
                ref.images[lvl],
                to_level(guess, f).astype(np.float32),
                MODELS[model],
                criteria,
                keep,
                gauss_filter_size,
            )
        except cv2.error as exc:
            # No convergence (uncorrelated, no overlap): the caller keeps its estimate.
            failures.append(f"level {f}: {str(exc).strip().splitlines()[-1][:80]}")
            return None
        return float(rho), to_full(warp.astype(np.float64), f)

    def detect(lvl: int) -> np.ndarray | None:
        f = ref.factors[lvl]
        return _changed(
            mov.images[lvl], ref.images[lvl], to_level(matrix, f), masks[lvl], sigma=outlier_sigma
        )

    # Coarse to fine down to the level just coarser than the working one. Particles that
    # moved, grew or appeared pull ECC toward their motion (bright ones by a pixel or
    # more); at the working level, the regions where the aligned frames differ are left
    # out and ECC is redone, until the estimate stops moving (reweighted least squares
    # with binary weights: a first estimate held off by the particles hides part of them
    # from the detection, so one round is not always enough).
    for lvl in reversed(range(min(1, n - 1), n)):
        done = ecc(lvl, matrix)
        cc, matrix = done if done is not None else (float("nan"), matrix)
    rounds = _REFINE_ROUNDS if reject_outliers else 1
    for i in range(rounds if n > 1 or reject_outliers else 0):
        # No detection from an estimate a coarse level could not confirm.
        previous = change
        change = detect(0) if reject_outliers and np.isfinite(cc) else None
        if i and previous is not None and change is not None:
            flipped = cv2.countNonZero((previous != change).view(np.uint8))
            if flipped < _REFINE_FLIP * change.size:
                break  # the same pixels left out: ECC would land where it is
        done = ecc(0, matrix)
        if done is None:
            cc = float("nan")
            break
        moved = field_rms(done[1], matrix, shape=ref.shape, step_px=max(ref.shape) // 16)
        cc, matrix = done
        if i and moved < _REFINE_TOL * ref.factors[0]:
            break

    # The quality figure: correlation of the 5×5-smoothed frames over the overlap, without
    # what changed, at the phase-correlation level (≤ 256 px). Measured apart from ECC so
    # that it does not depend on ECC's smoothing, and cheap.
    keep_k = masks[k]
    if change is not None:
        h, w = ref.images[k].shape
        ch = cv2.resize(change.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        keep_k = ch if keep_k is None else ch & keep_k
    m_k = to_level(matrix, ref.factors[k])
    cc = _correlation(mov.images[k], ref.images[k], m_k, keep_k)[0]
    overlap = _overlap(mov.images[k].shape, ref.images[k].shape, m_k)
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
