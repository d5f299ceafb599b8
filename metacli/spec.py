"""Run specs: YAML validated by pydantic v2 models, with presets, ``--set`` overrides and grids.

A preset (``--algo A --dataset D``) is a YAML file too: the one ``configs/presets.yaml`` names for the pair
(``configs/`` is shipped in the package as ``metacli/presets``); this module holds no preset values.
Configuration flows one way: YAML (a file or a preset) -> dict -> ``--set a.b=value`` overrides merged
into the dict -> :meth:`RunSpec.model_validate`, so every bad field is reported at once, with its
dotted path. Components then receive only their section (``spec.algorithm``, ``spec.data``...).
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import re
import reprlib
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python

from metacli.engine.config.algorithms import ONLINE_ALGORITHM_NAMES, AlgorithmConfig
from metacli.engine.config.data import ONLINE_DATASET_NAMES, DataConfig
from metacli.engine.config.fields import MAX_ELEMENTS, MAX_THREADS, Count, Finite, NonNegative, Seed, Steps
from metacli.engine.config.models import ModelConfig
from metacli.errors import SpecError, clause
from metacli.runs import SCHEMA_VERSION
from metacli.yamlfile import MAX_DEPTH, SpecLoader, YAMLRefusal, read_yaml, yaml_message

UNION_SECTIONS = ("algorithm", "model", "data")
_FROZEN = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

MAX_GRID_POINTS = 10_000
"""Most points of one grid (every point is validated before any trains)."""
MAX_CUDA_INDEX = 127
"""Largest CUDA device number torch represents (it keeps device numbers in 8 bits)."""


class TrainSettings(BaseModel):
    """Episodic meta-training (few-shot algorithms)."""

    model_config = _FROZEN

    meta_batch: Count = 25
    """Tasks per meta-step (B)."""
    meta_iters: Count = 70_000
    """Number of meta-steps (outer iterations)."""
    executor: Literal["auto", "loop", "vmap"] = "auto"
    """How the meta-batch is processed: a per-task loop (low memory) or torch.func.vmap over tasks; auto
    times a few meta-steps of each on the run's own tasks and device when the run starts and takes the faster
    (README, "Threads and executors")."""
    log_every: Count = 100
    """Meta-steps between metric lines (and TensorBoard points)."""
    checkpoint_every: Count = 1000
    """Meta-steps between checkpoints (checkpoints/last.pt); the last step is always saved."""
    val_every: Steps = 0
    """Meta-steps between validations on the validation split (0: none). The parameters of the best
    validation (accuracy, or loss for regression) are kept as checkpoints/best.pt."""
    val_tasks: Annotated[Count, Field(ge=2)] = 100
    """Validation tasks: one fixed set, drawn from val_seed, reused at every validation."""
    val_seed: Seed = 4321
    """Seed of the fixed validation task set (independent of training)."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A meta-step with a non-finite loss or meta-gradient: stop the run (exit 1, the last good checkpoint
    kept), or skip it (no update; counted in metrics.jsonl as skipped_steps). A non-finite parameter
    or outer optimiser moment (Adam's, overflowed by a huge finite meta-gradient) after an update always
    stops."""


class EvalSettings(BaseModel):
    """Meta-testing: adapt on each test task's support set, measure on its query set."""

    model_config = _FROZEN

    tasks: Annotated[Count, Field(ge=2)] = 600
    """Number of test tasks (the 95% confidence interval is 1.96 std / sqrt(tasks))."""
    batch: Count = 25
    """Tasks evaluated at a time, as one batch (vmap over tasks); also used for validation."""
    inner_steps: Annotated[tuple[Steps, ...], Field(min_length=1)] | None = None
    """Adaptation step counts to report (e.g. [1, 10]; 0: before adaptation); default: eval_inner_steps."""
    seed: Seed = 1234
    """Seed of the test-task generator (independent of training)."""


class OnlineSettings(BaseModel):
    """The online protocol (MOML and its baselines)."""

    model_config = _FROZEN

    ltm: bool = True
    """Measure LTM (fine-tune and test on every task seen so far) after each round."""
    rounds: Count | None = None
    """Stop after this many rounds (a shortened run); default: every task of the stream."""
    checkpoint_every: Count = 50
    """Rounds between checkpoints; the last round is always saved."""


class Published(BaseModel):
    """A published number to print beside a run's result in comparison tables."""

    model_config = _FROZEN

    metric: Annotated[str, Field(min_length=1)]
    """The eval.json metric it compares with, e.g. query_acc@3 or query_loss@1 (accuracy as a fraction)."""
    value: Finite
    """The published mean."""
    ci95: NonNegative | None = None
    """Its published 95% confidence half-width (same units), where given."""
    source: str
    """Where it comes from (paper and table)."""
    meta_iters: Count | None = None
    """The meta-iterations it was trained for, where its source says: tables flag a run trained for fewer."""
    when: dict[str, Any] = {}
    """Only for runs whose spec has these dotted fields at these values, e.g. {data.shots: 5}."""


class RunSpec(BaseModel):
    """A complete, validated run: what to train, on what, and how."""

    model_config = _FROZEN

    schema_version: Literal[1] = 1
    """Version of this schema; metacli refuses specs and run directories of other versions."""
    seed: Seed = 0
    """Seed of every generator of the run (tasks, initialisation, sampling)."""
    device: str = "auto"
    """auto (CUDA when present, else CPU; the device chosen is written to the run's spec.yaml), cpu, cuda
    or cuda:N."""
    threads: int | Literal["auto"] | None = "auto"
    """CPU threads for torch: auto (1 for small models, else the cores not busy with other work; the
    chosen number is written to the run's spec.yaml), a number from 1 to 1024, or null for torch's own
    default."""

    @field_validator("threads", mode="before")
    @classmethod
    def _thread_count(cls, value: Any) -> Any:
        """auto, null, or a whole number from 1 to MAX_THREADS (``true`` is not 1)."""
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
            raise ValueError(
                f"threads must be at least 1 and at most {MAX_THREADS} (a whole number), or auto, or null "
                "for torch's default"
            )
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        """auto, cpu, cuda or cuda:N, N from 0 to 127 (torch keeps device numbers in 8 bits)."""
        index = re.fullmatch(r"auto|cpu|cuda(?::(0|[1-9][0-9]{0,2}))?", value)
        if index is None or int(index.group(1) or 0) > MAX_CUDA_INDEX:
            raise ValueError(
                f"Unknown device '{value}': use auto, cpu, cuda or cuda:N with N a GPU number from 0 to "
                f"{MAX_CUDA_INDEX} (cuda:0 is the first)"
            )
        return value

    dtype: Literal["float32", "float64"] = "float32"
    """Floating-point type of parameters and data."""
    data_root: str | None = None
    """Folder holding datasets (e.g. <data_root>/mnist); default $METACLI_DATA, then a per-user cache."""

    @field_validator("data_root")
    @classmethod
    def _usable_folder(cls, value: str | None) -> str | None:
        """A path the file system can take: not empty, no NUL character."""
        if value is not None and (not value.strip() or "\0" in value):
            raise ValueError(
                "data_root must name a folder (a path, not empty and without NUL characters), or be null "
                "for the default"
            )
        return value

    algorithm: AlgorithmConfig
    """The algorithm and its hyper-parameters; `name` selects it."""
    model: ModelConfig
    """The network; `name` selects it."""
    data: DataConfig
    """The dataset or task stream; `name` selects it."""
    train: TrainSettings = TrainSettings()
    """Episodic meta-training settings (few-shot algorithms)."""
    eval: EvalSettings = EvalSettings()
    """Meta-test settings (few-shot algorithms)."""
    online: OnlineSettings = OnlineSettings()
    """Online-protocol settings (online algorithms)."""
    grid: dict[str, list[Any]] | None = None
    """A sweep: dotted field -> values; `metacli train` runs every point of the product. A value may be
    a whole section (e.g. algorithm: [{name: maml}, {name: anil, alpha: 0.1}]), named by its name."""
    published: tuple[Published, ...] = ()
    """Published results to print beside this run's in `metacli evaluate FOLDER` tables."""

    @field_validator("grid")
    @classmethod
    def _grid_points(cls, grid: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        """Dotted keys, at least one value per key, at most MAX_GRID_POINTS points in all."""
        points = 1
        for key, values in (grid or {}).items():
            key_parts(key)
            if not values:
                raise ValueError(f"grid.{key} must list at least one value, e.g. grid: {{{key}: [1, 2]}}")
            points *= len(values)
        if points > MAX_GRID_POINTS:
            raise ValueError(
                f"the grid has {points:,} points, more than the {MAX_GRID_POINTS:,} one spec may run; "
                "split it into several specs"
            )
        return grid

    @model_validator(mode="after")
    def _protocol_matches(self) -> RunSpec:
        online_algo = self.algorithm.name in ONLINE_ALGORITHM_NAMES
        online_data = self.data.name in ONLINE_DATASET_NAMES
        if online_algo != online_data:
            kind = "an online" if online_algo else "a few-shot"
            raise ValueError(
                f"algorithm '{self.algorithm.name}' is {kind} method but dataset '{self.data.name}' is "
                f"{'a task stream' if online_data else 'an episodic dataset'}; pair online methods "
                f"({', '.join(sorted(ONLINE_ALGORITHM_NAMES))}) with "
                f"{', '.join(sorted(ONLINE_DATASET_NAMES))}."
            )
        for section in self.unused_sections:
            given = getattr(self, section)
            if section in self.model_fields_set and given != type(given)():
                uses = "online:" if self.is_online else "train: and eval:"
                raise ValueError(
                    f"the {section}: section does not apply to '{self.algorithm.name}', "
                    f"{'an online' if self.is_online else 'a few-shot'} method (it uses {uses}); "
                    f"remove {section}: from the spec, it would be ignored"
                )
        tasks = getattr(self.data, "tasks", None)
        if self.online.rounds is not None and tasks is not None and self.online.rounds > tasks:
            raise ValueError(
                f"online.rounds ({self.online.rounds}) exceeds the stream's data.tasks ({tasks})."
            )
        per_task = getattr(self.data, "train_per_task", None)
        need = getattr(self.algorithm, "support_query_images", None)
        if per_task is not None and need is not None and need > per_task:
            raise ValueError(
                f"data.tasks = {tasks} leaves {per_task} training images per task, but each outer step of "
                f"'{self.algorithm.name}' draws a support and a disjoint query batch of "
                f"algorithm.batch_size each ({need} images). Use fewer tasks or a smaller batch_size."
            )
        return self

    @model_validator(mode="after")
    def _remat_runs_in_the_loop(self) -> RunSpec:
        """Refuse ``algorithm.remat`` with the vmap executor: its reverse pass is an autograd.Function
        with a backward of its own, which torch.func's vmap cannot batch."""
        if getattr(self.algorithm, "remat", False) and self.train.executor == "vmap":
            raise ValueError(
                "algorithm.remat recomputes the inner steps in a backward pass of its own, which "
                "torch.func's vmap cannot batch; set train.executor: loop (or auto, which picks loop)"
            )
        return self

    @model_validator(mode="after")
    def _fits_in_memory(self) -> RunSpec:
        """Refuse a network the data cannot feed, or tensors beyond MAX_ELEMENTS (:func:`oversized`)."""
        problem = oversized(self)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def is_online(self) -> bool:
        """Whether this run follows the online protocol."""
        return self.algorithm.name in ONLINE_ALGORITHM_NAMES

    @property
    def unused_sections(self) -> tuple[str, ...]:
        """The sections this run's protocol ignores: ``train`` and ``eval`` online, ``online`` few-shot.

        Validation refuses them when a spec sets them to anything but their defaults; ``spec.yaml`` and
        ``--fields`` leave them out.
        """
        return ("train", "eval") if self.is_online else ("online",)


def oversized(spec: RunSpec) -> str | None:
    """Why the network cannot take the spec's data, or the first tensor beyond MAX_ELEMENTS values.

    Counted from the configs (no torch): the network's parameters; the activations of the tasks processed
    at once (one task's examples times the larger of an input and the widest layer, times ``eval.batch``,
    which is always vmapped, or ``train.meta_batch`` under the vmap executor); the inputs of the largest
    batch of tasks, which is sampled as one tensor. Raises ValueError (with the fix) for a network that
    cannot take the data's inputs, e.g. conv4 on sinusoid.
    """
    shape, model, examples = spec.data.input_shape(), spec.model, spec.data.task_examples()
    size = f"model.{model.size_field}"
    params = model.parameter_count(shape, spec.data.outputs())
    per_example = max(math.prod(shape), model.widest_activation(shape))
    train, evaluation = spec.train.meta_batch, spec.eval.batch
    together = 1 if spec.is_online else max(evaluation, train if spec.train.executor == "vmap" else 1)
    batch = 0 if spec.is_online else max(train, evaluation)
    tensors = [
        (params, f"the {model.name} network's parameters on {shape} inputs", f"lower {size}"),
        (
            together * examples * per_example,
            f"the activations of {together:,} task(s) of {examples:,} examples each, computed at once,",
            f"lower {size}, eval.batch (train.meta_batch under the vmap executor) or the examples per "
            "task (data.shots, data.queries, data.ways)",
        ),
        (
            batch * examples * math.prod(shape),
            f"the inputs of {batch:,} tasks",
            "lower train.meta_batch and eval.batch",
        ),
    ]
    for values, what, fix in tensors:
        if values > MAX_ELEMENTS:
            limit = f"more than the {MAX_ELEMENTS:,} metacli allows in one tensor"
            return f"{what} hold {values:,} values, {limit}; {fix}"
    return None


def key_parts(key: str) -> list[str]:
    """A dotted field path as its parts (``"algorithm.alpha"`` -> ``["algorithm", "alpha"]``).

    Raises ValueError for an empty part (``.a``, ``a..b``, ``a.``) or more than MAX_DEPTH parts.
    """
    parts = [part.strip() for part in key.split(".")]
    if "" in parts:
        raise ValueError(
            f"the key '{key}' has an empty part (a leading, trailing or doubled dot); write a dotted field "
            "path such as algorithm.alpha"
        )
    if len(parts) > MAX_DEPTH:
        raise ValueError(
            f"the key '{key}' has {len(parts)} parts, more than {MAX_DEPTH}; no field is that deep"
        )
    return parts


PRESETS_DIR = Path(__file__).resolve().parent / "presets"
"""The preset files: the repository's ``configs/`` (``metacli/presets`` links to it), as package data."""
PRESET_INDEX = PRESETS_DIR / "presets.yaml"
"""Which file ``--algo A --dataset D`` runs, and each dataset's sections for the other algorithms."""

DEMO = ["train.meta_iters=2000", "eval.tasks=100"]
"""`metacli train` with no arguments: the MAML sinusoid preset, shortened to a demo of a few seconds."""


class DatasetPresets(BaseModel):
    """One dataset's entry of the preset index (``configs/presets.yaml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    other: dict[str, Any]
    """The spec sections an algorithm without its own file runs with (``algorithm: {name: A}`` added)."""
    files: dict[str, str]
    """Algorithm name -> its preset file, relative to the index's folder."""


def preset_index() -> dict[str, DatasetPresets]:
    """The preset index, validated (a broken index is a SpecError naming the file)."""
    try:
        return TypeAdapter(dict[str, DatasetPresets]).validate_python(read_yaml(PRESET_INDEX))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {pydantic_message(err['msg'])}" for err in e.errors()
        )
        raise SpecError(
            f"The preset index {PRESET_INDEX} is damaged: {problems}. Restore it (reinstall metacli, or "
            "check out configs/presets.yaml again)."
        ) from None


def preset_pairs(index: Mapping[str, DatasetPresets]) -> str:
    """The algorithms with a preset file, per dataset (``sinusoid: maml, fomaml; smnist: moml``)."""
    return "; ".join(f"{dataset}: {', '.join(entry.files)}" for dataset, entry in sorted(index.items()))


def check_dataset(dataset: str, index: Mapping[str, DatasetPresets]) -> None:
    """Raise SpecError for a dataset the preset index does not know, listing the pairs that have presets."""
    if dataset not in index:
        raise SpecError(
            f"Unknown dataset '{dataset}'.{closest_hint(dataset, list(index))} Presets exist for: "
            f"{', '.join(sorted(index))}. Pass one of these to --dataset, or write a spec file. The presets "
            f"(--dataset: --algo), listed in {PRESET_INDEX}: {preset_pairs(index)}."
        )


def preset_pair(algo: str | None, dataset: str | None) -> tuple[str, str]:
    """``(algo, dataset)`` when both are given; one without the other is a SpecError naming its partners.

    Neither name has a default: a missing ``--dataset`` lists the datasets with a preset file for the
    algorithm, a missing ``--algo`` the algorithms with a preset file for the dataset.
    """
    index = preset_index()
    if dataset is None:
        assert algo is not None  # the caller handles neither given (the demo)
        datasets = [d for d, entry in index.items() if algo in entry.files]
        if not datasets:
            known = sorted({a for entry in index.values() for a in entry.files})
            raise SpecError(
                f"--algo {algo} needs --dataset, and no shipped preset is for '{algo}'."
                f"{closest_hint(algo, known)} Algorithms with presets: {', '.join(known)}."
            )
        raise SpecError(
            f"--algo {algo} needs --dataset: presets for {algo} exist for {', '.join(datasets)}. For "
            f"example: metacli train --algo {algo} --dataset {datasets[0]} ('metacli ls --algo {algo}' "
            "lists them)."
        )
    check_dataset(dataset, index)
    if algo is None:
        algos = list(index[dataset].files)
        raise SpecError(
            f"--dataset {dataset} needs --algo: {dataset} has presets for {', '.join(algos)}. For example: "
            f"metacli train --algo {algos[0]} --dataset {dataset} ('metacli ls --dataset {dataset}' lists "
            "them)."
        )
    return algo, dataset


def preset_file(algo: str, dataset: str, index: Mapping[str, DatasetPresets]) -> Path | None:
    """The file ``--algo algo --dataset dataset`` runs, or None where the dataset's ``other`` sections apply.

    Raises SpecError for a dataset the index does not know, listing the pairs that have presets.
    """
    check_dataset(dataset, index)
    name = index[dataset].files.get(algo)
    return None if name is None else PRESETS_DIR / name


def resolve_preset(algo: str, dataset: str) -> tuple[dict[str, Any], str]:
    """The spec dict ``--algo algo --dataset dataset`` runs, and where it came from (for messages).

    The pair's preset file, read as it is; for an algorithm without one, the dataset's ``other``
    sections of the index with ``algorithm: {name: algo}`` (an unknown or mismatched name is then
    reported by validation, which lists the valid names).
    """
    index = preset_index()
    path = preset_file(algo, dataset, index)
    if path is not None:
        return read_yaml(path), f"the preset --algo {algo} --dataset {dataset} ({path})"
    names = ", ".join(index[dataset].files)
    source = (
        f"--algo {algo} --dataset {dataset} (no preset file: {dataset}'s model and data with the "
        f"algorithm's defaults; {dataset} has presets for {names})"
    )
    return {"algorithm": {"name": algo}, **copy.deepcopy(index[dataset].other)}, source


def preset(algo: str, dataset: str) -> dict[str, Any]:
    """The spec (as a plain dict) that ``--algo algo --dataset dataset`` runs (see :func:`resolve_preset`)."""
    return resolve_preset(algo, dataset)[0]


def deep_update(base: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``new`` into ``base`` recursively (mappings merge, everything else replaces)."""
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"algorithm.alpha=0.4"`` -> (["algorithm", "alpha"], 0.4); the value is parsed as YAML.

    The value goes through the spec files' loader (a duplicate key or an alias bomb is refused); a value
    that is not YAML at all (``a: b: c``) is taken as text.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(
            f"Override '{item}' is not of the form key.path=value, e.g. --set algorithm.alpha=0.4."
        )
    try:
        parts = key_parts(key)
    except ValueError as e:
        raise SpecError(f"Override '{item}': {e}.") from None
    try:
        return parts, yaml.load(raw, Loader=SpecLoader)
    except (YAMLRefusal, yaml.constructor.ConstructorError) as e:
        raise SpecError(yaml_message(e, raw, f"--set {item}")) from None
    except yaml.YAMLError:
        return parts, raw


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to the spec dict before validation."""
    for item in overrides:
        path, value = parse_override(item)
        set_path(data, path, value)
    return data


def set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``data[p0][p1]...[pn] = value``, creating mappings on the way."""
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"Cannot set '{'.'.join(path)}': '{part}' holds a value, not a section.")
        node = child
    node[path[-1]] = value


def format_validation_error(err: ValidationError, source: str) -> str:
    """One paragraph naming each bad field by its dotted path, what was wrong and what was given."""
    lines = [f"The run spec from {source} is not valid ({err.error_count()} problem(s)):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in error_path(e["loc"]))
        given = e.get("input")
        shown = "" if isinstance(given, dict) or e["type"] == "missing" else f" (given: {_SHORT.repr(given)})"
        hint = ""
        if e["type"] == "extra_forbidden":
            guess = closest_field(e["loc"])
            hint = f" Did you mean {guess}?" if guess else " Remove it or check its spelling."
        elif e["type"] == "union_tag_invalid":  # an unknown algorithm, dataset or model name
            tags = re.findall(r"'([^']+)'", str(e.get("ctx", {}).get("expected_tags", "")))
            hint = closest_hint(str(e.get("ctx", {}).get("tag", "")), tags)
        msg = pydantic_message(e["msg"])
        lines.append(f"  - {loc + ': ' if loc else ''}{msg}{shown}.{hint}")  # whole-spec checks: no path
    lines.append("Fix these fields in the spec file or with --set key.path=value.")
    return "\n".join(lines)


def pydantic_message(msg: str) -> str:
    """A pydantic error message to embed in a sentence: without pydantic's ``Value error, `` before our
    validators' own messages (which stand alone) and without a closing full stop."""
    return clause(msg.removeprefix("Value error, "))


_SHORT = reprlib.Repr()
"""Shows a given value in an error message, cut short (a huge list or text stays one line)."""
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60


def closest_hint(given: str, valid: list[str]) -> str:
    """`` Did you mean X?`` for the valid name nearest to ``given`` (by ``difflib``), else ``""``."""
    match = difflib.get_close_matches(given, valid, n=1, cutoff=0.6)
    return f" Did you mean {match[0]}?" if match else ""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, unions and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def section_names(section: str) -> list[str]:
    """The ``name`` values a union section (algorithm, model, data) accepts, in the union's order."""
    members = _models_in(RunSpec.model_fields[section].annotation)
    return [m.model_fields["name"].default for m in members]


def closest_field(loc: tuple[int | str, ...]) -> str | None:
    """The valid dotted field nearest to a misspelt one (``algorithm.inner_lr`` for ``algorithm.inner_lrr``).

    ``loc`` is pydantic's location, with the union tag after a union section (``algorithm.maml.x``); the
    model at that place is found by walking :class:`RunSpec`'s annotations, and the guess is the
    closest of its field names by ``difflib`` (None when nothing is close).
    """
    model: type[BaseModel] = RunSpec
    parts = [str(p) for p in loc if not str(p).startswith("function-after")]
    path: list[str] = []
    i = 0
    while i < len(parts) - 1:
        field = model.model_fields.get(parts[i])
        members = _models_in(field.annotation) if field is not None else []
        if not members:
            return None
        path.append(parts[i])
        if len(members) > 1:  # a discriminated union: the next part is the tag
            i += 1
            by_tag = {m.model_fields["name"].default: m for m in members if "name" in m.model_fields}
            if parts[i] not in by_tag:
                return None
            members = [by_tag[parts[i]]]
        model = members[0]
        i += 1
    match = difflib.get_close_matches(parts[-1], list(model.model_fields), n=1, cutoff=0.6)
    return ".".join([*path, match[0]]) if match else None


def error_path(loc: tuple[int | str, ...]) -> list[int | str]:
    """A pydantic error location as the user's dotted path: drop the union tag (``algorithm.maml.alpha``)."""
    parts = [p for p in loc if not str(p).startswith("function-after")]
    if len(parts) >= 2 and parts[0] in UNION_SECTIONS:  # pydantic puts the tag after the section
        del parts[1]
    return parts


def validate(data: dict[str, Any], source: str) -> RunSpec:
    """Validate a spec dict, turning pydantic's errors into one readable :class:`SpecError`."""
    data.setdefault("schema_version", SCHEMA_VERSION)
    try:
        return RunSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, source)) from None


