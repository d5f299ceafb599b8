"""Every file in configs/ validates and opens with the command that runs it; the preset index names files
that exist, and ``--algo A --dataset D`` runs exactly its file; the registries match their unions."""

from __future__ import annotations

import shlex
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from metacli.engine.algorithms import ALGORITHMS, AlgorithmConfig
from metacli.engine.config.algorithms import ONLINE_ALGORITHM_NAMES
from metacli.engine.config.data import ONLINE_DATASET_NAMES
from metacli.engine.config.models import MLPConfig
from metacli.engine.config.registry import members, name_of, resolve
from metacli.engine.data import DATASETS, DataConfig
from metacli.engine.models import MODELS, ModelConfig
from metacli.spec import PRESET_INDEX, PRESETS_DIR, load_spec, preset_index
from metacli.yamlfile import read_yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))
INDEX = preset_index()
PRESETS = [(algo, dataset, name) for dataset, entry in INDEX.items() for algo, name in entry.files.items()]


def test_the_package_reads_the_presets_from_configs() -> None:
    """``metacli/presets`` is the repository's ``configs/`` (one copy, shipped as package data)."""
    assert PRESETS_DIR.resolve() == (ROOT / "configs").resolve()
    assert PRESET_INDEX.parent == PRESETS_DIR


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_config_validates_and_its_header_command_runs_it(path: Path) -> None:
    """The first line is ``# metacli train <this file> ...``, run from the repository's root."""
    load_spec(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# "), first
    command = shlex.split(first[2:])
    train = command[: command.index("&&")] if "&&" in command else command
    assert train[:2] == ["metacli", "train"], first
    assert (ROOT / train[2]).resolve() == path.resolve(), first


def test_every_dataset_has_presets_and_every_dataset_folder_is_indexed() -> None:
    assert set(INDEX) == set(DATASETS) == {p.parent.name for p in CONFIGS}


@pytest.mark.parametrize(("algo", "dataset", "name"), PRESETS, ids=[f"{a}/{d}" for a, d, _ in PRESETS])
def test_a_preset_runs_exactly_its_file(algo: str, dataset: str, name: str) -> None:
    """``--algo A --dataset D`` is the file the index names for it, field for field, published numbers too."""
    path = PRESETS_DIR / name
    assert path.parent.name == dataset and path.resolve() in {p.resolve() for p in CONFIGS}
    from_preset, raw = load_spec(algo=algo, dataset=dataset)
    assert raw == read_yaml(path)
    assert from_preset == load_spec(path)[0]
    assert (from_preset.algorithm.name, from_preset.data.name) == (algo, dataset)


@pytest.mark.parametrize("dataset", sorted(INDEX))
def test_every_algorithm_of_the_datasets_protocol_has_a_spec(dataset: str) -> None:
    """An algorithm without a preset file runs the dataset's ``other`` sections with its own defaults."""
    online = dataset in ONLINE_DATASET_NAMES
    for algo in sorted(ALGORITHMS):
        if (algo in ONLINE_ALGORITHM_NAMES) != online:
            continue
        spec, raw = load_spec(algo=algo, dataset=dataset)
        assert (spec.algorithm.name, spec.data.name) == (algo, dataset)
        if algo not in INDEX[dataset].files:
            assert raw == {"algorithm": {"name": algo}, **INDEX[dataset].other}


def union_names(union: object) -> set[str]:
    return {name_of(m) for m in members(union)}


def test_registries_and_unions_name_the_same_things() -> None:
    assert union_names(AlgorithmConfig) == set(ALGORITHMS)
    assert union_names(DataConfig) == set(DATASETS)
    assert union_names(ModelConfig) == set(MODELS)


@pytest.mark.parametrize("union", [AlgorithmConfig, DataConfig, ModelConfig])
def test_each_config_names_its_implementation(union: object) -> None:
    """The registries are the unions' ``factory`` paths resolved: each in its section's package."""
    package = {AlgorithmConfig: "algorithms", DataConfig: "data", ModelConfig: "models"}[union]
    registry = {**ALGORITHMS, **DATASETS, **MODELS}
    for config in members(union):
        module = config.factory.partition(":")[0]
        assert module.startswith(f"metacli.engine.{package}."), config.factory
        assert registry[name_of(config)] is resolve(config.factory)


def test_a_union_of_configs_that_name_no_implementation_is_refused() -> None:
    class Plain(BaseModel):
        name: typing.Literal["plain"] = "plain"

    with pytest.raises(TypeError, match="Named"):
        members(typing.Annotated[Plain | MLPConfig, Field(discriminator="name")])


# The initialisation of each reference code (issue 23): the MAML TensorFlow code's for MAML and the methods
# built on its code (Meta-Curvature's fork, learn2learn's ANIL); Xavier-uniform throughout for MAML++ and
# Reptile (TF's default); PyTorch's for the torchmeta-based codes (BOIL, Sparse-MAML).
REFERENCE_INIT = {
    **dict.fromkeys(("maml", "fomaml", "metacurvature", "maml_enhanced", "anil"), "maml"),
    **dict.fromkeys(("lslr", "reptile"), "xavier"),
    **dict.fromkeys(("boil", "sparse_maml", "sparse_relu_maml"), "torch"),
}
IMAGE_FAMILY = [
    p
    for p in CONFIGS
    if p.parent.name in ("omniglot", "miniimagenet") and read_yaml(p)["algorithm"]["name"] in REFERENCE_INIT
]


@pytest.mark.parametrize("path", IMAGE_FAMILY, ids=[f"{p.parent.name}/{p.name}" for p in IMAGE_FAMILY])
def test_an_image_preset_names_its_reference_codes_initialisation(path: Path) -> None:
    """Written in the file (not left to the default), and the scheme of the algorithm's reference code."""
    raw = read_yaml(path)
    assert raw["model"].get("init") == REFERENCE_INIT[raw["algorithm"]["name"]], path.name


def test_every_sinusoid_preset_takes_the_maml_codes_initialisation() -> None:
    """The MAML code's fully connected init (std 0.01, truncated) for every sinusoid run and the table."""
    files = sorted((ROOT / "configs" / "sinusoid").glob("*.yaml"))
    assert len(files) >= 10
    assert {p.name: read_yaml(p)["model"].get("init") for p in files} == {p.name: "maml" for p in files}


@pytest.mark.parametrize(
    "path", sorted(PRESETS_DIR.rglob("*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}"
)
def test_a_published_number_for_n_shots_is_shown_only_beside_n_shot_runs(path: Path) -> None:
    """Catches a published entry whose source names its shot count (``sinusoid 5-shot``) without a ``when``
    on ``data.shots``: `evaluate` printed Meta-SGD's 5-shot 0.90 beside a ``--set data.shots=10`` run."""
    import re

    for entry in read_yaml(path).get("published") or []:
        stated = re.search(r"(\d+)-shot", str(entry.get("source", "")))
        if stated is not None:
            assert (entry.get("when") or {}).get("data.shots") == int(stated.group(1)), (path.name, entry)
