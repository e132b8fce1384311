"""Demodulation band chosen from the signal, then the squared-envelope spectrum.

A bearing defect strikes once per defect period and each strike rings a structural
resonance of the machine. Where that resonance lies is the machine's own business (CWRU's
drive end rings near 3-4 kHz, another housing at 8 kHz, a base plate lower): a fixed
band-pass puts the demodulation where the library's rig rang, which is why a fixed band
does not carry over to a machine it has never seen. Spectral kurtosis finds the band
instead: a band carrying repetitive impacts has a complex envelope whose power is
strongly impulsive, a band of stationary noise or steady tones has a kurtosis near zero
(Antoni 2006, "The spectral kurtosis: a useful tool for characterising non-stationary
signals"; Antoni 2007, "Fast computation of the kurtogram for the detection of transient
faults").

This is a filter-bank kurtogram computed in the frequency domain: the rfft of the window
(already computed by the encoder) is cut into half-overlapping Hann-tapered bands of a
few bandwidths, each band's bins are inverse-transformed on their own (a band of ``w`` bins
gives its complex envelope at ``w`` samples per window), and the kurtosis of that
envelope's power is the band's spectral kurtosis. The band grid is fixed in hertz, so a
recording and its copy at another sample rate are cut into the same bands: the choice
is made at the native rate, before any decimation, and a 12 kHz recording upsampled to
96 kHz picks the band it picked at 12 kHz.

The chosen band is then demodulated: its bins, shifted to zero frequency, inverse-
transformed at a low rate (twice the bandwidth: the squared envelope of a signal of
bandwidth ``B`` occupies ``[-B, B]``), squared, and transformed again. This is decimation
after demodulation: the envelope is low-frequency, the carrier is not, so resampling
first (as a fixed 12 kHz encoder did) would cut off every resonance above 6 kHz.

Pure numpy on batches of rows; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from faultline.encoders.dsp import mean_last, periodic_hann, row_chunks

__all__ = [
    "BANDWIDTHS_HZ",
    "Bands",
    "content_edge_hz",
    "select_bands",
    "squared_envelope_spectra",
]

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]

BANDWIDTHS_HZ = (1000.0, 2000.0, 4000.0)
"""Kurtogram levels. At least 1 kHz so that a band holds several harmonics of the defect
rate and its shaft-rate sidebands (the envelope of a band ``B`` wide carries modulation up
to ``B / 2``); at most 4 kHz, past which a band mixes several resonances and the noise of
the others dilutes the impacts' kurtosis."""
MIN_BANDWIDTH_DEFECT_ORDERS = 6.0
"""A band must be at least this many times the highest defect rate (BPFI) wide, so that
its envelope carries the first three harmonics with their sidebands."""
MIN_LOW_EDGE_HZ = 500.0
"""Bands start above the shaft-harmonic and mains region, where impacts do not ring."""
MAX_BAND_DROP_DB = 40.0
"""A band this far under the strongest band of its level holds no signal worth reading.
A choice made on CWRU's evaluation (docs/EVALUATION.md): without it the empty top octaves
of 12 kHz records upsampled to 48/96 kHz win on rounding spikes (20 of 39 recordings
agree across rates); at 40 dB 36 of 39 agree (84 % of windows); at 20 dB 98 % of windows
agree but the impulsive band is often a weak one, and every diagnostic split loses
0.05-0.2 of balanced accuracy."""
MAX_HIGH_EDGE_NYQUIST = 0.9
"""Bands end below 90 % of Nyquist: anti-aliasing filters roll off above. The same share
applies to a content edge found inside the spectrum (:func:`content_edge_hz`)."""
EDGE_STEP_HZ = 250.0
"""Resolution of the content-edge search: levels are read in sub-bands this wide."""
EDGE_BELOW_HZ = 1000.0
"""The content level at a candidate edge: the median sub-band level of this span below it."""
EDGE_MIN_ABOVE_HZ = 2000.0
"""An edge leaves at least this much empty spectrum above it (a native recording's own
roll-off in its last 10 % is not an edge: the Nyquist share handles that)."""
EDGE_CONTRAST_DB = 15.0
"""Every sub-band above an edge lies at least this far under the content just below it.
Measured on CWRU 1-s windows (docs/EVALUATION.md): native 12 kHz windows reach 2.9 dB at
most and UESTC's 20 kHz windows 10.2, their copies upsampled to 48/96 kHz 15-28 dB (the
polyphase filter's stopband holds images of the content about 40-50 dB down); chosen
with these figures in view."""


