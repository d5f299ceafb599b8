"""Oracles for the memory-reduced algorithm and ITD-BiO (float64).

- CG against ``torch.linalg.solve`` on the head's explicit Hessian, and its warm start;
- the implicit hypergradient, with the lower level solved to machine precision, against central
  differences of theta -> f(theta, phi*(theta)) (phi* by Newton's method) and against TorchOpt's
  ``custom_root`` implicit gradient on the same problem;
- ITD-BiO against a hand-unrolled reference; loop == vmap; warm starts per slot, carried and resumed;
- the lower level's L2 term: ``reg_form: norm`` (the official ITD-BiO code's) by its hand formula, and
  ITD-BiO's hypergradient with it against central differences; why the memory-reduced method needs rho > 0
  for CG and refuses ``norm``; what the presets set.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from metacli.engine.algorithms.implicit import (
    BilevelHead,
    ITDBiOConfig,
    MemoryReducedConfig,
    conjugate_gradient,
)
from metacli.engine.executors import task_at
from metacli.engine.functional import Learner
from metacli.engine.types import Batch, Params, Task
from metacli.errors import SpecError
from metacli.spec import PRESETS_DIR, load_spec
from tests.engine.test_miniimagenet import write_fixture
from tests.resume import straight_and_resumed

F64 = torch.float64
D, H, WAYS, N_S, N_Q, N_TASKS = 3, 4, 3, 9, 6, 2
Q = WAYS * (H + 1)  # head size


class TanhNet(nn.Module):
    """body = Linear + tanh (theta), head = Linear (phi): smooth, so differences are accurate."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D, H), nn.Tanh())
        self.head = nn.Linear(H, WAYS)

    def forward(self, x: Tensor, features_only: bool = False) -> Tensor:
        z = self.body(x)
        return z if features_only else self.head(z)


def problem(seed: int = 0) -> tuple[Learner, Task]:
    torch.manual_seed(seed)
    learner = Learner(TanhNet().to(F64), "cross_entropy")
    gen = torch.Generator().manual_seed(seed + 1)
    support = Batch(
        torch.randn(N_TASKS, N_S, D, generator=gen, dtype=F64), torch.arange(WAYS).repeat(N_TASKS, 3)
    )
    query = Batch(
        torch.randn(N_TASKS, N_Q, D, generator=gen, dtype=F64), torch.arange(WAYS).repeat(N_TASKS, 2)
    )
    return learner, Task(support, query)


def head_hessian(algo: BilevelHead, phi: Tensor, z: Tensor, y: Tensor) -> Tensor:
    return torch.func.hessian(algo.lower)(phi, z, y)


def test_cg_solves_the_head_system_and_warm_starts_help() -> None:
    learner, tasks = problem()
    algo = BilevelHead(MemoryReducedConfig(reg=0.05), learner)
    meta = algo.init_meta(learner.init_params())
    task = task_at(tasks, 0)
    z = learner.features(meta, task.support.x).detach()
    phi = algo.flat_head(meta).detach()
    hess = head_hessian(algo, phi, z, task.support.y)
    b = torch.randn(Q, generator=torch.Generator().manual_seed(3), dtype=F64)

    def hvp(w: Tensor) -> Tensor:
        return hess @ w

    exact = torch.linalg.solve(hess, b)
    v = conjugate_gradient(hvp, b, torch.zeros(Q, dtype=F64), steps=3 * Q)
    torch.testing.assert_close(v, exact, rtol=1e-9, atol=1e-10)
    # at equal (few) iterations, starting near the solution leaves a smaller residual than from zero
    near = exact + 0.01 * torch.randn(Q, generator=torch.Generator().manual_seed(4), dtype=F64)
    cold = conjugate_gradient(hvp, b, torch.zeros(Q, dtype=F64), steps=3)
    warm = conjugate_gradient(hvp, b, near, steps=3)
    assert torch.linalg.norm(b - hess @ warm) < 0.1 * torch.linalg.norm(b - hess @ cold)
    # a converged system stays put (no 0/0 once the residual is zero)
    assert torch.equal(conjugate_gradient(hvp, b, exact, steps=0), exact)
    assert torch.isfinite(conjugate_gradient(lambda w: w, b, b, steps=4)).all()


