"""Thread-safe counters the agent reports on its status topic and in logs.

Operators need to know how many windows were rejected and why without grepping logs, so
every rejection reason is counted under its stable code.
"""

from __future__ import annotations

import threading
from collections import Counter


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

    def add(self, stage: str, seconds: float, windows: int = 1) -> None:
        """``seconds`` spent on ``windows`` windows together (a batch): each is charged its
        share."""
        if windows < 1:
            return
        share = seconds / windows
        with self._lock:
            self._count[stage] += windows
            self._total[stage] = self._total.get(stage, 0.0) + seconds
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
