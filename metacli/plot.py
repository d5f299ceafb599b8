"""Figures of online runs: CTM and LTM running averages and held memory against the round.

Reads only ``spec.yaml`` and ``metrics.jsonl`` of every run under a folder (the run directory is the only
interface between commands), including the ``hedge/`` run written by :mod:`metacli.hedge`, and writes,
under ``out`` (``metacli plot FOLDER``: ``FOLDER/figures/`` by default)::

    ctm_avg.png/.svg   running-average CTM accuracy vs round, one line per run
    ltm_avg.png/.svg   running-average LTM accuracy vs round
    memory.png/.svg    memory held by the learner (task data + algorithm state) vs round
    tensorboard/<run>/ the same scalars as TensorBoard events (CTM_Avg/acc, LTM_Avg/acc, Memory/held_MB)

Design choices:

* Each method keeps one colour in every figure (MOML blue, FTML orange, ..., Hedge black, drawn on
  top and thicker); several runs of one method differ by line style and are labelled by the spec values
  that tell them apart, ``MOML, alpha=10.0`` (:func:`metacli.labels.run_labels`), not by their folders.
* A curve of at most :data:`FEW_POINTS` rounds has a marker at each, so a one-round run is visible.
* With many runs (more than :data:`MAX_LABELLED`, e.g. a 24-run Hedge grid) a legend of every run is
  unreadable: each accuracy figure then labels only Hedge and the best and worst run *of that
  figure's metric* (highest and lowest final running average), and draws the others as thin grey
  lines under one legend entry "other runs (k)". The memory figure instead has one entry per
  method, "MOML (24 runs)", since held memory depends on the method, not on its hyper-parameters.
* Accuracies are shown in percent; memory in MB (10^6 bytes), on a log axis when it spans more
  than a factor :data:`LOG_RANGE`.
* Damage never spoils the folder: a run whose spec.yaml or metrics.jsonl cannot be read (or is empty)
  is skipped, and a line that is not JSON, or whose round, step or plotted value is not a number (or
  too large to draw), is left out; each is one warning naming the file and lines (see
  :func:`read_indexed`). NaN and infinite values are drawn as gaps.

No pyplot: figures are built on :class:`matplotlib.figure.Figure`, which needs no GUI backend and
leaves no global figure state behind (the Agg canvas renders PNG, the SVG backend SVG). Neither torch
nor the engine is imported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # never open a window, even if a caller imported pyplot first

import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, StrMethodFormatter  # noqa: E402

from metacli import runs, tb  # noqa: E402
from metacli.errors import RunDirError  # noqa: E402
from metacli.files import atomic_write  # noqa: E402
from metacli.hedge import HEDGE_ALGORITHM  # noqa: E402
from metacli.labels import METHOD_NAMES, run_labels  # noqa: E402
from metacli.runread import (  # noqa: E402
    algorithm_name,
    last_per_index,
    named_runs,
    row_problem,
    running_average,
    warn,
    warn_lines,
)
from metacli.tb import ONLINE_METRIC, ScalarWriter  # noqa: E402

FIGURES_DIR = "figures"
"""The sub-folder of a plotted folder that ``metacli plot`` writes into unless given ``--out``."""
MAX_LABELLED = 8
"""Above this many runs, only Hedge and the best and worst run are labelled (the rest grey)."""
LOG_RANGE = 30.0
"""Memory is drawn on a log axis when max / min exceeds this factor."""
DPI = 200
BYTES_PER_MB = 1e6

# Fixed so that a method has the same colour in every figure *and* every invocation.
METHOD_COLOURS = {
    "moml": "#1f77b4",
    "bmoml": "#17becf",
    "ftml": "#ff7f0e",
    "mogd": "#2ca02c",
    "toe": "#d62728",
    "fs": "#9467bd",
    HEDGE_ALGORITHM: "#000000",
}
SPARE_COLOURS = ("#8c564b", "#e377c2", "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78")
LINESTYLES = ("-", "--", "-.", ":")
OTHER_COLOUR = "#b0b0b0"
FEW_POINTS = 20
"""A curve of at most this many points has a marker at each: one point alone draws no line at all."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")

