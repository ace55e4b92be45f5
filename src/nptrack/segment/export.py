"""Export a trained U-Net to ONNX with its metadata, and check it against torch.

Needs the ``[train]`` extra (torch, onnx). The file carries everything inference needs as
``nptrack.*`` metadata entries (JSON values): model version, the pixel size in nm the model
expects, the contrast it was trained for, the decision threshold, the input normalisation, the
input multiple, the typical particle diameter in model pixels, the architecture and a training
summary. Parity with torch is measured on random inputs with ONNX Runtime on CPU.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from nptrack.segment.infer import METADATA_PREFIX, ModelFileError, read_metadata
from nptrack.segment.model import UNet, UNetSpec

__all__ = [
    "CHECKPOINT_FORMAT",
    "ExportReport",
    "convert_to_fp16",
    "export_checkpoint",
    "export_onnx",
    "import_onnx",
    "load_checkpoint",
]

CHECKPOINT_FORMAT = "nptrack-checkpoint/1"
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 5e-2  # on logits; fp16 keeps ~3 significant digits


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote: path, size in bytes, precision, parity."""

    path: Path
    size_bytes: int
    fp16: bool
    max_abs_diff: float
    tolerance: float

    def describe(self) -> str:
        prec = "fp16" if self.fp16 else "fp32"
        return (
            f"{self.path}: {self.size_bytes / 1e6:.2f} MB {prec}; torch vs ONNX Runtime max |Δ| "
            f"= {self.max_abs_diff:.2e} (tolerance {self.tolerance:.0e})"
        )


def _to_onnx_bytes(model: UNet, opset: int) -> bytes:
    buf = io.BytesIO()
    m = model.spec.multiple
    with warnings.catch_warnings():
        # torch >= 2.9 nudges towards the dynamo exporter; the TorchScript one is exact here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 4 * m, 4 * m),),
            buf,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
            opset_version=opset,
            dynamo=False,
        )
    return buf.getvalue()


