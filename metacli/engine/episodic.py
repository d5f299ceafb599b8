"""The one episodic meta-train / meta-test loop for every few-shot algorithm.

Per meta-step: sample B tasks from the training split with the run's generator, ask the algorithm
for its meta-gradient (``meta_step``), hand it to the outer optimiser. The loop owns logging and
checkpoints; algorithms own no loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from metacli.engine import memory
from metacli.engine.build import EpisodicParts
from metacli.engine.functional import accuracy
from metacli.engine.guards import Diverged, Stopped, all_finite
from metacli.engine.types import Batch, Executor, Params, Progress, StepResult, Task

LogFn = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class LoopSettings:
    """How :func:`train` runs: the loop's side of a spec's ``train:`` section, every choice made."""

    meta_batch: int
    """Tasks per meta-step (B)."""
    meta_iters: int
    """Meta-steps in all (the loop continues a resumed state up to this count)."""
    executor: Executor = "loop"
    """How the meta-batch is processed (the run layer resolves ``auto``)."""
    log_every: int = 100
    """Meta-steps between logged rows (the last step is always logged)."""
    checkpoint_every: int = 1000
    """Meta-steps between checkpoints (the last step is always saved)."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A non-finite loss or meta-gradient: raise :class:`Diverged`, or skip the step and count it."""


