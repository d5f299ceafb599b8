"""``torchrun`` support: the process group of a data-parallel run, and this process's rank.

``torchrun --nproc-per-node N -m metacli train SPEC`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and a rendezvous in the environment. A single run then trains data-parallel
(:mod:`metacli.engine.parallel`): NCCL between GPUs (one per process, ``cuda:LOCAL_RANK``), gloo between
CPU processes. A grid spreads its points over the ranks instead, each rank training whole points alone.

A process that dies closes its connections, and the others' next collective fails at once; a machine that
stops answering (powered off, cut off) closes nothing, so the others wait in their collective until the
group's timeout, :data:`TIMEOUT_ENV` seconds (default :data:`DEFAULT_TIMEOUT_S`). Either way the run
stops with exit 1 and the last checkpoint (:class:`metacli.engine.guards.PeerLost`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from metacli.errors import SpecError

TIMEOUT_ENV = "METACLI_DIST_TIMEOUT"
"""Seconds a process waits for the others in one collective (and to join the group) before it gives up."""

DEFAULT_TIMEOUT_S = 1800.0
"""Thirty minutes: longer than any wait between two collectives of a healthy run (rank 0 writing a
checkpoint, a slow rank decoding its data at the start), short enough not to hold a cluster for hours."""

if TYPE_CHECKING:
    from metacli.engine.parallel import DataParallel


class Place(NamedTuple):
    """Where this process is in a ``torchrun`` launch (rank 0 of 1 without one)."""

    rank: int
    world: int
    local_rank: int

    @property
    def writer(self) -> bool:
        """Rank 0 alone writes run directories, logs and checkpoints, and prints."""
        return self.rank == 0


def place() -> Place:
    """This process's rank, world size and local rank, from torchrun's environment variables."""
    try:
        return Place(
            int(os.environ.get("RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError:
        raise SpecError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them); unset them to run one "
            "process."
        ) from None


def collective_timeout() -> datetime.timedelta:
    """The group's timeout: ``$METACLI_DIST_TIMEOUT`` seconds, or :data:`DEFAULT_TIMEOUT_S`.

    Raises:
        SpecError: the variable is set to something other than a positive number.
    """
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise SpecError(
            f"{TIMEOUT_ENV}={raw!r}: give a positive number of seconds, or unset it (30 minutes)."
        )
    return datetime.timedelta(seconds=seconds)


@contextlib.contextmanager
def process_group(device: str | None) -> Iterator[tuple[DataParallel | None, str | None]]:
    """The data-parallel group of a torchrun launch, for the duration of one run.

    Yields (``DataParallel`` or None without torchrun, the device for this process): ``cuda:LOCAL_RANK``
    with NCCL where CUDA is present and ``device`` is not ``cpu``, else ``device`` with gloo.
    """
    where = place()
    if where.world == 1:
        yield None, device
        return
    import torch
    import torch.distributed as dist

    from metacli.engine.parallel import DataParallel  # noqa: F811 (the run-time import of the name)

    use_cuda = torch.cuda.is_available() and (device or "auto") != "cpu"
    if use_cuda:
        torch.cuda.set_device(where.local_rank)
        device = f"cuda:{where.local_rank}"
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=collective_timeout())
    try:
        yield DataParallel(where.rank, where.world), device
        # every rank done with its collectives before any tears the group down: a rank whose peer has
        # already closed its sockets can abort in gloo's teardown ("terminate called without an active
        # exception") after a successful run
        dist.barrier()
    finally:
        dist.destroy_process_group()
