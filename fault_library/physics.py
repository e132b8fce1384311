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
* normal by absence: an unenrolled window with no decisive line of any family, a
  kurtosis under ``IMPULSIVE_KURTOSIS`` and a band kurtosis under
  ``IMPULSIVE_BAND_KURTOSIS`` is ``normal``, whatever retrieval said. Similarity is not
  evidence of damage: on a machine the library never saw, a healthy window resembles some
  library fault more than nothing (UESTC's healthy windows matched CWRU's ball signatures
  firmly), and an alarm for every healthy machine gets the agent switched off. The cost,
  stated: damage that leaves no line and no impulsiveness (CWRU's ball faults seen from
  the fan end) reads ``normal`` too. An enrolled asset is judged by its own baseline.

Raw-spectrum lines only corroborate (``Indicator.decisive=False``): they count when
retrieval already says "damaged", since alone they may be another machine line at the
same frequency. Envelope lines decide on their own.

Ball faults have no line rule: their lines are weak or absent in CWRU envelope spectra
(Smith & Randall 2015), so the absence of a ball line refutes no ball answer; a ball
answer stands on impulsiveness and retrieval. The thresholds (``DEFAULT_RULES``) were read
off CWRU windows of every class (docs/EVALUATION.md: the evaluation is optimistic by that
choice, and a sensitivity table shows how much). Pure computation: no I/O, no models.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from faultline.encoders import features as ft
from faultline.fault_library.verdict import UNKNOWN, Verdict

HEALTHY = "normal"
KURTOSIS_FEATURE = ft.KURTOSIS_NAME
IMPULSIVE_KURTOSIS = 4.0
"""Above this a window is impulsive: something strikes (Gaussian noise reads 3)."""
BAND_KURTOSIS_FEATURE = ft.BAND_KURTOSIS_NAME
IMPULSIVE_BAND_KURTOSIS = 10.0
"""Above this spectral kurtosis the demodulation band carries impacts even when the whole
window's kurtosis does not show them (Gaussian noise reads 0). Set with the evaluation
windows in view: healthy windows of CWRU and UESTC reach 9.6 at most, quiet ball-damaged
UESTC windows up to 19 (docs/EVALUATION.md)."""
ABSENT_BELOW_DB = 1.0
"""A line counts as absent this far under its threshold; closer, retrieval keeps its answer."""
RESOLVE_BINS = 2.0
"""A defect line whose expected frequency lies closer than this many spectral bins to an
integer shaft harmonic cannot be told from that harmonic in one window (a Hann window's
main lobe is 2 bins each side): it is ambiguous evidence, read neither as a sign of
damage nor as its absence (:func:`unresolved_lines`). On UESTC's UC204 at 800 rpm BPFO
(3.052x) lies 0.7 Hz from 3x, under one bin of a 1-s window."""
ABSENCE_MAX_CONFIDENCE = 0.9
"""A verdict of ``normal`` by absence never claims more: absence of evidence is weaker
than a match with the asset's own enrolled baseline."""

