"""The image datasets through the real CLI: a run end to end, and bad or missing archives as clean errors.

The miniImageNet fixture (3 classes per split, written in both layouts by tests/engine/test_miniimagenet.py)
stands in for the real data, which is not available offline; a tiny Conv4 keeps the run to seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metacli.cli import app
from metacli.engine.data import omniglot
from tests.engine.test_miniimagenet import write_fixture

runner = CliRunner()
# The fixture's pickles are not the published files: the loader says so once, which these tests expect.
pytestmark = pytest.mark.filterwarnings("ignore:miniImageNet pickles differ")


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    out = result.output + (result.stderr if result.stderr_bytes else "")
    return result.exit_code, " ".join(out.split())


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded images are cached under the test's folder, never in the user's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


TINY_MINI = [
    "--algo", "maml", "--dataset", "miniimagenet",
    "--set", "data.ways=3", "--set", "data.queries=2",
    "--set", "model.filters=4",
    "--set", "algorithm.inner_steps=1", "--set", "algorithm.eval_inner_steps=2",
    "--set", "train.meta_iters=4", "--set", "train.meta_batch=2", "--set", "train.log_every=2",
    "--set", "train.val_every=2", "--set", "train.val_tasks=3",
    "--set", "eval.tasks=5", "--set", "eval.inner_steps=[1, 2]", "--quiet",
]  # fmt: skip


def test_miniimagenet_run_trains_validates_and_meta_tests(tmp_path: Path) -> None:
    fx = write_fixture(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    code, out = invoke("train", *TINY_MINI, "--data-root", str(fx.root), "--out", str(run))
    assert code == 0, out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and all("val_acc@2" in r for r in rows)
    assert (run / "checkpoints" / "best.pt").is_file()
    assert list((tmp_path / "cache" / "metacli" / "miniimagenet").glob("*.pt"))  # decoded once, cached
    code, out = invoke("evaluate", str(run), "--quiet")
    assert code == 0, out
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["metrics"]) == {"query_loss@1", "query_acc@1", "query_loss@2", "query_acc@2"}
    acc = ev["metrics"]["query_acc@2"]
    assert acc["n"] == 5 and 0.0 <= acc["mean"] <= 1.0 and "query_acc@2" in out


def test_more_ways_than_the_split_has_classes_is_a_clear_error(tmp_path: Path) -> None:
    fx = write_fixture(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    args = [*TINY_MINI, "--set", "data.ways=5", "--data-root", str(fx.root), "--out", str(run)]
    code, out = invoke("train", *args)
    assert code == 2 and "fewer than ways" in out and "data.ways" in out
    assert not run.exists()


def test_corrupt_omniglot_archive_exits_2_and_leaves_no_run(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    for name in omniglot.ARCHIVES.values():
        (folder / name).write_bytes(b"this is not a zip archive")
    run = tmp_path / "run"
    root = str(tmp_path / "data")
    code, out = invoke(
        "train", "--algo", "maml", "--dataset", "omniglot", "--data-root", root, "--out", str(run)
    )
    assert code == 2 and "corrupt Omniglot archive" in out and "Delete it" in out and "Traceback" not in out
    assert not run.exists()


def test_omniglot_download_with_a_wrong_checksum_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_server: tuple[str, Path]
) -> None:
    """A served archive whose md5 is not the official one is refused: exit 2, nothing placed, no run."""
    base, served = file_server
    for name in omniglot.ARCHIVES.values():
        (served / name).write_bytes(b"PK\x03\x04 not the official archive")
        monkeypatch.setitem(omniglot.URLS, name, (base + name,))
    monkeypatch.delenv("METACLI_OFFLINE", raising=False)
    root, run = tmp_path / "data", tmp_path / "run"
    code, out = invoke("train", "--algo", "maml", "--dataset", "omniglot", "--data-root", str(root),
                       "--out", str(run), "--quiet")  # fmt: skip
    assert code == 2 and "checksum mismatch" in out and "68d2efa1b9178cc56df9314c21c6e718" in out
    assert not run.exists()
    assert not any(p.is_file() for p in root.rglob("*"))  # no archive, no .part left behind
