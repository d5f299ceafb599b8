"""Progress display: a rich bar on a terminal; elsewhere (a pipe, a file, ``--quiet``) plain lines.

Plain lines come every ``METACLI_PROGRESS_EVERY`` seconds (default 10) and at the end, each with the count,
rate, elapsed time, ETA and the latest status, as one unwrapped line without markup, so a run piped to a
file or a job log shows steady progress.
"""

from __future__ import annotations

import math
import os
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

EVERY_ENV = "METACLI_PROGRESS_EVERY"
DEFAULT_EVERY = 10.0
"""Seconds between plain progress lines."""


def line_interval() -> float:
    """Seconds between plain progress lines: ``$METACLI_PROGRESS_EVERY`` when a number, else 10."""
    try:
        return max(0.0, float(os.environ.get(EVERY_ENV, DEFAULT_EVERY)))
    except ValueError:
        return DEFAULT_EVERY


def clock(seconds: float) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Reporter:
    """Progress of ``total`` units: a bar on a terminal unless ``quiet``, else plain timed lines.

    ``silent``: print nothing at all (the non-zero ranks of a data-parallel run).
    """

    def __init__(
        self,
        description: str,
        total: int,
        done: int = 0,
        quiet: bool = False,
        unit: str = "it",
        console: Console | None = None,
        silent: bool = False,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.total, self.done, self.unit, self.silent = total, done, unit, silent
        self.description = description
        self._start_done = done
        self._t0 = time.perf_counter()
        self._last_line = self._t0
        self._every = line_interval()
        self._progress: Progress | None = None
        if not quiet and not silent and self.console.is_terminal:
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

    def rate(self) -> float:
        """Units per second in this process so far."""
        elapsed = time.perf_counter() - self._t0
        return (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0

    def advance(self, n: int = 1, info: str = "") -> None:
        """Mark ``n`` more units done; ``info`` is a short status (e.g. the latest loss)."""
        self.done += n
        if self._progress is not None:
            task = self._progress.tasks[0]
            rate = task.speed or self.rate()
            self._progress.update(self._task, advance=n, rate=f"{rate:.1f} {self.unit}/s", info=info)
            return
        now = time.perf_counter()
        if now - self._last_line >= self._every or self.done >= self.total:
            self._last_line = now
            self.log(self.status_line(info))

    def status_line(self, info: str = "") -> str:
        """``NAME: 120/1000 rounds (12%), 35.2 round/s, elapsed 0:00:03, eta 0:00:25, INFO``."""
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        pct = 100 * self.done / self.total if self.total else 100.0
        text = (
            f"{self.description}: {self.done}/{self.total} {self.unit}s ({pct:.0f}%), "
            f"{rate:.1f} {self.unit}/s, elapsed {clock(time.perf_counter() - self._t0)}, eta {clock(eta)}"
        )
        return f"{text}, {info}" if info else text

    def log(self, message: str) -> None:
        """Print a line (above the bar when one is live): no markup, no wrapping, no source location."""
        if not self.silent:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)
