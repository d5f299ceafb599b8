"""Bad input over the four subcommands: exit code 2, a message naming the cause, no traceback, nothing lost.

One finished run (``run``) sits in the workspace through every case; after each bad command its files are
byte- and mtime-identical, and no half-written run directory is left behind.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metacli.cli import app

runner = CliRunner()
PRESET = ["train", "--algo", "maml", "--dataset", "sinusoid"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run, an empty folder, runs without and with a truncated checkpoint, and bad specs."""
    w = tmp_path_factory.mktemp("bad_inputs")
    run = w / "run"
    args = [*PRESET, "--set", "train.meta_iters=4", "--set", "eval.tasks=4", "--out", str(run), "--quiet"]
    assert runner.invoke(app, args).exit_code == 0
    (w / "bad.yaml").write_text("algorithm: {name: maml\n  alpha: [")
    (w / "v2.yaml").write_text(
        "schema_version: 2\nalgorithm: {name: maml}\nmodel: {name: mlp}\ndata: {name: sinusoid}\n"
    )
    (w / "grid.yaml").write_text(
        "algorithm: {name: maml}\nmodel: {name: mlp}\ndata: {name: sinusoid}\n"
        "grid: {algorithm.alphaa: [0.1, 0.2]}\n"
    )
    (w / "empty").mkdir()
    (w / "nock").mkdir()
    (w / "nock" / "spec.yaml").write_text((run / "spec.yaml").read_text())
    (w / "nock" / "metrics.jsonl").write_text("")
    shutil.copytree(run, w / "trunc")
    last = w / "trunc" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    return w


