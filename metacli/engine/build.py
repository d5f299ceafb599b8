"""Build the parts of a run from a validated spec: device, generator, learner, dataset, algorithm.

This is also the entry point of the Python API (see the README): ``build(spec)`` gives everything
needed to compute a meta-gradient or adapt a model without the CLI. Every dataset and every algorithm
is built through its registry with one signature, so nothing here knows a dataset or algorithm by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from metacli.engine.algorithms import ALGORITHMS
from metacli.engine.data import DATASETS
from metacli.engine.data.paths import downloads_allowed, resolve_data_root, user_cache_dir
from metacli.engine.device import resolve_device
from metacli.engine.functional import Learner
from metacli.engine.models import build_model
from metacli.engine.parallel import DataParallel
from metacli.engine.policy import choose_executor, choose_threads
from metacli.engine.types import Batch, DataContext, EpisodicDataset, OnlineStream, TaskStream
from metacli.spec import RunSpec


class Parts(NamedTuple):
    """What a run is made of."""

    device: torch.device
    dtype: torch.dtype
    generator: torch.Generator
    learner: Learner
    algorithm: Any
    """An ``EpisodicAlgorithm`` or ``OnlineAlgorithm`` (protocols of :mod:`metacli.engine.types`)."""
    dataset: Any
    """An :class:`~metacli.engine.types.EpisodicDataset` or, for online runs, an :class:`OnlineStream`."""
    spec: RunSpec | None = None
    """The spec with every ``auto`` resolved, as the run directory's spec.yaml records it (set by build)."""
    parallel: DataParallel | None = None
    """The data-parallel group this process trains in (``torchrun``); None: one process."""


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (all sampling draws from explicit generators)."""
    return torch.Generator().manual_seed(seed)


def data_context(spec: RunSpec, device: torch.device, dtype: torch.dtype, progress: bool) -> DataContext:
    """The data root, cache folder, device and download policy that every dataset builder receives."""
    root = resolve_data_root(Path(spec.data_root) if spec.data_root else None)
    return DataContext(root, user_cache_dir(), device, dtype, downloads_allowed(), progress)


def build(
    spec: RunSpec, device: str | None = None, progress: bool = False, parallel: DataParallel | None = None
) -> Parts:
    """Build every part of ``spec``; ``device`` overrides ``spec.device``; ``parallel``: see Parts."""
    dev = resolve_device(device or spec.device)
    dtype = torch.float64 if spec.dtype == "float64" else torch.float32
    dataset = DATASETS[spec.data.name](spec.data, data_context(spec, dev, dtype, progress))
    if isinstance(dataset, EpisodicDataset):
        in_shape, n_out, criterion = dataset.in_shape, dataset.out_features, dataset.criterion
    else:
        dataset = first_rounds(dataset, spec.online.rounds)
        in_shape, n_out, criterion = tuple(dataset.train.x.shape[2:]), dataset.n_classes, "cross_entropy"
    # The initial network: PyTorch's default init under the run's seed, after the data is built so
    # that building (or reading a cache) cannot change it. numpy's global generator is seeded too, so
    # that anything drawing from it is reproducible (and its checkpointed state is the same every run).
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed)
    model = build_model(spec.model, in_shape, n_out).to(device=dev, dtype=dtype)
    spec = resolve_auto(spec, dev, in_shape, sum(p.numel() for p in model.parameters()))
    if isinstance(spec.threads, int):
        torch.set_num_threads(spec.threads)
    learner = Learner(model, criterion)
    generator = make_generator(spec.seed)
    algorithm = ALGORITHMS[spec.algorithm.name](spec.algorithm, learner, generator)
    return Parts(dev, dtype, generator, learner, algorithm, dataset, spec, parallel)


def resolve_auto(spec: RunSpec, device: torch.device, in_shape: tuple[int, ...], n_params: int) -> RunSpec:
    """``spec`` with ``threads: auto`` and ``train.executor: auto`` replaced by the chosen values."""
    update: dict[str, Any] = {}
    if spec.threads == "auto":
        update["threads"] = choose_threads(n_params)
    if spec.train.executor == "auto":
        executor = choose_executor(device, in_shape, spec.train.meta_batch)
        update["train"] = spec.train.model_copy(update={"executor": executor})
    return spec.model_copy(update=update) if update else spec


def first_rounds(stream: TaskStream, rounds: int | None) -> OnlineStream:
    """The first ``rounds`` tasks of a stream (a shortened run); all of them for None."""
    r = rounds or stream.train.x.shape[0]
    return OnlineStream(
        train=Batch(stream.train.x[:r], stream.train.y[:r]),
        test=Batch(stream.test.x[:r], stream.test.y[:r]),
        n_classes=stream.n_classes,
    )
