"""Baselines of the online protocol: FTML, MOGD, TOE and FS (official MOML code, github.com/ruizhaoz/MOML).

- **FTML** (follow the meta leader, Finn, Rajeswaran, Kakade, Levine, ICML 2019), as approximated by the
  MOML code: K warm-started second-order meta-SGD steps per round, each on a task drawn uniformly from
  all seen tasks 0..t (current included). Memory: all t+1 tasks' data plus d.
- **MOGD** (meta online gradient descent): the same K steps on the current task only; MOML with the
  regulariser removed (α = 0, λ ≡ 0), so it is run by MOML (:class:`~.moml.MOGD`, re-exported here).
  Memory: one task plus d.
- **TOE** (train on everything): every round re-initialises to θ₀ (kept as in the reference,
  ``train_TOE``) and runs K plain SGD steps (batch 10, lr 0.1, wd 1e-4, clip 3, cross-entropy) on the pooled
  train data of tasks 0..t. Memory: all data plus θ₀ and θ.
- **FS** (from scratch): no training; θ₀ is evaluated every round. Memory: θ₀.

TOE and FS measure CTM **after** the round's training (``ctm_after_update``; the reference's
"Evaluation of TOE is a bit different") and are evaluated three ways (as the reference): fine-tuned
(lr 0.1, 1 step), fine-tuned (lr 0.1, 5 steps) and not fine-tuned. ``eval_variant`` picks the primary
one; the others are logged under suffixed keys (``_ft1``, ``_ft5``, ``_noft``). See docs/online.md.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch

from metacli.engine.algorithms.moml import (
    MOGD,
    OnlineLearner,
    meta_sgd_round,
    params_to_cpu,
    task_bytes,
)
from metacli.engine.config.algorithms import FSConfig, FTMLConfig, MOGDConfig, TOEConfig
from metacli.engine.functional import clip_by_global_norm, tensor_bytes
from metacli.engine.inner import descend, sgd_rule
from metacli.engine.types import Batch, OnlineStream, Params


class ThetaState(NamedTuple):
    """The state of FTML and FS: the meta-parameters θ only."""

    theta: Params


class _ThetaOnly:
    """State handling of the algorithms whose whole state is one parameter set θ (FTML, FS)."""

    def init_state(self, theta0: Params) -> ThetaState:
        """θ = θ₀."""
        return ThetaState({k: v.detach().clone() for k, v in theta0.items()})

    def eval_model(self, state: ThetaState) -> Params:
        """θ, the model CTM/LTM fine-tune from."""
        return state.theta

    def state_dict(self, state: ThetaState) -> dict[str, Any]:
        """θ as CPU tensors."""
        return {"theta": params_to_cpu(state.theta)}

    def load_state(self, d: dict[str, Any]) -> ThetaState:
        """Inverse of :meth:`state_dict`."""
        return ThetaState(dict(d["theta"]))


class FTML(_ThetaOnly, OnlineLearner[FTMLConfig]):
    """FTML: K warm-started second-order outer steps per round, each on a task drawn uniformly from 0..t
    (perfect recall), no regulariser."""

    def round(
        self, state: ThetaState, t: int, stream: OnlineStream, generator: torch.Generator
    ) -> ThetaState:
        """K outer steps, each on a uniformly drawn seen task."""

        def draw_task() -> int:
            return int(torch.randint(t + 1, (1,), generator=generator).item())

        theta = meta_sgd_round(self.learner, state.theta, stream, draw_task, self.cfg, generator, None)
        return ThetaState(theta)

    def held_bytes(self, state: ThetaState, t: int, stream: OnlineStream) -> tuple[int, int]:
        """(all t+1 tasks' train data, θ): linear in t."""
        return (t + 1) * task_bytes(stream), tensor_bytes(state.theta)


class TOEState(NamedTuple):
    """TOE's state: θ₀ (re-initialisation point) and θ_t (the round's trained model)."""

    theta0: Params
    theta: Params


class TOE(OnlineLearner[TOEConfig]):
    """TOE (MOML code, ``train_TOE``): from θ₀ every round, K SGD steps on the pooled data of tasks 0..t.

    The pool is shuffled (generator) and walked in consecutive batches of ``batch_size``, reshuffled when
    fewer than a batch remain (a shuffled DataLoader over the pool, incomplete last batch dropped).
    """

    ctm_after_update = True

    def init_state(self, theta0: Params) -> TOEState:
        """θ₀ kept for the per-round re-initialisation."""
        theta0 = {k: v.detach().clone() for k, v in theta0.items()}
        return TOEState(theta0, dict(theta0))

    def _batches(self, n_pool: int, generator: torch.Generator) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        while len(out) < self.cfg.K:
            perm = torch.randperm(n_pool, generator=generator)
            n_full = max(1, n_pool // self.cfg.batch_size)
            out += list(torch.split(perm[: n_full * self.cfg.batch_size], self.cfg.batch_size))
        return out[: self.cfg.K]

    def round(self, state: TOEState, t: int, stream: OnlineStream, generator: torch.Generator) -> TOEState:
        """Re-initialise to θ₀ (reference behaviour), then K clipped SGD steps on tasks 0..t."""
        x = stream.train.x[: t + 1].flatten(0, 1)
        y = stream.train.y[: t + 1].flatten(0, 1)
        batches = [idx.to(x.device) for idx in self._batches(x.shape[0], generator)]
        clip = functools.partial(clip_by_global_norm, max_norm=self.cfg.clip_norm)
        rule = sgd_rule(self.cfg.lr, self.cfg.weight_decay, clip)

        def loss_at(k: int, theta: Params) -> torch.Tensor:
            return self.learner.loss(theta, Batch(x[batches[k]], y[batches[k]]))

        theta, _ = descend(loss_at, state.theta0, len(batches), rule, create_graph=False)
        return TOEState(state.theta0, theta)

    def eval_model(self, state: TOEState) -> Params:
        """θ_t (trained this round from θ₀)."""
        return state.theta

    def held_bytes(self, state: TOEState, t: int, stream: OnlineStream) -> tuple[int, int]:
        """(all t+1 tasks' train data, θ₀ + θ): linear in t."""
        return (t + 1) * task_bytes(stream), tensor_bytes(state.theta0) + tensor_bytes(state.theta)

    def state_dict(self, state: TOEState) -> dict[str, Any]:
        """θ₀ and θ as CPU tensors."""
        return {"theta0": params_to_cpu(state.theta0), "theta": params_to_cpu(state.theta)}

    def load_state(self, d: dict[str, Any]) -> TOEState:
        """Inverse of :meth:`state_dict`."""
        return TOEState(dict(d["theta0"]), dict(d["theta"]))


class FS(_ThetaOnly, OnlineLearner[FSConfig]):
    """FS (MOML code, ``train_FS``): no training; every round evaluates θ₀ (CTM after the no-op update,
    as TOE)."""

    ctm_after_update = True

    def round(
        self, state: ThetaState, t: int, stream: OnlineStream, generator: torch.Generator
    ) -> ThetaState:
        """No training."""
        return state

    def held_bytes(self, state: ThetaState, t: int, stream: OnlineStream) -> tuple[int, int]:
        """(no task data, θ₀): constant."""
        return 0, tensor_bytes(state.theta)


__all__ = ["FS", "FTML", "MOGD", "TOE", "FSConfig", "FTMLConfig", "MOGDConfig", "TOEConfig"]
