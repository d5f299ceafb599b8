"""Atomic checkpoint files: written to a temporary name, then renamed, so a kill never leaves half a file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_atomic(path: Path, obj: dict[str, Any]) -> None:
    """``torch.save`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path, device: torch.device) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_atomic`, tensors mapped to ``device``.

    ``weights_only=False`` because checkpoints hold optimiser and RNG states; only load run
    directories you wrote yourself.
    """
    state: dict[str, Any] = torch.load(path, map_location=device, weights_only=False)
    return state
