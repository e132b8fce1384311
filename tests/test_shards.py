"""Shards: rendezvous ownership, exact top-k merge, and sharded libraries on real files.

The library-level tests build the same signatures into one shard and into several and
check that search answers are identical (ids and scores), on random unit vectors and on
real CWRU embeddings, for full and partial shard sets.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import pytest

from faultline.encoders.dsp import magnitude_spectrum
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.builder import LibraryBuildError, build_library
from faultline.fault_library.catalog import ManifestEntry, read_manifest
from faultline.fault_library.library import (
    STORE_FILE,
    FaultLibrary,
    LibraryError,
    open_current,
    publish_version,
)
from faultline.fault_library.recordings import iter_windows, read_recording
from faultline.fault_library.shards import (
    assign,
    check_shard_names,
    merge_topk,
    owner,
    partition,
    shard_names,
)
from faultline.fault_library.store import VIEWS, SignatureStore, signature_id
from faultline.fault_library.updates import export_all, reshard
from faultline.fault_library.versions import new_build_dir
from faultline.fault_library.writer import write_version

MODEL_ID = "test-encoder-v1"
LABELS = ("normal", "inner_race", "outer_race", "ball")

FloatMatrix = npt.NDArray[np.float32]


def _ids(n: int, salt: str = "") -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest()[:16] for i in range(n)]


# -- rendezvous hashing ------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 4, 9])
def test_adding_a_shard_moves_one_in_n_plus_one_ids_only_to_the_new_shard(n: int) -> None:
    ids = _ids(10_000)
    before = assign(ids, shard_names(n))
    after = assign(ids, shard_names(n + 1))
    new_shard = shard_names(n + 1)[-1]
    moved = [i for i in ids if before[i] != after[i]]
    assert abs(len(moved) / len(ids) - 1 / (n + 1)) < 0.02, len(moved)
    assert {after[i] for i in moved} == {new_shard}  # nothing moves between old shards
    counts = np.bincount([shard_names(n + 1).index(s) for s in after.values()])
    assert np.all(np.abs(counts / len(ids) - 1 / (n + 1)) < 0.02), counts  # balanced


def test_owner_is_deterministic_and_independent_of_shard_order() -> None:
    ids = _ids(500, "x")
    names = shard_names(5)
    forward = assign(ids, names)
    assert forward == assign(ids, tuple(reversed(names)))
    # the rule itself: highest first 8 bytes of sha256("<shard>|<id>")
    i = ids[0]
    scores = {s: int(hashlib.sha256(f"{s}|{i}".encode()).hexdigest()[:16], 16) for s in names}
    assert owner(i, names) == max(scores, key=lambda s: scores[s])
    parts = partition(ids, names)
    assert sorted(p for positions in parts.values() for p in positions) == list(range(500))
    assert all(forward[ids[p]] == s for s, positions in parts.items() for p in positions)
    assert shard_names(3) == ("shard-00", "shard-01", "shard-02")
    assert shard_names(4)[:3] == shard_names(3)


@pytest.mark.parametrize(
    ("names", "problem"),
    [([], "at least one"), (["a", "a"], "repeat"), (["../x"], "must be"), ([".hidden"], "must be")],
)
def test_shard_names_are_checked(names: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_shard_names(names)
    with pytest.raises(ValueError, match="at least 1 shard"):
        shard_names(0)


# -- exact merge -------------------------------------------------------------------------------
def test_merge_topk_equals_sorting_the_union() -> None:
    rng = np.random.default_rng(3)
    n_queries, k = 40, 7
    ids_pool = np.array(_ids(300, "m"))
    scores, ids = [], []
    for width in (7, 3, 0, 7):  # a shard with fewer rows than k, and an empty one
        s = np.round(rng.standard_normal((n_queries, width)), 1).astype(np.float32)  # many ties
        i = rng.choice(ids_pool, size=(n_queries, width))
        i[rng.random((n_queries, width)) < 0.1] = ""  # FAISS row -1: no hit
        scores.append(s)
        ids.append(i)
    merged = merge_topk(scores, ids, k)
    for q in range(n_queries):
        union = [
            (float(s[q, j]), str(i[q, j]))
            for s, i in zip(scores, ids, strict=True)
            for j in range(s.shape[1])
            if i[q, j] != ""
        ]
        expected = sorted(union, key=lambda t: (-t[0], t[1]))[:k]
        assert [(h.score, h.id) for h in merged[q]] == expected
        for h in merged[q]:  # each hit points back at its shard's entry
            assert ids[h.shard][q, h.column] == h.id
    with pytest.raises(ValueError, match="must both be"):
        merge_topk([np.zeros((2, 3))], [np.full((3, 3), "a")], 2)
    assert merge_topk([], [], 3) == []


# -- sharded libraries on real files ------------------------------------------------------------
def _unit(x: FloatMatrix) -> FloatMatrix:
    out: FloatMatrix = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def _rows(n: int, view: str, labels: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "id": signature_id("sha-rand", f"r{i // 10}", 0.5 * (i % 10), 1.0, view),
            "view": view,
            "row_index": i,
            "label": labels[i],
            "source": "random.npz",
            "record_id": f"r{i // 10}",
            "offset_s": 0.5 * (i % 10),
            "window_s": 1.0,
            "source_sha256": "sha-rand",
            "model_id": MODEL_ID,
            "description": f"random signature {i} ({labels[i]})",
        }
        for i in range(n)
    ]


def _publish(
    root: Path,
    vectors: dict[str, FloatMatrix],
    rows: list[dict[str, Any]],
    shards: int,
    model_id: str = MODEL_ID,
) -> Path:
    tmp = new_build_dir(root)
    write_version(tmp, model_id=model_id, vectors=vectors, rows=rows, source={}, shards=shards)
    return publish_version(root, tmp)


def _random_library(
    n: int = 2_000, dim: int = 32, seed: int = 0
) -> tuple[dict[str, FloatMatrix], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    vectors = {view: _unit(rng.standard_normal((n, dim)).astype(np.float32)) for view in VIEWS}
    labels = [LABELS[i % 4] for i in range(n)]
    rows = [r for view in VIEWS for r in _rows(n, view, labels)]
    return vectors, rows


def _answers(
    lib: FaultLibrary, view: str, queries: FloatMatrix, k: int
) -> tuple[list[list[str]], FloatMatrix]:
    hits = lib.search(view, queries, k)
    return [[n.id for n in h] for h in hits], np.array([[n.score for n in h] for h in hits])


def test_sharded_search_equals_single_index_on_random_vectors(tmp_path: Path) -> None:
    vectors, rows = _random_library()
    rng = np.random.default_rng(1)
    queries = _unit(rng.standard_normal((64, 32)).astype(np.float32))
    ids = {view: [r["id"] for r in rows if r["view"] == view] for view in VIEWS}
    # the reference: one FAISS exact index over everything
    flat = faiss.IndexFlatIP(32)
    flat.add(vectors["window"])
    ref_scores, ref_rows = flat.search(queries, 10)
    ref_ids = [[ids["window"][r] for r in row] for row in ref_rows]
    for n_shards in (1, 3, 7):
        root = tmp_path / f"s{n_shards}"
        _publish(root, vectors, rows, n_shards)
        with open_current(root) as lib:
            assert lib.all_shards == shard_names(n_shards)
            counts = [lib.info()["shards"][s]["views"]["window"]["count"] for s in lib.shards]
            assert sum(counts) == 2_000
            assert min(counts) > 2_000 / n_shards * 0.8
            got_ids, got_scores = _answers(lib, "window", queries, 10)
            assert got_ids == ref_ids, n_shards
            np.testing.assert_allclose(got_scores, ref_scores, rtol=0, atol=1e-6)
            labels = [[n.label for n in h] for h in lib.search("window", queries[:5], 10)]
            position = {i: p for p, i in enumerate(ids["window"])}
            assert labels == [[LABELS[position[i] % 4] for i in row] for row in ref_ids[:5]]


def test_partial_shard_set_searches_only_its_own_rows(tmp_path: Path) -> None:
    vectors, rows = _random_library(n=600)
    _publish(tmp_path, vectors, rows, 3)
    owned = {r["id"] for r in rows if owner(r["id"], shard_names(3)) != "shard-01"}
    owned_spectrum = {r["id"] for r in rows if r["view"] == "spectrum" and r["id"] in owned}
    with open_current(tmp_path, shards=["shard-02", "shard-00"]) as part:
        assert part.shards == ("shard-02", "shard-00")
        for hits in part.search("spectrum", vectors["spectrum"][:20], 600):
            assert {n.id for n in hits} == owned_spectrum  # k > rows held: all of them, no more
        info = part.info()
        assert info["sharding"]["loaded"] == ["shard-02", "shard-00"]
        assert info["shards"]["shard-01"]["loaded"] is False
        assert info["views"]["spectrum"]["count"] == len(owned_spectrum)
        inside = next(iter(owned))
        outside = next(r["id"] for r in rows if r["id"] not in owned)
        assert [r["id"] for r in part.describe([outside, inside])] == [inside]
        with pytest.raises(LibraryError, match="shard-01 not loaded"):
            part.export("window")
    with pytest.raises(LibraryError, match="no shard shard-09 in this version; it has shard-00"):
        open_current(tmp_path, shards=["shard-09"])


def test_a_gateway_verifies_only_the_shards_it_loads(tmp_path: Path) -> None:
    vectors, rows = _random_library(n=300)
    version = _publish(tmp_path, vectors, rows, 2)
    bad = version / "shards" / "shard-01" / "vectors-window.npy"
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    with FaultLibrary.open(version, shards=["shard-00"]) as lib:
        assert lib.shards == ("shard-00",)
    with pytest.raises(LibraryError, match=r"^shards/shard-01/vectors-window.npy: sha256 mismatch"):
        FaultLibrary.open(version)


def _membership(version: Path) -> dict[str, str]:
    """Which shard's SQLite file actually holds each id (read from the files)."""
    out: dict[str, str] = {}
    for directory in sorted((version / "shards").iterdir()):
        with SignatureStore(directory / STORE_FILE, readonly=True) as store:
            for view in VIEWS:
                out.update(dict.fromkeys(store.ids(view).tolist(), directory.name))
    return out


