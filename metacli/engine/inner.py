"""The one inner loop of metacli, and the MAML family's inner step composed from small pieces.

Every inner loop (MAML and its variants, Reptile, MOML's meta-gradient, the online fine-tuning and
TOE) is :func:`descend`:

    phi^0 = theta
    g^k = grad_{phi_A} L_k(phi^k)                       (A: the adapted keys; L_k the step's loss)
    phi^{k+1}_A = rule(k, phi^k_A, g^k),  phi^{k+1}_p = theta_p for p outside A

with ``create_graph`` deciding whether ``g^k`` stays differentiable (second order) or is detached
(first order). A *rule* is a function. The MAML family's rule (:class:`InnerRule`) is a composition,
the way optax chains gradient transformations, of three pieces:

    phi^{k+1}_p = phi^k_p - r_{p,k} * P_p(g^k_p)

- which parameters adapt (the set A): :func:`every` (MAML), :func:`in_group` ``"head"`` (ANIL) or
  ``"body"`` (BOIL), either less the batch-norm scales and shifts (:func:`except_norm`, a config's
  ``adapt_norm: false``);
- the preconditioner P: :class:`Identity`, or :class:`MetaCurvature`'s Kronecker factors (Park & Oliva 2019);
- the rate r: :class:`ScalarRate` alpha; :class:`LSLR`'s alpha_{p,k} (MAML++, Antoniou et al. 2019);
  :class:`SparseMask`, alpha * mask(m_p) (Sparse-MAML, von Oswald et al. 2021); :class:`ReLURate`, ReLU(m_p)
  (sparse-ReLU-MAML, same paper); :class:`MetaSGDRate`, a learned rate per element (Li et al. 2017).

Each variant's paper, reference code and the choices of that code that metacli follows or not:
docs/maml_family.md.

Each variant's config (:mod:`metacli.engine.config.algorithms`) returns its composition. A piece that
learns (rates, curvature factors, masks) declares its extra meta-parameters per network tensor
(:meth:`Piece.init`) under its own ``kind``, receives exactly those back when it runs, and summarises
them for the metrics (:meth:`Piece.summarize`). The extras live in the same flat ``Params`` as the network's
initialisation, under keys ``"<kind>:<parameter>[:<part>]"`` (a network parameter name never holds a
colon), so executors, optimisers and checkpoints handle them like any other meta-parameter; only
:func:`extra_key` and :func:`group_extras` know that key format.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from metacli.engine.functional import grad_and_loss
from metacli.engine.types import Params

EXTRA_SEPARATOR = ":"
"""Separates an extra's kind from the parameter it belongs to: ``lslr:body.0.conv.weight``."""

StepRule = Callable[[int, Params, Params], Params]
"""``(k, phi^k of the adapted keys, g^k) -> phi^{k+1}`` of those keys."""

Extras = dict[str, Tensor]
"""One piece's extra meta-parameters for one network tensor, by part (``""`` when it has a single one)."""


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


def extra_key(kind: str, name: str, part: str = "") -> str:
    """``kind:name``, or ``kind:name:part`` for a piece with several tensors (``mc:head.weight:in``)."""
    return EXTRA_SEPARATOR.join([kind, name, part] if part else [kind, name])


def group_extras(extras: Mapping[str, Tensor]) -> dict[tuple[str, str], Extras]:
    """The flat extras as ``{(kind, parameter): {part: tensor}}``, what each piece receives back."""
    out: dict[tuple[str, str], Extras] = {}
    for key, v in extras.items():
        kind, name, *part = key.split(EXTRA_SEPARATOR)
        out.setdefault((kind, name), {})["".join(part)] = v
    return out


# ---------------------------------------------------------------- the pieces


class Piece(Protocol):
    """A piece of the inner step: its extra meta-parameters per network tensor, and their summary."""

    kind: ClassVar[str]
    """Where its extras live in the meta-parameters (``"<kind>:<parameter>"``); ``""``: it has none."""

    def init(self, p: Tensor, generator: torch.Generator) -> Extras:
        """Its extras for a network tensor ``p`` at their initialisation, by part; {} for none."""
        ...

    @staticmethod
    def summarize(layer: str, values: list[Tensor]) -> dict[str, float]:
        """Scalars showing what it learned for one layer (metrics.jsonl, TensorBoard)."""
        ...


