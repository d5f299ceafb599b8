"""MNIST: locate, download (optionally) and parse the four IDX files into numpy arrays.

Layout: ``<root>/mnist/<name>`` (uncompressed IDX) or ``<root>/mnist/<name>.gz``, for the four canonical
names below. The canonical checksum of a file is the SHA-256 of its *decompressed* IDX bytes
(:data:`SHA256`): ``.gz`` wrappers differ byte-wise between copies (different gzip headers), so the md5
of a ``.gz`` file says nothing, while the content is the same in every genuine copy. Every file, present
or downloaded, is checked against it: a file whose content differs is a :class:`DataError` naming the
file, both checksums and the fix (delete it so that it is downloaded again, or restore it), unless
``METACLI_TRUST_DATA=1``. The digests are memoised under ``<cache>/digests/mnist.json``
(:func:`~metacli.engine.data.paths.file_digests`), so only the first run hashes the files. A missing
file is fetched, when allowed, from the mirrors that torchvision uses and stored decompressed.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from metacli.engine.data.download import download as _download
from metacli.engine.data.paths import (
    ENV_VAR,
    digest_index,
    file_digests,
    mismatch,
    report_mismatches,
    user_cache_dir,
)
from metacli.engine.types import OpenProgress
from metacli.errors import DataError

MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
"""Canonical mirrors, tried in order (torchvision 0.28)."""
FOLDER = "mnist"
"""Sub-folder of the data root that holds the files (and name of their digest index in the cache)."""

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILES: tuple[str, ...] = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
"""The four canonical IDX files, without the ``.gz`` suffix."""

SHA256: dict[str, str] = {
    TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
"""SHA-256 of the *decompressed* IDX bytes: the same for every genuine copy, gzipped or not."""

_EXPECTED: dict[str, tuple[int, tuple[int, ...]]] = {
    TRAIN_IMAGES: (2051, (60000, 28, 28)),
    TRAIN_LABELS: (2049, (60000,)),
    TEST_IMAGES: (2051, (10000, 28, 28)),
    TEST_LABELS: (2049, (10000,)),
}
"""IDX magic number (0x0803 = ubyte, 3 dims; 0x0801 = ubyte, 1 dim) and shape of each file."""


class MNISTArrays(NamedTuple):
    """Raw MNIST: images uint8 (N, 28, 28) in [0, 255], labels int64 (N,) in 0..9."""

    train_x: npt.NDArray[np.uint8]
    train_y: npt.NDArray[np.int64]
    test_x: npt.NDArray[np.uint8]
    test_y: npt.NDArray[np.int64]


def _missing_message(folder: Path, cause: str) -> str:
    """The one-paragraph error for absent MNIST files: what is expected, where, and how to fix it."""
    names = ", ".join(FILES)
    return (
        f"MNIST not found: {cause}. Expected the four IDX files {names} "
        f"(each either uncompressed or with a .gz suffix) in {folder}. "
        f"Fix: pass --data-root pointing at a folder that contains mnist/ with these files, "
        f"or set {ENV_VAR} to such a folder, or connect to the internet and allow the download "
        f"(from {MIRRORS[0]} or {MIRRORS[1]})."
    )


def _find(folder: Path, name: str) -> Path | None:
    """The existing file for ``name`` (uncompressed preferred, it is faster to read), or ``None``."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    """The IDX bytes of ``path``, gunzipped when it ends in ``.gz``; DataError naming it if unreadable."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read MNIST file {path}: {e}. Delete it to download it again.") from e


def parse_idx(data: bytes, path: Path, magic: int, shape: tuple[int, ...]) -> npt.NDArray[np.uint8]:
    """Parse an unsigned-byte IDX file and check its magic number, dimensions and length.

    IDX: a big-endian int32 magic ``0x08xx`` (0x08 = ubyte; low byte = number of dimensions), then one
    big-endian int32 per dimension, then the data in C order.

    Raises:
        DataError: naming ``path`` if the header or the length is not what MNIST has.
    """
    ndim = len(shape)
    header_len = 4 * (1 + ndim)
    if len(data) < header_len:
        raise DataError(f"corrupt MNIST file {path}: only {len(data)} bytes. Delete it to download it again.")
    header = np.frombuffer(data, dtype=">i4", count=1 + ndim)
    if int(header[0]) != magic:
        raise DataError(
            f"corrupt MNIST file {path}: IDX magic number {int(header[0])}, expected {magic}. "
            "Delete it to download it again."
        )
    dims = tuple(int(d) for d in header[1:])
    if dims != shape:
        raise DataError(f"corrupt MNIST file {path}: IDX dimensions {dims}, expected {shape}.")
    expected_len = header_len + int(np.prod(shape))
    if len(data) != expected_len:
        raise DataError(
            f"corrupt MNIST file {path}: {len(data)} bytes, expected {expected_len} for shape {shape}. "
            "Delete it to download it again."
        )
    # copy(): frombuffer over bytes is read-only, and callers may want to write.
    out: npt.NDArray[np.uint8] = np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape).copy()
    return out


