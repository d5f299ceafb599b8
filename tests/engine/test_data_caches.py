"""Derived caches are keyed by their sources' content, never their size or time, and are never stale.

Every test fixes or damages a source file *in place*: same name, same size, other bytes, and the old
modification time put back, which is exactly what a cache keyed by (name, size, mtime) cannot see. The
dataset must then decode again, and a cache built from the bad bytes must never serve the good ones.
Digests are memoised (``<cache>/digests/<dataset>.json``): the memo must be used while a file is
unchanged and dropped as soon as it changes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from metacli.engine.data import cifar, miniimagenet, mnist, omniglot, paths, smnist
from metacli.engine.data.mnist import FILES, SHA256, TRAIN_LABELS
from metacli.engine.data.paths import TRUST_VAR, digest_index, file_digests
from metacli.engine.data.smnist import SMNISTConfig, build_stream
from metacli.errors import DataError
from tests.conftest import shared_data_root
from tests.engine.test_cifar import write_archive
from tests.engine.test_miniimagenet import write_fixture
from tests.engine.test_omniglot import write_tiny_archives

pytestmark = pytest.mark.filterwarnings("ignore:the Omniglot archives are not the official files")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every memo and cache goes to the test's own folder; no file is trusted unless a test says so."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(TRUST_VAR, raising=False)


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files hashed so far (the memo's misses), in order."""
    seen: list[Path] = []
    real = paths._hash_file

    def counting(path: Path, algorithms: Any, gunzip: bool) -> dict[str, str]:
        seen.append(path)
        return real(path, algorithms, gunzip)

    monkeypatch.setattr(paths, "_hash_file", counting)
    return seen


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Overwrite ``path`` with ``data`` (same inode), then put its old modification time back."""
    st = path.stat()
    assert len(data) == st.st_size and data != path.read_bytes(), "the test needs same size, other bytes"
    with path.open("r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns, path.stat().st_ino) == (
        st.st_size,
        st.st_mtime_ns,
        st.st_ino,
    )


def counted(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Count the calls of ``module.name`` (a decoder) while still running it."""
    calls: list[int] = []
    real: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


# --- the digest memo --------------------------------------------------------------------------------------


def test_a_digest_is_memoised_until_the_file_changes_in_any_way(tmp_path: Path, hashed: list[Path]) -> None:
    f = tmp_path / "source.bin"
    f.write_bytes(b"good bytes")
    index = digest_index(tmp_path / "cache", "demo")
    first = file_digests([f], index, ("md5", "sha256"))
    assert len(hashed) == 1 and index.is_file()
    assert file_digests([f], index, ("md5", "sha256")) == first and len(hashed) == 1  # memoised
    assert file_digests([f], index, ("sha256",)) == [{"sha256": first[0]["sha256"]}] and len(hashed) == 1
    rewrite_in_place(f, b"evil bytes")  # same size, same mtime, same inode
    fixed = file_digests([f], index)
    assert len(hashed) == 2 and fixed[0]["sha256"] != first[0]["sha256"]
    replacement = tmp_path / "replacement.bin"  # another inode, renamed over it with the same mtime
    replacement.write_bytes(b"good bytes")
    st = f.stat()
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, f)
    assert file_digests([f], index)[0]["sha256"] == first[0]["sha256"] and len(hashed) == 3


def test_a_damaged_index_warns_once_and_is_rebuilt(tmp_path: Path, hashed: list[Path]) -> None:
    f = tmp_path / "source.bin"
    f.write_bytes(b"payload")
    index = digest_index(tmp_path / "cache", "demo")
    good = file_digests([f], index)
    for damage in (b"{not json", os.urandom(64), b"[1, 2]", b'{"version": 1, "files": 3}'):
        index.write_bytes(damage)
        with pytest.warns(UserWarning, match="damaged checksum index") as seen:
            assert file_digests([f], index) == good
        assert len(seen) == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert file_digests([f], index) == good  # rewritten whole: no warning, no hashing
    assert len(hashed) == 1 + 4


def test_a_forged_index_entry_for_another_identity_is_not_believed(tmp_path: Path) -> None:
    f = tmp_path / "source.bin"
    f.write_bytes(b"payload")
    index = digest_index(tmp_path / "cache", "demo")
    file_digests([f], index)
    text = index.read_text().replace(hashlib.sha256(b"payload").hexdigest(), "0" * 64)
    index.write_text(text)  # same identity, wrong digest: a memo is trusted, like the cache it sits in
    assert file_digests([f], index) == [{"sha256": "0" * 64}]
    f.write_bytes(b"changed")  # but any change to the file ignores it
    assert file_digests([f], index) == [{"sha256": hashlib.sha256(b"changed").hexdigest()}]


def test_an_unreadable_source_is_a_data_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "x.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read .*x.gz.*delete it"):
        file_digests([bad], digest_index(tmp_path, "demo"), gunzip=True)


