"""``algorithm.remat`` (issue 25): the MAML family's exact meta-gradient with the inner steps recomputed.

- float64: the meta-gradient of every key (theta and the extras) with remat equals the unrolled graph's to
  1e-12, for K = 1, 3, 10, on a tiny Conv4 with batch norm and on the MLP, for maml, lslr, metacurvature and
  sparse_maml (second order), and at K = 3 on Conv4 for every other variant;
- remat really recomputes: each inner step's support loss runs twice per task (first order in the
  forward pass, differentiable in the backward pass), and once without remat or at first order, so a
  remat that silently kept the unrolled graph fails;
- remat's backward pass recomputes every block twice per step, in channel groups (:mod:`metacli.engine.hvp`);
  Conv4 runs its staged product here, not the whole network's that so small a task would take
  (``hvp.WHOLE_BELOW`` set to 0), so the equalities above hold for the staged reverse pass; the MLP, one
  stage, checks the whole network's;
- the executors: vmap cannot batch its autograd.Function, so a spec asking for both is refused,
  ``meta_step`` refuses it too, and ``executor: auto`` picks the loop.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from metacli.engine import hvp
from metacli.engine.algorithms.maml import MAML
from metacli.engine.config.algorithms import MAML_VARIANTS, MAMLConfig
from metacli.engine.functional import Learner
from metacli.engine.models import build_model, layers
from metacli.engine.models.conv4 import Conv4Config
from metacli.engine.models.mlp import MLPConfig
from metacli.engine.types import Batch, Params, Task
from metacli.errors import SpecError
from metacli.runlayer.parts import build_run
from metacli.spec import load_spec
from tests.engine.test_adapt_norm import conv4_tasks

F64 = torch.float64
N_TASKS, WAYS, SHOTS, QUERIES = 2, 3, 1, 2
VARIANTS = {cfg.model_fields["name"].default: cfg for cfg in MAML_VARIANTS}
REQUIRED = ("maml", "lslr", "metacurvature", "sparse_maml")
"""The variants checked at every K on both models; the others at one K on Conv4."""


@pytest.fixture(autouse=True)
def staged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Conv4's Hessian-vector products stage by stage, however small the task."""
    monkeypatch.setattr(hvp, "WHOLE_BELOW", 0)


def conv4_with_norm() -> tuple[Learner, Task]:
    """Conv4, 4 filters, batch norm, max pooling on 1x28x28 images (28 -> 14 -> 7 -> 3 -> 1), 3-way 1-shot."""
    return conv4_tasks(Conv4Config(filters=4, pool="max"), 28, (N_TASKS, WAYS, SHOTS, QUERIES), seed=1)


def mlp_regression() -> tuple[Learner, Task]:
    """The MLP (two hidden layers of 8) on sinusoid-shaped 1-D regression tasks of 5 + 5 points."""
    torch.manual_seed(0)
    net = build_model(MLPConfig(hidden=[8, 8]), (1,), 1).to(F64)
    gen = torch.Generator().manual_seed(1)

    def batch() -> Batch:
        x = torch.rand(N_TASKS, 5, 1, generator=gen, dtype=F64) * 10 - 5
        return Batch(x, torch.sin(x + torch.arange(N_TASKS, dtype=F64).view(-1, 1, 1)))

    return Learner(net, "mse"), Task(batch(), batch())


MODELS = {"conv4": conv4_with_norm, "mlp": mlp_regression}


def config(name: str, steps: int, remat: bool) -> MAMLConfig:
    """The variant at K steps, second order (Sparse-MAML's code default is first order), alpha 0.1."""
    first_order = name == "fomaml"  # the one variant that is first order by name
    return VARIANTS[name](alpha=0.1, inner_steps=steps, first_order=first_order, remat=remat)


def moved_meta(algo: MAML, learner: Learner) -> Params:
    """Meta-parameters with every extra moved off its initialisation (masks, rates, curvature), as leaves.

    At their init the extras are uniform (ones, identities, alpha); random offsets make a key mixed up
    between steps or tensors show in the meta-gradient.
    """
    meta = algo.init_meta(learner.init_params())
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for k, v in meta.items():
            if ":" in k:
                v.add_(0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype))
    return meta


def meta_grads(model: str, name: str, steps: int, remat: bool) -> Params:
    learner, tasks = MODELS[model]()
    algo = MAML(config(name, steps, remat), learner)
    return algo.meta_step(moved_meta(algo, learner), tasks, executor="loop").grads


def assert_equal_grads(plain: Params, remat: Params) -> None:
    assert plain.keys() == remat.keys()
    for k in plain:
        torch.testing.assert_close(remat[k], plain[k], rtol=0, atol=1e-12, msg=k)
    assert all(float(g.abs().max()) > 0 for g in plain.values() if g.dim() > 0)  # every key is reached


