"""Hedge over finished online runs: online hyper-parameter selection with a no-regret guarantee.

Every online run under a folder is an *expert*; its per-round accuracy ``a_{t,i}`` (CTM or LTM)
defines the loss ``l_{t,i} = 1 - a_{t,i}`` in [0, 1]. Hedge (exponential weights) plays

    w_1 = uniform,   w_{t,i} ∝ exp(-eta * Σ_{s<t} l_{s,i}),   h_t = Σ_i w_{t,i} a_{t,i}

and reports the running average (1/t) Σ_{s≤t} h_s. The weights of round t depend only on rounds
before t, which is what makes Hedge an online algorithm; its regret against the best single
expert in hindsight is at most ln(N)/eta + eta*T/8.

The official ``hedge.py`` of the MOML paper (docs/reference/moml.md §6) has faults that this module
deliberately does **not** reproduce:

1. look-ahead: it updates the weights with round-t losses *before* computing h_t (available here
   only behind ``reference_quirks=True``, to measure how much the look-ahead flatters Hedge);
2. it loads 24 experts but uses only the first 12 (here: every expert found is used);
3. it saves the CTM and LTM results to the same file, so one overwrites the other (here: one
   ``hedge.json`` with a section per metric, and one run directory ``hedge/``).

Following DESIGN.md G9 this module reads only ``spec.yaml`` and ``metrics.jsonl`` and imports
neither torch nor the engine. Outputs, under the folder that holds the experts::

    hedge.json              eta, experts, per-metric summary (final averages, best expert, regret)
    hedge/spec.yaml         algorithm: {name: hedge}; the hedged curve is itself a run directory,
    hedge/metrics.jsonl     so ``metacli plot`` draws it next to the experts
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
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
from metacli.errors import RunDirError

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
    log_w = -eta * cumulative
    # Subtracting the row maximum keeps exp() in range for any T and eta (a softmax in log space).
    log_w -= log_w.max(axis=1, keepdims=True)
    w = np.exp(log_w)
    result: np.ndarray = w / w.sum(axis=1, keepdims=True)
    return result


def hedged_values(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The hedged value per round, ``h_t = Σ_i w_{t,i} a_{t,i}``, shape (T,)."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if values.shape != weights.shape:
        raise ValueError(f"values {values.shape} and weights {weights.shape} must have the same shape")
    result: np.ndarray = np.einsum("tn,tn->t", weights, values)
    return result


def running_average(x: np.ndarray) -> np.ndarray:
    """``(1/t) Σ_{s≤t} x_s`` for t = 1..T."""
    x = np.asarray(x, dtype=np.float64)
    result: np.ndarray = np.cumsum(x) / np.arange(1, len(x) + 1)
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
        """The content of ``hedge.json``."""
        return {
            "eta": self.eta,
            "beta": math.exp(self.eta),
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


# --------------------------------------------------------------------------- reading the experts


def _algorithm_name(spec: dict[str, Any]) -> str:
    """``algorithm.name`` of a spec, or '' when absent."""
    algorithm = spec.get("algorithm")
    if isinstance(algorithm, dict):
        return str(algorithm.get("name", ""))
    return ""


def run_name(run_dir: Path, folder: Path) -> str:
    """A run's name: its path relative to the searched folder (its own name if it is that folder)."""
    relative = run_dir.relative_to(folder).as_posix()
    return run_dir.resolve().name if relative == "." else relative


def is_hidden(relative: str) -> bool:
    """Whether a run path (relative to the searched folder) lies in a dot-folder (staging, caches)."""
    return any(part.startswith(".") for part in Path(relative).parts)


