"""One damaged file or line is reported and skipped, never an internal error, and never spoils a folder.

``hedge``, ``plot`` (online and few-shot figures) and ``evaluate FOLDER`` each get a folder where one run is
damaged in one way; each must warn once, naming the file (and line), skip that run or line, and produce the
rest. Also: numbers that cannot break the progress display or the comparison table, a bad
``METACLI_PROGRESS_EVERY``, and TensorBoard's resume wait on an event file stamped in the future.
"""

from __future__ import annotations

import io
import json
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from metacli.cli import app
from metacli.errors import MetacliError
from metacli.progress import EVERY_ENV, Reporter, clock, fixed, line_interval
from metacli.tb import ScalarWriter

ASSETS = Path(__file__).parent / "assets" / "online_runs"
runner = CliRunner()
Damage = Callable[[Path], None]


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, list[str]]:
    """Exit code, output and the warnings of one CLI call (pytest keeps warnings out of the output)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, list(args), env=env)
    output = result.output + (result.stderr if result.stderr_bytes else "")
    assert "internal error" not in output and "Traceback" not in output, output
    return result.exit_code, output, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def about(messages: list[str], what: str) -> list[str]:
    """The warnings that mention ``what`` (a run's path)."""
    return [m for m in messages if what in m]


@pytest.fixture
def online(tmp_path: Path) -> Path:
    """Three online runs (ftml, moml_a, moml_b) of five rounds each."""
    folder = tmp_path / "runs"
    shutil.copytree(ASSETS, folder)
    return folder


# --------------------------------------------------------------------------- damage to one run


def change_line(number: int, change: Callable[[bytes], bytes]) -> Damage:
    """Damage: line ``number`` (1-based) of metrics.jsonl replaced by ``change(line)``."""

    def damage(run: Path) -> None:
        path = run / "metrics.jsonl"
        lines = path.read_bytes().splitlines()
        lines[number - 1] = change(lines[number - 1])
        path.write_bytes(b"\n".join(lines) + b"\n")

    return damage


def set_value(key: str, raw: str) -> Callable[[bytes], bytes]:
    """A line change: ``key`` set to the JSON text ``raw``."""
    return lambda line: json.dumps({**json.loads(line), key: "@"}).replace('"@"', raw).encode()


def drop_key(key: str) -> Callable[[bytes], bytes]:
    """A line change: ``key`` removed."""
    return lambda line: json.dumps({k: v for k, v in json.loads(line).items() if k != key}).encode()


def write_file(name: str, content: str) -> Damage:
    """Damage: the run's file ``name`` replaced by ``content``."""
    return lambda run: (run / name).write_text(content)


def metrics_folder(run: Path) -> None:
    """Damage: metrics.jsonl is a folder, so it cannot be read."""
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()


# name: (damage, what the hedge warning says, what the plot warning says). Line 3 is round 3.
LINE_DAMAGE: dict[str, tuple[Damage, str, str]] = {
    "null": (
        change_line(3, set_value("ctm_acc", "null")),
        "line 3 has 'ctm_acc': null, not a number",
        "line 3 has 'ctm_acc': null, not a number",
    ),
    "string": (
        change_line(3, set_value("ctm_acc", '"0.7"')),
        "line 3 has 'ctm_acc': \"0.7\", not a number",
        "line 3 has 'ctm_acc': \"0.7\", not a number",
    ),
    "list": (
        change_line(3, set_value("ltm_acc", "[0.7]")),
        "line 3 has 'ltm_acc': [0.7], not a number",
        "line 3 has 'ltm_acc': [0.7], not a number",
    ),
    "round not a number": (
        change_line(3, set_value("round", '"3"')),
        "line 3 has 'round': \"3\", not a whole number",
        "line 3 has 'round': \"3\", not a whole number",
    ),
    "huge integer": (
        change_line(3, set_value("task_bytes", "1" + "0" * 400)),
        "",  # hedge does not read task_bytes: not damage to it
        "line 3 has 'task_bytes': 1000000000",
    ),
    "1e308": (
        change_line(3, set_value("ctm_acc", "1e308")),
        "has 'ctm_acc' = 1e+308 at round 3",
        "line 3 has 'ctm_acc': 1e+308, too large to draw",
    ),
    "missing key": (
        change_line(3, drop_key("ctm_acc")),
        "has no 'ctm_acc' at round(s) [3]",
        "round(s) [3] lack ['ctm_acc']",
    ),
    "not JSON": (
        change_line(3, lambda line: line[:30]),
        "line 3 is not valid JSON",
        "line 3 is not valid JSON",
    ),
    "not UTF-8": (
        change_line(3, lambda line: b"\xff\xfe" + line),
        "line 3 is not valid JSON",
        "line 3 is not valid JSON",
    ),
    "a JSON list": (
        change_line(3, lambda line: b"[1, 2]"),
        "line 3 is not a JSON object",
        "line 3 is not a JSON object",
    ),
}

RUN_DAMAGE: dict[str, tuple[Damage, str]] = {
    "spec not YAML": (
        write_file("spec.yaml", "algorithm: {name: moml\n  alpha: ["),
        "spec.yaml is not valid YAML at line 2",
    ),
    "spec not a mapping": (write_file("spec.yaml", "- 1\n"), "spec.yaml does not hold a mapping"),
    "spec of another version": (
        write_file("spec.yaml", "schema_version: 7\nalgorithm: {name: moml}\n"),
        "has schema_version 7",
    ),
    "metrics empty": (write_file("metrics.jsonl", ""), "metrics.jsonl is empty"),
    "metrics unreadable": (metrics_folder, "has no metrics.jsonl"),
}


def tb_rounds(figures: Path, run: str) -> list[int]:
    """The rounds of ``run``'s CTM running average in the TensorBoard events ``plot`` wrote."""
    events = EventAccumulator(str(figures / "tensorboard" / run))
    events.Reload()
    return [e.step for e in events.Scalars("CTM_Avg/acc")]


@pytest.mark.parametrize("name", list(LINE_DAMAGE))
def test_hedge_skips_a_run_with_a_damaged_line(online: Path, name: str) -> None:
    """Catches a bad line stopping hedge (an internal error or exit 2) or being read as a number: the run
    that misses a round is left out with one warning naming its file and line; the others are hedged."""
    damage, said, _ = LINE_DAMAGE[name]
    damage(online / "moml_b")
    code, out, warned = invoke("hedge", str(online))
    assert code == 0, out
    experts = json.loads((online / "hedge.json").read_text())["experts"]
    if not said:  # a value Hedge does not read: the run stays an expert, without a warning
        assert experts == ["ftml", "moml_a", "moml_b"] and not about(warned, "moml_b")
        return
    assert experts == ["ftml", "moml_a"]
    (message,) = about(warned, "moml_b")
    assert str(online / "moml_b" / "metrics.jsonl") in message and said in message, message
    assert "Skipped run 'moml_b'" in message


@pytest.mark.parametrize("name", list(LINE_DAMAGE))
def test_plot_leaves_out_a_damaged_line(online: Path, tmp_path: Path, name: str) -> None:
    """Catches a bad line stopping plot or being drawn: round 3 of moml_b is left out of its curves with
    one warning naming the file and line, and every figure is still written."""
    damage, _, said = LINE_DAMAGE[name]
    damage(online / "moml_b")
    figures = tmp_path / "figures"
    code, out, warned = invoke("plot", str(online), "--out", str(figures))
    assert code == 0, out
    (message,) = about(warned, "moml_b")
    assert str(online / "moml_b" / "metrics.jsonl") in message and said in message, message
    for stem in ("ctm_avg", "ltm_avg", "memory"):
        assert (figures / f"{stem}.png").stat().st_size > 10_000
    assert tb_rounds(figures, "moml_b") == [1, 2, 4, 5]
    assert tb_rounds(figures, "moml_a") == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("name", list(RUN_DAMAGE))
def test_a_run_that_cannot_be_read_is_skipped(online: Path, tmp_path: Path, name: str) -> None:
    """Catches an unreadable spec.yaml or metrics.jsonl, or an empty one, ending hedge and plot (or being
    reported twice by plot's two readers): one warning each, that run left out, the rest produced."""
    damage, said = RUN_DAMAGE[name]
    damage(online / "moml_b")
    code, out, warned = invoke("hedge", str(online))
    assert code == 0, out
    assert json.loads((online / "hedge.json").read_text())["experts"] == ["ftml", "moml_a"]
    (message,) = about(warned, "moml_b")
    assert said in message and "Skipped run 'moml_b'" in message, message
    assert "\n" not in message  # one line, even where the YAML error quotes the file over several
    figures = tmp_path / "figures"
    code, out, warned = invoke("plot", str(online), "--out", str(figures))
    assert code == 0, out
    (message,) = about(warned, "moml_b")
    assert said in message and "Skipped" in message, message
    assert sorted(p.name for p in (figures / "tensorboard").iterdir()) == ["ftml", "hedge", "moml_a"]


def test_nothing_usable_is_a_clear_error(online: Path, tmp_path: Path) -> None:
    """Catches a folder of damaged runs giving an internal error or empty output: exit 2, and the message
    says that runs were skipped as damaged."""
    for run in ("ftml", "moml_a", "moml_b"):
        (online / run / "metrics.jsonl").write_text("")
    for args, said in (
        (["hedge"], "No online runs"),
        (["plot", "--out", str(tmp_path / "f")], "No runs with"),
    ):
        code, out, warned = invoke(args[0], str(online), *args[1:])
        text = " ".join(out.split())
        assert code == 2 and said in text and "3 damaged run(s) skipped" in text, text
        assert len(warned) == 3
    assert not (online / "hedge.json").exists()


def episodic_run(folder: Path, name: str, lines: list[str]) -> Path:
    """A hand-made few-shot run: a MAML spec and these metrics lines."""
    run = folder / name
    run.mkdir(parents=True)
    (run / "spec.yaml").write_text("schema_version: 1\nalgorithm: {name: maml}\n")
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return run


def test_few_shot_figures_leave_out_damaged_lines_once(tmp_path: Path) -> None:
    """Catches a bad step line ending the few-shot figures, and a line reported by both of plot's readers:
    each damaged line is one warning; the figures are drawn from the other lines."""
    lines = [json.dumps({"step": s, "query_loss": 1.0 / s, "val_loss@10": 2.0 / s}) for s in range(1, 7)]
    lines[2] = json.dumps({"step": 3, "query_loss": "abc", "val_loss@10": 1.0})
    lines[4] = "{not json"
    episodic_run(tmp_path / "runs", "maml", lines)
    figures = tmp_path / "figures"
    code, out, warned = invoke("plot", str(tmp_path / "runs"), "--out", str(figures))
    assert code == 0, out
    assert len(about(warned, "line 3 has 'query_loss': \"abc\", not a number")) == 1, warned
    assert len(about(warned, "line 5 is not valid JSON")) == 1, warned
    assert len(warned) == 2, warned
    for stem in ("meta_train", "validation"):
        assert (figures / f"{stem}.png").stat().st_size > 10_000


# --------------------------------------------------------------------------- evaluate FOLDER


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny sinusoid MAML run."""
    run = tmp_path_factory.mktemp("trained") / "run"
    args = ["--set", "train.meta_iters=4", "--set", "train.meta_batch=2", "--set", "train.log_every=1"]
    code, out, _ = invoke("train", "--algo", "maml", "--dataset", "sinusoid", *args, "--set", "eval.tasks=4",
                          "--out", str(run), "--quiet")  # fmt: skip
    assert code == 0, out
    return run


def truncate_checkpoint(run: Path) -> None:
    """Damage: the checkpoint cut to 100 bytes."""
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])


def unknown_algorithm(run: Path) -> None:
    """Damage: spec.yaml names an algorithm metacli does not know (it no longer validates)."""
    spec = yaml.safe_load((run / "spec.yaml").read_text())
    spec["algorithm"]["name"] = "nope"
    (run / "spec.yaml").write_text(yaml.safe_dump(spec))


# name: (damage, what the warning says, whether the run stays in the table)
TABLE_DAMAGE: dict[str, tuple[Damage, str, bool]] = {
    "spec not YAML": (write_file("spec.yaml", "algorithm: {name: maml\n"), "is not valid YAML", False),
    "spec invalid": (unknown_algorithm, "nope", False),
    "checkpoint": (truncate_checkpoint, "cannot be read", False),
    "metrics line": (change_line(2, set_value("peak_step_mb", "[1]")), "line 2 has 'peak_step_mb'", True),
    "metrics empty": (write_file("metrics.jsonl", ""), "metrics.jsonl is empty", True),
    "eval.json": (write_file("eval.json", "{not json"), "eval.json is not valid JSON", True),
}


@pytest.mark.parametrize("name", list(TABLE_DAMAGE))
def test_evaluate_folder_tabulates_the_runs_beside_a_damaged_one(
    trained: Path, tmp_path: Path, name: str
) -> None:
    """Catches one damaged run ending ``evaluate FOLDER``: one warning names its file, the table holds the
    other runs (and the damaged one where only its training columns or its eval.json suffered)."""
    folder = tmp_path / "results"
    for run in ("a", "b", "c"):
        shutil.copytree(trained, folder / run)
        (folder / run / "eval.json").unlink(missing_ok=True)
    damage, said, kept = TABLE_DAMAGE[name]
    damage(folder / "b")
    code, out, warned = invoke("evaluate", str(folder), "--quiet")
    assert code == 0, out
    (message,) = about(warned, str(folder / "b"))
    assert said in message, message
    markdown = (folder / "comparison.md").read_text()
    assert "| a |" in markdown and "| c |" in markdown and ("| b |" in markdown) == kept, markdown
    if name == "eval.json":
        assert json.loads((folder / "b" / "eval.json").read_text())["metrics"]  # evaluated again


def test_table_cells_survive_any_number() -> None:
    """Catches NaN best accuracies, and 1e308 written out in 309 digits or raising: every cell is short."""
    from metacli.compare import Row, Training, table_rows

    nan, inf = float("nan"), float("inf")
    wild = Training(((1e308, nan), (5.0, inf), (1e308, 0.5), (2.0, -inf)), 1e308)
    metrics = {"query_acc@1": {"mean": 1e308, "ci95": inf}, "query_loss@1": {"mean": -1e308, "ci95": nan}}
    rows = [Row("wild", "maml", metrics, {}, "last", 1, wild), Row("tame", "maml", {}, {}, "last", 1,
            Training(((1.0, 0.4),), None))]  # fmt: skip
    header, body = table_rows(rows)
    assert all(len(cell) <= 40 for line in [header, *body] for cell in line), body
    assert body[0][header.index("best val acc %")] == "50.00"  # NaN and infinity are no accuracy
    assert body[0][header.index("peak step MB")] == "1.00e+308"


# --------------------------------------------------------------------------- the progress display


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", "-inf", "", " "])
def test_a_bad_progress_interval_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Catches a silent fallback (or a negative or infinite interval taken as is): the error names the
    variable and what it accepts, raised when the display is made."""
    monkeypatch.setenv(EVERY_ENV, value)
    with pytest.raises(MetacliError, match=rf"{EVERY_ENV}=.* It accepts a finite number >= 0"):
        line_interval()
    with pytest.raises(MetacliError, match=EVERY_ENV):
        Reporter("x", 10, quiet=True, console=Console(file=io.StringIO()))


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("2.5", 2.5), (None, 10.0)])
def test_good_progress_intervals(monkeypatch: pytest.MonkeyPatch, value: str | None, seconds: float) -> None:
    """0 (a line at every update) and any finite number >= 0 are taken; unset is 10 s."""
    if value is None:
        monkeypatch.delenv(EVERY_ENV, raising=False)
    else:
        monkeypatch.setenv(EVERY_ENV, value)
    assert line_interval() == seconds


