"""The run layer: everything between the CLI and the engine that touches a run directory.

Both protocols go through it: staging and naming the run directory (:mod:`metacli.runs`), the one
versioned checkpoint layout with every RNG state (:mod:`.checkpoint`), metrics.jsonl and TensorBoard,
signals and divergence (:mod:`.guard`), the summary and resume (:mod:`.core`), and meta-testing a
checkpoint (:mod:`.evaluate`). The engine receives plain arguments and callbacks from here
(:mod:`.jobs`) and knows nothing of run directories.
"""

from metacli.runlayer.core import resume_run, train_run
from metacli.runlayer.evaluate import evaluate_run

__all__ = ["evaluate_run", "resume_run", "train_run"]
