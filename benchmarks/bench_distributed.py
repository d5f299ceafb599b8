"""Data-parallel scaling: meta-training tasks/s against the number of ``torchrun`` processes.

Each cell trains the same short run (``metacli train`` under ``torchrun --standalone --nproc-per-node N``,
gloo on the CPU, NCCL on GPUs) and reads its speed from metrics.jsonl: tasks per second between the first
and the last logged step, so process start, data loading and the first step are not counted. Launches are
interleaved (1, 2, 1, 2, ...) ``--repeats`` times and the median is reported, with the ratio to 1 process.

Cases: the sinusoid MLP (MAML, meta-batch 32) and, with ``--data DATA_ROOT`` holding Omniglot, Conv4-64
MAML on Omniglot 5-way 1-shot (meta-batch 32, 1 inner step).

Usage (from the repository root):
    python -m benchmarks.bench_distributed --ranks 1 2 --repeats 3 [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_fewshot import environment

CASES: dict[str, list[str]] = {
    "sinusoid MAML, MLP 40-40, B 32": [
        "--algo", "maml", "--dataset", "sinusoid", "--set", "train.meta_batch=32",
        "--set", "train.meta_iters=60",
    ],
    "Omniglot 5w1s MAML, Conv4-64, B 32": [
        "--algo", "maml", "--dataset", "omniglot", "--set", "train.meta_batch=32",
        "--set", "train.meta_iters=12", "--set", "algorithm.inner_steps=1",
    ],
}  # fmt: skip
COMMON = ["--set", "train.log_every=1", "--set", "train.val_every=0", "--set", "eval.tasks=2", "-q"]


def tasks_per_second(run: Path, meta_batch: int) -> float:
    """Tasks/s between the first and the last logged step of a finished run."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    return (last["step"] - first["step"]) * meta_batch / (last["wall_time"] - first["wall_time"])


def launch(args: list[str], ranks: int, out: Path, data: Path | None, device: str) -> None:
    head = [sys.executable, "-m", "metacli"]
    if ranks > 1:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        head += ["-m", "metacli"]
    extra = ["--data-root", str(data)] if data else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*head, "train", *args, *COMMON, *extra, "--device", device, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--data", type=Path, default=None, help="data root with omniglot/ (else sinusoid only)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, or auto for one GPU per process")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    cases = {k: v for k, v in CASES.items() if args.data or "omniglot" not in v}
    speeds: dict[str, dict[int, list[float]]] = {name: {n: [] for n in args.ranks} for name in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in cases.items():
            batch = int(next(a.split("=")[1] for a in case if a.startswith("train.meta_batch=")))
            for rep in range(args.repeats):
                for n in args.ranks:  # interleaved, so a change of machine load hits every count alike
                    out = Path(tmp) / f"{len(speeds[name][n])}-{n}-{rep}-{abs(hash(name))}"
                    launch(case, n, out, args.data, args.device)
                    speeds[name][n].append(tasks_per_second(out, batch))
    env = {**environment(torch.device("cpu")), "threads_per_process": 1}
    print(f"device: {args.device} ({env['device']}), torch {env['torch']}, 1 thread per process\n")
    print("| case | processes | tasks/s (median) | vs 1 process |")
    print("|---|---|---|---|")
    table: list[dict[str, Any]] = []
    for name, per in speeds.items():
        base = statistics.median(per[args.ranks[0]])
        for n, values in per.items():
            med = statistics.median(values)
            print(f"| {name} | {n} | {med:.1f} | {med / base:.2f}x |")
            table.append({"case": name, "processes": n, "tasks_per_s": values, "median": med})
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "device": args.device, "rows": table}, indent=2))


if __name__ == "__main__":
    main()
