"""Incremental registration of a live series to its anchor frame.

The `Registrar` keeps what a live series needs between frames: the anchor (frame 0, or a
chosen reference) with its pyramid, the last accepted transform (the starting guess for the
next frame: drift is smooth more often than not) and the last registered frame. When the
correlation with the anchor drops (the sample evolves, the field drifts away), the frame is
registered to the last registered frame instead and the two maps are composed exactly:
``M_t→0 = M_k→0 ∘ M_t→k``. A frame that cannot be registered at all keeps the previous
transform and is marked failed: the series goes on, and no exception reaches the pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from nptrack.config import RegisterConfig
from nptrack.frames import Frame
from nptrack.register.affine import Registration, register
from nptrack.register.pyramid import Pyramid, build_pyramid
from nptrack.register.warp import compose, identity, invert

__all__ = ["FRAMES_COLUMNS", "FrameRegistration", "Registrar", "frames_rows", "register_series"]

log = logging.getLogger(__name__)

# How much better (in correlation) the previous frame must match than the anchor before the
# series is chained through it.
_FALLBACK_GAIN = 0.05

#: Columns of ``frames.csv`` (the data contract).
FRAMES_COLUMNS = (
    "frame",
    "time_s",
    "source",
    "pixel_size_nm",
    "a11",
    "a12",
    "tx",
    "a21",
    "a22",
    "ty",
    "reg_cc",
    "status",
)


@dataclass(frozen=True, eq=False)
class FrameRegistration:
    """How one frame of a series maps to the anchor frame.

    Attributes
    ----------
    index : int
        Frame index in the series (counted from 0, in the order given to the Registrar).
    matrix : ndarray of float64, shape (2, 3)
        Acquired frame → anchor (frame 0) pixel coordinates.
    cc : float
        Correlation coefficient of the registration that was used (to the anchor, or to
        frame `reference` on the fallback path); NaN if not measured.
    status : str
        ``"ok"``: registered directly to the anchor with cc ≥ cc_ok. ``"degraded"``:
        registered, but with a lower correlation or through the fallback path.
        ``"failed"``: the previous transform was kept.
    reference : int
        Index of the frame the pairwise registration was made against: the anchor, the
        last registered frame, or -1 (an anchor image given to the constructor, or
        nothing to register against).
    detail : str
        Human-readable reason for a non-ok status.
    """

    index: int
    matrix: np.ndarray
    cc: float
    status: str
    reference: int
    detail: str = ""


def _warp_mask_to(mask: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """A usable-pixel mask given in anchor coordinates, seen from a frame mapped by `matrix`."""
    h, w = mask.shape
    out = cv2.warpAffine(
        mask.astype(np.uint8),
        np.asarray(matrix, dtype=np.float64),
        (w, h),
        flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=1,  # outside the anchor's field nothing is known to move: usable
    )
    return out.astype(bool)


class Registrar:
    """Registers the frames of a series, one at a time, to an anchor frame.

    Parameters
    ----------
    config : RegisterConfig, optional
        Model, pyramid, ECC stopping rule, working size and status thresholds.
    anchor : ndarray, shape (H, W), optional
        Reference image; by default the first frame given to `update` becomes the anchor.
    initial_matrix : ndarray, shape (2, 3), optional
        Starting guess for the first `update` (a resumed series: the last stored transform).
    start_index : int
        Index of the first frame given to `update` (a resumed series continues its count).

    Examples
    --------
    >>> reg = Registrar()                                       # doctest: +SKIP
    >>> for frame in frames:                                    # doctest: +SKIP
    ...     result = reg.update(frame.data)
    ...     xy0 = map_points(detections_xy, result.matrix)      # into frame-0 pixels
    """

    def __init__(
        self,
        *,
        config: RegisterConfig | None = None,
        anchor: np.ndarray | None = None,
        initial_matrix: np.ndarray | None = None,
        start_index: int = 0,
    ) -> None:
        self.config = config if config is not None else RegisterConfig()
        self._anchor: Pyramid | None = None
        self._anchor_index = -1
        self._previous: tuple[int, Pyramid, np.ndarray] | None = None  # last registered frame
        self._matrix = identity() if initial_matrix is None else np.array(initial_matrix, float)
        self._count = int(start_index)
        if anchor is not None:
            self._anchor = self._pyramid(anchor)

    @property
    def count(self) -> int:
        """Number of frames seen so far."""
        return self._count

    @property
    def matrix(self) -> np.ndarray:
        """The last accepted acquired → anchor transform, shape (2, 3)."""
        return self._matrix.copy()

    def _pyramid(self, image: np.ndarray) -> Pyramid:
        c = self.config
        return build_pyramid(image, working_size_px=c.working_size_px, levels=c.levels)

    def _register(
        self,
        reference: Pyramid,
        moving: Pyramid,
        initial: np.ndarray,
        mask: np.ndarray | None,
    ) -> Registration:
        c = self.config
        return register(
            reference,
            moving,
            model=c.model,
            levels=c.levels,
            max_iterations=c.max_iterations,
            epsilon=c.epsilon,
            working_size_px=c.working_size_px,
            mask=mask,
            initial=initial,
            cc_ok=c.cc_ok,
            cc_failed=c.cc_failed,
        )

    def update(self, image: np.ndarray, *, mask: np.ndarray | None = None) -> FrameRegistration:
        """Register the next frame of the series.

        Parameters
        ----------
        image : ndarray, shape (H, W)
            The acquired frame (same shape as the anchor).
        mask : ndarray of bool, shape (H, W), optional
            True where the anchor may be used, in anchor coordinates: the support without
            the particles segmented so far (see `support_mask`). Ignored when
            ``config.mask_particles`` is False.

        Returns
        -------
        FrameRegistration
            Never raises on bad image content; a frame that cannot be registered is
            returned with status ``"failed"`` and the previous transform.
        """
        index = self._count
        self._count += 1
        if not self.config.enabled:
            return FrameRegistration(index, identity(), float("nan"), "ok", -1, "disabled")
        if mask is not None and not self.config.mask_particles:
            mask = None
        try:
            return self._update(index, image, mask)
        except Exception as exc:  # the live pipeline must go on (issue 6)
            log.warning("frame %d: registration failed: %s", index, exc)
            return FrameRegistration(
                index, self._matrix.copy(), float("nan"), "failed", -1, f"error: {exc}"
            )

    def _update(self, index: int, image: np.ndarray, mask: np.ndarray | None) -> FrameRegistration:
        pyr = self._pyramid(image)
        if self._anchor is None:
            self._anchor, self._anchor_index = pyr, index
            self._previous = (index, pyr, identity())
            self._matrix = identity()
            return FrameRegistration(index, identity(), 1.0, "ok", index, "anchor")
        if pyr.shape != self._anchor.shape:
            raise ValueError(
                f"frame shape {pyr.shape} differs from the anchor's {self._anchor.shape}"
            )

        direct = self._register(self._anchor, pyr, self._matrix, mask)
        best = FrameRegistration(
            index, direct.matrix, direct.cc, direct.status, self._anchor_index, direct.detail
        )
        prev = self._previous
        if direct.status != "ok" and prev is not None and prev[0] != self._anchor_index:
            k, prev_pyr, prev_matrix = prev
            pair_mask = None if mask is None else _warp_mask_to(mask, prev_matrix)
            guess = compose(invert(prev_matrix), self._matrix)  # M_t→k from M_t-1→0
            pair = self._register(prev_pyr, pyr, guess, pair_mask)
            pair_cc = pair.cc if np.isfinite(pair.cc) else -np.inf
            best_cc = best.cc if np.isfinite(best.cc) else -np.inf
            # Chaining accumulates error: take it only when it is clearly better (at low
            # dose every cc is low, and a pair of noisy frames is no better than the anchor).
            if pair.status != "failed" and pair_cc > best_cc + _FALLBACK_GAIN:
                best = FrameRegistration(
                    index,
                    compose(prev_matrix, pair.matrix),
                    pair.cc,
                    "degraded",
                    k,
                    f"via frame {k} (cc to anchor {direct.cc:.3f})",
                )
        if best.status == "failed":
            return FrameRegistration(
                index,
                self._matrix.copy(),
                best.cc,
                "failed",
                best.reference,
                best.detail or "no registration",
            )
        self._matrix = best.matrix
        self._previous = (index, pyr, best.matrix)
        return best


def register_series(
    images: Sequence[np.ndarray],
    *,
    config: RegisterConfig | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
) -> list[FrameRegistration]:
    """Register every image of a series to the first one (see `Registrar`).

    Parameters
    ----------
    images : sequence of ndarray, shape (H, W)
    config : RegisterConfig, optional
    masks : sequence of (ndarray of bool or None), optional
        Per-frame usable-pixel masks in frame-0 coordinates.

    Returns
    -------
    list of FrameRegistration
    """
    reg = Registrar(config=config)
    return [
        reg.update(img, mask=None if masks is None else masks[i]) for i, img in enumerate(images)
    ]


def _pixel_size(pixel_size_nm: tuple[float, float] | None) -> float | str:
    if pixel_size_nm is None:
        return ""
    return float(np.sqrt(pixel_size_nm[0] * pixel_size_nm[1]))


def frames_rows(
    frames: Sequence[Frame], registrations: Sequence[FrameRegistration]
) -> list[dict[str, object]]:
    """The ``frames.csv`` rows (see `FRAMES_COLUMNS`) of a registered series.

    Parameters
    ----------
    frames : sequence of Frame
    registrations : sequence of FrameRegistration
        One per frame, same order.

    Returns
    -------
    list of dict
        Column name → value (numbers as numbers; unknown time or pixel size as "").
        ``pixel_size_nm`` is one number, the geometric mean of (y, x) as in the session
        store.
    """
    if len(frames) != len(registrations):
        raise ValueError(f"{len(frames)} frames but {len(registrations)} registrations")
    rows: list[dict[str, object]] = []
    for frame, reg in zip(frames, registrations, strict=True):
        m = reg.matrix
        rows.append(
            {
                "frame": frame.index,
                "time_s": "" if frame.time_s is None else frame.time_s,
                "source": frame.source,
                "pixel_size_nm": _pixel_size(frame.pixel_size_nm),
                "a11": float(m[0, 0]),
                "a12": float(m[0, 1]),
                "tx": float(m[0, 2]),
                "a21": float(m[1, 0]),
                "a22": float(m[1, 1]),
                "ty": float(m[1, 2]),
                "reg_cc": "" if not np.isfinite(reg.cc) else round(float(reg.cc), 6),
                "status": reg.status,
            }
        )
    return rows
