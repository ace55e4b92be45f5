"""A small U-Net for particle segmentation (needs the ``[train]`` extra: torch).

One input channel (a normalised micrograph); one output channel of logits (particle vs
background) by default, or ``out_channels`` class logits (atomic-column mode: background and
occupancy classes 1..K). The depth (number of resolution levels, the paper's network has 5) and the
widths are configurable so that the same code gives the small CPU-friendly default and the
paper-sized network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["UNet", "UNetSpec", "count_parameters"]


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
    """

    depth: int = 5
    base_width: int = 16
    max_width: int = 128
    first_level_convs: int = 2
    out_channels: int = 1

    def widths(self) -> list[int]:
        return [min(self.base_width * 2**k, self.max_width) for k in range(self.depth)]

    @property
    def multiple(self) -> int:
        """Height and width of the input must be multiples of this."""
        return 2 ** (self.depth - 1)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


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
