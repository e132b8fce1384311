"""The decision, written once: quality gate -> vote -> own baseline -> lines -> absence.

The streaming pipeline, ``faultline diagnose`` and ``faultline eval`` all call
:func:`decide_window` (the evaluation with its own exact kNN results, the runtime through
:func:`diagnose_batch` with the FAISS library), so a figure in docs/EVALUATION.md is the
figure of the code that runs on the gateway. The sequence:

1. **Signal quality** (:mod:`faultline.encoders.quality`): a constant, clipped, tonal or
   dropped-out window is never a fault; it is ``unknown`` with the quality code.
2. **Vote**: similarity-weighted kNN with calibrated per-class novelty
   (:mod:`faultline.fault_library.verdict`).
3. **Own baseline**: an enrolled asset is judged against its healthy windows
   (:mod:`faultline.fault_library.baseline`).
4. **Lines** (:mod:`faultline.fault_library.physics`): the defect families' lines in the
   squared-envelope spectrum confirm, overrule or refuse the answer.
5. **Normal by absence**: an unenrolled machine whose defect lines are all absent and whose
   window and band kurtosis are Gaussian-like is ``normal``, judged by absence, whatever
   retrieval said (step 4's ``reconcile``; the reason says so).

Pure apart from the models :func:`diagnose_batch` is handed.
"""

from __future__ import annotations

import time
from collections.abc import Collection, MutableMapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt

from faultline.encoders.blocks import WindowBlock, window_blocks
from faultline.encoders.features import characteristic_orders
from faultline.encoders.geometry import BearingGeometry
from faultline.encoders.quality import Quality, assess
from faultline.encoders.severity import (
    DEFAULT_MACHINE_CLASS,
    ZONE_TABLES,
    G,
    Severity,
    severity_of,
    velocity_rms_mm_s,
)
from faultline.encoders.signals import Measurement, Window
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.baseline import Baseline, judge_against_baseline
from faultline.fault_library.library import FaultLibrary, Neighbour
from faultline.fault_library.novelty import Calibration
from faultline.fault_library.physics import (
    DEFAULT_RULES,
    FamilyRule,
    LineEvidence,
    LineEvidenceReader,
    reconcile,
    shifted,
    unresolved_lines,
)
from faultline.fault_library.verdict import UNKNOWN, Verdict, decide

__all__ = [
    "STAGES",
    "DecisionPolicy",
    "WindowResult",
    "decide_window",
    "diagnose_batch",
    "line_reader",
    "quality_of",
    "unresolved_of",
]

View = Literal["window", "spectrum"]

STAGES = ("encode", "search", "decide")
"""The parts of :func:`diagnose_batch` its ``timings`` report: features and embeddings;
the library's kNN search; the decision with its inputs (quality gate, line reading,
velocity, vote, baseline, reconcile, severity)."""


@dataclass(frozen=True, slots=True)
class DecisionPolicy:
    """Every switch of the decision; the agent's settings and ``faultline eval`` fill it."""

    top_k: int = 10
    min_similarity: float = 0.5
    min_confidence: float = 0.5
    calibrated: bool = True
    """Use the library's per-class novelty thresholds when it has them."""
    line_check: bool = True
    """Cross-check each verdict with the bearing's characteristic lines (physics.py)."""
    line_shift_db: float = 0.0
    """Every line threshold moved by this many dB (positive: stricter)."""
    absence: bool = True
    """An unenrolled window with no sign of damage is ``normal`` (judged by absence)."""
    quality_gate: bool = True
    """Refuse windows whose signal cannot be read (constant, clipped, tone, dropout)."""


@dataclass(frozen=True, slots=True)
class WindowResult:
    """What the science concluded about one measurement, before it becomes an alert."""

    verdict: Verdict
    neighbours: list[Neighbour]
    rpm: float
    rpm_source: str
    view: View
    severity: Severity | None = None
    """How bad (velocity zone and damage stage); None for a sensor spectrum (no samples)."""
    lines: LineEvidence | None = None
    """The defect lines read for the line check (None when it is off): reports cite them."""


