"""Statistics of a session on simulated sequences whose truth is known (ground-truth rows stand
in for tracks: track_id = id)."""

from __future__ import annotations

import numpy as np
import pytest

from nptrack.analysis import (
    brownian_check,
    coalescence_share,
    diffusion_coefficients,
    frame_size_stats,
    fusion_counts,
    mean_radius_series,
    mean_squared_displacement,
    mobility_vs_size,
    ripening_fit,
    ripening_free_exponent,
    size_histogram,
    track_lengths,
    treacy_rice,
    treacy_rice_per_frame,
)
from nptrack.simulate.dynamics import (
    DynamicsConfig,
    SequenceTruth,
    ground_truth_rows,
    simulate_population,
)

PX_NM = 0.5


def _simulate(
    cfg: DynamicsConfig, *, frames: int, n: int, seed: int, size: int = 160, **opts: float
) -> SequenceTruth:
    return simulate_population(
        (size, size),
        pixel_size_nm=PX_NM,
        frames=frames,
        n_particles=n,
        config=cfg,
        rng=np.random.default_rng(seed),
        particle_options={"diameter_nm": 3.0, **opts},
    )


def _diameter(volume_nm3: float) -> float:
    return float(np.cbrt(6.0 * volume_nm3 / np.pi))


# -- distributions -----------------------------------------------------------------------------


def test_frame_size_stats_by_hand() -> None:
    frame = [0, 0, 0, 2, 2]
    d = [2.0, 4.0, 6.0, 3.0, np.nan]
    s = frame_size_stats(frame, d, frames=[0, 1, 2])
    assert s["frame"].tolist() == [0, 1, 2]
    assert s["n"].tolist() == [3, 0, 1]
    assert s["mean_diameter_nm"][0] == pytest.approx(4.0)
    assert s["median_diameter_nm"][0] == pytest.approx(4.0)
    assert s["sd_diameter_nm"][0] == pytest.approx(2.0)
    assert s["total_volume_nm3"][0] == pytest.approx(np.pi / 6 * (8 + 64 + 216))
    assert s["mean_volume_nm3"][2] == pytest.approx(np.pi / 6 * 27)
    assert np.isnan(s["mean_diameter_nm"][1]) and s["total_volume_nm3"][1] == 0.0
    assert np.isnan(s["sd_diameter_nm"][2])  # one particle: no sd


def test_size_histogram_bins() -> None:
    d = np.random.default_rng(0).normal(3.0, 0.5, 500)
    counts, edges = size_histogram(d, bin_width_nm=0.25)
    assert counts.sum() == 500 and edges.size == counts.size + 1
    assert np.allclose(np.diff(edges), 0.25) and np.allclose(edges / 0.25, np.round(edges / 0.25))
    counts, edges = size_histogram(d)  # Freedman–Diaconis
    iqr = np.subtract(*np.percentile(d, [75, 25]))
    assert np.diff(edges)[0] == pytest.approx(2 * iqr / 500 ** (1 / 3), rel=0.1)
    counts, edges = size_histogram(d, bin_width_nm=0.5, range_nm=(2.0, 4.0))
    assert edges.tolist() == [2.0, 2.5, 3.0, 3.5, 4.0]
    assert counts.sum() == np.count_nonzero((d >= 2) & (d <= 4))


# -- Treacy-Rice -------------------------------------------------------------------------------


