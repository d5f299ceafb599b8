"""End to end on the real S-MNIST stream: train, resume, grid, hedge and plot through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metacli.cli import app

runner = CliRunner()
SHORT = ["--set", "online.rounds=4", "--set", "algorithm.K=2", "--quiet"]


pytestmark = pytest.mark.usefixtures("session_cache")


def train(*args: str) -> str:
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    return result.output


def moml_train(data_root: Path, run: Path) -> list[str]:
    """``metacli train`` of the MOML S-MNIST preset from ``data_root`` into ``run``."""
    return [
        "train",
        "--algo",
        "moml",
        "--dataset",
        "smnist",
        "--data-root",
        str(data_root),
        "--out",
        str(run),
    ]


def rows(run: Path) -> list[dict[str, float]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_moml_run_directory(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "moml"
    train("--algo", "moml", "--dataset", "smnist", "--data-root", str(data_root), "--out", str(run), *SHORT)
    log = rows(run)
    assert [r["round"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["ctm_acc_avg"] == pytest.approx(sum(r["ctm_acc"] for r in log) / 4)
    assert len({r["state_bytes"] for r in log}) == 1  # MOML's state is constant: theta, lambda, omega
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 4 and 0.0 <= summary["ltm_acc_avg"] <= 1.0


def test_online_resume_matches_a_straight_run(data_root: Path, tmp_path: Path) -> None:
    common = [
        "--algo",
        "ftml",
        "--dataset",
        "smnist",
        "--data-root",
        str(data_root),
        "--quiet",
        "--set",
        "algorithm.K=2",
        "--set",
        "online.checkpoint_every=1",
    ]
    train(*common, "--out", str(tmp_path / "a"), "--set", "online.rounds=4")
    train(*common, "--out", str(tmp_path / "b"), "--set", "online.rounds=2")
    spec = (tmp_path / "b" / "spec.yaml").read_text().replace("rounds: 2", "rounds: 4")
    (tmp_path / "b" / "spec.yaml").write_text(spec)
    train("--resume", str(tmp_path / "b"), "--quiet")
    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    strip = [{k: v for k, v in r.items() if k != "wall_time"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "wall_time"} for r in b]


def test_grid_then_hedge_then_plot(data_root: Path, tmp_path: Path) -> None:
    spec = tmp_path / "tiny_grid.yaml"
    spec.write_text(
        "algorithm: {name: moml, K: 2}\nmodel: {name: mlp, hidden: [200]}\ndata: {name: smnist}\n"
        f"data_root: {data_root}\nonline: {{rounds: 3}}\ngrid: {{algorithm.alpha: [1.0, 10.0]}}\n"
    )
    out = tmp_path / "results"
    train(str(spec), "--out", str(out), "--quiet")
    assert sorted(p.name for p in out.iterdir()) == ["alpha=1.0", "alpha=10.0"]
    again = train(str(spec), "--out", str(out), "--quiet")  # finished points are skipped
    assert sum(line.startswith("skipped ") for line in again.splitlines()) == 2 and "done" not in again
    result = runner.invoke(app, ["hedge", str(out)])
    assert result.exit_code == 0, result.output
    assert "alpha=1.0" in result.output and (out / "hedge.json").is_file()
    result = runner.invoke(app, ["plot", str(out), "--out", str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figs" / "ctm_avg.png").stat().st_size > 10_000


def test_missing_mnist_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert os.environ.get("METACLI_OFFLINE") == "1"
    monkeypatch.setenv(
        "XDG_CACHE_HOME", str(tmp_path / "no-cache")
    )  # no stream built earlier to fall back on
    run = tmp_path / "run"
    result = runner.invoke(app, [*moml_train(tmp_path / "empty", run), *SHORT])
    assert result.exit_code == 2
    assert "train-images-idx3-ubyte" in result.output and "Traceback" not in result.output
    assert not run.exists()


def test_a_diverged_online_run_stops_at_the_round_with_exit_1(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = moml_train(data_root, run)
    result = runner.invoke(
        app, [*args, *SHORT, "--set", "algorithm.inner_lr=1e30", "--set", "online.checkpoint_every=1"]
    )
    assert result.exit_code == 1, result.output
    msg = " ".join(result.output.split())
    assert "the model became non-finite at round" in msg and "Traceback" not in result.output
    assert not (run / "summary.json").exists()
    logged = [r["round"] for r in rows(run)] if (run / "metrics.jsonl").is_file() else []
    diverged_at = int(msg.split("non-finite at round ")[1].split(".")[0])
    assert logged == list(range(1, diverged_at))  # every good round, not the diverged one
