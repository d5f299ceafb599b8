"""``train.executor: auto`` by measurement: the record, the argmin, no trace in training, the memory skip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from typer.testing import CliRunner

from metacli.cli import app
from metacli.engine import executor_choice
from metacli.engine.build import EpisodicParts
from metacli.engine.parallel import DataParallel
from metacli.runlayer import parts as run_parts
from metacli.runlayer.parts import build_run
from metacli.spec import load_spec
from tests.test_distributed import warm_start_run
from tests.test_kill_resume import assert_bitwise_equal

SINUSOID = ["--set", "dtype=float64", "--set", "train.meta_batch=4", "--set", "train.meta_iters=3"]
SINUSOID += ["--set", "train.log_every=1", "--set", "train.val_every=0", "--set", "eval.tasks=2", "-q"]


def train(run: Path, *args: str) -> str:
    """``metacli train ARGS --out RUN`` in this process; its output."""
    result = CliRunner().invoke(app, ["train", *args, "--out", str(run)])
    assert result.exit_code == 0, result.output
    return result.output


def saved(run: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["state"]
    return state


@pytest.mark.parametrize("case", ["sinusoid maml", "miniimagenet memory_reduced with warm starts"])
def test_auto_trains_bit_for_bit_as_the_executor_it_chose(tmp_path: Path, case: str) -> None:
    """The timed steps draw tasks and touch the warm starts; all of it is put back, so the run is exactly the
    one that names its executor. The record holds both times, the choice is their argmin, and the first lines
    of the output say so."""
    args = SINUSOID if case.startswith("sinusoid") else warm_start_run(tmp_path / "data", meta_iters=3)
    out = train(tmp_path / "auto", *args, "--set", "train.executor=auto")
    record = json.loads((tmp_path / "auto" / "summary.json").read_text())["executor_auto"]
    times = record["seconds_per_step"]
    assert set(times) == {"loop", "vmap"} and all(t > 0 for t in times.values()) and record["skipped"] == {}
    chosen = record["chosen"]
    assert chosen == min(times, key=times.get)
    assert f"executor auto: {chosen} (per meta-step: loop " in out.splitlines()[1]
    train(tmp_path / "named", *args, "--set", f"train.executor={chosen}")
    assert_bitwise_equal(saved(tmp_path / "auto"), saved(tmp_path / "named"))
    rows = [(tmp_path / r / "metrics.jsonl").read_text().splitlines() for r in ("auto", "named")]
    losses = [[json.loads(line)["query_loss"] for line in r] for r in rows]
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_a_named_executor_is_not_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("measured although the spec names its executor")

    monkeypatch.setattr(run_parts, "measure_executors", refuse)
    out = train(tmp_path / "run", *SINUSOID, "--set", "train.executor=loop")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["executor"] == "loop" and "executor_auto" not in summary and "executor auto" not in out


def sinusoid_parts(meta_batch: int) -> EpisodicParts:
    spec, _ = load_spec(None, ["dtype=float64", "train.executor=loop", f"train.meta_batch={meta_batch}"])
    parts = build_run(spec, device="cpu").parts
    assert isinstance(parts, EpisodicParts)
    return parts


def test_vmap_that_would_not_fit_is_not_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    """With little memory free, vmap (every task's graph at once) is skipped with the sizes, and the loop
    is chosen without being compared to it."""
    tried: list[str] = []
    step = executor_choice.run_step
    monkeypatch.setattr(executor_choice, "free_bytes", lambda device: 1024)
    monkeypatch.setattr(executor_choice, "run_step", lambda p, m, t, e: (tried.append(e), step(p, m, t, e)))
    choice = executor_choice.measure_executors(sinusoid_parts(8), 8, repeats=3)
    assert choice.chosen == "loop" and set(choice.seconds) == {"loop"}
    assert choice.skipped["vmap"].startswith("needs about") and "MB free" in choice.skipped["vmap"]
    assert "vmap" not in tried and tried.count("loop") == 4  # a warm-up and three timed steps
    assert "vmap not tried: needs about" in choice.line()


def test_the_obstacles_to_vmap() -> None:
    assert executor_choice.vmap_obstacle(1, 10, None) == "one task per step: nothing to batch"
    assert executor_choice.vmap_obstacle(4, 10**6, None) is None  # free memory unknown: tried
    assert executor_choice.vmap_obstacle(4, 10**6, 5 * 10**6) is None  # 4 MB of 0.8 x 5 MB
    assert executor_choice.vmap_obstacle(5, 10**6, 5 * 10**6) is not None  # 5 MB of 0.8 x 5 MB


def test_a_step_vmap_cannot_run_leaves_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    step = executor_choice.run_step

    def no_vmap(p: Any, m: Any, t: Any, e: str) -> None:
        if e == "vmap":
            raise RuntimeError("vmap: batching rule not implemented for aten::foo\nmore detail")
        step(p, m, t, e)

    monkeypatch.setattr(executor_choice, "run_step", no_vmap)
    choice = executor_choice.measure_executors(sinusoid_parts(4), 4, repeats=1)
    assert choice.chosen == "loop"
    assert choice.skipped == {"vmap": "unsupported (vmap: batching rule not implemented for aten::foo)"}


class OtherRank:
    """A stand-in for a two-rank group whose other rank timed ``theirs`` (loop, vmap; inf: not tried)."""

    def __init__(self, theirs: list[float]) -> None:
        self.theirs = theirs

    def slowest(self, values: list[float]) -> list[float]:
        return [max(a, b) for a, b in zip(values, self.theirs, strict=True)]


def other_rank(theirs: list[float]) -> DataParallel:
    return cast(DataParallel, OtherRank(theirs))


def test_ranks_agree_on_the_slowest_times_and_on_what_was_left_out() -> None:
    both = executor_choice.slowest_rank(other_rank([2.0, 0.1]), {"loop": 1.0, "vmap": 0.5}, {})
    assert both == ({"loop": 2.0, "vmap": 0.5}, {})
    theirs_only = executor_choice.slowest_rank(
        other_rank([2.0, float("inf")]), {"loop": 1.0, "vmap": 0.5}, {}
    )
    assert theirs_only == ({"loop": 2.0}, {"vmap": "not tried on another rank"})
    mine = executor_choice.slowest_rank(other_rank([0.5, 0.2]), {"loop": 1.0}, {"vmap": "out of memory"})
    assert mine == ({"loop": 1.0}, {"vmap": "out of memory"})


def test_the_median_step_decides_not_a_lucky_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """vmap's one fast step among slow ones (a shared machine) must not win it the choice."""
    scripted = {"loop": iter([1.0, 1.1, 0.9]), "vmap": iter([0.2, 2.0, 2.1])}
    monkeypatch.setattr(executor_choice, "step_seconds", lambda p, m, t, e: next(scripted[e]))
    choice = executor_choice.measure_executors(sinusoid_parts(4), 4, repeats=3)
    assert choice.seconds == {"loop": 1.0, "vmap": 2.0} and choice.chosen == "loop"
