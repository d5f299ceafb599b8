"""Model contracts: shapes, parameter counts, body/head groups, batch-norm kernels, exact meta-gradients.

The meta-gradient checks run second-order MAML in float64 through tiny Conv4 and ResNet-12 networks: the
``vmap`` executor (primitive-op batch norm; fused would be off by 0.5-7 %, pytorch/functorch#534) must
equal the per-task loop (fused batch norm), and the loop must equal central finite differences.
Which kernel runs where: ``tests/engine/test_fused.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from metacli.engine.algorithms.maml import MAML, MAMLConfig
from metacli.engine.config.models import ConvInit
from metacli.engine.executors import task_at
from metacli.engine.functional import Learner
from metacli.engine.models import MODELS, build_model, is_norm, param_group
from metacli.engine.models.conv4 import Conv4Config, Pool
from metacli.engine.models.layers import BatchNorm, batch_norm_primitive
from metacli.engine.models.mlp import MLPConfig
from metacli.engine.models.resnet12 import Pooling, ResNet12Config, feature_sides
from metacli.engine.types import Batch, Task
from metacli.errors import SpecError

F64 = torch.float64
WAYS = 5


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize(
    ("in_shape", "pool", "side"),
    [
        ((1, 28, 28), "stride", 2),
        ((1, 28, 28), "max", 1),
        ((3, 84, 84), "stride", 6),
        ((3, 84, 84), "max", 5),
    ],
)
@pytest.mark.parametrize("filters", [32, 48, 64])
def test_conv4_shapes(filters: int, in_shape: tuple[int, int, int], pool: Pool, side: int) -> None:
    model = build_model(Conv4Config(filters=filters, pool=pool), in_shape, WAYS)
    x = torch.randn(3, *in_shape)
    with torch.no_grad():
        assert model.body(x).shape == (3, filters, side, side)  # type: ignore[operator]
        assert model(x).shape == (3, WAYS)


def test_conv4_rejects_images_too_small_to_pool() -> None:
    with pytest.raises(SpecError, match="16x16"):
        build_model(Conv4Config(filters=4, pool="max"), (1, 12, 12), WAYS)
    with pytest.raises(ValidationError):
        Conv4Config(filters=0)


@pytest.mark.parametrize(
    ("in_shape", "pooling", "side"),
    [
        ((3, 84, 84), "every_block", 5),  # MetaOptNet: 84 -> 42 -> 21 -> 10 -> 5
        ((3, 84, 84), "first_three", 11),  # BOIL / Sparse-MAML: 84 -> 42 -> 21 -> 11 -> 11
        ((3, 32, 32), "every_block", 2),
        ((3, 32, 32), "first_three", 5),
    ],
)
def test_resnet12_shapes(in_shape: tuple[int, int, int], pooling: Pooling, side: int) -> None:
    cfg = ResNet12Config(pooling=pooling)
    model = build_model(cfg, in_shape, WAYS)
    x = torch.randn(2, *in_shape)
    with torch.no_grad():
        assert model.body(x).shape == (2, 640, side, side)  # type: ignore[operator]
        assert model(x).shape == (2, WAYS)
    assert feature_sides(in_shape[1], cfg.pooling)[-1] == side
    assert model.head.in_features == 640  # type: ignore[union-attr]


def test_resnet12_widths_and_init() -> None:
    model = build_model(ResNet12Config(widths=(64, 128, 256, 512)), (3, 32, 32), WAYS)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs[::4]] == [64, 128, 256, 512]  # conv1 of every block
    assert len(convs) == 16 and all(c.bias is None for c in convs)  # 4 x (3 convs + 1x1 shortcut)
    assert not model.head.bias.detach().any()  # type: ignore[union-attr, operator]
    bound = (6 / (9 * 64 + 9 * 64)) ** 0.5  # Xavier-uniform, block 1 conv2: fan_in = fan_out = 9 * 64
    largest = float(convs[1].weight.detach().abs().max())
    assert 0.9 * bound < largest <= bound


def test_parameter_counts() -> None:
    """ResNet-12 64-160-320-640 is MetaOptNet's 12.4M; Conv4 counts by hand (weights + biases + BN + head)."""
    assert n_params(build_model(ResNet12Config(), (3, 84, 84), WAYS)) == 12_427_525
    conv4_32 = (3 * 9 * 32 + 32) + 3 * (32 * 9 * 32 + 32) + 4 * 2 * 32 + (800 * 5 + 5)
    assert n_params(build_model(Conv4Config(filters=32, pool="max"), (3, 84, 84), WAYS)) == conv4_32 == 32_901
    conv4_64 = (9 * 64 + 64) + 3 * (64 * 9 * 64 + 64) + 4 * 2 * 64 + (256 * 5 + 5)
    assert n_params(build_model(Conv4Config(filters=64), (1, 28, 28), WAYS)) == conv4_64 == 113_221


