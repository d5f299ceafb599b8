"""The shipped configs as recipes: ``metacli ls`` lists them, ``metacli cp`` copies one out for editing.

The configs are the package's ``presets/`` folder (the repository's ``configs/``, shipped as package data),
so both commands work from an installed package as from a clone. A config is named by its path under
that folder without ``.yaml``: ``omniglot/5way_1shot_maml``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from metacli.errors import MetacliError
from metacli.spec import (
    PRESET_INDEX,
    PRESETS_DIR,
    RunSpec,
    load_spec,
    preset_index,
    section_names,
    set_syntax,
)

SUFFIX = ".yaml"


class Recipe(NamedTuple):
    """One shipped config, as ``metacli ls`` shows it."""

    name: str
    """Its path under the presets folder, without ``.yaml``."""
    algorithms: tuple[str, ...]
    """The algorithm it trains; a grid over algorithms: each of them."""
    dataset: str
    tasks: str
    """Ways and shots (``5-way 1-shot``), the shots of a regression task, or ``-`` for a task stream."""
    model: str
    grid_points: int
    """Runs it trains (1 without a ``grid:`` section)."""
    published: str
    """The published numbers it carries (metric, value, source), or ``-``."""
    preset: bool
    """Whether ``--algo A --dataset D`` runs this file."""


def recipe_names() -> list[str]:
    """Every shipped config's name, sorted (the preset index itself is not a config)."""
    paths = (p for p in PRESETS_DIR.rglob(f"*{SUFFIX}") if p != PRESET_INDEX)
    return sorted(p.relative_to(PRESETS_DIR).with_suffix("").as_posix() for p in paths)


def recipe_path(name: str) -> Path:
    """The file of a shipped config; ``configs/`` in front and ``.yaml`` behind are accepted.

    Raises:
        MetacliError: no config has that name; the message lists the near matches.
    """
    bare = name.removeprefix("configs/").removesuffix(SUFFIX)
    names = recipe_names()
    if bare in names:
        return PRESETS_DIR / f"{bare}{SUFFIX}"
    near = near_names(bare, names)
    hint = f" Near matches: {', '.join(near)}." if near else ""
    raise MetacliError(
        f"No shipped config is named '{name}'.{hint} 'metacli ls' lists them all (filter with --algo or "
        "--dataset); name one as it shows it, e.g. omniglot/5way_1shot_maml."
    )


def near_names(given: str, names: list[str], limit: int = 8) -> list[str]:
    """The names closest to ``given``, compared whole and by their last part (``maml`` -> sinusoid/maml
    first), with every name that contains ``given``; at most ``limit``."""

    def score(name: str) -> float:
        last = name.rsplit("/", 1)[-1]
        return max(difflib.SequenceMatcher(None, given, n).ratio() for n in (name, last))

    ranked = sorted(names, key=lambda n: -score(n))
    return [n for n in ranked if score(n) >= NEAR or given in n][:limit]


NEAR = 0.6
"""Similarity (``difflib`` ratio) from which a name counts as near the one given."""


def describe(name: str, preset_files: set[str]) -> Recipe:
    """The :class:`Recipe` of a shipped config, read and validated as ``metacli train`` would."""
    spec, _ = load_spec(PRESETS_DIR / f"{name}{SUFFIX}")
    grid = spec.grid or {}
    points = math.prod(len(values) for values in grid.values())
    sections = [v.get("name") for v in grid.get("algorithm", []) if isinstance(v, dict)]
    algorithms = [str(a) for a in [*sections, *grid.get("algorithm.name", [])] if a is not None]
    return Recipe(
        name=name,
        algorithms=tuple(dict.fromkeys(algorithms or [spec.algorithm.name])),
        dataset=spec.data.name,
        tasks=task_shape(spec),
        model=model_label(spec),
        grid_points=points,
        published=published_text(spec),
        preset=f"{name}{SUFFIX}" in preset_files,
    )


def task_shape(spec: RunSpec) -> str:
    """``5-way 1-shot`` for classification, ``5-shot`` for regression, ``-`` for a task stream."""
    ways, shots = getattr(spec.data, "ways", None), getattr(spec.data, "shots", None)
    if shots is None:
        return "-"
    return f"{ways}-way {shots}-shot" if ways is not None else f"{shots}-shot"


def model_label(spec: RunSpec) -> str:
    """The network and its size field: ``conv4 filters=64``, ``mlp hidden=[40, 40]``."""
    model = spec.model
    return f"{model.name} {model.size_field}={set_syntax(getattr(model, model.size_field))}"


