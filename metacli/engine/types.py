"""Plain data types shared by the engine: parameters, batches, tasks and step results.

Parameters are explicit ``dict[str, Tensor]`` used through :func:`torch.func.functional_call`;
no module is mutated by an algorithm.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from metacli.engine.functional import Learner
    from metacli.engine.parallel import DataParallel

Params = dict[str, Tensor]
Criterion = Literal["mse", "cross_entropy"]
Executor = Literal["loop", "vmap"]
"""How a meta-batch is processed: a per-task loop or ``torch.func.vmap`` over tasks."""

Progress = Callable[[int, dict[str, float]], None]
"""``progress(done, info)``: the engine's only way to report progress. ``done`` counts the units finished so
far (steps, rounds, tasks, bytes, images); ``info`` holds a few scalars worth showing (the latest loss).
The run layer supplies it (:mod:`metacli.progress` draws it); the engine imports no display."""


class OpenProgress(Protocol):
    """Opens one progress display for a phase of work (a download, a decode) and returns its callable."""

    def __call__(self, description: str, total: int | None, unit: str) -> Progress:
        """A :data:`Progress` for ``total`` units (None: unknown) of ``unit`` (``bytes`` or a noun)."""
        ...


class Batch(NamedTuple):
    """Inputs ``x`` and targets ``y`` of one set of examples (possibly with a leading task axis)."""

    x: Tensor
    y: Tensor


class Task(NamedTuple):
    """One few-shot task: a support set to adapt on and a query set to evaluate on."""

    support: Batch
    query: Batch


class StepResult(NamedTuple):
    """What one meta-step reports.

    Attributes:
        loss: mean query loss over the meta-batch, after adaptation (detached scalar).
        grads: the meta-gradient of every meta-parameter, keyed like the parameters.
        metrics: extra scalars to log (accuracy, pre-adaptation loss, ...).
    """

    loss: float
    grads: dict[str, Tensor]
    metrics: dict[str, float]


class OnlineStream(NamedTuple):
    """A stream of T same-shaped classification tasks for online meta-learning (e.g. S-MNIST).

    Attributes:
        train: ``x`` of shape (T, n_train, *in_shape), ``y`` of shape (T, n_train), int64.
        test: ``x`` of shape (T, n_test, *in_shape), ``y`` of shape (T, n_test), int64.
        n_classes: size of the (shared) label space.
    """

    train: Batch
    test: Batch
    n_classes: int


class DataContext(NamedTuple):
    """What every dataset builder receives besides its config section (one contract for both protocols).

    Attributes:
        root: the resolved data root (raw datasets, possibly read-only).
        cache: the cache folder for derived data (decoded images, built streams).
        device: where the dataset's tensors are held and tasks are drawn.
        dtype: floating dtype of the tasks handed to algorithms.
        download: whether missing raw files may be downloaded.
        progress: opens a progress display per phase (downloads, decoding); None: report nothing.
    """

    root: Path
    cache: Path
    device: torch.device
    dtype: torch.dtype
    download: bool
    progress: OpenProgress | None


@runtime_checkable
class EpisodicDataset(Protocol):
    """A source of stacked few-shot tasks (sinusoid, Omniglot, miniImageNet)."""

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch axis."""
        ...

    @property
    def out_features(self) -> int:
        """Outputs of the network (N ways, or 1 for regression)."""
        ...

    @property
    def criterion(self) -> Criterion:
        """The task loss."""
        ...

    def sample(
        self,
        split: str,
        n_tasks: int,
        generator: torch.Generator,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Task:
        """``n_tasks`` tasks of ``split`` ("train", "val", "test") stacked on a leading axis."""
        ...


@runtime_checkable
class TaskStream(Protocol):
    """A stream of T same-shaped classification tasks for the online protocol (see OnlineStream)."""

    @property
    def train(self) -> Batch: ...

    @property
    def test(self) -> Batch: ...

    @property
    def n_classes(self) -> int: ...


EpisodicDatasetBuilder = Callable[[Any, DataContext], EpisodicDataset]
"""``build(cfg, ctx)``: a few-shot dataset module's entry point in ``EPISODIC_DATASETS``. ``Any``: each
builder takes its own config class (a parameter type, so a union would not accept them); the registry's
name picks the config, validated by the spec's discriminated union."""
OnlineDatasetBuilder = Callable[[Any, DataContext], TaskStream]
"""``build(cfg, ctx)``: a task stream's entry point in ``ONLINE_DATASETS`` (``Any``: as above)."""
DatasetBuilder = EpisodicDatasetBuilder | OnlineDatasetBuilder
"""Either builder: the entries of ``DATASETS``."""


@runtime_checkable
class EpisodicConfig(Protocol):
    """What the run layer and the loop read from a few-shot algorithm's config."""

    @property
    def name(self) -> str:
        """The algorithm's name (its registry key)."""
        ...

    @property
    def eval_inner_steps(self) -> int:
        """The default number of adaptation steps at meta-test and validation."""
        ...


class EpisodicAlgorithm(Protocol):
    """What the episodic loop needs from MAML, FOMAML, Reptile and every few-shot variant."""

    @property
    def cfg(self) -> EpisodicConfig:
        """The algorithm's config (``cfg.eval_inner_steps``: adaptation steps at meta-test)."""
        ...

    def init_meta(self, params: Params) -> Params:
        """Meta-parameters to learn, from the network's initial parameters."""
        ...

    def adapt(
        self,
        meta: Params,
        support: Batch,
        steps: int | None = None,
        create_graph: bool = False,
        generator: torch.Generator | None = None,
    ) -> Params:
        """Fast weights for one unstacked task after ``steps`` adaptation steps (``generator``: any
        randomness of the adaptation itself, so that evaluation never draws from the run's generator)."""
        ...

    def meta_step(
        self, meta: Params, tasks: Task, executor: Executor = "loop", parallel: DataParallel | None = None
    ) -> StepResult:
        """Mean query loss over stacked ``tasks`` and its meta-gradient (with ``parallel``: this rank
        computes its share of the tasks and the mean over all ranks is returned on every rank)."""
        ...

    def extra_metrics(self, meta: Params) -> dict[str, float]:
        """Scalars describing meta-parameters beyond theta (learned rates, masks), for the logs."""
        ...

    def state_dict(self) -> dict[str, Tensor]:
        """State the algorithm carries across meta-steps besides the meta-parameters (warm starts)."""
        ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict` (from a checkpoint)."""
        ...

    def outer_optimizer(
        self, meta: Params, total_steps: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """The outer optimiser (and schedule) over ``meta``."""
        ...


S = TypeVar("S")


class OnlineAlgorithm(Protocol[S]):
    """What the online loop needs from MOML, B-MOML, FTML, MOGD, TOE and FS (state type ``S``)."""

    ctm_after_update: bool
    eval_variants: dict[str, tuple[float, int]]
    eval_clip_norm: float

    def init_state(self, theta0: Params) -> S: ...

    def round(self, state: S, t: int, stream: OnlineStream, generator: torch.Generator) -> S: ...

    def eval_model(self, state: S) -> Params: ...

    def held_bytes(self, state: S, t: int, stream: OnlineStream) -> tuple[int, int]: ...

    def state_dict(self, state: S) -> dict[str, object]:
        """``state`` as checkpoint data (tensors, numbers, lists of them); opaque to the loop."""
        ...

    def load_state(self, d: dict[str, object]) -> S:
        """The state of :meth:`state_dict` (from a checkpoint)."""
        ...


EpisodicAlgorithmFactory = Callable[[Any, "Learner", torch.Generator], EpisodicAlgorithm]
"""``cls(cfg, learner, generator)``: every few-shot algorithm class takes the same three arguments; the
generator is the run's (checkpointed) one, for algorithms that draw random numbers themselves. ``Any``:
each class takes its own config class (a parameter type, so the spec's union would not accept them)."""
OnlineAlgorithmFactory = Callable[[Any, "Learner", torch.Generator], "OnlineAlgorithm[Any]"]
"""The same for the online algorithms; ``OnlineAlgorithm[Any]``: each has its own state type ``S``."""
AlgorithmFactory = EpisodicAlgorithmFactory | OnlineAlgorithmFactory
"""Either factory: the entries of ``ALGORITHMS``."""
