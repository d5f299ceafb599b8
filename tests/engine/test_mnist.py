"""MNIST loading and verified downloads, against a real HTTP server on 127.0.0.1 only.

The shared MNIST files (``mnist/`` of the data folder) stand in for the mirrors: their ``.gz`` wrappers differ
from the canonical downloads, but their decompressed bytes are canonical, which is exactly what the
downloader verifies.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from metacli.engine.data.download import download
from metacli.engine.data.mnist import (
    FILES,
    SHA256,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    load_mnist,
    locate,
    parse_idx,
    verified_digests,
)
from metacli.engine.data.paths import TRUST_VAR, resolve_data_root
from metacli.errors import DataError
from tests.httpserver import LOCAL, QuietHandler, refused_url, serving

pytestmark = pytest.mark.usefixtures("no_proxy")

REPO = Path(__file__).resolve().parents[2]


def shared_data_root() -> Path | None:
    """``$METACLI_DATA`` or ``<repo>/../shared/data``, if it holds the four shared MNIST ``.gz`` files."""
    env = os.environ.get("METACLI_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    if all((root / "mnist" / f"{name}.gz").is_file() for name in FILES):
        return root
    return None


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest memo goes to a cache of the test's own, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(TRUST_VAR, raising=False)


@pytest.fixture(scope="module")
def shared_root() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("shared MNIST not found (set METACLI_DATA or provide <repo>/../shared/data/mnist)")
    return root


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- (a) download of the real files: checksum of the decompressed bytes, atomic placement -------------


def test_download_real_gz_verifies_decompressed_sha256_and_replaces_atomically(
    file_server: tuple[str, Path], shared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, served = file_server
    name = TRAIN_LABELS
    shutil.copy(shared_root / "mnist" / f"{name}.gz", served / f"{name}.gz")
    # The shared .gz is not byte-identical to the canonical one, so only a decompressed check can pass.
    assert hashlib.md5((served / f"{name}.gz").read_bytes()).hexdigest() != "d53e105ee54ea40749a09fcbcd1e9432"

    replaced: list[tuple[Path, Path, str]] = []
    real_replace = os.replace

    def spy_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        replaced.append((Path(src), Path(dst), _sha256(Path(src))))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy_replace)  # the module calls os.replace at run time
    dest = tmp_path / "out" / name
    got = download(
        [f"{base}{name}.gz"],
        dest,
        SHA256[name],
        progress=lambda *_: lambda done, info: None,
        decompress_gz=True,
    )

    assert got == dest
    assert _sha256(dest) == SHA256[name]
    assert dest.stat().st_size == 60008
    # One rename, from a complete temporary file in the same folder (so it is atomic), onto dest.
    assert len(replaced) == 1
    src, dst, src_sha = replaced[0]
    assert dst == dest and src.parent == dest.parent and src != dest
    assert src_sha == SHA256[name]
    assert _leftovers(dest.parent) == [name]


def test_load_mnist_downloads_all_four_files_from_mirror(
    file_server: tuple[str, Path], shared_root: Path, tmp_path: Path
) -> None:
    base, served = file_server
    for name in FILES:
        shutil.copy(shared_root / "mnist" / f"{name}.gz", served / f"{name}.gz")
    root = tmp_path / "root"
    data = load_mnist(root, download=True, progress=False, mirrors=[base])
    # Stored decompressed and verified; nothing else left behind.
    assert _leftovers(root / "mnist") == sorted(FILES)
    for name in FILES:
        assert _sha256(root / "mnist" / name) == SHA256[name]
    assert data.train_x.shape == (60000, 28, 28)
    assert data.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    # A second load reads the uncompressed files without any server.
    again = load_mnist(root, download=False, mirrors=[refused_url()])
    assert np.array_equal(again.test_x, data.test_x)


# --- (b) corrupt content is rejected and leaves nothing -----------------------------------------------


@pytest.mark.parametrize("kind", ["wrong_content", "not_gzip", "truncated_gzip"])
def test_corrupt_download_rejected_and_nothing_left(
    file_server: tuple[str, Path], shared_root: Path, tmp_path: Path, kind: str
) -> None:
    base, served = file_server
    name = TRAIN_IMAGES
    good = (shared_root / "mnist" / f"{name}.gz").read_bytes()
    if kind == "wrong_content":
        raw = bytearray(gzip.decompress(good))
        raw[1000] ^= 0xFF  # one pixel changed: a valid gzip of the wrong bytes
        body = gzip.compress(bytes(raw), compresslevel=1)
    elif kind == "not_gzip":
        body = b"<html>mirror error page</html>" * 100
    else:
        body = good[: len(good) // 2]
    (served / f"{name}.gz").write_bytes(body)

    dest = tmp_path / "out" / name
    with pytest.raises(DataError) as info:
        download([f"{base}{name}.gz"], dest, SHA256[name], progress=False, decompress_gz=True)
    expected = {"wrong_content": "checksum mismatch", "not_gzip": "gzip", "truncated_gzip": "truncated"}[kind]
    assert expected in str(info.value)
    assert not dest.exists()
    assert _leftovers(dest.parent) == []  # no partial temporary file either


def test_failed_download_keeps_previous_dest_untouched(file_server: tuple[str, Path], tmp_path: Path) -> None:
    base, served = file_server
    (served / "f.bin").write_bytes(b"new but wrong")
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old")
    with pytest.raises(DataError, match="checksum mismatch"):
        download([f"{base}f.bin"], dest, hashlib.sha256(b"right").hexdigest(), progress=False)
    assert dest.read_bytes() == b"old"
    assert _leftovers(tmp_path) == ["f.bin", "served"]


# --- (c) mirrors are tried in order -------------------------------------------------------------------


def test_first_mirror_404_second_mirror_used(
    file_server: tuple[str, Path], shared_root: Path, tmp_path: Path
) -> None:
    base, served = file_server
    (served / "good").mkdir()
    shutil.copy(shared_root / "mnist" / f"{TEST_LABELS}.gz", served / "good" / f"{TEST_LABELS}.gz")
    dest = tmp_path / TEST_LABELS
    download(
        [f"{base}missing/{TEST_LABELS}.gz", f"{base}good/{TEST_LABELS}.gz"],
        dest,
        SHA256[TEST_LABELS],
        progress=False,
        decompress_gz=True,
    )
    assert _sha256(dest) == SHA256[TEST_LABELS]


def test_mirror_with_bad_content_falls_through_to_next(file_server: tuple[str, Path], tmp_path: Path) -> None:
    base, served = file_server
    (served / "bad").mkdir()
    (served / "good").mkdir()
    (served / "bad" / "x").write_bytes(b"tampered")
    (served / "good" / "x").write_bytes(b"payload")
    dest = tmp_path / "x"
    download([f"{base}bad/x", f"{base}good/x"], dest, hashlib.sha256(b"payload").hexdigest(), progress=False)
    assert dest.read_bytes() == b"payload"


def test_all_mirrors_fail_lists_each(file_server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = file_server
    refused = refused_url()
    with pytest.raises(DataError) as info:
        download([f"{base}nope", f"{refused}nope"], tmp_path / "nope", "0" * 64, progress=False)
    msg = str(info.value)
    assert "HTTP 404" in msg and refused in msg
    assert _leftovers(tmp_path) == ["served"]


class _CutOffHandler(QuietHandler):
    """Promises 1000 bytes, sends 10, then hangs up: a connection lost mid-download."""

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 10)
        self.wfile.flush()
        self.close_connection = True


def test_connection_cut_mid_body_falls_through_and_leaves_nothing(
    file_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, served = file_server
    (served / "x").write_bytes(b"payload")
    with serving(http.server.ThreadingHTTPServer(LOCAL, _CutOffHandler)) as cut_base:
        cut_url = f"{cut_base}x"
        dest = tmp_path / "x"
        with pytest.raises(DataError, match="connection closed after 10 of 1000 bytes"):
            download([cut_url], dest, hashlib.sha256(b"payload").hexdigest(), progress=False)
        # Nothing at dest; the bytes received are kept in x.part for a resume (test_download.py).
        assert _leftovers(tmp_path) == ["served", "x.part"]
        download([cut_url, f"{base}x"], dest, hashlib.sha256(b"payload").hexdigest(), progress=False)
        assert dest.read_bytes() == b"payload"
        assert _leftovers(tmp_path) == ["served", "x"]


# --- (d) no server / download off: one clear paragraph naming the four files ---------------------------


def _assert_missing_message(msg: str, folder: Path) -> None:
    for name in FILES:
        assert name in msg
    assert str(folder) in msg
    assert "--data-root" in msg and "METACLI_DATA" in msg
    assert "\n" not in msg  # one paragraph


def test_connection_refused_raises_data_error_naming_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with pytest.raises(DataError) as info:
        load_mnist(root, download=True, progress=False, mirrors=[refused_url()])
    _assert_missing_message(str(info.value), root / "mnist")
    assert "download failed" in str(info.value)
    assert _leftovers(root / "mnist") == []


def test_download_off_raises_data_error_naming_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        # A mirror that would refuse: download=False must not even try it.
        load_mnist(tmp_path, download=False, mirrors=[refused_url()])
    _assert_missing_message(str(info.value), tmp_path / "mnist")
    assert "downloading is off" in str(info.value)


# --- (e) IDX parsing ----------------------------------------------------------------------------------


def test_shared_mnist_sanity_values(shared_root: Path) -> None:
    data = load_mnist(shared_root, download=False)
    assert data.train_x.shape == (60000, 28, 28) and data.train_x.dtype == np.uint8
    assert data.test_x.shape == (10000, 28, 28) and data.test_x.dtype == np.uint8
    assert data.train_y.shape == (60000,) and data.train_y.dtype == np.int64
    assert data.test_y.shape == (10000,) and data.test_y.dtype == np.int64
    assert data.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert data.test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert int((data.train_y == 1).sum()) == 6742
    assert int(data.train_x.max()) == 255 and int(data.train_x.min()) == 0
    # The IDX header is skipped correctly: the first image's corner pixels are background.
    assert data.train_x[0, 0, 0] == 0 and data.train_x[0].sum() > 0


def _idx(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return np.array([magic, *dims], dtype=">i4").tobytes() + payload


def test_parse_idx_values_and_layout(tmp_path: Path) -> None:
    payload = bytes(range(24))
    arr = parse_idx(_idx(2051, (2, 3, 4), payload), tmp_path / "f", 2051, (2, 3, 4))
    assert arr.dtype == np.uint8 and arr.shape == (2, 3, 4)
    assert arr[1, 2, 3] == 23 and arr[0, 1, 0] == 4  # C order after a 16-byte header
    arr[0, 0, 0] = 7  # writable copy


@pytest.mark.parametrize(
    ("blob", "needle"),
    [
        (_idx(2049, (2, 3, 4), bytes(24)), "magic number 2049"),
        (_idx(2051, (2, 3, 5), bytes(30)), "dimensions"),
        (_idx(2051, (2, 3, 4), bytes(23)), "bytes, expected 40"),
        (b"\x00\x00", "only 2 bytes"),
    ],
)
def test_parse_idx_rejects_corrupt(tmp_path: Path, blob: bytes, needle: str) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    with pytest.raises(DataError) as info:
        parse_idx(blob, path, 2051, (2, 3, 4))
    assert needle in str(info.value) and str(path) in str(info.value)


def test_present_corrupt_gz_names_the_file(shared_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in FILES:
        shutil.copy(shared_root / "mnist" / f"{name}.gz", folder / f"{name}.gz")
    bad = folder / f"{TEST_LABELS}.gz"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated gzip
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path, download=False)
    assert str(bad) in str(info.value)


def _with_relabelled_copy(shared_root: Path, tmp_path: Path) -> Path:
    """The shared .gz files, plus an uncompressed train-labels whose first label is 3 (same size)."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in FILES:
        shutil.copy(shared_root / "mnist" / f"{name}.gz", folder / f"{name}.gz")
    raw = bytearray(gzip.decompress((folder / f"{TRAIN_LABELS}.gz").read_bytes()))
    raw[8] = 3
    (folder / TRAIN_LABELS).write_bytes(bytes(raw))
    return folder / TRAIN_LABELS


