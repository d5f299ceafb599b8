"""TensorBoard scalar event files written without torch.

Uses TensorBoard's own ``EventFileWriter`` and protobufs, so the files are exactly what a real
TensorBoard (or ``tensorboard.backend.event_processing.EventAccumulator``) reads, and ``plot``
can write them without importing torch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


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


def _after_existing_files(logdir: Path) -> None:
    """Wait until the clock's second is past every event file's in ``logdir``.

    TensorBoard reads a folder's event files in name order, and a name is
    ``events.out.tfevents.<seconds>.<host>.<pid>.<counter>``: two files of one second and one process
    sort by their counter as text (``.10`` before ``.9``), which would apply a resumed run's purge
    before the events it purges. A later second keeps name order equal to creation order.
    """
    stamps = [p.name.split(".")[3] for p in logdir.glob("events.out.tfevents.*")]
    latest = max((int(s) for s in stamps if s.isdigit()), default=None)
    while latest is not None and int(time.time()) <= latest:
        time.sleep(0.02)
