"""Where data lives and where derived data is cached, shared by every dataset and the downloader.

- The **data root** holds raw datasets (``<root>/mnist``, ``<root>/omniglot``, ``<root>/miniimagenet``):
  ``--data-root``, else ``$METACLI_DATA``, else the per-user cache folder. It may be shared or read-only;
  metacli writes there only to download missing data. A root that is a file, lies inside a file or
  cannot be read is a :class:`~metacli.errors.DataError` naming the option or variable it came from.
- The **cache** holds what metacli derives from raw data (decoded image tensors, built streams), keyed
  by a hash of the *content* of its source files plus everything else that produced it (the recipe):
  ``$XDG_CACHE_HOME/metacli`` or ``~/.cache/metacli``. A source file fixed in place (same name, same size,
  other bytes) therefore gets a new cache, and a cache built from bad data is never used for good data.
- Hashing large sources on every run would cost seconds, so content digests are memoised in a small
  index per dataset, ``<cache>/digests/<dataset>.json`` (:func:`file_digests`), keyed by each file's
  path, size, modification and change times, inode and device: any change to the file hashes it again.
- ``METACLI_OFFLINE=1`` forbids downloads: missing data is then a clear error (the test suite sets it).
- ``METACLI_TRUST_DATA=1`` reads data files whose checksums differ from the published ones without the
  error (MNIST) or the warning (Omniglot, CIFAR-100, miniImageNet) they otherwise cause
  (:func:`report_mismatches`).
- Cache files are written through metacli's one atomic write (:func:`metacli.files.atomic_write`;
  :func:`write_cache_file` is its ``torch.save`` wrapper) and read back as data only
  (:func:`read_cache_file`): a damaged or unwritable cache only costs a rebuild, with a warning.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import stat
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metacli.errors import DataError
from metacli.files import atomic_write

ENV_VAR = "METACLI_DATA"
"""Environment variable naming the data root when ``--data-root`` is not given."""
OFFLINE_VAR = "METACLI_OFFLINE"
"""Set to 1 to forbid downloads (missing data is then a clear error); the test suite sets it."""
TRUST_VAR = "METACLI_TRUST_DATA"
"""Set to 1 to read data files whose checksums differ from the published ones, without error or warning."""
DIGESTS_DIR = "digests"
"""Sub-folder of the cache that holds the memoised content digests, one JSON index per dataset."""
INDEX_VERSION = 1
"""Version of the digest index's layout; an index of another version is rebuilt."""
_CHUNK = 1 << 20


def downloads_allowed() -> bool:
    """Whether metacli may download missing data (``$METACLI_OFFLINE`` is not ``1``)."""
    return os.environ.get(OFFLINE_VAR, "") != "1"


def fetch_advice(what: str, source: str, download: bool) -> str:
    """The last fix of a data-not-found message: how ``what`` can come from ``source``.

    ``download``: metacli may fetch it (and will). Otherwise ``$METACLI_OFFLINE`` is named only when it is
    what forbids the download; a download that failed is retried by running again.
    """
    if download:
        return f"or let metacli download {what} from {source}"
    if not downloads_allowed():
        return f"or unset {OFFLINE_VAR} to let metacli download {what} from {source}"
    return f"or download {what} from {source} yourself (or run again once it can be reached)"