def test_reshard_moves_rows_only_to_the_new_shard_and_keeps_vectors(tmp_path: Path) -> None:
    vectors, rows = _random_library(n=1_000)
    first = _publish(tmp_path, vectors, rows, 4)
    with open_current(tmp_path) as before:
        old = export_all(before)
    result = reshard(tmp_path, 5)
    assert result.parent == first.name
    assert result.total == 2_000
    was, now = _membership(first), _membership(result.path)
    assert set(was) == set(now)
    assert len(now) == 2_000
    moved = {i: now[i] for i in was if was[i] != now[i]}
    assert set(moved.values()) == {"shard-04"}  # only to the new shard
    assert abs(len(moved) / 2_000 - 0.2) < 0.03
    assert result.moved == len(moved)
    with open_current(tmp_path) as after:
        assert after.version == result.path.name
        assert after.all_shards == shard_names(5)
        new = export_all(after)
        assert after.manifest["source"]["history"][-1]["action"] == "reshard"
    for view in VIEWS:
        old_vectors = {r["id"]: v for r, v in zip(old[view][1], old[view][0], strict=True)}
        assert len(new[view][1]) == len(old_vectors)
        for row, vector in zip(new[view][1], new[view][0], strict=True):
            np.testing.assert_array_equal(vector, old_vectors[row["id"]])  # kept, not re-derived


