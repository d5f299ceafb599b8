"""The data-parallel shares, without a process group: each rank computes its own tasks, none twice."""

from __future__ import annotations

import pytest
import torch

from metacli.engine.parallel import DataParallel, over_shares
from metacli.engine.types import Batch, StepResult, Task


@pytest.mark.parametrize(("n", "world"), [(5, 2), (2, 3), (32, 4), (7, 7), (1, 2)])
def test_shares_are_contiguous_cover_every_item_once_and_differ_by_at_most_one(n: int, world: int) -> None:
    bounds = [DataParallel(r, world).bounds(n) for r in range(world)]
    assert [b[0] for b in bounds] == [0] + [b[1] for b in bounds[:-1]] and bounds[-1][1] == n
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)  # rank 0 is the widest


class Recorder(DataParallel):
    """A rank that records what it was asked to combine instead of all-reducing."""

    def mean(self, result: StepResult, n_local: int, n_total: int) -> StepResult:
        self.seen = (result, n_local, n_total)
        return result


def test_over_shares_gives_the_step_only_this_ranks_tasks() -> None:
    ids = torch.arange(5.0)
    tasks = Task(Batch(ids[:, None], ids), Batch(ids[:, None], ids))
    rank = Recorder(1, 2)

    def step(share: Task) -> StepResult:
        return StepResult(float(share.query.y.mean()), {"w": share.query.y.sum().reshape(1)}, {})

    over_shares(step, tasks, rank)
    result, n_local, n_total = rank.seen
    assert (n_local, n_total) == (2, 5) and result.grads["w"].item() == 3.0 + 4.0  # tasks 3 and 4 only
