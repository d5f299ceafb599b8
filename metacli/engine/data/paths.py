"""Where data lives and where derived data is cached, shared by every dataset and the downloader.

- The **data root** holds raw datasets (``<root>/mnist``, ``<root>/omniglot``, ``<root>/miniimagenet``):
  ``--data-root``, else ``$METACLI_DATA``, else the per-user cache folder. It may be shared or read-only.
- The **cache** holds what metacli derives from raw data (decoded image tensors, built streams), keyed
  by a hash of what produced it: ``$XDG_CACHE_HOME/metacli`` or ``~/.cache/metacli``.
- ``METACLI_OFFLINE=1`` forbids downloads: missing data is then a clear error (the test suite sets it).
- Cache files are written atomically (:func:`atomic_write`, :func:`write_cache_file`) and read back as
  data only (:func:`read_cache_file`): a damaged or unwritable cache only costs a rebuild, with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

ENV_VAR = "METACLI_DATA"
"""Environment variable naming the data root when ``--data-root`` is not given."""
OFFLINE_VAR = "METACLI_OFFLINE"
"""Set to 1 to forbid downloads (missing data is then a clear error); the test suite sets it."""


def downloads_allowed() -> bool:
    """Whether metacli may download missing data (``$METACLI_OFFLINE`` is not ``1``)."""
    return os.environ.get(OFFLINE_VAR, "") != "1"


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/metacli`` or ``~/.cache/metacli``: where metacli writes derived data.

    Built streams and decoded images are cached here, never in the data root, which may be shared or
    read-only.
    """
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "metacli"


def resolve_data_root(explicit: Path | None) -> Path:
    """The data root: ``explicit``, else ``$METACLI_DATA``, else the per-user cache folder.

    The cache folder is ``$XDG_CACHE_HOME/metacli``, or ``~/.cache/metacli`` when
    ``XDG_CACHE_HOME`` is unset or empty (the XDG base-directory rule).
    """
    if explicit is not None:
        return explicit.expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return user_cache_dir()


def file_identity(path: Path) -> dict[str, Any]:
    """Name, size and modification time of a source file: cheap, and changes when the file does."""
    st = path.stat()
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(recipe: dict[str, Any]) -> str:
    """A short stable hash of everything that produced a cached artefact (JSON-serialisable recipe)."""
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@contextlib.contextmanager
def atomic_write(path: Path, *, suffix: str = ".tmp", fsync: bool = True) -> Iterator[IO[bytes]]:
    """A binary file to write ``path`` through: on a clean exit it replaces ``path`` in one step.

    The file is a temporary ``.<name>.<random><suffix>`` in ``path``'s folder (which must exist), so
    ``os.replace`` is atomic and a reader sees the old file or the whole new one, never half of it. With
    ``fsync`` the bytes reach the disk before the rename. The temporary file is removed whatever happens;
    an exception inside the block leaves ``path`` as it was and propagates.
    """
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_cache_file(path: Path, what: str) -> Any | None:
    """What :func:`write_cache_file` wrote to ``path``; None when it is absent or unreadable.

    Read with ``weights_only=True``: a cache file is data, never code (it may sit in a shared folder).
    An unreadable file is not an error: it warns, naming ``what`` (e.g. ``"miniImageNet"``) and
    ``path``, and the caller rebuilds it. Whether the content is what the caller wrote is its own check.
    """
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged zip or pickle can raise many types
        # stacklevel 4: the warning points at whoever called the dataset loader that called this.
        warnings.warn(f"ignoring the unreadable {what} cache {path} ({e}); rebuilding it", stacklevel=4)
        return None


def write_cache_file(path: Path, blob: dict[str, Any], what: str) -> None:
    """``torch.save`` ``blob`` to ``path`` atomically (:func:`atomic_write`), creating its folder.

    A cache that cannot be written (read-only or full disk) only costs a rebuild next time: it warns,
    naming ``what`` (e.g. ``"decoded miniImageNet"``) and the folder, instead of failing.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            torch.save(blob, f)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as RuntimeError
        warnings.warn(f"could not cache the {what} in {path.parent}: {e}", stacklevel=4)