def published_text(spec: RunSpec) -> str:
    """The published numbers that apply to the config itself: ``query_acc@3 98.70 ± 0.40 (source)``."""
    from metacli.compare import published_cell, published_numbers

    numbers = published_numbers(spec.model_dump(mode="json"))
    return "; ".join(f"{metric} {published_cell(metric, e)}" for metric, e in numbers.items()) or "-"


def recipes(algo: str | None = None, dataset: str | None = None) -> list[Recipe]:
    """Every shipped config training ``algo`` on ``dataset`` (None: any).

    Raises:
        MetacliError: none matches; the message names the algorithms and datasets that have configs.
    """
    preset_files = {name for entry in preset_index().values() for name in entry.files.values()}
    every = [describe(name, preset_files) for name in recipe_names()]
    found = [
        r
        for r in every
        if (algo is None or algo in r.algorithms) and (dataset is None or dataset == r.dataset)
    ]
    if not found:
        raise MetacliError(no_match(algo, dataset, every))
    return found


def no_match(algo: str | None, dataset: str | None, every: Iterable[Recipe]) -> str:
    """Why ``ls --algo/--dataset`` found nothing: the names that do have configs, and the nearest."""
    every = list(every)
    algos = sorted({a for r in every for a in r.algorithms})
    datasets = sorted({r.dataset for r in every})
    asked = " ".join(f"--{k} {v}" for k, v in (("algo", algo), ("dataset", dataset)) if v is not None)
    hints = [
        f"Did you mean {match[0]}?"
        for given, valid in ((algo, algos), (dataset, datasets))
        if given is not None
        and (match := difflib.get_close_matches(given, valid, n=1, cutoff=0.6))
        and match[0] != given
    ]
    known = set(section_names("algorithm")) | set(section_names("data"))
    unknown = [v for v in (algo, dataset) if v is not None and v not in known]
    what = (
        f"'{unknown[0]}' is no algorithm or dataset metacli knows"
        if unknown
        else "no shipped config pairs them"
    )
    return (
        f"No shipped config matches {asked}: {what}.{' ' + ' '.join(hints) if hints else ''} Configs exist "
        f"for the algorithms {', '.join(algos)} and the datasets {', '.join(datasets)}. Run 'metacli ls' "
        "for the whole list; any algorithm runs on a dataset of its protocol with 'metacli train --algo A "
        "--dataset D' (the dataset's model and data, the algorithm's defaults)."
    )


COLUMNS = ("name", "algorithm", "dataset", "tasks", "model", "published")


def table(found: list[Recipe]) -> str:
    """Plain text columns, one config a line, never wrapped (a * marks the files presets run)."""
    rows = [COLUMNS] + [
        (
            f"{r.name}{' *' if r.preset else ''}",
            algorithm_text(r),
            r.dataset,
            r.tasks,
            r.model,
            r.published,
        )
        for r in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


MAX_NAMED = 3
"""Most algorithms of a grid named in ``ls``; more are counted (the row stays readable)."""


def algorithm_text(recipe: Recipe) -> str:
    """``maml``; a grid: ``moml (grid of 24)``, ``10 algorithms (grid of 20)``."""
    names = recipe.algorithms
    text = ", ".join(names) if len(names) <= MAX_NAMED else f"{len(names)} algorithms"
    return text + (f" (grid of {recipe.grid_points})" if recipe.grid_points > 1 else "")


def copy_recipe(name: str, dest: Path | None, force: bool) -> Path:
    """Copy a shipped config to ``dest`` (a file, or a folder to put it in; default: the current folder).

    The copy's header comment names the copy instead of the shipped file, so its first line is still the
    command that runs it.

    Raises:
        MetacliError: an unknown name (near matches listed), an existing file without ``force``, or a
            destination folder that does not exist. Nothing is written then.
    """
    from metacli.files import atomic_write

    source = recipe_path(name)
    bare = source.relative_to(PRESETS_DIR).with_suffix("").as_posix()
    default_name = f"{bare.replace('/', '_')}{SUFFIX}"
    target = Path(default_name) if dest is None else dest / default_name if dest.is_dir() else dest
    if target.exists() and not force:
        raise MetacliError(
            f"{target} exists already: nothing was copied. Pass --force to replace it, or name another DEST."
        )
    if not target.parent.is_dir():
        raise MetacliError(
            f"The folder {target.parent} does not exist: nothing was copied. Create it first, or name a DEST "
            "in an existing folder."
        )
    text = source.read_text(encoding="utf-8").replace(f"configs/{bare}{SUFFIX}", str(target))
    atomic_write(target, text)
    return target
