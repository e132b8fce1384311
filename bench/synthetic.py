"""Reference synthetic vectors for the retrieval benchmarks (issue 4, benchmark (b)).

Figures from ``bench/recall.py`` are only comparable across runs, machines and index
choices if everyone searches the same data, so the generator is fixed and seeded:

* a 32-d Gaussian mixture: 2,000 components, centres drawn N(0, 3^2), unit spread;
* mapped into 256-d by a random orthonormal map (Q of the QR of a Gaussian 256x32 matrix);
* plus N(0, 0.05^2) noise in every one of the 256 dimensions;
* L2-normalised rows, searched by inner product (= cosine, as the fault library does).

The mixture (centres + map) comes from ``seed``; base vectors and queries are fresh draws
from the same mixture with independent streams, so queries are never copies of base rows.
Rows are generated in fixed-size blocks, each from its own child seed, so the first
``n`` rows are the same whatever ``n`` is (a 200k ``--quick`` run is a prefix of the 1M run)
and a test can draw a few thousand rows cheaply.

Why this data is hard for plain PQ: all the signal lives in a 32-d subspace that a random
map spreads over every coordinate, so an unrotated PQ with 8-d sub-vectors quantises 32
entangled 8-d Gaussians; a learned rotation (OPQ) or projection recovers the subspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DIM",
    "LATENT_DIM",
    "Mixture",
    "base_vectors",
    "make_mixture",
    "query_vectors",
    "sample",
]

DIM: Final = 256
LATENT_DIM: Final = 32
N_COMPONENTS: Final = 2_000
CENTRE_SD: Final = 3.0
SPREAD_SD: Final = 1.0
NOISE_SD: Final = 0.05
DEFAULT_SEED: Final = 20240604
_BLOCK: Final = 8_192  # rows per seeded block: keeps prefixes stable and memory bounded
_BASE_STREAM: Final = 1
_QUERY_STREAM: Final = 2

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Mixture:
    """The fixed part of the generator: component centres and the 32->256 map."""

    centres: npt.NDArray[np.float64]  # (N_COMPONENTS, LATENT_DIM)
    basis: npt.NDArray[np.float64]  # (DIM, LATENT_DIM), orthonormal columns
    seed: int


def make_mixture(seed: int = DEFAULT_SEED) -> Mixture:
    """Draw centres and the orthonormal map from ``seed`` (stream 0)."""
    rng = np.random.default_rng([seed, 0])
    centres = rng.normal(0.0, CENTRE_SD, size=(N_COMPONENTS, LATENT_DIM))
    q, r = np.linalg.qr(rng.normal(size=(DIM, LATENT_DIM)))
    q = q * np.sign(np.diag(r))  # sign fix: makes the map a unique function of the draw
    return Mixture(centres=centres, basis=q, seed=seed)


def sample(mixture: Mixture, n: int, rng: np.random.Generator) -> FloatMatrix:
    """``n`` L2-normalised rows from ``mixture`` using ``rng`` (any stream)."""
    comp = rng.integers(0, len(mixture.centres), size=n)
    latent = mixture.centres[comp] + rng.normal(0.0, SPREAD_SD, size=(n, LATENT_DIM))
    x = latent @ mixture.basis.T + rng.normal(0.0, NOISE_SD, size=(n, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def _blocks(mixture: Mixture, n: int, stream: int) -> FloatMatrix:
    out = np.empty((n, DIM), dtype=np.float32)
    for b, start in enumerate(range(0, n, _BLOCK)):
        stop = min(start + _BLOCK, n)
        rng = np.random.default_rng([mixture.seed, stream, b])
        out[start:stop] = sample(mixture, _BLOCK, rng)[: stop - start]
    return out


def base_vectors(n: int, mixture: Mixture | None = None) -> FloatMatrix:
    """The first ``n`` database rows of the reference set (1,000,000 for benchmark (b))."""
    return _blocks(mixture or make_mixture(), n, _BASE_STREAM)


def query_vectors(n: int, mixture: Mixture | None = None) -> FloatMatrix:
    """The first ``n`` queries: same mixture, an independent stream from the base rows."""
    return _blocks(mixture or make_mixture(), n, _QUERY_STREAM)
