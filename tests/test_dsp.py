"""Signal processing on synthetic signals with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.fft as sfft

from faultline.encoders.demodulation import (
    content_edge_hz,
    select_bands,
    squared_envelope_spectra,
)
from faultline.encoders.dsp import (
    amplitude_spectra,
    envelope_spectra_from_rfft,
    envelope_spectrum,
    hann_spectra_from_rfft,
    magnitude_spectrum,
    resample_to,
)
from faultline.encoders.signals import Window
from faultline.encoders.speed import estimate_rpm

FS = 12000.0


def impulse_train(rate_hz: float, resonance_hz: float, seconds: float = 1.0) -> np.ndarray:
    """Decaying 3 kHz rings struck at ``rate_hz``, plus noise and a strong 30 Hz line."""
    rng = np.random.default_rng(1)
    n = int(seconds * FS)
    t = np.arange(n) / FS
    ring_t = np.arange(int(0.004 * FS)) / FS
    ring = np.exp(-ring_t * 1500.0) * np.sin(2 * np.pi * resonance_hz * ring_t)
    x = np.zeros(n)
    for start in np.arange(0.0, seconds, 1.0 / rate_hz):
        i = int(start * FS)
        seg = ring[: n - i]
        x[i : i + len(seg)] += seg
    return x + 0.05 * rng.standard_normal(n) + 2.0 * np.sin(2 * np.pi * 30.0 * t)


def test_envelope_spectrum_finds_the_impact_rate() -> None:
    x = impulse_train(107.0, 3000.0)
    freqs, mag = envelope_spectrum(x, FS, (2000.0, 5800.0))
    band = (freqs > 20) & (freqs < 500)
    assert freqs[band][np.argmax(mag[band])] == pytest.approx(107.0, abs=1.0)
    # The raw spectrum's biggest low-frequency line is the 30 Hz shaft line instead.
    raw = amplitude_spectra(x)
    assert freqs[band][np.argmax(raw[band])] == pytest.approx(30.0, abs=1.0)


def test_fast_envelope_matches_reference() -> None:
    x = np.stack([impulse_train(107.0, 3000.0), impulse_train(162.0, 4000.0)])
    _, ref = envelope_spectrum(x, FS, (2000.0, 5800.0))
    _, fast = envelope_spectra_from_rfft(sfft.rfft(x, axis=-1), x.shape[-1], FS, (2000.0, 5800.0))
    for a, b in zip(ref, fast, strict=True):
        assert np.corrcoef(a[:1000], b[:1000])[0, 1] > 0.999
        assert np.argmax(a[20:500]) == np.argmax(b[20:500])


def test_resample_keeps_tone_and_removes_content_above_new_nyquist() -> None:
    fs = 48000.0
    t = np.arange(int(fs)) / fs
    x = np.sin(2 * np.pi * 500.0 * t) + np.sin(2 * np.pi * 9000.0 * t)
    y = resample_to(x, fs, FS)
    assert y.shape == (12000,)
    spec = amplitude_spectra(y[1200:10800])  # away from the filter's edge transients
    freqs = np.fft.rfftfreq(9600, 1.0 / FS)  # 1.25 Hz bins: 500 and 3000 Hz on bin centres
    assert spec[np.argmin(np.abs(freqs - 500.0))] == pytest.approx(1.0, rel=0.01)
    # Plain decimation would fold 9 kHz onto 3 kHz at full strength.
    assert spec[np.argmin(np.abs(freqs - 3000.0))] < 1e-3
    assert np.max(np.abs(x[::4][:12000] - y)) > 0.5  # and it is not decimation


def test_resample_identity_and_rational_ratio() -> None:
    x = np.random.default_rng(0).standard_normal((2, 2560))
    assert np.array_equal(resample_to(x, FS, FS), x)
    y = resample_to(x, 25600.0, FS)  # 15/32
    assert y.shape == (2, 1200)


def test_magnitude_spectrum_is_amplitude_normalised() -> None:
    t = np.arange(12000) / FS
    samples = (0.7 * np.sin(2 * np.pi * 500.0 * t)).astype(np.float32)
    w = Window("a", 5.0, FS, samples, rpm=1797.0, meta={"k": 1})
    frame = magnitude_spectrum(w)
    assert frame.n_fft == 12000
    assert frame.magnitude.shape == (6001,)
    assert frame.magnitude.dtype == np.float32
    assert frame.magnitude[500] == pytest.approx(0.7, rel=1e-4)
    assert (frame.asset, frame.ts, frame.fs, frame.rpm) == ("a", 5.0, FS, 1797.0)
    assert frame.meta == {"k": 1}
    padded = magnitude_spectrum(w, n_fft=24000)
    assert padded.magnitude.shape == (12001,)
    assert padded.magnitude[1000] == pytest.approx(0.7, rel=1e-4)
    cut = magnitude_spectrum(w, n_fft=6000)  # the first 6000 samples
    assert cut.magnitude.shape == (3001,)
    assert cut.magnitude[250] == pytest.approx(0.7, rel=1e-4)


@pytest.mark.parametrize("n", [1000, 1001])
def test_hann_from_rfft_equals_windowed_fft(n: int) -> None:
    x = np.random.default_rng(n).standard_normal((3, n))
    np.testing.assert_allclose(
        hann_spectra_from_rfft(sfft.rfft(x, axis=-1), n), amplitude_spectra(x), atol=1e-12
    )


@pytest.mark.parametrize("n", [1000, 1001])
def test_hann_from_rfft_first_bins_are_the_full_computation(n: int) -> None:
    spec = sfft.rfft(np.random.default_rng(n).standard_normal((3, n)), axis=-1)
    full = hann_spectra_from_rfft(spec, n)
    for bins in (1, 2, 5, spec.shape[-1] - 1, spec.shape[-1], spec.shape[-1] + 3):
        head = hann_spectra_from_rfft(spec[:, : bins + 1], n, bins=bins)
        assert np.array_equal(head, full[:, :bins])  # bit-identical: the quality gate relies on it


def test_band_above_nyquist_rejected() -> None:
    with pytest.raises(ValueError, match="Nyquist"):
        envelope_spectrum(np.zeros(4000), 4000.0, (2500.0, 3000.0))


def test_rpm_from_shaft_lines_and_sidebands_despite_mains() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(12000) / FS
    shaft = 24.3  # 1458 rpm: no multiple of it sits on a mains line
    x = 0.1 * rng.standard_normal(t.size)
    for k, amp in ((1, 0.3), (2, 0.2), (3, 0.15)):
        x += amp * np.sin(2 * np.pi * k * shaft * t + k)
    # Mid-frequency lines (gear/vane/electrical) modulated by the shaft: sidebands.
    for carrier in (410.0, 655.0):
        x += 0.3 * (1 + 0.6 * np.sin(2 * np.pi * shaft * t)) * np.sin(2 * np.pi * carrier * t)
    for f, amp in ((60.0, 0.3), (120.0, 0.6), (180.0, 0.2)):  # a mains series
        x += amp * np.sin(2 * np.pi * f * t)
    rpm = estimate_rpm(amplitude_spectra(x), 1.0)
    assert rpm.shape == (1,)
    assert rpm[0] == pytest.approx(60 * shaft, rel=0.005)


def test_demodulation_is_row_independent_and_takes_complex64() -> None:
    """Band selection and the squared-envelope spectra work in row chunks and in place:
    a row's result must not depend on its batch, nor on the rfft's precision."""
    rows = np.stack([impulse_train(rate, 3000.0) for rate in (97.0, 107.0, 141.0)])
    spec = sfft.rfft(rows, axis=-1)
    n = rows.shape[-1]
    defect = np.full(3, 160.0)
    bands = select_bands(spec, n, FS, defect)
    env, df = squared_envelope_spectra(spec, n, FS, bands)
    assert df == FS / n
    for i in range(3):
        one = select_bands(spec[i : i + 1], n, FS, defect[i : i + 1])
        assert one.kurtosis[0] == bands.kurtosis[i]
        assert one.centre_hz[0] == bands.centre_hz[i]
        if one.bandwidth_hz[0] == bands.bandwidth_hz.max():  # the same envelope length
            alone = squared_envelope_spectra(spec[i : i + 1], n, FS, one)[0]
            assert np.array_equal(alone[0], env[i])
    low = sfft.rfft(rows.astype(np.float32), axis=-1)  # complex64, as from float32 samples
    assert np.array_equal(
        select_bands(low, n, FS, defect).kurtosis,
        select_bands(low.astype(np.complex128), n, FS, defect).kurtosis,
    )
    assert hann_spectra_from_rfft(low, n).dtype == np.float64


def test_upsampled_copies_pick_the_band_of_the_native_rate(cwru_dir: Path) -> None:
    """A 12 kHz recording resampled up to 48 and 96 kHz (scipy's polyphase filter) has an
    empty top whose stopband images carry the impacts' kurtosis too: the content edge keeps
    the kurtogram under 90 % of where the content ends, so the copies pick the band the
    12 kHz windows pick. Native windows find no edge. Measured on CWRU 118 / 224 / 234
    (8 windows each): 0.96 of window pairs pick the same band (two windows of 118 differ
    inside the content, where the resampler's passband moves a kurtosis); 0.33 before."""
    from scipy.io import loadmat
    from scipy.signal import resample_poly

    same: list[float] = []
    for record, key in (("118", "X118_DE_time"), ("224", "X224_DE_time"), ("234", "X234_DE_time")):
        x = loadmat(cwru_dir / "12k_drive_end" / f"{record}.mat")[key].ravel()[: 12000 * 8]
        picks = {}
        for up in (1, 4, 8):
            fs = 12000.0 * up
            y = resample_poly(x, up, 1).astype(np.float32) if up > 1 else x.astype(np.float32)
            n = int(fs)
            rows = np.stack([y[i : i + n] for i in range(0, y.size - n + 1, n)])
            spec = sfft.rfft(rows, axis=-1)
            edge = content_edge_hz(spec, n, fs)
            assert np.all(np.isinf(edge)) if up == 1 else np.all(edge < 7000.0), (record, edge)
            bands = select_bands(spec, n, fs, np.full(rows.shape[0], 160.0))
            picks[up] = list(
                zip(bands.centre_hz.tolist(), bands.bandwidth_hz.tolist(), strict=True)
            )
        for up in (4, 8):
            same.append(np.mean([a == b for a, b in zip(picks[1], picks[up], strict=True)]))
    assert np.mean(same) >= 0.9, same
