"""Feature blocks computed from DSP outputs, on a shaft-order axis where physics allows.

A defect line sits at a fixed multiple of shaft speed set by the bearing geometry, so
features read at those orders land in the same position for any machine, speed and
bearing. Every block is also made independent of sensor gain (ratios, dB, log-shapes),
so a library built on one rig can answer for another.

All functions take batches (rows) and return ``(n, k)`` float64 arrays; the encoder
concatenates and weights them. No state, no I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from scipy.ndimage import uniform_filter1d

from faultline.encoders.dsp import SampleMoments, sample_moments
from faultline.encoders.geometry import BearingGeometry

__all__ = [
    "BAND_KURTOSIS_NAME",
    "COMB",
    "ENVELOPE",
    "KURTOSIS_NAME",
    "RAW",
    "TIME_STAT_NAMES",
    "FeatureParams",
    "band_kurtosis_feature",
    "band_profile",
    "characteristic_orders",
    "comb_correlation",
    "line_name",
    "line_prominence",
    "order_profile",
    "order_profile_names",
    "time_stats",
]

F64 = npt.NDArray[np.float64]

# --- the feature-name contract ---------------------------------------------------------
# Every name a feature vector's columns carry is spelled here, once: the encoder lays its
# blocks out with these, the line check (fault_library/physics.py) and the evaluation's
# ablations find their columns by them.
KURTOSIS_NAME = "log_kurtosis"
TIME_STAT_NAMES = (KURTOSIS_NAME, "log_crest", "skewness", "log_rms", "log_peak_to_peak")
BAND_KURTOSIS_NAME = "log_band_kurtosis"
"""log10(1 + spectral kurtosis) of the demodulation band: 0 for Gaussian noise."""
ENVELOPE = "env_"
"""Prefix of what is read from the squared-envelope spectrum of the chosen band."""
RAW = "raw_"
"""Prefix of what is read from the raw (Hann amplitude) spectrum."""
COMB = "comb_"
"""Prefix of what is read from the spectrum's autocorrelation (the spectrum view's envelope
stand-in)."""


def line_name(prefix: str, line: str) -> str:
    """The column of characteristic line ``line`` (``characteristic_orders``' names, e.g.
    ``bpfo_2``) read from the spectrum ``prefix`` names (``ENVELOPE``, ``RAW``, ``COMB``)."""
    return f"{prefix}{line}"


@dataclass(frozen=True)
class FeatureParams:
    """Every number that changes the feature vector; its digest goes into the model id.

    A library built with other parameters then fails the model-id check instead of
    silently comparing vectors that mean different things.
    """

    search_tol: float = 0.015  # +- relative search around a line: speed/geometry error
    baseline_orders: float = 0.5  # +- half-width (orders) of the local median under a line
    prominence_cap_db: float = 30.0
    prominence_offset_db: float = 3.0  # noise alone reads a few dB (max over the search span)
    order_step: float = 0.25
    max_order: float = 12.0
    profile_bands: int = 28
    profile_range_hz: tuple[float, float] = (20.0, 5800.0)
    comb_band_hz: tuple[float, float] = (2000.0, 5800.0)
    comb_whiten_hz: float = 40.0
    # Block weights. encode() divides each block by its typical spread (see
    # spectrum._BLOCK_SCALE) and by sqrt(block size), so a weight is roughly the block's
    # share of the vector's variation whatever its length. Chosen on CWRU
    # leave-one-fault-size-out over a coarse grid, preferring the plateau over the peak
    # (so that evaluation is optimistic by the selection; `faultline eval --ablation` prints the
    # ablations). What the grid said: the comb and raw-profile blocks carry
    # most of the cross-bearing signal; time statistics and the gain-dependent levels
    # separate healthy from damaged but track fault size more than fault type, so they
    # stay small; the raw lines carry the rig's own healthy lines (3.6x and 5.4x shaft
    # on CWRU, next to BPFO and BPFI), so they stay small too.
    w_time: float = 0.3
    w_impulse: float = 0.3
    w_env_lines: float = 0.5
    w_env_orders: float = 0.5
    w_raw_profile: float = 1.0
    w_raw_lines: float = 0.3
    w_comb_lines: float = 1.2
    w_comb_orders: float = 0.8

    def digest(self) -> str:
        """Short stable hash of the parameters (8 hex digits)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


