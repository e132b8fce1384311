"""One scattered search while its replies come in, and the answer it makes (pure).

The answer merges the replies with ``shards.merge_topk``, the very function a gateway
holding every shard uses, so with all shards answering it is that gateway's answer, id for
id and in the same order (a full-text search's hits: ``shards.merge_ranked``, as
``FaultLibrary.search_text`` merges its shards). Shards that did not answer by the
deadline, or answered with an error or with another library version, are named in
``missing_shards`` with the reason, and ``partial`` is true: the asker sees what the
answer lacks instead of a silently shorter list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from faultline.agent.fleet.protocol import SEARCH_SCHEMA, FleetError, SearchRequest, ShardReply
from faultline.fault_library.library import ShardTopK
from faultline.fault_library.shards import merge_ranked, merge_topk

__all__ = ["Gather"]


@dataclass(slots=True)
class Gather:
    request: SearchRequest
    shards: tuple[str, ...]
    started: float  # time.monotonic()
    deadline: float  # time.monotonic()
    id: str = ""  # the request id a coordinator put in the correlation data
    replies: dict[str, ShardReply] = field(default_factory=dict)
    failures: dict[str, FleetError] = field(default_factory=dict)
    holders: dict[str, str] = field(default_factory=dict)  # shard -> the agent that replied

    def add(
        self,
        shard: str,
        reply: ShardReply | FleetError,
        version: str | None,
        agent_id: str | None = None,
    ) -> bool:
        """Record a shard's reply (the first one counts); True when every shard is in."""
        if shard in self.shards and shard not in self.replies and shard not in self.failures:
            if agent_id is not None:
                self.holders[shard] = agent_id
            if isinstance(reply, FleetError):
                self.failures[shard] = reply
            elif self.request.version is not None and version != self.request.version:
                # Exactness needs one version: a holder still on another one is named.
                self.failures[shard] = FleetError(
                    "version_mismatch",
                    f"searched library {version}, the fleet search asked {self.request.version}",
                )
            else:
                self.replies[shard] = reply
        return self.complete

    @property
    def complete(self) -> bool:
        return len(self.replies) + len(self.failures) == len(self.shards)

    def answer(self, now: float, deadline_s: float) -> dict[str, object]:
        """The merged answer: ``results`` per query (id, label, score, shard), the shards
        that answered and those missing with why."""
        answered = [s for s in self.shards if s in self.replies]
        k = self.request.k
        results = self._text_results(answered) if self.request.text else self._results(answered)
        missing: dict[str, dict[str, str]] = {}
        for shard in self.shards:
            if shard in self.replies:
                continue
            failure = self.failures.get(shard) or FleetError(
                "no_reply", f"no reply within the deadline of {deadline_s:g} s"
            )
            missing[shard] = {"code": failure.code, "reason": failure.message}
        return {
            "schema": SEARCH_SCHEMA,
            **({"text": self.request.text} if self.request.text else {}),
            "view": self.request.view,
            "k": k,
            "library_version": self.request.version,
            "shards": list(self.shards),
            "answered_shards": answered,
            "missing_shards": list(missing),
            "missing": missing,
            "holders": dict(self.holders),
            "partial": bool(missing),
            "results": results,
            "elapsed_ms": round((now - self.started) * 1000.0, 1),
        }

    def _results(self, answered: list[str]) -> list[list[dict[str, Any]]]:
        """Per query vector: the merged top-k (id, label, score, shard)."""
        held = [(s, r) for s in answered if isinstance(r := self.replies[s], ShardTopK)]
        names, tops = [s for s, _r in held], [r for _s, r in held]
        if not tops:
            return [[] for _ in range(len(self.request.vectors))]
        merged = merge_topk([p.scores for p in tops], [p.ids for p in tops], self.request.k)
        return [
            [
                {
                    "id": h.id,
                    "label": str(tops[h.shard].labels[q, h.column]),
                    "score": h.score,
                    "shard": names[h.shard],
                }
                for h in hits
            ]
            for q, hits in enumerate(merged)
        ]

    def _text_results(self, answered: list[str]) -> list[list[dict[str, Any]]]:
        """One list: the full-text hits merged by rank (id, description, rank, shard)."""
        parts = [
            [{**hit, "shard": shard} for hit in reply]
            for shard in answered
            if isinstance(reply := self.replies[shard], list)
        ]
        return [merge_ranked(parts, self.request.k)]
