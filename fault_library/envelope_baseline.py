"""The classical envelope-analysis baseline every evaluation table prints beside ours.

What a vibration analyst does with no library at all: band-pass a fixed band, take the
Hilbert envelope (:func:`faultline.encoders.dsp.envelope_spectrum`, the textbook path),
read the BPFO, BPFI and 2xBSF harmonics against the local median of the envelope spectrum,
and call the family whose harmonics stand highest above their threshold; nothing above
any threshold is ``normal``. Thresholds are fitted on the training side of each fold with
the same fitting as the product's line check (:func:`physics.fit_rules`), so the two
differ only in what they read: a fixed band and the envelope versus the band chosen by
spectral kurtosis, the squared envelope, retrieval, the quality gate and absence.

Pure: arrays in, labels out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from faultline.encoders.dsp import envelope_spectrum
from faultline.encoders.features import FeatureParams, characteristic_orders, line_prominence
from faultline.encoders.geometry import BearingGeometry
from faultline.fault_library.physics import FamilyRule, Indicator, LineEvidenceReader, fit_rules

__all__ = ["BASELINE_BAND_HZ", "BASELINE_RULES", "EnvelopeBaseline", "baseline_features"]

F64 = npt.NDArray[np.float64]

BASELINE_BAND_HZ = (2000.0, 5800.0)
"""The fixed band: the usual "a few kHz" choice, clipped below Nyquist on slow rates."""
_PARAMS = FeatureParams()
BASELINE_RULES: tuple[FamilyRule, ...] = tuple(
    FamilyRule(
        label, (Indicator(f"envelope {name} 1-3x", tuple(f"{name}_{k}" for k in (1, 2, 3)), 15.0),)
    )
    for label, name in (("outer_race", "bpfo"), ("inner_race", "bpfi"), ("ball", "2bsf"))
)


def baseline_features(
    x: npt.ArrayLike, fs: float, rpm: Sequence[float], geometry: Sequence[BearingGeometry]
) -> tuple[tuple[str, ...], F64]:
    """Envelope-spectrum line prominences (feature-scaled like ``line_prominence``) of
    equal-length rows ``x`` sampled at ``fs``; names are ``characteristic_orders``'."""
    rows = np.atleast_2d(np.asarray(x, dtype=np.float64))
    band = (BASELINE_BAND_HZ[0], min(BASELINE_BAND_HZ[1], 0.45 * fs))
    freqs, env = envelope_spectrum(rows, fs, band)
    df = float(freqs[1] - freqs[0])
    names, _ = characteristic_orders(geometry[0])
    orders = np.stack([characteristic_orders(g)[1] for g in geometry])
    shaft = np.asarray(rpm, dtype=np.float64) / 60.0
    return names, line_prominence(env, df, shaft, orders, _PARAMS)


class EnvelopeBaseline:
    """Fit on training windows' features and labels, then label any windows."""

    def __init__(self, names: Sequence[str], features: npt.ArrayLike, labels: Sequence[str]):
        rules = fit_rules(
            names, features, labels, offset_db=_PARAMS.prominence_offset_db, rules=BASELINE_RULES
        )
        self.rules = rules
        self._reader = LineEvidenceReader(
            names, offset_db=_PARAMS.prominence_offset_db, rules=rules
        )

    def predict(self, features: npt.ArrayLike) -> list[str]:
        out = []
        for evidence in self._reader.read(features):
            present = evidence.present(corroborated=True)
            out.append(present[0] if present else "normal")
        return out
