"""MOML's round against a hand computation (softmax regression, float64, explicit formulas).

The expected θ, λ, ω are computed with closed-form gradients and Hessian-vector products of the
linear softmax cross-entropy, independent of the MOML code path and of autograd. Only the support /
query draws are reproduced with the same generator seed (``randperm`` of the train set, first B = S,
next B = Q, one draw per outer step).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metacli.engine.algorithms.moml import MOML, MOMLConfig
from metacli.engine.functional import Learner
from metacli.engine.types import Batch, OnlineStream

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


def _hand_round(
    theta: list[Tensor], lam: list[Tensor], omega: list[Tensor], x: Tensor, y: Tensor,
    cfg: MOMLConfig, gen: torch.Generator, clips: list[float],
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:  # fmt: skip
    eta, wd, a, n_b = cfg.inner_lr, cfg.weight_decay, cfg.alpha, cfg.batch_size
    w, b = theta
    for _ in range(cfg.K):
        perm = torch.randperm(x.shape[0], generator=gen)
        s, q = perm[:n_b], perm[n_b : 2 * n_b]
        gsw, gsb = _grad(w, b, x[s], y[s])
        pw, pb = w - eta * (gsw + wd * w), b - eta * (gsb + wd * b)  # φ = U(θ; S)
        gqw, gqb = _grad(pw, pb, x[q], y[q])
        hw, hb = _hvp(w, b, x[s], gqw, gqb)  # dφ/dθ = (1 − η wd) I − η H_S(θ)
        gw = (1 - eta * wd) * gqw - eta * hw - lam[0] + a * (w - omega[0])
        gb = (1 - eta * wd) * gqb - eta * hb - lam[1] + a * (b - omega[1])
        norm = torch.sqrt((gw**2).sum() + (gb**2).sum())
        c = min(1.0, cfg.clip_norm / (float(norm) + 1e-6))
        clips.append(c)
        w, b = w - cfg.outer_lr * (c * gw + wd * w), b - cfg.outer_lr * (c * gb + wd * b)
    new_lam = [lam[0] - a * (w - omega[0]), lam[1] - a * (b - omega[1])]
    new_omega = [0.5 * (th + om) - la / (2 * a) for th, om, la in zip((w, b), omega, new_lam, strict=True)]
    return [w, b], new_lam, new_omega


def test_moml_two_rounds_match_hand_computation() -> None:
    torch.manual_seed(3)
    n_t, n_in, n_cls = 2, 6, 3
    stream = OnlineStream(
        Batch(torch.randn(n_t, 20, n_in, dtype=DT) * 2, torch.randint(n_cls, (n_t, 20))),
        Batch(torch.randn(n_t, 5, n_in, dtype=DT), torch.randint(n_cls, (n_t, 5))),
        n_cls,
    )
    learner = Learner(nn.Linear(n_in, n_cls).to(DT), "cross_entropy")
    cfg = MOMLConfig(K=4, inner_lr=0.5, alpha=5.0, clip_norm=0.8)
    algo = MOML(cfg, learner)
    theta0 = learner.init_params()
    state = algo.init_state(theta0)
    gen = torch.Generator().manual_seed(11)
    hand_gen = torch.Generator().manual_seed(11)
    theta = [theta0["weight"], theta0["bias"]]
    lam = [torch.zeros_like(t) for t in theta]
    omega = list(theta)
    clips: list[float] = []
    for t in range(n_t):
        state = algo.round(state, t, stream, gen)
        theta, lam, omega = _hand_round(
            theta, lam, omega, stream.train.x[t], stream.train.y[t], cfg, hand_gen, clips
        )
        for got, want in zip((state.theta, state.lam, state.omega), (theta, lam, omega), strict=True):
            torch.testing.assert_close(got["weight"], want[0], rtol=0, atol=1e-10)
            torch.testing.assert_close(got["bias"], want[1], rtol=0, atol=1e-10)
    assert min(clips) < 1.0 < max(clips) + 1e-12  # clipping active in some steps, not in all
    assert float(torch.linalg.vector_norm(state.lam["weight"])) > 1e-3