def characteristic_orders(geometry: BearingGeometry) -> tuple[tuple[str, ...], F64]:
    """Names and shaft orders of the lines a bearing fault (or the shaft) produces.

    1x/2x (unbalance, misalignment), FTF (cage), BPFO x1..4 (outer race: fixed defect,
    plain harmonics), BPFI x1..4 and their +-1x sidebands (inner race: the defect turns
    with the shaft through the load zone, so its hits are amplitude-modulated at 1x),
    BSF and 2xBSF x1..3 (a ball defect hits both races once per spin).
    """
    o = geometry.orders()
    names: list[str] = ["1x", "2x", "ftf"]
    values: list[float] = [1.0, 2.0, o.ftf]
    for k in range(1, 5):
        names.append(f"bpfo_{k}")
        values.append(k * o.bpfo)
    for k in range(1, 5):
        names += [f"bpfi_{k}", f"bpfi_{k}_lsb", f"bpfi_{k}_usb"]
        values += [k * o.bpfi, k * o.bpfi - 1.0, k * o.bpfi + 1.0]
    names.append("bsf")
    values.append(o.bsf)
    for k in range(1, 4):
        names.append(f"2bsf_{k}")
        values.append(2 * k * o.bsf)
    return tuple(names), np.asarray(values, dtype=np.float64)


_SEARCH_STEPS = np.linspace(-1.0, 1.0, 21)
"""Where a line's peak is looked for, in units of its search half-width."""
_BASELINE_STEPS = np.linspace(-1.0, 1.0, 41)
"""Where its neighbourhood's median is read, in units of the baseline half-width."""
_SEARCH_STEPS.flags.writeable = False
_BASELINE_STEPS.flags.writeable = False


def _interp_rows(values: F64, positions: F64) -> F64:
    """``values[r]`` linearly interpolated at fractional bins ``positions[r, ...]``.

    Runs for every line of every window, mostly on small arrays, so it avoids numpy's
    per-call overheads (np.clip, np.take_along_axis): the same numbers, read by flat index.
    """
    n_rows, n_bins = values.shape
    pos = np.minimum(np.maximum(positions, 0.0), n_bins - 1.000001)
    i0 = pos.astype(np.intp)
    frac = pos - i0
    flat_index = i0.reshape(n_rows, -1)
    flat_index += np.arange(0, n_rows * n_bins, n_bins)[:, None]
    flat = np.ascontiguousarray(values).reshape(-1)
    left = flat[flat_index].reshape(positions.shape)
    flat_index += 1
    right = flat[flat_index].reshape(positions.shape)
    out: F64 = left * (1.0 - frac) + right * frac
    return out


def _median_last(values: F64) -> F64:
    """``np.median(values, axis=-1)`` for an odd-length last axis, without its per-call
    overhead: the middle order statistic, NaN where a row holds NaN (as numpy's)."""
    size = values.shape[-1]
    middle = size // 2
    part = np.partition(values, (middle, size - 1), axis=-1)
    out: F64 = part[..., middle].copy()
    out[np.isnan(part[..., -1])] = np.nan  # NaNs sort last
    return out


