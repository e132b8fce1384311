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
* **no links or markup** (a URL, braces, brackets, backticks, HTML tags): prose only;
* **no contradiction of the verdict**: a report on damage may not call the bearing healthy
  or free of damage, a report on a healthy bearing may not call it damaged or failing;
* **the right asset**: a name shaped like the report's asset (``pump-7``) but another one
  (``pump-b``, ``pump-4``) is refused, as is prose that copies the evidence's field labels
  (``Verdict:``, ``Asset:``) instead of writing sentences.

Passing the guard means nothing checkable is wrong, not that the prose is good: the
measured share a small model gets through is in bench/llm.py's output and models/README.md.
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
_CALLS_HEALTHY = re.compile(
    r"\bhealthy\b|\bno (?:sign of |signs of )?(?:bearing )?(?:damage|defects?|faults?)\b"
    r"|\b(?:is|looks|seems|reads|runs) normal(?:ly)?\b|\ba normal (?:bearing|condition)\b",
    re.IGNORECASE,
)
_CALLS_DAMAGED = re.compile(
    r"\bdamaged\b|\bdefective\b|\bfail(?:ed|ing|ure|s)?\b|\bworn\b|\bcrack|\bspall",
    re.IGNORECASE,
)
_PROMPT_LABEL = re.compile(r"\b(?:evidence|verdict|asset)\s*:", re.IGNORECASE)
_ASSET_LIKE = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)-([A-Za-z0-9_.]+)\b")
_FAULT_LABELS = frozenset({"inner_race", "outer_race", "ball", "cage"})


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
    problems.extend(_contradictions(text, facts))
    return problems


def _contradictions(text: str, facts: ReportFacts) -> list[str]:
    """What states the opposite of the verdict, names another asset, or echoes the prompt."""
    problems = []
    says = _CALLS_HEALTHY if facts.label in _FAULT_LABELS else None
    if facts.label == "normal":
        says = _CALLS_DAMAGED
    found = says.search(text) if says is not None else None
    if found:
        problems.append(f"says '{found.group(0)}', against the verdict {facts.label}")
    stem = facts.asset.split("-", 1)[0].lower() if "-" in facts.asset else None
    for match in _ASSET_LIKE.finditer(text):
        if match.group(1).lower() == stem and match.group(0) != facts.asset:
            problems.append(f"names asset '{match.group(0)}' in a report on {facts.asset}")
    label = _PROMPT_LABEL.search(text)
    if label:
        problems.append(f"copies the evidence's field label '{label.group(0)}'")
    return problems
