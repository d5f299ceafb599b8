"""Fused batch norm where it is exact, primitive ops under ``vmap`` (issue 8), in float64.

:class:`~metacli.engine.models.layers.BatchNorm` asks torch which transforms are active: the loop executor
(no ``vmap``, the inner loop under ``torch.func.grad``) must run ``F.batch_norm`` and give the meta-gradient
of the primitive-op form; the ``vmap`` executor and the batched evaluation must never run it, because there
its second-order derivatives are wrong (shown below by forcing it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from metacli.engine.algorithms.maml import MAML, MAMLConfig
from metacli.engine.build import EpisodicParts
from metacli.engine.episodic import batch_metrics
from metacli.engine.models import layers
from metacli.engine.models.conv4 import Conv4Config
from metacli.engine.models.resnet12 import ResNet12Config
from metacli.engine.types import StepResult
from tests.engine.test_models import fewshot_problem

F64 = torch.float64
MAML_CFG = MAMLConfig(alpha=0.1, inner_steps=2)
ModelConfig = Conv4Config | ResNet12Config
CASES: list[tuple[str, ModelConfig, tuple[int, int, int]]] = [
    ("conv4_max", Conv4Config(filters=4, pool="max"), (3, 16, 16)),
    ("conv4_stride", Conv4Config(filters=4, pool="stride"), (3, 16, 16)),
    ("resnet12", ResNet12Config(widths=(4, 6, 8, 10)), (3, 16, 16)),
]
IDS = [c[0] for c in CASES]
PARAMS = [c[1:] for c in CASES]
JIT_DEPRECATION = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


@pytest.fixture
def fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of ``torch.nn.functional.batch_norm`` (one entry per call) while the test runs."""
    calls: list[int] = []
    original = F.batch_norm

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(F, "batch_norm", spy)
    return calls


def maml_step(cfg: ModelConfig, in_shape: tuple[int, int, int], executor: str) -> StepResult:
    """One second-order MAML meta-step (2 inner steps) on two 2-way 1-shot float64 tasks."""
    learner, tasks = fewshot_problem(cfg, in_shape)
    algo = MAML(MAML_CFG, learner)
    return algo.meta_step(algo.init_meta(learner.init_params()), tasks, executor)


def assert_grads_close(actual: StepResult, expected: StepResult, rtol: float = 1e-9) -> None:
    assert set(actual.grads) == set(expected.grads)
    for k in expected.grads:
        torch.testing.assert_close(actual.grads[k], expected.grads[k], rtol=rtol, atol=1e-12)


def relative_error(actual: StepResult, expected: StepResult) -> float:
    diff = sum(float((actual.grads[k] - g).square().sum()) for k, g in expected.grads.items())
    norm = sum(float(g.square().sum()) for g in expected.grads.values())
    return math.sqrt(diff / norm)


def force_kernel(monkeypatch: pytest.MonkeyPatch, fused: bool) -> None:
    """Make every BatchNorm take one kernel whatever the transforms (to compare the two)."""
    monkeypatch.setattr(layers, "fused_is_exact", lambda: fused)


# ---------------------------------------------------------------- which transforms allow the fused kernel


def under(transform: Callable[..., Callable[..., torch.Tensor]]) -> bool:
    """What :func:`fused_is_exact` says inside ``transform(f)``, applied to a 2x2 tensor."""
    seen: list[bool] = []

    def f(x: torch.Tensor) -> torch.Tensor:
        seen.append(layers.fused_is_exact())
        return x.sum()

    transform(f)(torch.ones(2, 2))
    return seen[0]


def test_the_private_functorch_api_is_there() -> None:
    """Without it every call would silently fall back to the (exact but slower) primitive kernel."""
    assert layers.HAS_INTERPRETER_STACK
    assert layers.batch_norm_kernel() is layers.batch_norm_fused


@pytest.mark.parametrize(
    ("name", "transform", "fused"),
    [
        ("none", lambda f: f, True),
        ("grad", torch.func.grad, True),
        ("grad_grad", lambda f: torch.func.grad(lambda x: torch.func.grad(f)(x).sum()), True),
        ("vmap", torch.func.vmap, False),
        ("vmap_grad", lambda f: torch.func.vmap(torch.func.grad(f)), False),
        ("grad_vmap", lambda f: torch.func.grad(lambda x: torch.func.vmap(f)(x).sum()), False),
        pytest.param(
            "jvp",
            lambda f: lambda x: torch.func.jvp(f, (x,), (x,))[1],
            False,
            marks=pytest.mark.filterwarnings(JIT_DEPRECATION),  # torch loads its jvp decompositions
        ),
    ],
)
def test_fused_is_exact_only_outside_vmap_and_forward_mode(
    name: str, transform: Callable[..., Callable[..., torch.Tensor]], fused: bool
) -> None:
    del name
    assert under(transform) is fused


def test_no_grad_keeps_the_fused_kernel() -> None:
    with torch.no_grad():
        assert layers.fused_is_exact()


# ---------------------------------------------------------------- which kernel each executor runs


@pytest.mark.parametrize(("cfg", "in_shape"), PARAMS, ids=IDS)
def test_loop_runs_the_fused_kernel_and_vmap_never(
    cfg: ModelConfig, in_shape: tuple[int, int, int], fused_calls: list[int]
) -> None:
    maml_step(cfg, in_shape, "loop")
    assert fused_calls, "the loop executor should run F.batch_norm"
    fused_calls.clear()
    maml_step(cfg, in_shape, "vmap")
    assert not fused_calls, "F.batch_norm ran under vmap: its second-order meta-gradient is wrong there"


def test_batched_evaluation_never_runs_the_fused_kernel(fused_calls: list[int]) -> None:
    learner, tasks = fewshot_problem(CASES[0][1], CASES[0][2])
    algo = MAML(MAML_CFG, learner)
    parts = EpisodicParts(torch.device("cpu"), F64, torch.Generator(), learner, algo, None)
    metrics = batch_metrics(parts, algo.init_meta(learner.init_params()), tasks, [0, 2], torch.Generator())
    assert set(metrics) == {"query_loss@0", "query_acc@0", "query_loss@2", "query_acc@2"}
    assert not fused_calls


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize(("cfg", "in_shape"), PARAMS, ids=IDS)
def test_loop_fused_equals_loop_primitive_and_vmap(
    cfg: ModelConfig, in_shape: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    fused, vmap = maml_step(cfg, in_shape, "loop"), maml_step(cfg, in_shape, "vmap")
    force_kernel(monkeypatch, fused=False)
    primitive = maml_step(cfg, in_shape, "loop")
    assert all(float(g.abs().max()) > 0 for g in fused.grads.values())  # every tensor reaches the loss
    assert fused.loss == pytest.approx(primitive.loss, rel=1e-12)
    assert fused.loss == pytest.approx(vmap.loss, rel=1e-12)
    assert_grads_close(fused, primitive)
    assert_grads_close(fused, vmap)


@pytest.mark.parametrize(("cfg", "in_shape"), PARAMS, ids=IDS)
def test_the_fused_kernel_under_vmap_would_be_wrong(
    cfg: ModelConfig, in_shape: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the vmap executor needs the primitive form: forced, the fused kernel is off by > 1e-4."""
    loop = maml_step(cfg, in_shape, "loop")
    force_kernel(monkeypatch, fused=True)
    wrong = maml_step(cfg, in_shape, "vmap")
    assert wrong.loss == pytest.approx(loop.loss, rel=1e-12)  # the forward pass is right
    assert relative_error(wrong, loop) > 1e-4
