"""Verified, atomic downloads from a list of mirrors (standard library only).

A download streams into a temporary file in the destination's folder, is checked against a SHA-256,
and only then is moved into place with :func:`os.replace`. A partial, interrupted or corrupt
download therefore never looks complete, and on failure nothing is left at the destination.

With ``decompress_gz=True`` the gzip stream is decompressed on the fly and the checksum is computed
on the *decompressed* bytes, which is what lands at ``dest``. This matters for MNIST: only the
decompressed IDX content is canonical, while the ``.gz`` wrappers differ between copies
(``datasets.md`` §2 and §5.1).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from metacli.errors import DataError

CHUNK_BYTES = 1 << 16
"""Read size for streaming; small enough for a smooth progress bar, large enough to be fast."""

TIMEOUT_S = 30.0
"""Socket timeout per connection attempt and per read, so a dead mirror cannot hang the CLI."""


class _Sink(Protocol):
    """Where downloaded bytes go (raw, or through a gzip decoder)."""

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...


class _RawSink:
    """Writes bytes unchanged to ``out`` and hashes them."""

    def __init__(self, out: BinaryIO, digest: hashlib._Hash) -> None:
        self._out = out
        self._digest = digest

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self._out.write(data)

    def finish(self) -> None:
        """Nothing is buffered."""


class _GunzipSink:
    """Decompresses a gzip stream on the fly, then writes and hashes the decompressed bytes."""

    def __init__(self, out: BinaryIO, digest: hashlib._Hash) -> None:
        self._raw = _RawSink(out, digest)
        # 16 + MAX_WBITS: expect a gzip header and trailer (CRC-32 and size are checked by zlib).
        self._dec = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def write(self, data: bytes) -> None:
        try:
            self._raw.write(self._dec.decompress(data))
        except zlib.error as e:
            raise DataError(f"not a valid gzip stream ({e})") from e

    def finish(self) -> None:
        try:
            self._raw.write(self._dec.flush())
        except zlib.error as e:
            raise DataError(f"not a valid gzip stream ({e})") from e
        if not self._dec.eof:
            # A truncated transfer: the gzip trailer never arrived.
            raise DataError("the gzip stream is truncated")


@contextlib.contextmanager
def _progress_bar(enabled: bool, label: str, total: int | None) -> Iterator[Progress | None]:
    """A rich byte-progress bar (bytes, rate, ETA) when ``enabled``; ``None`` otherwise."""
    if not enabled:
        yield None
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )
    with progress:
        progress.add_task(label, total=total)
        yield progress


def _fetch_one(url: str, tmp: BinaryIO, sha256: str, decompress_gz: bool, progress: bool) -> None:
    """Stream ``url`` into ``tmp`` and check the SHA-256; raise on any failure.

    Raises:
        DataError: bad gzip data or checksum mismatch.
        OSError: network errors (``urllib.error.URLError`` and ``HTTPError`` are subclasses).
    """
    digest = hashlib.sha256()
    sink: _Sink = _GunzipSink(tmp, digest) if decompress_gz else _RawSink(tmp, digest)
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
        length = resp.headers.get("Content-Length")
        total = int(length) if length is not None and length.isdigit() else None
        received = 0
        with _progress_bar(progress, url.rsplit("/", 1)[-1], total) as bar:
            while chunk := resp.read(CHUNK_BYTES):
                sink.write(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(bar.task_ids[0], completed=received)
        if total is not None and received != total:
            raise DataError(f"connection closed after {received} of {total} bytes")
    sink.finish()
    got = digest.hexdigest()
    if got != sha256.lower():
        what = "decompressed content" if decompress_gz else "file"
        raise DataError(f"checksum mismatch: sha256 of the {what} is {got}, expected {sha256}")


def download(
    urls: list[str],
    dest: Path,
    sha256: str,
    progress: bool = True,
    decompress_gz: bool = False,
) -> Path:
    """Download the first mirror that yields the right content to ``dest``, atomically.

    Mirrors are tried in order; a mirror that fails (network error, HTTP error, bad gzip data or a
    checksum mismatch) is skipped in favour of the next one.

    Args:
        urls: mirrors of the same file, best first (``http://``, ``https://`` or ``file://``).
        dest: final path. Its folder is created if needed. Nothing is written there unless the
            checksum matches.
        sha256: expected hex SHA-256 of what lands at ``dest`` (the decompressed bytes when
            ``decompress_gz``).
        progress: show a rich progress bar (bytes, rate, ETA) on the terminal.
        decompress_gz: the mirrors serve gzip; store and verify the decompressed content.

    Returns:
        ``dest``.

    Raises:
        DataError: every mirror failed; the message lists each mirror's failure.
    """
    if not urls:
        raise DataError(f"no download URL was given for {dest.name}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the folder {dest.parent} for {dest.name}: {e}") from e
    failures: list[str] = []
    for url in urls:
        # A fresh temporary file per attempt, in dest's folder so os.replace is an atomic rename.
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        except OSError as e:
            raise DataError(f"cannot write to {dest.parent}: {e}") from e
        tmp_path = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as tmp:
                _fetch_one(url, tmp, sha256, decompress_gz, progress)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_path, dest)
            return dest
        except urllib.error.HTTPError as e:
            failures.append(f"{url}: HTTP {e.code} {e.reason}")
        except (OSError, DataError, ValueError, http.client.HTTPException) as e:
            # OSError covers URLError (refused, DNS, timeout); ValueError covers malformed URLs;
            # HTTPException covers a connection cut mid-body (IncompleteRead).
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            failures.append(f"{url}: {reason}")
        finally:
            tmp_path.unlink(missing_ok=True)
    raise DataError(f"could not download {dest.name}; " + "; ".join(failures))
