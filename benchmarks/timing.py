"""Timing helpers shared by the benchmark scripts: synchronised medians and a device label."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a timing covers the kernels and not only their launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one untimed warm-up call.

    The warm-up pays for allocator growth and kernel selection, which later calls do not.
    """
    times = []
    for i in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        if i > 0:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}"


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes that torch allocated during ``fn()`` beyond what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation at the start. CPU: the running sum of
    the allocation and free events that the profiler records (``profile_memory=True``), so this counts
    every tensor torch allocates on the CPU, including those freed before ``fn`` returns.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak
