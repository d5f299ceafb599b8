"""``torchrun`` on 2 CPU processes (gloo on 127.0.0.1) against one process: same parameters, one writer.

Each launch is ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m metacli train ...`` in
a subprocess with a time limit, so the test exercises exactly what a user runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.engine.test_miniimagenet import write_fixture

SINUSOID = [
    "--set", "dtype=float64", "--set", "train.meta_batch=5", "--set", "train.log_every=1",
    "--set", "train.val_every=0", "--set", "eval.tasks=2", "-q",
]  # fmt: skip


def launch(cwd: Path, ranks: int, *args: str) -> str:
    """``metacli train ARGS`` on ``ranks`` processes (plain ``python -m metacli`` for 1); its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(cwd / "cache")}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    head = [sys.executable, "-m", "metacli"]
    if ranks > 1:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        head += ["-m", "metacli"]
    proc = subprocess.run(
        [*head, "train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def checkpoint(run: Path) -> dict[str, Any]:
    saved: dict[str, Any] = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    return saved


def rows(run: Path) -> list[dict[str, float]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def assert_one_writer(run: Path, n_rows: int, launches: int = 1) -> None:
    """Rank 0 alone wrote: one TensorBoard file per launch, every metrics row once."""
    assert len(list(run.glob("events.out.tfevents.*"))) == launches
    keys = [r.get("step", r.get("round")) for r in rows(run)]
    assert keys == list(range(1, n_rows + 1))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-6) -> None:
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol, msg=k)


def test_a_meta_batch_split_over_two_ranks_equals_one_process(tmp_path: Path) -> None:
    """5 tasks over 2 ranks (shares of 3 and 2): the mean meta-gradient must weight them by their sizes."""
    launch(tmp_path, 2, *SINUSOID, "--set", "train.meta_iters=3", "--out", "two")
    launch(tmp_path, 1, *SINUSOID, "--set", "train.meta_iters=3", "--out", "one")
    two, one = checkpoint(tmp_path / "two"), checkpoint(tmp_path / "one")
    assert_close(two["state"]["meta"], one["state"]["meta"])
    init = initial_params()
    assert all(not torch.equal(two["state"]["meta"][k], init[k]) for k in init)  # the steps were taken
    a, b = rows(tmp_path / "two"), rows(tmp_path / "one")
    assert [r["query_loss"] for r in a] == pytest.approx([r["query_loss"] for r in b], rel=1e-9)
    assert_one_writer(tmp_path / "two", 3)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["ranks"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # nothing written elsewhere


def initial_params() -> dict[str, torch.Tensor]:
    """The sinusoid runs' initial parameters (seed 0)."""
    from metacli.runlayer.parts import build_run
    from metacli.spec import load_spec

    spec, _ = load_spec(None, ["dtype=float64"])
    return build_run(spec, device="cpu").parts.learner.init_params()


def test_a_two_rank_run_resumed_with_one_rank_continues_as_one_process(tmp_path: Path) -> None:
    launch(tmp_path, 2, *SINUSOID, "--set", "train.meta_iters=2", "--out", "split")
    spec = tmp_path / "split" / "spec.yaml"
    spec.write_text(spec.read_text().replace("meta_iters: 2", "meta_iters: 4"))
    launch(tmp_path, 1, "--resume", "split", "-q")
    launch(tmp_path, 1, *SINUSOID, "--set", "train.meta_iters=4", "--out", "straight")
    assert_close(
        checkpoint(tmp_path / "split")["state"]["meta"], checkpoint(tmp_path / "straight")["state"]["meta"]
    )
    assert_one_writer(tmp_path / "split", 4, launches=2)


def warm_start_run(data: Path, meta_iters: int) -> list[str]:
    """``metacli train`` arguments of a tiny float64 miniImageNet run (its fixture written under ``data``) of
    the memory-reduced method with warm starts: per-task state carried from one step to the next."""
    fx = write_fixture(data, per_class=8)
    return [
        "--algo", "memory_reduced", "--dataset", "miniimagenet", "--data-root", str(fx.root),
        "--set", "dtype=float64", "--set", "data.ways=3", "--set", "data.queries=2",
        "--set", "model.filters=4", "--set", "algorithm.inner_steps=3", "--set", "algorithm.warm_start=true",
        "--set", "algorithm.cg_steps=3", "--set", "train.meta_batch=3",
        "--set", f"train.meta_iters={meta_iters}", "--set", "train.log_every=1",
        "--set", "train.val_every=0", "--set", "eval.tasks=2", "-q",
    ]  # fmt: skip


def test_warm_start_slots_are_shared_out_and_gathered(tmp_path: Path) -> None:
    """The memory-reduced method's per-slot warm starts: each rank updates its share, all ranks hold all.

    3 CG steps: run on to its default 20 on this small, ill-conditioned head, CG keeps iterating on round-off
    and the reduction order of 2 ranks (1e-17) grows to visible differences in v.
    """
    args = warm_start_run(tmp_path / "data", meta_iters=2)
    launch(tmp_path, 2, *args, "--out", "two")
    launch(tmp_path, 1, *args, "--out", "one")
    two, one = checkpoint(tmp_path / "two")["state"], checkpoint(tmp_path / "one")["state"]
    assert two["algorithm_state"]["phi"].shape[0] == 3
    assert_close(two["algorithm_state"], one["algorithm_state"])
    assert_close(two["meta"], one["meta"])


def test_distributed_ltm_equals_one_process(tmp_path: Path, data_root: Path) -> None:
    """Online MOML on S-MNIST: the LTM's seen tasks split over 2 ranks (round 1: one task, one idle rank)."""
    args = [
        "--algo", "moml", "--dataset", "smnist", "--data-root", str(data_root),
        "--set", "online.rounds=5", "--set", "algorithm.K=2", "-q",
    ]  # fmt: skip
    launch(tmp_path, 2, *args, "--out", "two")
    launch(tmp_path, 1, *args, "--out", "one")
    a, b = rows(tmp_path / "two"), rows(tmp_path / "one")
    for ra, rb in zip(a, b, strict=True):
        for key in ("ltm_acc", "ltm_loss", "ctm_acc", "ltm_acc_avg"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-7), (ra["round"], key)
    assert_one_writer(tmp_path / "two", 5)


def test_a_grid_spreads_its_points_over_the_ranks(tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "algorithm: {name: maml}\nmodel: {name: mlp}\ndata: {name: sinusoid}\n"
        "train: {meta_iters: 2, meta_batch: 2, log_every: 1}\neval: {tasks: 2}\n"
        "grid: {algorithm.alpha: [0.01, 0.02, 0.03]}\n"
    )
    out = launch(tmp_path, 2, str(grid), "-q")
    folder = tmp_path / "runs" / "grid"
    assert sorted(p.name for p in folder.iterdir()) == ["alpha=0.01", "alpha=0.02", "alpha=0.03"]
    for point in folder.iterdir():
        assert_one_writer(point, 2)  # each point trained once, by one rank
        assert json.loads((point / "summary.json").read_text())["ranks"] == 1
    assert out.count("done") == 3


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_at_one_checkpoint(tmp_path: Path) -> None:
    """Catches ranks that stop at different steps (one waits forever in its all-reduce) or write twice.

    torchrun forwards SIGTERM to its workers; they agree on one step boundary, rank 0 writes the
    checkpoint, each says how to continue, and one process continues the run from there.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "metacli", "train", *SINUSOID, "--set", "train.meta_iters=100000"]
    cmd += ["--set", "train.checkpoint_every=5", "--out", "run"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    stopped = re.findall(r"stopped at step (\d+) of 100000", " ".join(out.split()))
    assert len(stopped) == 2 and stopped[0] == stopped[1], out  # both ranks, one boundary
    step = int(stopped[0])
    assert checkpoint(tmp_path / "run")["done"] == step
    assert_one_writer(tmp_path / "run", step)
    assert not (tmp_path / "run" / ".lock").exists()
    launch(tmp_path, 1, "--resume", "run", "--set", f"train.meta_iters={step + 3}", "-q")
    assert_one_writer(tmp_path / "run", step + 3, launches=2)
