"""The benchmarks write nothing into the repository on a smoke run and look for data beside it, not on a
development machine's path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from benchmarks import bench_fewshot, bench_memory
from metacli.spec import load_spec

REPO = Path(__file__).resolve().parent.parent


def tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if ".git" not in p.parts and "__pycache__" not in p.parts}


@pytest.mark.slow
def test_bench_memory_quick_runs_and_writes_outside_the_repository(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Catches ``--quick`` writing benchmarks/results/ (and the measurement no longer building its parts)."""
    before = tree(REPO)
    out = bench_memory.main(["--quick", "--algorithms", "maml"])
    assert out["peak_bytes"]["cpu"]["maml"][1] > 0
    wrote = Path(capsys.readouterr().out.split("wrote ")[-1].strip())
    assert wrote.is_file() and REPO not in wrote.parents
    assert tree(REPO) == before
    wrote.unlink()
    wrote.parent.rmdir()


def test_the_data_root_is_the_shared_folder_beside_the_repository_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches a fallback to a fixed machine path: without --data-root or METACLI_DATA the benchmarks look in
    <repo>/../shared/data, and without it they use synthetic images, saying why."""
    assert bench_fewshot.SHARED_DATA == REPO.parent / "shared" / "data"
    monkeypatch.delenv("METACLI_DATA", raising=False)
    monkeypatch.setattr(bench_fewshot, "SHARED_DATA", tmp_path / "absent")
    assert bench_fewshot.data_root(None) is None
    assert bench_fewshot.data_root(str(tmp_path)) == tmp_path
    monkeypatch.setenv("METACLI_DATA", os.fspath(tmp_path))
    assert bench_fewshot.data_root(None) == tmp_path
    spec, _ = load_spec(algo="maml", dataset="omniglot")
    _, _, source = bench_fewshot.omniglot_data(spec, torch.device("cpu"), None)
    assert source.startswith("no data root (pass --data-root, set $METACLI_DATA")
