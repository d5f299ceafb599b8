"""Every file in configs/ validates, opens with its command, and the registries match their unions."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from metacli.engine.algorithms import ALGORITHMS, AlgorithmConfig
from metacli.engine.data import DATASETS, DataConfig
from metacli.engine.models import MODELS, ModelConfig
from metacli.spec import load_spec

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").rglob("*.yaml"))


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_config_validates_and_documents_its_command(path: Path) -> None:
    spec, _ = load_spec(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# metacli train") and path.name in first


def preset_algorithm(path: Path) -> str | None:
    """The preset a config must equal: ``<algo>.yaml``, or the 5-way 1-shot ``5way_1shot_<algo>.yaml``."""
    if path.stem in ALGORITHMS:
        return path.stem
    prefix = "5way_1shot_"
    return path.stem[len(prefix) :] if path.stem.startswith(prefix) else None


PER_METHOD = [p for p in CONFIGS if preset_algorithm(p) is not None]


def test_every_dataset_folder_has_preset_configs() -> None:
    assert {p.parent.name for p in PER_METHOD} == {"sinusoid", "smnist", "omniglot", "miniimagenet"}


@pytest.mark.parametrize("path", PER_METHOD, ids=[f"{p.parent.name}/{p.name}" for p in PER_METHOD])
def test_per_method_configs_equal_their_presets(path: Path) -> None:
    """configs/<dataset>/<algo>.yaml (or 5way_1shot_<algo>.yaml) is what --algo A --dataset D runs."""
    from_file, _ = load_spec(path)
    preset, _ = load_spec(algo=preset_algorithm(path), dataset=path.parent.name)
    # a config may add the published numbers its comparison tables print; presets carry none
    assert from_file.model_copy(update={"published": ()}) == preset


def union_names(union: object) -> set[str]:
    members = typing.get_args(typing.get_args(union)[0])
    return {m.model_fields["name"].default for m in members}


def test_registries_and_unions_name_the_same_things() -> None:
    assert union_names(AlgorithmConfig) == set(ALGORITHMS)
    assert union_names(DataConfig) == set(DATASETS)
    assert union_names(ModelConfig) == set(MODELS)
