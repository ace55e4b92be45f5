"""Net2WiderNet: a trained narrow U-Net starts a wider one that computes the same function."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nptrack.config import ConfigError  # noqa: E402
from nptrack.segment.export import load_checkpoint  # noqa: E402
from nptrack.segment.model import UNet, UNetSpec, count_parameters, widen  # noqa: E402
from nptrack.segment.train import load_train_config, train  # noqa: E402
from tests.segment.test_train import TINY  # noqa: E402


def _trained_like(spec: UNetSpec, seed: int = 0) -> UNet:
    """A network with non-trivial BatchNorm statistics (as after training), in eval mode."""
    torch.manual_seed(seed)
    model = UNet(spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("first_level_convs", [1, 2])
def test_widened_network_computes_the_same_function(first_level_convs: int) -> None:
    narrow = _trained_like(UNetSpec(4, 4, 32, first_level_convs))
    spec = UNetSpec(4, 4, 32, first_level_convs, level_widths=(6, 8, 24, 48))
    wide = widen(narrow, spec, noise=0.0)
    assert wide.spec == spec and [m.out_channels for m in wide.up] == [24, 8, 6]
    assert count_parameters(wide) > 2 * count_parameters(narrow)
    x = torch.randn(2, 1, 48, 64)
    with torch.no_grad():
        ref = narrow(x)
        assert ref.abs().max() > 0.1  # not a trivial function
        np.testing.assert_allclose(wide.eval()(x), ref, atol=1e-4 * float(ref.abs().max()))
        # The noise breaks the copies' symmetry: close to, not equal to, the narrow output.
        noisy = widen(narrow, spec, noise=0.05, seed=1).eval()(x)
    diff = float((noisy - ref).abs().max())
    assert 1e-5 < diff < 0.2 * float(ref.abs().max())


def test_narrowing_or_other_depth_is_refused() -> None:
    model = _trained_like(UNetSpec(3, 8, 32, 1))
    with pytest.raises(ValueError, match="narrow"):
        widen(model, UNetSpec(3, 8, 32, 1, level_widths=(4, 16, 32)))
    with pytest.raises(ValueError, match="depth"):
        widen(model, UNetSpec(4, 8, 64, 1))


def test_level_widths_are_checked_and_stored() -> None:
    spec = UNetSpec(3, 8, 32, 1, level_widths=[8, 24, 40])  # type: ignore[arg-type]
    assert spec.widths() == [8, 24, 40] and UNetSpec(**spec.to_dict()) == spec
    assert "level_widths" not in UNetSpec(3, 8, 32, 1).to_dict()  # older files' keys
    with pytest.raises(ValueError, match="3 positive widths"):
        UNetSpec(3, 8, 32, 1, level_widths=(8, 16))
    with pytest.raises(ConfigError, match=r"\[model\].*3 positive"):
        load_train_config(None, ["model.depth=3", "model.level_widths=[8, 16]"]).spec()


def test_finetune_from_a_narrower_checkpoint_widens_it(tmp_path: Path) -> None:
    narrow_cfg = load_train_config(None, [*TINY, "optim.steps=2"])
    first = train(narrow_cfg, tmp_path / "narrow.onnx", progress=False)
    narrow, _ = load_checkpoint(first.checkpoint)
    wide_cfg = load_train_config(
        None, [*TINY, "optim.steps=1", "optim.lr=1e-9", "model.level_widths=[6, 12, 24]"]
    )
    second = train(wide_cfg, tmp_path / "wide.onnx", init_from=first.checkpoint, progress=False)
    wide, ck = load_checkpoint(second.checkpoint)
    assert ck["spec"]["level_widths"] == [6, 12, 24] and wide.spec.widths() == [6, 12, 24]
    # One step at a vanishing learning rate: the wide model still does what the narrow one did
    # (up to the symmetry-breaking noise and one BatchNorm statistics update).
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        a, b = narrow(x), wide(x)
    assert float(torch.corrcoef(torch.stack([a.ravel(), b.ravel()]))[0, 1]) > 0.95