def decide_window(
    labels: Sequence[str],
    scores: Sequence[float],
    *,
    policy: DecisionPolicy,
    calibration: Calibration | None,
    known: Collection[str],
    evidence: LineEvidence | None = None,
    quality: Quality | None = None,
    own: tuple[float, Baseline] | None = None,
) -> Verdict:
    """One window's verdict from its neighbours (best first), in the module's sequence.

    ``known``: the classes the library holds; ``own``: the window's similarity to its
    asset's enrolled baseline and that baseline, when the asset is enrolled.
    """
    if quality is not None and not quality.ok and policy.quality_gate:
        top = float(max(scores)) if len(scores) else -1.0
        reason = quality.reason or quality.code
        if not reason.startswith(f"{quality.code}:"):
            reason = f"{quality.code}: {reason}"
        return Verdict(UNKNOWN, 1.0, reason, top)
    verdict = decide(
        labels,
        scores,
        min_similarity=policy.min_similarity,
        min_confidence=policy.min_confidence,
        calibration=calibration if policy.calibrated else None,
    )
    if own is not None:
        verdict = judge_against_baseline(verdict, list(labels), list(scores), own[0], own[1])
    # Lines after the baseline: they overrule an asset's own baseline too (one enrolled
    # while the defect was already there would otherwise call the defect normal).
    if evidence is not None and policy.line_check:
        verdict = reconcile(
            verdict, evidence, known, absence=policy.absence, enrolled=own is not None
        )
    return verdict


@lru_cache(maxsize=32)
def line_reader(
    encoder: SpectrumEncoder,
    view: View,
    shift_db: float,
    rules: tuple[FamilyRule, ...] = DEFAULT_RULES,
) -> LineEvidenceReader:
    """The line reader for ``encoder``'s feature layout of ``view`` (built once per rules)."""
    return LineEvidenceReader(
        encoder.feature_names(view),
        offset_db=encoder.params.prominence_offset_db,
        rules=shifted(rules, shift_db),
    )


def unresolved_of(
    measurements: Sequence[Measurement],
    encoder: SpectrumEncoder,
    names: Sequence[str],
    rpms: Sequence[float] | None = None,
) -> npt.NDArray[np.bool_]:
    """Per measurement and feature column: the column's defect line lies within
    ``physics.RESOLVE_BINS`` spectral bins of a shaft harmonic at the speed the encoder
    uses (``rpms`` when the caller has them, else ``encoder.describe_rpm``), for the
    measurement's bearing and bin spacing: ambiguous evidence for the line check."""
    shaft = np.array(
        [
            (encoder.describe_rpm(m)[0] if rpms is None else rpms[i]) / 60.0
            for i, m in enumerate(measurements)
        ]
    )
    df = np.array(
        [m.fs / m.samples.size if isinstance(m, Window) else m.fs / m.n_fft for m in measurements]
    )
    out = np.zeros((len(measurements), len(names)), dtype=bool)
    groups: dict[BearingGeometry, list[int]] = {}
    for i, m in enumerate(measurements):
        groups.setdefault(m.geometry or encoder.default_geometry, []).append(i)
    for geometry, rows in groups.items():
        line_names, orders = characteristic_orders(geometry)
        idx = np.asarray(rows)
        out[idx] = unresolved_lines(
            names, dict(zip(line_names, orders.tolist(), strict=True)), shaft[idx], df[idx]
        )
    return out


def quality_of(
    measurements: Sequence[Measurement], *, blocks: Sequence[WindowBlock] | None = None
) -> list[Quality | None]:
    """The signal-quality verdict of each raw window (None for sensor spectra, whose
    samples we never see); windows of one shape are assessed as one batch.

    ``blocks``: ``window_blocks(measurements)`` when the caller shares them (their rfft
    is reused); else they are built here."""
    out: list[Quality | None] = [None] * len(measurements)
    for block in window_blocks(measurements) if blocks is None else blocks:
        qualities = assess(
            block.samples,
            block.fs,
            spectrum=block.spectrum,
            amplitude=block.amplitude,
            moments=block.moments,
        )
        for i, q in zip(block.positions, qualities, strict=True):
            out[i] = q
    return out


