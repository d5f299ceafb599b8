"""A run folder and a data folder are data, never code: what a file holds can refuse it, never run.

Checkpoints are read with ``torch.load(weights_only=True)``. Every algorithm's real checkpoint must load
that way with nothing beyond tensors and builtins; a checkpoint that would import anything else (here
``os.system``, which would create a marker file) is refused with exit code 2 by ``train --resume`` and
``evaluate``, naming the file and the type, and nothing in it runs. Damaged checkpoints of every kind
are exit code 2 with the file named, never an internal error. A data root that is a file, lies inside a
file or cannot be read is exit code 2 naming the path and where it came from.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from metacli.cli import app
from metacli.engine.algorithms import ALGORITHMS
from metacli.engine.config.algorithms import ONLINE_ALGORITHM_NAMES
from metacli.runlayer import checkpoint as ckpt
from tests.conftest import shared_data_root

pytestmark = [
    pytest.mark.filterwarnings("ignore:resuming .* with changed settings"),
    pytest.mark.usefixtures("session_cache"),  # the S-MNIST stream is built once, never in the user's cache
]

runner = CliRunner()
TINY = ["--set", "train.meta_iters=2", "--set", "train.meta_batch=2", "--set", "eval.tasks=2"]
"""Two meta-steps of the sinusoid preset, validated after each (so that best.pt exists too)."""
ONLINE = ["--dataset", "smnist", "--set", "online.rounds=2", "--set", "online.checkpoint_every=1"]
STABLE = {"itd_bio": ["--set", "algorithm.outer_lr=1e-4", "--set", "algorithm.inner_lr=1e-3"]}
STABLE["memory_reduced"] = STABLE["itd_bio"]
"""Learning rates at which these two do not diverge on sinusoid within two steps."""


def flat(text: str) -> str:
    """``text`` without any whitespace: the terminal wraps long paths wherever it likes."""
    return "".join(text.split())


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def train_tiny(run: Path, *extra: str) -> Path:
    code, out = invoke("train", *TINY, "--set", "train.val_every=1", *extra, "--out", str(run), "-q")
    assert code == 0, out
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny few-shot run with last.pt and best.pt, trained once; tests work on copies."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
        return train_tiny(tmp_path_factory.mktemp("trained") / "run")


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


# --- every algorithm's checkpoint is tensors and builtins ------------------------------------------------


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_algorithms_checkpoint_loads_as_weights_only_and_resumes(algo: str, tmp_path: Path) -> None:
    run = tmp_path / algo
    if algo in ONLINE_ALGORITHM_NAMES:
        root = shared_data_root()
        if root is None:
            pytest.skip("the online algorithms train on S-MNIST, which needs the shared MNIST")
        code, out = invoke(
            "train", "--algo", algo, *ONLINE, "--data-root", str(root), "--out", str(run), "-q"
        )
        longer = "online.rounds=3"
    else:
        stable = STABLE.get(algo, [])
        code, out = invoke(
            "train",
            "--algo",
            algo,
            "--dataset",
            "sinusoid",
            *TINY,
            "--set",
            "train.val_every=1",
            *stable,
            "--out",
            str(run),
            "-q",
        )
        longer = "train.meta_iters=3"
    assert code == 0, out
    files = sorted((run / "checkpoints").glob("*.pt"))
    assert [f.name for f in files] == (
        ["last.pt"] if algo in ONLINE_ALGORITHM_NAMES else ["best.pt", "last.pt"]
    )
    for path in files:
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        plain = torch.load(path, map_location="cpu", weights_only=True)  # no allow-list at all
        loaded = ckpt.load(path, torch.device("cpu"))
        assert loaded["done"] == plain["done"] and loaded["done"] in (
            (2,) if path.name == "last.pt" else (1, 2)
        )
    code, out = invoke("train", "--resume", str(run), "--set", longer, "-q")  # restores every state
    assert code == 0, out
    assert torch.serialization.get_unsafe_globals_in_checkpoint(run / "checkpoints" / "last.pt") == []


def test_the_numpy_rng_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    import numpy as np

    np.random.seed(7)
    np.random.rand(3)
    generator = torch.Generator().manual_seed(1)
    saved = ckpt.capture_rng({"run": generator})
    want = np.random.rand(5)
    path = tmp_path / "rng.pt"
    torch.save(saved, path)
    np.random.seed(0)
    ckpt.restore_rng(torch.load(path, weights_only=True), {"run": generator})
    assert np.array_equal(np.random.rand(5), want)


def test_a_checkpoint_of_the_previous_layout_with_a_numpy_array_still_resumes(run: Path) -> None:
    import numpy as np

    path = run / "checkpoints" / "last.pt"
    old = torch.load(path, weights_only=True)
    name, keys, *rest = old["rng"]["numpy"]
    old["rng"]["numpy"] = (name, keys.numpy().astype(np.uint32), *rest)  # as np.random.get_state() gives it
    torch.save(old, path)
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    code, out = invoke("train", "--resume", str(run), "--set", "train.meta_iters=3", "-q")
    assert code == 0, out


# --- a checkpoint that would run code is refused, and nothing runs --------------------------------------


class RunsShell:
    """Unpickling this calls ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.system, (self.command,))


COMMANDS = {
    "resume": lambda run: ("train", "--resume", str(run), "-q"),
    "evaluate": lambda run: ("evaluate", str(run), "-q"),
}
"""Each command that reads a checkpoint of ``run``; evaluate reads best.pt, resume reads last.pt."""
READS = {"resume": "last.pt", "evaluate": "best.pt"}