def newton_solution(algo: BilevelHead, phi: Tensor, z: Tensor, y: Tensor) -> Tensor:
    """phi*(theta) to machine precision: the lower level is strongly convex (rho > 0)."""
    for _ in range(50):
        grad = torch.func.grad(algo.lower)(phi, z, y)
        phi = phi - torch.linalg.solve(head_hessian(algo, phi, z, y), grad)
    return phi


EXACT = MemoryReducedConfig(reg=0.2, inner_lr=0.5, inner_steps=600, cg_steps=3 * Q, warm_start=False)


def outer_at_solution(learner: Learner, algo: BilevelHead, meta: Params, tasks: Task) -> Tensor:
    total = torch.zeros((), dtype=F64)
    for i in range(N_TASKS):
        task = task_at(tasks, i)
        zs = learner.features(meta, task.support.x)
        phi = newton_solution(algo, algo.flat_head(meta).detach(), zs, task.support.y)
        total = total + algo.upper(phi, learner.features(meta, task.query.x), task.query.y)
    return total / N_TASKS


def along_a_body_direction(
    meta: Params, grads: Params, outer: Callable[[Params], float], eps: float
) -> tuple[float, float]:
    """The meta-gradient's and a central difference's slope of ``outer`` along one random direction in the
    body's parameters (the head is not meta-learned by these methods): (analytic, finite)."""
    gen = torch.Generator().manual_seed(9)
    direction = {
        k: torch.randn(v.shape, generator=gen, dtype=F64) if k.startswith("body.") else torch.zeros_like(v)
        for k, v in meta.items()
    }

    def at(sign: float) -> float:
        return outer({k: (v + sign * eps * direction[k]).detach() for k, v in meta.items()})

    finite = (at(1.0) - at(-1.0)) / (2 * eps)
    return float(sum((grads[k] * direction[k]).sum() for k in meta)), finite


@pytest.mark.parametrize("executor", ["loop", "vmap"])
def test_implicit_hypergradient_against_finite_differences(executor: str) -> None:
    learner, tasks = problem()
    algo = BilevelHead(EXACT, learner)
    meta = algo.init_meta(learner.init_params())
    grads = algo.meta_step(meta, tasks, executor).grads

    def outer(at: Params) -> float:
        return float(outer_at_solution(learner, algo, at, tasks))

    analytic, finite = along_a_body_direction(meta, grads, outer, eps=1e-5)
    assert analytic == pytest.approx(finite, rel=1e-6)
    assert all(float(grads[k].abs().max()) == 0 for k in ("head.weight", "head.bias"))  # not meta-learned


@pytest.mark.skipif(
    importlib.util.find_spec("torchopt") is None, reason="TorchOpt is not installed (pip install -e .[bench])"
)
def test_implicit_hypergradient_against_torchopt() -> None:
    import torchopt

    learner, tasks = problem()
    algo = BilevelHead(EXACT, learner)
    meta = algo.init_meta(learner.init_params())
    ours = algo.meta_step(meta, tasks, "loop").grads

    def optimality(phi: Tensor, zs: Tensor, ys: Tensor) -> Tensor:
        return torch.func.grad(algo.lower)(phi, zs, ys)

    @torchopt.diff.implicit.custom_root(
        optimality, argnums=1, solve=torchopt.linear_solve.solve_cg(maxiter=3 * Q, rtol=1e-12)
    )
    def solve(phi: Tensor, zs: Tensor, ys: Tensor) -> Tensor:
        return newton_solution(algo, phi.detach(), zs.detach(), ys)

    body = {k: v for k, v in meta.items() if k.startswith("body.")}
    total = torch.zeros((), dtype=F64)
    for i in range(N_TASKS):
        task = task_at(tasks, i)
        zs, zq = learner.features(meta, task.support.x), learner.features(meta, task.query.x)
        phi = solve(algo.flat_head(meta).detach(), zs, task.support.y)
        total = total + algo.upper(phi, zq, task.query.y) / N_TASKS
    theirs = torch.autograd.grad(total, list(body.values()))
    for k, g in zip(body, theirs, strict=True):
        torch.testing.assert_close(ours[k], g, rtol=1e-7, atol=1e-10)


