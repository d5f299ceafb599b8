"""The algorithms' configs: the ``algorithm:`` section of a run spec, without torch.

One pydantic model per algorithm, selected by its ``name`` (the discriminated union
:data:`AlgorithmConfig`), and :data:`ONLINE_ALGORITHM_NAMES`, the algorithms of the online protocol. A
run spec is validated from this module alone (by the spec module), so a typo in a spec is reported without
importing torch. Each algorithm's implementation imports its config from here
(:mod:`metacli.engine.algorithms.maml`, ``.reptile``, ``.implicit``, ``.moml``, ``.online_baselines``),
and each config names that implementation (``factory``, :mod:`.registry`), from which
:mod:`metacli.engine.algorithms` derives its registries.

To add an algorithm, write its config here with its ``factory`` and put it in :data:`AlgorithmConfig`
(a MAML variant, a subclass of :class:`MAMLConfig`, joins :data:`MAML_VARIANTS` by that alone).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from metacli.engine.config.fields import Count, Finite, NonNegative, Positive, Steps
from metacli.engine.config.registry import Named, members, online_names

if TYPE_CHECKING:
    from metacli.engine.inner import InnerRule


# MAML and its variants (metacli.engine.algorithms.maml)

ClipScope = Literal["all", "network"]
"""Which meta-gradients ``grad_clip`` clamps: every meta-parameter's, or the network's (theta) only."""
MetaReduction = Literal["mean", "sum"]
"""The meta-batch reduction of the task losses."""
OldSpelling = tuple[str, str, bool]
"""The fields that selected a variant's inner step before issue 22: (adapt, rate, curvature)."""
_OLD_FIELDS = ("adapt", "rate", "curvature")
_MASK_FIELDS = {"mask_init": "kaiming", "mask_init_shift": 0.0}
_DUMPED_BEFORE_ADAPT_NORM = (
    "name", "alpha", "inner_steps", "eval_inner_steps", "first_order", "outer_lr", "grad_clip", "extras_lr"
)  # fmt: skip
"""The fields a run's spec.yaml recorded for every variant before ``adapt_norm`` existed (issue 23)."""


