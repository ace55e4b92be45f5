"""A small U-Net for particle segmentation (needs the ``[train]`` extra: torch).

One input channel (a normalised micrograph); one output channel of logits (particle vs
background) by default, or ``out_channels`` class logits (atomic-column mode: background and
occupancy classes 1..K). The depth (number of resolution levels, the paper's network has 5) and the
widths are configurable so that the same code gives the small CPU-friendly default and the
paper-sized network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["UNet", "UNetSpec", "count_parameters", "widen"]


@dataclass(frozen=True)
class UNetSpec:
    """Architecture of a :class:`UNet`; stored in checkpoints and in the ONNX metadata.

    Attributes
    ----------
    depth : int
        Number of resolution levels (``depth - 1`` poolings); inputs must have a height and
        width divisible by ``2 ** (depth - 1)``.
    base_width : int
        Channels at full resolution; doubled at every level down.
    max_width : int
        Cap on the channels of the deepest levels (keeps the parameter count small).
    first_level_convs : int
        Convolutions at full resolution (1 halves the dominant cost of large frames).
    out_channels : int
        Output logits: 1 (particle vs background) or K + 1 classes (atomic columns).
        Checkpoints and model files written before this field existed hold 1.
    level_widths : tuple of int, optional
        Explicit channels per level (``depth`` values), replacing ``base_width`` doubling and
        ``max_width``: e.g. wide deep levels, where a channel costs 4× less per level down,
        with narrow full-resolution ones, which dominate the cost of large frames.
    """

    depth: int = 5
    base_width: int = 16
    max_width: int = 128
    first_level_convs: int = 2
    out_channels: int = 1
    level_widths: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.level_widths is not None:
            # JSON metadata and checkpoints give a list; equality needs one type.
            object.__setattr__(self, "level_widths", tuple(int(w) for w in self.level_widths))
            if len(self.level_widths) != self.depth or min(self.level_widths) < 1:
                raise ValueError(
                    f"level_widths {list(self.level_widths)} must hold {self.depth} "
                    "positive widths (one per level)"
                )

    def widths(self) -> list[int]:
        if self.level_widths is not None:
            return list(self.level_widths)
        return [min(self.base_width * 2**k, self.max_width) for k in range(self.depth)]

    @property
    def multiple(self) -> int:
        """Height and width of the input must be multiples of this."""
        return 2 ** (self.depth - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["level_widths"] is None:
            del d["level_widths"]  # files stay readable by code that predates the field
        else:
            d["level_widths"] = list(d["level_widths"])
        return d


def _block(c_in: int, c_out: int, n_convs: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(n_convs):
        # bias is redundant before BatchNorm; BN folds into the conv on ONNX export.
        layers += [
            nn.Conv2d(c_in if k == 0 else c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """U-Net: encoder of conv blocks and max-pooling, decoder of transposed convs and skips.

    Parameters
    ----------
    spec : UNetSpec
        Architecture.

    Notes
    -----
    ``forward`` takes ``(N, 1, H, W)`` float32 with ``H`` and ``W`` multiples of
    ``spec.multiple`` and returns logits of shape ``(N, spec.out_channels, H, W)``.
    """

    def __init__(self, spec: UNetSpec | None = None) -> None:
        super().__init__()
        self.spec = spec or UNetSpec()
        if self.spec.depth < 2:
            raise ValueError("UNet depth must be at least 2")
        w = self.spec.widths()
        n0 = self.spec.first_level_convs
        self.down = nn.ModuleList(
            [_block(1, w[0], n0)] + [_block(w[k - 1], w[k]) for k in range(1, len(w))]
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(w[k], w[k - 1], 2, stride=2) for k in range(len(w) - 1, 0, -1)]
        )
        self.dec = nn.ModuleList(
            [_block(2 * w[k - 1], w[k - 1], n0 if k == 1 else 2) for k in range(len(w) - 1, 0, -1)]
        )
        self.head = nn.Conv2d(w[0], self.spec.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _mapping(n_old: int, n_new: int, rng: torch.Generator) -> torch.Tensor:
    """Net2WiderNet channel map: new channel j copies old channel g[j] (identity first)."""
    if n_new < n_old:
        raise ValueError(f"cannot narrow a layer from {n_old} to {n_new} channels")
    extra = torch.randint(0, n_old, (n_new - n_old,), generator=rng)
    return torch.cat([torch.arange(n_old), extra])


def _copy_bn(old: nn.BatchNorm2d, new: nn.BatchNorm2d, g: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name).data.copy_(getattr(old, name).data[g])


def _spread(g: torch.Tensor) -> torch.Tensor:
    """1 / (number of copies) of each new input channel's source: the copies share its weight."""
    return 1.0 / torch.bincount(g)[g].to(torch.float32)


