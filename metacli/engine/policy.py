"""The automatic choices of a run: torch's CPU thread count and the meta-batch executor.

``threads: auto`` and ``train.executor: auto`` (the defaults) are resolved here, once, when a run is
built; the resolved values are written to the run's ``spec.yaml`` (so a resumed run uses the same ones,
which keeps it bit-reproducible) and to ``summary.json``.

Threads (CPU). torch's default is one intra-op thread per core, and on a machine where other processes
already keep cores busy those threads spin against each other and a run can slow down many times over.
So ``auto`` takes:

1. ``$OMP_NUM_THREADS`` when it is set (the convention torch and OpenMP follow);
2. 1 for small models (under :data:`SMALL_MODEL_PARAMS` parameters): intra-op threads only add
   overhead to kernels that small;
3. otherwise the cores this process may run on, less the cores other processes keep busy (measured
   from ``/proc/stat`` over a quarter of a second while this process sleeps; the 1-minute load average
   where ``/proc/stat`` is absent), and at least 1.

Executor. A few-shot run's ``train.executor: auto`` is decided by timing both executors on the run's
own tasks (:mod:`metacli.engine.executor_choice`), since the faster one depends on the query count, the
inner steps and the device as much as on the input size. :func:`choose_executor` is the input-size rule
that remains for online runs, which record an executor but train without one: ``vmap`` on CUDA and on the
CPU for inputs of at most :data:`VMAP_MAX_INPUT` values per example, ``loop`` otherwise and for a
meta-batch of one task.
"""

from __future__ import annotations

import math
import os
import time
from typing import Literal

import torch

from metacli.engine.config.fields import MAX_THREADS

SMALL_MODEL_PARAMS = 50_000
"""Below this many parameters one CPU thread is fastest (sinusoid MLP: 1,761)."""

BUSY_WINDOW_S = 0.25
"""How long ``threads: auto`` watches the CPUs to see how many other processes keep busy."""

VMAP_MAX_INPUT = 32 * 32 * 3
"""Largest per-example input (values) for which vmap beats the loop on the CPU (Omniglot 784: yes;
miniImageNet 21,168: no)."""


def free_cores() -> int:
    """Cores this process may use, less those other processes keep busy right now, at least 1."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    busy = busy_cores()
    return max(1, usable - round(busy))


def busy_cores(window_s: float = BUSY_WINDOW_S) -> float:
    """How many cores other processes use: from /proc/stat over ``window_s`` while this process sleeps.

    The 1-minute load average is the fallback where /proc/stat is absent; it lags, and it counts a
    finished run of our own (a grid's previous point) as load, which /proc/stat over a window does not.
    """
    first = _cpu_times()
    if first is None:
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    time.sleep(window_s)
    second = _cpu_times()
    if second is None:
        return 0.0
    total = sum(b - a for a, b in zip(first, second, strict=True))
    idle = (second[3] + second[4]) - (first[3] + first[4])  # idle + iowait
    return (os.cpu_count() or 1) * (1.0 - idle / total) if total > 0 else 0.0


def _cpu_times() -> list[int] | None:
    """The aggregate ``cpu`` line of /proc/stat (user nice system idle iowait irq softirq steal), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    return [int(v) for v in fields[1:9]]


def choose_threads(n_params: int) -> int:
    """The thread count of ``threads: auto`` (see the module docstring)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return min(int(env), MAX_THREADS)  # the most a spec may record (beyond it torch only thrashes)
    if n_params < SMALL_MODEL_PARAMS:
        return 1
    return free_cores()


def choose_executor(
    device: torch.device, in_shape: tuple[int, ...], meta_batch: int
) -> Literal["loop", "vmap"]:
    """The executor of ``train.executor: auto`` (see the module docstring)."""
    if meta_batch == 1:
        return "loop"
    if device.type == "cuda":
        return "vmap"
    return "vmap" if math.prod(in_shape) <= VMAP_MAX_INPUT else "loop"
