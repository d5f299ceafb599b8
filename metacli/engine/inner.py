"""The one inner loop of metacli, with swappable update rules.

Every inner loop (MAML and its variants, Reptile, MOML's meta-gradient, the online fine-tuning and
TOE) is :func:`descend`:

    phi^0 = theta
    g^k = grad_{phi_A} L_k(phi^k)                       (A: the adapted keys; L_k the step's loss)
    phi^{k+1}_A = rule(k, phi^k_A, g^k),  phi^{k+1}_p = theta_p for p outside A

with ``create_graph`` deciding whether ``g^k`` stays differentiable (second order) or is detached
(first order). A *rule* is a function; the MAML family's rule (:class:`FamilyRule`) composes the
three parts its variants differ in:

    phi^{k+1}_p = phi^k_p - r_{p,k} * P_p(g^k_p)

- the adapted set A: all parameters (MAML), the head (ANIL), the body (BOIL);
- the preconditioner P: identity, or Meta-Curvature's Kronecker-factored transform (Park & Oliva 2019);
- the rate r: the scalar alpha; LSLR's learned alpha_{p,k} (MAML++, Antoniou et al. 2019);
  alpha * mask(m_p) with a straight-through binary mask (Sparse-MAML, von Oswald et al. 2021);
  ReLU(m_p) with a straight-through ReLU (sparse-ReLU-MAML, same paper).

The extra meta-parameters these parts learn (rates, curvature matrices, masks) live in the same flat
``Params`` as the network's initialisation, under keys ``"<kind>:<parameter>"`` (a network parameter
name never holds a colon), so executors, optimisers and checkpoints handle them like any other
meta-parameter; :func:`split_meta` separates them before the network is called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from metacli.engine.config.algorithms import Adapt, Rate
from metacli.engine.functional import grad_and_loss
from metacli.engine.types import Params

EXTRA_SEPARATOR = ":"
"""Separates an extra's kind from the parameter it belongs to: ``lslr:body.0.conv.weight``."""

StepRule = Callable[[int, Params, Params], Params]
"""``(k, phi^k of the adapted keys, g^k) -> phi^{k+1}`` of those keys."""


def descend(
    loss_at: Callable[[int, Params], Tensor],
    theta: Params,
    steps: int,
    rule: StepRule,
    create_graph: bool,
    adapted: Callable[[str], bool] | None = None,
) -> tuple[Params, Tensor | None]:
    """``steps`` steps of ``rule`` from ``theta`` on the adapted keys; the others stay at ``theta``.

    Args:
        loss_at: ``(k, phi) -> L_k(phi)``, the loss of step k (a fixed support set, or step k's
            mini-batch for Reptile), on the full parameter dict.
        theta: the starting point (network parameters only).
        steps: K, the number of steps.
        rule: the update of the adapted keys.
        create_graph: differentiable gradients (second order) or detached ones (first order).
        adapted: which keys move; None: all. Gradients of the others are never computed.

    Returns:
        phi^K and the loss of step 0 (detached; None when ``steps`` is 0).
    """
    names = [k for k in theta if adapted is None or adapted(k)]
    phi, first_loss = dict(theta), None
    for k in range(steps):
        fixed = {n: v for n, v in phi.items() if n not in names}

        def loss_of_adapted(p: Params, k: int = k, fixed: Params = fixed) -> Tensor:
            return loss_at(k, {**fixed, **p})

        grads, loss = grad_and_loss(loss_of_adapted, {n: phi[n] for n in names}, create_graph)
        phi.update(rule(k, {n: phi[n] for n in names}, grads))
        first_loss = loss.detach() if first_loss is None else first_loss
    return phi, first_loss


def sgd_rule(
    lr: float, weight_decay: float = 0.0, clip: Callable[[Params], Params] | None = None
) -> StepRule:
    """``phi <- phi - lr (clip(g) + weight_decay * phi)``: PyTorch SGD (decay added after clipping)."""

    def rule(k: int, phi: Params, g: Params) -> Params:
        del k
        g = clip(g) if clip is not None else g
        if weight_decay == 0:
            return {n: p - lr * g[n] for n, p in phi.items()}
        return {n: p - lr * (g[n] + weight_decay * p) for n, p in phi.items()}

    return rule


# ---------------------------------------------------------------- meta-parameters: theta and extras


def is_extra(key: str) -> bool:
    """Whether a meta-parameter key is an algorithm extra rather than a network parameter."""
    return EXTRA_SEPARATOR in key


