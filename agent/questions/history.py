"""What the agent said recently about each asset, for answering "is pump-7 getting worse?".

Bounded twice: at most ``per_asset`` alerts and reports per asset, at most ``max_assets``
assets (the least recently heard of is forgotten first). Thread-safe: alerts arrive on the
pipeline's threads, questions are answered on the question worker's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

__all__ = ["AlertNote", "AssetHistory"]


@dataclass(frozen=True, slots=True)
class AlertNote:
    message_id: str
    window_ts: float
    label: str
    confidence: float
    zone: str | None
    damage_stage: int | None
    strongest_line_db: float | None
    kind: str = "alert"  # or "report"


class AssetHistory:
    def __init__(self, *, per_asset: int = 50, max_assets: int = 10_000) -> None:
        self._per_asset = per_asset
        self._max_assets = max_assets
        self._notes: OrderedDict[str, deque[AlertNote]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, asset: str, note: AlertNote) -> None:
        with self._lock:
            notes = self._notes.pop(asset, None) or deque(maxlen=self._per_asset)
            notes.append(note)
            self._notes[asset] = notes
            while len(self._notes) > self._max_assets:
                self._notes.popitem(last=False)

    def of(self, asset: str) -> list[AlertNote]:
        with self._lock:
            return list(self._notes.get(asset, ()))

    def assets(self) -> list[str]:
        with self._lock:
            return list(self._notes)