class MAMLConfig(Named):
    """Model-Agnostic Meta-Learning: SGD inner loop, Adam outer loop, second order by default.

    Each variant below is a subclass whose :meth:`inner_rule` composes its inner step from the pieces of
    :mod:`metacli.engine.inner` (which parameters adapt, the preconditioner, the rate); its ``name`` is
    its only spelling. Which parameters adapt is the variant's set (:meth:`adapted`), less the batch-norm
    scales and shifts unless ``adapt_norm``. The reference codes' choices and faults, per variant:
    docs/maml_family.md.
    """

    factory: ClassVar[str] = "metacli.engine.algorithms.maml:MAML"
    old_spelling: ClassVar[OldSpelling | None] = ("all", "scalar", False)
    """What (adapt, rate, curvature) said for this variant before issue 22 (read from old spec files);
    None for a variant added since, which no old spec names."""

    name: Literal["maml"] = "maml"
    """Algorithm name (discriminator)."""
    alpha: Positive = 0.01
    """Inner-loop (adaptation) SGD learning rate; the initial value of learned rates (LSLR, sparse-ReLU,
    Meta-SGD).
    On the mean loss: the MAML TensorFlow code's alpha on N-way tasks is N x alpha here (its summed loss)."""
    inner_steps: Count = 1
    """Inner SGD steps per task during meta-training."""
    eval_inner_steps: Steps = 10
    """Inner SGD steps per task at evaluation."""
    first_order: bool = False
    """Detach the inner gradients (FOMAML): no Hessian-vector products."""
    outer_lr: Positive = 1e-3
    """beta: Adam learning rate of the meta-update."""
    grad_clip: Positive | None = None
    """Clamp every meta-gradient element to [-grad_clip, grad_clip] (cbfinn MiniImageNet: 10); None: off."""
    clip_scope: ClipScope = "all"
    """What ``grad_clip`` clamps: ``all`` meta-parameters (theta and the variant's extras: rates, curvature
    factors, masks; as MAML++, whose clamp runs over every trainable tensor), or only the ``network``'s
    (theta; the Sparse-MAML code, whose masks are not clamped)."""
    meta_reduction: MetaReduction = "mean"
    """How the B task losses combine into the meta-loss: ``mean`` (the MAML code) or ``sum`` (the Sparse-MAML
    code). The sum's meta-gradient is B times the mean's; under Adam the two differ only through Adam's
    eps, under a clamp they differ. The logged query loss is the mean either way."""
    extras_lr: Positive | None = None
    """Adam learning rate of the variant's extras (rates, curvature factors, masks); None: outer_lr."""
    adapt_norm: bool = True
    """Batch-norm scale and shift adapt in the inner loop. False: the outer Adam still meta-learns them, but
    they stay at theta during adaptation and get no extras (no learned rates, curvature factors or masks).
    False is the default of lslr, metacurvature and maml_enhanced, as MAML++'s code
    (``enable_inner_loop_optimizable_bn_params: false``) and the Meta-Curvature code (which never puts them
    among its adapted weights); true elsewhere: Sparse-MAML's ConvNet runs and BOIL adapt them (Sparse-MAML's
    ResNet-12 runs do not: ``--no_bn_in_inner_loop``). cbfinn/maml meta-learns its batch-norm offsets (it has
    no scale) without adapting them, as ``adapt_norm: false`` does. No effect on a model without batch norm
    (the MLP)."""

    remat: bool = False
    """Exact second-order meta-gradient at memory flat in ``inner_steps``: keep only each inner step's fast
    weights and recompute the step, with its differentiable inner gradient, when the backward pass reaches
    it (a hand-written reverse pass, :mod:`metacli.engine.remat`). The same meta-gradient as the unrolled
    graph; peak memory is one Hessian-vector product of the support loss (batch norm there from primitive
    ops, which hold less at second order than the fused kernel) and grows with the steps by one copy of the
    adapted parameters each; each inner step's forward and gradient run twice instead of once. Only with the
    loop executor (``auto`` picks it). No effect with ``first_order``, which keeps no inner graph."""

    def adapted(self, among: Callable[[str], bool]) -> Callable[[str], bool]:
        """The parameters of ``among`` (the variant's set) that adapt: all, or all but the batch norm's."""
        from metacli.engine import inner

        return among if self.adapt_norm else inner.except_norm(among)

    def inner_rule(self) -> InnerRule:
        """``phi <- phi - alpha g`` on every parameter."""
        from metacli.engine import inner

        return inner.InnerRule(self.adapted(inner.every), inner.Identity(), inner.ScalarRate(self.alpha))

    @model_validator(mode="before")
    @classmethod
    def _one_spelling(cls, data: object) -> object:
        """Reads a spec written before issue 22, which spelled each variant's inner step in fields too, or
        a run's spec.yaml written before issue 23, which had no ``adapt_norm``.

        Fields that agree with ``name`` are dropped (with a FutureWarning), so old run folders resume;
        ``{name: maml, rate: lslr}`` and the like are refused, naming the one spelling (``{name: lslr}``).
        A stored spec of either age gets ``adapt_norm: true``, what every variant did then
        (:func:`_old_norm`).
        """
        if not isinstance(data, dict):
            return data
        data = _old_norm(data)
        if not any(f in data for f in _OLD_FIELDS):
            return data
        if cls.old_spelling is None:  # a variant added since issue 22: no old spec names it
            raise ValueError(
                f"{data.get('name')} is selected by its name alone: drop {', '.join(_OLD_FIELDS)} "
                "(fields removed in issue 22)"
            )
        data = dict(data)
        given = tuple(data.pop(f, own) for f, own in zip(_OLD_FIELDS, cls.old_spelling, strict=True))
        for f, default in _MASK_FIELDS.items():  # Sparse-MAML's own fields, once dumped for every variant
            if f not in cls.model_fields and data.get(f) == default:
                del data[f]
        if given != cls.old_spelling:
            raise ValueError(_spelling_error(str(data.get("name", "maml")), given))
        warnings.warn(
            f"algorithm fields {', '.join(_OLD_FIELDS)} are gone (issue 22): the name alone selects the "
            "inner step; those of this spec agree with its name and were dropped",
            FutureWarning,
            stacklevel=2,
        )
        return data


