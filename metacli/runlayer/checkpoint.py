"""The one checkpoint layout of both protocols: versioned, written atomically, checked before use.

A checkpoint (``checkpoints/last.pt``, and ``best.pt`` for few-shot runs with validation) is a dict::

    schema_version  CHECKPOINT_VERSION
    protocol        "episodic" or "online"
    unit, done      "step" or "round", and how many are done
    wall_time       seconds trained up to this checkpoint, over every resumed part
    spec            the resolved run spec it was written for, as dotted fields
    rng             every RNG state the run draws from: torch's global CPU generator, every CUDA device's,
                    numpy's global one (its legacy state tuple, the 624 key words as an int64 tensor), and
                    each explicit generator by name ("run": the run's generator)
    state           the protocol's own state: for episodic runs ``TrainState.state_dict()`` (meta-parameters,
                    outer optimiser and scheduler, best validation, the algorithm's warm starts); for online
                    runs the algorithm's ``state_dict``

Resuming restores all of it, so a resumed run continues exactly where the checkpoint was taken.

**A run folder is data, never code.** A checkpoint holds only tensors, numbers, strings, None, lists,
tuples and dicts, so it is read with ``torch.load(weights_only=True)``, which rebuilds nothing else.
Checkpoints written before the numpy state was stored as a tensor hold one numpy array; the three numpy
globals that rebuild an array (:data:`LEGACY_GLOBALS`, which run no code) are allowed for them, within
the load only. Anything else (``os.system``, a class, ...) refuses the file before any of it is built.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from metacli.errors import RunDirError
from metacli.files import atomic_write
from metacli.runs import SPEC_FILE
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


_RECONSTRUCT = np.zeros(0).__reduce__()[0]
"""numpy's array-rebuilding function (``numpy._core.multiarray._reconstruct``; ``numpy.core`` before 2)."""
LEGACY_GLOBALS: list[Any] = [
    (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
    (_RECONSTRUCT, "numpy._core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),  # numpy.dtypes.UInt32DType since numpy 1.25: the key words' dtype
]
"""The globals a checkpoint of an earlier metacli needs (its numpy RNG state was a uint32 array), named
as numpy 1 and numpy 2 write them. They allocate an array and set its bytes; none can run code."""
_LEGACY_NAMES = frozenset(
    {
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
    }
)
NUMPY_KEYS = 624
"""Key words of numpy's MT19937 state."""


def capture_rng(generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    """Every RNG state a run can draw from, for :func:`restore_rng`; tensors and builtins only."""
    name, keys, pos, has_gauss, cached = cast(
        tuple[str, Any, int, int, float], np.random.get_state(legacy=True)
    )
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": (
            str(name),
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def restore_rng(rng: Mapping[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    """Put back the states :func:`capture_rng` saved. CUDA states are restored only onto as many GPUs.

    numpy's key words may be a tensor (this version) or an array (checkpoints of earlier versions).
    """
    torch.set_rng_state(rng["torch"])
    cuda = rng["cuda"]
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    name, keys, *rest = rng["numpy"]
    words = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, words.astype(np.uint32), *rest))
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
    atomic_write(path, buffer.getbuffer())


def load(path: Path, device: torch.device) -> dict[str, Any]:
    """Read a checkpoint: its ``state`` on ``device``, RNG states on the CPU (where ``set_state`` wants them).

    Read as data only (see the module docstring): nothing in the file runs.

    Raises:
        RunDirError: the file is unreadable, holds a type that a checkpoint never holds (refused
            unloaded), is not a metacli checkpoint, or is of another schema version.
    """
    ckpt = _read(path)
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
    problem = _layout_problem(ckpt)
    if problem:
        raise RunDirError(
            f"{path} is not a metacli checkpoint: {problem}. It is damaged or was not written by metacli: "
            "restore it, or start a new run."
        )
    return {**ckpt, "state": _to_device(ckpt["state"], device)}


def _read(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` and :data:`LEGACY_GLOBALS`; RunDirError on any failure."""
    try:
        with torch.serialization.safe_globals(LEGACY_GLOBALS), warnings.catch_warnings():
            # torch's note on a foreign pickle protocol says nothing the error below does not
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        foreign = _foreign_types(path, e) if "weights only" in str(e).lower() else ""
        if not foreign:
            raise RunDirError(_unreadable(path, e)) from None
        raise RunDirError(
            f"{path} is refused: it holds {foreign}, which a metacli checkpoint never holds (only tensors, "
            "numbers, strings, lists and dicts). Loading it could run code, so it was not loaded. Delete it "
            "or restore a checkpoint you trust, or start a new run."
        ) from None
    except Exception as e:  # random bytes, a truncated zip, an empty file, a folder: many types
        raise RunDirError(_unreadable(path, e)) from None


def _unreadable(path: Path, error: Exception) -> str:
    """The message for a checkpoint that cannot be read at all."""
    return (
        f"{path} cannot be read ({type(error).__name__}: {error}). The checkpoint is damaged or not a "
        "metacli checkpoint, and was not loaded: restore it, or start a new run."
    )


def _foreign_types(path: Path, error: Exception) -> str:
    """The globals (types, functions) ``path`` would use beyond the allowed ones; empty when none is named."""
    names: list[str] = []
    with contextlib.suppress(Exception):  # only the zip format can be scanned
        names = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - _LEGACY_NAMES)
    if not names:  # torch's message names the first one it met, if any
        match = re.search(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>", str(error))
        names = [g for g in match.groups() if g] if match else []
    return ", ".join(names)


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "protocol": str,
    "unit": str,
    "done": int,
    "wall_time": (int, float),
    "spec": dict,
    "rng": dict,
    "state": dict,
}
"""The type of each field of a version-2 checkpoint (the module docstring's layout)."""


def _layout_problem(ckpt: dict[str, Any]) -> str:
    """What is wrong with the fields of a version-2 checkpoint; empty when nothing is."""
    for field, kind in _FIELDS.items():
        if not isinstance(ckpt.get(field), kind):
            return f"its field {field!r} is missing or not a {getattr(kind, '__name__', 'number')}"
    rng = ckpt["rng"]
    size = torch.get_rng_state().numel()  # every CPU generator's state has this many bytes
    states = [rng.get("torch"), *dict(rng.get("generators") or {}).values()]
    if not isinstance(rng.get("generators"), dict) or not all(_is_byte_state(s, size) for s in states):
        return "a torch RNG state is missing or malformed"
    cuda = rng.get("cuda")
    if cuda is not None and not (isinstance(cuda, list) and all(_is_byte_state(s) for s in cuda)):
        return "a CUDA RNG state is malformed"
    numpy_state = rng.get("numpy")
    if not (
        isinstance(numpy_state, (tuple, list))
        and len(numpy_state) == 5
        and numpy_state[0] == "MT19937"
        and tuple(getattr(numpy_state[1], "shape", ())) == (NUMPY_KEYS,)
    ):
        return "the numpy RNG state is missing or malformed"
    return ""


def _is_byte_state(state: Any, size: int | None = None) -> bool:
    """Whether ``state`` is a generator state: a uint8 tensor (of ``size`` bytes, when given)."""
    return (
        isinstance(state, torch.Tensor)
        and state.dtype == torch.uint8
        and state.dim() == 1
        and (size is None or state.numel() == size)
    )


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
