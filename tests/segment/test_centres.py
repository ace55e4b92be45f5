"""Centre maps: the training target, the second output channel, the split at its cores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from nptrack.config import MeasureConfig
from nptrack.measure import detect_particles
from nptrack.measure.split import split_centres, split_watershed
from nptrack.segment.data import DataConfig, centre_target, make_batch

torch = pytest.importorskip("torch")

from nptrack.segment.export import export_onnx, extend_head, import_onnx  # noqa: E402
from nptrack.segment.infer import Segmenter  # noqa: E402
from nptrack.segment.train import (  # noqa: E402
    CENTRE_CORE_LEVELS,
    CENTRE_DYNAMICS,
    centre_loss,
    dome_cores,
    load_train_config,
    marker_f1,
    train,
)
from tests.segment.test_export import META, tiny_model  # noqa: E402


def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _overlapping_pair(shape: tuple[int, int] = (48, 64), gap_px: float = 8.0) -> np.ndarray:
    """Two discs of radius 10 px, centres `gap_px` apart (they overlap), the right one on top;
    their union is nearly convex: one distance maximum for the distance split."""
    ids = np.zeros(shape, np.int32)
    ids[_disc(shape, 24, 26, 10)] = 1
    ids[_disc(shape, 24, 26 + gap_px, 10)] = 2
    return ids


def test_centre_target_has_one_core_per_particle() -> None:
    ids = _overlapping_pair()
    ids[_disc(ids.shape, 8, 56, 5) & (ids == 0)] = 3  # a lone small one
    c = centre_target(ids)
    assert c.dtype == np.float32 and c.min() == 0.0 and np.isclose(c.max(), 1.0)
    assert np.all(c[ids == 0] == 0) and np.all(c[ids > 0] > 0)
    for k in (1, 2, 3):  # each particle reaches 1 at its own inner point
        assert np.isclose(c[ids == k].max(), 1.0)
    cores, n = ndi.label(c > 0.5, structure=np.ones((3, 3)))
    assert n == 3
    assert {int(np.unique(ids[cores == j])[0]) for j in range(1, 4)} == {1, 2, 3}
    # The union has a single distance maximum: no distance split would find two particles.
    dist = ndi.distance_transform_edt(ids > 0)
    assert split_watershed(ids > 0).count == 2 and dist.max() > 10  # the pair, the lone one
    # Low where the two meet: the contact line is an outline of both.
    assert c[24, 24] < 0.3 and c[24, 23] < 0.3


def test_centre_target_at_the_frame_edge() -> None:
    """The frame's edge is no outline: a cut particle's map peaks at its visible middle."""
    ids = np.zeros((30, 30), np.int32)
    ids[_disc((30, 30), 15, 0, 8)] = 1  # centre on the left edge
    c = centre_target(ids)
    row = c[15]
    assert row.argmax() == 0 and np.isclose(row[0], 1.0)


def test_batch_with_centres() -> None:
    cfg = DataConfig(tile_px=64, centres=True)
    x, y = make_batch(cfg, 4, rng=np.random.default_rng(1))
    assert x.shape == (4, 1, 64, 64) and y.shape == (4, 2, 64, 64)
    mask, centre = y[:, 0], y[:, 1]
    assert set(np.unique(mask)) <= {0.0, 1.0} and mask.any()
    assert np.all(centre[mask == 0] == 0) and np.all((centre >= 0) & (centre <= 1))
    assert (centre > 0.5).any()
    with pytest.raises(ValueError, match="pick one"):
        DataConfig(centres=True, separation_px=1)


def test_batch_with_binary_cores() -> None:
    """``centre_core_level``: the same samples, the centre map cut at the level."""
    soft = make_batch(DataConfig(tile_px=64, centres=True), 4, rng=np.random.default_rng(3))[1]
    cfg = DataConfig(tile_px=64, centres=True, centre_core_level=0.6)
    y = make_batch(cfg, 4, rng=np.random.default_rng(3))[1]
    np.testing.assert_array_equal(y[:, 0], soft[:, 0])
    np.testing.assert_array_equal(y[:, 1], (soft[:, 1] > 0.6).astype(np.float32))
    assert 0 < y[:, 1].sum() < y[:, 0].sum()
    with pytest.raises(ValueError):
        DataConfig(centres=True, centre_core_level=1.0)


def test_marker_f1_counts_one_to_one() -> None:
    true = np.zeros((1, 20, 40), bool)
    true[0, 5:9, 5:9] = True
    true[0, 5:9, 25:29] = True
    pred = np.zeros_like(true)
    pred[0, 6:9, 6:9] = True  # finds the first
    pred[0, 15:18, 15:18] = True  # spurious
    assert marker_f1(pred, true) == pytest.approx(2 * 1 / (2 + 2))
    assert marker_f1(true, true) == 1.0
    both = np.zeros_like(true)
    both[0, 5:9, 5:29] = True  # one core over both: one of the two found
    assert marker_f1(both, true) == pytest.approx(2 * 1 / (1 + 2))


def test_centre_loss_is_lower_for_the_right_answer() -> None:
    ids = _overlapping_pair((32, 48), gap_px=12)[None]
    mask = (ids > 0).astype(np.float32)
    target = torch.from_numpy(np.stack([mask, centre_target(ids[0])[None]], 1))
    good = torch.logit(target.clamp(0.02, 0.98))
    swapped = good.flip(1)  # mask and centre exchanged
    assert centre_loss(good, target) < 0.6 * centre_loss(swapped, target)


def test_import_onnx_gives_the_exported_function(tmp_path: Path) -> None:
    model = tiny_model(seed=3)
    export_onnx(model, tmp_path / "m.onnx", metadata=META)
    back, meta = import_onnx(tmp_path / "m.onnx")
    assert meta["model_version"] == "test" and back.spec == model.spec
    x = np.random.default_rng(0).uniform(-0.5, 1.5, (2, 1, 24, 32)).astype(np.float32)
    x = torch.from_numpy(x)
    with torch.no_grad():
        assert float((back.eval()(x) - model(x)).abs().max()) < 1e-4
        wide = extend_head(back, 2).eval()
        out = wide(x)
    assert out.shape == (2, 2, 24, 32)
    with torch.no_grad():
        assert torch.equal(out[:, :1], back(x))  # the particle channel is kept exactly
    # The new one starts as the particle channel, a little apart.
    assert 0 < float((out[:, 1] - out[:, 0]).abs().max()) < 0.5
    with pytest.raises(ValueError, match="shrink"):
        extend_head(wide, 1)


def test_finetune_from_onnx_adds_the_centre_channel(tmp_path: Path) -> None:
    """A short run from an exported one-channel model: BatchNorm stays as folded, the file
    written has two channels and says so, and `predict_maps` returns the centre map."""
    base = tiny_model(seed=1)
    export_onnx(base, tmp_path / "base.onnx", metadata=META)
    cfg = load_train_config(
        None,
        [
            "model.depth=3", "model.base_width=4", "model.max_width=16",
            "model.first_level_convs=1", "data.tile_px=32", "data.centres=true",
            "optim.steps=3", "optim.batch_size=2", "optim.val_size=2", "optim.val_every=3",
            "optim.workers=0", "optim.warmup_steps=1", "optim.threads=1",
        ],
    )  # fmt: skip
    result = train(cfg, tmp_path / "c.onnx", init_from=tmp_path / "base.onnx", progress=False)
    assert result.steps == 3 and "marker_f1" in result.val
    assert result.val["centre_threshold"] in CENTRE_CORE_LEVELS
    ck = torch.load(tmp_path / "c.onnx.ckpt" / "last.pt", weights_only=False)
    assert ck["frozen_batchnorm"] is True
    stats = [v for k, v in ck["model"].items() if k.endswith("running_var")]
    assert all(torch.allclose(v, torch.full_like(v, 1 - 1e-5)) for v in stats)  # not updated
    seg = Segmenter.from_path(tmp_path / "c.onnx", providers="cpu")
    assert seg.has_centres and seg.centre_threshold == result.val["centre_threshold"]
    img = np.random.default_rng(0).normal(100, 5, (40, 56)).astype(np.float32)
    prob, centres = seg.predict_maps(img, pixel_size_nm=(0.2, 0.2))
    assert prob.shape == centres.shape == img.shape
    assert np.array_equal(prob, seg.predict(img, pixel_size_nm=(0.2, 0.2)))
    assert not np.array_equal(prob, centres)
    plain = Segmenter.from_path(tmp_path / "base.onnx", providers="cpu")
    assert not plain.has_centres and plain.predict_maps(img)[1] is None


def test_dome_training_chooses_and_exports_a_dynamic(tmp_path: Path) -> None:
    """With the centre channel regressed (no Dice on it), validation chooses the dynamic of
    the maxima, the file says so and the segmenter reads it; the level model has none."""
    base = tiny_model(seed=2)
    export_onnx(base, tmp_path / "base.onnx", metadata=META)
    cfg = load_train_config(
        None,
        [
            "model.depth=3", "model.base_width=4", "model.max_width=16",
            "model.first_level_convs=1", "data.tile_px=32", "data.centres=true",
            "optim.centre_dice_weight=0", "optim.steps=2", "optim.batch_size=2",
            "optim.val_size=2", "optim.val_every=2", "optim.workers=0",
            "optim.warmup_steps=1", "optim.threads=1",
        ],
    )  # fmt: skip
    result = train(cfg, tmp_path / "d.onnx", init_from=tmp_path / "base.onnx", progress=False)
    assert result.val["centre_dynamic"] in CENTRE_DYNAMICS
    seg = Segmenter.from_path(tmp_path / "d.onnx", providers="cpu")
    assert seg.centre_dynamic == result.val["centre_dynamic"]
    assert Segmenter.from_path(tmp_path / "base.onnx", providers="cpu").centre_dynamic is None


def test_dome_cores_are_one_per_particle() -> None:
    ids, domes = _two_pairs_of_domes()
    core = centre_target(ids) > 0.5
    found = dome_cores(domes, ids > 0, min_dynamic=0.05)
    assert marker_f1(found[None], core[None]) == 1.0
    assert ndi.label(found, structure=np.ones((3, 3)))[1] == 4
    merged = dome_cores(domes, ids > 0, min_dynamic=0.2)  # the low pair is one piece
    assert ndi.label(merged, structure=np.ones((3, 3)))[1] == 3
    assert marker_f1(merged[None], core[None]) == pytest.approx(2 * 3 / 7)


def test_split_at_centre_cores() -> None:
    ids = _overlapping_pair()
    lone = _disc(ids.shape, 8, 56, 5) & (ids == 0)
    ids[lone] = 3
    mask = ids > 0
    centres = centre_target(ids)
    res = split_centres(mask, centres)
    assert res.count == 3 and res.separated.sum() == 2
    for k in (1, 2):  # each piece is mostly one particle
        piece = res.labels[ids == k]
        assert np.mean(piece == np.bincount(piece).argmax()) > 0.9
    # One core for the pair: it stays whole even where the distance split would cut it.
    one = centres.copy()
    one[ids == 2] = np.minimum(one[ids == 2], 0.4)
    assert split_centres(mask, one).count == 2
    # No core in a region: the fallback decides, or it stays whole.
    none = np.where(ids == 3, centres, 0.0)
    assert split_centres(mask, none).count == 2
    calls = []

    def fallback(region: np.ndarray, _: np.ndarray | None):
        calls.append(region.sum())
        return split_watershed(region)

    assert split_centres(mask, none, fallback=fallback).count == 2
    assert calls == [int((ids == 1).sum() + (ids == 2).sum())]

    def drops(region: np.ndarray, _: np.ndarray | None):
        return split_watershed(np.zeros_like(region))

    kept = split_centres(mask, none, fallback=drops)  # the region stays, whole
    assert kept.count == 2 and np.array_equal(kept.labels > 0, mask)


def test_detect_particles_uses_the_centres() -> None:
    ids = _overlapping_pair()
    rng = np.random.default_rng(0)
    image = (100 + 5 * rng.standard_normal(ids.shape) + 60 * (ids > 0)).astype(np.float32)
    prob = (ids > 0).astype(np.float32)
    centres = centre_target(ids)
    with_c = detect_particles(prob, image, threshold=0.5, contrast="bright", centres=centres)
    without = detect_particles(prob, image, threshold=0.5, contrast="bright")
    off = detect_particles(
        prob, image, threshold=0.5, contrast="bright", centres=centres,
        config=MeasureConfig(use_centres=False),
    )  # fmt: skip
    assert len(with_c.columns["x"]) == 2 and len(without.columns["x"]) == 1
    assert len(off.columns["x"]) == 1
    # Cores drawn higher than the map reaches: none, so the distance split decides (one).
    high = detect_particles(
        prob, image, threshold=0.5, contrast="bright", centres=0.5 * centres,
        centre_threshold=0.6,
    )  # fmt: skip
    assert len(high.columns["x"]) == 1
    # The config's level, when set, wins over the model's.
    cfg = MeasureConfig(centre_threshold=0.4)
    low = detect_particles(
        prob, image, threshold=0.5, contrast="bright", centres=0.5 * centres,
        centre_threshold=0.6, config=cfg,
    )  # fmt: skip
    assert len(low.columns["x"]) == 2
    xs = np.sort(with_c.columns["x"])
    truth = [np.nonzero(ids == k)[1].mean() for k in (1, 2)]  # the visible parts' centroids
    assert np.allclose(xs, truth, atol=1.0)


def _two_pairs_of_domes() -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping pairs (ids 1-2 and 3-4) and a regressor-like centre map: each dome
    scaled differently (a regressor does not reach 1 everywhere), then blurred by 2 px, so
    that the contact of the high pair (0.25) lies above the peaks of the low one (~0.3)."""
    shape = (48, 128)
    ids = np.zeros(shape, np.int32)
    for k, cx in enumerate((26, 34, 90, 98)):
        ids[_disc(shape, 24, cx, 10)] = k + 1
    scale = np.array([0.0, 0.9, 0.8, 0.45, 0.35], np.float32)
    domes = ndi.gaussian_filter(centre_target(ids) * scale[ids], 2.0)
    return ids, np.where(ids > 0, domes, 0.0).astype(np.float32)


