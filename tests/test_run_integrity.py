"""A run folder has one owner, is matched by its spec, and is never a dead end.

Two trains into one folder (one trains, the other exits 2 naming the holder's pid), a grid rerun with a
changed field (refused, nothing trained, the field listed with both values), a finished run continued
longer with ``--resume --set``, a kill before the first checkpoint (the same command, or ``--resume``,
starts it again), grid values that would leave the grid's folder, and machine failures (a full disk, a
read-only folder, a name too long) reported as what they are.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metacli.cli import app
from metacli.runs import LOCK_FILE, claimed_run_dir, lock_holder

runner = CliRunner()
TINY = ["--algo", "maml", "--dataset", "sinusoid", "--set", "eval.tasks=4", "--set", "threads=1", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    text = " ".join(result.output.split())
    assert "internal error" not in text and "Traceback" not in text, text
    return result.exit_code, text


def start(*args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "metacli", "train", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def wait_for(condition: object, proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():  # type: ignore[operator]
        assert proc.poll() is None and time.monotonic() < deadline, f"{what}: {proc.communicate()[0]}"
        time.sleep(0.02)


def steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_two_trains_into_one_folder_one_trains_the_other_exits_2(tmp_path: Path) -> None:
    """Catches a missing or non-exclusive lock: both would train and metrics.jsonl would hold steps twice."""
    run = tmp_path / "run"
    args = [*TINY, "--set", "train.meta_iters=400", "--set", "train.log_every=1", "--out", str(run)]
    first = start(*args)
    wait_for(lambda: (run / "metrics.jsonl").is_file(), first, "the first run never logged")
    assert lock_holder(run) == first.pid
    second = subprocess.run(
        [sys.executable, "-m", "metacli", "train", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    said = " ".join((second.stdout + second.stderr).split())
    assert second.returncode == 2, said
    assert f"{run} is in use by another metacli process (pid {first.pid})" in said and "Traceback" not in said
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 0, output
    assert steps(run) == list(range(1, 401))  # every step once: the second process wrote nothing
    assert lock_holder(run) is None and not (run / LOCK_FILE).exists()  # released and removed on exit


def test_a_killed_owner_leaves_no_stale_lock(tmp_path: Path) -> None:
    """Catches a lock that outlives its process (a pid file, say): after SIGKILL the folder is free."""
    run = tmp_path / "run"
    proc = start(
        *TINY, "--set", "train.meta_iters=100000", "--set", "train.checkpoint_every=5", "--out", str(run)
    )
    wait_for(lambda: (run / "checkpoints" / "last.pt").is_file(), proc, "no checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (run / LOCK_FILE).exists() and lock_holder(run) is None
    with claimed_run_dir(run):
        assert lock_holder(run) == os.getpid()


@pytest.mark.parametrize("again", ["same command", "--resume"])
def test_a_kill_before_the_first_checkpoint_is_started_again(tmp_path: Path, again: str) -> None:
    """Catches the dead end where --resume says "start a new run" and a new run says "use --resume"."""
    run = tmp_path / "run"
    args = [*TINY, "--set", "train.meta_iters=100000", "--set", "train.log_every=1", "--out", str(run)]
    proc = start(*args)
    wait_for(lambda: (run / "metrics.jsonl").is_file() and steps(run), proc, "the run never logged")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (run / "checkpoints" / "last.pt").exists() and (run / "spec.yaml").is_file()
    spec = run / "spec.yaml"
    spec.write_text(spec.read_text().replace("meta_iters: 100000", "meta_iters: 6"))
    if again == "--resume":
        code, text = invoke("train", "--resume", str(run))
    else:  # the same command, shortened so the test ends
        code, text = invoke("train", *[a.replace("100000", "6") for a in args])
    assert code == 0, text
    assert "never reached its first checkpoint (a failed start): training it from step 0" in text
    assert steps(run) == [1, 2, 3, 4, 5, 6]  # from step 0, nothing of the killed start left


def test_a_changed_grid_is_refused_before_anything_trains(tmp_path: Path) -> None:
    """Catches a rerun that matches finished points by summary.json alone and returns the old results."""
    spec = tmp_path / "grid.yaml"
    spec.write_text(
        "algorithm: {name: maml}\nmodel: {name: mlp}\ndata: {name: sinusoid}\nthreads: 1\n"
        "train: {meta_iters: 4, meta_batch: 2, log_every: 2, checkpoint_every: 2}\neval: {tasks: 4}\n"
        "grid: {algorithm.alpha: [0.01, 0.02]}\n"
    )
    out = tmp_path / "grid"
    assert invoke("train", str(spec), "--out", str(out), "--quiet")[0] == 0
    before = files(out)
    code, text = invoke("train", str(spec), "--out", str(out), "--set", "train.meta_iters=8", "--quiet")
    assert code == 2, text
    for point in ("alpha=0.01", "alpha=0.02"):
        assert f"{out / point}: train.meta_iters: 4 -> 8" in text
    assert "Nothing was trained" in text and "--overwrite" in text and "another --out" in text
    assert "metacli train --resume RUN --set train.meta_iters=8" in text
    assert files(out) == before  # not a byte written, not a file touched
    code, text = invoke("train", str(spec), "--out", str(out), "--set", "algorithm.outer_lr=0.5", "--quiet")
    assert code == 2 and "algorithm.outer_lr: 0.001 -> 0.5" in text and files(out) == before

    code, text = invoke("train", "--resume", str(out / "alpha=0.01"), "--set", "train.meta_iters=8")
    assert code == 0, text
    assert steps(out / "alpha=0.01") == [2, 4, 6, 8]
    summary = json.loads((out / "alpha=0.01" / "summary.json").read_text())
    assert summary["steps"] == 8 and "meta_iters: 8" in (out / "alpha=0.01" / "spec.yaml").read_text()

    code, text = invoke("train", str(spec), "--out", str(out), "--overwrite", "--quiet")
    assert code == 0, text  # --overwrite replaces the point that now differs (alpha=0.01 at 8 steps)
    assert steps(out / "alpha=0.01") == [2, 4]


def test_a_finished_single_run_is_skipped_only_with_the_same_spec(tmp_path: Path) -> None:
    """Catches the single-run form of the stale result: a folder of another spec must not be reused."""
    run = tmp_path / "run"
    args = [*TINY, "--set", "train.meta_iters=3", "--out", str(run)]
    assert invoke("train", *args)[0] == 0
    before = files(run)
    code, text = invoke("train", *args)
    assert code == 0 and f"skipped {run}: finished earlier with the same spec" in text
    assert files(run) == before
    code, text = invoke("train", *args, "--set", "seed=5")
    assert code == 2 and f"{run}: seed: 0 -> 5" in text and files(run) == before


def test_grid_values_never_leave_the_grid_folder(tmp_path: Path) -> None:
    """Catches folder names built from values without sanitising: '..' would write beside the grid."""
    spec = tmp_path / "grid.yaml"
    escape = "../../../escaped"
    spec.write_text(
        "algorithm: {name: maml}\nmodel: {name: mlp}\ndata: {name: sinusoid}\nthreads: 1\n"
        "train: {meta_iters: 1, meta_batch: 2}\neval: {tasks: 4}\n"
        f"grid: {{data_root: ['{escape}', 'a/b', '..']}}\n"
    )
    out = tmp_path / "deep" / "grid"
    code, text = invoke("train", str(spec), "--out", str(out), "--quiet")
    assert code == 0, text
    points = sorted(p for p in out.iterdir())
    assert len(points) == 3 and all((p / "summary.json").is_file() for p in points)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "grid.yaml"]
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["grid"]
    assert not any(p.name.startswith(".") or "/" in p.name for p in points)


def test_out_that_cannot_be_a_folder_is_named(tmp_path: Path) -> None:
    """Catches FileExistsError / NotADirectoryError / ENAMETOOLONG reaching the user as internal errors."""
    (tmp_path / "file").write_text("x")
    code, text = invoke("train", *TINY, "--out", str(tmp_path / "file"))
    assert code == 2 and "is a file, but a run needs a folder" in text
    code, text = invoke("train", *TINY, "--out", str(tmp_path / "file" / "run"))
    assert code == 2 and "cannot create the run directory" in text and "is a file, not a folder" in text
    code, text = invoke("train", *TINY, "--out", str(tmp_path / ("n" * 300)))
    assert code == 2 and "File name too long" in text and "shorter" in text
    code, text = invoke("plot", str(tmp_path), "--out", str(tmp_path / "file" / "figs"))
    assert code == 2 and "cannot create plot --out" in text and "is a file, not a folder" in text
    code, text = invoke("plot", str(tmp_path), "--out", str(tmp_path / "file"))
    assert code == 2 and "plot --out" in text and "is a file, but a folder is needed" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root, as CI runs), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_and_a_read_only_folder_are_named_with_what_was_kept(small_disk: Path) -> None:
    """Catches ENOSPC / EROFS reported as "internal error ... a bug in metacli" or as a divergence."""
    run = small_disk / "run"
    big = [*TINY, "--set", "model.hidden=[100, 100]", "--set", "train.checkpoint_every=1", "--out", str(run)]
    (small_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 200 * 1024))  # room for one checkpoint
    code, text = invoke("train", *big, "--set", "train.meta_iters=20")
    assert code == 1, text
    assert "No space left on device" in text and "free space" in text
    assert "--resume" in text and (run / "checkpoints" / "last.pt").is_file()  # what was kept, and next
    (small_disk / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    code, text = invoke("train", "--resume", str(run))
    assert code in (1, 2) and "Read-only file system" in text and "writable" in text, text


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 93457862656 bytes. Error code 12 (Cannot allocate memory)"
        ),
    ],
)
def test_running_out_of_memory_is_named_with_what_was_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    """Catches torch's CPU allocation failure (a plain RuntimeError) reported as a bug in metacli."""
    from metacli.engine.algorithms import maml

    real = maml.MAML.meta_step
    calls = [0]

    def step_then_fail(self: object, *args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == 4:
            raise error
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(maml.MAML, "meta_step", step_then_fail)
    run = tmp_path / "run"
    code, text = invoke(
        "train", *TINY, "--set", "train.meta_iters=6", "--set", "train.checkpoint_every=2", "--out", str(run)
    )
    assert code == 1 and "out of memory" in text, text
    assert "step 2" in text and f"metacli train --resume {run}" in text  # what was kept, and next
    monkeypatch.undo()
    code, text = invoke("train", "--resume", str(run))
    assert code == 0, text


@pytest.mark.parametrize(
    "args",
    [
        ["train", *TINY, "--out", "{loop}"],
        ["train", "--algo", "maml", "--dataset", "omniglot", "--data-root", "{loop}", "-q"],
        ["train", "--resume", "{loop}"],
        ["evaluate", "{loop}"],
        ["plot", "{loop}"],
        ["hedge", "{loop}"],
    ],
)
def test_a_symlink_loop_is_named_as_a_path_problem(tmp_path: Path, args: list[str]) -> None:
    """Catches pathlib's RuntimeError("Symlink loop ...") reported as a bug in metacli."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    code, text = invoke(*[a.format(loop=loop) for a in args])
    assert code == 2 and str(loop) in text, text
