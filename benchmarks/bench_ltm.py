"""Time of one LTM evaluation of the online protocol (as the MOML code): U_eval on each of tasks 0..t-1.

Setting: the S-MNIST MLP 784-200-10 (ReLU), full-batch fine-tuning on each task's 60 train images (mean
cross-entropy, gradient clipped to global norm 3, lr 0.1), then test on its 10 test images, for all t
seen tasks at once. Data: random tensors of S-MNIST's shape (T, 60 | 10, 1, 28, 28), or the real stream
with ``--smnist DATA_ROOT`` (read from the cache or built from ``DATA_ROOT/mnist``; no download).

Paths (all exact, same numbers to float32 rounding):

- ``vmap``: the generic path, ``torch.func.vmap`` of a per-task autograd fine-tune, in chunks;
- ``fast``: the Gram-matrix path, as :func:`~metacli.engine.online.run_online` calls it, with the
  per-stream :class:`~metacli.engine.online_fast.StreamGram` cache already filled (it is filled once per
  run, at the first evaluation);
- ``fast-nocache``: the same recomputing the Gram matrices of the t tasks in the call.

Each cell is the median over ``--repeats`` timed calls after one warm-up; CUDA is synchronised around
every timing. ``vmap/fast`` > 1 means the fast path is faster. On a machine shared with other jobs the
CPU timings are noisy: compare cells of one invocation only.

Usage (from the repository root):
    python -m benchmarks.bench_ltm --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from benchmarks.timing import device_name, median_seconds
from metacli.engine.functional import Learner
from metacli.engine.models.mlp import MLP
from metacli.engine.online import finetune_and_test, finetune_and_test_vmap
from metacli.engine.online_fast import StreamGram
from metacli.engine.types import Batch, OnlineStream

N_TASKS, N_TRAIN, N_TEST, N_CLASSES = 1000, 60, 10, 10
LR, CLIP = 0.1, 3.0


def random_stream(device: torch.device) -> OnlineStream:
    """Random inputs and labels of the S-MNIST-1000 shapes."""
    g = torch.Generator().manual_seed(0)
    train = Batch(
        torch.randn(N_TASKS, N_TRAIN, 1, 28, 28, generator=g),
        torch.randint(N_CLASSES, (N_TASKS, N_TRAIN), generator=g),
    )
    test = Batch(
        torch.randn(N_TASKS, N_TEST, 1, 28, 28, generator=g),
        torch.randint(N_CLASSES, (N_TASKS, N_TEST), generator=g),
    )
    return OnlineStream(
        Batch(train.x.to(device), train.y.to(device)), Batch(test.x.to(device), test.y.to(device)), N_CLASSES
    )


def smnist_stream(root: Path, device: torch.device) -> OnlineStream:
    """The real S-MNIST-1000 stream (seed 17), from ``root``'s cache or its MNIST files."""
    from metacli.engine.data.smnist import SMNISTConfig, build_stream

    s = build_stream(SMNISTConfig(), root, download=False, progress=None)
    return OnlineStream(
        Batch(s.train.x.to(device), s.train.y.to(device)),
        Batch(s.test.x.to(device), s.test.y.to(device)),
        s.n_classes,
    )


def run(
    stream: OnlineStream,
    ts: list[int],
    steps_list: list[int],
    paths: list[str],
    repeats: int,
    device: torch.device,
) -> None:
    """Print one row per (t, steps): seconds per LTM evaluation of each path and vmap/fast."""
    torch.manual_seed(0)
    learner = Learner(MLP(784, (200,), N_CLASSES).to(device), "cross_entropy")
    params = learner.init_params()
    cache = StreamGram(stream)
    cache.grams(torch.arange(1))  # fills the cache for all T tasks, as run_online's first evaluation does
    calls: dict[str, Callable[[torch.Tensor, int], object]] = {
        "vmap": lambda ids, s: finetune_and_test_vmap(learner, params, stream, ids, LR, s, CLIP),
        "fast": lambda ids, s: finetune_and_test(learner, params, stream, ids, [(LR, s)], CLIP, cache=cache),
        "fast-nocache": lambda ids, s: finetune_and_test(learner, params, stream, ids, [(LR, s)], CLIP),
    }
    header = f"{'t':>5} {'steps':>5}" + "".join(f" {p + ' s':>15}" for p in paths)
    print(header + (f" {'vmap/fast':>10}" if {"vmap", "fast"} <= set(paths) else ""))
    for t in ts:
        ids = torch.arange(t, device=device)
        for steps in steps_list:
            secs = {p: median_seconds(partial(calls[p], ids, steps), repeats, device) for p in paths}
            row = f"{t:>5} {steps:>5}" + "".join(f" {secs[p]:>15.3f}" for p in paths)
            if "vmap" in secs and "fast" in secs:
                row += f" {secs['vmap'] / secs['fast']:>10.1f}"
            print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help="torch device (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per cell (median)")
    parser.add_argument("--ts", type=int, nargs="+", default=[100, 500, 1000], help="numbers of seen tasks t")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5], help="fine-tune steps")
    names = ["vmap", "fast", "fast-nocache"]
    parser.add_argument("--paths", nargs="+", default=["vmap", "fast"], choices=names, help="paths to time")
    parser.add_argument("--smnist", type=Path, default=None, metavar="DATA_ROOT", help="use the real stream")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    stream = random_stream(device) if args.smnist is None else smnist_stream(args.smnist, device)
    data = "random data" if args.smnist is None else f"S-MNIST from {args.smnist}"
    print(
        f"torch {torch.__version__}, device {device_name(device)}, {torch.get_num_threads()} threads, {data}"
    )
    print(f"one LTM evaluation (U_eval on tasks 0..t-1), MLP 784-200-10, lr {LR}, clip {CLIP}")
    with torch.no_grad():
        run(stream, args.ts, args.steps, args.paths, args.repeats, device)


if __name__ == "__main__":
    main()
