"""The report written by code: the fallback when the model is missing, slow or wrong,
and the yardstick its narrative is held to. Pure: facts in, text out.

The actions are the team's own words, by verdict and severity; they say what to check and
how soon, never more than the evidence carries.
"""

from __future__ import annotations

from faultline.agent.reports.facts import ReportFacts

__all__ = ["template_actions", "template_narrative"]

_NAMES = {
    "inner_race": "inner-race damage",
    "outer_race": "outer-race damage",
    "ball": "rolling-element (ball) damage",
    "cage": "cage damage",
    "normal": "no bearing damage",
    "unknown": "an unrecognised condition",
}

_ACTIONS: dict[str, list[str]] = {
    "inner_race": [
        "Confirm with a second measurement at the same bearing within a day.",
        "Check lubrication: grease condition and relubrication interval.",
        "Plan the bearing change at the next stop; watch the BPFI line trend until then.",
    ],
    "outer_race": [
        "Confirm with a second measurement at the same bearing within a day.",
        "Check lubrication and the housing fit (an outer ring creeping in its seat shows "
        "the same line).",
        "Plan the bearing change at the next stop; watch the BPFO line trend until then.",
    ],
    "ball": [
        "Confirm with a second measurement; ball damage lines are weak and come and go.",
        "Check lubrication and contamination (particles, water).",
        "Plan an inspection at the next stop.",
    ],
    "cage": [
        "Confirm with a second measurement; check for looseness and lubrication starvation.",
        "Plan an inspection soon: a cage failure seizes a bearing without much warning.",
    ],
    "normal": ["No action; enroll a healthy baseline of this asset for a closer watch."],
    "unknown": [
        "Check the sensor mounting, cable and the asset's configured speed and bearing.",
        "Take a manual measurement; if the condition persists, add a labelled example to "
        "the fault library.",
    ],
}

_URGENT = {
    "C": "Vibration is in ISO zone C: restrict long-term operation and schedule the repair.",
    "D": "Vibration is in ISO zone D: damage is likely; stop the machine as soon as safely "
    "possible.",
}


def template_narrative(facts: ReportFacts) -> str:
    """One paragraph that states the verdict, what it rests on and how bad it is."""
    name = _NAMES.get(facts.label, facts.label)
    text = [f"{facts.asset}: {name} (confidence {facts.confidence:.2f})."]
    present = [line.reading for line in facts.lines if line.present]
    if present:
        text.append("It rests on " + "; ".join(present) + ".")
    elif facts.label in {"normal", "unknown"} and facts.reason:
        text.append(facts.reason.rstrip(".") + ".")
    if facts.kurtosis is not None:
        text.append(f"Kurtosis is {facts.kurtosis:.1f}.")
    if facts.severity is not None:
        s = facts.severity
        trend = (
            f", strongest line {s.damage.trend_db:+.1f} dB against earlier windows"
            if s.damage.trend_db is not None
            else ""
        )
        text.append(
            f"Velocity {s.velocity_rms_mm_s:.2f} mm/s RMS is in ISO zone {s.zone} "
            f"({s.zone_table.name}); damage stage {s.damage.stage} ({s.damage.label}{trend})."
        )
    if facts.citations:
        ids = ", ".join(f"{nid} ({score:.2f})" for nid, _label, score in facts.citations)
        text.append(f"Closest library signatures: {ids}.")
    return " ".join(text)


def template_actions(facts: ReportFacts) -> list[str]:
    actions = list(_ACTIONS.get(facts.label, _ACTIONS["unknown"]))
    if facts.severity is not None and facts.severity.zone in _URGENT:
        actions.insert(0, _URGENT[facts.severity.zone])
    return actions[:4]
