"""MAML and its first-order preset FOMAML (Finn, Abbeel & Levine, ICML 2017).

Update rule, for a meta-batch of B tasks with support S_i and query Q_i:

    phi_i^0 = theta
    phi_i^{k+1} = phi_i^k - alpha * grad L_{S_i}(phi_i^k),          k = 0 .. inner_steps - 1
    theta <- Adam_beta( grad_theta (1/B) sum_i L_{Q_i}(phi_i^K) )

The second-order meta-gradient is ``prod_k (I - alpha H_{S_i}(phi_i^k)) grad L_{Q_i}(phi_i^K)``, obtained by
differentiating through the inner loop (Hessian-vector products). FOMAML (``first_order=True``)
detaches the inner gradients, so the meta-gradient is ``grad L_{Q_i}(phi_i^K)`` applied to theta.

Every parameter is adapted and meta-learned (cbfinn/maml adapts its ``weights`` dict; its batch-norm
offsets are meta-learned only, a difference noted in ``docs/reference/maml_family.md`` §2.1).

References:
    Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    Code: cbfinn/maml (meta-gradient clipping to [-10, 10] on MiniImageNet).

Example:
    >>> algo = MAML(MAMLConfig(alpha=0.01), learner)
    >>> meta = algo.init_meta(learner.init_params())
    >>> result = algo.meta_step(meta, tasks, executor="loop")
"""

from __future__ import annotations

from typing import Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from metacli.engine.executors import Executor, meta_gradient
from metacli.engine.functional import Learner, grad_and_loss, sgd_step
from metacli.engine.types import Batch, Params, StepResult, Task


class MAMLConfig(BaseModel):
    """Model-Agnostic Meta-Learning: SGD inner loop, Adam outer loop, second order by default."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    name: Literal["maml"] = "maml"
    """Algorithm name (discriminator)."""
    alpha: float = Field(default=0.01, gt=0)
    """Inner-loop (adaptation) SGD learning rate."""
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


class FOMAMLConfig(MAMLConfig):
    """First-order MAML: a preset of MAML with ``first_order=True`` (Finn et al., 2017)."""

    name: Literal["fomaml"] = "fomaml"  # type: ignore[assignment]
    """Algorithm name (discriminator)."""
    first_order: bool = True
    """Detach the inner gradients (FOMAML): no Hessian-vector products."""


class MAML:
    """MAML / FOMAML on an explicit parameter dictionary.

    Args:
        cfg: the algorithm section of the run spec.
        learner: model structure and task criterion.
        generator: unused; every algorithm takes the run's generator (the registry's one signature).
    """

    def __init__(self, cfg: MAMLConfig, learner: Learner, generator: torch.Generator | None = None) -> None:
        del generator  # MAML draws no random numbers of its own
        self.cfg = cfg
        self.learner = learner

    def init_meta(self, params: Params) -> Params:
        """Meta-parameters to learn: the initialisation theta, as fresh leaves requiring grad."""
        return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}

    def adapt(
        self,
        meta: Params,
        support: Batch,
        steps: int | None = None,
        create_graph: bool = False,
        generator: torch.Generator | None = None,
    ) -> Params:
        """Fast weights phi^K for one task: ``steps`` SGD steps of size alpha on the support loss.

        Args:
            meta: meta-parameters (theta).
            support: the task's support set, unstacked.
            steps: number of inner steps; None means ``cfg.inner_steps``.
            create_graph: keep the inner gradients differentiable (second-order meta-gradient).
            generator: unused (MAML's adaptation is deterministic).

        Returns:
            The adapted parameters, keyed like ``meta``.
        """
        del generator
        steps = self.cfg.inner_steps if steps is None else steps
        fast, _ = self._inner_loop(meta, support, steps, create_graph)
        return fast

    def _inner_loop(
        self, meta: Params, support: Batch, steps: int, create_graph: bool
    ) -> tuple[Params, Tensor | None]:
        """phi^K and the support loss at theta (pre-adaptation), None when ``steps`` is 0."""
        fast, first_loss = dict(meta), None
        for _ in range(steps):
            grads, loss = grad_and_loss(lambda p: self.learner.loss(p, support), fast, create_graph)
            fast = sgd_step(fast, grads, self.cfg.alpha)  # phi^{k+1} = phi^k - alpha g
            first_loss = loss.detach() if first_loss is None else first_loss
        return fast, first_loss

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
        if self.cfg.grad_clip is None:
            return result
        clip = self.cfg.grad_clip
        return result._replace(grads={k: g.clamp(-clip, clip) for k, g in result.grads.items()})

    def outer_optimizer(
        self, meta: Params, total_steps: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """Adam with learning rate beta = ``outer_lr`` and a constant schedule (paper, code)."""
        del total_steps
        return torch.optim.Adam(list(meta.values()), lr=self.cfg.outer_lr), None
