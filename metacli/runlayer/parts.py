"""From a run spec to the engine: build settings, the built parts, and every ``auto`` resolved.

The engine never sees a :class:`~metacli.spec.RunSpec`: this module hands it the spec's typed sections
and a :class:`~metacli.engine.BuildSettings`, then makes the choices a spec may leave ``auto`` (the device,
CPU threads from the network's size; a few-shot run's executor by timing a few meta-steps of each,
:mod:`metacli.engine.executor_choice`) and returns the spec with them filled in, as the run directory's
spec.yaml records it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from metacli.engine.build import BuildSettings, EpisodicParts, OnlineParts, build_episodic, build_online
from metacli.engine.episodic import LoopSettings
from metacli.engine.executor_choice import ExecutorChoice, measure_executors
from metacli.engine.parallel import DataParallel
from metacli.engine.policy import choose_executor, choose_threads
from metacli.engine.types import EpisodicConfig, OpenProgress
from metacli.errors import SpecError
from metacli.spec import RunSpec


class Built(NamedTuple):
    """The parts of a run and its spec with every ``auto`` resolved."""

    parts: EpisodicParts | OnlineParts
    spec: RunSpec
    executor_choice: ExecutorChoice | None = None
    """What ``train.executor: auto`` measured (None: the spec named its executor, or an online run)."""


def build_settings(
    spec: RunSpec,
    device: str | None = None,
    progress: OpenProgress | None = None,
    parallel: DataParallel | None = None,
) -> BuildSettings:
    """The engine's build settings of ``spec``; ``device`` overrides ``spec.device``."""
    return BuildSettings(
        seed=spec.seed,
        device=device or spec.device,
        dtype=torch.float64 if spec.dtype == "float64" else torch.float32,
        data_root=Path(spec.data_root) if spec.data_root else None,
        progress=progress,
        parallel=parallel,
    )


def build_run(
    spec: RunSpec,
    device: str | None = None,
    progress: OpenProgress | None = None,
    parallel: DataParallel | None = None,
) -> Built:
    """Build ``spec``'s parts through the engine's front door, then resolve and apply its ``auto`` fields."""
    settings = build_settings(spec, device, progress, parallel)
    parts: EpisodicParts | OnlineParts
    if spec.is_online:
        parts = build_online(spec.algorithm, spec.model, spec.data, settings, spec.online.rounds)
    else:
        parts = build_episodic(spec.algorithm, spec.model, spec.data, settings)
    spec = resolve_auto(spec, parts)
    if isinstance(spec.threads, int):
        torch.set_num_threads(spec.threads)
    choice = None
    if spec.train.executor == "auto" and getattr(spec.algorithm, "remat", False):
        # remat's reverse pass does not run under vmap (RunSpec refuses an explicit vmap with remat)
        spec = with_executor(spec, "loop")
    if isinstance(parts, EpisodicParts) and spec.train.executor == "auto":
        # after the threads are set: the executors are timed as the run will run them
        choice = measure_executors(parts, spec.train.meta_batch)
        spec = with_executor(spec, choice.chosen)
    return Built(parts, spec, choice)


def with_executor(spec: RunSpec, executor: str) -> RunSpec:
    """``spec`` with ``train.executor`` set to ``executor`` (an ``auto`` resolved)."""
    return spec.model_copy(update={"train": spec.train.model_copy(update={"executor": executor})})


def build_episodic_run(spec: RunSpec, device: str | None = None) -> EpisodicParts:
    """The parts of a few-shot ``spec`` (tests and the Python API); SpecError for an online one."""
    parts = build_run(spec, device).parts
    if not isinstance(parts, EpisodicParts):
        raise SpecError(f"{spec.algorithm.name} is an online algorithm, not a few-shot one")
    return parts


def resolve_auto(spec: RunSpec, parts: EpisodicParts | OnlineParts) -> RunSpec:
    """``spec`` with ``device: auto`` and ``threads: auto`` replaced by the chosen values (the device a
    data-parallel run's ranks share by its type: ``cuda``, not rank 0's ``cuda:0``), and an online run's
    ``train.executor: auto`` by the input-size rule (a few-shot run's is measured in :func:`build_run`)."""
    update: dict[str, Any] = {}
    if spec.device == "auto":
        update["device"] = parts.device.type if parts.parallel is not None else str(parts.device)
    if spec.threads == "auto":
        update["threads"] = choose_threads(sum(p.numel() for p in parts.learner.init_params().values()))
    spec = spec.model_copy(update=update) if update else spec
    if spec.train.executor == "auto" and isinstance(parts, OnlineParts):
        in_shape = tuple(parts.stream.train.x.shape[2:])
        spec = with_executor(spec, choose_executor(parts.device, in_shape, spec.train.meta_batch))
    return spec


def loop_settings(spec: RunSpec) -> LoopSettings:
    """The episodic loop's settings of a resolved ``spec`` (its executor chosen)."""
    t = spec.train
    if t.executor == "auto":
        raise ValueError("train.executor is still auto: resolve the spec first (build_run)")
    return LoopSettings(
        t.meta_batch, t.meta_iters, t.executor, t.log_every, t.checkpoint_every, t.on_nonfinite
    )


def eval_inner_steps(spec: RunSpec) -> int:
    """The default adaptation steps at meta-test of a few-shot ``spec`` (its ``algorithm.eval_inner_steps``).

    Raises:
        SpecError: ``spec`` is an online run, whose algorithm has no meta-test.
    """
    if not isinstance(spec.algorithm, EpisodicConfig):
        raise SpecError(f"{spec.algorithm.name} is an online algorithm: it has no eval_inner_steps")
    return spec.algorithm.eval_inner_steps
