"""What stops a training loop early: a non-finite value (:class:`Diverged`), a signal (:class:`Stopped`), or
a lost process of a data-parallel group (:class:`PeerLost`).

Both loops (episodic and online) raise the first two at a step or round boundary, before anything of the bad
step is checkpointed; :class:`PeerLost` comes out of a collective mid-step, which is also before the step's
checkpoint. The run layer turns each into the user's message and exit code.
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


class PeerLost(Exception):
    """A collective of a data-parallel group failed: another process died or did not answer in time.

    ``detail`` is the first line of torch's own error (gloo's or NCCL's), which names the peer's address
    or the timeout; the rest of that message is advice about torch's internals, not the user's run.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(f"another process of this torchrun launch died or stopped answering ({detail})")
        self.detail = detail


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every element of every tensor is finite (one host synchronisation)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True
