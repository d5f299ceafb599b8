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
to the order of floating-point sums (1e-12 in float64, tests/engine/test_remat.py).

Step k's vjp needs ``H_k u`` with ``u = (d rule / d g)^T v`` (the same at every g: every rule is affine in g),
so the backward pass calls :func:`metacli.engine.hvp.gradient_and_hvp`, which returns ``g^k`` and ``H_k u``
computed one stage of the network at a time and, in a conv block, a group of output channels at a time.
Peak memory is then that staged product plus the K stored fast weights, not one whole-network
double-backward graph; each step's forward and gradient run once first order in the forward pass, and each
block twice more (a tangent sweep and a backward sweep) in the backward pass.

Tried for issue 25 and not kept, on one CIFAR-FS-shaped Conv4-64 support set (CPU, torch 2.13): the whole
network's reverse-over-reverse product (101.2 MB with the fused batch norm, 85.9 with batch norm from
primitive ops, against 34.4 staged); forward-over-reverse on the whole network (119.1 MB with
``torch.autograd.forward_ad``, 136.0 with ``torch.func.jvp(torch.func.grad(...))``); per-block products
without channel groups (80.2 MB: the first block's own product dominates, hence the groups).

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
from metacli.engine.hvp import Chain, gradient_and_hvp
from metacli.engine.inner import StepRule
from metacli.engine.types import Params


@dataclass(frozen=True)
class _Loop:
    """What the reverse pass needs besides tensors: the support loss, the rule and the order of the inputs."""

    chain: Chain
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

    def step(self, k: int, phi: Params, fixed: Params, rule: StepRule) -> tuple[Params, Tensor]:
        """``phi^{k+1}`` of the adapted keys (first order) and ``L(phi^k)``."""

        def loss_of_adapted(p: Params) -> Tensor:
            return self.chain.loss({**fixed, **p})

        grads, loss = grad_and_loss(loss_of_adapted, phi, create_graph=False)
        return rule(k, phi, grads), loss

    def step_vjp(
        self, k: int, phi: Params, fixed: Params, rule: StepRule, extras: Params, v: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """``v^T d phi^{k+1} / d(phi^k, theta_fixed, e)``: (the adapted keys', then the fixed keys' and the
        extras'), with ``H u`` from :func:`~metacli.engine.hvp.gradient_and_hvp` (see the module)."""
        # u = (d rule / d g)^T v, the same at every g for a rule affine in g: taken at g = 0
        zeros = {n: torch.zeros_like(p).requires_grad_(True) for n, p in phi.items()}
        u = torch.autograd.grad(
            list(rule(k, phi, zeros).values()), list(zeros.values()), v, materialize_grads=True
        )
        along = {**{n: torch.zeros_like(p) for n, p in fixed.items()}, **dict(zip(phi, u, strict=True))}
        g, hu = gradient_and_hvp(self.chain, {**fixed, **phi}, along)
        # the rule's own derivatives at the true g: d phi^{k+1} / d phi^k (the identity) and / d e
        new = rule(k, phi, {n: g[n] for n in phi})
        direct = torch.autograd.grad(
            list(new.values()),
            [*phi.values(), *extras.values()],
            v,
            allow_unused=True,
            materialize_grads=True,
        )
        adapted = [d + hu[n] for n, d in zip(phi, direct, strict=False)]
        return adapted, [*(hu[n] for n in fixed), *direct[len(phi) :]]


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
                new, loss = loop.step(k, phi, fixed, rule)
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
        with torch.enable_grad():
            rule = loop.rule_of(extras)
            for k in reversed(range(loop.steps)):
                phi = {n: t.detach().requires_grad_(True) for n, t in ctx.stored[k].items()}
                v, others = loop.step_vjp(k, phi, fixed, rule, extras, v)
                totals = [t + g for t, g in zip(totals, others, strict=True)]
        return (None, *v, *totals)


def descend_recomputed(
    chain: Chain,
    theta: Params,
    extras: Params,
    rule_of: Callable[[Params], StepRule],
    steps: int,
    adapted: Callable[[str], bool],
) -> tuple[Params, Tensor | None]:
    """:func:`metacli.engine.inner.descend` at second order, its graph replaced by the reverse pass above.

    Args:
        chain: the support loss, every step's (:meth:`metacli.engine.functional.Learner.chain`).
        theta: the network's meta-parameters (leaves of the outer graph).
        extras: the rule's meta-parameters.
        rule_of: the step rule made from given extras (the reverse pass makes it from its own leaves); it must
            be affine in the gradient, as every :class:`~metacli.engine.inner.InnerRule` is
            (``phi - r * P(g)``, P linear).
        steps: K.
        adapted: which keys move.

    Returns:
        phi^K (the fixed keys are theta's own tensors) and the loss of step 0 (detached; None for K = 0).
    """
    if steps == 0:
        return dict(theta), None
    names = tuple(n for n in theta if adapted(n))
    fixed = tuple(n for n in theta if n not in names)
    loop = _Loop(chain, rule_of, steps, names, fixed, tuple(extras))
    inputs = [*(theta[n] for n in names), *(theta[n] for n in fixed), *extras.values()]
    *moved, first = _RecomputedSteps.apply(loop, *inputs)  # type: ignore[no-untyped-call]
    return {**theta, **dict(zip(names, moved, strict=True))}, first