def velocities_of(
    measurements: Sequence[Measurement], *, blocks: Sequence[WindowBlock] | None = None
) -> list[float | None]:
    """Velocity RMS (mm/s, 10-1,000 Hz) of each raw window, from its block's rfft.

    The samples' unit comes from ``meta["accel_unit_m_s2"]`` (the runtime sets it from the
    asset's settings); g when absent. None for sensor spectra. ``blocks`` as for
    :func:`quality_of`.
    """
    out: list[float | None] = [None] * len(measurements)
    for block in window_blocks(measurements) if blocks is None else blocks:
        per_g = velocity_rms_mm_s(block.samples, block.fs, spectrum=block.spectrum)
        for i, w, v in zip(block.positions, block.windows, per_g, strict=True):
            unit = w.meta.get("accel_unit_m_s2")
            scale = float(unit) / G if isinstance(unit, int | float) else 1.0
            out[i] = float(v) * scale
    return out


def severity_for(
    item: Measurement, velocity: float | None, evidence: LineEvidence | None
) -> Severity | None:
    """The window's severity: its velocity zone for the asset's machine class
    (``meta["machine_class"]``, else the default) and the damage stage of its lines."""
    if velocity is None:
        return None
    name = item.meta.get("machine_class")
    table = ZONE_TABLES[
        name if isinstance(name, str) and name in ZONE_TABLES else DEFAULT_MACHINE_CLASS
    ]
    # Decisive indicators only: a corroborating one (raw 2x BPFO) reaches its threshold on
    # healthy CWRU windows and must not stage a healthy machine.
    margins = {} if evidence is None else dict(evidence.decisive_margins)
    kurtosis = None if evidence is None else evidence.kurtosis
    return severity_of(velocity, table, margins, kurtosis=kurtosis)


def diagnose_batch(
    measurements: Sequence[Measurement],
    encoder: SpectrumEncoder,
    library: FaultLibrary,
    policy: DecisionPolicy,
    *,
    timings: MutableMapping[str, float] | None = None,
) -> list[WindowResult]:
    """Encode, search and decide measurements of one view (pure apart from the models).

    Shared by the streaming pipeline and the offline ``diagnose`` command so both give
    the same answer for the same window. ``timings``, when given, is added the seconds
    the batch spent in each of :data:`STAGES` (four clock reads per batch).
    """
    if not measurements:
        return []
    started = time.perf_counter()
    view = encoder.view_of(measurements[0])
    # One stack and one rfft per shape group, shared by the features, the quality gate
    # and the velocity.
    blocks = window_blocks(measurements)
    features, vectors = encoder.encode_with_features(measurements, blocks=blocks)
    encoded = time.perf_counter()
    results = library.search(view, vectors, policy.top_k)
    searched = time.perf_counter()
    calibration = library.calibration(view) if policy.calibrated else None
    rpms = [encoder.describe_rpm(item) for item in measurements]
    evidence = (
        line_reader(encoder, view, policy.line_shift_db, library.line_rules(view)).read(
            features,
            unresolved=unresolved_of(
                measurements, encoder, encoder.feature_names(view), [r[0] for r in rpms]
            ),
        )
        if policy.line_check
        else None
    )
    quality = (
        quality_of(measurements, blocks=blocks)
        if policy.quality_gate
        else [None] * len(measurements)
    )
    velocities = velocities_of(measurements, blocks=blocks)
    known = library.labels(view)
    out: list[WindowResult] = []
    for row, (item, vector, neighbours) in enumerate(
        zip(measurements, vectors, results, strict=True)
    ):
        baseline = library.baseline(view, item.asset)
        own = (
            None if baseline is None else (float(baseline.similarity(vector[None, :])[0]), baseline)
        )
        verdict = decide_window(
            [n.label for n in neighbours],
            [n.score for n in neighbours],
            policy=policy,
            calibration=calibration,
            known=known,
            evidence=None if evidence is None else evidence[row],
            quality=quality[row],
            own=own,
        )
        rpm, rpm_source = rpms[row]
        row_evidence = None if evidence is None else evidence[row]
        severity = severity_for(item, velocities[row], row_evidence)
        out.append(WindowResult(verdict, neighbours, rpm, rpm_source, view, severity, row_evidence))
    if timings is not None:
        decided = time.perf_counter()
        for stage, seconds in zip(
            STAGES, (encoded - started, searched - encoded, decided - searched), strict=True
        ):
            timings[stage] = timings.get(stage, 0.0) + seconds
    return out