def test_derived_versions_retrain_approximate_indexes_with_the_same_policy(tmp_path: Path) -> None:
    vectors, rows = _random_library(n=600)
    tmp = new_build_dir(tmp_path)
    write_version(
        tmp, model_id=MODEL_ID, vectors=vectors, rows=rows, source={}, shards=2,
        factory="IVF4,Flat", nprobe=4,
    )  # fmt: skip
    publish_version(tmp_path, tmp)
    reshard(tmp_path, 3)
    with open_current(tmp_path) as lib:
        assert lib.manifest["index_policy"]["factory"] == "IVF4,Flat"
        for name in lib.shards:
            for view in VIEWS:
                ix = lib.indexes(view)[name]
                assert (ix.kind, ix.factory, ix.nprobe) == ("approximate", "IVF4,Flat", 4)
                spec = lib.info()["shards"][name]["views"][view]
                assert spec["reason"] == f"IVF4,Flat: chosen explicitly for {ix.ntotal:,} vectors"
        # nprobe = nlist: the IVF search is exhaustive, so the merge is exact again
        got = [[n.id for n in h] for h in lib.search("window", vectors["window"][:10], 5)]
        assert [h[0] for h in got] == [r["id"] for r in rows if r["view"] == "window"][:10]
        assert lib.info()["views"]["window"]["kind"] == "approximate"
    with pytest.raises(LibraryBuildError, match=r"shard-0.*IVF4,Flat needs >= 156 training"):
        reshard(tmp_path, 8)  # 1,200 rows over 8 shards: too few per shard to train IVF4


