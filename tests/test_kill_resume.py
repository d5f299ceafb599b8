"""SIGKILL at random points of a short CPU run, each time resumed: the end is bitwise an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

TRAIN = [
    "--algo", "maml", "--dataset", "sinusoid", "--set", "threads=1", "--set", "model.hidden=[200, 200]",
    "--set", "train.meta_batch=20", "--set", "train.meta_iters=240", "--set", "train.log_every=4",
    "--set", "train.checkpoint_every=11", "--set", "eval.tasks=4", "--quiet",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def metacli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "metacli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
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


def test_sigkill_at_random_points_then_resume_is_bitwise_an_uninterrupted_run(tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = metacli("train", *TRAIN, "--out", str(straight))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    rng = random.Random(0)
    points = sorted(rng.sample(range(4, 58), 3))  # logged lines (every 4 steps) at which to kill
    proc = metacli("train", *TRAIN, "--out", str(killed))
    kills = 0
    for n in points:
        if kill_after(proc, killed, n):
            kills += 1
        proc = metacli("train", "--resume", str(killed), "--quiet")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert kills >= 2, "the run finished before most kills: make it slower"
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 240
    for k in a["meta"]:
        assert torch.equal(a["meta"][k], b["meta"][k]), k
    for k, s in a["optimizer"]["state"].items():
        for name, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][k][name])), (
                k,
                name,
            )

    def without_wall(rows: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]

    assert without_wall(lines(killed, complete_only=False)) == without_wall(
        lines(straight, complete_only=False)
    )  # no step twice, none missing
