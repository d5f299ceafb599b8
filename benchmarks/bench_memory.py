"""Peak memory of one meta-training step against the number of inner steps K (the paper's Figure 2).

Usage (from the repository root):
    python -m benchmarks.bench_memory                          # CIFAR-FS shape, every device found
    python -m benchmarks.bench_memory --shape mini --meta-batch 2 --steps 5 10 15 20
    python -m benchmarks.bench_memory --algorithms memory_reduced maml --quick   # seconds, a smoke run
    python -m benchmarks.bench_memory --algorithms memory_reduced maml maml_remat --meta-batch 1

For each device found (the CPU, and CUDA when present), each algorithm and each K: the algorithm's preset
on miniImageNet (``--shape mini``: 3x84x84, Conv4-32) or on CIFAR-FS-shaped inputs (``--shape cifar``:
3x32x32, Conv4-64), 5-way 5-shot with 5 queries per class, synthetic images, K inner steps (head steps for
the memory-reduced method and ITD-BiO, all-parameter steps for MAML, head steps for ANIL), the loop executor
(one task's graph at a time, gradients accumulated). One warm-up step, then the peak of one more step by
:func:`metacli.engine.memory.peak_bytes`: on CUDA ``max_memory_allocated`` above the allocation before the
step; on the CPU the peak of torch's tensor allocations minus frees during the step (profiler memory
events). Then the median time of ``--repeats`` more steps (forward, meta-gradient, outer Adam). The table
is printed in MB (10^6 bytes) with the paper's numbers beside it, and in ms per meta-step; the JSON (device,
versions, every number) goes to ``--out``, else ``benchmarks/results/memory_<device>.json`` (``--quick``: a
temporary folder, so a smoke run writes nothing into the repository).

``maml_remat`` is MAML with ``algorithm.remat: true`` (issue 25): the same exact meta-gradient, each inner
step recomputed in the backward pass. Below the table: its peak over the memory-reduced method's at the
largest K (target 1.5x) and its time over plain MAML's at every K (target 2x), then what one exact inner
step needs on one task's support set: a gradient; the gradient and Hessian-vector product stage by stage,
as remat's backward computes them (:mod:`metacli.engine.hvp`); the whole network's product, as the unrolled
graph computes it at every step.

The paper measured 32 tasks per iteration on a GPU with its own code, whose ANIL and ITD-BiO re-run the
backbone with a graph at every inner step (yangxiaolin9527/RM-MetaL). metacli's ITD-BiO computes the
features once per task and unrolls only the head, so its memory barely grows with K; its ANIL (the MAML
family's, adapting the head through the whole network's forward) re-runs the backbone at every step like
the paper's, and grows linearly.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.bench_fewshot import environment, random_uint8, result_path
from benchmarks.timing import median_seconds
from metacli.engine import memory
from metacli.engine.build import BuildSettings, episodic_parts
from metacli.engine.data.images import ClassImages, FewShotImages
from metacli.engine.episodic import TrainState, meta_train_step
from metacli.engine.executors import task_at
from metacli.engine.hvp import gradient_and_hvp
from metacli.runlayer.parts import loop_settings
from metacli.spec import RunSpec, deep_update, preset, validate

ALGORITHMS = ("memory_reduced", "itd_bio", "anil", "maml", "maml_remat")
REMAT = "maml_remat"
"""MAML with ``algorithm.remat: true``: its exact meta-gradient with the inner steps recomputed (issue 25)."""
SHAPES = {"cifar": (32, 64), "mini": (84, 32)}
"""Image side and Conv4 filters of each input shape (the paper: 64 filters at 32x32, 32 at 84x84)."""
PAPER_MB = {  # Yang, Ma, Yu 2025, Figure 2: K -> MB per algorithm
    "mini": {
        "memory_reduced": {5: 495.8, 10: 496.6, 15: 497.4, 20: 498.1},
        "itd_bio": {5: 1094.1, 10: 1892.7, 15: 2693.1, 20: 3490.8},
        "maml": {5: 1776.9, 10: 3149.3, 15: 4521.7, 20: 5894.1},
        "anil": {5: 1094.1, 10: 1892.7, 15: 2693.2, 20: 3490.9},
    },
    "cifar": {
        "memory_reduced": {5: 77.5, 10: 77.7, 15: 78.0, 20: 78.2},
        "itd_bio": {5: 149.1, 10: 263.3, 15: 377.5, 20: 491.7},
        "maml": {5: 262.0, 10: 463.6, 15: 665.1, 20: 866.6},
        "anil": {5: 149.1, 10: 263.3, 15: 377.5, 20: 491.8},
    },
}


def spec_for(algo: str, shape: str, steps: int, meta_batch: int) -> RunSpec:
    """The algorithm's miniImageNet preset at this input shape, 5-way 5-shot, K steps, the loop executor."""
    side, filters = SHAPES[shape]
    data = preset("maml" if algo == REMAT else algo, "miniimagenet")
    del side  # the images' side is set by the synthetic data, not the spec
    deep_update(
        data,
        {
            "threads": None,
            "model": {"name": "conv4", "filters": filters, "pool": "max"},
            "data": {"shots": 5, "queries": 5},
            "algorithm": {"inner_steps": steps, **({"remat": True} if algo == REMAT else {})},
            "train": {"meta_batch": meta_batch, "executor": "loop"},
        },
    )
    return validate(data, f"memory benchmark {algo} K={steps}")


