"""Model registry: ``MODELS`` (name -> builder) beside the discriminated union ``ModelConfig``.

The configs and their union are defined without torch in :mod:`metacli.engine.config.models` (so that a
run spec validates without importing torch) and re-exported here.

Every model names its parameters ``body.*`` (feature extractor) or ``head.*`` (the final linear layer
only), so that variants can select what adapts by name: ANIL adapts the head, BOIL the body
(Raghu et al. 2020; Oh et al. 2021). :func:`param_group` maps a name to its group.

Every batch-norm layer is a module whose name starts with ``norm`` (``body.0.norm``, ``body.0.norm2``,
``body.0.shortcut.norm``), so that a variant can keep the batch-norm scale and shift out of its inner loop by
name (MAML++, Meta-Curvature): :func:`is_norm`. ``tests/engine/test_models.py`` checks both contracts
against the module types of every model.

- ``mlp``: ReLU multilayer perceptron (:mod:`.mlp`).
- ``conv4``: four conv blocks, MAML's Omniglot / miniImageNet backbone (:mod:`.conv4`).
- ``resnet12``: MetaOptNet / BOIL / Sparse-MAML ResNet-12 (:mod:`.resnet12`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch import nn

from metacli.engine.config.models import ModelConfig
from metacli.engine.config.registry import factories

__all__ = ["MODELS", "PARAM_GROUPS", "ModelConfig", "ParamGroup", "build_model", "is_norm", "param_group"]

MODELS: dict[str, Callable[[Any, tuple[int, ...], int], nn.Module]] = factories(ModelConfig, online=False)
"""Every model's builder by name, derived from the union (each config names its builder, ``factory``)."""

ParamGroup = Literal["body", "head"]
PARAM_GROUPS: tuple[ParamGroup, ...] = ("body", "head")


def build_model(cfg: ModelConfig, in_shape: tuple[int, ...], out_features: int) -> nn.Module:
    """Build the model named by ``cfg.name`` for the given input shape and output size."""
    return MODELS[cfg.name](cfg, in_shape, out_features)


def param_group(name: str) -> ParamGroup:
    """``"head"`` for the final linear layer's parameters (``head.*``), ``"body"`` for the rest (``body.*``).

    Raises:
        ValueError: for a name outside both groups (a model that breaks the naming contract).
    """
    for group in PARAM_GROUPS:
        if name.startswith(group + "."):
            return group
    raise ValueError(f"parameter {name!r} is in neither group: model parameters must be body.* or head.*")


def is_norm(name: str) -> bool:
    """Whether parameter ``name`` is a batch-norm scale or shift: its module's name starts with ``norm``.

    ``body.0.norm.weight``, ``body.1.norm2.bias`` and ``body.2.shortcut.norm.weight`` are;
    ``body.0.conv.weight``, ``body.0.weight`` (an MLP's) and ``head.bias`` are not.
    """
    module = name.rsplit(".", 2)
    return len(module) == 3 and module[1].startswith("norm")
