"""Run-directory glue: train a spec into a run directory, resume it, evaluate it.

The CLI calls :func:`train_run`, :func:`resume_run` and :func:`evaluate_run`; they own the files of
``metacli.runs`` (spec.yaml, metrics.jsonl, TensorBoard events, checkpoints, summary.json, eval.json).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch

from metacli.engine import checkpoint as ckpt_io
from metacli.engine import episodic, memory
from metacli.engine.build import Parts, build
from metacli.engine.guards import Diverged, Stopped
from metacli.errors import Interrupted, RunDirError, RunFailure
from metacli.progress import Reporter
from metacli.runs import (
    EVAL_FILE,
    SPEC_FILE,
    SUMMARY_FILE,
    MetricsLog,
    atomic_write_text,
    checkpoint_path,
    read_spec_dict,
    write_json,
)
from metacli.spec import RunSpec, spec_to_yaml, validate
from metacli.tb import ScalarWriter


class RunLogger:
    """Writes each logged row to metrics.jsonl and TensorBoard (one event per row)."""

    def __init__(self, run_dir: Path, key: str, resume_from: int | None) -> None:
        self.key = key
        self.metrics = MetricsLog(run_dir, truncate_after=resume_from, key=key)
        self.tb = ScalarWriter(run_dir, purge_step=None if resume_from is None else resume_from + 1)

    def __call__(self, index: int, row: dict[str, float]) -> None:
        self.metrics.write({self.key: index, **row})
        self.tb.add_scalars(index, {k: v for k, v in row.items() if isinstance(v, (int, float))})

    def close(self) -> None:
        """Flush and close both sinks."""
        self.metrics.close()
        self.tb.close()


def train_run(spec: RunSpec, run_dir: Path, device: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train ``spec`` into a fresh ``run_dir`` (removed again if it fails before any checkpoint)."""
    from metacli.runs import staged_run_dir

    with staged_run_dir(run_dir):
        parts = build(spec, device=device, progress=not quiet)
        spec = resolved(parts)
        atomic_write_text(run_dir / SPEC_FILE, spec_to_yaml(spec))
        return _run(spec, parts, run_dir, checkpoint=None, quiet=quiet)