# ---------------------------------------------------------------- body / head groups

AnyConfig = MLPConfig | Conv4Config | ResNet12Config

GROUP_CASES: list[tuple[str, AnyConfig, tuple[int, ...]]] = [
    ("mlp", MLPConfig(), (1,)),
    ("mlp_no_hidden", MLPConfig(hidden=()), (4,)),
    ("conv4_stride", Conv4Config(filters=4), (1, 28, 28)),
    ("conv4_max", Conv4Config(filters=4, pool="max"), (3, 16, 16)),
    ("resnet12", ResNet12Config(widths=(4, 6, 8, 10)), (3, 16, 16)),
    ("resnet12_first_three", ResNet12Config(widths=(4, 6, 8, 10), pooling="first_three"), (3, 16, 16)),
]


def test_group_cases_cover_every_model() -> None:
    assert {cfg.name for _, cfg, _ in GROUP_CASES} == set(MODELS)


@pytest.mark.parametrize(("cfg", "in_shape"), [c[1:] for c in GROUP_CASES], ids=[c[0] for c in GROUP_CASES])
def test_parameters_split_into_body_and_a_final_linear_head(
    cfg: AnyConfig, in_shape: tuple[int, ...]
) -> None:
    model = build_model(cfg, in_shape, 3)
    groups = {name: param_group(name) for name, _ in model.named_parameters()}
    assert {n for n, g in groups.items() if g == "head"} == {"head.weight", "head.bias"}
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 3
    captured: list[Tensor] = []
    model.head.register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        out = model(torch.randn(4, *in_shape))
    assert len(captured) == 1 and torch.equal(captured[0], out)  # the head is applied last, once
    if len(groups) > 2:
        assert {n for n, g in groups.items() if g == "body"} == set(groups) - {"head.weight", "head.bias"}


@pytest.mark.parametrize(("cfg", "in_shape"), [c[1:] for c in GROUP_CASES], ids=[c[0] for c in GROUP_CASES])
def test_is_norm_names_exactly_the_batch_norm_parameters(cfg: AnyConfig, in_shape: tuple[int, ...]) -> None:
    """The name contract that ``adapt_norm: false`` relies on, checked against the module types."""
    model = build_model(cfg, in_shape, 3)
    of_norms = {
        f"{m_name}.{p_name}"
        for m_name, module in model.named_modules()
        if isinstance(module, (BatchNorm, nn.modules.batchnorm._NormBase))
        for p_name, _ in module.named_parameters(recurse=False)
    }
    assert {name for name, _ in model.named_parameters() if is_norm(name)} == of_norms
    assert bool(of_norms) == (cfg.name != "mlp")


@pytest.mark.parametrize("name", ["weight", "headless.weight", "backbone.0.weight", "bodyx.bias"])
def test_param_group_rejects_names_outside_both_groups(name: str) -> None:
    with pytest.raises(ValueError, match="neither group"):
        param_group(name)


# ---------------------------------------------------------------- batch norm kernels


