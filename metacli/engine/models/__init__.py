"""Model registry: ``MODELS`` (name -> builder) beside the discriminated union ``ModelConfig``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field
from torch import nn

from metacli.engine.models import conv4, mlp
from metacli.engine.models.conv4 import Conv4Config
from metacli.engine.models.mlp import MLPConfig

ModelConfig = Annotated[MLPConfig | Conv4Config, Field(discriminator="name")]

MODELS: dict[str, Callable[[Any, tuple[int, ...], int], nn.Module]] = {
    "mlp": mlp.build,
    "conv4": conv4.build,
}


def build_model(cfg: MLPConfig | Conv4Config, in_shape: tuple[int, ...], out_features: int) -> nn.Module:
    """Build the model named by ``cfg.name`` for the given input shape and output size."""
    return MODELS[cfg.name](cfg, in_shape, out_features)
