"""Atomic-column simulator: lattice, occupancy, SNR and sequences against independent truth."""

from __future__ import annotations

import numpy as np
import pytest

from nptrack.simulate.columns import (
    CRYSTALS,
    ColumnSequence,
    ColumnSimConfig,
    column_spacing_A,
    simulate_column_image,
    simulate_column_sequence,
)

A_CEO2, A_AU = 5.411, 4.078
# Projected lattices written out by hand (image x along the given axis, beam along the zone):
# fcc/fluorite cations along [110]: centred rectangle a x a/sqrt(2); fcc along [100]: square a/2.
LATTICES = {
    "ceo2_110": ((A_CEO2 / 2, A_CEO2 / 2 / np.sqrt(2)), (A_CEO2 / 2, -A_CEO2 / 2 / np.sqrt(2))),
    "au_110": ((A_AU / 2, A_AU / 2 / np.sqrt(2)), (A_AU / 2, -A_AU / 2 / np.sqrt(2))),
    "au_100": ((A_AU / 2, 0.0), (0.0, A_AU / 2)),
}


@pytest.mark.parametrize("crystal", sorted(LATTICES))
def test_column_positions_are_on_the_projected_lattice(crystal: str) -> None:
    cfg = ColumnSimConfig(crystal=crystal, diameter_A=24.0, snr=None, pixel_size_A=0.25)
    im = simulate_column_image(cfg, rng=np.random.default_rng(1))
    xy_A = np.stack([im.columns["x"], im.columns["y"]], axis=1) * cfg.pixel_size_A
    basis = np.array(LATTICES[crystal]).T  # columns: lattice vectors (Å)
    coef = np.linalg.solve(basis, (xy_A - xy_A[0]).T)
    assert len(xy_A) > 30
    np.testing.assert_allclose(coef, np.round(coef), atol=0.01)
    # every lattice vector is used: the columns fill the lattice, not a sub-lattice of it
    assert np.gcd.reduce(np.round(coef).astype(int).ravel()) == 1
    spacing = min(np.hypot(*b) for b in LATTICES[crystal])
    assert column_spacing_A(CRYSTALS[crystal]) == pytest.approx(spacing, rel=1e-6)


def test_rotation_turns_the_lattice() -> None:
    base = dict(diameter_A=24.0, snr=None, pixel_size_A=0.25)
    rot = simulate_column_image(
        ColumnSimConfig(**base, rotation_deg=30.0), rng=np.random.default_rng(1)
    )
    xy = np.stack([rot.columns["x"], rot.columns["y"]], axis=1) * 0.25
    t = np.deg2rad(-30.0)
    back = xy @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    coef = np.linalg.solve(np.array(LATTICES["ceo2_110"]).T, (back - back[0]).T)
    np.testing.assert_allclose(coef, np.round(coef), atol=0.01)


def test_occupancy_labels_sum_to_the_particle_volume() -> None:
    # A regular octahedron (no {100} truncation, no base, no jitter) of {111} inradius R has
    # volume 4 sqrt(3) R^3; CeO2 has 4 Ce per a^3.
    r = 20.0
    cfg = ColumnSimConfig(
        diameter_A=2 * r, d100_ratio=2.0, truncation=0.0, facet_jitter=0.0, snr=None
    )
    im = simulate_column_image(cfg, rng=np.random.default_rng(2))
    occ = im.columns["occupancy"]
    assert occ.sum() == im.atoms
    assert im.atoms == pytest.approx(4 * np.sqrt(3) * r**3 * 4 / A_CEO2**3, rel=0.08)
    # thickness along [110] of that octahedron: 2 R / cos(35.26°) = 2.449 R, period a / sqrt(2)
    assert occ.max() == pytest.approx(2.449 * r / (A_CEO2 / np.sqrt(2)), abs=1.0)
    ix, iy = np.round(im.columns["x"]).astype(int), np.round(im.columns["y"]).astype(int)
    np.testing.assert_array_equal(im.labels[iy, ix], np.minimum(occ, cfg.n_classes))
    # the hard label discs have the radius set in Å
    n_px = (im.labels > 0).sum() / len(occ)
    assert n_px == pytest.approx(np.pi * (cfg.label_radius_A / cfg.pixel_size_A) ** 2, rel=0.15)
    assert im.membership.max() == pytest.approx(1.0, abs=0.05) and im.membership.min() == 0


