"""A diverged few-shot run stops with exit 1, names the step and keeps the last good checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from metacli.cli import app
from metacli.engine.episodic import check_update, outer_update
from metacli.engine.guards import Diverged
from metacli.runlayer.guard import diverged_message

runner = CliRunner()
# Adam at 1e30: step 1 is finite (computed at the initialisation) and moves every parameter by about
# 1e30, so the loss of step 2 overflows.
ABSURD = [
    "--set",
    "algorithm.outer_lr=1e30",
    "--set",
    "train.checkpoint_every=1",
    "--set",
    "train.log_every=1",
]
BASE = ["train", "--algo", "maml", "--dataset", "sinusoid", "--set", "train.meta_iters=5", "--quiet"]


def test_divergence_stops_with_exit_1_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, [*BASE, *ABSURD, "--out", str(out)])
    assert result.exit_code == 1, result.output
    msg = " ".join(result.output.split())
    assert "the run diverged: the loss became non-finite at step 2" in msg
    assert "(step 1), was not touched" in msg and "--resume" in msg and "Traceback" not in result.output
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert saved["done"] == 1 and all(torch.isfinite(v).all() for v in saved["state"]["meta"].values())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1]  # nothing of the diverged step was logged
    assert not (out / "summary.json").exists()
    # the checkpoint is resumable: here with the steps that go non-finite skipped
    spec = out / "spec.yaml"
    spec.write_text(spec.read_text().replace("on_nonfinite: stop", "on_nonfinite: skip"))
    resumed = runner.invoke(app, ["train", "--resume", str(out), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "summary.json").read_text())["steps"] == 5


def test_skip_mode_counts_skipped_steps_and_never_updates_on_them(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, [*BASE, *ABSURD, "--set", "train.on_nonfinite=skip", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["skipped_steps"] for x in lines] == [0, 1, 2, 3, 4]  # every step after the first is skipped
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in saved["state"]["meta"].values())


def test_divergence_before_any_checkpoint_says_to_train_again(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, [*BASE, "--set", "algorithm.alpha=1e30", "--out", str(out)])
    assert result.exit_code == 1, result.output
    msg = " ".join(result.output.split())
    assert "at step 1" in msg and "No checkpoint had been written yet" in msg and "train again" in msg


def test_an_overflowed_adam_moment_is_divergence() -> None:
    """A finite meta-gradient of 1e30 in float32 overflows Adam's second moment ((1 - beta2) g^2 = 1e57 >
    3.4e38) to inf; the update m / sqrt(inf) is 0, so the parameter stays finite, frozen for good, and only
    the moment shows the run is dead."""
    meta = {"w": torch.zeros(3, requires_grad=True)}
    state = SimpleNamespace(meta=meta, optimizer=torch.optim.Adam(meta.values(), lr=1e-3), scheduler=None)
    outer_update(state, {"w": torch.tensor([1.0, 1e30, 1.0])})  # type: ignore[arg-type]
    assert torch.isfinite(meta["w"]).all() and meta["w"][1] == 0  # the parameter check alone passes
    with pytest.raises(Diverged) as raised:
        check_update(state, 7)  # type: ignore[arg-type]
    assert (raised.value.step, raised.value.what) == (7, "outer optimiser state")
    healthy = {"w": torch.zeros(3, requires_grad=True)}
    fine = SimpleNamespace(
        meta=healthy, optimizer=torch.optim.Adam(healthy.values(), lr=1e-3), scheduler=None
    )
    outer_update(fine, {"w": torch.tensor([1.0, 1e20, 1.0])})  # type: ignore[arg-type]
    check_update(fine, 1)  # type: ignore[arg-type]  # huge but representable: not divergence by itself


def test_skip_is_offered_only_where_it_can_help(tmp_path: Path) -> None:
    """``on_nonfinite: skip`` skips a step whose loss or meta-gradient is non-finite; an overflowed optimiser
    moment or parameter comes from an update already taken, so the message must not offer it."""
    offered = {
        what: "on_nonfinite" in diverged_message(tmp_path, Diverged(3, what), 2)
        for what in ("loss", "meta-gradient", "parameter", "outer optimiser state")
    }
    assert offered == {
        "loss": True,
        "meta-gradient": True,
        "parameter": False,
        "outer optimiser state": False,
    }
