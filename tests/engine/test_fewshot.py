"""Contracts of every episodic algorithm of the registry, on sinusoid regression (CPU, float32).

Runs go through the real parts: presets from ``metacli.spec``, ``build_episodic`` and the episodic loop's
``TrainState`` / ``outer_update``.
"""

from __future__ import annotations

import pytest
import torch

from metacli.engine.algorithms import EPISODIC_ALGORITHMS
from metacli.engine.algorithms.maml import MAML_VARIANTS
from metacli.engine.build import EpisodicParts
from metacli.engine.data.sinusoid import SinusoidConfig
from metacli.engine.data.sinusoid import build as build_sinusoid
from metacli.engine.episodic import TrainState, outer_update
from metacli.engine.executors import meta_gradient, task_at
from metacli.engine.functional import Learner
from metacli.engine.models.mlp import MLPConfig
from metacli.engine.models.mlp import build as build_mlp
from metacli.engine.types import Batch, Params, Task
from metacli.errors import SpecError
from metacli.runlayer.parts import build_episodic_run
from metacli.spec import load_spec

CPU = torch.device("cpu")
NAMES = sorted(EPISODIC_ALGORITHMS)
MAML_FAMILY = {c.model_fields["name"].default for c in MAML_VARIANTS}
BILEVEL = ("memory_reduced", "itd_bio")
# Settings that learn within seconds (not the presets): outer lr 1e-2 for theta and extras (LSLR's
# rates at 1e-3: at 1e-2 they grow past stability for 10 evaluation steps); Reptile 5 inner steps at 1e-2.
FAST = {
    **{n: ["algorithm.outer_lr=0.01", "algorithm.extras_lr=0.01"] for n in NAMES if n in MAML_FAMILY},
    "lslr": ["algorithm.outer_lr=0.01", "algorithm.extras_lr=0.001"],
    "maml_enhanced": ["algorithm.outer_lr=0.01", "algorithm.extras_lr=0.001"],
    "metacurvature": ["algorithm.outer_lr=0.01", "algorithm.extras_lr=0.001", "algorithm.alpha=0.01"],
    # the backbone / head methods: Adam at 3e-3 with clipping on the backbone, head steps at 0.02
    # and rho 0.1 (at the presets' 0.1 the head's gradient descent diverges on the MLP's features;
    # the implicit method cannot see that, as it never differentiates the head's steps)
    **{
        n: [
            "algorithm.outer_optimizer=adam",
            "algorithm.outer_lr=0.003",
            "algorithm.grad_clip=1.0",
            "algorithm.inner_lr=0.02",
            "algorithm.reg=0.1",
        ]
        for n in BILEVEL
    },
    "reptile": [
        "algorithm.inner_lr=0.01",
        "algorithm.inner_steps=5",
        "algorithm.eval_inner_steps=10",
        "model.hidden=[40, 40]",
    ],
}


def test_every_episodic_algorithm_has_fast_test_settings() -> None:
    assert set(FAST) == set(EPISODIC_ALGORITHMS)


def setup(name: str, seed: int, steps: int = 1) -> tuple[EpisodicParts, TrainState]:
    # PyTorch's init, not the presets' MAML-code init: from weights of std 0.01 the features start near zero
    # and 300 steps are too few to halve the MSE (the presets train 70,000)
    overrides = [*FAST[name], f"seed={seed}", "data.shots=5", "model.init=torch"]
    spec, _ = load_spec(algo=name, dataset="sinusoid", overrides=overrides)
    parts = build_episodic_run(spec, device="cpu")
    return parts, TrainState(parts, steps)


def train(
    name: str, seed: int, steps: int, meta_batch: int
) -> tuple[EpisodicParts, Params, list[dict[str, float]]]:
    """Meta-train with the engine's own state and outer update."""
    parts, state = setup(name, seed, steps)
    history = []
    for _ in range(steps):
        tasks = parts.dataset.sample("train", meta_batch, parts.generator, CPU)
        result = parts.algorithm.meta_step(state.meta, tasks, "vmap")
        outer_update(state, result.grads)
        history.append({"loss": result.loss, **result.metrics})
    return parts, state.meta, history


