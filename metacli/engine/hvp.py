"""The gradient and an exact Hessian-vector product of a loss, one stage of the network at a time.

A model that declares its forward pass as a chain of stages (:class:`Stage`; Conv4's four blocks and its
head) has the loss ``L(theta) = ell(s_n(... s_1(x; theta_1) ...; theta_n))``, the last stage ending in the
loss. :func:`gradient_and_hvp` returns ``g = grad L`` and ``H u`` for a direction ``u`` without ever holding
the whole network's double-backward graph (Pearlmutter's R-operator, forward over reverse, stage by
stage):

    forward sweep, i = 1 .. n-1:  a_i = s_i(a_{i-1}),  a'_i = J_a s_i a'_{i-1} + J_theta s_i u_i  (fwd mode)
    backward sweep, i = n .. 1:   with  q_i(a, theta_i) = <d_i, s_i(a; theta_i)>  (q_n = L's last stage)
        (d_{i-1}, g_i)   = grad q_i
        (d'_{i-1}, Hu_i) = grad [ <grad q_i, (a'_{i-1}, u_i)> + <d'_i, s_i(a; theta_i)> ]

(``d_i = dL/da_i``, primes the directional derivatives along ``u``; ``d'_n`` is zero.) Stage i's second
backward is a reverse-over-reverse product of a scalar of that stage alone, so the graph alive at any moment
is one stage's, and the tensors kept between stages are the stage boundaries ``a_i, a'_i, d_i, d'_i``.

A *separable* stage (a conv block: convolution, per-channel batch norm, pooling, activation) computes its
output channel c from row c of its parameters and the whole input, so it runs in groups of output channels,
summing the input-side terms: a group holds a fraction of the stage's activations. :func:`channel_slices`
splits the largest stage met so far (the first, in a network that pools) into :data:`GROUPS` and the others
into groups no larger. Every sum is the same derivative taken in pieces: in float64 the result is the whole
network's reverse-over-reverse product up to rounding (``tests/engine/test_hvp.py`` holds it to 1e-11 of the
product's largest entry). Measured for issue 25 on one CIFAR-FS-shaped Conv4-64 support set of 25
images (CPU, float32, one thread, ``python -m benchmarks.bench_memory --shape cifar``): the gradient and
product together peak at 34.4 MB, against 101.2 for the whole network's reverse-over-reverse product (the
fused batch norm's double backward) and 27.1 for a plain gradient; its time was 0.96-1.27 times the whole
network's product's (medians of 7 interleaved runs, four such runs, 2-core AMD EPYC VM).

A model without stages is one stage (its whole forward pass and loss), and so is a chain too small to pay
for its stages (:data:`WHOLE_BELOW`): the sweeps reduce to the plain reverse-over-reverse product.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.func import functional_call

from metacli.engine.types import Params

__all__ = [
    "GROUPS",
    "WHOLE_BELOW",
    "Chain",
    "Stage",
    "activations",
    "channel_slices",
    "gradient_and_hvp",
    "group_budget",
]

GROUPS = 4
"""Output-channel groups of the largest separable stage (a group of it holds a quarter of its activations).

