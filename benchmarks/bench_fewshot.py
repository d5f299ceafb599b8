"""Few-shot image benchmarks: meta-training throughput and the cost of drawing a meta-batch.

Usage (from the repository root):
    python -m benchmarks.bench_fewshot --device cpu --threads 1 --repeats 5

Two tables, both from the ``--algo maml`` presets of :mod:`metacli.spec`:

1. **Meta-training step throughput** (tasks/s): one full meta-training step as
   :func:`metacli.engine.episodic.train` takes it, i.e. ``FewShotImages.sample`` of B tasks on the device,
   ``algorithm.meta_step`` and the outer Adam update (:func:`~metacli.engine.episodic.outer_update`),
   for the ``loop`` and ``vmap`` executors. Cases: Omniglot 5-way 1-shot (Conv4-64 stride, MAML second
   order, 1 inner step) and miniImageNet 5-way 1-shot with 15 queries (Conv4-32 max-pool, MAML second
   order, 5 inner steps). Omniglot uses the real archives when the data root has them (``--data-root``,
   else ``$METACLI_DATA``, else ``../shared/data`` beside the repository), else synthetic images of the
   same shape (the table's source says why); miniImageNet always uses synthetic uint8 images of the real
   train split's shape (64 x 600 x 3 x 84 x 84). Before timing, the loop and vmap meta-gradients of one
   meta-batch are compared in float32 (rtol 1e-4) and, to tell an executor bug from float32 round-off, in
   float64 (rtol 1e-9). Each executor has its own meta-parameters, Adam state and task generator (same
   seed). Per repeat the two executors run one step each, in alternating order; one warm-up round is
   dropped; the cell is B / median seconds per step.
2. **Task-batch draw time** (ms per meta-batch of B tasks as float tensors on the device): metacli's
   device-resident sampler ``FewShotImages.sample`` against a torchvision-style pipeline over the SAME
   uint8 images: a map-style ``Dataset`` of single images (``__getitem__`` converts one uint8 image to
   float / 255, as ``ToTensor`` does, rotating Omniglot's rotation classes as torchmeta's transform
   does; no PIL decoding, which favours the pipeline), a seeded episodic batch sampler yielding the
   indices of one task, a ``DataLoader`` with ``batch_sampler`` and ``num_workers`` in ``--workers``,
   a per-task collate, then B tasks stacked and moved with ``.to(device)``. Steady state only: the
   loaders are started and two rounds are dropped before timing (worker start-up), and every repeat
   first pauses 0.1 s (other loaders' workers refill their queues, off the clock), draws enough untimed
   meta-batches to empty its own prefetch queue (``2 x num_workers`` tasks), then times 5 consecutive
   meta-batches. The pipeline is checked once to produce exactly metacli's tensors for the same index
   draws.

CUDA is synchronised around every timing. A JSON with the environment (device, torch version, CPU
model, threads, date) and every number goes to ``benchmarks/results/fewshot_<device>.json``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from benchmarks.timing import device_name, sync
from metacli.engine.build import BuildSettings, EpisodicParts, episodic_parts
from metacli.engine.data import omniglot
from metacli.engine.data.images import ClassImages, FewShotImages
from metacli.engine.data.miniimagenet import PER_CLASS, SIDE, SPLIT_CLASSES
from metacli.engine.data.omniglot import DRAWERS
from metacli.engine.data.paths import ENV_VAR, user_cache_dir
from metacli.engine.episodic import TrainState, outer_update
from metacli.engine.functional import Learner
from metacli.engine.models.conv4 import Conv4Config
from metacli.engine.types import Batch, DataContext, Task
from metacli.errors import DataError
from metacli.spec import RunSpec, load_spec

CASES = ("omniglot", "miniimagenet")
EXECUTORS = ("loop", "vmap")
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
"""The shared data folder beside the repository (``<repo>/../shared/data``), as the tests look for it."""
NO_DATA = (
    f"no data root (pass --data-root, set ${ENV_VAR}, or put shared/data beside the repository), so "
    "synthetic images"
)
VINYALS_TRAIN_CHARACTERS = 1028
"""Characters of the Vinyals train split (the shape of synthetic Omniglot when no archive is found)."""
GRAD_RTOL = 1e-4
GRAD_RTOL_F64 = 1e-9
DRAW_BLOCK = 5
"""Consecutive meta-batches timed per repeat of the draw table."""
DRAW_WARMUP_ROUNDS = 2
SETTLE_S = 0.1
"""Pause before each timed draw block (other loaders' workers refill their queues meanwhile)."""
PREFETCH_FACTOR = 2
"""DataLoader's default prefetch_factor: tasks queued per worker."""
RESULTS = Path(__file__).parent / "results"


def result_path(explicit: Path | None, name: str, quick: bool = False) -> Path:
    """Where a benchmark writes its JSON: ``explicit``, else a fresh temporary folder for a ``--quick``
    smoke run (which must not write into the repository), else ``benchmarks/results/<name>``."""
    if explicit is not None:
        return explicit
    return Path(tempfile.mkdtemp(prefix="metacli-bench-")) / name if quick else RESULTS / name


Timer = Callable[[], float]
"""Runs one contender once and returns the seconds it measured."""


class Case(NamedTuple):
    """One preset: its spec, its dataset on the device, the learner and the algorithm."""

    name: str
    spec: RunSpec
    data: FewShotImages
    source: str
    """``real`` or ``synthetic`` (and what), for the tables."""
    cpu_images: Tensor
    """The train split's uint8 images on the CPU (the same tensor as the sampler's on a CPU device)."""
    learner: Learner
    algo: Any


# --- cases --------------------------------------------------------------------------------------------


def data_root(explicit: str | None) -> Path | None:
    """``--data-root``, else ``$METACLI_DATA``, else the shared data folder beside the repository when it
    exists; None without any (the benchmarks then use synthetic images and say why)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return SHARED_DATA if SHARED_DATA.is_dir() else None


def random_uint8(shape: tuple[int, ...], seed: int) -> Tensor:
    """Seeded uniform uint8 images (content is irrelevant to speed)."""
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def omniglot_data(
    spec: RunSpec, device: torch.device, root: Path | None
) -> tuple[FewShotImages, Tensor, str]:
    """The real Omniglot splits when the archives are under ``root``, else synthetic train images (the
    source says why)."""
    cfg = spec.data
    assert isinstance(cfg, omniglot.OmniglotConfig)
    data = None
    source = NO_DATA
    if root is not None:
        try:
            ctx = DataContext(root, user_cache_dir(), device, torch.float32, download=False, progress=None)
            data = omniglot.build(cfg, ctx)
            source = f"real ({cfg.split} train)"
        except DataError:
            source = f"no Omniglot archives under {root}, so synthetic images"
    if data is None:
        side = cfg.image_size
        images = random_uint8((VINYALS_TRAIN_CHARACTERS, DRAWERS, 1, side, side), seed=0)
        data = FewShotImages(cfg, {"train": ClassImages(images, device, cfg.rotations)})
    train = data.splits["train"]
    return data, train.images.cpu(), f"{source}, {train.n_classes} classes"


def miniimagenet_data(spec: RunSpec, device: torch.device) -> tuple[FewShotImages, Tensor, str]:
    """Synthetic uint8 images of the real train split's shape (no miniImageNet images offline)."""
    images = random_uint8((SPLIT_CLASSES["train"], PER_CLASS, 3, SIDE, SIDE), seed=0)
    data = FewShotImages(spec.data, {"train": ClassImages(images, device)})
    return data, images, f"synthetic, {images.shape[0]} classes"


def build_case(name: str, device: torch.device, root: Path | None) -> Case:
    """The ``--algo maml --dataset <name>`` preset, built by :func:`~metacli.engine.build.episodic_parts`."""
    spec, _ = load_spec(algo="maml", dataset=name)
    if name == "omniglot":
        data, cpu_images, source = omniglot_data(spec, device, root)
    else:
        data, cpu_images, source = miniimagenet_data(spec, device)
    parts = episodic_parts(
        spec.algorithm, spec.model, data, BuildSettings(seed=spec.seed, device=str(device))
    )
    return Case(name, spec, data, source, cpu_images, parts.learner, parts.algorithm)


def describe(case: Case) -> str:
    """e.g. ``omniglot 5w1s/1q, Conv4-64 stride, MAML 2nd, 1 step``."""
    d, m, a = case.data.cfg, case.spec.model, case.algo.cfg
    assert isinstance(m, Conv4Config)
    order, steps = "1st" if a.first_order else "2nd", a.inner_steps
    shape = f"{d.ways}w{d.shots}s/{d.queries}q"
    return f"{case.name} {shape}, Conv4-{m.filters} {m.pool}, MAML {order}, {steps} step{'s' * (steps > 1)}"


def n_params(case: Case) -> int:
    """Meta-parameters of the case's network."""
    return sum(p.numel() for p in case.learner.init_params().values())


# --- timing -------------------------------------------------------------------------------------------


def timed(fn: Callable[[], object], device: torch.device) -> Timer:
    """A timer of one synchronised call of ``fn``."""

    def run() -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    return run


def interleaved_times(timers: dict[str, Timer], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of every contender per round: each round runs all of them once, in alternating order.

    The first ``warmup`` rounds are dropped; alternating the order cancels slow drifts (e.g. load from
    other processes) between the contenders.
    """
    times: dict[str, list[float]] = {name: [] for name in timers}
    names = list(timers)
    for r in range(warmup + repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds = timers[name]()
            if r >= warmup:
                times[name].append(seconds)
    return times


# --- table 1: meta-training steps ---------------------------------------------------------------------


def training_step(case: Case, executor: str, n_tasks: int, device: torch.device) -> Callable[[], None]:
    """One meta-training step of a fresh run (own meta-parameters, Adam state, task generator)."""
    generator = torch.Generator().manual_seed(case.spec.seed)
    parts = EpisodicParts(device, torch.float32, generator, case.learner, case.algo, case.data)
    state = TrainState(parts, total_steps=1)

    def step() -> None:
        tasks = case.data.sample("train", n_tasks, generator, device)
        result = case.algo.meta_step(state.meta, tasks, executor)
        outer_update(state, result.grads)

    return step


def meta_gradients(case: Case, tasks: Task, dtype: torch.dtype) -> dict[str, dict[str, Tensor]]:
    """Loop and vmap meta-gradients at the initial parameters, with the network and images in ``dtype``."""
    learner = Learner(copy.deepcopy(case.learner.model).to(dtype), case.learner.criterion)
    algo = type(case.algo)(case.algo.cfg, learner)
    meta = algo.init_meta(learner.init_params())
    cast = Task(*(Batch(b.x.to(dtype), b.y) for b in tasks))
    return {ex: algo.meta_step(meta, cast, ex).grads for ex in EXECUTORS}


def max_err(a: dict[str, Tensor], b: dict[str, Tensor], scale: float) -> float:
    """Largest elementwise |a - b| over every tensor, relative to ``scale``."""
    return max(float((a[k] - b[k].to(a[k].dtype)).abs().max()) for k in a) / scale


def check_executors(case: Case, n_tasks: int, device: torch.device) -> dict[str, Any]:
    """Loop vs vmap meta-gradients of one meta-batch, in float32 and in float64.

    Elementwise ``allclose`` with ``rtol`` and ``atol = rtol x`` the largest meta-gradient element of
    the network: the conv biases before batch norm have an analytically zero gradient (the norm removes
    any per-channel offset), so theirs is round-off, which a per-tensor relative test would flag. The
    float64 pair separates executor bugs from float32 round-off, which several second-order inner steps
    amplify (``f32_vs_f64``: how far float32's own loop gradient is from float64's).
    """
    tasks = case.data.sample("train", n_tasks, torch.Generator().manual_seed(1), device)
    g32, g64 = meta_gradients(case, tasks, torch.float32), meta_gradients(case, tasks, torch.float64)
    scale = max(float(g.abs().max()) for g in g64["loop"].values())
    out: dict[str, Any] = {"case": case.name, "tasks": n_tasks}
    for name, g, rtol in (("float32", g32, GRAD_RTOL), ("float64", g64, GRAD_RTOL_F64)):
        loop, vmap = g["loop"], g["vmap"]
        ok = all(torch.allclose(vmap[k], loop[k], rtol=rtol, atol=rtol * scale) for k in loop)
        out[name] = {"max_err": max_err(loop, vmap, scale), "rtol": rtol, "ok": ok}
    out["f32_vs_f64"] = max_err(g64["loop"], g32["loop"], scale)
    out["verdict"] = verdict(out)
    return out


def verdict(check: dict[str, Any]) -> str:
    """``agree``; ``agree up to float32 round-off`` when only float32 misses its rtol, by no more than
    float32's own distance from float64; else ``DISAGREE``."""
    f32, f64 = check["float32"], check["float64"]
    if f32["ok"]:
        return "agree"
    if f64["ok"] and f32["max_err"] <= 2 * check["f32_vs_f64"]:
        return "agree up to float32 round-off"
    return "DISAGREE"


def check_line(check: dict[str, Any]) -> str:
    """One printed line per executor check."""
    parts = [
        f"{name} {check[name]['max_err']:.1e} ({'within' if check[name]['ok'] else 'OUTSIDE'} "
        f"rtol {check[name]['rtol']:g})"
        for name in ("float32", "float64")
    ]
    return (
        f"grad check {check['case']} B={check['tasks']}: loop and vmap meta-gradients {verdict(check)}; "
        f"max |loop - vmap| / max |grad|: {', '.join(parts)}; float32 loop vs float64 loop: "
        f"{check['f32_vs_f64']:.1e}"
    )


def train_rows(
    case: Case, batch_sizes: Sequence[int], repeats: int, device: torch.device
) -> list[dict[str, Any]]:
    """tasks/s of both executors at every meta-batch size."""
    rows = []
    for n_tasks in batch_sizes:
        timers = {ex: timed(training_step(case, ex, n_tasks, device), device) for ex in EXECUTORS}
        times = interleaved_times(timers, repeats, warmup=1)
        rate = {ex: n_tasks / statistics.median(t) for ex, t in times.items()}
        row = {"case": describe(case), "images": case.source, "B": n_tasks, "tasks_per_s": rate}
        rows.append(row | {"step_seconds": times})
        print(f"  {case.name} B={n_tasks}: " + ", ".join(f"{ex} {r:.2f} tasks/s" for ex, r in rate.items()))
    return rows


def train_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the meta-training throughput."""
    lines = [
        "| case | images | B | loop tasks/s | vmap tasks/s | vmap/loop |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        loop, vmap = r["tasks_per_s"]["loop"], r["tasks_per_s"]["vmap"]
        lines.append(
            f"| {r['case']} | {r['images']} | {r['B']} | {loop:.2f} | {vmap:.2f} | {vmap / loop:.2f} |"
        )
    return "\n".join(lines)


# --- table 2: drawing a meta-batch --------------------------------------------------------------------


class SingleImages(Dataset[Tensor]):
    """A torchvision-style map-style dataset: index ``c * per_class + i`` is image i of class c as float.

    Args:
        images: uint8 (classes, per_class, C, H, W) on the CPU.
        rotations: class 4c + r is class c rotated by r x 90 degrees (as :class:`ClassImages`).
    """

    def __init__(self, images: Tensor, rotations: bool) -> None:
        self.images = images
        self.rotations = rotations
        self.per_class = images.shape[1]
        self.n_classes = images.shape[0] * (4 if rotations else 1)

    def __len__(self) -> int:
        return self.n_classes * self.per_class

    def __getitem__(self, index: int) -> Tensor:
        c, i = divmod(index, self.per_class)
        base, r = divmod(c, 4) if self.rotations else (c, 0)
        img = self.images[base, i]
        if r:
            img = torch.rot90(img, r, dims=(-2, -1)).contiguous()
        return img.to(torch.float32).div(255)  # ToTensor: uint8 -> float in [0, 1]


class EpisodicBatchSampler(Sampler[list[int]]):
    """Seeded indices of one N-way task per batch: N random classes x ``per_task`` random images each."""

    def __init__(
        self, n_classes: int, per_class: int, ways: int, per_task: int, n_tasks: int, seed: int
    ) -> None:
        self.n_classes, self.per_class = n_classes, per_class
        self.ways, self.per_task = ways, per_task
        self.n_tasks, self.seed = n_tasks, seed

    def __len__(self) -> int:
        return self.n_tasks

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(self.n_tasks):
            classes = torch.randperm(self.n_classes, generator=g)[: self.ways].tolist()
            yield [
                c * self.per_class + i
                for c in classes
                for i in torch.randperm(self.per_class, generator=g)[: self.per_task].tolist()
            ]


class CollateTask:
    """Per-task collate: class-major images -> support (first K of each class) and query, labels 0..N-1."""

    def __init__(self, ways: int, shots: int) -> None:
        self.ways, self.shots = ways, shots

    def __call__(self, images: list[Tensor]) -> Task:
        x = torch.stack(images)
        x = x.view(self.ways, -1, *x.shape[1:])
        k, q = self.shots, x.shape[1] - self.shots
        labels = torch.arange(self.ways)
        support = Batch(x[:, :k].flatten(0, 1), labels.repeat_interleave(k))
        return Task(support, Batch(x[:, k:].flatten(0, 1), labels.repeat_interleave(q)))


def stack_tasks(tasks: list[Task], device: torch.device) -> Task:
    """B collated tasks -> one meta-batch on ``device`` (the layout of ``FewShotImages.sample``)."""

    def stacked(get: Callable[[Task], Tensor]) -> Tensor:
        return torch.stack([get(t) for t in tasks]).to(device)

    support = Batch(stacked(lambda t: t.support.x), stacked(lambda t: t.support.y))
    return Task(support, Batch(stacked(lambda t: t.query.x), stacked(lambda t: t.query.y)))


def pipeline_parts(case: Case, n_tasks: int) -> tuple[SingleImages, EpisodicBatchSampler, CollateTask]:
    """The torchvision-style dataset, batch sampler (enough tasks for any run) and collate of a case."""
    cfg, rotations = case.data.cfg, case.data.splits["train"].rotations
    dataset = SingleImages(case.cpu_images, rotations)
    per_task = cfg.shots_for("train") + cfg.queries
    sampler = EpisodicBatchSampler(dataset.n_classes, dataset.per_class, cfg.ways, per_task, n_tasks, seed=0)
    return dataset, sampler, CollateTask(cfg.ways, cfg.shots_for("train"))


def check_pipeline(case: Case, n_tasks: int, device: torch.device) -> bool:
    """Whether the pipeline gives exactly ``FewShotImages.sample``'s tensors for the same index draws."""
    dataset, _, collate = pipeline_parts(case, n_tasks)
    ours = case.data.sample("train", n_tasks, torch.Generator().manual_seed(3), device)
    classes, picks = case.data.draw("train", n_tasks, torch.Generator().manual_seed(3))
    index = classes[..., None] * dataset.per_class + picks  # (B, N, K + Q)
    theirs = stack_tasks([collate([dataset[i] for i in task.flatten().tolist()]) for task in index], device)
    pairs = [(ours.support.x, theirs.support.x), (ours.support.y, theirs.support.y)]
    pairs += [(ours.query.x, theirs.query.x), (ours.query.y, theirs.query.y)]
    return all(torch.equal(a, b) for a, b in pairs)


def block_timer(draw: Callable[[], object], skip: int, device: torch.device) -> Timer:
    """Settle, draw ``skip`` untimed meta-batches, then the mean seconds of :data:`DRAW_BLOCK` more.

    The pause first lets the workers of the other loaders refill their prefetch queues, so that they do
    not compete for the CPU during this block; the untimed draws then empty this loader's own queue.
    """

    def run() -> float:
        time.sleep(SETTLE_S)
        for _ in range(skip):
            draw()
        sync(device)
        start = time.perf_counter()
        for _ in range(DRAW_BLOCK):
            draw()
        sync(device)
        return (time.perf_counter() - start) / DRAW_BLOCK

    return run


def loader_timer(
    case: Case, n_tasks: int, workers: int, skip: int, total: int, device: torch.device
) -> Timer:
    """A started DataLoader (one task per batch) drawing B tasks per meta-batch, as a block timer."""
    dataset, sampler, collate = pipeline_parts(case, total)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate)
    tasks = iter(loader)
    next(tasks)  # starts the workers; raises here if they cannot run
    return block_timer(lambda: stack_tasks([next(tasks) for _ in range(n_tasks)], device), skip, device)


def draw_rows(
    case: Case, n_tasks: int, workers: Sequence[int], repeats: int, device: torch.device
) -> list[dict[str, Any]]:
    """Median ms per meta-batch of metacli's sampler and of the DataLoader pipeline per worker count."""
    generator = torch.Generator().manual_seed(0)
    skip = 1 + math.ceil(PREFETCH_FACTOR * max(workers, default=0) / n_tasks)
    timers = {
        "metacli": block_timer(lambda: case.data.sample("train", n_tasks, generator, device), skip, device)
    }
    total = (DRAW_WARMUP_ROUNDS + repeats) * (skip + DRAW_BLOCK) * n_tasks + 16 * n_tasks
    failed: dict[str, str] = {}
    for w in workers:
        try:
            timers[f"DataLoader, {w} workers"] = loader_timer(case, n_tasks, w, skip, total, device)
        except (RuntimeError, OSError) as e:
            failed[f"DataLoader, {w} workers"] = f"{type(e).__name__}: {e}"
    times = interleaved_times(timers, repeats, warmup=DRAW_WARMUP_ROUNDS)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    cfg = case.data.cfg
    per_task = cfg.ways * (cfg.shots_for("train") + cfg.queries)
    base = {"case": case.name, "images": case.source, "B": n_tasks, "images_per_batch": n_tasks * per_task}
    rows = [
        {
            **base,
            "pipeline": name,
            "ms": s * 1e3,
            "ratio": s / seconds["metacli"],
            "block_seconds": times[name],
        }
        for name, s in seconds.items()
    ]
    rows += [
        {**base, "pipeline": name, "ms": None, "ratio": None, "error": err} for name, err in failed.items()
    ]
    return rows


def draw_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the draw times."""
    lines = [
        "| data | images | B | images / meta-batch | pipeline | ms / meta-batch | x metacli |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        ms = f"{r['ms']:.2f}" if r["ms"] is not None else "failed"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        cells = [r["case"], r["images"], r["B"], r["images_per_batch"], r["pipeline"], ms, ratio]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


# --- environment, output ------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what :mod:`platform` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on besides the code."""
    return {
        "device": device_name(device) if device.type == "cuda" else f"CPU {cpu_model()}",
        "device_type": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help="torch device (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed meta-training steps per cell (median)")
    parser.add_argument("--draw-repeats", type=int, default=20, help="timed blocks per draw cell (median)")
    parser.add_argument(
        "--omniglot-batch-sizes", type=int, nargs="+", default=[8, 32], help="meta-batch sizes"
    )
    parser.add_argument(
        "--miniimagenet-batch-sizes", type=int, nargs="+", default=[2, 4], help="meta-batch sizes"
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers to try"
    )
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES, help="which presets to run")
    tables = ["train", "draw"]
    parser.add_argument("--tables", nargs="+", default=tables, choices=tables, help="which tables to measure")
    parser.add_argument(
        "--data-root",
        default=None,
        help=f"Omniglot root (default: ${ENV_VAR}, then ../shared/data beside the repository)",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON path (default: results/fewshot_<device>.json)"
    )
    return parser.parse_args()


