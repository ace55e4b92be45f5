"""Int8 copy of the shipped particle model: loads as a drop-in, follows the float model."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402

from nptrack.cli import main  # noqa: E402
from nptrack.config import SegmentConfig  # noqa: E402
from nptrack.segment.data import DataConfig, simulate_sample  # noqa: E402
from nptrack.segment.infer import ModelFileError, Segmenter  # noqa: E402
from nptrack.segment.quantize import quantize_int8  # noqa: E402
from tests.conftest import REPO  # noqa: E402

SHIPPED = REPO / SegmentConfig().model_path


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "int8.onnx"
    report = quantize_int8(SHIPPED, out, check_tiles=8)
    assert report.path == out and report.size_bytes == out.stat().st_size
    assert report.size_bytes < 0.5 * SHIPPED.stat().st_size  # int8 weights
    assert report.disagreement < 0.01 and "int8" in report.describe()
    return out


def test_int8_model_is_a_drop_in_that_follows_the_float_one(int8_model: Path) -> None:
    graph = onnx.load(int8_model).graph
    assert sum(n.op_type == "QLinearConv" for n in graph.node) >= 10
    float_seg = Segmenter.from_path(SHIPPED, providers="cpu")
    int8_seg = Segmenter.from_path(int8_model, providers="cpu")
    q = int8_seg.metadata["quantization"]
    assert q["calibration_tiles"] == 32 and 0 <= q["disagreement"] < 0.01
    for key in ("pixel_size_nm", "threshold", "normalisation", "model_version"):
        assert int8_seg.metadata[key] == float_seg.metadata[key]
    rng = np.random.default_rng(5)
    cfg = DataConfig(tile_px=256)
    threshold = float(float_seg.metadata["threshold"])
    for modality, contrast in (("adf", "bright"), ("bf", "dark")):
        image, truth = simulate_sample(cfg, rng=rng, modality=modality)
        p_float = float_seg.predict(image, contrast=contrast)
        p_int8 = int8_seg.predict(image, contrast=contrast)
        assert p_int8.shape == image.shape and p_int8.dtype == np.float32
        assert np.mean((p_float >= threshold) != (p_int8 >= threshold)) < 0.02
        d_float = _dice(p_float >= threshold, truth > 0)
        d_int8 = _dice(p_int8 >= threshold, truth > 0)
        assert d_float > 0.5 and abs(d_int8 - d_float) < 0.02


def test_quantized_or_foreign_models_are_refused(int8_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="already quantized"):
        quantize_int8(int8_model, tmp_path / "again.onnx", calibration_tiles=4, check_tiles=2)
    foreign = onnx.load(SHIPPED)
    del foreign.metadata_props[:]
    onnx.save(foreign, tmp_path / "foreign.onnx")
    with pytest.raises(ModelFileError, match="not an nptrack segmentation model"):
        quantize_int8(tmp_path / "foreign.onnx", tmp_path / "x.onnx")


def test_export_model_int8_command(tmp_path: Path) -> None:
    both = CliRunner().invoke(
        main, ["export-model", str(SHIPPED), "--out", str(tmp_path / "x.onnx"), "--int8", "--fp16"]
    )
    assert both.exit_code != 0 and "exclude each other" in both.output
    missing = CliRunner().invoke(
        main, ["export-model", str(tmp_path / "no.onnx"), "--out", "x.onnx", "--int8"]
    )
    assert missing.exit_code != 0 and "model file not found" in missing.output


def test_cpu_sessions_take_the_int8_copy_beside_the_model(
    int8_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    float_path, copy_path = tmp_path / "m.onnx", tmp_path / "m-int8.onnx"
    shutil.copy(SHIPPED, float_path)
    cfg = SegmentConfig(model_path=str(float_path), providers="cpu")
    assert Segmenter.from_config(cfg).model_path == float_path  # no copy yet
    shutil.copy(int8_model, copy_path)
    seg = Segmenter.from_config(cfg)
    assert seg.model_path == copy_path and "quantization" in seg.metadata
    off = cfg.model_copy(update={"int8_on_cpu": False})
    assert Segmenter.from_config(off).model_path == float_path
    # A copy left over from another model version is not used.
    stale = onnx.load(copy_path)
    for prop in stale.metadata_props:
        if prop.key == "nptrack.model_version":
            prop.value = '"0.0.1"'
    onnx.save(stale, copy_path)
    with caplog.at_level(logging.WARNING, logger="nptrack.segment"):
        assert Segmenter.from_config(cfg).model_path == float_path
    assert "stale copy" in caplog.text
    # Nor is a float model that only has the name of a copy.
    shutil.copy(SHIPPED, copy_path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nptrack.segment"):
        assert Segmenter.from_config(cfg).model_path == float_path
    assert "not an int8 copy" in caplog.text
