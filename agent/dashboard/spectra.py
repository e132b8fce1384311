"""The pictures an analyst checks an alert against: the window's spectrum and its
squared-envelope spectrum, with the bearing's defect frequencies at the window's speed.

Computed when a page asks (never on the hot path), from the latest raw message of the
asset, and cut to a few thousand points with a peak-keeping decimation so a defect line
survives the reduction. The envelope is demodulated in the band the encoder itself
would choose (spectral-kurtosis filter bank): the one call into the DSP modules is
:func:`_squared_envelope`, kept alone so it follows their refactors easily.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import fft as sfft

from faultline.encoders.demodulation import select_bands, squared_envelope_spectra
from faultline.encoders.dsp import hann_spectra_from_rfft
from faultline.encoders.geometry import BearingGeometry
from faultline.encoders.signals import Measurement, Window

__all__ = ["HARMONICS", "defect_markers", "spectra_of"]

F64 = npt.NDArray[np.float64]

HARMONICS = 4
"""Markers per defect family: the fundamental and its harmonics up to this multiple."""

ENVELOPE_SPAN_BPFI = 4.6
"""The envelope plot spans 0 to this many BPFI (all four BPFI harmonics and sidebands)."""

ENVELOPE_SPAN_UNKNOWN_HZ = 1000.0


def defect_markers(geometry: BearingGeometry, rpm: float) -> list[dict[str, Any]]:
    """BPFO, BPFI, BSF and FTF with their harmonics, and the shaft's 1x, in Hz."""
    hz = geometry.frequencies_hz(rpm)
    families = {"BPFO": hz.bpfo, "BPFI": hz.bpfi, "BSF": hz.bsf, "FTF": hz.ftf}
    markers = [{"family": "1x", "k": 1, "hz": round(rpm / 60.0, 3)}]
    for family, base in families.items():
        markers += [
            {"family": family, "k": k, "hz": round(k * base, 3)} for k in range(1, HARMONICS + 1)
        ]
    return markers


def _peaks(values: F64, df: float, hz_max: float, points: int) -> dict[str, Any]:
    """``values`` (bin spacing ``df``) up to ``hz_max``, reduced to at most ``points`` by
    keeping each group's maximum (a line stays as tall as it was)."""
    keep = max(1, min(values.size, int(hz_max / df) + 1))
    values = values[:keep]
    factor = max(1, -(-keep // points))
    usable = (keep // factor) * factor
    reduced = values[:usable].reshape(-1, factor).max(axis=1) if usable else values
    return {
        "df": df * factor,
        "values": [float(f"{v:.4g}") for v in reduced.astype(np.float64)],
    }


def _squared_envelope(x: F64, fs: float, bpfi_hz: float) -> tuple[F64, float, dict[str, float]]:
    """The squared-envelope spectrum in the most impulsive band (the encoder's choice)."""
    spec = sfft.rfft(x[None, :], axis=-1)
    bands = select_bands(spec, x.size, fs, np.asarray([bpfi_hz]))
    env, df = squared_envelope_spectra(spec, x.size, fs, bands)
    band = {
        "centre_hz": float(bands.centre_hz[0]),
        "bandwidth_hz": float(bands.bandwidth_hz[0]),
        "kurtosis": float(bands.kurtosis[0]),
    }
    return env[0], float(df), band


def spectra_of(
    item: Measurement, rpm: float | None, geometry: BearingGeometry, points: int
) -> dict[str, Any]:
    """Spectrum (and, for a raw window, envelope spectrum) of ``item`` with the markers."""
    out: dict[str, Any] = {
        "asset": item.asset,
        "ts": item.ts,
        "fs": item.fs,
        "rpm": rpm,
        "bearing": geometry.name,
        "markers": [] if rpm is None else defect_markers(geometry, rpm),
        "envelope": None,
    }
    if isinstance(item, Window):
        x = np.asarray(item.samples, dtype=np.float64)
        x = x - x.mean()
        mag = hann_spectra_from_rfft(sfft.rfft(x[None, :], axis=-1), x.size)[0]
        out["spectrum"] = _peaks(mag, item.fs / x.size, item.fs / 2.0, points)
        bpfi = geometry.frequencies_hz(rpm).bpfi if rpm is not None else 0.0
        env, env_df, band = _squared_envelope(x, item.fs, bpfi)
        span = ENVELOPE_SPAN_BPFI * bpfi if bpfi > 0 else ENVELOPE_SPAN_UNKNOWN_HZ
        out["envelope"] = {**_peaks(env, env_df, span, points), "band": band}
    else:
        mag = np.asarray(item.magnitude, dtype=np.float64)
        out["spectrum"] = _peaks(mag, item.fs / item.n_fft, item.fs / 2.0, points)
    return out
