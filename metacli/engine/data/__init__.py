"""Dataset registry: ``DATASETS`` (name -> builder) beside the discriminated union ``DataConfig``.

The configs, their union and the set of online task streams are defined without torch in
:mod:`metacli.engine.config.data` (so that a run spec validates without importing torch) and re-exported
here. Each config names its builder (``factory``), so the registries below are derived from the union
(:func:`~metacli.engine.config.registry.factories`). Every builder has the one signature
``build(cfg, ctx: DataContext)`` and returns an :class:`~metacli.engine.types.EpisodicDataset` (few-shot
tasks) or a :class:`~metacli.engine.types.TaskStream` (the online protocol).
"""

from __future__ import annotations

from metacli.engine.config.data import DataConfig
from metacli.engine.config.registry import factories
from metacli.engine.types import DatasetBuilder, EpisodicDatasetBuilder, OnlineDatasetBuilder

__all__ = ["DATASETS", "EPISODIC_DATASETS", "ONLINE_DATASETS", "DataConfig"]

EPISODIC_DATASETS: dict[str, EpisodicDatasetBuilder] = factories(DataConfig, online=False)
"""The episodic datasets (N-way K-shot tasks, sinusoid regression)."""
ONLINE_DATASETS: dict[str, OnlineDatasetBuilder] = factories(DataConfig, online=True)
"""The online protocol's task streams (the names of ``config.data.ONLINE_DATASET_NAMES``)."""
DATASETS: dict[str, DatasetBuilder] = {**EPISODIC_DATASETS, **ONLINE_DATASETS}
"""Every dataset's builder by name."""
