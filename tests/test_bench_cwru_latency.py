"""Part (a)'s verdict agreement and the latency harness, on small real FAISS indexes."""

from __future__ import annotations

import faiss
import numpy as np

from bench.latency import latency
from bench.recall_cwru import agreement, verdict_labels
from bench.synthetic import base_vectors, query_vectors


def test_verdict_labels_follow_neighbours_and_skip_missing_ids() -> None:
    labels = np.array(["inner_race", "outer_race", "ball"])
    ids = np.array([[0, 0, 1], [2, -1, -1]])
    scores = np.array([[0.99, 0.98, 0.7], [0.95, -1.0, -1.0]], dtype=np.float32)
    got = verdict_labels(ids, scores, labels)
    assert got == ["inner_race", "ball"]
    assert agreement(got, ["inner_race", "outer_race"]) == 0.5


def test_latency_reports_each_batch_with_p99_at_least_p50() -> None:
    x = base_vectors(2_000)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    rows = latency("flat", index, query_vectors(200), (1, 8, 32), calls=40, warmup=2)
    assert [r.batch for r in rows] == [1, 8, 32]
    for r in rows:
        assert 0 < r.p50_ms <= r.p99_ms
        assert r.p50_ms_per_query == r.p50_ms / r.batch
    assert rows[2].p50_ms > rows[0].p50_ms  # 32 queries cost more than one


def test_ivf_built_without_nprobe_gets_the_measured_default_capped_at_nlist() -> None:
    from faultline.fault_library.index import DEFAULT_NPROBE, VectorIndex

    x = base_vectors(1_000)
    assert VectorIndex.build(x, factory="IVF16,Flat").nprobe == DEFAULT_NPROBE == 8
    assert VectorIndex.build(x, factory="IVF4,Flat").nprobe == 4
    assert VectorIndex.build(x, factory="IVF16,Flat", nprobe=2).nprobe == 2
