"""Progress display: a rich bar on a terminal; elsewhere (a pipe, a file, ``--quiet``) plain lines.

Plain lines come every ``METACLI_PROGRESS_EVERY`` seconds (default 10; 0: at every update) and at the end,
each with the count, rate, elapsed time, ETA and the latest status, as one unwrapped line without markup, so
a run piped to a file or a job log shows steady progress. Any other value of that variable (empty, text,
negative, NaN, infinite) is a :class:`~metacli.errors.MetacliError` when the display is made, before the
first step. No count, rate or ETA breaks the display: NaN, infinities and numbers beyond the float range
show as ``?`` or ``inf``, never as an exception.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from rich.console import Console, ConsoleDimensions
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from metacli.errors import MetacliError

if TYPE_CHECKING:  # the engine's types, without importing torch for the display
    from metacli.engine.types import OpenProgress
    from metacli.engine.types import Progress as ProgressFn

EVERY_ENV = "METACLI_PROGRESS_EVERY"
DEFAULT_EVERY = 10.0
"""Seconds between plain progress lines."""


def line_interval() -> float:
    """Seconds between plain progress lines: ``$METACLI_PROGRESS_EVERY``, or 10 when it is unset.

    Raises:
        MetacliError: the variable is set to anything but a finite number >= 0 (empty, text, negative,
            NaN, infinite), naming it and what it accepts.
    """
    raw = os.environ.get(EVERY_ENV)
    if raw is None:
        return DEFAULT_EVERY
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0.0):
        raise MetacliError(
            f"{EVERY_ENV}={raw!r} is not a number of seconds. It accepts a finite number >= 0: the seconds "
            f"between plain progress lines (0: a line at every step; unset: {DEFAULT_EVERY:g}). Set it to "
            f"e.g. {EVERY_ENV}=30, or unset it."
        )
    return value


PIPED_WIDTH = 10_000
"""Columns of a console whose output is not a terminal: wide enough that nothing printed is wrapped."""


class Output(Console):
    """A rich console that wraps at the terminal's width, and not at all when its output is piped.

    Rich lays out for 80 columns (or the width of a terminal on stdin) when it writes to a pipe or a file,
    which splits table cells and long lines mid-value (``alpha=1.`` / ``0``). A reader of piped output, a
    pager, an editor or ``grep``, wraps for itself, so such output gets lines as long as their content,
    unless ``$COLUMNS`` names a width. Checked at every print, since a test runner or a caller may swap
    ``sys.stdout`` after construction.
    """

    @property
    def has_width(self) -> bool:
        """Whether lines end at a width: a terminal's, or $COLUMNS. Else a table that expands would pad."""
        return self.is_terminal or os.environ.get("COLUMNS", "").isdigit()

    @property
    def size(self) -> ConsoleDimensions:
        """The terminal's size; :data:`PIPED_WIDTH` columns when the output is piped and $COLUMNS unset."""
        size = super().size
        return size if self.has_width else ConsoleDimensions(PIPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        """Rich's own setter: redefining the getter alone would make ``size`` read-only."""
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


def make_console(stderr: bool = False) -> Output:
    """The console every command prints through (stdout, or stderr for messages and progress)."""
    return Output(stderr=stderr, soft_wrap=stderr)


MAX_CLOCK = 1e9
"""Seconds (about 31 years) beyond which an elapsed time or ETA is shown as unknown."""


def clock(seconds: float) -> str:
    """``H:MM:SS``; ``?`` when unknown (NaN, infinite, negative, or beyond :data:`MAX_CLOCK`)."""
    if not 0.0 <= seconds < MAX_CLOCK:  # NaN fails too
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def as_float(x: float) -> float:
    """``x`` as a float; an integer beyond the float range as an infinity of its sign."""
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def ratio(a: float, b: float) -> float:
    """``a / b``, or infinity where the quotient (or an integer operand) exceeds the float range."""
    try:
        return a / b
    except OverflowError:
        return math.inf if (a >= 0) == (b >= 0) else -math.inf


def fixed(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals, in exponent form from 1e6 on (1e308 would be 309 digits).

    NaN and infinities read ``nan``, ``inf``; integers beyond the float range read ``inf``.
    """
    x = as_float(x)
    return f"{x:.2e}" if math.isfinite(x) and abs(x) >= 1e6 else f"{x:.{digits}f}"


class SafeTimeRemainingColumn(TimeRemainingColumn):
    """Rich's ETA column, showing ``-:--:--`` where its estimate exceeds the float range (a huge total)."""

    def render(self, task: Task) -> Text:
        """The ETA, or ``-:--:--`` when rich cannot compute it."""
        try:
            return super().render(task)
        except (OverflowError, ValueError):
            return Text("-:--:--", style="progress.remaining")


Sample = tuple[float, float]
"""(units done since the display started, seconds elapsed then)."""


def eta_seconds(samples: Sequence[Sample], left: float) -> float:
    """Seconds to finish ``left`` more units, allowing each unit to cost more than the one before.

    An online run's LTM evaluates every task seen so far, so a round costs about ``a + b x`` seconds at
    round ``x``: the elapsed time is fitted (least squares) as ``a x + b x^2 / 2`` and the remaining
    rounds summed. A fit whose cost does not grow (``b <= 0``: a few-shot run's steady steps, a warm-up)
    is the plain extrapolation at the average rate, so the estimate is never lower than that one.
    NaN when nothing is done yet.
    """
    x, elapsed = samples[-1] if samples else (0.0, 0.0)
    if not 0 < x < math.inf:
        return math.nan
    linear = as_float(left) * ratio(elapsed, x)
    if len(samples) < MIN_FIT_SAMPLES:
        return linear
    try:
        return max(linear, growing_cost_eta(samples, as_float(left)))
    except (OverflowError, ZeroDivisionError):  # counts beyond what the fit's powers can hold
        return linear


def growing_cost_eta(samples: Sequence[Sample], left: float) -> float:
    """The seconds :func:`eta_seconds` fits for a cost growing with the count; 0 when it does not grow."""
    x = samples[-1][0]
    # normal equations of elapsed ~ a * x + b * x^2 / 2
    s2 = sum(u**2 for u, _ in samples)
    s3 = sum(u**3 for u, _ in samples) / 2
    s4 = sum(u**4 for u, _ in samples) / 4
    t1 = sum(u * t for u, t in samples)
    t2 = sum(u**2 * t for u, t in samples) / 2
    det = s2 * s4 - s3 * s3
    if not det > 0:
        return 0.0
    a, b = (t1 * s4 - s3 * t2) / det, (s2 * t2 - s3 * t1) / det
    return a * left + b * ((x + left) ** 2 - x**2) / 2 if b > 0 else 0.0


MIN_FIT_SAMPLES = 4
"""Samples before the ETA fits a growing cost (fewer: plain extrapolation)."""
SAMPLE_EVERY = 0.5
"""Seconds between the samples the ETA is fitted to."""
MAX_SAMPLES = 512
"""Samples kept (beyond that every other one is dropped, so the whole run stays covered)."""


_Bars = TypeVar("_Bars", bound="_LiveBars")


class _LiveBars:
    """A rich ``Progress`` shown for the duration of a ``with`` block, when there is one to show."""

    _progress: Progress | None

    def __enter__(self: _Bars) -> _Bars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()


class Reporter(_LiveBars):
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
        self.console = console or make_console(stderr=True)
        self.total, self.done, self.unit, self.silent = total, done, unit, silent
        self.description = description
        self._start_done = done
        self._t0 = time.perf_counter()
        self._last_line = self._t0
        self._samples: list[Sample] = []
        self._eta_text = "?"
        self._every = line_interval()
        self._progress: Progress | None = None
        if not quiet and not silent and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("eta {task.fields[eta]}"),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=False,
            )
            self._task = self._progress.add_task(
                description, total=total, completed=done, rate="", eta="?", info=""
            )

    def sample(self) -> bool:
        """Record (units done, seconds elapsed) for the ETA, every :data:`SAMPLE_EVERY` seconds at most;
        whether a sample was taken."""
        now = time.perf_counter() - self._t0
        if self._samples and now - self._samples[-1][1] < SAMPLE_EVERY and self.done < self.total:
            return False
        self._samples.append((as_float(self.done - self._start_done), now))
        if len(self._samples) > MAX_SAMPLES:
            self._samples = self._samples[::-2][::-1]  # every other one, the latest kept
        return True

    def eta(self) -> float:
        """Seconds left (:func:`eta_seconds` over this process's samples, the latest moment included)."""
        now = (as_float(self.done - self._start_done), time.perf_counter() - self._t0)
        return eta_seconds([*self._samples, now], self.total - self.done)

    def rate(self) -> float:
        """Units per second in this process so far."""
        elapsed = time.perf_counter() - self._t0
        return ratio(self.done - self._start_done, elapsed) if elapsed > 0 else 0.0

    def advance(self, n: int = 1, info: str = "") -> None:
        """Mark ``n`` more units done; ``info`` is a short status (e.g. the latest loss)."""
        self.done += n
        if self.sample():  # the fit is redone with each sample, not at every step
            self._eta_text = clock(self.eta())
        if self._progress is not None:
            task = self._progress.tasks[0]
            rate = task.speed or self.rate()
            text = f"{fixed(rate, 1)} {self.unit}/s"
            self._progress.update(self._task, advance=n, rate=text, eta=self._eta_text, info=info)
            return
        now = time.perf_counter()
        if now - self._last_line >= self._every or self.done >= self.total:
            self._last_line = now
            self.log(self.status_line(info))

    def update(self, done: int, info: str = "") -> None:
        """Mark ``done`` units done in all (the engine's ``progress(done, ...)`` counts from the start)."""
        self.advance(done - self.done, info)

    def status_line(self, info: str = "") -> str:
        """``NAME: 120/1000 rounds (12%), 35.2 round/s, elapsed 0:00:03, eta 0:00:25, INFO``."""
        rate = self.rate()
        eta = self.eta() if rate > 0 else math.inf
        pct = ratio(100 * self.done, self.total) if self.total else 100.0
        elapsed = clock(time.perf_counter() - self._t0)
        text = (
            f"{self.description}: {self.done}/{self.total} {self.unit}s ({fixed(pct, 0)}%), "
            f"{fixed(rate, 1)} {self.unit}/s, elapsed {elapsed}, eta {clock(eta)}"
        )
        return f"{text}, {info}" if info else text

    def log(self, message: str) -> None:
        """Print a line (above the bar when one is live): no markup, no wrapping, no source location."""
        if not self.silent:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)


