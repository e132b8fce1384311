"""An answer from what was retrieved (pure): extractive, cited, or "I don't know".

The answer quotes the knowledge base and the asset's own recent alerts and reports; it
does not paraphrase them, so it cannot say what the evidence does not (the small report
model is not trusted to write answers: see models/README.md). Each fact it uses is cited
by id: knowledge entries (``kb-...``), alerts and reports (their message ids).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from faultline.agent.questions.history import AlertNote
from faultline.agent.questions.parse import Question
from faultline.fault_library.knowledge_store import Hit

__all__ = ["ANSWER_SCHEMA", "Answer", "compose_answer", "find_asset"]

ANSWER_SCHEMA = "faultline.answer/1"
DONT_KNOW = (
    "I don't know: nothing in the knowledge base or in this gateway's recent alerts answers that."
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    known: bool
    asset: str | None
    citations: list[dict[str, Any]] = field(default_factory=list)
    # Shards whose signature descriptions a fleet search could not reach (None: the
    # gateway searched only its own shards, without the fleet).
    missing_shards: list[str] | None = None


def find_asset(question: Question, assets: Sequence[str]) -> str | None:
    """The asset the question names: its ``asset`` field, else a known asset id in the text."""
    if question.asset:
        return question.asset
    lowered = question.text.lower()
    for asset in sorted(assets, key=len, reverse=True):  # "pump-17" before "pump-1"
        if re.search(rf"(?<![\w-]){re.escape(asset.lower())}(?![\w-])", lowered):
            return asset
    return None


def _first_sentences(text: str, n: int = 2) -> str:
    return " ".join(_SENTENCE.split(text.strip())[:n])


def _asset_state(asset: str, notes: Sequence[AlertNote]) -> tuple[str, list[dict[str, Any]]]:
    alerts = [n for n in notes if n.kind == "alert"]
    reports = [n for n in notes if n.kind == "report"]
    if not alerts:
        return f"{asset}: no alerts from this gateway recently.", []
    last = alerts[-1]
    counts: dict[str, int] = {}
    for note in alerts:
        counts[note.label] = counts.get(note.label, 0) + 1
    summary = ", ".join(
        f"{label} {n}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1])
    )
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last.window_ts))
    parts = [
        f"{asset}: the last {len(alerts)} alerts read {summary}; the latest ({when}) is "
        f"{last.label} with confidence {last.confidence:.2f}"
        + (f", ISO zone {last.zone}" if last.zone else "")
        + (f", damage stage {last.damage_stage}" if last.damage_stage is not None else "")
        + "."
    ]
    lines = [n.strongest_line_db for n in alerts if n.strongest_line_db is not None]
    if len(lines) >= 2:
        half = len(lines) // 2
        early, late = sum(lines[:half]) / half, sum(lines[half:]) / (len(lines) - half)
        trend = late - early
        word = "rising" if trend > 1.0 else "falling" if trend < -1.0 else "steady"
        parts.append(
            f"Its strongest defect line is {word} ({trend:+.1f} dB from the earlier to the "
            f"later half of these alerts)."
        )
    stages = [n.damage_stage for n in alerts if n.damage_stage is not None]
    if len(stages) >= 2 and stages[-1] != stages[0]:
        parts.append(f"The damage stage went from {stages[0]} to {stages[-1]}.")
    cited = [{"id": last.message_id, "kind": "alert", "window_ts": last.window_ts}]
    if reports:
        cited.append({"id": reports[-1].message_id, "kind": "report"})
        parts.append(f"The latest report is {reports[-1].message_id}.")
    return " ".join(parts), cited


def compose_answer(
    question: Question,
    *,
    asset: str | None,
    notes: Sequence[AlertNote],
    hits: Sequence[Hit],
    relevant: bool,
    signatures: Sequence[tuple[str, str, float]] = (),
) -> Answer:
    """The asset's state when it names one the gateway knows, the best knowledge entry
    when retrieval found a relevant one, both when both apply; else "I don't know"."""
    parts: list[str] = []
    citations: list[dict[str, Any]] = []
    if asset is not None and notes:
        text, cited = _asset_state(asset, notes)
        parts.append(text)
        citations += cited
    elif asset is not None:
        parts.append(f"{asset}: this gateway has no recent alerts for it.")
    if relevant and hits:
        best = hits[0]
        parts.append(f"{best.title}: {_first_sentences(best.text)}")
        others = list(hits[1:3])
        if others:
            parts.append("See also: " + "; ".join(h.title for h in others) + ".")
        citations += [
            {"id": h.id, "kind": "knowledge", "title": h.title, "score": h.score} for h in hits[:3]
        ]
    if signatures:
        parts.append(
            "Library recordings that match: "
            + "; ".join(f"{description} ({sid})" for sid, description, _c in signatures)
            + "."
        )
        citations += [
            {"id": sid, "kind": "signature", "score": round(c, 4)} for sid, _d, c in signatures
        ]
    known = bool(citations)
    if not known:
        return Answer(DONT_KNOW, False, asset, [])
    return Answer(" ".join(parts), True, asset, citations)
