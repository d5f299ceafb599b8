"""Layers shared by the convolutional models.

:class:`BatchNorm` is batch norm written from primitive ops,
``(x - mean) / sqrt(var + eps) * gamma + beta`` over the batch and spatial axes, because
``torch.func.vmap`` with second-order gradients through the fused ``F.batch_norm`` gives wrong
meta-gradients (measured 0.5-7 % in float64, torch 2.13/2.14, ``docs/reference/maml_family.md`` §5,
pytorch/functorch#534). Statistics are always those of the batch (transductive), as in every
reference implementation of MAML and its variants (``track_running_stats=False`` or ``.train()``);
there are no running statistics, so the layer has no buffers and no train/eval modes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BatchNorm"]


class BatchNorm(nn.Module):
    """Batch norm with batch statistics from primitive ops (exact under vmap at second order).

    Equal to ``F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)``: the variance is the
    biased one (divided by the number of elements per channel), as ``F.batch_norm`` normalises.

    Args:
        channels: size of axis 1 of the input (``(N, C)`` or ``(N, C, *spatial)``).
        eps: added to the variance before the square root.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        shape = [1, -1] + [1] * (x.dim() - 2)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)
