"""Train the U-Net on batches generated on the fly, checkpoint, resume, export to ONNX.

Needs the ``[train]`` extra. ``nptrack train --config configs/train/default.toml --out X.onnx``
calls :func:`train`. Checkpoints (``last.pt`` every ``checkpoint_every`` steps, ``best.pt`` at
the best validation Dice) go to ``<out>.ckpt/`` by default; running the same command again
resumes from ``last.pt``. The validation set is drawn once from its own fixed seed.

``task = "columns"`` (top level of the TOML) trains the atomic-column model instead: K + 1
output classes (background, occupancy 1..K) on simulated atomic-resolution tiles (the
``[columns]`` table, :class:`nptrack.segment.data.ColumnDataConfig`) with a spatially weighted
soft cross-entropy (:func:`column_loss`); the best checkpoint is the one with the best
validation ``score`` (see :func:`_evaluate_columns`) and is kept under the same ``best_dice``
checkpoint key.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch.nn import functional as F
from tqdm import tqdm

from nptrack.config import ConfigError, apply_overrides
from nptrack.segment.data import (
    COLUMN_NORMALISATION,
    NORMALISATION,
    ColumnDataConfig,
    DataConfig,
    load_supports,
    make_batch,
    make_column_batch,
)
from nptrack.segment.export import (
    CHECKPOINT_FORMAT,
    ExportReport,
    export_onnx,
    extend_head,
    import_onnx,
    load_checkpoint,
)
from nptrack.segment.model import UNet, UNetSpec, count_parameters, widen

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainResult",
    "centre_loss",
    "column_loss",
    "dice_bce_loss",
    "dome_cores",
    "load_train_config",
    "marker_f1",
    "train",
    "validation_set",
]

log = logging.getLogger("nptrack.segment")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    """Architecture (see :class:`nptrack.segment.model.UNetSpec`) and what goes in the file."""

    depth: int = Field(5, ge=2, le=7)
    base_width: int = Field(12, ge=2)
    max_width: int = Field(128, ge=2)
    first_level_convs: int = Field(1, ge=1, le=2)
    level_widths: list[int] | None = Field(
        None, description="channels per level (depth values); replaces base/max_width"
    )
    version: str = "1.0.0"
    contrast: str = Field("both", pattern="^(bright|dark|both)$")
    typical_diameter_px: float = Field(20.0, gt=0, description="scale target without px size")


class OptimConfig(_Section):
    """Optimisation, validation and checkpointing."""

    steps: int = Field(3000, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    bce_weight: float = Field(1.0, ge=0)
    dice_weight: float = Field(1.0, ge=0)
    centre_weight: float = Field(1.0, ge=0, description="loss weight of the centre channel")
    centre_dice_weight: float = Field(
        1.0, ge=0, description="soft-Dice weight within the centre loss; 0: BCE only (regression)"
    )
    head_lr_factor: float = Field(
        1.0, gt=0, description="learning rate of the output convolution over the others'"
    )
    seed: int = 0
    val_seed: int = 12345
    val_size: int = Field(48, ge=1)
    val_every: int = Field(250, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    threads: int = Field(2, ge=1, description="torch threads")
    workers: int = Field(1, ge=0, description="processes generating batches")
    max_minutes: float | None = Field(
        None, gt=0, description="stop (and export) after this; the lr schedule follows it"
    )


class TrainConfig(_Section):
    """A training run: ``task`` and the ``[model]``, ``[data]`` (particles), ``[columns]``
    (atomic columns) and ``[optim]`` tables of a TOML file."""

    task: Literal["particles", "columns"] = "particles"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    columns: ColumnDataConfig = ColumnDataConfig()
    optim: OptimConfig = OptimConfig()

    def spec(self) -> UNetSpec:
        m = self.model
        out = self.columns.n_classes + 1 if self.task == "columns" else 1 + self.data.centres
        widths = tuple(m.level_widths) if m.level_widths is not None else None
        try:
            return UNetSpec(m.depth, m.base_width, m.max_width, m.first_level_convs, out, widths)
        except ValueError as exc:
            raise ConfigError(f"[model] {exc}") from None


# Core levels tried on the validation set; the best becomes the exported centre_threshold.
CENTRE_CORE_LEVELS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Dynamics of the dome maxima tried (a regressed centre map, optim.centre_dice_weight = 0);
# the best becomes the exported centre_dynamic.
CENTRE_DYNAMICS: tuple[float, ...] = (0.03, 0.05, 0.1, 0.15, 0.2, 0.3)


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a training TOML (defaults when None) with ``section.key=value`` overrides.

    Raises
    ------
    ConfigError
        One line naming the file and key.
    """
    data: dict[str, Any] = {}
    origin = "training defaults"
    if path is not None:
        origin = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if overrides:
        apply_overrides(data, overrides)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{origin}: key '{key}': {err['msg']}") from None


