"""Tables and figures of the atomic-column mode, shared by `nptrack columns` and
`nptrack watch --mode columns` (so both write the same files)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["COLUMN_TABLE", "formatted_rows", "write_occupancy_time"]

# columns.csv after its source column (image or source): positions in px of the frame.
COLUMN_TABLE = (
    "frame", "column_id", "x", "y", "occupancy", "confidence", "occupancy_net",
    "occupancy_count", "intensity",
)  # fmt: skip


def formatted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Column rows as written: px to 0.01, confidence to 0.001, intensity to 6 digits."""
    return [
        {**r, "x": f"{r['x']:.2f}", "y": f"{r['y']:.2f}", "confidence": f"{r['confidence']:.3f}",
         "intensity": f"{r['intensity']:.6g}"}
        for r in rows
    ]  # fmt: skip


def write_occupancy_time(rows: list[dict[str, Any]], n_frames: int, out: Path) -> int:
    """occupancy_time.csv (one row per column, one occupancy column per frame) and its plot.

    `rows` are column rows (frame, column_id, x, y, occupancy) of frames 0 .. `n_frames` - 1;
    returns the number of columns whose occupancy changed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = sorted({r["column_id"] for r in rows})
    occ = np.full((len(ids), n_frames), -1, int)
    first_xy: dict[int, tuple[float, float]] = {}
    index = {c: i for i, c in enumerate(ids)}
    for r in rows:
        occ[index[r["column_id"]], r["frame"]] = r["occupancy"]
        first_xy.setdefault(r["column_id"], (r["x"], r["y"]))
    with open(out / "occupancy_time.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["column_id", "x", "y", *[f"frame_{t}" for t in range(n_frames)]])
        for c in ids:
            x, y = first_xy[c]
            vals = ["" if v < 0 else int(v) for v in occ[index[c]]]
            wr.writerow([c, f"{x:.2f}", f"{y:.2f}", *vals])
    seen = np.where(occ < 0, 0, occ)
    changes = (np.abs(np.diff(seen, axis=1)) > 0).sum(axis=1) if n_frames > 1 else occ[:, 0] * 0
    top = np.argsort(-changes, kind="stable")[: min(10, len(ids))]
    top = top[changes[top] > 0]
    fig, ax = plt.subplots(2, 1, figsize=(7, 6), sharex=True, constrained_layout=True)
    t = np.arange(n_frames)
    for i in top:
        y = np.where(occ[i] < 0, np.nan, occ[i]).astype(float)
        ax[0].step(t, y, where="mid", label=f"column {ids[i]}")
    if len(top):
        ax[0].legend(fontsize=7, ncol=2, loc="best")
    ax[0].set_ylabel("occupancy (atoms)")
    ax[0].set_title(
        f"the {len(top)} columns that changed most (of {len(ids)}); single-frame estimates: "
        "at low SNR their noise shows as changes too",
        fontsize=8,
    )
    ax[1].plot(t, seen.sum(axis=0), "k.-")
    ax[1].set_ylabel("atoms in all columns")
    ax[1].set_xlabel("frame")
    fig.savefig(out / "occupancy_time.png", dpi=110)
    plt.close(fig)
    return int((changes > 0).sum())
