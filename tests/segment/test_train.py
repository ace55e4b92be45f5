"""Training: the loss goes down in a few steps; checkpoints resume; configs are strict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nptrack.config import ConfigError  # noqa: E402
from nptrack.segment.data import DataConfig, load_supports, make_batch  # noqa: E402
from nptrack.segment.model import UNet, UNetSpec, count_parameters  # noqa: E402
from nptrack.segment.train import dice_bce_loss, load_train_config, train  # noqa: E402
from tests.conftest import REPO  # noqa: E402

TINY = [
    "model.depth=3",
    "model.base_width=4",
    "model.max_width=16",
    "model.first_level_convs=1",
    "data.tile_px=64",
    "optim.batch_size=4",
    "optim.val_size=4",
    "optim.val_every=3",
    "optim.checkpoint_every=2",
    "optim.workers=0",
    "optim.warmup_steps=1",
    "optim.threads=2",
]


def test_batches_have_both_sources_and_contrasts() -> None:
    cfg = DataConfig(tile_px=64)
    x, y = make_batch(cfg, 6, rng=np.random.default_rng(3))
    assert x.shape == y.shape == (6, 1, 64, 64) and x.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, 1.0} and y.any()
    assert np.isfinite(x).all() and -1.0 < x.min() and x.max() < 2.0


def test_few_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    model = UNet(UNetSpec(depth=3, base_width=8, max_width=32, first_level_convs=1))
    x, y = (
        torch.from_numpy(a)
        for a in make_batch(DataConfig(tile_px=64), 8, rng=np.random.default_rng(0))
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = dice_bce_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_train_exports_and_resumes(tmp_path: Path) -> None:
    cfg = load_train_config(None, [*TINY, "optim.steps=4"])
    out = tmp_path / "m.onnx"
    first = train(cfg, out, progress=False)
    assert out.is_file() and first.steps == 4 and first.export.max_abs_diff < 1e-4
    assert (tmp_path / "m.onnx.ckpt" / "last.pt").is_file()
    cfg6 = load_train_config(None, [*TINY, "optim.steps=6"])
    again = train(cfg6, out, progress=False)  # resumes at step 4: two more steps
    ck = torch.load(tmp_path / "m.onnx.ckpt" / "last.pt", weights_only=False)
    assert again.steps == 6 and ck["step"] == 6
    assert [h["step"] for h in ck["history"]] == [3, 4, 6]  # validated every 3 and at the end


def test_default_model_is_small() -> None:
    cfg = load_train_config(REPO / "configs" / "train" / "default.toml")
    n = count_parameters(UNet(cfg.spec()))
    assert 300_000 < n < 2_000_000


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (REPO / "configs" / "train").glob("*.toml"))
)
def test_shipped_recipes_load(name: str) -> None:
    """Every recipe in configs/train passes the strict schema (a stale key fails here)."""
    cfg = load_train_config(REPO / "configs" / "train" / name)
    if cfg.data.centres:
        assert cfg.spec().out_channels == 2
    if name == "cores.toml":
        assert cfg.data.centre_core_level == 0.5


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text("[optim]\nstpes = 3\n")
    with pytest.raises(ConfigError, match=r"optim\.stpes"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="contrast"):
        load_train_config(None, ["model.contrast=grey"])


def test_particles_pasted_on_supports(tmp_path: Path) -> None:
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    support = (120 + 20 * rng.standard_normal((90, 120))).clip(0, 255).astype(np.uint8)
    iio.imwrite(tmp_path / "s.png", support)
    cfg = DataConfig(
        tile_px=64, supports_dir=str(tmp_path), supports_fraction=1.0, supports_pixel_size_nm=0.1
    )
    supports = load_supports(cfg)
    assert supports[0].shape == (45, 60)  # resampled to the model's 0.2 nm pixels
    x, y = make_batch(cfg, 3, rng=rng, supports=supports)
    assert x.shape == (3, 1, 64, 64) and y.any()
    with pytest.raises(ValueError, match="no pixel size"):
        load_supports(DataConfig(supports_dir=str(tmp_path)))
