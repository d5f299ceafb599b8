"""Exact fast U_eval for MLPs: fine-tuning the first Linear layer through Gram matrices.

For a network whose first layer is ``Linear`` on flattened inputs, write its weight and bias as one
matrix W̃₁ = [W₁ b₁] acting on inputs with a constant 1 appended, x̃ = [x 1]. Every full-batch gradient
is ∇W̃₁ = Δᵀ X̃ (X̃: the task's n augmented train inputs, Δ = ∂L/∂H at the first pre-activation
H = X̃ W̃₁ᵀ = X W₁ᵀ + b₁), so after s clipped steps W̃₁ˢ = W̃₁ − Σ_j c_j Δ_jᵀ X̃ stays in W̃₁ plus the row
space of X̃. Hence, with the augmented Gram matrices K = X̃ X̃ᵀ = X Xᵀ + 1 and K_z = Z̃ X̃ᵀ = Z Xᵀ + 1
(Z: the test inputs), the pre-activations of the train and test inputs follow::

    H   <- H   − c_j K Δ_j              H_z <- H_z − c_j K_z Δ_j
    ‖∇W₁‖²_F + ‖∇b₁‖² = ‖Δ_jᵀ X̃‖²_F = ⟨Δ_j, K Δ_j⟩      (enters the global clip norm)

with c_j = lr · min(1, clip / (‖∇θ‖ + 1e-6)) the step's clipped rate, and W₁, b₁ themselves are never
formed again. These are identities, not approximations: the result equals the vmap path up to
floating-point rounding (tested: 1e-10 against a per-task autograd loop in float64, 1e-5 against vmap in
float32).

The later layers (inputs: hidden activations, width ≤ a few hundred) are updated explicitly, with a
hand-written backward pass (∂L/∂logits = (softmax − one-hot)/n for the mean cross-entropy; the ReLU
backward is autograd's own ``threshold_backward``), batched over tasks by a leading axis. Costs of one
LTM evaluation of C tasks:

- one GEMM (C·(n + m), D)(D, h₁) for H and H_z at the current θ, on views of the stream's inputs (no copy
  when the task ids are a contiguous range, as the LTM's 0..t are);
- per step, batched (n × n)(n × h₁) and (m × n)(n × h₁) products and a few elementwise passes in hidden
  space, independent of the input width D (784 for S-MNIST).

K and K_z depend only on the data, so :class:`StreamGram` computes them once per stream (all T tasks in
one batched product, so their rounding does not depend on when a run started or resumed) and every round
reuses them. Variants with the same learning rate share their trajectory: a 1-step evaluation is the
first step of a 5-step one, so :func:`mlp_finetune_and_test_many` runs the longest and reads the test
metrics off at every requested step count (the same operations, so the same numbers as separate runs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacli.engine.functional import Learner, accuracy
from metacli.engine.models.mlp import MLP
from metacli.engine.types import OnlineStream, Params

FAST_CHUNK = 128
"""Tasks per batched call of the fast path. Small on purpose: each (chunk, n, h₁) temporary is then a
few MB (6 MB for S-MNIST), which the allocator reuses from chunk to chunk, whereas ~50 MB temporaries
(all 1000 tasks at once) are fresh pages every time, and the page faults made elementwise passes up to
~10× slower (CPU, t = 1000: 0.16 s / 0.30 s for 1 / 5 steps with 128, 0.22 s / 0.54 s with 1024). The
first-layer GEMM stays large enough (chunk·n rows) to run at full speed."""


def fast_path_applies(learner: Learner) -> bool:
    """An :class:`MLP` (``Linear``/``ReLU`` body, linear head) with cross-entropy and a hidden layer."""
    m = learner.model
    if not (isinstance(m, MLP) and learner.criterion == "cross_entropy" and len(m.body) > 0):
        return False
    kinds = [type(layer) for layer in m.body]
    return kinds == [nn.Linear, nn.ReLU] * (len(kinds) // 2)


def gram_u_eval(learner: Learner) -> ExactUEval | None:
    """The Gram path (:func:`mlp_finetune_and_test_many`) where it applies to ``learner``, else None.

    Registered for :class:`MLP` in :data:`metacli.engine.online.EXACT_U_EVAL`.
    """
    return mlp_finetune_and_test_many if fast_path_applies(learner) else None


def _contiguous_range(ids: Tensor) -> slice | None:
    """``ids`` as a slice when they are ``a, a+1, ..., b-1`` (then data can be taken as a view)."""
    if ids.numel() == 0:
        return None
    start, stop = int(ids[0]), int(ids[-1]) + 1
    if stop - start != ids.numel() or not torch.equal(ids, torch.arange(start, stop, device=ids.device)):
        return None
    return slice(start, stop)


def _take(t: Tensor, ids: Tensor) -> Tensor:
    """Rows ``ids`` of ``t`` along the task axis: a view for a contiguous range, else a gather."""
    sl = _contiguous_range(ids)
    return t[sl] if sl is not None else t.index_select(0, ids)


def augmented_grams(x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """K = X Xᵀ + 1 (C, n, n) and K_z = Z Xᵀ + 1 (C, m, n) for flattened inputs x (C, n, D), z (C, m, D)."""
    xt = x.transpose(1, 2)
    return torch.baddbmm(x.new_ones(()), x, xt), torch.baddbmm(z.new_ones(()), z, xt)


class StreamGram:
    """Per-stream cache of the augmented Gram matrices of every task (see :func:`augmented_grams`).

    They depend only on the stream's inputs, so one instance serves every round of a run
    (:func:`~metacli.engine.online.run_online` creates it once). Computed on first use, for all T tasks
    at once: 2·T·(n + m)·n·D flops (5.6 GFLOP, 17 MB in float32 for S-MNIST-1000).
    """

    def __init__(self, stream: OnlineStream) -> None:
        self.stream = stream
        self._grams: tuple[Tensor, Tensor] | None = None

    def grams(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """(K, K_z) of tasks ``ids``: views for a contiguous range."""
        if self._grams is None:
            self._grams = augmented_grams(self.stream.train.x.flatten(2), self.stream.test.x.flatten(2))
        k, kz = self._grams
        return _take(k, ids), _take(kz, ids)


ExactUEval = Callable[
    [Learner, Params, OnlineStream, Tensor, Sequence[tuple[float, int]], float, StreamGram | None],
    list[tuple[Tensor, Tensor]],
]
"""An exact U_eval path: (learner, params, stream, task ids, (lr, steps) variants, clip norm, cache) ->
per-task (test loss, accuracy) per variant; the signature of
:func:`metacli.engine.online.finetune_and_test` without ``fast``."""


def _linear_keys(model: MLP) -> list[str]:
    """Parameter-name prefixes of the Linear layers after the first, in order (the head last)."""
    keys = [f"body.{i}" for i, layer in enumerate(model.body) if isinstance(layer, nn.Linear)]
    return [*keys[1:], "head"]


def _affine(a: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """a Wᵀ + b for a (C, n, in), with W (out, in) shared by all tasks or per task (C, out, in)."""
    if w.dim() == 2:  # shared (before the first step): one GEMM over all C·n rows
        return torch.addmm(b, a.flatten(0, 1), w.T).view(*a.shape[:2], -1)
    return torch.baddbmm(b.unsqueeze(1), a, w.transpose(1, 2))


def _back(d: Tensor, w: Tensor) -> Tensor:
    """d W for d (C, n, out), W shared (out, in) or per task (C, out, in)."""
    return d @ w if w.dim() == 2 else torch.bmm(d, w)


def _forward(h1: Tensor, rest: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, list[Tensor]]:
    """Logits from the first pre-activation ``h1``, and every hidden layer's ReLU output.

    An output is > 0 exactly where its pre-activation is, so the outputs double as the ReLU masks.
    """
    acts = [torch.relu(h1)]
    for w, b in rest[:-1]:
        acts.append(_affine(acts[-1], w, b).relu_())
    return _affine(acts[-1], *rest[-1]), acts


def _per_task_ce(out: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of each task: ``out`` (C, n, classes), ``y`` (C, n) -> (C,)."""
    ce = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
    return ce.view(y.shape).mean(1)


