"""MAML (Finn, Abbeel & Levine, ICML 2017) and the variants of its inner loop.

Update rule, for a meta-batch of B tasks with support S_i and query Q_i:

    phi_i^0 = theta
    phi_i^{k+1} = phi_i^k - alpha * grad L_{S_i}(phi_i^k),          k = 0 .. inner_steps - 1
    theta <- Adam_beta( grad_theta (1/B) sum_i L_{Q_i}(phi_i^K) )

The second-order meta-gradient is ``prod_k (I - alpha H_{S_i}(phi_i^k)) grad L_{Q_i}(phi_i^K)``, obtained by
differentiating through the inner loop (Hessian-vector products). FOMAML (``first_order=True``)
detaches the inner gradients, so the meta-gradient is ``grad L_{Q_i}(phi_i^K)`` applied to theta.

Every parameter is adapted and meta-learned (cbfinn/maml adapts its ``weights`` dict; its batch-norm
offsets are meta-learned only, a difference noted in ``docs/reference/maml_family.md`` §2.1).

The variants (FOMAML, LSLR, Meta-Curvature, MAML Enhanced, ANIL, BOIL, Sparse-MAML, sparse-ReLU-MAML)
are presets of :class:`MAMLConfig` that change one part of the inner step
``phi_p <- phi_p - r_{p,k} P_p(g_p)`` (:mod:`metacli.engine.inner`): which parameters adapt, the
preconditioner P, the rate r. Each config class below states its rule and paper; the extra
meta-parameters (learned rates, curvature factors, masks) are meta-learned beside theta by the same
outer Adam, at ``extras_lr`` where a paper gives them their own rate.

References:
    Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    Code: cbfinn/maml (meta-gradient clipping to [-10, 10] on MiniImageNet).
    The variants' papers: see each config class; settings and pitfalls in maml_family.md §1-§2.

Example:
    >>> algo = MAML(MAMLConfig(alpha=0.01), learner)
    >>> meta = algo.init_meta(learner.init_params())
    >>> result = algo.meta_step(meta, tasks, executor="loop")
"""

from __future__ import annotations

import functools
from typing import Any, Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from metacli.engine.executors import Executor, meta_gradient
from metacli.engine.functional import Learner, clamp_elements
from metacli.engine.inner import Adapt, FamilyRule, Rate, descend, extra_metrics, split_meta
from metacli.engine.types import Batch, Params, StepResult, Task


class MAMLConfig(BaseModel):
    """Model-Agnostic Meta-Learning: SGD inner loop, Adam outer loop, second order by default.

    ``adapt``, ``rate`` and ``curvature`` select the inner step; the variant presets below fix them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    name: Literal["maml"] = "maml"
    """Algorithm name (discriminator)."""
    alpha: float = Field(default=0.01, gt=0)
    """Inner-loop (adaptation) SGD learning rate; the initial value of learned rates (LSLR, sparse-ReLU).
    On the mean loss: the MAML TensorFlow code's alpha on N-way tasks is N x alpha here (its summed loss)."""
    inner_steps: int = Field(default=1, ge=1)
    """Inner SGD steps per task during meta-training."""
    eval_inner_steps: int = Field(default=10, ge=0)
    """Inner SGD steps per task at evaluation."""
    first_order: bool = False
    """Detach the inner gradients (FOMAML): no Hessian-vector products."""
    outer_lr: float = Field(default=1e-3, gt=0)
    """beta: Adam learning rate of the meta-update."""
    grad_clip: float | None = Field(default=None, gt=0)
    """Clamp every meta-gradient element to [-grad_clip, grad_clip] (cbfinn MiniImageNet: 10); None: off."""
    adapt: Adapt = "all"
    """Parameters the inner loop adapts: all (MAML), head (ANIL: the last linear layer), body (BOIL)."""
    rate: Rate = "scalar"
    """Inner rate: scalar alpha, lslr (learned per tensor and step), mask (alpha x STE binary mask,
    Sparse-MAML), relu (STE-ReLU(m) per element, sparse-ReLU-MAML)."""
    curvature: bool = False
    """Precondition the inner gradient with Meta-Curvature's learned Kronecker factors."""
    extras_lr: float | None = Field(default=None, gt=0)
    """Adam learning rate of the extras (rates, curvature factors, masks); None: outer_lr."""
    mask_init: Literal["kaiming", "uniform"] = "kaiming"
    """Sparse-MAML mask logits: Kaiming-uniform for weights (--kaiming_init) or U(-0.5, 0.5) everywhere."""
    mask_init_shift: float = 0.0
    """Added to the mean-centred mask logits (its --init_shift); > 0 starts less sparse."""


class FOMAMLConfig(MAMLConfig):
    """First-order MAML: a preset of MAML with ``first_order=True`` (Finn et al., 2017)."""

    name: Literal["fomaml"] = "fomaml"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    first_order: bool = True
    """Detach the inner gradients (FOMAML): no Hessian-vector products."""


