"""The file toolkit: the one atomic write and the one directory swap of metacli.

Every file metacli writes (run folders, Hedge's results, figures, tables, checkpoints, the data caches)
goes through :func:`atomic_write`, and every set of entries replaced as a whole through :func:`swap_in`
(built aside in a staging folder, then renamed into place) or :func:`move_all` (renames undone together).
Both rest on one fact: ``os.replace`` within one file system is atomic, so a reader (or a kill) sees the
old entry or the whole new one, never half of one.

Standard library only: the run layer, ``hedge``/``plot`` (which must start without torch) and the
engine's data caches all import it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO, TypeAlias

_UMASK = os.umask(0)
os.umask(_UMASK)

TEMP_SUFFIX = ".tmp"
"""Suffix of the temporary ``.<name>.<random>.tmp`` files and staging folders (hidden: readers skip them)."""

Content: TypeAlias = str | bytes | bytearray | memoryview | Callable[[BinaryIO], object]
"""What :func:`atomic_write` writes: text (UTF-8), bytes, or a function that writes into a binary file
(``torch.save``, ``np.save``, ``Figure.savefig``...)."""


def atomic_write(path: Path, content: Content, *, durable: bool = True) -> None:
    """Write ``content`` to ``path`` so that a kill at any instant leaves the old file or the whole new one.

    The content fills a temporary ``.<name>.<random>.tmp`` file in ``path``'s folder (created if missing),
    which then replaces ``path`` in one ``os.replace``. It gets the permissions of a plain ``open`` (the
    umask's), since results and caches are meant to be shared. With ``durable`` the bytes and then the
    rename are fsynced, so they also survive a power cut; a cache that is rebuilt whenever it is missing
    or damaged passes ``durable=False`` and skips the wait. On any error (a full disk, an exception inside
    the write function) the temporary file is removed, ``path`` is left as it was, and the error propagates.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            _fill(f, content)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_folder(path.parent)


def _fill(f: BinaryIO, content: Content) -> None:
    """Write ``content`` into the open binary file ``f`` (text as UTF-8)."""
    if isinstance(content, str):
        f.write(content.encode("utf-8"))
    elif isinstance(content, bytes | bytearray | memoryview):
        f.write(content)
    else:
        content(f)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; silent where the file system cannot."""
    with suppress(OSError):  # some file systems cannot open a folder for fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def staging_folder(folder: Path, name: str) -> Path:
    """A new hidden folder ``.<name>.<random>.tmp`` inside ``folder``, in which to build what :func:`swap_in`
    moves into ``folder`` (one file system, so every move is a rename)."""
    return Path(tempfile.mkdtemp(dir=folder, prefix=f".{name}.", suffix=TEMP_SUFFIX))


def move_all(moves: Sequence[tuple[Path, Path]]) -> None:
    """Rename each ``(source, destination)`` in order, as a whole: if one rename fails, those made so far are
    undone in reverse order (best effort) and the error propagates. :func:`undo_moves` undoes them later."""
    done: list[tuple[Path, Path]] = []
    try:
        for source, destination in moves:
            os.replace(source, destination)
            done.append((source, destination))
    except BaseException:
        undo_moves(done)
        raise


def undo_moves(moves: Sequence[tuple[Path, Path]]) -> None:
    """Rename every ``destination`` back to its ``source``, last move first; a failing one is passed over."""
    for source, destination in reversed(moves):
        with suppress(OSError):
            os.replace(destination, source)


def swap_in(staging: Path, folder: Path, names: Sequence[str]) -> None:
    """Replace the entries ``names`` of ``folder`` by those built in ``staging``, as one set.

    Every name but the last is swapped by two renames: its old entry in ``folder`` (if any) into
    ``staging/old-<name>``, then the new one in. The last name is the commit: one ``os.replace`` over the
    old entry (so it must be a file, or absent in ``folder``). If any rename fails, those made so far are
    undone, so ``folder`` holds the whole old set or the whole new one. Only a kill between the commit's
    rename and the one before it could leave the new entries beside the old last one; running the writer
    again mends that. The caller removes ``staging`` afterwards (it holds the old entries).
    """
    *entries, commit = names
    moves: list[tuple[Path, Path]] = []
    for name in entries:
        if (folder / name).exists() or (folder / name).is_symlink():
            moves.append((folder / name, staging / f"old-{name}"))
        moves.append((staging / name, folder / name))
    moves.append((staging / commit, folder / commit))
    move_all(moves)
