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
from metacli.engine.config.algorithms import AlgorithmConfig
from metacli.engine.types import AlgorithmFactory, EpisodicAlgorithmFactory, OnlineAlgorithmFactory

__all__ = ["ALGORITHMS", "EPISODIC_ALGORITHMS", "ONLINE_ALGORITHMS", "AlgorithmConfig"]

EPISODIC_ALGORITHMS: dict[str, EpisodicAlgorithmFactory] = {
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
}
"""The few-shot algorithms (episodic meta-training and meta-testing). Every MAML-family name runs the one
:class:`MAML` class; its config picks the inner rule."""
ONLINE_ALGORITHMS: dict[str, OnlineAlgorithmFactory] = {
    "moml": MOML,
    "bmoml": BMOML,
    "ftml": FTML,
    "mogd": MOGD,
    "toe": TOE,
    "fs": FS,
}
"""The online protocol's algorithms (the names of ``config.algorithms.ONLINE_ALGORITHM_NAMES``)."""
ALGORITHMS: dict[str, AlgorithmFactory] = {**EPISODIC_ALGORITHMS, **ONLINE_ALGORITHMS}
"""Every algorithm by name."""
