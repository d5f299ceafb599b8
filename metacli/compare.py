"""One comparison table over a folder of few-shot runs: ``metacli evaluate results/DIR``.

Every run is meta-tested on the same fixed test tasks (its spec's ``eval`` section, or ``--tasks``),
reusing its ``eval.json`` when that file was written for the same checkpoint, task set and step
counts. The table has one row per run and one column per metric and adaptation-step count
(accuracy in %, or MSE), each ``mean +- 95% CI``, with the published numbers the run's spec names
(``published:``) beside it. It is printed and written as ``comparison.md``, where a column sets the
meta-steps each run trained beside those behind its published numbers and a note under the table flags
a run trained for fewer; and as ``comparison.csv``, one number per cell (mean, CI and n in separate
columns, an empty cell for a missing value) for pandas or a spreadsheet.

Where the runs logged them, three columns come from each run's metrics.jsonl: its best validation
accuracy, the wall time at which it first reached 0.9 of the best validation accuracy of any run in the
table (the measure of Yang et al. 2025, Table 2; wall time since the run started, validations included),
and the largest ``peak_step_mb`` of its meta-training steps.

One damaged run never spoils the table: a run whose spec.yaml cannot be read or validated, or that cannot
be meta-tested (a missing or damaged checkpoint), is left out with one warning naming the cause; a
damaged eval.json is evaluated again; lines of metrics.jsonl whose values are not numbers are left out of
the three training columns (an unreadable or empty file leaves them empty), each with one warning.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metacli.errors import RunDirError, SpecError
from metacli.files import atomic_write
from metacli.progress import fixed
from metacli.runread import algorithm_name, named_runs, values_problem, warn, warn_lines
from metacli.runs import EVAL_FILE, METRICS_FILE, SPEC_FILE, read_json, read_metrics, read_spec_dict

COMPARISON_MD = "comparison.md"
COMPARISON_CSV = "comparison.csv"


@dataclass(frozen=True)
class Row:
    """One run of the table: its name, its meta-test metrics and the published numbers it names."""

    name: str
    algorithm: str
    metrics: dict[str, dict[str, float]]
    published: dict[str, list[dict[str, Any]]]
    checkpoint: str
    step: int
    training: Training


@dataclass(frozen=True)
class Training:
    """What a run's metrics.jsonl says beyond its meta-test: validation over wall time, peak memory."""

    validation: tuple[tuple[float, float], ...]
    """(wall time in s, validation accuracy) of every validation, in order; empty for regression runs."""
    peak_mb: float | None
    """The largest ``peak_step_mb`` logged, None when the run logged none."""
    steps: int | None = None
    """The last meta-step logged (the loop logs the final one): how long the run trained; None: no step."""

    @property
    def best(self) -> float | None:
        """The best finite validation accuracy, None without one."""
        return max((acc for _, acc in self.validation if math.isfinite(acc)), default=None)

    def time_to(self, target: float) -> float | None:
        """Wall time of the first validation at or above ``target``; None if it never got there."""
        return next((t for t, acc in self.validation if acc >= target), None)


TIME_TO_FRACTION = 0.9
"""The fraction of the best validation accuracy whose first reach is timed (Yang et al. 2025, Table 2)."""


TRAINING_KEYS = ("step", "wall_time", "peak_step_mb")
"""Besides ``val_acc@K``, the values of metrics.jsonl that the training columns use."""


def _training_problem(row: dict[str, Any]) -> str | None:
    """What keeps a metrics line from the training columns (a value they use is not a number), or None."""
    return values_problem(row, [k for k in row if k.startswith("val_acc@") or k in TRAINING_KEYS])


def _training_lines(run_dir: Path) -> list[dict[str, Any]]:
    """The usable lines of a run's metrics.jsonl; damaged ones left out, with one warning per file."""
    path = run_dir / METRICS_FILE
    problems: list[tuple[int, str]] = []
    try:
        lines = read_metrics(run_dir, lambda n, problem, _: problems.append((n, problem)), _training_problem)
    except RunDirError as e:
        warn(f"{e} The run's training columns are left empty.")
        return []
    if problems:
        warn_lines(path, problems, "Those lines are left out of the training columns.")
    elif not lines:
        warn(f"{path} is empty: the run logged nothing. Its training columns are left empty.")
    return lines


