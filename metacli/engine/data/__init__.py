"""Dataset registry: ``DATASETS`` (name -> builder) beside the discriminated union ``DataConfig``.

Every builder has the one signature ``build(cfg, ctx: DataContext)`` and returns an
:class:`~metacli.engine.types.EpisodicDataset` (few-shot tasks) or a
:class:`~metacli.engine.types.TaskStream` (the online protocol).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from metacli.engine.data import cifar, miniimagenet, omniglot, sinusoid, smnist
from metacli.engine.data.cifar import CIFARFSConfig, FC100Config
from metacli.engine.data.miniimagenet import MiniImageNetConfig
from metacli.engine.data.omniglot import OmniglotConfig
from metacli.engine.data.sinusoid import SinusoidConfig
from metacli.engine.data.smnist import SMNISTConfig
from metacli.engine.types import DatasetBuilder

DataConfig = Annotated[
    SinusoidConfig | OmniglotConfig | MiniImageNetConfig | CIFARFSConfig | FC100Config | SMNISTConfig,
    Field(discriminator="name"),
]

EPISODIC_DATASETS: dict[str, DatasetBuilder] = {
    "sinusoid": sinusoid.build,
    "omniglot": omniglot.build,
    "miniimagenet": miniimagenet.build,
    "cifar_fs": cifar.build_cifar_fs,
    "fc100": cifar.build_fc100,
}
ONLINE_DATASETS: dict[str, DatasetBuilder] = {"smnist": smnist.build}
DATASETS: dict[str, DatasetBuilder] = {**EPISODIC_DATASETS, **ONLINE_DATASETS}
