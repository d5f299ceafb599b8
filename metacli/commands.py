"""Bodies of the ``train`` command: resolve the spec, expand grids, choose run directories."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from metacli.errors import RunDirError
from metacli.runlayer.distributed import place, process_group
from metacli.runs import SPEC_FILE, SUMMARY_FILE, checkpoint_path, read_json


def default_run_dir(algo: str, dataset: str) -> Path:
    """``runs/<algo>-<dataset>-<time>``."""
    return Path("runs") / f"{algo}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


Announce = Callable[[str], None]
"""Prints the first line of a run: what it trains and into which folder."""


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
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Train one spec, or every point of its grid; yields (run directory, summary) per run.

    ``overwrite`` (single runs only): replace an existing run directory, see :func:`replace_run`. Under
    ``torchrun`` a single run trains data-parallel over the ranks, and a grid's points are spread over
    them (rank r trains points r, r + N, ...).
    """
    from metacli.spec import grid_points, load_spec

    spec, raw = load_spec(spec_file, overrides, algo=algo, dataset=dataset)
    where = place()
    if spec.grid is None:
        run_dir = out or default_run_dir(spec.algorithm.name, spec.data.name)
        if overwrite and where.world > 1:
            raise RunDirError("--overwrite is not available under torchrun; delete the run directory first.")
        if overwrite and run_dir.exists() and any(run_dir.iterdir()):
            announce(f"training {spec.algorithm.name} on {spec.data.name} into {run_dir} (replacing it)")
            yield run_dir, replace_run(run_dir, lambda: train_one(spec, run_dir, device, quiet))
            return
        if not where.writer:  # another rank of a data-parallel run: it trains, rank 0 writes and reports
            train_one(spec, run_dir, device, quiet)
            return
        refuse_existing(run_dir)
        announce(f"training {spec.algorithm.name} on {spec.data.name} into {run_dir}")
        yield run_dir, train_one(spec, run_dir, device, quiet)
        return
    if overwrite:
        raise RunDirError(
            "--overwrite applies to single runs; a grid rerun already skips finished points and resumes "
            "interrupted ones. Delete the grid's folder to train it from scratch."
        )
    points = grid_points(raw, spec.grid)  # validate every point before running any
    folder = out or Path("runs") / (spec_file.stem if spec_file else f"{spec.algorithm.name}-grid")
    for name, point in points[where.rank :: where.world]:
        yield from train_point(point, folder / name, device, quiet, announce)


def train_point(
    spec: Any, run_dir: Path, device: str | None, quiet: bool, announce: Announce = lambda line: None
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """One grid point, trained alone by this process: skipped when complete, resumed when checkpointed,
    else trained fresh."""
    if (run_dir / SUMMARY_FILE).is_file():
        announce(f"skipping {run_dir}: finished")
        yield run_dir, {**read_json(run_dir / SUMMARY_FILE), "skipped": True}
    elif checkpoint_path(run_dir).is_file():
        announce(f"resuming {run_dir}")
        yield run_dir, resume_command(run_dir, device, quiet, parallel_ok=False)
    else:
        refuse_existing(run_dir)
        announce(f"training {spec.algorithm.name} on {spec.data.name} into {run_dir}")
        yield run_dir, train_one(spec, run_dir, device, quiet, parallel_ok=False)


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
    run_dir: Path, device: str | None, quiet: bool, parallel_ok: bool = True
) -> dict[str, Any]:
    """Continue ``run_dir`` from its checkpoint (data-parallel under torchrun unless not ``parallel_ok``)."""
    from metacli.runlayer import resume_run

    if not run_dir.is_dir():
        raise RunDirError(
            f"--resume {run_dir}: no such run directory. Pass a folder written by 'metacli train'."
        )
    if not parallel_ok:
        return resume_run(run_dir, device=device, quiet=quiet)
    with process_group(device) as (parallel, dev):
        return resume_run(run_dir, device=dev, quiet=quiet, parallel=parallel)


def replace_run(run_dir: Path, train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Train a new run in place of the metacli run ``run_dir``, which is kept aside until the new one exists.

    The old run is renamed to a hidden sibling first. If the new run fails and leaves nothing (before
    its first checkpoint), the old one is put back; otherwise it is deleted.

    Raises:
        RunDirError: ``run_dir`` is not a metacli run directory (no spec.yaml): it is never deleted.
    """
    if not (run_dir / SPEC_FILE).is_file():
        raise RunDirError(
            f"--overwrite {run_dir}: it is not a metacli run directory (no {SPEC_FILE}), so it is not "
            "deleted. Choose another --out, or delete it yourself."
        )
    aside = run_dir.with_name(f".{run_dir.name}.replaced")
    shutil.rmtree(aside, ignore_errors=True)  # left by an earlier interrupted replacement
    run_dir.rename(aside)
    try:
        summary = train()
    except BaseException:
        if not run_dir.exists():
            aside.rename(run_dir)  # the new run left nothing: the old one is back
        else:
            shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return summary


def refuse_existing(run_dir: Path) -> None:
    """Never overwrite a run: an existing, non-empty directory is an error with the two ways out."""
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(
            f"{run_dir} already exists and is not empty. Choose another --out, continue it with "
            f"--resume {run_dir}, or replace it with --overwrite."
        )


def field_rows(model: Any, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(dotted path, value, documentation) of every field of a spec, sections recursively."""
    from pydantic import BaseModel

    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield path, "", info.description or ""
            yield from field_rows(value, prefix=f"{path}.")
        else:
            yield path, repr(value), info.description or ""


def describe_fields(
    spec_file: Path | None, algo: str | None, dataset: str | None, overrides: list[str]
) -> Any:
    """A rich table of every field of the resolved spec, with its value and documentation."""
    from rich.table import Table

    from metacli.spec import load_spec

    spec, _ = load_spec(spec_file, overrides, algo=algo, dataset=dataset)
    table = Table(title=f"run spec fields ({spec.algorithm.name} on {spec.data.name})", expand=True)
    table.add_column("field", overflow="fold", ratio=3)
    table.add_column("value", overflow="fold", ratio=2)
    table.add_column("documentation", overflow="fold", ratio=6)
    for path, value, doc in field_rows(spec):
        if path.split(".")[0] not in spec.unused_sections:  # only what this protocol reads
            table.add_row(path, value, " ".join(doc.split()))  # the docstring's line breaks are the source's
    return table