def measure_train(
    cases: list[Case], sizes: dict[str, list[int]], repeats: int, device: torch.device
) -> dict[str, Any]:
    """The executor checks (at each case's smallest B), then the throughput rows."""
    checks = []
    for case in cases:
        check = check_executors(case, min(sizes[case.name]), device)
        print(check_line(check), flush=True)
        checks.append(check)
    rows = [row for case in cases for row in train_rows(case, sizes[case.name], repeats, device)]
    return {"grad_checks": checks, "train": rows}


def measure_draw(
    cases: list[Case], sizes: dict[str, list[int]], workers: list[int], repeats: int, device: torch.device
) -> dict[str, Any]:
    """The pipeline checks, then the draw rows at each case's largest B."""
    checks = {case.name: check_pipeline(case, 2, device) for case in cases}
    for name, same in checks.items():
        verdict = "identical to" if same else "DIFFER from"
        print(f"pipeline check {name}: the DataLoader's tensors are {verdict} metacli's")
    rows = [row for case in cases for row in draw_rows(case, max(sizes[case.name]), workers, repeats, device)]
    return {"pipeline_checks": checks, "draw": rows}


def print_tables(out: dict[str, Any], args: argparse.Namespace) -> None:
    """Both markdown tables, each under a line saying what it measures."""
    env = out["environment"]
    if "train" in out:
        print(
            f"\nMeta-training step throughput ({env['device']}, torch threads: {env['threads']}, median of "
            f"{args.repeats}; sample on device + meta_step + Adam; vmap/loop > 1: vmap faster)\n"
        )
        print(train_table(out["train"]) + "\n")
    if "draw" in out:
        print(
            f"Task-batch draw time ({env['device']}, steady state: loaders started and {DRAW_WARMUP_ROUNDS} "
            f"rounds dropped, prefetch queues emptied before each block; median of {args.draw_repeats} "
            f"blocks of {DRAW_BLOCK} meta-batches; x metacli > 1: slower than metacli's sampler)\n"
        )
        print(draw_table(out["draw"]) + "\n")


def main() -> None:
    start = time.perf_counter()
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = environment(device)
    print(f"torch {env['torch']}, device {env['device']}, CPU {env['cpu']}, torch threads: {env['threads']}")
    sizes = {"omniglot": args.omniglot_batch_sizes, "miniimagenet": args.miniimagenet_batch_sizes}
    cases = [build_case(name, device, data_root(args.data_root)) for name in args.cases]
    for case in cases:
        print(f"{describe(case)}: {n_params(case):,} parameters; images {case.source}")
    out: dict[str, Any] = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}}
    out["parameters"] = {case.name: n_params(case) for case in cases}
    if "train" in args.tables:
        out |= measure_train(cases, sizes, args.repeats, device)
    if "draw" in args.tables:
        out |= measure_draw(cases, sizes, args.workers, args.draw_repeats, device)
    print_tables(out, args)
    out["wall_s"] = time.perf_counter() - start
    path = result_path(args.output, f"fewshot_{device.type}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path} ({out['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
