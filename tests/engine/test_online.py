"""The online protocol, the batched CTM/LTM evaluation, and MOML's baselines on small synthetic streams."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from pydantic import TypeAdapter
from torch import Tensor

from metacli.engine.algorithms import ONLINE_ALGORITHMS, AlgorithmConfig
from metacli.engine.algorithms.moml import BMOML, MOML, BMOMLConfig, MOMLConfig, update_buffer
from metacli.engine.algorithms.online_baselines import (
    FS,
    FTML,
    MOGD,
    TOE,
    FSConfig,
    FTMLConfig,
    MOGDConfig,
    TOEConfig,
)
from metacli.engine.functional import Learner, tensor_bytes
from metacli.engine.models.mlp import MLP
from metacli.engine.online import (
    finetune_and_test,
    finetune_and_test_vmap,
    run_online,
)
from metacli.engine.online_fast import StreamGram
from metacli.engine.types import Batch, OnlineStream, Params

N_TASKS, N_TRAIN, N_TEST, N_CLS = 6, 20, 5, 3


def make_stream(dtype: torch.dtype = torch.float64, n_tasks: int = N_TASKS, seed: int = 0) -> OnlineStream:
    g = torch.Generator().manual_seed(seed)
    train = Batch(
        torch.randn(n_tasks, N_TRAIN, 1, 4, 4, generator=g, dtype=dtype),
        torch.randint(N_CLS, (n_tasks, N_TRAIN), generator=g),
    )
    test = Batch(
        torch.randn(n_tasks, N_TEST, 1, 4, 4, generator=g, dtype=dtype),
        torch.randint(N_CLS, (n_tasks, N_TEST), generator=g),
    )
    return OnlineStream(train, test, N_CLS)


def make_learner(dtype: torch.dtype = torch.float64, hidden: tuple[int, ...] = (8,)) -> Learner:
    torch.manual_seed(1)
    return Learner(MLP(16, hidden, N_CLS).to(dtype), "cross_entropy")


def loop_reference(
    learner: Learner, params: Params, stream: OnlineStream, ids: list[int], lr: float, steps: int, clip: float
) -> tuple[Tensor, Tensor, int]:
    """U_eval per task with plain autograd in a Python loop; also counts the clipped steps."""
    losses, accs, n_clipped = [], [], 0
    for t in ids:
        phi = {k: v.clone() for k, v in params.items()}
        for _ in range(steps):
            leaves = [v.requires_grad_(True) for v in phi.values()]
            loss = learner.loss(phi, Batch(stream.train.x[t], stream.train.y[t]))
            grads = torch.autograd.grad(loss, leaves)
            norm = torch.sqrt(sum((g**2).sum() for g in grads))  # type: ignore[arg-type]
            scale = min(1.0, clip / (float(norm) + 1e-6))
            n_clipped += scale < 1.0
            phi = {k: (v - lr * scale * g).detach() for (k, v), g in zip(phi.items(), grads, strict=True)}
        out = learner.forward(phi, stream.test.x[t])
        losses.append(learner.loss_of_output(out, stream.test.y[t]).detach())
        accs.append((out.argmax(-1) == stream.test.y[t]).double().mean())
    return torch.stack(losses), torch.stack(accs), n_clipped


@pytest.mark.parametrize("hidden", [(8,), (8, 6)])
@pytest.mark.parametrize("steps,lr,clip", [(1, 0.1, 3.0), (5, 0.5, 0.3), (1, 1.0, 0.05)])
def test_finetune_and_test_batched_equals_loop(
    steps: int, lr: float, clip: float, hidden: tuple[int, ...]
) -> None:
    stream, learner = make_stream(), make_learner(hidden=hidden)
    params = learner.init_params()
    ids = [0, 2, 3, 5]
    want_loss, want_acc, n_clipped = loop_reference(learner, params, stream, ids, lr, steps, clip)
    assert (n_clipped > 0) == (clip < 1.0)
    task_ids = torch.tensor(ids)
    for got_loss, got_acc in (
        finetune_and_test_vmap(learner, params, stream, task_ids, lr, steps, clip, chunk_size=3),
        finetune_and_test(learner, params, stream, task_ids, [(lr, steps)], clip, fast=True)[0],
    ):
        torch.testing.assert_close(got_loss, want_loss, rtol=0, atol=1e-10)
        torch.testing.assert_close(got_acc, want_acc, rtol=0, atol=1e-10)


def test_fast_path_equals_vmap_path_float32() -> None:
    stream, learner = make_stream(torch.float32), make_learner(torch.float32)
    params, ids = learner.init_params(), torch.arange(N_TASKS)
    for steps in (1, 5):
        slow = finetune_and_test_vmap(learner, params, stream, ids, 0.5, steps, 0.5)
        fast = finetune_and_test(learner, params, stream, ids, [(0.5, steps)], 0.5, fast=True)[0]
        torch.testing.assert_close(fast[0], slow[0], rtol=1e-5, atol=1e-5)


def test_fast_path_cache_and_shared_variants() -> None:
    """The per-stream Gram cache and the shared trajectory of same-lr variants change no result."""
    stream, learner = make_stream(n_tasks=9), make_learner()
    cache = StreamGram(stream)
    variants = [(0.5, 5), (0.5, 1), (0.2, 2), (0.5, 0)]
    theta0 = learner.init_params()
    theta1 = {k: v + 0.1 * torch.randn_like(v) for k, v in theta0.items()}
    cases = ((theta0, torch.arange(4)), (theta1, torch.arange(9)), (theta1, torch.tensor([7, 1, 3])))
    for params, ids in cases:  # two models; contiguous and gathered task ids
        with_cache = finetune_and_test(learner, params, stream, ids, variants, 0.5, cache=cache)
        for (lr, steps), (loss, acc) in zip(variants, with_cache, strict=True):
            alone = finetune_and_test(learner, params, stream, ids, [(lr, steps)], 0.5)[0]
            want = finetune_and_test_vmap(learner, params, stream, ids, lr, steps, 0.5)
            torch.testing.assert_close(loss, alone[0], rtol=0, atol=1e-12)
            torch.testing.assert_close(acc, alone[1], rtol=0, atol=0)
            torch.testing.assert_close(loss, want[0], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="another stream"):
        finetune_and_test(learner, theta0, make_stream(seed=1), torch.arange(2), [(0.1, 1)], 3.0, cache=cache)


def run_rounds(algo: Any, stream: OnlineStream, learner: Learner, n: int, seed: int = 0) -> list[Any]:
    state, gen = algo.init_state(learner.init_params()), torch.Generator().manual_seed(seed)
    states = []
    for t in range(n):
        state = algo.round(state, t, stream, gen)
        states.append(state)
    return states


def test_mogd_equals_moml_without_regulariser() -> None:
    stream, learner = make_stream(torch.float32), make_learner(torch.float32)
    shared = {"K": 3, "batch_size": 5, "inner_lr": 0.1}
    moml = run_rounds(MOML(MOMLConfig(alpha=0.0, **shared), learner), stream, learner, 3)
    mogd = run_rounds(MOGD(MOGDConfig(**shared), learner), stream, learner, 3)
    theta0 = learner.init_params()
    for s_moml, s_mogd in zip(moml, mogd, strict=True):
        assert all(torch.equal(s_moml.theta[k], s_mogd.theta[k]) for k in theta0)
        assert all(torch.equal(s_moml.lam[k], torch.zeros_like(v)) for k, v in theta0.items())
    assert not torch.equal(mogd[-1].theta["head.weight"], theta0["head.weight"])


def test_held_bytes_constant_linear_or_bounded() -> None:
    stream, learner = make_stream(), make_learner()
    d = tensor_bytes(learner.init_params())
    per_task = tensor_bytes([stream.train.x[0], stream.train.y[0]])
    k1 = {"K": 1, "batch_size": 5}
    expected = {
        MOML(MOMLConfig(**k1), learner): lambda t: (per_task, 3 * d),
        MOGD(MOGDConfig(**k1), learner): lambda t: (per_task, d),
        FS(FSConfig(), learner): lambda t: (0, d),
        FTML(FTMLConfig(**k1), learner): lambda t: ((t + 1) * per_task, d),
        TOE(TOEConfig(K=1), learner): lambda t: ((t + 1) * per_task, 2 * d),
        BMOML(BMOMLConfig(buffer_size=2, **k1), learner): lambda t: (min(t + 1, 2) * per_task, 3 * d),
    }
    for algo, want in expected.items():
        for t, state in enumerate(run_rounds(algo, stream, learner, 4)):
            assert algo.held_bytes(state, t, stream) == want(t), (type(algo).__name__, t)


def test_bmoml_buffer_policies() -> None:
    gen = torch.Generator().manual_seed(0)
    last: tuple[int, ...] = ()
    rand: tuple[int, ...] = ()
    for t in range(8):
        last = update_buffer(last, t, 3, "last", gen)
        rand = update_buffer(rand, t, 3, "random", gen)
        assert last == tuple(range(max(0, t - 2), t + 1))
        assert t in rand and len(rand) == min(t + 1, 3) and len(set(rand)) == len(rand)
    assert rand != last


def test_toe_reinitialises_each_round() -> None:
    stream, learner = make_stream(), make_learner()
    algo = TOE(TOEConfig(K=3), learner)
    fresh = algo.init_state(learner.init_params())
    trained = algo.round(fresh, 0, stream, torch.Generator().manual_seed(0))
    a = algo.round(trained, 2, stream, torch.Generator().manual_seed(5))
    b = algo.round(fresh, 2, stream, torch.Generator().manual_seed(5))
    assert all(torch.equal(a.theta[k], b.theta[k]) for k in a.theta)


def collect(algo: Any, stream: OnlineStream, learner: Learner, **kw: Any) -> list[dict[str, float]]:
    records: list[dict[str, float]] = []
    run_online(
        algo, learner, stream, learner.init_params(), torch.Generator().manual_seed(0), records.append, **kw
    )
    return records


KEYS = {"round", "wall_time", "task_bytes", "state_bytes"} | {
    f"{k}_{m}{a}" for k in ("ctm", "ltm") for m in ("acc", "loss") for a in ("", "_avg")
}


def test_run_online_records_and_ctm_before_update() -> None:
    stream, learner = make_stream(n_tasks=5), make_learner()
    cfg = MOMLConfig(K=2, batch_size=5, inner_lr=0.1)
    records = collect(MOML(cfg, learner), stream, learner)
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5]
    assert all(set(r) == KEYS for r in records)
    for key in ("ctm_acc", "ctm_loss", "ltm_acc", "ltm_loss"):
        for i, r in enumerate(records):
            avg = sum(s[key] for s in records[: i + 1]) / (i + 1)
            assert r[f"{key}_avg"] == pytest.approx(avg, abs=1e-12)
    [(loss0, acc0)] = finetune_and_test(
        learner, learner.init_params(), stream, torch.tensor([0]), [(0.1, 1)], 3.0
    )
    assert records[0]["ctm_loss"] == pytest.approx(float(loss0), abs=1e-12)
    assert records[0]["ctm_acc"] == pytest.approx(float(acc0), abs=1e-12)
    assert records[0]["ltm_loss"] != pytest.approx(float(loss0), abs=1e-9)  # LTM is after the update


def test_fs_and_toe_log_all_variants_after_update() -> None:
    stream, learner = make_stream(n_tasks=3), make_learner()
    fs_records = collect(FS(FSConfig(eval_variant="ft5"), learner), stream, learner)
    variants = {f"{k}_{v}" for k in KEYS if k.startswith(("ctm", "ltm")) for v in ("ft1", "noft")}
    assert all(set(r) == KEYS | variants for r in fs_records)
    theta0 = learner.init_params()
    want = finetune_and_test(learner, theta0, stream, torch.tensor([2]), [(0.1, 5)], 3.0)[0][0]
    assert fs_records[2]["ctm_loss"] == pytest.approx(float(want), abs=1e-12)
    toe = TOE(TOEConfig(K=2), learner)
    toe_records = collect(toe, stream, learner, ltm=False)
    state = toe.round(toe.init_state(theta0), 0, stream, torch.Generator().manual_seed(0))
    want = finetune_and_test(learner, state.theta, stream, torch.tensor([0]), [(0.1, 0)], 3.0)[0][0]
    assert toe_records[0]["ctm_loss_noft"] == pytest.approx(float(want), abs=1e-12)
    assert toe_records[0]["ltm_acc"] != toe_records[0]["ltm_acc"]  # NaN without LTM


def small_algo(name: str, learner: Learner) -> Any:
    """The registry's algorithm ``name`` with its default config, shrunk for a 20-image stream."""
    cfg = TypeAdapter(AlgorithmConfig).validate_python({"name": name})
    small = {"K": 2, "batch_size": 5, "buffer_size": 2}
    cfg = cfg.model_copy(update={k: v for k, v in small.items() if k in type(cfg).model_fields})
    return ONLINE_ALGORITHMS[name](cfg, learner)


