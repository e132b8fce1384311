"""Micro-batching diagnosis workers: decoded measurements in, verdicts out.

Windows from many sensors arrive close together; encoding and searching them as one
batch costs less per window than one at a time, so each worker takes what is queued (up
to ``batch_max``) and processes it together. An idle queue is never waited on: a lone
window goes through at once, and under load batches fill while the previous one runs.
The queue is bounded: when it is full, ``submit`` blocks, which stalls the MQTT reader
and lets the broker hold the backlog instead of our memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from faultline.agent.metrics import Counters, StageTimes
from faultline.encoders.severity import Severity
from faultline.encoders.signals import Measurement, Window
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.diagnosis import DecisionPolicy, View, WindowResult, diagnose_batch
from faultline.fault_library.library import FaultLibrary, Neighbour
from faultline.fault_library.physics import LineEvidence
from faultline.fault_library.verdict import Verdict

log = logging.getLogger(__name__)


def measurement_bytes(item: Measurement) -> int:
    """What a queued measurement holds in memory: its samples or its magnitudes."""
    return int(item.samples.nbytes if isinstance(item, Window) else item.magnitude.nbytes)


@dataclass(frozen=True, slots=True)
class Job:
    """One validated measurement waiting for a verdict."""

    measurement: Measurement
    topic: str
    received_at: float  # time.monotonic() when the message left the socket
    answers: str | None = None  # the measurement's key, for answering a redelivery once
    ack: Callable[[], None] | None = None  # acknowledges the inbound message to the broker


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """What the pipeline concluded about one job; the app turns it into an alert."""

    job: Job
    verdict: Verdict
    neighbours: list[Neighbour]
    rpm: float
    rpm_source: str
    view: View
    library_version: str
    latency_ms: float
    severity: Severity | None = None
    lines: LineEvidence | None = None


class Pipeline:
    """Bounded queue plus worker threads; results and failures go to callbacks."""

    def __init__(
        self,
        *,
        encoder: SpectrumEncoder,
        library: Callable[[], FaultLibrary],
        on_diagnosis: Callable[[Diagnosis], None],
        on_failure: Callable[[Job, str, str], None],
        policy: DecisionPolicy,
        counters: Counters,
        stages: StageTimes | None = None,
        queue_size: int = 256,
        queue_max_bytes: int = 64 * 2**20,
        batch_max: int = 32,
        batch_max_bytes: int = 8 * 2**20,
        batch_wait_s: float = 0.005,
        workers: int = 1,
    ) -> None:
        self._encoder = encoder
        self._library = library
        self._on_diagnosis = on_diagnosis
        self._on_failure = on_failure
        self._policy = policy
        self._counters = counters
        self._stages = stages or StageTimes()
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        # Windows are bounded in bytes as well as in number: 256 windows of 480,000 samples
        # would hold 490 MB. Bytes are reserved before a job is queued and given back once
        # its batch is processed (one job is always admitted, however large).
        self._max_bytes = queue_max_bytes
        self._queued_bytes = 0
        self._room = threading.Condition()
        self._batch_max = batch_max
        # The diagnosis of a batch allocates about ten times its samples' bytes: a batch of
        # 32 windows of 480,000 samples would need 600 MB. Large windows go a few at a time
        # (batching them saves little: their FFTs dominate).
        self._batch_max_bytes = batch_max_bytes
        self._batch_wait_s = batch_wait_s
        self._n_workers = workers
        self._accepting = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._accepting.set()
        for i in range(self._n_workers):
            thread = threading.Thread(target=self._work, name=f"faultline-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def backlog_bytes(self) -> int:
        """Sample bytes of the windows queued or being processed."""
        with self._room:
            return self._queued_bytes

    def submit(self, job: Job) -> bool:
        """Queue a job, blocking while the queue is full (in number or in bytes); False
        once stopping."""
        size = measurement_bytes(job.measurement)
        if not self._reserve(size):
            return False
        while self._accepting.is_set():
            try:
                self._queue.put(job, timeout=0.1)
                self._counters.add("queued")
                return True
            except queue.Full:
                self._counters.add("queue_full_waits")
        self._release(size)
        return False

    def _reserve(self, size: int) -> bool:
        with self._room:
            while (
                self._accepting.is_set()
                and self._queued_bytes > 0
                and self._queued_bytes + size > self._max_bytes
            ):
                self._counters.add("queue_full_waits")
                self._room.wait(0.1)
            if not self._accepting.is_set():
                return False
            self._queued_bytes += size
            return True

    def _release(self, size: int) -> None:
        with self._room:
            self._queued_bytes -= size
            self._room.notify_all()

    def stop(self, drain_timeout_s: float) -> int:
        """Stop intake, let workers finish what is queued within the bound.

        Returns how many jobs were still queued when the bound ran out (they are counted
        and reported by the caller: the broker redelivers nothing we already acked).
        """
        self._accepting.clear()
        deadline = time.monotonic() + drain_timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()) + 1.0)
        left = self._queue.qsize()
        if left:
            self._counters.add("undrained_at_stop", left)
        return left

    def _work(self) -> None:
        while not self._stop.is_set():
            batch = self._take_batch()
            if not batch:
                continue
            try:
                self._process(batch)
            finally:
                self._release(sum(measurement_bytes(job.measurement) for job in batch))
                for _ in batch:
                    self._queue.task_done()

    def _take_batch(self) -> list[Job]:
        """What is queued, up to ``batch_max`` windows and ``batch_max_bytes`` of samples
        (one window at least), without waiting when the queue is idle.

        A lone window is processed at once: a fixed wait for company would only add to its
        latency. Only while windows keep arriving (the queue held more than the first) does
        the worker wait, at most ``batch_wait_s`` per window, for the burst to fill the
        batch; under load the batch fills by itself while the previous one is processed.
        """
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        room = self._batch_max_bytes - measurement_bytes(first.measurement)
        arriving = False
        while len(batch) < self._batch_max and room > 0:
            try:
                job = (
                    self._queue.get(timeout=self._batch_wait_s)
                    if arriving and self._batch_wait_s > 0
                    else self._queue.get_nowait()
                )
                batch.append(job)
                room -= measurement_bytes(job.measurement)
                arriving = True
            except queue.Empty:
                break
        return batch

    def _process(self, batch: list[Job]) -> None:
        taken = time.monotonic()
        for job in batch:
            self._stages.add("queued", taken - job.received_at)
        self._stages.add_batch(len(batch))
        library = self._library()
        by_view: dict[str, list[Job]] = {}
        for job in batch:
            by_view.setdefault(self._encoder.view_of(job.measurement), []).append(job)
        self._counters.add("batches")
        for jobs in by_view.values():
            started = time.perf_counter()
            timings: dict[str, float] = {}
            try:
                results = diagnose_batch(
                    [j.measurement for j in jobs],
                    self._encoder,
                    library,
                    self._policy,
                    timings=timings,
                )
                self._stages.add("diagnose", time.perf_counter() - started, len(jobs))
                for stage, seconds in timings.items():
                    self._stages.add(stage, seconds, len(jobs))
            except Exception:
                # One poisoned window must not take its batch-mates down: retry singly.
                log.exception("batch of %d failed; retrying one by one", len(jobs))
                results = []
                for job in jobs:
                    self._process_single(job, library)
                continue
            self._emit(jobs, results, library)

    def _process_single(self, job: Job, library: FaultLibrary) -> None:
        try:
            results = diagnose_batch([job.measurement], self._encoder, library, self._policy)
        except Exception as exc:
            self._counters.add("rejected.encode_failed")
            self._on_failure(job, "encode_failed", f"{type(exc).__name__}: {exc}")
            return
        self._emit([job], results, library)

    def _emit(
        self,
        jobs: list[Job],
        results: list[WindowResult],
        library: FaultLibrary,
    ) -> None:
        now = time.monotonic()
        for job, result in zip(jobs, results, strict=True):
            diagnosis = Diagnosis(
                job=job,
                verdict=result.verdict,
                neighbours=result.neighbours,
                rpm=round(result.rpm, 2),
                rpm_source=result.rpm_source,
                view=result.view,
                library_version=library.version,
                latency_ms=(now - job.received_at) * 1000.0,
                severity=result.severity,
                lines=result.lines,
            )
            started = time.perf_counter()
            try:
                self._on_diagnosis(diagnosis)
                self._stages.add("alert", time.perf_counter() - started)
            except Exception as exc:
                log.exception("publishing the alert for %s failed", job.topic)
                self._counters.add("publish_failures")
                # Said on the errors topic, which also acknowledges the window.
                self._on_failure(job, "publish_failed", f"{type(exc).__name__}: {exc}")
