"""Fusions dated by the drop in projected area (`nptrack.track.retime`)."""

from __future__ import annotations

import numpy as np
import pytest

from nptrack.track.energy import Detections, Fusion, Solution, Track
from nptrack.track.retime import diameter_noise, retime_fusions

DA, DB = 3.0, 2.8  # parents' diameters (nm)
BLOB = float(np.sqrt(DA**2 + DB**2))  # touching: the areas add
FUSED = float(np.cbrt(DA**3 + DB**3))  # coalesced: the volumes add


def _scene(
    blob_frames: int, *, n_frames: int = 24, t_contact: int = 8, seed: int = 0
) -> tuple[Solution, Detections]:
    """Parents a, b until t_contact − 1; then one detection per frame: `blob_frames` at the
    blob size, then the fused size. The solution fuses at the first shared detection."""
    rng = np.random.default_rng(seed)
    rows = []  # frame, x, y, d, intensity
    for t in range(n_frames):
        noise = 1.0 + rng.normal(0, 0.02)
        if t < t_contact:
            rows.append((t, 40.0, 50.0, DA * noise, 100 * DA**3))
            rows.append((t, 52.0, 50.0, DB * (1.0 + rng.normal(0, 0.02)), 100 * DB**3))
        else:
            d = BLOB if t < t_contact + blob_frames else FUSED
            rows.append((t, 46.0, 50.0, d * noise, 100 * (DA**3 + DB**3)))
    a = np.array(rows)
    dets = Detections.from_arrays(
        a[:, 0], a[:, 1], a[:, 2], diameter_nm=a[:, 3], intensity=a[:, 4],
        pixel_size_nm=0.4, frame_shape=(100, 100), n_frames=n_frames,
    )  # fmt: skip
    f = a[:, 0].astype(int)

    def track(tid: int, sel: np.ndarray) -> Track:
        idx = np.flatnonzero(sel)
        return Track(tid, int(f[idx[0]]), a[idx, 1:3].copy(), np.log(a[idx, 4]), idx)

    first = np.array([t < t_contact and (k == 0 or f[k - 1] != t) for k, t in enumerate(f)])
    second = (f < t_contact) & ~first
    sol = Solution(first_frame=0, last_frame=n_frames - 1, next_id=3)
    sol.tracks = {0: track(0, first), 1: track(1, second), 2: track(2, f >= t_contact)}
    sol.fusions = {2: Fusion((0, 1), 2)}
    return sol, dets


def test_fusion_moves_to_the_area_drop() -> None:
    sol, dets = _scene(blob_frames=4)
    head = sol.tracks[2].det[:4].copy()
    changed = retime_fusions(sol, dets, sigma=0.02)
    assert changed == {0, 1, 2}
    assert sol.tracks[2].start == 12  # contact at 8, four blob frames
    for p in (0, 1):
        tr = sol.tracks[p]
        assert tr.end == 11
        # both parents hold the blob detections and keep their own mass
        assert np.array_equal(tr.det[-4:], head)
        assert np.allclose(tr.u[-4:], tr.u[7])
    assert sol.fusions == {2: Fusion((0, 1), 2)}


def test_fusion_already_at_the_drop_stays() -> None:
    sol, dets = _scene(blob_frames=0)
    assert retime_fusions(sol, dets, sigma=0.02) == set()
    assert sol.tracks[2].start == 8 and sol.tracks[0].end == 7


def test_blob_to_the_end_is_no_fusion_only_when_the_series_is_over() -> None:
    sol, dets = _scene(blob_frames=30)
    assert retime_fusions(sol, dets, sigma=0.02) == set()  # online: the drop may still come
    assert 2 in sol.fusions
    assert retime_fusions(sol, dets, sigma=0.02, unfuse_at_end=True) == {0, 1, 2}
    assert not sol.fusions and 2 not in sol.tracks
    assert sol.tracks[0].end == sol.tracks[1].end == 23


def test_a_child_that_grows_later_stays_fused() -> None:
    # Coalesced at once (fused size), then ripening: past the blob size of its parents after
    # 25 frames. Judged over its whole life it would look as if it never coalesced.
    sol, dets = _scene(blob_frames=0, n_frames=140)
    child = sol.tracks[2]
    frames = np.arange(child.start, child.end + 1)
    dets.diameter_nm[child.det] *= np.exp(0.004 * (frames - child.start))
    life = np.log(dets.diameter_nm[child.det]).mean()
    assert life > 0.5 * (np.log(BLOB) + np.log(FUSED))  # the old rule's "never fused"
    assert retime_fusions(sol, dets, sigma=0.02, unfuse_at_end=True) == set()
    assert sol.fusions == {2: Fusion((0, 1), 2)}


def test_committed_fusions_are_not_moved() -> None:
    sol, dets = _scene(blob_frames=4)
    sol.frozen_until = 8
    assert retime_fusions(sol, dets, sigma=0.02) == set()
    assert sol.tracks[2].start == 8


@pytest.mark.parametrize("seed", [0, 1])
def test_diameter_noise_is_measured(seed: int) -> None:
    sol, dets = _scene(blob_frames=0, n_frames=160, t_contact=80, seed=seed)
    # 2 % noise per detection, from the scatter along the tracks
    assert 0.016 < diameter_noise(sol, dets) < 0.025
