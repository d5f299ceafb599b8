"""Bodies of the ``train`` command: resolve the spec, expand grids, choose run directories."""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from metacli.errors import RunDirError
from metacli.runlayer.distributed import place, process_group
from metacli.runs import SPEC_FILE, SUMMARY_FILE, checkpoint_path


def default_run_dir(algo: str, dataset: str) -> Path:
    """``runs/<algo>-<dataset>-<time>``, with ``-2``, ``-3``... when runs started in the same second."""
    base = Path("runs") / f"{algo}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    for k in range(1, 1000):
        candidate = base if k == 1 else base.with_name(f"{base.name}-{k}")
        if not candidate.exists():
            return candidate
    return base  # 999 runs of one second: the claim names the conflict


Announce = Callable[[str], None]
"""Prints the first line of a run: what it trains and into which folder."""

Action = Literal["train", "restart", "resume", "skip", "replace"]
"""What ``train`` does with a run directory: train it fresh, start a failed start again, continue its
checkpoint, skip it (finished earlier with the same spec), or replace it (``--overwrite``)."""

LENGTH_FIELDS = ("train.meta_iters", "online.rounds")
"""How long a run trains: a finished run can be continued to a larger value with ``--resume``."""


def train_command(
    spec_file: Path | None,
    algo: str | None,
    dataset: str | None,
    overrides: list[str],
    out: Path | None,
    device: str | None,
    quiet: bool,
    overwrite: bool = False,
    announce: Announce = lambda line: None,
    data_root: Path | None = None,
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Train one spec, or every point of its grid; yields (run directory, summary) per run.

    ``data_root`` (``--data-root``) replaces the spec's ``data_root`` (a grid point's own value wins).

    A run directory that exists is matched by its spec (:func:`plan`): one finished with the same spec is
    skipped, one with a checkpoint is continued, a failed start is trained again, and one of another spec
    stops the command before anything trains, listing the fields (``overwrite`` replaces it instead).
    Under ``torchrun`` a single run trains data-parallel over the ranks, and a grid's points are spread
    over them (rank r trains points r, r + N, ...).
    """
    from metacli.spec import grid_points, load_spec

    spec, raw = load_spec(spec_file, overrides, algo=algo, dataset=dataset)
    if data_root is not None:
        spec = spec.model_copy(update={"data_root": str(data_root.resolve())})
        raw = {**raw, "data_root": spec.data_root}
    where = place()
    if overwrite and where.world > 1:
        raise RunDirError("--overwrite is not available under torchrun; delete the run directory first.")
    if spec.grid is None:
        runs = [(out or default_run_dir(spec.algorithm.name, spec.data.name), spec)]
    else:
        folder = out or Path("runs") / (spec_file.stem if spec_file else f"{spec.algorithm.name}-grid")
        points = grid_points(raw, spec.grid)  # validate every point before running any
        runs = [(point_dir(folder, name), point) for name, point in points]
    plans = [plan(run_dir, point, overwrite) for run_dir, point in runs]
    refuse_mismatches(runs, plans)
    if spec.grid is None:  # one run: data-parallel over the ranks of a torchrun launch
        yield runs[0][0], act(runs[0][0], runs[0][1], device, quiet, announce, True, overwrite)
        return
    total = len(runs)
    for k in range(where.rank, total, where.world):
        run_dir, point = runs[k]
        announce(f"grid point {k + 1} of {total}: {run_dir.name}")
        yield run_dir, act(run_dir, point, device, quiet, announce, False, overwrite)


def point_dir(folder: Path, name: str) -> Path:
    """The folder of grid point ``name`` under ``folder``, never outside it.

    A name is built from the grid's values: path separators, control characters and a leading dot (``..``)
    become ``-``, and a long or altered name gets a short hash of the original, so two points never share
    a folder.
    """
    safe = re.sub(r"[/\\\x00-\x1f\x7f]", "-", name)
    safe = re.sub(r"^\.+", "-", safe)
    if safe != name or len(safe.encode()) > 200:
        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        safe = f"{safe.encode()[:200].decode(errors='ignore')}-{digest}"
    path = folder / safe
    if path.resolve().parent != folder.resolve():
        raise RunDirError(f"grid point {name!r} would be written outside {folder}.")  # pragma: no cover
    return path


Plan = tuple[Action, list[str]]
"""An action, and the fields whose stored values differ from the asked ones (``field: stored -> asked``)."""


def plan(run_dir: Path, spec: Any, overwrite: bool) -> Plan:
    """What to do with ``run_dir`` for ``spec`` (read-only: nothing is written here).

    Raises:
        RunDirError: ``run_dir`` is a file, or a folder holding only files metacli did not write.
    """
    from metacli.errors import os_problem
    from metacli.runs import LOCK_FILE, foreign_files, is_run_file

    try:
        run_dir.exists()
    except OSError as e:  # a name too long, a loop of links, a folder without permission
        raise RunDirError(f"--out {run_dir}: {os_problem(e)}") from None
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file, but a run needs a folder. Choose another --out.")
    entries = [p.name for p in run_dir.iterdir()] if run_dir.is_dir() else []
    if not any(is_run_file(e) and e != LOCK_FILE for e in entries):  # no run here: maybe a user's files
        if foreign_files(run_dir):
            raise RunDirError(
                f"{run_dir} is not a metacli run directory: it holds other files "
                f"({', '.join(foreign_files(run_dir)[:3])}), which metacli never deletes or mixes with a "
                "run. Choose another --out."
            )
        return "train", []
    if not checkpoint_path(run_dir).exists():
        return "restart", []  # a failed start: nothing of it can be continued, whatever it was asked
    if overwrite:
        return "replace", []
    diffs = stored_differences(run_dir, spec)
    if diffs:
        return "replace", diffs  # refused by refuse_mismatches, since overwrite was not asked
    return ("skip" if (run_dir / SUMMARY_FILE).is_file() else "resume"), []


def stored_differences(run_dir: Path, spec: Any) -> list[str]:
    """``field: stored -> asked`` for each field where ``run_dir``'s spec.yaml differs from ``spec``.

    Left out: where the data lives (``data_root``), the published numbers shown beside results, and
    fields asked as ``auto`` (the stored value is what ``auto`` chose). An unreadable spec.yaml is one
    difference.
    """
    from metacli.errors import MetacliError
    from metacli.runlayer.checkpoint import spec_fields
    from metacli.runs import read_spec_dict
    from metacli.spec import validate

    try:
        stored = spec_fields(validate(read_spec_dict(run_dir), str(run_dir / SPEC_FILE)))
    except MetacliError as e:
        return [f"{SPEC_FILE}: unreadable ({str(e).splitlines()[0]})"]
    asked = spec_fields(spec)

    def compared(key: str) -> bool:
        return not (key == "data_root" or key.startswith("published") or asked.get(key) == "auto")

    keys = sorted(k for k in stored.keys() | asked.keys() if compared(k))
    return [f"{k}: {stored.get(k)!r} -> {asked.get(k)!r}" for k in keys if stored.get(k) != asked.get(k)]


def refuse_mismatches(runs: list[tuple[Path, Any]], plans: list[Plan]) -> None:
    """Stop before anything trains when an existing run directory holds another spec than asked.

    The message lists, per run, each differing field with both values, and the ways forward.
    """
    wrong = [(run_dir, diffs) for (run_dir, _), (_, diffs) in zip(runs, plans, strict=True) if diffs]
    if not wrong:
        return
    lines = [f"{len(wrong)} existing run folder(s) hold another spec than this command asks for:"]
    for run_dir, diffs in wrong:
        lines.append(f"  {run_dir}: " + "; ".join(diffs))
    lines.append(
        "Nothing was trained. Choose another --out for the new settings, or replace these runs with "
        "--overwrite."
    )
    longer = [run_dir for run_dir, diffs in wrong if only_longer(diffs)]
    if longer:
        sets = " ".join(f"--set {d.split(':')[0]}={d.split(' -> ')[1]}" for d in wrong[0][1])
        lines.append(
            f"Only the length grew for {len(longer)} of them: continue each finished run instead with "
            f"'metacli train --resume RUN {sets}' (e.g. RUN = {longer[0]})."
        )
    raise RunDirError("\n".join(lines))


def only_longer(diffs: list[str]) -> bool:
    """Whether every difference is a length field (:data:`LENGTH_FIELDS`) asked larger than stored."""

    def grew(d: str) -> bool:
        field, _, change = d.partition(": ")
        old, _, new = change.partition(" -> ")
        return field in LENGTH_FIELDS and old.isdigit() and new.isdigit() and int(new) > int(old)

    return bool(diffs) and all(grew(d) for d in diffs)


def act(
    run_dir: Path,
    spec: Any,
    device: str | None,
    quiet: bool,
    announce: Announce,
    parallel_ok: bool,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Carry out the plan for ``run_dir``, owning it meanwhile (rank 0 alone under torchrun)."""
    from metacli.runs import claimed_run_dir, lock_holder, read_json

    action, _ = plan(run_dir, spec, overwrite)
    if action == "skip" and lock_holder(run_dir) is None:  # read only: the folder stays untouched
        announce(f"skipped {run_dir}: finished earlier with the same spec")
        return {**read_json(run_dir / SUMMARY_FILE), "skipped": True}
    if not place().writer and parallel_ok:  # another rank of a data-parallel run: rank 0 owns the folder
        if action == "resume":
            return resume_command(run_dir, device, quiet)
        return train_one(spec, run_dir, device, quiet)
    what = f"{spec.algorithm.name} on {spec.data.name}"
    with claimed_run_dir(run_dir):
        action, diffs = plan(run_dir, spec, overwrite)  # again, now that no other process can change it
        refuse_mismatches([(run_dir, spec)], [(action, diffs)])
        if action == "replace":
            announce(f"training {what} into {run_dir} (replacing it)")
            return replace_run(run_dir, lambda: train_one(spec, run_dir, device, quiet, parallel_ok))
        if action == "resume":
            announce(f"resuming {run_dir} from its last checkpoint")
            return resume_command(run_dir, device, quiet, parallel_ok=parallel_ok)
        if action == "restart":
            announce(
                f"{run_dir} never reached its first checkpoint (a failed start): training it from step 0"
            )
        else:
            announce(f"training {what} into {run_dir}")
        return train_one(spec, run_dir, device, quiet, parallel_ok)


