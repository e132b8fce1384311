"""The recall benchmark's generator and measures, at a size that runs in seconds."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from bench.recall import (
    Targets,
    exact_search,
    memory_bytes,
    recall_at,
    recall_table,
    recommend,
)
from bench.synthetic import DIM, LATENT_DIM, base_vectors, make_mixture, query_vectors


def test_generator_is_seeded_prefix_stable_and_normalised() -> None:
    small, large = base_vectors(1_000), base_vectors(9_000)  # 9,000 spans two seeded blocks
    assert small.shape == (1_000, DIM)
    assert small.dtype == np.float32
    np.testing.assert_array_equal(small, large[:1_000])
    np.testing.assert_allclose(np.linalg.norm(large, axis=1), 1.0, atol=1e-5)
    queries = query_vectors(1_000)
    assert not np.array_equal(queries, small)  # fresh draws, not copies of base rows
    np.testing.assert_array_equal(queries, query_vectors(1_000, make_mixture()))
    assert not np.array_equal(base_vectors(100, make_mixture(seed=1)), small[:100])


def test_signal_lives_in_a_32_dim_subspace() -> None:
    x = base_vectors(4_000).astype(np.float64)
    eig = np.linalg.eigvalsh(np.cov(x.T))[::-1]
    assert eig[:LATENT_DIM].sum() / eig.sum() > 0.99
    assert eig[LATENT_DIM - 1] > 20 * eig[LATENT_DIM]  # a sharp edge after 32 directions


def test_recall_at_counts_top1_hits_and_set_overlap() -> None:
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 9, 1], [5, 6, -1]])  # row 0 has the nearest, row 1 misses it
    top1, overlap = recall_at(found, truth)
    assert top1 == pytest.approx(0.5)
    assert overlap == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_recall_table_flat_is_exact_and_pq_is_not() -> None:
    x, q = base_vectors(5_000), query_vectors(200)
    truth = exact_search(x, q, 10, n_single=3)
    rows = recall_table(
        x,
        q,
        ["Flat", "IVF16,PQ8x4", "IVF16,PQ8x4,RFlat"],
        [16],
        truth=truth,
        n_train=5_000,
        rss=False,
        repeats=1,
    )
    flat, pq, refined = rows
    assert (flat.nprobe, flat.recall1, flat.recallk) == (None, 1.0, 1.0)
    np.testing.assert_array_equal(flat.ids, truth.ids)
    assert pq.nprobe == 16
    assert pq.recall1 < 0.9  # 4 bytes per 256-d vector cannot rank neighbours
    assert refined.k_factor == 4
    assert refined.recallk > pq.recallk
    assert refined.serialized_bytes > x.nbytes > pq.serialized_bytes
    loose = Targets(recall1=0.0, speedup=0.0, resident_bytes=10**12)
    assert recommend(rows, loose) is flat
    assert recommend(rows, loose, exclude="Flat") is pq
    assert recommend(rows, Targets(recall1=0.999, speedup=0.0, resident_bytes=x.nbytes)) is None


def test_resident_bytes_measured_in_a_fresh_process() -> None:
    index = faiss.IndexFlatIP(DIM)
    index.add(base_vectors(20_000))
    size, rss = memory_bytes(index)
    assert size == pytest.approx(20_000 * DIM * 4, rel=0.01)
    assert rss is not None
    assert rss == pytest.approx(size, rel=0.15)
