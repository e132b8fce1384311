"""Thread-safe counters the agent reports on its status topic and in logs.

Operators need to know how many windows were rejected and why without grepping logs, so
every rejection reason is counted under its stable code.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter

# Upper bounds of the stage-time histogram buckets, seconds (Prometheus "le"): 0.25 ms to
# 10 s, where a window's stages fall on a gateway (a 48 kHz window diagnoses in ~10 ms).
SECONDS_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Counters:
    """A named-counter bag shared by the MQTT thread and the pipeline workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))


class StageTimes:
    """How long each stage of the hot path takes per window, for the status and the bench.

    Per stage: a count, a running total and the most recent ``keep`` durations (a ring, so
    memory is bounded however long the agent runs) for the median and 99th percentile.
    ``bench/e2e.py`` prints them as the profile of the hot path (issue 12).
    """

    def __init__(self, keep: int = 2048) -> None:
        self._lock = threading.Lock()
        self._keep = keep
        self._count: Counter[str] = Counter()
        self._total: dict[str, float] = {}
        self._recent: dict[str, list[float]] = {}
        self._next: Counter[str] = Counter()
        self._buckets: dict[str, list[int]] = {}
        self._batches = [0] * (len(BATCH_BUCKETS) + 1)
        self._batched = 0

    def add(self, stage: str, seconds: float, windows: int = 1) -> None:
        """``seconds`` spent on ``windows`` windows together (a batch): each is charged its
        share."""
        if windows < 1:
            return
        share = seconds / windows
        slot = bisect.bisect_left(SECONDS_BUCKETS, share)
        with self._lock:
            self._count[stage] += windows
            self._total[stage] = self._total.get(stage, 0.0) + seconds
            counts = self._buckets.setdefault(stage, [0] * (len(SECONDS_BUCKETS) + 1))
            counts[slot] += windows
            ring = self._recent.setdefault(stage, [])
            for _ in range(min(windows, self._keep)):
                if len(ring) < self._keep:
                    ring.append(share)
                else:
                    ring[self._next[stage] % self._keep] = share
                    self._next[stage] += 1

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            out: dict[str, dict[str, float]] = {}
            for stage, count in self._count.items():
                recent = sorted(self._recent[stage])
                out[stage] = {
                    "windows": count,
                    "mean_ms": round(1000.0 * self._total[stage] / count, 3),
                    "p50_ms": round(1000.0 * recent[len(recent) // 2], 3),
                    "p99_ms": round(
                        1000.0 * recent[min(len(recent) - 1, int(len(recent) * 0.99))], 3
                    ),
                }
            return out

    def add_batch(self, size: int) -> None:
        """One micro-batch of ``size`` windows went through the pipeline."""
        slot = bisect.bisect_left(BATCH_BUCKETS, size)
        with self._lock:
            self._batches[slot] += 1
            self._batched += size

    def histograms(self) -> dict[str, tuple[list[int], float]]:
        """Per stage: cumulative counts at each of ``SECONDS_BUCKETS`` then +Inf, and the
        sum of seconds (what a Prometheus histogram exposes)."""
        with self._lock:
            return {
                stage: (_cumulative(counts), self._total[stage])
                for stage, counts in self._buckets.items()
            }

    def batch_histogram(self) -> tuple[list[int], int]:
        """Cumulative batch counts at each of ``BATCH_BUCKETS`` then +Inf, and the windows."""
        with self._lock:
            return _cumulative(self._batches), self._batched


def _cumulative(counts: list[int]) -> list[int]:
    out, running = [], 0
    for n in counts:
        running += n
        out.append(running)
    return out
