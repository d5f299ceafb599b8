"""Reptile (Nichol, Achiam & Schulman, 2018, "On First-Order Meta-Learning Algorithms").

Update rule, for a meta-batch of B tasks:

    phi_i^0 = theta
    phi_i^{k+1} = Adam_{beta1=0}(phi_i^k, grad L_{D_i,k}(phi_i^k), inner_lr),   k = 0 .. inner_steps - 1
    theta <- theta + epsilon_t * (1/B) sum_i (phi_i^K - theta)

where ``D_i,k`` are mini-batches of ``inner_batch`` examples drawn without replacement (reshuffled each
epoch) from the task's support and query pooled together: Reptile has no support/query split in
training. ``epsilon_t`` is annealed linearly from ``epsilon`` to ``epsilon_final`` over training.
As in learn2learn's Reptile example, :meth:`Reptile.meta_step` returns the "Reptile
gradient" ``theta - mean_i phi_i^K`` and the outer step is SGD with learning rate ``epsilon_t``.
At evaluation :meth:`Reptile.adapt` runs the same inner loop on the support only.

Differences from openai/supervised-reptile, stated so results are read correctly:

- The inner Adam state (second moments, step count) starts afresh for every task. The original code
  keeps one TensorFlow Adam whose moments carry over from task to task; per-task state is what a
  batched (``vmap``) executor can do, and it makes each task's adaptation independent of the order.
- One mini-batch schedule is drawn per meta-step and shared by the tasks of the meta-batch (their data
  are independent, so this changes no expectation), which lets ``loop`` and ``vmap`` agree exactly.
- Adam's epsilon is added to ``sqrt(v_hat)`` (PyTorch); TensorFlow adds it to ``sqrt(v)`` before
  the bias correction, a difference only where ``v`` is of order ``eps^2``.

References:
    Nichol, Achiam, Schulman. "On First-Order Meta-Learning Algorithms", arXiv:1803.02999, 2018.
    Code: openai/supervised-reptile (``reptile.py``: ``_mini_batches``, meta-step annealing).
    Its settings per dataset: docs/maml_family.md.

Example:
    >>> algo = Reptile(ReptileConfig(inner_steps=5), learner, generator=torch.Generator().manual_seed(0))
    >>> meta = algo.init_meta(learner.init_params())
    >>> result = algo.meta_step(meta, tasks)  # result.grads = theta - mean phi
"""

from __future__ import annotations

import functools
import math
from typing import Any, cast

import torch
from torch import Tensor

from metacli.engine.config.algorithms import ReptileConfig
from metacli.engine.executors import Executor, meta_gradient
from metacli.engine.functional import Learner, accuracy
from metacli.engine.inner import StepRule, descend, sgd_rule
from metacli.engine.parallel import DataParallel, over_shares
from metacli.engine.types import Batch, Params, StepResult, Task

ADAM_BETA2 = 0.999
"""Second-moment decay of the inner Adam (TensorFlow and PyTorch default, as the original code)."""
ADAM_EPS = 1e-8
"""Denominator term of the inner Adam, PyTorch placement: ``lr * g / (sqrt(v_hat) + eps)``."""


def minibatch_schedule(n: int, steps: int, batch: int, generator: torch.Generator) -> Tensor:
    """Indices of ``steps`` mini-batches of ``batch`` out of ``n`` examples, shape (steps, batch).

    Without replacement within an epoch, reshuffled every epoch, batches running across epoch
    boundaries: the order of ``_mini_batches(..., replacement=False)`` in openai/supervised-reptile.
    """
    epochs = math.ceil(steps * batch / n)
    if epochs == 0:  # no inner step (evaluation at 0 steps): no batch, and nothing drawn
        return torch.empty(0, batch, dtype=torch.long)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(epochs)])
    return order[: steps * batch].view(steps, batch)


def adam_beta1_zero_step(
    params: Params, grads: Params, v: Params, t: int, lr: float
) -> tuple[Params, Params]:
    """One Adam step with beta1 = 0 (the first moment is the gradient itself, no bias correction).

    ``v <- beta2 v + (1 - beta2) g^2``, ``phi <- phi - lr g / (sqrt(v / (1 - beta2^t)) + eps)``.

    Returns:
        The new parameters and second moments.
    """
    v = {k: ADAM_BETA2 * v[k] + (1 - ADAM_BETA2) * g * g for k, g in grads.items()}
    correction = 1 - ADAM_BETA2**t
    new = {k: p - lr * grads[k] / (torch.sqrt(v[k] / correction) + ADAM_EPS) for k, p in params.items()}
    return new, v


def adam_beta1_zero_rule(theta: Params, lr: float) -> StepRule:
    """:func:`adam_beta1_zero_step` as a :data:`~metacli.engine.inner.StepRule`, second moments from zero."""
    v = {k: torch.zeros_like(p) for k, p in theta.items()}

    def rule(k: int, phi: Params, g: Params) -> Params:
        nonlocal v
        new, v = adam_beta1_zero_step(phi, g, v, k + 1, lr)
        return new

    return rule


