"""CIFAR-FS and FC100 from a synthetic CIFAR-100 python archive written by the tests (none in ../shared).

The fixture has the real archive's layout (``cifar-100-python/{train,test,meta}``, protocol-2 pickles of
dicts with ``data`` uint8 (N, 3072), ``fine_labels``, ``coarse_labels``) and the real class names, with
3 training and 1 test image per class. Every image encodes where it came from: channel 0 holds its fine
label; channel 1 its index within its member (low byte, and the high byte at pixel (0, 1)); channel 2
whether it is a test image. Pooling order and split membership can so be read back from any task.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metacli.engine.data.cifar import (
    ARCHIVE,
    FOLDER,
    MEMBER_DIR,
    SPLIT_CLASSES,
    CIFARFSConfig,
    FC100Config,
    build_cifar_fs,
    build_fc100,
    load_cifar100,
    split_classes,
    split_entries,
)
from metacli.engine.types import DataContext
from metacli.errors import DataError

TRAIN, TEST = 3, 1
CPU = torch.device("cpu")


def real_names() -> tuple[list[str], list[str], dict[str, str]]:
    """CIFAR-100's fine and coarse names (sorted, as its meta lists them) and each fine class's superclass."""
    pairs = [p for entries in split_entries("cifar-fs").values() for p in entries]
    superclass = {fine: sup for sup, fine in pairs}
    return sorted(superclass), sorted(set(superclass.values())), superclass


def _member(labels: list[int], coarse: list[int], test: bool) -> dict[str, Any]:
    n = len(labels)
    data = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    data[:, 0] = np.asarray(labels, dtype=np.uint8)[:, None, None]
    data[:, 1] = (np.arange(n) % 256).astype(np.uint8)[:, None, None]
    data[:, 1, 0, 1] = np.arange(n) // 256
    data[:, 2] = int(test)
    return {"data": data.reshape(n, -1), "fine_labels": labels, "coarse_labels": coarse, "filenames": []}


def write_archive(path: Path, meta_extra: Any = None) -> dict[str, str]:
    """The synthetic archive at ``path``; returns the md5s of the archive and its members."""
    fine, coarse, superclass = real_names()
    rng = np.random.default_rng(0)
    members: dict[str, bytes] = {}
    for name, per, test in (("train", TRAIN, False), ("test", TEST, True)):
        labels = [int(c) for c in rng.permutation(np.repeat(np.arange(100), per))]  # classes interleaved
        sup = [coarse.index(superclass[fine[c]]) for c in labels]
        members[name] = pickle.dumps(_member(labels, sup, test), protocol=2)
    meta: Any = {"fine_label_names": fine, "coarse_label_names": coarse}
    members["meta"] = pickle.dumps(meta_extra if meta_extra is not None else meta, protocol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{MEMBER_DIR}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    md5 = {name: hashlib.md5(data).hexdigest() for name, data in members.items()}
    return {"archive": hashlib.md5(path.read_bytes()).hexdigest(), **md5}


@pytest.fixture
def root(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    md5 = write_archive(tmp_path / "data" / FOLDER / ARCHIVE)
    return tmp_path / "data", md5


def test_pooled_classes_hold_train_then_test_images_in_archive_order(
    root: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    data, md5 = root
    pooled = load_cifar100(data, tmp_path / "cache", md5=md5)
    assert pooled.images.shape == (100, TRAIN + TEST, 3, 32, 32) and pooled.images.dtype == torch.uint8
    fine, _, superclass = real_names()
    assert list(pooled.fine) == fine and [superclass[f] for f in fine] == list(pooled.coarse)
    first = pooled.images[:, :, :, 0, 0]  # (class, image, channel)
    assert torch.equal(first[:, :, 0], torch.arange(100)[:, None].expand(100, TRAIN + TEST).to(torch.uint8))
    assert first[:, :TRAIN, 2].eq(0).all() and first[:, TRAIN:, 2].eq(1).all()
    index = pooled.images[:, :, 1, 0, 0].long() + 256 * pooled.images[:, :, 1, 0, 1].long()
    assert (index[:, 1:TRAIN] > index[:, : TRAIN - 1]).all()  # archive order within the class


@pytest.mark.parametrize("kind", ["cifar-fs", "fc100"])
def test_splits_have_the_published_sizes_and_share_nothing(
    kind: str, root: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    data, md5 = root
    pooled = load_cifar100(data, tmp_path / "cache", md5=md5)
    classes = split_classes(kind, pooled)  # type: ignore[arg-type]
    assert {s: len(c) for s, c in classes.items()} == SPLIT_CLASSES[kind]  # type: ignore[index]
    assert sorted(c for cs in classes.values() for c in cs) == list(range(100))
    if kind == "fc100":  # superclasses never straddle two splits
        supers = {s: {pooled.coarse[c] for c in cs} for s, cs in classes.items()}
        assert [len(v) for v in supers.values()] == [12, 4, 4]
        assert not (supers["train"] & supers["val"]) and not (supers["train"] & supers["test"])


@pytest.mark.parametrize(("build", "cfg"), [(build_cifar_fs, CIFARFSConfig), (build_fc100, FC100Config)])
def test_tasks_come_from_their_split_with_fresh_labels(
    build: Any, cfg: Any, root: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    data, md5 = root
    ctx = DataContext(data, tmp_path / "cache", CPU, torch.float32, False, False)
    with pytest.warns(UserWarning, match="published checksums"):  # the fixture is not the real archive
        dataset = build(cfg(ways=5, shots=2, queries=2), ctx)
    pooled = load_cifar100(data, tmp_path / "cache", md5=md5)
    kind = "cifar-fs" if cfg is CIFARFSConfig else "fc100"
    allowed = split_classes(kind, pooled)
    for split in ("train", "val", "test"):
        tasks = dataset.sample(split, 6, torch.Generator().manual_seed(1), CPU)
        assert tasks.support.x.shape == (6, 10, 3, 32, 32) and tasks.query.x.shape == (6, 10, 3, 32, 32)
        assert torch.equal(tasks.support.y[0], torch.arange(5).repeat_interleave(2))
        label_of = (tasks.support.x[:, :, 0, 0, 0] * 255).round().long()  # the fine class, from channel 0
        assert set(label_of.flatten().tolist()) <= set(allowed[split])
        # the same class behind each label in support and query
        query_of = (tasks.query.x[:, :, 0, 0, 0] * 255).round().long()
        assert torch.equal(label_of.view(6, 5, 2)[:, :, 0], query_of.view(6, 5, 2)[:, :, 0])


def test_download_from_a_local_server_is_verified_and_atomic(
    file_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, served = file_server
    md5 = write_archive(served / ARCHIVE)
    root = tmp_path / "root"
    with pytest.raises(DataError, match="0" * 32):
        load_cifar100(
            root,
            tmp_path / "cache",
            download=True,
            urls=[f"{base}/{ARCHIVE}"],
            md5={**md5, "archive": "0" * 32},
        )
    assert not (root / FOLDER / ARCHIVE).exists()
    pooled = load_cifar100(root, tmp_path / "cache", download=True, urls=[f"{base}/{ARCHIVE}"], md5=md5)
    assert (root / FOLDER / ARCHIVE).read_bytes() == (served / ARCHIVE).read_bytes()
    assert pooled.images.shape[0] == 100


def test_missing_archive_offline_names_the_file_and_the_fixes(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_cifar100(tmp_path, tmp_path / "cache", download=False)
    msg = str(info.value)
    assert ARCHIVE in msg and "--data-root" in msg and "METACLI_OFFLINE" in msg and "cs.toronto.edu" in msg


def test_truncated_archive_and_wrong_structure_are_data_errors(tmp_path: Path) -> None:
    path = tmp_path / "a" / FOLDER / ARCHIVE
    md5 = write_archive(path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="truncated"):
        load_cifar100(tmp_path / "a", tmp_path / "cache", md5=md5)
    md5 = write_archive(tmp_path / "b" / FOLDER / ARCHIVE, meta_extra=[1, 2, 3])
    with pytest.raises(DataError, match="meta"):
        load_cifar100(tmp_path / "b", tmp_path / "cache", md5=md5)


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


def test_pickle_that_imports_os_system_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    md5 = write_archive(tmp_path / "d" / FOLDER / ARCHIVE, meta_extra=_RunsShell(f"echo pwned > {marker}"))
    with pytest.raises(DataError, match="refused"):
        load_cifar100(tmp_path / "d", tmp_path / "cache", md5=md5)
    assert not marker.exists()


def test_published_checksums_are_compared_with_one_warning(
    root: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    data, _ = root
    with pytest.warns(UserWarning, match="differ from the published checksums") as record:
        load_cifar100(data, tmp_path / "cache")  # the real archive's md5s: the fixture differs
    assert len(record) == 1


def test_second_load_reads_the_cache(
    root: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, md5 = root
    first = load_cifar100(data, tmp_path / "cache", md5=md5)
    monkeypatch.setattr("metacli.engine.data.cifar.decode", lambda *a: pytest.fail("decoded again"))
    again = load_cifar100(data, tmp_path / "cache", md5=md5)
    assert torch.equal(first.images, again.images) and again.fine == first.fine


def test_the_packaged_splits_are_torchmetas() -> None:
    from importlib import resources

    sums = {
        "cifar-fs/test.json": "e199c74ef4f014ea3f74da1b6cf74795d32747183426c2a7e6ee4308d3bf47e3",
        "cifar-fs/train.json": "e0feef3aef13fc7320d5deef5ae77d91edd28041d9a173939ec48cea68135ef0",
        "cifar-fs/val.json": "d9d6e267b5dad5c2267ff7dd98ebb18bb016f7929b56839422bb34fb53bcb3ef",
        "fc100/test.json": "d2cf86db6ec0250993b18cb78ebde10758f06eaaaff1611390e4442ee7c6fc41",
        "fc100/train.json": "a19e219adef452c071eb09d14758a9c45562643b9aafa38826e679ed285e117b",
        "fc100/val.json": "6d228dac7040959f0c2f0385c53c2cd9a5369ba9eefd1b7cdceecb47041598c4",
    }
    folder = resources.files("metacli.engine.data").joinpath(f"assets/{FOLDER}")
    for name, digest in sums.items():
        assert hashlib.sha256(folder.joinpath(name).read_bytes()).hexdigest() == digest, name


@pytest.mark.filterwarnings("ignore:the CIFAR-100 files differ")
@pytest.mark.parametrize("dataset", ["cifar_fs", "fc100"])
def test_cli_trains_and_evaluates_on_the_fixture(
    dataset: str, root: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from metacli.cli import app

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data, _ = root
    out = tmp_path / "run"
    args = [
        "train", "--algo", "memory_reduced", "--dataset", dataset, "--data-root", str(data),
        "--set", "data.shots=2", "--set", "data.queries=2", "--set", "model.filters=4",
        "--set", "algorithm.inner_steps=3", "--set", "train.meta_batch=2", "--set", "train.meta_iters=2",
        "--set", "train.val_every=0", "--set", "eval.tasks=4", "--out", str(out), "--quiet",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    spec = (out / "spec.yaml").read_text()
    assert f"name: {dataset}" in spec and "filters: 4" in spec
    result = CliRunner().invoke(app, ["evaluate", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "eval.json").read_text())
    assert 0.0 <= scores["metrics"]["query_acc@20"]["mean"] <= 1.0


def test_a_failed_download_does_not_advise_unsetting_an_offline_switch_never_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches the message telling a user to unset METACLI_OFFLINE when the download simply failed."""
    from tests.httpserver import refused_url

    monkeypatch.delenv("METACLI_OFFLINE", raising=False)
    with pytest.raises(DataError) as info:
        load_cifar100(tmp_path, tmp_path / "cache", download=True, urls=[refused_url() + ARCHIVE])
    msg = str(info.value)
    assert msg.startswith(f"CIFAR-100 not found in {tmp_path / 'cifar100'}: could not download {ARCHIVE}")
    assert "METACLI_OFFLINE" not in msg and "run again once it can be reached" in msg
    assert list(tmp_path.iterdir()) == []  # no empty cifar100/ left in the data root
