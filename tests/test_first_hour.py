"""What a new user meets in the first hour: visible progress, commands that lead into each other, help that
reads well at 80 columns, and nothing left behind by a failed first run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metacli.cli import app

SHORT = ["--set", "train.meta_batch=2", "--set", "eval.tasks=2", "--set", "train.log_every=1"]


def train_cmd(*args: str) -> list[str]:
    """``python -m metacli train`` of a short sinusoid run with ``args``."""
    return [sys.executable, "-m", "metacli", "train", *SHORT, *args]


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache"), **extra}


def test_a_piped_run_names_its_folder_first_and_shows_progress_before_it_ends(tmp_path: Path) -> None:
    """No TTY (a pipe): the first line names the run folder; plain progress lines come while it runs."""
    env = env_for(tmp_path, METACLI_PROGRESS_EVERY="0.3")
    cmd = train_cmd("--set", "train.meta_iters=100000", "--out", "run")
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    try:
        first = proc.stderr.readline()
        assert "run" in first.split() and first.startswith("training maml on sinusoid into"), first
        deadline = time.monotonic() + 120
        line = ""
        while "steps (" not in line:
            assert time.monotonic() < deadline, "no progress line"
            line = proc.stderr.readline()
        assert proc.poll() is None, "the progress line came only at the end"
        assert re.search(r"\d+/100000 steps \(\d+%\), [\d.]+ step/s, elapsed \d:\d\d:\d\d, eta ", line), line
        assert "progress.py" not in line and "\x1b[" not in line  # no source location, no colour codes
    finally:
        proc.kill()
        proc.communicate()


def test_quiet_lines_are_whole_lines_without_a_source_location(tmp_path: Path) -> None:
    env = env_for(tmp_path, METACLI_PROGRESS_EVERY="0", COLUMNS="40")
    cmd = train_cmd("--set", "train.meta_iters=3", "--out", "r", "-q")
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    steps = [x for x in out.stderr.splitlines() if "steps (" in x]
    assert len(steps) == 3 and all(len(x) > 40 and "progress.py" not in x for x in steps)  # not wrapped


def test_plot_and_hedge_without_a_folder_look_where_train_writes(tmp_path: Path) -> None:
    runner = CliRunner()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        trained = runner.invoke(app, ["train", *SHORT, "--set", "train.meta_iters=2", "-q"])
        assert trained.exit_code == 0, trained.output
        run = next((tmp_path / "runs").iterdir())
        last = trained.output.strip().splitlines()[-1]
        assert last == f"next: metacli evaluate runs/{run.name}; metacli plot runs/{run.name}"
        plotted = runner.invoke(app, ["plot"])
        assert plotted.exit_code == 0, plotted.output
        assert "wrote runs/figures/" in plotted.output and plotted.output.strip().splitlines()[-1].startswith(
            "next:"
        )
        hedged = runner.invoke(app, ["hedge"])  # a few-shot run only: the message says so, about runs/
        assert hedged.exit_code == 2 and "runs" in hedged.output
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("command", ["train", "evaluate", "hedge", "plot"])
def test_help_at_80_columns_shows_every_option_whole_and_no_type_markers(
    command: str, tmp_path: Path
) -> None:
    import typer.main

    env = env_for(tmp_path, COLUMNS="80")
    out = subprocess.run(
        [sys.executable, "-m", "metacli", command, "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    names = [opt for p in click_command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("-")]
    assert names and all(re.search(rf"(^|[\s,]){re.escape(n)}([\s,=]|$)", out, re.M) for n in names), out
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert "<bool>" not in out and "2.302585" not in out and "…" not in out


def test_fields_wraps_to_the_terminal_and_every_field_has_a_doc(tmp_path: Path) -> None:
    env = env_for(tmp_path, COLUMNS="80")
    cmd = [sys.executable, "-m", "metacli", "train", "--algo", "moml", "--dataset", "smnist", "--fields"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60).stdout
    lines = out.splitlines()
    assert lines and all(len(line) <= 80 for line in lines)
    assert "online.ltm" in out and "train.meta_iters" not in out and "eval.tasks" not in out
    assert ".md" not in out  # cites nothing that does not ship with metacli


def test_an_offline_first_run_without_data_leaves_no_folder(tmp_path: Path) -> None:
    env = env_for(tmp_path, METACLI_OFFLINE="1", METACLI_DATA="")
    cmd = [sys.executable, "-m", "metacli", "train", "--algo", "moml", "--dataset", "smnist"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "MNIST not found" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "runs/ or the cache folder was left behind"


def test_a_spec_error_is_reported_without_importing_torch(tmp_path: Path) -> None:
    """The CLI validates before it imports torch (2-9 s to import on a busy machine): a typo is quick."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from metacli.cli import app\n"
        "r = CliRunner().invoke(app, ['train', '--set', 'algorithm.alphaa=1'])\n"
        "print(r.exit_code, 'torch' in sys.modules, ' '.join(r.output.split()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env_for(tmp_path), capture_output=True, text=True)
    exit_code, torch_imported, message = out.stdout.split(" ", 2)
    assert (exit_code, torch_imported) == ("2", "False"), out.stdout + out.stderr
    assert "Did you mean algorithm.alpha?" in message


