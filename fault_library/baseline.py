"""Per-asset healthy baselines: condition monitoring's oldest and most reliable idea.

Healthy data is scarce (one 5-second recording in the whole CWRU set) and every machine's
healthy signature is its own, so an asset can be enrolled: windows recorded while it is
known to be healthy join the library tagged with its id. Its later windows are then judged
against its own baseline too: close to it (and closer than to any known fault) means
``normal``; far from it while the library vote says ``normal`` means ``unknown`` (the
machine changed, in a way unlike any fault we know).

Pure: arrays in, verdicts out. The threshold comes from the baseline itself (leave-one-out
similarity of each enrolled window to the others), so no global constant has to fit every
machine's spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from faultline.fault_library.verdict import Verdict

FloatMatrix = npt.NDArray[np.float32]

LOO_QUANTILE = 0.05
"""The 5th percentile of enrolled windows' similarity to their own baseline..."""
MARGIN = 0.02
"""...minus this margin is the lowest similarity still called 'like its own baseline'."""
MIN_WINDOWS = 3


@dataclass(frozen=True, slots=True)
class Baseline:
    asset: str
    vectors: FloatMatrix
    threshold: float

    def similarity(self, queries: FloatMatrix) -> npt.NDArray[np.float32]:
        """Best cosine similarity of each (L2-normalised) query to the baseline."""
        return np.asarray((queries @ self.vectors.T).max(axis=1), dtype=np.float32)


def fit_baseline(asset: str, vectors: FloatMatrix) -> Baseline:
    """Threshold from how alike the enrolled windows are to each other (leave one out)."""
    if len(vectors) < MIN_WINDOWS:
        raise ValueError(
            f"asset {asset!r} has {len(vectors)} baseline windows; at least {MIN_WINDOWS} needed"
        )
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    loo_best = sims.max(axis=1)
    threshold = float(np.quantile(loo_best, LOO_QUANTILE)) - MARGIN
    return Baseline(asset=asset, vectors=vectors, threshold=threshold)


def judge_against_baseline(
    verdict: Verdict,
    labels: list[str],
    scores: list[float],
    own_similarity: float,
    baseline: Baseline,
) -> Verdict:
    """Refine the library verdict with the asset's own baseline."""
    best_fault = max(
        (s for lab, s in zip(labels, scores, strict=True) if lab != "normal"), default=-1.0
    )
    thr = baseline.threshold
    if own_similarity >= thr and own_similarity >= best_fault:
        span = max(1e-6, 1.0 - thr)
        confidence = 0.5 + 0.5 * min(1.0, (own_similarity - thr) / span)
        return Verdict(
            label="normal",
            confidence=confidence,
            reason=(
                f"baseline: matches the own baseline of {baseline.asset}: similarity "
                f"{own_similarity:.3f} >= {thr:.3f}"
            ),
            top_score=max(verdict.top_score, own_similarity),
        )
    if own_similarity < thr and verdict.label == "normal":
        return Verdict(
            label="unknown",
            confidence=min(1.0, (thr - own_similarity) / max(1e-6, thr + 1.0) * 4),
            reason=(
                f"novel: departed from the own baseline of {baseline.asset} (similarity "
                f"{own_similarity:.3f} < {thr:.3f}) and unlike any known fault"
            ),
            top_score=verdict.top_score,
        )
    return verdict