def load_spec(
    path: Path | None = None,
    overrides: Iterable[str] = (),
    algo: str | None = None,
    dataset: str | None = None,
) -> tuple[RunSpec, dict[str, Any]]:
    """Build a :class:`RunSpec` from a file, or a preset (``algo``, ``dataset``), or the default.

    Returns the validated spec and the raw dict it came from (grids are expanded from the dict).
    With neither a path nor a preset, the default: the MAML sinusoid preset shortened by ``DEMO``.
    """
    if path is not None and (algo or dataset):
        raise SpecError(
            "Give either a spec file or --algo/--dataset, not both (use --set to change a field)."
        )
    if path is not None:
        data, source = read_yaml(path), str(path)
    elif algo is None and dataset is None:
        data = apply_overrides(preset("maml", "sinusoid"), DEMO)
        source = "the embedded default (MAML on sinusoid, shortened)"
    else:
        data, source = resolve_preset(*preset_pair(algo, dataset))
    apply_overrides(data, overrides)
    return validate(copy.deepcopy(data), source), data


def grid_points(spec_dict: dict[str, Any], grid: dict[str, list[Any]]) -> list[tuple[str, RunSpec]]:
    """Every point of a grid as (point name, validated spec); all points are validated up front."""
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], list) or not grid[k]:
            raise SpecError(f"grid.{k} must be a non-empty list of values, e.g. grid: {{{k}: [1, 2]}}.")
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        data = copy.deepcopy(spec_dict)
        data.pop("grid", None)
        for k, v in zip(keys, values, strict=True):
            set_path(data, k.split("."), v)
        name = "_".join(
            f"{k.split('.')[-1]}={point_label(v, grid[k])}" for k, v in zip(keys, values, strict=True)
        )
        points.append((name, validate(data, f"grid point {name}")))
    return points


