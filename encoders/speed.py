"""Shaft speed from a magnitude spectrum, for windows that arrive without an rpm.

Order features need the shaft frequency to 1-2 %. Two kinds of evidence are summed over
candidate fundamentals in 10-100 Hz (600-6000 rpm):

* the harmonic sum of the shaft line: the spectrum (whitened: dB over a local median,
  capped so one huge line cannot outvote the rest) read at f0, 2 f0 and 3 f0, the
  fundamental weighted most;
* line spacing: machines modulate their mid-frequency lines (gear, vane, bearing,
  electrical) at the shaft rate, so the whitened 100-1000 Hz spectrum correlates with
  itself at a lag of f0 and its multiples. This is the magnitude-only view of the envelope
  spectrum and survives where the 1x line is buried (on the CWRU rig the strongest lines
  are a family at 1.8x shaft and mains at 60/120 Hz, which beat a plain harmonic sum).

The winner is then checked for an octave error: if f0/3 or f0/2 scores within 80 % of it,
the lower candidate is taken, because a true fundamental's multiples also score well.
Finally the three harmonics' interpolated peaks refine the estimate below the bin
spacing. Measured on CWRU 1-s windows (12 kHz, all loads, plus 97 and the 48 kHz records
resampled; hop 0.5 s): 719 of 720 windows within 1 % of the file's rpm, 702 within 0.5 %,
median error 0.09 %. The harmonic sum alone managed about 70 % (the 1.8x family and
mains win); the line-spacing term is what makes it work.

Resolution matters: with 1-s spectra (1 Hz bins) or finer it works as above; 8192-point
spectra at 12 kHz (1.46 Hz) still give 98.7 %, 4096-point ones (2.9 Hz) only 44 %.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.ndimage import median_filter

__all__ = ["SHAFT_RANGE_HZ", "estimate_rpm", "estimate_shaft_hz"]

F64 = npt.NDArray[np.float64]

SHAFT_RANGE_HZ = (10.0, 100.0)
_GRID_STEP_HZ = 0.02
_N_HARMONICS = 3
_FUNDAMENTAL_WEIGHT = 3.0
_CAP_DB = 30.0
_WHITEN_HZ = 10.0
_COMB_BAND_HZ = (100.0, 1000.0)
_COMB_WEIGHT = 3.0
_OCTAVE_RATIO = 0.8
_OCTAVE_TOL = 0.01
_REFINE_HARMONICS = 3
_REFINE_MIN_DB = 15.0


def _whiten(mag: F64, df: float) -> F64:
    """Prominence in dB over a ~10 Hz running median, clipped to [0, 30] dB."""
    level = 20.0 * np.log10(mag + 1e-12 * (mag.max(axis=-1, keepdims=True) + 1e-30))
    size = max(5, round(_WHITEN_HZ / df) | 1)
    base = median_filter(level, size=(1, size), mode="nearest")
    out: F64 = np.clip(level - base, 0.0, _CAP_DB)
    return out


def _read(values: F64, positions: F64) -> F64:
    """Rows of ``values`` linearly interpolated at fractional bin ``positions`` (0 outside)."""
    n = values.shape[-1]
    inside = (positions >= 0) & (positions <= n - 1)
    pos = np.clip(positions, 0, n - 1.000001)
    i0 = pos.astype(np.intp)
    frac = pos - i0
    out: F64 = (values[:, i0] * (1 - frac) + values[:, i0 + 1] * frac) * inside
    return out


def _comb(white: F64, df: float, max_lag_bins: int) -> F64:
    """Autocorrelation of the whitened mid band over lags, normalised to 1 at lag 0."""
    lo = int(np.ceil(_COMB_BAND_HZ[0] / df))
    hi = min(white.shape[-1], int(_COMB_BAND_HZ[1] / df) + 1)
    if hi - lo < 8:
        return np.zeros((white.shape[0], max_lag_bins + 1))
    seg = white[:, lo:hi] - white[:, lo:hi].mean(axis=-1, keepdims=True)
    m = seg.shape[-1]
    nfft = 1 << int(np.ceil(np.log2(2 * m)))
    spec = np.fft.rfft(seg, nfft, axis=-1)
    acf = np.fft.irfft(spec * np.conj(spec), nfft, axis=-1)[:, : max_lag_bins + 1]
    lags = np.arange(acf.shape[-1])
    acf = acf / np.maximum(m - lags, 1)
    zero = acf[:, :1]
    out: F64 = np.divide(acf, zero, out=np.zeros_like(acf), where=zero > 0)
    if out.shape[-1] < max_lag_bins + 1:
        out = np.pad(out, ((0, 0), (0, max_lag_bins + 1 - out.shape[-1])))
    return out


def estimate_shaft_hz(
    magnitude: npt.ArrayLike,
    df: float,
    shaft_range_hz: tuple[float, float] = SHAFT_RANGE_HZ,
) -> F64:
    """Shaft frequency (Hz) of each row of amplitude spectra with bin spacing ``df``.

    ``magnitude`` is one spectrum or a batch (rows), bin 0 at 0 Hz; any linear amplitude
    scale works. A 1-s window (1 Hz bins) is enough; coarser bins lose accuracy.
    """
    mag = np.atleast_2d(np.asarray(magnitude, dtype=np.float64))
    if not df > 0:
        raise ValueError(f"bin spacing must be positive, got {df}")
    lo_hz, hi_hz = shaft_range_hz
    top_hz = max(_N_HARMONICS * hi_hz, _COMB_BAND_HZ[1]) + 20.0
    mag = mag[:, : int(top_hz / df) + 2]
    white = _whiten(mag, df)
    grid = np.arange(lo_hz, hi_hz + _GRID_STEP_HZ / 2, _GRID_STEP_HZ)
    comb = _comb(white, df, int(np.ceil(_N_HARMONICS * hi_hz / df)) + 2) * _CAP_DB
    score = np.zeros((mag.shape[0], grid.size))
    for k in range(1, _N_HARMONICS + 1):
        weight = _FUNDAMENTAL_WEIGHT if k == 1 else 1.0
        pos = k * grid / df
        score += weight * (_read(white, pos) + _COMB_WEIGHT * _read(comb, pos))
    best = grid[np.argmax(score, axis=-1)]
    top = score.max(axis=-1)
    for row in range(mag.shape[0]):
        for divisor in (3, 2):
            cand = best[row] / divisor
            sel = (grid >= cand * (1 - _OCTAVE_TOL)) & (grid <= cand * (1 + _OCTAVE_TOL))
            if cand < lo_hz or not sel.any():
                continue
            local = score[row, sel]
            if local.max() >= _OCTAVE_RATIO * top[row]:
                best[row] = grid[sel][np.argmax(local)]
                break
    return _refine(mag, white, df, best)


def _refine(mag: F64, white: F64, df: float, coarse: F64) -> F64:
    """Sharpen each estimate with the interpolated peaks of its clear harmonics.

    The search grid reads the spectrum between bins, which pulls estimates towards bin
    centres (up to half a bin, 1.7 % at 30 Hz with 1-s windows). A parabola through the
    log magnitude of a Hann peak finds its centre to a few hundredths of a bin, and the
    k-th harmonic divides that error by k. Only the first three harmonics are used: the
    fourth sits next to 120 Hz mains on a 4-pole 60 Hz motor and drags the estimate.
    """
    level = np.log(mag + 1e-30)
    n = mag.shape[-1]
    out = coarse.copy()
    for row, f0 in enumerate(coarse):
        total = weight_sum = 0.0
        for k in range(1, _REFINE_HARMONICS + 1):
            centre = k * f0 / df
            half = 1.0
            lo, hi = int(np.floor(centre - half)), int(np.ceil(centre + half))
            if lo < 1 or hi >= n - 1:
                break
            i = lo + int(np.argmax(level[row, lo : hi + 1]))
            if white[row, i] < _REFINE_MIN_DB:
                continue
            a, b, c = level[row, i - 1], level[row, i], level[row, i + 1]
            denom = a - 2 * b + c
            offset = 0.5 * (a - c) / denom if denom < 0 else 0.0
            estimate = (i + float(np.clip(offset, -0.5, 0.5))) * df / k
            # A neighbouring line (mains next to 2x or 4x shaft) would move the estimate
            # by more than the coarse grid's own error; skip it.
            if abs(estimate - f0) > max(_OCTAVE_TOL * f0, 0.6 * df / k):
                continue
            weight = k * float(white[row, i])
            total += weight * estimate
            weight_sum += weight
        if weight_sum > 0:
            out[row] = total / weight_sum
    return out


def estimate_rpm(magnitude: npt.ArrayLike, df: float) -> F64:
    """Shaft speed in rpm of each row (see :func:`estimate_shaft_hz`)."""
    out: F64 = 60.0 * estimate_shaft_hz(magnitude, df)
    return out
