"""The run layer's contract with the engine's loops: when checkpoints are written, what summary.json says."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from metacli.cli import app
from metacli.engine.build import EpisodicParts
from metacli.progress import DataBars, units_text
from metacli.runlayer.jobs import Hooks, make_job
from metacli.runlayer.parts import build_run, loop_settings
from metacli.spec import load_spec

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("session_cache")


def saves_of(spec_args: list[str], algo: str, dataset: str, data_root: Path | None = None) -> list[int]:
    """The steps or rounds at which a job asks for a checkpoint, over a whole short run."""
    overrides = [*spec_args] + ([f"data_root={data_root}"] if data_root else [])
    spec, _ = load_spec(None, overrides, algo=algo, dataset=dataset)
    built = build_run(spec, device="cpu")
    job = make_job(built.spec, built.parts, None)
    saved: list[int] = []
    job.run(Hooks(lambda i, row: None, lambda best: saved.append(job.done), lambda done, info: None,
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
    assert set(summary) == common | {
        "steps",
        "executor",
        "peak_step_mb",
        "peak_step_measure",
        "best_step",
        "best_val",
    }
    rows = [json.loads(line) for line in (few / "metrics.jsonl").read_text().splitlines()]
    logged = [row["peak_step_mb"] for row in rows if "peak_step_mb" in row]
    assert summary["peak_step_mb"] == max(logged) > 0  # the run's largest step, a number, not a sentence
    assert "profiler" in summary["peak_step_measure"]
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


def test_the_engine_imports_no_spec_and_no_display() -> None:
    """The front door, both loops and every dataset load without metacli.spec, the run layer or rich."""
    code = (
        "import sys\n"
        "import metacli.engine.build, metacli.engine.episodic, metacli.engine.online\n"
        "from metacli.engine.data import DATASETS\n"
        "print(sorted(m for m in ('rich', 'metacli.spec', 'metacli.progress', 'metacli.runlayer') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_data_bars_show_each_phase_until_its_total_and_nothing_when_quiet() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with DataBars(console=console) as bars:
        opener = bars.opener()
        assert opener is not None
        report = opener("decoding", 3, "images")
        report(2, {})
        assert [t.completed for t in bars._progress.tasks] == [2]  # type: ignore[union-attr]
        report(3, {})
        report(3, {})  # a finished bar takes no more counts
        assert bars._progress.tasks == []  # type: ignore[union-attr]
    assert DataBars(quiet=True, console=console).opener() is None
    assert DataBars(console=Console(file=io.StringIO())).opener() is None  # not a terminal
    assert units_text(1.5e6, 3e6, "bytes") == "1.5/3.0 MB" and units_text(4, None, "images") == "4 images"


def test_resolve_auto_records_the_chosen_executor_and_threads() -> None:
    spec, _ = load_spec(algo="maml", dataset="sinusoid", overrides=["threads=auto", "train.executor=auto"])
    built = build_run(spec, device="cpu")
    assert isinstance(built.parts, EpisodicParts)
    assert built.spec.threads == torch.get_num_threads() and built.spec.train.executor in ("loop", "vmap")
    assert loop_settings(built.spec).executor == built.spec.train.executor
    with pytest.raises(ValueError, match="still auto"):
        loop_settings(spec)
    torch.set_num_threads(1)


def test_runs_and_plot_name_an_online_metric_with_one_tensorboard_tag(tmp_path: Path) -> None:
    """Catches a run logging ``ctm_acc`` while ``metacli plot`` writes ``CTM/acc`` for the same metric."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from metacli.plot import run_curves, write_tensorboard
    from metacli.runlayer.core import RunLogger

    row = {"ctm_acc": 0.5, "ltm_acc": 0.4, "ctm_acc_avg": 0.5, "ltm_acc_avg": 0.4}
    (tmp_path / "run").mkdir()
    logger = RunLogger(tmp_path / "run", "round", None)
    logger(1, row)
    logger.close()
    curves = run_curves("run", {"algorithm": {"name": "moml"}}, [{"round": 1, **row}])
    assert curves is not None
    write_tensorboard([curves], tmp_path / "plotted")

    def tags(logdir: Path) -> set[str]:
        events = EventAccumulator(str(logdir))
        events.Reload()
        return set(events.Tags()["scalars"])

    logged, plotted = tags(tmp_path / "run"), tags(tmp_path / "plotted" / "run")
    assert plotted == logged == {"CTM/acc", "LTM/acc", "CTM_Avg/acc", "LTM_Avg/acc"}
