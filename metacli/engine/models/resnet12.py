"""ResNet-12: the residual backbone of MetaOptNet, BOIL and Sparse-MAML on miniImageNet.

Architecture (BOIL's, Oh et al. 2021, code HJ-Yoo/BOIL, as reused in Sparse-MAML's code,
Johswald/learning_where_to_learn ``models.py``), four residual blocks of widths
``widths = (64, 160, 320, 640)`` (MetaOptNet; Sparse-MAML ``--big_resnet``) or ``(64, 128, 256, 512)``
(BOIL, Sparse-MAML default), then a global average pool and a linear head::

    block(x) = pool(act(norm3(conv3(act(norm2(conv2(act(norm1(conv1(x))))))) + norm_s(conv_s(x)))))

with ``conv1..3`` 3x3 convolutions (padding 1, stride 1, no bias), ``norm*`` the primitive-op
:class:`~metacli.engine.models.layers.BatchNorm` (batch statistics, exact under ``vmap`` at second order;
no running statistics), ``act`` LeakyReLU (the last one after the residual add), ``conv_s`` the 1x1
shortcut convolution (no bias, every block changes the width) and ``pool`` a 2x2 max-pool (computed before
the last activation: :func:`~metacli.engine.models.layers.pool_then_act`, the same function and derivatives).

Pooling, ``pooling``:

- ``"every_block"`` (default; MetaOptNet ``models/ResNet12_embedding.py``, kjunelee/MetaOptNet): a 2x2
  max-pool after each of the four blocks, 84x84 -> 42 -> 21 -> 10 -> 5, LeakyReLU slope 0.1.
- ``"first_three"`` (BOIL's code, copied into Sparse-MAML ``models.py``, Johswald/learning_where_to_learn):
  2x2 max-pool after blocks 1 and 2, 2x2 max-pool with padding 1 after block 3, none after block 4,
  84x84 -> 42 -> 21 -> 11 -> 11; that code's LeakyReLU is ``nn.LeakyReLU()``, slope 0.01
  (``negative_slope: 0.01`` reproduces it).

The global average pool (BOIL, Sparse-MAML) makes the head ``Linear(widths[-1] -> out)`` whatever the
image size; MetaOptNet instead flattens the 640x5x5 map (``avg_pool=False``) for its SVM/ProtoNet heads.

No DropBlock: Sparse-MAML builds ``ResNet(out_features, big_network)`` with the default ``drop_rate=0``
(its code: "keep_prob < 1 and drop_rate > 0 are NOT supported"), and a random mask would make the
meta-gradient stochastic and break the loop/vmap and finite-difference checks. MetaOptNet trains with
DropBlock (``drop_rate=0.1``, block size 5 on miniImageNet).

Batch-norm parameters are all named ``*.norm*`` (as in Conv4), so a variant that keeps them out of the inner
loop (Sparse-MAML's ``--no_bn_in_inner_loop``, which also covers the shortcut's norm) can select them by name.

Initialisation as Sparse-MAML: Xavier-uniform conv and head weights; no conv biases; batch-norm scales one,
offsets zero; the head bias zero (Sparse-MAML leaves PyTorch's default uniform head bias). MetaOptNet uses
Kaiming-normal (fan-out) conv weights instead.

Parameter names: ``body.<block>.{conv1,conv2,conv3}.weight``,
``body.<block>.{norm1,norm2,norm3}.{weight,bias}``,
``body.<block>.shortcut.conv.weight``, ``body.<block>.shortcut.norm.{weight,bias}``, ``head.{weight,bias}``;
ANIL adapts ``head.*`` only, BOIL ``body.*`` only (:func:`metacli.engine.models.param_group`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from metacli.engine.config.models import Pooling, ResNet12Config
from metacli.engine.models.layers import BatchNorm, pool_then_act
from metacli.errors import SpecError

__all__ = ["Pooling", "ResBlock", "ResNet12", "ResNet12Config", "build", "feature_sides"]

_POOL_PADDINGS: dict[str, tuple[int | None, ...]] = {
    "every_block": (0, 0, 0, 0),
    "first_three": (0, 0, 1, None),
}
"""Padding of the 2x2 max-pool after each block; None: no pool."""


def _pool(padding: int | None) -> nn.Module:
    return nn.Identity() if padding is None else nn.MaxPool2d(2, padding=padding)


def feature_sides(side: int, pooling: Pooling) -> list[int]:
    """Height (or width) of the feature map after each block, for an input of that height (or width)."""
    sides = []
    for pad in _POOL_PADDINGS[pooling]:
        if pad is not None:
            side = (side + 2 * pad) // 2  # floor((side + 2 pad - 2) / 2) + 1
        sides.append(side)
    return sides


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    """3x3 convolution, padding 1, stride 1, no bias (the batch norm that follows has the offset)."""
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)


class ResBlock(nn.Module):
    """Three ``conv3x3 -> BatchNorm -> LeakyReLU``, a 1x1-conv shortcut, the last activation after the add.

    Args:
        c_in: input channels.
        c_out: channels of every conv in the block and of the shortcut.
        negative_slope: LeakyReLU slope.
        pool: downsampling applied last (2x2 max-pool or identity).
    """

    def __init__(self, c_in: int, c_out: int, negative_slope: float, pool: nn.Module) -> None:
        super().__init__()
        self.conv1, self.norm1 = conv3x3(c_in, c_out), BatchNorm(c_out)
        self.conv2, self.norm2 = conv3x3(c_out, c_out), BatchNorm(c_out)
        self.conv3, self.norm3 = conv3x3(c_out, c_out), BatchNorm(c_out)
        shortcut = OrderedDict(conv=nn.Conv2d(c_in, c_out, 1, bias=False), norm=BatchNorm(c_out))
        self.shortcut = nn.Sequential(shortcut)
        self.pool = pool
        self.negative_slope = negative_slope

    def _act(self, x: Tensor) -> Tensor:
        # in place: every input here is a fresh output that no backward formula reads (batch norm saves its
        # input, max-pool its input and indices, an add nothing), and LeakyReLU's derivatives can be taken
        # from its output; so the values and all derivatives are unchanged, with one full-size tensor less
        return F.leaky_relu(x, self.negative_slope, inplace=True)

    def residual_sum(self, x: Tensor) -> Tensor:
        """The block before its last activation and pool: ``norm3(conv3(...)) + shortcut(x)``."""
        out = self._act(self.norm1(self.conv1(x)))
        out = self._act(self.norm2(self.conv2(out)))
        return self.norm3(self.conv3(out)) + self.shortcut(x)  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        return pool_then_act(self.pool, self._act, self.residual_sum(x))


class ResNet12(nn.Module):
    """Four :class:`ResBlock` s (``body``), a global average pool and a linear ``head``.

    Args:
        in_channels: channels of the input images.
        cfg: widths, pooling convention and LeakyReLU slope.
        out_features: outputs of the head (ways).
    """

    def __init__(self, in_channels: int, cfg: ResNet12Config, out_features: int) -> None:
        super().__init__()
        c_ins = (in_channels, *cfg.widths[:-1])
        pools = [_pool(pad) for pad in _POOL_PADDINGS[cfg.pooling]]
        blocks = [
            ResBlock(c_in, c_out, cfg.negative_slope, pool)
            for c_in, c_out, pool in zip(c_ins, cfg.widths, pools, strict=True)
        ]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(cfg.widths[-1], out_features)
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform conv and head weights, zero head bias (Sparse-MAML); BatchNorm stays (1, 0)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, features_only: bool = False) -> Tensor:
        """Logits, or with ``features_only`` the pooled body output the head reads."""
        z = self.body(x).mean(dim=(2, 3))
        return z if features_only else self.head(z)  # type: ignore[no-any-return]


def build(cfg: ResNet12Config, in_shape: tuple[int, ...], out_features: int) -> ResNet12:
    """A :class:`ResNet12` for images of ``in_shape`` = (channels, height, width).

    Raises:
        SpecError: for a non-image shape, or an image that a max-pool would shrink to nothing.
    """
    if len(in_shape) != 3:
        raise SpecError(f"resnet12 needs (channels, height, width) inputs, got shape {in_shape}")
    channels, height, width = in_shape
    if min(feature_sides(height, cfg.pooling) + feature_sides(width, cfg.pooling)) < 1:
        raise SpecError(f"resnet12 with pooling {cfg.pooling!r} cannot take {height}x{width} images")
    return ResNet12(channels, cfg, out_features)