@dataclass(frozen=True, slots=True)
class Bands:
    """The demodulation band chosen for each row: centre and width (Hz) and its spectral
    kurtosis (0 for Gaussian noise, the larger the more impulsive)."""

    centre_hz: F64
    bandwidth_hz: F64
    kurtosis: F64


@lru_cache(maxsize=64)
def _taper(width: int) -> F64:
    """Hann taper over a band: half-overlapping bands then sum to a flat response."""
    w: F64 = np.hanning(width + 2)[1:-1]
    w.flags.writeable = False
    return w


@lru_cache(maxsize=64)
def _pair_taper(width: int) -> F64:
    """:func:`_taper` with each value twice: it scales a complex band viewed as (re, im)
    float pairs (read-only, cached)."""
    w: F64 = np.repeat(_taper(width), 2)
    w.flags.writeable = False
    return w


@lru_cache(maxsize=64)
def _band_grid(bandwidth_hz: float, df: float, fs: float) -> tuple[int, npt.NDArray[np.intp]]:
    """Bins per band and the first bin of each band, on a grid fixed in hertz (read-only,
    cached: every window of a shape uses the same)."""
    width = max(8, round(bandwidth_hz / df))
    half_hz = bandwidth_hz / 2.0
    top_hz = MAX_HIGH_EDGE_NYQUIST * fs / 2.0
    k_first = int(np.ceil(MIN_LOW_EDGE_HZ / half_hz))
    k_last = int(np.floor((top_hz - bandwidth_hz) / half_hz))
    if k_last < k_first:
        starts = np.zeros(0, dtype=np.intp)
    else:
        starts = np.round(np.arange(k_first, k_last + 1) * half_hz / df).astype(np.intp)
    starts.flags.writeable = False
    return width, starts


def _band_kurtosis(
    spec: C128, rows: npt.NDArray[np.intp], starts: npt.NDArray[np.intp], width: int
) -> tuple[F64, F64]:
    """Spectral kurtosis and mean power of every band of ``spec[rows]``: (rows, bands) each.

    All of a level's bands of a chunk of rows go through one batched inverse FFT, in place
    in a reused buffer; each band's envelope power is reduced to its mean and its mean
    square in the same buffers. Chunks (:func:`~faultline.encoders.dsp.row_chunks`) keep
    the buffers in cache: the band gather is twice the spectrum's size, and streaming it
    through memory cost more than the inverse FFTs themselves (select_bands on 16 windows
    of 48 kHz: 4.4 ms per window with chunks of 10 rows and fresh temporaries, 1.9 with
    256 KB chunks in reused buffers).

    Complex rows are handled as (re, im) float pairs where that is the same arithmetic
    and cheaper: the taper scales both parts (numpy would multiply by a complex taper),
    and the power is re * re + im * im of one contiguous product. On the usual evenly
    spaced grid the bands are read through a strided view of the spectrum, gathered and
    tapered in one pass.
    """
    n_bands = starts.size
    if int(starts[-1]) + width > spec.shape[-1]:
        raise ValueError("band grid beyond the spectrum")
    taper2 = _pair_taper(width)
    hop = int(starts[1] - starts[0]) if n_bands > 1 else 0
    strided = None
    if n_bands < 2 or bool(np.all(np.diff(starts) == hop)):
        floats = np.ascontiguousarray(spec).view(np.float64)
        # A view of every row's bands (numpy checks it stays inside the spectrum); the
        # ndarray constructor costs a quarter of as_strided, which matters at batch 1.
        strided = np.ndarray(
            (spec.shape[0], n_bands, 2 * width),
            np.float64,
            floats,
            offset=16 * int(starts[0]),
            strides=(floats.strides[0], 16 * hop, 8),
        )
        strided.flags.writeable = False
    else:
        idx = starts[:, None] + np.arange(width)[None, :]
    kurt = np.empty((rows.size, n_bands))
    mean_power = np.empty_like(kurt)
    chunks = row_chunks(rows.size, 16 * n_bands * width)
    bins = np.empty((chunks[0].stop, n_bands, width), dtype=np.complex128)
    square_buf = np.empty((*bins.shape[:-1], 2 * width))
    power_buf = np.empty(bins.shape)
    for part in chunks:
        chunk = rows[part]
        z = bins[: chunk.size]
        pairs = z.view(np.float64)
        first, last = int(chunk[0]), int(chunk[-1])
        if strided is not None and last - first == chunk.size - 1:  # the usual: all rows
            np.multiply(strided[first : last + 1], taper2, out=pairs)
        else:
            for k, row in enumerate(chunk.tolist()):
                if strided is not None:
                    np.multiply(strided[row], taper2, out=pairs[k])
                else:
                    np.take(spec[row], idx, out=z[k])
                    pairs[k] *= taper2
        pairs = sfft.ifft(z, axis=-1, overwrite_x=True).view(np.float64)  # in place, usually
        square = np.multiply(pairs, pairs, out=square_buf[: chunk.size])
        power = np.add(square[..., 0::2], square[..., 1::2], out=power_buf[: chunk.size])
        m2 = mean_last(power)
        power *= power
        m4 = mean_last(power)
        kurt[part] = m4 / np.maximum(m2 * m2, 1e-300) - 2.0
        mean_power[part] = m2
    return kurt, mean_power


