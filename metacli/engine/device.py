"""Device resolution: CUDA when present, CPU otherwise."""

from __future__ import annotations

import torch

from metacli.errors import MetacliError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` if available else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` as given.

    Raises:
        MetacliError: for an unknown name or a CUDA device that is not there.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MetacliError(f"Unknown device '{name}'. Use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MetacliError(
                f"Device '{name}' was asked for but CUDA is not available here; use --device cpu."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MetacliError(
                f"Device '{name}' does not exist: {torch.cuda.device_count()} CUDA device(s) are visible."
            )
    elif device.type != "cpu":
        raise MetacliError(f"Device type '{device.type}' is not supported; use auto, cpu or cuda[:N].")
    return device
