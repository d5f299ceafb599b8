"""Memory-reduced meta-learning (Yang, Ma & Yu, AAAI 2025) and ITD-BiO, on a backbone / linear-head split.

Both solve the bilevel problem with the backbone theta (``body.*``) as the upper level and a per-task
linear head phi (``head.*``, flattened to one vector of N (e + 1) numbers) as the lower level:

    min_theta  F(theta) = (1/B) sum_i f_i(theta, phi_i*(theta)),   f_i = CE on the query set
    phi_i*(theta) = argmin_phi g_i(theta, phi),                     g_i = CE on the support + R(phi)

with K gradient steps ``phi^{k+1} = phi^k - lambda grad_phi g_i(theta, phi^k)`` on the support features.
R is the paper's ``rho/2 |phi|^2`` (``reg_form: half_squared``), or for ITD-BiO the official code's
``rho (|W|_2 + |b|_2)`` (``reg_form: norm``, its presets: rho 1e-4); the official memory-reduced code adds
none, but its presets keep the paper's R (rho 1e-3): with rho = 0 the system CG solves is singular (below).

- **Memory-reduced** (``memory_reduced``, the paper's Algorithm 1 and Subroutine 1): the K head steps keep
  no graph; N conjugate-gradient steps on head-only Hessian-vector products solve
  ``grad^2_phi g_i v = grad_phi f_i`` at phi^K; the hypergradient is
  ``grad_theta f_i(theta, phi^K) - grad^2_{theta phi} g_i(theta, phi^K) v``, obtained as the gradient of the
  surrogate ``f_i(theta, phi^K) - <grad_phi g_i(theta, phi^K), sg(v)>`` in one backbone backward. Memory
  does not grow with K.
- **ITD-BiO** (``itd_bio``, Ji, Yang & Liang, ICML 2021; the paper's baseline): the same K head steps
  kept differentiable, back-propagated through (iterative differentiation): memory grows with K.

Both compute each task's support and query features once (with a graph to theta) and reuse the detached
copies for the head steps and CG. Warm starts (the paper): phi^0 and v^0 of batch slot i are slot i's
phi^K and v^N of the previous outer step, state that checkpoints carry; off, every task starts from the
fixed head initialisation and v^0 = 0 (the official code). The head initialisation is not meta-learned
(as the code): its meta-gradient is zero. Hessian-vector products and the mixed term go through
``torch.func`` (``grad``, ``jvp``), so both executors run the same per-task function.

Why rho > 0 for the memory-reduced method: the head's cross-entropy Hessian is only positive semi-definite.
It is zero along the shift of every class's logit by the same amount (harmless: grad_phi f has no part
there) and along every feature direction the support set does not span; with 25 support images and 256 or
800 features that is most of phi, and grad_phi f, made of the query features, has a part there. CG on that
inconsistent system does not converge: with rho = 0 its iterate grows without bound (measured with random
images through an untrained Omniglot-size Conv4-64, 5-way 5-shot: after the code's 20 steps |v| is 500 to
2,000 times its rho = 1e-3 value and the residual hundreds of times |b|, in float32 and float64).
rho/2 |phi|^2 makes the system positive definite (the paper's strong convexity); ``tests/engine/
test_implicit.py`` shows both on a tiny head.

References:
    Yang, Ma, Yu. "Memory-Reduced Meta-Learning with Guaranteed Convergence", AAAI 2025 (arXiv 2412.12030;
    code yangxiaolin9527/RM-MetaL). Ji, Yang, Liang. "Bilevel Optimization: Convergence Analysis and
    Enhanced Design", ICML 2021. Where the paper and its code differ, metacli's choice is stated above;
    the options that select either, and the settings per dataset: docs/bilevel.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from metacli.engine.config.algorithms import ITDBiOConfig, MemoryReducedConfig
from metacli.engine.executors import Carry, Executor, meta_gradient_with_carry
from metacli.engine.functional import Learner, accuracy, clamp_elements
from metacli.engine.inner import descend, sgd_rule
from metacli.engine.models import param_group
from metacli.engine.parallel import DataParallel, over_shares_with_carry
from metacli.engine.types import Batch, Params, StepResult, Task
from metacli.errors import SpecError

HEAD_W, HEAD_B = "head.weight", "head.bias"


def conjugate_gradient(
    hvp: Callable[[Tensor], Tensor], b: Tensor, v0: Tensor, steps: int, tol: float = 0.0
) -> Tensor:
    """Subroutine 1: ``steps`` CG iterations on ``H v = b`` from ``v0`` (H symmetric positive definite).

    ``r^0 = p^0 = b - H v^0``; ``eta = r'r / p'Hp``; ``v += eta p``; ``r -= eta Hp``;
    ``p = r + (r'r)_new / (r'r)_old p``. Iterations whose residual is already below ``tol`` (or exactly
    zero) change nothing: written with ``torch.where`` rather than a break, so it runs under vmap.
    """
    v = v0
    r = b - hvp(v0)
    p = r
    rr = (r * r).sum()
    for _ in range(steps):
        h = hvp(p)
        active = rr > tol * tol
        php = (p * h).sum()
        eta = torch.where(active & (php != 0), rr / torch.where(php != 0, php, 1.0), 0.0)
        v = v + eta * p
        r = r - eta * h
        rr_new = (r * r).sum()
        zeta = torch.where(active & (rr != 0), rr_new / torch.where(rr != 0, rr, 1.0), 0.0)
        p = r + zeta * p
        rr = rr_new
    return v


class BilevelHead:
    """The memory-reduced algorithm and ITD-BiO: one class, the hypergradient chosen by ``cfg.name``.

    Args:
        cfg: the algorithm section of the run spec.
        learner: a model with ``body.*`` parameters and a linear ``head``.
        generator: unused (the algorithm draws nothing).
    """

    def __init__(
        self,
        cfg: MemoryReducedConfig | ITDBiOConfig,
        learner: Learner,
        generator: torch.Generator | None = None,
    ) -> None:
        del generator
        self.cfg = cfg
        self.learner = learner
        self.slots: dict[str, Tensor] = {}
        """Warm starts per batch slot: ``phi`` (B, q) and, for the memory-reduced method, ``v`` (B, q)."""

    # ---------------------------------------------------------------- the head as one vector

    def init_meta(self, params: Params) -> Params:
        """theta (the backbone) and the fixed head initialisation, as fresh leaves."""
        if HEAD_W not in params or HEAD_B not in params:
            raise SpecError(f"{self.cfg.name} needs a model with a linear head (head.weight, head.bias)")
        return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}

    @staticmethod
    def flat_head(meta: Params) -> Tensor:
        """phi as one vector ``[vec(W), b]`` (q = N (e + 1) numbers)."""
        return torch.cat([meta[HEAD_W].reshape(-1), meta[HEAD_B].reshape(-1)])

    @staticmethod
    def unpack(phi: Tensor, features: int) -> tuple[Tensor, Tensor]:
        """(W, b) from the flat phi of a head on ``features`` inputs."""
        n_out = phi.shape[0] // (features + 1)
        return phi[: n_out * features].view(n_out, features), phi[n_out * features :]

    @classmethod
    def logits(cls, phi: Tensor, z: Tensor) -> Tensor:
        """``z W^T + b`` with W and b unpacked from the flat phi."""
        w, b = cls.unpack(phi, z.shape[-1])
        return F.linear(z, w, b)

    def penalty(self, phi: Tensor, features: int) -> Tensor:
        """The lower level's L2 term R(phi): ``rho/2 |phi|^2`` (``half_squared``, the paper's R), or
        ``rho (|W|_2 + |b|_2)`` (``norm``: the official ITD-BiO code's ``1e-4 * (norm(W) + norm(b))``)."""
        if self.cfg.reg_form == "norm":
            w, b = self.unpack(phi, features)
            norms: Tensor = torch.linalg.vector_norm(w) + torch.linalg.vector_norm(b)
            return self.cfg.reg * norms
        return 0.5 * self.cfg.reg * (phi * phi).sum()

    def lower(self, phi: Tensor, z: Tensor, y: Tensor) -> Tensor:
        """g: the head's support loss (cross-entropy, or MSE for regression) plus R(phi) (:meth:`penalty`)."""
        return self.learner.loss_of_output(self.logits(phi, z), y) + self.penalty(phi, z.shape[-1])

    def upper(self, phi: Tensor, z: Tensor, y: Tensor) -> Tensor:
        """f: the head's query loss."""
        return self.learner.loss_of_output(self.logits(phi, z), y)

    def head_steps(
        self, phi0: Tensor, z: Tensor, y: Tensor, steps: int, lr: float, create_graph: bool
    ) -> Tensor:
        """phi^K: ``steps`` gradient steps on g from ``phi0`` (differentiable for ITD-BiO)."""
        phi, _ = descend(
            lambda k, p: self.lower(p["phi"], z, y), {"phi": phi0}, steps, sgd_rule(lr), create_graph
        )
        return phi["phi"]

    # ---------------------------------------------------------------- one task

    def task_loss(self, meta: Params, task: Task, carry: Carry) -> tuple[Tensor, dict[str, Tensor], Carry]:
        """(surrogate whose theta-gradient is the task's hypergradient, aux scalars, new carry).

        ``carry`` is the task's start ``{"phi": phi^0, "v": v^0}``; the new carry is ``{phi^K, v^N}``
        (ITD-BiO passes v^0 through). A :data:`~metacli.engine.executors.CarryTaskLoss` for the shared
        executors.
        """
        phi0, v0 = carry["phi"], carry["v"]
        zs = self.learner.features(meta, task.support.x)
        zq = self.learner.features(meta, task.query.x)
        ys, yq = task.support.y, task.query.y
        cfg = self.cfg
        if isinstance(cfg, ITDBiOConfig):
            phi_k = self.head_steps(phi0, zs, ys, cfg.inner_steps, cfg.inner_lr, create_graph=True)
            surrogate, v = self.upper(phi_k, zq, yq), v0
        else:
            zs_c, zq_c = zs.detach(), zq.detach()
            phi_k = self.head_steps(phi0.detach(), zs_c, ys, cfg.inner_steps, cfg.inner_lr, False).detach()
            b = torch.func.grad(self.upper)(phi_k, zq_c, yq)
            grad_g = torch.func.grad(self.lower)

            def hvp(w: Tensor) -> Tensor:
                tangent: Tensor = torch.func.jvp(lambda p: grad_g(p, zs_c, ys), (phi_k,), (w,))[1]
                return tangent

            v = conjugate_gradient(hvp, b, v0, cfg.cg_steps, cfg.cg_tol).detach()
            # d/dtheta of <grad_phi g(zs(theta), phi^K), v> is the mixed term grad^2_{theta phi} g v
            mixed = (grad_g(phi_k, zs, ys) * v).sum()
            surrogate = self.upper(phi_k, zq, yq) - mixed
        with torch.no_grad():
            out = self.logits(phi_k.detach(), zq.detach())
            aux = {"query_loss": self.learner.loss_of_output(out, yq)}
            if self.learner.criterion == "cross_entropy":
                aux["accuracy"] = accuracy(out, yq)
        return surrogate, aux, {"phi": phi_k.detach(), "v": v}

    # ---------------------------------------------------------------- the meta-step

    def _starts(self, meta: Params, n_tasks: int) -> tuple[Tensor, Tensor]:
        phi_init = self.flat_head(meta).detach()
        fresh = (
            phi_init.expand(n_tasks, -1).clone(),
            torch.zeros(n_tasks, phi_init.numel(), **_like(phi_init)),
        )
        if not self.cfg.warm_start or "phi" not in self.slots or self.slots["phi"].shape[0] != n_tasks:
            return fresh
        v0 = self.slots.get("v", fresh[1])
        return self.slots["phi"].to(phi_init), v0.to(phi_init)

    def meta_step(
        self, meta: Params, tasks: Task, executor: str = "loop", parallel: DataParallel | None = None
    ) -> StepResult:
        """The mean hypergradient over the stacked ``tasks``; updates the warm-start slots.

        The shared executors run :meth:`task_loss` with the starts as per-task carry; the logged loss is
        the mean query loss f_i(theta, phi^K) (the surrogate's value is not a loss).

        Args:
            meta: meta-parameters (backbone and the fixed head initialisation).
            tasks: B tasks stacked on a leading axis (slot i = task i).
            executor: ``"loop"`` (one task's graph at a time) or ``"vmap"``.
            parallel: data-parallel ranks: this one computes its share of the tasks (and of the slots);
                the mean hypergradient and every slot are combined on all ranks.
        """
        phi0, v0 = self._starts(meta, tasks.query.x.shape[0])

        def share_step(share: Task, starts: Carry) -> tuple[StepResult, Carry]:
            # the executor name is validated in meta_gradient_with_carry
            return meta_gradient_with_carry(self.task_loss, meta, share, starts, cast(Executor, executor))

        result, ends = over_shares_with_carry(share_step, tasks, {"phi": phi0, "v": v0}, parallel)
        if self.cfg.warm_start:
            self.slots = {"phi": ends["phi"]}
            if isinstance(self.cfg, MemoryReducedConfig):
                self.slots["v"] = ends["v"]
        clamped = clamp_elements(result.grads, self.cfg.grad_clip)
        return result._replace(loss=result.metrics["query_loss"], grads=clamped)

    # ---------------------------------------------------------------- evaluation and the rest

    def adapt(
        self,
        meta: Params,
        support: Batch,
        steps: int | None = None,
        create_graph: bool = False,
        generator: torch.Generator | None = None,
    ) -> Params:
        """Evaluation: the backbone frozen, the head fine-tuned ``steps`` steps from its initialisation.

        Returns the parameters with the adapted head (``eval_inner_lr``, default ``inner_lr``).
        """
        del generator
        steps = self.cfg.eval_inner_steps if steps is None else steps
        lr = self.cfg.eval_inner_lr or self.cfg.inner_lr
        z = self.learner.features(meta, support.x)
        if not create_graph:
            z = z.detach()
        phi = self.head_steps(self.flat_head(meta), z, support.y, steps, lr, create_graph)
        n_out = meta[HEAD_B].shape[0]
        return {**meta, HEAD_W: phi[:-n_out].view_as(meta[HEAD_W]), HEAD_B: phi[-n_out:]}

    def extra_metrics(self, meta: Params) -> dict[str, float]:
        """No extra meta-parameters."""
        del meta
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The warm-start slots (CPU copies), for checkpoints."""
        return {k: v.detach().cpu() for k, v in self.slots.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the warm-start slots of :meth:`state_dict`."""
        self.slots = {k: cast(Tensor, v) for k, v in state.items()}

    def outer_optimizer(
        self, meta: Params, total_steps: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """Plain SGD (the paper) or Adam (the code) on the backbone; the head initialisation stays fixed."""
        del total_steps
        body = [v for k, v in meta.items() if param_group(k) == "body"]
        if self.cfg.outer_optimizer == "adam":
            return torch.optim.Adam(body, lr=self.cfg.outer_lr), None
        return torch.optim.SGD(body, lr=self.cfg.outer_lr), None


def _like(t: Tensor) -> dict[str, Any]:
    return {"dtype": t.dtype, "device": t.device}