@pytest.mark.parametrize("steps", [1, 3, 10])
@pytest.mark.parametrize("name", REQUIRED)
@pytest.mark.parametrize("model", sorted(MODELS))
def test_remat_meta_gradient_equals_the_unrolled_graph(model: str, name: str, steps: int) -> None:
    assert_equal_grads(meta_grads(model, name, steps, False), meta_grads(model, name, steps, True))


@pytest.mark.parametrize("name", sorted(set(VARIANTS) - set(REQUIRED)))
def test_remat_meta_gradient_of_every_other_variant(name: str) -> None:
    assert_equal_grads(meta_grads("conv4", name, 3, False), meta_grads("conv4", name, 3, True))


def test_the_equality_is_not_the_first_order_one() -> None:
    """At K = 3 second order differs from FOMAML: the equalities above compare the Hessian terms too."""
    second = meta_grads("conv4", "maml", 3, False)
    first = meta_grads("conv4", "fomaml", 3, False)
    assert max(float((second[k] - first[k]).abs().max()) for k in second) > 1e-6


def support_losses_run(name: str, steps: int, remat: bool) -> int:
    """How many times one meta-step evaluates a support loss (an inner step's forward): the head's calls on
    a support set, whichever path (the whole model, or remat's chain of stages) runs it."""
    learner, tasks = conv4_with_norm()
    calls = 0

    def count(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal calls
        calls += inputs[0].shape[0] == WAYS * SHOTS  # the query loss is not an inner step

    learner.model.head.register_forward_hook(count)  # type: ignore[union-attr]
    algo = MAML(config(name, steps, remat), learner)
    algo.meta_step(algo.init_meta(learner.init_params()), tasks, executor="loop")
    return calls


def test_remat_recomputes_each_inner_step() -> None:
    assert support_losses_run("maml", 3, False) == N_TASKS * 3
    assert support_losses_run("maml", 3, True) == N_TASKS * 3 * 2
    assert support_losses_run("fomaml", 3, True) == N_TASKS * 3  # first order: nothing to recompute


@pytest.mark.parametrize("remat", [True, False])
def test_remat_recomputes_every_block_twice_in_channel_groups(
    monkeypatch: pytest.MonkeyPatch, remat: bool
) -> None:
    """remat's backward runs every Conv4 block twice per inner step (the tangent sweep and the backward
    sweep of :mod:`metacli.engine.hvp`) in channel groups: 4 + 1 + 1 + 1 for 4 filters on 28x28 inputs (the
    first block, largest, in four groups of one channel; the second, a quarter its size, in one). No pass
    runs under a functorch transform (the tangents are dual tensors), so every one takes the fused batch
    norm."""
    calls = {"fused": 0, "primitive": 0}
    for kind in calls:
        original = getattr(layers, f"batch_norm_{kind}")

        def spy(*args: Any, kind: str = kind, original: Any = original) -> torch.Tensor:
            calls[kind] += 1
            return original(*args)  # type: ignore[no-any-return]

        monkeypatch.setattr(layers, f"batch_norm_{kind}", spy)
    learner, tasks = conv4_with_norm()
    algo = MAML(config("maml", 3, remat), learner)
    algo.meta_step(algo.init_meta(learner.init_params()), tasks, executor="loop")
    blocks, groups = 4, 4 + 1 + 1 + 1  # a batch norm per Conv4 block (per channel group)
    recomputed = N_TASKS * 3 * 2 * groups if remat else 0  # 3 steps, 2 sweeps
    assert calls["primitive"] == 0
    forwards = N_TASKS * (3 + 1) * blocks  # the inner steps' and the query's
    assert calls["fused"] == forwards + recomputed


def test_remat_is_refused_with_the_vmap_executor() -> None:
    with pytest.raises(SpecError, match="algorithm.remat"):
        load_spec(algo="maml", dataset="sinusoid", overrides=["algorithm.remat=true", "train.executor=vmap"])
    learner, tasks = mlp_regression()
    algo = MAML(config("maml", 2, True), learner)
    with pytest.raises(SpecError, match="loop executor only"):
        algo.meta_step(algo.init_meta(learner.init_params()), tasks, executor="vmap")


@pytest.mark.parametrize(("remat", "chosen"), [(True, "loop"), (False, "vmap")])
def test_auto_picks_the_loop_with_remat(remat: bool, chosen: str) -> None:
    """On sinusoid inputs at meta-batch 25 ``auto`` picks vmap, but not for a run with remat."""
    spec, _ = load_spec(
        algo="maml",
        dataset="sinusoid",
        overrides=[f"algorithm.remat={str(remat).lower()}", "train.executor=auto"],
    )
    assert build_run(spec, device="cpu").spec.train.executor == chosen