class Preconditioner(Piece, Protocol):
    """``P_p``: transforms parameter p's inner gradient."""

    def __call__(self, g: Tensor, extras: Extras) -> Tensor:
        """``P_p(g)``, with the piece's extras for p."""
        ...


class Rate(Piece, Protocol):
    """``r_{p,k}``: the step size of parameter p at inner step k (a number, or a tensor like p)."""

    def __call__(self, k: int, extras: Extras) -> Tensor | float:
        """``r_{p,k}``, with the piece's extras for p."""
        ...


class _NoExtras:
    """A piece that learns nothing."""

    kind: ClassVar[str] = ""

    def init(self, p: Tensor, generator: torch.Generator) -> Extras:
        """No extras."""
        del p, generator
        return {}

    @staticmethod
    def summarize(layer: str, values: list[Tensor]) -> dict[str, float]:
        """Nothing to show."""
        del layer, values
        return {}


class Identity(_NoExtras):
    """``P(g) = g``: no preconditioning (MAML)."""

    def __call__(self, g: Tensor, extras: Extras) -> Tensor:
        """The gradient itself."""
        del extras
        return g


@dataclass(frozen=True)
class ScalarRate(_NoExtras):
    """``r_{p,k} = alpha``: one fixed rate (MAML, Finn et al. 2017)."""

    alpha: float

    def __call__(self, k: int, extras: Extras) -> Tensor | float:
        """alpha."""
        del k, extras
        return self.alpha


class MetaCurvature:
    """Meta-Curvature's ``P_p(g) = M_p g``, M Kronecker-factored per tensor (Park & Oliva, NeurIPS 2019).

    A 2-D ``(out, in)`` weight: ``M_out G M_in^T``; a 4-D conv weight, G viewed as (out, in, kh*kw):
    ``(M_out (x) M_in (x) M_filter) vec(G)``; any other shape: ``m * g`` elementwise. The factors start at
    identities (ones), so training starts as MAML.
    """

    kind: ClassVar[str] = "mc"

    def init(self, p: Tensor, generator: torch.Generator) -> Extras:
        """Identity factors ``out``, ``in`` (and ``filter``, size kh*kw) for 2-D / 4-D; else ones."""
        del generator

        def eye(n: int) -> Tensor:
            return torch.eye(n, dtype=p.dtype, device=p.device)

        if p.dim() == 2:
            return {"out": eye(p.shape[0]), "in": eye(p.shape[1])}
        if p.dim() == 4:
            return {"out": eye(p.shape[0]), "in": eye(p.shape[1]), "filter": eye(p.shape[2] * p.shape[3])}
        return {"": torch.ones_like(p)}

    def __call__(self, g: Tensor, extras: Extras) -> Tensor:
        """Mode products of g with its factors."""
        if g.dim() == 2:
            return extras["out"] @ g @ extras["in"].T
        if g.dim() == 4:
            # one mode at a time (three matrix products); a single 4-operand einsum may contract the
            # factors with each other first, through an (out^2 in^2 filter^2) intermediate
            out = torch.einsum("Oo,oif->Oif", extras["out"], g.flatten(2))
            out = torch.einsum("Ii,oif->oIf", extras["in"], out)
            out = torch.einsum("Ff,oif->oiF", extras["filter"], out)
            return out.reshape(g.shape)
        return extras[""] * g

    @staticmethod
    def summarize(layer: str, values: list[Tensor]) -> dict[str, float]:
        """``mc_norm/<layer>``: Frobenius norm of the layer's factors together."""
        return {f"mc_norm/{layer}": float(torch.sqrt(sum((v.double() ** 2).sum() for v in values)))}  # type: ignore[arg-type]


@dataclass(frozen=True)
class LSLR:
    """MAML++'s ``r_{p,k} = alpha_{p,k}``: one learned rate per tensor and step, starting at alpha.

    Antoniou, Edwards, Storkey, ICLR 2019. Steps beyond the ``steps`` learned reuse the last rate.
    """

    alpha: float
    steps: int
    kind: ClassVar[str] = "lslr"

    def init(self, p: Tensor, generator: torch.Generator) -> Extras:
        """``steps`` rates at alpha."""
        del generator
        return {"": p.new_full((self.steps,), self.alpha)}

    def __call__(self, k: int, extras: Extras) -> Tensor | float:
        """Step k's rate (the last one past the end)."""
        rates = extras[""]
        return rates[min(k, rates.shape[0] - 1)]

    @staticmethod
    def summarize(layer: str, values: list[Tensor]) -> dict[str, float]:
        """``lslr_rate/<layer>/<k>``: mean learned rate of step k over the layer's tensors."""
        rates = torch.stack(values).mean(0)
        return {f"lslr_rate/{layer}/{k}": float(r) for k, r in enumerate(rates)}


