"""Tracking scores: CLEAR-MOT and IDF1 (py-motmetrics) and fusion-event precision / recall.

Points are matched frame by frame when closer than `gate_px` (Euclidean, px of frame 0).
MOTA, IDSW, FP, FN, IDF1 and mostly tracked come from motmetrics; MOTP is reported as in
Milan's CLEAR-MOT code for points: ``(1 − mean matched distance / gate) · 100`` %.

No standard metric scores merges, so fusion events are scored here: a detected fusion matches a
true one (one to one, Hungarian on the distance) when its frame is within `frame_tolerance` and
its location (the child's position in the event frame) within `distance_px`. Among matched
events, ``fusion_id_consistent`` is the fraction whose child track is the track motmetrics
matched most often to the true child.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import linear_sum_assignment

__all__ = [
    "evaluate",
    "evaluate_fusions",
    "evaluate_tracks",
    "parse_fusion",
    "read_events_csv",
    "read_table_csv",
]

Table = Mapping[str, ArrayLike]


def _col(table: Table, *names: str) -> NDArray[Any]:
    for n in names:
        if n in table:
            return np.asarray(table[n])
    raise ValueError(f"table has no column {' or '.join(names)} (columns: {sorted(table)})")


def _points(table: Table) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    frame = _col(table, "frame").astype(np.int64)
    ids = _col(table, "track_id", "id").astype(np.int64)
    xy = np.column_stack([_col(table, "x"), _col(table, "y")]).astype(float)
    return frame, ids, xy


def _accumulate(truth: Table, tracks: Table, gate_px: float) -> Any:
    import motmetrics as mm

    tf, tid, txy = _points(truth)
    hf, hid, hxy = _points(tracks)
    acc = mm.MOTAccumulator(auto_id=False)
    frames = np.union1d(tf, hf)
    t_order, h_order = np.argsort(tf, kind="stable"), np.argsort(hf, kind="stable")
    t_b = (
        np.searchsorted(tf[t_order], frames, side="left"),
        np.searchsorted(tf[t_order], frames, side="right"),
    )
    h_b = (
        np.searchsorted(hf[h_order], frames, side="left"),
        np.searchsorted(hf[h_order], frames, side="right"),
    )
    for k, f in enumerate(frames):
        ti = t_order[t_b[0][k] : t_b[1][k]]
        hi = h_order[h_b[0][k] : h_b[1][k]]
        # norm2squared_matrix returns SQUARED distances (NaN beyond the gate)
        d2 = mm.distances.norm2squared_matrix(txy[ti], hxy[hi], max_d2=gate_px**2)
        acc.update(tid[ti].tolist(), hid[hi].tolist(), np.sqrt(d2), frameid=int(f))
    return acc


def evaluate_tracks(truth: Table, tracks: Table, *, gate_px: float = 5.0) -> dict[str, float]:
    """CLEAR-MOT and identity scores of `tracks` against `truth`.

    Parameters
    ----------
    truth : mapping of column name → array
        ``frame, id, x, y`` (ground_truth.csv).
    tracks : mapping of column name → array
        ``frame, track_id, x, y`` (tracks.csv).
    gate_px : float
        Largest distance (px) at which a track point can match a true particle.

    Returns
    -------
    dict
        mota, motp (both %), idf1 (%), idsw, fp, fn, mostly_tracked, partially_tracked,
        mostly_lost, fragmentations, precision, recall (%), num_objects, num_predictions,
        num_unique_objects.
    """
    import motmetrics as mm

    acc = _accumulate(truth, tracks, gate_px)
    names = [
        "mota", "motp", "idf1", "num_switches", "num_false_positives", "num_misses",
        "mostly_tracked", "partially_tracked", "mostly_lost", "num_fragmentations",
        "precision", "recall", "num_objects", "num_predictions", "num_unique_objects",
    ]  # fmt: skip
    s = mm.metrics.create().compute(acc, metrics=names, name="all").iloc[0]
    motp = float(s["motp"]) if np.isfinite(s["motp"]) else gate_px
    return {
        "mota": 100.0 * float(s["mota"]),
        "motp": 100.0 * (1.0 - motp / gate_px),
        "idf1": 100.0 * float(s["idf1"]),
        "idsw": int(s["num_switches"]),
        "fp": int(s["num_false_positives"]),
        "fn": int(s["num_misses"]),
        "mostly_tracked": int(s["mostly_tracked"]),
        "partially_tracked": int(s["partially_tracked"]),
        "mostly_lost": int(s["mostly_lost"]),
        "fragmentations": int(s["num_fragmentations"]),
        "precision": 100.0 * float(s["precision"]),
        "recall": 100.0 * float(s["recall"]),
        "num_objects": int(s["num_objects"]),
        "num_predictions": int(s["num_predictions"]),
        "num_unique_objects": int(s["num_unique_objects"]),
        "gate_px": float(gate_px),
    }


def parse_fusion(track_ids: str) -> tuple[tuple[int, ...], int]:
    """``"a+b>c"`` → ((a, b), c)."""
    left, _, right = str(track_ids).partition(">")
    if not right:
        raise ValueError(f"fusion track_ids must look like 'a+b>c', got {track_ids!r}")
    return tuple(int(x) for x in left.split("+")), int(right)


def _fusions(events: Table | Sequence[Any]) -> list[tuple[int, tuple[int, ...], int, dict]]:
    """(frame, parents, child, detail) of every fusion in an event table or list of events."""
    if isinstance(events, Mapping):
        n = len(_col(events, "frame"))
        rows = [{k: np.asarray(v)[i] for k, v in events.items()} for i in range(n)]
    else:
        rows = [e if isinstance(e, Mapping) else vars(e) for e in events]
    out = []
    for r in rows:
        if str(r.get("type", "")) != "fusion":
            continue
        parents, child = parse_fusion(str(r["track_ids"]))
        detail = r.get("detail") or {}
        if isinstance(detail, str):
            detail = json.loads(detail) if detail.strip() else {}
        out.append((int(r["frame"]), parents, child, dict(detail)))
    return out


def _where(table: Table | None, tid: int, frame: int) -> NDArray[np.float64] | None:
    """Position of track `tid` at `frame` (nearest frame of that track)."""
    if table is None:
        return None
    f, ids, xy = _points(table)
    sel = np.flatnonzero(ids == tid)
    if not sel.size:
        return None
    return xy[sel[np.argmin(np.abs(f[sel] - frame))]]


def _event_xy(
    ev: tuple[int, tuple[int, ...], int, dict], table: Table | None
) -> NDArray[np.float64]:
    frame, parents, child, detail = ev
    if "x" in detail and "y" in detail:
        return np.array([float(detail["x"]), float(detail["y"])])
    for tid, f in [(child, frame), *[(p, frame - 1) for p in parents]]:
        xy = _where(table, tid, f)
        if xy is not None:
            return xy
    return np.array([np.nan, np.nan])


def evaluate_fusions(
    truth_events: Table | Sequence[Any],
    events: Table | Sequence[Any],
    *,
    truth: Table | None = None,
    tracks: Table | None = None,
    frame_tolerance: int = 2,
    distance_px: float = 10.0,
    gate_px: float = 5.0,
) -> dict[str, float]:
    """Precision and recall of fusion events (see the module docstring).

    Event locations come from the event's detail (``x``, ``y``) when present, else from the
    child's position in `truth` / `tracks`.
    """
    te, he = _fusions(truth_events), _fusions(events)
    txy = np.array([_event_xy(e, truth) for e in te]).reshape(-1, 2)
    hxy = np.array([_event_xy(e, tracks) for e in he]).reshape(-1, 2)
    matches: list[tuple[int, int]] = []
    if te and he:
        d = np.sqrt(((txy[:, None] - hxy[None]) ** 2).sum(-1))
        df = np.abs(np.array([e[0] for e in te])[:, None] - np.array([e[0] for e in he])[None])
        ok = (df <= frame_tolerance) & (d <= distance_px)
        cost = np.where(ok, np.nan_to_num(d, nan=1e6) + df, 1e6)
        r, c = linear_sum_assignment(cost)
        matches = [(i, j) for i, j in zip(r, c, strict=True) if ok[i, j]]
    tp = len(matches)
    consistent = 0
    if matches and truth is not None and tracks is not None:
        mapping = _majority_map(truth, tracks, gate_px)
        consistent = sum(mapping.get(he[j][2]) == te[i][2] for i, j in matches)
    return {
        "fusion_precision": tp / len(he) if he else (1.0 if not te else 0.0),
        "fusion_recall": tp / len(te) if te else 1.0,
        "fusion_tp": tp,
        "fusion_fp": len(he) - tp,
        "fusion_fn": len(te) - tp,
        "fusion_id_consistent": consistent / tp if tp else 0.0,
    }


def _majority_map(truth: Table, tracks: Table, gate_px: float) -> dict[int, int]:
    """Hypothesis track id → the true id it was matched to most often."""
    ev = _accumulate(truth, tracks, gate_px).mot_events
    m = ev[ev["Type"].isin(["MATCH", "SWITCH"])]
    counts = m.groupby(["HId", "OId"]).size().reset_index(name="n")
    counts = counts.sort_values("n", ascending=False).drop_duplicates("HId")
    return {int(h): int(o) for h, o in zip(counts["HId"], counts["OId"], strict=True)}


def evaluate(
    truth: Table,
    tracks: Table,
    *,
    truth_events: Table | Sequence[Any] | None = None,
    events: Table | Sequence[Any] | None = None,
    gate_px: float = 5.0,
    frame_tolerance: int = 2,
    distance_px: float = 10.0,
) -> dict[str, float]:
    """`evaluate_tracks`, plus `evaluate_fusions` when both event tables are given."""
    out: dict[str, float] = evaluate_tracks(truth, tracks, gate_px=gate_px)
    if truth_events is not None and events is not None:
        out.update(
            evaluate_fusions(
                truth_events, events, truth=truth, tracks=tracks,
                frame_tolerance=frame_tolerance, distance_px=distance_px, gate_px=gate_px,
            )
        )  # fmt: skip
    return out


# -- thin CSV helpers for the command line --------------------------------------------------
def read_table_csv(path: str | Path, *, required: Iterable[str] = ()) -> dict[str, NDArray[Any]]:
    """Columns of a CSV file as arrays (numbers where every value parses, else strings).

    Empty cells (e.g. det_id of interpolated points) become NaN in numeric columns.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols: dict[str, list[str]] = {k: [] for k in reader.fieldnames or []}
        for row in reader:
            for k in cols:
                cols[k].append(row.get(k) or "")
    missing = [c for c in required if c not in cols]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    out: dict[str, NDArray[Any]] = {}
    for k, v in cols.items():
        try:
            out[k] = np.array([float(x) if x != "" else np.nan for x in v])
        except ValueError:
            out[k] = np.array(v, dtype=object)
    return out


def read_events_csv(path: str | Path) -> dict[str, NDArray[Any]]:
    """events.csv (frame, type, track_ids, detail) with track_ids and detail kept as text."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for c in ("frame", "type", "track_ids"):
        if rows and c not in rows[0]:
            raise ValueError(f"{path}: missing column {c}")
    return {
        "frame": np.array([int(float(r["frame"])) for r in rows], dtype=np.int64),
        "type": np.array([r["type"] for r in rows], dtype=object),
        "track_ids": np.array([r["track_ids"] for r in rows], dtype=object),
        "detail": np.array([r.get("detail") or "" for r in rows], dtype=object),
    }