def data_trusted() -> bool:
    """Whether the user vouches for data files whose checksums differ (``$METACLI_TRUST_DATA`` is ``1``)."""
    return os.environ.get(TRUST_VAR, "") == "1"


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/metacli`` or ``~/.cache/metacli``: where metacli writes derived data.

    Built streams and decoded images are cached here, never in the data root, which may be shared or
    read-only.
    """
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "metacli"


# --- the data root ----------------------------------------------------------------------------------------


def resolve_data_root(explicit: Path | None) -> Path:
    """The data root: ``explicit``, else ``$METACLI_DATA``, else the per-user cache folder.

    The cache folder is ``$XDG_CACHE_HOME/metacli``, or ``~/.cache/metacli`` when
    ``XDG_CACHE_HOME`` is unset or empty (the XDG base-directory rule). A root that does not exist yet
    is accepted: a download creates it, otherwise each dataset says what is missing where.

    Raises:
        DataError: the root is a file, lies inside a file, or is a folder that cannot be read (see
            :func:`check_data_root`).
    """
    env = os.environ.get(ENV_VAR)
    if explicit is not None:
        root, source = explicit.expanduser(), "--data-root, or data_root in the spec"
    elif env:
        root, source = Path(env).expanduser(), f"${ENV_VAR}"
    else:
        root, source = user_cache_dir(), "the default, $XDG_CACHE_HOME/metacli or ~/.cache/metacli"
    check_data_root(root, source)
    return root


def check_data_root(root: Path, source: str) -> None:
    """DataError unless ``root`` is a readable folder or does not exist yet.

    Args:
        root: the data root.
        source: where it came from (``--data-root``, ``$METACLI_DATA``, ...), named in the message.
    """
    where = f"the data root {root} (from {source})"
    fix = (
        f"Fix: pass --data-root or set {ENV_VAR} to the folder that holds the datasets (mnist/, "
        "omniglot/, ...)"
    )
    try:
        st = root.stat()
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise DataError(
            f"{where} lies inside a file: a part of that path is a file, not a folder. {fix}."
        ) from None
    except OSError as e:
        raise DataError(
            f"{where} cannot be accessed ({e.strerror or e}). {fix}, or fix its permissions."
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise DataError(f"{where} is a file, not a folder. {fix}.")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"{where} is a folder you lack permission to read. {fix}, or fix its permissions.")


# --- content digests and the published checksums ----------------------------------------------------------


def digest_index(cache: Path, dataset: str) -> Path:
    """``<cache>/digests/<dataset>.json``: the memo of the content digests of one dataset's source files."""
    return cache / DIGESTS_DIR / f"{dataset}.json"


def file_digests(
    paths: Sequence[Path], index: Path, algorithms: Sequence[str] = ("sha256",), *, gunzip: bool = False
) -> list[dict[str, str]]:
    """``{algorithm: hex digest}`` of each file's content, memoised in the JSON ``index``.

    A memoised digest is used only while the file's absolute path, size, modification and change times,
    inode and device are all unchanged; otherwise the file is hashed again. A file that changes while it
    is hashed is not memoised. A damaged index warns once and is rebuilt; one that cannot be written
    (read-only cache) only costs hashing again next time.

    Args:
        paths: the source files.
        index: the memo (:func:`digest_index`).
        algorithms: :mod:`hashlib` names, all computed in one pass over a file.
        gunzip: hash the decompressed content of files whose name ends in ``.gz``.

    Raises:
        DataError: a file cannot be read (or, with ``gunzip``, is not a whole gzip stream).
    """
    memo = _read_index(index)
    tag = "+gunzip" if gunzip else ""
    out, changed = [], False
    for path in paths:
        key, before = os.path.abspath(path), _identity(path)
        entry = memo.get(key)
        known = entry.get("digests") if isinstance(entry, dict) and entry.get("identity") == before else None
        digests = dict(known) if isinstance(known, dict) else {}
        missing = [a for a in algorithms if not isinstance(digests.get(a + tag), str)]
        if missing:
            digests.update({a + tag: d for a, d in _hash_file(path, missing, gunzip).items()})
            if _identity(path) == before:  # not rewritten while it was read
                memo[key] = {"identity": before, "digests": digests}
                changed = True
        out.append({a: digests[a + tag] for a in algorithms})
    if changed:
        _write_index(index, memo)
    return out


def content_identities(paths: Sequence[Path], index: Path) -> list[dict[str, str]]:
    """``[{"name", "sha256"}]`` of the source files, for a cache recipe: their content, not size or time."""
    digests = file_digests(paths, index)
    return [{"name": p.name, "sha256": d["sha256"]} for p, d in zip(paths, digests, strict=True)]


