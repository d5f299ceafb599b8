"""The online meta-learning protocol (Finn et al. 2019; Acar et al. 2021, MOML) and its batched CTM/LTM
evaluation, as in the official MOML code (github.com/ruizhaoz/MOML).

Per round t (0-based here, 1-based in the records)::

    CTM_t = test_t(U_eval_t(θ_{t-1}))        before the update (after it for TOE/FS, ``ctm_after_update``)
    state <- algo.round(state, t, stream, generator)
    LTM_t = (1/(t+1)) Σ_{k<=t} test_k(U_eval_k(θ_t))

U_eval (that code's ``get_maml_acc_loss``): ``steps`` full-batch GD steps on all of the task's
train images, mean cross-entropy, each step's gradient clipped to global norm ``clip_norm``, no weight
decay; then mean CE and accuracy on the task's test images. Records also carry the running averages
(1/t)Σ_{s<=t} of the four per-round values (the reference's ``*_Avg``).

The LTM needs Σ_t t = T(T+1)/2 fine-tune-and-test evaluations, so :func:`finetune_and_test` evaluates many
tasks at once: ``torch.func.vmap`` over tasks (shared parameters, per-task data, per-task clipping), in
chunks. A model type may register an exact faster path in :data:`EXACT_U_EVAL`; the
:class:`~metacli.engine.models.mlp.MLP` registers the Gram-matrix path of :mod:`.online_fast`, whose
data-only Gram matrices :func:`run_online` computes once per stream (:class:`~.online_fast.StreamGram`) and
which evaluates all of a round's (lr, steps) variants from one first-layer product.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from metacli.engine.functional import Learner, accuracy, clip_by_global_norm
from metacli.engine.guards import Diverged, Stopped, all_finite
from metacli.engine.inner import descend, sgd_rule
from metacli.engine.models.mlp import MLP
from metacli.engine.online_fast import ExactUEval, StreamGram, gram_u_eval
from metacli.engine.parallel import DataParallel
from metacli.engine.types import Batch, OnlineAlgorithm, OnlineStream, Params, Progress

S = TypeVar("S")

CHUNK_SIZE = 128
"""Tasks per vmap call of the generic path (bounds memory: about CHUNK_SIZE × steps × |θ| floats)."""

EXACT_U_EVAL: dict[type[nn.Module], Callable[[Learner], ExactUEval | None]] = {MLP: gram_u_eval}
"""Exact faster U_eval paths, keyed by model type: each returns the path for a learner, or None where
it does not apply (then the generic vmap path runs). Each is tested equal to the vmap path."""


def _adapt_and_test(
    learner: Learner, params: Params, train: Batch, test: Batch, lr: float, steps: int, clip_norm: float
) -> tuple[Tensor, Tensor]:
    """U_eval on one task, then (mean CE, accuracy) on its test set; vmap-able."""
    rule = sgd_rule(lr, clip=functools.partial(clip_by_global_norm, max_norm=clip_norm))
    phi, _ = descend(lambda k, p: learner.loss(p, train), params, steps, rule, create_graph=False)
    out = learner.forward(phi, test.x)
    return learner.loss_of_output(out, test.y), accuracy(out, test.y)


def finetune_and_test_vmap(
    learner: Learner,
    params: Params,
    stream: OnlineStream,
    task_ids: Tensor,
    lr: float,
    steps: int,
    clip_norm: float,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """The generic batched U_eval: ``vmap`` over tasks (params in_dims=None), ``chunk_size`` at a time."""

    def one(train: Batch, test: Batch) -> tuple[Tensor, Tensor]:
        return _adapt_and_test(learner, params, train, test, lr, steps, clip_norm)

    batched = torch.func.vmap(one)
    losses, accs = [], []
    for ids in torch.split(task_ids.to(stream.train.x.device), chunk_size):
        train = Batch(stream.train.x[ids], stream.train.y[ids])
        loss, acc = batched(train, Batch(stream.test.x[ids], stream.test.y[ids]))
        losses.append(loss)
        accs.append(acc)
    return torch.cat(losses), torch.cat(accs)


def finetune_and_test(
    learner: Learner,
    params: Params,
    stream: OnlineStream,
    task_ids: Tensor,
    variants: Sequence[tuple[float, int]],
    clip_norm: float,
    fast: bool = True,
    cache: StreamGram | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """Per-task (test loss, test accuracy) of U_eval(params) for each (lr, steps) in ``variants``.

    With ``fast`` the exact path registered for the model's type in :data:`EXACT_U_EVAL` runs where it
    applies, else the generic vmap path; ``cache`` (a :class:`StreamGram` of ``stream``, read only by an
    exact path) spares recomputing data-only quantities on every call.
    """
    params = {k: v.detach() for k, v in params.items()}
    exact = EXACT_U_EVAL.get(type(learner.model))
    path = exact(learner) if fast and exact is not None else None
    with torch.no_grad():
        if path is not None:
            return path(learner, params, stream, task_ids, variants, clip_norm, cache)
        return [
            finetune_and_test_vmap(learner, params, stream, task_ids, lr, steps, clip_norm)
            for lr, steps in variants
        ]


def _evaluate(
    algo: OnlineAlgorithm[Any],
    learner: Learner,
    stream: OnlineStream,
    params: Params,
    task_ids: Tensor,
    cache: StreamGram | None,
    parallel: DataParallel | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy over ``task_ids`` for each evaluation variant, keyed loss{sfx}, acc{sfx}.

    With ``parallel`` each rank fine-tunes and tests its share of ``task_ids``; the per-task results are
    gathered in task order on every rank before the means.
    """
    variants = algo.eval_variants
    n = task_ids.numel()
    local = task_ids if parallel is None else task_ids[parallel.share(n)]
    if local.numel() > 0:
        got = finetune_and_test(
            learner, params, stream, local, list(variants.values()), algo.eval_clip_norm, cache=cache
        )
    else:  # fewer tasks than ranks: this rank has none, but still takes part in the gathers
        empty = next(iter(params.values())).new_zeros(0)
        got = [(empty, empty) for _ in variants]
    out: dict[str, float] = {}
    for sfx, (loss, acc) in zip(variants, got, strict=True):
        if parallel is not None:
            loss, acc = parallel.gather(loss, n), parallel.gather(acc, n)
        out[f"loss{sfx}"], out[f"acc{sfx}"] = float(loss.mean()), float(acc.mean())
    return out


