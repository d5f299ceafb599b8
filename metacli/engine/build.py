"""Build the parts of a run from a validated spec: device, generator, learner, dataset, algorithm.

This is also the entry point of the Python API (see the README): ``build(spec)`` gives everything
needed to compute a meta-gradient or adapt a model without the CLI.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch

from metacli.engine.algorithms import ALGORITHMS
from metacli.engine.data import EPISODIC_DATASETS
from metacli.engine.device import resolve_device
from metacli.engine.functional import Criterion, Learner
from metacli.engine.models import build_model
from metacli.engine.types import Batch, OnlineStream
from metacli.spec import RunSpec


class Parts(NamedTuple):
    """What a run is made of."""

    device: torch.device
    dtype: torch.dtype
    generator: torch.Generator
    learner: Learner
    algorithm: Any
    dataset: Any
    """An episodic dataset (with ``sample``) or, for online runs, the :class:`OnlineStream`."""


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (all sampling draws from explicit generators)."""
    return torch.Generator().manual_seed(seed)


def build(spec: RunSpec, device: str | None = None, progress: bool = False) -> Parts:
    """Build every part of ``spec``; ``device`` overrides ``spec.device``."""
    dev = resolve_device(device or spec.device)
    dtype = torch.float64 if spec.dtype == "float64" else torch.float32
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)  # the initial network: PyTorch's default init under the run's seed
    dataset: Any
    if spec.is_online:
        dataset = build_stream(spec, dev, dtype, progress)
        in_shape, n_out, criterion = tuple(dataset.train.x.shape[2:]), dataset.n_classes, "cross_entropy"
    else:
        dataset = EPISODIC_DATASETS[spec.data.name](spec.data)
        in_shape, n_out, criterion = dataset.in_shape, dataset.out_features, dataset.criterion
    model = build_model(spec.model, in_shape, n_out).to(device=dev, dtype=dtype)
    learner = Learner(model, cast(Criterion, criterion))
    generator = make_generator(spec.seed)
    cls = ALGORITHMS[spec.algorithm.name]
    # Algorithms that draw random numbers themselves (Reptile's mini-batch order) take the run's
    # generator, so its state is checkpointed with the run and a resumed run draws the same numbers.
    extra = {"generator": generator} if "generator" in inspect.signature(cls).parameters else {}
    algorithm = cls(spec.algorithm, learner, **extra)
    return Parts(dev, dtype, generator, learner, algorithm, dataset)


def build_stream(spec: RunSpec, device: torch.device, dtype: torch.dtype, progress: bool) -> OnlineStream:
    """Load (or build and cache) the online task stream and move it to ``device``."""
    from metacli.engine.data.mnist import downloads_allowed, resolve_data_root, user_cache_dir
    from metacli.engine.data.smnist import build_stream as build_smnist
    from metacli.engine.data.smnist import cache_name

    root = resolve_data_root(Path(spec.data_root) if spec.data_root else None)
    cache = user_cache_dir() / "streams" / cache_name(spec.data)  # type: ignore[arg-type]
    stream = build_smnist(spec.data, root, cache_dir=cache, download=downloads_allowed(), progress=progress)  # type: ignore[arg-type]
    r = spec.online.rounds or stream.train.x.shape[0]  # a shortened run sees only the first r tasks
    return OnlineStream(
        train=Batch(stream.train.x[:r].to(device, dtype), stream.train.y[:r].to(device)),
        test=Batch(stream.test.x[:r].to(device, dtype), stream.test.y[:r].to(device)),
        n_classes=stream.n_classes,
    )
