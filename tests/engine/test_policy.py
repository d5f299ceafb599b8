"""``threads: auto`` and ``train.executor: auto``: the rules, and that a run records what they chose.

The executor's measurement itself: ``tests/engine/test_executor_choice.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from metacli.cli import app
from metacli.engine import policy
from metacli.runlayer.parts import build_run
from metacli.spec import load_spec

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_omp_num_threads_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert policy.choose_threads(10_000_000) == 3


def test_small_models_get_one_thread_large_ones_the_free_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(policy.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(policy, "busy_cores", lambda: 1.4)
    assert policy.choose_threads(policy.SMALL_MODEL_PARAMS - 1) == 1
    assert policy.choose_threads(policy.SMALL_MODEL_PARAMS) == 3  # 4 cores, about 1 busy
    monkeypatch.setattr(policy, "busy_cores", lambda: 9.0)
    assert policy.choose_threads(10**6) == 1  # an overloaded machine still gets one thread


def test_busy_cores_reads_the_cpu_time_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the window, 3 of every 4 jiffies idle on a 2-core machine: half a core busy."""
    samples = iter([[100, 0, 0, 700, 0, 0, 0, 0], [150, 0, 0, 850, 0, 0, 0, 0]])
    monkeypatch.setattr(policy, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(policy.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(policy.time, "sleep", lambda s: None)
    assert policy.busy_cores() == pytest.approx(0.5)


def test_busy_cores_sees_a_busy_process() -> None:
    """A real spinning child process shows up as (about) one busy core."""
    if policy._cpu_times() is None:
        pytest.skip("no /proc/stat on this system")
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 5: pass"]
    )
    try:
        time.sleep(0.3)
        assert policy.busy_cores(window_s=0.5) > 0.6
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(
    ("device", "shape", "batch", "expected"),
    [
        (CPU, (1,), 25, "vmap"),  # sinusoid
        (CPU, (1, 28, 28), 32, "vmap"),  # Omniglot
        (CPU, (3, 84, 84), 4, "loop"),  # miniImageNet
        (CUDA, (3, 84, 84), 4, "vmap"),
        (CUDA, (3, 84, 84), 1, "loop"),  # one task: nothing to batch
    ],
)
def test_executor_rule(device: torch.device, shape: tuple[int, ...], batch: int, expected: str) -> None:
    assert policy.choose_executor(device, shape, batch) == expected


def test_build_resolves_auto_and_keeps_explicit_choices() -> None:
    spec, _ = load_spec(algo="maml", dataset="sinusoid", overrides=["threads=auto", "train.executor=auto"])
    built = build_run(spec, device="cpu")
    assert built.executor_choice is not None  # measured: tests/engine/test_executor_choice.py
    assert built.spec.threads == 1 and built.spec.train.executor == built.executor_choice.chosen
    spec, _ = load_spec(algo="maml", dataset="sinusoid", overrides=["threads=2", "train.executor=loop"])
    built = build_run(spec, device="cpu")
    assert built.spec.threads == 2 and built.spec.train.executor == "loop" and built.executor_choice is None
    torch.set_num_threads(1)


def test_run_directory_records_the_chosen_values(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--set", "threads=auto", "--set", "train.executor=auto"]
    args += ["--set", "train.meta_iters=2", "--set", "train.meta_batch=3", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((run / "spec.yaml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    chosen = summary["executor_auto"]["chosen"]
    assert written["threads"] == 1 and written["train"]["executor"] == chosen  # no "auto" left to re-resolve
    assert summary["threads"] == 1 and summary["executor"] == chosen


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_bad_threads_are_refused(value: str) -> None:
    result = CliRunner().invoke(app, ["train", "--set", f"threads={value}", "--fields"])
    assert result.exit_code == 2 and "threads" in result.output