# --- MNIST and the S-MNIST stream -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_root() -> Path:
    root = shared_data_root()
    if root is None or not all((root / "mnist" / f"{n}.gz").is_file() for n in FILES):
        pytest.skip("shared MNIST not found (set METACLI_DATA or provide <repo>/../shared/data/mnist)")
    return root


def test_mnist_is_hashed_once_then_memoised_in_the_cache(
    mnist_root: Path, tmp_path: Path, hashed: list[Path]
) -> None:
    cache = tmp_path / "cache"
    mnist.load_mnist(mnist_root, download=False, cache=cache)
    assert len(hashed) == 4 and digest_index(cache, "mnist").is_file()
    mnist.load_mnist(mnist_root, download=False, cache=cache)
    assert len(hashed) == 4
    assert not (mnist_root / "cache").exists() and not (mnist_root / "digests").exists()


def _relabelled(mnist_root: Path, root: Path) -> tuple[Path, bytes, bytes]:
    """``root/mnist`` with the shared files and an uncompressed train-labels of which one label differs.

    Returns the labels file, its good bytes and its bad bytes (same length).
    """
    (root / "mnist").mkdir(parents=True)
    for name in FILES:
        shutil.copy(mnist_root / "mnist" / f"{name}.gz", root / "mnist" / f"{name}.gz")
    good = gzip.decompress((mnist_root / "mnist" / f"{TRAIN_LABELS}.gz").read_bytes())
    bad = bytearray(good)
    bad[8] = 3  # the first label, 5, becomes 3
    path = root / "mnist" / TRAIN_LABELS
    path.write_bytes(bytes(bad))
    return path, good, bytes(bad)


