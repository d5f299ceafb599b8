"""The CLI through Typer's CliRunner: train, resume, evaluate, and every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from metacli.cli import app

runner = CliRunner()
TINY = [
    "--set",
    "train.meta_iters=6",
    "--set",
    "train.meta_batch=2",
    "--set",
    "train.log_every=2",
    "--set",
    "train.checkpoint_every=3",
    "--set",
    "eval.tasks=4",
    "--quiet",
]


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def test_help_lists_only_real_commands() -> None:
    """Catches a command added, dropped or renamed without the README and this list changing with it."""
    import typer.main

    code, out = invoke("--help")
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert code == 0 and commands == {"train", "evaluate", "hedge", "plot", "ls", "cp"}
    listed = out[out.index("Commands:") :].split()
    assert all(name in listed for name in commands), out


def test_train_writes_the_run_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, out = invoke("train", "--out", str(run), *TINY)
    assert code == 0, out
    for name in ("spec.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all(r["query_loss"] > 0 for r in rows)
    stored = yaml.safe_load((run / "spec.yaml").read_text())  # auto resolved, as threads is
    summary = json.loads((run / "summary.json").read_text())
    assert stored["device"] == summary["device"] != "auto" and stored["threads"] == summary["threads"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_resume_continues_to_the_same_result(device: str, tmp_path: Path) -> None:
    """Also on CUDA, where a checkpoint's RNG states must be restored from the CPU."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    on = ("--device", device)
    assert invoke("train", "--out", str(straight), *on, *TINY)[0] == 0
    args = ("--out", str(split), *on, *TINY[:-1], "--set", "train.meta_iters=3", "--quiet")
    assert invoke("train", *args)[0] == 0
    # continue the 3-step run to 6 steps: edit its stored spec as a user extending a run would
    spec = (split / "spec.yaml").read_text().replace("meta_iters: 3", "meta_iters: 6")
    (split / "spec.yaml").write_text(spec)
    code, out = invoke("train", "--resume", str(split), *on, "--quiet")
    assert code == 0, out
    a = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [2, 3, 4, 6]  # step 3 logged as the end of the first part
    assert a[-1]["query_loss"] == pytest.approx(b[-1]["query_loss"], rel=1e-6 if device == "cpu" else 1e-5)


def test_resume_after_a_kill_shows_each_step_once_in_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from metacli.tb import ScalarWriter

    run = tmp_path / "run"
    assert invoke("train", "--out", str(run), *TINY[:-1], "--set", "train.meta_iters=3", "--quiet")[0] == 0
    # a run killed after its step-3 checkpoint had already logged step 4
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 4, "query_loss": 999.0}) + "\n")
    orphan = ScalarWriter(run)
    orphan.add_scalars(4, {"query_loss": 999.0})
    orphan.close()
    spec = (run / "spec.yaml").read_text().replace("meta_iters: 3", "meta_iters: 6")
    (run / "spec.yaml").write_text(spec)
    code, out = invoke("train", "--resume", str(run), "--quiet")
    assert code == 0, out
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3, 4, 6] and rows[2]["query_loss"] != 999.0
    acc = EventAccumulator(str(run))
    acc.Reload()
    events = acc.Scalars("query_loss")
    assert [e.step for e in events] == [2, 3, 4, 6]
    assert events[2].value == pytest.approx(rows[2]["query_loss"], rel=1e-6)


