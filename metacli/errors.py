"""One exception family for every error a user can cause.

The CLI catches :class:`MetacliError`, prints its message (which names the cause and the fix)
and exits with code 2, without a traceback. Engine code raises these instead of printing and
carrying on.
"""


class MetacliError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""

    exit_code = 2


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
