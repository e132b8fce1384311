"""Refuse a narrative that says more than the evidence (pure).

A small model writes fluent text about things it was never shown. The guard checks what
can be checked mechanically, and a narrative that fails is replaced by the template (the
report says so, with the reason and the refused text):

* **fault classes**: every fault or machine-condition term it names must be the verdict
  or a family whose lines are present (``outer race`` in a report on a healthy machine, or
  ``misalignment`` anywhere, is refused);
* **library ids**: every 16-hex-digit token must be one the report cites;
* **numbers with a unit** (Hz, kHz, rpm, dB, mm/s, x for orders, %): each must be one of
  the numbers in the evidence text, to its printed precision;
* **no links or markup** (a URL, braces, brackets, backticks, HTML tags): prose only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from faultline.agent.reports.facts import ReportFacts

__all__ = ["check_narrative"]

# Terms by the class they name. Bearing families first; then conditions the product never
# diagnoses, which a narrative may therefore never assert.
_TERMS: dict[str, str] = {
    "inner_race": r"inner[\s-]*race|\bbpfi\b|inner ring",
    "outer_race": r"outer[\s-]*race|\bbpfo\b|outer ring",
    "ball": r"\bballs?\b|rolling[\s-]*element|\bbsf\b",
    "cage": r"\bcage\b|\bftf\b",
    "imbalance": r"\b(?:im|un)balance",
    "misalignment": r"misalign",
    "looseness": r"\blooseness\b|\bloose\b",
    "gear": r"\bgear",
    "cavitation": r"cavitat",
    "electrical": r"electrical fault|rotor bar|stator",
}
_COMPILED = {cls: re.compile(rx, re.IGNORECASE) for cls, rx in _TERMS.items()}
_LIBRARY_ID = re.compile(r"\b[0-9a-f]{16}\b")
_NUMBER_WITH_UNIT = re.compile(
    r"(?<![\w.])(\d+(?:\.\d+)?)\s*(?:k?hz\b|rpm\b|db\b|mm/s|x\b|%)", re.IGNORECASE
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_MARKUP = re.compile(r"https?://|www\.|[{}\[\]`]|</?[a-z]+[^>]*>")


def _allowed_classes(facts: ReportFacts) -> set[str]:
    allowed = set(facts.present_families())
    if facts.label in _TERMS:
        allowed.add(facts.label)
    return allowed


def _numbers(text: str) -> set[float]:
    return {float(n) for n in _NUMBER.findall(text)}


def _matches(value: float, known: Iterable[float]) -> bool:
    return any(abs(value - k) <= max(1e-9, 0.005 * abs(k)) for k in known)


def check_narrative(text: str, facts: ReportFacts, evidence_text: str) -> list[str]:
    """Reasons the text is refused (empty: accepted). ``evidence_text`` is what the model
    was shown (``facts.prompt_text()``): the only source of numbers it may quote."""
    problems: list[str] = []
    allowed = _allowed_classes(facts)
    for cls, pattern in _COMPILED.items():
        found = pattern.search(text)
        if found and cls not in allowed:
            problems.append(f"names {cls} ('{found.group(0)}') which the evidence does not show")
    cited = {nid for nid, _label, _score in facts.citations}
    for token in _LIBRARY_ID.findall(text):
        if token not in cited:
            problems.append(f"cites library id {token} which the report does not cite")
    known = _numbers(evidence_text)
    for match in _NUMBER_WITH_UNIT.finditer(text):
        if not _matches(float(match.group(1)), known):
            problems.append(f"quotes '{match.group(0)}' which is not in the evidence")
    markup = _MARKUP.search(text)
    if markup:
        problems.append(f"contains a link or markup ('{markup.group(0)}')")
    return problems
