"""Prescribed ripening kinetics of the simulator: R̄ⁿ(t) = R̄ⁿ(0) + K·t on the visible truth."""

from __future__ import annotations

import numpy as np
import pytest

from nptrack.simulate.dynamics import DynamicsConfig, ground_truth_rows, simulate_population


def _mean_radius(rows: np.ndarray, frames: int) -> np.ndarray:
    return np.array([rows["diameter_nm"][rows["frame"] == t].mean() / 2 for t in range(frames)])


@pytest.mark.parametrize(("exponent", "rate"), [(3.0, 0.4), (2.0, 0.08)])
def test_mean_radius_follows_the_prescribed_law(exponent: float, rate: float) -> None:
    """With fusions, births, drift and ripening all on, the mean radius of the ground-truth
    rows obeys the law to rounding, and the particles really grew (law is not trivial)."""
    cfg = DynamicsConfig(
        frame_interval_s=2.0,
        diffusion_nm2_per_s=0.1,
        ripening_nm3_per_s=0.2,
        fusion_probability=0.5,
        birth_rate_per_frame=1.0,
        drift_nm_per_frame=(0.4, 0.2),
        growth_law_exponent=exponent,
        growth_rate_nm_n_per_s=rate,
    )
    frames = 25
    truth = simulate_population(
        (128, 128),
        pixel_size_nm=0.5,
        frames=frames,
        n_particles=50,
        config=cfg,
        rng=np.random.default_rng(7),
        particle_options={"diameter_nm": 3.0},
    )
    rows = ground_truth_rows(truth, intensity_per_nm3=1.0)
    r = _mean_radius(rows, frames)
    t = np.arange(frames) * cfg.frame_interval_s
    assert r**exponent - r[0] ** exponent == pytest.approx(rate * t, rel=1e-9, abs=1e-9)
    assert r[-1] > 1.3 * r[0]
    assert any(e.type == "fusion" for e in truth.events)


def test_zero_rate_changes_nothing() -> None:
    """K = 0 (default) with another exponent: the same truth as without the option."""
    base = DynamicsConfig(ripening_nm3_per_s=0.3, birth_rate_per_frame=0.5)
    other = base.model_copy(update={"growth_law_exponent": 2.0, "growth_rate_nm_n_per_s": 0.0})

    def rows(cfg: DynamicsConfig) -> np.ndarray:
        truth = simulate_population(
            (96, 96),
            pixel_size_nm=0.5,
            frames=10,
            n_particles=30,
            config=cfg,
            rng=np.random.default_rng(3),
        )
        return ground_truth_rows(truth, intensity_per_nm3=1.0)

    a, b = rows(base), rows(other)
    assert a.tobytes() == b.tobytes()