def training_of(run_dir: Path) -> Training:
    """Validation accuracies with their wall times, and the peak step memory, from metrics.jsonl."""
    validation, peaks, steps = [], [], []
    for line in _training_lines(run_dir):
        accs = [v for k, v in line.items() if k.startswith("val_acc@")]
        if accs and "wall_time" in line:
            validation.append((float(line["wall_time"]), float(accs[0])))
        if "peak_step_mb" in line:
            peaks.append(float(line["peak_step_mb"]))
        if isinstance(line.get("step"), int):
            steps.append(line["step"])
    return Training(tuple(validation), max(peaks, default=None), max(steps, default=None))


Evaluate = Callable[[Path], dict[str, Any]]
"""Meta-test one run and return its eval.json content (:func:`metacli.runlayer.evaluate_run`)."""


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is one run (it holds spec.yaml) rather than a folder of runs."""
    return (path / SPEC_FILE).is_file()


def episodic_runs(folder: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    """``(name, run directory, spec)`` of the few-shot runs under ``folder``.

    Runs are found by :func:`metacli.runread.named_runs`; online runs are skipped (their evaluation is their
    training), and a run whose spec.yaml cannot be read or validated is skipped with a warning.
    """
    from metacli.spec import validate

    found, damaged = [], 0
    for name, run_dir in named_runs(folder):
        try:
            spec = read_spec_dict(run_dir)
            online = validate(spec, str(run_dir / SPEC_FILE)).is_online
        except (RunDirError, SpecError) as e:
            damaged += 1
            warn(f"{e} Skipped {run_dir} in the comparison table.")
            continue
        if not online:
            found.append((name, run_dir, spec))
    if not found:
        note = f" that can be read ({damaged} damaged, see the warnings)" if damaged else ""
        raise RunDirError(
            f"{folder} holds no few-shot run directories (spec.yaml + metrics.jsonl){note}. Train some "
            "with 'metacli train', e.g. a grid spec such as configs/sinusoid/table.yaml."
        )
    return found


def reusable_eval(
    run_dir: Path, tasks: int, seed: int, steps: list[int], which: str, step: int
) -> dict[str, Any] | None:
    """The run's eval.json when it was written for these settings and this checkpoint, else None."""
    path = run_dir / EVAL_FILE
    if not path.is_file():
        return None
    try:
        old = read_json(path)
    except RunDirError as e:  # damaged, unreadable or not UTF-8
        warn(f"{e} Meta-testing {run_dir} again, which replaces it.")
        return None
    same = (
        old.get("tasks") == tasks
        and old.get("seed") == seed
        and old.get("inner_steps") == steps
        and old.get("checkpoint") == which
        and old.get("checkpoint_step") == step
    )
    problem = _eval_problem(old) if same else None
    if problem is not None:
        warn(f"{path} {problem}; it was damaged or edited. Meta-testing {run_dir} again, which replaces it.")
    return old if same and problem is None else None


def _eval_problem(old: dict[str, Any]) -> str | None:
    """What keeps an eval.json of the right settings from being shown in the table, or None."""
    metrics = old.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        return "has no 'metrics' object"
    for name, m in metrics.items():
        if not isinstance(m, dict):
            return f"has metric {name!r} that is not an object"
        missing = [k for k in ("mean", "ci95") if k not in m]
        if missing:
            return f"has no {missing[0]!r} for metric {name!r}"
        problem = values_problem(m, ("mean", "ci95"))
        if problem is not None:
            return f"{problem} (metric {name!r})"
    return None