def post_adaptation_mse(parts: EpisodicParts, meta: Params, tasks: Task) -> float:
    """Mean query MSE after the algorithm's evaluation adaptation, over stacked ``tasks``."""
    losses = []
    for i in range(tasks.query.x.shape[0]):
        task = task_at(tasks, i)
        fast = parts.algorithm.adapt(meta, task.support, steps=parts.algorithm.cfg.eval_inner_steps)
        losses.append(float(parts.learner.loss(fast, task.query).detach()))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("name", NAMES)
def test_finite_loss_and_gradient_for_every_meta_parameter(name: str) -> None:
    parts, state = setup(name, 0)
    tasks = parts.dataset.sample("train", 4, parts.generator, CPU)
    result = parts.algorithm.meta_step(state.meta, tasks, "loop")
    assert torch.isfinite(torch.tensor(result.loss))
    assert set(result.grads) == set(state.meta)
    for k, g in result.grads.items():
        assert g.shape == state.meta[k].shape
        assert torch.isfinite(g).all(), k
        if name in BILEVEL and k.startswith("head."):
            assert torch.all(g == 0), k  # the head initialisation is fixed, not meta-learned (the code)
        else:
            assert g.abs().sum() > 0, k


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_metrics(name: str) -> None:
    first, second, other = (train(name, seed, steps=3, meta_batch=4)[2] for seed in (0, 0, 1))
    assert first[0].keys() >= {"loss"} and len(first[0]) > 1
    assert first == second
    assert first != other


@pytest.mark.parametrize("name", NAMES)
def test_short_training_lowers_query_mse(name: str) -> None:
    eval_tasks = build_sinusoid(SinusoidConfig()).sample("test", 50, torch.Generator().manual_seed(123), CPU)
    parts, meta, _ = train(name, 0, steps=0, meta_batch=10)
    before = post_adaptation_mse(parts, meta, eval_tasks)
    parts, meta, _ = train(name, 0, steps=300, meta_batch=10)
    after = post_adaptation_mse(parts, meta, eval_tasks)
    assert after < 0.5 * before, (before, after)


def test_sinusoid_shapes_and_ranges() -> None:
    cfg = SinusoidConfig(shots=3, queries=4)
    tasks = build_sinusoid(cfg).sample("val", 6, torch.Generator().manual_seed(0), CPU, torch.float64)
    assert tasks.support.x.shape == tasks.support.y.shape == (6, 3, 1)
    assert tasks.query.x.shape == tasks.query.y.shape == (6, 4, 1)
    assert tasks.support.x.dtype == torch.float64
    assert tasks.support.x.abs().max() <= 5.0 and tasks.query.y.abs().max() <= 5.0
    again = build_sinusoid(cfg).sample("val", 6, torch.Generator().manual_seed(0), CPU, torch.float64)
    assert torch.equal(tasks.query.y, again.query.y)


@pytest.mark.parametrize("name", NAMES)
def test_accuracy_only_for_classification(name: str) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(2, 6, 4), torch.arange(3).repeat(2, 2)
    for criterion, out, target in (("cross_entropy", 3, y), ("mse", 1, x[..., :1])):
        learner = Learner(build_mlp(MLPConfig(hidden=(8,)), (4,), out), criterion)  # type: ignore[arg-type]
        algo = EPISODIC_ALGORITHMS[name](setup(name, 0)[0].algorithm.cfg, learner)
        tasks = Task(Batch(x, target), Batch(x, target))
        metrics = algo.meta_step(algo.init_meta(learner.init_params()), tasks, "loop").metrics
        assert ("accuracy" in metrics) == (criterion == "cross_entropy")
        if "accuracy" in metrics:
            assert 0.0 <= metrics["accuracy"] <= 1.0


def test_unknown_executor_names_the_choices() -> None:
    parts, state = setup("maml", 0)
    tasks = parts.dataset.sample("train", 2, parts.generator, CPU)
    with pytest.raises(SpecError, match="loop, vmap"):
        meta_gradient(parts.algorithm.task_loss, state.meta, tasks, "threads")  # type: ignore[arg-type]
