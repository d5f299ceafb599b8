"""Where data lives and where derived data is cached, shared by every dataset and the downloader.

- The **data root** holds raw datasets (``<root>/mnist``, ``<root>/omniglot``, ``<root>/miniimagenet``):
  ``--data-root``, else ``$METACLI_DATA``, else the per-user cache folder. It may be shared or read-only.
- The **cache** holds what metacli derives from raw data (decoded image tensors, built streams), keyed
  by a hash of what produced it: ``$XDG_CACHE_HOME/metacli`` or ``~/.cache/metacli``.
- ``METACLI_OFFLINE=1`` forbids downloads: missing data is then a clear error (the test suite sets it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

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
