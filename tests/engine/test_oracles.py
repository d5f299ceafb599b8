"""Oracles for MAML, FOMAML and Reptile (float64): closed forms, finite differences, executor agreement.

Linear least squares has a constant Hessian ``H = (2/n) X^T X`` (on features ``[x, 1]``), so the
meta-gradients have closed forms computed here with ``torch.linalg``, independently of autograd:
MAML ``(I - alpha H_s)^K g_q(phi_K)``, FOMAML ``g_q(phi_K)``, Reptile ``theta - phi_K``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pytest
import torch
from torch import Tensor, nn

from metacli.engine.algorithms.maml import MAML, FOMAMLConfig, MAMLConfig
from metacli.engine.algorithms.reptile import Reptile, ReptileConfig, minibatch_schedule
from metacli.engine.data.sinusoid import SinusoidConfig
from metacli.engine.data.sinusoid import build as build_sinusoid
from metacli.engine.executors import task_at
from metacli.engine.functional import Learner
from metacli.engine.models.conv4 import Conv4Config
from metacli.engine.models.conv4 import build as build_conv4
from metacli.engine.models.mlp import MLPConfig
from metacli.engine.models.mlp import build as build_mlp
from metacli.engine.types import Batch, Params, Task

F64 = torch.float64
CPU = torch.device("cpu")
D, N_SUPPORT, N_QUERY, N_TASKS = 3, 5, 7, 2
EXECUTORS = ["loop", "vmap"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add contention (10x slower on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- linear least squares, by hand


def linear_problem(seed: int = 0) -> tuple[Learner, Task]:
    """A tiny ``nn.Linear(D, 1)`` and two stacked regression tasks with different targets."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    learner = Learner(nn.Linear(D, 1).to(F64), "mse")
    x = torch.randn(N_TASKS, N_SUPPORT + N_QUERY, D, generator=gen, dtype=F64)
    w_true = torch.randn(N_TASKS, D, 1, generator=gen, dtype=F64)
    y = x @ w_true + 0.1 * torch.randn(N_TASKS, N_SUPPORT + N_QUERY, 1, generator=gen, dtype=F64)
    k = N_SUPPORT
    return learner, Task(Batch(x[:, :k], y[:, :k]), Batch(x[:, k:], y[:, k:]))


def augment(x: Tensor) -> Tensor:
    """Features ``[x, 1]`` so that the bias is the last coordinate."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)


def flat(params: Params) -> Tensor:
    """``[weight, bias]`` of ``nn.Linear(D, 1)`` as one vector of D + 1."""
    return torch.cat([params["weight"].reshape(-1), params["bias"].reshape(-1)])


def mse_grad(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Gradient of ``mean((X w - y)^2)``: ``(2/n) X^T (X w - y)``."""
    xa = augment(x)
    return 2.0 / xa.shape[0] * xa.T @ (xa @ w - y.reshape(-1))


def hessian(x: Tensor) -> Tensor:
    """Constant Hessian ``(2/n) X^T X`` of the MSE."""
    xa = augment(x)
    return 2.0 / xa.shape[0] * xa.T @ xa


def sgd_phi(w: Tensor, x: Tensor, y: Tensor, lr: float, steps: int) -> Tensor:
    """phi_K of full-batch gradient descent."""
    for _ in range(steps):
        w = w - lr * mse_grad(w, x, y)
    return w


def maml_oracle(w: Tensor, tasks: Task, alpha: float, steps: int, first_order: bool) -> Tensor:
    """Mean over tasks of ``(I - alpha H_s)^K g_q(phi_K)``, or ``g_q(phi_K)`` at first order."""
    total = torch.zeros_like(w)
    for i in range(N_TASKS):
        task = task_at(tasks, i)
        phi = sgd_phi(w, task.support.x, task.support.y, alpha, steps)
        g_q = mse_grad(phi, task.query.x, task.query.y)
        jac = torch.linalg.matrix_power(torch.eye(D + 1, dtype=F64) - alpha * hessian(task.support.x), steps)
        total += g_q if first_order else jac @ g_q
    return total / N_TASKS


