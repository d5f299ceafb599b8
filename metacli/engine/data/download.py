"""Verified, atomic, resumable downloads from a list of mirrors (standard library only).

A download streams into ``<dest>.part`` beside the destination, is checked against a SHA-256 and/or
an MD5 of the *whole* file, and only then is moved into place with :func:`os.replace` (an atomic
rename, since both paths are in one folder). So nothing half-written is ever at ``dest``: a reader
sees either the old file, no file, or the complete verified one.

**Resuming.** A transfer that breaks mid-body (connection cut, reset, timeout) keeps ``<dest>.part``.
The next call, whichever mirror it starts with, asks for the rest with ``Range: bytes=N-``:

- ``206 Partial Content`` starting at N: the body is appended (the digest is first fed the N bytes
  already on disk, so the checksum still covers the whole file);
- ``200 OK`` (the server ignores ``Range``; also ``file://`` URLs): the part is discarded and the body
  written from byte 0;
- ``416 Range Not Satisfiable``, or a 206 starting elsewhere: the part cannot be continued (it is
  stale, or already as long as the file), so the file is fetched again from byte 0.

The part file's name is fixed (not random) precisely so that a later call can find it. Two processes
downloading the same file at once are not coordinated; the loser's checksum fails and it reports it.

**Checksum mismatch.** The part is deleted (a bad part must not be resumed forever) and the mirror
counts as failed; the next mirror starts from zero. When every mirror fails the DataError lists each
mirror's failure, with the file, the expected and the computed digest, and a hint to retry.

**gzip mode.** With ``decompress_gz=True`` the gzip stream is decompressed on the fly and the checksum
is computed on the *decompressed* bytes, which is what lands at ``dest``. This matters for MNIST: only
the decompressed IDX content is canonical, while the ``.gz`` wrappers differ between copies (their gzip
headers differ). Such a download does **not** resume: the part holds decompressed bytes,
so its length says nothing about the offset in the compressed stream, and restarting a zlib decoder
mid-stream would need its internal state. Any part is therefore deleted on failure and every attempt
starts from byte 0 (MNIST files are small).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from email.message import Message
from pathlib import Path
from typing import BinaryIO, Protocol

from metacli.engine.types import OpenProgress
from metacli.errors import DataError

CHUNK_BYTES = 1 << 16
"""Read size for streaming; small enough for a smooth progress bar, large enough to be fast."""

TIMEOUT_S = 30.0
"""Socket timeout per connection attempt and per read, so a dead mirror cannot hang the CLI."""

PART_SUFFIX = ".part"
"""Suffix of the partial file kept beside ``dest`` between attempts (see :func:`partial_path`)."""

_HEX_LEN = {"sha256": 64, "md5": 32}
"""Supported digests and the length of their hex form (a malformed expected value is a programming error)."""

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
"""``Content-Range: bytes START-END/TOTAL`` of a 206 answer (RFC 9110 §14.4)."""


class ChecksumError(DataError):
    """The downloaded bytes do not have the expected digest (the partial file has been deleted)."""


class _Response(Protocol):
    """The part of an ``urlopen`` answer used here (``http.client.HTTPResponse`` or a ``file://`` one)."""

    headers: Message

    def read(self, amt: int) -> bytes: ...

    def close(self) -> None: ...


class _Sink(Protocol):
    """Where downloaded bytes go (raw, or through a gzip decoder)."""

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...


class _RawSink:
    """Writes bytes unchanged to ``out`` and feeds every digest."""

    def __init__(self, out: BinaryIO, digests: list[hashlib._Hash]) -> None:
        self._out = out
        self._digests = digests

    def write(self, data: bytes) -> None:
        for digest in self._digests:
            digest.update(data)
        self._out.write(data)

    def finish(self) -> None:
        """Nothing is buffered."""


class _GunzipSink:
    """Decompresses a gzip stream on the fly, then writes and hashes the decompressed bytes."""

    def __init__(self, out: BinaryIO, digests: list[hashlib._Hash]) -> None:
        self._raw = _RawSink(out, digests)
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


def partial_path(dest: Path) -> Path:
    """``<dest>.part``: where the bytes of an unfinished download of ``dest`` are kept."""
    return dest.with_name(dest.name + PART_SUFFIX)


def _expected_digests(sha256: str | None, md5: str | None) -> dict[str, str]:
    """``{algorithm: lower-case hex}`` of the given checksums; at least one is required.

    Raises:
        ValueError: neither is given, or one is not hex of the right length (a caller's bug, not the
            user's, hence not a DataError).
    """
    expected = {
        name: value.lower() for name, value in (("sha256", sha256), ("md5", md5)) if value is not None
    }
    if not expected:
        raise ValueError("download() needs sha256= or md5=: an unverified download is never accepted")
    for name, value in expected.items():
        if len(value) != _HEX_LEN[name] or any(c not in "0123456789abcdef" for c in value):
            raise ValueError(f"malformed {name} {value!r}: expected {_HEX_LEN[name]} hex digits")
    return expected


def _urlopen(request: str | urllib.request.Request) -> _Response:
    """``urlopen`` with the module timeout (typed for the attributes used here)."""
    resp: _Response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    return resp


def _range_start(resp: _Response) -> int | None:
    """The first byte of a 206 body from its ``Content-Range`` header; None if absent or malformed."""
    match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _open_from(url: str, offset: int) -> tuple[_Response, int]:
    """Open ``url`` asking for bytes from ``offset`` on; return the answer and where its body starts.

    The body starts at ``offset`` only for a 206 whose ``Content-Range`` starts there; any other
    success (200, ``file://``) is the whole file. A 416, or a 206 for another range, means the part
    cannot be continued, so the whole file is requested again.
    """
    if offset == 0:
        return _urlopen(url), 0
    try:
        resp = _urlopen(urllib.request.Request(url, headers={"Range": f"bytes={offset}-"}))
    except urllib.error.HTTPError as e:
        if e.code != 416:
            raise
        e.close()
        return _urlopen(url), 0
    if getattr(resp, "status", None) != 206:
        return resp, 0
    if _range_start(resp) == offset:
        return resp, offset
    resp.close()
    return _urlopen(url), 0


def _hash_file(path: Path, digests: list[hashlib._Hash]) -> None:
    """Feed the bytes already in ``path`` to every digest (so a resumed checksum covers the whole file)."""
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            for digest in digests:
                digest.update(chunk)


def _stream(resp: _Response, sink: _Sink, start: int, label: str, progress: OpenProgress | None) -> None:
    """Copy the body of ``resp`` into ``sink``; DataError if it ends before its ``Content-Length``."""
    length = resp.headers.get("Content-Length")
    total = start + int(length) if length is not None and length.isdigit() else None
    received = start
    report = progress(label, total, "bytes") if progress else None
    while chunk := resp.read(CHUNK_BYTES):
        sink.write(chunk)
        received += len(chunk)
        if report is not None:
            report(received, {})
    if total is not None and received != total:
        raise DataError(f"connection closed after {received} of {total} bytes")
    sink.finish()


def _fetch_one(
    url: str,
    part: Path,
    dest: Path,
    expected: Mapping[str, str],
    decompress_gz: bool,
    progress: OpenProgress | None,
) -> None:
    """Fetch ``url`` into ``part`` (resuming it when possible) and verify every expected digest.

    Raises:
        ChecksumError: the complete file has the wrong digest.
        DataError: bad gzip data, or the body ended early (the part is kept for a resume).
        OSError: network errors (``urllib.error.URLError`` and ``HTTPError`` are subclasses).
    """
    offset = part.stat().st_size if not decompress_gz and part.is_file() else 0
    resp, start = _open_from(url, offset)
    try:
        digests = [hashlib.new(name) for name in expected]
        if start:
            _hash_file(part, digests)
        with part.open("ab" if start else "wb") as out:
            sink: _Sink = _GunzipSink(out, digests) if decompress_gz else _RawSink(out, digests)
            try:
                _stream(resp, sink, start, url.rsplit("/", 1)[-1], progress)
            finally:
                # Whatever arrived is on disk before we report, so a resume continues from real bytes.
                out.flush()
                os.fsync(out.fileno())
    finally:
        resp.close()
    for digest, (name, want) in zip(digests, expected.items(), strict=True):
        got = digest.hexdigest()
        if got != want:
            what = "decompressed content" if decompress_gz else "file"
            raise ChecksumError(
                f"checksum mismatch for {dest.name}: {name} of the {what} is {got}, expected {want}; "
                f"the partial download was deleted and nothing was written to {dest}; retry (if it fails "
                "again, this mirror serves a different or damaged file)"
            )


def _discard_unusable_part(part: Path, decompress_gz: bool) -> None:
    """Delete the part unless it can be resumed: gzip parts never can, and an empty one is useless."""
    with contextlib.suppress(OSError):
        if decompress_gz or part.stat().st_size == 0:
            part.unlink()


def make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the ones created, deepest first."""
    created = []
    missing = folder
    while not missing.exists() and missing != missing.parent:
        created.append(missing)
        missing = missing.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


def remove_empty(folders: Sequence[Path]) -> None:
    """Remove each folder that is still empty, deepest first (one holding a partial download stays)."""
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty, or gone: either way nothing to undo
            folder.rmdir()


def download(
    urls: list[str],
    dest: Path,
    sha256: str | None = None,
    progress: OpenProgress | None = None,
    decompress_gz: bool = False,
    *,
    md5: str | None = None,
) -> Path:
    """Download the first mirror that yields the right content to ``dest``, atomically and resumably.

    Mirrors are tried in order; a mirror that fails (network error, HTTP error, bad gzip data or a
    checksum mismatch) is skipped in favour of the next one, which resumes any partial file left by
    an interrupted transfer (see the module docstring).

    Args:
        urls: mirrors of the same file, best first (``http://``, ``https://`` or ``file://``).
        dest: final path. Its folder is created if needed. Nothing is written there unless the
            checksum matches; the unfinished bytes live in :func:`partial_path` ``(dest)``.
        sha256: expected hex SHA-256 of what lands at ``dest`` (the decompressed bytes when
            ``decompress_gz``). Kept positional for existing callers.
        progress: opens a progress display for each file's bytes (the run layer draws it); None: none.
        decompress_gz: the mirrors serve gzip; store and verify the decompressed content. Such a
            download never resumes: it restarts from byte 0.
        md5: expected hex MD5 (for datasets published with an MD5 only, e.g. Omniglot). When both
            digests are given, both must match.

    Returns:
        ``dest``.

    Raises:
        ValueError: no checksum was given, or one is malformed.
        ChecksumError: every mirror served a complete file with the wrong digest (a DataError).
        DataError: every mirror failed; the message lists each mirror's failure and says whether a
            partial file was kept for the next call to resume.
    """
    expected = _expected_digests(sha256, md5)
    if not urls:
        raise DataError(f"no download URL was given for {dest.name}")
    try:
        created = make_folder(dest.parent)
    except OSError as e:
        raise DataError(f"cannot create the folder {dest.parent} for {dest.name}: {e}") from e
    part = partial_path(dest)
    if decompress_gz:
        part.unlink(missing_ok=True)  # a gzip download always starts from zero
    failures: list[str] = []
    mismatches = 0
    for url in urls:
        try:
            _fetch_one(url, part, dest, expected, decompress_gz, progress)
            os.replace(part, dest)
            return dest
        except ChecksumError as e:
            part.unlink(missing_ok=True)  # never resume from bytes known to be wrong
            failures.append(f"{url}: {e}")
            mismatches += 1
        except urllib.error.HTTPError as e:
            failures.append(f"{url}: HTTP {e.code} {e.reason}")
        except (OSError, DataError, ValueError, http.client.HTTPException) as e:
            # OSError covers URLError (refused, DNS, timeout) and a cannot-write part; ValueError covers
            # malformed URLs; HTTPException covers a connection cut mid-body (IncompleteRead).
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            failures.append(f"{url}: {reason}")
        finally:
            _discard_unusable_part(part, decompress_gz)
    kept = f" The partial download {part} is kept: run again to resume it." if part.is_file() else ""
    remove_empty(created)  # a failed download leaves no empty dataset folder in the data root
    message = f"could not download {dest.name}; " + "; ".join(failures) + "." + kept
    # Every mirror delivered a whole file with the wrong digest: say so by type, too.
    raise ChecksumError(message) if mismatches == len(urls) else DataError(message)