def line_prominence(
    mag: F64,
    df: float,
    shaft_hz: F64,
    orders: F64,
    params: FeatureParams,
    *,
    log_scale: bool = True,
) -> F64:
    """How far each characteristic line stands above its neighbourhood.

    ``mag``: (n, bins) spectra with spacing ``df``; ``shaft_hz``: (n,); ``orders``: (n, m).
    The peak is the maximum within +-``search_tol`` (at least one bin) of the expected
    frequency; the neighbourhood is the median over +-``baseline_orders``. With
    ``log_scale`` the result is dB (amplitude spectra); otherwise a plain difference
    (for correlation curves, which can be negative).
    """
    centre = orders * shaft_hz[:, None]  # (n, m) Hz
    half = np.maximum(params.search_tol * centre, df)
    search = (centre[..., None] + half[..., None] * _SEARCH_STEPS) / df
    peak = _interp_rows(mag, search).max(axis=-1)
    wide = np.maximum(params.baseline_orders * shaft_hz[:, None], 8.0 * df)
    around = (centre[..., None] + wide[..., None] * _BASELINE_STEPS) / df
    base = _median_last(_interp_rows(mag, around))
    out_of_range = centre + half >= (mag.shape[-1] - 1) * df
    if log_scale:
        floor = 1e-12 * (mag.max(axis=-1, keepdims=True) + 1e-30)
        db = 20.0 * np.log10((peak + floor) / (base + floor))
        prom = np.clip(db - params.prominence_offset_db, 0.0, params.prominence_cap_db) / 10.0
    else:
        prom = np.clip(peak - base, 0.0, None)
    prom = np.where(out_of_range, 0.0, prom)
    return np.asarray(prom, dtype=np.float64)


def order_profile_names(params: FeatureParams) -> tuple[str, ...]:
    centres = np.arange(params.order_step, params.max_order + 1e-9, params.order_step)
    return tuple(f"o{c:.2f}" for c in centres)


def order_profile(
    values: F64, df: float, shaft_hz: F64, params: FeatureParams, *, log_scale: bool = True
) -> F64:
    """Mean of ``values`` in overlapping order bins (width 2 steps) up to ``max_order``.

    A coarse order spectrum keeps what the named lines miss (unnamed harmonics, raised
    floors) while staying put when speed or geometry is off by a percent. Overlap keeps a
    line near a bin edge from flipping between bins. ``log_scale``: log10 of mean power,
    centred per row so only the shape counts.
    """
    centres = np.arange(params.order_step, params.max_order + 1e-9, params.order_step)
    lo = (centres - params.order_step)[None, :] * shaft_hz[:, None] / df
    hi = (centres + params.order_step)[None, :] * shaft_hz[:, None] / df
    data = values**2 if log_scale else values
    cum = np.concatenate([np.zeros((data.shape[0], 1)), np.cumsum(data, axis=-1)], axis=-1)
    # cum[:, i] = sum of bins < i; bin j covers [j - 0.5, j + 0.5) in bin units.
    area = _interp_rows(cum, hi + 0.5) - _interp_rows(cum, lo + 0.5)
    mean = area / np.maximum(hi - lo, 1e-9)
    if not log_scale:
        return np.asarray(mean, dtype=np.float64)
    logp = np.log10(np.maximum(mean, 1e-30))
    logp = np.maximum(logp, logp.max(axis=-1, keepdims=True) - 8.0)
    out: F64 = logp - logp.mean(axis=-1, keepdims=True)
    return out


def band_profile(mag: F64, df: float, params: FeatureParams) -> F64:
    """Share of energy in log-spaced bands (log10), relative to the window's total.

    Where the energy sits (resonances excited, broadband rise) separates conditions
    that have no clean line; dividing by the total removes the sensor's gain.
    Bands above the Nyquist frequency read as the floor.
    """
    lo_hz, hi_hz = params.profile_range_hz
    edges = np.geomspace(lo_hz, hi_hz, params.profile_bands + 1) / df
    power = mag**2
    cum = np.concatenate([np.zeros((power.shape[0], 1)), np.cumsum(power, axis=-1)], axis=-1)
    pos = np.broadcast_to(edges + 0.5, (power.shape[0], edges.size))
    at = _interp_rows(cum, np.ascontiguousarray(pos))
    band = np.diff(at, axis=-1)
    total = at[:, -1:] - at[:, :1]
    share = band / np.maximum(total, 1e-30)
    white = np.diff(edges) / (edges[-1] - edges[0])
    logs = np.log10(np.maximum(share, 1e-8) / white)
    out: F64 = logs - logs.mean(axis=-1, keepdims=True)
    return out


