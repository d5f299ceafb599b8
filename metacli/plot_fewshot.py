"""Figures of few-shot (episodic) runs: meta-training and validation curves, Sparse-MAML's sparsity.

Reads only ``spec.yaml`` and ``metrics.jsonl`` of every episodic run under a folder and writes, under
``out``::

    meta_train.png/.svg      meta-training query loss (and accuracy) against the meta-step, one line per run
    validation.png/.svg      validation accuracy (or loss) on the fixed validation tasks against the step
    sparsity_<run>.png/.svg  for each Sparse-MAML run: the fraction of each layer's parameters whose mask
                             stops adaptation, against the step (von Oswald et al. 2021, Figure 1)

One colour per run, the same in every figure; accuracies in percent. Built on
:class:`matplotlib.figure.Figure` with the styling of :mod:`metacli.plot`. A step line whose step or a
value is not a number is left out with one warning per file (:func:`metacli.plot.read_indexed`); damage
to a whole run is reported by the online reader, which ``metacli plot`` runs after this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from metacli.plot import SPARE_COLOURS, STYLE, Curve, curve_of, make_out_dir, read_indexed, save_figures
from metacli.runread import named_runs

RUN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", *SPARE_COLOURS)
SPARSITY = "mask_sparsity/"


@dataclass(frozen=True)
class EpisodicCurves:
    """The per-step series of one few-shot run."""

    name: str
    method: str
    series: dict[str, Curve]


def read_episodic(run_dir: Path, name: str) -> EpisodicCurves | None:
    """The per-step series of one run, or None for a run that logged no steps (an online run) or that
    cannot be read (damaged: reported by :func:`metacli.plot.load_runs`)."""
    read = read_indexed(run_dir, "step", lambda key: True, owner=False)  # every value is drawn
    if read is None or not read[1]:
        return None
    method, rows = read
    # the rows' "step" key plays the part of the online "round" for the shared reader
    renamed = [{**r, "round": r["step"]} for r in rows]
    keys = {k for r in rows for k in r if k != "step"}
    series = {k: c for k in sorted(keys) if (c := curve_of(renamed, k)) is not None}
    return EpisodicCurves(name, method, series)


def load_episodic(folder: Path) -> list[EpisodicCurves]:
    """Every episodic run under ``folder``, by name."""
    return [c for name, run_dir in named_runs(folder) if (c := read_episodic(run_dir, name)) is not None]


def _val_metric(all_runs: Sequence[EpisodicCurves]) -> list[str]:
    """The validation series logged: ``val_acc@k`` when any run has one, else ``val_loss@k``."""
    keys = sorted({k for r in all_runs for k in r.series if k.startswith("val_")})
    accs = [k for k in keys if k.startswith("val_acc")]
    return accs or keys


def _line_figure(
    all_runs: Sequence[EpisodicCurves], keys: Sequence[str], ylabel: str, title: str, percent: bool
) -> Figure | None:
    colours = {r.name: RUN_COLOURS[i % len(RUN_COLOURS)] for i, r in enumerate(all_runs)}
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    drawn = 0
    for r in all_runs:
        for j, key in enumerate(keys):
            c = r.series.get(key)
            if c is None:
                continue
            values = c.values * (100.0 if percent else 1.0)
            suffix = f" ({key.split('@')[-1]} steps)" if len(keys) > 1 else ""
            style = ("-", "--", ":", "-.")[j % 4]
            ax.plot(c.rounds, values, style, color=colours[r.name], lw=1.4, label=f"{r.name}{suffix}")
            drawn += 1
    if drawn == 0:
        return None
    ax.set_xlabel("meta-step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(frameon=False, loc="best")
    return fig


def sparsity_figure(run: EpisodicCurves) -> Figure | None:
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
        ax.plot(c.rounds, 100.0 * c.values, color=colour, lw=1.4, label=key[len(SPARSITY) :])
    ax.set_xlabel("meta-step")
    ax.set_ylabel("parameters not adapted (mask = 0), %")
    ax.set_ylim(0, 100)
    ax.set_title(f"Sparse-MAML per-layer sparsity: {run.name}")
    ax.legend(frameon=False, loc="best", ncol=2)
    return fig


def plot_episodic(folder: Path, out: Path) -> list[Path]:
    """Write the few-shot figures of every episodic run under ``folder``; returns the files written."""
    all_runs = load_episodic(folder)
    if not all_runs:
        return []
    make_out_dir(out)
    figures: list[tuple[str, Figure | None]] = []
    with matplotlib.rc_context(STYLE), np.errstate(over="ignore", invalid="ignore"):  # inf, NaN: gaps
        classification = any("accuracy" in r.series for r in all_runs)
        train_keys = ["accuracy"] if classification else ["query_loss"]
        train_label = (
            "query accuracy after adaptation, %" if classification else "query loss after adaptation"
        )
        figures.append(
            ("meta_train", _line_figure(all_runs, train_keys, train_label, "Meta-training", classification))
        )
        val_keys = _val_metric(all_runs)
        val_acc = bool(val_keys) and val_keys[0].startswith("val_acc")
        val_label = "validation accuracy, %" if val_acc else "validation loss"
        figures.append(("validation", _line_figure(all_runs, val_keys, val_label, "Validation", val_acc)))
        for r in all_runs:
            safe = r.name.replace("/", "__")
            figures.append((f"sparsity_{safe}", sparsity_figure(r)))
        return save_figures(figures, out)
