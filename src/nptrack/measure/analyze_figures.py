"""Figures of ``nptrack analyze``: per-image overlays, pooled histograms, PNG writing.

`nptrack.measure.analyze` runs the job; the tables are in `nptrack.measure.analyze_outputs`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nptrack.measure.analyze_outputs import Table

__all__ = ["render_overlay", "write_histograms", "write_png"]


def write_png(path: Path, image: np.ndarray) -> Path:
    import cv2

    data = image[..., ::-1] if image.ndim == 3 else image  # OpenCV writes BGR
    if not cv2.imwrite(str(path), np.ascontiguousarray(data)):
        raise OSError(f"{path}: could not write PNG")
    return path


# -- figures -----------------------------------------------------------------------------------
_COLOURS = np.array(
    [[0, 0, 0], [60, 220, 60], [255, 200, 0], [255, 0, 255], [255, 60, 60]], dtype=np.uint8
)  # background, particle, separated, agglomerate, border (RGB)


def _nice_length(target: float) -> float:
    """The largest 1, 2 or 5 × 10^k not above `target`."""
    exp = math.floor(math.log10(target))
    for m in (5, 2, 1):
        if m * 10**exp <= target:
            return m * 10**exp
    return 10**exp


def render_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    columns: dict[str, np.ndarray],
    *,
    pixel_size_nm: tuple[float, float] | None = None,
) -> np.ndarray:
    """The image with particle outlines, ids and a scale bar.

    Outlines: green = particle, yellow = separated from a larger region, magenta =
    agglomerate (stays non-convex), red = cut by the border (left out of size statistics).

    Parameters
    ----------
    image : ndarray of float, shape (H, W)
    labels : ndarray of int, shape (H, W)
    columns : dict of str to ndarray
        From `nptrack.measure.props.measure_particles` (x, y, flags).
    pixel_size_nm : (float, float), optional
        Adds a scale bar.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
        RGB.
    """
    import cv2
    from skimage.segmentation import find_boundaries

    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img.ravel()[:: max(img.size // 500_000, 1)], (0.5, 99.5))
    gray = np.clip((img - lo) / max(float(hi - lo), 1e-12) * 255.0, 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    n = int(columns["label"].size)
    kind = np.ones(n + 1, dtype=np.intp)
    kind[0] = 0
    kind[1:][columns["separated"] > 0] = 2
    kind[1:][columns["agglomerate"] > 0] = 3
    kind[1:][columns["border"] > 0] = 4
    edge = find_boundaries(labels, mode="inner")
    rgb[edge] = _COLOURS[kind[labels[edge]]]
    height, width = gray.shape
    scale = max(0.3, min(height, width) / 1600.0)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i in range(n):
        x, y = columns["x"][i], columns["y"][i]
        if np.isfinite(x) and np.isfinite(y):
            colour = tuple(int(c) for c in _COLOURS[kind[i + 1]])
            cv2.putText(rgb, str(i + 1), (int(x), int(y)), font, scale, colour, 1, cv2.LINE_AA)
    if pixel_size_nm is not None:
        px_nm = float(pixel_size_nm[1])
        length_nm = _nice_length(width * px_nm / 5.0)
        bar = max(round(length_nm / px_nm), 1)
        thick = max(int(height / 150), 3)
        x1, y1 = width - int(0.04 * width), height - int(0.04 * height)
        cv2.rectangle(rgb, (x1 - bar - 1, y1 - thick - 1), (x1 + 1, y1 + 1), (0, 0, 0), -1)
        cv2.rectangle(rgb, (x1 - bar, y1 - thick), (x1, y1), (255, 255, 255), -1)
        text = f"{length_nm:g} nm"
        cv2.putText(
            rgb, text, (x1 - bar, y1 - thick - 6), font, 1.5 * scale, (0, 0, 0), 3, cv2.LINE_AA
        )
        cv2.putText(
            rgb,
            text,
            (x1 - bar, y1 - thick - 6),
            font,
            1.5 * scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return rgb


def write_histograms(path: Path, tables: Sequence[Table], *, unit: str) -> Path:
    """Pooled histograms of equivalent diameter and min / max Feret (border particles out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    border = np.concatenate([c["border"] for _, c in tables]) > 0
    for ax, (name, title) in zip(
        axes,
        [
            ("diameter", "equivalent diameter"),
            ("feret_min", "min Feret"),
            ("feret_max", "max Feret"),
        ],
        strict=True,
    ):
        v = np.concatenate([c[f"{name}_{unit}"] for _, c in tables])[~border]
        v = v[np.isfinite(v)]
        if v.size:
            ax.hist(v, bins=min(max(int(np.sqrt(v.size)), 5), 50), color="0.35")
            sd = f" ± {v.std(ddof=1):.3g}" if v.size > 1 else ""
            ax.set_title(f"{title}: {v.mean():.3g}{sd} {unit} (N = {v.size})", fontsize=10)
        else:
            ax.set_title(f"{title}: no particles", fontsize=10)
        ax.set_xlabel(f"{title} ({unit})")
        ax.set_ylabel("particles")
    fig.suptitle(f"{len(tables)} image(s), particles cut by the border excluded", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
