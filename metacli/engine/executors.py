"""Meta-gradient executors: one task loss, two ways to batch it over a meta-batch.

An algorithm supplies ``task_loss(meta, task) -> (query loss, aux)`` for ONE unstacked task, with its
inner loop written through :func:`metacli.engine.functional.grad_and_loss` (plain autograd outside
``vmap``, ``torch.func`` inside). Such a function is differentiable by an outer
:func:`torch.autograd.grad` and composes with :func:`torch.func.vmap`, so the same code serves both
executors:

- ``"loop"``: one task at a time, forward then ``autograd.grad`` of ``loss / B``, accumulated. Only one
  task's graph is alive at a time (lowest memory); the meta-gradient is exact. No ``vmap`` is active, so
  :class:`~metacli.engine.models.layers.BatchNorm` runs PyTorch's fused kernel, exact at every order here
  and 1.5x faster for Conv4-64 MAML.
- ``"vmap"``: ``vmap(task_loss, in_dims=(None, 0))`` over the stacked tasks and one ``autograd.grad``
  of the mean. Fewer, larger kernels (launch-bound GPUs); all B graphs alive at once. On the CPU it is
  faster for small inputs (sinusoid, Omniglot) and slower for 84x84 images (``benchmarks/suite.py``).
  Fused batch norm is wrong at second order under ``vmap``; ``BatchNorm`` sees the active ``vmap``
  and switches to its primitive-op form, which is exact
  (:func:`metacli.engine.models.layers.fused_is_exact`).

The kernel choice is made by the layer from the transforms active when it runs, not passed by the
executor, so nothing here sets or resets a mode.

Both return the meta-gradient of ``(1/B) sum_i L_i(meta)`` for every key of ``meta``, zeros for keys
the loss does not use.

A per-task loss may also carry state from one meta-step to the next (:func:`meta_gradient_with_carry`):
``task_loss(meta, task, carry_i) -> (loss, aux, carry_i')``, where ``carry`` holds one row per task
(the bilevel method's warm starts: its adapted head phi^K and CG solution v^N). Both executors hand
task i row i and return the new rows stacked in task order, detached (state, not part of the graph).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor

from metacli.engine.types import Batch, Params, StepResult, Task
from metacli.errors import SpecError

TaskLoss = Callable[[Params, Task], tuple[Tensor, dict[str, Tensor]]]
"""One unstacked task -> (query loss scalar, auxiliary scalars to log)."""

Carry = dict[str, Tensor]
"""Per-task state: every tensor has one row per task of the meta-batch (a leading task axis)."""

CarryTaskLoss = Callable[[Params, Task, Carry], tuple[Tensor, dict[str, Tensor], Carry]]
"""One unstacked task and its carry row -> (loss scalar, auxiliary scalars, the task's new carry row)."""

Executor = Literal["loop", "vmap"]
EXECUTORS: tuple[str, ...] = get_args(Executor)


def meta_gradient(task_loss: TaskLoss, meta: Params, tasks: Task, executor: Executor) -> StepResult:
    """Mean task loss over a stacked meta-batch and its gradient with respect to ``meta``.

    Args:
        task_loss: loss of one task after adaptation, inner loop through ``torch.func``.
        meta: meta-parameters, leaf tensors with ``requires_grad=True``.
        tasks: B tasks stacked on a leading axis of every tensor.
        executor: ``"loop"`` (per-task backward) or ``"vmap"`` (batched forward, one backward).

    Returns:
        A :class:`StepResult`: mean query loss, ``grads`` keyed like ``meta``, mean of every aux scalar.

    Raises:
        SpecError: for an unknown executor name.
    """

    def without_carry(m: Params, task: Task, carry: Carry) -> tuple[Tensor, dict[str, Tensor], Carry]:
        return (*task_loss(m, task), carry)

    return meta_gradient_with_carry(without_carry, meta, tasks, {}, executor)[0]


def meta_gradient_with_carry(
    task_loss: CarryTaskLoss, meta: Params, tasks: Task, carry: Carry, executor: Executor
) -> tuple[StepResult, Carry]:
    """:func:`meta_gradient` of a per-task loss that also maps each task's carry row to a new one.

    Args:
        task_loss: ``(meta, task_i, carry_i) -> (loss_i, aux_i, new carry_i)``.
        meta: meta-parameters, leaf tensors with ``requires_grad=True``.
        tasks: B tasks stacked on a leading axis of every tensor.
        carry: B rows per key (may be empty).
        executor: ``"loop"`` or ``"vmap"``.

    Returns:
        The :class:`StepResult` of :func:`meta_gradient` and the new carry (B rows per key, detached).

    Raises:
        SpecError: for an unknown executor name.
    """
    if executor == "loop":
        return _loop(task_loss, meta, tasks, carry)
    if executor == "vmap":
        return _vmap(task_loss, meta, tasks, carry)
    raise SpecError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")


def task_at(tasks: Task, i: int | slice) -> Task:
    """Task ``i`` of a stacked meta-batch (with a slice: those tasks, still stacked)."""
    return Task(Batch(tasks.support.x[i], tasks.support.y[i]), Batch(tasks.query.x[i], tasks.query.y[i]))


def meta_grads(loss: Tensor, meta: Params) -> dict[str, Tensor]:
    """d loss / d meta for every key (zeros for keys the loss does not reach)."""
    # materialize_grads: keys the loss does not reach (e.g. a head frozen by a variant) get zeros
    grads = torch.autograd.grad(loss, list(meta.values()), allow_unused=True, materialize_grads=True)
    return dict(zip(meta, grads, strict=True))


def _loop(task_loss: CarryTaskLoss, meta: Params, tasks: Task, carry: Carry) -> tuple[StepResult, Carry]:
    n_tasks = tasks.query.x.shape[0]
    total = {k: torch.zeros_like(v) for k, v in meta.items()}
    loss_sum = torch.zeros((), dtype=tasks.query.x.dtype, device=tasks.query.x.device)
    aux_sum: dict[str, Tensor] = {}
    rows: list[Carry] = []
    for i in range(n_tasks):
        loss, aux, row = task_loss(meta, task_at(tasks, i), {k: v[i] for k, v in carry.items()})
        # backward per task frees this task's graph before the next one is built
        for k, g in meta_grads(loss / n_tasks, meta).items():
            total[k] += g
        loss_sum += loss.detach()
        for k, v in aux.items():
            aux_sum[k] = aux_sum.get(k, 0) + v.detach()
        rows.append(row)
    metrics = {k: float(v) / n_tasks for k, v in aux_sum.items()}
    new_carry = {k: torch.stack([row[k].detach() for row in rows]) for k in (rows[0] if rows else {})}
    return StepResult(float(loss_sum) / n_tasks, total, metrics), new_carry


def _vmap(task_loss: CarryTaskLoss, meta: Params, tasks: Task, carry: Carry) -> tuple[StepResult, Carry]:
    losses, aux, new_carry = torch.func.vmap(task_loss, in_dims=(None, 0, 0))(meta, tasks, carry)
    loss = losses.mean()
    grads = meta_grads(loss, meta)
    metrics = {k: float(v.detach().mean()) for k, v in aux.items()}
    return StepResult(float(loss.detach()), grads, metrics), {k: v.detach() for k, v in new_carry.items()}
