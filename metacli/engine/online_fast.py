"""Exact fast U_eval for MLPs: fine-tuning the first Linear layer through Gram matrices.

For a network whose first layer is ``Linear`` on flattened inputs, every full-batch gradient of its
weight is ∇W₁ = Δᵀ X (X: the task's n train inputs, Δ = ∂L/∂H at the first pre-activation H = X W₁ᵀ + b₁),
so after s clipped steps W₁ˢ = W₁ − lr Σ_j c_j Δ_jᵀ X stays in W₁ plus the row space of X. Hence, with
U = X W₁ᵀ and U_z = Z W₁ᵀ (Z: test inputs) computed once, and the per-task Gram matrices G = X Xᵀ and
Z Xᵀ::

    U   <- U   − lr c_j G Δ_j            U_z <- U_z − lr c_j (Z Xᵀ) Δ_j
    ‖∇W₁‖²_F = Σ Δ_j ⊙ (G Δ_j)          (enters the global clip factor c_j)

b₁ and the later layers are updated as usual. The per-step cost no longer involves the input width (784
for S-MNIST); it equals the vmap path exactly up to floating-point rounding (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacli.engine.functional import Learner
from metacli.engine.models.mlp import MLP
from metacli.engine.types import OnlineStream, Params

FAST_CHUNK = 256
"""Tasks per batched call of the fast path."""


def fast_path_applies(learner: Learner) -> bool:
    """An :class:`MLP` with cross-entropy and at least one hidden layer."""
    m = learner.model
    return isinstance(m, MLP) and learner.criterion == "cross_entropy" and len(m.body) > 0


def _rest_forward(model: MLP, params: Params, pre: Tensor) -> Tensor:
    """The network after the first Linear: from its pre-activation to the logits."""
    h = pre
    for i, layer in enumerate(model.body):
        if i == 0:
            continue
        if isinstance(layer, nn.Linear):
            h = F.linear(h, params[f"body.{i}.weight"], params[f"body.{i}.bias"])
        else:
            h = layer(h)
    return F.linear(h, params["head.weight"], params["head.bias"])


def _one_task(
    model: MLP, params: Params, u: Tensor, uz: Tensor, g: Tensor, zx: Tensor, y: Tensor, yz: Tensor,
    lr: float, steps: int, clip_norm: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """U_eval of one task in Gram form (vmap-able); returns (test CE, test accuracy)."""
    rest = {k: v for k, v in params.items() if not k.startswith("body.0.")}
    rest["body.0.bias"] = params["body.0.bias"]

    def loss_fn(u_: Tensor, rest_: Params) -> Tensor:
        return F.cross_entropy(_rest_forward(model, rest_, u_ + rest_["body.0.bias"]), y)

    for _ in range(steps):
        delta, grads = torch.func.grad(loss_fn, argnums=(0, 1))(u, rest)
        sq = (delta * (g @ delta)).sum() + sum((v * v).sum() for v in grads.values())
        c = torch.clamp(clip_norm / (torch.sqrt(sq) + 1e-6), max=1.0)
        u = u - lr * c * (g @ delta)
        uz = uz - lr * c * (zx @ delta)
        rest = {k: v - lr * c * grads[k] for k, v in rest.items()}
    out = _rest_forward(model, rest, uz + rest["body.0.bias"])
    return F.cross_entropy(out, yz), (out.argmax(-1) == yz).to(out.dtype).mean()


def mlp_finetune_and_test(
    learner: Learner, params: Params, stream: OnlineStream, task_ids: Tensor, lr: float, steps: int,
    clip_norm: float, chunk_size: int = FAST_CHUNK,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Per-task (test loss, accuracy) of U_eval(params) by the Gram-matrix path, ``chunk_size`` at a time."""
    model = learner.model
    assert isinstance(model, MLP)
    w1 = params["body.0.weight"]

    def one(u: Tensor, uz: Tensor, g: Tensor, zx: Tensor, y: Tensor, yz: Tensor) -> tuple[Tensor, Tensor]:
        return _one_task(model, params, u, uz, g, zx, y, yz, lr, steps, clip_norm)

    batched = torch.func.vmap(one)
    losses, accs = [], []
    for ids in task_ids.to(stream.train.x.device).split(chunk_size):
        x, z = stream.train.x[ids].flatten(2), stream.test.x[ids].flatten(2)
        g, zx = x @ x.transpose(1, 2), z @ x.transpose(1, 2)
        loss, acc = batched(x @ w1.T, z @ w1.T, g, zx, stream.train.y[ids], stream.test.y[ids])
        losses.append(loss)
        accs.append(acc)
    return torch.cat(losses), torch.cat(accs)