@pytest.mark.slow  # two real S-MNIST builds, about 3 s each
def test_smnist_stream_built_from_bad_mnist_is_never_reused_once_it_is_fixed(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cache = tmp_path / "data", tmp_path / "cache"
    labels, good, bad = _relabelled(mnist_root, root)
    with pytest.raises(DataError, match=f"{TRAIN_LABELS} has content sha256"):
        build_stream(SMNISTConfig(), root, cache=cache, download=False)
    builds = counted(monkeypatch, smnist, "build_arrays")
    monkeypatch.setenv(TRUST_VAR, "1")  # the user vouches for the bad file: the stream is built from it
    from_bad = build_stream(SMNISTConfig(), root, cache=cache, download=False)
    counts = np.bincount(from_bad.train.y.numpy().ravel(), minlength=10)
    rewrite_in_place(labels, good)
    from_good = build_stream(SMNISTConfig(), root, cache=cache, download=False)
    assert builds == [1, 1]  # rebuilt, though name, size and mtime are those of the bad file
    fixed = np.bincount(from_good.train.y.numpy().ravel(), minlength=10)
    assert (fixed - counts).tolist() == [0, 0, 0, -1, 0, 1, 0, 0, 0, 0]
    monkeypatch.delenv(TRUST_VAR)
    again = build_stream(SMNISTConfig(), root, cache=cache, download=False)  # verified good: cached
    assert builds == [1, 1] and torch.equal(again.train.y, from_good.train.y)
    assert sorted(p.name for p in root.rglob("*")) == sorted(
        ["mnist", TRAIN_LABELS, *(f"{n}.gz" for n in FILES)]
    )
    rewrite_in_place(labels, bad)
    with pytest.raises(DataError, match=SHA256[TRAIN_LABELS]):  # and the bad cache is not served either
        build_stream(SMNISTConfig(), root, cache=cache, download=False)


# --- Omniglot: an archive fixed in place ------------------------------------------------------------------

_DATE = (2020, 1, 1, 0, 0, 0)


def _padded_png(image: np.ndarray, length: int) -> bytes:
    """``image`` as a PNG of exactly ``length`` bytes (a tEXt chunk before IEND takes up the rest)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    png = buf.getvalue()
    data = b"pad\x00" + b"x" * (length - len(png) - 16)
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:-12] + chunk + png[-12:]  # IEND is the last 12 bytes


def _stored_archive(members: list[tuple[str, bytes]]) -> bytes:
    """A zip of ``members`` without compression and with fixed dates: its size depends on sizes alone."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name, date_time=_DATE), data)
    return buf.getvalue()


def test_omniglot_cache_of_a_bad_archive_is_never_reused_once_it_is_fixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cache = tmp_path / "data", tmp_path / "cache"
    write_tiny_archives(root / "omniglot")
    path = root / "omniglot" / omniglot.ARCHIVES["evaluation"]
    victim = "images_evaluation/Gamma/character01/0008_01.png"
    with zipfile.ZipFile(path) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    with Image.open(io.BytesIO(dict(members)[victim])) as im:
        ink = np.asarray(im)
    size = 2000
    good = _stored_archive([(n, _padded_png(ink, size) if n == victim else d) for n, d in members])
    bad = _stored_archive([(n, _padded_png(~ink, size) if n == victim else d) for n, d in members])
    path.write_bytes(good)
    decodes = counted(monkeypatch, omniglot, "decode_archives")
    first = omniglot.load_characters(root, cache, 105)
    rewrite_in_place(path, bad)
    from_bad = omniglot.load_characters(root, cache, 105)
    assert decodes == [1, 1] and not torch.equal(from_bad.images, first.images)
    rewrite_in_place(path, good)
    fixed = omniglot.load_characters(root, cache, 105)
    assert decodes == [1, 1] and torch.equal(fixed.images, first.images)  # the good cache, not the bad one
    assert len(list((cache / "omniglot").iterdir())) == 2


# --- miniImageNet and CIFAR-100: a pickle fixed in place --------------------------------------------------


def test_miniimagenet_cache_follows_the_pickle_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fx = write_fixture(tmp_path / "data")
    cache = tmp_path / "cache"
    pkl = fx.folder / "mini-imagenet-cache-val.pkl"
    good = pkl.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # one byte of image_data: still a valid pickle, one pixel differs
    decodes = counted(monkeypatch, miniimagenet, "decode_pickle")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture pickles differ from the published md5s
        first = miniimagenet.load_miniimagenet(fx.root, cache, "pickle")
        rewrite_in_place(pkl, bytes(bad))
        from_bad = miniimagenet.load_miniimagenet(fx.root, cache, "pickle")
        assert len(decodes) == 6
        assert int((from_bad["val"].images != first["val"].images).sum()) == 1
        rewrite_in_place(pkl, good)
        fixed = miniimagenet.load_miniimagenet(fx.root, cache, "pickle")
    assert len(decodes) == 6 and torch.equal(fixed["val"].images, first["val"].images)


def test_cifar_cache_follows_the_member_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "data" / cifar.FOLDER / cifar.ARCHIVE
    md5 = write_archive(archive)
    with tarfile.open(archive) as tar:
        tar.extractall(archive.parent, filter="data")
    archive.unlink()  # the extracted layout: members are plain files
    member = archive.parent / cifar.MEMBER_DIR / "train"
    good = member.read_bytes()
    content = pickle.loads(good)  # the test's own fixture
    content["data"][0, -1] ^= 1  # channel 2 of the first image: 0 -> 1 (one ASCII character in the pickle)
    bad = pickle.dumps(content, protocol=2)
    decodes = counted(monkeypatch, cifar, "decode")
    first = cifar.load_cifar100(tmp_path / "data", tmp_path / "cache", md5=md5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bad member differs from its md5
        rewrite_in_place(member, bad)
        from_bad = cifar.load_cifar100(tmp_path / "data", tmp_path / "cache", md5=md5)
    assert decodes == [1, 1] and int((from_bad.images != first.images).sum()) == 1
    rewrite_in_place(member, good)
    fixed = cifar.load_cifar100(tmp_path / "data", tmp_path / "cache", md5=md5)
    assert decodes == [1, 1] and torch.equal(fixed.images, first.images)


# --- a damaged cache file: rebuilt, with exactly one warning ----------------------------------------------


def _omniglot(root: Path, cache: Path) -> torch.Tensor:
    if not (root / "omniglot").exists():
        write_tiny_archives(root / "omniglot")
    return omniglot.load_characters(root, cache, 28).images


def _miniimagenet(root: Path, cache: Path) -> torch.Tensor:
    if not (root / "miniimagenet").exists():
        write_fixture(root)
    return miniimagenet.load_miniimagenet(root, cache, "pickle")["train"].images


def _cifar(root: Path, cache: Path) -> torch.Tensor:
    if not (root / cifar.FOLDER).exists():
        write_archive(root / cifar.FOLDER / cifar.ARCHIVE)
    return cifar.load_cifar100(root, cache).images


LOADERS: dict[str, Callable[[Path, Path], torch.Tensor]] = {
    "omniglot": _omniglot,
    "miniimagenet": _miniimagenet,
    "cifar100": _cifar,
}


def _damages(good: bytes) -> Iterator[tuple[str, bytes]]:
    yield "truncated", good[: len(good) // 3]
    yield "random bytes", os.urandom(4096)
    yield "empty", b""


@pytest.mark.parametrize("dataset", sorted(LOADERS))
def test_a_damaged_cache_file_is_rebuilt_with_one_warning(
    dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TRUST_VAR, "1")  # the fixtures are not the published files: only the cache warns
    root, cache = tmp_path / "data", tmp_path / "cache"
    first = LOADERS[dataset](root, cache)
    (pt,) = (cache / dataset).glob("*.pt")
    for what, damage in _damages(pt.read_bytes()):
        pt.write_bytes(damage)
        with pytest.warns(UserWarning) as seen:
            again = LOADERS[dataset](root, cache)
        assert len(seen) == 1 and "cache" in str(seen[0].message) and str(pt) in str(seen[0].message), what
        assert torch.equal(again, first), what
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            LOADERS[dataset](root, cache)  # rewritten whole
