"""plot_runs: real, non-blank PNG/SVG figures and TensorBoard scalars read back; no torch import."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from metacli.errors import RunDirError
from metacli.hedge import run_hedge
from metacli.plot import FIGURES, draw_figure, load_runs, make_style, plot_runs

ASSETS = Path(__file__).parent / "assets" / "online_runs"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runs_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "runs"
    shutil.copytree(ASSETS, folder)
    return folder


def _scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_figures_are_real_images(runs_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures"
    written = plot_runs(runs_folder, out)
    names = [p.name for p in written]
    assert names == ["ctm_avg.png", "ctm_avg.svg", "ltm_avg.png", "ltm_avg.svg", "memory.png", "memory.svg"]
    for png in out.glob("*.png"):
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC
        assert len(data) > 20_000, png
        pixels = imread(png)
        assert pixels.shape[1] >= 6.4 * 150  # at least 150 dpi on a 6.4-inch-wide figure
        assert float(np.var(pixels[..., :3])) > 1e-3, f"{png} is blank"
    for svg in out.glob("*.svg"):
        text = svg.read_text()
        assert "<svg" in text and len(text) > 10_000


def test_tensorboard_scalars_read_back(runs_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures"
    plot_runs(runs_folder, out)
    ctm = _scalars(out / "tensorboard" / "moml_a", "CTM_Avg/acc")
    assert [s for s, _ in ctm] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([v for _, v in ctm], [0.6, 0.65, 2.0 / 3.0, 0.7, 0.74], rtol=1e-5)
    ltm = _scalars(out / "tensorboard" / "moml_b", "LTM_Avg/acc")
    np.testing.assert_allclose([v for _, v in ltm], [0.5, 0.55, 0.6, 0.625, 0.648], rtol=1e-5)
    # FTML keeps every task: 220,080 bytes per task plus 453,544 bytes of parameters.
    mem = _scalars(out / "tensorboard" / "ftml", "Memory/held_MB")
    expected = [(t * 220_080 + 453_544) / 1e6 for t in range(1, 6)]
    np.testing.assert_allclose([v for _, v in mem], expected, rtol=1e-6)


def test_hedge_run_is_plotted_and_replotting_replaces_events(runs_folder: Path, tmp_path: Path) -> None:
    run_hedge(runs_folder)
    out = tmp_path / "figures"
    plot_runs(runs_folder, out)
    plot_runs(runs_folder, out)  # a second time: must not duplicate the points
    logdir = out / "tensorboard" / "hedge"
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1
    rows = [json.loads(line) for line in (runs_folder / "hedge" / "metrics.jsonl").read_text().splitlines()]
    hedged = _scalars(logdir, "CTM_Avg/acc")
    assert [s for s, _ in hedged] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([v for _, v in hedged], [r["ctm_acc_avg"] for r in rows], rtol=1e-6)
    weights = _scalars(logdir, "Hedge_Weight/ctm_weight/moml_a")
    assert weights[0][1] == pytest.approx(1 / 3)
    assert [r.name for r in load_runs(runs_folder)] == ["ftml", "moml_a", "moml_b", "hedge"]


def test_many_runs_label_only_best_worst_and_hedge(runs_folder: Path) -> None:
    base = [json.loads(line) for line in (runs_folder / "moml_a" / "metrics.jsonl").read_text().splitlines()]
    for i in range(10):  # a grid of 10 more MOML runs, each a little worse than moml_a
        grid_run = runs_folder / "grid" / f"k{i}"
        grid_run.mkdir(parents=True)
        shutil.copy(runs_folder / "moml_a" / "spec.yaml", grid_run / "spec.yaml")
        rows = [{**r, "ctm_acc_avg": r["ctm_acc_avg"] - 0.01 * (i + 1)} for r in base]
        (grid_run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_hedge(runs_folder)
    all_runs = load_runs(runs_folder)
    style = make_style(all_runs)
    assert style.many
    fig = draw_figure(FIGURES[0], all_runs, style)
    assert fig is not None
    legend = fig.axes[0].get_legend()
    assert legend is not None
    labels = [t.get_text() for t in legend.get_texts()]
    assert "other runs (10)" in labels
    # the grid copies moml_a's spec: labels that would be equal name the run's folder too
    assert "MOML, alpha=1.0 (moml_a), best" in labels
    assert "MOML, alpha=1.0 (grid/k9), worst" in labels
    assert "FTML" in labels and "Hedge" in labels
    assert len(labels) == 5
    memory = draw_figure(FIGURES[2], all_runs, style)
    assert memory is not None
    memory_legend = memory.axes[0].get_legend()
    assert memory_legend is not None
    assert [t.get_text() for t in memory_legend.get_texts()] == ["FTML", "MOML (12 runs)"]


def test_folder_without_online_runs_is_a_clear_error(tmp_path: Path) -> None:
    episodic = tmp_path / "runs" / "maml"
    episodic.mkdir(parents=True)
    (episodic / "spec.yaml").write_text("schema_version: 1\nalgorithm: {name: maml}\n")
    (episodic / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    with pytest.raises(RunDirError, match="No runs with metrics to plot"):
        plot_runs(tmp_path / "runs", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_a_clear_error(runs_folder: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from metacli.cli import app

    blocker = tmp_path / "figures"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(app, ["plot", str(runs_folder), "--out", str(blocker)])
    text = " ".join(result.output.split())  # the wording is the CLI's (metacli/cli.py checks --out first)
    assert result.exit_code == 2 and text.startswith("error:") and "--out" in text, text
    assert "internal error" not in text and "Traceback" not in result.output
    assert blocker.read_text() == "not a folder"


def test_hedge_and_plot_never_import_torch() -> None:
    code = "import metacli.hedge, metacli.plot, sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_single_run_folder_is_plotted_under_its_own_name(runs_folder: Path, tmp_path: Path) -> None:
    written = plot_runs(runs_folder / "ftml", tmp_path / "out")
    assert len(written) == 6
    assert [p.name for p in (tmp_path / "out" / "tensorboard").iterdir()] == ["ftml"]


def test_plot_writes_into_each_folders_own_figures(
    runs_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches a shared default output folder: a second folder's figures would replace the first's."""
    from typer.testing import CliRunner

    from metacli.cli import app

    other = tmp_path / "other"
    shutil.copytree(runs_folder / "ftml", other / "ftml")  # one run only: different figures, same names
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["plot", "runs"]).exit_code == 0
    first = {p.name: p.read_bytes() for p in (runs_folder / "figures").glob("*.png")}
    assert sorted(first) == ["ctm_avg.png", "ltm_avg.png", "memory.png"]
    result = runner.invoke(app, ["plot", "other"])
    assert result.exit_code == 0, result.output
    assert "wrote other/figures/ctm_avg.png" in result.output
    assert {p.name: p.read_bytes() for p in (runs_folder / "figures").glob("*.png")} == first
    assert (other / "figures" / "ctm_avg.png").read_bytes() != first["ctm_avg.png"]
    assert not (tmp_path / "figures").exists()
    assert [p.name for p in (other / "figures" / "tensorboard").iterdir()] == ["ftml"]
    # an explicit --out is still honoured
    assert runner.invoke(app, ["plot", "other", "--out", "shared"]).exit_code == 0
    assert (tmp_path / "shared" / "memory.png").is_file()


