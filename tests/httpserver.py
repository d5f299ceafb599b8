"""A real HTTP server on 127.0.0.1 for the download tests: a free port, a daemon thread, no log lines.

``serving(httpd)`` runs any server built on :data:`LOCAL` (with its own handler: Range support, a
cut-off, ...) and stops it afterwards; ``serve_folder(folder)`` serves the files of a folder. The
``no_proxy`` and ``file_server`` fixtures in ``tests/conftest.py`` are built on these; a module that
talks to 127.0.0.1 sets ``pytestmark = pytest.mark.usefixtures("no_proxy")``.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

LOCAL = ("127.0.0.1", 0)
"""The address a test server binds: the loopback interface only, on a free port."""


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that keeps pytest output clean (no line per request)."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        """Log nothing."""


class QuietFileHandler(QuietHandler, http.server.SimpleHTTPRequestHandler):
    """Serves the files of a folder (``directory=``), without logging."""


def base_url(httpd: http.server.HTTPServer) -> str:
    """``http://127.0.0.1:<port>/`` of a server bound on :data:`LOCAL`."""
    return f"http://127.0.0.1:{httpd.server_address[1]}/"


@contextlib.contextmanager
def serving(httpd: http.server.HTTPServer) -> Iterator[str]:
    """Run ``httpd`` in a daemon thread; yields its base URL, then shuts it down and closes it."""
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield base_url(httpd)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """A threaded server of the files in ``folder``; yields its base URL."""
    handler = functools.partial(QuietFileHandler, directory=str(folder))
    with serving(http.server.ThreadingHTTPServer(LOCAL, handler)) as url:
        yield url


def refused_url() -> str:
    """A 127.0.0.1 URL on a port nobody listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