def synthetic(spec: RunSpec, side: int, device: torch.device) -> FewShotImages:
    """Seeded random uint8 images: 20 classes of 10 images of 3 x side x side."""
    images = random_uint8((20, 10, 3, side, side), seed=0)
    return FewShotImages(spec.data, {"train": ClassImages(images, device)})  # type: ignore[arg-type]


def measure(
    algo: str, shape: str, steps: int, meta_batch: int, device: torch.device, repeats: int
) -> tuple[int, float]:
    """Peak bytes of one meta-training step after a warm-up step, and the median seconds of a step.

    The time is the median of ``repeats`` more steps (forward, meta-gradient, outer Adam), taken apart from
    the measured step, whose profiler slows it.
    """
    spec = spec_for(algo, shape, steps, meta_batch)
    data = synthetic(spec, SHAPES[shape][0], device)
    settings = BuildSettings(seed=spec.seed, device=str(device))
    parts = episodic_parts(spec.algorithm, spec.model, data, settings)
    state, loop = TrainState(parts, 2), loop_settings(spec)
    tasks = data.sample("train", meta_batch, parts.generator, device)
    meta_train_step(parts, loop, state, tasks, measure=False)
    peak = meta_train_step(parts, loop, state, tasks, measure=True)[1]
    # median_seconds warms up once more: the first step after the profiler pays for its teardown
    seconds = median_seconds(lambda: meta_train_step(parts, loop, state, tasks, False), repeats, device)
    return peak, seconds


def support_floor(shape: str, device: torch.device) -> dict[str, int]:
    """Peak bytes of a plain gradient and of one Hessian-vector product of one task's support loss.

    What one exact second-order inner step needs at least: ``hvp`` is the product as remat's backward computes
    it, stage by stage (:func:`metacli.engine.hvp.gradient_and_hvp`, which also returns the gradient);
    ``hvp_whole`` the whole network's reverse-over-reverse product, what the unrolled MAML's double backward
    computes at each step.
    """
    spec = spec_for("maml", shape, 1, 1)
    data = synthetic(spec, SHAPES[shape][0], device)
    parts = episodic_parts(
        spec.algorithm, spec.model, data, BuildSettings(seed=spec.seed, device=str(device))
    )
    support = task_at(data.sample("train", 1, parts.generator, device), 0).support
    theta = {k: v.detach() for k, v in parts.learner.init_params().items()}
    direction = {k: torch.ones_like(v) for k, v in theta.items()}

    def gradient(create_graph: bool) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        leaves = [v.clone().requires_grad_(True) for v in theta.values()]
        loss = parts.learner.loss(dict(zip(theta, leaves, strict=True)), support)
        return torch.autograd.grad(loss, leaves, create_graph=create_graph), tuple(leaves)

    def hvp_whole() -> tuple[Tensor, ...]:
        grads, leaves = gradient(create_graph=True)
        return torch.autograd.grad(grads, leaves, list(direction.values()))

    chain = parts.learner.chain(support)
    return {
        "gradient": memory.peak_bytes(lambda: gradient(False), device),
        "hvp": memory.peak_bytes(lambda: gradient_and_hvp(chain, theta, direction), device),
        "hvp_whole": memory.peak_bytes(hvp_whole, device),
    }


def table(
    results: dict[str, dict[str, dict[int, int]]], seconds: dict[str, dict[str, dict[int, float]]], shape: str
) -> str:
    """Markdown: a row per K, per algorithm metacli's MB (the paper's beside it) and ms per meta-step."""
    algos = list(next(iter(results.values())).keys())
    paper = [" (paper)" if a in PAPER_MB[shape] else "" for a in algos]
    header = (
        ["device", "K"]
        + [f"{a} MB{p}" for a, p in zip(algos, paper, strict=True)]
        + [f"{a} ms" for a in algos]
    )
    lines = []
    for device, by_algo in results.items():
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for k in sorted(next(iter(by_algo.values()))):
            cells = [device, str(k)] + [
                mb_cell(by_algo[a][k], PAPER_MB[shape].get(a, {}).get(k)) for a in algos
            ]
            cells += [f"{seconds[device][a][k] * 1e3:.0f}" for a in algos]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *ratios(by_algo, seconds[device], shape, device), ""]
    return "\n".join(lines)


