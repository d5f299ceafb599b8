"""One exception family for every error a user can cause.

The CLI catches :class:`MetacliError`, prints its message (which names the cause and the fix)
and exits with code 2, without a traceback. Engine code raises these instead of printing and
carrying on.
"""


class MetacliError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""

    exit_code = 2


def clause(message: object) -> str:
    """A message to embed before more text: without its closing full stop, so none is doubled."""
    return str(message).rstrip().rstrip(".")


class SpecError(MetacliError):
    """A run spec that does not parse or does not validate."""


class DataError(MetacliError):
    """Missing, corrupt or undownloadable data."""


class RunDirError(MetacliError):
    """A run directory that is missing, incomplete or of an unknown schema version."""


class RunFailure(MetacliError):
    """A run that cannot go on (it diverged): exit code 1, the last good checkpoint named."""

    exit_code = 1


class Interrupted(MetacliError):
    """A run stopped by SIGINT or SIGTERM after writing a checkpoint: it can be resumed."""

    exit_code = 130


_NO_PERMISSION = "you lack permission there: fix its permissions, or work in a folder you can write"


def os_problem(error: OSError) -> str:
    """What an operating-system failure means for the user, with the fix: one sentence, no traceback.

    A read-only or unwritable folder, a full disk, a name too long, too many open files: these are the
    machine's state, not metacli bugs, and the user can act on each.
    """
    import errno

    where = f" ({error.filename})" if error.filename else ""
    cause = error.strerror or type(error).__name__
    fixes = {
        errno.ENOSPC: "free space on that disk, or write elsewhere",
        errno.EDQUOT: "free space within your disk quota, or write elsewhere",
        errno.EROFS: "that file system is read-only: make it writable, or work in a writable folder",
        errno.EACCES: _NO_PERMISSION,
        errno.EPERM: _NO_PERMISSION,
        errno.ENAMETOOLONG: "use a shorter --out or spec name",
        errno.EMFILE: "too many open files: raise the limit ('ulimit -n') or run fewer processes",
        errno.ENFILE: "the system's open-file table is full: close other programs and run it again",
        errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
        errno.EISDIR: "that path is a folder where a file is needed: choose another path",
        errno.EEXIST: "something already exists there: choose another path",
        errno.ENOMEM: "the machine is out of memory: use smaller settings or free memory",
        errno.EAGAIN: "a system resource limit was reached (processes, threads or memory): use fewer threads",
        errno.EIO: "the disk reported an input/output error: check the device",
    }
    fix = fixes.get(error.errno or -1, "check that path and the machine, then run it again")
    return f"{cause}{where}: {fix}."


OUT_OF_MEMORY = "out of memory: use a smaller train.meta_batch, model or data size, or free memory"


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says memory ran out: Python's, torch's CUDA one, or torch's CPU allocator's.

    torch reports a failed CPU allocation as a plain ``RuntimeError`` ("DefaultCPUAllocator: can't
    allocate memory"), so the message is the only sign; checked by name to keep torch out of this module.
    """
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def symlink_loop(error: BaseException) -> str | None:
    """The message for a path whose symbolic links point back at themselves, or None for other errors.

    ``Path.resolve`` reports such a loop as a plain ``RuntimeError`` (Python < 3.13), not as an OSError.
    """
    text = str(error)
    if not (isinstance(error, RuntimeError) and text.startswith("Symlink loop from ")):
        return None
    where = text.removeprefix("Symlink loop from ")
    return (
        f"{where} is a symbolic link that leads back to itself (a loop): fix or remove the link, or "
        "choose another path."
    )
