"""Signal-quality gate on synthetic signals with a known defect and on real recordings."""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.fft as sfft
import scipy.io

from faultline.encoders.dsp import hann_spectra_from_rfft
from faultline.encoders.quality import (
    CLIP_SHARE,
    QUALITY_CODES,
    TONE_SHARE,
    Quality,
    assess,
    speed_quality,
)
from faultline.fault_library.catalog import read_manifest
from faultline.fault_library.recordings import read_recording

RATES = (12000.0, 48000.0)
Signal = Callable[[float], np.ndarray]


def _t(fs: float) -> np.ndarray:
    return np.arange(int(fs)) / fs


def _noise(fs: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(fs))


def _sine(f: float) -> Signal:
    return lambda fs: np.sin(2 * np.pi * f * _t(fs) + 0.3)


def _impulse_train(fs: float) -> np.ndarray:
    """Noise plus 3 kHz rings decaying in ~1 ms, struck every 1/107 s (an outer-race fault)."""
    n = int(fs)
    ring_t = np.arange(int(0.01 * fs)) / fs
    ring = np.exp(-ring_t * 1000.0) * np.sin(2 * np.pi * 3000.0 * ring_t)
    strikes = np.zeros(n)
    strikes[(np.arange(0.0, 1.0, 1.0 / 107.0) * fs).astype(int)] = 1.0
    return np.convolve(strikes, ring)[:n] + 0.03 * _noise(fs, 1)


def _harmonics(fs: float) -> np.ndarray:
    """Shaft 1x-3x at 30 Hz over broadband: a healthy machine's strongest lines."""
    t = _t(fs)
    lines = sum(a * np.sin(2 * np.pi * 30.0 * k * t + k) for k, a in ((1, 1.0), (2, 0.5), (3, 0.3)))
    return lines + 0.3 * _noise(fs, 2)


def _with_zeros(fs: float) -> np.ndarray:
    x = _noise(fs, 3)
    start = int(0.3 * fs)
    x[start : start + int(0.05 * fs)] = 0.0
    return x


def _with_held_value(fs: float) -> np.ndarray:
    x = _noise(fs, 4)
    start = int(0.6 * fs)
    x[start : start + int(0.05 * fs)] = x[start - 1]
    return x


SIGNALS: dict[str, tuple[Signal, str]] = {
    "constant 1.0": (lambda fs: np.ones(int(fs)), "constant"),
    "constant 0": (lambda fs: np.zeros(int(fs)), "constant"),
    "1.0 + 1e-9 noise": (lambda fs: 1.0 + 1e-9 * _noise(fs), "constant"),
    "sub-LSB noise, 3 codes": (lambda fs: np.round(0.3 * _noise(fs)), "constant"),
    "50 Hz sine": (_sine(50.0), "tone"),
    "60 Hz sine": (_sine(60.0), "tone"),
    "50 Hz sine + 1 % noise": (lambda fs: _sine(50.0)(fs) + 0.01 * _noise(fs), "tone"),
    "sine clipped at 60 %": (lambda fs: np.clip(_sine(50.0)(fs), -0.6, 0.6), "clipped"),
    "square wave 29.95 Hz": (lambda fs: np.sign(_sine(29.95)(fs)), "clipped"),
    "50 ms of zeros in noise": (_with_zeros, "dropout"),
    "50 ms held value in noise": (_with_held_value, "dropout"),
    "gaussian noise": (_noise, "ok"),
    "impulse train 107 Hz": (_impulse_train, "ok"),
    "30 Hz harmonics + noise": (_harmonics, "ok"),
}


@pytest.mark.parametrize("fs", RATES)
@pytest.mark.parametrize("name", list(SIGNALS))
def test_each_kind_gets_its_code(name: str, fs: float) -> None:
    make, expected = SIGNALS[name]
    (quality,) = assess(make(fs), fs)
    assert quality.code == expected, quality.reason
    assert quality.ok == (expected == "ok")
    assert (quality.reason is None) == quality.ok
    if not quality.ok:
        assert quality.reason is not None
        assert quality.reason.startswith(f"{expected}: ")


@pytest.mark.parametrize("fs", RATES)
def test_batch_matches_row_by_row_and_precomputed_spectrum(fs: float) -> None:
    rows = np.stack([make(fs) for make, _ in SIGNALS.values()])
    batch = assess(rows, fs)
    assert [q.code for q in batch] == [expected for _, expected in SIGNALS.values()]
    assert batch == [assess(row, fs)[0] for row in rows]
    spectrum = sfft.rfft(rows, axis=1)
    assert assess(rows, fs, spectrum=spectrum) == batch
    amplitude = hann_spectra_from_rfft(spectrum, rows.shape[1])  # the encoder's raw spectrum
    assert assess(rows, fs, spectrum=spectrum, amplitude=amplitude) == batch
    with pytest.raises(ValueError, match="pass both"):
        assess(rows, fs, amplitude=amplitude)
    assert assess(rows.astype(np.float32), fs) == assess(rows.astype(np.float32).tolist(), fs)


