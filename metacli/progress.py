"""Progress display: a rich bar with rate and ETA, or plain log lines with ``--quiet``."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Reporter:
    """A progress bar with rate and ETA; when ``quiet``, no bar and :meth:`log` prints timestamped lines."""

    def __init__(
        self,
        description: str,
        total: int,
        done: int = 0,
        quiet: bool = False,
        unit: str = "it",
        console: Console | None = None,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.quiet, self.total, self.done, self.unit = quiet, total, done, unit
        self.description = description
        self._t0 = time.perf_counter()
        self._progress: Progress | None = None
        if not quiet:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=False,
            )
            self._task = self._progress.add_task(description, total=total, completed=done, rate="", info="")

    def __enter__(self) -> Reporter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, n: int = 1, info: str = "") -> None:
        """Mark ``n`` more units done; ``info`` is a short status (e.g. the latest loss)."""
        self.done += n
        elapsed = time.perf_counter() - self._t0
        if self._progress is not None:
            task = self._progress.tasks[0]
            rate = task.speed or (self.done / elapsed if elapsed > 0 else 0.0)
            self._progress.update(self._task, advance=n, rate=f"{rate:.1f} {self.unit}/s", info=info)

    def log(self, message: str) -> None:
        """Print a log line (shown above the bar when one is live)."""
        self.console.log(message) if self.quiet else self.console.print(message)
