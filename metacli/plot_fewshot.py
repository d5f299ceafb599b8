"""Figures of few-shot (episodic) runs: meta-training and validation curves, Sparse-MAML's sparsity.

Reads only ``spec.yaml`` and ``metrics.jsonl`` of every episodic run under a folder and writes, under
``out``::

    meta_train.png/.svg      meta-training query loss (or accuracy) against the meta-step, one line per run
    validation.png/.svg      validation accuracy (or loss) on the fixed validation tasks against the step
    sparsity_<run>.png/.svg  for each Sparse-MAML run: the fraction of each layer's parameters whose mask
                             stops adaptation, against the step (von Oswald et al. 2021, Figure 1)

Readable at one run and at a 24-run grid:

* A run is named by its algorithm and, where the runs differ, by the few spec values that tell it apart
  (``MAML, alpha=0.001, shots=10``), not by its folder: a grid point's folder name spells out every field
  of its grid sections (:func:`metacli.labels.run_labels`).
* Up to :data:`MAX_FEW` runs, each has its own colour (matplotlib's ten-colour cycle) and legend entry.
  Beyond, the figure switches to the many-runs view of the online figures (:mod:`metacli.plot`): the best
  and the worst run by final value in colour and named, every other run a thin grey line under one entry
  "other runs (k)", the legend under the axes; of several adaptation-step counts only the largest is drawn.
* A curve of at most :data:`metacli.plot.FEW_POINTS` logged points has a marker at each, so that the
  single point of a run shorter than ``train.log_every`` is visible.
* Losses spanning more than :data:`metacli.plot.LOG_RANGE` (a diverging run) are drawn on a log axis.

Accuracies are in percent. Built on :class:`matplotlib.figure.Figure` with the styling of
:mod:`metacli.plot`. A step line whose step or a value is not a number is left out with one warning per
file (:func:`metacli.plot.read_indexed`); damage to a whole run is reported by the online reader, which
``metacli plot`` runs after this one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from metacli.labels import run_labels
from metacli.plot import (
    LINESTYLES,
    OTHER_COLOUR,
    STYLE,
    Curve,
    curve_of,
    log_axis_if_wide,
    make_out_dir,
    marker_style,
    place_legend,
    read_indexed,
    save_figures,
    whole_step_axis,
)
from metacli.runread import algorithm_name, named_runs

SPARSITY = "mask_sparsity/"
MAX_FEW = 10
"""Above this many runs a figure shows the many-runs view (ten colours tell at most ten lines apart)."""
RUN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
"""matplotlib's ten-colour cycle ("tab10"), spelled out: a run keeps its colour in every figure."""


@dataclass(frozen=True)
class EpisodicCurves:
    """The per-step series of one few-shot run."""

    name: str
    method: str
    series: dict[str, Curve]
    spec: dict[str, Any] = field(default_factory=dict)
    """Its spec.yaml, from which its legend label is made."""


def read_episodic(run_dir: Path, name: str) -> EpisodicCurves | None:
    """The per-step series of one run, or None for a run that logged no steps (an online run) or that
    cannot be read (damaged: reported by :func:`metacli.plot.load_runs`)."""
    read = read_indexed(run_dir, "step", lambda key: True, owner=False)  # every value is drawn
    if read is None or not read[1]:
        return None
    spec, rows = read
    # the rows' "step" key plays the part of the online "round" for the shared reader
    renamed = [{**r, "round": r["step"]} for r in rows]
    keys = {k for r in rows for k in r if k != "step"}
    series = {k: c for k in sorted(keys) if (c := curve_of(renamed, k)) is not None}
    return EpisodicCurves(name, algorithm_name(spec), series, spec)


def load_episodic(folder: Path) -> list[EpisodicCurves]:
    """Every episodic run under ``folder``, by name."""
    return [c for name, run_dir in named_runs(folder) if (c := read_episodic(run_dir, name)) is not None]


# --------------------------------------------------------------------------- drawing


def steps_of(key: str) -> str:
    """``val_acc@10`` -> ``10 steps``; ``val_acc@1`` -> ``1 step``."""
    steps = step_count(key)
    return f"{steps} step{'' if steps == 1 else 's'}"


def _draw_few(
    ax: Axes, drawn: Sequence[EpisodicCurves], keys: Sequence[str], scale: float, labels: Mapping[str, str]
) -> None:
    """Every run in its own colour and legend entry; several step counts differ by line style."""
    for i, r in enumerate(drawn):
        for j, key in enumerate(keys):
            c = r.series.get(key)
            if c is not None:
                ax.plot(c.rounds, c.values * scale, color=RUN_COLOURS[i % len(RUN_COLOURS)],
                        linestyle=LINESTYLES[j % len(LINESTYLES)], lw=1.5, **marker_style(c, i),
                        label=labels[r.name] if j == 0 else None)  # fmt: skip
    if len(keys) > 1:  # one entry per line style, not one per run and step count
        for j, key in enumerate(keys):
            ax.plot([], [], color="0.35", linestyle=LINESTYLES[j % len(LINESTYLES)], label=steps_of(key))


def final(c: Curve) -> float:
    """The last finite value of a curve (NaN when it has none)."""
    finite = c.values[np.isfinite(c.values)]
    return float(finite[-1]) if finite.size else float("nan")


