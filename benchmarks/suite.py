"""One benchmark suite: metacli's meta-gradient executors against PyTorch autograd, higher and TorchOpt.

Usage (from the repository root; ``pip install -e .[bench]`` for the peers):
    python -m benchmarks.suite --device cpu --threads 2 --repeats 5
    python -m benchmarks.suite --quick --threads 1          # tiny sizes: a smoke run of seconds

Contenders, all in this one process, on the same tasks (one meta-batch drawn once per case, outside the
clock), from the same initial parameters, with the same loss (mean MSE / cross-entropy), alpha, inner
steps and outer Adam:

- ``metacli loop`` / ``metacli vmap``: ``algorithm.meta_step`` (:mod:`metacli.engine.executors`) and
  :func:`~metacli.engine.episodic.outer_update` on a :class:`~metacli.engine.episodic.TrainState`, the
  parts built from the ``--algo maml`` preset as :func:`metacli.engine.build_episodic` does;
- ``metacli auto``: metacli's default, ``train.executor: auto``: the executor chosen by
  :func:`metacli.engine.executor_choice.measure_executors` on the case's parts when the contender is made
  (outside the clock, as a run measures once before it trains), then stepped like the two above; its row
  names the choice and the times it measured;
- ``metacli remat``: ``algorithm.remat: true`` (:mod:`metacli.engine.remat`) on the loop executor: the same
  meta-gradient as ``metacli loop`` with memory flat in the inner steps; its time against the loop's row is
  the cost of recomputing every inner step in the backward pass;
- the peers of :mod:`benchmarks.peers`: a plain per-task ``torch.autograd.grad(create_graph=True)`` loop,
  ``higher.innerloop_ctx`` and ``torchopt.MetaSGD``, on a copy of metacli's network whose batch norm is
  ``nn.BatchNorm2d(track_running_stats=False)`` (PyTorch's fused kernel) and whose blocks run activation ->
  max-pool, the papers' order (metacli pools first: the same function and gradients, less work).

Cases (MAML second order, presets of :mod:`metacli.spec`; images are synthetic uint8 unless said):

- ``sinusoid``: MLP 1-40-40-1, K = 5 (5 queries), 1 inner step, alpha 0.01, meta-batch 25;
- ``omniglot``: Conv4-64 stride, 5-way 1-shot (1 query per class), 28x28x1, 1 inner step, alpha 2.0,
  meta-batch 32 (the real Vinyals train split when ``--data-root``, ``$METACLI_DATA`` or
  ``../shared/data`` beside the repository holds the archives, else synthetic, saying why; always
  synthetic with ``--quick``);
- ``omniglot-5q`` / ``omniglot-15q``: the same with 5 and 15 queries per class (15: the usual setting,
  where ``vmap`` loses to the loop on the CPU);
- ``mini-5w1s`` / ``mini-5w5s``: Conv4-32 max-pool, 84x84x3, 15 queries per class, 5 inner steps,
  alpha 0.05, meta-gradient clamp 10, meta-batch 4 (no miniImageNet images offline);
- ``mini-5w1s-1q``: mini-5w1s with 1 query per class (the small-step end of the miniImageNet shapes);
- ``resnet12``: ResNet-12 (``--resnet-widths``, default 64-160-320-640) on the mini-5w1s tasks; by default
  meta-batch 1 and 1 inner step (``--resnet-meta-batch``, ``--resnet-inner-steps``; the preset's 4 and 5
  are unaffordable on a CPU), which the table states;
- ``moml``: rounds of ``metacli train --algo moml --dataset smnist`` with LTM off, i.e.
  :func:`~metacli.engine.online.run_online` over ``--moml-rounds`` rounds (per round: the CTM evaluation and
  K = 10 second-order outer steps), on random data of S-MNIST's shapes; metacli only (no peer implements
  the online protocol);
- ``ltm``: one batched LTM evaluation (U_eval then test on ``--ltm-tasks`` seen tasks, the Gram-matrix
  path with the stream cache filled, as ``run_online`` calls it; see ``benchmarks/bench_ltm.py``); metacli
  only.

Measured, per MAML case:

1. **Meta-gradient agreement**, before any timing: one meta-gradient of every contender at the initial
   parameters, compared with ``metacli loop``'s in float32: max |g - g_loop| / max |g_loop| must be at most
   1e-4. A contender above it is recomputed in float64 with metacli's loop (at most 1e-9 there: float32
   round-off, timed) and is otherwise reported as disagreeing and not timed.
2. **Time**: per repeat every contender runs one meta-step (forward, meta-gradient and the outer Adam step;
   no sampling), in alternating order; one warm-up round is dropped; the median over ``--repeats`` gives
   ms / step and tasks/s (meta-batch / median). ``x fastest peer``: tasks/s over the fastest peer's (> 1:
   faster than every peer). CUDA is synchronised around every timing.
3. **Peak memory** of one more meta-step: on CUDA ``torch.cuda.max_memory_allocated`` above the allocation
   before it; on the CPU the peak of the running sum of torch's CPU allocation and free events recorded by
   ``torch.profiler`` (``profile_memory=True``), above the start. (Summing the tensors saved for backward
   with ``torch.autograd.graph.saved_tensors_hooks`` does not work here: ``torch.func.grad``, which
   metacli's inner loop uses, refuses saved-tensor hooks.)

The table is printed in markdown; the JSON (environment: device, CPU model, threads, versions of torch,
higher and TorchOpt, date; every per-repeat time) goes to ``benchmarks/results/suite_<device>.json``
(``suite_<device>_quick.json`` for ``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch

from benchmarks.bench_fewshot import (
    GRAD_RTOL,
    GRAD_RTOL_F64,
    NO_DATA,
    VINYALS_TRAIN_CHARACTERS,
    data_root,
    environment,
    interleaved_times,
    max_err,
    omniglot_data,
    random_uint8,
    result_path,
    timed,
)
from benchmarks.bench_ltm import N_CLASSES, N_TEST, N_TRAIN
from benchmarks.peers import PEERS, REQUIRES, Problem
from metacli.engine import memory
from metacli.engine.build import (
    BuildSettings,
    EpisodicParts,
    OnlineParts,
    build_episodic,
    episodic_parts,
    make_generator,
    online_parts,
)
from metacli.engine.data.images import ClassImages, FewShotImages
from metacli.engine.data.miniimagenet import SIDE, SPLIT_CLASSES
from metacli.engine.data.omniglot import DRAWERS
from metacli.engine.episodic import TrainState, outer_update
from metacli.engine.executor_choice import measure_executors
from metacli.engine.executors import EXECUTORS
from metacli.engine.functional import Learner
from metacli.engine.memory import peak_bytes
from metacli.engine.models.mlp import MLP
from metacli.engine.online import finetune_and_test, run_online
from metacli.engine.online_fast import StreamGram
from metacli.engine.types import Batch, OnlineStream, Params, Task
from metacli.spec import RunSpec, deep_update, load_spec, preset, validate

QUERY_CASES = {"omniglot-5q": 5, "omniglot-15q": 15, "mini-5w1s-1q": 1}
"""Cases that are another case with its queries per class changed (the name up to the last ``-``)."""
MAML_CASES = (
    "sinusoid",
    "omniglot",
    *list(QUERY_CASES)[:2],
    "mini-5w1s",
    "mini-5w1s-1q",
    "mini-5w5s",
    "resnet12",
)
ONLINE_CASES = ("moml", "ltm")
CASES = MAML_CASES + ONLINE_CASES
REFERENCE = "metacli loop"
AUTO = "metacli auto"
REMAT = "metacli remat"
"""MAML with ``algorithm.remat: true`` on the loop executor: the exact meta-gradient at memory flat in the
inner steps, whose cost against ``metacli loop`` (the same step unrolled) is its recomputation."""
METACLI = (*(f"metacli {ex}" for ex in EXECUTORS), AUTO, REMAT)
RESNET_WIDTHS = (64, 160, 320, 640)
QUICK_RESNET_WIDTHS = (4, 8, 8, 8)
QUICK_SIDE = 32
"""Side of the synthetic miniImageNet images in ``--quick`` (84 otherwise)."""
QUICK_OVERRIDES: dict[str, dict[str, Any]] = {
    "sinusoid": {"train": {"meta_batch": 2}},
    "omniglot": {"train": {"meta_batch": 2}, "model": {"filters": 8}},
    "mini": {
        "train": {"meta_batch": 2},
        "model": {"filters": 8},
        "algorithm": {"inner_steps": 2},
        "data": {"queries": 2},
    },
}
MIB = 2**20


class Sizes(NamedTuple):
    """Sizes of the cases: the defaults, or tiny ones for a smoke run."""

    quick: bool
    resnet_widths: tuple[int, int, int, int]
    resnet_meta_batch: int
    resnet_inner_steps: int
    moml_rounds: int
    ltm_tasks: int


def quick_sizes() -> Sizes:
    """The ``--quick`` sizes (also used by ``tests/test_benchmarks.py``)."""
    return Sizes(True, QUICK_RESNET_WIDTHS, 1, 1, moml_rounds=2, ltm_tasks=20)


# --- MAML cases -----------------------------------------------------------------------------------------


class MAMLCase(NamedTuple):
    """One MAML configuration: its parts (metacli's), the fixed meta-batch and a description."""

    name: str
    label: str
    images: str
    parts: EpisodicParts
    tasks: Task


def case_spec(name: str, sizes: Sizes) -> RunSpec:
    """The ``--algo maml`` preset of the case's dataset with the case's (and ``--quick``'s) changes."""
    queries = QUERY_CASES.get(name)
    name = name.rsplit("-", 1)[0] if queries is not None else name
    dataset = "miniimagenet" if name.startswith("mini") or name == "resnet12" else name
    data = deep_update(preset("maml", dataset), {"threads": None})  # --threads decides, not the preset
    if name == "mini-5w5s":
        deep_update(data, {"data": {"shots": 5}})
    if name == "resnet12":
        data["model"] = {"name": "resnet12", "widths": list(sizes.resnet_widths)}
        batch, steps = {"meta_batch": sizes.resnet_meta_batch}, {"inner_steps": sizes.resnet_inner_steps}
        deep_update(data, {"train": batch, "algorithm": steps})
    if sizes.quick:
        quick = copy.deepcopy(QUICK_OVERRIDES["mini" if dataset == "miniimagenet" else name])
        if name == "resnet12":
            quick.pop("model")
            quick["train"]["meta_batch"] = sizes.resnet_meta_batch
            quick["algorithm"]["inner_steps"] = sizes.resnet_inner_steps
        deep_update(data, quick)
    if queries is not None:  # after --quick's, which sets its own
        deep_update(data, {"data": {"queries": queries}})
    return validate(data, f"benchmark case {name}")


def synthetic_images(spec: RunSpec, quick: bool, device: torch.device) -> tuple[FewShotImages, str]:
    """Seeded random uint8 images of the dataset's image shape, with enough images per class."""
    cfg = spec.data
    if cfg.name == "omniglot":
        classes = 16 if quick else VINYALS_TRAIN_CHARACTERS
        shape, rotations = (classes, DRAWERS, 1, cfg.image_size, cfg.image_size), cfg.rotations
    else:
        side = QUICK_SIDE if quick else SIDE
        classes, per_class = (16 if quick else SPLIT_CLASSES["train"]), cfg.shots + cfg.queries
        shape, rotations = (classes, per_class, 3, side, side), False
    images = random_uint8(shape, seed=0)
    data = FewShotImages(cfg, {"train": ClassImages(images, device, rotations)})
    return data, f"synthetic, {data.splits['train'].n_classes} classes"


def describe(name: str, spec: RunSpec, data: Any, sizes: Sizes) -> str:
    """e.g. ``mini-5w1s: Conv4-32 max, 5w1s/15q 3x84x84, MAML 2nd, 5 steps, alpha 0.05, B=4``."""
    m, d, a = spec.model, spec.data, spec.algorithm
    if m.name == "mlp":
        net = "MLP " + "-".join(str(w) for w in (1, *m.hidden, 1))
    elif m.name == "conv4":
        net = f"Conv4-{m.filters} {m.pool}"
    else:
        net = "ResNet-12 " + "-".join(str(w) for w in m.widths)
    shape = "x".join(str(s) for s in data.in_shape)
    task = (
        f"K={d.shots}/{d.queries}q" if d.name == "sinusoid" else f"{d.ways}w{d.shots}s/{d.queries}q {shape}"
    )
    steps = a.inner_steps
    label = f"{name}: {net}, {task}, MAML 2nd, {steps} step{'s' * (steps > 1)}, alpha {a.alpha:g}"
    label += f", B={spec.train.meta_batch}"
    if name == "resnet12" and not sizes.quick and (spec.train.meta_batch, steps) != (4, 5):
        label += " (reduced from the preset's B=4, 5 steps to stay affordable on a CPU)"
    return label


def maml_case(name: str, sizes: Sizes, device: torch.device, root: Path | None = None) -> MAMLCase:
    """The case's parts and one meta-batch of tasks (drawn once, seed 1)."""
    spec = case_spec(name, sizes)
    settings = BuildSettings(seed=spec.seed, device=str(device))
    if name == "sinusoid":
        parts = build_episodic(spec.algorithm, spec.model, spec.data, settings)
        images = "sampled sine tasks"
    else:
        if name.startswith("omniglot") and root is not None and not sizes.quick:
            data, _, images = omniglot_data(spec, device, root)
        else:
            data, images = synthetic_images(spec, sizes.quick, device)
        parts = episodic_parts(spec.algorithm, spec.model, data, settings)
    tasks = parts.dataset.sample("train", spec.train.meta_batch, torch.Generator().manual_seed(1), device)
    return MAMLCase(name, describe(name, spec, parts.dataset, sizes), images, parts, tasks)


# --- contenders -----------------------------------------------------------------------------------------


class Contender(Protocol):
    """Something that computes a meta-gradient and takes meta-steps on its own parameters."""

    def meta_gradient(self) -> Params: ...

    def step(self) -> None: ...


class MetacliContender:
    """metacli's meta-step (``algorithm.meta_step`` with an executor) and outer update on a TrainState."""

    def __init__(self, parts: EpisodicParts, tasks: Task, executor: str) -> None:
        self.algo, self.tasks, self.executor = parts.algorithm, tasks, executor
        self.state = TrainState(parts, total_steps=1)

    def meta_gradient(self) -> Params:
        grads = self.algo.meta_step(self.state.meta, self.tasks, self.executor).grads
        return {k: g.detach().clone() for k, g in grads.items()}

    def step(self) -> None:
        outer_update(self.state, self.algo.meta_step(self.state.meta, self.tasks, self.executor).grads)


class AutoContender(MetacliContender):
    """``train.executor: auto``: measured once on the case's parts, then the chosen executor's steps."""

    def __init__(self, parts: EpisodicParts, tasks: Task) -> None:
        self.choice = measure_executors(parts, int(tasks.query.x.shape[0]))
        super().__init__(parts, tasks, self.choice.chosen)


class RematContender(MetacliContender):
    """``algorithm.remat: true``: the loop executor with each inner step recomputed in the backward pass."""

    def __init__(self, parts: EpisodicParts, tasks: Task) -> None:
        cfg = parts.algorithm.cfg.model_copy(update={"remat": True})
        super().__init__(parts._replace(algorithm=type(parts.algorithm)(cfg, parts.learner)), tasks, "loop")


def cast_case(case: MAMLCase, dtype: torch.dtype) -> tuple[EpisodicParts, Task]:
    """The case's parts and tasks in ``dtype`` (a copy of the network; labels stay integers)."""
    if dtype == case.parts.dtype:
        return case.parts, case.tasks
    learner = Learner(copy.deepcopy(case.parts.learner.model).to(dtype), case.parts.learner.criterion)
    parts = case.parts._replace(
        dtype=dtype, learner=learner, algorithm=type(case.parts.algorithm)(case.parts.algorithm.cfg, learner)
    )

    def cast(b: Batch) -> Batch:
        return Batch(b.x.to(dtype), b.y.to(dtype) if b.y.is_floating_point() else b.y)

    return parts, Task(cast(case.tasks.support), cast(case.tasks.query))


def make_contender(name: str, parts: EpisodicParts, tasks: Task) -> Contender:
    """A fresh contender from the initial parameters of ``parts``."""
    if name == AUTO:
        return AutoContender(parts, tasks)
    if name == REMAT:
        return RematContender(parts, tasks)
    if name in METACLI:
        return MetacliContender(parts, tasks, name.removeprefix("metacli "))
    cfg = parts.algorithm.cfg
    problem = Problem(
        tasks, parts.learner.loss_of_output, cfg.alpha, cfg.inner_steps, cfg.outer_lr, cfg.grad_clip
    )
    return PEERS[name](parts.learner.model, parts.learner.init_params(), problem)


def available_peers() -> tuple[list[str], dict[str, str]]:
    """Peers whose package is installed, and why the others are left out."""
    names, missing = [], {}
    for name, package in REQUIRES.items():
        if package is None or importlib.util.find_spec(package) is not None:
            names.append(name)
        else:
            missing[name] = f"not installed (pip install {package}, or .[bench])"
    return names, missing


def package_version(package: str) -> str | None:
    """Installed version of a distribution, None when absent."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- meta-gradient agreement ----------------------------------------------------------------------------


def meta_gradients(case: MAMLCase, names: Sequence[str], dtype: torch.dtype) -> dict[str, Params | str]:
    """Each contender's meta-gradient at the initial parameters, or the error it raised."""
    parts, tasks = cast_case(case, dtype)
    out: dict[str, Params | str] = {}
    for name in names:
        try:
            out[name] = make_contender(name, parts, tasks).meta_gradient()
        except Exception as e:  # a broken peer is reported, not fatal
            out[name] = f"{type(e).__name__}: {e}"
    return out


def relative_deviations(grads: dict[str, Params | str]) -> dict[str, float | str]:
    """max |g - g_loop| / max |g_loop| per contender (the error text for one that failed)."""
    ref = grads[REFERENCE]
    if isinstance(ref, str):
        raise RuntimeError(f"metacli's loop executor failed: {ref}")
    scale = max(float(g.abs().max()) for g in ref.values())
    return {n: g if isinstance(g, str) else max_err(ref, g, scale) for n, g in grads.items()}


def grad_check(case: MAMLCase, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Agreement of every contender's meta-gradient with metacli loop's (float32, then float64 if needed).

    Each entry: ``float32`` (max relative deviation or an error text), ``float64`` (only for contenders
    outside the float32 tolerance), ``ok`` (timed or not) and ``verdict``.
    """
    f32 = relative_deviations(meta_gradients(case, [REFERENCE, *names], torch.float32))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        dev = f32[name]
        ok = isinstance(dev, float) and dev <= GRAD_RTOL
        out[name] = {"float32": dev, "tol": GRAD_RTOL, "ok": ok, "verdict": "agree" if ok else "DISAGREE"}
    outside = [n for n in names if not out[n]["ok"] and isinstance(f32[n], float)]
    if outside:
        f64 = relative_deviations(meta_gradients(case, [REFERENCE, *outside], torch.float64))
        for name in outside:
            dev64 = f64[name]
            ok = isinstance(dev64, float) and dev64 <= GRAD_RTOL_F64
            verdict = "agree in float64 (float32 round-off)" if ok else "DISAGREE"
            out[name] |= {"float64": dev64, "tol_float64": GRAD_RTOL_F64, "ok": ok, "verdict": verdict}
    if isinstance(f32[REFERENCE], float):
        out[REFERENCE] = {"float32": 0.0, "tol": GRAD_RTOL, "ok": True, "verdict": "reference"}
    return {REFERENCE: out.pop(REFERENCE), **out}


def auto_text(contender: AutoContender) -> str:
    """What ``auto`` chose, from which measured times (ms per meta-gradient)."""
    timed = ", ".join(f"{n} {1e3 * t:.1f}" for n, t in contender.choice.seconds.items())
    return f"chose {contender.choice.chosen} ({timed} ms)"


def check_text(check: dict[str, Any]) -> str:
    """The table cell of one agreement check."""
    dev = check["float32"]
    if isinstance(dev, str):
        return f"error ({dev[:60]}), not timed"
    if check["verdict"] == "reference":
        return "reference"
    if "float64" in check:
        dev64 = check["float64"]
        f64 = dev64 if isinstance(dev64, str) else f"{dev64:.1e}"
        return f"{check['verdict']}: f32 {dev:.1e}, f64 {f64}" + ("" if check["ok"] else ", not timed")
    return f"{check['verdict']} ({dev:.1e})" + ("" if check["ok"] else ", not timed")


# --- timing ---------------------------------------------------------------------------------------------


def time_contenders(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds per repeat of every function (interleaved, warm-up round dropped), then each one's peak."""
    times = interleaved_times({n: timed(fn, device) for n, fn in fns.items()}, repeats, warmup=1)
    peaks = {n: peak_bytes(fn, device) for n, fn in fns.items()}
    return times, peaks


def maml_rows(case: MAMLCase, names: Sequence[str], repeats: int, device: torch.device) -> dict[str, Any]:
    """Agreement check, then time and peak memory of the contenders that agree."""
    check = grad_check(case, names)
    parts, tasks = case.parts, case.tasks
    contenders = {n: make_contender(n, parts, tasks) for n in check if check[n]["ok"]}
    times, peaks = time_contenders({n: c.step for n, c in contenders.items()}, repeats, device)
    n_tasks = tasks.query.x.shape[0]
    rates = {n: n_tasks / statistics.median(t) for n, t in times.items()}
    peer_rates = [r for n, r in rates.items() if n not in METACLI]
    best_peer = max(peer_rates, default=None)
    rows = []
    for name, c in check.items():
        row: dict[str, Any] = {"contender": name, "check": c, "check_text": check_text(c)}
        if name in times:
            row |= {
                "ms_per_step": 1e3 * statistics.median(times[name]),
                "tasks_per_s": rates[name],
                "x_fastest_peer": rates[name] / best_peer if best_peer else None,
                "peak_bytes": peaks[name],
                "step_seconds": times[name],
            }
        contender = contenders.get(name)
        if isinstance(contender, AutoContender):
            row |= {
                "auto": contender.choice.record(),
                "check_text": f"{row['check_text']}; {auto_text(contender)}",
            }
        rows.append(row)
    return {"case": case.name, "label": case.label, "images": case.images, "B": n_tasks, "rows": rows}


# --- metacli-only cases: online protocol ----------------------------------------------------------------


def random_stream(n_tasks: int, device: torch.device) -> OnlineStream:
    """Random inputs and labels of S-MNIST's per-task shapes (60 train, 10 test 1x28x28 images)."""
    g = torch.Generator().manual_seed(0)

    def batch(per_task: int) -> Batch:
        x = torch.randn(n_tasks, per_task, 1, 28, 28, generator=g)
        return Batch(x.to(device), torch.randint(N_CLASSES, (n_tasks, per_task), generator=g).to(device))

    return OnlineStream(batch(N_TRAIN), batch(N_TEST), N_CLASSES)


def moml_parts(stream: OnlineStream, device: torch.device) -> tuple[RunSpec, OnlineParts]:
    """The ``--algo moml --dataset smnist`` spec (LTM off) and its parts on ``stream``."""
    spec, _ = load_spec(algo="moml", dataset="smnist", overrides=["online.ltm=false", "threads=null"])
    settings = BuildSettings(seed=spec.seed, device=str(device))
    return spec, online_parts(spec.algorithm, spec.model, stream, settings)


def moml_call(rounds: int, device: torch.device) -> tuple[str, Callable[[], object]]:
    """One call runs ``rounds`` MOML rounds from theta_0 through ``run_online`` (LTM off)."""
    stream = random_stream(rounds, device)
    spec, parts = moml_parts(stream, device)
    learner, algo, theta0 = parts.learner, parts.algorithm, parts.learner.init_params()
    assert isinstance(learner.model, MLP)

    def call() -> object:
        generator = make_generator(spec.seed)
        return run_online(algo, learner, stream, theta0, generator, lambda rec: None, ltm=spec.online.ltm)

    cfg = spec.algorithm
    label = (
        f"moml: S-MNIST MOML rounds, MLP 784-200-10, K={cfg.K} outer steps of batch {cfg.batch_size}, "
        f"LTM off, {rounds} rounds per call, random S-MNIST-shaped data; step = one round"
    )
    return label, call


def ltm_call(n_tasks: int, device: torch.device) -> tuple[str, Callable[[], object]]:
    """One batched LTM evaluation over ``n_tasks`` seen tasks, as ``run_online`` makes it."""
    stream = random_stream(n_tasks, device)
    _, parts = moml_parts(stream, device)
    learner, algo, params = parts.learner, parts.algorithm, parts.learner.init_params()
    cache = StreamGram(stream)
    cache.grams(torch.arange(1))  # filled once per run, at the first evaluation
    variants = list(algo.eval_variants.values())
    ids = torch.arange(n_tasks)

    def call() -> object:
        return finetune_and_test(learner, params, stream, ids, variants, algo.eval_clip_norm, cache=cache)

    lr, steps = variants[0]
    label = (
        f"ltm: one batched LTM evaluation of {n_tasks} tasks (U_eval {steps} step, lr {lr:g}, clip "
        f"{algo.eval_clip_norm:g}; Gram path, cache filled), random S-MNIST-shaped data; "
        "step = one evaluation"
    )
    return label, call


def online_rows(name: str, sizes: Sizes, repeats: int, device: torch.device) -> dict[str, Any]:
    """Time and peak memory of a metacli-only case (no agreement check: no peer applies)."""
    if name == "moml":
        (label, call), per_call, tasks_per_call = moml_call(sizes.moml_rounds, device), sizes.moml_rounds, 1
    else:
        (label, call), per_call, tasks_per_call = ltm_call(sizes.ltm_tasks, device), 1, sizes.ltm_tasks
    times, peaks = time_contenders({"metacli": call}, repeats, device)
    seconds = statistics.median(times["metacli"]) / per_call
    check = "n/a: metacli only, no peer applies"
    row = {
        "contender": "metacli",
        "check_text": check,
        "ms_per_step": 1e3 * seconds,
        "tasks_per_s": tasks_per_call / seconds,
        "x_fastest_peer": None,
        "peak_bytes": peaks["metacli"],
        "call_seconds": times["metacli"],
    }
    return {"case": name, "label": label, "images": "random", "B": tasks_per_call, "rows": [row]}


# --- output ---------------------------------------------------------------------------------------------


def table(cases: list[dict[str, Any]]) -> str:
    """One markdown table: a row per (case, contender), the case named on its first row."""
    lines = [
        "| case | contender | meta-gradient vs metacli loop (max rel. dev.) | ms / step | tasks/s "
        "| x fastest peer | peak MiB |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for case in cases:
        for i, r in enumerate(case["rows"]):
            timed_row = "ms_per_step" in r
            ms = f"{r['ms_per_step']:.2f}" if timed_row else "-"
            rate = f"{r['tasks_per_s']:.2f}" if timed_row else "-"
            ratio = f"{r['x_fastest_peer']:.2f}" if r.get("x_fastest_peer") is not None else "-"
            mem = f"{r['peak_bytes'] / MIB:.3g}" if timed_row else "-"
            cells = [case["label"] if i == 0 else "", r["contender"], r["check_text"], ms, rate, ratio, mem]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help="torch device (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per case (median)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES, help="which cases to run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--resnet-widths", type=int, nargs=4, default=None, help="ResNet-12 widths (default 64 160 320 640)"
    )
    parser.add_argument("--resnet-meta-batch", type=int, default=1, help="ResNet-12 meta-batch (default 1)")
    parser.add_argument("--resnet-inner-steps", type=int, default=1, help="ResNet-12 inner steps (default 1)")
    parser.add_argument("--moml-rounds", type=int, default=None, help="MOML rounds per call (default 10)")
    parser.add_argument("--ltm-tasks", type=int, default=None, help="tasks of the LTM evaluation (1000)")
    parser.add_argument(
        "--data-root",
        default=None,
        help="Omniglot root for real images (default: $METACLI_DATA, shared data)",
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON path")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    """The case sizes of the command line (``--quick`` changes the defaults, not explicit options)."""
    base = quick_sizes() if args.quick else Sizes(False, RESNET_WIDTHS, 1, 1, moml_rounds=10, ltm_tasks=1000)
    widths = tuple(args.resnet_widths) if args.resnet_widths else base.resnet_widths
    return base._replace(
        resnet_widths=widths,
        resnet_meta_batch=args.resnet_meta_batch,
        resnet_inner_steps=args.resnet_inner_steps,
        moml_rounds=args.moml_rounds or base.moml_rounds,
        ltm_tasks=args.ltm_tasks or base.ltm_tasks,
    )


def run_case(
    name: str, sizes: Sizes, peers: list[str], args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Measure one case and print its rows as they come."""
    if name in ONLINE_CASES:
        out = online_rows(name, sizes, args.repeats, device)
    else:
        root = data_root(args.data_root) if name.startswith("omniglot") else None
        if name.startswith("omniglot") and root is None and not sizes.quick:
            print(f"  {name}: {NO_DATA}", flush=True)  # skipped real data, with the reason
        out = maml_rows(maml_case(name, sizes, device, root), [*METACLI[1:], *peers], args.repeats, device)
    for r in out["rows"]:
        rate = f"{r['tasks_per_s']:.2f} tasks/s" if "tasks_per_s" in r else "not timed"
        print(f"  {name} {r['contender']}: {r['check_text']}; {rate}", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, sizes = torch.device(args.device), sizes_from(args)
    peers, missing = available_peers()
    env = environment(device) | {p: package_version(p) for p in ("higher", "torchopt")}
    env["malloc"] = (
        " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_")) or "defaults"
    )
    print(
        f"torch {env['torch']}, higher {env['higher']}, torchopt {env['torchopt']}, {env['device']}, ", end=""
    )
    print(
        f"torch threads: {env['threads']}, malloc: {env['malloc']}"
        + (" (--quick sizes)" if sizes.quick else "")
    )
    for name, why in missing.items():
        print(f"peer {name} left out: {why}")
    cases = [run_case(name, sizes, peers, args, device) for name in args.cases]
    out: dict[str, Any] = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}}
    out |= {"sizes": sizes._asdict(), "peers_missing": missing, "memory_measure": memory.method(device)}
    out["cases"] = cases
    print(
        f"\nOne meta-step per contender ({env['device']}, torch threads: {env['threads']}, malloc: "
        f"{env['malloc']}, median of "
        f"{args.repeats} interleaved repeats after one warm-up; forward + meta-gradient + outer Adam, tasks "
        f"fixed; x fastest peer > 1: faster than every peer; peak MiB: {out['memory_measure']})\n"
    )
    print(table(cases) + "\n")
    out["wall_s"] = time.perf_counter() - start
    path = result_path(args.output, f"suite_{device.type}.json", sizes.quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {path} ({out['wall_s']:.0f} s)")
    return out


if __name__ == "__main__":
    main()
