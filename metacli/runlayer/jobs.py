"""The two protocols seen by the run layer: one small adapter each over the engine's loop.

A job holds the protocol's state, runs the engine's loop with the run layer's :class:`Hooks` (log a row,
save a checkpoint, advance the progress display, poll for a stop), and says what its state and summary
are. Everything about files stays in :mod:`metacli.runlayer.core`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from metacli.engine import episodic, memory
from metacli.engine.build import EpisodicParts, OnlineParts
from metacli.engine.online import run_online
from metacli.runlayer.parts import eval_inner_steps, loop_settings
from metacli.runs import finite_or_none
from metacli.spec import RunSpec


@dataclass(frozen=True)
class Hooks:
    """What the run layer gives a job's loop."""

    log: Callable[[int, dict[str, float]], None]
    """Write one metrics row (index: the step or round)."""
    save: Callable[[bool], None]
    """Write a checkpoint of the job's current state; True: also keep it as the best checkpoint."""
    progress: Callable[[int, str], None]
    """Steps or rounds done in all, with a short status for the progress display."""
    stop_requested: Callable[[], bool]
    """True once SIGINT or SIGTERM asked the run to stop at the next boundary."""
    wall_offset: float
    """Seconds already trained by earlier parts of a resumed run."""
    prior: Sequence[Mapping[str, float]]
    """The metrics rows kept from earlier parts (cut back to the checkpoint)."""


class Job(Protocol):
    """One protocol's training, as the run layer drives it."""

    unit: str
    """``step`` or ``round``: what ``done`` and ``total`` count and what metrics rows are keyed by."""
    total: int

    @property
    def done(self) -> int:
        """Steps or rounds finished."""
        ...

    def run(self, hooks: Hooks) -> None:
        """Train from ``done`` to ``total``."""

    def state_dict(self) -> dict[str, Any]:
        """The protocol's state to checkpoint (the ``state`` entry of a checkpoint)."""
        ...

    def summary(self) -> dict[str, Any]:
        """The protocol's own entries of summary.json."""
        ...


def make_job(spec: RunSpec, parts: EpisodicParts | OnlineParts, state: dict[str, Any] | None) -> Job:
    """The job of ``parts``' protocol, fresh or from a checkpoint's ``state``."""
    if isinstance(parts, OnlineParts):
        return OnlineJob(spec, parts, state)
    return EpisodicJob(spec, parts, state)


PEAK_KEY = "peak_step_mb"
"""A logged step's peak memory in MB (metrics.jsonl); summary.json holds the largest of the run."""


def largest(values: Iterable[float | None]) -> float | None:
    """The largest of the values given (None ones left out), or None when there is none."""
    known = [float(v) for v in values if v is not None]
    return max(known) if known else None


class EpisodicJob:
    """Few-shot meta-training (:func:`metacli.engine.episodic.train`)."""

    unit = "step"
    peak_mb: float | None = None
    """The largest ``peak_step_mb`` logged so far, earlier parts of a resumed run included."""

    def __init__(self, spec: RunSpec, parts: EpisodicParts, state: dict[str, Any] | None) -> None:
        self.spec, self.parts = spec, parts
        self.total = spec.train.meta_iters
        self.state = episodic.TrainState(parts, self.total, state)

    @property
    def done(self) -> int:
        return self.state.step

    def run(self, hooks: Hooks) -> None:
        self.peak_mb = largest(row.get(PEAK_KEY) for row in hooks.prior)

        def log(step: int, row: dict[str, float]) -> None:
            self.peak_mb = largest([self.peak_mb, row.get(PEAK_KEY)])
            hooks.log(step, row)

        episodic.train(
            self.parts,
            loop_settings(self.spec),
            self.state,
            log,
            lambda _, is_best: hooks.save(is_best),
            lambda step, info: hooks.progress(step, f"loss {info['loss']:.4f}"),
            validation(self.spec),
            hooks.stop_requested,
            hooks.wall_offset,
        )

    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict()

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "steps": self.state.step,
            "executor": self.spec.train.executor,
            PEAK_KEY: finite_or_none(self.peak_mb) if self.peak_mb is not None else None,
            "peak_step_measure": memory.method(self.parts.device),
        }
        if self.state.best is not None:
            out.update(best_step=self.state.best[0], best_val=self.state.best[1])
        return out


def validation(spec: RunSpec) -> episodic.Validation | None:
    """The run's validation settings, or None when ``train.val_every`` is 0."""
    t = spec.train
    if t.val_every == 0:
        return None
    return episodic.Validation(t.val_every, t.val_tasks, t.val_seed, eval_inner_steps(spec), spec.eval.batch)


class OnlineJob:
    """The online protocol (:func:`metacli.engine.online.run_online`) with CTM/LTM every round."""

    unit = "round"

    def __init__(self, spec: RunSpec, parts: OnlineParts, state: dict[str, Any] | None) -> None:
        self.spec, self.parts = spec, parts
        self.total = int(parts.stream.train.x.shape[0])
        self._done = 0 if state is None else int(state["round"])
        self._state = None if state is None else parts.algorithm.load_state(state["algo_state"])
        self.last: dict[str, float] = {}
        """The latest round's record (running averages), for the summary."""

    @property
    def done(self) -> int:
        return self._done

    def run(self, hooks: Hooks) -> None:
        if hooks.prior:
            self.last = dict(hooks.prior[-1])

        def on_round(rec: dict[str, float]) -> None:
            self.last = rec
            hooks.log(int(rec["round"]), {k: v for k, v in rec.items() if k != "round"})

        def on_checkpoint(rounds_done: int, state: Any) -> None:
            self._done, self._state = rounds_done, state
            every = self.spec.online.checkpoint_every
            if rounds_done % every == 0 or rounds_done == self.total or hooks.stop_requested():
                hooks.save(False)

        def progress(rounds_done: int, averages: dict[str, float]) -> None:
            hooks.progress(
                rounds_done,
                f"CTM {averages.get('ctm_acc_avg', float('nan')):.3f} "
                f"LTM {averages.get('ltm_acc_avg', float('nan')):.3f}",
            )

        parts = self.parts
        run_online(
            parts.algorithm,
            parts.learner,
            parts.stream,
            parts.learner.init_params(),
            parts.generator,
            on_round,
            start_round=self._done,
            state=self._state,
            progress=progress,
            ltm=self.spec.online.ltm,
            prior=hooks.prior,
            on_checkpoint=on_checkpoint,
            stop_requested=hooks.stop_requested,
            wall_offset=hooks.wall_offset,
            parallel=parts.parallel,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"round": self._done, "algo_state": self.parts.algorithm.state_dict(self._state)}

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rounds": self.total}
        for key in (
            "ctm_acc_avg",
            "ltm_acc_avg",
            "ctm_loss_avg",
            "ltm_loss_avg",
            "task_bytes",
            "state_bytes",
        ):
            if key in self.last:
                out[key] = finite_or_none(float(self.last[key]))
        return out