def _old_norm(data: dict[str, object]) -> dict[str, object]:
    """``data`` as it ran where it is a run's spec.yaml written before ``adapt_norm`` existed.

    Until issue 23 every variant adapted the batch-norm scale and shift; lslr, metacurvature and
    maml_enhanced no longer do by default, so an old run folder resumed (or compared by ``train``) would
    silently change. A spec.yaml records every field of its section: one that names every field of that
    time (:data:`_DUMPED_BEFORE_ADAPT_NORM`), or the fields of before issue 22, but not ``adapt_norm`` was
    written before it: it gets ``adapt_norm: true``, and ``meta_reduction: mean`` and ``clip_scope: all``
    where it does not name them (Sparse-MAML's defaults changed to ``sum`` and ``network`` at the same time).
    A hand-written spec rarely names them all; one that does is read the old way too.
    """
    if "adapt_norm" in data:
        return data
    dumped = all(f in data for f in _DUMPED_BEFORE_ADAPT_NORM) or any(f in data for f in _OLD_FIELDS)
    # meta_reduction and clip_scope came with adapt_norm: such a spec ran with the mean and the clamp on all
    return {"meta_reduction": "mean", "clip_scope": "all", **data, "adapt_norm": True} if dumped else data


def _spelling_error(name: str, given: tuple[object, ...]) -> str:
    """The message for an old spelling that disagrees with its name, naming the one spelling."""
    said = ", ".join(f"{f}: {v}" for f, v in zip(_OLD_FIELDS, given, strict=True))
    names_of: dict[tuple[object, ...], str] = {
        v.old_spelling: v.model_fields["name"].default
        for v in reversed(MAML_VARIANTS)  # maml before fomaml
        if v.old_spelling is not None
    }
    right = names_of.get(given)
    if right is None:
        names = ", ".join(v.model_fields["name"].default for v in MAML_VARIANTS)
        return f"no MAML variant has {{{said}}}; each variant is one name: {names}"
    first_order = ", first_order: true" if name == "fomaml" else ""
    return f"{{name: {name}, {said}}} is spelled {{name: {right}{first_order}}} (one name per variant)"


class FOMAMLConfig(MAMLConfig):
    """First-order MAML: a preset of MAML with ``first_order=True`` (Finn et al., 2017).

    See docs/maml_family.md.
    """

    name: Literal["fomaml"] = "fomaml"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    first_order: bool = True
    """Detach the inner gradients (FOMAML): no Hessian-vector products."""


class LSLRConfig(MAMLConfig):
    """LSLR: ``phi_p^{k+1} = phi_p^k - alpha_{p,k} g_p^k``, one learned rate per tensor and step.

    Antoniou, Edwards, Storkey. "How to train your MAML", ICLR 2019 (code HowToTrainYourMAMLPytorch).
    MAML++'s learned per-layer per-step rates alone: none of its other changes (multi-step loss, per-step
    batch norm, cosine annealing, derivative-order annealing). Rates start at ``alpha`` and are
    unconstrained; the outer Adam learns them with theta. Evaluated with more steps than trained, the
    extra steps reuse the last learned rate. As the code, the batch-norm scale and shift do not adapt (and
    have no rates); ``adapt_norm: true`` puts them back. See docs/maml_family.md.
    """

    old_spelling: ClassVar[OldSpelling | None] = ("all", "lslr", False)
    name: Literal["lslr"] = "lslr"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    adapt_norm: bool = False
    """Batch-norm scale and shift adapt in the inner loop (MAML++'s code: no, they are only meta-learned)."""

    def inner_rule(self) -> InnerRule:
        """Identity preconditioner, LSLR rates (``inner_steps`` of them) on every adapted parameter."""
        from metacli.engine import inner

        rate = inner.LSLR(self.alpha, self.inner_steps)
        return inner.InnerRule(self.adapted(inner.every), inner.Identity(), rate)