def test_online_legends_name_the_algorithm_and_short_runs_have_markers(runs_folder: Path) -> None:
    """Catches folder names in the legend (``MOML (moml_b)``) and five-round curves drawn without markers:
    moml_a and moml_b differ in alpha and lr_ft together, so alpha alone tells them apart."""
    all_runs = load_runs(runs_folder)
    fig = draw_figure(FIGURES[0], all_runs, make_style(all_runs))
    assert fig is not None
    legend = fig.axes[0].get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == ["FTML", "MOML, alpha=1.0", "MOML, alpha=10.0"]
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3 and all(len(line.get_xdata()) == 5 for line in lines)
    assert all(line.get_marker() not in (None, "None", "", " ") for line in lines)


def test_a_one_round_online_run_is_a_visible_point_on_whole_rounds(runs_folder: Path) -> None:
    """Catches a single round drawn as a line of one point (nothing visible) over fractional round ticks."""
    metrics = runs_folder / "ftml" / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    all_runs = load_runs(runs_folder / "ftml")
    fig = draw_figure(FIGURES[0], all_runs, make_style(all_runs))
    assert fig is not None
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [1] and line.get_marker() not in (None, "None", "", " ")
    low, high = fig.axes[0].get_xlim()
    assert high - low >= 2 and all(float(t).is_integer() for t in fig.axes[0].get_xticks())
