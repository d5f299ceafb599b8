"""Hedge over finished online runs: online hyper-parameter selection with a no-regret guarantee.

Every online run under a folder is an *expert*; its per-round accuracy ``a_{t,i}`` (CTM or LTM)
defines the loss ``l_{t,i} = 1 - a_{t,i}`` in [0, 1]. Hedge (exponential weights) plays

    w_1 = uniform,   w_{t,i} ∝ exp(-eta * Σ_{s<t} l_{s,i}),   h_t = Σ_i w_{t,i} a_{t,i}

and reports the running average (1/t) Σ_{s≤t} h_s. The weights of round t depend only on rounds
before t, which is what makes Hedge an online algorithm; its regret against the best single
expert in hindsight is at most ln(N)/eta + eta*T/8.

The official ``hedge.py`` of the MOML paper (github.com/ruizhaoz/MOML) has faults that this module
deliberately does **not** reproduce (all of that code's faults: docs/online.md):

1. look-ahead: it updates the weights with round-t losses *before* computing h_t (available here
   only behind ``reference_quirks=True``, to measure how much the look-ahead flatters Hedge);
2. it loads 24 experts but uses only the first 12 (here: every expert found is used);
3. it saves the CTM and LTM results to the same file, so one overwrites the other (here: one
   ``hedge.json`` with a section per metric, and one run directory ``hedge/``).

The run directory being the only interface between commands, this module reads only ``spec.yaml`` and
``metrics.jsonl`` and imports neither torch nor the engine. Outputs, under the folder that holds the experts::

    hedge.json              eta, experts, per-metric summary (final averages, best expert, regret)
    hedge/spec.yaml         algorithm: {name: hedge}; the hedged curve is itself a run directory,
    hedge/metrics.jsonl     so ``metacli plot`` draws it next to the experts

A damaged run (an unreadable spec.yaml or metrics.jsonl, an empty one, a line that is not JSON, a round
whose accuracy is missing, not a number or outside [0, 1], missing rounds) cannot be an expert over the
same rounds as the others: it is skipped with one warning naming the file and what is wrong, and Hedge
runs over the rest. The helpers of that tolerant reading (:func:`~metacli.runread.row_problem`,
:func:`~metacli.runread.warn`, ...) are those of ``plot`` and ``evaluate``'s comparison table
(:mod:`metacli.runread`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metacli import runs
from metacli.errors import MetacliError, RunDirError, os_problem
from metacli.files import atomic_write, staging_folder, swap_in
from metacli.runread import algorithm_name, last_per_index, named_runs, row_problem, running_average, warn

HEDGE_ALGORITHM = "hedge"
HEDGE_DIR = "hedge"
HEDGE_JSON = "hedge.json"
DEFAULT_ETA = math.log(10.0)  # the paper's beta = 10: w <- w * beta^(-loss)
METRICS = ("ctm", "ltm")


# --------------------------------------------------------------------------- the algorithm


def _check_losses(losses: np.ndarray, eta: float) -> None:
    """Refuse inputs for which the Hedge guarantee (and the log-space arithmetic) is meaningless."""
    if losses.ndim != 2 or losses.shape[0] == 0 or losses.shape[1] == 0:
        raise ValueError(f"losses must have shape (T, N) with T, N >= 1, got {losses.shape}")
    if not np.all(np.isfinite(losses)):
        raise ValueError("losses contain NaN or infinity")
    if losses.min() < 0.0 or losses.max() > 1.0:
        raise ValueError(f"losses must lie in [0, 1], got range [{losses.min()}, {losses.max()}]")
    if not (math.isfinite(eta) and eta >= 0.0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")


def hedge_weights(losses: np.ndarray, eta: float, reference_quirks: bool = False) -> np.ndarray:
    """Hedge weights: row ``t`` is the distribution over the N experts played at round ``t``.

    Args:
        losses: (T, N) losses in [0, 1] (here ``1 - accuracy``).
        eta: learning rate; ``ln 10`` is the paper's beta = 10.
        reference_quirks: reproduce the **fault** of the official ``hedge.py``: row ``t`` then also
            includes round ``t``'s own losses (look-ahead), so it is not an online algorithm. Off by
            default; for comparison only.

    Returns:
        (T, N) weights, rows summing to 1. Without quirks row 0 is uniform and row ``t`` depends only
        on rows ``< t`` of ``losses``.
    """
    losses = np.asarray(losses, dtype=np.float64)
    _check_losses(losses, eta)
    cumulative = np.cumsum(losses, axis=0)
    if not reference_quirks:
        # Shift by one round: the weights of round t see losses of rounds 0..t-1 only.
        cumulative = np.vstack([np.zeros((1, losses.shape[1])), cumulative[:-1]])
    return exp_weights(cumulative, eta)


def exp_weights(cumulative: np.ndarray, eta: float) -> np.ndarray:
    """``exp(-eta * L_i) / Σ_j exp(-eta * L_j)`` over the last axis of the cumulative losses ``L``.

    Computed in the log domain for any finite ``eta >= 0``: the log-weights ``-eta * (L_i - min_j L_j)``
    are taken relative to the best expert (the log-sum-exp shift), so the best one's is 0 and the others'
    are <= 0. ``eta * (L_i - min L)`` may overflow to infinity (a weight of exactly 0, the limit) but never
    gives ``inf - inf`` = NaN, and the normaliser lies in [1, N]. Ties share the weight equally.
    """
    gap = cumulative - cumulative.min(axis=-1, keepdims=True)  # finite, >= 0; 0 for the best
    with np.errstate(over="ignore"):  # eta * gap beyond the float range: weight 0, as in the limit
        w = np.exp(-eta * gap)
    result: np.ndarray = w / w.sum(axis=-1, keepdims=True)
    return result


def hedged_values(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The hedged value per round, ``h_t = Σ_i w_{t,i} a_{t,i}``, shape (T,)."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if values.shape != weights.shape:
        raise ValueError(f"values {values.shape} and weights {weights.shape} must have the same shape")
    result: np.ndarray = np.einsum("tn,tn->t", weights, values)
    return result


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class MetricSummary:
    """Hedge against the experts on one metric (``ctm`` or ``ltm``) after all rounds."""

    metric: str
    expert_final: dict[str, float]
    """Each expert's final running-average accuracy, (1/T) Σ_t a_{t,i}."""
    hedged_final: float
    """Hedge's final running-average accuracy, (1/T) Σ_t h_t."""
    best_expert: str
    """The expert with the highest final running average (the best in hindsight)."""
    regret_total: float
    """Σ_t (1 - h_t) - Σ_t (1 - a_{t,best}): cumulative loss of Hedge minus that of the best expert."""
    regret_per_round: float
    """``regret_total / T``, which equals best final average minus hedged final average."""
    final_weights: dict[str, float]
    """The weights Hedge would play at round T+1 (which configuration it ended up trusting)."""

    @property
    def best_final(self) -> float:
        """The best expert's final running average."""
        return self.expert_final[self.best_expert]


