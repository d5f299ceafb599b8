"""`metacli evaluate FOLDER` (one comparison table), grid sections, and the few-shot figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from metacli.cli import app
from metacli.spec import grid_points, point_label

runner = CliRunner()
TINY = ["--set", "train.meta_iters=4", "--set", "train.meta_batch=2", "--set", "train.log_every=2", "--quiet"]
PUBLISHED = (
    "published=[{metric: query_loss@1, value: 0.67, source: MAML appendix, meta_iters: 70000,"
    " when: {algorithm.name: maml}},"
    " {metric: query_loss@1, value: 9.0, source: wrong shots, when: {data.shots: 10}}]"
)


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two short sinusoid runs (MAML with published numbers, ANIL without) in one folder."""
    runs = tmp_path / "results"
    common = [*TINY, "--set", "eval.tasks=6", "--set", "eval.inner_steps=[1, 3]", "--set", PUBLISHED]
    for algo in ("maml", "anil"):
        code, out = invoke(
            "train", "--algo", algo, "--dataset", "sinusoid", "--out", str(runs / algo), *common
        )
        assert code == 0, out
    return runs


def test_folder_comparison_table(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)  # output piped with no width asked for
    code, out = invoke("evaluate", str(folder), "--quiet")
    assert code == 0, out
    with (folder / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["anil", "maml"]
    assert list(rows[0])[:5] == ["run", "algorithm", "checkpoint", "checkpoint_step", "trained_steps"]
    for row in rows:
        evaluated = json.loads((folder / row["run"] / "eval.json").read_text())
        for steps in (1, 3):
            m = evaluated["metrics"][f"query_loss@{steps}"]
            assert float(row[f"query_loss@{steps}_mean"]) == pytest.approx(m["mean"], rel=1e-9)
            assert float(row[f"query_loss@{steps}_ci95"]) == pytest.approx(m["ci95"], rel=1e-9)
            assert float(row[f"query_loss@{steps}_n"]) == m["n"] == 6
        assert float(row["checkpoint_step"]) == float(row["trained_steps"]) == 4
        assert float(row["peak_step_mb"]) > 0
        assert not any("±" in v or "never" in v for v in row.values()), row
    # the published number applies to MAML only; the 10-shot one to neither (both are 5-shot)
    maml, anil = rows[1], rows[0]
    assert float(maml["published_query_loss@1_mean"]) == 0.67 and maml["published_query_loss@1_ci95"] == ""
    assert float(maml["published_query_loss@1_meta_iters"]) == 70000
    assert maml["published_query_loss@1_source"] == "MAML appendix"
    assert anil["published_query_loss@1_mean"] == anil["published_query_loss@1_source"] == ""
    markdown = (folder / "comparison.md").read_text()
    assert markdown.startswith("| run | algorithm | checkpoint | steps: trained / published |")
    assert (
        "| maml | maml | last @ 4 | 4 / 70,000 |" in markdown and "| anil | anil | last @ 4 |  |" in markdown
    )
    assert "0.67 (MAML appendix)" in markdown
    assert "**Budget mismatch:** 1 of 2 run(s) trained fewer meta-steps" in " ".join(markdown.split())
    # printed whole: every line of the table is one line of the output, however long
    table = [line for line in markdown.splitlines() if line]
    assert max(map(len, table)) > 80 and set(table) <= set(out.splitlines()), out


def test_folder_comparison_reuses_matching_evaluations(folder: Path) -> None:
    assert invoke("evaluate", str(folder), "--quiet")[0] == 0
    eval_file = folder / "maml" / "eval.json"
    first = eval_file.read_text()
    eval_file.write_text(first.replace('"seconds"', '"marker": 1, "seconds"'))  # a reused file is kept as is
    assert invoke("evaluate", str(folder), "--quiet")[0] == 0
    assert '"marker": 1' in eval_file.read_text()
    assert (
        invoke("evaluate", str(folder), "--tasks", "8", "--quiet")[0] == 0
    )  # other settings: evaluated again
    again = json.loads(eval_file.read_text())
    assert "marker" not in again and again["metrics"]["query_loss@1"]["n"] == 8


def test_steps_option_replaces_the_specs_step_counts(folder: Path) -> None:
    code, out = invoke("evaluate", str(folder), "--steps", "2", "--steps", "5", "--quiet")
    assert code == 0, out
    evaluated = json.loads((folder / "maml" / "eval.json").read_text())
    assert evaluated["inner_steps"] == [2, 5] and set(evaluated["metrics"]) == {
        "query_loss@2",
        "query_loss@5",
    }
    header = (folder / "comparison.md").read_text().splitlines()[0]
    assert "loss (2 steps)" in header and "loss (5 steps)" in header and "loss (1 step)" not in header
    code, out = invoke("evaluate", str(folder / "maml"), "--steps", "-1")
    assert code == 2 and "inner_steps" in out and "Traceback" not in out


def test_folder_without_few_shot_runs_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out = invoke("evaluate", str(tmp_path / "empty"))
    assert code == 2 and "no few-shot run" in " ".join(out.split()) and "Traceback" not in out


def test_grid_sections_are_named_by_name_or_fields() -> None:
    algos = [{"name": "maml", "alpha": 0.1}, {"name": "anil"}]
    assert point_label(algos[0], algos) == "maml"
    data = [{"name": "sinusoid", "shots": 5}, {"name": "sinusoid", "shots": 10}]
    assert [point_label(d, data) for d in data] == ["name-sinusoid-shots-5", "name-sinusoid-shots-10"]
    spec = {
        "algorithm": {"name": "maml", "alpha": 0.5},
        "model": {"name": "mlp"},
        "data": {"name": "sinusoid"},
    }
    points = grid_points(spec, {"algorithm": algos, "data": data})
    assert len(points) == 4
    name, first = points[0]
    assert name == "algorithm=maml_data=name-sinusoid-shots-5"
    assert first.algorithm.alpha == 0.1  # a section replaces the spec's section whole
    assert points[2][1].algorithm.name == "anil" and points[2][1].algorithm.alpha == 0.01


def test_few_shot_figures(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "sparse"
    args = [*TINY, "--set", "train.val_every=2", "--set", "train.val_tasks=4", "--set", "eval.tasks=4"]
    assert invoke("train", "--algo", "sparse_maml", "--dataset", "sinusoid", "--out", str(run), *args)[0] == 0
    code, out = invoke("plot", str(tmp_path / "runs"), "--out", str(tmp_path / "figs"))
    assert code == 0, out
    for stem in ("meta_train", "validation", "sparsity_sparse"):
        with Image.open(tmp_path / "figs" / f"{stem}.png") as img:
            assert img.size[0] > 500 and img.size[1] > 300
        assert (tmp_path / "figs" / f"{stem}.svg").stat().st_size > 1000
    svg = (tmp_path / "figs" / "sparsity_sparse.svg").read_text()
    assert "body.0" in svg and "head" in svg  # one line per layer, labelled


def test_time_to_a_fraction_of_the_best_validation_and_peak_memory(tmp_path: Path) -> None:
    from metacli.compare import Row, csv_rows, table_rows, training_of

    logs = {  # wall time, validation accuracy (None: a step without validation), peak MB
        "fast": [(5.0, 0.70, 10.0), (12.0, None, 12.5), (30.0, 0.90, 11.0)],
        "slow": [(10.0, 0.50, 40.0), (20.0, 0.80, 41.0)],
    }
    rows = []
    for name, lines in logs.items():
        run = tmp_path / name
        run.mkdir()
        with (run / "metrics.jsonl").open("w") as f:
            for step, (wall, acc, mb) in enumerate(lines):
                line = {"step": step, "wall_time": wall, "peak_step_mb": mb}
                if acc is not None:
                    line["val_acc@3"] = acc
                f.write(json.dumps(line) + "\n")
        rows.append(Row(name, "maml", {}, {}, "best", 1, training_of(run)))
    header, body = table_rows(rows)
    assert header[-3:] == ["best val acc %", "time to 0.9 x 90.00 % (s)", "peak step MB"]
    # 0.9 x 0.90 = 0.81: "fast" first reaches it at 30 s; "slow" peaks at 0.80 and never does
    assert body[0][-3:] == ["90.00", "30", "12.5"]
    assert body[1][-3:] == ["80.00", "never", "41.0"]
    header, body = csv_rows(rows)  # the same in comparison.csv: numbers, an empty cell for "never"
    assert header[-3:] == ["best_val_acc_pct", "time_to_0.9_of_best_val_s", "peak_step_mb"]
    assert [float(c) for c in body[0][-3:]] == [90.0, 30.0, 12.5]
    assert body[1][-2] == "" and float(body[1][-3]) == 80.0 and float(body[1][-1]) == 41.0
    assert float(body[0][header.index("trained_steps")]) == 2  # the last step logged, not the checkpoint's 1


def test_regression_runs_get_no_validation_columns(folder: Path) -> None:
    from metacli.compare import compare, table_rows

    rows = compare(folder, _fake)  # sinusoid runs: losses only, no validation accuracy
    header, _ = table_rows(rows)
    assert "best val acc %" not in header and "peak step MB" in header


def _fake(run: Path) -> dict[str, Any]:
    """A stand-in meta-test result (the columns under test come from metrics.jsonl, not from it)."""
    return {
        "metrics": {"query_loss@1": {"mean": 1.0, "ci95": 0.1, "n": 6}},
        "checkpoint": "last",
        "checkpoint_step": 4,
    }


def test_single_run_and_folder_tables_show_accuracy_in_percent() -> None:
    """Catches the single-run table printing a fraction (0.6350) where the folder table prints 63.50."""
    from rich.console import Console

    from metacli.cli import eval_table
    from metacli.compare import cell

    m = {"mean": 0.635, "ci95": 0.0187, "n": 600}
    console = Console(record=True, width=120)
    console.print(eval_table({"metrics": {"query_acc@3": m, "query_loss@3": {**m, "mean": 1.25}}}))
    text = console.export_text()
    assert "query_acc@3 (%)" in text and "63.50" in text and "± 1.87" in text and "0.6350" not in text
    assert "query_loss@3 " in text and "1.250" in text  # a loss as it is
    assert cell("query_acc@3", m) == "63.50 ± 1.87"


def test_non_finite_results_read_diverged() -> None:
    from metacli.compare import cell

    assert cell("query_loss@10", {"mean": float("nan"), "ci95": float("nan"), "n": 600}) == "diverged"
    assert cell("query_loss@10", {"mean": float("inf"), "ci95": 0.0, "n": 600}) == "diverged"
    assert cell("query_acc@1", {"mean": 0.5, "ci95": 0.01, "n": 600}) == "50.00 ± 1.00"
    assert cell("query_loss@5", {"mean": 3.578e19, "ci95": 7.01e19, "n": 600}) == "3.58e+19 ± 7.01e+19"
