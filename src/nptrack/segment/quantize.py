"""Int8 quantization of an exported particle U-Net for CPU inference.

Static quantization with ONNX Runtime's tool: weights int8 per output channel, activations
uint8 with ranges calibrated on simulated training tiles (the model's own input distribution,
so no user data is needed), integer convolutions (``QLinearConv``) that use the VNNI / AVX2
integer units of the acquisition PC's CPU. Input and output stay float32, so the file is a
drop-in replacement read by :class:`nptrack.segment.Segmenter`. Agreement with the float model
is measured on other simulated tiles and stored in the file.

Needs ``onnx`` (the ``[train]`` extra), not torch.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from nptrack.segment.data import DataConfig, make_batch
from nptrack.segment.infer import METADATA_PREFIX, ModelFileError, read_metadata

__all__ = ["QuantizeReport", "quantize_int8"]

# Pixels whose class at the model's threshold may differ from the float model's: beyond this
# the quantized file is refused (v2: 0.1 %).
MAX_DISAGREEMENT = 0.01


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_int8` wrote and how closely it follows the float model."""

    path: Path
    size_bytes: int
    calibration_tiles: int
    max_abs_prob_diff: float
    disagreement: float  # share of pixels classified differently at the model's threshold

    def describe(self) -> str:
        return (
            f"{self.path}: {self.size_bytes / 1e6:.2f} MB int8 (calibrated on "
            f"{self.calibration_tiles} simulated tiles); vs float: max |Δ probability| "
            f"{self.max_abs_prob_diff:.3f}, {100 * self.disagreement:.2f} % of pixels change "
            "class at the threshold"
        )


def _tiles(meta: dict[str, Any], n: int, seed: int, tile_px: int) -> np.ndarray:
    """Normalised simulated tiles at the model's pixel size, as in training."""
    cfg = DataConfig(tile_px=tile_px, pixel_size_nm=float(meta["pixel_size_nm"]))
    x, _ = make_batch(cfg, n, rng=np.random.default_rng(seed))
    return x


def _probabilities(model: str | bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    logits = np.concatenate([sess.run(None, {name: x[i : i + 4]})[0] for i in range(0, len(x), 4)])
    return 1.0 / (1.0 + np.exp(-logits))


def quantize_int8(
    model_path: str | Path,
    out: str | Path,
    *,
    calibration_tiles: int = 32,
    check_tiles: int = 16,
    tile_px: int = 256,
    seed: int = 0,
) -> QuantizeReport:
    """Write an int8 copy of the particle model `model_path` to `out`.

    Parameters
    ----------
    model_path : str or Path
        A float32 nptrack particle model (ONNX with ``nptrack.*`` metadata).
    out : str or Path
    calibration_tiles : int
        Simulated tiles whose activations set the uint8 ranges.
    check_tiles : int
        Other simulated tiles (seed + 1) on which the int8 and float probabilities are compared.
    tile_px : int
        Side of the simulated tiles, px (a multiple of the model's input multiple).
    seed : int

    Returns
    -------
    QuantizeReport

    Raises
    ------
    ModelFileError
        Not an nptrack particle model, already quantized, or more than 1 % of the check pixels
        change class at the model's threshold.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model_path, out = Path(model_path), Path(out)
    proto = onnx.load(model_path)
    entries = {p.key: p.value for p in proto.metadata_props}
    meta = read_metadata(entries, origin=str(model_path))
    if meta.get("task", "particles") != "particles":
        raise ModelFileError(f"{model_path}: int8 export is for particle models only")
    if "quantization" in meta or any(n.op_type == "QLinearConv" for n in proto.graph.node):
        raise ModelFileError(f"{model_path}: already quantized")
    name = proto.graph.input[0].name
    calib = _tiles(meta, calibration_tiles, seed, tile_px)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{name: calib[i : i + 4]} for i in range(0, len(calib), 4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared, staged = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # The tool's recommended pass (ONNX shape inference, graph optimisation); symbolic
        # shape inference cannot resolve the dynamic height and width, nor needs to.
        quant_pre_process(model_path, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared,
            staged,
            _Reader(),
            quant_format=QuantFormat.QOperator,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        quantized = onnx.load(staged)
    check = _tiles(meta, check_tiles, seed + 1, tile_px)
    p_float = _probabilities(str(model_path), check)
    data = quantized.SerializeToString()
    p_int8 = _probabilities(data, check)
    threshold = float(meta["threshold"])
    # The particle channel decides the class (a centre map, channel 1, is a marker level).
    disagreement = float(np.mean((p_float[:, 0] >= threshold) != (p_int8[:, 0] >= threshold)))
    max_diff = float(np.abs(p_float - p_int8).max())
    if disagreement > MAX_DISAGREEMENT:
        raise ModelFileError(
            f"{model_path}: int8 copy changes the class of {100 * disagreement:.1f} % of "
            f"pixels (limit {100 * MAX_DISAGREEMENT:.0f} %); keep the float model"
        )
    quantization = {
        "method": "onnxruntime static, QOperator, int8 weights per channel, uint8 activations",
        "calibration_tiles": calibration_tiles,
        "tile_px": tile_px,
        "seed": seed,
        "max_abs_prob_diff": round(max_diff, 4),
        "disagreement": round(disagreement, 5),
        "onnxruntime": ort.__version__,
    }
    del quantized.metadata_props[:]
    entries = {k: v for k, v in entries.items() if k.startswith(METADATA_PREFIX)}
    entries[METADATA_PREFIX + "quantization"] = json.dumps(quantization)
    for key, value in sorted(entries.items()):
        quantized.metadata_props.add(key=key, value=value)
    quantized.doc_string = f"nptrack U-Net {meta['model_version']} (particle logits, int8)"
    data = quantized.SerializeToString()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return QuantizeReport(out, len(data), calibration_tiles, max_diff, disagreement)
