"""Conv4: the four-block convolutional backbone of MAML (Finn et al., 2017) and its successors.

Architecture (Finn et al. 2017, §5.2; the ConvNets of BOIL, Oh et al. 2021, and Sparse-MAML, von Oswald
et al. 2021), four identical blocks then a linear head:

- ``pool: "max"`` (miniImageNet): ``conv3x3 (padding 1, stride 1) -> BatchNorm -> ReLU -> 2x2 max-pool``;
  every block halves the side (floor), 84x84 -> 42 -> 21 -> 10 -> 5, so the head sees ``filters * 5 * 5``
  features (800 for Conv4-32).
- ``pool: "stride"`` (Omniglot, "strided convolutions instead of max-pooling"):
  ``conv3x3 (padding 1, stride 2) -> BatchNorm -> ReLU``; every block maps a side s to ceil(s / 2),
  28x28 -> 14 -> 7 -> 4 -> 2, so the head sees ``filters * 2 * 2`` features (256 for Conv4-64).

Published widths: 32 filters on miniImageNet (MAML, ANIL), 48 (MAML++), 64 on Omniglot (MAML, Reptile) and
in the miniImageNet ConvNets of BOIL and Sparse-MAML. The batch norm is the primitive-op
:class:`~metacli.engine.models.layers.BatchNorm` (batch statistics, exact under ``vmap`` at second order).

Parameter names: ``body.<block>.conv.{weight,bias}``, ``body.<block>.norm.{weight,bias}`` and
``head.{weight,bias}``; ANIL adapts ``head.*`` only, BOIL ``body.*`` only
(:func:`metacli.engine.models.param_group`). Initialisation is PyTorch's default for conv and linear layers,
ones and zeros for the batch-norm scale and offset; ``init: maml`` / ``xavier``: :func:`xavier_init`.

A block computes ``max-pool -> ReLU`` rather than ``ReLU -> max-pool``: the same function, and the same
gradient at every order (:func:`pool_then_act`), with the ReLU and its backward on a quarter of the values.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metacli.engine.config.models import Conv4Config, Pool
from metacli.engine.hvp import Stage
from metacli.engine.models.layers import BatchNorm, pool_then_act
from metacli.errors import SpecError

__all__ = ["BatchNorm", "Conv4", "Conv4Config", "ConvBlock", "Pool", "build", "feature_side"]

N_BLOCKS = 4


def feature_side(side: int, pool: Pool, blocks: int = N_BLOCKS) -> int:
    """Feature-map side after ``blocks`` blocks: floor(s / 2) per max-pool, ceil(s / 2) per stride-2 conv."""
    for _ in range(blocks):
        side = side // 2 if pool == "max" else (side + 1) // 2
    return side


class ConvBlock(nn.Module):
    """``conv3x3 -> BatchNorm -> ReLU -> downsample`` (2x2 max-pool, or none after a stride-2 conv).

    Computed as ``pool -> ReLU`` (:func:`pool_then_act`: the same function and derivatives, less work).
    """

    def __init__(self, c_in: int, c_out: int, pool: Pool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2 if pool == "stride" else 1, padding=1)
        self.norm = BatchNorm(c_out)
        self.pool: nn.Module = nn.MaxPool2d(2) if pool == "max" else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        # ReLU in place on the pooled (or, after a strided conv, the batch-norm) output, which no backward
        # formula reads: the same values and derivatives, one tensor less (as ResBlock._act)
        return pool_then_act(self.pool, torch.relu_, self.norm(self.conv(x)))


class Conv4(nn.Module):
    """Four :class:`ConvBlock` s (``body``) and a linear ``head`` on the flattened features.

    Args:
        in_shape: ``(channels, height, width)`` of one image.
        filters: channels of every conv layer.
        pool: ``"max"`` or ``"stride"`` downsampling.
        out_features: outputs of the head (ways).

    Raises:
        SpecError: for an image too small to keep a 1x1 feature map after four blocks.
    """

    def __init__(self, in_shape: tuple[int, ...], filters: int, pool: Pool, out_features: int) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise SpecError(f"conv4 needs (channels, height, width) inputs, got shape {in_shape}")
        c_in, height, width = in_shape
        h, w = feature_side(height, pool), feature_side(width, pool)
        if h < 1 or w < 1:
            raise SpecError(f"conv4 with max-pooling needs images of at least 16x16, got {height}x{width}")
        blocks = [ConvBlock(c_in if i == 0 else filters, filters, pool) for i in range(N_BLOCKS)]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(filters * h * w, out_features)

    def forward(self, x: Tensor, features_only: bool = False) -> Tensor:
        """Logits, or with ``features_only`` the flattened body output the head reads."""
        z = self.body(x).flatten(1)
        return z if features_only else self.head(z)  # type: ignore[no-any-return]

    def stages(self) -> list[Stage]:
        """The forward pass as a chain (:mod:`metacli.engine.hvp`): the four blocks, each separable by
        output channel (convolution, per-channel batch norm, pooling and ReLU), then the head on the flattened
        maps."""
        blocks = [Stage(f"body.{i}", block, separable=True) for i, block in enumerate(self.body)]
        return [*blocks, Stage("head", self.head, flatten=True)]


def build(cfg: Conv4Config, in_shape: tuple[int, ...], out_features: int) -> Conv4:
    """A :class:`Conv4` for images of ``in_shape`` (channels, height, width), initialised by ``cfg.init``."""
    model = Conv4(in_shape, cfg.filters, cfg.pool, out_features)
    if cfg.init != "torch":
        # the MAML code's Omniglot net (strided convolutions) draws its head from N(0, 1)
        xavier_init(model, normal_head=cfg.init == "maml" and cfg.pool == "stride")
    return model


@torch.no_grad()
def xavier_init(model: Conv4, normal_head: bool) -> None:
    """Xavier-uniform conv weights and zero biases (the MAML code's ``construct_conv_weights``, MAML++'s and
    Reptile's layers); the head Xavier-uniform, or with ``normal_head`` standard
    normal (the MAML code's Omniglot head), zero bias. The batch-norm scale and offset keep ones and zeros."""
    for m in model.body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if normal_head:
        nn.init.normal_(model.head.weight)
    else:
        nn.init.xavier_uniform_(model.head.weight)
    nn.init.zeros_(model.head.bias)
