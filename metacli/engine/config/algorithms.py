"""The algorithms' configs: the ``algorithm:`` section of a run spec, without torch.

One pydantic model per algorithm, selected by its ``name`` (the discriminated union
:data:`AlgorithmConfig`), and :data:`ONLINE_ALGORITHM_NAMES`, the algorithms of the online protocol. A
run spec is validated from this module alone (by the spec module), so a typo in a spec is reported without
importing torch. Each algorithm's implementation imports its config from here
(:mod:`metacli.engine.algorithms.maml`, ``.reptile``, ``.implicit``, ``.moml``, ``.online_baselines``),
and :mod:`metacli.engine.algorithms` maps each name to its class.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from metacli.engine.config.fields import Count, Finite, NonNegative, Positive, Steps

if TYPE_CHECKING:
    from metacli.engine.inner import InnerRule


# MAML and its variants (metacli.engine.algorithms.maml)

OldSpelling = tuple[str, str, bool]
"""The fields that selected a variant's inner step before issue 22: (adapt, rate, curvature)."""
_OLD_FIELDS = ("adapt", "rate", "curvature")
_MASK_FIELDS = {"mask_init": "kaiming", "mask_init_shift": 0.0}


class MAMLConfig(BaseModel):
    """Model-Agnostic Meta-Learning: SGD inner loop, Adam outer loop, second order by default.

    Each variant below is a subclass whose :meth:`inner_rule` composes its inner step from the pieces of
    :mod:`metacli.engine.inner` (which parameters adapt, the preconditioner, the rate); its ``name`` is
    its only spelling. The reference codes' choices and faults, per variant: docs/maml_family.md.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    old_spelling: ClassVar[OldSpelling] = ("all", "scalar", False)
    """What (adapt, rate, curvature) said for this variant before issue 22 (read from old spec files)."""

    name: Literal["maml"] = "maml"
    """Algorithm name (discriminator)."""
    alpha: Positive = 0.01
    """Inner-loop (adaptation) SGD learning rate; the initial value of learned rates (LSLR, sparse-ReLU).
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
    extras_lr: Positive | None = None
    """Adam learning rate of the variant's extras (rates, curvature factors, masks); None: outer_lr."""

    def inner_rule(self) -> InnerRule:
        """``phi <- phi - alpha g`` on every parameter."""
        from metacli.engine import inner

        return inner.InnerRule(inner.every, inner.Identity(), inner.ScalarRate(self.alpha))

    @model_validator(mode="before")
    @classmethod
    def _one_spelling(cls, data: object) -> object:
        """Reads a spec written before issue 22, which spelled each variant's inner step in fields too.

        Fields that agree with ``name`` are dropped (with a FutureWarning), so old run folders resume;
        ``{name: maml, rate: lslr}`` and the like are refused, naming the one spelling (``{name: lslr}``).
        """
        if not isinstance(data, dict) or not any(f in data for f in _OLD_FIELDS):
            return data
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


