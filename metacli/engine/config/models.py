"""The models' configs: the ``model:`` section of a run spec, without torch.

One pydantic model per network, selected by its ``name`` (the discriminated union :data:`ModelConfig`).
A run spec is validated from this module alone (by the spec module), so a bad ``model:`` field is reported
without importing torch. Each network's module imports its config from here
(:mod:`metacli.engine.models.mlp`, ``.conv4``, ``.resnet12``), and each config names its builder
(``factory``, :mod:`.registry`), from which :mod:`metacli.engine.models` derives its registry.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from metacli.engine.config.fields import MAX_LAYERS, NonNegative, Width
from metacli.engine.config.registry import Named


def image_shape(in_shape: tuple[int, ...], model: str) -> tuple[int, int, int]:
    """``in_shape`` as (channels, height, width), or a ValueError for inputs that are not images."""
    if len(in_shape) != 3:
        raise ValueError(
            f"{model} needs image inputs (channels, height, width), but this dataset's inputs have shape "
            f"{in_shape}; use model: {{name: mlp}}"
        )
    c, h, w = in_shape
    return c, h, w


def dense_parameters(sizes: tuple[int, ...]) -> int:
    """Weights and biases of fully connected layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``."""
    return sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))


Init = Literal["torch", "maml"]
"""A network's initialisation: PyTorch's default, or the MAML TensorFlow code's for that network."""
ConvInit = Literal["torch", "maml", "xavier"]
"""Conv4's initialisation: PyTorch's, the MAML code's, or Xavier-uniform throughout."""


# ReLU multilayer perceptrons (metacli.engine.models.mlp)


class MLPConfig(Named):
    """A ReLU multilayer perceptron; inputs are flattened."""

    factory: ClassVar[str] = "metacli.engine.models.mlp:build"

    name: Literal["mlp"] = "mlp"
    """Model name (discriminator)."""
    hidden: Annotated[tuple[Width, ...], Field(max_length=MAX_LAYERS)] = (40, 40)
    """Widths of the hidden layers (none: a linear model)."""
    init: Init = "torch"
    """Initialisation: ``torch`` (PyTorch's default, U(+-1/sqrt(fan_in)) for weights and biases) or ``maml``
    (the MAML TensorFlow code's fully connected net: weights from a normal of std 0.01 truncated at two
    std, biases zero)."""
    size_field: ClassVar[str] = "hidden"
    """The field that sets the network's size (named when it is too large)."""

    def parameter_count(self, in_shape: tuple[int, ...], outputs: int) -> int:
        """Parameters of this MLP on inputs of ``in_shape`` (flattened) with ``outputs`` outputs."""
        return dense_parameters((math.prod(in_shape), *self.hidden, outputs))

    def widest_activation(self, in_shape: tuple[int, ...]) -> int:
        """Values of the widest hidden layer, per example."""
        del in_shape
        return max(self.hidden, default=0)


# Conv4 (metacli.engine.models.conv4)

Pool = Literal["max", "stride"]
"""Downsampling of every Conv4 block: 2x2 max-pool, or a stride-2 convolution."""


class Conv4Config(Named):
    """Four conv blocks (``conv3x3 -> batch norm -> ReLU -> downsample``) and a linear head."""

    factory: ClassVar[str] = "metacli.engine.models.conv4:build"

    name: Literal["conv4"] = "conv4"
    """Model name (discriminator)."""
    filters: Width = 64
    """Channels of every conv layer: 32 miniImageNet (MAML), 48 (MAML++), 64 Omniglot; any positive width."""
    pool: Pool = "stride"
    """``max`` = 2x2 max-pool after the ReLU (miniImageNet), ``stride`` = stride-2 convs (Omniglot)."""
    init: ConvInit = "torch"
    """Initialisation: ``torch`` (PyTorch's default); ``maml`` (the MAML TensorFlow code's conv net:
    Xavier-uniform conv weights, zero biases, batch-norm scale one and offset zero; the head
    Xavier-uniform with ``pool: max`` (its miniImageNet net) and standard normal with ``pool: stride`` (its
    Omniglot net), zero bias); ``xavier`` (as ``maml`` but the head Xavier-uniform whatever the pooling: the
    MAML++ and Reptile codes)."""
    size_field: ClassVar[str] = "filters"
    """The field that sets the network's size (named when it is too large)."""

    def downsampled(self, side: int) -> int:
        """A side after one block: floor(s / 2) by a max-pool, ceil(s / 2) by a stride-2 convolution."""
        return side // 2 if self.pool == "max" else (side + 1) // 2

    def parameter_count(self, in_shape: tuple[int, ...], outputs: int) -> int:
        """Parameters of Conv4 on images of ``in_shape``; a ValueError when four blocks leave no pixel."""
        c, h, w = image_shape(in_shape, "conv4")
        fh, fw = h, w
        for _ in range(4):
            fh, fw = self.downsampled(fh), self.downsampled(fw)
        if min(fh, fw) < 1:
            raise ValueError(
                f"conv4 with pool: {self.pool} leaves no pixel of {h}x{w} images after four blocks (it needs "
                "16x16 or more); use pool: stride or larger images"
            )
        f = self.filters
        # per block: conv weights and bias, batch-norm scale and shift
        blocks = sum(9 * c_in * f + 3 * f for c_in in (c, f, f, f))
        return blocks + dense_parameters((f * fh * fw, outputs))

    def widest_activation(self, in_shape: tuple[int, ...]) -> int:
        """Values of the first block's convolution output, per example (the largest feature map)."""
        _, h, w = image_shape(in_shape, "conv4")
        if self.pool == "stride":
            h, w = self.downsampled(h), self.downsampled(w)
        return self.filters * h * w


