"""A run trained 4 steps straight against the same run trained 2 steps and resumed to 4 (CLI, CPU)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from metacli.cli import app


def straight_and_resumed(
    base: list[str], tmp_path: Path, edit_spec: Callable[[str], str] = lambda text: text
) -> dict[str, Any]:
    """Assert that ``base`` run 4 steps equals it run 2 steps then ``--resume``d to 4 (last metrics line).

    ``edit_spec`` changes the stopped run's spec.yaml before the resume (e.g. into an older metacli's).

    Returns:
        The episodic state of the checkpoint written after 2 steps (what the resume started from).
    """
    runner = CliRunner()
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert runner.invoke(app, [*base, "--out", str(straight), "--set", "train.meta_iters=4"]).exit_code == 0
    # the straight run's resolved executor and threads: `auto` picks them by timing and load, which may
    # differ between two runs started apart (float32 loop and vmap round differently)
    resolved = yaml.safe_load((straight / "spec.yaml").read_text())
    threads = "null" if resolved["threads"] is None else resolved["threads"]
    same = ["--set", f"train.executor={resolved['train']['executor']}", "--set", f"threads={threads}"]
    assert (
        runner.invoke(app, [*base, *same, "--out", str(split), "--set", "train.meta_iters=2"]).exit_code == 0
    )
    saved: dict[str, Any] = torch.load(split / "checkpoints" / "last.pt", weights_only=False)["state"]
    spec = split / "spec.yaml"
    spec.write_text(edit_spec(re.sub(r"^(\s*meta_iters:) 2$", r"\1 4", spec.read_text(), flags=re.M)))
    result = runner.invoke(app, ["train", "--resume", str(split), "--quiet"])
    assert result.exit_code == 0, result.output
    a = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert a[-1]["step"] == b[-1]["step"] == 4
    assert a[-1] == pytest.approx({**b[-1], "wall_time": a[-1]["wall_time"]}, rel=1e-6)
    return saved
