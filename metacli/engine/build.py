"""The engine's front door: build the parts of a few-shot run or of an online run from typed configs.

``build_episodic(algorithm, model, data, settings)`` and ``build_online(...)`` give everything needed to
meta-train, adapt or run the online protocol, without the CLI and without a run spec: the configs are the
sections of :mod:`metacli.engine.config`, ``settings`` a :class:`BuildSettings`. Every dataset and every
algorithm is built through its registry with one signature, so nothing here knows one by name. Choices
left ``auto`` in a spec (threads, executor) are the run layer's to resolve (:mod:`metacli.runlayer.parts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from metacli.engine.algorithms import EPISODIC_ALGORITHMS, ONLINE_ALGORITHMS
from metacli.engine.config.algorithms import AlgorithmConfig
from metacli.engine.config.data import DataConfig
from metacli.engine.config.models import ModelConfig
from metacli.engine.data import EPISODIC_DATASETS, ONLINE_DATASETS
from metacli.engine.data.paths import downloads_allowed, resolve_data_root, user_cache_dir
from metacli.engine.device import resolve_device
from metacli.engine.functional import Learner
from metacli.engine.models import build_model
from metacli.engine.parallel import DataParallel
from metacli.engine.types import (
    Batch,
    DataContext,
    EpisodicAlgorithm,
    EpisodicDataset,
    OnlineAlgorithm,
    OnlineStream,
    OpenProgress,
    TaskStream,
)


@dataclass(frozen=True)
class BuildSettings:
    """Where and how a run's parts are built: the engine's side of a spec's top-level fields."""

    seed: int = 0
    """Seed of the initial network, numpy's global generator and the run's generator."""
    device: str = "auto"
    """auto (CUDA when present, else CPU), cpu, cuda or cuda:N."""
    dtype: torch.dtype = torch.float32
    """Floating dtype of parameters and tasks."""
    data_root: Path | None = None
    """Folder holding datasets; None: ``$METACLI_DATA``, then the per-user cache folder."""
    progress: OpenProgress | None = None
    """Opens a progress display for downloads and decoding; None: report nothing."""
    parallel: DataParallel | None = None
    """The data-parallel group this process trains in (``torchrun``); None: one process."""


class EpisodicParts(NamedTuple):
    """What a few-shot run is made of."""

    device: torch.device
    dtype: torch.dtype
    generator: torch.Generator
    learner: Learner
    algorithm: EpisodicAlgorithm
    dataset: EpisodicDataset
    parallel: DataParallel | None = None
    """The data-parallel group this process trains in (``torchrun``); None: one process."""


class OnlineParts(NamedTuple):
    """What an online run is made of: the stream is cut to its first ``rounds`` tasks."""

    device: torch.device
    dtype: torch.dtype
    generator: torch.Generator
    learner: Learner
    algorithm: OnlineAlgorithm[Any]
    """``Any``: each online algorithm has its own state type; the loop only passes it back."""
    stream: OnlineStream
    parallel: DataParallel | None = None
    """The data-parallel group this process trains in (``torchrun``); None: one process."""


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (all sampling draws from explicit generators)."""
    return torch.Generator().manual_seed(seed)


def data_context(settings: BuildSettings, device: torch.device) -> DataContext:
    """The data root, cache folder, device and download policy that every dataset builder receives."""
    root = resolve_data_root(settings.data_root)
    return DataContext(root, user_cache_dir(), device, settings.dtype, downloads_allowed(), settings.progress)


def build_episodic(
    algorithm: AlgorithmConfig, model: ModelConfig, data: DataConfig, settings: BuildSettings
) -> EpisodicParts:
    """The parts of a few-shot run: device, generator, learner, algorithm, dataset.

    Raises:
        ValueError: ``algorithm`` or ``data`` belongs to the online protocol.
    """
    if algorithm.name not in EPISODIC_ALGORITHMS or data.name not in EPISODIC_DATASETS:
        raise ValueError(f"{algorithm.name} on {data.name} is not a few-shot run; build it with build_online")
    device = resolve_device(settings.device)
    dataset = EPISODIC_DATASETS[data.name](data, data_context(settings, device))
    return episodic_parts(algorithm, model, dataset, settings)


def episodic_parts(
    algorithm: AlgorithmConfig, model: ModelConfig, dataset: EpisodicDataset, settings: BuildSettings
) -> EpisodicParts:
    """The parts of a few-shot run on an already built ``dataset`` (the benchmarks' synthetic images).

    The network is initialised after the data is built, so that building it cannot change the network.
    """
    device = resolve_device(settings.device)
    net = initial_network(model, settings, device, dataset.in_shape, dataset.out_features)
    learner = Learner(net, dataset.criterion)
    generator = make_generator(settings.seed)
    algo = EPISODIC_ALGORITHMS[algorithm.name](algorithm, learner, generator)
    return EpisodicParts(device, settings.dtype, generator, learner, algo, dataset, settings.parallel)


def build_online(
    algorithm: AlgorithmConfig,
    model: ModelConfig,
    data: DataConfig,
    settings: BuildSettings,
    rounds: int | None = None,
) -> OnlineParts:
    """The parts of an online run, its stream cut to the first ``rounds`` tasks (None: all).

    Raises:
        ValueError: ``algorithm`` or ``data`` belongs to the few-shot protocol.
    """
    if algorithm.name not in ONLINE_ALGORITHMS or data.name not in ONLINE_DATASETS:
        raise ValueError(
            f"{algorithm.name} on {data.name} is not an online run; build it with build_episodic"
        )
    device = resolve_device(settings.device)
    stream = first_rounds(ONLINE_DATASETS[data.name](data, data_context(settings, device)), rounds)
    return online_parts(algorithm, model, stream, settings)


def online_parts(
    algorithm: AlgorithmConfig, model: ModelConfig, stream: OnlineStream, settings: BuildSettings
) -> OnlineParts:
    """The parts of an online run on an already built ``stream`` (the benchmarks' random streams)."""
    device = resolve_device(settings.device)
    net = initial_network(model, settings, device, tuple(stream.train.x.shape[2:]), stream.n_classes)
    learner = Learner(net, "cross_entropy")
    generator = make_generator(settings.seed)
    algo = ONLINE_ALGORITHMS[algorithm.name](algorithm, learner, generator)
    return OnlineParts(device, settings.dtype, generator, learner, algo, stream, settings.parallel)


def initial_network(
    model: ModelConfig, settings: BuildSettings, device: torch.device, in_shape: tuple[int, ...], n_out: int
) -> torch.nn.Module:
    """The initial network: PyTorch's default init under the run's seed.

    Called after the data is built, so that building (or reading a cache) cannot change it. numpy's
    global generator is seeded too, so that anything drawing from it is reproducible (and its
    checkpointed state is the same every run).
    """
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    return build_model(model, in_shape, n_out).to(device=device, dtype=settings.dtype)


def first_rounds(stream: TaskStream, rounds: int | None) -> OnlineStream:
    """The first ``rounds`` tasks of a stream (a shortened run); all of them for None."""
    r = rounds or stream.train.x.shape[0]
    return OnlineStream(
        train=Batch(stream.train.x[:r], stream.train.y[:r]),
        test=Batch(stream.test.x[:r], stream.test.y[:r]),
        n_classes=stream.n_classes,
    )
