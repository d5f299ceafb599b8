"""The progress display's ETA: honest when each online round costs more than the one before."""

from __future__ import annotations

import io
import itertools

import pytest
from rich.console import Console

from metacli import progress
from metacli.progress import Reporter, eta_seconds


def growing_run(rounds: int) -> list[tuple[float, float]]:
    """(rounds done, seconds) of a run whose round t costs 0.05 + 0.002 t seconds (LTM over t tasks)."""
    elapsed = list(itertools.accumulate(0.05 + 0.002 * t for t in range(1, rounds + 1)))
    return [(float(t), elapsed[t - 1]) for t in range(10, rounds + 1, 10)]


def test_eta_follows_a_cost_that_grows_with_the_round() -> None:
    """Catches a linear extrapolation: at round 200 of 1000 it predicts under half of the time left."""
    samples = growing_run(200)
    truth = sum(0.05 + 0.002 * t for t in range(201, 1001))
    linear = 800 * samples[-1][1] / 200
    assert linear < 0.5 * truth  # what the old estimate said
    assert eta_seconds(samples, 800) == pytest.approx(truth, rel=0.01)


def test_eta_of_a_steady_run_is_the_plain_extrapolation() -> None:
    steady = [(float(t), 0.01 * t) for t in range(1, 50)]
    assert eta_seconds(steady, 100) == pytest.approx(1.0)
    warming = [(float(t), 0.5 + 0.01 * t) for t in range(1, 50)]  # a slow first step, then steady
    assert eta_seconds(warming, 100) == pytest.approx(100 * warming[-1][1] / 49)
    assert eta_seconds([], 10) != eta_seconds([], 10)  # NaN: nothing done yet, shown as '?'


def test_plain_progress_lines_show_the_growing_cost_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    monkeypatch.setenv("METACLI_PROGRESS_EVERY", "1000")
    rep = Reporter("moml on smnist", 1000, quiet=True, unit="round", console=Console(file=io.StringIO()))
    for t, seconds in growing_run(200):
        clock[0] = seconds
        rep.update(int(t))
    truth = sum(0.05 + 0.002 * t for t in range(201, 1001))
    assert rep.eta() == pytest.approx(truth, rel=0.02)
    assert f"eta {progress.clock(rep.eta())}" in rep.status_line()
