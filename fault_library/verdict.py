"""Turn retrieved neighbours into a diagnosis, or an honest "unknown".

Pure functions over labels and cosine scores, so the runtime, the offline ``diagnose``
command and the benchmarks all decide the same way and tests need no index.

Voting (``decide``)
    Each neighbour votes for its label with weight ``softmax(score / temperature)``. With
    cosine scores and the default temperature of 0.05, a neighbour 0.05 less similar than
    another counts ``e`` (2.7x) less, so the closest few signatures dominate while a tie
    among near-equals is still shared. A plain majority would let k-1 distant neighbours
    outvote an exact match; pure 1-NN would flip on a single mislabelled signature.
    ``confidence`` is the winning class's share of the total weight.

Refusing (``unknown``)
    * novel: the best similarity is below ``min_similarity`` - nothing in the library looks
      like this window, so any class would be a guess. Confidence is how far below the
      threshold it fell, relative to the cosine range: ``(min_similarity - top) /
      (min_similarity + 1)``.
    * ambiguous: the winner holds less than ``min_confidence`` of the vote. Confidence is
      the share the winner failed to get (``1 - share``).
    In both cases ``confidence`` measures support for "unknown", so ``aggregate`` can
    weigh unknown windows against classified ones on one scale.

Calibrated (``decide(..., calibration=...)``)
    With a :class:`~faultline.fault_library.novelty.Calibration` measured on the library
    (stored in the library version at build time), the vote uses the fitted temperature and
    one more check applies. *Novel*: the winner's best match falls below its class's
    threshold, the low quantile of how close unseen bearings of that class come to the
    rest of the library, so a window unlike anything known is refused even when its cosine
    is high in absolute terms; ``novelty`` says by how much (in units of the class's
    spread), and the confidence in "unknown" is the share of unseen-bearing matches that
    came closer than this one. A classified window's confidence stays the winner's share,
    now of the temperature-scaled vote.

Aggregating (``aggregate``)
    A recording is many windows; each verdict votes for its label with its confidence as
    weight, so a few hesitant windows cannot outvote many sure ones. The aggregate's
    confidence is the winner's share of that weight; a class winner below
    ``min_confidence`` becomes "unknown (ambiguous across windows)".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from faultline.fault_library.novelty import Calibration

UNKNOWN = "unknown"
DEFAULT_TEMPERATURE = 0.05

__all__ = ["DEFAULT_TEMPERATURE", "UNKNOWN", "Verdict", "aggregate", "decide"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A diagnosis: label, support for it in [0, 1], why it is ``unknown`` (else None),
    and the best cosine similarity seen (so operators can see how close the library was).

    With a calibration: ``novelty`` is how far the winner's best match fell below its
    class's threshold in units of the class's spread (> 0 means novel), and ``vote_share``
    the raw weighted vote before calibration (kept for reliability reports).
    ``evidence``: the characteristic lines read from the spectrum when the verdict was
    cross-checked with them (:mod:`faultline.fault_library.physics`).
    """

    label: str
    confidence: float
    reason: str | None
    top_score: float
    novelty: float | None = None
    vote_share: float | None = None
    evidence: str | None = None

    @property
    def code(self) -> str | None:
        """Stable reason code: every reason starts with ``<code>:`` (``novel``,
        ``ambiguous``, ``lines``, ``no_lines``, ``absence``, ``baseline`` or a signal-quality
        code such as ``clipped``); None for a plain retrieval answer."""
        if not self.reason:
            return None
        return self.reason.split(":", 1)[0].strip().replace(" ", "_")


def _check_thresholds(min_similarity: float, min_confidence: float) -> None:
    if not -1.0 <= min_similarity <= 1.0:
        raise ValueError(f"min_similarity must be in [-1, 1], got {min_similarity}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")


def _ranked(tally: dict[str, float]) -> list[tuple[str, float]]:
    """Classes by weight, ties broken by name so the same input always gives the same answer."""
    return sorted(tally.items(), key=lambda item: (-item[1], item[0]))


def _tied(ranked: list[tuple[str, float]]) -> bool:
    """A tie for first place is ambiguous whatever the threshold: only the name decides it."""
    return len(ranked) > 1 and math.isclose(ranked[0][1], ranked[1][1], rel_tol=1e-9)