def leaf_params(params: Params) -> Params:
    """Detached copies that require grad: the meta-parameters the outer optimiser updates."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


class TrainState:
    """Meta-parameters, outer optimiser and scheduler of an episodic run, fresh or resumed."""

    def __init__(self, parts: EpisodicParts, total_steps: int, state: dict[str, Any] | None = None) -> None:
        """Fresh meta-parameters, or those of ``state`` (a :meth:`state_dict`) with its optimiser state.

        RNG states are not part of it: the run layer saves and restores every generator the run draws from.
        """
        self._algorithm = parts.algorithm
        meta = parts.algorithm.init_meta(parts.learner.init_params())
        self.step = 0
        self.skipped = 0
        """Meta-steps skipped for a non-finite loss or gradient in this process (``on_nonfinite: skip``)."""
        self.best: tuple[int, float] | None = None
        """(step, selection value) of the best validation so far."""
        if state is not None:
            best = state["best"]
            self.best = (int(best[0]), float(best[1])) if best is not None else None
            meta = {k: _saved(state["meta"], k, v).to(parts.device, parts.dtype) for k, v in meta.items()}
            parts.algorithm.load_state_dict(
                {k: v.to(parts.device, parts.dtype) for k, v in state["algorithm_state"].items()}
            )
            self.step = int(state["step"])
        self.meta = leaf_params(meta)
        self.optimizer, self.scheduler = parts.algorithm.outer_optimizer(self.meta, total_steps)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`__init__` needs to continue: step, best validation, meta-parameters, outer
        optimiser and scheduler, and the algorithm's own state (warm starts)."""
        return {
            "step": self.step,
            "best": self.best,
            "meta": {k: v.detach().cpu() for k, v in self.meta.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "algorithm_state": self._algorithm.state_dict(),
        }


def check_update(state: TrainState, step: int) -> None:
    """Raise :class:`Diverged` when the outer update left a non-finite parameter or optimiser moment.

    The moments are checked too because a finite but huge meta-gradient (above about 6e20 in float32, where
    (1 - beta2) g^2 passes 3.4e38) overflows Adam's second moment to inf while the parameters stay finite:
    every later update is then m / inf = 0 for those entries, and the run would go on to its last step
    learning nothing there.
    """
    if not all_finite(state.meta.values()):
        raise Diverged(step, "parameter")
    if not all_finite(optimizer_tensors(state.optimizer)):
        raise Diverged(step, "outer optimiser state")


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The floating-point tensors of ``optimizer``'s per-parameter state (Adam's moments, SGD's momentum)."""
    return [v for v in memory.optimizer_state(optimizer) if v.is_floating_point()]


def outer_update(state: TrainState, grads: Params) -> None:
    """Hand the meta-gradient to the outer optimiser and take one step."""
    for k, p in state.meta.items():
        p.grad = grads[k].detach().to(p.dtype)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    if state.scheduler is not None:
        state.scheduler.step()


class Validation(NamedTuple):
    """A fixed validation task set: the same ``tasks`` tasks, drawn from ``seed``, at every validation."""

    every: int
    tasks: int
    seed: int
    steps: int
    batch: int


def selection_value(scores: dict[str, float], steps: int) -> float:
    """The number that picks the best checkpoint (higher is better): accuracy, or -loss for regression."""
    acc = scores.get(f"val_acc@{steps}")
    return acc if acc is not None else -scores[f"val_loss@{steps}"]


def validate(parts: EpisodicParts, meta: Params, val: Validation) -> dict[str, float]:
    """Mean query accuracy / loss on the fixed validation tasks, as ``val_acc@k`` / ``val_loss@k``."""
    results = evaluate(parts, meta, "val", val.tasks, val.seed, [val.steps], val.batch)
    return {name.replace("query_", "val_"): m["mean"] for name, m in results.items()}


def validate_and_track(
    parts: EpisodicParts, state: TrainState, val: Validation
) -> tuple[dict[str, float], bool]:
    """Validate ``state.meta``; keep it as ``state.best`` when it beats the best so far (ties: the first)."""
    scores = validate(parts, state.meta, val)
    value = selection_value(scores, val.steps)
    improved = state.best is None or value > state.best[1]
    if improved:
        state.best = (state.step, value)
    return scores, improved


def train(
    parts: EpisodicParts,
    cfg: LoopSettings,
    state: TrainState,
    log: LogFn,
    checkpoint: Callable[[TrainState, bool], None],
    progress: Progress,
    val: Validation | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    wall_offset: float = 0.0,
) -> TrainState:
    """Meta-train from ``state.step`` to ``cfg.meta_iters``, validating, logging and checkpointing.

    ``wall_offset``: seconds already trained (a resumed run), so logged ``wall_time`` continues.
    ``progress(step, {"loss": ...})`` is called after every meta-step.

    ``checkpoint(state, is_best)`` is called at every checkpoint step and after every validation that
    improves on the best so far (``is_best=True``: also keep these parameters as the best checkpoint).
    When ``stop_requested()`` turns true (a signal), the run checkpoints at the end of the current step
    and raises :class:`Stopped`.
    """
    t0 = time.perf_counter() - wall_offset
    while state.step < cfg.meta_iters:
        tasks = parts.dataset.sample("train", cfg.meta_batch, parts.generator, parts.device, parts.dtype)
        logged = (state.step + 1) % cfg.log_every == 0 or state.step + 1 == cfg.meta_iters
        result, peak = meta_train_step(parts, cfg, state, tasks, measure=logged)
        state.step += 1
        last = state.step == cfg.meta_iters
        row: dict[str, float] = {}
        if logged:
            row = {"query_loss": result.loss, **result.metrics, **parts.algorithm.extra_metrics(state.meta)}
            if cfg.on_nonfinite == "skip":
                row["skipped_steps"] = float(state.skipped)
            row["peak_step_mb"] = peak / memory.BYTES_PER_MB
            resident = memory.state_bytes(state.meta.values(), state.optimizer, parts.algorithm.state_dict())
            row["state_mb"] = resident / memory.BYTES_PER_MB
        improved = False
        if val is not None and (state.step % val.every == 0 or last):
            scores, improved = validate_and_track(parts, state, val)
            row.update(scores)
        if row:
            log(state.step, {**row, "wall_time": time.perf_counter() - t0})
        stopping = stop_requested()
        if state.step % cfg.checkpoint_every == 0 or last or improved or stopping:
            checkpoint(state, improved)
        progress(state.step, {"loss": result.loss})
        if stopping and not last:
            raise Stopped(state.step)
    return state


def meta_train_step(
    parts: EpisodicParts, cfg: LoopSettings, state: TrainState, tasks: Task, measure: bool
) -> tuple[StepResult, int]:
    """One meta-step (meta-gradient and outer update) and, when ``measure``, its peak memory in bytes.

    The peak is :func:`metacli.engine.memory.peak_bytes` (0 when not measured): on the CPU it runs the
    step under the profiler, so it is taken only on the steps that are logged.

    Raises:
        Diverged: a non-finite loss or meta-gradient (unless ``cfg.on_nonfinite`` is ``skip``: the step
            then changes nothing and is counted in ``state.skipped``), or a non-finite parameter after
            the update, or a non-finite moment of the outer optimiser (:func:`check_update`).
    """
    out: list[StepResult] = []

    def step() -> None:
        result = parts.algorithm.meta_step(state.meta, tasks, cfg.executor, parts.parallel)
        out.append(result)
        bad = "loss" if not math.isfinite(result.loss) else None
        if bad is None and not all_finite(result.grads.values()):
            bad = "meta-gradient"
        if bad is not None:
            if cfg.on_nonfinite == "skip":
                state.skipped += 1
                return
            raise Diverged(state.step + 1, bad)
        outer_update(state, result.grads)
        check_update(state, state.step + 1)

    if not measure:
        step()
        return out[0], 0
    peak = memory.peak_bytes(step, parts.device)
    return out[0], peak


def evaluate(
    parts: EpisodicParts,
    meta: Params,
    split: str,
    n_tasks: int,
    seed: int,
    steps_list: list[int],
    batch: int,
    progress: Progress | None = None,
) -> dict[str, dict[str, float]]:
    """Adapt to ``n_tasks`` fixed tasks of ``split`` and measure the query loss (and accuracy).

    Task i is drawn from its own generator, seeded from ``seed`` and i alone, so every run, method,
    checkpoint and ``batch`` size is measured on the same tasks. Tasks are evaluated ``batch`` at a
    time as one ``torch.func.vmap`` over tasks (adaptation included), without an autograd graph.

    Returns, per metric and adaptation step count (``query_acc@5``), the mean, the 95% confidence
    interval 1.96 std/sqrt(n) and the number of tasks n. ``progress(tasks_done, {})`` is called after
    every batch.
    """
    values: dict[str, list[Tensor]] = {}
    adapt_generator = torch.Generator().manual_seed(seed)
    for start in range(0, n_tasks, batch):
        ids = range(start, min(start + batch, n_tasks))
        tasks = stack_tasks(
            [parts.dataset.sample(split, 1, task_generator(seed, i), parts.device, parts.dtype) for i in ids]
        )
        for name, v in batch_metrics(parts, meta, tasks, steps_list, adapt_generator).items():
            values.setdefault(name, []).append(v)
        if progress is not None:
            progress(ids.stop, {})
    return {name: summarize(torch.cat(vs).double().tolist()) for name, vs in values.items()}


def task_generator(seed: int, index: int) -> torch.Generator:
    """The generator of fixed task ``index`` of the set ``seed``: a task set does not depend on batching."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def stack_tasks(tasks: list[Task]) -> Task:
    """Concatenate stacked tasks along the task axis."""
    return Task(
        Batch(torch.cat([t.support.x for t in tasks]), torch.cat([t.support.y for t in tasks])),
        Batch(torch.cat([t.query.x for t in tasks]), torch.cat([t.query.y for t in tasks])),
    )


def batch_metrics(
    parts: EpisodicParts, meta: Params, tasks: Task, steps_list: list[int], generator: torch.Generator
) -> dict[str, Tensor]:
    """Per-task query loss (and accuracy) of stacked ``tasks`` after each number of adaptation steps."""
    learner, algo = parts.learner, parts.algorithm
    frozen = {k: v.detach() for k, v in meta.items()}

    def one(task: Task) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for steps in steps_list:
            phi = algo.adapt(frozen, task.support, steps=steps, generator=generator)
            logits = learner.forward(phi, task.query.x)
            out[f"query_loss@{steps}"] = learner.loss_of_output(logits, task.query.y)
            if learner.criterion == "cross_entropy":
                out[f"query_acc@{steps}"] = accuracy(logits, task.query.y)
        return out

    # randomness="same": an algorithm that draws inside adaptation (Reptile's mini-batch order) draws
    # once for the whole chunk, from the evaluation generator, never from the run's.
    with torch.no_grad():
        result: dict[str, Tensor] = torch.func.vmap(one, randomness="same")(tasks)
    return result


def summarize(values: list[float]) -> dict[str, float]:
    """Mean, 95% confidence half-width (1.96 std / sqrt(n), sample std) and n."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return {"mean": mean, "ci95": 1.96 * math.sqrt(var / n), "n": n}


def _saved(saved: dict[str, Tensor], key: str, fresh: Tensor) -> Tensor:
    """``saved[key]``, refused when the settings now give it another shape (LSLR's ``inner_steps`` rates)."""
    if saved[key].shape != fresh.shape:
        raise ValueError(f"{key} has shape {tuple(saved[key].shape)}, the settings give {tuple(fresh.shape)}")
    return saved[key]
