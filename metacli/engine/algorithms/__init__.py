"""Algorithm registry: ``ALGORITHMS`` (name -> class) beside the discriminated union ``AlgorithmConfig``.

The configs, their union and the set of online algorithms are defined without torch in
:mod:`metacli.engine.config.algorithms` (so that a run spec validates without importing torch) and
re-exported here. Each config names its class (``factory``), so the registries below are derived from the
union (:func:`~metacli.engine.config.registry.factories`): a config in the union is registered. A typo in
``algorithm.name`` is a pydantic error that lists the valid names.
"""

from __future__ import annotations

from metacli.engine.config.algorithms import AlgorithmConfig
from metacli.engine.config.registry import factories
from metacli.engine.types import AlgorithmFactory, EpisodicAlgorithmFactory, OnlineAlgorithmFactory

__all__ = ["ALGORITHMS", "EPISODIC_ALGORITHMS", "ONLINE_ALGORITHMS", "AlgorithmConfig"]

EPISODIC_ALGORITHMS: dict[str, EpisodicAlgorithmFactory] = factories(AlgorithmConfig, online=False)
"""The few-shot algorithms (episodic meta-training and meta-testing). Every MAML-family name runs the one
:class:`~metacli.engine.algorithms.maml.MAML` class; its config picks the inner rule."""
ONLINE_ALGORITHMS: dict[str, OnlineAlgorithmFactory] = factories(AlgorithmConfig, online=True)
"""The online protocol's algorithms (the names of ``config.algorithms.ONLINE_ALGORITHM_NAMES``)."""
ALGORITHMS: dict[str, AlgorithmFactory] = {**EPISODIC_ALGORITHMS, **ONLINE_ALGORITHMS}
"""Every algorithm by name."""
