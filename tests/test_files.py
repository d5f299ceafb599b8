"""The file toolkit (metacli.files) and the read-side helpers of run folders (metacli.runread)."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest

from metacli.files import atomic_write, move_all, staging_folder, swap_in
from metacli.runread import algorithm_name, last_per_index, named_runs, running_average


def _entries(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for a folder)."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize(
    ("content", "expected"),
    [("text é\n", "text é\n".encode()), (b"\x00bytes", b"\x00bytes"), (bytearray(b"ba"), b"ba")],
)
def test_atomic_write_takes_text_and_bytes(tmp_path: Path, content: Any, expected: bytes) -> None:
    path = tmp_path / "new" / "folder" / "f"  # the folder is created
    atomic_write(path, content)
    assert path.read_bytes() == expected
    assert os.listdir(path.parent) == ["f"]


def test_atomic_write_takes_a_writer_and_skips_fsync_when_not_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches a cache write that waits for the disk: ``durable=False`` never fsyncs, the default does."""
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "a.npy"
    atomic_write(path, lambda f: np.save(f, np.arange(3), allow_pickle=False), durable=False)
    assert synced == [] and np.load(path).tolist() == [0, 1, 2]
    atomic_write(path, io.BytesIO(b"x").getbuffer())
    assert len(synced) >= 1 and path.read_bytes() == b"x"


def test_atomic_write_gives_the_umask_permissions_not_mkstemps(tmp_path: Path) -> None:
    """Catches results (and shared caches) left readable only by their writer (mkstemp's 0600)."""
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def half_then_fail(f: BinaryIO) -> None:
        f.write(b"new, half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, half_then_fail)
    assert _entries(tmp_path) == {"f": b"old"}  # no temporary file left


def _old_and_new(tmp_path: Path) -> tuple[Path, Path]:
    """A folder with an old set (a folder ``d`` and a file ``d.json``) and a staging folder with a new one."""
    folder = tmp_path / "results"
    atomic_write(folder / "d" / "x", "old x")
    atomic_write(folder / "d.json", "old json")
    atomic_write(folder / "keep", "the user's")
    staging = staging_folder(folder, "d")
    assert staging.parent == folder and staging.name.startswith(".d.") and staging.name.endswith(".tmp")
    atomic_write(staging / "d" / "y", "new y")
    atomic_write(staging / "d.json", "new json")
    return folder, staging


def test_swap_in_replaces_the_set_and_keeps_the_rest(tmp_path: Path) -> None:
    folder, staging = _old_and_new(tmp_path)
    swap_in(staging, folder, ("d", "d.json"))
    after = {k: v for k, v in _entries(folder).items() if not k.startswith(".")}
    assert after == {"d": None, "d/y": b"new y", "d.json": b"new json", "keep": b"the user's"}
    assert (staging / "old-d" / "x").read_bytes() == b"old x"  # the old set is left for the caller to delete


def test_swap_in_into_an_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    staging = staging_folder(tmp_path, "d")
    atomic_write(staging / "d" / "y", "new y")
    atomic_write(staging / "d.json", "new json")
    folder.mkdir()
    swap_in(staging, folder, ("d", "d.json"))
    assert _entries(folder) == {"d": None, "d/y": b"new y", "d.json": b"new json"}


@pytest.mark.parametrize("failing", [1, 2, 3])
def test_a_failed_swap_leaves_the_whole_old_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    """Catches a swap that is not undone: whichever rename fails, the folder holds the old set whole."""
    folder, staging = _old_and_new(tmp_path)
    before = {k: v for k, v in _entries(folder).items() if not k.startswith(".")}
    real_replace, calls = os.replace, []

    def replace(src: Any, dst: Any) -> None:
        calls.append(1)
        if len(calls) == failing:
            raise OSError(errno.EIO, "Input/output error", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Input/output"):
        swap_in(staging, folder, ("d", "d.json"))
    assert {k: v for k, v in _entries(folder).items() if not k.startswith(".")} == before
    assert _entries(staging) == {"d": None, "d/y": b"new y", "d.json": b"new json"}


def test_move_all_is_undone_as_a_whole(tmp_path: Path) -> None:
    for name in ("a", "b"):
        atomic_write(tmp_path / name, name)
    (tmp_path / "aside").mkdir()
    moves = [(tmp_path / n, tmp_path / "aside" / n) for n in ("a", "b", "missing")]
    with pytest.raises(FileNotFoundError):
        move_all(moves)
    assert _entries(tmp_path) == {"a": b"a", "aside": None, "b": b"b"}


# --- the read side ------------------------------------------------------------------------------------


def test_last_per_index_keeps_a_repeated_rounds_last_line_in_order() -> None:
    rows = [{"round": 2, "v": 1}, {"round": 1, "v": 2}, {"round": 2, "v": 3}, {"step": 9}]
    assert last_per_index(rows, "round") == {1: {"round": 1, "v": 2}, 2: {"round": 2, "v": 3}}
    assert list(last_per_index(rows, "round")) == [1, 2]


def test_running_average() -> None:
    assert running_average([1.0, 0.0, 0.5]).tolist() == [1.0, 0.5, 0.5]


def test_algorithm_name() -> None:
    assert algorithm_name({"algorithm": {"name": "moml"}}) == "moml"
    assert algorithm_name({"algorithm": {"name": None}}, "") == ""
    assert algorithm_name({"algorithm": "moml"}) == "?" and algorithm_name({}) == "?"


def test_named_runs_skips_hidden_folders(tmp_path: Path) -> None:
    """Catches a staging or set-aside folder (``.hedge.*.tmp``, ``.run.replaced``) read as a result."""
    for run in ("a", "grid/b", ".hedge.x.tmp/hedge", ".c.replaced"):
        atomic_write(tmp_path / run / "spec.yaml", "schema_version: 1\n")
        atomic_write(tmp_path / run / "metrics.jsonl", "")
    assert named_runs(tmp_path) == [("a", tmp_path / "a"), ("grid/b", tmp_path / "grid" / "b")]
    assert named_runs(tmp_path / "a") == [("a", tmp_path / "a")]
