"""Hedge over finished online runs: online hyper-parameter selection with a no-regret guarantee.

Every online run under a folder is an *expert*; its per-round accuracy ``a_{t,i}`` (CTM or LTM)
defines the loss ``l_{t,i} = 1 - a_{t,i}`` in [0, 1]. Hedge (exponential weights) plays

    w_1 = uniform,   w_{t,i} ∝ exp(-eta * Σ_{s<t} l_{s,i}),   h_t = Σ_i w_{t,i} a_{t,i}

and reports the running average (1/t) Σ_{s≤t} h_s. The weights of round t depend only on rounds
before t, which is what makes Hedge an online algorithm; its regret against the best single
expert in hindsight is at most ln(N)/eta + eta*T/8.

The official ``hedge.py`` of the MOML paper (github.com/ruizhaoz/MOML) has faults that this module
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

A damaged run (an unreadable spec.yaml or metrics.jsonl, an empty one, a line that is not JSON, a round
whose accuracy is missing, not a number or outside [0, 1], missing rounds) cannot be an expert over the
same rounds as the others: it is skipped with one warning naming the file and what is wrong, and Hedge
runs over the rest. The helpers of that tolerant reading (:func:`row_problem`, :func:`warn`,
:func:`warn_lines`) are shared with ``plot`` and ``evaluate``'s comparison table.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from contextlib import suppress
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


# --------------------------------------------------------------------------- finding the experts


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


# --------------------------------------------------------------------------- reading runs that may be damaged

INDEX_LIMIT = 2**53
"""Rounds and steps are whole numbers below this (beyond it a float no longer tells neighbours apart)."""


def warn(message: str) -> None:
    """Report damage that was skipped: one warning on one line (a YAML error's excerpt spans several)."""
    warnings.warn(" ".join(message.split()), UserWarning, stacklevel=3)


def warn_lines(path: Path, problems: Sequence[tuple[int, str]], consequence: str) -> None:
    """One warning for the damaged lines of one file: the first three named, then how many more."""
    named = "; ".join(f"line {line} {problem}" for line, problem in problems[:3])
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    warn(f"{path}: {named}{more}. {consequence}")


def _shown(value: Any) -> str:
    """A metrics value as the file spells it, cut short: ``null``, ``"abc"``, ``[1, 2]``."""
    text = json.dumps(value)
    return text if len(text) <= 30 else text[:27] + "..."


def number_problem(row: dict[str, Any], key: str) -> str | None:
    """What is wrong with ``row[key]`` as a number, or None when it is one (NaN and infinities are)."""
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"has {key!r}: {_shown(value)}, not a number"
    try:
        float(value)
    except OverflowError:  # a JSON integer with hundreds of digits
        return f"has {key!r}: {_shown(value)}, too large for a number"
    return None


def row_problem(row: dict[str, Any], index: str, keys: Iterable[str]) -> str | None:
    """What is wrong with a metrics line as one of ``index`` (``round`` or ``step``), or None.

    A line without ``index`` is not examined (an online reader passes over a few-shot run's lines).
    Otherwise ``index`` must be a whole number from 0 up, and each of ``keys`` that the line holds a number.
    """
    if index not in row:
        return None
    value = row[index]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < INDEX_LIMIT:
        return f"has {index!r}: {_shown(value)}, not a whole number from 0 up"
    return values_problem(row, keys)


def values_problem(row: dict[str, Any], keys: Iterable[str]) -> str | None:
    """What is wrong with the first of ``keys`` that ``row`` holds and is not a number, or None."""
    for key in keys:
        problem = number_problem(row, key) if key in row else None
        if problem is not None:
            return problem
    return None


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
    if _algorithm_name(runs.read_spec_dict(run_dir)) == HEDGE_ALGORITHM:
        return None  # our own earlier output: hedging Hedge would count it twice
    path = run_dir / runs.METRICS_FILE

    def give_up(line: int, problem: str, row: dict[str, Any] | None) -> None:
        raise RunDirError(f"{path}: line {line} {problem}.")

    lines = runs.read_metrics(run_dir, give_up, lambda row: row_problem(row, "round", keys))
    if not lines:
        raise RunDirError(f"{path} is empty: the run logged nothing (killed as it started?).")
    rows = {int(r["round"]): r for r in lines if "round" in r}
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
    for run_dir in runs.find_runs(folder):
        name = run_name(run_dir, folder)
        if is_hidden(name):
            continue  # a staging folder left by a killed 'metacli hedge'
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
        return _algorithm_name(runs.read_spec_dict(path)) == HEDGE_ALGORITHM
    except RunDirError:
        return False


def _write_outputs(report: HedgeReport, rows: list[dict[str, Any]], metrics: Sequence[str]) -> None:
    """Replace the result set, ``hedge.json`` and ``hedge/``, as a whole: built aside, then swapped in.

    The new set is written into a hidden staging folder beside them (a kill there leaves the old set as
    it was, and readers skip hidden folders), then :func:`_swap_in` moves the old set out and the new one
    in, undoing its moves if one fails. A failure to write (full disk, no permission) is a
    :class:`RunDirError` naming the cause, with the previous results intact.
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
            staging = Path(tempfile.mkdtemp(dir=report.folder, prefix=f".{HEDGE_DIR}.", suffix=".tmp"))
            _build_set(staging, report, rows, metrics)
            _swap_in(staging, report.folder)
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
    runs.atomic_write_text(
        run_dir / runs.SPEC_FILE, yaml.safe_dump(_hedge_spec(report, metrics), sort_keys=False)
    )
    runs.atomic_write_text(run_dir / runs.METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
    runs.write_json(staging / HEDGE_JSON, report.to_json())


def _swap_in(staging: Path, folder: Path) -> None:
    """Move the old ``hedge/`` into ``staging`` and the new set from ``staging`` into ``folder``.

    Each move is one rename within one file system. ``hedge.json`` is replaced last, by one atomic
    rename (the commit); if any move fails, those made so far are undone in reverse order, so the folder
    holds the whole old set or the whole new one. Only a kill in the microseconds between the last two
    renames could leave the new ``hedge/`` beside the old ``hedge.json``; running hedge again mends that.
    """
    moves: list[tuple[Path, Path]] = []

    def move(source: Path, destination: Path) -> None:
        os.replace(source, destination)
        moves.append((source, destination))

    try:
        if (folder / HEDGE_DIR).exists():
            move(folder / HEDGE_DIR, staging / f"old-{HEDGE_DIR}")
        move(staging / HEDGE_DIR, folder / HEDGE_DIR)
        os.replace(staging / HEDGE_JSON, folder / HEDGE_JSON)
    except BaseException:
        for source, destination in reversed(moves):
            with suppress(OSError):
                os.replace(destination, source)
        raise


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
