"""Inference: tiling is seamless, providers fall back to CPU, bad model files are refused."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from nptrack.segment import infer
from nptrack.segment.infer import ModelFileError, Segmenter, normalise, tile_layout

torch = pytest.importorskip("torch")

from tests.segment.test_export import META, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nptrack.segment.export import export_onnx

    path = tmp_path_factory.mktemp("seg") / "tiny.onnx"
    export_onnx(tiny_model(), path, metadata=META)
    return path


def blobs(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = rng.normal(100, 5, shape)
    for y, x in rng.uniform(0, 1, (40, 2)) * shape:
        img += 80 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 30)
    return img.astype(np.float32)


def test_predict_shape_dtype_range(model_path: Path) -> None:
    seg = Segmenter.from_path(model_path, providers="cpu", intra_op_threads=1)
    img = blobs((130, 201))
    for kwargs in ({}, {"pixel_size_nm": (0.13, 0.13)}, {"expected_diameter_px": 9.0}):
        p = seg.predict(img, contrast="bright", **kwargs)
        assert p.shape == img.shape and p.dtype == np.float32
        assert 0.0 <= p.min() and p.max() <= 1.0
    assert seg.last_info["scale_source"].startswith("expected diameter 9")
    with pytest.raises(ValueError, match="contrast"):
        seg.predict(img, contrast="grey")
    with pytest.raises(ValueError, match="2-D"):
        seg.predict(img[None])


def test_tiled_equals_whole_frame(model_path: Path) -> None:
    img = blobs((300, 420), seed=1)
    whole = Segmenter.from_path(model_path, providers="cpu", tile_px=4096)
    tiled = Segmenter.from_path(
        model_path, providers="cpu", tile_px=160, tile_overlap_px=96, tile_batch=3
    )
    a = whole.predict(img, expected_diameter_px=12.0)
    b = tiled.predict(img, expected_diameter_px=12.0)
    m = 16  # away from the image border, where padding differs by construction
    assert np.abs(a - b)[m:-m, m:-m].max() < 1e-3


def test_tile_layout_covers_evenly() -> None:
    starts, size = tile_layout(2048, tile_px=1024, overlap_px=64, multiple=16)
    assert size % 16 == 0 and size <= 1024 and starts[0] == 0 and starts[-1] + size == 2048
    assert all(b - a <= size - 64 for a, b in itertools.pairwise(starts))
    assert tile_layout(500, tile_px=1024, overlap_px=64, multiple=16) == ([0], 500)


def test_normalise_is_robust() -> None:
    img = np.full((64, 64), 10.0, np.float32)
    img[:32] = 20.0
    img[0, 0] = 1e6  # a hot pixel does not set the scale
    x = normalise(img, META["normalisation"])
    assert x.dtype == np.float32 and abs(float(np.median(x[40:]))) < 1e-6
    assert abs(float(np.median(x[1:32])) - 1.0) < 1e-6 and x.max() <= 1.5


def test_auto_falls_back_to_cpu_and_says_so(
    model_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(infer.ort, "get_available_providers", lambda: [infer._CUDA, infer._CPU])
    # No CUDA device: CUDA is not even tried, and the log says why.
    monkeypatch.setattr(infer, "_cuda_device_present", lambda: False)
    with caplog.at_level(logging.INFO, logger="nptrack.segment"):
        seg = Segmenter.from_path(model_path)
    assert seg.providers == ["CPUExecutionProvider"]
    assert "no CUDA device" in caplog.text
    # A device that ORT cannot use (here: no CUDA libraries): tried, falls back, one warning.
    monkeypatch.setattr(infer, "_cuda_device_present", lambda: True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nptrack.segment"):
        seg = Segmenter.from_path(model_path)
    if "CUDAExecutionProvider" in seg.providers:
        pytest.skip("a working CUDA device is present")
    assert seg.providers == ["CPUExecutionProvider"]
    assert "using CPU" in caplog.text
    assert "onnxruntime" not in capfd.readouterr().err  # no ORT error spam
    with pytest.raises(ModelFileError, match="CUDA was requested"):
        Segmenter.from_path(model_path, providers="cuda")


def test_thread_spinning_is_set_as_configured(model_path: Path) -> None:
    from nptrack.config import load_config

    key = "session.intra_op.allow_spinning"

    def spinning(on: bool) -> str:
        session = infer.open_session(model_path, intra_op_spinning=on)
        return session.get_session_options().get_session_config_entry(key)

    assert spinning(False) == "0"
    assert spinning(True) == "1"
    # the configured default: off
    cfg = load_config(None, [f"segment.model_path={model_path}", "segment.int8_on_cpu=false"])
    seg = Segmenter.from_config(cfg.segment)
    assert seg.session.get_session_options().get_session_config_entry(key) == "0"


def _save_graph(path: Path, shape: list[int | str], meta: dict[str, str] | None = None) -> Path:
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (meta or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, path)
    return path


def test_bad_model_files_are_refused(tmp_path: Path) -> None:
    import json

    meta = {"nptrack." + k: json.dumps(v) for k, v in {**META, "input_multiple": 1}.items()}
    cases = {
        "missing.onnx": (None, "not found"),
        "text.onnx": ("garbage", "cannot load as an ONNX model"),
        "nometa.onnx": (["n", 1, "h", "w"], "metadata missing"),
        "rank2.onnx": (["h", "w"], "rank"),
    }
    for name, (content, msg) in cases.items():
        path = tmp_path / name
        if isinstance(content, str):
            path.write_text(content)
        elif content is not None:
            _save_graph(path, content, meta if name == "rank2.onnx" else None)
        with pytest.raises(ModelFileError, match=msg) as err:
            Segmenter.from_path(path, providers="cpu")
        assert "\n" not in str(err.value) and str(path) in str(err.value)
    # the identity model with proper metadata loads (and returns sigmoid of the input)
    ok = _save_graph(tmp_path / "ok.onnx", ["n", 1, "h", "w"], meta)
    assert Segmenter.from_path(ok, providers="cpu").metadata["model_version"] == "test"
