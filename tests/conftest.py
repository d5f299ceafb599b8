"""Shared fixtures: the real-data root, tiny specs, the local HTTP server, and the gpu marker's skip."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.httpserver import serve_folder

REPO = Path(__file__).resolve().parent.parent


def shared_data_root() -> Path | None:
    """``$METACLI_DATA`` or ``<repo>/../shared/data`` when it exists, else None."""
    env = os.environ.get("METACLI_DATA")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture
def data_root() -> Path:
    """The real-data folder; the test is skipped (with the reason) when it is absent."""
    root = shared_data_root()
    if root is None:
        pytest.skip("real data not found: set METACLI_DATA or put shared/data beside the repository")
    return root


@pytest.fixture
def session_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One cache folder for the test session (the S-MNIST stream is built once), never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests to a local test server must never go through a proxy from the environment."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def file_server(tmp_path: Path, no_proxy: None) -> Iterator[tuple[str, Path]]:
    """A threaded HTTP server on 127.0.0.1 (free port) serving ``<tmp>/served``; yields (base URL, folder)."""
    served = tmp_path / "served"
    served.mkdir()
    with serve_folder(served) as url:
        yield url, served


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread: the suite's models are tiny, and on 2 shared cores more threads are ~10x slower."""
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # and `threads: auto` of every run the tests start picks 1
    # No test may reach a real download mirror: missing data must be a clear error, not a download.
    os.environ["METACLI_OFFLINE"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are reported as skipped, not passed, where CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
