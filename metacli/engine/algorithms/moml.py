"""MOML and B-MOML: memory-efficient online meta-learning (Acar, Zhu, Saligrama, ICML 2021).

Specification: the official code (github.com/ruizhaoz/MOML, ``utils_methods.py::train_MOML`` and
``utils_general.py::train_MOML_model``). The state is three flat-size vectors (θ, λ, ω); θ₀ = ω₀, λ₀ = 0.
Round t runs K warm-started outer SGD steps on the regularised meta-objective::

    (S, Q)  <- two disjoint random batches of B from the task's train set   (fresh every step)
    φ <- θ ;  n_inner times: φ <- φ - η_in (∇CE(φ; S) + wd φ)              (differentiable)
    g <- ∇_θ CE(φ; Q) - λ + α (θ - ω)                                       (full second order)
    θ <- θ - η_out (clip(g, 3) + wd θ)                                      (SGD, decay after clipping)

then the λ-recursion of the official code (``train_MOML``, using the new λ in ω)::

    λ <- λ - α (θ - ω) ;   ω <- ½ (θ + ω) - λ / (2α)

B-MOML (``train_BMOML``) is MOML plus its task sampling: each outer step's task is drawn uniformly from a
buffer of task indices that always holds the current task ('random': append until full, then overwrite a
uniformly random slot; 'last': sliding window). α = 0 switches the regulariser off and freezes λ and ω
(λ ≡ 0 and ω is never read, so only θ need be held): that is MOGD (``train_MOGD``), which is MOML run with
α = 0 (:class:`MOGD`).

Training and evaluation adaptation differ on purpose (as in the code): training adapts on 10-image support
batches with weight decay and no clipping; the CTM/LTM evaluation (:mod:`metacli.engine.online`)
adapts full-batch on all train images with clipping and no weight decay. The released code's settings and
the faults metacli does not reproduce: docs/online.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import torch
from torch import Tensor

from metacli.engine.config.algorithms import BMOMLConfig, MOGDConfig, MOMLConfig, OnlineMetaSGDConfig
from metacli.engine.functional import Learner, clip_by_global_norm, tensor_bytes
from metacli.engine.inner import descend, sgd_rule
from metacli.engine.types import Batch, OnlineStream, Params


class MOMLState(NamedTuple):
    """The state of MOML, B-MOML and MOGD: meta-parameters θ, dual λ ("lambda_model"), anchor ω
    ("omega_model"), and B-MOML's buffer of task indices (empty for MOML and MOGD)."""

    theta: Params
    lam: Params
    omega: Params
    buffer: tuple[int, ...] = ()


BMOMLState = MOMLState
"""B-MOML's state is MOML's, its buffer in use."""


class Regulariser(NamedTuple):
    """The linear-plus-proximal term −⟨λ, θ⟩ + (α/2)‖θ − ω‖² of the round objective."""

    lam: Params
    omega: Params
    alpha: float


def sample_support_query(
    stream: OnlineStream, task: int, batch_size: int, generator: torch.Generator
) -> tuple[Batch, Batch]:
    """Two disjoint random batches of ``batch_size`` from ``task``'s train set (a fresh shuffle)."""
    x, y = stream.train.x[task], stream.train.y[task]
    perm = torch.randperm(x.shape[0], generator=generator)[: 2 * batch_size].to(x.device)
    s, q = perm[:batch_size], perm[batch_size:]
    return Batch(x[s], y[s]), Batch(x[q], y[q])


