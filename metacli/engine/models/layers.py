"""Layers shared by the convolutional models.

:class:`BatchNorm` normalises with the statistics of the batch (transductive), as in every reference
implementation of MAML and its variants (``track_running_stats=False`` or ``.train()``); there are no
running statistics, so the layer has no buffers and no train/eval modes. It has two kernels with the same
value and the same exact derivatives where each is used:

- :func:`batch_norm_fused`: PyTorch's ``F.batch_norm`` (one native kernel, and a native double backward).
  Exact at second order in plain autograd and under ``torch.func.grad`` (measured in float64: 1e-15 to 2e-14
  relative to the primitive form, 1e-10 to finite differences, Conv4 and ResNet-12), and 1.5x faster for
  a second-order Conv4-64 MAML meta-step on the CPU (issue 8).
- :func:`batch_norm_primitive`: ``(x - mean) / sqrt(var + eps) * gamma + beta`` from primitive ops.
  ``torch.func.vmap`` with second-order gradients through the fused kernel gives wrong meta-gradients
  (measured 0.3-1.4 % in float64 for issue 8; pytorch/functorch#534); through primitive ops it is exact.

:meth:`BatchNorm.forward` takes the fused kernel unless a ``vmap`` (or any functorch transform other than
``grad``) is active, :func:`fused_is_exact`. So the per-task loop executor gets the fused kernel, and the
``vmap`` executor and the batched evaluation (``episodic.batch_metrics``) get the primitive one, with no flag
to set and none to forget.

Why ask torch rather than be told by the executor (a ``contextvars.ContextVar`` scoped to the call): which
kernel is exact is a property of the transforms active when the layer runs, and torch knows them at that
point; a variable set by the loop executor would be wrong for a ``vmap`` run inside its scope (a task loss or
an evaluation that batches internally) and would leave every other un-batched caller on the slow path. The
price is one private API, ``torch._C._functorch.get_interpreter_stack`` (torch 2.13; typed in torch's
``_C/_functorch.pyi``); without it every call takes the primitive kernel (always exact, only slower), and
``tests/engine/test_fused.py`` fails if the API goes or stops reporting a ``vmap``. Not seen: a backward
batched after the forward, ``torch.autograd.grad(..., is_grads_batched=True)``; metacli does not use it.

:func:`pool_then_act` is the other exact rewrite: max-pool before the activation, as both models use it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # private functorch API: the transforms active at this point of the call, outermost first
    from torch._C._functorch import TransformType, get_interpreter_stack

    HAS_INTERPRETER_STACK = True
except ImportError:  # pragma: no cover - a torch without it: the primitive kernel everywhere
    HAS_INTERPRETER_STACK = False

__all__ = [
    "BatchNorm",
    "batch_norm_fused",
    "batch_norm_primitive",
    "fused_is_exact",
    "pool_then_act",
]

BatchNormKernel = Callable[[Tensor, Tensor, Tensor, float], Tensor]
"""``(x, weight, bias, eps) -> normalised x`` with batch statistics over all axes but axis 1."""


def fused_is_exact() -> bool:
    """True where fused kernels have exact derivatives of every order: no functorch transform but ``grad``.

    ``vmap``, ``vmap(grad(...))`` and ``grad(vmap(...))`` all put a ``Vmap`` interpreter on the stack;
    ``jvp``/``jacfwd`` and ``functionalize`` are refused too (not measured). Without the private API: False.
    """
    if not HAS_INTERPRETER_STACK:  # pragma: no cover - see the import
        return False
    stack = get_interpreter_stack() or []  # None outside every transform (the stub says list)
    return all(interpreter.key() == TransformType.Grad for interpreter in stack)


def batch_norm_fused(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """PyTorch's fused batch norm with batch statistics (exact at second order outside ``vmap`` only)."""
    return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)


def batch_norm_primitive(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Batch norm from primitive ops (exact at second order under ``vmap`` too).

    Equal to :func:`batch_norm_fused`: the variance is the biased one (divided by the number of elements per
    channel), as ``F.batch_norm`` normalises.

    Written as ``x_c * s + beta`` with ``x_c = x - mean`` computed once and the per-channel factor
    ``s = gamma / sqrt(var + eps)``: three full-size operations (and their derivatives) instead of the six
    of ``(x - mean) / sqrt(var + eps) * gamma + beta``, and no full-size division, whose derivatives are the
    costliest. Means are sums times ``1 / n``, so that their backward is an expand of a per-channel
    value rather than a full-size division. Together about 1.35x faster for a second-order Omniglot Conv4-64
    meta-step under ``vmap`` on the CPU (CHANGELOG); the same meta-gradient to 1e-14 in float64.
    """
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv_n = 1.0 / (x.numel() // x.shape[1])
    centred = x - x.sum(dim=dims, keepdim=True) * inv_n
    var = centred.square().sum(dim=dims, keepdim=True) * inv_n
    scale = weight.view(shape) * torch.rsqrt(var + eps)
    return torch.addcmul(bias.view(shape), centred, scale)


def batch_norm_kernel() -> BatchNormKernel:
    """The fastest kernel exact under the transforms active now (:func:`fused_is_exact`)."""
    return batch_norm_fused if fused_is_exact() else batch_norm_primitive


class BatchNorm(nn.Module):
    """Batch norm with batch statistics: the fused kernel outside ``vmap``, primitive ops under it.

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
        return batch_norm_kernel()(x, self.weight, self.bias, self.eps)


def pool_then_act(pool: nn.Module, act: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``act(pool(x))``, which equals ``pool(act(x))`` when ``act`` is non-decreasing (ReLU, LeakyReLU).

    Max-pooling commutes with a non-decreasing activation, and so do its derivatives: where the window's
    maximum is positive (or the activation strictly increasing) both orders route the gradient to the same
    element, with the same factor; where a ReLU window holds no positive value both give zero, whichever
    element the pool picked. So the meta-gradient is the same, bit for bit, at second order
    (``tests/engine/test_models.py``). Pooling first runs the activation, its backward and their second
    derivatives on a quarter of the values; with the in-place activation of the blocks, metacli's per-task
    loop is ahead of the per-task peers on miniImageNet (``benchmarks/suite.py``, README).
    """
    return act(pool(x))