def decide(
    labels: Sequence[str],
    scores: Sequence[float],
    *,
    min_similarity: float = 0.5,
    min_confidence: float = 0.5,
    temperature: float | None = None,
    calibration: Calibration | None = None,
) -> Verdict:
    """Similarity-weighted kNN vote over one window's neighbours (see module docstring).

    ``temperature`` defaults to the calibration's fitted value, else 0.05.
    """
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} scores")
    if temperature is None:
        temperature = DEFAULT_TEMPERATURE if calibration is None else calibration.temperature
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    _check_thresholds(min_similarity, min_confidence)
    if len(labels) == 0:
        return Verdict(UNKNOWN, 1.0, "novel: the library returned no neighbours", -1.0)
    s = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError("neighbour scores must be finite")
    top = float(s.max())
    weights = np.exp((s - top) / temperature)  # shifted: the largest term is exactly 1
    weights /= weights.sum()
    tally: dict[str, float] = {}
    for label, w in zip(labels, weights.tolist(), strict=True):
        tally[label] = tally.get(label, 0.0) + w
    ranked = _ranked(tally)
    winner, share = ranked[0]
    if top < min_similarity:
        support = min(1.0, (min_similarity - top) / (min_similarity + 1.0))
        reason = f"novel: best similarity {top:.2f} < {min_similarity:.2f}"
        return Verdict(UNKNOWN, support, reason, top)
    if calibration is not None:
        return _calibrated(labels, s, ranked, top, min_confidence, calibration)
    if share < min_confidence or _tied(ranked):
        runner_up = ranked[1]  # share < 1 implies at least two classes
        reason = f"ambiguous: {winner} {share:.2f} vs {runner_up[0]} {runner_up[1]:.2f}"
        return Verdict(UNKNOWN, 1.0 - share, reason, top)
    return Verdict(winner, share, None, top)


def _calibrated(
    labels: Sequence[str],
    scores: npt.NDArray[np.float64],
    ranked: list[tuple[str, float]],
    top: float,
    min_confidence: float,
    calibration: Calibration,
) -> Verdict:
    winner, share = ranked[0]
    best = max(s for label, s in zip(labels, scores.tolist(), strict=True) if label == winner)
    typicality = calibration.typicality(winner, best)
    novelty = None if typicality is None else -typicality
    threshold = calibration.threshold(winner)
    if typicality is not None and threshold is not None and typicality < 0:
        reason = (
            f"novel: best {winner} match {best:.3f} < {threshold:.3f}, the "
            f"{calibration.quantile:.0%} low end of how close unseen {winner} bearings come"
        )
        tail = calibration.tail(winner, best)
        support = 1.0 - (calibration.quantile if tail is None else min(tail, calibration.quantile))
        return Verdict(UNKNOWN, support, reason, top, novelty, share)
    if share < min_confidence or _tied(ranked):
        runner_up = ranked[1]
        reason = f"ambiguous: {winner} {share:.2f} vs {runner_up[0]} {runner_up[1]:.2f}"
        return Verdict(UNKNOWN, 1.0 - share, reason, top, novelty, share)
    return Verdict(winner, share, None, top, novelty, share)


def _evidence_of(voters: Sequence[Verdict]) -> str | None:
    """The lines cited by the surest voter that cites any (None if none does)."""
    citing = [v for v in voters if v.evidence]
    return max(citing, key=lambda v: v.confidence).evidence if citing else None


def aggregate(verdicts: Sequence[Verdict], *, min_confidence: float = 0.5) -> Verdict:
    """Confidence-weighted vote of a recording's window verdicts (see module docstring)."""
    if not verdicts:
        raise ValueError("cannot aggregate zero verdicts")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    tally: dict[str, float] = {}
    for v in verdicts:
        tally[v.label] = tally.get(v.label, 0.0) + max(v.confidence, 0.0)
    total = sum(tally.values())
    if total <= 0.0:  # every window had zero confidence: fall back to a head count
        tally = dict.fromkeys(tally, 0.0)
        for v in verdicts:
            tally[v.label] += 1.0
        total = float(len(verdicts))
    ranked = _ranked({label: w / total for label, w in tally.items()})
    winner, share = ranked[0]
    voters = [v for v in verdicts if v.label == winner]
    top = max(v.top_score for v in voters)
    if winner == UNKNOWN:
        example = max(voters, key=lambda v: v.confidence).reason
        reason = f"{len(voters)} of {len(verdicts)} windows unknown; e.g. {example}"
        return Verdict(
            UNKNOWN,
            share,
            reason,
            max(v.top_score for v in verdicts),
            evidence=_evidence_of(voters),
        )
    if share < min_confidence or _tied(ranked):
        runner_up = ranked[1]
        reason = (
            f"ambiguous across windows: {winner} {share:.2f} vs {runner_up[0]} {runner_up[1]:.2f}"
        )
        return Verdict(UNKNOWN, 1.0 - share, reason, top)
    return Verdict(winner, share, None, top, evidence=_evidence_of(voters))
