"""Conv4: the four-block convolutional backbone of MAML (Finn et al., 2017).

Each block is ``conv3x3 -> batch norm -> ReLU -> (2x2 max-pool | stride 2)``, then a linear head.
Omniglot uses 64 filters and stride-2 convolutions; miniImageNet 32 filters and max-pooling.

The batch norm is written from primitive ops, ``(x - mean) / sqrt(var + eps) * gamma + beta`` with
batch statistics, because ``torch.func.vmap`` with second-order gradients through the fused
``F.batch_norm`` gives wrong meta-gradients (measured 0.5-7 % in float64, torch 2.13/2.14,
``docs/reference/maml_family.md`` §5). Statistics are always those of the batch (transductive), as
in every reference implementation; there are no running statistics.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn


class Conv4Config(BaseModel):
    """Four conv blocks with batch norm and a linear head."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    name: Literal["conv4"] = "conv4"
    filters: int = 64
    """Channels of every conv layer (64 Omniglot, 32 miniImageNet)."""
    pool: Literal["max", "stride"] = "stride"
    """Downsampling: 2x2 max-pool (miniImageNet) or stride-2 convolutions (Omniglot)."""


class BatchNorm(nn.Module):
    """Batch norm with batch statistics from primitive ops (exact under vmap at second order)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)  # biased, as F.batch_norm normalises
        shape = [1, -1] + [1] * (x.dim() - 2)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)


class ConvBlock(nn.Module):
    """``conv3x3 -> BatchNorm -> ReLU -> downsample``."""

    def __init__(self, c_in: int, c_out: int, pool: str) -> None:
        super().__init__()
        stride = 2 if pool == "stride" else 1
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.norm = BatchNorm(c_out)
        self.pool = nn.MaxPool2d(2) if pool == "max" else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(torch.relu(self.norm(self.conv(x))))  # type: ignore[no-any-return]


class Conv4(nn.Module):
    """Four :class:`ConvBlock` s (``body``) and a linear ``head``."""

    def __init__(self, in_shape: tuple[int, ...], filters: int, pool: str, out_features: int) -> None:
        super().__init__()
        c_in = in_shape[0]
        self.body = nn.Sequential(*[ConvBlock(c_in if i == 0 else filters, filters, pool) for i in range(4)])
        with torch.no_grad():
            n_feat = self.body(torch.zeros(2, *in_shape)).flatten(1).shape[1]
        self.head = nn.Linear(n_feat, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x).flatten(1))  # type: ignore[no-any-return]


def build(cfg: Conv4Config, in_shape: tuple[int, ...], out_features: int) -> Conv4:
    """A :class:`Conv4` for images of ``in_shape`` = (channels, height, width)."""
    return Conv4(in_shape, cfg.filters, cfg.pool, out_features)