def _draw_many(
    ax: Axes,
    curves: Sequence[tuple[EpisodicCurves, Curve]],
    scale: float,
    labels: Mapping[str, str],
    higher_is_better: bool,
) -> None:
    """The best and the worst run by final value, in colour and named; the others thin grey lines."""
    sign = -1.0 if higher_is_better else 1.0
    ranked = sorted(curves, key=lambda rc: (np.isnan(final(rc[1])), sign * final(rc[1])))
    for i, (_, c) in enumerate(ranked[1:-1]):
        label = f"other runs ({len(ranked) - 2})" if i == 0 else None
        ax.plot(c.rounds, c.values * scale, color=OTHER_COLOUR, lw=0.7, alpha=0.8, zorder=1, label=label,
                **marker_style(c, 0, 2.5))  # fmt: skip
    ends = [(*ranked[0], "best", RUN_COLOURS[0], "-")]
    if len(ranked) > 1:
        ends.append((*ranked[-1], "worst", RUN_COLOURS[3], "--"))
    for r, c, which, colour, linestyle in ends:
        ax.plot(c.rounds, c.values * scale, color=colour, linestyle=linestyle, lw=1.8, zorder=3,
                label=f"{labels[r.name]}, {which}", **marker_style(c, 0))  # fmt: skip


@dataclass(frozen=True)
class LineFigure:
    """What one curve figure shows."""

    keys: tuple[str, ...]
    """The series drawn, one line style each (several adaptation-step counts of a validation)."""
    ylabel: str
    title: str
    percent: bool
    """Accuracy (drawn in percent, higher is better) rather than a loss."""


def line_figure(
    all_runs: Sequence[EpisodicCurves], spec: LineFigure, labels: Mapping[str, str]
) -> Figure | None:
    """One curve figure of every run that logged its series; None when none did."""
    drawn = [r for r in all_runs if any(k in r.series for k in spec.keys)]
    if not drawn:
        return None
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    scale, title = (100.0 if spec.percent else 1.0), spec.title
    if len(drawn) > MAX_FEW:
        # one line per run is already many: each run's series of the most adaptation steps it logged
        keys = {r.name: max((k for k in spec.keys if k in r.series), key=step_count) for r in drawn}
        _draw_many(ax, [(r, r.series[keys[r.name]]) for r in drawn], scale, labels, spec.percent)
        title += f", {len(drawn)} runs" + many_steps_note(set(keys.values()), len(spec.keys))
    else:
        _draw_few(ax, drawn, spec.keys, scale, labels)
    ax.set_xlabel("meta-step")
    ax.set_ylabel(spec.ylabel)
    ax.set_title(title)
    whole_step_axis(ax)
    if not spec.percent:
        log_axis_if_wide(ax, [r.series[k].values for r in drawn for k in spec.keys if k in r.series])
    place_legend(fig, ax, len(drawn))
    return fig


def many_steps_note(drawn: set[str], logged: int) -> str:
    """What the many-runs view drew of several step counts: `` (10 steps)``, or each run's largest."""
    if logged < 2:
        return ""
    return f" ({steps_of(next(iter(drawn)))})" if len(drawn) == 1 else " (each at its most adaptation steps)"


def sparsity_figure(run: EpisodicCurves, label: str) -> Figure | None:
    """Per-layer mask sparsity of one Sparse-MAML run against the step (None without mask metrics)."""
    layers = sorted(k for k in run.series if k.startswith(SPARSITY))
    if not layers:
        return None
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"]
    for i, key in enumerate(layers):
        c = run.series[key]
        colour = cmap(i / max(len(layers) - 1, 1))
        ax.plot(
            c.rounds, 100.0 * c.values, color=colour, lw=1.4, label=key[len(SPARSITY) :], **marker_style(c, i)
        )
    ax.set_xlabel("meta-step")
    ax.set_ylabel("parameters not adapted (mask = 0), %")
    ax.set_ylim(0, 100)
    whole_step_axis(ax)
    ax.set_title(f"{label}: per-layer sparsity")
    ax.legend(frameon=False, loc="best", ncol=2)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- entry point


def step_count(key: str) -> int:
    """The adaptation-step count of ``val_acc@K`` (0 without one), to order the series by it."""
    steps = key.rpartition("@")[2]
    return int(steps) if steps.isdecimal() else 0


def figure_specs(all_runs: Sequence[EpisodicCurves]) -> list[tuple[str, LineFigure]]:
    """The meta-training and validation figures, for classification (accuracy) or regression (loss)."""
    classification = any("accuracy" in r.series for r in all_runs)
    train = LineFigure(
        ("accuracy",) if classification else ("query_loss",),
        "query accuracy after adaptation, %" if classification else "query loss after adaptation",
        "Meta-training", classification,
    )  # fmt: skip
    logged = {k for r in all_runs for k in r.series if k.startswith("val_")}
    accs = [k for k in logged if k.startswith("val_acc")]
    keys = tuple(sorted(accs or logged, key=lambda k: (step_count(k), k)))
    val_label = "validation accuracy, %" if accs else "validation loss"
    return [("meta_train", train), ("validation", LineFigure(keys, val_label, "Validation", bool(accs)))]


def plot_episodic(folder: Path, out: Path) -> list[Path]:
    """Write the few-shot figures of every episodic run under ``folder``; returns the files written."""
    all_runs = load_episodic(folder)
    if not all_runs:
        return []
    make_out_dir(out)
    labels = run_labels([(r.name, r.method, r.spec) for r in all_runs])
    with matplotlib.rc_context(STYLE), np.errstate(over="ignore", invalid="ignore"):  # inf, NaN: gaps
        figures = [(stem, line_figure(all_runs, spec, labels)) for stem, spec in figure_specs(all_runs)]
        for r in all_runs:
            safe = r.name.replace("/", "__")
            figures.append((f"sparsity_{safe}", sparsity_figure(r, labels[r.name])))
        return save_figures(figures, out)