@pytest.mark.parametrize("name", sorted(ONLINE_ALGORITHMS))
def test_registry_contract_finite_deterministic_and_resumable(name: str) -> None:
    """Every online algorithm: finite metrics, identical records for the same seed, and a run resumed
    from ``state_dict`` after round 3 equal to a straight run."""
    stream, learner = make_stream(n_tasks=5), make_learner()
    algo = small_algo(name, learner)
    straight = collect(algo, stream, learner)
    assert all(math.isfinite(v) for r in straight for v in r.values())
    again = collect(algo, stream, learner)
    assert [{k: v for k, v in r.items() if k != "wall_time"} for r in straight] == [
        {k: v for k, v in r.items() if k != "wall_time"} for r in again
    ]
    first: list[dict[str, float]] = []
    saved: dict[str, Any] = {}
    gen = torch.Generator().manual_seed(0)

    def checkpoint(done: int, state: Any) -> None:
        if done == 3:
            saved.update(state=algo.state_dict(state), gen=gen.get_state())

    theta0 = learner.init_params()
    run_online(algo, learner, stream, theta0, gen, first.append, on_checkpoint=checkpoint)
    gen2 = torch.Generator()
    gen2.set_state(saved["gen"])
    rest: list[dict[str, float]] = []
    state = algo.load_state(saved["state"])
    final = run_online(algo, learner, stream, theta0, gen2, rest.append, 3, state, prior=first[:3])
    for want, got in zip(straight, first[:3] + rest, strict=True):
        assert {k: v for k, v in want.items() if k != "wall_time"} == {
            k: v for k, v in got.items() if k != "wall_time"
        }
    assert first[-1]["ltm_loss"] == rest[-1]["ltm_loss"]
    assert all(
        torch.equal(final.theta[k], v) for k, v in algo.load_state(algo.state_dict(final)).theta.items()
    )
