"""Replays recordings as sensor windows on MQTT, several assets interleaved.

Lets a plant try the agent before wiring sensors, and lets tests and benchmarks drive the
real broker with real recorded vibration instead of synthetic numbers.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from faultline.agent.transport.payloads import (
    encode_spectrum_json,
    encode_window_binary,
    encode_window_json,
)
from faultline.agent.transport.topics import Topics
from faultline.encoders.dsp import magnitude_spectrum
from faultline.encoders.signals import Window
from faultline.fault_library.recordings import Recording, iter_windows

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], object]


@dataclass(frozen=True, slots=True)
class SimulatedAsset:
    asset: str
    recording: Recording
    start_s: float = 0.0
    stop_s: float | None = None


def encode_for_wire(window: Window, fmt: str) -> bytes:
    """Serialise a window the way a sensor would: ``json``, ``binary`` or ``spectrum``."""
    if fmt == "binary":
        return encode_window_binary(window)
    if fmt == "spectrum":
        return encode_spectrum_json(magnitude_spectrum(window))
    return encode_window_json(window)


class Simulator:
    """Publishes one window per asset per tick; a tick lasts ``window_s / speed``."""

    def __init__(
        self,
        publish: Publish,
        topics: Topics,
        assets: Sequence[SimulatedAsset],
        *,
        window_s: float = 1.0,
        speed: float = 1.0,
        fmt: str = "json",
        loop: bool = True,
    ) -> None:
        if fmt not in {"json", "binary", "spectrum"}:
            raise ValueError(f"format must be json, binary or spectrum, got {fmt!r}")
        self._publish = publish
        self._topics = topics
        self._assets = list(assets)
        self._window_s = window_s
        self._speed = speed
        self._fmt = fmt
        self._loop = loop
        self.published = 0

    def _stream(self, asset: SimulatedAsset) -> Iterator[Window]:
        passes = itertools.count() if self._loop else range(1)
        for _ in passes:
            produced = False
            for window in iter_windows(
                asset.recording,
                asset.asset,
                window_s=self._window_s,
                start_s=asset.start_s,
                stop_s=asset.stop_s,
            ):
                produced = True
                yield window
            if not produced:
                raise ValueError(f"recording for {asset.asset} is shorter than one window")

    def run(self, stop: threading.Event, max_windows: int | None = None) -> int:
        """Publish until ``stop`` is set, the recordings end, or ``max_windows`` were sent."""
        streams = {a.asset: self._stream(a) for a in self._assets}
        tick = self._window_s / self._speed if self._speed > 0 else 0.0
        next_tick = time.monotonic()
        topic_for = self._topics.spectrum if self._fmt == "spectrum" else self._topics.window
        while streams and not stop.is_set():
            for asset, stream in list(streams.items()):
                window = next(stream, None)
                if window is None:
                    del streams[asset]
                    continue
                window = replace(window, ts=time.time())
                self._publish(topic_for(asset), encode_for_wire(window, self._fmt))
                self.published += 1
                if max_windows is not None and self.published >= max_windows:
                    return self.published
            next_tick += tick
            delay = next_tick - time.monotonic()
            if delay > 0:
                stop.wait(delay)
        return self.published