__all__ = [
    "DEFAULT_RULES",
    "FamilyRule",
    "Indicator",
    "LineEvidence",
    "LineEvidenceReader",
    "reconcile",
    "shifted",
    "unresolved_lines",
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
            Indicator(
                "envelope BPFO 1-3x",
                tuple(ft.line_name(ft.ENVELOPE, f"bpfo_{k}") for k in (1, 2, 3)),
                16.0,
            ),
            # ... or, for a wider defect, discrete BPFO harmonics in the raw spectrum.
            Indicator("raw BPFO 2x", (ft.line_name(ft.RAW, "bpfo_2"),), 20.0, decisive=False),
        ),
    ),
    FamilyRule(
        "inner_race",
        (
            # 2x BPFI is left out: on a 6205 it falls within 0.7 % of 3x BPFO. The raw
            # BPFI line is left out too: healthy CWRU recordings carry a shaft line there.
            Indicator(
                "envelope BPFI 1x, 3x",
                tuple(ft.line_name(ft.ENVELOPE, f"bpfi_{k}") for k in (1, 3)),
                15.0,
            ),
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
    band_kurtosis: float | None = None
    """Spectral kurtosis of the window's demodulation band (0 for Gaussian noise)."""

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
        self._band_kurtosis_column = where.get(BAND_KURTOSIS_FEATURE)
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

    def read(
        self, features: npt.ArrayLike, unresolved: npt.ArrayLike | None = None
    ) -> list[LineEvidence]:
        """Evidence of each row; ``unresolved``: (rows, features) True where a column's
        line cannot be told from a shaft harmonic (:func:`unresolved_lines`): an
        indicator averages its other lines, and one with none left reads NaN (neither
        present nor absent)."""
        rows = np.atleast_2d(np.asarray(features, dtype=np.float64))
        n = rows.shape[0]
        mask = None if unresolved is None else np.atleast_2d(np.asarray(unresolved, dtype=bool))
        every: dict[str, tuple[npt.NDArray[np.float64], list[str]]] = {}
        decisive: dict[str, tuple[npt.NDArray[np.float64], list[str]]] = {}
        for rule, usable, _ in self._rules:
            every[rule.label] = self._best(usable, rows, mask)
            strong = [(ind, cols) for ind, cols in usable if ind.decisive]
            if strong:
                decisive[rule.label] = self._best(strong, rows, mask)
        assessable = frozenset(rule.label for rule, _, whole in self._rules if whole)
        kurtosis: list[float | None] = [None] * n
        if self._kurtosis_column is not None:  # features.time_stats: log10(kurtosis / 3)
            kurtosis = (3.0 * 10.0 ** rows[:, self._kurtosis_column]).tolist()
        band: list[float | None] = [None] * n
        if self._band_kurtosis_column is not None:  # log10(1 + spectral kurtosis)
            band = (10.0 ** rows[:, self._band_kurtosis_column] - 1.0).tolist()
        return [
            LineEvidence(
                margins={k: float(m[r]) for k, (m, _) in every.items()},
                readings={k: t[r] for k, (_, t) in every.items()},
                assessable=assessable,
                decisive_margins={k: float(m[r]) for k, (m, _) in decisive.items()},
                decisive_readings={k: t[r] for k, (_, t) in decisive.items()},
                kurtosis=kurtosis[r],
                band_kurtosis=band[r],
            )
            for r in range(n)
        ]

    def _best(
        self,
        usable: Sequence[tuple[Indicator, list[int]]],
        rows: npt.NDArray[np.float64],
        mask: npt.NDArray[np.bool_] | None = None,
    ) -> tuple[npt.NDArray[np.float64], list[str]]:
        """Per row: the largest margin over ``usable`` indicators and what it read (NaN
        where every indicator's lines are unresolved)."""
        levels = np.stack([_level_db(rows, cols, self._offset, mask) for _, cols in usable])
        gaps = levels - np.array([ind.db for ind, _ in usable])[:, None]
        best = np.where(np.isnan(gaps), -np.inf, gaps).argmax(axis=0)
        margins: npt.NDArray[np.float64] = gaps[best, np.arange(rows.shape[0])]
        texts = [
            f"{usable[b][0].description} {levels[b, r]:.1f} dB "
            f"({'>=' if gaps[b, r] >= 0 else '<'} {usable[b][0].db:g})"
            if not np.isnan(gaps[b, r])
            else f"{usable[b][0].description}: within {RESOLVE_BINS:g} bins of shaft harmonics"
            for r, b in enumerate(best.tolist())
        ]
        return margins, texts


def _level_db(
    rows: npt.NDArray[np.float64],
    cols: Sequence[int],
    offset_db: float,
    mask: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.float64]:
    """An indicator's level in dB above the floor from its feature columns: the mean of
    ``line_prominence`` values, undoing its scaling ((dB - offset) / 10); with ``mask``,
    the mean of the resolved columns only (NaN when none is)."""
    values = rows[:, list(cols)]
    if mask is None:
        mean = values.mean(axis=1)
    else:
        keep = ~mask[:, list(cols)]
        count = keep.sum(axis=1)
        total = np.where(keep, values, 0.0).sum(axis=1)
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    out: npt.NDArray[np.float64] = mean * 10.0 + offset_db
    return out


def unresolved_lines(
    feature_names: Sequence[str],
    line_orders: Mapping[str, float],
    shaft_hz: npt.ArrayLike,
    df: npt.ArrayLike,
    *,
    bins: float = RESOLVE_BINS,
) -> npt.NDArray[np.bool_]:
    """(rows, features): True where a column's defect line lies within ``bins`` spectral
    bins (``df`` Hz each, per row) of an integer shaft harmonic at ``shaft_hz`` (per row).

    ``line_orders``: shaft orders by line name (``features.characteristic_orders``);
    columns are matched by their line name after the spectrum prefix. The shaft lines
    themselves (1x, 2x) and lines under one shaft order (FTF) are never flagged.
    """
    shaft = np.atleast_1d(np.asarray(shaft_hz, dtype=np.float64))
    spacing = np.broadcast_to(np.asarray(df, dtype=np.float64), shaft.shape)
    out = np.zeros((shaft.size, len(feature_names)), dtype=bool)
    for j, name in enumerate(feature_names):
        line = next(
            (name[len(p) :] for p in (ft.ENVELOPE, ft.RAW, ft.COMB) if name.startswith(p)), None
        )
        order = None if line is None else line_orders.get(line)
        if order is None or line in ("1x", "2x") or order < 0.5:
            continue
        gap_hz = abs(order - round(order)) * shaft
        out[:, j] = gap_hz < bins * spacing
    return out


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
    absence: bool = True,
    enrolled: bool = False,
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
        reason = f"no_lines: {claimed} claimed, but {reading}"
        return replace(
            verdict,
            label=UNKNOWN,
            confidence=_confidence(-evidence.margins[claimed]),
            reason=reason,
            evidence=reading,
        )
    if absence and not enrolled and _undamaged(evidence, absent_below_db):
        return _normal_by_absence(verdict, evidence)
    return verdict


def _normal_by_absence(verdict: Verdict, evidence: LineEvidence) -> Verdict:
    """``normal`` because nothing indicates damage, with a confidence that says so: it
    grows with how far every family's lines stay under their thresholds and how close the
    kurtosis is to Gaussian, and never exceeds ``ABSENCE_MAX_CONFIDENCE``."""
    kurtosis = float(evidence.kurtosis or 3.0)
    readable = [m for m in evidence.margins.values() if not math.isnan(m)]
    closest = max(readable) if readable else -10.0
    lines_support = _confidence(-closest)
    impulse_support = min(
        1.0, max(0.0, (IMPULSIVE_KURTOSIS - kurtosis) / (IMPULSIVE_KURTOSIS - 3.0))
    )
    support = ABSENCE_MAX_CONFIDENCE * min(lines_support, 0.5 + 0.5 * impulse_support)
    families = "/".join(sorted(evidence.margins)) or "defect"
    band = (
        ""
        if evidence.band_kurtosis is None
        else f", band kurtosis {evidence.band_kurtosis:.1f} < {IMPULSIVE_BAND_KURTOSIS:g}"
    )
    reason = (
        f"absence: no {families} lines (closest {closest:+.1f} dB from its threshold), "
        f"kurtosis {kurtosis:.1f} < {IMPULSIVE_KURTOSIS:g}{band}; not enrolled: enroll a "
        "healthy baseline for a closer watch"
        + ("" if verdict.label == HEALTHY else f" (instead of {verdict.label})")
    )
    return replace(verdict, label=HEALTHY, confidence=support, reason=reason)


def _undamaged(evidence: LineEvidence, absent_below_db: float) -> bool:
    """Nothing strikes (window and band kurtosis within healthy bounds) and every family's
    decisive lines are clearly absent (more than ``absent_below_db`` under threshold: in
    the grey zone just under it, retrieval keeps its answer): what a healthy bearing looks
    like. Raw-spectrum lines only corroborate a damage retrieval found, never accuse on
    their own (a healthy CWRU window reaches 19.7 dB at raw 2x BPFO)."""
    return (
        evidence.kurtosis is not None
        and evidence.kurtosis < IMPULSIVE_KURTOSIS
        and (evidence.band_kurtosis is None or evidence.band_kurtosis < IMPULSIVE_BAND_KURTOSIS)
        and all(m < -absent_below_db or math.isnan(m) for m in evidence.decisive_margins.values())
    )


LINE_RULES_KEY = "line_rules"
"""Where a library manifest's ``source`` keeps the thresholds fitted at build time."""
FIT_RANGE_DB = (6.0, 30.0)
"""Where a fitted line threshold may land: under 6 dB a noise peak passes (the maximum of
a search span over a median floor reads a few dB on noise alone); 30 dB is the cap."""
FIT_STEP_DB = 0.25


def indicator_levels(
    feature_names: Sequence[str], features: npt.ArrayLike, indicator: Indicator, offset_db: float
) -> npt.NDArray[np.float64] | None:
    """The indicator's level (dB above the floor) in each row, or None if the layout lacks
    one of its features."""
    where = {name: i for i, name in enumerate(feature_names)}
    if not all(f in where for f in indicator.features):
        return None
    rows = np.atleast_2d(np.asarray(features, dtype=np.float64))
    return _level_db(rows, [where[f] for f in indicator.features], offset_db)


def fit_rules(
    feature_names: Sequence[str],
    features: npt.ArrayLike,
    labels: Sequence[str],
    *,
    offset_db: float,
    rules: Sequence[FamilyRule] = DEFAULT_RULES,
) -> tuple[FamilyRule, ...]:
    """Every indicator's threshold fitted on training windows only.

    The threshold is the level that best separates windows of the family's class from
    all others (balanced accuracy of ``level >= threshold``), on a 0.25 dB grid inside
    ``FIT_RANGE_DB``; on a plateau of equal scores the middle is taken, so the margin to
    both sides is as wide as the data allow. An indicator whose class (or whose
    complement) is missing from ``labels`` keeps its prior threshold: nothing to fit on.
    The runtime reads the thresholds a library build fitted; ``faultline eval`` refits
    them inside every fold on the library side, so no test window shapes them.
    """
    truth = np.asarray(list(labels))
    grid = np.arange(FIT_RANGE_DB[0], FIT_RANGE_DB[1] + FIT_STEP_DB / 2, FIT_STEP_DB)
    fitted = []
    for rule in rules:
        positive = truth == rule.label
        indicators = []
        for ind in rule.indicators:
            levels = indicator_levels(feature_names, features, ind, offset_db)
            if levels is None or not positive.any() or positive.all():
                indicators.append(ind)
                continue
            hit = (levels[positive][:, None] >= grid[None, :]).mean(axis=0)
            reject = (levels[~positive][:, None] < grid[None, :]).mean(axis=0)
            score = 0.5 * (hit + reject)
            best = np.flatnonzero(score >= score.max() - 1e-12)
            indicators.append(replace(ind, db=float(grid[best[len(best) // 2]])))
        fitted.append(replace(rule, indicators=tuple(indicators)))
    return tuple(fitted)


def rules_to_dict(rules: Sequence[FamilyRule]) -> dict[str, dict[str, float]]:
    """Thresholds by family and indicator description (what a library manifest stores)."""
    return {r.label: {i.description: i.db for i in r.indicators} for r in rules}


def rules_from_dict(
    data: Mapping[str, Mapping[str, float]], rules: Sequence[FamilyRule] = DEFAULT_RULES
) -> tuple[FamilyRule, ...]:
    """``rules`` with the thresholds ``data`` holds (others keep their prior)."""
    return tuple(
        replace(
            r,
            indicators=tuple(
                replace(i, db=float(data.get(r.label, {}).get(i.description, i.db)))
                for i in r.indicators
            ),
        )
        for r in rules
    )
