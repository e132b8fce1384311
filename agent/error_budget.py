"""How many rejections one source may publish, and the summary of those it may not.

A broken sensor can send thousands of bad windows a second; one error message and one log
line each would flood the errors topic, the log and the outbox, and bury every other
sensor's errors (issue 14: one run wrote 89.5 MB of log). Each source (the asset, else the
topic) has a token bucket: ``rate`` errors per second, bursts of ``burst``. Beyond it a
rejection is still counted and its window still acknowledged, but its error is folded into
a summary, published once per ``summary_interval_s`` per source with counts per code: a
sensor's first errors are said in full, a flood is said in numbers. Pure: the caller
passes the clock and publishes.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

MAX_SOURCES = 10_000  # buckets kept; beyond it the longest-idle ones are forgotten


@dataclass
class _Bucket:
    tokens: float
    updated: float
    suppressed: Counter[str] = field(default_factory=Counter)
    since: float | None = None  # first suppression not yet summarised
    topic: str = ""  # the last topic a suppressed error came from


@dataclass(frozen=True, slots=True)
class Summary:
    """Errors of one source that were counted but not published one by one."""

    source: str
    topic: str
    counts: dict[str, int]
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def reason(self) -> str:
        codes = ", ".join(f"{code} x{n:,}" for code, n in sorted(self.counts.items()))
        return (
            f"{self.total:,} more rejections from this source in {self.seconds:.0f} s were "
            f"counted but not published one by one: {codes}"
        )


class ErrorBudget:
    """Token buckets per source; thread-safe (the network thread and workers reject)."""

    def __init__(self, rate: float, burst: int, summary_interval_s: float = 10.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = rate
        self._burst = float(burst)
        self._interval = summary_interval_s
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def admit(self, source: str, code: str, now: float, topic: str = "") -> bool:
        """True: publish this error. False: it was counted into the source's summary."""
        with self._lock:
            bucket = self._buckets.get(source)
            if bucket is None:
                if len(self._buckets) >= MAX_SOURCES:
                    self._forget_idle()
                bucket = self._buckets[source] = _Bucket(self._burst, now)
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return True
            bucket.suppressed[code] += 1
            bucket.topic = topic
            if bucket.since is None:
                bucket.since = now
            return False

    def due(self, now: float, *, everything: bool = False) -> list[Summary]:
        """Summaries whose interval has passed (all of them with ``everything``, at stop);
        each is handed out once."""
        out = []
        with self._lock:
            for source, bucket in self._buckets.items():
                if bucket.since is None:
                    continue
                if everything or now - bucket.since >= self._interval:
                    out.append(
                        Summary(source, bucket.topic, dict(bucket.suppressed), now - bucket.since)
                    )
                    bucket.suppressed.clear()
                    bucket.since = None
        return out

    def _forget_idle(self) -> None:
        """Drop the half of the buckets idle longest (with nothing left to summarise)."""
        idle = sorted((b.updated, s) for s, b in self._buckets.items() if b.since is None)
        for _updated, source in idle[: max(1, len(idle) // 2)]:
            del self._buckets[source]
