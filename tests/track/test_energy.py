"""Energy terms: analytic gradients match finite differences, term by term."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from nptrack.track.energy import (
    Detections,
    EnergyParams,
    Fusion,
    Packed,
    Solution,
    Track,
    energy,
    pack,
)

TERMS = ("detection", "dynamics", "intensity", "exclusion", "persistence")


def _problem() -> tuple[list[Track], Detections, list[Fusion]]:
    """Two parents fusing into a child, a particle passing close to another one, a track
    born and ending near the border, all in 8 frames."""
    rng = np.random.default_rng(3)
    rows = []
    tracks: list[Track] = []

    def add_track(tid: int, start: int, xy: np.ndarray, inten: np.ndarray) -> None:
        dets = []
        for k, (p, i) in enumerate(zip(xy, inten, strict=True)):
            rows.append((start + k, p[0] + rng.normal(0, 0.2), p[1] + rng.normal(0, 0.2), 3.0, i))
            dets.append(len(rows) - 1)
        tracks.append(Track(tid, start, xy.astype(float), np.log(inten), np.array(dets)))

    t = np.arange(8)[:, None]
    add_track(0, 0, np.hstack([20 + 0.5 * t[:4], 30 + 0 * t[:4]]), np.full(4, 1000.0))
    add_track(1, 0, np.hstack([27 - 0.5 * t[:4], 30 + 0 * t[:4]]), np.full(4, 1500.0))
    add_track(2, 4, np.hstack([23.8 + 0.1 * t[:4], 30.2 + 0 * t[:4]]), np.full(4, 2450.0))
    # crossing: 3 passes over 4; one blob (summed intensity) in frames 3-4
    add_track(3, 0, np.hstack([60 + 1.0 * t, 60 + 0 * t]), np.full(8, 800.0))
    add_track(4, 0, np.hstack([63.5 + 0 * t, 60.3 + 0 * t]), np.full(8, 1200.0))
    add_track(5, 2, np.hstack([2.0 + 0.3 * t[:5], 50 + 0 * t[:5]]), np.full(5, 900.0))
    a = np.array(rows)
    dets = Detections.from_arrays(
        a[:, 0], a[:, 1], a[:, 2], diameter_nm=a[:, 3], intensity=a[:, 4],
        pixel_size_nm=0.5, frame_shape=(100, 100),
    )  # fmt: skip
    # detection rows were sorted by frame: re-point the tracks to the sorted rows
    order = np.argsort(a[:, 0], kind="stable")
    where = np.empty_like(order)
    where[order] = np.arange(order.size)
    for tr in tracks:
        tr.det = where[tr.det]
    # track 4 last: with n_focus=5 it is context (an exclusion partner of track 3)
    tracks = [tracks[i] for i in (0, 1, 2, 3, 5, 4)]
    return tracks, dets, [Fusion((0, 1), 2)]


def _params(**kw: float | str) -> EnergyParams:
    base = EnergyParams(
        pixel_size_nm=0.5,
        frame_shape=(100, 100),
        detection_scale_px=1.0,
        localisation_px=0.3,
        intensity_tolerance=0.2,
        intensity_smoothness=0.05,
        mass_tolerance=0.05,
        step_sigma_px=1.0,
        reference_diameter_nm=3.0,
        contact_factor=1.0,
        border_margin_px=5.0,
        small_diameter_nm=1.0,
    )
    return replace(base, **kw)


def _only(term: str, **kw: float | str) -> EnergyParams:
    w = {f"weight_{t}": (1.0 if t == term else 0.0) for t in (*TERMS, "regularisation")}
    return _params(**w, **kw)


def _fd_check(pk: Packed, rng: np.random.Generator) -> float:
    xy = pk.xy + rng.normal(0, 0.3, pk.xy.shape)
    u = pk.u + rng.normal(0, 0.05, pk.u.shape)
    _, gx, gu, _ = pk.energy(xy, u)
    h, worst = 1e-6, 0.0
    for i in range(len(u)):
        for ax in range(2):
            a, b = xy.copy(), xy.copy()
            a[i, ax] += h
            b[i, ax] -= h
            fd = (pk.energy(a, u)[0] - pk.energy(b, u)[0]) / (2 * h)
            worst = max(worst, abs(fd - gx[i, ax]) / (1.0 + abs(fd)))
        a, b = u.copy(), u.copy()
        a[i] += h
        b[i] -= h
        fd = (pk.energy(xy, a)[0] - pk.energy(xy, b)[0]) / (2 * h)
        worst = max(worst, abs(fd - gu[i]) / (1.0 + abs(fd)))
    return worst


@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("motion", ["brownian", "constant_velocity"])
def test_gradient_matches_finite_differences(term: str, motion: str) -> None:
    tracks, dets, fusions = _problem()
    pk = pack(tracks, dets, _only(term, motion=motion), fusions=fusions, n_focus=5)
    # the term must actually be exercised by the problem
    assert pk.energy()[3][term] != 0.0
    assert _fd_check(pk, np.random.default_rng(0)) < 1e-5


def test_detection_gradient_with_size_dependent_intensity_tolerance() -> None:
    tracks, dets, fusions = _problem()
    sizes = np.random.default_rng(1).uniform(1.5, 4.5, len(dets))
    dets = replace(dets, diameter_nm=sizes)
    params = _only("detection", intensity_noise_exponent=-2.0)
    pk = pack(tracks, dets, params, fusions=fusions, n_focus=5)
    eps = np.sqrt(pk.det_e2)
    # smaller than the reference: looser by (d / d_ref)^-2; larger: the reference's ε_d
    d = sizes[pk.det_g]
    expected = 0.2 * np.minimum(d / 3.0, 1.0) ** -2.0
    np.testing.assert_allclose(eps, np.minimum(expected, 1.0))
    assert eps.min() == pytest.approx(0.2) and eps.max() > 0.5
    assert _fd_check(pk, np.random.default_rng(0)) < 1e-5


def test_superposed_pair_gradient_and_shared_gain() -> None:
    """A crossing: two tracks on one blob whose intensity is their sum are superposed."""
    xy = np.array([[10.0, 10.0], [10.5, 10.2]])
    dets = Detections.from_arrays(
        [0], [10.2], [10.1], diameter_nm=[3.0], intensity=[3000.0], pixel_size_nm=0.5
    )
    a = Track(0, 0, xy[:1], np.log([1000.0]), np.array([0]))
    b = Track(1, 0, xy[1:], np.log([2000.0]), np.array([0]))
    p = _only("detection", contact_factor=1.0)
    pk = pack([a, b], dets, p)
    assert (pk.partner >= 0).all() and pk.exc.size == 0
    # the blob is one detection: the pair together gains about one detection, not two
    gain = -(pk.energy()[3]["detection"] - p.detection_lambda * 2)
    assert 0.5 < gain <= 1.0
    assert _fd_check(pk, np.random.default_rng(1)) < 1e-5
    # a duplicate (same intensity as the blob) is not a superposition: exclusion applies
    b2 = Track(1, 0, xy[1:], np.log([3000.0]), np.array([0]))
    a2 = Track(0, 0, xy[:1], np.log([3000.0]), np.array([0]))
    pk2 = pack([a2, b2], dets, _only("exclusion", contact_factor=1.0))
    assert (pk2.partner < 0).all() and pk2.exc.size == 2
    assert pk2.energy()[3]["exclusion"] > 0.5


def test_superposed_pair_is_pinned_by_its_mass_weighted_centre() -> None:
    """The blob's centroid is the pair's mass-weighted centre: each keeps its own place."""
    dets = Detections.from_arrays(
        [0], [10.0], [10.0], diameter_nm=[3.0], intensity=[3000.0], pixel_size_nm=0.5
    )
    p = _only("detection", contact_factor=1.0)

    def det_energy(xa: float, xb: float) -> float:
        a = Track(0, 0, np.array([[xa, 10.0]]), np.log([1000.0]), np.array([0]))
        b = Track(1, 0, np.array([[xb, 10.0]]), np.log([2000.0]), np.array([0]))
        pk = pack([a, b], dets, p)
        assert (pk.partner >= 0).all()
        return pk.energy()[3]["detection"]

    # centre (1000·8 + 2000·11) / 3000 = 10 on the blob: as good as both sitting on it
    assert det_energy(8.0, 11.0) == pytest.approx(det_energy(10.0, 10.0), abs=1e-9)
    # heavier one off the blob: the centre (1000·9 + 2000·11.5) / 3000 = 10.67 is off too
    assert det_energy(9.0, 11.5) > det_energy(10.0, 10.0) + 0.1


def test_terms_sum_and_local_energy_is_additive() -> None:
    tracks, dets, fusions = _problem()
    p = _params()
    sol = Solution({t.id: t for t in tracks}, {2: fusions[0]}, first_frame=0, last_frame=7)
    total, parts = energy(sol, dets, p, terms=True)
    assert total == pytest.approx(sum(parts.values()))
    # E(all) = E(focus | context) + E(context alone) for a track that shares no term
    focus = [t for t in tracks if t.id == 5]
    rest = [t for t in tracks if t.id != 5]
    e_focus = pack(focus + rest, dets, p, n_focus=1, fusions=fusions).energy()[0]
    e_rest = pack(rest, dets, p, fusions=fusions).energy()[0]
    assert total == pytest.approx(e_focus + e_rest)


def test_intensity_solve_lowers_energy_and_zeroes_gradient() -> None:
    tracks, dets, fusions = _problem()
    p = _params()
    pk = pack(tracks, dets, p, fusions=fusions)
    u0 = pk.u + np.random.default_rng(2).normal(0, 0.2, pk.u.shape)
    e0 = pk.energy(pk.xy, u0)[0]
    u = pk.relax_intensity(pk.xy, u0, iterations=8)
    e1, _, gu, _ = pk.energy(pk.xy, u)
    assert e1 < e0
    assert np.abs(gu).max() < 1e-2 * max(1.0, np.abs(pk.energy(pk.xy, u0)[2]).max())
    # mass is conserved at the fusion after the solve (within the tolerance)
    child, parents = pk.fus_child[0], pk.fus_parent
    assert abs(u[child] - np.log(np.exp(u[parents]).sum())) < 2 * p.mass_tolerance


def test_step_variance_follows_mobility_law() -> None:
    p = _params(mobility_exponent=-2.0, step_sigma_px=1.0, reference_diameter_nm=3.0)
    assert p.step_var(6.0) == pytest.approx(0.25)
    assert p.step_var(1.5) == pytest.approx(4.0)
    assert float(p.size_factor(0.5)) < 0.05 < 0.95 < float(p.size_factor(2.0))


@pytest.mark.parametrize("n_tree", [1, 3, 400])
def test_within_finds_every_pair_in_range(n_tree: int) -> None:
    """`_within` (k-nearest with doubling k) equals a dual-tree range query, including where
    more than the first k entries lie in range and at exactly the radius."""
    from scipy.spatial import cKDTree

    from nptrack.track.energy import _within

    rng = np.random.default_rng(n_tree)
    tree_pts = rng.uniform(0, 6, (n_tree, 3))  # dense: up to dozens of entries in range
    tree = cKDTree(tree_pts)
    query = np.vstack([rng.uniform(0, 6, (50, 3)), tree_pts[:1] + np.array([2.0, 0.0, 0.0])])
    i, j = _within(tree, query, 2.0)
    want = cKDTree(query).sparse_distance_matrix(tree, 2.0, output_type="ndarray")
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == sorted(
        zip(want["i"].tolist(), want["j"].tolist(), strict=True)
    )
    assert (len(query) - 1, 0) in set(zip(i.tolist(), j.tolist(), strict=True))  # at the radius
