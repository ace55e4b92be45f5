"""Events: a scripted fusion, crossing, birth, vanishing and exit give the right events."""

from __future__ import annotations

import numpy as np

from nptrack.track.energy import Detections, EnergyParams, Fusion, Solution, Track
from nptrack.track.events import events_to_columns, find_events, infer_fusions, solution_to_table

P = EnergyParams(pixel_size_nm=0.5, frame_shape=(100, 100), border_margin_px=5.0)


def _scene() -> tuple[Solution, Detections]:
    rows = []

    def add(tid: int, start: int, xy: list[tuple[float, float]], inten: float, d: float = 3.0):
        det = []
        for k, (x, y) in enumerate(xy):
            rows.append((start + k, x, y, d, inten))
            det.append(len(rows) - 1)
        return Track(tid, start, np.array(xy, float), np.full(len(xy), np.log(inten)),
                     np.array(det))  # fmt: skip

    tr = [
        add(0, 0, [(40, 40)] * 5, 1000.0),  # parent
        add(1, 0, [(46, 40)] * 5, 1500.0),  # parent
        add(2, 5, [(43.6, 40)] * 5, 2500.0, 3.8),  # child: bigger and brighter
        add(3, 3, [(70, 70)] * 7, 1000.0),  # birth inside
        add(4, 0, [(20, 80)] * 6, 200.0, 1.2),  # vanishes inside
        add(5, 0, [(3 - k, 50) for k in range(4)], 900.0),  # exits across the left border
        add(6, 0, [(60 + 2 * k, 20) for k in range(10)], 800.0),  # crosses track 7
        add(7, 0, [(70, 20.5)] * 10, 1200.0),
    ]
    a = np.array(rows)
    dets = Detections.from_arrays(
        a[:, 0], a[:, 1], a[:, 2], diameter_nm=a[:, 3], intensity=a[:, 4],
        pixel_size_nm=0.5, frame_shape=(100, 100), n_frames=10,
    )  # fmt: skip
    order = np.argsort(a[:, 0], kind="stable")
    where = np.empty_like(order)
    where[order] = np.arange(order.size)
    for t in tr:
        t.det = where[t.det]
    sol = Solution({t.id: t for t in tr}, {2: Fusion((0, 1), 2)}, 0, 9, next_id=8)
    return sol, dets


def test_scripted_events() -> None:
    sol, dets = _scene()
    ev = {(e.type, e.track_ids): e for e in find_events(sol, dets, P)}
    fusion = ev[("fusion", "0+1>2")]
    assert fusion.frame == 5
    assert fusion.detail["mass_conserved"] and fusion.detail["grows"]
    assert abs(fusion.detail["mass_ratio"] - 1.0) < 1e-6
    assert ev[("birth", "3")].frame == 3 and not ev[("birth", "3")].detail["at_border"]
    assert ev[("death", "4")].frame == 6  # the first frame without it, as in the ground truth
    assert ev[("exit", "5")].frame == 4
    assert ("crossing", "6,7") in ev
    # parents of a fusion neither die nor does the child count as a birth
    assert ("death", "0") not in ev and ("birth", "2") not in ev
    cols = events_to_columns(list(ev.values()))
    assert set(cols) == {"frame", "type", "track_ids", "detail"}


def test_tracks_table_contract() -> None:
    sol, dets = _scene()
    sol.tracks[3].det[2] = -1  # an interpolated point
    tab = solution_to_table(sol, dets)
    assert list(tab.as_columns()) == [
        "frame", "track_id", "x", "y", "diameter_nm", "intensity", "det_id", "state",
    ]  # fmt: skip
    assert np.all(np.diff(tab.frame) >= 0)
    row = (tab.track_id == 3) & (tab.frame == 5)
    assert tab.state[row][0] == "interpolated" and tab.det_id[row][0] == -1
    assert set(tab.state) == {"observed", "interpolated"}


def test_infer_fusions_on_plain_tracks() -> None:
    """The three criteria applied to a linker's output without fusion links."""
    sol, dets = _scene()
    del sol.fusions[2]
    b, c = sol.tracks.pop(1), sol.tracks.pop(2)  # the linker continued parent 1 as the child
    sol.tracks[1] = Track(1, 0, np.vstack([b.xy, c.xy]), np.r_[b.u, c.u], np.r_[b.det, c.det])
    found = infer_fusions(solution_to_table(sol, dets), pixel_size_nm=0.5, frame_shape=(100, 100))
    assert [(e.frame, e.track_ids) for e in found] == [(5, "0+1>1")]