def test_uncompressed_file_preferred_and_read(
    shared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_relabelled_copy(shared_root, tmp_path)
    monkeypatch.setenv(TRUST_VAR, "1")  # the copy is not the published content: the user vouches for it
    data = load_mnist(tmp_path, download=False)
    assert data.train_y[:3].tolist() == [3, 0, 4]  # the uncompressed copy wins over the .gz


def test_a_present_file_with_other_content_is_refused_naming_both_checksums(
    shared_root: Path, tmp_path: Path
) -> None:
    bad = _with_relabelled_copy(shared_root, tmp_path)
    got = hashlib.sha256(bad.read_bytes()).hexdigest()
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path, download=False)
    msg = str(info.value)
    assert str(bad) in msg and got in msg and SHA256[TRAIN_LABELS] in msg
    assert "delete" in msg and TRUST_VAR in msg
    assert TEST_LABELS not in msg  # only the file that differs is named


def test_a_present_gz_with_other_content_is_refused(shared_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in FILES:
        shutil.copy(shared_root / "mnist" / f"{name}.gz", folder / f"{name}.gz")
    raw = bytearray(gzip.decompress((folder / f"{TEST_LABELS}.gz").read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10  # a valid label, a valid IDX file: only the checksum can tell
    (folder / f"{TEST_LABELS}.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=f"{TEST_LABELS}.gz has content sha256"):
        load_mnist(tmp_path, download=False)


def test_the_shared_files_have_the_published_content(shared_root: Path) -> None:
    # Their .gz wrappers differ from the canonical downloads, their decompressed content does not.
    assert verified_digests(locate(shared_root, download=False)) == SHA256


# --- data root ----------------------------------------------------------------------------------------


def test_resolve_data_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METACLI_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("METACLI_DATA")
    assert resolve_data_root(None) == tmp_path / "xdg" / "metacli"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root(None) == tmp_path / "home" / ".cache" / "metacli"