def mb_cell(peak: int, paper: float | None) -> str:
    """metacli's MB, and the paper's in brackets where it has one."""
    ours = peak / memory.BYTES_PER_MB
    return f"{ours:.1f} ({paper:.1f})" if paper is not None else f"{ours:.1f}"


def ratios(
    peaks: dict[str, dict[int, int]], seconds: dict[str, dict[int, float]], shape: str, device: str
) -> list[str]:
    """The issue's comparisons: MAML's and remat's peak over the memory-reduced method's at the largest K,
    and remat's time over plain MAML's at every K (targets of issue 25: 1.5x and 2x)."""
    last, out, paper_mb = max(next(iter(peaks.values()))), [], PAPER_MB[shape]
    if "memory_reduced" in peaks and "maml" in peaks:
        ratio = peaks["maml"][last] / max(peaks["memory_reduced"][last], 1)
        paper = paper_mb["maml"].get(last, math.nan) / paper_mb["memory_reduced"].get(last, math.nan)
        out.append(f"MAML / memory-reduced at K = {last} on {device}: {ratio:.1f}x (paper: {paper:.1f}x)")
    if "memory_reduced" in peaks and REMAT in peaks:
        ratio = peaks[REMAT][last] / max(peaks["memory_reduced"][last], 1)
        out.append(f"MAML remat / memory-reduced at K = {last} on {device}: {ratio:.2f}x (target: 1.5x)")
    if "maml" in peaks and REMAT in peaks:
        times = ", ".join(
            f"K {k}: {seconds[REMAT][k] / seconds['maml'][k]:.2f}x" for k in sorted(peaks["maml"])
        )
        out.append(f"MAML remat time / MAML time on {device}: {times} (target: 2x)")
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cifar")
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--steps", nargs="+", type=int, default=[5, 10, 15, 20])
    parser.add_argument(
        "--meta-batch", type=int, default=2, help="tasks per step (the loop's peak is per task)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed meta-steps per cell (median)")
    parser.add_argument("--quick", action="store_true", help="K = 1, 2 and 2 algorithms: a smoke run")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default: benchmarks/results/memory_<device>.json; with --quick a temporary folder)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = [1, 2] if args.quick else args.steps
    algos = args.algorithms[:2] if args.quick else args.algorithms
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results: dict[str, dict[str, dict[int, int]]] = {}
    seconds: dict[str, dict[str, dict[int, float]]] = {}
    for device in devices:
        cells = {
            a: {k: measure(a, args.shape, k, args.meta_batch, device, args.repeats) for k in steps}
            for a in algos
        }
        results[str(device)] = {a: {k: c[0] for k, c in by_k.items()} for a, by_k in cells.items()}
        seconds[str(device)] = {a: {k: c[1] for k, c in by_k.items()} for a, by_k in cells.items()}
    out = {
        "shape": args.shape,
        "meta_batch": args.meta_batch,
        "methods": {str(d): memory.method(d) for d in devices},
        "peak_bytes": results,
        "seconds_per_step": seconds,
        "repeats": args.repeats,
        "threads": args.threads,
        "environment": environment(devices[-1]),
    }
    text = table(results, seconds, args.shape)
    if REMAT in algos:
        out["support_floor_bytes"] = floor = {str(d): support_floor(args.shape, d) for d in devices}
        text += "\n".join(
            f"One task's support loss on {d}: gradient {f['gradient'] / memory.BYTES_PER_MB:.1f} MB, "
            f"gradient and Hessian-vector product stage by stage {f['hvp'] / memory.BYTES_PER_MB:.1f} MB "
            f"(remat's backward, per step), the whole network's product "
            f"{f['hvp_whole'] / memory.BYTES_PER_MB:.1f} MB (the unrolled graph's, per step)"
            for d, f in floor.items()
        )
    print(f"Peak memory of one meta-step (MB), {args.shape} shape, 5w5s, B={args.meta_batch}, loop executor")
    for d in devices:
        print(f"  {d}: {memory.method(d)}")
    print(text)
    path = result_path(args.out, f"memory_{devices[-1].type}.json", args.quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
