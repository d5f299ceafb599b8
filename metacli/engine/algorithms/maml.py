"""MAML (Finn, Abbeel & Levine, ICML 2017) and the variants of its inner loop.

Update rule, for a meta-batch of B tasks with support S_i and query Q_i:

    phi_i^0 = theta
    phi_i^{k+1} = phi_i^k - alpha * grad L_{S_i}(phi_i^k),          k = 0 .. inner_steps - 1
    theta <- Adam_beta( grad_theta (1/B) sum_i L_{Q_i}(phi_i^K) )    (``meta_reduction: sum``: without 1/B)

The second-order meta-gradient is ``prod_k (I - alpha H_{S_i}(phi_i^k)) grad L_{Q_i}(phi_i^K)``, obtained by
differentiating through the inner loop (Hessian-vector products). FOMAML (``first_order=True``)
detaches the inner gradients, so the meta-gradient is ``grad L_{Q_i}(phi_i^K)`` applied to theta.

Every parameter is meta-learned; every one adapts, but for the batch-norm scales and shifts where
``adapt_norm`` is false (the default of LSLR, Meta-Curvature and MAML Enhanced, as their codes): those stay
at theta in the inner loop. cbfinn/maml adapts its ``weights`` dict; its batch-norm offsets, created by its
``utils.py::normalize`` outside that dict, are meta-learned but not adapted.

The variants (:data:`MAML_VARIANTS`: every subclass of :class:`MAMLConfig` in the algorithm union, from
FOMAML to Meta-SGD) are the configs whose ``inner_rule()`` composes the inner step
``phi_p <- phi_p - r_{p,k} P_p(g_p)`` from the pieces of :mod:`metacli.engine.inner`: which parameters
adapt, the preconditioner P, the rate r. Each config class (in :mod:`metacli.engine.config.algorithms`, which
holds every algorithm's config without torch; re-exported here) states its rule and paper; the extra
meta-parameters (learned rates, curvature factors, masks) are meta-learned beside theta by the same
outer Adam, at ``extras_lr`` where a paper gives them their own rate.

References:
    Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    Code: cbfinn/maml (meta-gradient clipping to [-10, 10] on MiniImageNet).
    The variants' papers, settings and the reference codes' pitfalls: docs/maml_family.md.

Example:
    >>> algo = MAML(MAMLConfig(alpha=0.01), learner)
    >>> meta = algo.init_meta(learner.init_params())
    >>> result = algo.meta_step(meta, tasks, executor="loop")
"""

from __future__ import annotations

import functools
from typing import Any, cast

import torch
from torch import Tensor

from metacli.engine.config.algorithms import (
    MAML_VARIANTS,
    ANILConfig,
    BOILConfig,
    FOMAMLConfig,
    LSLRConfig,
    MAMLConfig,
    MAMLEnhancedConfig,
    MetaCurvatureConfig,
    SparseMAMLConfig,
    SparseReLUMAMLConfig,
)
from metacli.engine.executors import Executor, meta_gradient
from metacli.engine.functional import Learner, accuracy, clamp_elements
from metacli.engine.inner import descend, extra_metrics, split_meta
from metacli.engine.parallel import DataParallel, over_shares
from metacli.engine.remat import descend_recomputed
from metacli.engine.types import Batch, Params, StepResult, Task
from metacli.errors import SpecError

__all__ = [
    "MAML",
    "MAML_VARIANTS",
    "ANILConfig",
    "BOILConfig",
    "FOMAMLConfig",
    "LSLRConfig",
    "MAMLConfig",
    "MAMLEnhancedConfig",
    "MetaCurvatureConfig",
    "SparseMAMLConfig",
    "SparseReLUMAMLConfig",
]


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
        self.rule = cfg.inner_rule()

    def init_meta(self, params: Params) -> Params:
        """Meta-parameters to learn, as fresh leaves: theta, then the variant's extras at their init."""
        extras = self.rule.init_extras(params, self.generator)
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
        """phi^K and the support loss at theta (pre-adaptation), None when ``steps`` is 0.

        With ``remat`` at second order the inner steps are one node whose backward recomputes them
        (:mod:`metacli.engine.remat`); the meta-gradient is the unrolled graph's.
        """
        theta, extras = split_meta(meta)
        if self.cfg.remat and create_graph:
            chain = self.learner.chain(support)
            return descend_recomputed(chain, theta, extras, self.rule.step_rule, steps, self.rule.adapted)
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
            aux["accuracy"] = accuracy(out.detach(), task.query.y)
        return self.learner.loss_of_output(out, task.query.y), aux

    def meta_step(
        self, meta: Params, tasks: Task, executor: str = "loop", parallel: DataParallel | None = None
    ) -> StepResult:
        """Meta-gradient of the mean (or summed) query loss of the stacked ``tasks``, clamped (``grad_clip``).

        Args:
            meta: meta-parameters from :meth:`init_meta`.
            tasks: B tasks stacked on a leading axis.
            executor: ``"loop"`` or ``"vmap"`` (see :mod:`metacli.engine.executors`); ``"loop"`` only with
                ``remat`` (SpecError otherwise).
            parallel: data-parallel ranks: this one computes its share of the tasks, and the mean over all
                of them is combined before the clamp (which is not linear).
        """
        if self.cfg.remat and executor == "vmap":
            raise SpecError("algorithm.remat runs with the loop executor only (vmap cannot batch it)")
        result = over_shares(
            lambda share: meta_gradient(self.task_loss, meta, share, cast(Executor, executor)),
            tasks,
            parallel,
        )  # the executor name is validated in meta_gradient
        return result._replace(grads=self._reduce_and_clip(result.grads, tasks.query.x.shape[0]))

    def _reduce_and_clip(self, mean_grads: Params, n_tasks: int) -> Params:
        """The meta-gradient of the configured reduction, clamped where ``clip_scope`` says.

        ``sum``: grad sum_i L_i = B grad (1/B) sum_i L_i, so the mean's gradient is scaled by B (all ranks'
        tasks). The clamp runs after the reduction (the codes clamp the gradient they step on).
        """
        scale = n_tasks if self.cfg.meta_reduction == "sum" else 1
        grads = {k: g * scale for k, g in mean_grads.items()} if scale != 1 else mean_grads
        if self.cfg.clip_scope == "all":
            return clamp_elements(grads, self.cfg.grad_clip)
        clamped = clamp_elements(split_meta(grads)[0], self.cfg.grad_clip)  # the network's (theta) only
        return {k: clamped.get(k, g) for k, g in grads.items()}

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
