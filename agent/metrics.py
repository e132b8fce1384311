"""Thread-safe counters the agent reports on its status topic and in logs.

Operators need to know how many windows were rejected and why without grepping logs, so
every rejection reason is counted under its stable code.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable


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


class Sequence:
    """Monotonically increasing sequence numbers: gaps on the wire reveal lost alerts.

    ``emit`` numbers and sends under one lock, so with several workers the numbers still
    leave in order (the send only queues into the MQTT client, so the lock is brief).
    """

    def __init__(self, start: int = 0) -> None:
        self._lock = threading.Lock()
        self._value = start

    def emit(self, send: Callable[[int], None]) -> int:
        with self._lock:
            self._value += 1
            send(self._value)
            return self._value