@dataclass(frozen=True)
class HedgeReport:
    """Everything ``run_hedge`` computed and where it wrote it."""

    folder: Path
    eta: float
    reference_quirks: bool
    rounds: int
    experts: tuple[str, ...]
    summaries: dict[str, MetricSummary]
    json_path: Path
    run_dir: Path

    def to_json(self) -> dict[str, Any]:
        """The content of ``hedge.json``; ``beta`` (``e^eta``) is null where it exceeds the float range."""
        return {
            "eta": self.eta,
            "beta": _beta(self.eta),
            "reference_quirks": self.reference_quirks,
            "rounds": self.rounds,
            "experts": list(self.experts),
            "metrics": {
                m: {
                    "experts_final_acc_avg": s.expert_final,
                    "hedge_final_acc_avg": s.hedged_final,
                    "best_expert": s.best_expert,
                    "best_final_acc_avg": s.best_final,
                    "regret_total": s.regret_total,
                    "regret_per_round": s.regret_per_round,
                    "final_weights": s.final_weights,
                }
                for m, s in self.summaries.items()
            },
        }


def _beta(eta: float) -> float | None:
    """The paper's ``beta = e^eta``, or None where it exceeds the float range (eta above about 709)."""
    try:
        return math.exp(eta)
    except OverflowError:
        return None