class LSLRConfig(MAMLConfig):
    """LSLR of MAML++: ``phi_p^{k+1} = phi_p^k - alpha_{p,k} g_p^k``, one learned rate per tensor and step.

    Antoniou, Edwards, Storkey. "How to train your MAML", ICLR 2019 (code HowToTrainYourMAMLPytorch).
    Rates start at ``alpha`` and are unconstrained; the outer Adam learns them with theta.
    """

    name: Literal["lslr"] = "lslr"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    rate: Literal["lslr"] = "lslr"
    """Learned per-tensor, per-step rates."""


class MetaCurvatureConfig(MAMLConfig):
    """Meta-Curvature: ``phi^{k+1} = phi^k - alpha M g^k``, M Kronecker-factored per tensor, meta-learned.

    Park & Oliva. "Meta-Curvature", NeurIPS 2019 (code silverbottlep/maml). A weight's M is
    ``M_out (x) M_in (x) M_filter`` (identities at first), a bias's M elementwise (ones at first).
    """

    name: Literal["metacurvature"] = "metacurvature"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    curvature: Literal[True] = True
    """Kronecker-factored curvature on the inner gradient."""


class MAMLEnhancedConfig(MAMLConfig):
    """MAML Enhanced: Meta-Curvature and LSLR together, ``phi_p^{k+1} = phi_p^k - alpha_{p,k} M_p g_p^k``.

    The composition of Park & Oliva 2019 and Antoniou et al. 2019 (no paper combines them).
    """

    name: Literal["maml_enhanced"] = "maml_enhanced"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    curvature: Literal[True] = True
    """Kronecker-factored curvature on the inner gradient."""
    rate: Literal["lslr"] = "lslr"
    """Learned per-tensor, per-step rates."""


class ANILConfig(MAMLConfig):
    """ANIL: only the head adapts, ``head^{k+1} = head^k - alpha grad_head L_S(body, head^k)``; body frozen.

    Raghu, Raghu, Bengio, Vinyals. "Rapid Learning or Feature Reuse?", ICLR 2020. The outer step
    still reaches the body through the adapted head's dependence on its features.
    """

    name: Literal["anil"] = "anil"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    adapt: Literal["head"] = "head"
    """Only the last linear layer adapts."""


class BOILConfig(MAMLConfig):
    """BOIL: only the body adapts, the head stays at its initialisation in the inner loop (head rate 0).

    Oh, Yoo, Kim, Yun. "BOIL: Towards Representation Change for Few-shot Learning", ICLR 2021. Body
    and head are both meta-learned by the outer Adam.
    """

    name: Literal["boil"] = "boil"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    adapt: Literal["body"] = "body"
    """Everything but the head adapts."""


class SparseMAMLConfig(MAMLConfig):
    """Sparse-MAML: ``phi_p^{k+1} = phi_p^k - alpha mask(m_p) * g_p^k``, mask = STE(1[m_p >= 0]).

    von Oswald, Zhao, Kobayashi, Schug, Caccia, Zucchet, Sacramento. "Learning where to learn",
    NeurIPS 2021 (code Johswald/learning_where_to_learn). As the released code, theta is trained
    first order by default (its ``--second_order`` is off, "NOT TESTED"); the mask still gets a
    meta-gradient, through the updates it multiplies. Mask logits are learned at ``extras_lr``.
    """

    name: Literal["sparse_maml"] = "sparse_maml"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    rate: Literal["mask"] = "mask"
    """alpha times a learned binary mask per element."""
    first_order: bool = True
    """Detach the inner gradients (the released code's default); the mask is still meta-learned."""
    extras_lr: float | None = Field(default=0.0075, gt=0)
    """Adam learning rate of the mask logits (code: 0.0075 ConvNet, 0.01 ResNet-12)."""


class SparseReLUMAMLConfig(MAMLConfig):
    """sparse-ReLU-MAML: ``phi^{k+1} = phi^k - ReLU(m) * g^k`` with a straight-through ReLU, m init alpha.

    von Oswald et al., NeurIPS 2021 (``--meta_relu_through --meta_constant_init``): Meta-SGD with
    rates that can be exactly zero. First order in theta by default, as Sparse-MAML.
    """

    name: Literal["sparse_relu_maml"] = "sparse_relu_maml"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    rate: Literal["relu"] = "relu"
    """A learned non-negative rate per element."""
    first_order: bool = True
    """Detach the inner gradients (the released code's default); the rates are still meta-learned."""
    extras_lr: float | None = Field(default=0.0075, gt=0)
    """Adam learning rate of the rates m (code: 0.01 for its ResNet-12 runs)."""


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
"""Every config the :class:`MAML` class runs, one per registry name."""