class MetaCurvatureConfig(MAMLConfig):
    """Meta-Curvature: ``phi^{k+1} = phi^k - alpha M g^k``, M Kronecker-factored per tensor, meta-learned.

    Park & Oliva. "Meta-Curvature", NeurIPS 2019 (code silverbottlep/maml). A weight's M is
    ``M_out (x) M_in (x) M_filter`` (identities at first), a bias's M elementwise (ones at first). As the
    code, the batch-norm scale and shift do not adapt (and have no M); ``adapt_norm: true`` puts them back.
    See docs/maml_family.md.
    """

    old_spelling: ClassVar[OldSpelling | None] = ("all", "scalar", True)
    name: Literal["metacurvature"] = "metacurvature"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    adapt_norm: bool = False
    """Batch-norm scale and shift adapt in the inner loop (the Meta-Curvature code: no, only meta-learned)."""

    def inner_rule(self) -> InnerRule:
        """Meta-Curvature's preconditioner, the scalar rate, every adapted parameter."""
        from metacli.engine import inner

        return inner.InnerRule(self.adapted(inner.every), inner.MetaCurvature(), inner.ScalarRate(self.alpha))


class MAMLEnhancedConfig(MAMLConfig):
    """MAML Enhanced: Meta-Curvature and LSLR together, ``phi_p^{k+1} = phi_p^k - alpha_{p,k} M_p g_p^k``.

    The composition of Park & Oliva 2019 and Antoniou et al. 2019 (no paper combines them). As both their
    codes, the batch-norm scale and shift do not adapt; ``adapt_norm: true`` puts them back.
    See docs/maml_family.md.
    """

    old_spelling: ClassVar[OldSpelling | None] = ("all", "lslr", True)
    name: Literal["maml_enhanced"] = "maml_enhanced"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    adapt_norm: bool = False
    """Batch-norm scale and shift adapt in the inner loop (neither MAML++'s nor the MC code adapts them)."""

    def inner_rule(self) -> InnerRule:
        """Meta-Curvature's preconditioner and LSLR rates, every adapted parameter."""
        from metacli.engine import inner

        rate = inner.LSLR(self.alpha, self.inner_steps)
        return inner.InnerRule(self.adapted(inner.every), inner.MetaCurvature(), rate)


class ANILConfig(MAMLConfig):
    """ANIL: only the head adapts, ``head^{k+1} = head^k - alpha grad_head L_S(body, head^k)``; body frozen.

    Raghu, Raghu, Bengio, Vinyals. "Rapid Learning or Feature Reuse?", ICLR 2020. The outer step
    still reaches the body through the adapted head's dependence on its features. Support and query go
    through the body as separate batches (learn2learn's example: one batch). See docs/maml_family.md.
    """

    old_spelling: ClassVar[OldSpelling | None] = ("head", "scalar", False)
    name: Literal["anil"] = "anil"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""

    def inner_rule(self) -> InnerRule:
        """MAML's step on the last linear layer only."""
        from metacli.engine import inner

        return inner.InnerRule(
            self.adapted(inner.in_group("head")), inner.Identity(), inner.ScalarRate(self.alpha)
        )


class BOILConfig(MAMLConfig):
    """BOIL: only the body adapts, the head stays at its initialisation in the inner loop (head rate 0).

    Oh, Yoo, Kim, Yun. "BOIL: Towards Representation Change for Few-shot Learning", ICLR 2021. Body
    and head are both meta-learned by the outer Adam. See docs/maml_family.md.
    """

    old_spelling: ClassVar[OldSpelling | None] = ("body", "scalar", False)
    name: Literal["boil"] = "boil"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""

    def inner_rule(self) -> InnerRule:
        """MAML's step on everything but the head."""
        from metacli.engine import inner

        return inner.InnerRule(
            self.adapted(inner.in_group("body")), inner.Identity(), inner.ScalarRate(self.alpha)
        )


