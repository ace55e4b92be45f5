"""Atomic-column training, export and inference plumbing on tiny models and clean images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nptrack.segment.columns_infer import (  # noqa: E402
    ColumnSegmenter,
    find_columns,
    match_columns,
)
from nptrack.segment.data import COLUMN_NORMALISATION, make_column_batch  # noqa: E402
from nptrack.segment.export import export_onnx, load_checkpoint  # noqa: E402
from nptrack.segment.infer import ModelFileError, Segmenter, normalise  # noqa: E402
from nptrack.segment.model import UNet, UNetSpec  # noqa: E402
from nptrack.segment.train import (  # noqa: E402
    _column_target,
    _metadata,
    column_loss,
    load_train_config,
    train,
)
from nptrack.simulate.columns import ColumnSimConfig, simulate_column_image  # noqa: E402
from tests.conftest import REPO  # noqa: E402

TINY = [
    "model.depth=3",
    "model.base_width=8",
    "model.max_width=16",
    "columns.tile_px=64",
    "columns.n_classes=12",
    "optim.batch_size=2",
    "optim.val_size=2",
    "optim.val_every=2",
    "optim.workers=0",
    "optim.warmup_steps=1",
    "optim.threads=2",
]


def test_old_specs_load_with_one_output_channel() -> None:
    old = {"depth": 3, "base_width": 4, "max_width": 8, "first_level_convs": 1}
    assert UNetSpec(**old).out_channels == 1
    out = UNet(UNetSpec(**old))(torch.zeros(1, 1, 16, 16))
    assert out.shape == (1, 1, 16, 16)
    assert UNet(UNetSpec(**old, out_channels=5))(torch.zeros(2, 1, 16, 16)).shape == (
        2,
        5,
        16,
        16,
    )


def test_column_config_builds_k_plus_one_classes() -> None:
    cfg = load_train_config(REPO / "configs" / "train" / "columns.toml")
    assert cfg.task == "columns" and cfg.spec().out_channels == cfg.columns.n_classes + 1
    assert load_train_config(None).spec().out_channels == 1  # particles unchanged


def test_column_batches_and_loss() -> None:
    cfg = load_train_config(None, ['task="columns"', "columns.tile_px=64"])
    x, y = make_column_batch(cfg.columns, 3, rng=np.random.default_rng(0))
    assert x.shape == (3, 1, 64, 64) and y.shape == (3, 2, 64, 64)
    cls, g = y[:, 0], y[:, 1]
    assert cls.max() <= cfg.columns.n_classes and ((g > 0) == (cls > 0)).all()
    target = torch.from_numpy(_column_target(y, 5.0))
    # a perfect soft prediction scores the entropy of the targets; a uniform one log(K + 1)
    k1 = cfg.columns.n_classes + 1
    onehot = np.zeros((3, k1, 64, 64), np.float32)
    for c in range(k1):
        onehot[:, c] = (cls == c) * g
    onehot[:, 0] += 1 - g
    perfect = column_loss(torch.log(torch.from_numpy(onehot).clamp_min(1e-12)), target).item()
    uniform = column_loss(torch.zeros(3, k1, 64, 64), target).item()
    assert uniform == pytest.approx(np.log(k1), rel=1e-5) and perfect < 0.5 * uniform


def test_few_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    cfg = load_train_config(None, ['task="columns"', "columns.tile_px=64"])
    x, y = make_column_batch(cfg.columns, 6, rng=np.random.default_rng(1))
    x, y = torch.from_numpy(x), torch.from_numpy(_column_target(y, 5.0))
    model = UNet(
        UNetSpec(depth=3, base_width=8, max_width=32, first_level_convs=1, out_channels=17)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = column_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])


def test_train_command_path_exports_a_column_model(tmp_path: Path) -> None:
    cfg = load_train_config(REPO / "configs" / "train" / "columns.toml", [*TINY, "optim.steps=3"])
    out = tmp_path / "c.onnx"
    result = train(cfg, out, progress=False)
    assert result.steps == 3 and {"score", "exact", "bg"} <= set(result.val)
    seg = ColumnSegmenter.from_path(out, providers="cpu")
    assert seg.metadata["classes"] == ["background"] + [str(k) for k in range(1, 13)]
    assert seg.metadata["pixel_size_A"] == 0.3 and seg.metadata["contrast"] == "bright"
    pred = seg.predict(np.random.default_rng(0).poisson(5.0, (70, 90)), pixel_size_A=0.25)
    assert pred.classes.shape == pred.confidence.shape == (70, 90)
    assert pred.probabilities.shape == (13, 70, 90)
    np.testing.assert_allclose(pred.probabilities.sum(0), 1.0, atol=1e-5)
    assert pred.confidence.min() >= 1 / 13 - 1e-6 and pred.confidence.max() <= 1 + 1e-6
    bg = pred.probabilities[0] >= 0.5
    np.testing.assert_array_equal(pred.classes[bg], 0)
    np.testing.assert_array_equal(pred.classes[~bg], pred.probabilities[1:, ~bg].argmax(0) + 1)
    with pytest.raises(ModelFileError, match="atomic-column model"):
        Segmenter.from_path(out)  # the particle segmenter refuses it
    model, _ = load_checkpoint(tmp_path / "c.onnx.ckpt" / "best.pt")
    assert model.spec.out_channels == 13


def test_exported_classes_match_the_labels_of_a_clean_image(tmp_path: Path) -> None:
    """Overfit a tiny model on one noise-free image, export it and read that image back
    through ONNX Runtime: this checks the plumbing end to end (normalisation, class order,
    orientation, tiling, column finding), not generalisation (tools/eval_columns.py does)."""
    sim = ColumnSimConfig(shape_px=(96, 96), diameter_A=18.0, snr=None, n_classes=8)
    im = simulate_column_image(sim, rng=np.random.default_rng(7))
    x = torch.from_numpy(normalise(im.image, COLUMN_NORMALISATION)[None, None])
    y = np.stack([im.owner_class.astype(np.float32), im.membership])[None]
    target = torch.from_numpy(_column_target(y, 5.0))
    torch.manual_seed(0)
    model = UNet(UNetSpec(depth=3, base_width=8, max_width=32, first_level_convs=1, out_channels=9))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = column_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    cfg = load_train_config(None, ['task="columns"', "columns.n_classes=8"])
    out = tmp_path / "clean.onnx"
    export_onnx(model.eval(), out, metadata=_metadata(cfg, 0))
    seg = ColumnSegmenter.from_path(out, providers="cpu", tile_px=64, tile_overlap_px=16)
    pred = seg.predict(im.image)  # tiled (64 px tiles on 96 px): blending is exercised too
    col = im.labels > 0
    assert (pred.classes[col] == im.labels[col]).mean() > 0.9
    assert (pred.classes[im.membership == 0] == 0).mean() > 0.99
    found = find_columns(pred)
    truth = np.stack([im.columns["x"], im.columns["y"]], axis=1)
    ia, ib = match_columns(np.stack([found["x"], found["y"]], axis=1), truth, max_distance_px=5)
    assert len(ib) >= 0.9 * len(truth) and len(ia) >= 0.95 * len(found["x"])
    assert (found["occupancy"][ia] == im.columns["occupancy"][ib]).mean() > 0.9