def test_impulsive_signals_are_not_clipped() -> None:
    """The ok impulse train really is impulsive: the gate must not confuse impacts with rails."""
    for fs in RATES:
        x = _impulse_train(fs)
        dev = x - x.mean()
        kurtosis = np.mean(dev**4) / np.mean(dev**2) ** 2
        crest = np.abs(dev).max() / np.sqrt(np.mean(dev**2))
        assert kurtosis > 10.0
        assert crest > 5.0
        assert assess(x, fs)[0].ok


def test_reasons_carry_the_measured_figure() -> None:
    fs = 12000.0
    clipped, square, tone, zeros, held, flat = assess(
        np.stack(
            [
                np.clip(_sine(50.0)(fs), -0.6, 0.6),
                np.sign(_sine(29.95)(fs)),
                _sine(60.0)(fs),
                _with_zeros(fs),
                _with_held_value(fs),
                np.full(int(fs), 2.5),
            ]
        ),
        fs,
    )
    assert clipped.reason is not None
    assert "% of samples at the rails (+-0.6000)" in clipped.reason
    share = float(clipped.reason.split()[1]) / 100
    assert share == pytest.approx(1 - 2 / np.pi * np.arcsin(0.6), abs=0.01)
    assert square.reason == "clipped: 100.0 % of samples at the rails (+-1.000)"
    assert tone.reason is not None
    assert "at 60.0 Hz" in tone.reason
    assert zeros.reason is not None
    assert "600 repeated samples (50.0 ms) of value 0 from t=0.300 s" in zeros.reason
    assert held.reason is not None
    assert "(50.1 ms)" in held.reason
    assert flat.reason is not None
    assert "std 0 at level 2.5" in flat.reason


def test_tone_threshold_sits_between_a_noisy_sine_and_broadband() -> None:
    fs = 12000.0
    # Line share of a sine (power 0.5) over white noise of variance s^2 is 0.5 / (0.5 + s^2).
    above = _sine(50.0)(fs) + 0.15 * _noise(fs)  # 95.7 %
    below = _sine(50.0)(fs) + 0.35 * _noise(fs)  # 80.3 %
    assert 0.5 / (0.5 + 0.15**2) > TONE_SHARE > 0.5 / (0.5 + 0.35**2)
    assert [q.code for q in assess(np.stack([above, below]), fs)] == ["tone", "ok"]


def test_clip_threshold_sits_between_a_clean_and_a_barely_clipped_sine() -> None:
    fs = 48000.0
    slow = _sine(10.0)(fs)  # many samples near each peak: the hardest unclipped case
    barely = np.clip(slow, -0.999, 0.999)  # 2.8 % of samples at the rails
    assert [q.code for q in assess(np.stack([slow, barely]), fs)] == ["tone", "clipped"]
    # One-sided clipping counts too.
    (one_sided,) = assess(np.minimum(_noise(fs), 1.5), fs)
    assert one_sided.code == "clipped"
    assert one_sided.reason is not None
    assert float(one_sided.reason.split()[1]) / 100 >= CLIP_SHARE


def test_dropout_limits_scale_with_the_sampling_rate() -> None:
    for fs, limit in ((12000.0, 32), (48000.0, 96)):
        for run, expected in ((limit, "ok"), (limit + 1, "dropout")):
            x = _noise(fs, 5)
            x[1000 : 1000 + run] = 0.25
            assert assess(x, fs)[0].code == expected, (fs, run)


def test_scattered_zeros_and_nonfinite_samples_are_dropouts() -> None:
    fs = 12000.0
    scattered = _noise(fs, 6)
    for start in range(0, int(fs), 200):  # 16-sample gaps, each below the run limit
        scattered[start : start + 16] = 0.0
    nan = _noise(fs, 7)
    nan[500] = np.nan
    inf = _noise(fs, 8)
    inf[-1] = np.inf
    results = assess(np.stack([scattered, nan, inf]), fs)
    assert [q.code for q in results] == ["dropout"] * 3
    assert results[0].reason == "dropout: 8.0 % of samples are exactly 0 (limit 5 %)"
    assert results[1].reason == "dropout: 1 non-finite samples (NaN/inf)"


def test_dc_offset_neither_hides_nor_fakes_a_defect() -> None:
    """A MEMS sensor reads 1 g plus vibration: the offset is not a tone, and its lost packet
    (zeros, now the window's minimum) is still a dropout rather than clipping."""
    fs = 12000.0
    biased = 9.81 + 0.2 * _noise(fs, 9)
    lost = biased.copy()
    lost[2000:2600] = 0.0
    assert [q.code for q in assess(np.stack([biased, lost]), fs)] == ["ok", "dropout"]


