"""The run layer: everything between the CLI and the engine that touches a run directory.

Both protocols go through it: staging and naming the run directory (:mod:`metacli.runs`), the one
versioned checkpoint layout with every RNG state (:mod:`.checkpoint`), metrics.jsonl and TensorBoard,
signals and divergence (:mod:`.guard`), the summary and resume (:mod:`.core`), meta-testing a
checkpoint (:mod:`.evaluate`) and torchrun's process group (:mod:`.distributed`). The engine receives
plain arguments and callbacks from here (:mod:`.jobs`) and knows nothing of run directories.

The entry points are imported on first use, so that importing :mod:`.distributed` (which the CLI does
before it validates a spec) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metacli.runlayer.core import resume_run, train_run
    from metacli.runlayer.evaluate import evaluate_run

__all__ = ["evaluate_run", "resume_run", "train_run"]


def __getattr__(name: str) -> Any:
    if name in ("train_run", "resume_run"):
        from metacli.runlayer import core

        return getattr(core, name)
    if name == "evaluate_run":
        from metacli.runlayer.evaluate import evaluate_run

        return evaluate_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
