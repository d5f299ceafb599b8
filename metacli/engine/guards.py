"""What stops a training loop early: a non-finite value (:class:`Diverged`) or a signal (:class:`Stopped`).

Both loops (episodic and online) raise these at a step or round boundary, before anything of the bad step
is checkpointed; the run layer turns them into the user's message and exit code.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class Diverged(Exception):
    """Step (or online round) ``step`` produced a non-finite ``what``: loss, meta-gradient, parameter or
    outer optimiser state.

    Raised before anything of that step is checkpointed; the run layer names the last good checkpoint.
    """

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"non-finite {what} at step {step}")
        self.step, self.what = step, what


class Stopped(Exception):
    """Training stopped on request (SIGINT, SIGTERM) after checkpointing step (or round) ``step``."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped after step {step}")
        self.step = step


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every element of every tensor is finite (one host synchronisation)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True
