"""Algorithm registry: ``ALGORITHMS`` (name -> class) beside the discriminated union ``AlgorithmConfig``.

The configs, their union and the set of online algorithms are defined without torch in
:mod:`metacli.engine.config.algorithms` (so that a run spec validates without importing torch) and
re-exported here. A typo in ``algorithm.name`` is a pydantic error that lists the valid names. One test
asserts that the dict and the union name the same algorithms.
"""

from __future__ import annotations

from metacli.engine.algorithms.implicit import BilevelHead
from metacli.engine.algorithms.maml import MAML
from metacli.engine.algorithms.moml import BMOML, MOML
from metacli.engine.algorithms.online_baselines import FS, FTML, MOGD, TOE
from metacli.engine.algorithms.reptile import Reptile
from metacli.engine.config.algorithms import ONLINE_ALGORITHM_NAMES, AlgorithmConfig
from metacli.engine.types import AlgorithmFactory

__all__ = ["ALGORITHMS", "EPISODIC_ALGORITHMS", "ONLINE_ALGORITHMS", "AlgorithmConfig"]

ALGORITHMS: dict[str, AlgorithmFactory] = {
    "maml": MAML,
    "fomaml": MAML,
    "lslr": MAML,
    "metacurvature": MAML,
    "maml_enhanced": MAML,
    "anil": MAML,
    "boil": MAML,
    "sparse_maml": MAML,
    "sparse_relu_maml": MAML,
    "reptile": Reptile,
    "memory_reduced": BilevelHead,
    "itd_bio": BilevelHead,
    "moml": MOML,
    "bmoml": BMOML,
    "ftml": FTML,
    "mogd": MOGD,
    "toe": TOE,
    "fs": FS,
}
"""Every algorithm by name. Every MAML-family name runs the one :class:`MAML` class; its config picks the
inner rule."""
EPISODIC_ALGORITHMS: dict[str, AlgorithmFactory] = {
    name: factory for name, factory in ALGORITHMS.items() if name not in ONLINE_ALGORITHM_NAMES
}
"""The few-shot algorithms (episodic meta-training and meta-testing)."""
ONLINE_ALGORITHMS: dict[str, AlgorithmFactory] = {
    name: factory for name, factory in ALGORITHMS.items() if name in ONLINE_ALGORITHM_NAMES
}
"""The online protocol's algorithms: those of ``config.algorithms.ONLINE_ALGORITHM_NAMES``."""
