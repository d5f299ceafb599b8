"""Hedge: weights against hand-computed values, the no-look-ahead property, and run_hedge on tiny runs."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from metacli import runs
from metacli.cli import app
from metacli.errors import RunDirError
from metacli.hedge import hedge_weights, hedged_values, render_table, run_hedge
from metacli.runs import LOCK_FILE

ASSETS = Path(__file__).parent / "assets" / "online_runs"
ETA = math.log(10.0)  # beta = 10, so exp(-ETA * l) = 10 ** -l

# Three experts, four rounds: losses (1 - accuracy).
LOSSES = np.array(
    [
        [0.2, 0.5, 0.4],
        [0.3, 0.1, 0.6],
        [0.0, 0.4, 0.2],
        [0.5, 0.5, 0.1],
    ]
)


def _normalise(*xs: float) -> list[float]:
    total = sum(xs)
    return [x / total for x in xs]


# Hand-computed: row t uses the cumulative losses of rounds 0..t-1 only.
#   row 1: cumulative (0.2, 0.5, 0.4)
#   row 2: cumulative (0.2+0.3, 0.5+0.1, 0.4+0.6) = (0.5, 0.6, 1.0)
#   row 3: cumulative (0.5+0.0, 0.6+0.4, 1.0+0.2) = (0.5, 1.0, 1.2)
EXPECTED = [
    [1 / 3, 1 / 3, 1 / 3],
    _normalise(math.exp(-ETA * 0.2), math.exp(-ETA * 0.5), math.exp(-ETA * 0.4)),
    _normalise(math.exp(-ETA * 0.5), math.exp(-ETA * 0.6), math.exp(-ETA * 1.0)),
    _normalise(math.exp(-ETA * 0.5), math.exp(-ETA * 1.0), math.exp(-ETA * 1.2)),
]


def test_weights_match_hand_computed_values() -> None:
    w = hedge_weights(LOSSES, ETA)
    assert w.shape == (4, 3)
    np.testing.assert_allclose(w, EXPECTED, rtol=1e-12)
    # beta = 10 form of the paper: row 1 is proportional to 10^-0.2, 10^-0.5, 10^-0.4.
    np.testing.assert_allclose(w[1], _normalise(10**-0.2, 10**-0.5, 10**-0.4), rtol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)


def test_first_row_is_uniform() -> None:
    w = hedge_weights(LOSSES, ETA)
    np.testing.assert_array_equal(w[0], np.full(3, 1 / 3))


def test_round_t_weights_ignore_round_t_losses() -> None:
    changed = LOSSES.copy()
    changed[2] = [1.0, 0.0, 1.0]  # a very different round 2
    w, w_changed = hedge_weights(LOSSES, ETA), hedge_weights(changed, ETA)
    np.testing.assert_array_equal(w[:3], w_changed[:3])  # rounds 0..2 cannot see round 2
    assert not np.allclose(w[3], w_changed[3])  # round 3 does


def test_reference_quirks_reproduce_the_look_ahead() -> None:
    quirky = hedge_weights(LOSSES, ETA, reference_quirks=True)
    # The official script's row 0 already includes round 0's losses.
    np.testing.assert_allclose(
        quirky[0], _normalise(math.exp(-ETA * 0.2), math.exp(-ETA * 0.5), math.exp(-ETA * 0.4)), rtol=1e-12
    )
    np.testing.assert_allclose(quirky[:3], EXPECTED[1:], rtol=1e-12)
    assert not np.allclose(quirky, hedge_weights(LOSSES, ETA))


def test_hedged_values_and_stability() -> None:
    acc = 1.0 - LOSSES
    h = hedged_values(acc, hedge_weights(LOSSES, ETA))
    assert h[0] == pytest.approx((0.8 + 0.5 + 0.6) / 3)
    assert h[1] == pytest.approx(sum(e * a for e, a in zip(EXPECTED[1], [0.7, 0.9, 0.4], strict=True)))
    # Log-space: a huge eta over many rounds neither overflows nor yields NaN.
    w = hedge_weights(np.tile(LOSSES, (500, 1)), eta=1e4)
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w[-1], [1.0, 0.0, 0.0], atol=1e-12)


def test_bad_losses_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        hedge_weights(np.array([[1.5, 0.0]]), ETA)
    with pytest.raises(ValueError, match="NaN"):
        hedge_weights(np.array([[np.nan, 0.0]]), ETA)


# --------------------------------------------------------------------------- run_hedge on the assets

# The assets' per-round accuracies, experts in sorted order (ftml, moml_a, moml_b).
CTM = [[0.7, 0.6, 0.5], [0.6, 0.7, 0.6], [0.6, 0.7, 0.8], [0.7, 0.8, 0.7], [0.7, 0.9, 0.8]]
LTM = [[0.7, 0.6, 0.5], [0.7, 0.65, 0.6], [0.65, 0.7, 0.7], [0.675, 0.725, 0.7], [0.7, 0.76, 0.74]]


def _reference_hedge(acc: list[list[float]]) -> list[float]:
    """Independent textbook Hedge: multiplicative updates with beta = 10, applied after playing."""
    w = [1.0, 1.0, 1.0]
    played = []
    for row in acc:
        total = sum(w)
        played.append(sum(wi / total * a for wi, a in zip(w, row, strict=True)))
        w = [wi * 10 ** -(1 - a) for wi, a in zip(w, row, strict=True)]
    return played


@pytest.fixture
def runs_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "runs"
    shutil.copytree(ASSETS, folder)
    return folder


def test_run_hedge_writes_summary_and_run_dir(runs_folder: Path) -> None:
    report = run_hedge(runs_folder)
    assert report.experts == ("ftml", "moml_a", "moml_b")
    h_ctm, h_ltm = _reference_hedge(CTM), _reference_hedge(LTM)

    summary = json.loads((runs_folder / "hedge.json").read_text())
    assert summary["experts"] == ["ftml", "moml_a", "moml_b"]
    assert summary["eta"] == pytest.approx(ETA)
    ctm = summary["metrics"]["ctm"]
    assert ctm["best_expert"] == "moml_a"
    assert ctm["experts_final_acc_avg"]["moml_a"] == pytest.approx(0.74)
    assert ctm["experts_final_acc_avg"]["ftml"] == pytest.approx(0.66)
    assert ctm["hedge_final_acc_avg"] == pytest.approx(sum(h_ctm) / 5)
    assert ctm["regret_total"] == pytest.approx(3.7 - sum(h_ctm))  # Σ a_best - Σ h
    assert ctm["regret_per_round"] == pytest.approx((3.7 - sum(h_ctm)) / 5)
    ltm = summary["metrics"]["ltm"]
    assert ltm["best_expert"] == "moml_a"
    assert ltm["experts_final_acc_avg"]["moml_a"] == pytest.approx(0.687)
    assert ltm["hedge_final_acc_avg"] == pytest.approx(sum(h_ltm) / 5)
    # The no-regret bound ln(N)/eta + eta*T/8 holds.
    assert ctm["regret_total"] <= math.log(3) / ETA + ETA * 5 / 8

    spec = yaml.safe_load((runs_folder / "hedge" / "spec.yaml").read_text())
    assert spec["schema_version"] == 1
    assert spec["algorithm"] == {"name": "hedge"}
    assert spec["experts"] == ["ftml", "moml_a", "moml_b"]
    rows = [json.loads(line) for line in (runs_folder / "hedge" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    for t, row in enumerate(rows):
        assert row["ctm_acc"] == pytest.approx(h_ctm[t])
        assert row["ctm_acc_avg"] == pytest.approx(sum(h_ctm[: t + 1]) / (t + 1))
        assert row["ltm_acc_avg"] == pytest.approx(sum(h_ltm[: t + 1]) / (t + 1))
    assert rows[0]["ctm_weight/moml_a"] == pytest.approx(1 / 3)
    # Round 2's weights: in round 1 ftml lost 0.3, moml_a 0.4, moml_b 0.5.
    assert rows[1]["ctm_weight/moml_b"] == pytest.approx(10**-0.5 / (10**-0.3 + 10**-0.4 + 10**-0.5))


def test_second_invocation_ignores_its_own_output(runs_folder: Path) -> None:
    first = run_hedge(runs_folder)
    first_rows = (runs_folder / "hedge" / "metrics.jsonl").read_text()
    second = run_hedge(runs_folder)
    assert second.experts == first.experts == ("ftml", "moml_a", "moml_b")
    assert (runs_folder / "hedge" / "metrics.jsonl").read_text() == first_rows
    assert second.summaries["ctm"].hedged_final == first.summaries["ctm"].hedged_final
    assert not [p for p in runs_folder.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_reference_quirks_change_the_result(runs_folder: Path) -> None:
    honest = run_hedge(runs_folder).summaries["ctm"].hedged_final
    quirky = run_hedge(runs_folder, reference_quirks=True).summaries["ctm"].hedged_final
    assert quirky != pytest.approx(honest)
    assert json.loads((runs_folder / "hedge.json").read_text())["reference_quirks"] is True


def test_mismatched_round_counts_are_refused(runs_folder: Path) -> None:
    killed = runs_folder / "moml_b"
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    (killed / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (killed / "summary.json").unlink()  # a killed run never writes its summary
    with pytest.raises(
        RunDirError, match=r"moml_b: 3 rounds \(no summary.json: killed, or still running, after round 3\?\)"
    ):
        run_hedge(runs_folder)
    assert not (runs_folder / "hedge.json").exists()


def test_no_online_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="No online runs"):
        run_hedge(tmp_path)


def test_ctm_only_and_table(runs_folder: Path) -> None:
    report = run_hedge(runs_folder, metrics=("ctm",))
    assert set(report.summaries) == {"ctm"}
    console = Console(record=True, width=120)
    render_table(report, console)
    text = console.export_text()
    assert "moml_a (best)" in text
    assert "74.00" in text  # moml_a's final CTM running average, in percent
    assert "Hedge" in text and "regret" in text


def test_a_foreign_hedge_folder_is_never_overwritten(runs_folder: Path) -> None:
    (runs_folder / "hedge").mkdir()
    (runs_folder / "hedge" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not an earlier Hedge output"):
        run_hedge(runs_folder)
    assert (runs_folder / "hedge" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- the CLI's --metric


def _hedge_cli(folder: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["hedge", str(folder), *args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


@pytest.mark.parametrize(
    ("args", "chosen"),
    [(["--metric", "ltm"], ["ltm"]), (["--metric", "ctm"], ["ctm"]), ([], ["ctm", "ltm"])],
    ids=["ltm", "ctm", "default-both"],
)
def test_cli_metric_chooses_what_is_hedged(runs_folder: Path, args: list[str], chosen: list[str]) -> None:
    """Catches ``hedge --metric`` being ignored: hedge.json, hedge/ and the table hold exactly the chosen
    metrics, each with Hedge's value on that metric's accuracies."""
    code, out = _hedge_cli(runs_folder, *args)
    assert code == 0, out
    summary = json.loads((runs_folder / "hedge.json").read_text())
    assert sorted(summary["metrics"]) == chosen
    for m, acc in (("ctm", CTM), ("ltm", LTM)):
        if m in chosen:
            assert summary["metrics"][m]["hedge_final_acc_avg"] == pytest.approx(
                sum(_reference_hedge(acc)) / 5
            )
        assert (f"Hedge on {m.upper()} accuracy" in " ".join(out.split())) == (m in chosen)
    rows = [json.loads(line) for line in (runs_folder / "hedge" / "metrics.jsonl").read_text().splitlines()]
    assert {k.split("_")[0] for r in rows for k in r if k != "round"} == set(chosen)
    assert yaml.safe_load((runs_folder / "hedge" / "spec.yaml").read_text())["metrics"] == chosen


def test_cli_metric_ctm_hedges_runs_without_ltm(runs_folder: Path) -> None:
    """A run without LTM can be hedged on CTM only: the default (both) is refused, --metric ctm works."""
    path = runs_folder / "ftml" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if "ltm" not in k}) + "\n" for r in rows))
    code, out = _hedge_cli(runs_folder)
    assert code == 2 and "ltm_acc" in out and not (runs_folder / "hedge.json").exists()
    code, out = _hedge_cli(runs_folder, "--metric", "ctm")
    assert code == 0, out
    assert list(json.loads((runs_folder / "hedge.json").read_text())["metrics"]) == ["ctm"]


# --------------------------------------------------------------------------- huge eta, bad eta, atomic writes


def _limit_weights(acc: list[list[float]]) -> list[list[float]]:
    """Hedge as eta -> infinity, by hand: all weight on the best expert so far (ties share it equally)."""
    n = len(acc[0])
    rows, cumulative = [], [0.0] * n
    for row in [*acc, acc[0]]:  # one more row: the weights after the last round
        best = min(cumulative)
        leaders = [abs(c - best) < 1e-9 for c in cumulative]
        rows.append([lead / sum(leaders) for lead in leaders])
        cumulative = [c + 1.0 - a for c, a in zip(cumulative, row, strict=True)]
    return rows


@pytest.mark.parametrize("eta", ["1e6", "1e300"])
def test_huge_eta_gives_the_finite_limit(runs_folder: Path, eta: str) -> None:
    """Catches exp() of raw cumulative losses (NaN from inf - inf) and beta = e^eta overflowing into an
    internal error: the table is finite and equals the limit, all weight on the best expert so far."""
    code, out = _hedge_cli(runs_folder, "--eta", eta)
    assert code == 0, out
    assert "internal error" not in out and "Traceback" not in out and "nan" not in out.lower()
    summary = json.loads((runs_folder / "hedge.json").read_text())
    assert summary["eta"] == float(eta) and summary["beta"] is None  # e^eta exceeds the float range
    rows = [json.loads(line) for line in (runs_folder / "hedge" / "metrics.jsonl").read_text().splitlines()]
    names = ["ftml", "moml_a", "moml_b"]
    for m, acc in (("ctm", CTM), ("ltm", LTM)):
        limit = _limit_weights(acc)
        played = [sum(w * a for w, a in zip(limit[t], acc[t], strict=True)) for t in range(5)]
        for t, row in enumerate(rows):
            assert [row[f"{m}_weight/{n}"] for n in names] == pytest.approx(limit[t], abs=1e-9)
            assert row[f"{m}_acc"] == pytest.approx(played[t], abs=1e-9)
        metric = summary["metrics"][m]
        assert metric["hedge_final_acc_avg"] == pytest.approx(sum(played) / 5, abs=1e-9)
        assert [metric["final_weights"][n] for n in names] == pytest.approx(limit[5], abs=1e-9)
    assert _limit_weights(CTM)[2] == [0.5, 0.5, 0.0]  # a tie (ftml, moml_a) at round 3 was checked too


def test_weights_stay_finite_where_eta_times_the_loss_overflows() -> None:
    """Catches log-weights -eta * L computed before the shift: at eta = 1e308 every cumulative loss >= 2
    overflows to -inf, and -inf - (-inf) is NaN; relative to the best expert they stay finite."""
    losses = np.tile(LOSSES, (10, 1))
    w = hedge_weights(losses, eta=1e308)
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_array_equal(w[-1], [1.0, 0.0, 0.0])  # expert 0 leads by a whole loss unit by then


@pytest.mark.parametrize("eta", ["0", "-1", "nan", "inf", "-inf", "-0.0"])
def test_eta_outside_the_positive_finite_range_is_a_clear_error(runs_folder: Path, eta: str) -> None:
    """Catches a NaN or infinite eta reaching the arithmetic (NaN tables) and zero or negative eta (weights
    that grow with the loss): exit 2 with a message naming --eta and the valid range, nothing written."""
    code, out = _hedge_cli(runs_folder, "--eta", eta)
    text = " ".join(out.split())
    assert code == 2, text
    assert "--eta" in text and "positive" in text and "finite" in text, text
    assert "internal error" not in text and "Traceback" not in out
    assert not (runs_folder / "hedge.json").exists() and not (runs_folder / "hedge").exists()


def _result_set(folder: Path) -> dict[str, bytes]:
    """hedge.json and every file of hedge/, by path."""
    files = [folder / "hedge.json", *sorted((folder / "hedge").rglob("*"))]
    return {str(p.relative_to(folder)): p.read_bytes() for p in files if p.is_file()}


def test_a_failure_while_writing_leaves_the_previous_result_set(
    runs_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches hedge/ being swapped in before hedge.json is written (or a swap not undone): whichever rename
    fails, the folder keeps the whole previous set, with no staging folder left, and the failure is a clear
    RunDirError. Every rename of a successful re-run is failed in turn, counted first."""
    import errno

    run_hedge(runs_folder)
    before = _result_set(runs_folder)
    real_replace = os.replace
    calls: list[int] = []

    def counting(src: Any, dst: Any) -> None:
        calls.append(1)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", counting)
    run_hedge(runs_folder, eta=1.0)
    renames = len(calls)
    assert renames >= 4  # three files built aside, then at least the swap of hedge/ and hedge.json
    changed = _result_set(runs_folder)
    assert changed != before  # the re-run writes other values: the checks below can see a half-replaced set
    for k in range(1, renames + 1):
        calls.clear()

        def failing(src: Any, dst: Any, k: int = k) -> None:
            calls.append(1)
            if len(calls) == k:
                raise OSError(errno.EIO, "Input/output error", str(dst))
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", failing)
        with pytest.raises(RunDirError, match="cannot write Hedge's results"):
            run_hedge(runs_folder, eta=2.0)
        assert _result_set(runs_folder) == changed, f"rename {k} of {renames} failed"
        assert not [p.name for p in runs_folder.iterdir() if p.name.startswith(".")]


@contextmanager
def held_by_another_process(folder: Path) -> Iterator[int]:
    """A live process that holds ``folder``'s lock file (as a training run or another hedge would)."""
    holder = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, str(os.getpid()).encode())\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(folder / LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_an_expert_still_training_is_refused(runs_folder: Path) -> None:
    """Catches Hedge over a live run's rounds so far: a table of runs that have not finished."""
    expert = runs.find_runs(runs_folder)[0]
    with held_by_another_process(expert) as pid:
        with pytest.raises(RunDirError, match=f"still being trained by process {pid}"):
            run_hedge(runs_folder)
    assert not (runs_folder / "hedge.json").exists()
    run_hedge(runs_folder)  # the owner gone (killed: the OS dropped its lock), the same folder works
    assert (runs_folder / "hedge.json").is_file()


def test_two_hedges_never_write_one_folder_at_once(runs_folder: Path) -> None:
    """Catches two swaps interleaved: one run's hedge/ beside the other's hedge.json."""
    run_hedge(runs_folder)
    before = _result_set(runs_folder)
    with held_by_another_process(runs_folder) as pid:
        with pytest.raises(RunDirError, match=rf"pid {pid}\), which is writing Hedge's results"):
            run_hedge(runs_folder, eta=1.0)
        assert _result_set(runs_folder) == before


def piped_hedge(runs_folder: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``metacli hedge`` on the CTM accuracy with stdout a pipe and no COLUMNS (as a shell pipes it)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run(
        [sys.executable, "-m", "metacli", "hedge", str(runs_folder), "--metric", "ctm"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc, proc.stdout.splitlines()


def test_piped_table_keeps_every_run_name_whole(runs_folder: Path) -> None:
    """Catches piped output laid out for 80 columns: a long grid-point name must stay on one line, whole.

    Rich would fold the run column at 80 columns (``alpha=1.`` / ``0``) when stdout is a pipe."""
    long_name = "algorithm=moml_alpha=1.0_lr_ft=0.01_buffer=64_seed=0_rounds=5_ltm=true"
    (runs_folder / "moml_a").rename(runs_folder / long_name)
    proc, lines = piped_hedge(runs_folder)
    assert any(f"{long_name} (best)" in line and "74.00" in line for line in lines), proc.stdout
    assert max(len(line) for line in lines) > 80  # the table is wider than a default terminal


def test_piped_summary_of_a_narrow_table_stays_on_one_line(runs_folder: Path) -> None:
    """Catches the title and the regret summary set as the table's title and caption, which rich wraps at
    the table's width: with short run names the summary split as ``regret of Hedge:`` / ``0.335 over ...``."""
    proc, lines = piped_hedge(runs_folder)
    assert any(line.startswith("Hedge on CTM accuracy") and "eta =" in line for line in lines), proc.stdout
    assert any(re.match(r"best in hindsight: .*regret of Hedge: .* per round$", line) for line in lines), (
        proc.stdout
    )
