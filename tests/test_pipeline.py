"""The pipeline's queue is bounded in bytes as well as in windows (issue 14, item 3), with
the real encoder and library: large windows wait at intake instead of piling up."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from faultline.agent.metrics import Counters, StageTimes
from faultline.agent.pipeline import Diagnosis, Job, Pipeline, measurement_bytes
from faultline.encoders.signals import Window
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.diagnosis import DecisionPolicy
from faultline.fault_library.library import FaultLibrary
from tests.harness import record_windows


def test_queue_is_bounded_in_bytes(
    cwru_dir: Path, test_library: FaultLibrary, encoder: SpectrumEncoder
) -> None:
    [base] = record_windows(cwru_dir, "105", "big", 1, ts0=1.7e9)
    # 10 s windows of 12 kHz: 480 kB of float32 samples each.
    samples = np.tile(base.samples, 10).astype(np.float32)
    windows = [
        Window("big", 1.7e9 + i, base.fs, samples, base.rpm, base.geometry) for i in range(12)
    ]
    size = measurement_bytes(windows[0])
    assert size == samples.nbytes
    gate = threading.Event()
    done: list[Diagnosis] = []

    def on_diagnosis(diagnosis: Diagnosis) -> None:
        gate.wait(30)  # the worker holds its batch until the test lets it go
        done.append(diagnosis)

    pipeline = Pipeline(
        encoder=encoder,
        library=lambda: test_library,
        on_diagnosis=on_diagnosis,
        on_failure=lambda job, code, reason: None,
        policy=DecisionPolicy(),
        counters=Counters(),
        queue_size=256,
        queue_max_bytes=3 * size,
        batch_max=1,
    )
    pipeline.start()
    submitted: list[int] = []

    def intake() -> None:
        for i, window in enumerate(windows):
            pipeline.submit(Job(window, "t", time.monotonic()))
            submitted.append(i)

    feeder = threading.Thread(target=intake, daemon=True)
    feeder.start()
    time.sleep(2.0)
    try:
        assert pipeline.backlog_bytes <= 3 * size
        assert len(submitted) == 3, "intake waits once three windows' bytes are held"
    finally:
        gate.set()
        feeder.join(60)
        left = pipeline.stop(60)
    assert left == 0
    assert len(done) == len(windows)
    assert pipeline.backlog_bytes == 0


def test_one_window_larger_than_the_bound_is_still_admitted(
    cwru_dir: Path, test_library: FaultLibrary, encoder: SpectrumEncoder
) -> None:
    [window] = record_windows(cwru_dir, "105", "big", 1, ts0=1.7e9)
    done = threading.Event()
    pipeline = Pipeline(
        encoder=encoder,
        library=lambda: test_library,
        on_diagnosis=lambda d: done.set(),
        on_failure=lambda job, code, reason: None,
        policy=DecisionPolicy(),
        counters=Counters(),
        queue_max_bytes=1,
    )
    pipeline.start()
    try:
        assert pipeline.submit(Job(window, "t", time.monotonic()))
        assert done.wait(30)
    finally:
        pipeline.stop(10)


def test_large_windows_are_batched_a_few_at_a_time(
    cwru_dir: Path, test_library: FaultLibrary, encoder: SpectrumEncoder
) -> None:
    """A batch's diagnosis allocates ~10x its samples: batches are capped in bytes."""
    [base] = record_windows(cwru_dir, "105", "big", 1, ts0=1.7e9)
    samples = np.tile(base.samples, 10).astype(np.float32)  # 480 kB each
    windows = [
        Window("big", 1.7e9 + i, base.fs, samples, base.rpm, base.geometry) for i in range(8)
    ]
    gate = threading.Event()
    stages = StageTimes()
    pipeline = Pipeline(
        encoder=encoder,
        library=lambda: test_library,
        on_diagnosis=lambda d: gate.wait(30),
        on_failure=lambda job, code, reason: None,
        policy=DecisionPolicy(),
        counters=Counters(),
        stages=stages,
        batch_max=32,
        batch_max_bytes=2 * measurement_bytes(windows[0]),
    )
    for window in windows:  # all queued before the worker starts
        pipeline._queue.put(Job(window, "t", time.monotonic()))
        pipeline._queued_bytes += measurement_bytes(window)
    pipeline.start()
    gate.set()
    assert pipeline.stop(60) == 0
    cumulative, total = stages.batch_histogram()
    sizes = [cumulative[0], cumulative[1] - cumulative[0]]  # batches of 1, of 2
    assert total == len(windows)
    assert sizes[1] == 4, sizes  # four batches of two, none larger
    assert cumulative[-1] == 4
