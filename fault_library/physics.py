"""Line evidence: does the spectrum show the lines the retrieved fault must produce?

Retrieval answers "which known signatures look most like this window". It cannot express
the analyst's rule that an outer-race defect shows *either* BPFO lines in the envelope
spectrum *or* BPFO harmonics in the raw spectrum: a library whose outer-race bearings all
show both teaches the embedding the strong envelope lines, and a new bearing showing only
the raw harmonics (CWRU 0.014 in, records 197-200) then lands next to ball faults. Nor can
it say "unknown" for a fault type missing from the library, because a damaged bearing of
the missing type still looks more like some damaged bearing than like nothing.

The characteristic lines are already in the feature vector (``features.line_prominence``:
dB above the local floor, at orders fixed by the bearing geometry), so checking them costs
nothing. :func:`reconcile` cross-checks a retrieval verdict with them:

* lines of a family present, retrieval agrees: kept, the lines are cited;
* lines of a family present, retrieval says another class (or is unsure): the family's
  class if the library holds it (the lines are the stronger witness), else ``unknown``
  ("inner-race lines present but the library holds no inner-race signatures");
* retrieval says a line-family class but its lines are clearly absent (more than
  ``ABSENT_BELOW_DB`` under every threshold): ``unknown``. Just under a threshold is a
  grey zone where retrieval keeps its answer: a weak line proves nothing either way;
* retrieval says a fault, the library holds no healthy signatures, and the window shows
  no sign of damage (kurtosis under ``IMPULSIVE_KURTOSIS``, no line present): ``unknown``.
  Without a healthy reference retrieval cannot tell a healthy machine from a faint fault,
  and calling every healthy machine "ball" would be a false alarm.

Raw-spectrum lines only corroborate (``Indicator.decisive=False``): they count when
retrieval already says "damaged", since alone they may be another machine line at the
same frequency. Envelope lines decide on their own.

Ball faults have no rule: their lines are weak or absent in CWRU envelope spectra (Smith
& Randall 2015), so absence proves nothing. The thresholds (``DEFAULT_RULES``) were read
off CWRU windows of every class (docs/EVALUATION.md: the evaluation is optimistic by that
choice, and a sensitivity table shows how much). Pure computation: no I/O, no models.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from faultline.fault_library.verdict import UNKNOWN, Verdict

HEALTHY = "normal"
KURTOSIS_FEATURE = "log_kurtosis"
IMPULSIVE_KURTOSIS = 4.0
"""Above this a window is impulsive: something strikes (Gaussian noise reads 3)."""
ABSENT_BELOW_DB = 1.0
"""A line counts as absent this far under its threshold; closer, retrieval keeps its answer."""

__all__ = [
    "DEFAULT_RULES",
    "FamilyRule",
    "Indicator",
    "LineEvidence",
    "LineEvidenceReader",
    "reconcile",
    "shifted",
]


@dataclass(frozen=True, slots=True)
class Indicator:
    """One way a family shows: the mean prominence (dB) of these features, at least ``db``.

    ``decisive=False`` marks a corroborating indicator: it counts only when retrieval
    already says the bearing is damaged (any fault class), because on its own it can be
    another machine line at the same frequency (a raw-spectrum line near 2x BPFO reaches
    19.7 dB in healthy CWRU windows).
    """

    description: str
    features: tuple[str, ...]
    db: float
    decisive: bool = True


@dataclass(frozen=True, slots=True)
class FamilyRule:
    """The class a line family stands for and the indicators that show it (any one is enough)."""

    label: str
    indicators: tuple[Indicator, ...]


DEFAULT_RULES: tuple[FamilyRule, ...] = (
    FamilyRule(
        "outer_race",
        (
            # A fixed defect in the load zone: plain BPFO harmonics in the envelope ...
            Indicator("envelope BPFO 1-3x", ("env_bpfo_1", "env_bpfo_2", "env_bpfo_3"), 16.0),
            # ... or, for a wider defect, discrete BPFO harmonics in the raw spectrum.
            Indicator("raw BPFO 2x", ("raw_bpfo_2",), 20.0, decisive=False),
        ),
    ),
    FamilyRule(
        "inner_race",
        (
            # 2x BPFI is left out: on a 6205 it falls within 0.7 % of 3x BPFO. The raw
            # BPFI line is left out too: healthy CWRU recordings carry a shaft line there.
            Indicator("envelope BPFI 1x, 3x", ("env_bpfi_1", "env_bpfi_3"), 15.0),
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class LineEvidence:
    """Per family: the best indicator's margin over its threshold (dB) and what it read.

    ``assessable`` lists the families whose every indicator could be read (so their
    absence means something); a spectrum-only view lacks the envelope, so it can confirm
    BPFO from the raw lines but never rule it out.
    """

    margins: dict[str, float]
    readings: dict[str, str]
    assessable: frozenset[str]
    decisive_margins: dict[str, float]
    decisive_readings: dict[str, str]
    kurtosis: float | None = None
    """The window's kurtosis (3 for Gaussian noise); None when the view has no samples."""

    def present(self, *, corroborated: bool) -> list[str]:
        """Families whose lines stand above threshold, strongest first; without
        ``corroborated`` (retrieval says damaged) decisive indicators only."""
        margins = self.margins if corroborated else self.decisive_margins
        return sorted((k for k, m in margins.items() if m >= 0), key=lambda k: -margins[k])

    def reading(self, family: str, *, corroborated: bool) -> str:
        return (self.readings if corroborated else self.decisive_readings)[family]