def convert_to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and arithmetic in float16, input and output kept float32 (casts added).

    Enough for the plain conv/ReLU/pool graph of :class:`UNet`; like onnxconverter-common's
    ``convert_float_to_float16(model, keep_io_types=True)`` without the dependency.
    """
    g = proto.graph
    (inp,), (out,) = g.input, g.output
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    for node in g.node:
        if node.op_type == "Constant":
            raise ValueError("fp16 conversion: Constant nodes are not supported")
        node.input[:] = [f"{inp.name}_fp16" if i == inp.name else i for i in node.input]
        node.output[:] = [f"{out.name}_fp16" if o == out.name else o for o in node.output]
    g.node.insert(0, helper.make_node("Cast", [inp.name], [f"{inp.name}_fp16"], to=10))
    g.node.append(helper.make_node("Cast", [f"{out.name}_fp16"], [out.name], to=1))
    del g.value_info[:]  # float32 shapes inferred at export are stale now
    onnx.checker.check_model(proto)
    return proto


def _parity(model: UNet, data: bytes, seed: int) -> float:
    """Max |torch − ORT| of the logits on random inputs of two shapes and batch sizes."""
    rng = np.random.default_rng(seed)
    m = model.spec.multiple
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    worst = 0.0
    for shape in ((1, 1, 4 * m, 6 * m), (2, 1, 8 * m, 5 * m)):
        x = rng.uniform(-0.5, 1.5, shape).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = sess.run(None, {"image": x})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def export_onnx(
    model: UNet,
    out: str | Path,
    *,
    metadata: dict[str, Any],
    fp16: bool = False,
    opset: int = 17,
    seed: int = 0,
) -> ExportReport:
    """Write `model` to `out` as ONNX with ``nptrack.*`` metadata and check parity.

    Parameters
    ----------
    model : UNet
        Put in eval mode (BatchNorm uses its running statistics; folded by ONNX Runtime).
    out : str or Path
    metadata : dict
        Must hold every key of :data:`nptrack.segment.infer.REQUIRED_METADATA` (or, with
        ``"task": "columns"``, of :data:`nptrack.segment.columns_infer.REQUIRED_COLUMN_METADATA`);
        values are stored as JSON.
    fp16 : bool
        Float16 weights and arithmetic (for GPU inference); input/output stay float32.
    opset : int
    seed : int
        Seed of the random parity inputs.

    Raises
    ------
    ModelFileError
        Missing metadata, or parity worse than 1e-4 (fp32) / 5e-2 (fp16).
    """
    model = model.eval()
    meta = {"input_multiple": model.spec.multiple, "architecture": model.spec.to_dict()}
    meta.update(metadata)
    encoded = {METADATA_PREFIX + k: json.dumps(v) for k, v in meta.items()}
    columns = meta.get("task") == "columns"
    if columns:  # the same checks as at load time
        from nptrack.segment.columns_infer import read_column_metadata

        read_column_metadata(encoded, origin=str(out))
    else:
        read_metadata(encoded, origin=str(out))
    proto = onnx.load_from_string(_to_onnx_bytes(model, opset))
    if fp16:
        proto = convert_to_fp16(proto)
    del proto.metadata_props[:]
    for key, value in sorted(encoded.items()):
        proto.metadata_props.add(key=key, value=value)
    kind = "atomic-column class logits" if columns else "particle logits"
    proto.doc_string = f"nptrack U-Net {meta['model_version']} ({kind})"
    data = proto.SerializeToString()
    diff = _parity(model, data, seed)
    tol = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    if not diff < tol:
        raise ModelFileError(f"{out}: torch vs ONNX Runtime max |Δ| {diff:.2e} exceeds {tol:.0e}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return ExportReport(out, len(data), fp16, diff, tol)


def load_checkpoint(path: str | Path) -> tuple[UNet, dict[str, Any]]:
    """A model and its checkpoint dictionary from a training checkpoint (``.pt``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelFileError(f"{path}: not a torch checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path}: not an nptrack training checkpoint")
    model = UNet(UNetSpec(**ckpt["spec"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    fp16: bool = False,
    metadata: dict[str, Any] | None = None,
) -> ExportReport:
    """Export a training checkpoint; its stored metadata, updated by `metadata`, go in."""
    model, ckpt = load_checkpoint(checkpoint)
    meta = dict(ckpt.get("metadata", {}))
    meta.update(metadata or {})
    return export_onnx(model, out, metadata=meta, fp16=fp16)


def _forward_order(model: UNet) -> list[torch.nn.Module]:
    """Conv and transposed-conv modules in the order :meth:`UNet.forward` runs them (the
    order of the exported graph's nodes)."""
    convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    order: list[torch.nn.Module] = []
    for block in model.down:
        order += [m for m in block if isinstance(m, convs)]
    for up, dec in zip(model.up, model.dec, strict=True):
        order.append(up)
        order += [m for m in dec if isinstance(m, convs)]
    order.append(model.head)
    return order


def import_onnx(path: str | Path) -> tuple[UNet, dict[str, Any]]:
    """A torch model computing what an exported particle model computes, and its metadata.

    Export folds each BatchNorm into the convolution before it; here the folded weights go
    back into the convolutions and the BatchNorm layers become the identity plus the folded
    bias (running mean 0, running variance 1 − eps, scale 1). Fine-tune such a model with
    its BatchNorm layers kept in eval mode (:func:`nptrack.segment.train.train` does so for
    an ONNX start), or the first batches' statistics would replace those folded in.

    Raises
    ------
    ModelFileError
        Not a model of this project, or its graph does not match its stored architecture.
    """
    path = Path(path)
    proto = onnx.load(str(path))
    meta = read_metadata({p.key: p.value for p in proto.metadata_props}, origin=str(path))
    arch = meta.get("architecture")
    if not isinstance(arch, dict):
        raise ModelFileError(f"{path}: no architecture in the metadata")
    model = UNet(UNetSpec(**arch)).eval()
    weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    nodes = [n for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    modules = _forward_order(model)
    if len(nodes) != len(modules):
        raise ModelFileError(
            f"{path}: {len(nodes)} convolutions in the graph, {len(modules)} in its architecture"
        )
    bns = {}  # conv -> the BatchNorm after it
    for seq in [*model.down, *model.dec]:
        for a, b in zip(list(seq)[:-1], list(seq)[1:], strict=True):
            if isinstance(b, torch.nn.BatchNorm2d):
                bns[id(a)] = b
    with torch.no_grad():
        for node, module in zip(nodes, modules, strict=True):
            w = weights[node.input[1]]
            b = weights[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
            if tuple(w.shape) != tuple(module.weight.shape):
                raise ModelFileError(
                    f"{path}: weight {tuple(w.shape)} where the architecture has "
                    f"{tuple(module.weight.shape)}"
                )
            module.weight.copy_(torch.from_numpy(w.copy()))
            bn = bns.get(id(module))
            if bn is None:
                module.bias.copy_(torch.from_numpy(b.copy()))
                continue
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(b.copy()))
    return model, meta


def extend_head(model: UNet, out_channels: int, *, seed: int = 0) -> UNet:
    """The same network with more output channels; the old ones are kept exactly, the new ones
    start as copies of channel 0 plus small random weights (a centre map starts as the
    particle map, whose inside it has to learn to shrink to cores)."""
    old = model.spec.out_channels
    if out_channels < old:
        raise ValueError(f"cannot shrink the head from {old} to {out_channels} channels")
    spec = UNetSpec(**{**model.spec.to_dict(), "out_channels": out_channels})
    new = UNet(spec)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    new.load_state_dict(state, strict=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(new.head.weight.shape, generator=g) * 1e-2 + model.head.weight[0]
        w[:old] = model.head.weight
        b = model.head.bias[0].repeat(out_channels)
        b[:old] = model.head.bias
        new.head.weight.copy_(w)
        new.head.bias.copy_(b)
    return new.train(model.training)
