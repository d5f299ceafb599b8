"""The run directory: the one interface between ``train``, ``evaluate``, ``hedge`` and ``plot``.

Layout of ``runs/<name>/`` (this module owns every file name)::

    spec.yaml            the resolved, validated run spec (with schema_version)
    metrics.jsonl        one JSON object per logged step or round
    summary.json         final numbers and wall time, written when a run completes
    eval.json            written by ``metacli evaluate``
    events.out.tfevents.*  TensorBoard scalars (written through :mod:`metacli.tb`)
    checkpoints/last.pt  the run's whole state and every RNG state (torch; see metacli.runlayer.checkpoint)
    checkpoints/best.pt  the same, at the step of the best validation (few-shot runs with validation)

A metrics line always holds ``"step"`` (episodic meta-iteration, 1-based) or ``"round"``
(online round, 1-based) plus float scalars. Online runs log, per round:
``ctm_acc ctm_loss ltm_acc ltm_loss ctm_acc_avg ctm_loss_avg ltm_acc_avg ltm_loss_avg
wall_time task_bytes state_bytes``.

This module imports neither torch nor the engine, so ``hedge`` and ``plot`` start fast.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from metacli.errors import RunDirError

_UMASK = os.umask(0)
os.umask(_UMASK)

SCHEMA_VERSION = 1
SPEC_FILE = "spec.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
EVAL_FILE = "eval.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
CHECKPOINTS = {"last": LAST_CHECKPOINT, "best": BEST_CHECKPOINT}
"""``last``: the latest state (resume); ``best``: the parameters of the best validation step."""


def checkpoint_path(run_dir: Path, which: str = "last") -> Path:
    """Where a run's ``last`` (latest) or ``best`` (best validation) checkpoint lives."""
    return run_dir / CHECKPOINT_DIR / CHECKPOINTS[which]


def write_json(path: Path, obj: Mapping[str, Any]) -> None:
    """Write JSON atomically (temporary file, then rename), so a kill never leaves half a file."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=True)
    atomic_write_text(path, text + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a file so that a kill at any instant leaves either the old file or the whole new one.

    ``write`` fills a temporary file in the same folder; it is flushed and fsynced, renamed over ``path``
    (``os.replace`` is atomic within a file system), and the folder is fsynced so the rename survives a
    power cut too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with suppress(OSError):  # some file systems cannot open a folder for fsync
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, turning a missing or corrupt file into a :class:`RunDirError`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist. Is {path.parent} a finished metacli run?") from None
    except json.JSONDecodeError as e:
        raise RunDirError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}); re-run to rewrite it."
        ) from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} should hold a JSON object.")
    return data


def read_spec_dict(run_dir: Path) -> dict[str, Any]:
    """Read ``spec.yaml`` of a run as a plain dict, refusing unknown schema versions."""
    path = run_dir / SPEC_FILE
    if not path.is_file():
        raise RunDirError(
            f"{run_dir} is not a metacli run directory: it has no {SPEC_FILE}. "
            "Pass a folder written by 'metacli train'."
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RunDirError(
            f"{path} is not readable YAML ({type(e).__name__}: {e}). It was damaged or edited by hand: "
            "restore it from the spec you trained, or re-run 'metacli train'."
        ) from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} does not hold a mapping; re-run 'metacli train' to rewrite it.")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RunDirError(
            f"{path} has schema_version {version!r}, but this metacli reads version {SCHEMA_VERSION}. "
            "Use the metacli version that wrote it, or re-run the training."
        )
    return data


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All metric lines of a run, in order. A torn last line (a killed run) is ignored."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {METRICS_FILE}; it has not logged anything yet.")
    rows: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the run was killed while writing its last line
            raise RunDirError(f"{path}: line {i + 1} is not valid JSON.") from None
    return rows


def find_runs(folder: Path) -> list[Path]:
    """Every run directory (one holding ``spec.yaml`` and ``metrics.jsonl``) under ``folder``, sorted."""
    if not folder.is_dir():
        raise RunDirError(f"{folder} is not a folder. Pass the folder that holds your runs, e.g. runs/.")
    return sorted(p.parent for p in folder.rglob(METRICS_FILE) if (p.parent / SPEC_FILE).is_file())


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` and flushes it: a kill loses at most a line."""

    def __init__(self, run_dir: Path, truncate_after: int | None = None, key: str = "step") -> None:
        self.path = run_dir / METRICS_FILE
        if truncate_after is not None and self.path.exists():
            keep = [r for r in read_metrics(run_dir) if int(r.get(key, 0)) <= truncate_after]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row; non-finite floats are written as JSON ``NaN``/``Infinity``."""
        self._file.write(json.dumps(dict(row)) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


@contextmanager
def staged_run_dir(final: Path) -> Iterator[Path]:
    """Create a run directory so that a failure before the first checkpoint leaves nothing behind.

    Yields the final path, created fresh (or an existing empty folder). If the body raises before
    completing, what it wrote is removed again unless it already held a checkpoint (then it is a resumable
    partial run); a folder the user made beforehand is kept, emptied.
    """
    created = not final.exists()
    new_parents = [p for p in final.parents if not p.exists()]  # e.g. runs/ for the default --out
    try:
        final.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create the run directory {final}: {e}. Pass a writable --out.") from None
    try:
        yield final
    except BaseException:
        if not checkpoint_path(final).exists():
            shutil.rmtree(final, ignore_errors=True)
            if not created:
                final.mkdir()  # the user's own (empty) folder stays
            for parent in new_parents:  # innermost first; only folders this run made and left empty
                with suppress(OSError):
                    parent.rmdir()
        raise


def finite_or_none(x: float) -> float | None:
    """``None`` for NaN and infinities (for summary tables that must stay valid JSON)."""
    return x if math.isfinite(x) else None
