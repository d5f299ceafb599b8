"""The MAML family's exact second-order inner loop at memory flat in K: a hand-written reverse pass.

Unrolled, ``phi^{k+1} = rule_k(phi^k, g^k, e)`` with ``g^k = grad L_k(phi^k)`` differentiable keeps every
step's double-backward graph alive until the outer backward, so memory grows by one such graph per step.
:func:`descend_recomputed` computes the same meta-gradient keeping only the fast weights:

    forward:   phi^{k+1} = rule_k(phi^k, g^k, e),  g^k first order (no graph),  phi^0 .. phi^{K-1} stored
    backward:  v = dL/dphi^K
               for k = K-1 .. 0:  rebuild step k from phi^k with a differentiable g^k, then
                   (v, d_fixed, d_e) = v^T d phi^{k+1} / d(phi^k, theta_fixed, e)     (one vjp)
                   dL/dtheta_fixed += d_fixed,  dL/de += d_e
               dL/dtheta_adapted = v

where e are the rule's extras (learned rates, curvature factors, masks) and theta_fixed the parameters that
do not adapt (batch norm under ``adapt_norm: false``, ANIL's body) but enter every support loss. The vjp of
step k is exactly what the unrolled graph's backward does at that step, so the meta-gradient is the same up
to the order of floating-point sums (1e-12 in float64, tests/engine/test_remat.py). Peak memory is one step's
double-backward graph (a reverse-over-reverse Hessian-vector product of the support loss) plus the K stored
fast weights; each step's forward and gradient run twice (first order in the forward pass, differentiable in
the backward pass) instead of once.

The backward pass recomputes the steps under :func:`~metacli.engine.models.layers.primitive_batch_norm`:
batch norm from primitive ops, whose double backward holds fewer activation-sized tensors than the fused
kernel's (one CIFAR-FS-shaped Conv4-64 support set: 85.9 MB instead of 101.2 per Hessian-vector product; the
forward pass, first order, keeps the fused kernel). Tried for issue 25 and not kept, measured on the same
support set (CPU, torch 2.13): forward-over-reverse, ``H u`` as the jvp of the gradient with the tangent
``u = (d rule / d g)^T v``, which in principle keeps only tangents of the saved activations. torch's
forward-mode formulas keep more than that: 119.1 MB with ``torch.autograd.forward_ad`` dual tensors (110.4
with the primitive batch norm), 136.0 with ``torch.func.jvp(torch.func.grad(...))``, against 101.2 / 85.9
reverse over reverse; it would also need ``g^k`` before the jvp (one more gradient per step, or K more stored
tensors) for a rule not linear in g. Splitting the product per Conv4 block (block inputs and their tangents
kept, each block's product recomputed locally) reached 80.2 MB: the first block's own product dominates,
and that did not pay for a model-specific chain of stages.

It is an :class:`torch.autograd.Function`, so it serves the loop executor; torch.func's vmap would need a
batching rule for it, and the run spec refuses ``remat`` with vmap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metacli.engine.functional import grad_and_loss
from metacli.engine.inner import StepRule
from metacli.engine.models.layers import primitive_batch_norm
from metacli.engine.types import Params


@dataclass(frozen=True)
class _Loop:
    """What the reverse pass needs besides tensors: the losses, the rule, and the order of the inputs."""

    loss_at: Callable[[int, Params], Tensor]
    rule_of: Callable[[Params], StepRule]
    steps: int
    adapted: tuple[str, ...]
    fixed: tuple[str, ...]
    extras: tuple[str, ...]

    def split(self, tensors: tuple[Tensor, ...]) -> tuple[Params, Params, Params]:
        """(adapted theta, fixed theta, extras) from the flat inputs, as fresh leaves requiring grad."""
        leaves = [t.detach().requires_grad_(True) for t in tensors]
        a, f = len(self.adapted), len(self.adapted) + len(self.fixed)
        return (
            dict(zip(self.adapted, leaves[:a], strict=True)),
            dict(zip(self.fixed, leaves[a:f], strict=True)),
            dict(zip(self.extras, leaves[f:], strict=True)),
        )

    def step(
        self, k: int, phi: Params, fixed: Params, rule: StepRule, create_graph: bool
    ) -> tuple[Params, Tensor]:
        """``phi^{k+1}`` of the adapted keys and ``L_k(phi^k)``."""

        def loss_of_adapted(p: Params) -> Tensor:
            return self.loss_at(k, {**fixed, **p})

        grads, loss = grad_and_loss(loss_of_adapted, phi, create_graph)
        return rule(k, phi, grads), loss


class _RecomputedSteps(torch.autograd.Function):
    """The K inner steps as one autograd node: first order forward, the exact vjp recomputed backward."""

    @staticmethod
    def forward(ctx: Any, loop: _Loop, *tensors: Tensor) -> tuple[Tensor, ...]:
        """phi^K of the adapted keys, then the detached loss of step 0; stores phi^0 .. phi^{K-1}."""
        phi, fixed, extras = loop.split(tensors)
        rule, stored, first = loop.rule_of(extras), [], None
        with torch.enable_grad():  # autograd.Function runs its forward without grad mode
            for k in range(loop.steps):
                stored.append(phi)
                new, loss = loop.step(k, phi, fixed, rule, create_graph=False)
                phi = {n: v.detach() for n, v in new.items()}
                first = loss.detach() if first is None else first
        ctx.loop, ctx.stored = loop, stored
        ctx.save_for_backward(*tensors)
        assert first is not None  # descend_recomputed calls it for steps > 0 only
        ctx.mark_non_differentiable(first)
        return (*phi.values(), first)

    @staticmethod
    def backward(ctx: Any, *cotangents: Tensor | None) -> tuple[Tensor | None, ...]:
        """The meta-gradient of every input: the reverse pass of the module docstring."""
        loop: _Loop = ctx.loop
        _, fixed, extras = loop.split(ctx.saved_tensors)
        phi_k = ctx.stored[-1]
        # one cotangent per adapted key, then the step-0 loss's (non-differentiable: dropped by the zip)
        v = [
            torch.zeros_like(phi_k[n]) if c is None else c
            for n, c in zip(loop.adapted, cotangents, strict=False)
        ]
        totals = [torch.zeros_like(t) for t in (*fixed.values(), *extras.values())]
        # the primitive batch norm: its double backward, this loop's peak, holds less (see the module)
        with torch.enable_grad(), primitive_batch_norm():
            rule = loop.rule_of(extras)
            for k in reversed(range(loop.steps)):
                phi = {n: t.detach().requires_grad_(True) for n, t in ctx.stored[k].items()}
                new, _ = loop.step(k, phi, fixed, rule, create_graph=True)
                inputs = [*phi.values(), *fixed.values(), *extras.values()]
                grads = torch.autograd.grad(
                    list(new.values()), inputs, v, allow_unused=True, materialize_grads=True
                )
                v = list(grads[: len(phi)])
                totals = [t + g for t, g in zip(totals, grads[len(phi) :], strict=True)]
        return (None, *v, *totals)


def descend_recomputed(
    loss_at: Callable[[int, Params], Tensor],
    theta: Params,
    extras: Params,
    rule_of: Callable[[Params], StepRule],
    steps: int,
    adapted: Callable[[str], bool],
) -> tuple[Params, Tensor | None]:
    """:func:`metacli.engine.inner.descend` at second order, its graph replaced by the reverse pass above.

    Args:
        loss_at: ``(k, phi) -> L_k(phi)`` on the full parameter dict.
        theta: the network's meta-parameters (leaves of the outer graph).
        extras: the rule's meta-parameters.
        rule_of: the step rule made from given extras (the reverse pass makes it from its own leaves).
        steps: K.
        adapted: which keys move.

    Returns:
        phi^K (the fixed keys are theta's own tensors) and the loss of step 0 (detached; None for K = 0).
    """
    if steps == 0:
        return dict(theta), None
    names = tuple(n for n in theta if adapted(n))
    fixed = tuple(n for n in theta if n not in names)
    loop = _Loop(loss_at, rule_of, steps, names, fixed, tuple(extras))
    inputs = [*(theta[n] for n in names), *(theta[n] for n in fixed), *extras.values()]
    *moved, first = _RecomputedSteps.apply(loop, *inputs)  # type: ignore[no-untyped-call]
    return {**theta, **dict(zip(names, moved, strict=True))}, first
