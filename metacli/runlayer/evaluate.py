"""Meta-test a checkpoint of a few-shot run on fixed held-out tasks and write eval.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from metacli.engine import episodic
from metacli.errors import RunDirError
from metacli.progress import Reporter
from metacli.runlayer import checkpoint as ckpt
from metacli.runlayer.parts import build_episodic_run, eval_inner_steps
from metacli.runs import EVAL_FILE, SPEC_FILE, checkpoint_path, read_spec_dict, write_json
from metacli.spec import validate


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
    which, path = _choose_checkpoint(run_dir, which)
    steps_list = list(spec.eval.inner_steps or (eval_inner_steps(spec),))
    saved = ckpt.load(path, torch.device("cpu"))
    ckpt.check_matches(saved, spec, path)
    saved_meta = _meta_parameters(saved, path)
    if reuse:
        from metacli.compare import reusable_eval

        old = reusable_eval(run_dir, spec.eval.tasks, spec.eval.seed, steps_list, which, int(saved["done"]))
        if old is not None:
            return old
    parts = build_episodic_run(spec, device)
    meta = {k: v.to(parts.device, parts.dtype) for k, v in saved_meta.items()}
    t0 = time.perf_counter()
    with Reporter("meta-test", spec.eval.tasks, quiet=quiet, unit="task") as rep:
        e = spec.eval
        results = episodic.evaluate(
            parts, meta, "test", e.tasks, e.seed, steps_list, e.batch, lambda done, _: rep.update(done)
        )
    out = {
        "metrics": results,
        "tasks": spec.eval.tasks,
        "seed": spec.eval.seed,
        "inner_steps": steps_list,
        "checkpoint": which,
        "checkpoint_step": int(saved["done"]),
        "seconds": time.perf_counter() - t0,
        "device": str(parts.device),
    }
    write_json(run_dir / EVAL_FILE, out)
    return out


def _meta_parameters(saved: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The meta-parameters of an episodic checkpoint; RunDirError when it holds none."""
    meta = saved["state"].get("meta")
    if not isinstance(meta, dict) or not meta or not all(isinstance(v, torch.Tensor) for v in meta.values()):
        raise RunDirError(
            f"{path} holds no meta-parameters (state.meta): it is damaged or not a checkpoint of a few-shot "
            "run. Restore it, or train the run again."
        )
    return meta


def _choose_checkpoint(run_dir: Path, which: str | None) -> tuple[str, Path]:
    """(name, path) of the checkpoint to meta-test; a clear error when it does not exist.

    Whatever exists at the path is chosen (and then read by :func:`ckpt.load`, which names what is wrong
    with it), so a damaged ``best.pt`` is reported rather than silently replaced by ``last.pt``.
    """
    if which is None:
        which = "best" if checkpoint_path(run_dir, "best").exists() else "last"
    path = checkpoint_path(run_dir, which)
    if path.exists():
        return which, path
    if which == "best":
        raise RunDirError(
            f"{run_dir} has no best checkpoint ({path}): it was trained without validation "
            "(train.val_every: 0). Use --checkpoint last, or train with train.val_every set."
        )
    raise RunDirError(f"{run_dir} has no checkpoint ({path}); train it first with 'metacli train'.")
