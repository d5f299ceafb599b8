"""The few-shot figures at 1, 5, 10 and 24 runs, checked on what they draw (matplotlib's artists).

Runs are written by hand (spec.yaml and metrics.jsonl, as ``metacli train`` writes them), so each test
knows every value drawn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from metacli.labels import run_labels
from metacli.plot import OTHER_COLOUR
from metacli.plot_fewshot import figure_specs, line_figure, load_episodic, plot_episodic, sparsity_figure


def write_run(run: Path, algorithm: dict[str, Any], data: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """A few-shot run directory: its spec and its logged steps."""
    run.mkdir(parents=True)
    spec = {"schema_version": 1, "seed": 0, "algorithm": algorithm, "model": {"name": "mlp"}, "data": data}
    (run / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def losses(final: float, steps: tuple[int, ...] = (10, 20, 30)) -> list[dict[str, Any]]:
    """Logged steps whose query loss falls to ``final``, with a 1- and a 10-step validation loss."""
    return [
        {"step": s, "query_loss": final + (len(steps) - i), "val_loss@1": final + 1.0, "val_loss@10": final}
        for i, s in enumerate(steps, start=1)
    ]


def drawn_lines(fig: Figure) -> list[Line2D]:
    """The lines that carry data (not the empty legend-only ones)."""
    return [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) > 0]


def legend_texts(fig: Figure) -> list[str]:
    legend = fig.axes[0].get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def figures(folder: Path) -> dict[str, Figure | None]:
    """The meta-training and validation figures of every run under ``folder``."""
    all_runs = load_episodic(folder)
    labels = run_labels([(r.name, r.method, r.spec) for r in all_runs])
    return {stem: line_figure(all_runs, spec, labels) for stem, spec in figure_specs(all_runs)}


SINUSOID = {"name": "sinusoid", "shots": 5, "queries": 5}


def test_a_run_shorter_than_log_every_is_a_visible_point(tmp_path: Path) -> None:
    """Catches a one-point run drawn as a line without markers (an empty figure) on a fractional axis."""
    row = {"step": 3, "query_loss": 6.5, "mask_sparsity/body.0": 0.5, "mask_sparsity/head": 0.25}
    write_run(tmp_path / "runs" / "sparse", {"name": "sparse_maml", "alpha": 0.01}, SINUSOID, [row])
    fig = figures(tmp_path / "runs")["meta_train"]
    assert fig is not None
    (line,) = drawn_lines(fig)
    assert list(line.get_xdata()) == [3] and list(line.get_ydata()) == [6.5]
    assert line.get_marker() not in (None, "None", "", " ") and line.get_markersize() >= 3
    low, high = fig.axes[0].get_xlim()
    assert high - low >= 2 and all(float(t).is_integer() for t in fig.axes[0].get_xticks())
    (run,) = load_episodic(tmp_path / "runs")
    sparsity = sparsity_figure(run, "Sparse-MAML")
    assert sparsity is not None
    points = drawn_lines(sparsity)
    assert [list(line.get_ydata()) for line in points] == [[50.0], [25.0]]
    assert all(line.get_marker() not in (None, "None", "", " ") for line in points)


def test_a_long_run_is_drawn_without_markers(tmp_path: Path) -> None:
    write_run(tmp_path / "runs" / "maml", {"name": "maml"}, SINUSOID, losses(1.0, tuple(range(1, 101))))
    (line,) = drawn_lines(figures(tmp_path / "runs")["meta_train"])  # type: ignore[arg-type]
    assert len(line.get_xdata()) == 100 and line.get_marker() in (None, "None", "", " ")


def test_five_runs_are_named_by_their_algorithm_in_distinct_colours(tmp_path: Path) -> None:
    """Catches legends of folder names (``algorithm=anil_data=...``) and colours shared by two runs."""
    names = ["maml", "fomaml", "anil", "sparse_maml", "lslr"]
    for i, name in enumerate(names):
        write_run(tmp_path / "grid" / f"algorithm={name}_data=sinusoid", {"name": name}, SINUSOID, losses(i))
    fig = figures(tmp_path / "grid")["meta_train"]
    assert fig is not None
    assert legend_texts(fig) == ["ANIL", "FOMAML", "LSLR", "MAML", "Sparse-MAML"]  # in folder-name order
    lines = drawn_lines(fig)
    assert len(lines) == 5 and len({to_hex(line.get_color()) for line in lines}) == 5
    assert all(len(line.get_xdata()) == 3 and line.get_marker() not in (None, "None") for line in lines)


def test_a_grid_is_labelled_by_the_values_that_differ(tmp_path: Path) -> None:
    """Catches long grid names in legends and titles: MAML runs differ by alpha and shots (queries with
    them), ANIL's only by shots; every label is short and unique."""
    for shots in (5, 10):
        data = {"name": "sinusoid", "shots": shots, "queries": shots}
        for alpha in (0.01, 0.001):
            point = f"algorithm=name-maml-alpha-{alpha}_data=name-sinusoid-shots-{shots}-queries-{shots}"
            write_run(tmp_path / "grid" / point, {"name": "maml", "alpha": alpha}, data, losses(alpha))
        anil_point = f"algorithm=anil_data=name-sinusoid-shots-{shots}-queries-{shots}"
        write_run(tmp_path / "grid" / anil_point, {"name": "anil", "alpha": 0.01}, data, losses(shots))
        row = {"step": 5, "query_loss": 1.0, "mask_sparsity/head": 0.3}
        write_run(tmp_path / "grid" / f"sparse_{shots}", {"name": "sparse_maml"}, data, [row])
    all_runs = load_episodic(tmp_path / "grid")
    labels = run_labels([(r.name, r.method, r.spec) for r in all_runs])
    assert sorted(labels.values()) == sorted(
        ["ANIL, shots=5", "ANIL, shots=10", "MAML, alpha=0.01, shots=5", "MAML, alpha=0.001, shots=5",
         "MAML, alpha=0.01, shots=10", "MAML, alpha=0.001, shots=10", "Sparse-MAML, shots=5",
         "Sparse-MAML, shots=10"]
    )  # fmt: skip
    sparse = next(r for r in all_runs if r.name == "sparse_10")
    fig = sparsity_figure(sparse, labels[sparse.name])
    assert fig is not None and fig.axes[0].get_title() == "Sparse-MAML, shots=10: per-layer sparsity"