def assert_refused(code: int, out: str, path: Path, *needles: str) -> None:
    """Exit code 2, the file named with ``needles``, and no sign of an internal error."""
    assert code == 2, out
    assert flat(str(path)) in flat(out), out
    for needle in needles:
        assert flat(needle) in flat(out), (needle, out)
    assert "Traceback" not in out and "internal error" not in out.lower(), out


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_checkpoint_that_would_run_code_is_refused_unloaded(
    command: str, zip_format: bool, run: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    path = run / "checkpoints" / READS[command]
    genuine = torch.load(path, weights_only=True)
    crafted = {**genuine, "state": {**genuine["state"], "extra": RunsShell(f"touch {marker}")}}
    torch.save(crafted, path, _use_new_zipfile_serialization=zip_format)
    before = sorted(p.name for p in run.rglob("*"))
    code, out = invoke(*COMMANDS[command](run))
    system = f"{os.system.__module__}.{os.system.__name__}"  # posix.system
    assert_refused(code, out, path, "is refused", system, "never holds", "not loaded")
    assert not marker.exists()
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written either


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_plain_pickle_that_would_run_code_is_refused(command: str, run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = run / "checkpoints" / READS[command]
    path.write_bytes(pickle.dumps({"schema_version": 2, "state": RunsShell(f"touch {marker}")}))
    code, out = invoke(*COMMANDS[command](run))
    assert_refused(code, out, path, "not loaded")
    assert not marker.exists()


# --- damaged checkpoints of every kind ------------------------------------------------------------------


def _random(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(4096))


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _list(path: Path) -> None:
    torch.save([1, 2, 3], path)


def _tensor(path: Path) -> None:
    torch.save(torch.zeros(3), path)


def _no_fields(path: Path) -> None:
    torch.save({"schema_version": ckpt.CHECKPOINT_VERSION, "state": {}}, path)


def _bad_rng(path: Path) -> None:
    saved = torch.load(path, weights_only=True)
    saved["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)  # torch.set_rng_state would raise
    torch.save(saved, path)


def _no_meta(path: Path) -> None:
    saved = torch.load(path, weights_only=True)
    saved["state"]["meta"] = "not parameters"
    torch.save(saved, path)


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "random bytes": (_random, "cannot be read"),
    "truncated": (_truncated, "cannot be read"),
    "empty": (_empty, "cannot be read"),
    "a list": (_list, "is not a metacli checkpoint"),
    "a tensor": (_tensor, "is not a metacli checkpoint"),
    "no fields": (_no_fields, "is not a metacli checkpoint"),
    "a bad rng state": (_bad_rng, "RNG state is missing or malformed"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_checkpoint_is_a_clear_error(command: str, damage: str, run: Path) -> None:
    path = run / "checkpoints" / READS[command]
    spoil, needle = DAMAGES[damage]
    spoil(path)
    code, out = invoke(*COMMANDS[command](run))
    assert_refused(code, out, path, needle)


def test_a_checkpoint_without_meta_parameters_is_a_clear_error_for_evaluate(run: Path) -> None:
    path = run / "checkpoints" / "best.pt"
    _no_meta(path)
    code, out = invoke("evaluate", str(run), "-q")
    assert_refused(code, out, path, "holds no meta-parameters")


def test_a_folder_in_place_of_best_pt_is_reported_not_skipped(run: Path) -> None:
    path = run / "checkpoints" / "best.pt"
    path.unlink()
    path.mkdir()
    code, out = invoke("evaluate", str(run), "-q")
    assert_refused(code, out, path, "cannot be read")
    assert not (run / "eval.json").exists()


# --- the data root --------------------------------------------------------------------------------------


def _train_omniglot(tmp_path: Path, *root: str) -> tuple[int, str]:
    return invoke(
        "train", "--algo", "maml", "--dataset", "omniglot", *root, "--out", str(tmp_path / "out"), "-q"
    )


def test_a_data_root_that_is_a_file_names_it_and_the_option(tmp_path: Path) -> None:
    file = tmp_path / "data.tar"
    file.write_bytes(b"x")
    code, out = _train_omniglot(tmp_path, "--data-root", str(file))
    assert_refused(code, out, file, "--data-root", "is a file, not a folder")


def test_a_data_root_inside_a_file_names_it_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "data.tar"
    file.write_bytes(b"x")
    monkeypatch.setenv("METACLI_DATA", str(file / "omniglot"))
    code, out = _train_omniglot(tmp_path)
    assert_refused(code, out, file / "omniglot", "$METACLI_DATA", "lies inside a file")


def test_a_default_data_root_inside_a_file_names_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "cachefile"
    file.write_bytes(b"x")
    monkeypatch.delenv("METACLI_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(file))
    code, out = _train_omniglot(tmp_path)
    assert_refused(code, out, file / "metacli", "XDG_CACHE_HOME", "lies inside a file")


def test_an_unreadable_data_root_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated (root reads every folder): the permission check is what must refuse it."""
    root = tmp_path / "locked"
    root.mkdir()
    real_access = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        return False if Path(path) == root else real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setenv("METACLI_DATA", str(root))  # (--data-root is checked by the option parser already)
    code, out = _train_omniglot(tmp_path)
    assert_refused(code, out, root, "$METACLI_DATA", "lack permission to read")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders without read permission")
def test_a_really_unreadable_data_root_names_it(tmp_path: Path) -> None:
    root = tmp_path / "locked"
    root.mkdir()
    root.chmod(0)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("METACLI_DATA", str(root))
            code, out = _train_omniglot(tmp_path)
    finally:
        root.chmod(0o700)
    assert_refused(code, out, root, "$METACLI_DATA", "lack permission to read")
