"""Sinusoid regression (Finn et al., 2017, §5.1).

Each task is ``y = A sin(x - phase)`` with ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]`` and
``x ~ U[-5, 5]`` (cbfinn/maml ``data_generator.py``); the loss is the per-example mean squared error.
Tasks are sampled afresh from the generator, so there is no class split: ``split`` is accepted only so
that every dataset has the same ``sample`` signature.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from metacli.engine.types import Batch, DataContext, Task


class SinusoidConfig(BaseModel):
    """Sinusoid regression tasks with random amplitude and phase."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    name: Literal["sinusoid"] = "sinusoid"
    """Dataset name (discriminator)."""
    shots: int = Field(default=5, ge=1)
    """K: support points per task."""
    queries: int = Field(default=10, ge=1)
    """Query points per task."""
    amplitude: tuple[float, float] = (0.1, 5.0)
    """Range of the uniform amplitude A."""
    phase: tuple[float, float] = (0.0, math.pi)
    """Range of the uniform phase, in radians."""
    x_range: tuple[float, float] = (-5.0, 5.0)
    """Range of the uniform inputs x."""

    @model_validator(mode="after")
    def _ordered_ranges(self) -> SinusoidConfig:
        for field in ("amplitude", "phase", "x_range"):
            low, high = getattr(self, field)
            if low > high:
                raise ValueError(f"{field}: low {low} > high {high}; write it as [low, high]")
        return self


def _uniform(bounds: tuple[float, float], shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    low, high = bounds
    # float64 on the CPU so that one seed gives the same tasks whatever dtype and device follow
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


class Sinusoid:
    """Samples stacked sinusoid tasks.

    Args:
        cfg: the dataset section of the run spec.
    """

    in_shape: tuple[int, ...] = (1,)
    out_features: int = 1
    criterion: Literal["mse"] = "mse"

    def __init__(self, cfg: SinusoidConfig) -> None:
        self.cfg = cfg

    def sample(
        self,
        split: str,
        n_tasks: int,
        generator: torch.Generator,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Task:
        """``n_tasks`` tasks stacked on a leading axis.

        Args:
            split: ignored (all splits draw from the same task distribution).
            n_tasks: number of tasks B.
            generator: a CPU generator; all randomness comes from it.
            device: where the returned tensors live (default: the CPU).
            dtype: floating dtype of the returned tensors.

        Returns:
            A :class:`Task` with ``support.x``, ``support.y`` of shape (B, shots, 1) and ``query.x``,
            ``query.y`` of shape (B, queries, 1).
        """
        del split
        cfg = self.cfg
        amplitude = _uniform(cfg.amplitude, (n_tasks, 1, 1), generator)
        phase = _uniform(cfg.phase, (n_tasks, 1, 1), generator)
        x = _uniform(cfg.x_range, (n_tasks, cfg.shots + cfg.queries, 1), generator)
        y = amplitude * torch.sin(x - phase)
        x, y = x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)
        k = cfg.shots
        return Task(Batch(x[:, :k], y[:, :k]), Batch(x[:, k:], y[:, k:]))


def build(cfg: SinusoidConfig, ctx: DataContext | None = None) -> Sinusoid:
    """The dataset contract: a :class:`Sinusoid` task sampler for ``cfg`` (it reads no files)."""
    del ctx
    return Sinusoid(cfg)
