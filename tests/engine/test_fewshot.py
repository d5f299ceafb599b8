"""Contracts of the episodic algorithms on sinusoid regression (CPU, float32).

Parametrised over a local dict for now; to become the ``ALGORITHMS`` registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from metacli.engine.algorithms.maml import MAML, FOMAMLConfig, MAMLConfig
from metacli.engine.algorithms.reptile import Reptile, ReptileConfig
from metacli.engine.data.sinusoid import Sinusoid, SinusoidConfig
from metacli.engine.data.sinusoid import build as build_sinusoid
from metacli.engine.executors import meta_gradient, task_at
from metacli.engine.functional import Learner
from metacli.engine.models.mlp import MLPConfig
from metacli.engine.models.mlp import build as build_mlp
from metacli.engine.types import Batch, Params, Task
from metacli.errors import SpecError

CPU = torch.device("cpu")
Algorithm = MAML | Reptile

# outer_lr 1e-2 and 5 Reptile inner steps: settings that learn within a few seconds, not the presets
ALGORITHMS: dict[str, tuple[Callable[[Learner], Algorithm], str]] = {
    "maml": (lambda learner: MAML(MAMLConfig(outer_lr=1e-2), learner), "loop"),
    "fomaml": (lambda learner: MAML(FOMAMLConfig(outer_lr=1e-2), learner), "loop"),
    "reptile": (
        lambda learner: Reptile(
            ReptileConfig(inner_lr=1e-2, inner_steps=5, eval_inner_steps=10),
            learner,
            torch.Generator().manual_seed(0),
        ),
        "vmap",  # 5 inner steps x 10 tasks: batched is faster here even on the CPU
    ),
}
NAMES = list(ALGORITHMS)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add contention (10x slower on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def setup(name: str, seed: int) -> tuple[Algorithm, Params, Sinusoid, torch.Generator, str]:
    torch.manual_seed(seed)
    learner = Learner(build_mlp(MLPConfig(), (1,), 1), "mse")
    make, executor = ALGORITHMS[name]
    algo = make(learner)
    if isinstance(algo, Reptile):
        algo.generator.manual_seed(seed)
    return (
        algo,
        algo.init_meta(learner.init_params()),
        build_sinusoid(SinusoidConfig()),
        torch.Generator().manual_seed(seed),
        executor,
    )


def train(
    name: str, seed: int, steps: int, meta_batch: int
) -> tuple[Algorithm, Params, list[dict[str, float]]]:
    """A minimal episodic loop: sample, meta-step, outer optimiser step."""
    algo, meta, data, gen, executor = setup(name, seed)
    optimizer, scheduler = algo.outer_optimizer(meta, steps)
    history = []
    for _ in range(steps):
        result = algo.meta_step(meta, data.sample("train", meta_batch, gen, CPU), executor)
        for k, p in meta.items():
            p.grad = result.grads[k]
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        history.append({"loss": result.loss, **result.metrics})
    return algo, meta, history


def post_adaptation_mse(algo: Algorithm, meta: Params, tasks: Task) -> float:
    losses = []
    for i in range(tasks.query.x.shape[0]):
        task = task_at(tasks, i)
        fast = algo.adapt(meta, task.support, steps=algo.cfg.eval_inner_steps)
        losses.append(float(algo.learner.loss(fast, task.query).detach()))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("name", NAMES)
def test_finite_loss_and_gradient_for_every_meta_parameter(name: str) -> None:
    algo, meta, data, gen, executor = setup(name, 0)
    result = algo.meta_step(meta, data.sample("train", 4, gen, CPU), executor)
    assert torch.isfinite(torch.tensor(result.loss))
    assert set(result.grads) == set(meta)
    for k, g in result.grads.items():
        assert g.shape == meta[k].shape
        assert torch.isfinite(g).all(), k
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
    algo, meta, _ = train(name, 0, steps=0, meta_batch=10)
    before = post_adaptation_mse(algo, meta, eval_tasks)
    algo, meta, _ = train(name, 0, steps=300, meta_batch=10)
    after = post_adaptation_mse(algo, meta, eval_tasks)
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


def test_accuracy_only_for_classification() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(2, 6, 4), torch.arange(3).repeat(2, 2)
    tasks = Task(Batch(x, y), Batch(x, y))
    for criterion, name in (("cross_entropy", "maml"), ("mse", "reptile")):
        out = 3 if criterion == "cross_entropy" else 1
        learner = Learner(build_mlp(MLPConfig(hidden=(8,)), (4,), out), criterion)  # type: ignore[arg-type]
        algo = ALGORITHMS[name][0](learner)
        batch = tasks if criterion == "cross_entropy" else Task(Batch(x, x[..., :1]), Batch(x, x[..., :1]))
        metrics = algo.meta_step(algo.init_meta(learner.init_params()), batch).metrics
        assert ("accuracy" in metrics) == (criterion == "cross_entropy")
        if "accuracy" in metrics:
            assert 0.0 <= metrics["accuracy"] <= 1.0


def test_unknown_executor_names_the_choices() -> None:
    algo, meta, data, gen, _ = setup("maml", 0)
    with pytest.raises(SpecError, match="loop, vmap"):
        meta_gradient(algo.task_loss, meta, data.sample("train", 2, gen, CPU), "threads")  # type: ignore[arg-type]
