"""One FAISS index over L2-normalised signatures (inner product = cosine similarity).

The library chooses the index honestly by size. IVF-PQ is the production index for large
libraries, but its coarse quantiser needs about 39 training points per centroid and 8-bit
product quantisation about 39 x 256 (~10k); trained on fewer, it returns worse neighbours
than exact search at no gain. Below that threshold we keep an exact ``IndexFlatIP`` and
``describe()`` says so, so ``library info`` and the logs never overstate what runs.

Large-library defaults (``DEFAULT_LARGE_FACTORY``, ``DEFAULT_NPROBE``) come from
``bench/recall.py`` on the issue's 1 M x 256-d synthetic set (targets: 1-recall@10 >= 0.95,
>= 5x exact, <= 80 MB resident; ``bench/RESULTS-recall.md``):

* ``OPQ64,IVF1024,PQ64`` nprobe 8: 1-recall@10 0.968, 23x exact, 74.7 MB. Chosen: it meets the
  targets without assuming anything about the signal's dimension (OPQ only rotates).
* ``PCAR32,IVF1024,PQ32`` nprobe 8: 0.997, 50x, 41.6 MB - better on the synthetic set only
  because that set is a 32-d, zero-mean signal by construction. The spectrum signatures are
  neither: on the CWRU library 63 principal components hold 99 % of the variance (145 hold
  99.9 %), and FAISS's PCA centres the vectors, so the inner products it returns are no longer
  cosines of the original rows. On CWRU (``bench/recall_cwru.py``) every ``PCAR32`` variant
  had 1-recall@10 0.03-0.23 (falling as nprobe grows) and its scores fell below the verdict's
  similarity floor: verdict agreement with exact search 0.019; re-scoring the 10 returned ids
  exactly brought it back to 0.994-1.000. Use it only for libraries known to be
  low-dimensional and centred (``bench.recall.pca_dims``), with re-ranking.
* The provisional ``OPQ32_128,IVF1024,PQ32`` reached only 0.907; plain ``IVF1024,PQ32`` 0.33.

On CWRU signatures (part (a): 13,071 library windows of the 0-2 hp recordings, 4,212 query
windows of the held-out 3 hp recordings) every non-PCA candidate - ``IVF64..256`` with PQ32,
PQ64, OPQ32_128+PQ32, OPQ64+PQ64 and SQ8, nprobe 1-32 - gave the same kNN verdict as exact
search on 100 % of queries (exact itself is right on 100 %), although PQ's 1-recall@10 was
only 0.25-0.66: windows of one recording are near-duplicates, so which of them is returned
does not change the vote. Verdict agreement does not separate those candidates; recall on
the synthetic set is the binding constraint, and the OPQ64 choice meets both. Any FAISS
factory string can still be passed explicitly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import faiss
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

__all__ = [
    "DEFAULT_LARGE_FACTORY",
    "DEFAULT_NPROBE",
    "EXACT_FACTORY",
    "IndexChoice",
    "VectorIndex",
    "choose_index",
    "min_training_points",
    "set_search_threads",
]

EXACT_FACTORY: Final = "Flat"
DEFAULT_LARGE_FACTORY: Final = "OPQ64,IVF1024,PQ64"  # see the module docstring
# Lists probed when the caller gives no nprobe (capped at nlist): recall on the synthetic set
# saturates at 4 (0.968) and 8 keeps that margin on less clustered data at 23x exact speed.
DEFAULT_NPROBE: Final = 8
METRIC: Final = "inner_product"
_POINTS_PER_CENTROID: Final = 39  # FAISS warns below this many training points per centroid
_NORM_TOLERANCE: Final = 1e-3

FloatMatrix = npt.NDArray[np.float32]
RowMatrix = npt.NDArray[np.int64]


def set_search_threads(n: int) -> None:
    """Cap FAISS's OpenMP threads. Edge gateways have few cores shared with MQTT and
    encoding; FAISS would otherwise take them all for every micro-batch."""
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    faiss.omp_set_num_threads(n)


def min_training_points(factory: str) -> int:
    """Training points a factory string needs to train well (0 for untrained indexes)."""
    need = 0
    ivf = re.search(r"IVF(\d+)", factory)
    if ivf:
        need = max(need, _POINTS_PER_CENTROID * int(ivf.group(1)))
    for pq in re.finditer(r"PQ(\d+)(?:x(\d+))?", factory):
        if factory[max(0, pq.start() - 1)] == "O":  # OPQ rotation: trained with the PQ
            continue
        bits = int(pq.group(2)) if pq.group(2) else 8
        need = max(need, _POINTS_PER_CENTROID * 2**bits)
    return need


@dataclass(frozen=True, slots=True)
class IndexChoice:
    factory: str
    reason: str


def choose_index(n: int, large_factory: str = DEFAULT_LARGE_FACTORY) -> IndexChoice:
    """Exact search unless there are enough vectors to train ``large_factory`` well."""
    need = min_training_points(large_factory)
    if n < need:
        return IndexChoice(
            EXACT_FACTORY,
            f"exact (FlatIP): {n:,} vectors below the IVF-PQ training threshold "
            f"({need:,} for {large_factory})",
        )
    return IndexChoice(large_factory, f"{large_factory}: {n:,} vectors >= {need:,} to train it")


def _as_matrix(vectors: npt.ArrayLike, what: str, dim: int | None = None) -> FloatMatrix:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (n, d) array, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what} have dimension {arr.shape[1]}, index has {dim}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contain NaN or Inf")
    return np.ascontiguousarray(arr)


class VectorIndex:
    """A FAISS index plus what it is (factory, kind) and how it was chosen."""

    def __init__(self, index: Any, factory: str) -> None:
        self._index = index
        self.factory = factory

    # -- construction -------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        vectors: npt.ArrayLike,
        *,
        factory: str | None = None,
        large_factory: str = DEFAULT_LARGE_FACTORY,
        nprobe: int | None = None,
        batch_size: int = 65_536,
        progress: bool = False,
        seed: int = 0,
    ) -> VectorIndex:
        """Index ``vectors`` (rows L2-normalised). ``factory=None`` lets ``choose_index``
        decide by size; training uses a seeded sample so a rebuild gives the same index."""
        x = _as_matrix(vectors, "vectors")
        norms = np.linalg.norm(x, axis=1)
        bad = ~((np.abs(norms - 1.0) < _NORM_TOLERANCE) | (norms == 0.0))
        if np.any(bad):
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"vectors must be L2-normalised for cosine search: row {row} has norm "
                f"{norms[row]:.4f}"
            )
        n, dim = x.shape
        chosen = factory if factory is not None else choose_index(n, large_factory).factory
        if chosen == EXACT_FACTORY:
            index: Any = faiss.IndexFlatIP(dim)
        else:
            index = faiss.index_factory(dim, chosen, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            need = min_training_points(chosen)
            if n < need:
                raise ValueError(f"{chosen} needs >= {need:,} training vectors, got {n:,}")
            cap = max(need * 4, 65_536)
            sample = x if n <= cap else x[np.random.default_rng(seed).choice(n, cap, False)]
            index.train(sample)
        out = cls(index, chosen)
        if nprobe is not None:
            out.set_nprobe(nprobe)
        elif out.nprobe is not None:  # FAISS's own default (1) is not what we measured
            out.set_nprobe(min(DEFAULT_NPROBE, int(faiss.extract_index_ivf(index).nlist)))
        bar = tqdm(total=n, desc=f"index {chosen}", unit="vec", disable=not progress)
        with bar:
            for start in range(0, n, batch_size):
                chunk = x[start : start + batch_size]
                index.add(chunk)
                bar.update(len(chunk))
        return out

    @classmethod
    def load(cls, path: str | Path, *, factory: str | None = None) -> VectorIndex:
        """Read an index written by ``save`` (``factory`` from the library manifest)."""
        index = faiss.read_index(str(path))
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{Path(path).name}: index metric is not inner product")
        if factory is None:
            factory = EXACT_FACTORY if _is_flat(index) else type(index).__name__
        return cls(index, factory)

    def save(self, path: str | Path) -> None:
        faiss.write_index(self._index, str(path))

    # -- properties ---------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def metric(self) -> str:
        return METRIC

    @property
    def kind(self) -> str:
        """``exact`` or ``approximate``: what a reader needs to trust the scores."""
        return "exact" if _is_flat(self._index) else "approximate"

    @property
    def nprobe(self) -> int | None:
        try:
            return int(faiss.extract_index_ivf(self._index).nprobe)
        except RuntimeError:
            return None

    def set_nprobe(self, nprobe: int) -> None:
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        if self.nprobe is None:
            raise ValueError(f"{self.factory} has no nprobe (not an IVF index)")
        faiss.ParameterSpace().set_index_parameter(self._index, "nprobe", nprobe)

    def describe(self) -> str:
        """One line for ``library info`` and logs saying which search runs and why."""
        if self.kind == "exact":
            need = min_training_points(DEFAULT_LARGE_FACTORY)
            if self.ntotal < need:
                return choose_index(self.ntotal).reason
            return f"exact (FlatIP): {self.ntotal:,} vectors (exact chosen explicitly)"
        probe = f", nprobe={self.nprobe}" if self.nprobe is not None else ""
        return f"approximate ({self.factory}{probe}): {self.ntotal:,} vectors"

    # -- search -------------------------------------------------------------------------
    def search(self, queries: npt.ArrayLike, k: int) -> tuple[FloatMatrix, RowMatrix]:
        """Top-``k`` (scores, rows) per query, best first; ``k`` is capped at ``ntotal``.
        Rows are -1 where an approximate index found fewer than ``k`` candidates."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = _as_matrix(queries, "queries", self.dim)
        k = min(k, self.ntotal)
        if k == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        scores, rows = self._index.search(q, k)
        return scores, rows


def _is_flat(index: Any) -> bool:
    return isinstance(faiss.downcast_index(index), faiss.IndexFlat)