def train_one(
    spec: Any, run_dir: Path, device: str | None, quiet: bool, parallel_ok: bool = True
) -> dict[str, Any]:
    """Train a validated spec into ``run_dir``; data-parallel under torchrun unless not ``parallel_ok``."""
    from metacli.runlayer import train_run

    if not parallel_ok:
        return train_run(spec, run_dir, device=device, quiet=quiet)
    with process_group(device) as (parallel, dev):
        return train_run(spec, run_dir, device=dev, quiet=quiet, parallel=parallel)


def resume_command(
    run_dir: Path,
    device: str | None,
    quiet: bool,
    parallel_ok: bool = True,
    overrides: Sequence[str] = (),
    announce: Announce = lambda line: None,
    data_root: Path | None = None,
) -> dict[str, Any]:
    """Continue ``run_dir`` from its checkpoint (data-parallel under torchrun unless not ``parallel_ok``);
    ``overrides`` change its stored spec first (e.g. ``train.meta_iters`` to train a finished run longer),
    ``data_root`` replaces its ``data_root``."""
    from metacli.runlayer import resume_run

    if not run_dir.is_dir():
        what = "is a file, not a run directory" if run_dir.exists() else "no such run directory"
        raise RunDirError(f"--resume {run_dir}: {what}. Pass a folder written by 'metacli train'.")
    if not parallel_ok:
        return resume_run(
            run_dir, device=device, quiet=quiet, overrides=overrides, announce=announce, data_root=data_root
        )
    with process_group(device) as (parallel, dev):
        return resume_run(
            run_dir,
            device=dev,
            quiet=quiet,
            parallel=parallel,
            overrides=overrides,
            announce=announce,
            data_root=data_root,
        )


