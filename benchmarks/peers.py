"""Second-order MAML meta-steps written with other tools, for :mod:`benchmarks.suite`.

Each peer gets metacli's network and parameters (:func:`torch_module`: the same module with every
:class:`~metacli.engine.models.layers.BatchNorm` replaced by ``nn.BatchNorm2d(track_running_stats=False)``,
i.e. PyTorch's fused batch norm with batch statistics, its blocks in the papers' order activation ->
max-pool as a user of these tools writes them (metacli pools first,
:func:`~metacli.engine.models.layers.pool_then_act`: the same function and gradients, less work), and
``load_state_dict`` of metacli's parameter dict),
the same stacked tasks, the same task loss (:meth:`metacli.engine.functional.Learner.loss_of_output`: mean
MSE or cross-entropy) and the same alpha, inner steps, outer Adam learning rate and meta-gradient clamp.

- :class:`AutogradLoop`: plain PyTorch, per task: ``torch.autograd.grad(create_graph=True)`` inner steps
  through :func:`torch.func.functional_call`, then ``(query loss / B).backward()``.
- :class:`Higher`: ``higher.innerloop_ctx(net, SGD(lr=alpha), copy_initial_weights=False)`` per task and
  ``(query loss / B).backward()`` inside it, as higher's ``examples/maml-omniglot.py``.
- :class:`TorchOptMetaSGD`: ``torchopt.MetaSGD(net, lr=alpha)`` stepped in place, the module and optimiser
  states restored with ``torchopt.extract_state_dict`` / ``recover_state_dict`` after each task, and one
  backward of the mean query loss at the end, as TorchOpt's ``examples/few-shot/maml_omniglot.py`` (the
  MAML example of its documentation); so all B task graphs are alive at once there.

Every peer's outer step is ``torch.optim.Adam`` on the module's parameters after the same elementwise clamp
that metacli's MAML applies (``grad_clip``; none by default).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metacli.engine.executors import task_at
from metacli.engine.models.conv4 import ConvBlock
from metacli.engine.models.layers import BatchNorm
from metacli.engine.models.resnet12 import ResBlock
from metacli.engine.types import Params, Task

LossOfOutput = Callable[[Tensor, Tensor], Tensor]


class Problem(NamedTuple):
    """What every contender of a MAML case shares besides the network."""

    tasks: Task
    """B tasks stacked on a leading axis."""
    loss: LossOfOutput
    """(outputs, targets) -> mean loss."""
    alpha: float
    inner_steps: int
    outer_lr: float
    grad_clip: float | None


class TextbookConvBlock(ConvBlock):
    """metacli's Conv4 block in the papers' order: ``conv -> batch norm -> ReLU -> max-pool``."""

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(torch.relu(self.norm(self.conv(x))))  # type: ignore[no-any-return]


class TextbookResBlock(ResBlock):
    """metacli's ResNet-12 block as the papers write it: out-of-place LeakyReLU, the last before the pool."""

    def _act(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self._act(self.residual_sum(x)))  # type: ignore[no-any-return]


TEXTBOOK: dict[type[nn.Module], type[nn.Module]] = {ConvBlock: TextbookConvBlock, ResBlock: TextbookResBlock}
"""metacli's blocks and their peers' versions (same parameters, same function)."""


def torch_module(model: nn.Module, params: Params) -> nn.Module:
    """A copy of metacli's ``model``, fused ``nn.BatchNorm2d`` and textbook blocks, holding ``params``."""
    net = copy.deepcopy(model)
    for module in net.modules():
        if type(module) in TEXTBOOK:
            module.__class__ = TEXTBOOK[type(module)]  # same attributes, only forward differs
    for name, module in list(net.named_modules()):
        if isinstance(module, BatchNorm):
            parent_name, _, child = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            eps = float(getattr(module, "eps", 1e-5))
            norm = nn.BatchNorm2d(module.weight.numel(), eps=eps, track_running_stats=False)
            setattr(parent, child, norm.to(module.weight.device, module.weight.dtype))
    net.load_state_dict({k: v.detach() for k, v in params.items()}, strict=True)
    return net