class SparseCodeConfig(MAMLConfig):
    """The defaults Sparse-MAML and sparse-ReLU-MAML take from their released code (von Oswald et al., 2021).

    theta is trained first order (the code's ``--second_order`` is off, "NOT TESTED"; the extras still get
    a meta-gradient, through the updates they scale); the task losses are summed over the meta-batch; the
    clamp touches the network's meta-gradients only; the extras learn at Adam 0.0075. Not a run name.
    """

    first_order: bool = True
    """Detach the inner gradients (the released code's default); the extras are still meta-learned."""
    extras_lr: Positive | None = 0.0075
    """Adam learning rate of the masks / rates (code: 0.0075 ConvNet, 0.01 ResNet-12)."""
    clip_scope: ClipScope = "network"
    """What ``grad_clip`` clamps: the code clamps the network's meta-gradients, not the masks' or rates'."""
    meta_reduction: MetaReduction = "sum"
    """The code sums the task losses over the meta-batch (``sum``); ``mean``: MAML's."""


class SparseMAMLConfig(SparseCodeConfig):
    """Sparse-MAML: ``phi_p^{k+1} = phi_p^k - alpha mask(m_p) * g_p^k``, mask = STE(1[m_p > 0]).

    von Oswald, Zhao, Kobayashi, Schug, Caccia, Zucchet, Sacramento. "Learning where to learn",
    NeurIPS 2021 (code Johswald/learning_where_to_learn); the code's defaults are
    :class:`SparseCodeConfig`'s. Mask logits are learned at ``extras_lr``. The mask is the code's
    ``0.5 (sign(m) + 1)``: 1 where m > 0, 0 where m < 0, 0.5 at m = 0; its backward is the identity times
    0.5 (straight-through). See docs/maml_family.md.
    """

    old_spelling: ClassVar[OldSpelling | None] = ("all", "mask", False)
    name: Literal["sparse_maml"] = "sparse_maml"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    mask_init: Literal["kaiming", "uniform"] = "kaiming"
    """Mask logits: Kaiming-uniform for weights (--kaiming_init) or U(-0.5, 0.5) everywhere."""
    mask_init_shift: Finite = 0.0
    """Added to the mean-centred mask logits (its --init_shift); > 0 starts less sparse."""

    def inner_rule(self) -> InnerRule:
        """alpha times a learned binary mask per element, every parameter."""
        from metacli.engine import inner

        mask = inner.SparseMask(self.alpha, self.mask_init == "kaiming", self.mask_init_shift)
        return inner.InnerRule(self.adapted(inner.every), inner.Identity(), mask)


class MetaSGDConfig(MAMLConfig):
    """Meta-SGD: ``phi^{k+1} = phi^k - a (.) g^k``, a learned rate per element of theta, a starting at alpha.

    Li, Zhou, Chen, Li. "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017. The rates ``a``
    are meta-learned by the outer Adam together with theta (at ``extras_lr`` if given, else ``outer_lr``),
    second order as MAML. The paper draws ``a`` at random in [0.005, 0.1]; here every rate starts at alpha.
    """

    old_spelling: ClassVar[OldSpelling | None] = None
    name: Literal["meta_sgd"] = "meta_sgd"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""

    def inner_rule(self) -> InnerRule:
        """A learned, unconstrained rate per element, every parameter."""
        from metacli.engine import inner

        return inner.InnerRule(self.adapted(inner.every), inner.Identity(), inner.MetaSGDRate(self.alpha))


class SparseReLUMAMLConfig(SparseCodeConfig):
    """sparse-ReLU-MAML: ``phi^{k+1} = phi^k - ReLU(m) * g^k`` with a straight-through ReLU, m init alpha.

    von Oswald et al., NeurIPS 2021 (``--meta_relu_through --meta_constant_init``): Meta-SGD with
    rates that can be exactly zero. The code's defaults are :class:`SparseCodeConfig`'s, as Sparse-MAML.
    See docs/maml_family.md.
    """

    old_spelling: ClassVar[OldSpelling | None] = ("all", "relu", False)
    name: Literal["sparse_relu_maml"] = "sparse_relu_maml"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""

    def inner_rule(self) -> InnerRule:
        """A learned non-negative rate per element, every parameter."""
        from metacli.engine import inner

        return inner.InnerRule(self.adapted(inner.every), inner.Identity(), inner.ReLURate(self.alpha))


# Reptile (metacli.engine.algorithms.reptile)


