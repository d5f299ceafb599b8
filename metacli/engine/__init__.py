"""The engine: every algorithm, model and dataset; CUDA when present, CPU otherwise.

Its front door, what the run layer, the benchmarks and the Python API use:

- :func:`build_episodic` / :func:`build_online` (with :class:`BuildSettings`): the typed parts of a run,
  :class:`EpisodicParts` / :class:`OnlineParts`, whose ``algorithm`` and ``dataset`` are the Protocols
  :class:`EpisodicAlgorithm`, :class:`EpisodicDataset`, :class:`OnlineAlgorithm` of :mod:`.types`;
- :func:`train` (with :class:`LoopSettings`, :class:`TrainState`, :class:`Validation`) and
  :func:`evaluate`: the episodic loop and meta-test; :func:`run_online`: the online loop;
- :data:`Progress`: the callable through which the loops report progress (the engine draws nothing).

The names are imported on first use, so that :mod:`metacli.engine.config` (which the spec module
imports to validate a spec) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metacli.engine.build import BuildSettings, EpisodicParts, OnlineParts, build_episodic, build_online
    from metacli.engine.episodic import LoopSettings, TrainState, Validation, evaluate, leaf_params, train
    from metacli.engine.online import run_online
    from metacli.engine.types import (
        EpisodicAlgorithm,
        EpisodicConfig,
        EpisodicDataset,
        OnlineAlgorithm,
        OnlineStream,
        OpenProgress,
        Progress,
    )

_HOMES = {
    "build": ("BuildSettings", "EpisodicParts", "OnlineParts", "build_episodic", "build_online"),
    "episodic": ("LoopSettings", "TrainState", "Validation", "evaluate", "leaf_params", "train"),
    "online": ("run_online",),
    "types": (
        "EpisodicAlgorithm",
        "EpisodicConfig",
        "EpisodicDataset",
        "OnlineAlgorithm",
        "OnlineStream",
        "OpenProgress",
        "Progress",
    ),
}
"""Which module of the engine defines each public name."""

__all__ = [
    "BuildSettings",
    "EpisodicAlgorithm",
    "EpisodicConfig",
    "EpisodicDataset",
    "EpisodicParts",
    "LoopSettings",
    "OnlineAlgorithm",
    "OnlineParts",
    "OnlineStream",
    "OpenProgress",
    "Progress",
    "TrainState",
    "Validation",
    "build_episodic",
    "build_online",
    "evaluate",
    "leaf_params",
    "run_online",
    "train",
]


def __getattr__(name: str) -> Any:
    for module, names in _HOMES.items():
        if name in names:
            return getattr(importlib.import_module(f"metacli.engine.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
