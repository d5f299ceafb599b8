"""The one checkpoint layout of both protocols: versioned, written atomically, checked before use.

A checkpoint (``checkpoints/last.pt``, and ``best.pt`` for few-shot runs with validation) is a dict::

    schema_version  CHECKPOINT_VERSION
    protocol        "episodic" or "online"
    unit, done      "step" or "round", and how many are done
    wall_time       seconds trained up to this checkpoint, over every resumed part
    spec            the resolved run spec it was written for, as dotted fields
    rng             every RNG state the run draws from: torch's global CPU generator, every CUDA device's,
                    numpy's global one, and each explicit generator by name ("run": the run's generator)
    state           the protocol's own state: for episodic runs ``TrainState.state_dict()`` (meta-parameters,
                    outer optimiser and scheduler, best validation, the algorithm's warm starts); for online
                    runs the algorithm's ``state_dict``

Resuming restores all of it, so a resumed run continues exactly where the checkpoint was taken.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metacli.errors import RunDirError
from metacli.runs import SPEC_FILE, atomic_write
from metacli.spec import RunSpec

CHECKPOINT_VERSION = 2
"""Version 1 (metacli 0.x before the one run layer) had one layout per protocol and no spec."""

IDENTITY = ("algorithm.name", "data.", "model.", "seed", "dtype")
"""Spec fields (or ``section.`` prefixes) that say which run a checkpoint belongs to: the algorithm, the
data and its task shape, the network, the seed and the precision. A checkpoint whose identity differs from
the resuming spec is refused. Other fields may change on resume, with a warning naming them: a longer run
(raise ``train.meta_iters`` in spec.yaml), lower learning rates after a divergence, another device."""


def spec_fields(spec: RunSpec) -> dict[str, Any]:
    """The spec as ``{dotted field: value}``, over the sections its protocol uses (spec.yaml's content)."""
    out: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = value

    walk(spec.model_dump(mode="json", exclude=set(spec.unused_sections)), "")
    return out


def capture_rng(generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    """Every RNG state a run can draw from, for :func:`restore_rng`."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def restore_rng(rng: Mapping[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    """Put back the states :func:`capture_rng` saved. CUDA states are restored only onto as many GPUs."""
    torch.set_rng_state(rng["torch"])
    cuda = rng["cuda"]
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(rng["numpy"])
    for name, g in generators.items():
        g.set_state(rng["generators"][name])


def make(
    spec: RunSpec,
    unit: str,
    done: int,
    wall_time: float,
    generators: Mapping[str, torch.Generator],
    state: dict[str, Any],
) -> dict[str, Any]:
    """A checkpoint of ``spec``'s run after ``done`` steps or rounds (the layout of the module docstring)."""
    return {
        "schema_version": CHECKPOINT_VERSION,
        "protocol": "online" if spec.is_online else "episodic",
        "unit": unit,
        "done": done,
        "wall_time": wall_time,
        "spec": spec_fields(spec),
        "rng": capture_rng(generators),
        "state": state,
    }


def save(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` atomically: a kill leaves the previous checkpoint whole."""
    # serialised first, so a pickling error never touches the file on disk
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load(path: Path, device: torch.device) -> dict[str, Any]:
    """Read a checkpoint: its ``state`` on ``device``, RNG states on the CPU (where ``set_state`` wants them).

    ``weights_only=False`` because checkpoints hold optimiser and RNG states; only load run directories you
    wrote yourself.

    Raises:
        RunDirError: the file is unreadable, not a metacli checkpoint, or of another schema version.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise RunDirError(
            f"{path} cannot be read ({type(e).__name__}: {e}). The checkpoint is damaged or not a metacli "
            "checkpoint: restore it, or start a new run."
        ) from None
    known = ("schema_version", "state", "step", "round")  # "step"/"round": the unversioned schema 1
    if not isinstance(ckpt, dict) or not any(k in ckpt for k in known):
        raise RunDirError(f"{path} is not a metacli checkpoint; restore it, or start a new run.")
    version = ckpt.get("schema_version", None if "state" in ckpt else 1)
    if version != CHECKPOINT_VERSION:
        raise RunDirError(
            f"{path} has checkpoint schema version {version}, but this metacli reads version "
            f"{CHECKPOINT_VERSION}. Resume or evaluate it with the metacli version that wrote it, or "
            "train the run again."
        )
    return {**ckpt, "state": _to_device(ckpt["state"], device)}


def _to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside dicts, lists and tuples moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _is_identity(field: str) -> bool:
    """Whether ``field`` is one of :data:`IDENTITY` (a name, or under a ``section.`` prefix)."""
    return any(field == c or (c.endswith(".") and field.startswith(c)) for c in IDENTITY)


def check_matches(checkpoint: Mapping[str, Any], spec: RunSpec, path: Path) -> list[str]:
    """Refuse a checkpoint of another run than ``spec``'s; return the other fields that changed.

    Returns:
        ``field: old -> new`` for each changed field outside :data:`IDENTITY` (for a warning).

    Raises:
        RunDirError: a field of :data:`IDENTITY` differs; the message names each with both values.
    """
    theirs, ours = checkpoint["spec"], spec_fields(spec)
    changed = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    wrong = [k for k in changed if _is_identity(k)]
    if wrong:
        shown = "; ".join(
            f"{k}: {theirs.get(k)!r} in the checkpoint, {ours.get(k)!r} in {SPEC_FILE}" for k in wrong
        )
        raise RunDirError(
            f"{path} belongs to another run than {path.parent.parent / SPEC_FILE} ({shown}). Put those "
            f"fields of {SPEC_FILE} back as they were, or start a new run with these settings."
        )
    return [f"{k}: {theirs.get(k)!r} -> {ours.get(k)!r}" for k in changed]