class ReptileConfig(Named):
    """Reptile: first-order meta-learning by moving theta towards task-adapted weights.

    See docs/maml_family.md.
    """

    factory: ClassVar[str] = "metacli.engine.algorithms.reptile:Reptile"

    name: Literal["reptile"] = "reptile"
    """Algorithm name (discriminator)."""
    inner_optimizer: Literal["adam", "sgd"] = "adam"
    """Inner optimiser: Adam with beta1 = 0 (paper) or plain SGD."""
    inner_lr: Positive = 1e-3
    """Inner-loop learning rate."""
    inner_steps: Count = 32
    """Inner mini-batch steps per task in meta-training."""
    inner_batch: Count = 10
    """Examples per inner mini-batch (capped at the task's size)."""
    epsilon: Positive = 1.0
    """Outer step size at the start of training."""
    epsilon_final: NonNegative = 0.0
    """Outer step size at the end of training (linear anneal)."""
    eval_inner_steps: Steps = 32
    """Inner steps per task at evaluation (on the support only)."""


# Memory-reduced meta-learning, ITD-BiO (metacli.engine.algorithms.implicit)


class BilevelHeadConfig(Named):
    """Settings shared by the backbone / head bilevel algorithms.

    Paper against official code, and which option gives which: docs/bilevel.md.
    """

    factory: ClassVar[str] = "metacli.engine.algorithms.implicit:BilevelHead"

    inner_lr: Positive = 0.1
    """lambda_phi: step size of the K head gradient steps (code: 0.1 CIFAR-FS/FC100, 0.05 ImageNet)."""
    inner_steps: Count = 20
    """K: head gradient steps per task in meta-training."""
    reg: NonNegative = 1e-3
    """rho: strength of the lower level's L2 term on the head (its form: ``reg_form``); > 0 is the paper's R.
    The official memory-reduced code computes such a term but never adds it to its loss: 0."""
    reg_form: Literal["half_squared", "norm"] = "half_squared"
    """The L2 term: ``half_squared``, rho/2 |phi|^2 summed over the head's weight and bias (the paper's R,
    strongly convex); ``norm``, rho (|W|_2 + |b|_2), plain unsquared norms, what the official ITD-BiO code
    adds to its head loss (with rho 1e-4). itd_bio only: the implicit hypergradient needs the first form."""
    eval_inner_steps: Steps = 20
    """Head steps at evaluation (backbone frozen; the code's protocol: 20)."""
    eval_inner_lr: Positive | None = None
    """Head step size at evaluation; None: inner_lr (the code's protocol: 0.05)."""
    outer_optimizer: Literal["sgd", "adam"] = "sgd"
    """theta's optimiser: plain SGD (the paper's Algorithm 1) or Adam (the official code)."""
    outer_lr: Positive = 0.1
    """lambda_theta (SGD; SUGGESTED, the paper's value was not read) or Adam's rate (code: 1e-4 / 1e-3)."""
    warm_start: bool = True
    """Start slot i's head (and CG) from its values of the previous outer step (paper); false: the code."""
    grad_clip: Positive | None = None
    """Clamp every meta-gradient element to [-grad_clip, grad_clip]; None: off."""


class MemoryReducedConfig(BilevelHeadConfig):
    """Memory-reduced meta-learning: implicit hypergradient at phi^K by N warm-started CG steps."""

    name: Literal["memory_reduced"] = "memory_reduced"
    """Algorithm name (discriminator)."""
    cg_steps: Count = 20
    """N: conjugate-gradient steps on grad^2_phi g v = grad_phi f (Subroutine 1)."""
    cg_tol: NonNegative = 0.0
    """Stop CG updates once the residual norm is below this (0: always N steps, as the code)."""

    @model_validator(mode="after")
    def _smooth_lower_level(self) -> MemoryReducedConfig:
        """Refuses ``reg_form: norm``: the implicit hypergradient solves with the lower level's Hessian,
        which |W|_2 + |b|_2 does not have at 0 and which it leaves singular elsewhere (no curvature along
        W or b)."""
        if self.reg_form == "norm":
            raise ValueError(
                "reg_form: norm (the official ITD-BiO code's |W|_2 + |b|_2) has no Hessian at 0 and adds no "
                "curvature, and the memory-reduced method's implicit hypergradient solves with that Hessian: "
                "use reg_form: half_squared (the paper's rho/2 |phi|^2), or name: itd_bio for that term"
            )
        return self


