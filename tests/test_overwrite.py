"""``metacli train --overwrite``: an existing run is replaced, never lost when the new run fails early."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from metacli.cli import app

runner = CliRunner()
BASE = ["train", "--algo", "maml", "--dataset", "sinusoid", "--set", "eval.tasks=4", "--quiet"]


def summary(run: Path) -> dict[str, float]:
    return json.loads((run / "summary.json").read_text())


def test_overwrite_replaces_an_existing_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert runner.invoke(app, [*BASE, "--set", "train.meta_iters=3", "--out", str(run)]).exit_code == 0
    refused = runner.invoke(app, [*BASE, "--set", "train.meta_iters=5", "--out", str(run)])
    assert refused.exit_code == 2 and "--overwrite" in refused.output and summary(run)["steps"] == 3
    result = runner.invoke(app, [*BASE, "--set", "train.meta_iters=5", "--out", str(run), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert summary(run)["steps"] == 5 and "meta_iters: 5" in (run / "spec.yaml").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # nothing left aside


def test_a_new_run_that_fails_before_its_first_checkpoint_puts_the_old_one_back(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert runner.invoke(app, [*BASE, "--set", "train.meta_iters=3", "--out", str(run)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    # diverges at step 1, before any checkpoint
    result = runner.invoke(app, [*BASE, "--set", "algorithm.alpha=1e30", "--out", str(run), "--overwrite"])
    assert result.exit_code == 1, result.output
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = runner.invoke(app, [*BASE, "--set", "train.meta_iters=3", "--out", str(mine), "--overwrite"])
    assert result.exit_code == 2 and "not a metacli run directory" in " ".join(result.output.split())
    assert (mine / "notes.txt").read_text() == "keep me"