# ResNet-12 (metacli.engine.models.resnet12)

Pooling = Literal["every_block", "first_three"]
"""Where ResNet-12 max-pools: after every block, or after the first three."""
RESNET12_POOL_PADDINGS: dict[str, tuple[int | None, ...]] = {
    "every_block": (0, 0, 0, 0),
    "first_three": (0, 0, 1, None),
}
"""Padding of the 2x2 max-pool after each block; None: no pool (as :mod:`metacli.engine.models.resnet12`)."""


class ResNet12Config(Named):
    """Four residual blocks (3 x conv3x3-BN-LeakyReLU, 1x1-conv shortcut, max-pool), average pool, linear."""

    factory: ClassVar[str] = "metacli.engine.models.resnet12:build"

    name: Literal["resnet12"] = "resnet12"
    """Model name (discriminator)."""
    widths: tuple[Width, Width, Width, Width] = (64, 160, 320, 640)
    """Channels of the four blocks: (64, 160, 320, 640) MetaOptNet, (64, 128, 256, 512) BOIL/Sparse-MAML."""
    pooling: Pooling = "every_block"
    """``every_block``: 2x2 max-pool after all four blocks (MetaOptNet); ``first_three``: after blocks 1-3,
    the third with padding 1 (BOIL, Sparse-MAML code)."""
    negative_slope: NonNegative = 0.1
    """LeakyReLU slope: 0.1 MetaOptNet; 0.01 in the BOIL/Sparse-MAML code (``nn.LeakyReLU()``)."""
    size_field: ClassVar[str] = "widths"
    """The field that sets the network's size (named when it is too large)."""

    def block_sides(self, side: int) -> list[int]:
        """The input side of each block, then the side after the last (2x2 max-pools, padded per pooling)."""
        sides = [side]
        for pad in RESNET12_POOL_PADDINGS[self.pooling]:
            sides.append(sides[-1] if pad is None else (sides[-1] + 2 * pad) // 2)
        return sides

    def parameter_count(self, in_shape: tuple[int, ...], outputs: int) -> int:
        """Parameters of ResNet-12 on images of ``in_shape``; a ValueError when a max-pool leaves no pixel."""
        c, h, w = image_shape(in_shape, "resnet12")
        if min(self.block_sides(h) + self.block_sides(w)) < 1:
            raise ValueError(
                f"resnet12 with pooling: {self.pooling} leaves no pixel of {h}x{w} images; use larger images"
            )
        blocks = sum(
            9 * c_in * c_out + 18 * c_out * c_out + c_in * c_out + 8 * c_out  # 3 convs, shortcut, 4 norms
            for c_in, c_out in zip((c, *self.widths[:-1]), self.widths, strict=True)
        )
        return blocks + dense_parameters((self.widths[-1], outputs))

    def widest_activation(self, in_shape: tuple[int, ...]) -> int:
        """Values of the largest block's convolution output, per example."""
        _, h, w = image_shape(in_shape, "resnet12")
        hs, ws = self.block_sides(h), self.block_sides(w)
        return max(width * hs[i] * ws[i] for i, width in enumerate(self.widths))


# The union of them all

ModelConfig = Annotated[MLPConfig | Conv4Config | ResNet12Config, Field(discriminator="name")]
"""The ``model:`` section: the config that ``name`` selects; a wrong name lists the valid ones."""