def units_text(done: float, total: float | None, unit: str) -> str:
    """``12/34 images``, or for bytes ``1.2/3.4 MB`` (``1.2 MB`` when the total is unknown)."""
    if unit == "bytes":
        mb = f"{fixed(done / 1e6, 1)}"
        return f"{mb}/{fixed(total / 1e6, 1)} MB" if total is not None else f"{mb} MB"
    return f"{int(done)}/{int(total)} {unit}" if total is not None else f"{int(done)} {unit}"


class DataBars(_LiveBars):
    """Transient bars for the phases of building a dataset (downloads, decoding), on a terminal only.

    :meth:`opener` is what the engine's dataset builders receive (an
    :class:`~metacli.engine.types.OpenProgress`): each phase opens one bar, which disappears when its
    total is reached and at the end of the ``with`` block. Quiet, or not on a terminal: no bars at all.
    """

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        console = console or make_console(stderr=True)
        self._progress: Progress | None = None
        if not quiet and console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[count]}"),
                SafeTimeRemainingColumn(),
                console=console,
                transient=True,
            )

    def opener(self) -> OpenProgress | None:
        """The engine's ``OpenProgress`` drawing on these bars; None when nothing is shown."""
        return None if self._progress is None else self.open

    def open(self, description: str, total: int | None, unit: str) -> ProgressFn:
        """One bar for ``total`` units of ``unit``; its callable sets the count done so far."""
        bars = self._progress
        if bars is None:
            return lambda done, info: None
        task = bars.add_task(description, total=total, count=units_text(0, total, unit))

        def progress(done: int, info: dict[str, float]) -> None:
            if task not in bars.task_ids:  # finished already
                return
            bars.update(task, completed=done, count=units_text(done, total, unit))
            if total is not None and done >= total:
                bars.remove_task(task)

        return progress