class ITDBiOConfig(BilevelHeadConfig):
    """ITD-BiO: back-propagation through the K head steps (the paper's baseline)."""

    name: Literal["itd_bio"] = "itd_bio"
    """Algorithm name (discriminator)."""
    warm_start: bool = False
    """Start slot i's head from its previous phi^K (off: the fixed initialisation, as the code)."""


# MOML and B-MOML (metacli.engine.algorithms.moml)


class OnlineMetaSGDConfig(Named):
    """Settings shared by the second-order online meta-learners (MOML, B-MOML, FTML, MOGD).

    The official code's settings and the faults metacli does not reproduce: docs/online.md.
    """

    online: ClassVar[bool] = True

    K: Count = 10
    """Outer SGD steps per round (grid {10, 20}; the released script's first value, 10)."""
    outer_lr: Positive = 0.1
    """Outer (meta) SGD learning rate (0.1, constant)."""
    weight_decay: NonNegative = 1e-4
    """NonNegative decay of the outer SGD step and of the differentiable inner step (1e-4)."""
    clip_norm: Positive = 3.0
    """Global L2 norm the total outer gradient, and each evaluation fine-tune gradient, is clipped to."""
    inner_lr: Positive = 0.01
    """learning_rate_ft: inner and evaluation fine-tune lr (grid {0.1, 0.01}; default 0.01, the only
    value the released main.py actually runs for MOML: it never uses the rest of its grid)."""
    inner_steps: Count = 1
    """num_grad_step: inner and evaluation fine-tune steps (grid {1, 5}; default 1). As in the official
    code, training adapts on a support batch of batch_size images with weight decay and no clipping,
    while the CTM/LTM evaluation adapts full-batch on all of a task's train images with clipping and no
    weight decay."""
    batch_size: Count = 10
    """Size of the support batch and of the disjoint query batch (10)."""

    @property
    def support_query_images(self) -> int:
        """Images one outer step draws from a task: a support batch and a disjoint query batch."""
        return 2 * self.batch_size

    def eval_variants(self) -> dict[str, tuple[float, int]]:
        """Evaluation fine-tune (lr, steps) per metric-key suffix: the training inner loop's."""
        return {"": (self.inner_lr, self.inner_steps)}


class MOMLConfig(OnlineMetaSGDConfig):
    """MOML (Acar, Zhu, Saligrama, ICML 2021): regularised warm-started meta-SGD, constant-size state."""

    factory: ClassVar[str] = "metacli.engine.algorithms.moml:MOML"
    name: Literal["moml"] = "moml"
    """Selects MOML."""
    alpha: NonNegative = 1.0
    """α of the proximal term (grid {1, 5, 10}; default 1). 0 switches the regulariser off (= MOGD)."""


class BMOMLConfig(OnlineMetaSGDConfig):
    """B-MOML (Acar et al. 2021; ``train_BMOML`` in github.com/ruizhaoz/MOML): MOML whose outer steps
    sample their task from a small task buffer."""

    factory: ClassVar[str] = "metacli.engine.algorithms.moml:BMOML"
    name: Literal["bmoml"] = "bmoml"
    """Selects B-MOML."""
    alpha: NonNegative = 1.0
    """α of the proximal term (grid {1, 5, 10}; default 1). 0 switches the regulariser off."""
    buffer_size: Count = 10
    """B, the number of task indices kept for training (10)."""
    buffer_policy: Literal["random", "last"] = "random"
    """'random' (the released default): append until full, then overwrite a uniformly random slot with
    the current task (not reservoir sampling); 'last': sliding window of the last B tasks."""


# FTML, MOGD, TOE and FS (metacli.engine.algorithms.online_baselines)

EvalVariant = Literal["ft1", "ft5", "noft"]


