"""One atomic-resolution frame → its columns: the step shared by `nptrack columns` and the live
`watch --mode columns`.

The column model finds the columns and gives each a distribution over occupancies
(:func:`nptrack.segment.columns_infer.find_columns`); statistical atom counting of the raw
intensities (:func:`nptrack.segment.columns_count.count_columns`) then decides the occupancy
as ``method`` says. Both commands call :func:`columns_of_frame`, so their tables agree.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from nptrack.segment.columns_count import count_columns
from nptrack.segment.columns_infer import ColumnPrediction, default_min_area_px, find_columns

__all__ = ["OccupancyMethod", "columns_of_frame"]

OccupancyMethod = Literal["combined", "count", "net"]


def columns_of_frame(
    segmenter: Any,
    image: np.ndarray,
    *,
    pixel_size_A: float,
    spacing_A: float,
    method: OccupancyMethod = "combined",
) -> tuple[dict[str, Any], ColumnPrediction]:
    """Columns of one frame with their occupancy, and the model's per-pixel prediction.

    Parameters
    ----------
    segmenter : ColumnSegmenter
        Anything with ``predict(image, pixel_size_A=...) -> ColumnPrediction`` and
        ``metadata``.
    image : ndarray, shape (H, W)
        Raw (not normalised) frame, bright columns, linear in the signal.
    pixel_size_A : float
        Å per px of `image`.
    spacing_A : float
        Smallest column spacing (Å), for the counting cells.
    method : {"combined", "count", "net"}
        What ``occupancy`` is (see `count_columns`).

    Returns
    -------
    columns : dict
        Per column (arrays of shape (M,)): ``x``, ``y`` (px), ``occupancy`` (atoms),
        ``confidence``, ``occupancy_net``, ``occupancy_count``, ``intensity`` (integrated
        above the support, image units × px), ``intensity_sd``, ``class_probability``
        (M, K), ``area_px``; and ``unit``: the frame's single-atom intensity estimate
        (dict of unit, prior_unit, comb_z, from_comb).
    prediction : ColumnPrediction
    """
    pred = segmenter.predict(image, pixel_size_A=pixel_size_A)
    cols: dict[str, Any] = find_columns(
        pred, min_area_px=default_min_area_px(segmenter.metadata, pixel_size_A)
    )
    counted = count_columns(
        image,
        np.stack([cols["x"], cols["y"]], axis=1),
        pixel_size_A=pixel_size_A,
        spacing_A=spacing_A,
        class_probability=cols["class_probability"],
        method=method,
    )
    cols["occupancy_net"] = cols["occupancy"]
    for key in ("occupancy", "confidence", "occupancy_count", "intensity", "intensity_sd"):
        cols[key] = counted[key]
    cols["unit"] = {k: counted[k] for k in ("unit", "prior_unit", "comb_z", "from_comb")}
    return cols, pred
