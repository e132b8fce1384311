"""How bad is it: vibration severity by the ISO zones, and a bearing-damage stage.

Pure computation (numpy only), so the pipeline, ``faultline diagnose`` and the report
worker compute the same figures. The model never sets a severity: it reads these.

**Velocity RMS.** ISO 20816 judges a machine by the broadband RMS of vibration *velocity*
at its bearing housings, 10 Hz to 1,000 Hz for machines running above 600 r/min. Sensors
send acceleration; it is integrated in the frequency domain (``V(f) = A(f) / (2 pi f)``
inside the band, zero outside) and the RMS is read by Parseval's theorem, so one real FFT
per window gives it. Leakage from a Hann window would overstate low-frequency velocity
(the 1/f weighting amplifies it), so the window is not tapered; a window of at least one
second puts the 10 Hz edge ten bins from DC.

**Zones.** A (newly commissioned), B (unrestricted long-term operation), C (restricted:
plan a repair), D (damage likely). The boundaries depend on the machine: see
:data:`ZONE_TABLES` for each preset and where its numbers come from.

**Damage stage.** From the defect lines the line check read (dB above the fitted
threshold) and their trend on this asset; see :func:`damage_stage`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

__all__ = [
    "DEFAULT_MACHINE_CLASS",
    "ZONE_TABLES",
    "DamageStage",
    "G",
    "Severity",
    "ZoneTable",
    "damage_stage",
    "severity_of",
    "velocity_rms_mm_s",
    "zone_of",
]

G = 9.80665  # m/s^2 per g
VELOCITY_BAND_HZ = (10.0, 1000.0)
Zone = Literal["A", "B", "C", "D"]


@dataclass(frozen=True, slots=True)
class ZoneTable:
    """Zone boundaries in mm/s RMS (A/B, B/C, C/D) for one class of machine."""

    name: str
    ab: float
    bc: float
    cd: float
    source: str


# The numbers of ISO 10816-3:2009 Tables 1-2, which ISO 20816-3:2022 (Annex A, Tables A.1
# and A.2) carries over for velocity; ISO 10816-1:1995 Annex B for small machines, which
# ISO 20816-3 does not cover (it starts at 15 kW). Check them against your own copy of the
# standard before a plant relies on them; a plant may set its own (asset settings).
ZONE_TABLES: dict[str, ZoneTable] = {
    t.name: t
    for t in (
        ZoneTable(
            "group1_rigid", 2.3, 4.5, 7.1, "ISO 20816-3:2022 Annex A (group 1, rigid support)"
        ),
        ZoneTable(
            "group1_flexible", 3.5, 7.1, 11.0, "ISO 20816-3:2022 Annex A (group 1, flexible)"
        ),
        ZoneTable(
            "group2_rigid", 1.4, 2.8, 4.5, "ISO 20816-3:2022 Annex A (group 2, rigid support)"
        ),
        ZoneTable("group2_flexible", 2.3, 4.5, 7.1, "ISO 20816-3:2022 Annex A (group 2, flexible)"),
        ZoneTable("class_I", 0.71, 1.8, 4.5, "ISO 10816-1:1995 Annex B (class I, up to 15 kW)"),
    )
}


DEFAULT_MACHINE_CLASS = "group2_rigid"
"""Medium machines (15-300 kW) on rigid supports: most of a plant's pumps and fans."""