def meta_gradient(
    learner: Learner, theta: Params, support: Batch, query: Batch, cfg: OnlineMetaSGDConfig
) -> tuple[Params, Tensor]:
    """∇_θ CE(U(θ; S); Q), second order through ``cfg.inner_steps`` differentiable SGD steps."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
    rule = sgd_rule(cfg.inner_lr, cfg.weight_decay)
    phi, _ = descend(lambda k, p: learner.loss(p, support), leaves, cfg.inner_steps, rule, create_graph=True)
    loss = learner.loss(phi, query)
    meta_grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, meta_grads, strict=True)), loss.detach()


def outer_step(theta: Params, g: Params, cfg: OnlineMetaSGDConfig) -> Params:
    """θ ← θ − η_out (clip(g) + wd θ): PyTorch SGD adds the decay after clipping."""
    g = clip_by_global_norm(g, cfg.clip_norm)
    return {k: (p - cfg.outer_lr * (g[k] + cfg.weight_decay * p)).detach() for k, p in theta.items()}


def meta_sgd_round(
    learner: Learner,
    theta: Params,
    stream: OnlineStream,
    draw_task: Callable[[], int],
    cfg: OnlineMetaSGDConfig,
    generator: torch.Generator,
    reg: Regulariser | None,
) -> Params:
    """K warm-started outer steps from θ; each step's task is ``draw_task()`` (drawn before (S, Q))."""
    for _ in range(cfg.K):
        support, query = sample_support_query(stream, draw_task(), cfg.batch_size, generator)
        g, _ = meta_gradient(learner, theta, support, query, cfg)
        if reg is not None:
            g = {k: g[k] - reg.lam[k] + reg.alpha * (p - reg.omega[k]) for k, p in theta.items()}
        theta = outer_step(theta, g, cfg)
    return theta


def update_state(theta: Params, lam: Params, omega: Params, alpha: float) -> tuple[Params, Params]:
    """λ ← λ − α(θ − ω); ω ← ½(θ + ω) − λ/(2α) with the new λ. α = 0 leaves λ, ω unchanged."""
    if alpha == 0:
        return lam, omega
    new_lam = {k: lam[k] - alpha * (theta[k] - omega[k]) for k in theta}
    new_omega = {k: 0.5 * (theta[k] + omega[k]) - new_lam[k] / (2 * alpha) for k in theta}
    return new_lam, new_omega


def task_bytes(stream: OnlineStream) -> int:
    """Bytes of one task's training data (inputs and labels)."""
    return tensor_bytes([stream.train.x[0], stream.train.y[0]])


def params_to_cpu(p: Params) -> dict[str, Tensor]:
    """Detached CPU copies, for ``torch.save``."""
    return {k: v.detach().cpu().clone() for k, v in p.items()}


class EvalConfig(Protocol):
    """What :class:`OnlineLearner` reads from an algorithm's config."""

    @property
    def clip_norm(self) -> float: ...

    def eval_variants(self) -> dict[str, tuple[float, int]]: ...


C = TypeVar("C", bound=EvalConfig)


class OnlineLearner(Generic[C]):
    """Common constructor of the online algorithms: the config, the learner, and the CTM/LTM evaluation
    settings :func:`~metacli.engine.online.run_online` reads (fine-tune variants and clip norm)."""

    ctm_after_update = False
    """CTM is measured before the round's update (meta-learners); TOE and FS set True (as the MOML code)."""

    def __init__(self, cfg: C, learner: Learner, generator: torch.Generator | None = None) -> None:
        del generator  # the online loop hands each round the run's generator instead
        self.cfg = cfg
        self.learner = learner
        self.eval_variants = cfg.eval_variants()
        self.eval_clip_norm = cfg.clip_norm


R = TypeVar("R", MOMLConfig, BMOMLConfig)


