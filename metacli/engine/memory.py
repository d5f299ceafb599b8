"""Peak memory of a meta-training step, measured (not estimated) on every device.

- CUDA: ``torch.cuda.max_memory_allocated`` during the step, above the allocation before it (the peak
  counter reset at the start, as the memory-reduced paper's code does).
- CPU: torch has no CPU allocator statistics, so the step runs under ``torch.profiler`` with
  ``profile_memory=True`` and the peak of the running sum of its allocation and free events is taken:
  every tensor torch allocates on the CPU during the step, including those freed before it ends, and
  nothing else (not Python objects, not the allocator's cached blocks). Summing the tensors saved for
  backward with ``saved_tensors_hooks`` would miss the forward's transient tensors and is refused
  inside ``torch.func`` transforms, which metacli's vmap executor and implicit gradients use.

Both count only the step's own allocations; the run's resident state (meta-parameters, optimiser
state, the algorithm's warm starts) is reported beside it by :func:`state_bytes`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from metacli.engine.functional import tensor_bytes

BYTES_PER_MB = 1e6


def method(device: torch.device) -> str:
    """What :func:`peak_bytes` measures on ``device``, for logs and tables."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during the step, above the allocation before it"
    return "peak of torch's CPU tensor allocations minus frees during the step (torch.profiler memory events)"


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes torch allocated during ``fn()`` beyond what was allocated before it (see the module)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _stderr_without(PROFILER_NOISE):
        prof.start()
        try:
            fn()
        finally:
            prof.stop()
    assert prof.profiler is not None and prof.profiler.kineto_results is not None
    # memory events carry nbytes (negative for a free); torch's stubs type them as generic events
    events: list[Any] = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak


PROFILER_NOISE = ("SyncActivityProfilerHandler.cpp", "CPUAllocator.cpp")
"""Sources of the C++ log lines the profiler prints on stderr and that say nothing about the run: torch
2.13's ``USDT ... profiler_start`` / ``profiler_stop``, and ``Memory block of unknown size was allocated
before the profiling started`` for every tensor made before the step and freed in it (expected: the step
frees the previous step's tensors, and its peak counts only its own allocations)."""


@contextlib.contextmanager
def _stderr_without(noise: tuple[str, ...]) -> Iterator[None]:
    """Hold what is written to file descriptor 2 meanwhile, then pass on every line naming none of ``noise``.

    C++ logging writes to the descriptor directly, so Python cannot filter it; a line of anything else
    (a real error printed by C++ code) still reaches the terminal, after the block.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().splitlines(keepends=True)
            kept = b"".join(line for line in lines if not any(n.encode() in line for n in noise))
            if kept:
                os.write(2, kept)


def optimizer_state(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The tensors of ``optimizer``'s per-parameter state (Adam's moments and step, SGD's momentum)."""
    return [v for s in optimizer.state.values() for v in s.values() if isinstance(v, Tensor)]


def state_bytes(tensors: Iterable[Tensor], optimizer: torch.optim.Optimizer, extra: dict[str, Any]) -> int:
    """Bytes of the resident state: meta-parameters, optimiser state and the algorithm's own tensors."""
    held = [*tensors, *optimizer_state(optimizer)]
    return tensor_bytes([*held, *(v for v in extra.values() if isinstance(v, Tensor))])