def close(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
def test_maml_linear_closed_form(first_order: bool, steps: int, executor: str) -> None:
    learner, tasks = linear_problem()
    cfg = (FOMAMLConfig if first_order else MAMLConfig)(alpha=0.3, inner_steps=steps)
    algo = MAML(cfg, learner)
    meta = algo.init_meta(learner.init_params())
    result = algo.meta_step(meta, tasks, executor)
    expected = maml_oracle(flat(meta).detach(), tasks, 0.3, steps, first_order)
    close(flat(result.grads), expected)


def test_maml_and_fomaml_oracles_differ() -> None:
    """Guards the two tests above against a problem where the Hessian term vanishes."""
    learner, tasks = linear_problem()
    w = flat(learner.init_params())
    second, first = (maml_oracle(w, tasks, 0.3, 2, fo) for fo in (False, True))
    assert (second - first).norm() > 1e-2 * first.norm()


@pytest.mark.parametrize("executor", EXECUTORS)
def test_maml_grad_clip_clamps_each_meta_gradient_element(executor: str) -> None:
    """Catches a ``grad_clip`` that is never applied: the meta-gradient is the closed form clamped
    elementwise to [-0.3, 0.3], which clips two of its four elements and leaves the other two alone."""
    learner, tasks = linear_problem()
    algo = MAML(MAMLConfig(alpha=0.3, inner_steps=2, grad_clip=0.3), learner)
    meta = algo.init_meta(learner.init_params())
    result = algo.meta_step(meta, tasks, executor)
    unclipped = maml_oracle(flat(meta).detach(), tasks, 0.3, 2, first_order=False)
    assert int((unclipped.abs() > 0.3).sum()) == 2 and float(unclipped.abs().max()) > 0.5
    close(flat(result.grads), unclipped.clamp(-0.3, 0.3))
    assert float(flat(result.grads).abs().max()) <= 0.3


def test_maml_adapt_linear_closed_form() -> None:
    learner, tasks = linear_problem()
    algo = MAML(MAMLConfig(alpha=0.3), learner)
    meta = algo.init_meta(learner.init_params())
    task = task_at(tasks, 0)
    fast = algo.adapt(meta, task.support, steps=4)
    close(flat(fast).detach(), sgd_phi(flat(meta).detach(), task.support.x, task.support.y, 0.3, 4))


def reptile_phi(w: Tensor, x: Tensor, y: Tensor, schedule: Tensor, lr: float, optimizer: str) -> Tensor:
    """phi_K by mini-batch SGD or Adam(beta1=0, beta2=0.999, eps=1e-8), unrolled by hand."""
    v = torch.zeros_like(w)
    for t, idx in enumerate(schedule, start=1):
        g = mse_grad(w, x[idx], y[idx])
        if optimizer == "sgd":
            w = w - lr * g
            continue
        v = 0.999 * v + 0.001 * g**2
        w = w - lr * g / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    return w


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_reptile_linear_direction(optimizer: Literal["adam", "sgd"], executor: str) -> None:
    learner, tasks = linear_problem()
    lr, steps, batch = (0.05 if optimizer == "sgd" else 0.02), 5, 4  # 5 x 4 > 12 examples: crosses epochs
    cfg = ReptileConfig(inner_optimizer=optimizer, inner_lr=lr, inner_steps=steps, inner_batch=batch)
    algo = Reptile(cfg, learner, generator=torch.Generator().manual_seed(7))
    meta = algo.init_meta(learner.init_params())
    result = algo.meta_step(meta, tasks, executor)

    schedule = minibatch_schedule(N_SUPPORT + N_QUERY, steps, batch, torch.Generator().manual_seed(7))
    w = flat(meta).detach()
    phis, query_losses = [], []
    for i in range(N_TASKS):
        task = task_at(tasks, i)
        x, y = torch.cat([task.support.x, task.query.x]), torch.cat([task.support.y, task.query.y])
        phis.append(reptile_phi(w, x, y, schedule, lr, optimizer))
        residual = augment(task.query.x) @ phis[-1] - task.query.y.reshape(-1)
        query_losses.append(float((residual**2).mean()))
    close(flat(result.grads), w - torch.stack(phis).mean(0))
    assert result.loss == pytest.approx(sum(query_losses) / N_TASKS, rel=1e-10)


def test_reptile_adapt_uses_support_only() -> None:
    learner, tasks = linear_problem()
    cfg = ReptileConfig(inner_optimizer="sgd", inner_lr=0.05, inner_batch=2)
    algo = Reptile(cfg, learner, generator=torch.Generator().manual_seed(3))
    meta = algo.init_meta(learner.init_params())
    task = task_at(tasks, 1)
    fast = algo.adapt(meta, task.support, steps=6)
    schedule = minibatch_schedule(N_SUPPORT, 6, 2, torch.Generator().manual_seed(3))
    w = flat(meta).detach()
    close(flat(fast), reptile_phi(w, task.support.x, task.support.y, schedule, 0.05, "sgd"))


def test_reptile_adapt_with_no_steps_is_the_initialisation_and_draws_nothing() -> None:
    """Catches an empty schedule that fails (evaluation at 0 steps) or that draws from the generator."""
    learner, tasks = linear_problem()
    generator = torch.Generator().manual_seed(3)
    algo = Reptile(ReptileConfig(inner_optimizer="adam", inner_batch=2), learner, generator=generator)
    meta = algo.init_meta(learner.init_params())
    before = generator.get_state()
    close(flat(algo.adapt(meta, task_at(tasks, 0).support, steps=0)), flat(meta).detach())
    assert torch.equal(generator.get_state(), before)


def test_minibatch_schedule_is_epoch_wise_without_replacement() -> None:
    schedule = minibatch_schedule(6, 5, 4, torch.Generator().manual_seed(0)).reshape(-1)
    assert schedule.shape == (20,)
    for epoch in range(3):  # three full epochs of 6, then 2 of the fourth
        assert sorted(schedule[6 * epoch : 6 * epoch + 6].tolist()) == list(range(6))


def test_reptile_epsilon_anneals_linearly() -> None:
    learner, _ = linear_problem()
    algo = Reptile(ReptileConfig(epsilon=1.0, epsilon_final=0.2), learner)
    optimizer, scheduler = algo.outer_optimizer(algo.init_meta(learner.init_params()), total_steps=4)
    assert scheduler is not None
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


# ---------------------------------------------------------------- conv net with primitive batch norm

WAYS, QUERIES_PER_CLASS = 3, 2


def conv_problem() -> tuple[Learner, Task]:
    """Conv4 (4 filters, max-pool, primitive-op batch norm) on 1x16x16, two 3-way 1-shot tasks."""
    torch.manual_seed(0)
    learner = Learner(
        build_conv4(Conv4Config(filters=4, pool="max"), (1, 16, 16), WAYS).to(F64), "cross_entropy"
    )
    gen = torch.Generator().manual_seed(1)
    n_q = WAYS * QUERIES_PER_CLASS
    support = Batch(
        torch.randn(N_TASKS, WAYS, 1, 16, 16, generator=gen, dtype=F64), torch.arange(WAYS).repeat(2, 1)
    )
    query = Batch(
        torch.randn(N_TASKS, n_q, 1, 16, 16, generator=gen, dtype=F64),
        torch.arange(WAYS).repeat_interleave(QUERIES_PER_CLASS).repeat(2, 1),
    )
    return learner, Task(support, query)


@pytest.mark.parametrize("steps", [1, 3])
def test_conv_maml_matches_finite_differences(steps: int) -> None:
    learner, tasks = conv_problem()
    algo = MAML(MAMLConfig(alpha=0.4, inner_steps=steps), learner)
    meta = algo.init_meta(learner.init_params())
    result = algo.meta_step(meta, tasks, "loop")
    gen = torch.Generator().manual_seed(2)
    direction = {k: torch.randn(v.shape, generator=gen, dtype=F64) for k, v in meta.items()}
    eps = 1e-6

    def loss_at(sign: float) -> float:
        shifted = {k: (v + sign * eps * direction[k]).detach() for k, v in meta.items()}
        return (
            sum(float(algo.task_loss(shifted, task_at(tasks, i))[0].detach()) for i in range(N_TASKS))
            / N_TASKS
        )

    finite_difference = (loss_at(1.0) - loss_at(-1.0)) / (2 * eps)
    analytic = float(sum((result.grads[k] * direction[k]).sum() for k in meta))
    assert analytic == pytest.approx(finite_difference, rel=1e-6)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
def test_conv_executors_agree(first_order: bool, steps: int) -> None:
    learner, tasks = conv_problem()
    cfg = (FOMAMLConfig if first_order else MAMLConfig)(alpha=0.4, inner_steps=steps)
    algo = MAML(cfg, learner)
    meta = algo.init_meta(learner.init_params())
    loop, vmap = algo.meta_step(meta, tasks, "loop"), algo.meta_step(meta, tasks, "vmap")
    assert loop.loss == pytest.approx(vmap.loss, rel=1e-12)
    assert loop.metrics == pytest.approx(vmap.metrics, rel=1e-12)
    assert set(loop.grads) == set(vmap.grads) == set(meta)
    for k in meta:
        torch.testing.assert_close(vmap.grads[k], loop.grads[k], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- sinusoid MLP


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile"])
def test_sinusoid_executors_agree(name: str) -> None:
    torch.manual_seed(0)
    learner = Learner(build_mlp(MLPConfig(), (1,), 1).to(F64), "mse")
    tasks = build_sinusoid(SinusoidConfig()).sample("train", 4, torch.Generator().manual_seed(0), CPU, F64)
    results = []
    for executor in EXECUTORS:
        algo: MAML | Reptile
        if name == "reptile":
            algo = Reptile(
                ReptileConfig(inner_steps=4, inner_lr=0.01), learner, torch.Generator().manual_seed(0)
            )
        else:
            algo = MAML((MAMLConfig if name == "maml" else FOMAMLConfig)(inner_steps=5), learner)
        results.append(algo.meta_step(algo.init_meta(learner.init_params()), tasks, executor))
    loop, vmap = results
    assert loop.loss == pytest.approx(vmap.loss, rel=1e-12)
    for k in loop.grads:
        torch.testing.assert_close(vmap.grads[k], loop.grads[k], rtol=1e-10, atol=1e-12)


def test_reptile_outer_rate_anneals_linearly_from_epsilon_to_epsilon_final() -> None:
    """supervised-reptile's schedule: lr_t = epsilon (1 - t/T) + epsilon_final t/T, then constant."""
    learner = Learner(build_mlp(MLPConfig(hidden=[4]), (1,), 1), "mse")
    algo = Reptile(ReptileConfig(epsilon=0.8, epsilon_final=0.2), learner, torch.Generator().manual_seed(0))
    meta = {
        k: v.detach().clone().requires_grad_(True) for k, v in algo.init_meta(learner.init_params()).items()
    }
    optimizer, scheduler = algo.outer_optimizer(meta, total_steps=4)
    assert scheduler is not None
    rates = []
    for _ in range(6):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.8, 0.65, 0.5, 0.35, 0.2, 0.2])