def test_train_refuses_a_bad_progress_interval_before_it_trains(tmp_path: Path) -> None:
    """Through the CLI: exit 2 naming the variable, and no run folder left behind."""
    run = tmp_path / "run"
    code, out, _ = invoke(
        "train", "--set", "train.meta_iters=2", "--out", str(run), "-q", env={EVERY_ENV: "abc"}
    )
    text = " ".join(out.split())
    assert code == 2 and f"{EVERY_ENV}='abc'" in text and "finite number >= 0" in text, text
    assert not run.exists()


def test_progress_numbers_never_raise() -> None:
    """Catches int(inf), float(10**400) and 309-digit rates in the plain progress line."""
    assert [clock(x) for x in (float("nan"), float("inf"), -float("inf"), -5.0, 1e308)] == ["?"] * 5
    assert clock(3725.4) == "1:02:05"
    assert [fixed(x, 1) for x in (float("nan"), float("inf"), 1e308, 10**400, 12.34)] == [
        "nan", "inf", "1.00e+308", "inf", "12.3",
    ]  # fmt: skip
    rep = Reporter("x", 10**400, quiet=True, console=Console(file=io.StringIO()))
    rep.advance(10**399, info=f"loss {float('nan'):.4f}")
    line = rep.status_line()
    assert "(10%)" in line and "inf it/s" in line and "eta ?" in line, line