class MAML:
    """MAML and its inner-loop variants on an explicit parameter dictionary.

    Args:
        cfg: the algorithm section of the run spec (any of :data:`MAML_VARIANTS`).
        learner: model structure and task criterion.
        generator: draws Sparse-MAML's mask initialisation (the run's generator); the rest of MAML
            is deterministic. None: a generator seeded with 0.
    """

    def __init__(self, cfg: MAMLConfig, learner: Learner, generator: torch.Generator | None = None) -> None:
        self.cfg = cfg
        self.learner = learner
        self.generator = torch.Generator().manual_seed(0) if generator is None else generator
        self.rule = FamilyRule(cfg.adapt, cfg.rate, cfg.curvature, cfg.alpha, cfg.inner_steps)

    def init_meta(self, params: Params) -> Params:
        """Meta-parameters to learn, as fresh leaves: theta, then the variant's extras at their init."""
        extras = self.rule.init_extras(
            params, self.generator, self.cfg.mask_init == "kaiming", self.cfg.mask_init_shift
        )
        return {k: v.detach().clone().requires_grad_(True) for k, v in {**params, **extras}.items()}

    def adapt(
        self,
        meta: Params,
        support: Batch,
        steps: int | None = None,
        create_graph: bool = False,
        generator: torch.Generator | None = None,
    ) -> Params:
        """Fast weights phi^K for one task: ``steps`` inner steps of the variant's rule on the support loss.

        Args:
            meta: meta-parameters (theta and extras).
            support: the task's support set, unstacked.
            steps: number of inner steps; None means ``cfg.inner_steps``.
            create_graph: keep the inner gradients differentiable (second-order meta-gradient).
            generator: unused (MAML's adaptation is deterministic).

        Returns:
            The adapted network parameters (no extras).
        """
        del generator
        steps = self.cfg.inner_steps if steps is None else steps
        fast, _ = self._inner_loop(meta, support, steps, create_graph)
        return fast

    def _inner_loop(
        self, meta: Params, support: Batch, steps: int, create_graph: bool
    ) -> tuple[Params, Tensor | None]:
        """phi^K and the support loss at theta (pre-adaptation), None when ``steps`` is 0."""
        theta, extras = split_meta(meta)
        loss_at = functools.partial(_support_loss, self.learner, support)
        rule = self.rule.step_rule(extras)
        return descend(loss_at, theta, steps, rule, create_graph, self.rule.adapted)

    def task_loss(self, meta: Params, task: Task) -> tuple[Tensor, dict[str, Tensor]]:
        """Query loss after ``inner_steps`` of adaptation on the support, and aux scalars.

        Aux: ``support_loss`` (before adaptation) and, for classification, ``accuracy`` (query, after).
        """
        second_order = not self.cfg.first_order
        fast, support_loss = self._inner_loop(meta, task.support, self.cfg.inner_steps, second_order)
        out = self.learner.forward(fast, task.query.x)
        aux: dict[str, Tensor] = {}
        if support_loss is not None:
            aux["support_loss"] = support_loss
        if self.learner.criterion == "cross_entropy":
            aux["accuracy"] = (out.detach().argmax(-1) == task.query.y).to(out.dtype).mean()
        return self.learner.loss_of_output(out, task.query.y), aux

    def meta_step(self, meta: Params, tasks: Task, executor: str = "loop") -> StepResult:
        """Meta-gradient of the mean query loss over the stacked ``tasks`` (clamped if ``grad_clip``).

        Args:
            meta: meta-parameters from :meth:`init_meta`.
            tasks: B tasks stacked on a leading axis.
            executor: ``"loop"`` or ``"vmap"`` (see :mod:`metacli.engine.executors`).
        """
        result = meta_gradient(self.task_loss, meta, tasks, cast(Executor, executor))  # validated there
        return result._replace(grads=clamp_elements(result.grads, self.cfg.grad_clip))

    def extra_metrics(self, meta: Params) -> dict[str, float]:
        """What the extras learned, per layer (:func:`metacli.engine.inner.extra_metrics`); {} for MAML."""
        return extra_metrics(split_meta(meta)[1])

    def state_dict(self) -> dict[str, Any]:
        """Nothing beyond the meta-parameters is carried across meta-steps."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
        del state

    def outer_optimizer(
        self, meta: Params, total_steps: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """Adam at beta = ``outer_lr`` for theta and ``extras_lr`` for the extras, constant (paper, code)."""
        del total_steps
        theta, extras = split_meta(meta)
        groups: list[dict[str, object]] = [{"params": list(theta.values()), "lr": self.cfg.outer_lr}]
        if extras:
            groups.append({"params": list(extras.values()), "lr": self.cfg.extras_lr or self.cfg.outer_lr})
        return torch.optim.Adam(groups, lr=self.cfg.outer_lr), None


def _support_loss(learner: Learner, support: Batch, k: int, phi: Params) -> Tensor:
    """Every inner step of MAML sees the whole support set."""
    del k
    return learner.loss(phi, support)
