"""Export: ONNX with metadata, torch vs ONNX Runtime parity (fp32 and fp16), checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402

from nptrack.cli import main  # noqa: E402
from nptrack.segment.export import export_onnx, load_checkpoint  # noqa: E402
from nptrack.segment.infer import ModelFileError, Segmenter  # noqa: E402
from nptrack.segment.model import UNet, UNetSpec  # noqa: E402

META = {
    "model_version": "test",
    "pixel_size_nm": 0.2,
    "contrast": "both",
    "threshold": 0.5,
    "normalisation": {"method": "percentile", "low": 1.0, "high": 99.0, "clip": [-0.5, 1.5]},
    "typical_diameter_px": 12.0,
}


def tiny_model(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(UNetSpec(depth=3, base_width=4, max_width=16, first_level_convs=1))
    for m in model.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_export_parity_and_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = export_onnx(tiny_model(), tmp_path / "m.onnx", metadata=META)
    print(report.describe())
    assert report.max_abs_diff < 1e-4
    assert "max |Δ|" in capsys.readouterr().out
    seg = Segmenter.from_path(tmp_path / "m.onnx", providers="cpu")
    assert seg.metadata["pixel_size_nm"] == 0.2
    assert seg.metadata["normalisation"]["method"] == "percentile"
    assert seg.metadata["input_multiple"] == 4
    assert seg.metadata["architecture"]["depth"] == 3
    assert seg.threshold == 0.5
    # dynamic height and width, any batch
    x = np.random.default_rng(0).random((3, 1, 36, 52), dtype=np.float32)
    out = seg.session.run(None, {"image": x})[0]
    assert out.shape == (3, 1, 36, 52)


def test_fp16_export(tmp_path: Path) -> None:
    report = export_onnx(tiny_model(), tmp_path / "h.onnx", metadata=META, fp16=True)
    assert report.fp16 and report.max_abs_diff < 5e-2
    proto = onnx.load(tmp_path / "h.onnx")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    assert report.size_bytes < (tmp_path / "h.onnx").stat().st_size + 1


def test_metadata_is_checked_at_export(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="metadata missing: threshold"):
        meta = {k: v for k, v in META.items() if k != "threshold"}
        export_onnx(tiny_model(), tmp_path / "x.onnx", metadata=meta)


def test_export_model_command(tmp_path: Path) -> None:
    model = tiny_model()
    ckpt = tmp_path / "c.pt"
    torch.save(
        {
            "format": "nptrack-checkpoint/1",
            "spec": model.spec.to_dict(),
            "model": model.state_dict(),
            "metadata": META,
        },
        ckpt,
    )
    loaded, _ = load_checkpoint(ckpt)
    assert loaded.spec == model.spec
    result = CliRunner().invoke(
        main, ["export-model", str(ckpt), "--out", str(tmp_path / "e.onnx")]
    )
    assert result.exit_code == 0, result.output
    assert "max |Δ|" in result.output and (tmp_path / "e.onnx").is_file()
    bad = CliRunner().invoke(main, ["export-model", str(tmp_path / "nope.pt"), "--out", "x.onnx"])
    assert bad.exit_code == 1 and "not found" in bad.output