def dotted(data: dict[str, Any], key: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; None where the path does not exist."""
    value: Any = data
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def published_numbers(spec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The spec's published entries that apply to it (their ``when`` matches), by metric."""
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in spec.get("published") or []:
        when = entry.get("when") or {}
        if all(dotted(spec, k) == v for k, v in when.items()):
            out.setdefault(entry["metric"], []).append(entry)
    return out


def compare(folder: Path, evaluate: Evaluate) -> list[Row]:
    """One :class:`Row` per few-shot run under ``folder``, evaluated (or reused) by ``evaluate``.

    A run that cannot be meta-tested (``evaluate`` raises :class:`RunDirError`: a missing or damaged
    checkpoint) is left out with a warning; RunDirError when no run is left.
    """
    rows = []
    for name, run_dir, spec in episodic_runs(folder):
        try:
            out = evaluate(run_dir)
        except RunDirError as e:
            warn(f"{e} Skipped {run_dir} in the comparison table.")
            continue
        rows.append(
            Row(
                name=name,
                algorithm=algorithm_name(spec),
                metrics=out["metrics"],
                published=published_numbers(spec),
                checkpoint=str(out["checkpoint"]),
                step=int(out["checkpoint_step"]),
                training=training_of(run_dir),
            )
        )
    if not rows:
        raise RunDirError(
            f"No run under {folder} could be meta-tested (the warnings above say why). Repair or re-train "
            "them, or evaluate one run directory to see its error."
        )
    return rows


def metric_order(rows: list[Row]) -> list[str]:
    """Columns: accuracies before losses, each by step count."""

    def key(name: str) -> tuple[int, int, str]:
        base, _, steps = name.partition("@")
        return (0 if "acc" in base else 1, int(steps) if steps.isdecimal() else 0, base)

    return sorted({m for r in rows for m in r.metrics}, key=key)


def display_scale(metric: str) -> tuple[float, int]:
    """Multiplier and decimals of a metric in every table metacli prints: accuracy in %, a loss as is."""
    return (100.0, 2) if "acc" in metric else (1.0, 3)


def cell(metric: str, m: dict[str, float] | None) -> str:
    """``mean +- ci`` in % for accuracies, as is for losses; ``diverged`` when the mean is not finite."""
    if m is None:
        return "-"
    if not math.isfinite(m["mean"]):  # some task's adaptation blew up (e.g. rates used past their steps)
        return "diverged"
    scale, digits = display_scale(metric)
    mean, ci = m["mean"] * scale, m["ci95"] * scale
    if abs(mean) >= 1e4:  # a blow-up on some tasks: keep the magnitude readable
        return f"{mean:.2e} ± {ci:.2e}"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


def published_cell(metric: str, entries: list[dict[str, Any]]) -> str:
    """The published numbers for one metric of one run, joined; empty when the spec names none."""
    scale, _ = display_scale(metric)
    parts = []
    for e in entries:
        text = f"{e['value'] * scale:.2f}"
        if e.get("ci95") is not None:
            text += f" ± {e['ci95'] * scale:.2f}"
        parts.append(f"{text} ({e['source']})")
    return "; ".join(parts)


def trained_steps(r: Row) -> int:
    """How long a run trained: its last logged meta-step, else its checkpoint's step."""
    return r.training.steps if r.training.steps is not None else r.step


def published_budgets(r: Row) -> list[int | None]:
    """The meta-iterations behind each published number beside a run (None: its spec does not say)."""
    return [e.get("meta_iters") for entries in r.published.values() for e in entries]


def budget_cell(r: Row) -> str:
    """``trained / published`` meta-steps, e.g. ``200 / 70,000``; empty without published numbers."""
    budgets = published_budgets(r)
    if not budgets:
        return ""
    named = [f"{b:,}" for b in sorted({b for b in budgets if b is not None})]
    if None in budgets:
        named.append("not stated")
    return f"{trained_steps(r):,} / {', '.join(named)}"


def short_of_budget(r: Row) -> bool:
    """Whether a run trained fewer meta-steps than a published number beside it was trained for."""
    return any(b is not None and trained_steps(r) < b for b in published_budgets(r))


BUDGET_COLUMN = "steps: trained / published"
"""The markdown column that sets a run's training length beside that of its published numbers."""


def budget_note(rows: list[Row]) -> str | None:
    """The warning under a table where runs stopped short of the training behind their published numbers."""
    short = sum(short_of_budget(r) for r in rows)
    if not short:
        return None
    return (
        f"**Budget mismatch:** {short} of {len(rows)} run(s) trained fewer meta-steps than the published "
        f"numbers beside them (column '{BUDGET_COLUMN}'); a shorter run is expected to fall short of them. "
        "Train to the published length (--set train.meta_iters=N) before comparing."
    )


def table_rows(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the printed table: run, algorithm, then per metric its value and the published
    one, with the meta-steps trained beside those of the published numbers."""
    metrics = metric_order(rows)
    budgets = any(r.published for r in rows)
    header = ["run", "algorithm", "checkpoint"] + ([BUDGET_COLUMN] if budgets else [])
    for m in metrics:
        header += [label(m), f"published {label(m)}"]
    best = best_validation(rows)
    peaks = any(r.training.peak_mb is not None for r in rows)
    if best is not None:
        header += ["best val acc %", f"time to {TIME_TO_FRACTION:g} x {fixed(100 * best, 2)} % (s)"]
    if peaks:
        header.append("peak step MB")
    body = []
    for r in rows:
        line = [r.name, r.algorithm, f"{r.checkpoint} @ {r.step}"] + ([budget_cell(r)] if budgets else [])
        for m in metrics:
            line += [cell(m, r.metrics.get(m)), published_cell(m, r.published.get(m, []))]
        if best is not None:
            own, reached = r.training.best, r.training.time_to(TIME_TO_FRACTION * best)
            line += [
                "-" if own is None else fixed(100 * own, 2),
                "never" if reached is None else fixed(reached, 0),
            ]
        if peaks:
            line.append("-" if r.training.peak_mb is None else fixed(r.training.peak_mb, 1))
        body.append(line)
    return header, body


def best_validation(rows: list[Row]) -> float | None:
    """The best validation accuracy of any run in the table (the time-to target is a fraction of it)."""
    return max((b for r in rows if (b := r.training.best) is not None), default=None)


def label(metric: str) -> str:
    """``query_acc@3`` -> ``acc % (3 steps)``; ``query_loss@1`` -> ``MSE/loss (1 step)``."""
    base, _, steps = metric.partition("@")
    name = "acc %" if "acc" in base else "loss"
    return f"{name} ({steps} step{'s' if steps != '1' else ''})"


def to_markdown(header: list[str], body: list[list[str]], note: str | None = None) -> str:
    """A GitHub markdown table, and the note under it, if any."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")


# --------------------------------------------------------------------------- comparison.csv


def number(x: float | None) -> str:
    """A CSV cell that ``float()`` reads: empty for None, ``nan`` and ``inf`` for those, else the value."""
    return "" if x is None else format(float(x), ".10g")


def csv_metric_columns(metric: str) -> list[str]:
    """The CSV columns of one metric: mean, ci95, n, and its published mean, ci95, meta-steps, source."""
    unit = "_pct" if "acc" in metric else ""
    own = [f"{metric}_mean{unit}", f"{metric}_ci95{unit}", f"{metric}_n"]
    published = [f"published_{metric}_mean{unit}", f"published_{metric}_ci95{unit}"]
    return own + published + [f"published_{metric}_meta_iters", f"published_{metric}_source"]


def csv_metric_cells(metric: str, r: Row) -> list[str]:
    """One run's cells under :func:`csv_metric_columns` (the first published entry, where several apply)."""
    scale, _ = display_scale(metric)
    m = r.metrics.get(metric)
    own = (
        ["", "", ""]
        if m is None
        else [number(m["mean"] * scale), number(m["ci95"] * scale), number(m.get("n"))]
    )
    entries = r.published.get(metric)
    if not entries:
        return own + ["", "", "", ""]
    e = entries[0]
    ci = e.get("ci95")
    published = [number(e["value"] * scale), number(None if ci is None else ci * scale)]
    return own + published + [number(e.get("meta_iters")), str(e["source"])]


def csv_rows(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """comparison.csv: the printed table with one number per cell, for pandas and spreadsheets.

    Accuracies in percent (columns ending ``_pct``), losses as they are; an empty cell where a value is
    missing (a metric not evaluated, a target validation accuracy never reached).
    """
    metrics = metric_order(rows)
    header = ["run", "algorithm", "checkpoint", "checkpoint_step", "trained_steps"]
    for m in metrics:
        header += csv_metric_columns(m)
    best = best_validation(rows)
    if best is not None:
        header += ["best_val_acc_pct", f"time_to_{TIME_TO_FRACTION:g}_of_best_val_s"]
    header.append("peak_step_mb")
    body = []
    for r in rows:
        line = [r.name, r.algorithm, r.checkpoint, str(r.step), str(trained_steps(r))]
        for m in metrics:
            line += csv_metric_cells(m, r)
        if best is not None:
            own = r.training.best
            line += [
                number(None if own is None else 100 * own),
                number(r.training.time_to(TIME_TO_FRACTION * best)),
            ]
        line.append(number(r.training.peak_mb))
        body.append(line)
    return header, body


def to_csv(header: list[str], body: list[list[str]]) -> str:
    """A table as CSV."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(body)
    return buf.getvalue()


def write_tables(folder: Path, rows: list[Row]) -> tuple[str, list[Path]]:
    """Write comparison.md and comparison.csv into ``folder``; return the markdown and the paths."""
    markdown = to_markdown(*table_rows(rows), budget_note(rows))
    paths = [folder / COMPARISON_MD, folder / COMPARISON_CSV]
    atomic_write(paths[0], markdown)
    atomic_write(paths[1], to_csv(*csv_rows(rows)))
    return markdown, paths
