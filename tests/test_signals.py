"""SIGINT, SIGTERM and SIGHUP stop a few-shot run at a step boundary with a checkpoint; the run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start_logging_run(out: Path, sighup: signal.Handlers) -> subprocess.Popen[str]:
    """A long sinusoid run into ``out`` with SIGHUP set to ``sighup``, once it has logged two lines."""
    cmd = [sys.executable, "-m", "metacli", "train", "--algo", "maml", "--dataset", "sinusoid",
           "--set", "train.meta_iters=1000000", "--set", "train.log_every=5", "--set", "threads=1",
           "--out", str(out), "--quiet"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, sighup),
    )  # fmt: skip
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "the run never logged"
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_checkpoints_at_a_step_boundary_and_the_run_resumes(signum: int, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = ENV
    # as from a terminal: a test run under nohup inherits an ignored SIGHUP, which metacli keeps ignoring
    proc = start_logging_run(out, signal.SIG_DFL)
    metrics = out / "metrics.jsonl"
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "Continue with: metacli train --resume" in " ".join(output.split()) and "Traceback" not in output
    assert "interrupted: stopped at step" in output and "error" not in output  # resumable, not a failure
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    stopped = int(saved["done"])
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert lines[-1]["step"] <= stopped < lines[-1]["step"] + 5  # the step it was on when signalled
    spec = out / "spec.yaml"
    spec.write_text(spec.read_text().replace("meta_iters: 1000000", f"meta_iters: {stopped + 7}"))
    resumed = subprocess.run(
        [sys.executable, "-m", "metacli", "train", "--resume", str(out), "--quiet"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == stopped + 7  # none twice, the last one logged


def test_a_run_started_under_nohup_keeps_ignoring_sighup(tmp_path: Path) -> None:
    """Catches a handler installed over an inherited SIG_IGN: 'nohup metacli train' would stop at logout."""
    proc = start_logging_run(tmp_path / "run", signal.SIG_IGN)
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert proc.poll() is None  # still training
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
