"""The downloader's checksums and resumable partial files, against a real HTTP server on 127.0.0.1.

The server is a ``ThreadingHTTPServer`` on a free port in a daemon thread. Its handler serves one
payload, honours (or, when told, ignores) ``Range: bytes=N-``, can cut the connection after a given
number of body bytes on its first request, and records every ``Range`` header it received, so the
tests check what went over the wire, not only what landed on disk.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from metacli.engine.data.download import ChecksumError, download, partial_path
from metacli.errors import DataError
from tests.httpserver import LOCAL, QuietHandler, serving

pytestmark = pytest.mark.usefixtures("no_proxy")

PAYLOAD = os.urandom(1) + bytes(range(256)) * 800  # 204,801 bytes: several read chunks
CUT = 70_000
"""Body bytes sent before the connection is cut (not a multiple of the 64 KiB read size)."""


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class _State:
    """What the handler serves and what it saw (shared by all requests of one server)."""

    body: bytes = PAYLOAD
    cut_first_after: int | None = None
    """Cut the connection after this many body bytes, on the first request only."""
    honour_range: bool = True
    ranges: list[str | None] = field(default_factory=list)
    """The ``Range`` header of every request, in order (None: no header)."""
    sent: list[int] = field(default_factory=list)
    """Body bytes written for every request."""
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class _RangeHandler(QuietHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # Content-Length framing, so a cut is detectable

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        state = self.server.state
        header = self.headers.get("Range")
        with state.lock:
            first = not state.ranges and not state.sent
            state.ranges.append(header)
        body, start = state.body, 0
        match = re.fullmatch(r"bytes=(\d+)-", header or "")
        if state.honour_range and match:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                state.sent.append(0)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        chunk = body[start:]
        if first and state.cut_first_after is not None:
            chunk = chunk[: state.cut_first_after]
            self.close_connection = True
        self.wfile.write(chunk)
        self.wfile.flush()
        state.sent.append(len(chunk))


@pytest.fixture
def server() -> Iterator[tuple[str, _State]]:
    """The Range-aware server on a free port; yields (URL of the payload, its state)."""
    httpd = _Server(LOCAL, _RangeHandler)
    httpd.state = _State()
    with serving(httpd) as base:
        yield f"{base}archive.zip", httpd.state


class _Reported:
    """An ``OpenProgress`` that records what the download reports: (description, total, unit) and counts."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, int | None, str]] = []
        self.done: list[int] = []

    def __call__(
        self, description: str, total: int | None, unit: str
    ) -> Callable[[int, dict[str, float]], None]:
        self.opened.append((description, total, unit))
        return lambda done, info: self.done.append(done)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_md5_verified(server: tuple[str, _State], tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "archive.zip"
    reported = _Reported()
    assert download([url], dest, md5=_md5(PAYLOAD), progress=reported) == dest
    assert dest.read_bytes() == PAYLOAD
    assert reported.opened == [("archive.zip", len(PAYLOAD), "bytes")] and reported.done[-1] == len(PAYLOAD)
    assert _files(tmp_path) == ["archive.zip"]
    assert state.ranges == [None]  # a fresh download asks for the whole file


def test_sha256_and_md5_both_checked(server: tuple[str, _State], tmp_path: Path) -> None:
    url, _ = server
    dest = tmp_path / "archive.zip"
    download([url], dest, hashlib.sha256(PAYLOAD).hexdigest(), md5=_md5(PAYLOAD).upper(), progress=False)
    assert dest.read_bytes() == PAYLOAD
    dest.unlink()
    with pytest.raises(DataError, match="md5"):
        download([url], dest, hashlib.sha256(PAYLOAD).hexdigest(), md5="0" * 32, progress=False)
    assert _files(tmp_path) == []


@pytest.mark.parametrize(("sha256", "md5"), [(None, None), (None, "abc"), ("z" * 64, None)])
def test_missing_or_malformed_checksum_is_a_programming_error(
    tmp_path: Path, sha256: str | None, md5: str | None
) -> None:
    with pytest.raises(ValueError):
        download(["http://127.0.0.1:9/x"], tmp_path / "x", sha256, md5=md5, progress=False)
    assert _files(tmp_path) == []


def test_corrupt_archive_refused_with_message_and_nothing_left(
    server: tuple[str, _State], tmp_path: Path
) -> None:
    url, state = server
    state.body = PAYLOAD[:-1] + b"!"  # the mirror serves a damaged file
    dest = tmp_path / "archive.zip"
    with pytest.raises(ChecksumError) as info:
        download([url], dest, md5=_md5(PAYLOAD), progress=False)
    msg = str(info.value)
    assert "checksum mismatch for archive.zip" in msg
    assert _md5(PAYLOAD) in msg and _md5(state.body) in msg  # expected and got
    assert "retry" in msg and url in msg
    assert _files(tmp_path) == []  # nothing at dest, no leftover .part


def test_interrupted_download_keeps_part_then_resumes_with_range(
    server: tuple[str, _State], tmp_path: Path
) -> None:
    url, state = server
    state.cut_first_after = CUT
    dest = tmp_path / "archive.zip"
    with pytest.raises(DataError) as info:
        download([url], dest, md5=_md5(PAYLOAD), progress=False)
    assert f"connection closed after {CUT} of {len(PAYLOAD)} bytes" in str(info.value)
    assert "run again to resume" in str(info.value)
    part = partial_path(dest)
    assert part == tmp_path / "archive.zip.part"
    assert _files(tmp_path) == ["archive.zip.part"]  # never anything at dest
    assert part.read_bytes() == PAYLOAD[:CUT]

    reported = _Reported()
    download([url], dest, md5=_md5(PAYLOAD), progress=reported)
    assert dest.read_bytes() == PAYLOAD
    assert reported.done[0] > CUT and reported.done[-1] == len(PAYLOAD)  # counted from the part kept
    assert _files(tmp_path) == ["archive.zip"]
    assert state.ranges == [None, f"bytes={CUT}-"]
    assert state.sent == [CUT, len(PAYLOAD) - CUT]  # only the rest went over the wire


def test_server_ignoring_range_restarts_and_gives_the_right_file(
    server: tuple[str, _State], tmp_path: Path
) -> None:
    url, state = server
    state.cut_first_after = CUT
    state.honour_range = False
    dest = tmp_path / "archive.zip"
    with pytest.raises(DataError, match="connection closed"):
        download([url], dest, md5=_md5(PAYLOAD), progress=False)
    download([url], dest, md5=_md5(PAYLOAD), progress=False)
    assert state.ranges == [None, f"bytes={CUT}-"]  # asked to resume, answered 200 with the whole file
    assert state.sent == [CUT, len(PAYLOAD)]
    assert dest.read_bytes() == PAYLOAD
    assert _files(tmp_path) == ["archive.zip"]


def test_stale_part_longer_than_file_is_refetched(server: tuple[str, _State], tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "archive.zip"
    partial_path(dest).write_bytes(b"?" * (len(PAYLOAD) + 10))  # 416 Range Not Satisfiable
    download([url], dest, md5=_md5(PAYLOAD), progress=False)
    assert state.ranges == [f"bytes={len(PAYLOAD) + 10}-", None]
    assert dest.read_bytes() == PAYLOAD
    assert _files(tmp_path) == ["archive.zip"]


def test_resumed_part_with_wrong_bytes_is_deleted(server: tuple[str, _State], tmp_path: Path) -> None:
    """The checksum covers the bytes already on disk too; a bad part is dropped, not resumed again."""
    url, state = server
    dest = tmp_path / "archive.zip"
    partial_path(dest).write_bytes(b"\0" * CUT)
    with pytest.raises(ChecksumError):
        download([url], dest, md5=_md5(PAYLOAD), progress=False)
    assert state.ranges == [f"bytes={CUT}-"]
    assert _files(tmp_path) == []
    download([url], dest, md5=_md5(PAYLOAD), progress=False)  # the retry starts from zero
    assert state.ranges[-1] is None and dest.read_bytes() == PAYLOAD


def test_part_from_one_mirror_resumed_from_the_next(server: tuple[str, _State], tmp_path: Path) -> None:
    url, state = server
    state.cut_first_after = CUT
    dest = tmp_path / "archive.zip"
    download([url, url], dest, md5=_md5(PAYLOAD), progress=False)  # same file: the second mirror resumes
    assert state.ranges == [None, f"bytes={CUT}-"]
    assert dest.read_bytes() == PAYLOAD


def test_gzip_mode_does_not_resume(server: tuple[str, _State], tmp_path: Path) -> None:
    url, state = server
    raw = os.urandom(300_000)
    state.body = gzip.compress(raw, compresslevel=1)
    state.cut_first_after = CUT
    dest = tmp_path / "data"
    sha = hashlib.sha256(raw).hexdigest()
    with pytest.raises(DataError, match="connection closed"):
        download([url], dest, sha, progress=False, decompress_gz=True)
    assert _files(tmp_path) == []  # decompressed bytes cannot be resumed, so none are kept
    download([url], dest, sha, progress=False, decompress_gz=True)
    assert state.ranges == [None, None]
    assert dest.read_bytes() == raw
