"""Run-spec loading: presets, overrides, validation messages, grids."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metacli.errors import SpecError
from metacli.spec import RunSpec, grid_points, load_spec, parse_override, preset, spec_to_yaml, validate


def test_default_is_a_short_maml_sinusoid_demo() -> None:
    spec, _ = load_spec()
    assert (spec.algorithm.name, spec.data.name, spec.model.name) == ("maml", "sinusoid", "mlp")
    assert spec.train.meta_iters == 2000
    full, _ = load_spec(algo="maml", dataset="sinusoid")
    assert full.train.meta_iters == 70_000


def test_override_is_parsed_as_yaml_and_applied_before_validation() -> None:
    spec, _ = load_spec(overrides=["algorithm.alpha=0.4", "train.meta_batch=3", "eval.inner_steps=[1, 5]"])
    assert spec.algorithm.alpha == 0.4 and spec.train.meta_batch == 3 and spec.eval.inner_steps == (1, 5)
    assert parse_override("a.b=true") == (["a", "b"], True)


def test_all_errors_are_reported_at_once_with_dotted_paths() -> None:
    with pytest.raises(SpecError) as e:
        load_spec(overrides=["algorithm.alpha=fast", "train.meta_batc=3"])
    msg = str(e.value)
    assert "algorithm.alpha:" in msg and "given: 'fast'" in msg
    assert "train.meta_batc" in msg and "Did you mean train.meta_batch?" in msg


@pytest.mark.parametrize(
    ("override", "guess"),
    [
        ("algorithm.alpah=0.1", "algorithm.alpha"),  # inside a union section (MAML's fields)
        ("data.shotz=3", "data.shots"),
        ("trian.meta_batch=2", "train"),  # a misspelt section
        ("eval.inner_step=[1]", "eval.inner_steps"),
    ],
)
def test_misspelt_keys_suggest_the_closest_valid_field(override: str, guess: str) -> None:
    with pytest.raises(SpecError, match=f"Did you mean {guess}\\?"):
        load_spec(overrides=[override])


def test_moml_fields_are_suggested_for_an_online_algorithm() -> None:
    with pytest.raises(SpecError, match="Did you mean algorithm.inner_lr\\?"):
        load_spec(algo="moml", dataset="smnist", overrides=["algorithm.inner_lrr=0.1"])


def test_unrelated_keys_get_no_guess() -> None:
    with pytest.raises(SpecError, match="Remove it or check its spelling") as e:
        load_spec(overrides=["algorithm.zzzz=1"])
    assert "Did you mean" not in str(e.value)


def test_unknown_algorithm_lists_the_valid_names() -> None:
    with pytest.raises(SpecError) as e:
        load_spec(overrides=["algorithm.name=mamll"])
    assert "'maml'" in str(e.value) and "'moml'" in str(e.value)


def test_protocol_mismatch_is_an_error() -> None:
    with pytest.raises(SpecError, match="online method"):
        load_spec(algo="moml", dataset="sinusoid")


def test_too_many_tasks_for_a_support_and_query_batch_is_an_error() -> None:
    assert load_spec(algo="moml", dataset="smnist", overrides=["data.tasks=2000"])[0].data.tasks == 2000
    with pytest.raises(SpecError, match="leaves 6 training images per task"):
        load_spec(algo="moml", dataset="smnist", overrides=["data.tasks=10000"])
    assert load_spec(algo="toe", dataset="smnist", overrides=["data.tasks=10000"])[0].data.tasks == 10000


def test_unknown_dataset_preset() -> None:
    with pytest.raises(SpecError, match="Unknown dataset 'imagenet'") as e:
        preset("maml", "imagenet")
    assert "miniimagenet: maml, fomaml" in str(e.value) and "smnist: moml" in str(e.value)  # the valid pairs


def test_an_algorithm_without_a_preset_file_names_the_datasets_presets() -> None:
    """``--algo itd_bio --dataset sinusoid``: the dataset's model and data, the algorithm's defaults."""
    spec, raw = load_spec(algo="itd_bio", dataset="sinusoid")
    assert raw["algorithm"] == {"name": "itd_bio"} and spec.model.name == "mlp"
    with pytest.raises(SpecError, match="Input tag 'mamlx'") as e:
        load_spec(algo="mamlx", dataset="sinusoid")
    assert "no preset file" in str(e.value) and "sinusoid has presets for maml, fomaml" in str(e.value)


def test_spec_is_frozen_and_round_trips_through_yaml() -> None:
    import yaml

    spec, _ = load_spec(algo="moml", dataset="smnist")
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen models
        spec.seed = 3  # type: ignore[misc]
    again = validate(yaml.safe_load(spec_to_yaml(spec)), "round trip")
    assert again == spec


def test_grid_expands_every_point_with_names() -> None:
    spec, raw = load_spec(
        algo="moml", dataset="smnist", overrides=["grid={algorithm.K: [10, 20], algorithm.alpha: [1, 5]}"]
    )
    points = grid_points(raw, spec.grid or {})
    assert [n for n, _ in points] == ["K=10_alpha=1", "K=10_alpha=5", "K=20_alpha=1", "K=20_alpha=5"]
    assert [(p.algorithm.K, p.algorithm.alpha) for _, p in points] == [(10, 1), (10, 5), (20, 1), (20, 5)]
    assert all(p.grid is None for _, p in points)


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm:\n  name: maml\n alpha: [1\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_spec(bad)


def test_schema_version_is_checked() -> None:
    with pytest.raises(SpecError, match="schema_version"):
        validate({**preset("maml", "sinusoid"), "schema_version": 2}, "test")
    assert RunSpec.model_fields["schema_version"].description


@pytest.mark.parametrize(
    ("algo", "dataset", "override", "section"),
    [
        ("moml", "smnist", "train.meta_batch=4", "train"),
        ("moml", "smnist", "eval.tasks=10", "eval"),
        ("maml", "sinusoid", "online.rounds=3", "online"),
    ],
)
def test_a_section_the_protocol_ignores_is_refused(
    algo: str, dataset: str, override: str, section: str
) -> None:
    with pytest.raises(SpecError, match=f"the {section}: section does not apply to '{algo}'"):
        load_spec(algo=algo, dataset=dataset, overrides=[override])


def test_unused_sections_at_their_defaults_are_accepted_and_left_out_of_spec_yaml() -> None:
    spec, _ = load_spec(algo="moml", dataset="smnist", overrides=["train.meta_batch=25"])  # the default
    text = spec_to_yaml(spec)
    assert "online:" in text and "train:" not in text and "eval:" not in text
    few_shot = spec_to_yaml(load_spec(algo="maml", dataset="sinusoid")[0])
    assert "train:" in few_shot and "eval:" in few_shot and "online:" not in few_shot


@pytest.mark.parametrize(
    ("dataset", "ways", "smallest"),
    [("miniimagenet", 17, 16), ("omniglot", 689, 688), ("cifar_fs", 17, 16), ("fc100", 21, 20)],
)
def test_more_ways_than_the_smallest_split_is_refused_before_any_data(
    dataset: str, ways: int, smallest: int
) -> None:
    with pytest.raises(SpecError) as e:  # validation only: no data root is read
        load_spec(algo="maml", dataset=dataset, overrides=[f"data.ways={ways}"])
    msg = str(e.value)
    assert f"data: ways = {ways}" in msg and "Value error" not in msg and f"has {smallest} classes" in msg
    load_spec(algo="maml", dataset=dataset, overrides=[f"data.ways={smallest}"])  # the largest that fits


@pytest.mark.parametrize(
    ("algo", "old_fields", "said"),
    [
        ("maml", ["algorithm.rate=lslr"], "is spelled {name: lslr}"),
        ("meta_sgd", ["algorithm.rate=scalar"], "meta_sgd is selected by its name alone: drop adapt, rate"),
    ],
)
def test_an_old_spelling_that_disagrees_with_the_name_is_refused(
    algo: str, old_fields: list[str], said: str
) -> None:
    """Pre-issue-22 ``adapt`` / ``rate`` / ``curvature`` fields; a variant added since has no old spelling."""
    with pytest.raises(SpecError, match=re.escape(said)):
        load_spec(algo=algo, dataset="sinusoid", overrides=old_fields)


def test_an_old_spelling_that_agrees_with_the_name_is_dropped_with_a_warning() -> None:
    with pytest.warns(FutureWarning, match="agree with its name"):
        spec, _ = load_spec(
            algo="lslr", dataset="sinusoid", overrides=["algorithm.adapt=all", "algorithm.rate=lslr"]
        )
    assert spec.algorithm.name == "lslr"


def test_a_damaged_preset_index_is_one_sentence_per_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches pydantic's raw multi-line dump (with its "Value error, " and URLs) as the message."""
    from metacli import spec as spec_module

    index = tmp_path / "presets.yaml"
    index.write_text("sinusoid:\n  files: {maml: 3}\n")
    monkeypatch.setattr(spec_module, "PRESET_INDEX", index)
    with pytest.raises(SpecError) as info:
        spec_module.preset_index()
    msg = str(info.value)
    assert msg.startswith(f"The preset index {index} is damaged: sinusoid.other: Field required; ")
    assert "sinusoid.files.maml: Input should be a valid string. Restore it" in msg
    assert "\n" not in msg and "errors.pydantic.dev" not in msg and ".." not in msg