class Peer(ABC):
    """One peer contender: its own module (the meta-parameters) and outer Adam."""

    name: str = ""

    def __init__(self, model: nn.Module, params: Params, problem: Problem) -> None:
        self.net = torch_module(model, params)
        self.problem = problem
        self.meta_opt = torch.optim.Adam(self.net.parameters(), lr=problem.outer_lr)

    @abstractmethod
    def accumulate(self) -> None:
        """Add the meta-gradient of the mean query loss to the ``.grad`` of the module's parameters."""

    def _clamped_grads(self) -> Params:
        clip = self.problem.grad_clip
        grads = {}
        for k, p in self.net.named_parameters():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            grads[k] = g if clip is None else g.clamp_(-clip, clip)
        return grads

    def meta_gradient(self) -> Params:
        """The (clamped) meta-gradient at the current parameters, keyed by metacli's names."""
        self.net.zero_grad(set_to_none=True)
        self.accumulate()
        grads = {k: g.detach().clone() for k, g in self._clamped_grads().items()}
        self.net.zero_grad(set_to_none=True)
        return grads

    def step(self) -> None:
        """One meta-step: forward, meta-gradient, clamp, Adam."""
        self.accumulate()
        self._clamped_grads()
        self.meta_opt.step()
        self.meta_opt.zero_grad(set_to_none=True)


class AutogradLoop(Peer):
    """Per task: inner SGD by ``torch.autograd.grad(create_graph=True)``, then backward of the query loss."""

    name = "autograd loop"

    def accumulate(self) -> None:
        p = self.problem
        meta = dict(self.net.named_parameters())
        n_tasks = p.tasks.query.x.shape[0]
        for i in range(n_tasks):
            task = task_at(p.tasks, i)
            fast = meta
            for _ in range(p.inner_steps):
                loss = p.loss(functional_call(self.net, fast, (task.support.x,)), task.support.y)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
                fast = {k: w - p.alpha * g for (k, w), g in zip(fast.items(), grads, strict=True)}
            query = functional_call(self.net, fast, (task.query.x,))
            (p.loss(query, task.query.y) / n_tasks).backward()


class Higher(Peer):
    """Per task: ``higher.innerloop_ctx`` with SGD, ``copy_initial_weights=False``, backward inside it."""

    name = "higher"

    def __init__(self, model: nn.Module, params: Params, problem: Problem) -> None:
        import higher

        super().__init__(model, params, problem)
        self.higher = higher
        self.inner_opt = torch.optim.SGD(self.net.parameters(), lr=problem.alpha)

    def accumulate(self) -> None:
        p = self.problem
        n_tasks = p.tasks.query.x.shape[0]
        for i in range(n_tasks):
            task = task_at(p.tasks, i)
            with self.higher.innerloop_ctx(self.net, self.inner_opt, copy_initial_weights=False) as (
                fnet,
                diffopt,
            ):
                for _ in range(p.inner_steps):
                    diffopt.step(p.loss(fnet(task.support.x), task.support.y))
                (p.loss(fnet(task.query.x), task.query.y) / n_tasks).backward()


class TorchOptMetaSGD(Peer):
    """``torchopt.MetaSGD`` in place, states restored per task, one backward of the mean query loss."""

    name = "torchopt MetaSGD"

    def __init__(self, model: nn.Module, params: Params, problem: Problem) -> None:
        import torchopt

        super().__init__(model, params, problem)
        self.torchopt = torchopt
        self.inner_opt = torchopt.MetaSGD(self.net, lr=problem.alpha)

    def accumulate(self) -> None:
        p, to = self.problem, self.torchopt
        net_state = to.extract_state_dict(self.net, by="reference", detach_buffers=True)
        opt_state = to.extract_state_dict(self.inner_opt, by="reference")
        losses = []
        for i in range(p.tasks.query.x.shape[0]):
            task = task_at(p.tasks, i)
            for _ in range(p.inner_steps):
                self.inner_opt.step(p.loss(self.net(task.support.x), task.support.y))
            losses.append(p.loss(self.net(task.query.x), task.query.y))
            to.recover_state_dict(self.net, net_state)
            to.recover_state_dict(self.inner_opt, opt_state)
        torch.stack(losses).mean().backward()


PEERS: dict[str, type[Peer]] = {cls.name: cls for cls in (AutogradLoop, Higher, TorchOptMetaSGD)}
"""Peer contenders by table name."""
REQUIRES: dict[str, str | None] = {"autograd loop": None, "higher": "higher", "torchopt MetaSGD": "torchopt"}
"""The package each peer needs (None: torch alone)."""
