"""One daemon thread that takes jobs from a bounded queue until it is stopped.

The report writer and the question answerer both need exactly this: intake that never
waits (``try_put`` says False when the queue is full, and the caller says "busy" or drops
the offer), one job at a time, a failed job logged and handed to ``on_failure`` without
ending the thread, and a stop that SIGTERM can rely on.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Generic, TypeVar

__all__ = ["QueueThread"]

log = logging.getLogger(__name__)

Job = TypeVar("Job")


class QueueThread(Generic[Job]):
    def __init__(self, name: str, queue_size: int) -> None:
        self._name = name
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> int:
        """Stop after the job in hand; returns the jobs left in the queue."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self._queue.qsize()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def try_put(self, job: Job) -> bool:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    def _run(self) -> None:
        self.on_start()
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.handle(job)
            except Exception as exc:
                log.exception("%s: a job failed", self._name)
                self.on_failure(job, exc)

    def on_start(self) -> None:
        """Runs first on the thread (e.g. loading a model off the caller's thread)."""

    def handle(self, job: Job) -> None:
        raise NotImplementedError

    def on_failure(self, job: Job, exc: Exception) -> None:
        """A job raised: the thread goes on with the next one."""
