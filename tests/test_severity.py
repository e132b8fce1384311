"""Severity by code: velocity RMS by Parseval, ISO zones, damage stage; real CWRU windows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from faultline.encoders.severity import (
    ZONE_TABLES,
    G,
    damage_stage,
    velocity_rms_mm_s,
    zone_of,
)
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.diagnosis import DecisionPolicy, diagnose_batch
from faultline.fault_library.library import FaultLibrary
from tests.harness import record_windows

FS = 12000.0
T = np.arange(int(FS)) / FS


@pytest.mark.parametrize("freq", [12.0, 50.0, 160.0, 990.0])
def test_velocity_of_a_sine_is_its_integral(freq: float) -> None:
    amplitude = 2.0  # m/s^2
    expected = amplitude / (2 * np.pi * freq) / np.sqrt(2) * 1000  # mm/s RMS
    got = velocity_rms_mm_s(amplitude * np.sin(2 * np.pi * freq * T), FS, unit_m_s2=1.0)
    assert got[0] == pytest.approx(expected, rel=1e-6)


def test_velocity_is_band_limited_and_unit_aware() -> None:
    outside = np.sin(2 * np.pi * 5 * T) + np.sin(2 * np.pi * 2000 * T) + 7.0  # DC, 5 Hz, 2 kHz
    assert velocity_rms_mm_s(outside, FS, unit_m_s2=1.0)[0] < 1e-9
    in_g = velocity_rms_mm_s(np.sin(2 * np.pi * 50 * T), FS)  # samples in g
    in_ms2 = velocity_rms_mm_s(G * np.sin(2 * np.pi * 50 * T), FS, unit_m_s2=1.0)
    assert in_g[0] == pytest.approx(in_ms2[0])


def test_zones_follow_the_table() -> None:
    table = ZONE_TABLES["group2_rigid"]
    assert [zone_of(v, table) for v in (0.5, 1.4, 2.9, 4.5)] == ["A", "B", "C", "D"]


def test_damage_stage_from_lines_zone_and_trend() -> None:
    quiet = damage_stage({"outer_race": -8.0}, kurtosis=3.0, zone="A")
    assert quiet.stage == 0
    assert damage_stage({"outer_race": -8.0}, kurtosis=6.0, zone="A").stage == 1
    assert damage_stage({"outer_race": 2.0}, kurtosis=3.0, zone="A").stage == 2
    assert damage_stage({"outer_race": 9.0}, kurtosis=3.0, zone="B").stage == 3
    advanced = damage_stage({"outer_race": 9.0}, kurtosis=3.0, zone="C", history_db=[4, 5, 6])
    assert advanced.stage == 4
    assert advanced.trend_db == pytest.approx(4.0)


def test_real_windows_carry_severity_from_the_one_decision_home(
    cwru_dir: Path, test_library: FaultLibrary, encoder: SpectrumEncoder
) -> None:
    """Record 133 (outer race, 3 hp) shows its lines: damage stage 2 or more; record 97's
    healthy second half (never in the library) shows none. The velocity is the code's."""
    stages = {}
    for record, start in (("133", 0.0), ("97", 2.6)):
        windows = record_windows(cwru_dir, record, "m", 4, start_s=start)
        results = diagnose_batch(windows, encoder, test_library, DecisionPolicy())
        for window, result in zip(windows, results, strict=True):
            assert result.severity is not None
            assert result.severity.velocity_rms_mm_s == pytest.approx(
                float(velocity_rms_mm_s(window.samples, window.fs)[0])
            )
        stages[record] = [r.severity.damage.stage for r in results if r.severity]
        # The asset's own machine class is read from the window's meta (set by the agent).
        small = [dataclasses.replace(w, meta={"machine_class": "class_I"}) for w in windows]
        (first, *_rest) = diagnose_batch(small, encoder, test_library, DecisionPolicy())
        assert first.severity is not None
        assert first.severity.zone_table.name == "class_I"
    assert min(stages["133"]) >= 2, stages
    assert max(stages["97"]) == 0, stages


def test_velocity_from_a_shared_spectrum() -> None:
    """The diagnosis passes the rfft it already has; the mean (only in the 0 Hz bin) is
    outside the band either way."""
    rows = np.stack([np.sin(2 * np.pi * 50 * T) + 0.3, 0.2 * np.sin(2 * np.pi * 310 * T) - 4.0])
    alone = velocity_rms_mm_s(rows, FS)
    shared = velocity_rms_mm_s(rows, FS, spectrum=np.fft.rfft(rows, axis=-1))
    np.testing.assert_allclose(shared, alone, rtol=1e-12)
    with pytest.raises(ValueError, match="above 0 Hz"):
        velocity_rms_mm_s(rows, FS, band_hz=(0.0, 1000.0))