def point_label(value: Any, values: list[Any]) -> str:
    """A grid value as it appears in a point's folder name.

    A section (a mapping) is named by its ``name`` when that tells the key's values apart, else by
    its fields: ``{name: sinusoid, shots: 10}`` -> ``name-sinusoid-shots-10``.
    """
    if not isinstance(value, dict):
        return str(value)
    names = [v.get("name") if isinstance(v, dict) else v for v in values]
    if "name" in value and names.count(value["name"]) == 1:
        return str(value["name"])
    return "-".join(f"{k}-{v}" for k, v in value.items())


def set_syntax(value: Any) -> str:
    """A value as a user types it in a spec or after ``--set field=``: YAML flow style, one line.

    ``(200,)`` reads ``[200]``, ``None`` ``null``, ``True`` ``true``; text that YAML would read as
    something else (``'1e-3'``, ``'null'``) keeps its quotes.
    """
    text = yaml.safe_dump(
        to_jsonable_python(value), default_flow_style=True, width=float("inf"), sort_keys=False
    )
    return text.removesuffix("...\n").strip()  # a lone scalar is dumped as a document: "200\n...\n"


def spec_to_yaml(spec: RunSpec) -> str:
    """The resolved spec as YAML (what is written to ``spec.yaml``)."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude=set(spec.unused_sections)), sort_keys=False)