@pytest.mark.parametrize(
    ("algo", "dataset"),
    [("maml", "omniglot"), ("sparse_maml", "miniimagenet"), ("reptile", "sinusoid"),
     ("memory_reduced", "fc100"), ("moml", "smnist"), ("toe", "smnist"), ("ftml", "smnist")],
)  # fmt: skip
def test_every_field_that_applies_has_a_doc_citing_nothing_unshipped(algo: str, dataset: str) -> None:
    from metacli.commands import field_rows
    from metacli.spec import load_spec

    spec, _ = load_spec(algo=algo, dataset=dataset)
    rows = [(p, doc) for p, _, doc in field_rows(spec) if p.split(".")[0] not in spec.unused_sections]
    assert rows and all(doc.strip() for _, doc in rows), [p for p, doc in rows if not doc.strip()]
    assert not [p for p, doc in rows if ".md" in doc or "§" in doc]


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (["--algo", "mamll"], "Did you mean maml?"),
        (["--algo", "maml", "--dataset", "omniglt"], "Did you mean omniglot?"),
        (["--set", "model.name=cnv4"], "Did you mean conv4?"),
        (["--set", "algorithm.inner_stepz=2"], "Did you mean algorithm.inner_steps?"),
    ],
)
def test_an_unknown_name_suggests_the_closest_valid_one(args: list[str], suggestion: str) -> None:
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 2 and suggestion in " ".join(result.output.split()), result.output


def test_algo_without_dataset_lists_the_datasets_with_a_preset_for_it() -> None:
    """Catches a hidden --dataset default: --algo moml alone once ran sinusoid and failed naming it."""
    result = CliRunner().invoke(app, ["train", "--algo", "moml"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in said, said
    assert "--algo moml needs --dataset: presets for moml exist for smnist." in said
    assert "sinusoid" not in said


def test_dataset_without_algo_lists_the_algorithms_with_a_preset_for_it() -> None:
    """Catches a hidden --algo default (maml), which cannot run on a task stream."""
    result = CliRunner().invoke(app, ["train", "--dataset", "smnist", "--fields"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2, said
    assert "--dataset smnist needs --algo: smnist has presets for moml, bmoml, ftml, mogd, toe, fs." in said
    assert "maml" not in said.replace("metacli", "")


def test_fields_prints_values_as_a_user_types_them_and_the_accepted_names() -> None:
    """Catches Python reprs in --fields ((200,), ('rotate', ...), None, True) and a name row without the
    names its section accepts (taken from the registries, so a new algorithm or dataset must appear)."""
    from metacli.commands import field_rows
    from metacli.engine.algorithms import ALGORITHMS
    from metacli.engine.data import DATASETS
    from metacli.spec import load_spec

    spec, _ = load_spec(algo="moml", dataset="smnist")
    rows = {path: (value, doc) for path, value, doc in field_rows(spec)}
    assert rows["model.hidden"][0] == "[200]"
    assert rows["data.transforms"][0] == "[rotate, flip, scale, shift]"
    assert rows["data_root"][0] == "null" and rows["online.ltm"][0] == "true"
    for section, registry in (("algorithm", ALGORITHMS), ("data", DATASETS)):
        names = rows[f"{section}.name"][1].split("One of: ")[1].rstrip(".").split(", ")
        assert sorted(names) == sorted(registry), section
    result = CliRunner().invoke(app, ["train", "--algo", "moml", "--dataset", "smnist", "--fields"])
    assert result.exit_code == 0 and "(200,)" not in result.output and "None" not in result.output


@pytest.mark.parametrize(
    ("algo", "dataset"), [("maml", "omniglot"), ("moml", "smnist"), ("sparse_maml", "miniimagenet")]
)
def test_piped_fields_are_one_line_each_and_ready_set_arguments(algo: str, dataset: str) -> None:
    """Catches a piped --fields that wraps or pads a value, or prints one a user cannot pass back: every
    ``path=value`` line, given to --set, must leave the spec as it was."""
    from metacli.spec import load_spec

    cmd = ["train", "--algo", algo, "--dataset", dataset, "--fields"]
    result = CliRunner().invoke(app, cmd)  # CliRunner's stdout is not a terminal: the piped form
    assert result.exit_code == 0, result.output
    settings = [line.split("  # ")[0] for line in result.output.splitlines() if not line.startswith("#")]
    assert len(settings) > 20, result.output
    assert all("=" in s and " " not in s.split("=")[0] for s in settings), result.output
    assert any(s.startswith("published=[{") for s in settings) or algo == "moml"
    as_given, _ = load_spec(algo=algo, dataset=dataset)
    as_set, _ = load_spec(None, settings, algo=algo, dataset=dataset)
    assert as_set == as_given
