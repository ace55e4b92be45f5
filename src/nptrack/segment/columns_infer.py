"""Atomic-column inference: class map, confidence and column table from an exported model.

A :class:`ColumnSegmenter` owns one ONNX Runtime session of a column model (``nptrack.task =
"columns"``: K + 1 output classes, background and occupancy 1..K). For a frame it resamples
to the model's pixel size (when the frame's is given), normalises as the metadata says, runs
overlapping tiles and blends their logits, and returns the class map with the confidence
(max softmax probability, in [1/(K+1), 1]) and the class probabilities. The class map is
decided in two steps: background where ``p(background) >= 0.5``, else the most probable
occupancy class (a plain arg-max over K + 1 classes would call a column background whenever
its probability is spread over several occupancies).

:func:`find_columns` turns that into columns (connected regions of non-background, centre
weighted by the column probability, occupancy = the class with the largest summed
probability over the region, confidence = mean max-probability there); :func:`match_columns`
pairs columns of two frames or predictions with truth; :func:`track_columns` gives the
columns of a series stable ids. All three are pure numpy / scipy.
No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from nptrack.segment.infer import (
    METADATA_PREFIX,
    ModelFileError,
    normalise,
    open_session,
    tiled_logits,
)

__all__ = [
    "REQUIRED_COLUMN_METADATA",
    "ColumnLinker",
    "ColumnPrediction",
    "ColumnSegmenter",
    "decide_classes",
    "default_min_area_px",
    "find_columns",
    "match_columns",
    "read_column_metadata",
    "track_columns",
]

REQUIRED_COLUMN_METADATA = (
    "task",
    "model_version",
    "pixel_size_A",
    "classes",
    "normalisation",
    "input_multiple",
    "contrast",
)


def read_column_metadata(meta_map: dict[str, str], origin: str = "model") -> dict[str, Any]:
    """Decode and check the ``nptrack.*`` metadata of a column model (see ``read_metadata``)."""
    meta: dict[str, Any] = {}
    for key, text in meta_map.items():
        if key.startswith(METADATA_PREFIX):
            try:
                meta[key[len(METADATA_PREFIX) :]] = json.loads(text)
            except json.JSONDecodeError:
                meta[key[len(METADATA_PREFIX) :]] = text
    if meta.get("task") != "columns":
        raise ModelFileError(
            f"{origin}: not an nptrack atomic-column model (nptrack.task is "
            f"{meta.get('task', 'missing')!r}); train one with configs/train/columns.toml"
        )
    missing = [k for k in REQUIRED_COLUMN_METADATA if k not in meta]
    if missing:
        raise ModelFileError(f"{origin}: column model metadata missing: {', '.join(missing)}")
    if len(meta["classes"]) < 2 or not float(meta["pixel_size_A"]) > 0:
        raise ModelFileError(f"{origin}: column model classes or pixel_size_A out of range")
    return meta


@dataclass
class ColumnPrediction:
    """Per-pixel output of :meth:`ColumnSegmenter.predict` at the input resolution.

    Attributes
    ----------
    classes : ndarray of uint8, shape (H, W)
        0 (background) where ``p(background) >= 0.5``, else the most probable occupancy
        class k = 1..K (see :func:`decide_classes`).
    confidence : ndarray of float32, shape (H, W)
        Max softmax probability, in [1 / (K + 1), 1].
    probabilities : ndarray of float32, shape (K + 1, H, W)
    """

    classes: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray


def decide_classes(probabilities: np.ndarray) -> np.ndarray:
    """Class map from probabilities of shape (K + 1, ...): background where its probability
    is >= 0.5, else the arg-max over the occupancy classes 1..K. Returns uint8."""
    occ = probabilities[1:].argmax(axis=0) + 1
    return np.where(probabilities[0] >= 0.5, 0, occ).astype(np.uint8)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=0, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=0, keepdims=True)
    return z


class ColumnSegmenter:
    """One ONNX Runtime session of an nptrack atomic-column model. Use :meth:`from_path`."""

    def __init__(
        self,
        session: Any,
        metadata: dict[str, Any],
        *,
        tile_px: int = 1024,
        tile_overlap_px: int = 64,
        tile_batch: int = 1,
    ) -> None:
        self.session = session
        self.metadata = metadata
        self.providers: list[str] = list(session.get_providers())
        self.multiple = int(metadata["input_multiple"])
        self.tile_px = max(self.multiple, int(tile_px) // self.multiple * self.multiple)
        self.tile_overlap_px = int(tile_overlap_px)
        self.tile_batch = max(1, int(tile_batch))
        self.n_classes = len(metadata["classes"]) - 1
        self.pixel_size_A = float(metadata["pixel_size_A"])

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        providers: str | Sequence[str] = "auto",
        intra_op_threads: int | None = None,
        **options: Any,
    ) -> ColumnSegmenter:
        """Open a column model file.

        Parameters
        ----------
        path : str or Path
        providers : {"auto", "cpu", "cuda"} or list of str
            See :func:`nptrack.segment.infer.select_providers`.
        intra_op_threads : int, optional
            ONNX Runtime threads per operator (all cores when None).
        **options
            ``tile_px``, ``tile_overlap_px``, ``tile_batch``.

        Raises
        ------
        ModelFileError
            Missing file, not ONNX, not a column model.
        """
        path = Path(path)
        session = open_session(path, providers=providers, intra_op_threads=intra_op_threads)
        meta = read_column_metadata(session.get_modelmeta().custom_metadata_map, str(path))
        return cls(session, meta, **options)

    def predict(self, image: np.ndarray, *, pixel_size_A: float | None = None) -> ColumnPrediction:
        """Class map, confidence and probabilities of every pixel.

        Parameters
        ----------
        image : ndarray, shape (H, W)
            Raw intensities of a bright-column (ADF-like) image.
        pixel_size_A : float, optional
            Å per pixel; the frame is resampled to the model's pixel size (``pixel_size_A``
            metadata). None: taken to be the model's.
        """
        image = np.asarray(image)
        if image.ndim != 2 or min(image.shape) < 2:
            raise ValueError(f"expected a 2-D image, got shape {image.shape}")
        img = np.ascontiguousarray(image, dtype=np.float32)
        h, w = img.shape
        z = 1.0 if pixel_size_A is None else float(pixel_size_A) / self.pixel_size_A
        zh, zw = max(1, round(h * z)), max(1, round(w * z))
        if (zh, zw) != (h, w):
            interp = cv2.INTER_AREA if z < 1 else cv2.INTER_LINEAR
            img = cv2.resize(img, (zw, zh), interpolation=interp)
        logits = self._tiled_logits(normalise(img, self.metadata["normalisation"]))
        if (zh, zw) != (h, w):  # back to the input grid, channel by channel (cv2: HWC)
            hwc = cv2.resize(
                np.ascontiguousarray(logits.transpose(1, 2, 0)), (w, h), cv2.INTER_LINEAR
            )
            logits = np.ascontiguousarray(hwc.reshape(h, w, -1).transpose(2, 0, 1))
        prob = _softmax(logits)
        prob = prob.astype(np.float32, copy=False)
        return ColumnPrediction(decide_classes(prob), prob.max(axis=0), prob)

    def _tiled_logits(self, x: np.ndarray) -> np.ndarray:
        return tiled_logits(
            self.session, x, multiple=self.multiple, tile_px=self.tile_px,
            overlap_px=self.tile_overlap_px, tile_batch=self.tile_batch,
        )  # fmt: skip


#: Regions smaller than this share of a label disc (radius ``label_radius_A``) are dropped.
MIN_AREA_FRACTION = 0.3


def default_min_area_px(metadata: dict[str, Any], pixel_size_A: float) -> int:
    """Smallest column region kept by ``nptrack columns`` (px): ``MIN_AREA_FRACTION`` of the
    area of a label disc at `pixel_size_A` (Å per px of the frame)."""
    r_px = float(metadata.get("label_radius_A", 0.8)) / pixel_size_A
    return max(1, round(MIN_AREA_FRACTION * np.pi * r_px**2))


def find_columns(pred: ColumnPrediction, *, min_area_px: int = 2) -> dict[str, np.ndarray]:
    """Columns of a prediction: connected regions (8-connected) of non-background pixels.

    Parameters
    ----------
    pred : ColumnPrediction
    min_area_px : int
        Smaller regions are dropped (isolated noisy pixels).

    Returns
    -------
    dict of str to ndarray, one entry per column
        ``x``, ``y`` (px; centroid weighted by ``1 - p(background)``), ``occupancy`` (the
        class 1..K with the largest probability summed over the region), ``confidence``
        (mean max-probability over the region), ``area_px``, ``class_probability``
        (shape (M, K): the probabilities of occupancies 1..K summed over the region,
        normalised to sum 1; the network's belief, e.g. a prior for atom counting).
    """
    lab, n = ndimage.label(pred.classes > 0, structure=np.ones((3, 3), bool))
    empty = {k: np.zeros(0) for k in ("x", "y", "confidence")}
    if n == 0:
        k = len(pred.probabilities) - 1
        return {
            **empty,
            "occupancy": np.zeros(0, int),
            "area_px": np.zeros(0, int),
            "class_probability": np.zeros((0, k)),
        }
    # Work on the column pixels only (a small share of the frame).
    idx = np.flatnonzero(lab.ravel())
    flat = lab.ravel()[idx] - 1
    area = np.bincount(flat, minlength=n)
    probs = pred.probabilities.reshape(len(pred.probabilities), -1)[:, idx]
    wcol = 1.0 - probs[0].astype(np.float64)
    wsum = np.bincount(flat, weights=wcol, minlength=n)
    yy, xx = np.divmod(idx, lab.shape[1])
    x = np.bincount(flat, weights=wcol * xx, minlength=n) / wsum
    y = np.bincount(flat, weights=wcol * yy, minlength=n) / wsum
    sums = np.stack([np.bincount(flat, weights=p, minlength=n) for p in probs[1:]])
    occ = sums.argmax(axis=0) + 1
    conf = np.bincount(flat, weights=pred.confidence.ravel()[idx], minlength=n) / area
    keep = area >= min_area_px
    cls_p = (sums / np.maximum(sums.sum(axis=0), 1e-12)).T
    return {
        "x": x[keep],
        "y": y[keep],
        "occupancy": occ[keep],
        "confidence": conf[keep],
        "area_px": area[keep],
        "class_probability": cls_p[keep],
    }


def match_columns(
    a_xy: np.ndarray, b_xy: np.ndarray, *, max_distance_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs of points closer than `max_distance_px` (minimum total distance).

    Parameters
    ----------
    a_xy, b_xy : ndarray, shape (N, 2) and (M, 2)
        Positions (x, y) in px.
    max_distance_px : float

    Returns
    -------
    ia, ib : ndarray of int
        Indices of the matched pairs.
    """
    a_xy, b_xy = np.asarray(a_xy, float).reshape(-1, 2), np.asarray(b_xy, float).reshape(-1, 2)
    if len(a_xy) == 0 or len(b_xy) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    d = np.hypot(*(a_xy[:, None, :] - b_xy[None, :, :]).transpose(2, 0, 1))
    # Only points with a neighbour in range take part (keeps the assignment small).
    ra, rb = (
        np.flatnonzero((d <= max_distance_px).any(1)),
        np.flatnonzero((d <= max_distance_px).any(0)),
    )
    if len(ra) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    sub = d[np.ix_(ra, rb)]
    cost = np.where(sub <= max_distance_px, sub, 1e6)
    i, j = linear_sum_assignment(cost)
    ok = sub[i, j] <= max_distance_px
    return ra[i[ok]], rb[j[ok]]


class ColumnLinker:
    """Stable column ids, frame after frame, by nearest position after drift removal.

    A frame's columns are matched one-to-one (:func:`match_columns`) to the last known
    position of every column seen so far, moved by the accumulated drift; the frame's drift
    is the median displacement of a first matching (at least 3 pairs), after which they are
    matched again. Unmatched columns get new ids. Used frame by frame by the live pipeline
    and through :func:`track_columns` for a whole series.
    """

    def __init__(self) -> None:
        self.known_xy = np.zeros((0, 2))
        self.shift_xy = np.zeros(2)  # accumulated drift (px); known positions move with it

    def assign(self, xy: np.ndarray, *, max_distance_px: float) -> np.ndarray:
        """Ids (int, shape (N,)) of the columns of the next frame at `xy` ((N, 2), x, y px)."""
        xy = np.asarray(xy, float).reshape(-1, 2)
        ids = np.full(len(xy), -1, int)
        ia, ib = match_columns(xy, self.known_xy + self.shift_xy, max_distance_px=max_distance_px)
        if len(ia) >= 3:
            self.shift_xy = self.shift_xy + np.median(
                xy[ia] - self.known_xy[ib] - self.shift_xy, axis=0
            )
            ia, ib = match_columns(
                xy, self.known_xy + self.shift_xy, max_distance_px=max_distance_px
            )
        ids[ia] = ib
        self.known_xy[ib] = xy[ia] - self.shift_xy
        new = np.flatnonzero(ids < 0)
        ids[new] = np.arange(len(self.known_xy), len(self.known_xy) + len(new))
        self.known_xy = np.concatenate([self.known_xy, xy[new] - self.shift_xy])
        return ids


def track_columns(
    frames: Sequence[dict[str, np.ndarray]], *, max_distance_px: float
) -> list[np.ndarray]:
    """Stable column ids over a series, by nearest position (a :class:`ColumnLinker`).

    Parameters
    ----------
    frames : sequence of dict
        Per frame, at least ``x`` and ``y`` (px), as from :func:`find_columns`.
    max_distance_px : float
        Largest displacement of a column between frames (half the column spacing is safe).

    Returns
    -------
    list of ndarray of int
        Per frame, the id of each of its columns.
    """
    linker = ColumnLinker()
    return [
        linker.assign(
            np.stack([np.asarray(c["x"], float), np.asarray(c["y"], float)], axis=1),
            max_distance_px=max_distance_px,
        )
        for c in frames
    ]