# --------------------------------------------------------------------------- reading runs that may be damaged


def _damage_in_rounds(rows: dict[int, dict[str, Any]], keys: Sequence[str]) -> str | None:
    """What keeps a run's rounds from being an expert's, or None.

    Missing rounds, an accuracy missing at some rounds only, or one outside [0, 1] or not finite. A key
    the run logs at no round (or LTM that is NaN at every round: LTM switched off) is no damage: that is
    the user's choice of --metric, refused by :func:`_expert_series`.
    """
    rounds = sorted(rows)
    if rounds != list(range(1, len(rounds) + 1)):
        missing = sorted(set(range(1, rounds[-1] + 1)) - set(rounds))
        return (
            f"misses round(s) {missing[:5]}"
            if missing
            else f"logs round {rounds[0]}, but rounds count from 1"
        )
    for key in keys:
        absent = [t for t in rounds if key not in rows[t]]
        if len(absent) == len(rounds):
            continue
        if absent:
            return f"has no {key!r} at round(s) {absent[:5]}, though its other rounds have it"
        values = [float(rows[t][key]) for t in rounds]
        if key == "ltm_acc" and all(math.isnan(v) for v in values):
            continue
        bad = [t for t, v in zip(rounds, values, strict=True) if not 0.0 <= v <= 1.0]  # NaN is bad too
        if bad:
            return (
                f"has {key!r} = {rows[bad[0]][key]} at round {bad[0]} ({len(bad)} round(s) outside [0, 1] "
                "or not finite); an accuracy lies in [0, 1]. Did the run diverge?"
            )
    return None


def _expert_rows(run_dir: Path, keys: Sequence[str]) -> dict[int, dict[str, Any]] | None:
    """A run's per-round lines keyed by round (a resumed run's repeated round: its last line); None for an
    earlier Hedge output.

    Raises:
        RunDirError: the run is damaged (an unreadable spec.yaml or metrics.jsonl, an empty one, a bad
            line, see :func:`_damage_in_rounds`): it cannot be an expert over the same rounds.
    """
    if algorithm_name(runs.read_spec_dict(run_dir)) == HEDGE_ALGORITHM:
        return None  # our own earlier output: hedging Hedge would count it twice
    path = run_dir / runs.METRICS_FILE

    def give_up(line: int, problem: str, row: dict[str, Any] | None) -> None:
        raise RunDirError(f"{path}: line {line} {problem}.")

    lines = runs.read_metrics(run_dir, give_up, lambda row: row_problem(row, "round", keys))
    if not lines:
        raise RunDirError(f"{path} is empty: the run logged nothing (killed as it started?).")
    rows = last_per_index(lines, "round")
    problem = _damage_in_rounds(rows, keys) if rows else None
    if problem is not None:
        raise RunDirError(f"{path} {problem}.")
    return rows


def _expert_series(
    rows: dict[int, dict[str, Any]], name: str, keys: Sequence[str]
) -> dict[str, np.ndarray] | None:
    """The per-round ``keys`` of an undamaged run as arrays, or ``None`` if it is not an online run.

    Raises:
        RunDirError: the run logs one of ``keys`` at no round (LTM switched off): hedge the other metric.
    """
    if not any(k in r for r in rows.values() for k in keys):
        return None  # an episodic run, or an online run that has not logged a round yet
    out: dict[str, np.ndarray] = {}
    for key in keys:
        if any(key not in r for r in rows.values()):  # then in none: _damage_in_rounds saw to that
            hint = " (trained with online.ltm: false?)" if key == "ltm_acc" else ""
            raise RunDirError(
                f"Run {name!r} logs no {key!r}{hint}; Hedge needs it every round. "
                "Hedge only the metrics every run logged (e.g. --metric ctm)."
            )
        arr = np.array([float(rows[t][key]) for t in sorted(rows)])
        if key == "ltm_acc" and np.isnan(arr).all():
            raise RunDirError(
                f"Run {name!r} logs no LTM (trained with online.ltm: false), so it cannot be hedged on LTM. "
                "Hedge its CTM only: metacli hedge FOLDER --metric ctm."
            )
        out[key] = arr
    return out


