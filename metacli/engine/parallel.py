"""Data parallelism over ``torch.distributed``: each rank takes a share of the tasks, results are combined.

Few-shot meta-training: every rank draws the whole meta-batch of B tasks from the run's generator (the same
on every rank), keeps its contiguous share (:meth:`DataParallel.share`), and computes the mean
meta-gradient of its n_r tasks; :meth:`DataParallel.mean` turns those into the mean over all B tasks::

    g = (1/B) sum_r n_r g_r        (one all-reduce of the packed gradients, loss and metrics)

so every rank takes the same outer step, and the result equals one process's up to the order of the
floating-point sum. Per-task state (warm starts) and per-task evaluation results are put back together
in task order by :meth:`DataParallel.gather`. The process group is set up by the caller (the run layer);
this module only uses it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from metacli.engine.executors import Carry, task_at
from metacli.engine.guards import PeerLost
from metacli.engine.types import StepResult, Task


class DataParallel:
    """This process's place in a data-parallel group (``rank`` of ``world``) and its collectives."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def bounds(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """[start, stop) of ``rank``'s share of ``n`` items: contiguous, sizes differing by at most one."""
        r = self.rank if rank is None else rank
        base, extra = divmod(n, self.world)
        start = r * base + min(r, extra)
        return start, start + base + (r < extra)

    def share(self, n: int) -> slice:
        """This rank's share of ``n`` items (tasks of a meta-batch, task ids of an evaluation)."""
        return slice(*self.bounds(n))

    def mean(self, result: StepResult, n_local: int, n_total: int) -> StepResult:
        """The mean over all ranks' tasks of a step result that is the mean over this rank's ``n_local``."""
        keys = list(result.grads)
        names = list(result.metrics)
        flat = torch.cat(
            [result.grads[k].reshape(-1) for k in keys]
            + [
                torch.tensor(
                    [result.loss, *result.metrics.values()],
                    dtype=result.grads[keys[0]].dtype,
                    device=result.grads[keys[0]].device,
                )
            ]
        )
        flat = flat * (n_local / n_total)
        with peers_answer():
            dist.all_reduce(flat)
        grads, offset = {}, 0
        for k in keys:
            size = result.grads[k].numel()
            grads[k] = flat[offset : offset + size].view_as(result.grads[k])
            offset += size
        scalars = flat[offset:].tolist()
        return StepResult(scalars[0], grads, dict(zip(names, scalars[1:], strict=True)))

    def gather(self, local: Tensor, n_total: int) -> Tensor:
        """Every rank's ``local`` rows (its share of ``n_total``), concatenated in rank order (task order)."""
        start, stop = self.bounds(n_total, 0)  # rank 0's share is the widest
        padded = local.new_zeros((stop - start, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        with peers_answer():
            dist.all_gather(parts, padded.contiguous())
        sizes = [stop - start for start, stop in (self.bounds(n_total, r) for r in range(self.world))]
        return torch.cat([p[:size] for p, size in zip(parts, sizes, strict=True)])

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a stop signal seen by one rank stops all)."""
        t = torch.tensor([float(flag)], device=self._device())
        with peers_answer():
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def slowest(self, values: list[float]) -> list[float]:
        """Each of ``values`` at its largest over the ranks (a step is as slow as its slowest rank)."""
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        with peers_answer():
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [float(v) for v in t.tolist()]

    def _device(self) -> torch.device:
        backend = dist.get_backend()
        return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


@contextlib.contextmanager
def peers_answer() -> Iterator[None]:
    """Turn a failed collective into :class:`PeerLost` with the first line of torch's message.

    gloo and NCCL raise a plain ``RuntimeError`` (``DistError`` in newer torch, a subclass) when a peer's
    connection closes (its process died) or the group's timeout passes (its machine stopped answering);
    nothing else can fail inside a collective of tensors this module shaped itself.
    """
    try:
        yield
    except RuntimeError as e:
        raise PeerLost(collective_error_detail(str(e))) from e


def collective_error_detail(message: str) -> str:
    """The cause in a gloo or NCCL error: its first sentence, without the ``[file.cc:123]`` location."""
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", message.strip())
    return text.split(". ")[0].strip().rstrip(".") or "no message"


def over_shares(step: Callable[[Task], StepResult], tasks: Task, parallel: DataParallel | None) -> StepResult:
    """``step`` (a mean over the tasks it is given) on this rank's share of ``tasks``, made the mean over all.

    Without ``parallel``: ``step(tasks)``.
    """
    return over_shares_with_carry(lambda share, _: (step(share), {}), tasks, {}, parallel)[0]


def over_shares_with_carry(
    step: Callable[[Task, Carry], tuple[StepResult, Carry]],
    tasks: Task,
    carry: Carry,
    parallel: DataParallel | None,
) -> tuple[StepResult, Carry]:
    """:func:`over_shares` for a step that also maps per-task carry rows (one row per task) to new ones.

    Each rank passes its share of the tasks and of the carry rows; the new rows of every rank are
    gathered back in task order, so every rank holds the whole carry afterwards.
    Without ``parallel``: ``step(tasks, carry)``.
    """
    if parallel is None:
        return step(tasks, carry)
    n = tasks.query.x.shape[0]
    share = parallel.share(n)
    result, local = step(task_at(tasks, share), {k: v[share] for k, v in carry.items()})
    mean = parallel.mean(result, share.stop - share.start, n)
    return mean, {k: parallel.gather(v, n) for k, v in local.items()}