@pytest.mark.parametrize("shape", [(6, 4), (5, 3, 7, 6)], ids=["NC", "NCHW"])
def test_primitive_batch_norm_equals_fused_batch_statistics(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(shape, generator=gen, dtype=F64) + 1).requires_grad_(True)
    norm = BatchNorm(shape[1]).to(F64)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[1], generator=gen, dtype=F64))
        norm.bias.copy_(torch.randn(shape[1], generator=gen, dtype=F64))
    ours = batch_norm_primitive(x, norm.weight, norm.bias, norm.eps)
    fused = F.batch_norm(x, None, None, norm.weight, norm.bias, training=True, eps=norm.eps)
    torch.testing.assert_close(norm(x), fused, rtol=0, atol=0)  # the module takes the fused kernel here
    torch.testing.assert_close(ours, fused, rtol=1e-12, atol=1e-12)
    probe = torch.randn(shape, generator=gen, dtype=F64)
    params = [x, norm.weight, norm.bias]
    for a, b in zip(
        torch.autograd.grad((ours * probe).sum(), params),
        torch.autograd.grad((fused * probe).sum(), params),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_batch_norm_is_reexported_by_conv4() -> None:
    from metacli.engine.models import conv4

    assert conv4.BatchNorm is BatchNorm


# ---------------------------------------------------------------- second-order meta-gradients


def fewshot_problem(
    cfg: Conv4Config | ResNet12Config, in_shape: tuple[int, int, int], n_tasks: int = 2
) -> tuple[Learner, Task]:
    """A float64 model and ``n_tasks`` stacked 2-way 1-shot tasks with 2 queries per class."""
    ways, queries = 2, 2
    torch.manual_seed(0)
    learner = Learner(build_model(cfg, in_shape, ways).to(F64), "cross_entropy")
    gen = torch.Generator().manual_seed(1)
    support = Batch(
        torch.randn(n_tasks, ways, *in_shape, generator=gen, dtype=F64), torch.arange(ways).repeat(n_tasks, 1)
    )
    query = Batch(
        torch.randn(n_tasks, ways * queries, *in_shape, generator=gen, dtype=F64),
        torch.arange(ways).repeat_interleave(queries).repeat(n_tasks, 1),
    )
    return learner, Task(support, query)


MAML_CFG = MAMLConfig(alpha=0.1, inner_steps=2)

EXACT_CASES = [
    ("conv4_32_max", Conv4Config(filters=32, pool="max"), (3, 16, 16)),
    ("conv4_8_stride", Conv4Config(filters=8, pool="stride"), (1, 16, 16)),
    ("resnet12", ResNet12Config(widths=(4, 6, 8, 10)), (3, 16, 16)),
    ("resnet12_first_three", ResNet12Config(widths=(4, 6, 8, 10), pooling="first_three"), (3, 16, 16)),
]


@pytest.mark.parametrize(("cfg", "in_shape"), [c[1:] for c in EXACT_CASES], ids=[c[0] for c in EXACT_CASES])
def test_second_order_meta_gradients_loop_equals_vmap(
    cfg: Conv4Config | ResNet12Config, in_shape: tuple[int, int, int]
) -> None:
    learner, tasks = fewshot_problem(cfg, in_shape)
    algo = MAML(MAML_CFG, learner)
    meta = algo.init_meta(learner.init_params())
    loop, vmap = algo.meta_step(meta, tasks, "loop"), algo.meta_step(meta, tasks, "vmap")
    assert loop.loss == pytest.approx(vmap.loss, rel=1e-12)
    assert set(loop.grads) == set(vmap.grads) == set(meta)
    assert all(float(g.abs().max()) > 0 for g in loop.grads.values())  # every tensor reaches the loss
    for k in meta:
        torch.testing.assert_close(vmap.grads[k], loop.grads[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("pooling", ["every_block", "first_three"])
def test_resnet12_meta_gradient_matches_finite_differences(pooling: Pooling) -> None:
    """<grad, v> against a central difference along a random v, through two second-order inner steps.

    The post-adaptation loss is only piecewise smooth in theta, and not even continuous: the inner gradient
    jumps where a LeakyReLU input or a max-pool argmax changes sign or place, and phi = theta - alpha g
    jumps with it. The step eps is kept at 1e-7 (float64 round-off ~1e-9 relative) so that the stencil
    does not straddle such a jump; at 1e-5 most random directions do.
    """
    cfg = ResNet12Config(widths=(4, 6, 8, 10), pooling=pooling)
    learner, tasks = fewshot_problem(cfg, (3, 16, 16))
    algo = MAML(MAML_CFG, learner)
    meta = algo.init_meta(learner.init_params())
    result = algo.meta_step(meta, tasks, "loop")
    gen = torch.Generator().manual_seed(2)
    direction = {k: torch.randn(v.shape, generator=gen, dtype=F64) for k, v in meta.items()}
    eps, n_tasks = 1e-7, tasks.query.x.shape[0]

    def loss_at(sign: float) -> float:
        shifted = {k: (v + sign * eps * direction[k]).detach() for k, v in meta.items()}
        losses = (algo.task_loss(shifted, task_at(tasks, i))[0].detach() for i in range(n_tasks))
        return sum(float(v) for v in losses) / n_tasks

    finite_difference = (loss_at(1.0) - loss_at(-1.0)) / (2 * eps)
    analytic = float(sum((result.grads[k] * direction[k]).sum() for k in meta))
    assert analytic == pytest.approx(finite_difference, rel=1e-6)


# ---------------------------------------------------------------- max-pool before the activation


def textbook_order(pool: nn.Module, act: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """The papers' order, activation then max-pool, and an out-of-place ReLU (metacli's is in place)."""
    return pool(torch.relu(x) if act is torch.relu_ else act(x))  # type: ignore[no-any-return]


def out_of_place_leaky_relu(block: nn.Module, x: Tensor) -> Tensor:
    """ResBlock's activation as the papers write it (metacli's is in place)."""
    return F.leaky_relu(x, block.negative_slope)  # type: ignore[arg-type]


def blocky_tasks(in_shape: tuple[int, int, int], n_tasks: int = 2) -> Task:
    """2-way 1-shot tasks (2 queries per class) of piecewise-constant binary images, as Omniglot strokes.

    Constant 4x4 patches make equal neighbouring activations, so max-pool windows hold ties, both positive
    (the argmax choice matters) and all-negative (ReLU zeros everywhere in the window).
    """
    ways, queries, (c, h, w) = 2, 2, in_shape
    gen = torch.Generator().manual_seed(3)

    def images(n: int) -> Tensor:
        coarse = (torch.rand(n_tasks, n, c, h // 4, w // 4, generator=gen) > 0.6).to(F64)
        return coarse.repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)

    support = Batch(images(ways), torch.arange(ways).repeat(n_tasks, 1))
    query = Batch(images(ways * queries), torch.arange(ways).repeat_interleave(queries).repeat(n_tasks, 1))
    return Task(support, query)


def pool_window_ties(model: nn.Module, x: Tensor) -> tuple[int, int]:
    """(tied windows with a positive maximum, tied windows with none) over every max-pool input."""
    inputs: list[Tensor] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach()))
        for m in model.modules()
        if isinstance(m, nn.MaxPool2d)
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    positive = nonpositive = 0
    for z in inputs:
        windows = F.unfold(z.flatten(0, 1).unsqueeze(1), 2, stride=2)  # (N*C, 4, windows)
        top = windows.max(dim=1, keepdim=True).values
        tied = (windows == top).sum(dim=1) > 1
        positive += int((tied & (top[:, 0] > 0)).sum())
        nonpositive += int((tied & (top[:, 0] <= 0)).sum())
    return positive, nonpositive


POOL_CASES = [
    ("conv4_max", Conv4Config(filters=4, pool="max"), (1, 16, 16)),
    ("resnet12", ResNet12Config(widths=(4, 6, 8, 10)), (1, 16, 16)),
    ("resnet12_first_three", ResNet12Config(widths=(4, 6, 8, 10), pooling="first_three"), (1, 16, 16)),
]


@pytest.mark.parametrize("executor", ["loop", "vmap"])
@pytest.mark.parametrize(("cfg", "in_shape"), [c[1:] for c in POOL_CASES], ids=[c[0] for c in POOL_CASES])
def test_pool_first_in_place_blocks_give_the_textbook_meta_gradient(
    monkeypatch: pytest.MonkeyPatch,
    cfg: Conv4Config | ResNet12Config,
    in_shape: tuple[int, int, int],
    executor: str,
) -> None:
    """Second-order MAML through metacli's blocks (pool, then an in-place activation) equals the papers'
    blocks (an out-of-place activation, then pool), ties included.

    Bit for bit in the loop executor (fused batch norm); to float64 round-off under vmap.
    """
    from metacli.engine.models import conv4, resnet12

    learner, _ = fewshot_problem(cfg, in_shape)
    tasks = blocky_tasks(in_shape)
    positive, nonpositive = pool_window_ties(learner.model, tasks.query.x[0])
    assert positive > 0 and nonpositive > 0  # the case the argument of pool_then_act is about
    algo = MAML(MAML_CFG, learner)
    meta = algo.init_meta(learner.init_params())
    ours = algo.meta_step(meta, tasks, executor)
    monkeypatch.setattr(conv4, "pool_then_act", textbook_order)
    monkeypatch.setattr(resnet12, "pool_then_act", textbook_order)
    monkeypatch.setattr(resnet12.ResBlock, "_act", out_of_place_leaky_relu)
    reference = algo.meta_step(meta, tasks, executor)
    assert ours.loss == reference.loss
    assert all(float(g.abs().max()) > 0 for g in ours.grads.values())
    for k in meta:
        if executor == "loop":
            assert torch.equal(ours.grads[k], reference.grads[k]), k
        else:  # primitive-op batch norm under vmap sums its backward in a layout-dependent order: 3e-16 seen
            torch.testing.assert_close(ours.grads[k], reference.grads[k], rtol=1e-14, atol=1e-15)


def test_mlp_maml_init_is_the_maml_codes_truncated_normal() -> None:
    """Catches ``init: maml`` ignored or mis-scaled: weights N(0, 0.01^2) cut at +-0.02, biases zero, while
    the default keeps PyTorch's U(+-1/sqrt(fan_in)) (40 inputs: bound 0.158)."""
    torch.manual_seed(0)
    maml = build_model(MLPConfig(hidden=(40, 40), init="maml"), (1,), 1)
    torch.manual_seed(0)
    default = build_model(MLPConfig(hidden=(40, 40)), (1,), 1)
    for name, p in maml.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        else:
            assert float(p.abs().max()) <= 0.02 and 0.006 < float(p.std()) < 0.011, name
    torch_params = dict(default.named_parameters())
    assert float(torch_params["body.2.weight"].abs().max()) > 0.1 and torch.count_nonzero(
        torch_params["head.bias"]
    )


@pytest.mark.parametrize("init", ["maml", "xavier"])
@pytest.mark.parametrize("pool", ["max", "stride"])
def test_conv4_maml_init_is_xavier_with_the_codes_head(pool: Pool, init: ConvInit) -> None:
    """Catches a wrong scheme for ``init: maml`` / ``xavier`` on Conv4: Xavier-uniform conv weights (bound
    sqrt(6 / (fan_in + fan_out))), zero conv and head biases, BN at ones and zeros; the head Xavier-uniform,
    except ``maml`` with strided convolutions (the MAML code's Omniglot net): standard normal."""
    torch.manual_seed(0)
    model = build_model(Conv4Config(filters=16, pool=pool, init=init), (3, 16, 16), 5)
    params = dict(model.named_parameters())
    for i in range(4):
        w = params[f"body.{i}.conv.weight"]
        bound = (6.0 / (w.shape[1] * 9 + w.shape[0] * 9)) ** 0.5
        assert 0.9 * bound < float(w.abs().max()) <= bound
        assert torch.count_nonzero(params[f"body.{i}.conv.bias"]) == 0
        assert torch.equal(params[f"body.{i}.norm.weight"], torch.ones(16))
    head = params["head.weight"]
    assert torch.count_nonzero(params["head.bias"]) == 0
    xavier = (6.0 / sum(head.shape)) ** 0.5
    if pool == "max" or init == "xavier":
        assert float(head.abs().max()) <= xavier
    else:
        assert 0.8 < float(head.std()) < 1.2 and float(head.abs().max()) > xavier
