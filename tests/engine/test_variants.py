"""Oracles for the MAML-family variants (float64): closed forms, hand-unrolled references, executor agreement.

- LSLR, Meta-Curvature and Meta-SGD: closed-form meta-gradients on linear least squares, where the support
  gradient is affine in the parameters (constant Hessian), computed here with matrix algebra only;
- ANIL and BOIL: a two-layer ReLU net unrolled by hand (explicit formulas, plain ``autograd.grad``);
- Sparse-MAML and sparse-ReLU-MAML: the straight-through gradients of the mask and the rates by hand;
- every variant: loop == vmap on a Conv4 with batch norm, and a resumed run equal to a straight one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacli.engine.algorithms import EPISODIC_ALGORITHMS
from metacli.engine.algorithms.maml import (
    MAML,
    MAML_VARIANTS,
    ANILConfig,
    BOILConfig,
    LSLRConfig,
    MAMLConfig,
    MetaCurvatureConfig,
    SparseMAMLConfig,
    SparseReLUMAMLConfig,
)
from metacli.engine.config.algorithms import MetaSGDConfig
from metacli.engine.executors import task_at
from metacli.engine.functional import Learner
from metacli.engine.inner import curvature, extra_metrics, split_meta, ste_relu, ste_sign_mask
from metacli.engine.models.conv4 import Conv4Config
from metacli.engine.models.conv4 import build as build_conv4
from metacli.engine.models.mlp import MLPConfig
from metacli.engine.models.mlp import build as build_mlp
from metacli.engine.types import Batch, Params, Task
from tests.resume import straight_and_resumed

F64 = torch.float64
N_TASKS, N_S, N_Q, D_IN, D_OUT = 2, 6, 5, 3, 2
FAMILY = [cfg.model_fields["name"].default for cfg in MAML_VARIANTS]


def test_every_family_name_runs_the_maml_class() -> None:
    assert set(FAMILY) <= set(EPISODIC_ALGORITHMS)
    assert all(EPISODIC_ALGORITHMS[name] is MAML for name in FAMILY)


# ---------------------------------------------------------------- linear least squares


def regression_tasks(d_out: int, seed: int = 0) -> Task:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N_TASKS, N_S + N_Q, D_IN, generator=gen, dtype=F64)
    w = torch.randn(N_TASKS, D_IN, d_out, generator=gen, dtype=F64)
    y = x @ w + 0.3 * torch.randn(N_TASKS, N_S + N_Q, d_out, generator=gen, dtype=F64)
    return Task(Batch(x[:, :N_S], y[:, :N_S]), Batch(x[:, N_S:], y[:, N_S:]))


def linear_learner(d_out: int) -> Learner:
    torch.manual_seed(0)
    return Learner(nn.Linear(D_IN, d_out).to(F64), "mse")


def lsq_grads(w: Tensor, b: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """Gradients of mean((X W^T + b - Y)^2) over all n * o entries: c E^T X and c E^T 1, c = 2 / (n o)."""
    e = batch.x @ w.T + b - batch.y
    c = 2.0 / e.numel()
    return c * e.T @ batch.x, c * e.sum(0)


def lsq_hessian_times(vw: Tensor, vb: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """The support loss's (constant) Hessian applied to (vw, vb): the Jacobian of :func:`lsq_grads`,
    ``c (V_W X^T X + v_b 1^T X)`` and ``c (V_W X^T 1 + n v_b)``, c = 2 / (n o)."""
    x = batch.x
    c = 2.0 / (x.shape[0] * batch.y.shape[1])
    return c * (vw @ x.T @ x + vb[:, None] * x.sum(0)[None, :]), c * (vw @ x.sum(0) + x.shape[0] * vb)


def with_extras(meta: Params, values: dict[str, Tensor]) -> Params:
    """``meta`` with some extras replaced (fresh leaves), to test away from the initialisation."""
    out = {k: v.detach().clone() for k, v in meta.items()}
    for k, v in values.items():
        assert k in out and out[k].shape == v.shape, k
        out[k] = v.clone()
    return {k: v.requires_grad_(True) for k, v in out.items()}


def on_linear_tasks(cfg: MAMLConfig) -> tuple[MAML, Params, Task]:
    """A variant on the float64 linear model, its meta-parameters at their initialisation, the tasks."""
    learner = linear_learner(D_OUT)
    algo = MAML(cfg, learner)
    return algo, algo.init_meta(learner.init_params()), regression_tasks(D_OUT)


def assert_meta_step_is(expected: Params, algo: MAML, meta: Params, tasks: Task, executor: str) -> None:
    """The engine's meta-gradient of every meta-parameter is the oracle's, to float64 rounding."""
    result = algo.meta_step(meta, tasks, executor)
    assert set(result.grads) == set(expected)
    for k in expected:
        torch.testing.assert_close(result.grads[k], expected[k], rtol=1e-10, atol=1e-13)


def lslr_oracle(meta: Params, tasks: Task) -> dict[str, Tensor]:
    """Mean over tasks of the LSLR meta-gradient, by the backward recursion of the linear inner map.

    phi^{k+1} = phi^k - a_k g(phi^k) per tensor; dL/da_{p,k} = -<dL/dphi^{k+1}_p, g^k_p>;
    dL/dphi^k = dL/dphi^{k+1} - (a_k-weighted support Hessian) dL/dphi^{k+1}.
    """
    w0, b0 = meta["weight"].detach(), meta["bias"].detach()
    rw, rb = meta["lslr:weight"].detach(), meta["lslr:bias"].detach()
    steps = rw.shape[0]
    total: dict[str, Tensor] = {k: torch.zeros_like(v) for k, v in meta.items()}
    for i in range(N_TASKS):
        task = task_at(tasks, i)
        s, q = task.support, task.query
        ws, bs, gs = [w0], [b0], []
        for k in range(steps):
            gw, gb = lsq_grads(ws[-1], bs[-1], s)
            gs.append((gw, gb))
            ws.append(ws[-1] - rw[k] * gw)
            bs.append(bs[-1] - rb[k] * gb)
        dw, db = lsq_grads(ws[-1], bs[-1], q)  # dL/dphi^K
        for k in reversed(range(steps)):
            total["lslr:weight"][k] -= (dw * gs[k][0]).sum() / N_TASKS
            total["lslr:bias"][k] -= (db * gs[k][1]).sum() / N_TASKS
            hw, hb = lsq_hessian_times(rw[k] * dw, rb[k] * db, s)
            dw, db = dw - hw, db - hb
        total["weight"] += dw / N_TASKS
        total["bias"] += db / N_TASKS
    return total


@pytest.mark.parametrize("executor", ["loop", "vmap"])
def test_lslr_meta_gradient_closed_form(executor: str) -> None:
    algo, meta, tasks = on_linear_tasks(LSLRConfig(alpha=0.1, inner_steps=3))
    # distinct rates per tensor and step, so a mixed-up index cannot pass
    rates = {
        "lslr:weight": torch.tensor([0.05, 0.2, 0.11], dtype=F64),
        "lslr:bias": torch.tensor([0.3, 0.02, 0.17], dtype=F64),
    }
    meta = with_extras(meta, rates)
    assert_meta_step_is(lslr_oracle(meta, tasks), algo, meta, tasks, executor)


def test_lslr_starts_as_maml_and_reuses_its_last_rate() -> None:
    learner, tasks = linear_learner(D_OUT), regression_tasks(D_OUT)
    lslr = MAML(LSLRConfig(alpha=0.1, inner_steps=2), learner)
    maml = MAML(MAMLConfig(alpha=0.1, inner_steps=2), learner)
    meta = lslr.init_meta(learner.init_params())
    theta, extras = split_meta(meta)
    assert set(extras) == {"lslr:weight", "lslr:bias"} and all(torch.all(v == 0.1) for v in extras.values())
    task = task_at(tasks, 0)
    for got, want in zip(
        lslr.adapt(meta, task.support, steps=4).values(),
        maml.adapt(theta, task.support, steps=4).values(),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-15)


def mc_oracle(meta: Params, tasks: Task, alpha: float) -> dict[str, Tensor]:
    """Meta-Curvature, one step: phi_W = W - alpha M_o G_W M_i^T, phi_b = b - alpha m_b * G_b.

    With R = dL_Q/dphi: dL/dM_o = -alpha R_W M_i G_W^T, dL/dM_i = -alpha R_W^T M_o G_W,
    dL/dm_b = -alpha R_b * G_b, and for theta, with A = M_o^T R_W M_i, a = m_b * R_b, c = 2 / (n o):
    dL/dW = R_W - alpha c (A X^T X + a 1^T X), dL/db = R_b - alpha c (A X^T 1 + n a).
    """
    w, b = meta["weight"].detach(), meta["bias"].detach()
    m_o, m_i, m_b = (meta[k].detach() for k in ("mc:weight:out", "mc:weight:in", "mc:bias"))
    total = {k: torch.zeros_like(v) for k, v in meta.items()}
    for i in range(N_TASKS):
        task = task_at(tasks, i)
        gw, gb = lsq_grads(w, b, task.support)
        rw, rb = lsq_grads(w - alpha * m_o @ gw @ m_i.T, b - alpha * m_b * gb, task.query)
        hw, hb = lsq_hessian_times(m_o.T @ rw @ m_i, m_b * rb, task.support)
        total["mc:weight:out"] -= alpha * rw @ m_i @ gw.T / N_TASKS
        total["mc:weight:in"] -= alpha * rw.T @ m_o @ gw / N_TASKS
        total["mc:bias"] -= alpha * rb * gb / N_TASKS
        total["weight"] += (rw - alpha * hw) / N_TASKS
        total["bias"] += (rb - alpha * hb) / N_TASKS
    return total


@pytest.mark.parametrize("executor", ["loop", "vmap"])
def test_meta_curvature_one_step_closed_form(executor: str) -> None:
    alpha = 0.3
    algo, meta, tasks = on_linear_tasks(MetaCurvatureConfig(alpha=alpha, inner_steps=1))
    assert set(split_meta(meta)[1]) == {"mc:weight:out", "mc:weight:in", "mc:bias"}
    gen = torch.Generator().manual_seed(5)
    # away from the identity (and not symmetric), so M_o / M_i / transposes cannot be confused
    factors = {
        k: v.detach() + 0.3 * torch.randn(v.shape, generator=gen, dtype=F64)
        for k, v in split_meta(meta)[1].items()
    }
    meta = with_extras(meta, factors)
    assert_meta_step_is(mc_oracle(meta, tasks, alpha), algo, meta, tasks, executor)


def meta_sgd_oracle(meta: Params, tasks: Task) -> dict[str, Tensor]:
    """Meta-SGD, one step, second order: phi = theta - a * g with g = grad L_S(theta), R = grad L_Q(phi).

    dL/da = -g * R (elementwise); dL/dtheta = (I - diag(a) H_S)^T R = R - H_S (a * R), H_S the support
    loss's constant Hessian (:func:`lsq_hessian_times`); the mean over the tasks.
    """
    w, b = meta["weight"].detach(), meta["bias"].detach()
    aw, ab = meta["metasgd:weight"].detach(), meta["metasgd:bias"].detach()
    total = {k: torch.zeros_like(v) for k, v in meta.items()}
    for i in range(N_TASKS):
        task = task_at(tasks, i)
        gw, gb = lsq_grads(w, b, task.support)
        rw, rb = lsq_grads(w - aw * gw, b - ab * gb, task.query)
        hw, hb = lsq_hessian_times(aw * rw, ab * rb, task.support)
        total["metasgd:weight"] -= gw * rw / N_TASKS
        total["metasgd:bias"] -= gb * rb / N_TASKS
        total["weight"] += (rw - hw) / N_TASKS
        total["bias"] += (rb - hb) / N_TASKS
    return total


@pytest.mark.parametrize("executor", ["loop", "vmap"])
def test_meta_sgd_one_step_closed_form(executor: str) -> None:
    algo, meta, tasks = on_linear_tasks(MetaSGDConfig(alpha=0.1, inner_steps=1))
    theta, extras = split_meta(meta)
    assert {k: v.shape for k, v in extras.items()} == {f"metasgd:{k}": v.shape for k, v in theta.items()}
    assert all(torch.all(v == 0.1) for v in extras.values())  # a = alpha, not the paper's U[0.005, 0.1]
    # a different rate for every element, one of them negative, so that a swapped or summed index cannot pass
    gen = torch.Generator().manual_seed(11)
    rates = {k: 0.05 + 0.3 * torch.rand(v.shape, generator=gen, dtype=F64) for k, v in extras.items()}
    rates["metasgd:bias"][0] = -0.07
    meta = with_extras(meta, rates)
    expected = meta_sgd_oracle(meta, tasks)
    assert all(v.abs().min() > 0 for v in expected.values())  # every element has its own meta-gradient
    assert_meta_step_is(expected, algo, meta, tasks, executor)
    metrics = algo.extra_metrics(meta)
    assert metrics["metasgd_rate_negative/bias"] == 0.5 and metrics["metasgd_rate_negative/weight"] == 0


def test_conv_curvature_is_the_kronecker_product() -> None:
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(4, 3, 2, 2, generator=gen, dtype=F64)
    factors = {
        "mc:w:out": torch.randn(4, 4, generator=gen, dtype=F64),
        "mc:w:in": torch.randn(3, 3, generator=gen, dtype=F64),
        "mc:w:filter": torch.randn(4, 4, generator=gen, dtype=F64),
    }
    kron = torch.kron(factors["mc:w:out"], torch.kron(factors["mc:w:in"], factors["mc:w:filter"]))
    torch.testing.assert_close(
        curvature("w", g, factors).flatten(), kron @ g.flatten(), rtol=1e-12, atol=1e-12
    )


# ---------------------------------------------------------------- ANIL and BOIL, unrolled by hand

HIDDEN = 4


def two_layer() -> tuple[Learner, Task]:
    torch.manual_seed(1)
    learner = Learner(build_mlp(MLPConfig(hidden=(HIDDEN,)), (D_IN,), D_OUT).to(F64), "mse")
    return learner, regression_tasks(D_OUT, seed=3)


def net(w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, x: Tensor) -> Tensor:
    return torch.relu(x @ w1.T + b1) @ w2.T + b2


def hand_unrolled(
    theta: Params, task: Task, alpha: float, steps: int, adapt: str
) -> tuple[list[Tensor], Tensor]:
    """Fast weights [w1, b1, w2, b2] and the query loss, adapting the head or the body by explicit steps."""
    w1, b1, w2, b2 = (theta[k] for k in ("body.0.weight", "body.0.bias", "head.weight", "head.bias"))
    for _ in range(steps):
        loss = F.mse_loss(net(w1, b1, w2, b2, task.support.x), task.support.y)
        if adapt == "head":
            g2, gb2 = torch.autograd.grad(loss, (w2, b2), create_graph=True)
            w2, b2 = w2 - alpha * g2, b2 - alpha * gb2
        else:
            g1, gb1 = torch.autograd.grad(loss, (w1, b1), create_graph=True)
            w1, b1 = w1 - alpha * g1, b1 - alpha * gb1
    return [w1, b1, w2, b2], F.mse_loss(net(w1, b1, w2, b2, task.query.x), task.query.y)


@pytest.mark.parametrize("executor", ["loop", "vmap"])
@pytest.mark.parametrize("variant", ["anil", "boil"])
def test_anil_and_boil_against_a_hand_unrolled_net(variant: str, executor: str) -> None:
    learner, tasks = two_layer()
    alpha, steps = 0.2, 3
    cfg = (ANILConfig if variant == "anil" else BOILConfig)(alpha=alpha, inner_steps=steps)
    algo = MAML(cfg, learner)
    meta = algo.init_meta(learner.init_params())
    keys = ["body.0.weight", "body.0.bias", "head.weight", "head.bias"]
    losses = []
    for i in range(N_TASKS):
        task = task_at(tasks, i)
        fast_ref, loss_ref = hand_unrolled(meta, task, alpha, steps, "head" if variant == "anil" else "body")
        fast = algo.adapt(meta, task.support, create_graph=True)
        for k, ref in zip(keys, fast_ref, strict=True):
            torch.testing.assert_close(fast[k], ref, rtol=1e-12, atol=1e-14)
        frozen = keys[:2] if variant == "anil" else keys[2:]
        for k in frozen:  # the frozen part is theta itself: no update, not even a zero-gradient step
            assert torch.equal(fast[k], meta[k]), k
        torch.testing.assert_close(algo.task_loss(meta, task)[0], loss_ref, rtol=1e-12, atol=0)
        losses.append(loss_ref)
    expected = torch.autograd.grad(sum(losses) / N_TASKS, [meta[k] for k in keys])
    result = algo.meta_step(meta, tasks, executor)
    for k, g in zip(keys, expected, strict=True):
        torch.testing.assert_close(result.grads[k], g, rtol=1e-10, atol=1e-13)
        assert g.abs().sum() > 0, k  # every part is meta-learned, the frozen one included


# ---------------------------------------------------------------- Sparse-MAML and sparse-ReLU-MAML


def test_straight_through_forms() -> None:
    m = torch.tensor([-1.5, -0.0, 0.0, 0.2, 3.0], dtype=F64, requires_grad=True)
    mask = ste_sign_mask(m)
    assert mask.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]  # 0.5 (sign(m) + 1), the released code's form
    (grad,) = torch.autograd.grad(mask.sum(), m)
    assert grad.tolist() == [0.5] * 5
    rate = ste_relu(m)
    assert rate.tolist() == [0.0, 0.0, 0.0, 0.2, 3.0]
    (grad,) = torch.autograd.grad(rate.sum(), m)
    assert grad.tolist() == [1.0] * 5  # identity backward: dead rates still get a gradient


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("executor", ["loop", "vmap"])
@pytest.mark.parametrize("variant", ["sparse_maml", "sparse_relu_maml"])
def test_sparse_variants_gradients_by_hand(variant: str, executor: str, reduction: str) -> None:
    """First order, two steps: phi^{k+1} = phi^k - r * g^k with r = alpha mask(m) or ReLU(m).

    dL/dm = dr/dm * (-(g^0 + g^1) * g_q(phi^2)) with dr/dm = 0.5 alpha (mask) or 1 (ReLU), and the
    theta gradient is g_q(phi^2) (FOMAML); summed over the tasks (the code's default) or averaged.
    """
    learner, tasks = linear_learner(D_OUT), regression_tasks(D_OUT)
    alpha, steps = 0.4, 2
    cfg = (SparseMAMLConfig if variant == "sparse_maml" else SparseReLUMAMLConfig)(
        alpha=alpha, inner_steps=steps, meta_reduction=reduction
    )
    per_task = 1.0 if reduction == "sum" else 1.0 / N_TASKS
    algo = MAML(cfg, learner, torch.Generator().manual_seed(0))
    meta = algo.init_meta(learner.init_params())
    kind = "mask" if variant == "sparse_maml" else "rate"
    gen = torch.Generator().manual_seed(7)
    logits = {
        f"{kind}:{k}": 0.3 * torch.randn(v.shape, generator=gen, dtype=F64)
        for k, v in split_meta(meta)[0].items()
    }
    meta = with_extras(meta, logits)
    w0, b0 = meta["weight"].detach(), meta["bias"].detach()
    mw, mb = meta[f"{kind}:weight"].detach(), meta[f"{kind}:bias"].detach()
    if variant == "sparse_maml":
        rw, rb, slope = alpha * (mw > 0).to(F64), alpha * (mb > 0).to(F64), 0.5 * alpha
        assert 0 < float((mw > 0).double().mean()) < 1  # some entries stop adaptation, some do not
    else:
        rw, rb, slope = mw.clamp(min=0), mb.clamp(min=0), 1.0
    expected = {k: torch.zeros_like(v) for k, v in meta.items()}
    for i in range(N_TASKS):
        task = task_at(tasks, i)
        w, b, sum_w, sum_b = w0, b0, torch.zeros_like(w0), torch.zeros_like(b0)
        for _ in range(steps):
            gw, gb = lsq_grads(w, b, task.support)
            w, b, sum_w, sum_b = w - rw * gw, b - rb * gb, sum_w + gw, sum_b + gb
        qw, qb = lsq_grads(w, b, task.query)
        torch.testing.assert_close(algo.adapt(meta, task.support)["weight"], w, rtol=1e-12, atol=1e-14)
        expected["weight"] += qw * per_task
        expected["bias"] += qb * per_task
        expected[f"{kind}:weight"] -= slope * sum_w * qw * per_task
        expected[f"{kind}:bias"] -= slope * sum_b * qb * per_task
    result = algo.meta_step(meta, tasks, executor)
    for k in expected:
        torch.testing.assert_close(result.grads[k], expected[k], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("scope", ["network", "all"])
def test_clip_scope_clamps_the_network_or_everything(scope: str) -> None:
    """Catches a clamp that reaches the masks under ``clip_scope: network`` (the Sparse-MAML code clamps the
    network's meta-gradients only) or misses them under ``all``: both kinds exceed the bound here."""
    learner, tasks = linear_learner(D_OUT), regression_tasks(D_OUT)
    gen = torch.Generator().manual_seed(0)
    free = MAML(SparseReLUMAMLConfig(alpha=0.4, inner_steps=2), learner, gen)
    meta = free.init_meta(learner.init_params())
    unclamped = free.meta_step(meta, tasks, "loop").grads
    clip = 0.5 * min(float(unclamped["weight"].abs().max()), float(unclamped["rate:weight"].abs().max()))
    cfg = SparseReLUMAMLConfig(alpha=0.4, inner_steps=2, grad_clip=clip, clip_scope=scope)
    clamped = MAML(cfg, learner, gen).meta_step(meta, tasks, "loop").grads
    for k, g in unclamped.items():
        reached = scope == "all" or not k.startswith("rate:")
        torch.testing.assert_close(clamped[k], g.clamp(-clip, clip) if reached else g, rtol=0, atol=0)
    assert (float(clamped["rate:weight"].abs().max()) > clip) == (scope == "network")


def test_sparse_mask_starts_half_sparse_and_is_logged() -> None:
    torch.manual_seed(0)
    learner = Learner(build_conv4(Conv4Config(filters=8, pool="max"), (1, 16, 16), 5), "cross_entropy")
    algo = MAML(SparseMAMLConfig(), learner, torch.Generator().manual_seed(0))
    meta = algo.init_meta(learner.init_params())
    metrics = algo.extra_metrics(meta)
    sparsity = {k: v for k, v in metrics.items() if k.startswith("mask_sparsity/")}
    assert set(sparsity) == {f"mask_sparsity/body.{i}.{m}" for i in range(4) for m in ("conv", "norm")} | {
        "mask_sparsity/head"
    }
    assert all(0.3 < v < 0.7 for v in sparsity.values()), sparsity  # mean-centred logits: about half


def test_extra_metrics_of_lslr_and_curvature() -> None:
    extras = {
        "lslr:head.weight": torch.tensor([0.1, 0.3]),
        "lslr:head.bias": torch.tensor([0.3, 0.5]),
        "mc:head.weight:out": torch.eye(2) * 3,
        "mc:head.weight:in": torch.zeros(3, 3),
        "mc:head.bias": torch.full((2,), 2.0),
    }
    m = extra_metrics(extras)
    assert m["lslr_rate/head/0"] == pytest.approx(0.2) and m["lslr_rate/head/1"] == pytest.approx(0.4)
    assert m["mc_norm/head"] == pytest.approx((9 * 2 + 4 * 2) ** 0.5)


# ---------------------------------------------------------------- every variant: executors and resume


def conv_tasks() -> tuple[Learner, Task]:
    torch.manual_seed(0)
    learner = Learner(
        build_conv4(Conv4Config(filters=4, pool="max"), (1, 16, 16), 3).to(F64), "cross_entropy"
    )
    gen = torch.Generator().manual_seed(1)
    support = Batch(
        torch.randn(N_TASKS, 3, 1, 16, 16, generator=gen, dtype=F64), torch.arange(3).repeat(N_TASKS, 1)
    )
    query = Batch(
        torch.randn(N_TASKS, 6, 1, 16, 16, generator=gen, dtype=F64),
        torch.arange(3).repeat_interleave(2).repeat(N_TASKS, 1),
    )
    return learner, Task(support, query)


@pytest.mark.parametrize("name", FAMILY)
def test_loop_equals_vmap_for_every_variant(name: str) -> None:
    learner, tasks = conv_tasks()
    cfg_cls = next(c for c in MAML_VARIANTS if c.model_fields["name"].default == name)
    algo = MAML(cfg_cls(alpha=0.3, inner_steps=2), learner, torch.Generator().manual_seed(0))
    meta = algo.init_meta(learner.init_params())
    loop, vmap = algo.meta_step(meta, tasks, "loop"), algo.meta_step(meta, tasks, "vmap")
    assert loop.loss == pytest.approx(vmap.loss, rel=1e-12)
    assert set(loop.grads) == set(vmap.grads) == set(meta)
    for k in meta:
        torch.testing.assert_close(vmap.grads[k], loop.grads[k], rtol=1e-9, atol=1e-12)


RESUME = ["--set", "train.meta_batch=2", "--set", "train.log_every=1", "--set", "eval.tasks=4", "--quiet"]


@pytest.mark.parametrize("name", [n for n in FAMILY if n not in ("maml", "fomaml")])
def test_resume_with_extras_matches_a_straight_run(name: str, tmp_path: Path) -> None:
    base = ["train", "--algo", name, "--dataset", "sinusoid", *RESUME]
    saved = straight_and_resumed(base, tmp_path)
    has_extras = name not in ("anil", "boil")  # these two change only which parameters adapt
    assert any(":" in k for k in saved["meta"]) == has_extras, "the checkpoint holds the variant's extras"