def test_itd_bio_against_a_hand_unrolled_reference() -> None:
    learner, tasks = problem()
    cfg = ITDBiOConfig(reg=0.01, inner_lr=0.3, inner_steps=4)
    algo = BilevelHead(cfg, learner)
    meta = algo.init_meta(learner.init_params())
    w1, b1, w0, b0 = (meta[k] for k in ("body.0.weight", "body.0.bias", "head.weight", "head.bias"))
    total = torch.zeros((), dtype=F64)
    for i in range(N_TASKS):
        task = task_at(tasks, i)
        zs, zq = torch.tanh(task.support.x @ w1.T + b1), torch.tanh(task.query.x @ w1.T + b1)
        w, b = w0.detach(), b0.detach()
        for _ in range(cfg.inner_steps):
            w, b = (
                w.requires_grad_() if not w.requires_grad else w,
                b.requires_grad_() if not b.requires_grad else b,
            )
            g = F.cross_entropy(zs @ w.T + b, task.support.y) + 0.5 * cfg.reg * (
                (w * w).sum() + (b * b).sum()
            )
            gw, gb = torch.autograd.grad(g, (w, b), create_graph=True)
            w, b = w - cfg.inner_lr * gw, b - cfg.inner_lr * gb
        total = total + F.cross_entropy(zq @ w.T + b, task.query.y) / N_TASKS
    expected = torch.autograd.grad(total, (w1, b1))
    result = algo.meta_step(meta, tasks, "loop")
    assert result.loss == pytest.approx(float(total.detach()), rel=1e-12)
    torch.testing.assert_close(result.grads["body.0.weight"], expected[0], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(result.grads["body.0.bias"], expected[1], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(
    "cfg",
    [MemoryReducedConfig(reg=0.1, inner_steps=5, cg_steps=3 * Q), ITDBiOConfig(inner_steps=5)],
    ids=["memory_reduced", "itd_bio"],
)
def test_loop_equals_vmap(cfg: MemoryReducedConfig | ITDBiOConfig) -> None:
    learner, tasks = problem()
    loop_algo, vmap_algo = BilevelHead(cfg, learner), BilevelHead(cfg, learner)
    meta = loop_algo.init_meta(learner.init_params())
    for _ in range(2):  # the second step starts from the warm starts the first one left
        loop, vmap = loop_algo.meta_step(meta, tasks, "loop"), vmap_algo.meta_step(meta, tasks, "vmap")
        assert loop.loss == pytest.approx(vmap.loss, rel=1e-12)
        for k in meta:
            torch.testing.assert_close(vmap.grads[k], loop.grads[k], rtol=1e-9, atol=1e-12)
        for k in loop_algo.slots:
            torch.testing.assert_close(vmap_algo.slots[k], loop_algo.slots[k], rtol=1e-9, atol=1e-12)


def test_warm_starts_are_carried_per_slot() -> None:
    learner, tasks = problem()
    algo = BilevelHead(MemoryReducedConfig(reg=0.1, inner_steps=3, cg_steps=2), learner)
    meta = algo.init_meta(learner.init_params())
    algo.meta_step(meta, tasks, "loop")
    first = {k: v.clone() for k, v in algo.slots.items()}
    # slot i's head after step 1 is 3 head steps from the initialisation on task i
    init = algo.flat_head(meta).detach()
    for i in range(N_TASKS):
        task = task_at(tasks, i)
        z = learner.features(meta, task.support.x).detach()
        torch.testing.assert_close(
            first["phi"][i], algo.head_steps(init, z, task.support.y, 3, 0.1, False), rtol=0, atol=1e-14
        )
    # step 2 starts there: 3 more steps
    algo.meta_step(meta, tasks, "loop")
    for i in range(N_TASKS):
        task = task_at(tasks, i)
        z = learner.features(meta, task.support.x).detach()
        torch.testing.assert_close(
            algo.slots["phi"][i],
            algo.head_steps(first["phi"][i], z, task.support.y, 3, 0.1, False),
            rtol=0,
            atol=1e-14,
        )
    assert not torch.equal(algo.slots["v"], first["v"])
    cold = BilevelHead(MemoryReducedConfig(reg=0.1, inner_steps=3, cg_steps=2, warm_start=False), learner)
    cold.meta_step(meta, tasks, "loop")
    assert cold.slots == {}


@pytest.mark.filterwarnings("ignore:miniImageNet pickles differ")
@pytest.mark.parametrize("algo", ["memory_reduced", "itd_bio"])
def test_resume_restores_the_warm_starts(algo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fx = write_fixture(tmp_path / "data", per_class=8)
    base = [
        "train", "--algo", algo, "--dataset", "miniimagenet", "--data-root", str(fx.root),
        "--set", "data.ways=3", "--set", "data.queries=2", "--set", "model.filters=4",
        "--set", "algorithm.inner_steps=3", "--set", "algorithm.warm_start=true",
        "--set", "train.meta_batch=2", "--set", "train.log_every=1", "--set", "train.val_every=0",
        "--set", "train.checkpoint_every=2", "--set", "eval.tasks=3", "--quiet",
    ]  # fmt: skip
    saved = straight_and_resumed(base, tmp_path)
    assert saved["algorithm_state"]["phi"].shape[0] == 2  # one warm start per batch slot


@pytest.mark.parametrize(
    "cfg", [EXACT.model_copy(update={"inner_steps": 5, "cg_steps": 3}), ITDBiOConfig(inner_steps=3)]
)
def test_grad_clip_clamps_every_hypergradient_element(cfg: MemoryReducedConfig | ITDBiOConfig) -> None:
    """Catches a bilevel meta-step that ignores ``grad_clip``: the clamped gradient is the unclamped one
    clamped element-wise, and the clip binds somewhere."""
    learner, tasks = problem()
    free = BilevelHead(cfg, learner)
    meta = free.init_meta(learner.init_params())
    raw = free.meta_step(meta, tasks, "loop").grads
    clip = 0.5 * max(float(g.abs().max()) for g in raw.values())
    clipped = (
        BilevelHead(cfg.model_copy(update={"grad_clip": clip}), learner).meta_step(meta, tasks, "loop").grads
    )
    for k, g in raw.items():
        torch.testing.assert_close(clipped[k], g.clamp(-clip, clip), rtol=0, atol=1e-12)
    assert any(bool((g.abs() > clip).any()) for g in raw.values())


# ---------------------------------------------------------------- the lower level's L2 term


def test_cg_needs_rho_where_the_support_does_not_span_the_features() -> None:
    """With rho = 0 the head's Hessian is singular: along the shift of every logit (grad_phi f has no part
    there), and along every feature direction the support does not span (grad_phi f, from the query, has).
    9 support examples span the 5 features (+1): CG converges at rho = 0. 3 do not: CG blows up, and
    rho > 0 (positive definite) fixes it."""
    learner, tasks = problem()
    task = task_at(tasks, 0)

    def cg_residual(reg: float, n_support: int) -> tuple[float, float]:
        algo = BilevelHead(MemoryReducedConfig(reg=reg), learner)
        meta = algo.init_meta(learner.init_params())
        zs = learner.features(meta, task.support.x[:n_support]).detach()
        phi = algo.flat_head(meta).detach()
        hess = head_hessian(algo, phi, zs, task.support.y[:n_support])
        b = torch.func.grad(algo.upper)(phi, learner.features(meta, task.query.x).detach(), task.query.y)
        v = conjugate_gradient(lambda w: hess @ w, b, torch.zeros(Q, dtype=F64), steps=3 * Q)
        return float(torch.linalg.norm(b - hess @ v) / torch.linalg.norm(b)), float(torch.linalg.norm(v))

    assert cg_residual(0.0, N_S)[0] < 1e-8
    residual, size = cg_residual(0.0, WAYS)
    assert residual > 0.5 and size > 1e6
    assert cg_residual(0.05, WAYS)[0] < 1e-12


NORM_ITD = ITDBiOConfig(reg=0.05, reg_form="norm", inner_lr=0.3, inner_steps=5)


def test_norm_lower_level_is_the_official_itd_bio_term() -> None:
    """g = CE(z W^T + b) + rho (|W|_2 + |b|_2): plain norms, neither squared nor halved."""
    learner, tasks = problem()
    algo = BilevelHead(NORM_ITD, learner)
    meta = algo.init_meta(learner.init_params())
    task = task_at(tasks, 0)
    z = learner.features(meta, task.support.x).detach()
    w, b = meta["head.weight"].detach(), meta["head.bias"].detach()
    by_hand = F.cross_entropy(z @ w.T + b, task.support.y) + 0.05 * (
        torch.sqrt((w * w).sum()) + torch.sqrt((b * b).sum())
    )
    got = algo.lower(algo.flat_head(meta).detach(), z, task.support.y)
    assert float(got) == pytest.approx(float(by_hand), rel=1e-14)
    squared = BilevelHead(NORM_ITD.model_copy(update={"reg_form": "half_squared"}), learner)
    half = F.cross_entropy(z @ w.T + b, task.support.y) + 0.025 * ((w * w).sum() + (b * b).sum())
    assert float(squared.lower(algo.flat_head(meta).detach(), z, task.support.y)) == pytest.approx(
        float(half), rel=1e-14
    )


@pytest.mark.parametrize("executor", ["loop", "vmap"])
def test_itd_bio_with_the_norm_term_against_finite_differences(executor: str) -> None:
    """theta -> (1/B) sum_i f_i(theta, phi_i^K(theta)), phi^K by K steps on CE + rho (|W| + |b|)."""
    learner, tasks = problem()
    algo = BilevelHead(NORM_ITD, learner)
    meta = algo.init_meta(learner.init_params())
    grads = algo.meta_step(meta, tasks, executor).grads

    def unrolled(at: Params) -> float:
        total = 0.0
        for i in range(N_TASKS):
            task = task_at(tasks, i)
            zs, zq = learner.features(at, task.support.x), learner.features(at, task.query.x)
            phi = algo.head_steps(algo.flat_head(at), zs, task.support.y, 5, 0.3, create_graph=False)
            total += float(algo.upper(phi, zq, task.query.y)) / N_TASKS
        return total

    analytic, finite = along_a_body_direction(meta, grads, unrolled, eps=1e-6)
    assert analytic == pytest.approx(finite, rel=1e-7)
    squared = BilevelHead(NORM_ITD.model_copy(update={"reg_form": "half_squared"}), learner)
    other = squared.meta_step(meta, tasks, executor).grads
    assert float((other["body.0.weight"] - grads["body.0.weight"]).abs().max()) > 1e-6


def test_memory_reduced_refuses_the_norm_term() -> None:
    with pytest.raises(ValidationError, match="reg_form: half_squared"):
        MemoryReducedConfig(reg_form="norm")
    with pytest.raises(SpecError, match="reg_form: half_squared"):
        load_spec(algo="memory_reduced", dataset="cifar_fs", overrides=["algorithm.reg_form=norm"])


BILEVEL_PRESETS = sorted(
    path for name in ("itd_bio", "memory_reduced") for path in PRESETS_DIR.glob(f"*/*_{name}.yaml")
)


@pytest.mark.parametrize("path", BILEVEL_PRESETS, ids=[f"{p.parent.name}/{p.stem}" for p in BILEVEL_PRESETS])
def test_bilevel_presets_follow_the_official_code(path: Path) -> None:
    """ITD-BiO: 1e-4 (|W|_2 + |b|_2); memory-reduced: no term (the code computes one and never adds it)."""
    algo = load_spec(path)[0].algorithm
    assert isinstance(algo, ITDBiOConfig | MemoryReducedConfig)
    if isinstance(algo, ITDBiOConfig):
        assert (algo.reg, algo.reg_form) == (1e-4, "norm")
    else:
        assert algo.reg == 0