def content_edge_hz(spec: C128, n: int, fs: float) -> F64:
    """Where each row's real content ends (Hz), or ``inf`` where it fills the band.

    A recording made at a low rate and resampled up (a 12 kHz record sent at 96 kHz), or
    a sensor whose own bandwidth ends far below Nyquist, has an empty top: only the
    resampler's stopband images and rounding noise live there, yet a kurtogram compares
    bands by kurtosis, which ignores level, and picks a band straddling the edge. The
    edge is the highest sub-band boundary ``e`` (``EDGE_STEP_HZ`` grid) whose
    ``EDGE_BELOW_HZ`` below stand (median) ``EDGE_CONTRAST_DB`` above every sub-band from
    ``e`` up to 90 % of Nyquist, with at least ``EDGE_MIN_ABOVE_HZ`` of spectrum above it.
    """
    spec = np.asarray(spec)
    rows = spec.shape[0]
    df = fs / n
    width = max(1, round(EDGE_STEP_HZ / df))
    step = width * df
    top = int(MAX_HIGH_EDGE_NYQUIST * fs / 2.0 / step)
    below = round(EDGE_BELOW_HZ / step)
    above = round(EDGE_MIN_ABOVE_HZ / step)
    out: F64 = np.full(rows, np.inf)
    if top - above < below or top * width > spec.shape[-1]:
        return out
    power = spec[:, : top * width].real ** 2 + spec[:, : top * width].imag ** 2
    level = 10.0 * np.log10(power.reshape(rows, top, width).mean(axis=-1) + 1e-300)
    # Content just below each candidate edge e (sub-bands e - below .. e - 1) ...
    windows = np.lib.stride_tricks.sliding_window_view(level, below, axis=-1)
    content = np.median(windows, axis=-1)[:, : top - above - below + 1]
    # ... against the loudest sub-band from e up.
    loudest = np.maximum.accumulate(level[:, ::-1], axis=-1)[:, ::-1]
    ceiling = loudest[:, below : top - above + 1]
    ok = content - ceiling >= EDGE_CONTRAST_DB
    found = ok.any(axis=-1)
    last = ok.shape[-1] - 1 - np.argmax(ok[:, ::-1], axis=-1)
    out[found] = (last[found] + below) * step
    return out


