"""MOML's, B-MOML's, FTML's and TOE's rounds against hand computations (softmax regression, float64).

The expected θ, λ, ω (and B-MOML's buffer) are computed with closed-form gradients and Hessian-vector
products of the linear softmax cross-entropy, independent of the algorithms' code and of autograd. Only
the random draws are reproduced with the same generator seed, in the documented order: the buffer slot,
then per outer step the task index and a ``randperm`` of its train set (first B = S, next B = Q).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from metacli.engine.algorithms.moml import BMOML, MOML, BMOMLConfig, MOMLConfig, OnlineMetaSGDConfig
from metacli.engine.algorithms.online_baselines import FTML, TOE, FTMLConfig, TOEConfig
from metacli.engine.functional import Learner
from metacli.engine.types import Batch, OnlineStream, Params

DT = torch.float64


def _probs(w: Tensor, b: Tensor, x: Tensor) -> Tensor:
    return torch.softmax(x @ w.T + b, dim=1)


def _grad(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """∇ of mean CE of softmax(x wᵀ + b): ((P − Y)ᵀ x / n, mean(P − Y))."""
    r = (_probs(w, b, x) - torch.eye(w.shape[0], dtype=DT)[y]) / x.shape[0]
    return r.T @ x, r.sum(0)


def _hvp(w: Tensor, b: Tensor, x: Tensor, vw: Tensor, vb: Tensor) -> tuple[Tensor, Tensor]:
    """Hessian of mean CE times (vw, vb): Σ_i (diag p_i − p_i p_iᵀ)(vw x_i + vb) ⊗ [x_i, 1] / n."""
    p = _probs(w, b, x)
    dz = x @ vw.T + vb
    r = (p * dz - p * (p * dz).sum(1, keepdim=True)) / x.shape[0]
    return r.T @ x, r.sum(0)


def _hand_meta_grad(
    w: Tensor, b: Tensor, x: Tensor, y: Tensor, s: Tensor, q: Tensor, cfg: OnlineMetaSGDConfig
) -> tuple[Tensor, Tensor]:
    """∇_θ CE(U(θ; S); Q) through ``cfg.inner_steps`` steps φ_{j+1} = φ_j − η (g_S(φ_j) + wd φ_j), φ_0 = θ.

    Backward by hand: v = g_Q(φ_n), then for j = n−1 .. 0: v ← (1 − η wd) v − η H_S(φ_j) v (H symmetric).
    """
    eta, wd = cfg.inner_lr, cfg.weight_decay
    phis = [(w, b)]
    for _ in range(cfg.inner_steps):
        pw, pb = phis[-1]
        gsw, gsb = _grad(pw, pb, x[s], y[s])
        phis.append((pw - eta * (gsw + wd * pw), pb - eta * (gsb + wd * pb)))
    vw, vb = _grad(*phis[-1], x[q], y[q])
    for pw, pb in reversed(phis[:-1]):
        hw, hb = _hvp(pw, pb, x[s], vw, vb)
        vw, vb = (1 - eta * wd) * vw - eta * hw, (1 - eta * wd) * vb - eta * hb
    return vw, vb


def _clipped_sgd(
    w: Tensor, b: Tensor, gw: Tensor, gb: Tensor, clip: float, lr: float, wd: float, clips: list[float]
) -> tuple[Tensor, Tensor]:
    """θ ← θ − lr (c g + wd θ), c = min(1, clip / (‖g‖ + 1e-6)) (PyTorch's clip_grad_norm_ then SGD)."""
    c = min(1.0, clip / (float(torch.sqrt((gw**2).sum() + (gb**2).sum())) + 1e-6))
    clips.append(c)
    return w - lr * (c * gw + wd * w), b - lr * (c * gb + wd * b)


def _hand_meta_sgd(
    theta: list[Tensor], stream: OnlineStream, draw_task: Callable[[], int], cfg: OnlineMetaSGDConfig,
    gen: torch.Generator, reg: tuple[list[Tensor], list[Tensor], float] | None, clips: list[float],
) -> list[Tensor]:  # fmt: skip
    """K outer steps; each draws its task, then (S, Q) = the first 2B of a randperm of its train set."""
    w, b = theta
    n_b = cfg.batch_size
    for _ in range(cfg.K):
        t = draw_task()
        x, y = stream.train.x[t], stream.train.y[t]
        perm = torch.randperm(x.shape[0], generator=gen)
        gw, gb = _hand_meta_grad(w, b, x, y, perm[:n_b], perm[n_b : 2 * n_b], cfg)
        if reg is not None:
            lam, omega, a = reg
            gw, gb = gw - lam[0] + a * (w - omega[0]), gb - lam[1] + a * (b - omega[1])
        w, b = _clipped_sgd(w, b, gw, gb, cfg.clip_norm, cfg.outer_lr, cfg.weight_decay, clips)
    return [w, b]


def _hand_state_update(
    theta: list[Tensor], lam: list[Tensor], omega: list[Tensor], a: float
) -> tuple[list[Tensor], list[Tensor]]:
    """λ ← λ − α(θ − ω); ω ← ½(θ + ω) − λ/(2α), with the new λ."""
    new_lam = [la - a * (th - om) for th, la, om in zip(theta, lam, omega, strict=True)]
    new_omega = [0.5 * (th + om) - la / (2 * a) for th, om, la in zip(theta, omega, new_lam, strict=True)]
    return new_lam, new_omega


def _setup(n_t: int) -> tuple[OnlineStream, Learner, list[Tensor]]:
    torch.manual_seed(3)
    n_in, n_cls = 6, 3
    stream = OnlineStream(
        Batch(torch.randn(n_t, 20, n_in, dtype=DT) * 2, torch.randint(n_cls, (n_t, 20))),
        Batch(torch.randn(n_t, 5, n_in, dtype=DT), torch.randint(n_cls, (n_t, 5))),
        n_cls,
    )
    learner = Learner(nn.Linear(n_in, n_cls).to(DT), "cross_entropy")
    theta0 = learner.init_params()
    return stream, learner, [theta0["weight"], theta0["bias"]]


def _assert_params(got: Params, want: list[Tensor]) -> None:
    torch.testing.assert_close(got["weight"], want[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(got["bias"], want[1], rtol=0, atol=1e-10)


def _randint(gen: torch.Generator, n: int) -> int:
    return int(torch.randint(n, (1,), generator=gen).item())


def _two_rounds_against_hand(cfg: MOMLConfig) -> tuple[Any, list[float]]:
    """Two MOML rounds against the hand computation (theta, lambda, omega after each); the final state and
    the clipping factors the hand computation applied."""
    stream, learner, theta = _setup(2)
    algo = MOML(cfg, learner)
    state = algo.init_state(learner.init_params())
    gen, hand_gen = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    lam, omega = [torch.zeros_like(t) for t in theta], list(theta)
    clips: list[float] = []
    for t in range(2):
        state = algo.round(state, t, stream, gen)
        theta = _hand_meta_sgd(theta, stream, lambda t=t: t, cfg, hand_gen, (lam, omega, cfg.alpha), clips)
        lam, omega = _hand_state_update(theta, lam, omega, cfg.alpha)
        for got, want in zip((state.theta, state.lam, state.omega), (theta, lam, omega), strict=True):
            _assert_params(got, want)
    return state, clips


def test_moml_two_rounds_match_hand_computation() -> None:
    state, clips = _two_rounds_against_hand(MOMLConfig(K=4, inner_lr=0.5, alpha=5.0, clip_norm=0.8))
    assert min(clips) < 1.0 < max(clips) + 1e-12  # clipping active in some steps, not in all
    assert float(torch.linalg.vector_norm(state.lam["weight"])) > 1e-3


@pytest.mark.parametrize("inner_steps", [2, 3])
def test_moml_several_inner_steps_match_hand_computation(inner_steps: int) -> None:
    """Catches a meta-gradient that always takes one inner step, whatever ``inner_steps`` says."""
    cfg = MOMLConfig(K=3, inner_lr=0.5, inner_steps=inner_steps, alpha=5.0, clip_norm=0.8)
    _two_rounds_against_hand(cfg)
    stream, _, theta0 = _setup(2)
    # Guard: the same round with one inner step lands elsewhere, so the oracle tells the two apart.
    one_step = MOMLConfig(K=3, inner_lr=0.5, inner_steps=1, alpha=5.0, clip_norm=0.8)
    reg = ([torch.zeros_like(t) for t in theta0], list(theta0), cfg.alpha)
    hand_gen, one_gen = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    many = _hand_meta_sgd(list(theta0), stream, lambda: 0, cfg, hand_gen, reg, [])
    one = _hand_meta_sgd(list(theta0), stream, lambda: 0, one_step, one_gen, reg, [])
    assert float((many[0] - one[0]).abs().max()) > 1e-4


def test_bmoml_rounds_match_hand_computation_with_random_buffer() -> None:
    stream, learner, theta = _setup(5)
    cfg = BMOMLConfig(K=3, inner_lr=0.5, alpha=2.0, clip_norm=0.8, buffer_size=2)
    algo = BMOML(cfg, learner)
    state = algo.init_state(learner.init_params())
    gen, hand_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    lam, omega = [torch.zeros_like(t) for t in theta], list(theta)
    buffer: list[int] = []
    clips: list[float] = []
    kept_older = False
    for t in range(5):
        state = algo.round(state, t, stream, gen)
        if len(buffer) < 2:  # append until full, then the current task overwrites a random slot
            buffer.append(t)
        else:
            buffer[_randint(hand_gen, 2)] = t
        draw = lambda: buffer[_randint(hand_gen, len(buffer))]  # noqa: E731
        theta = _hand_meta_sgd(theta, stream, draw, cfg, hand_gen, (lam, omega, cfg.alpha), clips)
        lam, omega = _hand_state_update(theta, lam, omega, cfg.alpha)
        assert list(state.buffer) == buffer
        kept_older |= set(buffer) != {t - 1, t}
        for got, want in zip((state.theta, state.lam, state.omega), (theta, lam, omega), strict=True):
            _assert_params(got, want)
    assert kept_older  # the random policy kept an older task in some round (not a sliding window)


def test_ftml_rounds_match_hand_computation() -> None:
    stream, learner, theta = _setup(4)
    cfg = FTMLConfig(K=3, inner_lr=0.5, clip_norm=0.8)
    algo = FTML(cfg, learner)
    state = algo.init_state(learner.init_params())
    gen, hand_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    drawn: list[int] = []
    clips: list[float] = []
    for t in range(4):

        def draw(t: int = t) -> int:  # uniform over all seen tasks 0..t
            drawn.append(_randint(hand_gen, t + 1))
            return drawn[-1]

        state = algo.round(state, t, stream, gen)
        theta = _hand_meta_sgd(theta, stream, draw, cfg, hand_gen, None, clips)
        _assert_params(state.theta, theta)
    assert len(set(drawn)) > 2  # steps really drew past tasks


def test_toe_rounds_match_hand_sgd_on_pooled_data() -> None:
    stream, learner, theta0 = _setup(3)
    cfg = TOEConfig(K=5, clip_norm=0.5, batch_size=8)
    algo = TOE(cfg, learner)
    state = algo.init_state(learner.init_params())
    gen, hand_gen = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    clips: list[float] = []
    for t in range(3):
        state = algo.round(state, t, stream, gen)
        x, y = stream.train.x[: t + 1].flatten(0, 1), stream.train.y[: t + 1].flatten(0, 1)
        w, b = theta0  # re-initialised every round
        batches: list[Tensor] = []
        while len(batches) < cfg.K:  # a reshuffled pass over the pool, the incomplete last batch dropped
            perm = torch.randperm(x.shape[0], generator=hand_gen)
            full = x.shape[0] // cfg.batch_size * cfg.batch_size
            batches += list(perm[:full].split(cfg.batch_size))
        for idx in batches[: cfg.K]:
            gw, gb = _grad(w, b, x[idx], y[idx])
            w, b = _clipped_sgd(w, b, gw, gb, cfg.clip_norm, cfg.lr, cfg.weight_decay, clips)
        _assert_params(state.theta, [w, b])
    assert min(clips) < 1.0
