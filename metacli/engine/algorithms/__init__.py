"""Algorithm registry: ``ALGORITHMS`` (name -> class) beside the discriminated union ``AlgorithmConfig``.

A typo in ``algorithm.name`` is a pydantic error that lists the valid names. One test asserts that
the dict and the union name the same algorithms.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from metacli.engine.algorithms.implicit import BilevelHead, ITDBiOConfig, MemoryReducedConfig
from metacli.engine.algorithms.maml import (
    MAML,
    ANILConfig,
    BOILConfig,
    FOMAMLConfig,
    LSLRConfig,
    MAMLConfig,
    MAMLEnhancedConfig,
    MetaCurvatureConfig,
    SparseMAMLConfig,
    SparseReLUMAMLConfig,
)
from metacli.engine.algorithms.moml import BMOML, MOML, BMOMLConfig, MOMLConfig
from metacli.engine.algorithms.online_baselines import (
    FS,
    FTML,
    MOGD,
    TOE,
    FSConfig,
    FTMLConfig,
    MOGDConfig,
    TOEConfig,
)
from metacli.engine.algorithms.reptile import Reptile, ReptileConfig
from metacli.engine.types import AlgorithmFactory

AlgorithmConfig = Annotated[
    MAMLConfig
    | FOMAMLConfig
    | LSLRConfig
    | MetaCurvatureConfig
    | MAMLEnhancedConfig
    | ANILConfig
    | BOILConfig
    | SparseMAMLConfig
    | SparseReLUMAMLConfig
    | ReptileConfig
    | MemoryReducedConfig
    | ITDBiOConfig
    | MOMLConfig
    | BMOMLConfig
    | FTMLConfig
    | MOGDConfig
    | TOEConfig
    | FSConfig,
    Field(discriminator="name"),
]

EPISODIC_ALGORITHMS: dict[str, AlgorithmFactory] = {
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
"""Every MAML-family name runs the one :class:`MAML` class; its config picks the inner rule."""
ONLINE_ALGORITHMS: dict[str, AlgorithmFactory] = {
    "moml": MOML,
    "bmoml": BMOML,
    "ftml": FTML,
    "mogd": MOGD,
    "toe": TOE,
    "fs": FS,
}
ALGORITHMS: dict[str, AlgorithmFactory] = {**EPISODIC_ALGORITHMS, **ONLINE_ALGORITHMS}
