"""Signals, divergence and lost peers during training, turned into clean exits with a checkpoint and a next
step."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from metacli.engine.guards import Diverged, PeerLost, Stopped
from metacli.errors import OUT_OF_MEMORY, Interrupted, RunFailure, is_out_of_memory, os_problem
from metacli.runs import SPEC_FILE, checkpoint_path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that stop a run at the next boundary with a checkpoint: Ctrl-C, a kill, a closed terminal."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """While active, SIGINT, SIGTERM and SIGHUP only ask the training loop to stop at the next step boundary.

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
    # a signal the process was started to ignore stays ignored (SIGHUP under nohup)
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS if signal.getsignal(s) != signal.SIG_IGN}
    try:
        yield lambda: bool(requested)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def guarded_training(
    run_dir: Path, total: int, unit: str, last_saved: Callable[[], int | None], writer: bool = True
) -> Iterator[Callable[[], bool]]:
    """The training loop of either protocol, with signals and divergence turned into clear exits.

    Yields the ``stop_requested`` poll of :func:`stop_on_signals`. :class:`Stopped` becomes
    :class:`Interrupted` (exit 130, the resume command); :class:`Diverged` becomes :class:`RunFailure`
    (exit 1) naming the ``unit`` (step or round) and ``last_saved()``, the last checkpoint on disk;
    so does :class:`PeerLost` (another process of a torchrun launch died or stopped answering), where a
    rank that is not the ``writer`` names rank 0's checkpoint instead, which it cannot see being written.
    """
    try:
        with stop_on_signals() as stop_requested:
            yield stop_requested
    except Diverged as e:
        raise RunFailure(diverged_message(run_dir, e, last_saved(), unit)) from None
    except PeerLost as e:  # the other ranks cannot finish the step without it: stop, keep the checkpoint
        kept = kept_message(run_dir, last_saved(), unit) if writer else writers_checkpoint(run_dir)
        raise RunFailure(f"the run stopped: {e}. {kept}") from None
    except OSError as e:  # a full disk, a folder made read-only, a lost mount: the machine, not the run
        raise RunFailure(
            f"the run stopped: {os_problem(e)} {kept_message(run_dir, last_saved(), unit)}"
        ) from None
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise RunFailure(
            f"the run stopped: {OUT_OF_MEMORY}. {kept_message(run_dir, last_saved(), unit)}"
        ) from None
    except Stopped as e:
        raise Interrupted(
            f"stopped at {unit} {e.step} of {total}; {checkpoint_path(run_dir)} holds it. "
            f"Continue with: metacli train --resume {run_dir}"
        ) from None


def kept_message(run_dir: Path, saved_step: int | None, unit: str) -> str:
    """What a stopped run kept, and the command that continues it (or that there is none)."""
    if saved_step is None:
        return f"No checkpoint had been written yet: run the same command again to start {run_dir} afresh."
    return (
        f"{checkpoint_path(run_dir)} ({unit} {saved_step}) is kept: continue with "
        f"'metacli train --resume {run_dir}'."
    )


def writers_checkpoint(run_dir: Path) -> str:
    """Where a rank other than 0 finds the run's last checkpoint: rank 0 writes it, on rank 0's machine."""
    return (
        f"Rank 0 writes this run's checkpoints, to {checkpoint_path(run_dir)} on its machine: continue from "
        f"the last one with 'metacli train --resume {run_dir}' there (any number of processes)."
    )


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
    # on_nonfinite: skip skips a step whose loss or meta-gradient is non-finite; it cannot undo an update
    skippable = unit == "step" and error.what in ("loss", "meta-gradient")
    return (
        f"the run diverged: the {error.what} became non-finite at {unit} {error.step}. {kept}. Fix: lower "
        f"the learning rates{' (or set algorithm.grad_clip)' if unit == 'step' else ''} {how}"
        + (", or set train.on_nonfinite: skip to skip such steps." if skippable else ".")
    )