def test_treacy_rice_matches_the_mass_law() -> None:
    """I = c·π/6·d³·h (h = height / diameter, uniform in 0.8–1.0, independent of d), so
    I^(1/3) = (cπ/6)^(1/3)·E[h^(1/3)]·d: intercept 0, that slope in every frame; with 5 %
    intensity noise."""
    c = 50.0
    cfg = DynamicsConfig(diffusion_nm2_per_s=0.05, fusion_probability=0.0, ripening_nm3_per_s=0.2)
    truth = _simulate(cfg, frames=10, n=80, seed=0, diameter_sd_nm=0.8)
    rows = ground_truth_rows(truth, intensity_per_nm3=c)
    rng = np.random.default_rng(1)
    intensity = rows["intensity"] * (1 + 0.05 * rng.standard_normal(len(rows)))
    e_h13 = 0.75 * (1.0 - 0.8 ** (4 / 3)) / 0.2  # E[h^(1/3)], h ~ U(0.8, 1)
    expected = (c * np.pi / 6) ** (1 / 3) * e_h13
    fit = treacy_rice(rows["diameter_nm"], intensity)
    print(
        f"\nTreacy-Rice: slope {fit.slope:.4f} ± {fit.slope_se:.4f} (truth {expected:.4f}),"
        f" intercept {fit.intercept:.4f} ± {fit.intercept_se:.4f} (truth 0), n {fit.n}"
    )
    assert fit.n == len(rows)
    assert fit.slope == pytest.approx(expected, rel=0.015)
    assert abs(fit.intercept) < 3 * fit.intercept_se
    assert abs(fit.intercept) < 0.02 * expected * 3.0  # < 2 % of I^(1/3) at 3 nm
    assert fit.r2 > 0.97
    per = treacy_rice_per_frame(rows["frame"], rows["diameter_nm"], intensity)
    assert per["frame"].tolist() == list(range(10)) and (per["n"] > 50).all()
    assert np.std(per["slope"]) / np.mean(per["slope"]) < 0.02  # constant slope
    assert np.mean(np.abs(per["intercept"]) < 3 * per["intercept_se"]) >= 0.9
    # A non-volume law (I ∝ d², e.g. monolayer rafts) fails the check: intercept ≠ 0.
    flat = treacy_rice(rows["diameter_nm"], rows["diameter_nm"] ** 2)
    assert flat.intercept > 10 * flat.intercept_se


def test_treacy_rice_per_frame_too_few_particles() -> None:
    per = treacy_rice_per_frame([0, 0, 1, 1, 1, 1, 1], [1, 2, 1, 2, 3, 4, 5], [1, 8] + [1] * 5)
    assert per["n"].tolist() == [2, 5]
    assert np.isnan(per["slope"][0]) and np.isfinite(per["slope"][1])


# -- kinetics ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_true", "k_true"), [(3.0, 0.2), (2.0, 0.05)])
def test_ripening_kinetics_recovered(n_true: float, k_true: float) -> None:
    """Prescribed R̄ⁿ(t) = R̄ⁿ(0) + K t in the simulator (fusions on), 5 % sizing noise per
    particle: K of the fixed-n fit within 10 %, the free exponent within 0.3."""
    cfg = DynamicsConfig(
        frame_interval_s=2.0,
        diffusion_nm2_per_s=0.05,
        fusion_probability=0.5,
        margin_nm=0.0,
        growth_law_exponent=n_true,
        growth_rate_nm_n_per_s=k_true,
    )
    truth = _simulate(cfg, frames=50, n=80, seed=1)
    rows = ground_truth_rows(truth, intensity_per_nm3=1.0)
    rng = np.random.default_rng(2)
    d = rows["diameter_nm"] * (1 + 0.05 * rng.standard_normal(len(rows)))
    s = mean_radius_series(rows["frame"], d, time_s=np.arange(50) * 2.0)
    assert s["time_s"][-1] == 98.0 and s["n"][0] > 60
    assert s["mean_radius_nm"][-1] > 1.6 * s["mean_radius_nm"][0]
    r0_true = rows["diameter_nm"][rows["frame"] == 0].mean() / 2
    w = 1.0 / s["sem_radius_nm"] ** 2
    fixed = ripening_fit(s["time_s"], s["mean_radius_nm"], exponent=n_true, weights=w)
    assert fixed.n_points == 50 and fixed.exponent == n_true and fixed.exponent_se == 0.0
    assert fixed.rate == pytest.approx(k_true, rel=0.10)
    assert abs(fixed.rate - k_true) < 4 * fixed.rate_se
    assert fixed.r0_nm == pytest.approx(r0_true, rel=0.03)
    free = ripening_free_exponent(s["time_s"], s["mean_radius_nm"], weights=w)
    print(
        f"\nkinetics n={n_true}: K {fixed.rate:.4f} ± {fixed.rate_se:.4f} (truth {k_true}),"
        f" free n {free.exponent:.3f} ± {free.exponent_se:.3f}, free K {free.rate:.4f}"
        f" ± {free.rate_se:.4f}, {fixed.n_points} frames"
    )
    assert free.exponent == pytest.approx(n_true, abs=0.3)
    assert abs(free.exponent - n_true) < 3 * free.exponent_se
    assert free.rate == pytest.approx(k_true, rel=0.3)
    assert free.r0_nm == pytest.approx(r0_true, rel=0.03)
    # noise-free truth: exact
    exact = mean_radius_series(rows["frame"], rows["diameter_nm"], time_s=np.arange(50) * 2.0)
    free = ripening_free_exponent(exact["time_s"], exact["mean_radius_nm"])
    assert free.exponent == pytest.approx(n_true, abs=1e-4)
    assert free.rate == pytest.approx(k_true, rel=1e-3)


