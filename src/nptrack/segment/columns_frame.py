"""One atomic-resolution frame → its columns: the step shared by `nptrack columns` and the live
`watch --mode columns`.

The column model finds the columns and gives each a distribution over occupancies
(:func:`nptrack.segment.columns_infer.find_columns`); statistical atom counting of the raw
intensities (:func:`nptrack.segment.columns_count.count_columns`) then decides the occupancy
as ``method`` says; ``"shape"`` adds the 3D shape prior of
:mod:`nptrack.segment.columns_shape` (a convex faceted particle of the model's crystal) on
top of the counting. Both commands call :func:`columns_of_frame`, so their tables agree.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from nptrack.segment.columns_count import count_columns
from nptrack.segment.columns_infer import ColumnPrediction, default_min_area_px, find_columns

__all__ = ["OCCUPANCY_METHODS", "OccupancyMethod", "apply_shape_prior", "columns_of_frame",
           "model_crystal"]  # fmt: skip

OccupancyMethod = Literal["combined", "count", "net", "shape"]
OCCUPANCY_METHODS: tuple[str, ...] = ("combined", "count", "net", "shape")


def model_crystal(metadata: dict[str, Any]) -> Any:
    """The crystal (:data:`nptrack.simulate.columns.CRYSTALS` entry) a column model was
    trained on, or None when the metadata name none or several (no shape prior then)."""
    from nptrack.simulate.columns import CRYSTALS

    names = metadata.get("crystals") or []
    if isinstance(names, str):
        names = [names]
    if len(names) != 1 or names[0] not in CRYSTALS:
        return None
    return CRYSTALS[names[0]]


def apply_shape_prior(
    cols: dict[str, Any],
    *,
    frame_shape: tuple[int, int],
    pixel_size_A: float,
    crystal: Any,
    unit: float,
    unit_trusted: bool = False,
) -> None:
    """Replace ``occupancy`` / ``confidence`` of `cols` (from `columns_of_frame`) by the
    shape-prior estimate (:func:`nptrack.segment.columns_shape.shape_occupancy`) from the
    single-atom intensity `unit` (`unit_trusted`: it came from a significant comb, the
    shape then scans it only ±3 %); adds ``occupancy_shape`` (the shape's prediction, -1
    where the shape was not used), ``shape_used`` and ``shape`` (one record per particle).
    With no crystal, the `combined` occupancies are left (``shape`` says why)."""
    from nptrack.segment.columns_shape import shape_occupancy

    m = len(cols["x"])
    if crystal is None:
        cols["occupancy_shape"] = np.full(m, -1)
        cols["shape_used"] = np.zeros(m, bool)
        cols["shape"] = [{"used": False, "reason": "model names no single known crystal"}]
        return
    res = shape_occupancy(
        np.stack([cols["x"], cols["y"]], axis=1), cols["intensity"], cols["intensity_sd"],
        unit, cols["class_probability"], pixel_size_A=pixel_size_A, crystal=crystal,
        frame_shape=frame_shape, unit_trusted=unit_trusted,
    )  # fmt: skip
    cols["occupancy"] = np.asarray(res["occupancy"])
    cols["confidence"] = np.asarray(res["confidence"])
    cols["occupancy_shape"] = np.asarray(res["occupancy_shape"])
    cols["shape_used"] = np.asarray(res["shape_used"])
    cols["shape"] = res["particles"]


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
    method : {"combined", "count", "net", "shape"}
        What ``occupancy`` is (see `count_columns`; "shape": `combined` with the 3D shape
        prior of the model's crystal, :func:`apply_shape_prior`).

    Returns
    -------
    columns : dict
        Per column (arrays of shape (M,)): ``x``, ``y`` (px), ``occupancy`` (atoms),
        ``confidence``, ``occupancy_net``, ``occupancy_count``, ``intensity`` (integrated
        above the support, image units × px), ``intensity_sd``, ``class_probability``
        (M, K), ``area_px``; and ``unit``: the frame's single-atom intensity estimate
        (dict of unit, prior_unit, comb_z, from_comb). With "shape" also
        ``occupancy_shape``, ``shape_used`` (M,) and ``shape`` (per particle records).
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
        method="combined" if method == "shape" else method,
    )
    cols["occupancy_net"] = cols["occupancy"]
    for key in ("occupancy", "confidence", "occupancy_count", "intensity", "intensity_sd"):
        cols[key] = counted[key]
    cols["unit"] = {k: counted[k] for k in ("unit", "prior_unit", "comb_z", "from_comb")}
    if method == "shape":
        apply_shape_prior(
            cols, frame_shape=image.shape, pixel_size_A=pixel_size_A,
            crystal=model_crystal(segmenter.metadata), unit=float(counted["unit"]),
            unit_trusted=bool(counted["from_comb"]),
        )  # fmt: skip
    return cols, pred