def _unreadable(path: Path, error: BaseException) -> DataError:
    """The error for a source file that cannot be read: which file, why, and the fix."""
    return DataError(
        f"cannot read {path} ({type(error).__name__}: {error}): it is damaged or unreadable. Fix: delete "
        "it so that metacli downloads it again, or restore a good copy (and check its permissions)."
    )


def _identity(path: Path) -> list[int]:
    """Size, mtime, ctime, inode and device of ``path``: what must not change for a memoised digest."""
    try:
        st = path.stat()
    except OSError as e:
        raise _unreadable(path, e) from e
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _hash_file(path: Path, algorithms: Sequence[str], gunzip: bool) -> dict[str, str]:
    """Hash ``path`` (decompressed when ``gunzip`` and it ends in ``.gz``) with every algorithm at once."""
    hashes = {a: hashlib.new(a, usedforsecurity=False) for a in algorithms}
    try:
        with gzip.open(path, "rb") if gunzip and path.suffix == ".gz" else path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                for h in hashes.values():
                    h.update(chunk)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise _unreadable(path, e) from e
    return {a: h.hexdigest() for a, h in hashes.items()}


def _read_index(index: Path) -> dict[str, Any]:
    """The memo's entries by absolute path; empty when absent, and (with one warning) when damaged."""
    if not index.is_file():
        return {}
    try:
        blob = json.loads(index.read_text(encoding="utf-8"))
        files = blob.get("files") if blob.get("version") == INDEX_VERSION else None
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON (or not UTF-8), not an object
        files = None
    if isinstance(files, dict):
        return files
    warnings.warn(f"ignoring the damaged checksum index {index}; rebuilding it", stacklevel=4)
    return {}


def _write_index(index: Path, memo: dict[str, Any]) -> None:
    """Write the memo atomically; a failure is silent, as it only costs hashing the files again."""
    text = json.dumps({"version": INDEX_VERSION, "files": memo}, sort_keys=True)
    with contextlib.suppress(OSError):
        atomic_write(index, text, durable=False)


def mismatch(path: Path, algorithm: str, got: str, expected: str) -> list[str]:
    """``["<path> has <algorithm> <got>, not the published <expected>"]``, or ``[]`` when they agree."""
    return [] if got == expected else [f"{path} has {algorithm} {got}, not the published {expected}"]


def report_mismatches(
    lead: str, mismatches: Sequence[str], consequence: str, *, strict: bool = False
) -> None:
    """Refuse (``strict``) or warn once about data files whose checksums differ from the published ones.

    Nothing happens when every file matches, or when ``$METACLI_TRUST_DATA`` is ``1``.

    Args:
        lead: what differs, e.g. ``"the MNIST files differ from the published content"``.
        mismatches: the lines of :func:`mismatch`.
        consequence: what it means, and the fix.
        strict: raise instead of warning.

    Raises:
        DataError: ``strict`` and a file differs.
    """
    if not mismatches or data_trusted():
        return
    text = f"{lead}: {'; '.join(mismatches)}. {consequence}"
    if strict:
        raise DataError(f"{text} To read them anyway, set {TRUST_VAR}=1.")
    warnings.warn(f"{text} Set {TRUST_VAR}=1 to silence this warning.", stacklevel=4)


# --- cache files ------------------------------------------------------------------------------------------


def cache_key(recipe: dict[str, Any]) -> str:
    """A short stable hash of everything that produced a cached artefact (JSON-serialisable recipe)."""
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


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
    """``torch.save`` ``blob`` to ``path`` through metacli's one atomic write, creating its folder.

    The thin torch wrapper of :func:`metacli.files.atomic_write` for the data caches. A cache that cannot
    be written (read-only or full disk) only costs a rebuild next time: it warns, naming ``what`` (e.g.
    ``"decoded miniImageNet"``) and the folder, instead of failing.
    """
    try:
        atomic_write(path, lambda f: torch.save(blob, f))
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as RuntimeError
        warnings.warn(f"could not cache the {what} in {path.parent}: {e}", stacklevel=4)
