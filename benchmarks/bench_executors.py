"""Throughput of the ``loop`` and ``vmap`` meta-gradient executors (tasks per second).

Cases, on random data:

- ``sinusoid``: MLP 1-40-40-1, MAML second order, 5 inner steps, K = 5, 10 queries.
- ``omniglot``: Conv4-64 (stride 2, primitive-op batch norm) on 1x28x28, 5-way 1-shot, 15 queries per
  class, alpha = 0.4, MAML second order and FOMAML, ``--conv-inner-steps`` inner steps (default 5).

Each cell is the median over ``--repeats`` timed meta-steps after one warm-up; CUDA is synchronised
around every timing. ``vmap/loop`` > 1 means vmap is faster.

Usage (from the repository root):
    python -m benchmarks.bench_executors --device cuda --repeats 5 --batch-sizes 4 8 16 32
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NamedTuple

import torch

from benchmarks.timing import device_name, median_seconds
from metacli.engine.algorithms.maml import MAML, FOMAMLConfig, MAMLConfig
from metacli.engine.data.sinusoid import SinusoidConfig
from metacli.engine.data.sinusoid import build as build_sinusoid
from metacli.engine.functional import Learner
from metacli.engine.models.conv4 import Conv4Config
from metacli.engine.models.conv4 import build as build_conv4
from metacli.engine.models.mlp import MLPConfig
from metacli.engine.models.mlp import build as build_mlp
from metacli.engine.types import Batch, Task

WAYS, SHOTS, QUERIES_PER_CLASS = 5, 1, 15


class Case(NamedTuple):
    """One benchmarked configuration: an algorithm and a sampler of B stacked tasks."""

    name: str
    algo: MAML
    sample: Callable[[int], Task]


def sinusoid_case(device: torch.device) -> Case:
    learner = Learner(build_mlp(MLPConfig(), (1,), 1).to(device), "mse")
    data, gen = build_sinusoid(SinusoidConfig()), torch.Generator().manual_seed(0)
    algo = MAML(MAMLConfig(inner_steps=5), learner)
    return Case("sinusoid MLP, MAML 2nd, 5 steps", algo, lambda b: data.sample("train", b, gen, device))


def omniglot_tasks(n_tasks: int, device: torch.device) -> Task:
    """Random 5-way 1-shot tasks of 1x28x28 images, 15 queries per class."""
    n_s, n_q = WAYS * SHOTS, WAYS * QUERIES_PER_CLASS
    labels = torch.arange(WAYS, device=device)
    support = Batch(torch.randn(n_tasks, n_s, 1, 28, 28, device=device), labels.repeat(n_tasks, SHOTS))
    query_y = labels.repeat_interleave(QUERIES_PER_CLASS).repeat(n_tasks, 1)
    return Task(support, Batch(torch.randn(n_tasks, n_q, 1, 28, 28, device=device), query_y))


def omniglot_case(device: torch.device, first_order: bool, steps: int) -> Case:
    model = build_conv4(Conv4Config(filters=64, pool="stride"), (1, 28, 28), WAYS).to(device)
    cfg = (FOMAMLConfig if first_order else MAMLConfig)(alpha=0.4, inner_steps=steps)
    name = f"Conv4-64 5w1s, {'FOMAML' if first_order else 'MAML 2nd'}, {steps} steps"
    return Case(name, MAML(cfg, Learner(model, "cross_entropy")), lambda b: omniglot_tasks(b, device))


def time_executor(case: Case, n_tasks: int, executor: str, repeats: int, device: torch.device) -> float:
    """Median seconds of one meta-step (sampling excluded) after one warm-up."""
    meta = case.algo.init_meta(case.algo.learner.init_params())
    tasks = case.sample(n_tasks)
    return median_seconds(lambda: case.algo.meta_step(meta, tasks, executor), repeats, device)


def run(cases: list[Case], batch_sizes: list[int], repeats: int, device: torch.device) -> None:
    print(f"{'case':<36} {'B':>4} {'loop tasks/s':>13} {'vmap tasks/s':>13} {'vmap/loop':>10}")
    for case in cases:
        for n_tasks in batch_sizes:
            loop = n_tasks / time_executor(case, n_tasks, "loop", repeats, device)
            vmap = n_tasks / time_executor(case, n_tasks, "vmap", repeats, device)
            row = f"{case.name:<36} {n_tasks:>4} {loop:>13.1f} {vmap:>13.1f} {vmap / loop:>10.2f}"
            print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help="torch device (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed meta-steps per cell (median)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8], help="meta-batch sizes B")
    parser.add_argument("--conv-inner-steps", type=int, default=5, help="inner steps of the Conv4 cases")
    names = ["sinusoid", "omniglot"]
    parser.add_argument("--cases", nargs="+", default=names, choices=names, help="which cases to run")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device_name(device)}, {torch.get_num_threads()} threads")
    cases = [sinusoid_case(device)] if "sinusoid" in args.cases else []
    if "omniglot" in args.cases:
        cases += [omniglot_case(device, fo, args.conv_inner_steps) for fo in (False, True)]
    run(cases, args.batch_sizes, args.repeats, device)


if __name__ == "__main__":
    main()
