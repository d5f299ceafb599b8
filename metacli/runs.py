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

import fcntl
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from metacli.errors import RunDirError, SpecError, os_problem
from metacli.files import TEMP_SUFFIX, atomic_write
from metacli.yamlfile import load_yaml, read_spec_text

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
    """Write JSON atomically (:func:`~metacli.files.atomic_write`), so a kill never leaves half a file."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=True)
    atomic_write(path, text + "\n")


atomic_write_text = atomic_write
"""The same function as :func:`~metacli.files.atomic_write` (which also takes text), under the name that
``metacli.runlayer.core`` imports; new code calls ``atomic_write``."""


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, turning a missing, unreadable or corrupt file into a :class:`RunDirError`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist. Is {path.parent} a finished metacli run?") from None
    except json.JSONDecodeError as e:
        raise RunDirError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}); re-run to rewrite it."
        ) from None
    except UnicodeDecodeError as e:
        raise RunDirError(f"{path} is not UTF-8 text ({e}); re-run to rewrite it.") from None
    except RecursionError:
        raise RunDirError(f"{path} is nested too deeply to be read; re-run to rewrite it.") from None
    except OSError as e:  # a folder in its place, no permission, ...
        raise RunDirError(f"cannot read {path}: {os_problem(e)}") from None
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
    try:  # the spec files' strict reader: a run folder from elsewhere may hold anything
        data = load_yaml(read_spec_text(path), str(path))
    except SpecError as e:
        raise RunDirError(
            f"{e} It was damaged or edited by hand: restore it from the spec you trained, or re-run "
            "'metacli train'."
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


def read_metrics(
    run_dir: Path,
    on_bad_line: Callable[[int, str, dict[str, Any] | None], None] | None = None,
    check: Callable[[dict[str, Any]], str | None] | None = None,
) -> list[dict[str, Any]]:
    """All metric lines of a run, in order. A torn last line (a killed run) is ignored.

    A line before the last that is not a JSON object, or that ``check`` rejects (``check`` returns what is
    wrong with a line, or None), is damage. Without ``on_bad_line`` it raises :class:`RunDirError`; with
    it, ``on_bad_line(line number, what is wrong, the line's object or None when it is not one)`` is called
    and the line left out (the callback may raise instead, to give up on the run). A file that cannot be
    read at all is a RunDirError either way.
    """
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {METRICS_FILE}; it has not logged anything yet.")
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise RunDirError(f"cannot read {path}: {os_problem(e)}") from None
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row: Any = json.loads(line)
            problem = None if isinstance(row, dict) else "is not a JSON object"
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested beyond the parser's depth
            if i == len(lines) - 1:
                break  # the run was killed while writing its last line
            row, problem = None, "is not valid JSON"
        if problem is None and check is not None:
            problem = check(row)
        if problem is None:
            rows.append(row)
        elif on_bad_line is None:
            raise RunDirError(
                f"{path}: line {i + 1} {problem}. The file was damaged or edited by hand: restore it, "
                "or delete that line."
            )
        else:
            on_bad_line(i + 1, problem, row if isinstance(row, dict) else None)
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
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row; non-finite floats are written as JSON ``NaN``/``Infinity``."""
        self._file.write(json.dumps(dict(row)) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


LOCK_FILE = ".lock"
"""Held (``flock``) by the one process that owns the run directory; holds that process's pid as text."""

_HELD: dict[Path, int] = {}
"""Run directories this process owns: resolved path -> open lock file descriptor (claims nest)."""


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the live process that owns ``run_dir``, or None when no process does.

    The OS releases a ``flock`` when its process dies (SIGKILL too), so a lock file left by a dead run
    never counts.
    """
    if run_dir.resolve() in _HELD:
        return os.getpid()
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _pid_in(fd)
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return None


def _pid_in(fd: int) -> int:
    """The pid written in an open lock file (0 when it is not readable yet)."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else 0


def _take_lock(
    run_dir: Path, doing: str = "which is training into it", instead: str = ", or choose another --out"
) -> int:
    """Open and ``flock`` the lock file of ``run_dir`` (which exists); the descriptor.

    The lock file is removed when its owner finishes, so a lock taken on a file that has meanwhile been
    unlinked (or replaced) is dropped and taken again on the file now at that path.

    Raises:
        RunDirError: another live process holds it (named by its pid).
    """
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = _pid_in(fd)
            os.close(fd)
            raise RunDirError(
                f"{run_dir} is in use by another metacli process (pid {pid}), {doing}. "
                f"Wait for it to finish (or stop it){instead}."
            ) from None
        with suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)  # the previous owner removed this file as it finished: lock the one there now
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _release_lock(run_dir: Path, fd: int) -> None:
    """Remove the lock file, then drop the lock (in this order: see :func:`_take_lock`)."""
    with suppress(OSError):
        (run_dir / LOCK_FILE).unlink()
    os.close(fd)


@contextmanager
def locked_folder(folder: Path, doing: str) -> Iterator[Path]:
    """Hold the lock of the existing ``folder`` for the duration (``doing`` names the work for others).

    For writers other than a run (``metacli hedge`` replacing its result set): one at a time per folder.
    """
    key = folder.resolve()
    if key in _HELD:
        yield folder
        return
    _HELD[key] = _take_lock(folder, doing, instead="")
    try:
        yield folder
    finally:
        _release_lock(folder, _HELD.pop(key))


def check_folder_path(path: Path, what: str) -> None:
    """Refuse, before anything is written, a ``path`` that cannot become a folder.

    Raises:
        RunDirError: ``path`` is a file, lies inside a file, or cannot be looked up (a name too long...).
    """
    try:
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{what} {path} is a file, but a folder is needed there. Choose another path.")
        for p in path.parents:
            if p.exists() and not p.is_dir():
                raise RunDirError(
                    f"cannot create {what} {path}: {p} is a file, not a folder. Choose another path."
                )
    except OSError as e:
        raise RunDirError(f"{what} {path}: {os_problem(e)}") from None


def make_folder(path: Path, what: str) -> list[Path]:
    """Create the folder ``path`` (and its parents); the folders this created, innermost first.

    Raises:
        RunDirError: ``path`` is a file, lies inside a file, or cannot be created (the cause named).
    """
    check_folder_path(path, what)
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create {what} {path}: {os_problem(e)}") from None
    return created


@contextmanager
def claimed_run_dir(run_dir: Path) -> Iterator[Path]:
    """Own ``run_dir`` for the duration: create it, hold its lock, and undo a failed start.

    Exactly one process owns a run directory at a time (an exclusive ``flock`` on ``.lock``); a second one
    gets a :class:`RunDirError` naming the holder's pid at once. Claims nest within one process (the
    outermost one does the work). If the body raises before the folder holds a checkpoint, what this
    claim created is removed again (a folder the user made beforehand is kept, emptied of the run's
    files), so a failure never leaves a half-written run behind.
    """
    key = run_dir.resolve()
    if key in _HELD:
        yield run_dir
        return
    created = make_folder(run_dir, "the run directory")
    fd = _take_lock(run_dir)  # refused: the folder is another process's, left as it is
    _HELD[key] = fd
    try:
        yield run_dir
    except BaseException:
        if not checkpoint_path(run_dir).exists():
            clear_run_files(run_dir)
            del _HELD[key]
            _release_lock(run_dir, fd)
            _remove_created(created)
        raise
    finally:
        if key in _HELD:
            del _HELD[key]
            _release_lock(run_dir, fd)


def _remove_created(created: list[Path]) -> None:
    """Remove the folders a claim created (innermost first), each only when nothing else is in it."""
    for folder in created:
        with suppress(OSError):
            folder.rmdir()


def is_run_file(name: str) -> bool:
    """Whether a top-level entry of a run directory is one metacli writes (or its temporary file)."""
    return (
        name in (LOCK_FILE, SPEC_FILE, METRICS_FILE, SUMMARY_FILE, EVAL_FILE, CHECKPOINT_DIR)
        or name.startswith("events.out.tfevents.")
        or (name.startswith(".") and name.endswith(TEMP_SUFFIX))
    )


def foreign_files(run_dir: Path) -> list[str]:
    """Entries of ``run_dir`` that metacli never writes (a user's files: never deleted)."""
    return sorted(p.name for p in run_dir.iterdir() if not is_run_file(p.name)) if run_dir.is_dir() else []


def clear_run_files(run_dir: Path) -> None:
    """Delete what a run wrote in ``run_dir`` (a failed start), keeping the lock and any user's files."""
    if not run_dir.is_dir():
        return
    for entry in run_dir.iterdir():
        if entry.name == LOCK_FILE or not is_run_file(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def finite_or_none(x: float) -> float | None:
    """``None`` for NaN and infinities (for summary tables that must stay valid JSON)."""
    return x if math.isfinite(x) else None