def ste_sign_mask(m: Tensor) -> Tensor:
    """Sparse-MAML's mask ``0.5 (sign(m) + 1)`` (1 where m > 0, 0 where m < 0, 0.5 at 0, as the code).

    Straight-through: the backward pass treats ``sign`` as the identity, so ``d mask / d m = 0.5``.
    Written as ``m + sg(sign(m) - m)`` rather than an ``autograd.Function`` so it composes with vmap.
    """
    return 0.5 * (m + (torch.sign(m) - m).detach() + 1)


def ste_relu(m: Tensor) -> Tensor:
    """sparse-ReLU-MAML's rate ``ReLU(m)`` with the identity as its backward (dead rates can revive)."""
    return m + (torch.relu(m) - m).detach()


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


def _flat(values: list[Tensor]) -> Tensor:
    return torch.cat([v.flatten() for v in values])


@dataclass(frozen=True)
class SparseMask:
    """Sparse-MAML's ``r_p = alpha * mask(m_p)``, a straight-through binary mask per element.

    von Oswald et al., "Learning where to learn", NeurIPS 2021. Logits drawn by :func:`sparse_mask_init`.
    """

    alpha: float
    kaiming: bool
    shift: float
    kind: ClassVar[str] = "mask"

    def init(self, p: Tensor, generator: torch.Generator) -> Extras:
        """Mask logits, about half of them negative."""
        return {"": sparse_mask_init(p, self.kaiming, self.shift, generator)}

    def __call__(self, k: int, extras: Extras) -> Tensor | float:
        """alpha times the mask."""
        del k
        return self.alpha * ste_sign_mask(extras[""])

    @staticmethod
    def summarize(layer: str, values: list[Tensor]) -> dict[str, float]:
        """``mask_sparsity/<layer>``: fraction of the entries that stop adaptation (m < 0)."""
        return {f"mask_sparsity/{layer}": float((_flat(values) < 0).double().mean())}


@dataclass(frozen=True)
class MetaSGDRate:
    """Meta-SGD's ``r_p = a_p``: a learned rate per element of p, unconstrained, starting at alpha.

    Li, Zhou, Chen, Li. "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017: the inner step
    ``phi <- phi - a (.) grad L_S(phi)``, with ``a`` meta-learned with theta. The paper draws ``a`` at random
    in [0.005, 0.1]; here it starts at alpha, so that training starts as MAML (and a run is reproducible from
    theta's seed alone). Unlike :class:`ReLURate` a rate may turn negative (the paper does not clip it).
    """

    alpha: float
    kind: ClassVar[str] = "metasgd"

    def init(self, p: Tensor, generator: torch.Generator) -> Extras:
        """a = alpha everywhere."""
        del generator
        return {"": torch.full_like(p, self.alpha)}

    def __call__(self, k: int, extras: Extras) -> Tensor | float:
        """a itself, the same at every step (the paper learns one vector for all steps)."""
        del k
        return extras[""]

    @staticmethod
    def summarize(layer: str, values: list[Tensor]) -> dict[str, float]:
        """``metasgd_rate_mean/<layer>`` and ``metasgd_rate_negative/<layer>`` (fraction of rates below 0)."""
        flat = _flat(values).double()
        return {
            f"metasgd_rate_mean/{layer}": float(flat.mean()),
            f"metasgd_rate_negative/{layer}": float((flat < 0).double().mean()),
        }


@dataclass(frozen=True)
class ReLURate(MetaSGDRate):
    """sparse-ReLU-MAML's ``r_p = ReLU(m_p)`` per element (straight-through), m starting at alpha.

    von Oswald et al., NeurIPS 2021: Meta-SGD with rates that can be exactly zero (:class:`MetaSGDRate`'s
    per-element rates through a ReLU whose backward is the identity, so dead rates can revive).
    """

    kind: ClassVar[str] = "rate"

    def __call__(self, k: int, extras: Extras) -> Tensor | float:
        """ReLU(m)."""
        del k
        return ste_relu(extras[""])

    @staticmethod
    def summarize(layer: str, values: list[Tensor]) -> dict[str, float]:
        """``rate_sparsity/<layer>`` (zero rates) and ``rate_mean/<layer>`` (mean ReLU(m))."""
        flat = _flat(values)
        return {
            f"rate_sparsity/{layer}": float((flat <= 0).double().mean()),
            f"rate_mean/{layer}": float(flat.clamp(min=0).double().mean()),
        }