def test_input_shapes_and_errors() -> None:
    fs = 12000.0
    assert assess(np.empty((0, 1000)), fs) == []
    assert len(assess(_noise(fs), fs)) == 1
    with pytest.raises(ValueError, match="1-D or 2-D"):
        assess(np.zeros((2, 2, 100)), fs)
    with pytest.raises(ValueError, match="at least 64 samples"):
        assess(np.ones(10), fs)
    with pytest.raises(ValueError, match="fs must be a positive number"):
        assess(_noise(fs), 0.0)
    with pytest.raises(ValueError, match="fs must be a positive number"):
        assess(_noise(fs), float("nan"))
    with pytest.raises(ValueError, match="spectrum must be the rfft"):
        assess(_noise(fs), fs, spectrum=np.zeros(100, dtype=np.complex128))


def test_quality_value_object() -> None:
    assert QUALITY_CODES == ("constant", "clipped", "tone", "dropout", "speed_unknown")
    ok = Quality("ok", None)
    assert ok.ok
    bad = Quality("tone", "tone: 99.0 % of AC power in one line at 50.0 Hz")
    assert not bad.ok
    with pytest.raises(dataclasses.FrozenInstanceError):
        bad.code = "ok"  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown quality code"):
        Quality("noisy", "noisy: too much")
    with pytest.raises(ValueError, match="reason"):
        Quality("ok", "fine")
    with pytest.raises(ValueError, match="reason"):
        Quality("clipped", None)


def test_speed_quality() -> None:
    def code(rpm: float | None, confidence: float | None) -> str:
        return speed_quality(rpm, confidence, min_confidence=0.5).code

    assert code(1797.0, None) == "ok"  # configured speed, no estimate to doubt
    assert code(1797.0, 0.9) == "ok"
    assert code(1797.0, 0.5) == "ok"
    assert code(1797.0, 0.49) == "speed_unknown"
    assert code(1797.0, float("nan")) == "speed_unknown"
    for rpm in (None, 0.0, -1797.0, float("nan"), float("inf")):
        assert code(rpm, None) == "speed_unknown", rpm
        assert code(rpm, 0.99) == "speed_unknown", rpm
    low = speed_quality(1797.0, 0.21, min_confidence=0.5)
    assert low.reason == "speed_unknown: estimated 1797 rpm has confidence 0.21 < 0.50"
    assert not low.ok
    with pytest.raises(ValueError, match="min_confidence"):
        speed_quality(1797.0, 0.9, min_confidence=float("nan"))


def _windows(signal: np.ndarray, fs: float) -> np.ndarray:
    """Consecutive 1-s windows (hop 1 s); the tail shorter than a second is dropped."""
    n = round(fs)
    k = len(signal) // n
    return np.asarray(signal[: k * n], dtype=np.float64).reshape(k, n)


def _failures(windows: np.ndarray, fs: float, source: str) -> list[str]:
    return [
        f"{source} window {i}: {q.reason}" for i, q in enumerate(assess(windows, fs)) if not q.ok
    ]


@pytest.fixture(scope="session")
def uestc_dir(cwru_dir: Path) -> Path:
    """UESTC bearing data: $FAULTLINE_UESTC_DIR, else the CWRU directory's sibling ``uestc``."""
    env = os.environ.get("FAULTLINE_UESTC_DIR")
    path = Path(env) if env else cwru_dir.parent / "uestc"
    if not (path / "manifest.csv").is_file():
        pytest.fail(
            f"UESTC data not found at {path} (no manifest.csv); set FAULTLINE_UESTC_DIR "
            "to the directory holding manifest.csv and the class folders"
        )
    return path


def test_every_cwru_window_passes(cwru_dir: Path) -> None:
    entries = read_manifest(cwru_dir)
    assert len(entries) == 40
    failures: list[str] = []
    n_windows = 0
    for entry in entries:
        channels = str(entry.meta["sensor_keys"]).split(";")
        assert channels[:2] == ["DE", "FE"]
        for channel in channels:
            recording = read_recording(entry.path, fs=entry.fs, channel=channel)
            windows = _windows(recording.signal, recording.fs)
            n_windows += len(windows)
            failures += _failures(windows, recording.fs, f"{entry.record_id} {channel}")
    assert n_windows > 1000
    assert not failures, "\n".join(failures)


def test_every_uestc_window_passes(uestc_dir: Path) -> None:
    with (uestc_dir / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16
    failures: list[str] = []
    for row in rows:
        mat = scipy.io.loadmat(uestc_dir / row["path"])
        fs = float(np.ravel(mat["SampleFrequency"])[0])
        assert fs == float(row["fs_hz"])
        windows = _windows(np.ravel(mat[row["key"]]), fs)
        assert len(windows) == 13
        failures += _failures(windows, fs, row["path"])
    assert not failures, "\n".join(failures)