def _test_metrics(hz: Tensor, rest: list[tuple[Tensor, Tensor]], yz: Tensor) -> tuple[Tensor, Tensor]:
    """Per-task (mean CE, accuracy) on the test inputs, from their first-layer pre-activations H_z."""
    out, _ = _forward(hz, rest)
    return _per_task_ce(out, yz), accuracy(out, yz)


def _shared_trajectory(
    h: Tensor, hz: Tensor, k: Tensor, kz: Tensor, y: Tensor, yz: Tensor, rest: list[tuple[Tensor, Tensor]],
    lr: float, report_at: set[int], clip_norm: float,
) -> dict[int, tuple[Tensor, Tensor]]:  # fmt: skip
    """Run max(report_at) clipped GD steps on C tasks at once; test metrics after each step in report_at.

    Shapes: h (C, n, h₁), hz (C, m, h₁), k (C, n, n), kz (C, m, n), y (C, n), yz (C, m); the ``rest``
    (W, b) pairs are shared (no task axis) and become per task after the first step. ``h`` and ``hz``
    are not modified (other variants start from them too).
    """
    steps = max(report_at)
    n, n_tasks = y.shape[1], y.shape[0]
    onehot: Tensor | None = None
    metrics = {0: _test_metrics(hz, rest, yz)} if 0 in report_at else {}
    for s in range(1, steps + 1):
        logits, acts = _forward(h, rest)
        if onehot is None:
            onehot = F.one_hot(y, logits.shape[-1]).to(logits.dtype)
        d = torch.softmax(logits, -1).sub_(onehot).div_(n)  # ∂L/∂logits of the mean CE, per task
        grads: list[tuple[Tensor, Tensor]] = []
        for i in range(len(rest) - 1, -1, -1):
            grads.append((torch.bmm(d.transpose(1, 2), acts[i]), d.sum(1)))
            # autograd's own ReLU backward (one fused pass): the gradient passes where the output is > 0
            d = torch.ops.aten.threshold_backward(_back(d, rest[i][0]), acts[i], 0.0)
        grads.reverse()
        # d is now Δ = ∂L/∂H; ∇W̃₁ = Δᵀ X̃ is never formed: its squared norm is ⟨Δ, K Δ⟩, per task a
        # (1, n·h₁)(n·h₁, 1) product (no temporary)
        k_delta = torch.bmm(k, d)
        sq = torch.bmm(d.view(n_tasks, 1, -1), k_delta.view(n_tasks, -1, 1)).view(n_tasks)
        for gw, gb in grads:
            sq = sq + (gw * gw).sum((1, 2)) + (gb * gb).sum(1)
        c = lr * torch.clamp(clip_norm / (torch.sqrt(sq) + 1e-6), max=1.0)
        c2, c3 = c.unsqueeze(1), c.view(-1, 1, 1)
        hz = torch.addcmul(hz, c3, torch.bmm(kz, d), value=-1.0)
        if s < steps:  # H is only needed by a further step; after the first update it is our own
            h = torch.addcmul(h, c3, k_delta, value=-1.0) if s == 1 else h.addcmul_(c3, k_delta, value=-1.0)
        rest = [(w - c3 * gw, b - c2 * gb) for (w, b), (gw, gb) in zip(rest, grads, strict=True)]
        if s in report_at:
            metrics[s] = _test_metrics(hz, rest, yz)
    return metrics


