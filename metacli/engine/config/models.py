"""The models' configs: the ``model:`` section of a run spec, without torch.

One pydantic model per network, selected by its ``name`` (the discriminated union :data:`ModelConfig`).
A run spec is validated from this module alone (``metacli.spec``), so a bad ``model:`` field is reported
without importing torch. Each network's module imports its config from here
(:mod:`metacli.engine.models.mlp`, ``.conv4``, ``.resnet12``), and :mod:`metacli.engine.models` maps
each name to its builder.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

# ReLU multilayer perceptrons (metacli.engine.models.mlp)


class MLPConfig(BaseModel):
    """A ReLU multilayer perceptron; inputs are flattened."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    name: Literal["mlp"] = "mlp"
    """Model name (discriminator)."""
    hidden: tuple[int, ...] = (40, 40)
    """Widths of the hidden layers."""


# Conv4 (metacli.engine.models.conv4)

Pool = Literal["max", "stride"]
"""Downsampling of every Conv4 block: 2x2 max-pool, or a stride-2 convolution."""


class Conv4Config(BaseModel):
    """Four conv blocks (``conv3x3 -> batch norm -> ReLU -> downsample``) and a linear head."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    name: Literal["conv4"] = "conv4"
    """Model name (discriminator)."""
    filters: int = Field(default=64, ge=1)
    """Channels of every conv layer: 32 miniImageNet (MAML), 48 (MAML++), 64 Omniglot; any positive width."""
    pool: Pool = "stride"
    """``max`` = 2x2 max-pool after the ReLU (miniImageNet), ``stride`` = stride-2 convs (Omniglot)."""


# ResNet-12 (metacli.engine.models.resnet12)

Pooling = Literal["every_block", "first_three"]
"""Where ResNet-12 max-pools: after every block, or after the first three."""


class ResNet12Config(BaseModel):
    """Four residual blocks (3 x conv3x3-BN-LeakyReLU, 1x1-conv shortcut, max-pool), average pool, linear."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    name: Literal["resnet12"] = "resnet12"
    """Model name (discriminator)."""
    widths: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt] = (64, 160, 320, 640)
    """Channels of the four blocks: (64, 160, 320, 640) MetaOptNet, (64, 128, 256, 512) BOIL/Sparse-MAML."""
    pooling: Pooling = "every_block"
    """``every_block``: 2x2 max-pool after all four blocks (MetaOptNet); ``first_three``: after blocks 1-3,
    the third with padding 1 (BOIL, Sparse-MAML code)."""
    negative_slope: float = Field(default=0.1, ge=0)
    """LeakyReLU slope: 0.1 MetaOptNet; 0.01 in the BOIL/Sparse-MAML code (``nn.LeakyReLU()``)."""


# The union of them all

ModelConfig = Annotated[MLPConfig | Conv4Config | ResNet12Config, Field(discriminator="name")]
"""The ``model:`` section: the config that ``name`` selects; a wrong name lists the valid ones."""
