"""Fully connected ReLU networks.

- ``mlp`` with ``hidden: [40, 40]``: the sinusoid regressor of MAML (Finn et al., 2017), 1-40-40-1.
- ``mlp`` with ``hidden: [200]``, 784 inputs, 10 outputs: ``mnist_2NN`` of the MOML code
  (Acar et al., 2021), 159,010 parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metacli.engine.config.models import MLPConfig


class MLP(nn.Module):
    """``Linear -> ReLU`` blocks then a linear head named ``head`` (ANIL/BOIL adapt by that name)."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: Tensor, features_only: bool = False) -> Tensor:
        """Outputs, or with ``features_only`` the last hidden layer the head reads."""
        z = self.body(x.flatten(1))
        return z if features_only else self.head(z)  # type: ignore[no-any-return]


def build(cfg: MLPConfig, in_shape: tuple[int, ...], out_features: int) -> MLP:
    """An :class:`MLP` for inputs of ``in_shape`` (without the batch axis), initialised as ``cfg.init``."""
    n_in = 1
    for d in in_shape:
        n_in *= d
    model = MLP(n_in, cfg.hidden, out_features)
    if cfg.init == "maml":
        maml_init(model)
    return model


MAML_FC_STD = 0.01
"""Standard deviation of the MAML TensorFlow code's fully connected weights (``construct_fc_weights``)."""


@torch.no_grad()
def maml_init(model: nn.Module) -> None:
    """Every linear layer as the MAML code's sinusoid net: W ~ N(0, 0.01^2) truncated at +-2 std, b = 0.

    TensorFlow's ``truncated_normal`` redraws values beyond two standard deviations, which is
    ``trunc_normal_`` with bounds at +-2 std.
    """
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=MAML_FC_STD, a=-2 * MAML_FC_STD, b=2 * MAML_FC_STD)
            nn.init.zeros_(m.bias)