def load_experts(folder: Path, metrics: Sequence[str] = METRICS) -> dict[str, dict[str, np.ndarray]]:
    """Every online run under ``folder`` (except earlier Hedge outputs): name -> key -> (T,) array.

    Names are run paths relative to ``folder``. A damaged run is skipped with a warning. Raises
    :class:`RunDirError` when no expert remains or when experts disagree on the number of rounds.
    """
    keys = [f"{m}_acc" for m in metrics]
    experts: dict[str, dict[str, np.ndarray]] = {}
    skipped = 0
    for name, run_dir in named_runs(folder):
        _refuse_live(run_dir, name)
        try:
            rows = _expert_rows(run_dir, keys)
        except RunDirError as e:
            skipped += 1
            warn(f"{e} Skipped run {name!r}; Hedge runs over the other experts.")
            continue
        series = None if rows is None else _expert_series(rows, name, keys)
        if series is not None:
            experts[name] = series
    if not experts:
        note = f" ({skipped} damaged run(s) skipped, see the warnings)" if skipped else ""
        raise RunDirError(
            f"No online runs (per-round {', '.join(keys)}) under {folder}{note}. "
            "Pass the folder that holds the runs written by 'metacli train' on an online benchmark."
        )
    _check_same_length(folder, experts)
    return experts


def _refuse_live(run_dir: Path, name: str) -> None:
    """Refuse an expert that a live process is still training: its rounds so far would give a wrong table."""
    pid = runs.lock_holder(run_dir)
    if pid is not None and pid != os.getpid():
        raise RunDirError(
            f"run {name!r} ({run_dir}) is still being trained by process {pid}; Hedge over the rounds it has "
            "so far would not be the table of the finished runs. Wait for it to finish (or stop it), "
            "then run hedge again."
        )


def _check_same_length(folder: Path, experts: dict[str, dict[str, np.ndarray]]) -> None:
    """All experts must cover the same rounds; name the odd ones out and say if they look killed."""
    lengths = {name: len(next(iter(s.values()))) for name, s in experts.items()}
    longest = max(lengths.values())
    if len(set(lengths.values())) == 1:
        return
    parts = []
    for name, n in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        note = ""
        if n < longest and not (folder / name / runs.SUMMARY_FILE).is_file():
            note = f" (no {runs.SUMMARY_FILE}: killed, or still running, after round {n}?)"
        parts.append(f"{name}: {n} rounds{note}")
    raise RunDirError(
        "Hedge needs every expert on the same rounds, but the runs differ: "
        + "; ".join(parts)
        + ". Resume or re-run the short runs, or move them out of the folder."
    )


# --------------------------------------------------------------------------- running Hedge


def _summarise(
    metric: str, names: Sequence[str], acc: np.ndarray, hedged: np.ndarray, next_weights: np.ndarray
) -> MetricSummary:
    """Final averages, the best expert in hindsight and Hedge's regret against it."""
    totals = acc.sum(axis=0)
    best = int(np.argmax(totals))  # ties: the first in sorted order
    rounds = acc.shape[0]
    # Regret in loss: Σ(1-h) - Σ(1-a_best) = Σ a_best - Σ h.
    regret = float(totals[best] - hedged.sum())
    return MetricSummary(
        metric=metric,
        expert_final={n: float(v) for n, v in zip(names, totals / rounds, strict=True)},
        hedged_final=float(hedged.mean()),
        best_expert=names[best],
        regret_total=regret,
        regret_per_round=regret / rounds,
        final_weights={n: float(v) for n, v in zip(names, next_weights, strict=True)},
    )


