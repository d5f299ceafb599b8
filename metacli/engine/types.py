"""Plain data types shared by the engine: parameters, batches, tasks and step results.

Parameters are explicit ``dict[str, Tensor]`` used through :func:`torch.func.functional_call`;
no module is mutated by an algorithm.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

Params = dict[str, Tensor]


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