def _record(
    round_1: int, ctm: Mapping[str, float], ltm: Mapping[str, float], sums: dict[str, float]
) -> dict[str, float]:
    """The per-round values plus their running averages; ``sums`` is updated in place."""
    rec: dict[str, float] = {"round": round_1}
    for kind, vals in (("ctm", ctm), ("ltm", ltm)):
        for key, v in vals.items():
            metric, _, sfx = key.partition("_")
            name = f"{kind}_{metric}"
            sfx = f"_{sfx}" if sfx else ""
            sums[name + sfx] = sums.get(name + sfx, 0.0) + v
            rec[name + sfx] = v
            rec[f"{name}_avg{sfx}"] = sums[name + sfx] / round_1
    return rec


def _sums_from(prior: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Running sums of the per-round values in previous records (for resuming)."""
    sums: dict[str, float] = {}
    for rec in prior:
        for key, v in rec.items():
            if key.startswith(("ctm_", "ltm_")) and "_avg" not in key:
                sums[key] = sums.get(key, 0.0) + v
    return sums


def run_online(
    algo: OnlineAlgorithm[S],
    learner: Learner,
    stream: OnlineStream,
    theta0: Params,
    generator: torch.Generator,
    on_round: Callable[[dict[str, float]], None],
    start_round: int = 0,
    state: S | None = None,
    progress: Progress | None = None,
    ltm: bool = True,
    prior: Sequence[Mapping[str, float]] = (),
    on_checkpoint: Callable[[int, S], None] | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    wall_offset: float = 0.0,
    parallel: DataParallel | None = None,
) -> S:
    """Run rounds ``start_round..T-1`` of the online protocol; one record per round to ``on_round``.

    Resuming: pass the saved ``state`` (``algo.load_state``), ``start_round`` = rounds done, ``prior`` = the
    records already written (restores running averages), ``wall_offset`` = the seconds already run (logged
    ``wall_time`` continues from it), and a CPU generator whose state was saved with the algorithm state
    (``on_checkpoint(rounds_done, state)`` is called after every round: save ``algo.state_dict(state)``
    and ``generator.get_state()`` there). ``progress(rounds_done, running averages)`` is called after
    every round. Without ``ltm`` the LTM keys are NaN. With ``parallel`` every rank
    runs the rounds (the same updates) and the LTM's seen tasks are split across the ranks.

    Raises:
        Diverged: the model became non-finite in a round (before it is recorded or checkpointed).
        Stopped: ``stop_requested()`` turned true; raised after the round's ``on_checkpoint``, which
            should save when it does.
    """
    state = algo.init_state(theta0) if state is None else state
    sums = _sums_from(prior)
    t_start = time.perf_counter() - wall_offset
    cache = StreamGram(stream)  # data-only Gram matrices, computed at the first fast-path evaluation
    for t in range(start_round, stream.train.x.shape[0]):
        current = torch.tensor([t])
        if not algo.ctm_after_update:
            ctm = _evaluate(algo, learner, stream, algo.eval_model(state), current, cache)
        state = algo.round(state, t, stream, generator)
        if not all_finite(algo.eval_model(state).values()):
            raise Diverged(t + 1, "model")
        if algo.ctm_after_update:
            ctm = _evaluate(algo, learner, stream, algo.eval_model(state), current, cache)
        if ltm:
            seen = torch.arange(t + 1)
            ltm_vals = _evaluate(algo, learner, stream, algo.eval_model(state), seen, cache, parallel)
        else:
            ltm_vals = {k: float("nan") for k in ctm}
        rec = _record(t + 1, ctm, ltm_vals, sums)
        task_b, state_b = algo.held_bytes(state, t, stream)
        rec.update(
            wall_time=time.perf_counter() - t_start, task_bytes=float(task_b), state_bytes=float(state_b)
        )
        on_round(rec)
        stopping = stop_requested()
        if on_checkpoint is not None:
            on_checkpoint(t + 1, state)
        if progress is not None:
            progress(t + 1, {k: v for k, v in rec.items() if k.endswith("_avg")})
        if stopping and t + 1 < stream.train.x.shape[0]:
            raise Stopped(t + 1)
    return state
