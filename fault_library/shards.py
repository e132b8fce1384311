"""Which shard owns a signature, and the exact merge of per-shard top-k answers. Pure.

Ownership is rendezvous (highest-random-weight) hashing: every shard scores every id with
``sha256("<shard>|<id>")`` and the highest score owns it. Adding a shard only moves the ids
the new shard now outscores - about ``1/(N+1)`` of them - and moves them only to the new
shard; no table of ranges has to be kept or agreed on, which is what lets a fleet hand out
shards through the broker later without a protocol of our own. The cost, ``N`` hashes per id,
is paid once per build, never per query.

Search asks every shard for its own top-k and merges: the global top-k is always inside the
union of the per-shard top-k lists, so for exact indexes the merge equals one big index's
answer. Ties are broken by signature id, so the order never depends on how the library
happens to be sharded (a tie exactly at a shard's k-th place is still cut by that shard).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "SCHEME",
    "MergedHit",
    "assign",
    "check_shard_names",
    "merge_ranked",
    "merge_topk",
    "owner",
    "partition",
    "shard_names",
    "weight",
]

SCHEME: Final = "rendezvous-sha256"
"""Recorded in each manifest: a reader with another scheme must not guess owners."""

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class MergedHit(NamedTuple):
    """One merged neighbour: where it came from (shard position, column of its top-k)."""

    id: str
    score: float
    shard: int
    column: int


def shard_names(n: int) -> tuple[str, ...]:
    """``shard-00`` ... : names for ``n`` shards; ``shard_names(n + 1)`` extends ``shard_names(n)``
    so growing a library by one shard keeps every existing shard's name (and its ids)."""
    if n < 1:
        raise ValueError(f"a library needs at least 1 shard, got {n}")
    return tuple(f"shard-{i:02d}" for i in range(n))


def check_shard_names(names: Iterable[str]) -> tuple[str, ...]:
    """Names become directory names and hash keys: plain, unique, at least one."""
    out = tuple(names)
    if not out:
        raise ValueError("at least one shard name is needed")
    for name in out:
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"shard name {name!r} must be 1-64 letters, digits, '_', '.' or '-' "
                "and start with a letter or digit"
            )
    if len(set(out)) != len(out):
        raise ValueError(f"shard names repeat: {', '.join(out)}")
    return out


def weight(shard: str, signature_id: str) -> int:
    """The shard's 64-bit rendezvous score for an id (first 8 bytes of the sha256)."""
    digest = hashlib.sha256(f"{shard}|{signature_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def owner(signature_id: str, shards: Sequence[str]) -> str:
    """The shard that owns ``signature_id``. Equal scores (odds ~2^-64) go to the larger
    name, so the answer never depends on the order the shards are listed in."""
    if not shards:
        raise ValueError("at least one shard name is needed")
    return max(shards, key=lambda s: (weight(s, signature_id), s))


def assign(ids: Iterable[str], shards: Sequence[str]) -> dict[str, str]:
    """``{id: owning shard}`` for every id."""
    names = check_shard_names(shards)
    return {i: owner(i, names) for i in ids}


def partition(ids: Sequence[str], shards: Sequence[str]) -> dict[str, list[int]]:
    """``{shard: positions in ids it owns}``, every shard present, positions ascending."""
    names = check_shard_names(shards)
    out: dict[str, list[int]] = {name: [] for name in names}
    for position, signature_id in enumerate(ids):
        out[owner(signature_id, names)].append(position)
    return out


def merge_topk(
    scores: Sequence[npt.ArrayLike], ids: Sequence[npt.ArrayLike], k: int
) -> list[list[MergedHit]]:
    """Merge per-shard top-k lists into the global top-``k`` per query.

    ``scores[s]`` and ``ids[s]`` are shard ``s``'s ``(n_queries, k_s)`` answer (inner
    product, higher is better); an empty id marks "no hit" (FAISS row -1). Order: score
    descending, then id ascending. Returns one list per query, at most ``k`` long.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(scores) != len(ids):
        raise ValueError(f"{len(scores)} score matrices for {len(ids)} id matrices")
    if not scores:
        return []
    s_parts = [np.asarray(s, dtype=np.float64) for s in scores]
    i_parts = [np.asarray(i, dtype=np.str_) for i in ids]
    n_queries = s_parts[0].shape[0] if s_parts[0].ndim == 2 else -1
    for shard, (s, i) in enumerate(zip(s_parts, i_parts, strict=True)):
        if s.ndim != 2 or s.shape != i.shape or s.shape[0] != n_queries:
            raise ValueError(
                f"shard {shard}: scores {s.shape} and ids {i.shape} must both be "
                f"(n_queries={n_queries}, k) matrices"
            )
    if n_queries == 0:
        return []
    all_scores = np.concatenate(s_parts, axis=1)
    all_ids = np.concatenate(i_parts, axis=1)
    origin = np.concatenate([np.full(s.shape[1], n, np.int64) for n, s in enumerate(s_parts)])
    column = np.concatenate([np.arange(s.shape[1], dtype=np.int64) for s in s_parts])
    valid = all_ids != ""
    keyed = np.where(valid, all_scores, -np.inf)
    order = np.lexsort((all_ids, -keyed), axis=1)[:, :k]
    out: list[list[MergedHit]] = []
    for q in range(n_queries):
        hits: list[MergedHit] = []
        for j in order[q].tolist():
            if not valid[q, j]:
                break  # invalid entries sort last
            hits.append(
                MergedHit(
                    str(all_ids[q, j]), float(all_scores[q, j]), int(origin[j]), int(column[j])
                )
            )
        out.append(hits)
    return out


RankedHit = TypeVar("RankedHit", bound=Mapping[str, Any])


def merge_ranked(parts: Iterable[Iterable[RankedHit]], limit: int) -> list[RankedHit]:
    """Merge per-shard full-text hits (``rank``: FTS5 bm25, lower is better) into the best
    ``limit``: rank ascending, then id, so the order never depends on the sharding. Each
    shard's own best ``limit`` holds every hit of the merged best ``limit``."""
    hits = [hit for part in parts for hit in part]
    hits.sort(key=lambda h: (float(h.get("rank") or 0.0), str(h["id"])))
    return hits[:limit]
