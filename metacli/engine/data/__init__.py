"""Dataset registry: ``DATASETS`` (name -> builder) beside the discriminated union ``DataConfig``.

The configs, their union and the set of online task streams are defined without torch in
:mod:`metacli.engine.config.data` (so that a run spec validates without importing torch) and re-exported
here. Every builder has the one signature ``build(cfg, ctx: DataContext)`` and returns an
:class:`~metacli.engine.types.EpisodicDataset` (few-shot tasks) or a
:class:`~metacli.engine.types.TaskStream` (the online protocol).
"""

from __future__ import annotations

from metacli.engine.config.data import DataConfig
from metacli.engine.data import cifar, miniimagenet, omniglot, sinusoid, smnist
from metacli.engine.types import DatasetBuilder, EpisodicDatasetBuilder, OnlineDatasetBuilder

__all__ = ["DATASETS", "EPISODIC_DATASETS", "ONLINE_DATASETS", "DataConfig"]

EPISODIC_DATASETS: dict[str, EpisodicDatasetBuilder] = {
    "sinusoid": sinusoid.build,
    "omniglot": omniglot.build,
    "miniimagenet": miniimagenet.build,
    "cifar_fs": cifar.build_cifar_fs,
    "fc100": cifar.build_fc100,
}
"""The episodic datasets (N-way K-shot tasks, sinusoid regression)."""
ONLINE_DATASETS: dict[str, OnlineDatasetBuilder] = {
    "smnist": smnist.build,
}
"""The online protocol's task streams (the names of ``config.data.ONLINE_DATASET_NAMES``)."""
DATASETS: dict[str, DatasetBuilder] = {**EPISODIC_DATASETS, **ONLINE_DATASETS}
"""Every dataset's builder by name."""
