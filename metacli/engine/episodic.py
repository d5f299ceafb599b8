"""The one episodic meta-train / meta-test loop for every few-shot algorithm.

Per meta-step: sample B tasks from the training split with the run's generator, ask the algorithm
for its meta-gradient (``meta_step``), hand it to the outer optimiser. The loop owns logging and
checkpoints; algorithms own no loop (DESIGN.md G1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from metacli.engine.build import Parts
from metacli.engine.checkpoint import save_atomic
from metacli.engine.executors import task_at
from metacli.engine.types import Params, Task
from metacli.spec import EvalSettings, TrainSettings

LogFn = Callable[[int, dict[str, float]], None]


def leaf_params(params: Params) -> Params:
    """Detached copies that require grad: the meta-parameters the outer optimiser updates."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def save_checkpoint(
    path: Path,
    step: int,
    meta: Params,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
) -> None:
    """Write ``checkpoints/last.pt`` atomically: meta-parameters, optimiser, RNG states, step."""
    state = {
        "step": step,
        "meta": {k: v.detach().cpu() for k, v in meta.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    save_atomic(path, state)


class TrainState:
    """Meta-parameters, outer optimiser and scheduler of an episodic run, fresh or resumed."""

    def __init__(self, parts: Parts, total_steps: int, checkpoint: dict[str, Any] | None = None) -> None:
        algo = parts.algorithm
        meta = algo.init_meta(parts.learner.init_params())
        self.step = 0
        if checkpoint is not None:
            meta = {k: checkpoint["meta"][k].to(parts.device, parts.dtype) for k in meta}
            self.step = int(checkpoint["step"])
            parts.generator.set_state(checkpoint["generator"])
            torch.set_rng_state(checkpoint["torch_rng"])
            cuda_rng = checkpoint.get("cuda_rng")  # only restorable on a machine with as many GPUs
            if cuda_rng is not None and torch.cuda.is_available():
                if len(cuda_rng) == torch.cuda.device_count():
                    torch.cuda.set_rng_state_all(cuda_rng)
        self.meta = leaf_params(meta)
        self.optimizer, self.scheduler = algo.outer_optimizer(self.meta, total_steps)
        if checkpoint is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            if self.scheduler is not None and checkpoint["scheduler"] is not None:
                self.scheduler.load_state_dict(checkpoint["scheduler"])


def outer_update(state: TrainState, grads: Params) -> None:
    """Hand the meta-gradient to the outer optimiser and take one step."""
    for k, p in state.meta.items():
        p.grad = grads[k].detach().to(p.dtype)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    if state.scheduler is not None:
        state.scheduler.step()


def train(
    parts: Parts,
    cfg: TrainSettings,
    state: TrainState,
    log: LogFn,
    checkpoint: Callable[[TrainState], None],
    advance: Callable[[str], None],
) -> TrainState:
    """Meta-train from ``state.step`` to ``cfg.meta_iters``, logging and checkpointing on the way."""
    t0 = time.perf_counter()
    while state.step < cfg.meta_iters:
        tasks = parts.dataset.sample("train", cfg.meta_batch, parts.generator, parts.device, parts.dtype)
        result = parts.algorithm.meta_step(state.meta, tasks, cfg.executor)
        outer_update(state, result.grads)
        state.step += 1
        if state.step % cfg.log_every == 0 or state.step == cfg.meta_iters:
            row = {"query_loss": result.loss, **result.metrics, "wall_time": time.perf_counter() - t0}
            log(state.step, row)
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.meta_iters:
            checkpoint(state)
        advance(f"loss {result.loss:.4f}")
    return state


def evaluate(
    parts: Parts,
    meta: Params,
    cfg: EvalSettings,
    default_steps: int,
    advance: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Meta-test: adapt to ``cfg.tasks`` test tasks and measure the query loss (and accuracy).

    Returns, per adaptation step count, the mean, the 95% confidence interval 1.96 std/sqrt(n)
    and the number of tasks, for the query loss and (classification) the accuracy.
    """
    steps_list = list(cfg.inner_steps or (default_steps,))
    generator = torch.Generator().manual_seed(cfg.seed)
    values: dict[str, list[float]] = {}
    done = 0
    while done < cfg.tasks:
        n = min(cfg.batch, cfg.tasks - done)
        tasks = parts.dataset.sample("test", n, generator, parts.device, parts.dtype)
        for i in range(n):
            for name, v in task_metrics(parts, meta, task_at(tasks, i), steps_list).items():
                values.setdefault(name, []).append(v)
        done += n
        if advance is not None:
            advance(n)
    return {name: summarize(vs) for name, vs in values.items()}


def task_metrics(parts: Parts, meta: Params, task: Task, steps_list: list[int]) -> dict[str, float]:
    """Query loss (and accuracy) of one task after each number of adaptation steps."""
    learner, out = parts.learner, {}
    for steps in steps_list:
        phi = parts.algorithm.adapt(meta, task.support, steps=steps)
        with torch.no_grad():
            out[f"query_loss@{steps}"] = float(learner.loss(phi, task.query))
            if learner.criterion == "cross_entropy":
                out[f"query_acc@{steps}"] = float(learner.accuracy(phi, task.query))
    return out


def summarize(values: list[float]) -> dict[str, float]:
    """Mean, 95% confidence half-width (1.96 std / sqrt(n), sample std) and n."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return {"mean": mean, "ci95": 1.96 * math.sqrt(var / n), "n": n}