def _spelling_error(name: str, given: tuple[object, ...]) -> str:
    """The message for an old spelling that disagrees with its name, naming the one spelling."""
    said = ", ".join(f"{f}: {v}" for f, v in zip(_OLD_FIELDS, given, strict=True))
    names_of: dict[tuple[object, ...], str] = {
        v.old_spelling: v.model_fields["name"].default
        for v in reversed(MAML_VARIANTS)  # maml before fomaml
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
    extra steps reuse the last learned rate. See docs/maml_family.md.
    """

    old_spelling: ClassVar[OldSpelling] = ("all", "lslr", False)
    name: Literal["lslr"] = "lslr"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""

    def inner_rule(self) -> InnerRule:
        """Identity preconditioner, LSLR rates (``inner_steps`` of them) on every parameter."""
        from metacli.engine import inner

        return inner.InnerRule(inner.every, inner.Identity(), inner.LSLR(self.alpha, self.inner_steps))


class MetaCurvatureConfig(MAMLConfig):
    """Meta-Curvature: ``phi^{k+1} = phi^k - alpha M g^k``, M Kronecker-factored per tensor, meta-learned.

    Park & Oliva. "Meta-Curvature", NeurIPS 2019 (code silverbottlep/maml). A weight's M is
    ``M_out (x) M_in (x) M_filter`` (identities at first), a bias's M elementwise (ones at first).
    See docs/maml_family.md.
    """

    old_spelling: ClassVar[OldSpelling] = ("all", "scalar", True)
    name: Literal["metacurvature"] = "metacurvature"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""

    def inner_rule(self) -> InnerRule:
        """Meta-Curvature's preconditioner, the scalar rate, every parameter."""
        from metacli.engine import inner

        return inner.InnerRule(inner.every, inner.MetaCurvature(), inner.ScalarRate(self.alpha))


class MAMLEnhancedConfig(MAMLConfig):
    """MAML Enhanced: Meta-Curvature and LSLR together, ``phi_p^{k+1} = phi_p^k - alpha_{p,k} M_p g_p^k``.

    The composition of Park & Oliva 2019 and Antoniou et al. 2019 (no paper combines them).
    See docs/maml_family.md.
    """

    old_spelling: ClassVar[OldSpelling] = ("all", "lslr", True)
    name: Literal["maml_enhanced"] = "maml_enhanced"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""

    def inner_rule(self) -> InnerRule:
        """Meta-Curvature's preconditioner and LSLR rates, every parameter."""
        from metacli.engine import inner

        return inner.InnerRule(inner.every, inner.MetaCurvature(), inner.LSLR(self.alpha, self.inner_steps))


class ANILConfig(MAMLConfig):
    """ANIL: only the head adapts, ``head^{k+1} = head^k - alpha grad_head L_S(body, head^k)``; body frozen.

    Raghu, Raghu, Bengio, Vinyals. "Rapid Learning or Feature Reuse?", ICLR 2020. The outer step
    still reaches the body through the adapted head's dependence on its features. Support and query go
    through the body as separate batches (learn2learn's example: one batch). See docs/maml_family.md.
    """

    old_spelling: ClassVar[OldSpelling] = ("head", "scalar", False)
    name: Literal["anil"] = "anil"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""

    def inner_rule(self) -> InnerRule:
        """MAML's step on the last linear layer only."""
        from metacli.engine import inner

        return inner.InnerRule(inner.in_group("head"), inner.Identity(), inner.ScalarRate(self.alpha))


class BOILConfig(MAMLConfig):
    """BOIL: only the body adapts, the head stays at its initialisation in the inner loop (head rate 0).

    Oh, Yoo, Kim, Yun. "BOIL: Towards Representation Change for Few-shot Learning", ICLR 2021. Body
    and head are both meta-learned by the outer Adam. See docs/maml_family.md.
    """

    old_spelling: ClassVar[OldSpelling] = ("body", "scalar", False)
    name: Literal["boil"] = "boil"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""

    def inner_rule(self) -> InnerRule:
        """MAML's step on everything but the head."""
        from metacli.engine import inner

        return inner.InnerRule(inner.in_group("body"), inner.Identity(), inner.ScalarRate(self.alpha))


class SparseMAMLConfig(MAMLConfig):
    """Sparse-MAML: ``phi_p^{k+1} = phi_p^k - alpha mask(m_p) * g_p^k``, mask = STE(1[m_p > 0]).

    von Oswald, Zhao, Kobayashi, Schug, Caccia, Zucchet, Sacramento. "Learning where to learn",
    NeurIPS 2021 (code Johswald/learning_where_to_learn). As the released code, theta is trained
    first order by default (its ``--second_order`` is off, "NOT TESTED"); the mask still gets a
    meta-gradient, through the updates it multiplies. Mask logits are learned at ``extras_lr``. The
    mask is the code's ``0.5 (sign(m) + 1)``: 1 where m > 0, 0 where m < 0, 0.5 at m = 0; its backward is
    the identity times 0.5 (straight-through). See docs/maml_family.md.
    """

    old_spelling: ClassVar[OldSpelling] = ("all", "mask", False)
    name: Literal["sparse_maml"] = "sparse_maml"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    first_order: bool = True
    """Detach the inner gradients (the released code's default); the mask is still meta-learned."""
    extras_lr: Positive | None = 0.0075
    """Adam learning rate of the mask logits (code: 0.0075 ConvNet, 0.01 ResNet-12)."""
    mask_init: Literal["kaiming", "uniform"] = "kaiming"
    """Mask logits: Kaiming-uniform for weights (--kaiming_init) or U(-0.5, 0.5) everywhere."""
    mask_init_shift: Finite = 0.0
    """Added to the mean-centred mask logits (its --init_shift); > 0 starts less sparse."""

    def inner_rule(self) -> InnerRule:
        """alpha times a learned binary mask per element, every parameter."""
        from metacli.engine import inner

        mask = inner.SparseMask(self.alpha, self.mask_init == "kaiming", self.mask_init_shift)
        return inner.InnerRule(inner.every, inner.Identity(), mask)


class SparseReLUMAMLConfig(MAMLConfig):
    """sparse-ReLU-MAML: ``phi^{k+1} = phi^k - ReLU(m) * g^k`` with a straight-through ReLU, m init alpha.

    von Oswald et al., NeurIPS 2021 (``--meta_relu_through --meta_constant_init``): Meta-SGD with
    rates that can be exactly zero. First order in theta by default, as Sparse-MAML.
    See docs/maml_family.md.
    """

    old_spelling: ClassVar[OldSpelling] = ("all", "relu", False)
    name: Literal["sparse_relu_maml"] = "sparse_relu_maml"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    first_order: bool = True
    """Detach the inner gradients (the released code's default); the rates are still meta-learned."""
    extras_lr: Positive | None = 0.0075
    """Adam learning rate of the rates m (code: 0.01 for its ResNet-12 runs)."""

    def inner_rule(self) -> InnerRule:
        """A learned non-negative rate per element, every parameter."""
        from metacli.engine import inner

        return inner.InnerRule(inner.every, inner.Identity(), inner.ReLURate(self.alpha))


MAML_VARIANTS: tuple[type[MAMLConfig], ...] = (
    MAMLConfig,
    FOMAMLConfig,
    LSLRConfig,
    MetaCurvatureConfig,
    MAMLEnhancedConfig,
    ANILConfig,
    BOILConfig,
    SparseMAMLConfig,
    SparseReLUMAMLConfig,
)
"""Every config the :class:`~metacli.engine.algorithms.maml.MAML` class runs, one per registry name."""


# Reptile (metacli.engine.algorithms.reptile)


class ReptileConfig(BaseModel):
    """Reptile: first-order meta-learning by moving theta towards task-adapted weights.

    See docs/maml_family.md.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

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


class BilevelHeadConfig(BaseModel):
    """Settings shared by the backbone / head bilevel algorithms.

    Paper against official code, and which option gives which: docs/bilevel.md.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    inner_lr: Positive = 0.1
    """lambda_phi: step size of the K head gradient steps (code: 0.1 CIFAR-FS/FC100, 0.05 ImageNet)."""
    inner_steps: Count = 20
    """K: head gradient steps per task in meta-training."""
    reg: NonNegative = 1e-3
    """rho: the lower level's L2 term rho/2 |phi|^2 (the paper's R; the official code has none: 0)."""
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


class ITDBiOConfig(BilevelHeadConfig):
    """ITD-BiO: back-propagation through the K head steps (the paper's baseline)."""

    name: Literal["itd_bio"] = "itd_bio"
    """Algorithm name (discriminator)."""
    warm_start: bool = False
    """Start slot i's head from its previous phi^K (off: the fixed initialisation, as the code)."""


# MOML and B-MOML (metacli.engine.algorithms.moml)


class MetaSGDConfig(BaseModel):
    """Settings shared by the second-order online meta-learners (MOML, B-MOML, FTML, MOGD).

    The official code's settings and the faults metacli does not reproduce: docs/online.md.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

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


class MOMLConfig(MetaSGDConfig):
    """MOML (Acar, Zhu, Saligrama, ICML 2021): regularised warm-started meta-SGD, constant-size state."""

    name: Literal["moml"] = "moml"
    """Selects MOML."""
    alpha: NonNegative = 1.0
    """α of the proximal term (grid {1, 5, 10}; default 1). 0 switches the regulariser off (= MOGD)."""


class BMOMLConfig(MetaSGDConfig):
    """B-MOML (Acar et al. 2021; ``train_BMOML`` in github.com/ruizhaoz/MOML): MOML whose outer steps
    sample their task from a small task buffer."""

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


class FTMLConfig(MetaSGDConfig):
    """FTML (Finn et al. 2019) as in the MOML code: meta-SGD on tasks drawn from all seen tasks."""

    name: Literal["ftml"] = "ftml"
    """Selects FTML."""


class MOGDConfig(MetaSGDConfig):
    """MOGD: warm-started meta-SGD on the current task (MOML without the regulariser)."""

    name: Literal["mogd"] = "mogd"
    """Selects MOGD."""


class _ScratchConfig(BaseModel):
    """Evaluation settings shared by TOE and FS (``get_maml_acc_loss`` in the official MOML code)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

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

ONLINE_ALGORITHM_NAMES: frozenset[str] = frozenset({"moml", "bmoml", "ftml", "mogd", "toe", "fs"})
"""The algorithms of the online protocol (paired with a task stream); every other name is few-shot."""