def test_kinetics_too_few_points() -> None:
    fit = ripening_fit([0.0, 1.0], [1.0, 1.1])
    assert fit.n_points == 2 and np.isnan(fit.rate) and np.isnan(fit.rate_se)
    free = ripening_free_exponent([0.0, 1.0, 2.0], [1.0, 1.1, np.nan])
    assert free.n_points == 2 and np.isnan(free.exponent)


# -- mobility ----------------------------------------------------------------------------------


def test_msd_by_hand_with_gaps() -> None:
    # x = frame (1 nm per frame), y = 0; frames 0, 1, 2, 4 (frame 3 missing)
    m = mean_squared_displacement([4, 0, 2, 1], [4.0, 0.0, 2.0, 1.0], [0.0] * 4, max_lag=5)
    assert m["lag"].tolist() == [1, 2, 3, 4, 5]
    assert m["n_pairs"].tolist() == [2, 2, 1, 1, 0]
    assert m["msd_nm2"][:4].tolist() == [1.0, 4.0, 9.0, 16.0] and np.isnan(m["msd_nm2"][4])


def _noisy_tracks(
    exponent: float, sigma_nm: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cfg = DynamicsConfig(
        frame_interval_s=2.0,
        diffusion_nm2_per_s=0.05,
        reference_diameter_nm=3.0,
        mobility_exponent=exponent,
        fusion_probability=0.0,
        margin_nm=0.0,
    )
    truth = _simulate(cfg, frames=40, n=150, seed=seed, size=200, diameter_sd_nm=0.8)
    rows = ground_truth_rows(truth, intensity_per_nm3=1.0)
    rng = np.random.default_rng(seed + 100)
    x = rows["x"] + sigma_nm / PX_NM * rng.standard_normal(len(rows))
    y = rows["y"] + sigma_nm / PX_NM * rng.standard_normal(len(rows))
    return rows, x, y


def test_diffusion_coefficient_and_localisation_recovered() -> None:
    """D = 0.05 nm²/s for all (mobility exponent 0), σ_loc = 0.2 nm per axis: mean D within
    15 %, σ_loc within 15 %, and the per-track se of D matches the scatter of D."""
    rows, x, y = _noisy_tracks(0.0, 0.2, seed=3)
    fits = diffusion_coefficients(
        rows["frame"],
        rows["id"],
        x,
        y,
        rows["diameter_nm"],
        pixel_size_nm=PX_NM,
        frame_interval_s=2.0,
        min_positions=39,
    )
    assert len(fits) > 100 and all(f.n_positions >= 39 for f in fits)
    dc = np.array([f.diffusion_nm2_per_s for f in fits])
    se = np.array([f.diffusion_se for f in fits])
    loc = np.array([f.localisation_nm for f in fits])
    print(
        f"\ndiffusion: mean D {dc.mean():.4f} nm²/s (truth 0.05), rms σ_loc"
        f" {np.sqrt(np.mean(loc**2)):.3f} nm (truth 0.2), sd(D) / rms(se)"
        f" {dc.std() / np.sqrt(np.mean(se**2)):.2f}, {len(fits)} tracks"
    )
    assert dc.mean() == pytest.approx(0.05, rel=0.15)
    assert np.sqrt(np.mean(loc**2)) == pytest.approx(0.2, rel=0.15)
    assert 0.8 < dc.std() / np.sqrt(np.mean(se**2)) < 1.25  # honest error bars
    short = diffusion_coefficients(
        rows["frame"],
        rows["id"],
        x,
        y,
        rows["diameter_nm"],
        pixel_size_nm=PX_NM,
        frame_interval_s=2.0,
        min_positions=1000,
    )
    assert short == []


def test_mobility_law_recovered() -> None:
    """D ∝ d^−2 with D(3 nm) = 0.05 nm²/s, σ_loc = 0.1 nm: exponent within 0.3 (and its se),
    D at 3 nm within 15 %."""
    rows, x, y = _noisy_tracks(-2.0, 0.1, seed=4)
    fits = diffusion_coefficients(
        rows["frame"],
        rows["id"],
        x,
        y,
        rows["diameter_nm"],
        pixel_size_nm=PX_NM,
        frame_interval_s=2.0,
        min_positions=20,
    )
    law = mobility_vs_size(fits)
    print(
        f"\nmobility: exponent {law.exponent:.3f} ± {law.exponent_se:.3f} (truth -2),"
        f" D(3 nm) {law.prefactor * 3.0**law.exponent:.4f} (truth 0.05), {law.n} tracks"
    )
    assert law.n > 100
    assert law.exponent == pytest.approx(-2.0, abs=0.3)
    assert abs(law.exponent + 2.0) < 3 * law.exponent_se
    assert law.prefactor * 3.0**law.exponent == pytest.approx(0.05, rel=0.15)


def test_brownian_check_accepts_gaussian_and_rejects_hops() -> None:
    rows, x, y = _noisy_tracks(-2.0, 0.1, seed=5)
    ok = brownian_check(rows["frame"], rows["id"], x, y, pixel_size_nm=PX_NM)
    assert ok["n_steps"] > 5000 and ok["n_tracks"] > 100
    assert ok["p_value"] > 0.01 and abs(ok["excess_kurtosis"]) < 0.2
    # Short tracks (7 steps) of Gaussian steps with per-track sd: still exactly N(0, 1).
    rng = np.random.default_rng(6)
    frame, tid = np.tile(np.arange(8), 1000), np.repeat(np.arange(1000), 8)
    walk = np.cumsum(rng.standard_normal((2, 1000, 8)) * rng.uniform(0.3, 3, (1, 1000, 1)), 2)
    short = brownian_check(frame, tid, walk[0].ravel(), walk[1].ravel())
    assert short["p_value"] > 0.01 and abs(short["excess_kurtosis"]) < 0.2
    # Hopping (Laplace steps, excess kurtosis 3) is not Brownian.
    frame, tid = np.tile(np.arange(30), 100), np.repeat(np.arange(100), 30)
    walk = np.cumsum(rng.laplace(size=(2, 100, 30)), 2)
    hops = brownian_check(frame, tid, walk[0].ravel(), walk[1].ravel())
    print(
        f"\nBrownian: p {ok['p_value']:.3f} kurt {ok['excess_kurtosis']:.3f}; short p"
        f" {short['p_value']:.3f}; hops p {hops['p_value']:.1e} kurt {hops['excess_kurtosis']:.2f}"
    )
    assert hops["p_value"] < 1e-6 and hops["excess_kurtosis"] > 1.5


# -- lineages ----------------------------------------------------------------------------------


def test_track_lengths_and_fusion_counts() -> None:
    t = track_lengths([0, 1, 3, 2, 5], [7, 7, 7, 9, 9])
    assert t["track_id"].tolist() == [7, 9]
    assert t["first_frame"].tolist() == [0, 2] and t["last_frame"].tolist() == [3, 5]
    assert t["n_frames"].tolist() == [3, 2]
    counts = fusion_counts(
        [1, 1, 3, 9, 2], ["fusion", "fusion", "fusion", "fusion", "birth"], n_frames=5
    )
    assert counts.tolist() == [0, 2, 0, 1, 0]


def test_coalescence_share_by_hand() -> None:
    """Tracks 1 (10 nm³) and 2 (4 nm³) fuse at frame 3 into 3 (14 nm³), which ripens to
    16 nm³; track 4 shrinks 5 → 3 nm³: fusion gain 4, growth (16 − 10) + (3 − 5) = 4."""
    rows = [(0, 1, 10), (1, 1, 10), (2, 1, 10), (0, 2, 4), (1, 2, 4), (2, 2, 4)]
    rows += [(3, 3, 14), (4, 3, 15), (5, 3, 16), (0, 4, 5), (5, 4, 3)]
    f, tid, v = (np.array(c) for c in zip(*rows, strict=True))
    d = [_diameter(x) for x in v]
    events = [{"frame": 3, "type": "fusion", "track_ids": "2+1>3", "detail": "{}"}]
    s = coalescence_share(f, tid, d, events)
    assert s["n_survivors"] == 2 and s["n_fusions"] == 1 and s["n_fusion_events"] == 1
    assert s["coalescence_volume_nm3"] == pytest.approx(4.0)
    assert s["growth_volume_nm3"] == pytest.approx(4.0)
    assert s["coalescence_share"] == pytest.approx(1.0)
    assert s["ripening_volume_nm3"] == pytest.approx(0.0, abs=1e-9)


def _true_share(truth: SequenceTruth) -> float:
    """From the simulator's own state: true volumes (π/6 d³ h) of every particle and the exact
    volumes in the fusion details; main line through the larger parent."""
    vol: dict[int, dict[int, float]] = {}
    for t, s in enumerate(truth.states):
        for i, v in zip(s.id.tolist(), s.volume_nm3().tolist(), strict=True):
            vol.setdefault(i, {})[t] = v
    parent: dict[int, tuple[int, float]] = {}
    for e in truth.events:
        if e.type == "fusion":
            left, child = e.track_ids.split(">")
            a, b = (int(q) for q in left.split("+"))
            va, vb, _ = e.detail["volumes_nm3"]
            parent[int(child)] = (a if va >= vb else b, min(va, vb))
    gain = growth = 0.0
    last = len(truth.states) - 1
    for i in truth.states[-1].id.tolist():
        k = i
        while k in parent:
            k, minor = parent[k]
            gain += minor
        growth += vol[i][last] - vol[k][min(vol[k])]
    return gain / growth


@pytest.mark.parametrize(
    ("fusion", "ripening", "births"), [(0.7, 0.4, 0.0), (0.7, 0.4, 1.0), (0.7, 0.0, 0.0)]
)
def test_coalescence_share_recovered(fusion: float, ripening: float, births: float) -> None:
    """Fusions + Ostwald ripening (+ nucleation): the share from the visible rows (sphere
    volumes of the diameters) within 0.05 of the simulator's truth; with 2 % sizing noise
    within 0.05 and 3 se. Fusions only: exactly 1."""
    cfg = DynamicsConfig(
        diffusion_nm2_per_s=0.3,
        fusion_gap_nm=0.5,
        fusion_probability=fusion,
        ripening_nm3_per_s=ripening,
        birth_rate_per_frame=births,
        vanish_diameter_nm=1.0,
        margin_nm=0.0,  # every particle of the sample is in the field: the rows see them all
    )
    truth = _simulate(cfg, frames=40, n=250, seed=0, size=200, diameter_sd_nm=0.8)
    rows = ground_truth_rows(truth, intensity_per_nm3=1.0)
    true = _true_share(truth)
    s = coalescence_share(rows["frame"], rows["id"], rows["diameter_nm"], truth.events)
    assert s["n_fusions"] > 80 and s["n_survivors"] > 50
    assert s["coalescence_share"] == pytest.approx(true, abs=0.05)
    if ripening == 0:
        assert true == pytest.approx(1.0) and s["coalescence_share"] == pytest.approx(1.0)
    else:
        assert 0.5 < true < 0.98  # both mechanisms matter
    rng = np.random.default_rng(1)
    d = rows["diameter_nm"] * (1 + 0.02 * rng.standard_normal(len(rows)))
    columns = {  # events as a table of columns, e.g. read from events.csv
        "frame": [e.frame for e in truth.events],
        "type": [e.type for e in truth.events],
        "track_ids": [e.track_ids for e in truth.events],
    }
    noisy = coalescence_share(rows["frame"], rows["id"], d, columns)
    print(
        f"\ncoalescence share (fusion {fusion}, ripening {ripening}, births {births}):"
        f" truth {true:.4f}, rows {s['coalescence_share']:.4f}, 2 % noise"
        f" {noisy['coalescence_share']:.4f} ± {noisy['coalescence_share_se']:.4f},"
        f" {s['n_fusions']} fusions, {s['n_survivors']} survivors"
    )
    assert noisy["coalescence_share"] == pytest.approx(true, abs=0.05)
    assert abs(noisy["coalescence_share"] - true) < 3 * noisy["coalescence_share_se"]
    assert fusion_counts(columns["frame"], columns["type"], n_frames=40).sum() == sum(
        t == "fusion" for t in columns["type"]
    )


def test_ripening_only_has_no_coalescence() -> None:
    cfg = DynamicsConfig(ripening_nm3_per_s=0.4, fusion_probability=0.0, margin_nm=0.0)
    truth = _simulate(cfg, frames=20, n=80, seed=2, diameter_sd_nm=0.8)
    rows = ground_truth_rows(truth, intensity_per_nm3=1.0)
    s = coalescence_share(rows["frame"], rows["id"], rows["diameter_nm"], truth.events)
    assert s["coalescence_share"] == 0.0 and s["growth_volume_nm3"] > 0
    assert s["ripening_volume_nm3"] == s["growth_volume_nm3"]


# -- empty inputs ------------------------------------------------------------------------------


def test_empty_inputs_give_nan_fits_with_n() -> None:
    e: list[float] = []
    assert frame_size_stats(e, e)["n"].size == 0
    assert frame_size_stats(e, e, frames=[0, 1])["n"].tolist() == [0, 0]
    counts, edges = size_histogram(e)
    assert counts.size == 0 and edges.size == 1
    assert treacy_rice(e, e).n == 0 and np.isnan(treacy_rice(e, e).slope)
    assert treacy_rice_per_frame(e, e, e)["frame"].size == 0
    assert mean_radius_series(e, e)["frame"].size == 0
    assert np.isnan(ripening_fit(e, e).rate) and ripening_fit(e, e).n_points == 0
    assert np.isnan(ripening_free_exponent(e, e).exponent)
    assert np.isnan(mean_squared_displacement(e, e, e, max_lag=3)["msd_nm2"]).all()
    assert diffusion_coefficients(e, e, e, e, e, pixel_size_nm=1.0, frame_interval_s=1.0) == []
    law = mobility_vs_size([])
    assert law.n == 0 and np.isnan(law.exponent)
    b = brownian_check(e, e, e, e)
    assert b["n_steps"] == 0 and np.isnan(b["p_value"])
    assert track_lengths(e, e)["track_id"].size == 0
    assert fusion_counts(e, e, n_frames=3).tolist() == [0, 0, 0]
    s = coalescence_share(e, e, e, [])
    assert s["n_survivors"] == 0 and np.isnan(s["coalescence_share"])