def band_kurtosis_feature(kurtosis: F64) -> F64:
    """Spectral kurtosis of the chosen band on a log scale (``BAND_KURTOSIS_NAME``)."""
    out: F64 = np.log10(1.0 + np.maximum(np.asarray(kurtosis, dtype=np.float64), 0.0))
    return out


def time_stats(x: F64, moments: SampleMoments | None = None) -> F64:
    """Kurtosis, crest factor, skewness, RMS and peak-to-peak of each row.

    Impacts raise kurtosis and crest before any line shows. Each is expressed relative to
    Gaussian noise (log10 kurtosis/3, log10 crest/4, skewness), so a featureless signal
    reads about zero; RMS and peak-to-peak (log10, relative to 0.1 unit) depend on the
    sensor's gain and units, which is why they carry little weight.

    ``moments``: ``sample_moments(x)`` when the caller has them (the window blocks carry
    them for the quality gate too); else they are computed here.
    """
    m = sample_moments(x) if moments is None else moments
    rms = np.sqrt(np.maximum(m.var, 1e-30))
    # The centred rows' extremes: rounding is monotonic, so max(x - mean) is max(x) - mean.
    top = m.top - m.mean
    bottom = m.bottom - m.mean
    peak = np.maximum(top, -bottom)  # max |x - mean|
    p2p = top - bottom
    skew = m.third / np.maximum(rms**3, 1e-45)
    kurt = m.fourth / np.maximum(m.var**2, 1e-60)
    return np.stack(
        [
            np.log10(np.maximum(kurt, 1e-3) / 3.0),
            np.log10(np.maximum(peak / rms, 1e-3) / 4.0),
            np.clip(skew, -5.0, 5.0),
            np.log10(rms / 0.1),
            np.log10(np.maximum(p2p, 1e-30) / 0.8),
        ],
        axis=-1,
    )


def comb_correlation(mag: F64, df: float, params: FeatureParams) -> F64:
    """Autocorrelation, over frequency lag, of the whitened spectrum in the comb band.

    Without phase there is no Hilbert envelope, but a train of impacts exciting a
    resonance still leaves a comb of lines spaced by the impact rate; the spectrum's
    autocorrelation peaks at that spacing, so reading it at the defect frequencies is an
    envelope-spectrum proxy. Returns (n, lags) normalised to 1 at lag 0; lag j is j*df Hz.
    """
    lo = int(np.ceil(params.comb_band_hz[0] / df))
    hi = min(mag.shape[-1], int(params.comb_band_hz[1] / df) + 1)
    if hi - lo < 16:
        return np.zeros((mag.shape[0], max(hi - lo, 1)))
    level = 20.0 * np.log10(mag[:, lo:hi] + 1e-12 * (mag.max(axis=-1, keepdims=True) + 1e-30))
    size = max(3, round(params.comb_whiten_hz / df) | 1)
    white = level - uniform_filter1d(level, size=size, axis=-1, mode="nearest")
    white = np.clip(white, 0.0, params.prominence_cap_db)
    white -= white.mean(axis=-1, keepdims=True)
    m = white.shape[-1]
    nfft = 1 << int(np.ceil(np.log2(2 * m)))
    spec = np.fft.rfft(white, nfft, axis=-1)
    acf = np.fft.irfft(spec.real**2 + spec.imag**2, nfft, axis=-1)[:, :m]
    acf /= np.maximum(m - np.arange(m), m // 4)
    zero = acf[:, :1]
    out: F64 = np.divide(acf, zero, out=np.zeros_like(acf), where=zero > 0)
    return out