STYLE: dict[Any, Any] = {  # Any: matplotlib types keys as a Literal of every rc name
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.6,
    "svg.hashsalt": "metacli",  # deterministic SVG ids, so re-plotting does not churn diffs
}


@dataclass(frozen=True)
class Curve:
    """One scalar of one run against the round."""

    rounds: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class RunCurves:
    """The per-round series of one online run."""

    name: str
    """Path of the run directory relative to the plotted folder."""
    method: str
    """``algorithm.name`` from its spec."""
    series: dict[str, Curve] = field(default_factory=dict)
    """Keyed as in metrics.jsonl: ``ctm_acc``, ``ctm_acc_avg``, ``ltm_acc``, ``ltm_acc_avg``; and ``held_mb``
    and, for Hedge, ``<metric>_weight/<expert>``."""
    spec: dict[str, Any] = field(default_factory=dict)
    """Its spec.yaml, from which its legend label is made."""

    @property
    def is_hedge(self) -> bool:
        """Whether this is the hedged curve written by ``metacli hedge``."""
        return self.method == HEDGE_ALGORITHM


@dataclass(frozen=True)
class FigureSpec:
    """What one figure shows."""

    key: str
    filename: str
    title: str
    ylabel: str
    scale: float
    """Multiplier from stored value to displayed value (1 -> percent: 100)."""
    higher_is_better: bool


FIGURES = (
    FigureSpec(
        "ctm_acc_avg",
        "ctm_avg",
        "CTM accuracy (running average)",
        "CTM accuracy, running avg. (%)",
        100.0,
        True,
    ),
    FigureSpec(
        "ltm_acc_avg",
        "ltm_avg",
        "LTM accuracy (running average)",
        "LTM accuracy, running avg. (%)",
        100.0,
        True,
    ),
    FigureSpec("held_mb", "memory", "Memory held by the learner", "Held memory (MB)", 1.0, False),
)
ONLINE_KEYS = ("ctm_acc", "ctm_acc_avg", "ltm_acc", "ltm_acc_avg", "task_bytes", "state_bytes")
"""The per-round values the online figures draw (besides Hedge's ``<metric>_weight/<expert>``)."""
DRAW_LIMIT = 1e100
"""Finite values beyond this magnitude cannot be drawn (matplotlib's tick arithmetic overflows)."""
HELD_TAG = "Memory/held_MB"
"""The TensorBoard tag of the held memory, which no run logs under one key (task + state bytes)."""


# --------------------------------------------------------------------------- reading


def _line_problem(row: dict[str, Any], index: str, plotted: Callable[[str], bool]) -> str | None:
    """What keeps a metrics line from being drawn (see :func:`read_indexed`), or None."""
    keys = [k for k in row if k != index and plotted(k)]
    problem = row_problem(row, index, keys)
    if problem is not None or index not in row:
        return problem
    huge = next((k for k in keys if math.isfinite(row[k]) and abs(row[k]) > DRAW_LIMIT), None)
    return None if huge is None else f"has {huge!r}: {float(row[huge]):.3g}, too large to draw"


