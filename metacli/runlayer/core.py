"""Train a spec into a run directory and resume it: the one flow of both protocols.

The flow: build the run's parts, restore a checkpoint (every RNG state and the protocol's state), cut
metrics.jsonl and TensorBoard back to the checkpoint, run the protocol's :class:`~.jobs.Job` with hooks
that log, checkpoint atomically and poll for signals, then write summary.json.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from metacli.engine.build import EpisodicParts, OnlineParts
from metacli.engine.executor_choice import ExecutorChoice
from metacli.engine.parallel import DataParallel
from metacli.errors import RunDirError, is_out_of_memory
from metacli.progress import DataBars, Reporter
from metacli.runlayer import checkpoint as ckpt
from metacli.runlayer.guard import guarded_training
from metacli.runlayer.jobs import Hooks, Job, make_job
from metacli.runlayer.parts import Built, build_run
from metacli.runs import (
    SPEC_FILE,
    SUMMARY_FILE,
    MetricsLog,
    atomic_write_text,
    checkpoint_path,
    claimed_run_dir,
    clear_run_files,
    read_metrics,
    read_spec_dict,
    write_json,
)
from metacli.spec import RunSpec, apply_overrides, spec_to_yaml, validate
from metacli.tb import ScalarWriter, tag


class RunLogger:
    """Writes each logged row to metrics.jsonl and TensorBoard (one event per row).

    ``resume_from``: the checkpoint's step or round; rows after it, written by the killed process after
    its last checkpoint, are removed from metrics.jsonl and hidden from TensorBoard, so none shows twice.
    """

    def __init__(self, run_dir: Path, key: str, resume_from: int | None) -> None:
        self.key = key
        self.metrics = MetricsLog(run_dir, truncate_after=resume_from, key=key)
        self.tb = ScalarWriter(run_dir, purge_step=None if resume_from is None else resume_from + 1)

    def __call__(self, index: int, row: dict[str, float]) -> None:
        self.metrics.write({self.key: index, **row})
        self.tb.add_scalars(index, {tag(k): v for k, v in row.items() if isinstance(v, (int, float))})

    def close(self) -> None:
        """Flush and close both sinks."""
        self.metrics.close()
        self.tb.close()


def build_with_bars(
    spec: RunSpec, device: str | None, quiet: bool, parallel: DataParallel | None = None
) -> Built:
    """Build ``spec``'s parts, showing download and decoding progress on a terminal unless ``quiet``."""
    with DataBars(quiet) as bars:
        return build_run(spec, device, bars.opener(), parallel)


def train_run(
    spec: RunSpec,
    run_dir: Path,
    device: str | None = None,
    quiet: bool = False,
    parallel: DataParallel | None = None,
    data_root: Path | None = None,
) -> dict[str, Any]:
    """Train ``spec`` into a fresh ``run_dir`` (removed again if it fails before any checkpoint).

    The process owns ``run_dir`` while it trains (:func:`~metacli.runs.claimed_run_dir`). ``parallel``:
    train data-parallel in this group; only its rank 0 owns and writes ``run_dir``. ``data_root``
    (``--data-root``) replaces ``spec.data_root`` and is recorded in the stored spec.
    """
    spec = with_data_root(spec, data_root)
    if parallel is not None and parallel.rank != 0:
        built = build_run(spec, device, parallel=parallel)
        return _run(
            built.spec, built.parts, run_dir, checkpoint=None, quiet=True, choice=built.executor_choice
        )
    with claimed_run_dir(run_dir):
        if checkpoint_path(run_dir).exists():
            raise RunDirError(
                f"{run_dir} already holds a run (it has a checkpoint). Continue it with 'metacli train "
                f"--resume {run_dir}', replace it with --overwrite, or choose another --out."
            )
        clear_run_files(run_dir)  # a failed start's leftovers: nothing of them can be continued
        built = build_with_bars(spec, device, quiet, parallel)
        if built.executor_choice is not None:  # before the progress display takes the terminal
            print(built.executor_choice.line(), file=sys.stderr, flush=True)
        atomic_write_text(run_dir / SPEC_FILE, spec_to_yaml(built.spec))
        return _run(
            built.spec, built.parts, run_dir, checkpoint=None, quiet=quiet, choice=built.executor_choice
        )