def mlp_finetune_and_test_many(
    learner: Learner, params: Params, stream: OnlineStream, task_ids: Tensor,
    variants: Sequence[tuple[float, int]], clip_norm: float, cache: StreamGram | None = None,
    chunk_size: int = FAST_CHUNK,
) -> list[tuple[Tensor, Tensor]]:  # fmt: skip
    """Per-task (test loss, accuracy) of U_eval(params) for each (lr, steps) in ``variants``.

    ``cache`` (a :class:`StreamGram` of this ``stream``) saves recomputing the Gram matrices; without
    it they are computed for ``task_ids`` only. The first-layer pre-activations H, H_z are computed once
    per chunk of tasks and shared by all variants; variants with equal lr share one trajectory.
    """
    model = learner.model
    assert isinstance(model, MLP)
    if cache is not None and cache.stream is not stream:
        raise ValueError("the StreamGram cache belongs to another stream")
    w1, b1 = params["body.0.weight"], params["body.0.bias"]
    rest = [(params[f"{key}.weight"], params[f"{key}.bias"]) for key in _linear_keys(model)]
    by_lr: dict[float, set[int]] = {}
    for lr, steps in variants:
        by_lr.setdefault(lr, set()).add(steps)
    need_h = any(steps > 0 for _, steps in variants)
    x_all, z_all = stream.train.x.flatten(2), stream.test.x.flatten(2)
    ids_all = task_ids.to(x_all.device)
    results: dict[tuple[float, int], tuple[list[Tensor], list[Tensor]]] = {v: ([], []) for v in variants}
    for ids in torch.split(ids_all, chunk_size):
        x, z = _take(x_all, ids), _take(z_all, ids)
        y, yz = _take(stream.train.y, ids), _take(stream.test.y, ids)
        # one GEMM over all rows of the chunk (on a view of the stream's data for a contiguous range)
        hz = torch.addmm(b1, z.reshape(-1, z.shape[-1]), w1.T).view(*z.shape[:2], -1)
        # (only 0-step variants: H is never read, an empty placeholder spares the larger GEMM)
        h = torch.addmm(b1, x.reshape(-1, x.shape[-1]), w1.T).view(*x.shape[:2], -1) if need_h else hz[:, :0]
        k, kz = cache.grams(ids) if cache is not None else augmented_grams(x, z)
        for lr, report_at in by_lr.items():
            got = _shared_trajectory(h, hz, k, kz, y, yz, rest, lr, report_at, clip_norm)
            for steps, (loss, acc) in got.items():
                results[(lr, steps)][0].append(loss)
                results[(lr, steps)][1].append(acc)
    return [(torch.cat(results[v][0]), torch.cat(results[v][1])) for v in variants]
