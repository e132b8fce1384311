"""Signal processing shared by the encoder, the library builder and simulated sensors.

Pure numpy/scipy on arrays: no I/O, no model. Every function accepts one signal or a
batch (rows along the last axis) because the encoder's throughput comes from doing one
FFT over a 2-D block rather than a Python loop over windows.

Two envelope paths exist on purpose. :func:`envelope_spectrum` is the textbook one
(Butterworth band-pass run forwards and backwards, then Hilbert) that people check results
against. :func:`envelope_spectra_from_rfft` is the same operation done in the frequency
domain on a spectrum the encoder has already computed: the zero-phase Butterworth gain
``|H|^2`` and the analytic-signal step are one multiplication, so a band costs one inverse
FFT instead of a filter pass plus two FFTs. They differ only near the window edges
(circular versus padded filtering), which the tests bound.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft
from scipy.signal import butter, hilbert, resample_poly, sosfiltfilt, sosfreqz

from faultline.encoders.signals import SpectrumFrame, Window

__all__ = [
    "SampleMoments",
    "amplitude_spectra",
    "butter_zero_phase_gain",
    "envelope_spectra_from_rfft",
    "envelope_spectrum",
    "hann_spectra_from_rfft",
    "magnitude_spectrum",
    "mean_last",
    "periodic_hann",
    "resample_to",
    "row_chunks",
    "sample_moments",
]

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]

BUTTER_ORDER = 4
"""Band-pass order (per edge); run forwards and backwards it gives 48 dB/octave skirts."""

_MAX_RESAMPLE_DENOMINATOR = 1000

CHUNK_BYTES = 1 << 18
"""Row-wise work on a batch runs in chunks of rows whose arrays are about this big (256 KB):
a chain of numpy operations over one chunk then stays in the core's cache, where over a
whole batch every operation streams its arrays through memory. Measured on 16 windows:
the Hann spectra cost 178 us per 12 kHz window in one block, 43 in chunks of 4 rows;
556 and 205 us per 48 kHz window (one row per chunk)."""


def mean_last(x: F64, *, keepdims: bool = False) -> F64:
    """``x.mean(axis=-1)``: the same pairwise sum divided by the count, without the Python
    layer of ndarray.mean (about 2 us a call; the chunked loops call it a hundred times a
    batch)."""
    total = np.add.reduce(x, axis=-1, keepdims=True) if keepdims else np.add.reduce(x, axis=-1)
    out: F64 = total / x.shape[-1]
    return out


def row_chunks(n_rows: int, row_bytes: int, chunk_bytes: int = CHUNK_BYTES) -> list[slice]:
    """Consecutive slices covering ``n_rows`` rows, each about ``chunk_bytes`` of rows of
    ``row_bytes`` (at least one row per slice)."""
    step = max(1, chunk_bytes // max(1, row_bytes))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


@lru_cache(maxsize=16)
def periodic_hann(n: int) -> F64:
    """Periodic Hann (read-only, cached): its DFT is three taps, so the encoder can window
    after the FFT."""
    w: F64 = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    w.flags.writeable = False
    return w


@lru_cache(maxsize=16)
def _one_sided_scale(n_fft: int, window_sum: float) -> F64:
    """Factor turning |rfft| of a windowed signal into sine amplitude (peak units);
    read-only, cached (every window of a size uses the same)."""
    scale = np.full(n_fft // 2 + 1, 2.0 / window_sum)
    scale[0] = 1.0 / window_sum
    if n_fft % 2 == 0:
        scale[-1] = 1.0 / window_sum
    scale.flags.writeable = False
    return scale


class SampleMoments(NamedTuple):
    """Per-row statistics of raw samples: computed once per window
    (:func:`faultline.encoders.blocks.window_blocks`) and read by both the time features
    (:func:`faultline.encoders.features.time_stats`) and the quality gate."""

    mean: F64
    var: F64
    """Mean squared deviation from the mean, by np.var's own steps (its square root is
    np.std bit for bit)."""
    third: F64
    """Mean cubed deviation."""
    fourth: F64
    """Mean fourth-power deviation."""
    top: F64
    """Largest sample."""
    bottom: F64
    """Smallest sample."""


def sample_moments(x: F64) -> SampleMoments:
    """:class:`SampleMoments` of each row of ``x`` (rows, samples), in cache-sized chunks
    with two temporaries each, updated in place. Non-finite rows give NaN, quietly."""
    out = np.empty((6, x.shape[0]))
    with np.errstate(invalid="ignore", over="ignore"):
        for part in row_chunks(x.shape[0], 8 * x.shape[-1]):
            rows = x[part]
            mean = mean_last(rows, keepdims=True)
            centred = rows - mean
            sq = centred * centred  # explicit products: numpy's ** 3 / ** 4 go through pow()
            out[0, part] = mean[:, 0]
            out[1, part] = mean_last(sq)
            out[2, part] = mean_last(np.multiply(sq, centred, out=centred))
            out[3, part] = mean_last(np.multiply(sq, sq, out=sq))
            out[4, part] = rows.max(axis=-1)
            out[5, part] = rows.min(axis=-1)
    return SampleMoments(*out)


def amplitude_spectra(x: npt.ArrayLike, n_fft: int | None = None) -> F64:
    """Hann-windowed one-sided amplitude spectra of the rows of ``x``.

    A sine of amplitude A reads A at its bin (on a bin centre), whatever ``n_fft`` and the
    gain of the window, so spectra from sensors with other FFT sizes stay comparable.
    Rows longer than ``n_fft`` use their first ``n_fft`` samples; shorter rows are padded.
    """
    arr = np.asarray(x, dtype=np.float64)
    n = arr.shape[-1] if n_fft is None else int(n_fft)
    if n < 2:
        raise ValueError(f"need at least 2 samples for a spectrum, got n_fft={n}")
    seg = arr[..., :n]
    w = periodic_hann(seg.shape[-1])
    spec = np.abs(sfft.rfft(seg * w, n=n, axis=-1))
    out: F64 = spec * _one_sided_scale(n, float(w.sum()))
    return out


def magnitude_spectrum(window: Window, n_fft: int | None = None) -> SpectrumFrame:
    """What a smart sensor would send for ``window``: its Hann amplitude spectrum."""
    n = len(window.samples) if n_fft is None else int(n_fft)
    mag = amplitude_spectra(window.samples, n).astype(np.float32)
    return SpectrumFrame(
        asset=window.asset,
        ts=window.ts,
        fs=window.fs,
        n_fft=n,
        magnitude=mag,
        rpm=window.rpm,
        geometry=window.geometry,
        meta=dict(window.meta),
    )


def hann_spectra_from_rfft(
    spec: C128, n: int, *, bins: int | None = None, out: F64 | None = None
) -> F64:
    """Amplitude spectra of Hann-windowed rows, from the rfft of the unwindowed rows.

    The periodic Hann's DFT is (-1/4, 1/2, -1/4), so windowing after the FFT costs three
    multiply-adds per bin and the encoder needs a single forward FFT per window.
    ``bins``: only the first ``bins`` bins (which read ``spec`` up to bin ``bins``); the
    quality gate recomputes bins 0-1 of the mean-removed rows that way. ``out``: where to
    write the result (float64, the result's shape), e.g. a chunk of a batch's array.
    """
    m = spec.shape[-1]
    stop = m if bins is None else min(bins, m)
    inner = min(stop, m - 1)  # bins 1 .. inner - 1 have both neighbours in spec
    windowed = 0.5 * spec[..., :stop]
    # In place where numpy would allocate a temporary of the spectrum's size: this runs on
    # every window, and fresh large arrays cost a page fault per 4 KB.
    sides = np.add(spec[..., : inner - 1], spec[..., 2 : inner + 1])
    sides *= 0.25
    windowed[..., 1:inner] -= sides
    # Neighbours outside the one-sided range are conjugates of bins inside it.
    windowed[..., 0] -= 0.5 * spec[..., 1].real
    if stop == m:
        last_right = spec[..., -1] if n % 2 else spec[..., -2]
        windowed[..., -1] -= 0.25 * (spec[..., -2] + np.conj(last_right))
    result: F64 = np.abs(windowed, out=np.empty(windowed.shape) if out is None else out)
    result *= _one_sided_scale(n, 0.5 * n)[:stop]
    return result


def resample_to(x: npt.ArrayLike, fs: float, target_fs: float) -> F64:
    """Bring rows of ``x`` from ``fs`` to ``target_fs`` with an anti-aliasing polyphase filter.

    The ratio is approximated by a fraction with a small denominator so odd rates (e.g.
    25.6 kHz) still resample exactly enough; equal rates return the input unchanged.
    Plain decimation (``x[::4]``) would fold everything above the new Nyquist back in.
    """
    arr = np.asarray(x, dtype=np.float64)
    if not (fs > 0 and target_fs > 0):
        raise ValueError(f"sampling rates must be positive, got fs={fs}, target_fs={target_fs}")
    ratio = Fraction(target_fs / fs).limit_denominator(_MAX_RESAMPLE_DENOMINATOR)
    if ratio == 1:
        return arr
    out: F64 = resample_poly(arr, ratio.numerator, ratio.denominator, axis=-1)
    return out


def _check_band(band: tuple[float, float], fs: float) -> tuple[float, float]:
    lo, hi = float(band[0]), float(band[1])
    nyquist = fs / 2.0
    hi = min(hi, 0.98 * nyquist)
    if not 0 < lo < hi:
        raise ValueError(f"band {band} is empty or above the Nyquist frequency {nyquist} Hz")
    return lo, hi


def envelope_spectrum(
    x: npt.ArrayLike, fs: float, band: tuple[float, float] = (2000.0, 5800.0)
) -> tuple[F64, F64]:
    """Spectrum of the Hilbert envelope of ``x`` band-passed to ``band`` (reference path).

    Band-passing around a structural resonance keeps the ringing that each defect impact
    excites; its envelope repeats at the defect rate, which is why bearing faults show in
    this spectrum when the raw spectrum is dominated by shaft and mains lines.
    Returns frequencies and amplitude (Hann, mean removed) along the last axis.
    """
    arr = np.asarray(x, dtype=np.float64)
    lo, hi = _check_band(band, fs)
    sos = butter(BUTTER_ORDER, (lo, hi), btype="bandpass", fs=fs, output="sos")
    filtered = sosfiltfilt(sos, arr, axis=-1)
    env = np.abs(hilbert(filtered, axis=-1))
    env = env - env.mean(axis=-1, keepdims=True)
    freqs: F64 = np.fft.rfftfreq(arr.shape[-1], 1.0 / fs).astype(np.float64)
    return freqs, amplitude_spectra(env)


@lru_cache(maxsize=32)
def butter_zero_phase_gain(n: int, fs: float, band: tuple[float, float]) -> F64:
    """|H(f)|^2 of the Butterworth band-pass on the rfft bins of an ``n``-point signal.

    Squared because a forward-backward pass applies the filter twice with zero phase.
    """
    lo, hi = _check_band(band, fs)
    sos = butter(BUTTER_ORDER, (lo, hi), btype="bandpass", fs=fs, output="sos")
    _, h = sosfreqz(sos, worN=np.fft.rfftfreq(n, 1.0 / fs), fs=fs)
    gain: F64 = np.abs(h) ** 2
    gain.flags.writeable = False
    return gain


def envelope_spectra_from_rfft(
    spec: C128, n: int, fs: float, band: tuple[float, float]
) -> tuple[F64, F64]:
    """Envelope amplitude spectra from the rfft of unwindowed rows (fast path).

    Equivalent to :func:`envelope_spectrum` away from the window edges: the filter gain
    and the analytic signal (positive frequencies doubled) are applied in one product,
    then one inverse FFT gives the band's complex envelope.
    """
    gain = butter_zero_phase_gain(n, float(fs), (float(band[0]), float(band[1])))
    analytic_half = spec * (2.0 * gain)
    analytic_half[..., 0] *= 0.5
    if n % 2 == 0:
        analytic_half[..., -1] *= 0.5
    full = np.zeros((*spec.shape[:-1], n), dtype=np.complex128)
    full[..., : spec.shape[-1]] = analytic_half
    env = np.abs(sfft.ifft(full, axis=-1))
    env -= env.mean(axis=-1, keepdims=True)
    freqs: F64 = np.fft.rfftfreq(n, 1.0 / fs).astype(np.float64)
    return freqs, amplitude_spectra(env)
