"""The two shapes a measurement takes on its way through the product.

Sensors send either a raw vibration window (time samples) or a magnitude spectrum they
computed themselves. Both are plain dataclasses over numpy arrays so that the pure DSP
code, the library builder and the MQTT runtime share them without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from faultline.encoders.geometry import BearingGeometry

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Window:
    """A contiguous block of acceleration samples from one sensor.

    ``rpm`` and ``geometry`` are optional on the wire; the runtime fills them from the
    asset's configuration, and the encoder estimates speed when neither is known.
    """

    asset: str
    ts: float
    fs: float
    samples: FloatArray
    rpm: float | None = None
    geometry: BearingGeometry | None = None
    meta: dict[str, object] = field(default_factory=dict)
    rpm_tolerance: float = 0.0
    """``rpm`` is nominal within +- this fraction (a motor's nameplate speed, a drive's
    setpoint): the encoder refines it from the spectrum inside that range. 0: exact."""


@dataclass(frozen=True, slots=True)
class SpectrumFrame:
    """A one-sided magnitude spectrum computed by the sensor (``n_fft//2 + 1`` bins)."""

    asset: str
    ts: float
    fs: float
    n_fft: int
    magnitude: FloatArray
    rpm: float | None = None
    geometry: BearingGeometry | None = None
    meta: dict[str, object] = field(default_factory=dict)
    rpm_tolerance: float = 0.0
    """As :attr:`Window.rpm_tolerance`."""


Measurement = Window | SpectrumFrame


def shape_groups(items: Sequence[Measurement]) -> dict[tuple[float, int], list[int]]:
    """Positions of ``items`` by shape: (rate, samples) for windows, (rate, n_fft) for
    spectra. Everything vectorised over a batch (FFTs, the quality gate, the envelope
    baseline) needs rows of one shape; groups keep the order items came in."""
    groups: dict[tuple[float, int], list[int]] = {}
    for i, item in enumerate(items):
        size = len(item.samples) if isinstance(item, Window) else int(item.n_fft)
        groups.setdefault((float(item.fs), size), []).append(i)
    return groups