def widen(model: UNet, spec: UNetSpec, *, noise: float = 1e-3, seed: int = 0) -> UNet:
    """A wider U-Net that computes the same function as `model` (Net2WiderNet, Chen et al.
    2016), to start training a bigger network from a trained narrower one.

    Every added channel copies a random existing one (its filters and BatchNorm); the layers
    that read it divide the copied input weights among the copies. A small relative `noise`
    on the copies breaks their symmetry so they can learn apart.

    Parameters
    ----------
    model : UNet
        The trained network (same depth, first-level convs and outputs as `spec`).
    spec : UNetSpec
        The wider architecture; every level at least as wide as in `model`.
    noise : float
        Relative standard deviation of the noise added to copied filters (0: exact copy).
    seed : int
        Seed of the channel choice and noise.

    Returns
    -------
    UNet
        In training mode, like a freshly built one.
    """
    a, b = model.spec, spec
    if (a.depth, a.first_level_convs, a.out_channels) != (
        b.depth,
        b.first_level_convs,
        b.out_channels,
    ):
        raise ValueError(f"cannot widen {a} into {b}: depth, first-level convs or outputs differ")
    rng = torch.Generator().manual_seed(seed)
    w_old, w_new = a.widths(), b.widths()
    maps = [_mapping(o, n, rng) for o, n in zip(w_old, w_new, strict=True)]
    wide = UNet(spec)

    def conv(old: nn.Conv2d | nn.ConvTranspose2d, new: Any, g_in: Any, g_out: Any) -> None:
        w = old.weight.data
        n_out_old = old.weight.shape[1 if isinstance(old, nn.ConvTranspose2d) else 0]
        # Conv2d weights are (out, in, kh, kw); ConvTranspose2d ones (in, out, kh, kw).
        o_ax, i_ax = (1, 0) if isinstance(old, nn.ConvTranspose2d) else (0, 1)
        if g_out is not None:
            w = w.index_select(o_ax, g_out)
        if g_in is not None:
            shape = [1, 1, 1, 1]
            shape[i_ax] = -1
            w = w.index_select(i_ax, g_in) * _spread(g_in).view(shape)
        if g_out is not None and noise > 0:
            copied = torch.zeros(w.shape[o_ax], dtype=torch.bool)
            copied[n_out_old:] = True  # identity part stays exact
            shape = [1, 1, 1, 1]
            shape[o_ax] = -1
            jitter = torch.randn(w.shape, generator=rng) * noise * w.abs().mean()
            w = w + jitter * copied.view(shape)
        new.weight.data.copy_(w)
        if old.bias is not None:
            bias = old.bias.data
            new.bias.data.copy_(bias[g_out] if g_out is not None else bias)

    def block(old: nn.Sequential, new: nn.Sequential, g_in: Any, g_out: Any) -> None:
        convs_old = [m for m in old if isinstance(m, nn.Conv2d)]
        convs_new = [m for m in new if isinstance(m, nn.Conv2d)]
        bns_old = [m for m in old if isinstance(m, nn.BatchNorm2d)]
        bns_new = [m for m in new if isinstance(m, nn.BatchNorm2d)]
        for k, (co, cn, bo, bn) in enumerate(
            zip(convs_old, convs_new, bns_old, bns_new, strict=True)
        ):
            conv(co, cn, g_in if k == 0 else g_out, g_out)
            _copy_bn(bo, bn, g_out)

    with torch.no_grad():
        for k, (old, new) in enumerate(zip(model.down, wide.down, strict=True)):
            block(old, new, None if k == 0 else maps[k - 1], maps[k])
        levels = range(len(w_old) - 1, 0, -1)
        for k, uo, un, do, dn in zip(levels, model.up, wide.up, model.dec, wide.dec, strict=True):
            conv(uo, un, maps[k], maps[k - 1])
            # the decoder reads cat([up (level k-1 channels), skip (level k-1 channels)])
            g_cat = torch.cat([maps[k - 1], maps[k - 1] + w_old[k - 1]])
            block(do, dn, g_cat, maps[k - 1])
        conv(model.head, wide.head, maps[0], None)
    return wide.train()
