"""SIGKILL at random points of a short CPU run, each time resumed: the end is bitwise an uninterrupted run.

Both protocols: few-shot MAML on the sinusoid (metrics every 4 steps, checkpoints every 11) and online
MOML on the real S-MNIST stream (metrics every round, checkpoints every 3), so kills land between
checkpoints and the resumed run must cut metrics.jsonl back and redo the lost part exactly.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

SINUSOID = [
    "--algo", "maml", "--dataset", "sinusoid", "--set", "threads=1", "--set", "model.hidden=[200, 200]",
    "--set", "train.meta_batch=20", "--set", "train.meta_iters=240", "--set", "train.log_every=4",
    "--set", "train.checkpoint_every=11", "--set", "eval.tasks=4", "--quiet",
]  # fmt: skip
SMNIST = [
    "--algo", "moml", "--dataset", "smnist", "--set", "threads=1", "--set", "online.rounds=40",
    "--set", "online.checkpoint_every=3", "--quiet",
]  # fmt: skip


def metacli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "metacli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def lines(run: Path, complete_only: bool = True) -> list[dict[str, float]]:
    """metrics.jsonl's rows; while a run writes, a last line may be partial (``complete_only`` skips it)."""
    path = run / "metrics.jsonl"
    text = path.read_text() if path.is_file() else ""
    return [json.loads(x) for x in text.splitlines() if x.endswith("}") or not complete_only]


def kill_after(proc: subprocess.Popen[str], run: Path, n_lines: int) -> bool:
    """SIGKILL ``proc`` once metrics.jsonl has ``n_lines`` lines; False when it finished first."""
    deadline = time.monotonic() + 120
    while len(lines(run)) < n_lines:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the run stalled"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return True


def assert_bitwise_equal(a: Any, b: Any, where: str = "") -> None:
    """Every tensor and number inside two checkpoint entries is identical (dicts, lists, tuples)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_bitwise_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bitwise_equal(x, y, f"{where}[{i}]")
    elif hasattr(a, "shape"):  # numpy's RNG state holds an array
        assert (a == b).all(), where
    else:
        assert a == b, where


def without_wall(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]


@pytest.mark.parametrize(
    ("args", "kill_lines", "needs_data"),
    [(SINUSOID, range(4, 58), False), (SMNIST, range(3, 38), True)],
    ids=["sinusoid-maml", "smnist-moml"],
)
def test_sigkill_at_random_points_then_resume_is_bitwise_an_uninterrupted_run(
    args: list[str], kill_lines: range, needs_data: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    if needs_data:
        args = [*args, "--data-root", str(request.getfixturevalue("data_root"))]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = metacli(env, "train", *args, "--out", str(straight))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    points = sorted(random.Random(0).sample(kill_lines, 3))  # logged lines at which to kill
    proc = metacli(env, "train", *args, "--out", str(killed))
    kills = 0
    for n in points:
        kills += kill_after(proc, killed, n)
        proc = metacli(env, "train", "--resume", str(killed), "--quiet")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert kills >= 2, "the run finished before most kills: make it slower"
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=False)
    assert a["done"] == b["done"] > 0
    assert_bitwise_equal(a["state"], b["state"], "state")  # parameters, optimiser, algorithm state
    assert_bitwise_equal(a["rng"], b["rng"], "rng")
    assert without_wall(lines(killed, complete_only=False)) == without_wall(
        lines(straight, complete_only=False)
    )  # no step or round twice, none missing
    walls = [r["wall_time"] for r in lines(killed)]
    assert walls == sorted(walls), "wall_time continues across resumes instead of restarting at 0"
