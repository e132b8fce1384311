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