PIECES: tuple[type[Piece], ...] = (MetaCurvature, LSLR, SparseMask, ReLURate, MetaSGDRate)
"""Every piece with extras, by which :func:`extra_metrics` finds the summary of a kind."""


# ---------------------------------------------------------------- which parameters adapt


def every(name: str) -> bool:
    """Every parameter adapts (MAML)."""
    del name
    return True


def in_group(group: str) -> Callable[[str], bool]:
    """Only the parameters of ``group`` adapt: ``"head"`` (ANIL) or ``"body"`` (BOIL)."""
    from metacli.engine.models import param_group

    def adapted(name: str) -> bool:
        return param_group(name) == group

    return adapted


def except_norm(among: Callable[[str], bool]) -> Callable[[str], bool]:
    """The parameters of ``among`` but the batch-norm scales and shifts, which stay at theta.

    MAML++'s code (``enable_inner_loop_optimizable_bn_params: false``), the Meta-Curvature code and
    Sparse-MAML's ResNet-12 runs (``--no_bn_in_inner_loop``) meta-learn them without adapting them.
    """
    from metacli.engine.models import is_norm

    def adapted(name: str) -> bool:
        return among(name) and not is_norm(name)

    return adapted


# ---------------------------------------------------------------- the composition


@dataclass(frozen=True)
class InnerRule:
    """The MAML family's inner step ``phi_p <- phi_p - r_{p,k} * P_p(g_p)`` for p in the adapted set.

    Args:
        adapted: which parameters move in the inner loop.
        precondition: P.
        rate: r.
    """

    adapted: Callable[[str], bool]
    precondition: Preconditioner
    rate: Rate

    def pieces(self) -> tuple[Piece, ...]:
        """The pieces that may learn extras, in the order their extras are created."""
        return (self.precondition, self.rate)

    def init_extras(self, theta: Params, generator: torch.Generator) -> Params:
        """Every piece's extras at their initialisation, for every adapted tensor."""
        extras: Params = {}
        for name, p in theta.items():
            if self.adapted(name):
                for piece in self.pieces():
                    parts = piece.init(p, generator).items()
                    extras.update({extra_key(piece.kind, name, part): v for part, v in parts})
        return extras

    def step_rule(self, extras: Params) -> StepRule:
        """The :data:`StepRule` of this composition with the given extras."""
        own = group_extras(extras)
        pre, rate = self.precondition, self.rate

        def rule(k: int, phi: Params, g: Params) -> Params:
            return {
                n: p - rate(k, own.get((rate.kind, n), {})) * pre(g[n], own.get((pre.kind, n), {}))
                for n, p in phi.items()
            }

        return rule


# ---------------------------------------------------------------- what the extras look like


def layer_of(key: str) -> str:
    """The module an extra belongs to: ``lslr:body.0.conv.weight`` -> ``body.0.conv``."""
    name = key.split(EXTRA_SEPARATOR)[1]
    return name.rsplit(".", 1)[0] if "." in name else name


def extra_metrics(extras: Params, pieces: tuple[type[Piece], ...] = PIECES) -> dict[str, float]:
    """Scalars that show what the extras learned, per layer: each piece's :meth:`Piece.summarize`."""
    summaries = {piece.kind: piece.summarize for piece in pieces}
    groups: dict[tuple[str, str], list[Tensor]] = {}
    for key, v in extras.items():
        groups.setdefault((key.split(EXTRA_SEPARATOR)[0], layer_of(key)), []).append(v.detach())
    out: dict[str, float] = {}
    for (kind, layer), values in sorted(groups.items()):
        out.update(summaries[kind](layer, values))
    return out


def curvature(name: str, g: Tensor, extras: Params) -> Tensor:
    """Meta-Curvature's ``M g`` for parameter ``name``, its factors read from the flat ``extras``."""
    return MetaCurvature()(g, group_extras(extras)[(MetaCurvature.kind, name)])