def split_meta(meta: Mapping[str, Tensor]) -> tuple[Params, Params]:
    """(theta: the network's initialisation, extras: the rule's meta-parameters)."""
    theta = {k: v for k, v in meta.items() if not is_extra(k)}
    extras = {k: v for k, v in meta.items() if is_extra(k)}
    return theta, extras


def extra_key(kind: str, name: str, part: str | None = None) -> str:
    """``kind:name`` or ``kind:name:part`` (a Meta-Curvature factor: ``mc:head.weight:in``)."""
    return EXTRA_SEPARATOR.join([kind, name] if part is None else [kind, name, part])


def adapts(adapt: Adapt, name: str) -> bool:
    """Whether ``name`` is in the adapted set: all, ``head.*`` only (ANIL), ``body.*`` only (BOIL)."""
    if adapt == "all":
        return True
    from metacli.engine.models import param_group

    return param_group(name) == adapt


def ste_sign_mask(m: Tensor) -> Tensor:
    """Sparse-MAML's mask ``0.5 (sign(m) + 1)`` (1 where m > 0, 0 where m < 0, 0.5 at 0, as the code).

    Straight-through: the backward pass treats ``sign`` as the identity, so ``d mask / d m = 0.5``.
    Written as ``m + sg(sign(m) - m)`` rather than an ``autograd.Function`` so it composes with vmap.
    """
    return 0.5 * (m + (torch.sign(m) - m).detach() + 1)


def ste_relu(m: Tensor) -> Tensor:
    """sparse-ReLU-MAML's rate ``ReLU(m)`` with the identity as its backward (dead rates can revive)."""
    return m + (torch.relu(m) - m).detach()


def curvature_factors(name: str, p: Tensor) -> dict[str, Tensor]:
    """Meta-Curvature's factors for one tensor, at their initialisation (training starts as MAML).

    1-D (and any shape but 2-D and 4-D): an elementwise ``m`` of ones; a 2-D ``(out, in)`` weight:
    ``M_out``, ``M_in`` identities; a 4-D conv weight ``(out, in, kh, kw)``: ``M_out``, ``M_in`` and
    ``M_filter`` (size kh*kw) identities.
    """

    def eye(n: int) -> Tensor:
        return torch.eye(n, dtype=p.dtype, device=p.device)

    if p.dim() == 2:
        return {extra_key("mc", name, "out"): eye(p.shape[0]), extra_key("mc", name, "in"): eye(p.shape[1])}
    if p.dim() == 4:
        return {
            extra_key("mc", name, "out"): eye(p.shape[0]),
            extra_key("mc", name, "in"): eye(p.shape[1]),
            extra_key("mc", name, "filter"): eye(p.shape[2] * p.shape[3]),
        }
    return {extra_key("mc", name): torch.ones_like(p)}


def curvature(name: str, g: Tensor, extras: Params) -> Tensor:
    """Meta-Curvature's ``M g`` for one tensor: mode products with its Kronecker factors.

    2-D: ``M_out G M_in^T``; 4-D: ``G x_out M_out x_in M_in x_filter M_filter`` on G viewed as
    (out, in, kh*kw), i.e. ``(M_out (x) M_in (x) M_filter) vec(G)``; otherwise ``m * g``.
    """
    if g.dim() == 2:
        return extras[extra_key("mc", name, "out")] @ g @ extras[extra_key("mc", name, "in")].T
    if g.dim() == 4:
        m_o, m_i = extras[extra_key("mc", name, "out")], extras[extra_key("mc", name, "in")]
        m_f = extras[extra_key("mc", name, "filter")]
        # one mode at a time (three matrix products); a single 4-operand einsum may contract the
        # factors with each other first, through an (out^2 in^2 filter^2) intermediate
        out = torch.einsum("Oo,oif->Oif", m_o, g.flatten(2))
        out = torch.einsum("Ii,oif->oIf", m_i, out)
        out = torch.einsum("Ff,oif->oiF", m_f, out)
        return out.reshape(g.shape)
    return extras[extra_key("mc", name)] * g


