"""Property: spec loading turns any YAML document and any ``--set`` override into a spec or a clean error.

Random documents mix the real section and field names (so many reach deep validation) with random keys
and values of every YAML type; random text also covers what does not parse. Anything but a validated
:class:`RunSpec` or a :class:`MetacliError` (the CLI's clean exit 2) is a bug: a traceback for a user.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is a dev extra: pip install -e '.[dev]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from metacli.errors import MetacliError  # noqa: E402
from metacli.spec import RunSpec, load_spec  # noqa: E402

SECTIONS = ["algorithm", "model", "data", "train", "eval", "online", "grid", "published"]
FIELDS = [
    "name", "alpha", "inner_lr", "inner_steps", "outer_lr", "K", "hidden", "filters", "ways", "shots",
    "queries", "meta_batch", "meta_iters", "tasks", "rounds", "seed", "threads", "device", "dtype",
    "schema_version", "executor", "val_every", "metric", "value", "when", "reg", "cg_steps",
]  # fmt: skip
NAMES = [
    "maml",
    "moml",
    "anil",
    "memory_reduced",
    "sinusoid",
    "omniglot",
    "smnist",
    "mlp",
    "conv4",
    "cifar_fs",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NAMES),
    st.text(max_size=8),
)
keys = st.one_of(st.sampled_from(SECTIONS + FIELDS), st.text(min_size=1, max_size=6))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
documents = st.dictionaries(st.sampled_from(SECTIONS + ["seed", "threads", "dtype"]), values, max_size=6)


def loads_cleanly(**kwargs: Any) -> None:
    try:
        spec, _ = load_spec(**kwargs)
    except MetacliError:
        return
    assert isinstance(spec, RunSpec)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_yaml_document_is_a_spec_or_a_clean_error(doc: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(doc))
        loads_cleanly(path=path)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_text_file_is_a_spec_or_a_clean_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(text, encoding="utf-8")
        loads_cleanly(path=path)


dotted = st.lists(st.one_of(st.sampled_from(SECTIONS + FIELDS), st.text(max_size=4)), min_size=1, max_size=3)
REAL = ["algorithm.alpha", "algorithm.inner_steps", "train.meta_batch", "train.meta_iters", "eval.tasks",
        "data.shots", "data.queries", "seed", "model.hidden", "eval.inner_steps", "threads"]  # fmt: skip
numbers = st.one_of(st.integers(-3, 50), st.floats(-1.0, 10.0), st.lists(st.integers(0, 12), max_size=3))
random_item = st.tuples(
    dotted, st.one_of(st.text(max_size=10), values.map(lambda v: yaml.safe_dump(v).strip()))
)
real_item = st.tuples(
    st.sampled_from(REAL).map(lambda k: k.split(".")), numbers.map(lambda v: yaml.safe_dump(v))
)
overrides = st.lists(
    st.one_of(random_item, real_item).map(lambda kv: ".".join(kv[0]) + "=" + kv[1].strip()), max_size=4
)


@settings(max_examples=300, deadline=None)
@given(overrides, st.sampled_from([("maml", "sinusoid"), ("moml", "smnist"), ("memory_reduced", "omniglot")]))
def test_any_set_overrides_give_a_spec_or_a_clean_error(items: list[str], preset: tuple[str, str]) -> None:
    loads_cleanly(overrides=items, algo=preset[0], dataset=preset[1])


# Property: any value of any type for any known field is a spec or a SpecError (never another exception)


def known_fields() -> list[tuple[str, str, str, str | None, str]]:
    """(algo, dataset, section, section's name, field) for every field of every config a spec can hold.

    Union sections (algorithm, model, data) list each member's fields, with a preset it belongs to, so
    that the value reaches that member's validators rather than a name mismatch.
    """
    from metacli.engine.config.algorithms import ONLINE_ALGORITHM_NAMES
    from metacli.engine.config.data import ONLINE_DATASET_NAMES
    from metacli.spec import _models_in

    def preset_for(section: str, name: str | None) -> tuple[str, str]:
        if section == "algorithm" and name is not None:
            return name, "smnist" if name in ONLINE_ALGORITHM_NAMES else "sinusoid"
        if section == "data" and name is not None:
            return ("moml" if name in ONLINE_DATASET_NAMES else "maml"), name
        if section == "online":
            return "moml", "smnist"
        return "maml", "sinusoid" if name in (None, "mlp") else "miniimagenet"

    rows: list[tuple[str, str, str, str | None, str]] = []
    for section, field in RunSpec.model_fields.items():
        members = _models_in(field.annotation)
        if not members:
            rows.append((*preset_for(section, None), "", None, section))
        for member in members:
            name = member.model_fields["name"].default if "name" in member.model_fields else None
            algo, dataset = preset_for(section, name)
            rows += [(algo, dataset, section, name, f) for f in member.model_fields]
    return rows


FIELD_ROWS = known_fields()
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, 1, -1, 2, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64, 2**70, -(2**70)]),
    st.floats(),
    st.sampled_from([1e-300, 1e300, 5e-324, 1.7976931348623157e308, -0.0]),
    st.text(max_size=12),
    st.sampled_from(["auto", "cuda:0", "cuda:-1", "1e-3", "", "\x00", "maml", "mlp", "sinusoid", "a..b"]),
)
any_values = st.one_of(leaves, st.lists(leaves, max_size=4))


def with_field(row: tuple[str, str, str, str | None, str], value: Any) -> dict[str, Any]:
    """The preset of ``row`` with its field set to ``value`` (a published entry for published's fields)."""
    from metacli.spec import preset

    algo, dataset, section, name, field = row
    data = preset(algo, dataset)
    if section == "published":
        data["published"] = [{"metric": "query_loss@1", "value": 0.5, "source": "x", field: value}]
    elif section:
        if name is not None and data.get(section, {}).get("name") != name:
            data[section] = {"name": name}
        data.setdefault(section, {})[field] = value
    else:
        data[field] = value
    return data


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIELD_ROWS), any_values)
def test_any_value_for_any_known_field_is_a_spec_or_a_spec_error(
    row: tuple[str, str, str, str | None, str], value: Any
) -> None:
    """Through validate (the dict) and load_spec (the same dict as a YAML file): only SpecError may escape."""
    from metacli.errors import SpecError
    from metacli.spec import validate

    data = with_field(row, value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        for load in (lambda: validate(data, "fuzz"), lambda: load_spec(path)[0]):
            try:
                spec = load()
            except SpecError:
                continue
            assert isinstance(spec, RunSpec)


NASTY = [None, True, False, 0, -1, 2**31, 2**70, math.nan, math.inf, -0.5, 1e300, "x", "", "\x00", [], [True],
         ["x"], [2**70], [math.nan], {}, {"name": 1}]  # fmt: skip


def test_every_known_field_takes_every_kind_of_bad_value_cleanly() -> None:
    """The same property, exhaustively over the fields (random draws visit each field only a few times)."""
    from metacli.errors import SpecError
    from metacli.spec import validate

    for row in FIELD_ROWS:
        for value in NASTY:
            try:
                assert isinstance(validate(with_field(row, value), "sweep"), RunSpec)
            except SpecError:
                pass


def test_the_property_covers_every_section_and_union_member() -> None:
    """The field list is built from the models: a new field or config is fuzzed without editing this file."""
    sections = {row[2] or row[4] for row in FIELD_ROWS}
    assert set(RunSpec.model_fields) <= sections | {""}
    named = {row[3] for row in FIELD_ROWS if row[3] is not None}
    assert {"maml", "memory_reduced", "toe", "omniglot", "smnist", "conv4", "resnet12", "mlp"} <= named
    assert len(FIELD_ROWS) > 150