def read_indexed(
    run_dir: Path, index: str, plotted: Callable[[str], bool], owner: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """A run's spec and its metric lines holding ``index`` (``round`` or ``step``), one per index value in
    order (a resumed run's repeated one: its last line); None when the run cannot be read.

    Damage is left out with one warning per file: a line whose ``index``, or a value the figures draw
    (``plotted(key)``), is not a number or too large to draw. Damage that concerns every reader of the run,
    an unreadable spec.yaml, an unreadable or empty metrics.jsonl, a line that is not a JSON object, is
    reported only by the ``owner`` (the online reader, which ``metacli plot`` always runs), so that the
    command reports it once.
    """
    path = run_dir / runs.METRICS_FILE
    problems: list[tuple[int, str, bool]] = []  # line, what is wrong, whether it is a line of this reader

    def note(line: int, problem: str, row: dict[str, Any] | None) -> None:
        problems.append((line, problem, row is not None))

    try:
        spec = runs.read_spec_dict(run_dir)
        lines = runs.read_metrics(run_dir, note, lambda row: _line_problem(row, index, plotted))
        if not lines and not problems:
            raise RunDirError(f"{path} is empty: the run logged nothing (killed as it started?).")
    except RunDirError as e:
        if owner:
            warn(f"{e} Skipped that run; the others are plotted.")
        return None
    reported = [(line, problem) for line, problem, own in problems if owner or own]
    if reported:
        warn_lines(path, reported, "Those lines are left out of the figures.")
    return spec, list(last_per_index(lines, index).values())


def _is_online_value(key: str) -> bool:
    """Whether the online figures draw this per-round value."""
    return key in ONLINE_KEYS or "_weight/" in key


def _complete_rounds(run_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rounds that hold every drawn value the run logs; one warning names the others (left out)."""
    logged = {k for r in rows for k in r if _is_online_value(k)}
    partial = [r for r in rows if not logged <= r.keys()]
    if partial:
        rounds, lacking = [r["round"] for r in partial], sorted(logged - partial[0].keys())
        warn(
            f"{run_dir / runs.METRICS_FILE}: round(s) {rounds[:5]} lack {lacking[:3]}, which the run logs "
            "at its other rounds; those rounds are left out of the figures."
        )
    return [r for r in rows if logged <= r.keys()]


def curve_of(rows: Sequence[dict[str, Any]], key: str) -> Curve | None:
    """The rounds at which ``key`` was logged and its values, or ``None`` if never logged."""
    have = [r for r in rows if key in r and r[key] is not None]
    if not have:
        return None
    return Curve(np.array([int(r["round"]) for r in have]), np.array([float(r[key]) for r in have]))


def run_curves(name: str, spec: dict[str, Any], rows: list[dict[str, Any]]) -> RunCurves | None:
    """The online series of one run from its per-round lines, or ``None`` if it has none (an episodic run)."""
    series: dict[str, Curve] = {}
    for m in ("ctm", "ltm"):
        per_round = curve_of(rows, f"{m}_acc")
        avg = curve_of(rows, f"{m}_acc_avg")
        if avg is None and per_round is not None:
            avg = Curve(per_round.rounds, running_average(per_round.values))
        if avg is not None:
            series[f"{m}_acc_avg"] = avg
        if per_round is not None:
            series[f"{m}_acc"] = per_round
    held = [r for r in rows if "task_bytes" in r and "state_bytes" in r]
    if held:
        mb = [(float(r["task_bytes"]) + float(r["state_bytes"])) / BYTES_PER_MB for r in held]
        series["held_mb"] = Curve(np.array([int(r["round"]) for r in held]), np.array(mb))
    for key in {k for r in rows for k in r if "_weight/" in k}:
        c = curve_of(rows, key)
        if c is not None:
            series[key] = c
    if not any(k in series for k in ("ctm_acc_avg", "ltm_acc_avg", "held_mb")):
        return None
    return RunCurves(name=name, method=algorithm_name(spec), series=series, spec=spec)


def load_runs(folder: Path) -> list[RunCurves]:
    """Every online run under ``folder`` (Hedge's included), experts first and Hedge last.

    Damaged runs and lines are skipped with a warning; :class:`RunDirError` when no run is left to plot.
    """
    folder = Path(folder)
    found: list[RunCurves] = []
    damaged = 0
    for name, run_dir in named_runs(folder):
        read = read_indexed(run_dir, "round", _is_online_value, owner=True)
        if read is None:
            damaged += 1
            continue
        curves = run_curves(name, read[0], _complete_rounds(run_dir, read[1]))
        if curves is not None:
            found.append(curves)
    if not found:
        note = f" ({damaged} damaged run(s) skipped, see the warnings)" if damaged else ""
        raise RunDirError(
            f"No runs with metrics to plot under {folder}{note}: neither per-round online metrics (ctm_acc, "
            "ltm_acc, task_bytes) nor per-step few-shot ones. Pass the folder of your runs (e.g. "
            "runs/, where 'metacli train' writes), or run 'metacli train' first."
        )
    return sorted(found, key=lambda r: (r.is_hedge, r.name))


# --------------------------------------------------------------------------- styling


def method_colours(all_runs: Sequence[RunCurves]) -> dict[str, str]:
    """One colour per method: the fixed palette, then spare colours for unknown methods."""
    colours: dict[str, str] = {}
    spare = iter(SPARE_COLOURS * (1 + len(all_runs) // len(SPARE_COLOURS)))
    for method in sorted({r.method for r in all_runs}):
        colours[method] = METHOD_COLOURS.get(method) or next(spare)
    return colours


def online_labels(all_runs: Sequence[RunCurves]) -> dict[str, str]:
    """``METHOD`` and the spec values that tell its runs apart (:func:`metacli.labels.run_labels`);
    Hedge's run is ``Hedge`` (its spec is not a training spec, so it takes no part in the comparison)."""
    labels = run_labels([(r.name, r.method, r.spec) for r in all_runs if not r.is_hedge])
    return {r.name: labels.get(r.name, "Hedge") for r in all_runs}


def run_linestyles(all_runs: Sequence[RunCurves]) -> dict[str, str]:
    """Runs of one method cycle through line styles (their colour is shared)."""
    seen: dict[str, int] = {}
    styles = {}
    for r in all_runs:
        i = seen.get(r.method, 0)
        seen[r.method] = i + 1
        styles[r.name] = LINESTYLES[i % len(LINESTYLES)]
    return styles


# --------------------------------------------------------------------------- drawing


def marker_style(c: Curve, i: int = 0, size: float = 4.5) -> dict[str, Any]:
    """A marker at every point of a curve with few of them (the i-th run's shape), else none."""
    return {"marker": MARKERS[i % len(MARKERS)], "markersize": size} if c.rounds.size <= FEW_POINTS else {}


@dataclass(frozen=True)
class Style:
    """Colours, labels and line styles shared by every figure."""

    colours: dict[str, str]
    labels: dict[str, str]
    linestyles: dict[str, str]
    many: bool


def make_style(all_runs: Sequence[RunCurves]) -> Style:
    """The shared style; the many-runs view is used above :data:`MAX_LABELLED` runs besides Hedge."""
    return Style(
        colours=method_colours(all_runs),
        labels=online_labels(all_runs),
        linestyles=run_linestyles(all_runs),
        many=sum(not r.is_hedge for r in all_runs) > MAX_LABELLED,
    )


def _draw_few(ax: Axes, spec: FigureSpec, drawn: Sequence[RunCurves], style: Style) -> None:
    """Every run labelled, in its method's colour."""
    for i, r in enumerate(drawn):
        c = r.series[spec.key]
        ax.plot(
            c.rounds, c.values * spec.scale, label=style.labels[r.name], color=style.colours[r.method],
            linestyle=style.linestyles[r.name], linewidth=2.2 if r.is_hedge else 1.5,
            zorder=3 if r.is_hedge else 2, **marker_style(c, i),
        )  # fmt: skip


def _draw_per_method(ax: Axes, spec: FigureSpec, drawn: Sequence[RunCurves], style: Style) -> None:
    """One legend entry per method, ``METHOD (n runs)``; every run in its method's colour.

    Used for memory with many runs: memory depends on the method, not on the hyper-parameters, so
    "best" and "worst" run would name two of many identical lines.
    """
    counts: dict[str, int] = {}
    for r in drawn:
        counts[r.method] = counts.get(r.method, 0) + 1
    labelled: set[str] = set()
    for r in drawn:
        c = r.series[spec.key]
        pretty = METHOD_NAMES.get(r.method, r.method)
        n = counts[r.method]
        label = None if r.method in labelled else (f"{pretty} ({n} runs)" if n > 1 else pretty)
        labelled.add(r.method)
        ax.plot(c.rounds, c.values * spec.scale, color=style.colours[r.method], linewidth=1.5, label=label,
                **marker_style(c))  # fmt: skip


GRID_MIN_RUNS = 3
"""In the many-runs view, a method with at least this many runs is a grid: best and worst shown."""


def _plot(ax: Axes, spec: FigureSpec, r: RunCurves, marker_size: float = 4.5, **kwargs: Any) -> None:
    """Draw one run's curve of this figure (markers of ``marker_size`` where it has few points)."""
    c = r.series[spec.key]
    ax.plot(c.rounds, c.values * spec.scale, **marker_style(c, size=marker_size), **kwargs)


def _draw_many(ax: Axes, spec: FigureSpec, drawn: Sequence[RunCurves], style: Style) -> None:
    """Many runs: per grid method only its best and worst run in colour, the others thin grey.

    Methods with few runs (e.g. one FTML baseline next to a 24-run MOML grid) and Hedge stay
    labelled in their colours, so the comparison between methods survives.
    """
    if not spec.higher_is_better:
        _draw_per_method(ax, spec, drawn, style)
        return
    by_method: dict[str, list[RunCurves]] = {}
    for r in drawn:
        by_method.setdefault(r.method, []).append(r)
    grey: list[RunCurves] = []
    coloured: list[tuple[RunCurves, str, str]] = []  # run, label, line style
    for method, group in by_method.items():
        if method == HEDGE_ALGORITHM or len(group) < GRID_MIN_RUNS:
            coloured += [(r, style.labels[r.name], style.linestyles[r.name]) for r in group]
            continue
        ranked = sorted(group, key=lambda r: float(r.series[spec.key].values[-1]), reverse=True)
        coloured.append((ranked[0], f"{style.labels[ranked[0].name]}, best", "-"))
        coloured.append((ranked[-1], f"{style.labels[ranked[-1].name]}, worst", "--"))
        grey += ranked[1:-1]
    for i, r in enumerate(grey):
        label = f"other runs ({len(grey)})" if i == 0 else None
        _plot(ax, spec, r, 2.5, color=OTHER_COLOUR, linewidth=0.7, alpha=0.8, label=label, zorder=1)
    for r, label, ls in sorted(coloured, key=lambda x: x[0].is_hedge):
        _plot(ax, spec, r, color=style.colours[r.method], linestyle=ls, label=label,
              linewidth=2.2 if r.is_hedge else 1.6, zorder=3 if r.is_hedge else 2)  # fmt: skip


def _finish_axes(fig: Figure, ax: Axes, spec: FigureSpec, drawn: Sequence[RunCurves]) -> None:
    """Labels, scales and a legend placed where it hides nothing."""
    ax.set_xlabel("Round $t$")
    ax.set_ylabel(spec.ylabel)
    ax.set_title(spec.title)
    whole_step_axis(ax)
    if spec.key == "held_mb" and not log_axis_if_wide(ax, [r.series[spec.key].values for r in drawn]):
        ax.set_ylim(bottom=0.0)
    place_legend(fig, ax, len(drawn))


def whole_step_axis(ax: Axes) -> None:
    """Whole steps (rounds, meta-steps) at round intervals on the x axis, which spans at least two, so that
    the one point of a very short run sits between labelled ticks instead of on a fractional axis."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    low, high = ax.get_xlim()
    if high - low < 2.0:
        middle = (low + high) / 2.0
        ax.set_xlim(middle - 1.0, middle + 1.0)


def log_axis_if_wide(ax: Axes, series: Sequence[np.ndarray]) -> bool:
    """Put the y axis on a log scale when the positive values span more than :data:`LOG_RANGE`."""
    values = np.concatenate([np.asarray(v, dtype=np.float64) for v in series])
    positive = values[np.isfinite(values) & (values > 0)]
    if not positive.size or positive.max() / positive.min() <= LOG_RANGE:
        return False
    ax.set_yscale("log")
    # 0.5, 1, 2, 5, 10 reads better than 10^0, 10^1.
    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    return True


def place_legend(fig: Figure, ax: Axes, curves: int) -> None:
    """A legend where it hides nothing: inside for a few entries over a few curves, else outside."""
    handles, _ = ax.get_legend_handles_labels()
    if len(handles) <= 4 and curves <= 4:
        ax.legend(loc="best", frameon=True, framealpha=0.9)
        fig.tight_layout()
    elif len(handles) <= 4:
        # A few entries over many curves (the grey "other runs"): no free corner exists inside, and
        # grid-point labels are long, so the legend goes under the axes.
        fig.tight_layout()
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    else:
        # Many entries would cover the curves: put the legend outside, right of the axes. Laid out
        # first so the axes keep their size; savefig(bbox_inches="tight") widens the image instead.
        fig.tight_layout()
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)


def draw_figure(spec: FigureSpec, all_runs: Sequence[RunCurves], style: Style) -> Figure | None:
    """One figure, or ``None`` when no run logged its scalar (e.g. LTM switched off)."""
    drawn = [r for r in all_runs if spec.key in r.series]
    if not drawn:
        return None
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    (_draw_many if style.many else _draw_few)(ax, spec, drawn, style)
    _finish_axes(fig, ax, spec, drawn)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """Save atomically (:func:`metacli.files.atomic_write`), so a viewer never sees half a PNG."""
    fmt = path.suffix.lstrip(".")
    # No date in the metadata: re-plotting the same runs gives the same files.
    metadata = {"Software": "metacli"} if fmt == "png" else {"Creator": "metacli", "Date": None}
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=DPI, bbox_inches="tight", metadata=metadata))


# --------------------------------------------------------------------------- TensorBoard


def series_tag(key: str) -> str:
    """The TensorBoard tag of a plotted series: a run's own tag for its metrics (:func:`metacli.tb.tag`)."""
    if key == "held_mb":
        return HELD_TAG
    return tb.tag(key) if ONLINE_METRIC.fullmatch(key) else f"Hedge_Weight/{key}"


def write_tensorboard(all_runs: Sequence[RunCurves], logdir: Path) -> list[Path]:
    """The plotted scalars as TensorBoard events, one sub-folder per run (old events replaced)."""
    written = []
    for r in all_runs:
        run_log = logdir / r.name
        for old in run_log.glob("events.out.tfevents.*"):
            old.unlink()  # re-plotting must not duplicate every point
        per_round: dict[int, dict[str, float]] = {}
        for key, c in r.series.items():
            tag = series_tag(key)
            for t, v in zip(c.rounds.tolist(), c.values.tolist(), strict=True):
                per_round.setdefault(int(t), {})[tag] = float(v)
        writer = ScalarWriter(run_log)
        try:
            for t in sorted(per_round):
                writer.add_scalars(t, per_round[t])
        finally:
            writer.close()
        written.append(run_log)
    return written


# --------------------------------------------------------------------------- entry point


def plot_runs(folder: Path, out: Path) -> list[Path]:
    """Plot every online run under ``folder`` into ``out``; returns the PNG and SVG files written.

    Also writes TensorBoard event files under ``out/tensorboard/<run name>/``. Raises
    :class:`RunDirError` when ``folder`` holds no run with online metrics.
    """
    all_runs = load_runs(Path(folder))
    out = make_out_dir(Path(out))
    style = make_style(all_runs)
    with matplotlib.rc_context(STYLE), np.errstate(over="ignore", invalid="ignore"):  # inf, NaN: gaps
        written = save_figures([(spec.filename, draw_figure(spec, all_runs, style)) for spec in FIGURES], out)
    write_tensorboard(all_runs, out / "tensorboard")
    return written


def make_out_dir(out: Path) -> Path:
    """Create the figure folder, or fail with a message naming it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot write figures to {out}: {e}. Pass --out a writable folder.") from None
    return out


def save_figures(figures: Sequence[tuple[str, Figure | None]], out: Path) -> list[Path]:
    """Save each (file stem, figure) as PNG and SVG under ``out``, skipping None; the paths written."""
    written = []
    for stem, fig in figures:
        if fig is None:
            continue
        for ext in ("png", "svg"):
            path = out / f"{stem}.{ext}"
            save_figure(fig, path)
            written.append(path)
    return written
