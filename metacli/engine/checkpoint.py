"""Atomic checkpoint files: written to a temporary name, then renamed, so a kill never leaves half a file."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from metacli.errors import RunDirError

RNG_KEYS = ("generator", "torch_rng", "cuda_rng")
"""Checkpoint entries holding RNG states: ``set_state`` takes them only as CPU byte tensors."""


def save_atomic(path: Path, obj: dict[str, Any]) -> None:
    """``torch.save`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside dicts, lists and tuples moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def load(path: Path, device: torch.device) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_atomic`: RNG states on the CPU, all else on ``device``.

    The file is read onto the CPU first because ``Generator.set_state`` and ``torch.set_rng_state``
    refuse a state tensor on a GPU. ``weights_only=False`` because checkpoints hold optimiser and RNG
    states; only load run directories you wrote yourself.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise RunDirError(
            f"{path} cannot be read ({type(e).__name__}: {e}). The checkpoint is damaged or not a metacli "
            "checkpoint: restore it, or start a new run."
        ) from None
    if not isinstance(state, dict):
        raise RunDirError(f"{path} is not a metacli checkpoint (no dictionary inside); start a new run.")
    return {k: v if k in RNG_KEYS else to_device(v, device) for k, v in state.items()}