def resume_run(
    run_dir: Path,
    device: str | None = None,
    quiet: bool = False,
    parallel: DataParallel | None = None,
    overrides: Sequence[str] = (),
    announce: Callable[[str], None] = lambda line: None,
    data_root: Path | None = None,
) -> dict[str, Any]:
    """Continue a run from ``checkpoints/last.pt`` with the spec stored in the run directory.

    ``overrides`` (``--set``) change the stored spec first, e.g. a longer ``train.meta_iters`` for a finished
    run; the checkpoint must still belong to it. A run that never reached its first checkpoint (a failed
    start) is trained again from step 0 with its stored spec, saying so through ``announce``. The
    checkpoint does not depend on the number of ranks that wrote it: ``parallel`` may differ.

    Raises:
        RunDirError: an unreadable checkpoint, or one written for another spec or schema version.
    """
    writer = parallel is None or parallel.rank == 0
    with claimed_run_dir(run_dir) if writer else contextlib.nullcontext(run_dir):
        spec = validate(apply_overrides(read_spec_dict(run_dir), overrides), str(run_dir / SPEC_FILE))
        spec = with_data_root(spec, data_root)
        path = checkpoint_path(run_dir)
        if not path.exists():  # one that exists but is no file is damage: refused by the load below
            announce(
                f"{run_dir} never reached its first checkpoint (a failed start): training it from step 0"
            )
            return train_run(spec, run_dir, device=device, quiet=quiet, parallel=parallel)
        built = build_with_bars(spec, device, quiet, parallel)
        saved = ckpt.load(path, built.parts.device)
        changed = ckpt.check_matches(saved, built.spec, path)
        if changed and writer:
            warnings.warn(f"resuming {run_dir} with changed settings: " + "; ".join(changed), stacklevel=1)
        if writer:  # no longer finished; the stored spec is what this part trains
            (run_dir / SUMMARY_FILE).unlink(missing_ok=True)
            atomic_write_text(run_dir / SPEC_FILE, spec_to_yaml(built.spec))
        return _run(built.spec, built.parts, run_dir, checkpoint=saved, quiet=quiet)


def with_data_root(spec: RunSpec, data_root: Path | None) -> RunSpec:
    """``spec`` reading its data from ``data_root`` (absolute, as the stored spec records it); None: as is."""
    if data_root is None:
        return spec
    return spec.model_copy(update={"data_root": str(data_root.resolve())})


def _run(
    spec: RunSpec,
    parts: EpisodicParts | OnlineParts,
    run_dir: Path,
    checkpoint: dict[str, Any] | None,
    quiet: bool,
    choice: ExecutorChoice | None = None,
) -> dict[str, Any]:
    generators = {"run": parts.generator}
    try:
        job = make_job(spec, parts, None if checkpoint is None else checkpoint["state"])
    except (KeyError, RuntimeError, ValueError) as e:  # a changed setting that reshapes the state
        if checkpoint is None or is_out_of_memory(e):
            raise
        raise RunDirError(
            f"{checkpoint_path(run_dir)} does not fit the settings of {run_dir / SPEC_FILE} "
            f"({type(e).__name__}: {e}). Undo the changes to {SPEC_FILE}, or start a new run."
        ) from None
    if checkpoint is not None:  # after make_job: a fresh initialisation may draw (sparse_maml's masks)
        ckpt.restore_rng(checkpoint["rng"], generators)
    resumed_at = None if checkpoint is None else int(checkpoint["done"])
    wall_offset = 0.0 if checkpoint is None else float(checkpoint["wall_time"])
    writer = parts.parallel is None or parts.parallel.rank == 0  # other ranks write nothing
    prior = [r for r in read_metrics(run_dir) if int(r[job.unit]) <= resumed_at] if resumed_at else []
    run_logger = RunLogger(run_dir, job.unit, resumed_at) if writer else None
    logger: Callable[[int, dict[str, float]], None] = run_logger or (lambda index, row: None)
    t0 = time.perf_counter()
    last_saved = [resumed_at]  # the step or round of the last checkpoint on disk

    def save(is_best: bool) -> None:
        if not writer:
            return
        blob = ckpt.make(
            spec, job.unit, job.done, wall_offset + time.perf_counter() - t0, generators, job.state_dict()
        )
        # best.pt first: a kill between the two writes leaves last.pt at the previous checkpoint,
        # whose recorded best step then has its best.pt on disk
        for path in ([checkpoint_path(run_dir, "best")] if is_best else []) + [checkpoint_path(run_dir)]:
            ckpt.save(path, blob)
        last_saved[0] = job.done

    name = f"{spec.algorithm.name} on {spec.data.name}"
    try:
        with (
            Reporter(name, job.total, done=job.done, quiet=quiet, unit=job.unit, silent=not writer) as rep,
            guarded_training(run_dir, job.total, job.unit, lambda: last_saved[0], writer) as stop_signal,
        ):
            parallel = parts.parallel
            # every rank stops at the same boundary, whichever of them saw the signal
            stop_requested = stop_signal if parallel is None else lambda: parallel.any(stop_signal())
            job.run(Hooks(logger, save, rep.update, stop_requested, wall_offset, prior))
    finally:
        if run_logger is not None:
            run_logger.close()
    summary = _summary(spec, parts, job, time.perf_counter() - t0, wall_offset)
    if choice is not None:
        summary["executor_auto"] = choice.record()
    if writer:
        write_json(run_dir / SUMMARY_FILE, summary)
    return summary


def _summary(
    spec: RunSpec, parts: EpisodicParts | OnlineParts, job: Job, seconds: float, wall_offset: float
) -> dict[str, Any]:
    """summary.json of either protocol: what ran where, the protocol's own numbers, and the wall time."""
    return {
        "algorithm": spec.algorithm.name,
        "dataset": spec.data.name,
        "device": str(parts.device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ranks": 1 if parts.parallel is None else parts.parallel.world,
        **job.summary(),
        "train_seconds": seconds,
        "total_wall_time": wall_offset + seconds,
    }