def select_bands(spec: C128, n: int, fs: float, defect_hz: F64) -> Bands:
    """The most impulsive band of each row (the filter-bank kurtogram's maximum).

    ``spec``: rfft of ``n`` unwindowed samples at ``fs`` per row; ``defect_hz``: (rows,) the
    highest defect rate (BPFI) of each row's bearing at its speed, which sets the narrowest
    band allowed. A row with no admissible band (a sample rate too low for the bearing's
    speed) gets the widest band the rate allows.
    """
    spec = np.asarray(spec, dtype=np.complex128)  # the band buffers are complex128
    rows = spec.shape[0]
    df = fs / n
    best_k = np.full(rows, -np.inf)
    best_c = np.zeros(rows)
    best_bw = np.zeros(rows)
    min_bw = MIN_BANDWIDTH_DEFECT_ORDERS * np.asarray(defect_hz, dtype=np.float64)
    # Bands end below 90 % of where the content ends, as they end below 90 % of Nyquist.
    ceiling = MAX_HIGH_EDGE_NYQUIST * content_edge_hz(spec, n, fs)
    for bandwidth in BANDWIDTHS_HZ:
        width, starts = _band_grid(bandwidth, df, fs)
        if starts.size == 0:
            continue
        allowed = (min_bw <= bandwidth) | (bandwidth == BANDWIDTHS_HZ[-1])
        if not allowed.any():
            continue
        rows_here = np.flatnonzero(allowed)
        kurt, power = _band_kurtosis(spec, rows_here, starts, width)
        # Kurtosis ignores scale, so a band holding nothing but the anti-aliasing filter's
        # leakage (a 12 kHz recording resampled to 96 kHz is empty above 6 kHz) could win
        # on a few rounding spikes: only bands within MAX_BAND_DROP_DB of the level's
        # strongest band compete.
        floor = power.max(axis=-1, keepdims=True) * 10.0 ** (-MAX_BAND_DROP_DB / 10.0)
        inside = (starts * df + width * df)[None, :] <= ceiling[rows_here, None]
        kurt = np.where((power >= floor) & inside, kurt, -np.inf)
        j = kurt.argmax(axis=-1)
        value = kurt[np.arange(kurt.shape[0]), j]
        better = value > best_k[rows_here]
        chosen = rows_here[better]
        best_k[chosen] = value[better]
        best_c[chosen] = (starts[j[better]] + width / 2.0) * df
        best_bw[chosen] = width * df
    missing = ~np.isfinite(best_k)
    if missing.any():  # too low a rate for any band: demodulate what there is
        top = MAX_HIGH_EDGE_NYQUIST * fs / 2.0
        lo = min(MIN_LOW_EDGE_HZ, top / 4.0)
        best_c[missing] = (lo + top) / 2.0
        best_bw[missing] = top - lo
        best_k[missing] = 0.0
    return Bands(best_c, best_bw, best_k)


def squared_envelope_spectra(spec: C128, n: int, fs: float, bands: Bands) -> tuple[F64, float]:
    """Squared-envelope amplitude spectra of each row demodulated in its own band.

    Returns (rows, bins) spectra and their bin spacing (1 / window duration, the same as
    the raw spectrum's, whatever the sample rate). Every row's envelope is sampled at twice
    the widest band in the batch, so all rows share one length. The transforms run in
    chunks of rows (:func:`~faultline.encoders.dsp.row_chunks`), in place where they can.
    """
    rows = spec.shape[0]
    df = fs / n
    widths = np.maximum(8, np.round(bands.bandwidth_hz / df)).astype(np.intp)
    starts = np.round((bands.centre_hz - bands.bandwidth_hz / 2.0) / df).astype(np.intp)
    starts = np.clip(starts, 1, spec.shape[-1] - widths)
    length = int(2 * widths.max())
    # Complex rows as (re, im) float pairs, as in _band_kurtosis: the same numbers.
    floats = np.ascontiguousarray(spec, dtype=np.complex128).view(np.float64)
    shifted = np.zeros((rows, length), dtype=np.complex128)
    shifted_pairs = shifted.view(np.float64)
    for row, (start, width) in enumerate(zip(starts.tolist(), widths.tolist(), strict=True)):
        np.multiply(
            floats[row, 2 * start : 2 * (start + width)],
            _pair_taper(width),
            out=shifted_pairs[row, : 2 * width],
        )
    window = periodic_hann(length)
    gain = 2.0 / window.sum()
    out: F64 = np.empty((rows, length // 2 + 1))
    for part in row_chunks(rows, shifted[0].nbytes):
        pairs = sfft.ifft(shifted[part], axis=-1, overwrite_x=True).view(np.float64)
        pairs *= pairs
        power = np.add(pairs[:, 0::2], pairs[:, 1::2])
        power -= mean_last(power, keepdims=True)
        power *= window
        np.abs(sfft.rfft(power, axis=-1), out=out[part])
        out[part] *= gain
    return out, df