def resume_run(run_dir: Path, device: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Continue a run from ``checkpoints/last.pt`` with the spec stored in the run directory."""
    spec = validate(read_spec_dict(run_dir), str(run_dir / SPEC_FILE))
    ckpt = checkpoint_path(run_dir)
    if not ckpt.is_file():
        raise RunDirError(f"{run_dir} has no checkpoint ({ckpt}) to resume from; start a new run instead.")
    parts = build(spec, device=device, progress=not quiet)
    checkpoint = ckpt_io.load(ckpt, parts.device)
    return _run(resolved(parts), parts, run_dir, checkpoint=checkpoint, quiet=quiet)


def resolved(parts: Parts) -> RunSpec:
    """The spec ``build`` resolved (its ``auto`` fields replaced by the chosen values)."""
    assert parts.spec is not None  # build always sets it
    return parts.spec


def _run(
    spec: RunSpec, parts: Parts, run_dir: Path, checkpoint: dict[str, Any] | None, quiet: bool
) -> dict[str, Any]:
    if spec.is_online:
        from metacli.engine.online_run import run_online_spec

        return run_online_spec(spec, parts, run_dir, checkpoint, quiet)
    return _run_episodic(spec, parts, run_dir, checkpoint, quiet)


def _run_episodic(
    spec: RunSpec, parts: Parts, run_dir: Path, checkpoint: dict[str, Any] | None, quiet: bool
) -> dict[str, Any]:
    t0 = time.perf_counter()
    state = episodic.TrainState(parts, spec.train.meta_iters, checkpoint)
    logger = RunLogger(run_dir, "step", state.step if checkpoint else None)

    saved = [state.step if checkpoint else None]  # the step of the last checkpoint on disk

    def save(s: episodic.TrainState, is_best: bool) -> None:
        # best.pt first: a kill between the two writes leaves last.pt at the previous checkpoint,
        # whose recorded best step then has its best.pt on disk
        paths = [checkpoint_path(run_dir, "best")] if is_best else []
        for path in [*paths, checkpoint_path(run_dir)]:
            episodic.save_checkpoint(
                path,
                s.step,
                s.meta,
                s.optimizer,
                s.scheduler,
                parts.generator,
                s.best,
                parts.algorithm.state_dict(),
            )
        saved[0] = s.step

    name = f"{spec.algorithm.name} on {spec.data.name}"
    try:
        with (
            Reporter(name, spec.train.meta_iters, done=state.step, quiet=quiet, unit="step") as rep,
            guarded_training(run_dir, spec.train.meta_iters, "step", lambda: saved[0]) as stop_requested,
        ):
            log = _quiet_logger(logger, rep) if quiet else logger
            episodic.train(
                parts,
                spec.train,
                state,
                log,
                save,
                lambda info: rep.advance(1, info),
                validation(spec),
                stop_requested,
            )
    finally:
        logger.close()
    summary: dict[str, Any] = {
        "algorithm": spec.algorithm.name,
        "dataset": spec.data.name,
        "steps": state.step,
        "device": str(parts.device),
        "threads": torch.get_num_threads(),
        "executor": spec.train.executor,
        "peak_step_mb": "peak_step_mb in metrics.jsonl: " + memory.method(parts.device),
        "train_seconds": time.perf_counter() - t0,
    }
    if state.best is not None:
        summary.update(best_step=state.best[0], best_val=state.best[1])
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """While active, SIGINT and SIGTERM only ask the training loop to stop at the next step boundary.

    Yields the function the loop polls. A second signal while stopping raises KeyboardInterrupt at once
    (the last checkpoint on disk stays whole: checkpoints are written atomically). Outside the main thread,
    where Python cannot install handlers, signals keep their default behaviour.
    """
    requested: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(requested)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def guarded_training(
    run_dir: Path, total: int, unit: str, last_saved: Callable[[], int | None]
) -> Iterator[Callable[[], bool]]:
    """The training loop of either protocol, with signals and divergence turned into clear exits.

    Yields the ``stop_requested`` poll of :func:`stop_on_signals`. :class:`Stopped` becomes
    :class:`Interrupted` (exit 130, the resume command); :class:`Diverged` becomes :class:`RunFailure`
    (exit 1) naming the ``unit`` (step or round) and ``last_saved()``, the last checkpoint on disk.
    """
    try:
        with stop_on_signals() as stop_requested:
            yield stop_requested
    except Diverged as e:
        raise RunFailure(diverged_message(run_dir, e, last_saved(), unit)) from None
    except Stopped as e:
        raise Interrupted(
            f"stopped at {unit} {e.step} of {total}; {checkpoint_path(run_dir)} holds it. "
            f"Continue with: metacli train --resume {run_dir}"
        ) from None


def diverged_message(run_dir: Path, error: Diverged, saved_step: int | None, unit: str = "step") -> str:
    """What a diverged run tells the user: the step, what went non-finite, the checkpoint kept, the fixes."""
    if saved_step is not None:
        kept = f"The last good checkpoint, {checkpoint_path(run_dir)} ({unit} {saved_step}), was not touched"
        how = (
            f"and train again, or in {run_dir / SPEC_FILE} and continue from it with "
            f"'metacli train --resume {run_dir}'"
        )
    else:
        kept = "No checkpoint had been written yet"
        how = f"and train again ({run_dir} was removed: it held no checkpoint to resume)"
    return (
        f"the run diverged: the {error.what} became non-finite at {unit} {error.step}. {kept}. Fix: lower "
        f"the learning rates{' (or set algorithm.grad_clip)' if unit == 'step' else ''} {how}"
        + (", or set train.on_nonfinite: skip to skip such steps." if unit == "step" else ".")
    )


def validation(spec: RunSpec) -> episodic.Validation | None:
    """The run's validation settings, or None when ``train.val_every`` is 0."""
    t = spec.train
    if t.val_every == 0:
        return None
    steps = int(cast(Any, spec.algorithm).eval_inner_steps)
    return episodic.Validation(t.val_every, t.val_tasks, t.val_seed, steps, spec.eval.batch)


def _quiet_logger(logger: RunLogger, rep: Reporter) -> Callable[[int, dict[str, float]], None]:
    def log(index: int, row: dict[str, float]) -> None:
        logger(index, row)
        rep.log(f"{logger.key} {index}: " + " ".join(f"{k}={v:.4g}" for k, v in row.items()))

    return log


def evaluate_run(
    run_dir: Path,
    device: str | None = None,
    tasks: int | None = None,
    quiet: bool = False,
    which: str | None = None,
    reuse: bool = False,
    steps: list[int] | None = None,
) -> dict[str, Any]:
    """Meta-test a checkpoint of an episodic run on the fixed test tasks; writes and returns ``eval.json``.

    ``which`` is ``best`` (the best validation step), ``last``, or None: best when the run has one.
    ``reuse``: return the existing eval.json, without evaluating, when it was written for the same
    checkpoint (name and step), task count, task seed and step counts. ``tasks`` and ``steps`` replace
    the spec's ``eval.tasks`` and ``eval.inner_steps``.
    """
    raw = read_spec_dict(run_dir)
    given = {k: v for k, v in (("tasks", tasks), ("inner_steps", steps)) if v is not None}
    # validated like the spec's own eval section (e.g. at least 2 tasks for a confidence interval)
    raw = {**raw, "eval": {**raw.get("eval", {}), **given}}
    source = str(run_dir / SPEC_FILE) + "".join(
        f" with --{k.replace('inner_', '')} {v}" for k, v in given.items()
    )
    spec = validate(raw, source)
    if spec.is_online:
        raise RunDirError(
            f"{run_dir} is an online run ({spec.algorithm.name}): its CTM/LTM evaluation is part of "
            "training (see metrics.jsonl); use 'metacli hedge' or 'metacli plot' on it instead."
        )
    which, ckpt = _choose_checkpoint(run_dir, which)
    default_steps = int(cast(Any, spec.algorithm).eval_inner_steps)  # every few-shot config has it
    steps_list = list(spec.eval.inner_steps or (default_steps,))
    state = ckpt_io.load(ckpt, torch.device("cpu"))
    if reuse:
        from metacli.compare import reusable_eval

        old = reusable_eval(run_dir, spec.eval.tasks, spec.eval.seed, steps_list, which, int(state["step"]))
        if old is not None:
            return old
    parts = build(spec, device=device)
    meta = {k: v.to(parts.device, parts.dtype) for k, v in state["meta"].items()}
    t0 = time.perf_counter()
    with Reporter("meta-test", spec.eval.tasks, quiet=quiet, unit="task") as rep:
        e = spec.eval
        results = episodic.evaluate(parts, meta, "test", e.tasks, e.seed, steps_list, e.batch, rep.advance)
    out = {
        "metrics": results,
        "tasks": spec.eval.tasks,
        "seed": spec.eval.seed,
        "inner_steps": steps_list,
        "checkpoint": which,
        "checkpoint_step": int(state["step"]),
        "seconds": time.perf_counter() - t0,
        "device": str(parts.device),
    }
    write_json(run_dir / EVAL_FILE, out)
    return out


def _choose_checkpoint(run_dir: Path, which: str | None) -> tuple[str, Path]:
    """(name, path) of the checkpoint to meta-test; a clear error when it does not exist."""
    if which is None:
        which = "best" if checkpoint_path(run_dir, "best").is_file() else "last"
    ckpt = checkpoint_path(run_dir, which)
    if ckpt.is_file():
        return which, ckpt
    if which == "best":
        raise RunDirError(
            f"{run_dir} has no best checkpoint ({ckpt}): it was trained without validation "
            "(train.val_every: 0). Use --checkpoint last, or train with train.val_every set."
        )
    raise RunDirError(f"{run_dir} has no checkpoint ({ckpt}); train it first with 'metacli train'.")