def dice_bce_loss(
    logits: torch.Tensor, target: torch.Tensor, *, bce_weight: float = 1.0, dice_weight: float = 1.0
) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice loss (1 − Dice over the whole batch).

    Dice counts every particle pixel equally whatever the share of background, which keeps
    small, sparse particles from being drowned by the background term of the BCE.

    Parameters
    ----------
    logits : Tensor, shape (N, 1, H, W)
    target : Tensor, shape (N, 1, H, W) or (N, 2, H, W)
        The mask; a second channel, when present, weights the BCE per pixel (the lines
        between touching particles of :func:`nptrack.segment.data.separation_target`).
    """
    weight = target[:, 1:2] if target.shape[1] > 1 else None
    target = target[:, 0:1]
    if weight is None:
        bce = F.binary_cross_entropy_with_logits(logits, target)
    else:
        bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum()
        bce = bce / weight.sum()
    p = torch.sigmoid(logits)
    dice = (2 * (p * target).sum() + 1.0) / (p.sum() + target.sum() + 1.0)
    return bce_weight * bce + dice_weight * (1 - dice)


def centre_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    centre_weight: float = 1.0,
    centre_dice_weight: float = 1.0,
) -> torch.Tensor:
    """:func:`dice_bce_loss` of the mask plus that of the centre channel.

    The centre target is either continuous (1 at a particle's inner point, 0 at its outline)
    or its binary cores (``data.centre_core_level``). On the continuous map the soft Dice is
    largest for a prediction of 1 wherever the target is well above 0, so it teaches fat
    cores (experiment 4.0.0); on binary cores it is the usual small-object loss. With
    `centre_dice_weight` 0 the continuous map is regressed: the BCE against a target in
    [0, 1] is smallest where the prediction equals it, so the channel learns each particle's
    distance dome, whose maxima (not a level) then mark the particles.

    Parameters
    ----------
    logits : Tensor, shape (N, 2, H, W)
        Mask logits, centre logits.
    target : Tensor, shape (N, 2, H, W)
        Mask, :func:`nptrack.segment.data.centre_target`.
    """
    mask = dice_bce_loss(
        logits[:, 0:1], target[:, 0:1], bce_weight=bce_weight, dice_weight=dice_weight
    )
    centre = dice_bce_loss(logits[:, 1:2], target[:, 1:2], dice_weight=centre_dice_weight)
    return mask + centre_weight * centre


def _freeze_batchnorm(model: UNet) -> None:
    """BatchNorm layers in eval mode: a model imported from ONNX keeps its folded statistics."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def column_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Spatially weighted soft cross-entropy of the atomic-column classes.

    Parameters
    ----------
    logits : Tensor, shape (N, K + 1, H, W)
    target : Tensor, shape (N, 3, H, W)
        Class of the owning column (0 = none), label membership ``g``, pixel weight ``w``
        (see :mod:`nptrack.simulate.columns`): the target is the column's class with
        probability ``g`` and background with ``1 - g``; the loss is
        ``sum(w * CE) / sum(w)``.
    """
    logp = F.log_softmax(logits, dim=1)
    cls, g, w = target[:, 0:1].long(), target[:, 1:2], target[:, 2:3]
    ce = -(1 - g) * logp[:, 0:1] - g * logp.gather(1, cls)
    return (w * ce).sum() / w.sum()


def _column_target(y: np.ndarray, column_weight: float) -> np.ndarray:
    """(class, g) of :func:`make_column_batch` plus the weight channel ``1 + (cw - 1) g``."""
    w = 1 + (column_weight - 1) * y[:, 1:2]
    return np.concatenate([y, w.astype(np.float32)], axis=1)


def _make(cfg: TrainConfig, n: int, rng: np.random.Generator, supports: Any) -> tuple:
    if cfg.task == "columns":
        x, y = make_column_batch(cfg.columns, n, rng=rng)
        return x, _column_target(y, cfg.columns.column_weight)
    return make_batch(cfg.data, n, rng=rng, supports=supports)


def validation_set(
    cfg: DataConfig | TrainConfig, n: int, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed validation set: ``n`` samples drawn with their own seed (same mix as training)."""
    if isinstance(cfg, TrainConfig):
        supports = load_supports(cfg.data) if cfg.task == "particles" else None
        return _make(cfg, n, np.random.default_rng(seed), supports)
    return make_batch(cfg, n, rng=np.random.default_rng(seed), supports=load_supports(cfg))


class _Batches(torch.utils.data.IterableDataset):
    """Endless batches; each worker process gets its own seed derived from (seed, start step)."""

    def __init__(self, cfg: TrainConfig, batch_size: int, seed: int, start: int) -> None:
        self.cfg, self.batch_size, self.seed, self.start = cfg, batch_size, seed, start

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        info = torch.utils.data.get_worker_info()
        wid = 0 if info is None else info.id
        rng = np.random.default_rng([self.seed, self.start, wid])
        supports = load_supports(self.cfg.data) if self.cfg.task == "particles" else None
        while True:
            yield _make(self.cfg, self.batch_size, rng, supports)


def dome_cores(
    centres: np.ndarray, mask: np.ndarray, *, min_dynamic: float, threshold: float = 0.1
) -> np.ndarray:
    """The cores a regressed centre map marks: the upper half of each piece that
    `split_centres` cuts `mask` into at maxima of at least `min_dynamic` (for `marker_f1`).

    Parameters
    ----------
    centres, mask : ndarray, shape (H, W)
        Predicted centre map in [0, 1] and the particle mask.

    Returns
    -------
    ndarray of bool, shape (H, W)
    """
    from scipy import ndimage as ndi

    from nptrack.measure.split import split_centres

    lab = split_centres(mask, centres, threshold=threshold, min_dynamic=min_dynamic).labels
    n = int(lab.max())
    if n == 0:
        return np.zeros(lab.shape, bool)
    top = np.asarray(ndi.maximum(centres, lab, np.arange(1, n + 1)), np.float32)
    peak = ndi.maximum_position(centres, lab, np.arange(1, n + 1))
    top = np.concatenate([[np.inf], top])
    upper = (lab > 0) & (centres >= 0.5 * top[lab])
    comp, _ = ndi.label(upper, structure=np.ones((3, 3)))
    # one core per piece: the part of its upper half around its highest point
    keep = np.zeros(int(comp.max()) + 1, bool)
    for k, (r, c) in enumerate(peak, start=1):
        if top[k] >= threshold:
            keep[comp[r, c]] = True
    keep[0] = False
    return keep[comp]


@torch.no_grad()
def _evaluate(
    model: UNet, x: np.ndarray, y: np.ndarray, *, domes: bool = False
) -> dict[str, float]:
    model.eval()
    probs = []
    for i in range(0, len(x), 8):
        probs.append(torch.sigmoid(model(torch.from_numpy(x[i : i + 8]))).numpy())
    p = np.concatenate(probs)
    centres = p.shape[1] > 1 and y.shape[1] > 1
    p_mask, y_mask = p[:, 0:1], y[:, 0:1]  # without a separation target's loss weights
    best: dict[str, float] = {}
    for thr in (0.3, 0.4, 0.5, 0.6, 0.7):
        pred = p_mask > thr
        inter, union = float((pred & (y_mask > 0.5)).sum()), float((pred | (y_mask > 0.5)).sum())
        dice = 2 * inter / max(float(pred.sum() + (y_mask > 0.5).sum()), 1.0)
        if dice > best.get("dice", -1):
            best = {"dice": dice, "iou": inter / max(union, 1.0), "threshold": thr}
    if centres:  # the core level is chosen like the threshold: best on the validation set
        core = y[:, 1] > 0.5
        f1s = {lv: marker_f1(p[:, 1] > lv, core) for lv in CENTRE_CORE_LEVELS}
        level = max(f1s, key=f1s.__getitem__)
        best["marker_f1"], best["centre_threshold"] = f1s[level], level
        if domes:  # a regressed map is cut at its maxima: choose their dynamic instead
            pm = p_mask[:, 0] > best["threshold"]
            pairs = list(zip(p[:, 1], pm, strict=True))
            f1d = {
                h: marker_f1(np.stack([dome_cores(c, m, min_dynamic=h) for c, m in pairs]), core)
                for h in CENTRE_DYNAMICS
            }
            h = max(f1d, key=f1d.__getitem__)
            best["marker_f1"], best["centre_dynamic"] = f1d[h], h
        best["score"] = 0.5 * (best["dice"] + best["marker_f1"])
    model.train()
    return best


def marker_f1(predicted: np.ndarray, true: np.ndarray) -> float:
    """F1 of predicted centre cores against true ones: a true core is found when the
    predicted core overlapping it most overlaps it more than any other true core.

    Parameters
    ----------
    predicted, true : ndarray of bool, shape (N, H, W)
        Cores (centre map above 1/2) of each sample.
    """
    from scipy import ndimage as ndi

    tp = n_pred = n_true = 0
    for pm, tm in zip(predicted, true, strict=True):
        pl, n_p = ndi.label(pm, structure=np.ones((3, 3)))
        tl, n_t = ndi.label(tm, structure=np.ones((3, 3)))
        n_pred, n_true = n_pred + n_p, n_true + n_t
        both = (pl > 0) & (tl > 0)
        if not both.any():
            continue
        pairs, counts = np.unique(
            pl[both].astype(np.int64) * (n_t + 1) + tl[both], return_counts=True
        )
        p_id, t_id = pairs // (n_t + 1), pairs % (n_t + 1)
        order = np.argsort(-counts, kind="stable")
        used_p, used_t = set(), set()
        for k in order:  # greedy one-to-one, largest overlaps first
            a, b = int(p_id[k]), int(t_id[k])
            if a not in used_p and b not in used_t:
                used_p.add(a)
                used_t.add(b)
        tp += len(used_t)
    return 2 * tp / max(n_pred + n_true, 1)


@torch.no_grad()
def _evaluate_columns(model: UNet, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pixel scores of the column class map (decided as at inference, see
    :func:`nptrack.segment.columns_infer.decide_classes`): ``exact`` (share of hard-labelled
    column pixels, ``g >= 0.5``, given their exact class), ``within1`` (within one class),
    ``bg`` (share of pixels outside every label, ``g = 0``, given background), ``score`` =
    exact x bg (selects the best step)."""
    from nptrack.segment.columns_infer import decide_classes

    model.eval()
    pred = np.concatenate(
        [
            decide_classes(model(torch.from_numpy(x[i : i + 8])).softmax(1).numpy().swapaxes(0, 1))
            for i in range(0, len(x), 8)
        ]
    ).astype(int)
    model.train()
    cls, g = y[:, 0], y[:, 1]
    col, bg = g >= 0.5, g == 0
    exact = float((pred[col] == cls[col]).mean()) if col.any() else 0.0
    within1 = float((np.abs(pred[col] - cls[col]) <= 1).mean()) if col.any() else 0.0
    background = float((pred[bg] == 0).mean()) if bg.any() else 0.0
    return {"score": exact * background, "exact": exact, "within1": within1, "bg": background}


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`."""

    export: ExportReport
    steps: int
    minutes: float
    val: dict[str, float]
    checkpoint: Path


def _save(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: an interrupt never leaves half a checkpoint


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    init_from: str | Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train, checkpoint, export the best model to `out` (ONNX with metadata).

    Parameters
    ----------
    cfg : TrainConfig
    out : str or Path
        ONNX file to write.
    checkpoint_dir : str or Path, optional
        Default ``<out>.ckpt``; holds ``last.pt`` and ``best.pt``.
    resume : bool
        Continue from ``last.pt`` when present.
    init_from : str or Path, optional
        A checkpoint whose weights start the run (fine-tuning).
    progress : bool
        Show a tqdm bar.
    """
    out = Path(out)
    ckdir = Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.name + ".ckpt")
    ckdir.mkdir(parents=True, exist_ok=True)
    o = cfg.optim
    torch.set_num_threads(o.threads)
    torch.manual_seed(o.seed)
    model = UNet(cfg.spec())
    # The 1x1 output convolution may learn faster: a new output channel (a head extended for
    # centres) starts from the particle channel's weights and must move far at a fine-tuning lr.
    head = list(model.head.parameters())
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.AdamW(
        [{"params": body, "lr_factor": 1.0}, {"params": head, "lr_factor": o.head_lr_factor}],
        lr=o.lr,
        weight_decay=o.weight_decay,
    )

    def lr_at(step: int, elapsed_s: float) -> float:
        """Linear warm-up, then cosine decay to 2 % along whichever budget (steps or
        max_minutes) is being used up faster: a run cut by time still ends annealed."""
        if step < o.warmup_steps:
            return o.lr * (step + 1) / o.warmup_steps
        t = (step - o.warmup_steps) / max(o.steps - o.warmup_steps, 1)
        if o.max_minutes is not None:
            t = max(t, elapsed_s / (60 * o.max_minutes))
        return o.lr * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * min(t, 1.0))))

    step, best_dice, elapsed, history = 0, -1.0, 0.0, []
    frozen_bn = False  # BatchNorm in eval mode throughout (a start from an ONNX file)
    last = ckdir / "last.pt"
    if resume and last.is_file():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, best_dice = ck["step"], ck["best_dice"]
        elapsed, history = ck["elapsed_s"], ck["history"]
        frozen_bn = bool(ck.get("frozen_batchnorm", False))
        log.info("resuming from %s at step %d", last, step)
    elif init_from is not None:
        if Path(init_from).suffix.lower() == ".onnx":
            # The exported weights have BatchNorm folded in: those layers stay frozen.
            init_model, _ = import_onnx(init_from)
            frozen_bn = True
            log.info("imported %s (BatchNorm folded: kept in eval mode)", init_from)
        else:
            init_model, _ = load_checkpoint(init_from)
        if init_model.spec.out_channels < model.spec.out_channels:
            init_model = extend_head(init_model, model.spec.out_channels, seed=o.seed)
            log.info("head extended to %d output channels", model.spec.out_channels)
        if init_model.spec != model.spec:
            try:
                init_model = widen(init_model, model.spec, seed=o.seed)
            except ValueError as exc:
                raise ValueError(
                    f"{init_from}: architecture {init_model.spec} cannot start the config's "
                    f"[model] {model.spec} ({exc})"
                ) from None
            log.info(
                "widened %s from widths %s to %s (same function, Net2WiderNet)",
                init_from,
                init_model.spec.widths(),
                model.spec.widths(),
            )
        model.load_state_dict(init_model.state_dict())
        log.info("initialised from %s", init_from)
    columns = cfg.task == "columns"
    key = "score" if columns or cfg.data.centres else "dice"
    domes = cfg.data.centres and cfg.data.centre_core_level is None and o.centre_dice_weight == 0
    evaluate = _evaluate_columns if columns else partial(_evaluate, domes=domes)
    xv, yv = validation_set(cfg, o.val_size, seed=o.val_seed)
    loader = torch.utils.data.DataLoader(
        _Batches(cfg, o.batch_size, o.seed, step),
        batch_size=None,
        num_workers=o.workers,
        persistent_workers=o.workers > 0,
        prefetch_factor=4 if o.workers > 0 else None,
    )
    n_params = count_parameters(model)
    meta = _metadata(cfg, n_params)

    def payload() -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "spec": cfg.spec().to_dict(),
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "best_dice": best_dice,
            "elapsed_s": elapsed,
            "history": history,
            "frozen_batchnorm": frozen_bn,
            "config": cfg.model_dump(mode="json"),
            "metadata": meta,
        }

    model.train()
    if frozen_bn:
        _freeze_batchnorm(model)
    t0 = time.perf_counter() - elapsed
    bar = tqdm(total=o.steps, initial=step, disable=not progress, desc="train", unit="step")
    batches = iter(loader)
    while step < o.steps:
        x, y = next(batches)
        if columns:
            loss = column_loss(model(torch.as_tensor(x)), torch.as_tensor(y))
        elif cfg.data.centres:
            loss = centre_loss(
                model(torch.as_tensor(x)),
                torch.as_tensor(y),
                bce_weight=o.bce_weight,
                dice_weight=o.dice_weight,
                centre_weight=o.centre_weight,
                centre_dice_weight=o.centre_dice_weight,
            )
        else:
            loss = dice_bce_loss(
                model(torch.as_tensor(x)),
                torch.as_tensor(y),
                bce_weight=o.bce_weight,
                dice_weight=o.dice_weight,
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, time.perf_counter() - t0) * group.get("lr_factor", 1.0)
        opt.step()
        step += 1
        elapsed = time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", best=f"{best_dice:.3f}")
        timeout = o.max_minutes is not None and elapsed > 60 * o.max_minutes
        if step % o.val_every == 0 or step == o.steps or timeout:
            val = evaluate(model, xv, yv)
            if frozen_bn:
                _freeze_batchnorm(model)  # evaluate() put the model back in train mode
            history.append({"step": step, "loss": float(loss.item()), **val})
            if val[key] > best_dice:
                best_dice = val[key]
                if not columns:
                    meta["threshold"] = val["threshold"]
                if "centre_threshold" in val:
                    meta["centre_threshold"] = val["centre_threshold"]
                if "centre_dynamic" in val:
                    meta["centre_dynamic"] = val["centre_dynamic"]
                _save(ckdir / "best.pt", {**payload(), "metadata": dict(meta)})
            log.info("step %d val %s", step, val)
        if step % o.checkpoint_every == 0 or step == o.steps or timeout:
            _save(last, payload())
        if timeout:
            log.warning("stopping at step %d: max_minutes reached", step)
            break
    bar.close()
    best_model, best_ck = load_checkpoint(ckdir / "best.pt")
    meta = dict(best_ck["metadata"])
    val = evaluate(best_model, xv, yv)
    meta["training"] = {
        **meta["training"],
        "steps_done": step,
        "wall_minutes": round(elapsed / 60, 1),
        "val": {k: round(v, 4) for k, v in val.items()},
        "best_step": max(history, key=lambda h: h[key])["step"] if history else step,
    }
    report = export_onnx(best_model, out, metadata=meta)
    return TrainResult(report, step, elapsed / 60, val, ckdir / "best.pt")


def _column_metadata(cfg: TrainConfig, n_params: int) -> dict[str, Any]:
    from nptrack.simulate.columns import CRYSTALS, column_spacing_A

    c = cfg.columns
    return {
        "task": "columns",
        "model_version": cfg.model.version,
        "pixel_size_A": c.pixel_size_A,
        "pixel_size_nm": c.pixel_size_A / 10,
        "contrast": "bright",
        "classes": ["background"] + [str(k) for k in range(1, c.n_classes + 1)],
        "normalisation": COLUMN_NORMALISATION,
        "label_radius_A": c.label_radius_A,
        "crystals": list(c.crystals),
        "column_spacing_A": min(column_spacing_A(CRYSTALS[k]) for k in c.crystals),
        "training": {
            "parameters": n_params,
            "steps": cfg.optim.steps,
            "batch_size": cfg.optim.batch_size,
            "tile_px": c.tile_px,
            "seed": cfg.optim.seed,
            "snr": list(c.snr),
            "diameter_A": list(c.diameter_A),
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
        },
    }


def _metadata(cfg: TrainConfig, n_params: int) -> dict[str, Any]:
    if cfg.task == "columns":
        return _column_metadata(cfg, n_params)
    d = cfg.data
    return {
        "model_version": cfg.model.version,
        "pixel_size_nm": d.pixel_size_nm,
        "contrast": cfg.model.contrast,
        "threshold": 0.5,
        "normalisation": NORMALISATION,
        "typical_diameter_px": cfg.model.typical_diameter_px,
        # Touching particles come out with a background line of 2 x this between them.
        "separation_px": d.separation_px,
        # Channel 1: each particle's centre map; its pixels above centre_threshold (chosen
        # on the validation set) are one core per particle.
        "centres": d.centres,
        "centre_threshold": 0.5,
        "training": {
            "parameters": n_params,
            "steps": cfg.optim.steps,
            "batch_size": cfg.optim.batch_size,
            "tile_px": d.tile_px,
            "seed": cfg.optim.seed,
            "sim_fraction": d.sim_fraction,
            "diameter_nm": list(d.diameter_nm),
            "pixel_size_range": list(d.pixel_size_range),
            "shapes_diameter_px": list(d.shapes_diameter_px),
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
        },
    }
