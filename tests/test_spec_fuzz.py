"""Property: spec loading turns any YAML document and any ``--set`` override into a spec or a clean error.

Random documents mix the real section and field names (so many reach deep validation) with random keys
and values of every YAML type; random text also covers what does not parse. Anything but a validated
:class:`RunSpec` or a :class:`MetacliError` (the CLI's clean exit 2) is a bug: a traceback for a user.
"""

from __future__ import annotations

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