def _next_weights(losses: np.ndarray, eta: float) -> np.ndarray:
    """The weights after every round (those Hedge would play at round T+1)."""
    return exp_weights(losses.sum(axis=0), eta)


def check_eta(eta: float) -> None:
    """Refuse an ``--eta`` outside (0, inf): the weights would be meaningless (NaN, or growing with loss)."""
    if not (math.isfinite(eta) and eta > 0.0):
        raise MetacliError(
            f"--eta {eta}: eta must be a positive number, finite and > 0 (the default is ln 10 = "
            f"{DEFAULT_ETA:.4f}, the paper's beta = 10). Larger values follow the best run so far more "
            "closely; any finite size works."
        )


def run_hedge(
    folder: Path,
    eta: float = DEFAULT_ETA,
    metrics: tuple[str, ...] = METRICS,
    reference_quirks: bool = False,
) -> HedgeReport:
    """Hedge over every online run under ``folder``; writes ``hedge.json`` and the run dir ``hedge/``.

    Args:
        folder: the folder holding the expert runs (searched recursively).
        eta: Hedge learning rate (default ``ln 10``, the paper's beta = 10).
        metrics: which accuracies to hedge, among ``"ctm"`` and ``"ltm"``; each is hedged separately.
        reference_quirks: reproduce the official script's look-ahead fault (see module docstring).

    A re-run replaces the previous outputs whole; the previous ``hedge/`` is never read as an expert.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise RunDirError(f"Unknown metric(s) {unknown or list(metrics)}; choose among {list(METRICS)}.")
    check_eta(eta)
    folder = Path(folder)
    experts = load_experts(folder, metrics)
    names = tuple(experts)
    rounds = len(next(iter(experts[names[0]].values())))
    rows: list[dict[str, Any]] = [{"round": t} for t in range(1, rounds + 1)]
    summaries: dict[str, MetricSummary] = {}
    for m in metrics:
        acc = np.stack([experts[n][f"{m}_acc"] for n in names], axis=1)  # (T, N)
        weights = hedge_weights(1.0 - acc, eta, reference_quirks=reference_quirks)
        hedged = hedged_values(acc, weights)
        hedged_avg = running_average(hedged)
        summaries[m] = _summarise(m, names, acc, hedged, _next_weights(1.0 - acc, eta))
        for t, row in enumerate(rows):
            row[f"{m}_acc"] = float(hedged[t])
            row[f"{m}_acc_avg"] = float(hedged_avg[t])
            row.update({f"{m}_weight/{n}": float(weights[t, i]) for i, n in enumerate(names)})
    report = HedgeReport(
        folder=folder,
        eta=eta,
        reference_quirks=reference_quirks,
        rounds=rounds,
        experts=names,
        summaries=summaries,
        json_path=folder / HEDGE_JSON,
        run_dir=folder / HEDGE_DIR,
    )
    _write_outputs(report, rows, metrics)
    return report


# --------------------------------------------------------------------------- writing


def _hedge_spec(report: HedgeReport, metrics: Sequence[str]) -> dict[str, Any]:
    """The small ``spec.yaml`` that makes ``hedge/`` a run directory ``plot`` can read."""
    return {
        "schema_version": runs.SCHEMA_VERSION,
        "name": HEDGE_DIR,
        "algorithm": {"name": HEDGE_ALGORITHM},
        "eta": report.eta,
        "reference_quirks": report.reference_quirks,
        "metrics": list(metrics),
        "rounds": report.rounds,
        "experts": list(report.experts),
    }


def _is_hedge_run(path: Path) -> bool:
    """Whether ``path`` is a run directory written by :func:`run_hedge`."""
    if not (path / runs.SPEC_FILE).is_file():
        return False
    try:
        return algorithm_name(runs.read_spec_dict(path)) == HEDGE_ALGORITHM
    except RunDirError:
        return False


def _write_outputs(report: HedgeReport, rows: list[dict[str, Any]], metrics: Sequence[str]) -> None:
    """Replace the result set, ``hedge/`` and ``hedge.json``, as a whole: built aside, then swapped in.

    The new set is written into a hidden staging folder beside them (a kill there leaves the old set as
    it was, and readers skip hidden folders), then :func:`metacli.files.swap_in` moves the old ``hedge/``
    out and the new set in, ``hedge.json`` last (the commit), undoing its moves if one fails. A failure to
    write (full disk, no permission) is a :class:`RunDirError` naming the cause, with the previous results
    intact.
    """
    target = report.run_dir
    if target.exists() and not _is_hedge_run(target):
        # Only our own earlier output may be replaced; anything else there is the user's.
        raise RunDirError(
            f"{target} exists and is not an earlier Hedge output; Hedge will not overwrite it. "
            f"Rename or move it, then run hedge again."
        )
    staging: Path | None = None
    try:
        with runs.locked_folder(report.folder, "which is writing Hedge's results there"):
            staging = staging_folder(report.folder, HEDGE_DIR)
            _build_set(staging, report, rows, metrics)
            swap_in(staging, report.folder, (HEDGE_DIR, HEDGE_JSON))
    except OSError as e:
        raise RunDirError(
            f"cannot write Hedge's results into {report.folder}: {os_problem(e)} "
            f"The previous {HEDGE_JSON} and {HEDGE_DIR}/ there, if any, are unchanged."
        ) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _build_set(
    staging: Path, report: HedgeReport, rows: list[dict[str, Any]], metrics: Sequence[str]
) -> None:
    """Write the new ``hedge/`` (a run directory ``plot`` reads) and ``hedge.json`` into ``staging``."""
    run_dir = staging / HEDGE_DIR
    run_dir.mkdir()  # with the umask's permissions: the result is a run directory like any other
    atomic_write(run_dir / runs.SPEC_FILE, yaml.safe_dump(_hedge_spec(report, metrics), sort_keys=False))
    atomic_write(run_dir / runs.METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
    runs.write_json(staging / HEDGE_JSON, report.to_json())


# --------------------------------------------------------------------------- display


def render_table(report: HedgeReport, console: Console) -> None:
    """One rich table per metric: each expert's final running average and weight, Hedge, the regret."""
    for m, s in report.summaries.items():
        quirk = " [red](reference quirks: look-ahead)[/red]" if report.reference_quirks else ""
        # Title and summary as lines of their own: as a table's title or caption they wrap at the table's
        # width, which splits the numbers of a narrow table across lines.
        console.print(
            f"Hedge on {m.upper()} accuracy, {report.rounds} rounds, eta = {report.eta:.3g}{quirk}",
            soft_wrap=True,
        )
        table = Table()
        table.add_column("run", overflow="fold")  # fold, never cut: names differ at the end
        table.add_column(f"final {m.upper()} avg (%)", justify="right")
        table.add_column("final weight", justify="right")
        for name in report.experts:
            style = "bold green" if name == s.best_expert else None
            label = escape(f"{name} (best)" if name == s.best_expert else name)  # names are not markup
            table.add_row(
                label, f"{100 * s.expert_final[name]:.2f}", f"{s.final_weights[name]:.3f}", style=style
            )
        table.add_section()
        table.add_row("Hedge", f"{100 * s.hedged_final:.2f}", "", style="bold")
        console.print(table)
        console.print(
            f"best in hindsight: {escape(s.best_expert)} ({100 * s.best_final:.2f}%); regret of Hedge: "
            f"{s.regret_total:.3g} over {report.rounds} rounds = {s.regret_per_round:.3g} per round",
            soft_wrap=True,
        )
    console.print(f"Wrote {report.json_path} and {report.run_dir}/")
