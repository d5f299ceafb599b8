"""The CPU peak-memory measurement: a number, and no profiler log lines on the user's stderr."""

from __future__ import annotations

import os

import pytest
import torch

from metacli.engine import memory


def test_cpu_peak_hides_the_profilers_log_lines_and_passes_other_stderr_on(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Catches the C++ warning 'CPUAllocator.cpp ... profiler results will not include the deallocation
    event' (a tensor made before the step and freed in it) reaching the train output, and a filter that
    swallows everything else written to stderr meanwhile."""
    held = [torch.randn(1000, 1000)]  # allocated before the measurement starts

    def step() -> None:
        held.clear()  # freed while the profiler runs: the case that makes the allocator log
        torch.ones(250_000).sum()
        os.write(2, b"a line from the step\n")

    peak = memory.peak_bytes(step, torch.device("cpu"))
    err = capfd.readouterr().err
    assert "CPUAllocator" not in err and "profiler_st" not in err, err
    assert "a line from the step" in err
    assert peak >= 250_000 * 4  # the step's own tensor, measured
