"""Dataset registry: ``DATASETS`` (name -> builder) beside the discriminated union ``DataConfig``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from metacli.engine.data import sinusoid
from metacli.engine.data.sinusoid import SinusoidConfig
from metacli.engine.data.smnist import SMNISTConfig

DataConfig = Annotated[SinusoidConfig | SMNISTConfig, Field(discriminator="name")]

EPISODIC_DATASETS: dict[str, Callable[..., Any]] = {"sinusoid": sinusoid.build}
ONLINE_DATASETS: dict[str, type[Any]] = {"smnist": SMNISTConfig}
DATASETS: dict[str, Any] = {**EPISODIC_DATASETS, **ONLINE_DATASETS}
