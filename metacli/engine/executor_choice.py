"""``train.executor: auto`` by measurement: time a few meta-steps of each executor on the run's own shapes.

Which executor is faster depends on the whole step, not on one number of it: on one CPU thread ``vmap``
beats the per-task loop for Omniglot with one query per class and loses 2.3x with fifteen (issue 25), and
a rule on the input size cannot see the query count, the inner steps or the device. So a few-shot run
measures, once, before it trains:

1. one meta-step of ``loop`` (a warm-up), under :func:`metacli.engine.memory.peak_bytes`: the graph of one
   task, which ``vmap`` holds B times over;
2. ``vmap`` is left out when those B graphs would not fit in the memory free now (:data:`MEMORY_MARGIN`),
   when there is one task to batch, or when its warm-up step fails (an operation ``vmap`` does not support,
   or memory after all);
3. :data:`REPEATS` timed steps of each executor left, interleaved in alternating order, each executor's
   median kept: on a shared machine ``vmap``'s times spread far wider than the loop's (its large
   allocations meet the other processes' memory traffic), and the fastest of a few then favours it on
   luck (Omniglot, 5 queries: ``vmap``'s fastest step 0.82 s against the loop's 0.90 s, its median 1.33 s
   against 1.07 s); under torchrun each executor counts at its slowest rank, so every rank takes the same
   choice.

The steps run on copies: fresh meta-parameters, tasks drawn from the run's generator whose state is put
back afterwards, as are torch's global RNG and the algorithm's own state (warm starts). The run then trains
exactly as it would with the chosen executor named in its spec. The guard against fused batch norm under
``vmap`` (wrong at second order) is the layer's own (:func:`metacli.engine.models.layers.fused_is_exact`),
so the measured ``vmap`` step is the exact one.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from metacli.engine import memory
from metacli.engine.build import EpisodicParts
from metacli.engine.episodic import leaf_params
from metacli.engine.executors import EXECUTORS, task_at
from metacli.engine.parallel import DataParallel
from metacli.engine.types import Executor, Params, Task
from metacli.errors import is_out_of_memory

REPEATS = 5
"""Timed meta-steps per executor (after one warm-up each); odd, so the median is one of them."""

MEMORY_MARGIN = 0.8
"""Share of the free memory that ``vmap``'s estimated peak may take (the rest: the run's other needs)."""


@dataclass(frozen=True)
class ExecutorChoice:
    """What ``auto`` measured and chose."""

    chosen: Executor
    seconds: dict[str, float]
    """Seconds per meta-step of each executor timed (the median of its repeats)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Executors not timed, with the reason."""

    def record(self) -> dict[str, Any]:
        """The entry of summary.json."""
        return {"chosen": self.chosen, "seconds_per_step": self.seconds, "skipped": self.skipped}

    def line(self) -> str:
        """One line for the start of the run's output."""
        timed = ", ".join(f"{name} {1000 * s:.1f} ms" for name, s in self.seconds.items())
        left = "".join(f"; {name} not tried: {why}" for name, why in self.skipped.items())
        return f"executor auto: {self.chosen} (per meta-step: {timed}{left})"


def measure_executors(parts: EpisodicParts, meta_batch: int, repeats: int = REPEATS) -> ExecutorChoice:
    """Time the executors on ``meta_batch`` tasks of the run and choose the faster (see the module)."""
    with untouched(parts):
        meta = leaf_params(parts.algorithm.init_meta(parts.learner.init_params()))
        tasks = parts.dataset.sample("train", meta_batch, parts.generator, parts.device, parts.dtype)
        if parts.parallel is not None:  # this rank's share: the all-reduce costs the same either way
            tasks = task_at(tasks, parts.parallel.share(meta_batch))
        candidates, skipped = candidates_after_warmup(parts, meta, tasks)
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for r in range(repeats):
            # alternating order: neither executor always runs right after the other's allocations
            for name in candidates if r % 2 == 0 else candidates[::-1]:
                times[name].append(step_seconds(parts, meta, tasks, name))
    best = {name: statistics.median(ts) for name, ts in times.items()}
    if parts.parallel is not None:
        best, skipped = slowest_rank(parts.parallel, best, skipped)
    chosen = next(name for name in EXECUTORS if name in best and best[name] == min(best.values()))
    return ExecutorChoice(cast(Executor, chosen), best, skipped)


def slowest_rank(
    parallel: DataParallel, best: dict[str, float], skipped: dict[str, str]
) -> tuple[dict[str, float], dict[str, str]]:
    """Each executor's time at its slowest rank; one left out on any rank is left out on all.

    Every rank reduces the same list (every executor, infinity for one it did not time), so the ranks
    agree on the choice whatever each of them could try.
    """
    times = parallel.slowest([best.get(name, float("inf")) for name in EXECUTORS])
    slowest = {name: t for name, t in zip(EXECUTORS, times, strict=True) if t != float("inf")}
    gone = {name: skipped.get(name, "not tried on another rank") for name in EXECUTORS if name not in slowest}
    return slowest, gone


def candidates_after_warmup(
    parts: EpisodicParts, meta: Params, tasks: Task
) -> tuple[list[Executor], dict[str, str]]:
    """The executors worth timing, each warmed up once, and why any other is left out."""
    one_task = memory.peak_bytes(lambda: run_step(parts, meta, tasks, "loop"), parts.device)
    n_tasks = int(tasks.query.x.shape[0])
    free = free_bytes(parts.device)
    why = vmap_obstacle(n_tasks, one_task, free)
    if why is None:
        try:
            run_step(parts, meta, tasks, "vmap")
        except RuntimeError as e:  # this step cannot run batched: the loop can, as it just did
            why = (
                "out of memory" if is_out_of_memory(e) else f"unsupported ({str(e).strip().splitlines()[0]})"
            )
    return (["loop"], {"vmap": why}) if why is not None else (["loop", "vmap"], {})


def vmap_obstacle(n_tasks: int, one_task_bytes: int, free: int | None) -> str | None:
    """Why ``vmap`` is not worth trying on ``n_tasks`` tasks, or None: it holds every task's graph at once."""
    if n_tasks < 2:
        return "one task per step: nothing to batch"
    need = n_tasks * one_task_bytes
    if free is not None and need > MEMORY_MARGIN * free:
        return f"needs about {need / memory.BYTES_PER_MB:.0f} MB, {free / memory.BYTES_PER_MB:.0f} MB free"
    return None


def free_bytes(device: torch.device) -> int | None:
    """Memory free for this process now: the GPU's, or the machine's ``MemAvailable``; None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_step(parts: EpisodicParts, meta: Params, tasks: Task, executor: Executor) -> None:
    """One meta-gradient of ``tasks`` on this process alone (no collective: the ranks may try differently)."""
    parts.algorithm.meta_step(meta, tasks, executor, None)


def step_seconds(parts: EpisodicParts, meta: Params, tasks: Task, executor: Executor) -> float:
    """Wall seconds of one meta-gradient, the device's queue drained at both ends."""
    sync(parts.device)
    start = time.perf_counter()
    run_step(parts, meta, tasks, executor)
    sync(parts.device)
    return time.perf_counter() - start


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously to the host)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def untouched(parts: EpisodicParts) -> Iterator[None]:
    """Put back what the measured steps change: the run's generator, torch's RNG, the algorithm's state."""
    generator = parts.generator.get_state()
    algorithm = parts.algorithm.state_dict()
    devices = [parts.device] if parts.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            parts.generator.set_state(generator)
            parts.algorithm.load_state_dict(
                {k: v.to(parts.device, parts.dtype) for k, v in algorithm.items()}
            )