class FTMLConfig(OnlineMetaSGDConfig):
    """FTML (Finn et al. 2019) as in the MOML code: meta-SGD on tasks drawn from all seen tasks."""

    factory: ClassVar[str] = "metacli.engine.algorithms.online_baselines:FTML"
    name: Literal["ftml"] = "ftml"
    """Selects FTML."""


class MOGDConfig(OnlineMetaSGDConfig):
    """MOGD: warm-started meta-SGD on the current task (MOML without the regulariser)."""

    factory: ClassVar[str] = "metacli.engine.algorithms.moml:MOGD"
    name: Literal["mogd"] = "mogd"
    """Selects MOGD."""


class _ScratchConfig(Named):
    """Evaluation settings shared by TOE and FS (``get_maml_acc_loss`` in the official MOML code)."""

    online: ClassVar[bool] = True

    eval_lr: Positive = 0.1
    """Learning rate of the evaluation fine-tune (0.1)."""
    eval_steps: tuple[Steps, Steps] = (1, 5)
    """Step counts of the two fine-tuned variants ft1 and ft5 ((1, 5))."""
    eval_variant: EvalVariant = "ft1"
    """Primary evaluation (unsuffixed metric keys): ft1, ft5 or noft; the others get key suffixes. As in
    the official code, TOE's and FS's CTM is measured after the round's training (the meta-learners'
    before it), so TOE has already trained on the task it is tested on."""
    clip_norm: Positive = 3.0
    """Global L2 clip norm of the training steps (TOE) and of the evaluation fine-tune steps (3)."""

    def eval_variants(self) -> dict[str, tuple[float, int]]:
        """(lr, steps) per key suffix; the primary variant has the empty suffix."""
        all_v = {"ft1": (self.eval_lr, self.eval_steps[0]), "ft5": (self.eval_lr, self.eval_steps[1])}
        all_v["noft"] = (self.eval_lr, 0)
        return {("" if k == self.eval_variant else f"_{k}"): v for k, v in all_v.items()}


class TOEConfig(_ScratchConfig):
    """TOE: re-initialise to θ₀ each round and train K SGD steps on all data seen so far."""

    factory: ClassVar[str] = "metacli.engine.algorithms.online_baselines:TOE"
    name: Literal["toe"] = "toe"
    """Selects TOE."""
    K: Count = 10
    """Plain SGD steps per round, each round re-initialised to θ₀ as in the official code, so TOE is a
    weak baseline as released (grid {10, 20}; default 10)."""
    lr: Positive = 0.1
    """SGD learning rate (0.1)."""
    weight_decay: NonNegative = 1e-4
    """SGD weight decay (1e-4), added after clipping."""
    batch_size: Count = 10
    """Mini-batch size (10)."""


class FSConfig(_ScratchConfig):
    """FS: no training; θ₀ fine-tuned on each task (evaluation only)."""

    factory: ClassVar[str] = "metacli.engine.algorithms.online_baselines:FS"
    name: Literal["fs"] = "fs"
    """Selects FS."""


# The union of them all, and the online ones

AlgorithmConfig = Annotated[
    MAMLConfig
    | FOMAMLConfig
    | LSLRConfig
    | MetaCurvatureConfig
    | MAMLEnhancedConfig
    | ANILConfig
    | BOILConfig
    | SparseMAMLConfig
    | SparseReLUMAMLConfig
    | MetaSGDConfig
    | ReptileConfig
    | MemoryReducedConfig
    | ITDBiOConfig
    | MOMLConfig
    | BMOMLConfig
    | FTMLConfig
    | MOGDConfig
    | TOEConfig
    | FSConfig,
    Field(discriminator="name"),
]
"""The ``algorithm:`` section: the config that ``name`` selects; a wrong name lists the valid ones."""

ONLINE_ALGORITHM_NAMES: frozenset[str] = online_names(AlgorithmConfig)
"""The algorithms of the online protocol (paired with a task stream); every other name is few-shot."""

MAML_VARIANTS: tuple[type[MAMLConfig], ...] = tuple(
    c for c in members(AlgorithmConfig) if issubclass(c, MAMLConfig)
)
"""Every config the :class:`~metacli.engine.algorithms.maml.MAML` class runs, one per registry name (MAML
first: the union's order)."""
