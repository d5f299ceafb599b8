"""Short legend labels for runs: the algorithm, and the few spec values that tell the runs apart.

A grid point's folder is named after every field of its grid sections
(``algorithm=name-maml-alpha-0.001-inner_steps-1_data=name-sinusoid-shots-10-queries-10``): too long for
a legend or a title, and the same for fields that do not differ. A label instead names the algorithm as
its paper does and only what differs (``MAML, alpha=0.001, shots=10``):

* fields of the ``algorithm`` section that differ between runs *of that algorithm* (MAML's alpha is not
  shown beside an ANIL run when only MAML's varies);
* fields of the other sections that differ between any runs (``data.shots``, ``seed``);
* of fields that group the runs in exactly the same way (``data.shots`` and ``data.queries`` in the
  sinusoid grid) only the first, in the spec's order.

Imports neither torch nor matplotlib: :mod:`metacli.plot` and :mod:`metacli.plot_fewshot` both use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

METHOD_NAMES = {
    "moml": "MOML", "bmoml": "B-MOML", "ftml": "FTML", "mogd": "MOGD", "toe": "TOE", "fs": "FS",
    "maml": "MAML", "fomaml": "FOMAML", "reptile": "Reptile", "lslr": "LSLR", "anil": "ANIL", "boil": "BOIL",
    "metacurvature": "Meta-Curvature", "maml_enhanced": "MAML Enhanced", "sparse_maml": "Sparse-MAML",
    "sparse_relu_maml": "sparse-ReLU-MAML", "memory_reduced": "memory-reduced", "itd_bio": "ITD-BiO",
    "meta_sgd": "Meta-SGD",
}  # fmt: skip
"""How legends name each algorithm (``algorithm.name`` itself for any other)."""
MAX_LABEL_FIELDS = 4
"""At most this many spec values in a label (the S-MNIST MOML grid varies four fields)."""
UNLABELLED_FIELDS = ("name", "published", "grid")
"""Top-level spec keys that describe a run without changing it: never part of a label."""


LabelledRun = tuple[str, str, Mapping[str, Any]]
"""What a label is made from: a run's name (its folder under the plotted one), algorithm and spec."""


def shown(value: Any) -> str:
    """A spec value as a user writes it in YAML or ``--set``: ``0.01``, ``true``, ``[40, 40]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    return str(value)


def flat_fields(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Every setting of a spec, dotted field -> shown value (``data.shots`` -> ``5``), in the spec's order."""
    out: dict[str, str] = {}
    for key, value in spec.items():
        if not prefix and key in UNLABELLED_FIELDS:
            continue
        if isinstance(value, Mapping):
            out.update(flat_fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = shown(value)
    return out


def _split(values: Sequence[str | None]) -> tuple[int, ...]:
    """How a field's values group the runs: ``(0, 0, 1)`` for ``(5, 5, 10)``."""
    first: dict[str | None, int] = {}
    return tuple(first.setdefault(v, len(first)) for v in values)


def varying(fields: Sequence[dict[str, str]], wanted: Callable[[str], bool]) -> list[str]:
    """The wanted fields whose value differs between runs, in the spec's order; a field that groups the
    runs exactly as an earlier one does is left out (``data.queries`` beside ``data.shots``)."""
    chosen, splits = [], set()
    for key in dict.fromkeys(k for f in fields for k in f if wanted(k)):
        split = _split([f.get(key) for f in fields])
        if max(split) > 0 and split not in splits:
            splits.add(split)
            chosen.append(key)
    return chosen


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted field by its last part (``alpha``), or whole where two chosen fields share that part."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (tail if last.count(tail) == 1 else k) for k, tail in zip(keys, last, strict=True)}


def _own_field(key: str) -> bool:
    """A field of the algorithm section other than its name."""
    return key.startswith("algorithm.") and key != "algorithm.name"


def label_fields(all_runs: Sequence[LabelledRun]) -> dict[str, list[str]]:
    """The fields named in each run's label (see the module docstring), at most :data:`MAX_LABEL_FIELDS`."""
    flats = {name: flat_fields(spec) for name, _, spec in all_runs}
    shared = varying(list(flats.values()), lambda k: not k.startswith("algorithm."))
    by_method: dict[str, list[str]] = {}
    for name, method, _ in all_runs:
        by_method.setdefault(method, []).append(name)
    chosen = {}
    for names in by_method.values():
        own = varying([flats[n] for n in names], _own_field)
        chosen.update({n: [k for k in own + shared if k in flats[n]][:MAX_LABEL_FIELDS] for n in names})
    return chosen


def run_labels(all_runs: Sequence[LabelledRun]) -> dict[str, str]:
    """Each run's label by name: ``ALGORITHM, field=value, ...``; its name added where two are equal."""
    chosen = label_fields(all_runs)
    short = short_names(list(dict.fromkeys(k for keys in chosen.values() for k in keys)))
    labels = {}
    for name, method, spec in all_runs:
        values = flat_fields(spec)
        parts = [f"{short[k]}={values[k]}" for k in chosen[name]]
        labels[name] = ", ".join([METHOD_NAMES.get(method, method), *parts])
    texts = list(labels.values())
    return {n: (f"{t} ({n})" if texts.count(t) > 1 else t) for n, t in labels.items()}