def _ensure(
    folder: Path, name: str, download: bool, progress: OpenProgress | None, mirrors: list[str]
) -> Path:
    """Path of the file for ``name``, downloading it (decompressed and verified) when missing."""
    found = _find(folder, name)
    if found is not None:
        return found
    if not download:
        raise DataError(_missing_message(folder, f"{name} is missing and downloading is off"))
    urls = [m if m.endswith("/") else m + "/" for m in mirrors]
    try:
        return _download(
            [f"{m}{name}.gz" for m in urls],
            folder / name,
            SHA256[name],
            progress=progress,
            decompress_gz=True,
        )
    except DataError as e:
        raise DataError(_missing_message(folder, f"{name} is missing and the download failed ({e})")) from e


def locate(
    root: Path, download: bool = True, progress: OpenProgress | None = None, mirrors: list[str] | None = None
) -> dict[str, Path]:
    """``{name: path}`` of the four files under ``<root>/mnist``, downloading the missing ones if allowed.

    Raises:
        DataError: a file is missing and cannot be downloaded.
    """
    bases = list(MIRRORS) if mirrors is None else mirrors
    return {name: _ensure(root / FOLDER, name, download, progress, bases) for name in FILES}


def verified_digests(paths: Mapping[str, Path], cache: Path | None = None) -> dict[str, str]:
    """``{name: SHA-256 of the IDX content}`` of the files, each checked against :data:`SHA256`.

    Args:
        paths: the files (:func:`locate`).
        cache: cache folder holding the digest memo (default: the user cache folder).

    Raises:
        DataError: a file cannot be read, or its content is not the published one (unless
            ``METACLI_TRUST_DATA=1``): the message names the file, both checksums and the fix.
    """
    index = digest_index(cache if cache is not None else user_cache_dir(), FOLDER)
    found = file_digests(list(paths.values()), index, gunzip=True)
    digests = {name: d["sha256"] for name, d in zip(paths, found, strict=True)}
    lines = [line for n, p in paths.items() for line in mismatch(p, "content sha256", digests[n], SHA256[n])]
    report_mismatches(
        "the MNIST files differ from the published MNIST content",
        lines,
        "They are damaged, truncated or altered copies. Fix: delete them so that metacli downloads them "
        "again, or restore the original files.",
        strict=True,
    )
    return digests


def read_arrays(paths: Mapping[str, Path]) -> MNISTArrays:
    """Parse the four files (:func:`locate`) into arrays, checking each IDX header and the labels.

    Raises:
        DataError: a file is unreadable or not the MNIST file of its name.
    """
    arrays: dict[str, npt.NDArray[np.uint8]] = {}
    for name, path in paths.items():
        magic, shape = _EXPECTED[name]
        arrays[name] = parse_idx(_read_bytes(path), path, magic, shape)
        if name in (TRAIN_LABELS, TEST_LABELS) and int(arrays[name].max()) > 9:
            raise DataError(f"corrupt MNIST file {path}: a label is above 9. Delete it to download it again.")
    return MNISTArrays(
        train_x=arrays[TRAIN_IMAGES],
        train_y=arrays[TRAIN_LABELS].astype(np.int64),
        test_x=arrays[TEST_IMAGES],
        test_y=arrays[TEST_LABELS].astype(np.int64),
    )


def load_mnist(
    root: Path,
    download: bool = True,
    progress: OpenProgress | None = None,
    mirrors: list[str] | None = None,
    cache: Path | None = None,
) -> MNISTArrays:
    """Load MNIST from ``<root>/mnist``, downloading missing files when ``download`` is true.

    Args:
        root: data root (see :func:`resolve_data_root`); the files live in ``<root>/mnist``.
        download: fetch missing files from ``mirrors``; otherwise a missing file is an error.
        progress: show a progress bar while downloading.
        mirrors: base URLs tried in order (default :data:`MIRRORS`); ``<base><name>.gz`` is fetched.
        cache: cache folder holding the digest memo (default: the user cache folder).

    Raises:
        DataError: a file is missing and cannot be downloaded, is corrupt, or is not the published
            content (see :func:`verified_digests`).
    """
    paths = locate(root, download, progress, mirrors)
    verified_digests(paths, cache)
    return read_arrays(paths)