def fingerprint(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "train missing file": (lambda W: ["train", str(W / "nope.yaml")], "does not exist"),
    "train bad yaml": (lambda W: ["train", str(W / "bad.yaml")], "not valid YAML at line 2"),
    "train misspelt": (lambda W: [*PRESET, "--set", "algorithm.alpah=0.1"], "Did you mean algorithm.alpha?"),
    "train wrong type": (
        lambda W: [*PRESET, "--set", "algorithm.alpha=fast"],
        "algorithm.alpha: Input should be a valid number",
    ),
    "train negative lr": (
        lambda W: [*PRESET, "--set", "algorithm.alpha=-1"],
        "algorithm.alpha: Input should be greater than 0",
    ),
    "train zero lr outer": (
        lambda W: [*PRESET, "--set", "algorithm.outer_lr=0"],
        "algorithm.outer_lr: Input should be greater than 0",
    ),
    "train zero shots": (
        lambda W: [*PRESET, "--set", "data.shots=0"],
        "data.shots: Input should be greater than or equal to 1",
    ),
    "train unknown algo": (
        lambda W: ["train", "--algo", "mamlx", "--dataset", "sinusoid"],
        "Input tag 'mamlx'",
    ),
    "train unknown dataset": (
        lambda W: ["train", "--algo", "maml", "--dataset", "imagenet"],
        "Unknown dataset 'imagenet'",
    ),
    "train protocol mismatch": (
        lambda W: ["train", "--algo", "moml", "--dataset", "sinusoid"],
        "algorithm 'moml' is an online method",
    ),
    "train online section few-shot": (
        lambda W: [*PRESET, "--set", "online.rounds=3"],
        "the online: section does not apply",
    ),
    "train train section online": (
        lambda W: ["train", "--algo", "moml", "--dataset", "smnist", "--set", "train.meta_batch=3"],
        "the train: section does not apply",
    ),
    "train ways > classes": (
        lambda W: ["train", "--algo", "maml", "--dataset", "miniimagenet", "--set", "data.ways=30"],
        "ways = 30, but the smallest split",
    ),
    "train queries too many": (
        lambda W: ["train", "--algo", "maml", "--dataset", "miniimagenet", "--set", "data.queries=600"],
        "shots + queries = 601 images",
    ),
    "train missing data": (
        lambda W: ["train", "--algo", "maml", "--dataset", "omniglot", "--data-root", str(W / "empty")],
        "Omniglot not found",
    ),
    "train schema v2": (lambda W: ["train", str(W / "v2.yaml")], "schema_version: Input should be 1"),
    "train set without =": (
        lambda W: [*PRESET, "--set", "algorithm.alpha"],
        "is not of the form key.path=value",
    ),
    "train set through scalar": (
        lambda W: [*PRESET, "--set", "seed.x=1"],
        "seed: Input should be a valid integer",
    ),
    "train file and algo": (
        lambda W: ["train", str(W / "v2.yaml"), "--algo", "maml"],
        "Give either a spec file or --algo/--dataset",
    ),
    "train threads 0": (lambda W: [*PRESET, "--set", "threads=0"], "threads must be at least 1"),
    "train eval tasks 1": (
        lambda W: [*PRESET, "--set", "eval.tasks=1"],
        "eval.tasks: Input should be greater than or equal to 2",
    ),
    "train dtype": (
        lambda W: [*PRESET, "--set", "dtype=float16"],
        "dtype: Input should be 'float32' or 'float64'",
    ),
    "train device": (lambda W: [*PRESET, "--set", "device=tpu"], "Unknown device 'tpu'"),
    "train executor": (
        lambda W: [*PRESET, "--set", "train.executor=foo"],
        "train.executor: Input should be 'auto', 'loop' or 'vmap'",
    ),
    "train meta_batch 0": (
        lambda W: [*PRESET, "--set", "train.meta_batch=0"],
        "train.meta_batch: Input should be greater than or equal to 1",
    ),
    "train negative eval steps": (
        lambda W: [*PRESET, "--set", "eval.inner_steps=[-1]"],
        "eval.inner_steps.0: Input should be greater than or equal to 0",
    ),
    "train grid unknown field": (
        lambda W: ["train", str(W / "grid.yaml"), "--out", str(W / "g")],
        "algorithm.alphaa: Extra inputs are not permitted",
    ),
    "train existing out": (
        lambda W: [*PRESET, "--set", "train.meta_iters=4", "--out", str(W / "run")],
        "hold another spec than this command asks for",
    ),
    "train resume missing": (lambda W: ["train", "--resume", str(W / "nope")], "no such run directory"),
    "train resume not a run": (lambda W: ["train", "--resume", str(W / "empty")], "it has no spec.yaml"),
    "train resume truncated ckpt": (lambda W: ["train", "--resume", str(W / "trunc")], "cannot be read"),
    "train cuda absent": (lambda W: [*PRESET, "--device", "cuda"], "CUDA is not available here"),
    "eval missing dir": (lambda W: ["evaluate", str(W / "nope")], "is not a metacli run directory"),
    "eval no runs folder": (lambda W: ["evaluate", str(W / "empty")], "holds no few-shot run directories"),
    "eval bad checkpoint name": (
        lambda W: ["evaluate", str(W / "run"), "--checkpoint", "foo"],
        "--checkpoint foo: choose best or last",
    ),
    "eval tasks 1": (
        lambda W: ["evaluate", str(W / "run"), "--tasks", "1"],
        "eval.tasks: Input should be greater than or equal to 2",
    ),
    "eval steps -1": (
        lambda W: ["evaluate", str(W / "run"), "--steps", "-1"],
        "eval.inner_steps.0: Input should be greater than or equal to 0",
    ),
    "eval truncated ckpt": (lambda W: ["evaluate", str(W / "trunc")], "cannot be read"),
    "eval no checkpoint": (lambda W: ["evaluate", str(W / "nock")], "train it first"),
    "eval best missing": (
        lambda W: ["evaluate", str(W / "run"), "--checkpoint", "best"],
        "has no best checkpoint",
    ),
    "hedge missing": (lambda W: ["hedge", str(W / "nope")], "is not a folder"),
    "hedge empty": (lambda W: ["hedge", str(W / "empty")], "No online runs"),
    "hedge few-shot only": (lambda W: ["hedge", str(W)], "No online runs"),
    "hedge bad metric": (lambda W: ["hedge", str(W), "--metric", "foo"], "Unknown metric(s) ['foo']"),
    "hedge negative eta": (lambda W: ["hedge", str(W), "--eta", "-1"], "eta must be a positive number"),
    "plot missing": (lambda W: ["plot", str(W / "nope")], "is not a folder"),
    "plot empty": (lambda W: ["plot", str(W / "empty")], "No runs with metrics to plot"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_clear_error_and_loses_nothing(
    name: str, workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default --out (runs/...) would land here
    monkeypatch.setenv("METACLI_OFFLINE", "1")
    args, cause = CASES[name]
    before = {d: fingerprint(workspace / d) for d in ("run", "nock", "trunc")}
    result = runner.invoke(app, args(workspace))
    # the first line of a run names its folder; the error follows it
    said = [x for x in result.output.splitlines() if not x.startswith(("training ", "resuming "))]
    text = " ".join(" ".join(said).split())
    assert result.exit_code == 2, text
    assert text.startswith("error:") and cause in text, text
    # pydantic's "Value error, " prefix and a sentence's full stop doubled by the one around it
    assert "Value error" not in text and not re.search(r"[^.]\.\.(\s|$)", text), text
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert {d: fingerprint(workspace / d) for d in before} == before
    assert not (tmp_path / "runs").exists() and not (workspace / "g").exists()  # nothing half-written


def test_there_are_at_least_40_cases_over_the_four_subcommands() -> None:
    commands = {CASES[n][0](Path("/w"))[0] for n in CASES}
    assert len(CASES) >= 40 and commands == {"train", "evaluate", "hedge", "plot"}


def test_debug_shows_the_traceback_and_an_internal_error_is_one_paragraph(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("METACLI_DEBUG", "0")  # off, and restored after the test (--debug sets it)
    plain = runner.invoke(app, ["train", "--set", "algorithm.alpha=-1"])
    assert plain.exit_code == 2 and "Traceback" not in plain.output
    debug = runner.invoke(app, ["--debug", "train", "--set", "algorithm.alpha=-1"])
    assert debug.exit_code != 0 and type(debug.exception).__name__ == "SpecError"  # raised, not printed

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("metacli.commands.train_command", broken)
    monkeypatch.setenv("METACLI_DEBUG", "0")
    bug = runner.invoke(app, ["train"])
    text = " ".join(bug.output.split())
    assert bug.exit_code == 1 and "internal error: ZeroDivisionError: a bug" in text and "--debug" in text
    assert "Traceback" not in bug.output
