"""What the dashboard remembers, bounded: the latest per asset and a short history.

Fed by the dashboard's MQTT observer (what the agents really published), read by the
HTTP handlers. Every collection has a cap, so a plant of many assets or a long run costs
the gateway a fixed amount of memory: ``assets`` entries (each the latest alert, report
and one raw sensor message), ``history`` alerts and as many reports, a few errors and
statuses.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["DashboardState", "RawMeasurement"]

V = TypeVar("V")

ERRORS_KEPT = 50
STATUSES_KEPT = 64


@dataclass(frozen=True, slots=True)
class RawMeasurement:
    """A sensor message as it arrived (decoded only when a page asks for its spectrum)."""

    kind: str  # "window" or "spectrum"
    payload: bytes
    received_at: float


class _Lru(Generic[V]):
    """An insertion-ordered map that drops the least recently written key past ``cap``."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.items: OrderedDict[str, V] = OrderedDict()

    def put(self, key: str, value: V) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.cap:
            self.items.popitem(last=False)

    def get(self, key: str) -> V | None:
        return self.items.get(key)


class DashboardState:
    """Thread-safe: paho's thread writes, the HTTP server's threads read."""

    def __init__(self, assets: int, history: int) -> None:
        self._lock = threading.Lock()
        self._assets: _Lru[dict[str, Any]] = _Lru(assets)
        self._windows: _Lru[RawMeasurement] = _Lru(assets)
        self._spectra: _Lru[tuple[float, dict[str, Any]]] = _Lru(assets)
        self._alerts: deque[dict[str, Any]] = deque(maxlen=history)
        self._reports: deque[dict[str, Any]] = deque(maxlen=history)
        self._errors: deque[dict[str, Any]] = deque(maxlen=ERRORS_KEPT)
        self._statuses: _Lru[dict[str, Any]] = _Lru(STATUSES_KEPT)
        self.counts: Counter[str] = Counter()

    # -- writes (the observer) ------------------------------------------------------
    def alert(self, asset: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.counts["alerts"] += 1
            self._alerts.append(body)
            entry = self._asset(asset)
            entry["alert"] = body

    def report(self, asset: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.counts["reports"] += 1
            self._reports.append(body)
            self._asset(asset)["report"] = body

    def error(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.counts["errors"] += 1
            self._errors.append(body)

    def status(self, client_id: str, body: dict[str, Any] | None) -> None:
        """A gateway's retained status; None: cleared (an empty retained message)."""
        with self._lock:
            if body is None:
                self._statuses.items.pop(client_id, None)
            else:
                self._statuses.put(client_id, body)

    def measurement(self, asset: str, raw: RawMeasurement) -> None:
        with self._lock:
            self.counts["windows"] += 1
            self._windows.put(asset, raw)
            self._asset(asset)

    def _asset(self, asset: str) -> dict[str, Any]:
        entry = self._assets.get(asset)
        if entry is None:
            entry = {"alert": None, "report": None}
        entry["heard_at"] = time.time()
        self._assets.put(asset, entry)
        return entry

    # -- reads (the HTTP handlers) --------------------------------------------------
    def latest_measurement(self, asset: str) -> RawMeasurement | None:
        with self._lock:
            return self._windows.get(asset)

    def latest_alert(self, asset: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._assets.get(asset)
            return None if entry is None else entry.get("alert")

    def cached_spectrum(self, asset: str, received_at: float) -> dict[str, Any] | None:
        with self._lock:
            hit = self._spectra.get(asset)
        return hit[1] if hit is not None and hit[0] == received_at else None

    def cache_spectrum(self, asset: str, received_at: float, spectra: dict[str, Any]) -> None:
        with self._lock:
            self._spectra.put(asset, (received_at, spectra))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            assets = {
                name: {**entry, "has_window": name in self._windows.items}
                for name, entry in sorted(self._assets.items.items())
            }
            return {
                "assets": assets,
                "alerts": list(reversed(self._alerts)),
                "reports": list(reversed(self._reports)),
                "errors": list(reversed(self._errors)),
                "statuses": dict(self._statuses.items),
                "seen": dict(self.counts),
            }
