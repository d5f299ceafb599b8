"""TensorBoard scalar event files written without torch.

Uses TensorBoard's own ``EventFileWriter`` and protobufs, so the files are exactly what a real
TensorBoard (or ``tensorboard.backend.event_processing.EventAccumulator``) reads, and ``plot``
can write them without importing torch.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

ONLINE_METRIC = re.compile(r"(ctm|ltm)_(acc|loss)(_avg)?")
"""An online metric of metrics.jsonl: ``ctm_acc``, ``ltm_loss_avg``..."""


def tag(key: str) -> str:
    """The TensorBoard tag of a metrics key, the same in a run's events and in ``metacli plot``'s.

    Online metrics are grouped as ``CTM/acc``, ``LTM_Avg/loss`` (TensorBoard makes a section of each
    prefix); every other key is its own tag.
    """
    match = ONLINE_METRIC.fullmatch(key)
    if match is None:
        return key
    protocol, metric, average = match.groups()
    return f"{protocol.upper()}{'_Avg' if average else ''}/{metric}"


class ScalarWriter:
    """Writes ``tag -> value`` scalars at a global step into ``logdir``."""

    def __init__(self, logdir: Path, purge_step: int | None = None) -> None:
        """``purge_step``: on resume, the first step to be written again. A ``SessionLog.START`` event at
        that step makes TensorBoard drop the earlier files' events from that step on, which a killed run
        wrote after its last checkpoint, so no step shows twice."""
        logdir.mkdir(parents=True, exist_ok=True)
        _after_existing_files(logdir)
        self._writer = EventFileWriter(str(logdir))
        if purge_step is not None:
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=purge_step, session_log=start))

    def add_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Write every scalar of one step as one event."""
        values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(v)) for tag, v in scalars.items()]
        event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values))
        self._writer.add_event(event)

    def flush(self) -> None:
        """Push buffered events to disk."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


MAX_WAIT = 2.0
"""Seconds :func:`_after_existing_files` waits at most for the clock to pass an event file's stamp."""


def _after_existing_files(logdir: Path) -> None:
    """Wait until the clock's second is past every event file's in ``logdir`` (at most :data:`MAX_WAIT` s).

    TensorBoard reads a folder's event files in name order, and a name is
    ``events.out.tfevents.<seconds>.<host>.<pid>.<counter>``: two files of one second and one process
    sort by their counter as text (``.10`` before ``.9``), which would apply a resumed run's purge
    before the events it purges. A later second keeps name order equal to creation order.

    A stamp further ahead than that (the clock was set back, or the folder came from another machine) is
    not waited for: one warning names the file, since TensorBoard may then order the events wrongly.
    """
    stamps = [(p.name.split(".")[3], p) for p in logdir.glob("events.out.tfevents.*")]
    stamped = [(int(stamp), p) for stamp, p in stamps if stamp.isascii() and stamp.isdecimal()]
    if not stamped:
        return
    latest, newest = max(stamped)
    wait = latest + 1 - time.time()  # a file name is short: its stamp fits a float
    if wait > MAX_WAIT:
        warnings.warn(
            f"{newest} is stamped {wait:.0f} s in the future (the clock was set back, or the folder was "
            "copied from another machine), so the new events are written without waiting for it: TensorBoard "
            "may order the resumed events wrongly. If its curves look shuffled, check the machine's clock, "
            "or move the older event files out of that folder.",
            UserWarning,
            stacklevel=3,
        )
        return
    while int(time.time()) <= latest:
        time.sleep(0.02)