class MOML(OnlineLearner[R]):
    """MOML (Acar et al. 2021; official ``train_MOML``). Memory: the current task's data plus 3d (d with
    α = 0, where λ and ω are constants).

    Subclasses change only which task each outer step uses (:meth:`draw`) and how many tasks they hold.
    """

    def init_state(self, theta0: Params) -> MOMLState:
        """θ = ω = θ₀, λ = 0."""
        theta = {k: v.detach().clone() for k, v in theta0.items()}
        return MOMLState(theta, {k: torch.zeros_like(v) for k, v in theta.items()}, dict(theta))

    def draw(
        self, state: MOMLState, t: int, generator: torch.Generator
    ) -> tuple[tuple[int, ...], Callable[[], int]]:
        """(the round's buffer, the task of each outer step): MOML keeps no buffer and uses task t."""
        del state, generator
        return (), lambda: t

    def round(self, state: MOMLState, t: int, stream: OnlineStream, generator: torch.Generator) -> MOMLState:
        """K regularised outer steps on the tasks :meth:`draw` gives, then the λ/ω recursion."""
        buffer, draw_task = self.draw(state, t, generator)
        reg = Regulariser(state.lam, state.omega, self.cfg.alpha)
        theta = meta_sgd_round(self.learner, state.theta, stream, draw_task, self.cfg, generator, reg)
        lam, omega = update_state(theta, state.lam, state.omega, self.cfg.alpha)
        return MOMLState(theta, lam, omega, buffer)

    def eval_model(self, state: MOMLState) -> Params:
        """θ_t, the model CTM/LTM fine-tune from."""
        return state.theta

    def tasks_held(self, state: MOMLState) -> int:
        """Tasks whose train data the algorithm holds: MOML the current one."""
        del state
        return 1

    def held_bytes(self, state: MOMLState, t: int, stream: OnlineStream) -> tuple[int, int]:
        """(held tasks' train data, θ + λ + ω; θ alone with α = 0): constant over rounds."""
        kept = (state.theta, state.lam, state.omega) if self.cfg.alpha != 0 else (state.theta,)
        return self.tasks_held(state) * task_bytes(stream), sum(tensor_bytes(p) for p in kept)

    def state_dict(self, state: MOMLState) -> dict[str, Any]:
        """θ, λ, ω as CPU tensors; θ alone with α = 0 (MOGD's checkpoint: λ and ω are then constants)."""
        keys = ("theta", "lam", "omega") if self.cfg.alpha != 0 else ("theta",)
        return {k: params_to_cpu(getattr(state, k)) for k in keys}

    def load_state(self, d: dict[str, Any]) -> MOMLState:
        """Inverse of :meth:`state_dict` (tensors stay on CPU; move them with the stream if needed).

        Without λ and ω (α = 0): λ = 0 and ω = θ, which α = 0 never reads.
        """
        theta = dict(d["theta"])
        if "lam" not in d:
            return MOMLState(theta, {k: torch.zeros_like(v) for k, v in theta.items()}, dict(theta))
        return MOMLState(theta, dict(d["lam"]), dict(d["omega"]))


class MOGD(MOML[MOMLConfig]):
    """MOGD (official ``train_MOGD``): MOML with α = 0 (λ ≡ 0, ω frozen and unread). Memory: a task plus d."""

    def __init__(self, cfg: MOGDConfig, learner: Learner, generator: torch.Generator | None = None) -> None:
        super().__init__(MOMLConfig(**cfg.model_dump(exclude={"name"}), alpha=0.0), learner, generator)


def update_buffer(
    buffer: tuple[int, ...], t: int, size: int, policy: str, generator: torch.Generator
) -> tuple[int, ...]:
    """Insert task t: append while not full; then 'last' slides, 'random' overwrites a random slot."""
    if len(buffer) < size:
        return (*buffer, t)
    if policy == "last":
        return (*buffer[1:], t)
    slot = int(torch.randint(size, (1,), generator=generator).item())
    return (*buffer[:slot], t, *buffer[slot + 1 :])


class BMOML(MOML[BMOMLConfig]):
    """B-MOML (Acar et al. 2021; official ``train_BMOML``): MOML whose outer steps draw their task from a
    buffer. Memory: the buffer's tasks' data plus 3d."""

    def draw(
        self, state: MOMLState, t: int, generator: torch.Generator
    ) -> tuple[tuple[int, ...], Callable[[], int]]:
        """Insert task t into the buffer; each outer step then uses a uniformly drawn buffer task."""
        buffer = update_buffer(state.buffer, t, self.cfg.buffer_size, self.cfg.buffer_policy, generator)

        def draw_task() -> int:
            return buffer[int(torch.randint(len(buffer), (1,), generator=generator).item())]

        return buffer, draw_task

    def tasks_held(self, state: MOMLState) -> int:
        """The buffered tasks: bounded by B."""
        return len(state.buffer)

    def state_dict(self, state: MOMLState) -> dict[str, Any]:
        """θ, λ, ω as CPU tensors and the buffer as a list of ints."""
        return {**super().state_dict(state), "buffer": list(state.buffer)}

    def load_state(self, d: dict[str, Any]) -> MOMLState:
        """Inverse of :meth:`state_dict`."""
        return super().load_state(d)._replace(buffer=tuple(d["buffer"]))