class Reptile:
    """Reptile on an explicit parameter dictionary.

    Args:
        cfg: the algorithm section of the run spec.
        learner: model structure and task criterion.
        generator: CPU generator for the inner mini-batch order; pass one derived from the run seed.
            Defaults to a generator seeded with 0 (deterministic, but the same for every run).
    """

    def __init__(
        self, cfg: ReptileConfig, learner: Learner, generator: torch.Generator | None = None
    ) -> None:
        self.cfg = cfg
        self.learner = learner
        self.generator = torch.Generator().manual_seed(0) if generator is None else generator

    def init_meta(self, params: Params) -> Params:
        """Meta-parameters to learn: the initialisation theta, as fresh leaves requiring grad."""
        return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}

    def _schedule(
        self, n: int, steps: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Tensor:
        gen = self.generator if generator is None else generator
        return minibatch_schedule(n, steps, min(self.cfg.inner_batch, n), gen).to(device)

    def _inner_loop(self, meta: Params, data: Batch, schedule: Tensor) -> tuple[Params, Tensor | None]:
        """phi^K from theta by the inner optimiser on ``data[schedule[k]]``; also the first batch loss."""
        theta = {k: v.detach() for k, v in meta.items()}  # first order: no graph back to theta

        def loss_at(k: int, phi: Params) -> Tensor:
            return self.learner.loss(phi, Batch(data.x[schedule[k]], data.y[schedule[k]]))

        rule = (
            adam_beta1_zero_rule(theta, self.cfg.inner_lr)
            if self.cfg.inner_optimizer == "adam"
            else sgd_rule(self.cfg.inner_lr)
        )
        return descend(loss_at, theta, schedule.shape[0], rule, create_graph=False)

    def adapt(
        self,
        meta: Params,
        support: Batch,
        steps: int | None = None,
        create_graph: bool = False,
        generator: torch.Generator | None = None,
    ) -> Params:
        """Fast weights for one task: ``steps`` inner steps on mini-batches of the support.

        Args:
            meta: meta-parameters (theta).
            support: the task's support set, unstacked.
            steps: number of inner steps; None means ``cfg.inner_steps``.
            create_graph: unused; Reptile's inner loop is first order (accepted for a uniform interface).
            generator: draws the mini-batch order; default the run's generator. Evaluation passes its
                own, so that meta-testing never changes the training run's random stream.

        Returns:
            The adapted parameters, detached, keyed like ``meta``.
        """
        del create_graph
        steps = self.cfg.inner_steps if steps is None else steps
        schedule = self._schedule(support.x.shape[0], steps, support.x.device, generator)
        return self._inner_loop(meta, support, schedule)[0]

    def task_loss(self, meta: Params, task: Task) -> tuple[Tensor, dict[str, Tensor]]:
        """Surrogate loss of one task whose theta-gradient is ``theta - phi^K``, and aux scalars.

        Draws a fresh mini-batch schedule; :meth:`meta_step` draws one per meta-batch instead.
        """
        n = task.support.x.shape[0] + task.query.x.shape[0]
        return self._task_loss(meta, task, self._schedule(n, self.cfg.inner_steps, task.query.x.device))

    def _task_loss(self, meta: Params, task: Task, schedule: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        pooled = Batch(torch.cat([task.support.x, task.query.x]), torch.cat([task.support.y, task.query.y]))
        fast, inner_loss = self._inner_loop(meta, pooled, schedule)
        # d/dtheta <theta, sg(theta - phi)> = theta - phi exactly: the Reptile gradient via autograd
        surrogate = sum((p * (p.detach() - fast[k])).sum() for k, p in meta.items())
        with torch.no_grad():
            out = self.learner.forward(fast, task.query.x)
            aux = {"query_loss": self.learner.loss_of_output(out, task.query.y)}
            if self.learner.criterion == "cross_entropy":
                aux["accuracy"] = accuracy(out, task.query.y)
        if inner_loss is not None:
            aux["inner_loss"] = inner_loss
        return cast(Tensor, surrogate), aux

    def meta_step(
        self, meta: Params, tasks: Task, executor: str = "loop", parallel: DataParallel | None = None
    ) -> StepResult:
        """Reptile gradient ``theta - mean_i phi_i^K`` over the stacked ``tasks``.

        ``StepResult.loss`` is the query loss after adaptation (logging only: the query was part of the
        inner data). Aux: ``query_loss``, ``inner_loss`` (first inner batch, before adaptation) and,
        for classification, ``accuracy``.

        Args:
            meta: meta-parameters from :meth:`init_meta`.
            tasks: B tasks stacked on a leading axis.
            executor: ``"loop"`` or ``"vmap"`` (see :mod:`metacli.engine.executors`).
            parallel: data-parallel ranks (each computes its share of the tasks; the mean is combined).
        """
        n = tasks.support.x.shape[1] + tasks.query.x.shape[1]
        schedule = self._schedule(n, self.cfg.inner_steps, tasks.query.x.device)
        task_loss = functools.partial(self._task_loss, schedule=schedule)
        result = over_shares(
            lambda share: meta_gradient(task_loss, meta, share, cast(Executor, executor)), tasks, parallel
        )  # the executor name is validated in meta_gradient
        return result._replace(loss=result.metrics["query_loss"])

    def extra_metrics(self, meta: Params) -> dict[str, float]:
        """Reptile learns nothing beyond theta."""
        del meta
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Nothing beyond the meta-parameters is carried across meta-steps."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
        del state

    def outer_optimizer(
        self, meta: Params, total_steps: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """SGD with learning rate epsilon, annealed linearly to ``epsilon_final`` over ``total_steps``."""
        optimizer = torch.optim.SGD(list(meta.values()), lr=self.cfg.epsilon)
        final = self.cfg.epsilon_final / self.cfg.epsilon
        horizon = max(total_steps, 1)

        def factor(step: int) -> float:
            # supervised-reptile: frac_done * final + (1 - frac_done) * initial
            return 1.0 - (1.0 - final) * min(step / horizon, 1.0)

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