def test_damaged_run_directories_exit_2_without_traceback(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert invoke("train", "--out", str(run), *TINY)[0] == 0
    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    code, out = invoke("train", "--resume", str(run), "--quiet")
    assert code == 2 and "cannot be read" in out and "damaged" in out and "Traceback" not in out
    (run / "spec.yaml").write_text("algorithm: {name: maml\n")
    code, out = invoke("evaluate", str(run), "--quiet")
    assert code == 2 and "spec.yaml" in out and "YAML" in out and "Traceback" not in out


def test_evaluate_refuses_too_few_tasks(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert invoke("train", "--out", str(run), *TINY)[0] == 0
    code, out = invoke("evaluate", str(run), "--tasks", "1", "--quiet")
    assert code == 2 and "--tasks 1" in out and "tasks" in out and not (run / "eval.json").exists()


def test_evaluate_writes_mean_ci_and_n(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert invoke("train", "--out", str(run), *TINY)[0] == 0
    code, out = invoke("evaluate", str(run), "--tasks", "4", "--quiet")
    assert code == 0, out
    result = json.loads((run / "eval.json").read_text())
    m = result["metrics"]["query_loss@1"]
    assert m["n"] == 4 and m["mean"] > 0 and m["ci95"] > 0
    assert set(result["metrics"]) == {"query_loss@1", "query_loss@10"}


GRID_SPEC = """\
algorithm: {name: maml}
model: {name: mlp}
data: {name: sinusoid}
train: {meta_iters: 4, meta_batch: 2, log_every: 2, checkpoint_every: 2}
eval: {tasks: 4}
grid: {algorithm.alpha: [0.01, 0.02]}
"""


def _fingerprint(folder: Path) -> dict[str, tuple[bytes, int]]:
    """(content, mtime_ns) of every file under ``folder``, by relative path."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _touched(before: dict[str, tuple[bytes, int]], after: dict[str, tuple[bytes, int]]) -> list[str]:
    """Files written, added or removed between two fingerprints (readable in a failure message)."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def test_grid_rerun_skips_finished_points_and_resumes_interrupted_ones(tmp_path: Path) -> None:
    """Catches a grid rerun that retrains (or re-resumes) finished points: none of their files, checkpoint
    and summary.json included, may be written again; a point without summary.json is resumed from its
    checkpoint, not trained afresh."""
    spec = tmp_path / "grid.yaml"
    spec.write_text(GRID_SPEC)
    out = tmp_path / "results"
    code, text = invoke("train", str(spec), "--out", str(out), "--quiet")
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir()) == ["alpha=0.01", "alpha=0.02"]
    before = _fingerprint(out)
    for point in ("alpha=0.01", "alpha=0.02"):
        assert {f"{point}/summary.json", f"{point}/checkpoints/last.pt"} <= before.keys()

    assert "grid point 1 of 2: alpha=0.01" in text and "grid point 2 of 2: alpha=0.02" in text
    assert "grid of 2 points: 2 trained, 0 skipped (already complete)" in text
    code, text = invoke("train", str(spec), "--out", str(out), "--quiet")
    assert code == 0, text
    assert "grid point 1 of 2: alpha=0.01" in text and "grid point 2 of 2: alpha=0.02" in text
    for point in ("alpha=0.01", "alpha=0.02"):
        assert f"skipped {out / point}: finished earlier with the same spec" in text
    assert "done" not in text and "grid of 2 points: 0 trained, 2 skipped (already complete)" in text
    assert _touched(before, _fingerprint(out)) == []  # both points skipped

    (out / "alpha=0.02" / "summary.json").unlink()  # as if killed after its last checkpoint
    code, text = invoke("train", str(spec), "--out", str(out), "--quiet")
    assert code == 0, text
    after = _fingerprint(out)
    assert not [k for k in _touched(before, after) if k.startswith("alpha=0.01/")]  # still skipped
    ckpt = "alpha=0.02/checkpoints/last.pt"
    assert after[ckpt] == before[ckpt]  # resumed from its checkpoint, not retrained
    assert json.loads((out / "alpha=0.02" / "summary.json").read_text())["steps"] == 4  # resumed to the end


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("algorithm: {name: maml\n", "not valid YAML"),
        ("algorithm: {name: maml}\nmodel: {name: mlp}\ndata: {name: sinusoid}\nfoo: 1\n", "foo"),
        ("algorithm: {name: maml, alpha: fast}\nmodel: {name: mlp}\ndata: {name: sinusoid}\n", "alpha"),
        ("algorithm: {name: mamll}\nmodel: {name: mlp}\ndata: {name: sinusoid}\n", "'maml'"),
    ],
    ids=["bad-yaml", "unknown-key", "wrong-type", "unknown-algorithm"],
)
def test_bad_spec_exits_2_with_a_message_and_no_run_dir(tmp_path: Path, content: str, expected: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(content)
    out_dir = tmp_path / "run"
    code, out = invoke("train", str(spec), "--out", str(out_dir))
    assert code == 2 and expected in out and "Traceback" not in out
    assert not out_dir.exists()


def test_missing_spec_file(tmp_path: Path) -> None:
    code, out = invoke("train", str(tmp_path / "nope.yaml"))  # rich wraps long lines
    assert code == 2 and "does not exist" in " ".join(out.split()) and "Traceback" not in out


def test_unknown_preset_and_bad_override(tmp_path: Path) -> None:
    assert invoke("train", "--algo", "maml", "--dataset", "imagenet")[0] == 2
    code, out = invoke("train", "--set", "algorithm.alpha", "--out", str(tmp_path / "r"))
    assert code == 2 and "key.path=value" in out
    assert not (tmp_path / "r").exists()


def test_existing_run_dir_is_never_overwritten(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    code, out = invoke("train", "--out", str(run), *TINY)
    assert code == 2 and "another --out" in out and (run / "keep.txt").read_text() == "x"


def test_unwritable_out_and_a_failed_run_in_the_users_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    code, out = invoke("train", "--out", str(tmp_path / "file" / "run"), *TINY)
    assert code == 2 and "cannot create the run directory" in out and "Traceback" not in out
    mine = tmp_path / "mine"
    mine.mkdir()
    code, out = invoke("train", "--out", str(mine), "--set", "algorithm.alpha=-1", *TINY)
    assert code == 2
    code, out = invoke("train", "--out", str(mine), "--device", "cuda:99", *TINY)
    assert code == 2 and mine.is_dir() and not list(mine.iterdir())  # kept, and left empty


def test_resume_and_evaluate_of_a_missing_run(tmp_path: Path) -> None:
    assert invoke("train", "--resume", str(tmp_path / "none"))[0] == 2
    code, out = invoke("evaluate", str(tmp_path))
    assert code == 2 and "spec.yaml" in out


def test_a_message_with_brackets_is_printed_as_written(tmp_path: Path) -> None:
    """Paths and torch's own messages carry ``[...]`` (gloo's ``[/src/pair.cc:537]``), which rich would read
    as markup: a closing tag ends the program in a MarkupError instead of the message."""
    missing = tmp_path / "[/x]" / "[bold]run"
    code, out = invoke("train", "--resume", str(missing))
    assert code == 2 and f"--resume {missing}: no such run directory" in " ".join(out.split())


def test_unavailable_cuda_is_a_clear_error(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the error path cannot be exercised")
    code, out = invoke("train", "--device", "cuda", "--out", str(tmp_path / "r"), *TINY)
    assert code == 2 and "CUDA is not available" in out
    assert not (tmp_path / "r").exists()


def test_python_dash_m_and_fast_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, metacli.cli; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip() == "False"  # --help must not pay for importing torch
    proc = subprocess.run([sys.executable, "-m", "metacli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "metacli" in proc.stdout


def test_an_error_message_keeps_its_square_brackets(tmp_path: Path) -> None:
    """Catches rich reading '[indices]' in a message as markup and dropping it (the miniImageNet layouts)."""
    code, out = invoke(
        "train", "--algo", "maml", "--dataset", "miniimagenet", "--data-root", str(tmp_path), "--out",
        str(tmp_path / "run"), "--quiet",
    )  # fmt: skip
    said = " ".join(out.split())
    assert code == 2 and f"error: miniImageNet not found in {tmp_path / 'miniimagenet'}:" in said
    assert "{wnid: [indices]}" in said and not (tmp_path / "run").exists()
