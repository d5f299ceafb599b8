"""Sinusoid regression (Finn et al., 2017, §5.1).

Each task is ``y = A sin(x - phase)`` with ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]`` and
``x ~ U[-5, 5]`` (cbfinn/maml ``data_generator.py``); the loss is the per-example mean squared error.
Tasks are sampled afresh from the generator, so there is no class split: ``split`` is accepted only so
that every dataset has the same ``sample`` signature.
"""

from __future__ import annotations

from typing import Literal

import torch

from metacli.engine.config.data import SinusoidConfig
from metacli.engine.types import Batch, DataContext, Task


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