def test_the_progress_bar_survives_a_total_beyond_the_float_range() -> None:
    """Catches rich's ETA (``ceil(remaining / speed)``) raising OverflowError when the bar is drawn."""
    out = io.StringIO()
    with Reporter("x", 10**400, console=Console(file=out, force_terminal=True, width=160)) as rep:
        rep.advance(1, info="loss inf")
        time.sleep(0.05)
        rep.advance(1, info="loss inf")
    assert "eta ?" in out.getvalue()  # unknown, as the plain line says it


# --------------------------------------------------------------------------- TensorBoard's resume wait


def test_an_event_file_stamped_in_the_future_is_not_waited_for(tmp_path: Path) -> None:
    """Catches the busy wait until a future stamp (an hour here): the writer starts at once and warns once,
    naming the file."""
    future = tmp_path / f"events.out.tfevents.{int(time.time()) + 3600}.other-host.1.0"
    future.write_bytes(b"")
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ScalarWriter(tmp_path).close()
    assert time.monotonic() - start < 1.5
    (message,) = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert str(future) in message and "TensorBoard may order the resumed events wrongly" in message


def test_an_event_file_of_this_second_is_still_waited_for(tmp_path: Path) -> None:
    """Catches the bound dropping the wait altogether: a file of the current second still makes the new
    file's second a later one, without a warning."""
    latest = int(time.time())
    (tmp_path / f"events.out.tfevents.{latest}.host.1.0").write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ScalarWriter(tmp_path).close()
    assert int(time.time()) > latest and not caught