def replace_run(run_dir: Path, train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Train a new run in place of the run in ``run_dir`` (which this process owns), keeping the old one
    aside until the new one has a checkpoint.

    The old run's files move to a hidden sibling folder first. If the new run fails before its first
    checkpoint, they are put back; otherwise they are deleted. The lock file and any user's files stay.
    """
    from metacli.files import move_all, undo_moves
    from metacli.runs import LOCK_FILE, clear_run_files, is_run_file

    aside = run_dir.with_name(f".{run_dir.name}.replaced")
    shutil.rmtree(aside, ignore_errors=True)  # left by an earlier interrupted replacement
    aside.mkdir()
    names = [p.name for p in run_dir.iterdir() if is_run_file(p.name) and p.name != LOCK_FILE]
    moves = [(run_dir / name, aside / name) for name in names]
    move_all(moves)  # as a whole: a failed rename puts the earlier ones back
    try:
        summary = train()
    except BaseException:
        if not checkpoint_path(run_dir).exists():  # the new run left nothing: the old one comes back
            clear_run_files(run_dir)
            undo_moves(moves)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return summary


def field_rows(model: Any, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(dotted path, value as ``--set`` takes it, documentation) of every field of a spec, recursively.

    A union section's ``name`` lists the names it accepts after its documentation.
    """
    from pydantic import BaseModel

    from metacli.spec import UNION_SECTIONS, section_names, set_syntax

    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        path = f"{prefix}{name}"
        doc = info.description or ""
        if isinstance(value, BaseModel):
            yield path, "", doc
            yield from field_rows(value, prefix=f"{path}.")
            continue
        if name == "name" and prefix.rstrip(".") in UNION_SECTIONS:
            doc = f"{doc} One of: {', '.join(section_names(prefix.rstrip('.')))}."
        yield path, set_syntax(value), doc


def describe_fields(
    spec_file: Path | None, algo: str | None, dataset: str | None, overrides: list[str], width: bool
) -> Any:
    """Every field of the resolved spec with its value (as ``--set`` takes it) and documentation.

    ``width``: the output ends lines at a width (a terminal, or $COLUMNS): a table whose documentation
    column wraps. Else (piped) one line per field, ``path=value  # documentation``, which ``grep`` finds
    whole and whose ``path=value`` part is a ready ``--set`` argument; a section is a ``# path: doc`` line.
    """
    from rich.table import Table
    from rich.text import Text

    from metacli.spec import load_spec

    spec, _ = load_spec(spec_file, overrides, algo=algo, dataset=dataset)
    title = f"run spec fields ({spec.algorithm.name} on {spec.data.name})"
    rows = [
        (path, value, " ".join(doc.split()))  # the docstring's line breaks are the source's
        for path, value, doc in field_rows(spec)
        if path.split(".")[0] not in spec.unused_sections  # only what this protocol reads
    ]
    if not width:
        lines = [f"# {title}; set any with --set PATH=VALUE or in the YAML"]
        lines += [f"{path}={value}  # {doc}" if value else f"# {path}: {doc}" for path, value, doc in rows]
        return Text("\n".join(lines))
    table = Table(title=title, expand=True)
    table.add_column("field", overflow="fold", ratio=3)
    table.add_column("value", overflow="fold", ratio=2)
    table.add_column("documentation", overflow="fold", ratio=6)
    for row in rows:
        table.add_row(*row)
    return table
