"""3D shape prior for column occupancy, against the simulator's own truth."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from nptrack.segment.columns_count import count_columns
from nptrack.segment.columns_shape import (
    column_lattice,
    fit_column_lattice,
    fit_shape,
    shape_occupancy,
)
from nptrack.simulate.columns import (
    CRYSTALS,
    ColumnSimConfig,
    column_spacing_A,
    simulate_column_image,
)

CEO2 = CRYSTALS["ceo2_110"]
K = 16


def test_ceo2_110_lattice_and_planes() -> None:
    lat = column_lattice(CEO2)
    a = CEO2.a_A
    assert lat.spacing_A == pytest.approx(column_spacing_A(CEO2), rel=1e-6)
    assert lat.period_A == pytest.approx(a / np.sqrt(2), rel=1e-9)  # Ce along <110>
    fam = np.array(lat.family)
    assert (fam == "111").sum() == 8 and (fam == "100").sum() == 6 and (fam == "base").sum() == 2
    assert np.allclose(lat.plane_step_A[fam == "111"], a / np.sqrt(3))  # d(111)
    assert np.allclose(lat.plane_step_A[fam == "100"], a / 2)  # d(200) of the fcc cations
    # Edge-on (parallel to the beam [110]): 4 of {111}, 2 of {100}.
    edge = np.abs(lat.normals[:, 2]) < 1e-9
    assert edge[fam == "111"].sum() == 4 and edge[fam == "100"].sum() == 2


def _particle(seed: int, **kw) -> tuple[ColumnSimConfig, object]:
    rng = np.random.default_rng(seed)
    cfg = ColumnSimConfig(
        shape_px=(224, 224), diameter_A=float(rng.uniform(15, 40)),
        d100_ratio=float(rng.uniform(1.0, 1.8)), truncation=float(rng.uniform(0, 0.45)),
        facet_jitter=0.08, rotation_deg=float(rng.uniform(0, 360)), drift_shear=0.01,
        drift_stretch=-0.01, tilt_deg=(0.5, -0.3), **kw,
    )  # fmt: skip
    return cfg, simulate_column_image(cfg, rng=rng)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_shape_fit_recovers_every_column_of_a_faceted_particle(seed: int) -> None:
    # Asymmetric truncated octahedra (facet jitter 8 %, random {100} ratio and base cut),
    # rotated, drift-sheared, tilted; positions with 0.3 px of error; each column's own
    # evidence only mildly prefers its truth (0.5 vs 0.05 for every other occupancy).
    cfg, im = _particle(seed, snr=None)
    lat = column_lattice(CEO2)
    c = im.columns
    t = np.minimum(c["occupancy"], K)
    rng = np.random.default_rng(100 + seed)
    xy_A = (np.stack([c["x"], c["y"]], 1) + rng.normal(0, 0.3, (len(t), 2))) * cfg.pixel_size_A
    fit_l = fit_column_lattice(xy_A, lat)
    assert fit_l.on_lattice.all() and fit_l.strain < 0.03
    assert abs((fit_l.rotation_deg - cfg.rotation_deg + 90) % 180 - 90) < 0.5
    log_like = np.full((len(t), K), np.log(0.05))
    log_like[np.arange(len(t)), t - 1] = np.log(0.5)
    shape = fit_shape(fit_l.ij, log_like, lat)
    assert np.array_equal(np.minimum(shape.predicted, K), t)


def test_shape_beats_counting_on_noise_free_counts_with_a_wrong_unit() -> None:
    # Counting at the true positions (no network: flat class probabilities), unit 12 % off:
    # the shape's unit scan and facets put the occupancies back.
    exact_count, exact_shape, n = 0, 0, 0
    for seed in (10, 11, 12):
        cfg, im = _particle(seed, snr=None)
        c = im.columns
        t = np.minimum(c["occupancy"], K)
        xy = np.stack([c["x"], c["y"]], 1)
        flat = np.full((len(t), K), 1.0 / K)
        cnt = count_columns(
            im.image, xy, pixel_size_A=cfg.pixel_size_A, spacing_A=column_spacing_A(CEO2),
            class_probability=flat, method="count",
            prior_occupancy=np.maximum(np.round(1.15 * t), 1).astype(int),
        )  # fmt: skip
        res = shape_occupancy(
            xy, cnt["intensity"], cnt["intensity_sd"], 0.88 * cnt["unit"], flat,
            pixel_size_A=cfg.pixel_size_A, crystal=CEO2, frame_shape=im.image.shape,
        )  # fmt: skip
        assert res["shape_used"].mean() > 0.9
        exact_count += int(np.sum(np.round(cnt["intensity"] / (0.88 * cnt["unit"])) == t))
        exact_shape += int(np.sum(res["occupancy"] == t))
        n += len(t)
    assert exact_shape / n >= 0.9
    assert exact_shape / n >= exact_count / n + 0.3


def test_fallback_to_combined_off_the_lattice() -> None:
    # Columns at random positions (a glass of bright spots, ~ the column density) and the
    # square lattice of Au [100] (2.04 Å spacing) given to the CeO2 [110] model: no shape.
    rng = np.random.default_rng(5)
    for xy in (
        rng.uniform(20, 200, (150, 2)),
        np.stack(np.meshgrid(np.arange(12), np.arange(12)), -1).reshape(-1, 2) * 6.8 + 40,
    ):
        m = len(xy)
        probs = rng.dirichlet(np.ones(K), m)
        unit = 10.0
        i_col = rng.uniform(1, 12, m) * unit
        sd = np.full(m, 2.0)
        res = shape_occupancy(
            xy, i_col, sd, unit, probs, pixel_size_A=0.3, crystal=CEO2, frame_shape=(224, 224)
        )
        from nptrack.segment.columns_count import assign_occupancy

        comb = assign_occupancy(i_col, sd, unit, class_probability=probs)
        assert not res["shape_used"].any()
        assert np.array_equal(res["occupancy"], comb["occupancy"])
        assert np.allclose(res["confidence"], comb["confidence"])
        assert all(not p["used"] for p in res["particles"])
        assert any(p.get("reason") == "not on the lattice" for p in res["particles"])


def test_too_few_columns_fall_back() -> None:
    xy = np.array([[10.0, 10.0], [21.0, 10.0], [10.0, 21.0]])
    probs = np.full((3, K), 1.0 / K)
    res = shape_occupancy(xy, np.array([10.0, 20, 30]), np.ones(3), 10.0, probs,
                          pixel_size_A=0.3, crystal=CEO2)  # fmt: skip
    assert list(res["occupancy"]) == [1, 2, 3] and not res["shape_used"].any()


# --- With the shipped model: held-out frames at SNR 2, and the commands ------------------

MODEL = Path(__file__).resolve().parents[2] / "models" / "nptrack-columns-v1.onnx"
needs_model = pytest.mark.skipif(not MODEL.is_file(), reason="no shipped model")


@needs_model
def test_shape_beats_combined_at_snr_2_on_held_out_frames() -> None:
    pytest.importorskip("onnxruntime")
    from nptrack.segment.columns_frame import columns_of_frame
    from nptrack.segment.columns_infer import ColumnSegmenter, match_columns
    from nptrack.segment.data import column_sample
    from nptrack.segment.train import load_train_config

    seg = ColumnSegmenter.from_path(MODEL, providers="cpu", intra_op_threads=2)
    cfg = load_train_config(Path(__file__).resolve().parents[2] / "configs/train/columns.toml")
    cfg = cfg.columns.model_copy(update={"tile_px": 256, "empty_fraction": 0.0})
    rng = np.random.default_rng(31337)  # neither training, validation, tuning nor the eval
    spacing = column_spacing_A(CEO2)
    err: dict[str, list[np.ndarray]] = {"combined": [], "shape": []}
    for _ in range(8):
        im = column_sample(cfg, rng=rng, snr=2.0)
        cols, _ = columns_of_frame(seg, im.image, pixel_size_A=im.pixel_size_A,
                                   spacing_A=spacing, method="shape")  # fmt: skip
        comb, _ = columns_of_frame(seg, im.image, pixel_size_A=im.pixel_size_A,
                                   spacing_A=spacing, method="combined")  # fmt: skip
        assert np.array_equal(comb["x"], cols["x"])
        txy = np.stack([im.columns["x"], im.columns["y"]], 1)
        ip, it = match_columns(np.stack([cols["x"], cols["y"]], 1), txy,
                               max_distance_px=0.5 * spacing / im.pixel_size_A)  # fmt: skip
        t = np.minimum(im.columns["occupancy"][it], K)
        err["combined"].append(comb["occupancy"][ip] - t)
        err["shape"].append(cols["occupancy"][ip] - t)
    d = {k: np.concatenate(v) for k, v in err.items()}
    exact = {k: float(np.mean(v == 0)) for k, v in d.items()}
    within = {k: float(np.mean(np.abs(v) <= 1)) for k, v in d.items()}
    assert len(d["shape"]) > 300
    assert exact["shape"] >= exact["combined"] + 0.03, exact
    assert within["shape"] >= within["combined"], within


@needs_model
def test_columns_command_and_watch_with_occupancy_shape(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    tifffile = pytest.importorskip("tifffile")
    from click.testing import CliRunner

    from nptrack.cli import main
    from nptrack.pipeline.columns import run_column_session
    from nptrack.pipeline.session import files_source
    from nptrack.simulate.columns import simulate_column_sequence

    cfg = ColumnSimConfig(shape_px=(192, 192), diameter_A=26.0, snr=3.0, rotation_deg=11)
    seq = simulate_column_sequence(cfg, frames=2, events_per_frame=1.0,
                                   rng=np.random.default_rng(3))  # fmt: skip
    paths = []
    for i, fr in enumerate(seq.frames):
        paths.append(tmp_path / f"f{i}.tif")
        tifffile.imwrite(paths[-1], fr.image.astype(np.float32), photometric="minisblack")
    res = CliRunner().invoke(
        main,
        ["columns", *map(str, paths), "--out", str(tmp_path / "c"), "--no-figures",
         "--pixel-size-A", "0.3", "--threads", "2", "--occupancy", "shape"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    import json

    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["occupancy_method"] == "shape"
    assert all(f["particles_fitted"] == 1 for f in summary["shape_per_frame"])
    run_column_session(files_source(paths), tmp_path / "s", method="shape", pixel_size_nm=0.03,
                       intra_op_threads=2)  # fmt: skip
    rows = {}
    for name in ("c", "s"):
        with open(tmp_path / name / "columns.csv", newline="") as fh:
            rows[name] = sorted(
                (r["frame"], r["x"], r["y"], r["occupancy"], r["confidence"])
                for r in csv.DictReader(fh)
            )
    assert rows["c"] == rows["s"] and len(rows["c"]) > 100
    # Occupancy with the shape: mostly exact on these SNR 3 frames.
    with open(tmp_path / "c" / "columns.csv", newline="") as fh:
        got = [r for r in csv.DictReader(fh) if r["frame"] == "0"]
    from nptrack.segment.columns_infer import match_columns

    t = seq.truth["frame"] == 0
    ip, it = match_columns(np.array([[float(r["x"]), float(r["y"])] for r in got]),
                           np.stack([seq.truth["x"][t], seq.truth["y"][t]], 1),
                           max_distance_px=3.0)  # fmt: skip
    occ = np.array([int(r["occupancy"]) for r in got])[ip]
    assert np.mean(np.abs(occ - seq.truth["occupancy"][t][it]) <= 1) >= 0.9
