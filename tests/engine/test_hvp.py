"""The staged gradient and Hessian-vector product (:mod:`metacli.engine.hvp`) against the whole network's.

The oracle is autograd's reverse over reverse on the whole loss, in float64: ``g = grad L`` and
``H u = grad <g, u>``. A sweep that dropped the pairing with ``d'`` (the second-order term carried between
stages), mixed up two stages' parameters or lost a channel group would differ by far more than 1e-10. The
checks run where the grouping really splits stages (several groups in the first block), on both Conv4
poolings, and on a model without stages (the MLP, one stage).
"""

from __future__ import annotations

import pytest
import torch

from metacli.engine import hvp
from metacli.engine.functional import Learner
from metacli.engine.models import build_model
from metacli.engine.models.conv4 import Conv4Config
from metacli.engine.models.mlp import MLPConfig
from metacli.engine.types import Batch, Params
from tests.engine.test_adapt_norm import conv4_tasks

F64 = torch.float64


def conv4_support(pool: str) -> tuple[Learner, Batch]:
    """Conv4 with 8 filters and batch norm on one 3-way 2-shot support set of 1x20x20 images, float64."""
    learner, tasks = conv4_tasks(Conv4Config(filters=8, pool=pool), 20, (1, 3, 2, 1), seed=5)  # type: ignore[arg-type]
    return learner, Batch(tasks.support.x[0], tasks.support.y[0])


def mlp_support() -> tuple[Learner, Batch]:
    """The MLP (hidden 16, 16) on 10 points of a 1-D regression, float64."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(10, 1, generator=gen, dtype=F64) * 10 - 5
    return Learner(build_model(MLPConfig(hidden=[16, 16]), (1,), 1).to(F64), "mse"), Batch(x, torch.sin(x))


@pytest.fixture(autouse=True)
def staged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage by stage however small the support set (the test that the floor applies sets its own)."""
    monkeypatch.setattr(hvp, "WHOLE_BELOW", 0)


SUPPORTS = {
    "conv4-max": lambda: conv4_support("max"),
    "conv4-stride": lambda: conv4_support("stride"),
    "mlp": mlp_support,
}


def random_like(params: Params, seed: int) -> Params:
    """A random tensor for every parameter (a point or a direction off the initialisation)."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}


def whole_network(learner: Learner, batch: Batch, params: Params, u: Params) -> tuple[Params, Params]:
    """``(grad L, H u)`` by reverse over reverse on the whole loss: the oracle."""
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    g = torch.autograd.grad(learner.loss(leaves, batch), list(leaves.values()), create_graph=True)
    hu = torch.autograd.grad(g, list(leaves.values()), [u[n] for n in leaves])
    return dict(zip(leaves, (t.detach() for t in g), strict=True)), dict(zip(leaves, hu, strict=True))


def perturbed(learner: Learner) -> Params:
    """The initial parameters moved by a random offset (batch-norm scales off one, biases off zero)."""
    init = learner.init_params()
    return {
        n: p.detach() + 0.1 * r for (n, p), r in zip(init.items(), random_like(init, 7).values(), strict=True)
    }


@pytest.mark.parametrize("name", list(SUPPORTS))
def test_staged_gradient_and_product_equal_the_whole_networks(name: str) -> None:
    learner, batch = SUPPORTS[name]()
    params = perturbed(learner)
    u = random_like(params, 8)
    expected_g, expected_hu = whole_network(learner, batch, params, u)
    g, hu = hvp.gradient_and_hvp(learner.chain(batch), params, u)
    assert set(g) == set(hu) == set(params)
    # one scale per quantity: a conv bias before batch norm has a zero gradient and product (rounding only)
    g_scale = max(t.abs().max().item() for t in expected_g.values())
    hu_scale = max(t.abs().max().item() for t in expected_hu.values())
    for n in params:
        assert (g[n] - expected_g[n]).abs().max().item() <= 1e-12 * g_scale, n
        assert (hu[n] - expected_hu[n]).abs().max().item() <= 1e-11 * hu_scale, n
        assert not g[n].requires_grad and not hu[n].requires_grad, n


def test_a_partial_direction_gives_a_different_product() -> None:
    """The check above can fail: the product differs from a wrong one (``u`` in the first stage only)."""
    learner, batch = conv4_support("max")
    params = perturbed(learner)
    u = random_like(params, 8)
    _, hu = hvp.gradient_and_hvp(learner.chain(batch), params, u)
    only_first = {n: (v if n.startswith("body.0.") else torch.zeros_like(v)) for n, v in u.items()}
    _, partial = hvp.gradient_and_hvp(learner.chain(batch), params, only_first)
    _, expected_partial = whole_network(learner, batch, params, only_first)
    gap = max((hu[n] - partial[n]).abs().max().item() for n in params)
    assert gap > 1e-3
    for n in params:  # the product is linear in u: a partial direction gives the partial product
        assert torch.allclose(partial[n], expected_partial[n], rtol=1e-9, atol=1e-12), n


@pytest.mark.parametrize("name", list(SUPPORTS))
def test_the_chain_is_the_models_forward_pass(name: str) -> None:
    learner, batch = SUPPORTS[name]()
    params = perturbed(learner)
    chain = learner.chain(batch)
    assert torch.equal(chain.loss(params), learner.loss(params, batch))
    owned = [n for n in params for s in chain.stages if s.owns(n)]
    assert sorted(owned) == sorted(params)  # every parameter in exactly one stage


def test_conv4_runs_its_first_block_in_groups() -> None:
    """The budget: the first (largest) block in GROUPS groups, later blocks in groups no larger."""
    learner, batch = conv4_support("max")
    params = learner.init_params()
    first, second = learner.chain(batch).stages[:2]
    local = first.local(params)
    budget = hvp.group_budget(first, local, batch.x)
    groups = hvp.channel_slices(first, local, batch.x, budget)
    assert len(groups) == hvp.GROUPS  # 8 filters, 4 groups of 2 channels
    assert [r for g in groups for r in range(8)[g]] == list(range(8))  # each channel once, in order
    a1 = first(local, batch.x)
    later = hvp.channel_slices(second, second.local(params), a1, budget)
    per_row = a1.shape[0] * a1.shape[2] * a1.shape[3]
    assert all((g.stop - g.start) * per_row <= budget for g in later)  # a quarter the size: one group
    assert hvp.channel_slices(learner.chain(batch).stages[-1], {}, a1, budget) == [slice(None)]  # the head


@pytest.mark.parametrize(("floor", "swept"), [(0, ["body.3", "body.2", "body.1", "body.0"]), (10**9, [])])
def test_a_small_chain_is_taken_whole(monkeypatch: pytest.MonkeyPatch, floor: int, swept: list[str]) -> None:
    """Below ``WHOLE_BELOW`` the backward sweep runs once, on the whole model; above, on every stage."""
    learner, batch = conv4_support("max")
    monkeypatch.setattr(hvp, "WHOLE_BELOW", floor)
    seen: list[str] = []
    sweep = hvp._sweep

    def spy(stage: hvp.Stage, *args: object) -> object:
        seen.append(stage.prefix)
        return sweep(stage, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(hvp, "_sweep", spy)
    params = perturbed(learner)
    u = random_like(params, 8)
    _, hu = hvp.gradient_and_hvp(learner.chain(batch), params, u)
    assert seen == (["head", *swept] if swept else [""])
    expected = whole_network(learner, batch, params, u)[1]
    scale = max(t.abs().max().item() for t in expected.values())
    assert all((hu[n] - expected[n]).abs().max().item() <= 1e-11 * scale for n in params)
