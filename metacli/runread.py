"""The read side of run folders: one helper per question that ``hedge``, ``plot`` and ``compare`` ask.

- which runs lie under a folder, and their names (:func:`named_runs`: hidden staging folders skipped);
- which algorithm a run trained (:func:`algorithm_name`);
- a run's last metrics line per round or step (:func:`last_per_index`: a resumed run may repeat one);
- the running average of a per-round series (:func:`running_average`);
- whether a metrics line can be used, and the warnings for damage that is skipped (:func:`row_problem`,
  :func:`values_problem`, :func:`warn`, :func:`warn_lines`).

The files themselves are read by :mod:`metacli.runs` (``spec.yaml``, ``metrics.jsonl``). Like it, this
module imports neither torch nor the engine (numpy only), so ``hedge`` and ``plot`` start fast.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metacli.runs import find_runs

INDEX_LIMIT = 2**53
"""Rounds and steps are whole numbers below this (beyond it a float no longer tells neighbours apart)."""


# --------------------------------------------------------------------------- runs and their names


def run_name(run_dir: Path, folder: Path) -> str:
    """A run's name: its path relative to the searched folder (its own name if it is that folder)."""
    relative = run_dir.relative_to(folder).as_posix()
    return run_dir.resolve().name if relative == "." else relative


def is_hidden(relative: str) -> bool:
    """Whether a run path (relative to the searched folder) lies in a dot-folder (staging, set aside)."""
    return any(part.startswith(".") for part in Path(relative).parts)


def named_runs(folder: Path) -> list[tuple[str, Path]]:
    """``(name, run directory)`` of every run under ``folder``, sorted, without those in hidden folders.

    Hidden folders hold what a writer builds or sets aside (``metacli hedge``'s staging folder, the old
    files of a replaced run), never a result to read.

    Raises:
        RunDirError: ``folder`` is not a folder (see :func:`metacli.runs.find_runs`).
    """
    named = ((run_name(run_dir, folder), run_dir) for run_dir in find_runs(folder))
    return [(name, run_dir) for name, run_dir in named if not is_hidden(name)]


def algorithm_name(spec: Mapping[str, Any], default: str = "?") -> str:
    """``algorithm.name`` of a spec as read from ``spec.yaml``; ``default`` when it has none."""
    algorithm = spec.get("algorithm")
    name = algorithm.get("name") if isinstance(algorithm, dict) else None
    return default if name is None else str(name)


# --------------------------------------------------------------------------- series


def last_per_index(rows: Iterable[dict[str, Any]], index: str) -> dict[int, dict[str, Any]]:
    """The rows holding ``index`` (``round`` or ``step``) by its value, in increasing order, the last row of
    each value kept (a run resumed from a checkpoint logs the rounds after it again)."""
    by_index = {int(r[index]): r for r in rows if index in r}
    return {i: by_index[i] for i in sorted(by_index)}


def running_average(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(1/t) Σ_{s≤t} x_s`` for t = 1..T."""
    values = np.asarray(x, dtype=np.float64)
    result: np.ndarray = np.cumsum(values) / np.arange(1, len(values) + 1)
    return result


# --------------------------------------------------------------------------- damaged lines


def warn(message: str) -> None:
    """Report damage that was skipped: one warning on one line (a YAML error's excerpt spans several)."""
    warnings.warn(" ".join(message.split()), UserWarning, stacklevel=3)


def warn_lines(path: Path, problems: Sequence[tuple[int, str]], consequence: str) -> None:
    """One warning for the damaged lines of one file: the first three named, then how many more."""
    named = "; ".join(f"line {line} {problem}" for line, problem in problems[:3])
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    warn(f"{path}: {named}{more}. {consequence}")


def _shown(value: Any) -> str:
    """A metrics value as the file spells it, cut short: ``null``, ``"abc"``, ``[1, 2]``."""
    text = json.dumps(value)
    return text if len(text) <= 30 else text[:27] + "..."


def number_problem(row: Mapping[str, Any], key: str) -> str | None:
    """What is wrong with ``row[key]`` as a number, or None when it is one (NaN and infinities are)."""
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"has {key!r}: {_shown(value)}, not a number"
    try:
        float(value)
    except OverflowError:  # a JSON integer with hundreds of digits
        return f"has {key!r}: {_shown(value)}, too large for a number"
    return None


def row_problem(row: Mapping[str, Any], index: str, keys: Iterable[str]) -> str | None:
    """What is wrong with a metrics line as one of ``index`` (``round`` or ``step``), or None.

    A line without ``index`` is not examined (an online reader passes over a few-shot run's lines).
    Otherwise ``index`` must be a whole number from 0 up, and each of ``keys`` that the line holds a number.
    """
    if index not in row:
        return None
    value = row[index]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < INDEX_LIMIT:
        return f"has {index!r}: {_shown(value)}, not a whole number from 0 up"
    return values_problem(row, keys)


def values_problem(row: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    """What is wrong with the first of ``keys`` that ``row`` holds and is not a number, or None."""
    for key in keys:
        problem = number_problem(row, key) if key in row else None
        if problem is not None:
            return problem
    return None
