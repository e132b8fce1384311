"""The decision sequence of fault_library/diagnosis.py on real signals: the quality gate
first (a pure tone, a clipped window, a constant one are never a fault class, whatever
retrieval says), then vote, lines and absence."""

from __future__ import annotations

import numpy as np
import pytest

from faultline.encoders.quality import assess
from faultline.fault_library.diagnosis import DecisionPolicy, decide_window
from faultline.fault_library.physics import LineEvidence
from faultline.fault_library.verdict import UNKNOWN

FS = 12000.0
T = np.arange(int(FS)) / FS
KNOWN = {"normal", "inner_race", "outer_race", "ball"}
# Retrieval firmly says inner race for all of them: only the gate can refuse.
LABELS = ["inner_race"] * 10
SCORES = [0.95] * 10


def _evidence(kurtosis: float) -> LineEvidence:
    margins = {"outer_race": -9.0, "inner_race": -9.0}
    texts = dict.fromkeys(margins, "no line")
    return LineEvidence(margins, texts, frozenset(margins), margins, texts, kurtosis)


@pytest.mark.parametrize(
    ("name", "signal", "code"),
    [
        ("50 Hz mains pickup", np.sin(2 * np.pi * 50 * T), "tone"),
        ("clipped sine", np.clip(np.sin(2 * np.pi * 29.95 * T), -0.6, 0.6), "clipped"),
        ("constant 1.0", np.ones(T.size), "constant"),
    ],
)
def test_the_quality_gate_answers_before_retrieval(
    name: str, signal: np.ndarray, code: str
) -> None:
    (quality,) = assess(signal, FS)
    verdict = decide_window(
        LABELS,
        SCORES,
        policy=DecisionPolicy(),
        calibration=None,
        known=KNOWN,
        evidence=_evidence(3.0),
        quality=quality,
    )
    assert verdict.label == UNKNOWN, name
    assert verdict.code == code, verdict
    assert verdict.reason is not None
    assert not verdict.reason.startswith(f"{code}: {code}:"), verdict.reason
    # Retrieval alone (gate and lines off) would have called it a fault.
    ungated = decide_window(
        LABELS,
        SCORES,
        policy=DecisionPolicy(quality_gate=False, line_check=False),
        calibration=None,
        known=KNOWN,
        evidence=_evidence(3.0),
        quality=quality,
    )
    assert ungated.label == "inner_race"


def test_a_quiet_window_retrieval_is_unsure_of_is_normal_by_absence() -> None:
    rng = np.random.default_rng(1)
    (quality,) = assess(rng.standard_normal(T.size), FS)
    assert quality.ok
    split = ["inner_race"] * 5 + ["ball"] * 5  # a tie: the vote is ambiguous
    verdict = decide_window(
        split,
        [0.9] * 10,
        policy=DecisionPolicy(),
        calibration=None,
        known=KNOWN,
        evidence=_evidence(3.0),
        quality=quality,
    )
    assert verdict.label == "normal"
    assert verdict.code == "absence"
    off = decide_window(
        split,
        [0.9] * 10,
        policy=DecisionPolicy(absence=False),
        calibration=None,
        known=KNOWN,
        evidence=_evidence(3.0),
        quality=quality,
    )
    assert off.label == UNKNOWN
    assert off.code == "ambiguous"