def sparse_mask_init(p: Tensor, kaiming: bool, shift: float, generator: torch.Generator) -> Tensor:
    """Sparse-MAML's mask logits: Kaiming-uniform (dim > 1) or U(-0.5, 0.5), mean-centred, plus ``shift``.

    Centring puts about half the entries below zero: the paper's ~50 % initial sparsity.
    """
    if kaiming and p.dim() > 1:
        fan_in = p[0].numel()
        bound = math.sqrt(6.0 / fan_in)  # kaiming_uniform_, a = 0: gain sqrt(2) x sqrt(3 / fan_in)
    else:
        bound = 0.5
    m = (torch.rand(p.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return (m - m.mean() + shift).to(p.dtype).to(p.device)


@dataclass(frozen=True)
class FamilyRule:
    """The MAML family's inner step ``phi_p <- phi_p - r_{p,k} * P_p(g_p)`` (module docstring).

    Args:
        adapt: the adapted set.
        rate: the rate r.
        curvature: apply Meta-Curvature's P.
        alpha: the scalar rate (and the initial value of LSLR's and sparse-ReLU's learned rates).
        lslr_steps: how many per-step rates LSLR learns (steps beyond reuse the last one).
    """

    adapt: Adapt
    rate: Rate
    curvature: bool
    alpha: float
    lslr_steps: int

    def adapted(self, name: str) -> bool:
        """Whether ``name`` moves in the inner loop."""
        return adapts(self.adapt, name)

    def init_extras(
        self, theta: Params, generator: torch.Generator, mask_kaiming: bool = True, mask_shift: float = 0.0
    ) -> Params:
        """The rule's extra meta-parameters at their initialisation, for every adapted tensor."""
        extras: Params = {}
        for name, p in theta.items():
            if not self.adapted(name):
                continue
            if self.curvature:
                extras.update(curvature_factors(name, p))
            if self.rate == "lslr":
                extras[extra_key("lslr", name)] = p.new_full((self.lslr_steps,), self.alpha)
            elif self.rate == "mask":
                extras[extra_key("mask", name)] = sparse_mask_init(p, mask_kaiming, mask_shift, generator)
            elif self.rate == "relu":
                extras[extra_key("rate", name)] = torch.full_like(p, self.alpha)
        return extras

    def step_rule(self, extras: Params) -> StepRule:
        """The :data:`StepRule` of this variant with the given extras."""

        def rule(k: int, phi: Params, g: Params) -> Params:
            return {n: p - self.step(n, k, g[n], extras) for n, p in phi.items()}

        return rule

    def step(self, name: str, k: int, g: Tensor, extras: Params) -> Tensor:
        """``r_{name,k} * P_name(g)``, what step k subtracts from parameter ``name``."""
        direction = curvature(name, g, extras) if self.curvature else g
        if self.rate == "scalar":
            return self.alpha * direction
        if self.rate == "lslr":
            rates = extras[extra_key("lslr", name)]
            return rates[min(k, rates.shape[0] - 1)] * direction
        if self.rate == "mask":
            return self.alpha * ste_sign_mask(extras[extra_key("mask", name)]) * direction
        return ste_relu(extras[extra_key("rate", name)]) * direction


# ---------------------------------------------------------------- what the extras look like


def layer_of(key: str) -> str:
    """The module an extra belongs to: ``lslr:body.0.conv.weight`` -> ``body.0.conv``."""
    name = key.split(EXTRA_SEPARATOR)[1]
    return name.rsplit(".", 1)[0] if "." in name else name


def extra_metrics(extras: Params) -> dict[str, float]:
    """Scalars that show what the extras learned, per layer (for metrics.jsonl and TensorBoard).

    - ``lslr_rate/<layer>/<k>``: mean learned rate of step k over the layer's tensors (LSLR);
    - ``mask_sparsity/<layer>``: fraction of the layer's mask entries that stop adaptation (m < 0);
    - ``rate_sparsity/<layer>`` and ``rate_mean/<layer>``: zero rates and mean ReLU(m) (sparse-ReLU);
    - ``mc_norm/<layer>``: Frobenius norm of the layer's curvature factors together (Meta-Curvature).
    """
    groups: dict[tuple[str, str], list[Tensor]] = {}
    for key, v in extras.items():
        groups.setdefault((key.split(EXTRA_SEPARATOR)[0], layer_of(key)), []).append(v.detach())
    out: dict[str, float] = {}
    for (kind, layer), values in sorted(groups.items()):
        if kind == "lslr":
            rates = torch.stack(values).mean(0)
            out.update({f"lslr_rate/{layer}/{k}": float(r) for k, r in enumerate(rates)})
        elif kind == "mask":
            flat = torch.cat([v.flatten() for v in values])
            out[f"mask_sparsity/{layer}"] = float((flat < 0).double().mean())
        elif kind == "rate":
            flat = torch.cat([v.flatten() for v in values])
            out[f"rate_sparsity/{layer}"] = float((flat <= 0).double().mean())
            out[f"rate_mean/{layer}"] = float(flat.clamp(min=0).double().mean())
        elif kind == "mc":
            out[f"mc_norm/{layer}"] = float(torch.sqrt(sum((v.double() ** 2).sum() for v in values)))  # type: ignore[arg-type]
    return out