def test_vacancies_lower_the_occupancy() -> None:
    full = simulate_column_image(ColumnSimConfig(snr=None), rng=np.random.default_rng(3))
    holes = simulate_column_image(
        ColumnSimConfig(snr=None, vacancy_fraction=0.1), rng=np.random.default_rng(3)
    )
    assert holes.atoms == pytest.approx(0.9 * full.atoms, rel=0.05)
    assert holes.columns["occupancy"].sum() == holes.atoms


@pytest.mark.parametrize("snr", [1.0, 2.0])
def test_snr_is_as_requested(snr: float) -> None:
    cfg = ColumnSimConfig(snr=snr, support_level=1.0)
    im = simulate_column_image(cfg, rng=np.random.default_rng(4))
    rng = np.random.default_rng(5)
    ix, iy = np.round(im.columns["x"]).astype(int), np.round(im.columns["y"]).astype(int)
    draws = rng.poisson(np.broadcast_to(im.clean, (400, *im.clean.shape))[:, iy, ix])
    signal = im.clean[iy, ix] - im.support[iy, ix]
    measured = np.mean(signal / draws.std(axis=0))
    assert measured == pytest.approx(snr, rel=0.1)
    assert im.snr == pytest.approx(snr, rel=1e-6)
    # the returned image is one such Poisson draw: integer counts with the clean mean
    assert np.all(im.image == np.round(im.image))
    assert im.image.mean() == pytest.approx(im.clean.mean(), rel=0.02)


def test_sequence_truth_changes_where_the_image_changes() -> None:
    cfg = ColumnSimConfig(snr=None)
    seq = simulate_column_sequence(
        cfg, frames=6, events_per_frame=3.0, drift_px_per_frame=0.0, rng=np.random.default_rng(6)
    )
    assert len(seq.frames) == 6 and seq.changes
    for t in range(1, 6):
        before = _occupancy(seq, t - 1)
        now = _occupancy(seq, t)
        changed = {c for c in before.keys() | now.keys() if before.get(c, 0) != now.get(c, 0)}
        expected = {c for (f, c, _) in seq.changes if f == t}
        net = {c: sum(s for f, cc, s in seq.changes if f == t and cc == c) for c in expected}
        assert changed == {c for c, s in net.items() if s != 0}
        diff = np.abs(seq.frames[t].clean - seq.frames[t - 1].clean)
        xy = {**_positions(seq, t - 1), **_positions(seq, t)}
        near = np.zeros(diff.shape, bool)
        yy, xx = np.mgrid[: diff.shape[0], : diff.shape[1]]
        for c in changed:
            x, y = xy[c]
            near |= np.hypot(xx - x, yy - y) < 8
            # one atom more or less: about one atom unit of peak change at the column
            assert diff[round(y), round(x)] > 0.5 * seq.frames[t].dose
        assert diff[~near].max() < 0.05 * seq.frames[t].dose  # nothing else moved


def _occupancy(seq: ColumnSequence, t: int) -> dict[int, int]:
    m = seq.truth["frame"] == t
    ids, occ = seq.truth["column_id"][m], seq.truth["occupancy"][m]
    return {int(c): int(n) for c, n in zip(ids, occ, strict=True)}


def _positions(seq: ColumnSequence, t: int) -> dict[int, tuple[float, float]]:
    m = seq.truth["frame"] == t
    ids, xs, ys = seq.truth["column_id"][m], seq.truth["x"][m], seq.truth["y"][m]
    return {int(c): (float(x), float(y)) for c, x, y in zip(ids, xs, ys, strict=True)}
