"""The run layer's contract with the engine's loops: when checkpoints are written, what summary.json says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metacli.cli import app
from metacli.engine.build import build
from metacli.runlayer.jobs import Hooks, make_job
from metacli.spec import load_spec

runner = CliRunner()


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def saves_of(spec_args: list[str], algo: str, dataset: str, data_root: Path | None = None) -> list[int]:
    """The steps or rounds at which a job asks for a checkpoint, over a whole short run."""
    overrides = [*spec_args] + ([f"data_root={data_root}"] if data_root else [])
    spec, _ = load_spec(None, overrides, algo=algo, dataset=dataset)
    parts = build(spec, device="cpu")
    job = make_job(parts.spec or spec, parts, None)
    saved: list[int] = []
    job.run(Hooks(lambda i, row: None, lambda best: saved.append(job.done), lambda info: None,
                  lambda: False, 0.0, []))  # fmt: skip
    return saved


def test_online_checkpoints_every_n_rounds_and_at_the_end(data_root: Path) -> None:
    saved = saves_of(
        ["online.rounds=7", "online.checkpoint_every=3", "algorithm.K=1"], "moml", "smnist", data_root
    )
    assert saved == [3, 6, 7]


def test_episodic_checkpoints_every_n_steps_and_at_the_end() -> None:
    args = ["train.meta_iters=7", "train.checkpoint_every=3", "train.meta_batch=2", "train.val_every=0"]
    assert saves_of(args, "maml", "sinusoid") == [3, 6, 7]


def test_summary_json_names_the_run_and_its_numbers(tmp_path: Path, data_root: Path) -> None:
    few = tmp_path / "few"
    args = ["train", "--set", "train.meta_iters=2", "--set", "train.meta_batch=2", "--set", "eval.tasks=2"]
    assert runner.invoke(app, [*args, "--set", "train.val_every=1", "--out", str(few), "-q"]).exit_code == 0
    common = {
        "algorithm",
        "dataset",
        "device",
        "threads",
        "torch",
        "ranks",
        "train_seconds",
        "total_wall_time",
    }
    summary = json.loads((few / "summary.json").read_text())
    assert set(summary) == common | {"steps", "executor", "peak_step_mb", "best_step", "best_val"}
    assert (summary["algorithm"], summary["dataset"], summary["steps"], summary["ranks"]) == (
        "maml",
        "sinusoid",
        2,
        1,
    )
    online = tmp_path / "online"
    moml = ["train", "--algo", "moml", "--dataset", "smnist", "--data-root", str(data_root)]
    result = runner.invoke(
        app, [*moml, "--set", "online.rounds=3", "--set", "algorithm.K=1", "--out", str(online), "-q"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((online / "summary.json").read_text())
    keys = {
        "rounds",
        "ctm_acc_avg",
        "ltm_acc_avg",
        "ctm_loss_avg",
        "ltm_loss_avg",
        "task_bytes",
        "state_bytes",
    }
    assert set(summary) == common | keys and summary["rounds"] == 3
    rows = [json.loads(x) for x in (online / "metrics.jsonl").read_text().splitlines()]
    assert (
        summary["ltm_acc_avg"] == rows[-1]["ltm_acc_avg"]
        and summary["total_wall_time"] >= rows[-1]["wall_time"]
    )
