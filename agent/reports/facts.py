"""The facts a report states, taken from the diagnosis by code (pure, no I/O).

The model never decides a label, a library id, a score, a frequency or a severity: this
module fills them from the evidence, and the guard (guard.py) refuses a narrative that
names anything this module did not put in the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from faultline.encoders.severity import Severity, damage_stage
from faultline.fault_library.library import Neighbour
from faultline.fault_library.physics import LineEvidence
from faultline.fault_library.verdict import Verdict

__all__ = [
    "CITED_NEIGHBOURS",
    "Diagnosed",
    "Line",
    "ReportFacts",
    "facts_from",
    "with_line_history",
]

CITED_NEIGHBOURS = 3  # the closest library signatures a report cites


@dataclass(frozen=True, slots=True)
class Line:
    """One defect family as the line check read it."""

    family: str
    margin_db: float  # over its fitted threshold; >= 0 means present
    reading: str  # e.g. "envelope BPFO 1x, 2x 18.2 dB (>= 16)"
    decisive: bool  # stands alone (a corroborating indicator only confirms retrieval)

    @property
    def present(self) -> bool:
        return self.margin_db >= 0


@dataclass(frozen=True, slots=True)
class ReportFacts:
    """Everything a report says that is not prose."""

    asset: str
    window_ts: float
    alert_id: str
    label: str
    confidence: float
    code: str | None
    reason: str | None
    evidence_summary: str | None
    citations: list[tuple[str, str, float]]  # (library id, label, score), best first
    lines: list[Line]
    kurtosis: float | None
    band_kurtosis: float | None
    severity: Severity | None
    rpm: float | None
    library_version: str
    decisive_margins: dict[str, float] = field(default_factory=dict)
    """What the damage stage is judged on (encoders/severity.py), kept for the trend."""

    def present_families(self) -> list[str]:
        return [line.family for line in self.lines if line.present]

    def prompt_text(self) -> str:
        """The evidence as the model reads it: every fact it may use, nothing else."""
        parts = [
            f"Asset: {self.asset}.",
            f"Verdict: {self.label} (confidence {self.confidence:.2f}"
            + (f"; {self.reason}" if self.reason else "")
            + ").",
        ]
        present = [line.reading for line in self.lines if line.present]
        parts.append(
            "Defect lines present: " + "; ".join(present) + "."
            if present
            else "Defect lines: none present."
        )
        if self.kurtosis is not None:
            parts.append(f"Kurtosis {self.kurtosis:.1f} (3 is healthy noise).")
        if self.severity is not None:
            s = self.severity
            parts.append(
                f"Vibration velocity {s.velocity_rms_mm_s:.2f} mm/s RMS, ISO zone {s.zone} "
                f"({s.zone_table.name}); damage stage {s.damage.stage}: {s.damage.label}."
            )
            if s.damage.trend_db is not None:
                parts.append(f"Strongest line changed {s.damage.trend_db:+.1f} dB on this asset.")
        if self.rpm:
            parts.append(f"Shaft speed {self.rpm:.0f} rpm.")
        cites = ", ".join(f"{nid} ({label}, {score:.2f})" for nid, label, score in self.citations)
        parts.append(f"Closest library signatures: {cites}." if cites else "")
        return " ".join(p for p in parts if p)

    def evidence_dict(self) -> dict[str, Any]:
        return {
            "summary": self.evidence_summary,
            "citations": [
                {"id": nid, "label": label, "score": round(score, 4)}
                for nid, label, score in self.citations
            ],
            "lines": [
                {
                    "family": line.family,
                    "margin_db": round(line.margin_db, 1),
                    "present": line.present,
                    "decisive": line.decisive,
                    "reading": line.reading,
                }
                for line in self.lines
            ],
            "impulsiveness": {
                "kurtosis": None if self.kurtosis is None else round(self.kurtosis, 2),
                "band_kurtosis": None
                if self.band_kurtosis is None
                else round(self.band_kurtosis, 2),
            },
        }


def _lines(evidence: LineEvidence | None) -> list[Line]:
    if evidence is None:
        return []
    out = []
    for family, margin in evidence.margins.items():
        decisive_margin = evidence.decisive_margins.get(family)
        decisive = decisive_margin is not None and decisive_margin >= 0
        reading = evidence.decisive_readings[family] if decisive else evidence.readings[family]
        out.append(Line(family, float(margin), reading, decisive))
    return sorted(out, key=lambda line: -line.margin_db)


class Diagnosed(Protocol):
    """What a report needs of a diagnosis: ``WindowResult`` (diagnose_batch) and the
    pipeline's ``Diagnosis`` both have it."""

    @property
    def verdict(self) -> Verdict: ...
    @property
    def neighbours(self) -> list[Neighbour]: ...
    @property
    def lines(self) -> LineEvidence | None: ...
    @property
    def severity(self) -> Severity | None: ...
    @property
    def rpm(self) -> float: ...


def facts_from(
    result: Diagnosed, *, asset: str, window_ts: float, alert_id: str, library_version: str
) -> ReportFacts:
    """Facts for one alert. Citations: the closest signatures of the verdict's own class
    (of any class when the verdict is unknown), so a report never cites a signature that
    argues against it."""
    verdict, lines = result.verdict, result.lines
    neighbours = [(n.id, n.label, n.score) for n in result.neighbours]
    own = [n for n in neighbours if n[1] == verdict.label] or neighbours
    return ReportFacts(
        asset=asset,
        window_ts=window_ts,
        alert_id=alert_id,
        label=verdict.label,
        confidence=verdict.confidence,
        code=verdict.code,
        reason=verdict.reason,
        evidence_summary=verdict.evidence,
        citations=own[:CITED_NEIGHBOURS],
        lines=_lines(lines),
        kurtosis=None if lines is None else lines.kurtosis,
        band_kurtosis=None if lines is None else lines.band_kurtosis,
        severity=result.severity,
        rpm=result.rpm,
        library_version=library_version,
        decisive_margins={} if lines is None else dict(lines.decisive_margins),
    )


def with_line_history(facts: ReportFacts, history_db: list[float]) -> ReportFacts:
    """The facts with the damage stage judged again with this asset's earlier line
    heights, so the report states the trend (the alert, judged alone, cannot)."""
    if facts.severity is None or not history_db:
        return facts
    s = facts.severity
    stage = damage_stage(
        facts.decisive_margins, kurtosis=facts.kurtosis, zone=s.zone, history_db=history_db
    )
    return replace(facts, severity=Severity(s.velocity_rms_mm_s, s.zone, s.zone_table, stage))
