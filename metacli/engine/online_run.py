"""Run-directory glue for the online protocol: logging, checkpoints every N rounds, resume, summary."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from metacli.engine.build import Parts
from metacli.engine.checkpoint import save_atomic
from metacli.engine.online import run_online
from metacli.progress import Reporter
from metacli.runs import SUMMARY_FILE, checkpoint_path, finite_or_none, read_metrics, write_json
from metacli.spec import RunSpec


def run_online_spec(
    spec: RunSpec, parts: Parts, run_dir: Path, checkpoint: dict[str, Any] | None, quiet: bool
) -> dict[str, Any]:
    """Run (or continue) the online protocol of ``spec`` and write its summary."""
    from metacli.engine.runner import RunLogger, guarded_training

    algo, stream = parts.algorithm, parts.dataset
    rounds = int(stream.train.x.shape[0])
    theta0 = parts.learner.init_params()
    done, state = 0, None
    if checkpoint is not None:
        done, state = int(checkpoint["round"]), algo.load_state(checkpoint["algo_state"])
        parts.generator.set_state(checkpoint["generator"])
    logger = RunLogger(run_dir, "round", done if checkpoint is not None else None)
    prior = read_metrics(run_dir) if done else []
    last: dict[str, float] = dict(prior[-1]) if prior else {}

    def on_round(rec: dict[str, float]) -> None:
        last.clear()
        last.update(rec)
        logger(int(rec["round"]), {k: v for k, v in rec.items() if k != "round"})

    saved = [done if checkpoint is not None else None]  # the round of the last checkpoint on disk
    stop: list[Callable[[], bool]] = [lambda: False]

    def on_checkpoint(rounds_done: int, st: Any) -> None:
        if rounds_done % spec.online.checkpoint_every == 0 or rounds_done == rounds or stop[0]():
            save_atomic(
                checkpoint_path(run_dir),
                {
                    "round": rounds_done,
                    "algo_state": algo.state_dict(st),
                    "generator": parts.generator.get_state(),
                },
            )
            saved[0] = rounds_done

    t0 = time.perf_counter()
    desc = f"{spec.algorithm.name} on {spec.data.name}"
    try:
        with (
            Reporter(desc, rounds, done=done, quiet=quiet, unit="round") as rep,
            guarded_training(run_dir, rounds, "round", lambda: saved[0]) as stop_requested,
        ):
            stop[0] = stop_requested

            def progress(r: int) -> None:
                rep.advance(
                    1,
                    f"CTM {last.get('ctm_acc_avg', float('nan')):.3f} "
                    f"LTM {last.get('ltm_acc_avg', float('nan')):.3f}",
                )
                if quiet and (r % 50 == 0 or r == rounds):
                    rep.log(
                        f"round {r}/{rounds}: ctm_acc_avg={last['ctm_acc_avg']:.4f} "
                        f"ltm_acc_avg={last['ltm_acc_avg']:.4f}"
                    )

            run_online(
                algo,
                parts.learner,
                stream,
                theta0,
                parts.generator,
                on_round,
                start_round=done,
                state=state,
                progress=progress,
                ltm=spec.online.ltm,
                prior=prior,
                on_checkpoint=on_checkpoint,
                stop_requested=stop_requested,
            )
    finally:
        logger.close()
    return write_summary(spec, parts, run_dir, last, rounds, time.perf_counter() - t0)


def write_summary(
    spec: RunSpec, parts: Parts, run_dir: Path, last: dict[str, float], rounds: int, seconds: float
) -> dict[str, Any]:
    """``summary.json`` of an online run: final running averages, held memory and wall time."""
    summary: dict[str, Any] = {
        "algorithm": spec.algorithm.name,
        "dataset": spec.data.name,
        "rounds": rounds,
        "device": str(parts.device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "train_seconds": seconds,
        "total_wall_time": last.get("wall_time"),
    }
    for key in ("ctm_acc_avg", "ltm_acc_avg", "ctm_loss_avg", "ltm_loss_avg", "task_bytes", "state_bytes"):
        if key in last:
            summary[key] = finite_or_none(float(last[key]))
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary
