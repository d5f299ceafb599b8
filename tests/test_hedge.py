"""Hedge: weights against hand-computed values, the no-look-ahead property, and run_hedge on tiny runs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from metacli.cli import app
from metacli.errors import RunDirError
from metacli.hedge import hedge_weights, hedged_values, render_table, run_hedge

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