def velocity_rms_mm_s(
    samples: npt.ArrayLike,
    fs: float,
    *,
    unit_m_s2: float = G,
    band_hz: tuple[float, float] = VELOCITY_BAND_HZ,
    spectrum: npt.NDArray[np.complex128] | None = None,
) -> npt.NDArray[np.float64]:
    """Velocity RMS in mm/s, band-limited, of each row of acceleration ``samples``.

    ``unit_m_s2``: what one unit of the samples is in m/s^2 (``G`` for samples in g,
    1.0 for m/s^2). The mean (a DC offset, not vibration) only sits in the 0 Hz bin, which
    the band (it must start above 0 Hz) leaves out. ``spectrum``: ``scipy.fft.rfft`` of
    the rows when the caller already has it (the diagnosis shares one per window), so no
    FFT is computed here.
    """
    rows = np.atleast_2d(np.asarray(samples, dtype=np.float64))
    n = rows.shape[-1]
    if n < 2 or fs <= 0:
        raise ValueError(f"need at least 2 samples and fs > 0 (got {n} samples, fs {fs})")
    lo, hi = band_hz
    if not lo > 0:
        raise ValueError(f"the velocity band must start above 0 Hz, got {band_hz}")
    if spectrum is None:
        spectrum = sfft.rfft(rows, axis=-1)
    elif spectrum.shape != (rows.shape[0], n // 2 + 1):
        raise ValueError(f"spectrum must be the rfft of the rows, got shape {spectrum.shape}")
    bins, per_bin, weight = _velocity_bins(n, float(fs), (float(lo), float(hi)), unit_m_s2)
    velocity = spectrum[:, bins] * per_bin  # m/s per bin
    power = (weight * (velocity.real**2 + velocity.imag**2)).sum(axis=-1) / n**2
    result: npt.NDArray[np.float64] = np.sqrt(power) * 1000.0
    return result


@lru_cache(maxsize=32)
def _velocity_bins(
    n: int, fs: float, band_hz: tuple[float, float], unit_m_s2: float
) -> tuple[slice, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The rfft bins of an ``n``-sample window inside the band (a slice: frequencies rise),
    each bin's factor from acceleration to velocity (m/s per unit), and its Parseval weight.
    Cached (read-only): every window of a shape uses the same."""
    lo, hi = band_hz
    freqs = np.fft.rfftfreq(n, d=1.0 / fs)
    inside = np.flatnonzero((freqs >= lo) & (freqs <= min(hi, fs / 2.0)))
    bins = slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0)
    omega = 2.0 * np.pi * freqs[bins]
    per_bin = np.asarray(unit_m_s2 / omega, dtype=np.float64)
    # Parseval for a one-sided spectrum: every kept bin but DC and Nyquist counts twice.
    weight: npt.NDArray[np.float64] = np.full(omega.shape, 2.0)
    if n % 2 == 0 and inside.size and inside[-1] == freqs.size - 1:
        weight[-1] = 1.0
    per_bin.flags.writeable = False
    weight.flags.writeable = False
    return bins, per_bin, weight


def zone_of(velocity_mm_s: float, table: ZoneTable) -> Zone:
    if velocity_mm_s < table.ab:
        return "A"
    if velocity_mm_s < table.bc:
        return "B"
    if velocity_mm_s < table.cd:
        return "C"
    return "D"


@dataclass(frozen=True, slots=True)
class DamageStage:
    """Bearing damage by its defect lines, in the four stages reliability engineers use.

    0 no sign; 1 impulsiveness without a defect line (too early to name); 2 defect lines in
    the envelope spectrum (early, often months of life left); 3 lines well above threshold
    (clear damage: plan the change); 4 lines strong and the velocity zone C or D (the
    damage now moves the machine: change soon). ``trend_db``: the change of the strongest
    line on this asset against its earlier windows (None: no history yet).
    """

    stage: int
    label: str
    strongest_db: float | None
    trend_db: float | None


_STAGE_LABELS = {
    0: "no damage sign",
    1: "impulsive, no defect line",
    2: "early: defect lines in the envelope",
    3: "clear damage: lines well above threshold",
    4: "advanced: strong lines and high overall vibration",
}
CLEAR_MARGIN_DB = 6.0  # a line this far above its threshold is unmistakable
IMPULSIVE_KURTOSIS = 4.0  # Gaussian noise reads 3


def damage_stage(
    line_margins_db: dict[str, float],
    *,
    kurtosis: float | None,
    zone: Zone | None,
    history_db: Sequence[float] = (),
) -> DamageStage:
    """Stage from the families' margins over their thresholds (>= 0: present)."""
    present = [m for m in line_margins_db.values() if m >= 0]
    strongest = max(line_margins_db.values()) if line_margins_db else None
    trend = None
    if strongest is not None and history_db:
        trend = round(float(strongest - float(np.median(history_db))), 1)
    if not present:
        stage = 1 if kurtosis is not None and kurtosis >= IMPULSIVE_KURTOSIS else 0
    elif max(present) < CLEAR_MARGIN_DB:
        stage = 2
    elif zone in ("C", "D"):
        stage = 4
    else:
        stage = 3
    return DamageStage(
        stage=stage,
        label=_STAGE_LABELS[stage],
        strongest_db=None if strongest is None else round(float(strongest), 1),
        trend_db=trend,
    )


@dataclass(frozen=True, slots=True)
class Severity:
    """What an alert and a report say about how bad it is (all computed by code)."""

    velocity_rms_mm_s: float
    zone: Zone
    zone_table: ZoneTable
    damage: DamageStage

    def as_dict(self) -> dict[str, object]:
        t = self.zone_table
        return {
            "velocity_rms_mm_s": round(self.velocity_rms_mm_s, 3),
            "band_hz": list(VELOCITY_BAND_HZ),
            "zone": self.zone,
            "zone_limits_mm_s": {"A/B": t.ab, "B/C": t.bc, "C/D": t.cd},
            "machine_class": t.name,
            "standard": t.source,
            "damage_stage": self.damage.stage,
            "damage": self.damage.label,
            "strongest_line_db": self.damage.strongest_db,
            "line_trend_db": self.damage.trend_db,
        }


def severity_of(
    velocity_mm_s: float,
    table: ZoneTable,
    line_margins_db: dict[str, float],
    *,
    kurtosis: float | None,
    history_db: Sequence[float] = (),
) -> Severity:
    zone = zone_of(velocity_mm_s, table)
    stage = damage_stage(line_margins_db, kurtosis=kurtosis, zone=zone, history_db=history_db)
    return Severity(velocity_mm_s, zone, table, stage)
