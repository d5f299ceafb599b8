"""MNIST: locate, download (optionally) and parse the four IDX files into numpy arrays.

Layout: ``<root>/mnist/<name>`` (uncompressed IDX) or ``<root>/mnist/<name>.gz``, for the four canonical
names below. Files already present are read as they are: the shared ``.gz`` wrappers differ byte-wise
from the canonical downloads (``datasets.md`` §2), so they are never rejected by a ``.gz`` checksum;
the IDX header is checked instead. A missing file is fetched, when allowed, from the mirrors that
torchvision uses (``datasets.md`` §5.1) and verified against the SHA-256 of the decompressed IDX bytes,
the only canonical checksum; it is stored decompressed.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from metacli.engine.data.download import download as _download
from metacli.engine.data.paths import ENV_VAR
from metacli.errors import DataError

MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
"""Canonical mirrors, tried in order (torchvision 0.28; ``datasets.md`` §5.1)."""

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
"""SHA-256 of the *decompressed* IDX bytes (``datasets.md`` §5.1); valid for every copy."""

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


def _ensure(folder: Path, name: str, download: bool, progress: bool, mirrors: list[str]) -> Path:
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


def load_mnist(
    root: Path,
    download: bool = True,
    progress: bool = True,
    mirrors: list[str] | None = None,
) -> MNISTArrays:
    """Load MNIST from ``<root>/mnist``, downloading missing files when ``download`` is true.

    Args:
        root: data root (see :func:`resolve_data_root`); the files live in ``<root>/mnist``.
        download: fetch missing files from ``mirrors``; otherwise a missing file is an error.
        progress: show a progress bar while downloading.
        mirrors: base URLs tried in order (default :data:`MIRRORS`); ``<base><name>.gz`` is fetched.

    Raises:
        DataError: a file is missing and cannot be downloaded, or a file is corrupt.
    """
    folder = root / "mnist"
    bases = list(MIRRORS) if mirrors is None else mirrors
    arrays: dict[str, npt.NDArray[np.uint8]] = {}
    for name in FILES:
        path = _ensure(folder, name, download, progress, bases)
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