def test_ten_runs_keep_ten_colours_and_a_legend_outside_the_axes(tmp_path: Path) -> None:
    for i in range(10):
        write_run(tmp_path / "grid" / f"p{i}", {"name": "maml", "alpha": 0.1 * (i + 1)}, SINUSOID, losses(i))
    fig = figures(tmp_path / "grid")["meta_train"]
    assert fig is not None
    assert len({to_hex(line.get_color()) for line in drawn_lines(fig)}) == 10
    texts = legend_texts(fig)
    assert len(texts) == 10 and all(t.startswith("MAML, alpha=") for t in texts)
    legend = fig.axes[0].get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 > fig.axes[0].bbox.x1  # right of the axes


def test_many_runs_name_only_the_best_and_the_worst(tmp_path: Path) -> None:
    """Catches a 24-entry legend over the axes: the best and worst run by final value are named, the 22
    others grey under one entry, the legend below the axes; validation at each run's largest step count."""
    for i in range(24):
        write_run(
            tmp_path / "grid" / f"p{i:02d}", {"name": "maml", "alpha": i + 1}, SINUSOID, losses(i + 1.0)
        )
    drawn = figures(tmp_path / "grid")
    fig = drawn["meta_train"]
    assert fig is not None
    assert legend_texts(fig) == ["other runs (22)", "MAML, alpha=1, best", "MAML, alpha=24, worst"]
    lines = drawn_lines(fig)
    grey = [line for line in lines if to_hex(line.get_color()) == OTHER_COLOUR]
    assert len(lines) == 24 and len(grey) == 22
    best = next(line for line in lines if line.get_label() == "MAML, alpha=1, best")
    assert best.get_ydata()[-1] == pytest.approx(1.0)  # the lowest final query loss
    legend = fig.axes[0].get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().y1 < fig.axes[0].bbox.y0  # under the axes
    assert fig.axes[0].get_title() == "Meta-training, 24 runs"
    validation = drawn["validation"]
    assert validation is not None and validation.axes[0].get_title() == "Validation, 24 runs (10 steps)"
    assert len(drawn_lines(validation)) == 24 and len(legend_texts(validation)) == 3


def test_plot_writes_the_labelled_figures(tmp_path: Path) -> None:
    """The files themselves: the SVG of meta_train names the algorithms, not the folders."""
    for name in ("maml", "anil"):
        write_run(tmp_path / "runs" / f"algorithm={name}_data=x", {"name": name}, SINUSOID, losses(1.0))
    written = plot_episodic(tmp_path / "runs", tmp_path / "out")
    assert sorted(p.name for p in written) == [
        "meta_train.png",
        "meta_train.svg",
        "validation.png",
        "validation.svg",
    ]
    svg = (tmp_path / "out" / "meta_train.svg").read_text()
    assert "ANIL" in svg and "MAML" in svg and "algorithm=" not in svg


def test_every_algorithm_has_a_legend_name() -> None:
    """Catches an algorithm added to the spec (Meta-SGD was) whose legend falls back to its YAML name."""
    from metacli.labels import METHOD_NAMES
    from metacli.spec import section_names

    assert sorted(set(section_names("algorithm")) - set(METHOD_NAMES)) == []