def _online_rows(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Per-round metric lines keyed by round; a repeated round (a resumed run) keeps its last line."""
    return {int(r["round"]): r for r in runs.read_metrics(run_dir) if "round" in r}


def _expert_series(run_dir: Path, name: str, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The per-round ``keys`` of one run as arrays, or ``None`` if it is not an online run."""
    rows = _online_rows(run_dir)
    if not any(k in r for r in rows.values() for k in keys):
        return None  # an episodic run, or an online run that has not logged a round yet
    rounds = sorted(rows)
    if rounds != list(range(1, len(rounds) + 1)):
        missing = sorted(set(range(1, rounds[-1] + 1)) - set(rounds))
        raise RunDirError(
            f"Run {name!r} logs rounds with gaps (missing {missing[:5]}); Hedge needs every round 1..T. "
            "Re-run or resume it, or move it out of the folder."
        )
    out: dict[str, np.ndarray] = {}
    for key in keys:
        absent = [t for t in rounds if key not in rows[t]]
        if absent:
            hint = " (trained with online.ltm: false?)" if key == "ltm_acc" else ""
            raise RunDirError(
                f"Run {name!r} has no {key!r} at round(s) {absent[:5]}{hint}; Hedge needs it every round. "
                "Hedge only the metrics every run logged (e.g. --metric ctm)."
            )
        arr = np.array([float(rows[t][key]) for t in rounds])
        if key == "ltm_acc" and np.isnan(arr).all():
            raise RunDirError(
                f"Run {name!r} logs no LTM (trained with online.ltm: false), so it cannot be hedged on LTM. "
                "Hedge its CTM only: metacli hedge FOLDER --metric ctm."
            )
        bad = [t for t, a in zip(rounds, arr, strict=True) if not (math.isfinite(a) and 0.0 <= a <= 1.0)]
        if bad:
            raise RunDirError(
                f"Run {name!r} has {key!r} outside [0, 1] or not finite at round(s) {bad[:5]} "
                f"(e.g. {arr[bad[0] - 1]}); an accuracy must lie in [0, 1]. Did the run diverge?"
            )
        out[key] = arr
    return out


def load_experts(folder: Path, metrics: Sequence[str] = METRICS) -> dict[str, dict[str, np.ndarray]]:
    """Every online run under ``folder`` (except earlier Hedge outputs): name -> key -> (T,) array.

    Names are run paths relative to ``folder``. Raises :class:`RunDirError` when there is no expert
    or when experts disagree on the number of rounds.
    """
    keys = [f"{m}_acc" for m in metrics]
    experts: dict[str, dict[str, np.ndarray]] = {}
    for run_dir in runs.find_runs(folder):
        name = run_name(run_dir, folder)
        if is_hidden(name):
            continue  # a staging folder left by a killed 'metacli hedge'
        if _algorithm_name(runs.read_spec_dict(run_dir)) == HEDGE_ALGORITHM:
            continue  # our own earlier output: hedging Hedge would count it twice
        series = _expert_series(run_dir, name, keys)
        if series is not None:
            experts[name] = series
    if not experts:
        raise RunDirError(
            f"No online runs (per-round {', '.join(keys)}) under {folder}. "
            "Pass the folder that holds the runs written by 'metacli train' on an online benchmark."
        )
    _check_same_length(folder, experts)
    return experts


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
    log_w = -eta * losses.sum(axis=0)
    w = np.exp(log_w - log_w.max())
    result: np.ndarray = w / w.sum()
    return result


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
    if not (math.isfinite(eta) and eta > 0.0):
        raise RunDirError(f"eta must be a positive number, got {eta}.")
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
        return _algorithm_name(runs.read_spec_dict(path)) == HEDGE_ALGORITHM
    except RunDirError:
        return False


def _write_outputs(report: HedgeReport, rows: list[dict[str, Any]], metrics: Sequence[str]) -> None:
    """Write ``hedge/`` as a whole (built aside, then swapped in) and then ``hedge.json``."""
    target = report.run_dir
    if target.exists() and not _is_hedge_run(target):
        # Only our own earlier output may be replaced; anything else there is the user's.
        raise RunDirError(
            f"{target} exists and is not an earlier Hedge output; Hedge will not overwrite it. "
            f"Rename or move it, then run hedge again."
        )
    # Build the new directory next to the old one, so a kill leaves either the old or the new one
    # (a half-written staging dir is itself a hedge run, so a later run never reads it as an expert).
    staging = Path(tempfile.mkdtemp(dir=report.folder, prefix=f".{HEDGE_DIR}.", suffix=".tmp"))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the result is a run directory like any other
        runs.atomic_write_text(
            staging / runs.SPEC_FILE, yaml.safe_dump(_hedge_spec(report, metrics), sort_keys=False)
        )
        runs.atomic_write_text(staging / runs.METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=report.folder, prefix=f".{HEDGE_DIR}.old.", suffix=".tmp"))
            os.replace(target, old / HEDGE_DIR)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    runs.write_json(report.json_path, report.to_json())


# --------------------------------------------------------------------------- display


def render_table(report: HedgeReport, console: Console) -> None:
    """One rich table per metric: each expert's final running average and weight, Hedge, the regret."""
    for m, s in report.summaries.items():
        quirk = " [red](reference quirks: look-ahead)[/red]" if report.reference_quirks else ""
        table = Table(
            title=f"Hedge on {m.upper()} accuracy, {report.rounds} rounds, eta = {report.eta:.3g}{quirk}",
            caption=(
                f"best in hindsight: {escape(s.best_expert)} ({100 * s.best_final:.2f}%); regret of Hedge: "
                f"{s.regret_total:.3g} over {report.rounds} rounds = {s.regret_per_round:.3g} per round"
            ),
        )
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
    console.print(f"Wrote {report.json_path} and {report.run_dir}/")