Measured for issue 25 on the module's support set: 8 groups lowered the product's peak from 34.4 to 24.8
MB at about 1.15 times the time; with 4, remat's meta-step took 1.5-1.8 times plain MAML's (K = 5..20)."""


WHOLE_BELOW = 2**19
"""A chain whose first, separable stage holds fewer estimated activation elements than this (2 MiB in
float32) is taken as one stage, the whole network's product: its peak is then a few tens of MB at most, and
each stage's own autograd calls cost more than the split saves. On one Omniglot support set of 5 images
(Conv4-64, 250,880 elements in the first block) the staged product took about twice the whole network's
time, on a CIFAR-FS-shaped one of 25 (1,638,400 elements) 0.96-1.27 times (issue 25, CPU, one thread)."""


@dataclass(frozen=True)
class Stage:
    """One link of a model's forward pass: ``a -> module(a)`` with the model's parameters under ``prefix``.

    Attributes:
        prefix: the module's name in the model (``"body.0"``); ``""`` for the whole model.
        module: the submodule, called through :func:`torch.func.functional_call`.
        separable: output channel c (axis 1) depends on the input and on row c (axis 0) of every parameter
            of the stage only, so the stage can run in groups of channels.
        flatten: flatten the input from axis 1 first (a head reading the body's feature maps).
    """

    prefix: str
    module: nn.Module
    separable: bool = False
    flatten: bool = False

    def owns(self, name: str) -> bool:
        """Whether a model parameter belongs to this stage."""
        return not self.prefix or name.startswith(self.prefix + ".")

    def local(self, params: Params) -> Params:
        """This stage's parameters under the module's own names."""
        cut = len(self.prefix) + 1 if self.prefix else 0
        return {n[cut:]: p for n, p in params.items() if self.owns(n)}

    def __call__(self, local: Params, a: Tensor) -> Tensor:
        out: Tensor = functional_call(self.module, local, (a.flatten(1) if self.flatten else a,))
        return out


@dataclass(frozen=True)
class Chain:
    """A loss split into stages: ``L(params) = loss_of_output(s_n(... s_1(x)))``."""

    stages: tuple[Stage, ...]
    x: Tensor
    loss_of_output: Callable[[Tensor], Tensor]
    whole: Stage | None = None
    """The same loss as one stage (the model): taken below ``WHOLE_BELOW``."""

    def loss(self, params: Params) -> Tensor:
        """``L(params)``, the stages run in order (the model's forward pass)."""
        a = self.x
        for stage in self.stages:
            a = stage(stage.local(params), a)
        return self.loss_of_output(a)


def channel_slices(stage: Stage, local: Params, a: Tensor, budget: int) -> list[slice]:
    """The output-channel groups a stage runs in, and nothing to split for a stage that is not separable.

    A separable stage's activations are estimated as ``batch x out-channels x input spatial size`` (a
    convolution before its pooling or stride); it runs in groups of about ``budget`` such elements, at least
    one channel each.
    """
    if not stage.separable:
        return [slice(None)]
    rows = next(iter(local.values())).shape[0]
    per_row = a.shape[0] * math.prod(a.shape[2:])
    size = max(1, budget // per_row)  # rows per group
    return [slice(r, min(r + size, rows)) for r in range(0, rows, size)]


def activations(stage: Stage, local: Params, a: Tensor) -> int:
    """A separable stage's estimated activation elements on input ``a`` (see :func:`channel_slices`); 0 for
    a stage that is not separable."""
    if not stage.separable:
        return 0
    return a.shape[0] * next(iter(local.values())).shape[0] * math.prod(a.shape[2:])


def group_budget(stage: Stage, local: Params, a: Tensor) -> int:
    """:data:`GROUPS`-th of a separable stage's estimated activations; 0 for one that is not separable."""
    return math.ceil(activations(stage, local, a) / GROUPS)


def gradient_and_hvp(chain: Chain, params: Params, u: Params) -> tuple[Params, Params]:
    """``(grad L(params), H u)`` by the two sweeps of the module docstring; ``u`` has every key of ``params``.

    Both come back detached, keyed like ``params``.
    """
    params = {n: p.detach() for n, p in params.items()}
    u = {n: u[n].detach() for n in params}  # in the order of params: the stages pair them by position
    first = chain.stages[0]
    if chain.whole is not None and activations(first, first.local(params), chain.x) < WHOLE_BELOW:
        chain = Chain((chain.whole,), chain.x, chain.loss_of_output)  # too small to pay for the stages
    *body, last = chain.stages
    # forward sweep: every boundary a_i with its tangent a'_i (None at the input: zero, and not needed)
    a: list[Tensor] = [chain.x]
    tangent: list[Tensor | None] = [None]
    groups: list[list[slice]] = []
    budget = 0
    for stage in body:
        local, along = stage.local(params), stage.local(u)
        budget = max(budget, group_budget(stage, local, a[-1]))
        groups.append(channel_slices(stage, local, a[-1], budget))
        outs = [
            _jvp(stage, _rows(local, rows), _rows(along, rows), a[-1], tangent[-1]) for rows in groups[-1]
        ]
        a.append(torch.cat([o for o, _ in outs], 1))
        tangent.append(torch.cat([t for _, t in outs], 1))
        del outs
    # backward sweep: the last stage ends in the loss; then each stage, fed (d_i, d'_i) from its output side
    grad: Params = {}
    hvp: Params = {}
    d, d_dot = _sweep(last, params, u, (a[-1], tangent[-1]), [slice(None)], grad, hvp, _loss_of(chain))
    for i in reversed(range(len(body))):
        a.pop(), tangent.pop()  # stage i's output is spent
        assert d is not None and d_dot is not None  # stage i + 1 had an input that needed them
        d, d_dot = _sweep(body[i], params, u, (a[i], tangent[i]), groups[i], grad, hvp, _paired(d, d_dot))
    return grad, hvp


Seeded = tuple[Tensor, Tensor | None]
"""A tensor and the cotangent it is differentiated with (None: a scalar, seeded with one)."""
Seeds = Callable[[Tensor, slice], tuple[Seeded, Seeded | None]]
"""``(output rows, rows) -> (q, r)``: what is differentiated once (``q``) and the extra term of the product
(``r``, the pairing with ``d'`` at the output), as the module docstring writes them, each as a tensor with
its seed: ``<d_i, s_i>`` is ``s_i`` seeded with ``d_i``, which saves forming the product and its
derivative."""


def _loss_of(chain: Chain) -> Seeds:
    """The last stage's: the loss, nothing more (``d'_n = 0``)."""
    return lambda out, rows: ((chain.loss_of_output(out), None), None)


def _paired(d: Tensor, d_dot: Tensor) -> Seeds:
    """A body stage's: ``<d_i, s_i>`` and ``<d'_i, s_i>`` over the group's output channels."""
    return lambda out, rows: ((out, d[:, rows]), (out, d_dot[:, rows]))


def _rows(local: Params, rows: slice) -> Params:
    """Rows (output channels) of every parameter of a stage."""
    return {n: p[rows] for n, p in local.items()}


def _jvp(
    stage: Stage, local: Params, along: Params, a: Tensor, a_dot: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The stage's output and its directional derivative along (parameters ``along``, input ``a_dot``; None
    at the network's input, whose tangent is zero: the first block's convolution is not run on zeros)."""
    # dual tensors, not torch.func.jvp: no functorch transform to enter per call (the four Conv4 blocks on
    # an Omniglot support set: 3.6 ms against 10.1), and the fused batch norm stays exact there
    with forward_ad.dual_level():
        duals = {n: forward_ad.make_dual(p, along[n]) for n, p in local.items()}  # type: ignore[no-untyped-call]
        x = a if a_dot is None else forward_ad.make_dual(a, a_dot)  # type: ignore[no-untyped-call]
        out = stage(duals, x)
        primal, tangent = forward_ad.unpack_dual(out)  # type: ignore[no-untyped-call]
    assert tangent is not None  # the parameters carry tangents, so the output does
    return primal.detach(), tangent.detach()


def _sweep(
    stage: Stage,
    params: Params,
    u: Params,
    at: tuple[Tensor, Tensor | None],
    groups: list[slice],
    grad: Params,
    hvp: Params,
    seeds: Seeds,
) -> tuple[Tensor | None, Tensor | None]:
    """One stage of the backward sweep, group by group; fills ``grad`` and ``hvp`` for its parameters and
    returns ``(d, d')`` at its input. ``at``: the input ``a`` and its tangent, None at the network's input,
    whose derivatives are not needed (and come back None)."""
    local, along = stage.local(params), stage.local(u)
    a, a_dot = at
    x = a.detach().requires_grad_(a_dot is not None)
    d_in = None if a_dot is None else torch.zeros_like(a)
    d_dot_in = None if a_dot is None else torch.zeros_like(a)
    pieces: dict[str, tuple[list[Tensor], list[Tensor]]] = {n: ([], []) for n in local}
    for rows in groups:
        leaves = {n: p[rows].detach().requires_grad_(True) for n, p in local.items()}
        inputs = [*leaves.values(), *([] if a_dot is None else [x])]
        directions = [*_rows(along, rows).values(), *([] if a_dot is None else [a_dot])]
        (q, q_seed), r = seeds(stage(leaves, x), rows)
        g = torch.autograd.grad(q, inputs, q_seed, create_graph=True, materialize_grads=True)
        # H u = grad <g, u> (+ grad r): g seeded by u, not summed with it; a zero g (a conv bias before
        # batch norm) has no graph and adds nothing
        terms = [(gi, di) for gi, di in zip(g, directions, strict=True) if gi.requires_grad]
        h = torch.autograd.grad(
            [t for t, _ in terms] + ([r[0]] if r else []),
            inputs,
            [s for _, s in terms] + ([r[1]] if r else []),
            materialize_grads=True,
        )
        for n, gn, hn in zip(leaves, g, h, strict=False):
            pieces[n][0].append(gn.detach())
            pieces[n][1].append(hn)
        if d_in is not None and d_dot_in is not None:
            d_in += g[-1].detach()
            d_dot_in += h[-1]
    for n, (gs, hs) in pieces.items():
        full = f"{stage.prefix}.{n}" if stage.prefix else n
        grad[full], hvp[full] = torch.cat(gs), torch.cat(hs)
    return d_in, d_dot_in