# -- real CWRU embeddings ------------------------------------------------------------------------
RECORDS = ("97", "105", "118", "130", "106", "131")  # 4 classes, loads 0 and 1 hp


def _two_seconds(entry: ManifestEntry) -> tuple[float, float | None]:
    return 0.0, 2.0


def test_sharded_search_equals_single_index_on_cwru_embeddings(
    cwru_dir: Path, tmp_path: Path, encoder: SpectrumEncoder
) -> None:
    entries = [e for e in read_manifest(cwru_dir) if e.record_id in RECORDS]
    libs = {}
    for n_shards in (1, 4):
        root = tmp_path / f"s{n_shards}"
        build_library(entries, root, encoder, segment=_two_seconds, shards=n_shards, progress=False)
        libs[n_shards] = open_current(root, expected_model_id=encoder.model_id)
    try:
        assert libs[4].all_shards == shard_names(4)
        held = []  # windows the library never saw (3-5 s)
        for entry in entries:
            rec = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
            held += list(iter_windows(rec, "q", window_s=1.0, start_s=3.0, stop_s=5.0))
        queries = {
            "window": encoder.encode(held),
            "spectrum": encoder.encode([magnitude_spectrum(w) for w in held]),
        }
        for view in VIEWS:
            single_ids, single_scores = _answers(libs[1], view, queries[view], 10)
            sharded_ids, sharded_scores = _answers(libs[4], view, queries[view], 10)
            assert sharded_ids == single_ids, view
            np.testing.assert_allclose(sharded_scores, single_scores, rtol=0, atol=1e-6)
            # and the one-shard library is the plain FAISS answer over the kept vectors
            vectors, rows = libs[1].export(view)
            flat = faiss.IndexFlatIP(vectors.shape[1])
            flat.add(vectors)
            ref_scores, ref_rows = flat.search(queries[view], 10)
            assert single_ids == [[rows[r]["id"] for r in row] for row in ref_rows]
            np.testing.assert_allclose(single_scores, ref_scores, rtol=0, atol=1e-6)
        counts = libs[4].info()["views"]["window"]["label_counts"]
        assert counts == {"ball": 3, "inner_race": 6, "normal": 3, "outer_race": 6}
    finally:
        for lib in libs.values():
            lib.close()