class LineEvidenceReader:
    """Reads :class:`LineEvidence` from feature rows laid out as ``feature_names``.

    ``offset_db``: what ``line_prominence`` subtracted before scaling by 1/10 (its
    ``FeatureParams.prominence_offset_db``), so values read back in dB above the floor.
    Indicators whose features the layout lacks are skipped; a family with none left is
    not read at all.
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        *,
        offset_db: float,
        rules: Sequence[FamilyRule] = DEFAULT_RULES,
    ) -> None:
        where = {name: i for i, name in enumerate(feature_names)}
        self._offset = float(offset_db)
        self._kurtosis_column = where.get(KURTOSIS_FEATURE)
        self._rules: list[tuple[FamilyRule, list[tuple[Indicator, list[int]]], bool]] = []
        for rule in rules:
            usable = [
                (ind, [where[f] for f in ind.features])
                for ind in rule.indicators
                if all(f in where for f in ind.features)
            ]
            if usable:
                self._rules.append((rule, usable, len(usable) == len(rule.indicators)))

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(rule.label for rule, _, _ in self._rules)

    def read(self, features: npt.ArrayLike) -> list[LineEvidence]:
        rows = np.atleast_2d(np.asarray(features, dtype=np.float64))
        n = rows.shape[0]
        every: dict[str, tuple[npt.NDArray[np.float64], list[str]]] = {}
        decisive: dict[str, tuple[npt.NDArray[np.float64], list[str]]] = {}
        for rule, usable, _ in self._rules:
            every[rule.label] = self._best(usable, rows)
            strong = [(ind, cols) for ind, cols in usable if ind.decisive]
            if strong:
                decisive[rule.label] = self._best(strong, rows)
        assessable = frozenset(rule.label for rule, _, whole in self._rules if whole)
        kurtosis: list[float | None] = [None] * n
        if self._kurtosis_column is not None:  # features.time_stats: log10(kurtosis / 3)
            kurtosis = (3.0 * 10.0 ** rows[:, self._kurtosis_column]).tolist()
        return [
            LineEvidence(
                margins={k: float(m[r]) for k, (m, _) in every.items()},
                readings={k: t[r] for k, (_, t) in every.items()},
                assessable=assessable,
                decisive_margins={k: float(m[r]) for k, (m, _) in decisive.items()},
                decisive_readings={k: t[r] for k, (_, t) in decisive.items()},
                kurtosis=kurtosis[r],
            )
            for r in range(n)
        ]

    def _best(
        self,
        usable: Sequence[tuple[Indicator, list[int]]],
        rows: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.float64], list[str]]:
        """Per row: the largest margin over ``usable`` indicators and what it read."""
        levels = np.stack([rows[:, cols].mean(axis=1) * 10.0 + self._offset for _, cols in usable])
        gaps = levels - np.array([ind.db for ind, _ in usable])[:, None]
        best = gaps.argmax(axis=0)
        margins: npt.NDArray[np.float64] = gaps[best, np.arange(rows.shape[0])]
        texts = [
            f"{usable[b][0].description} {levels[b, r]:.1f} dB "
            f"({'>=' if gaps[b, r] >= 0 else '<'} {usable[b][0].db:g})"
            for r, b in enumerate(best.tolist())
        ]
        return margins, texts


def shifted(rules: Sequence[FamilyRule], db: float) -> tuple[FamilyRule, ...]:
    """``rules`` with every threshold moved by ``db`` (the evaluation's sensitivity check)."""
    return tuple(
        replace(rule, indicators=tuple(replace(i, db=i.db + db) for i in rule.indicators))
        for rule in rules
    )


def _confidence(margin_db: float) -> float:
    """Support for a line-based answer: 0.5 at the threshold, 0.88 at 6 dB above it."""
    return 1.0 / (1.0 + math.exp(-margin_db / 3.0))


def reconcile(
    verdict: Verdict,
    evidence: LineEvidence,
    library_labels: Collection[str],
    *,
    absent_below_db: float = ABSENT_BELOW_DB,
) -> Verdict:
    """Cross-check a retrieval verdict with the lines (see the module docstring).

    A line counts as present at its threshold, but as absent only ``absent_below_db``
    under it: in between, retrieval keeps its answer (a weak line is no proof either way).
    """
    claimed = verdict.label
    damaged = claimed not in (UNKNOWN, HEALTHY)
    present = evidence.present(corroborated=damaged)
    if present:
        family = present[0]
        reading = evidence.reading(family, corroborated=damaged)
        margins = evidence.margins if damaged else evidence.decisive_margins
        support = _confidence(margins[family])
        if claimed == family:
            return replace(verdict, evidence=reading)
        if family not in library_labels:
            reason = (
                f"novel: {reading}: {family} lines present, but the library holds no "
                f"{family} signatures (instead of {claimed})"
            )
            return replace(
                verdict, label=UNKNOWN, confidence=support, reason=reason, evidence=reading
            )
        reason = f"lines: {reading} (instead of {claimed})"
        return replace(verdict, label=family, confidence=support, reason=reason, evidence=reading)
    if claimed in evidence.assessable and evidence.margins[claimed] < -absent_below_db:
        reading = evidence.readings[claimed]
        reason = f"no lines: {claimed} claimed, but {reading}"
        return replace(
            verdict,
            label=UNKNOWN,
            confidence=_confidence(-evidence.margins[claimed]),
            reason=reason,
            evidence=reading,
        )
    if damaged and HEALTHY not in library_labels and _undamaged(evidence):
        reason = (
            f"no sign of damage (kurtosis {evidence.kurtosis:.1f} < {IMPULSIVE_KURTOSIS:g}, "
            f"no {'/'.join(sorted(evidence.margins))} line) and the library holds no "
            f"healthy signatures to tell this from a faint fault (instead of {claimed})"
        )
        return replace(verdict, label=UNKNOWN, confidence=0.5, reason=reason)
    return verdict


def _undamaged(evidence: LineEvidence) -> bool:
    """Nothing strikes and no family's line is present: what a healthy bearing looks like."""
    return (
        evidence.kurtosis is not None
        and evidence.kurtosis < IMPULSIVE_KURTOSIS
        and not evidence.present(corroborated=True)
    )