def test_split_at_dome_maxima() -> None:
    """A regressed centre map (domes) is cut at its deep maxima, not at a level."""
    ids, domes = _two_pairs_of_domes()
    mask = ids > 0
    split = split_centres(mask, domes, threshold=0.1, min_dynamic=0.05)
    assert split.count == 4
    for k in (1, 2, 3, 4):  # each piece is mostly one particle's visible pixels
        piece = split.labels[ids == k]
        assert np.bincount(piece).max() / piece.size > 0.85
    # No level draws one core per particle for both pairs at once.
    levels = np.arange(0.05, 0.6, 0.05)
    assert max(split_centres(mask, domes, threshold=float(lv)).count for lv in levels) == 3
    # A maximum shallower than the dynamic is no particle: the low pair's contact is ~0.11
    # under peaks of 0.27-0.30, so a dynamic of 0.2 keeps that pair whole.
    assert split_centres(mask, domes, threshold=0.1, min_dynamic=0.2).count == 3
    # A region whose map stays below the threshold goes to the fallback (or stays whole).
    calls: list[int] = []

    def fallback(region: np.ndarray, _: np.ndarray | None):
        calls.append(int(region.sum()))
        return split_watershed(region)

    faint = split_centres(mask, domes, threshold=0.5, min_dynamic=0.05, fallback=fallback)
    assert len(calls) == 1 and faint.count == 3  # the low pair, kept whole by distance
    assert calls[0] == int(((ids == 3) | (ids == 4)).sum())
    assert split_centres(mask, domes, threshold=0.5, min_dynamic=0.05).count == 3


def test_detect_particles_centre_dynamic_from_model_or_config() -> None:
    ids, domes = _two_pairs_of_domes()
    rng = np.random.default_rng(1)
    image = (100 + 5 * rng.standard_normal(ids.shape) + 60 * (ids > 0)).astype(np.float32)
    prob = (ids > 0).astype(np.float32)
    kw = {"threshold": 0.5, "contrast": "bright", "centres": domes, "centre_threshold": 0.1}
    assert len(detect_particles(prob, image, **kw).columns["x"]) < 4  # level cores merge
    assert len(detect_particles(prob, image, centre_dynamic=0.05, **kw).columns["x"]) == 4
    deep = MeasureConfig(centre_dynamic=0.2)  # the config wins over the model's
    three = detect_particles(prob, image, centre_dynamic=0.05, config=deep, **kw)
    assert len(three.columns["x"]) == 3
