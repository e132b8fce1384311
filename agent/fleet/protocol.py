"""What fleet searches, shard requests and shard replies say on the wire (pure).

A fleet search and the per-shard request it is scattered into have the same JSON body::

    {"view": "window" | "spectrum", "k": 10, "vectors": [[256 floats], ...],
     "version": "<library version>"?, "reply_to": str?, "correlation_id": str?}

or, for the signature descriptions a question cites, ``{"text": "ball fault 0.014", "k":
20, ...}`` (full text, any of the content words; hits merged by bm25 rank as a gateway
holding every shard merges them).

``reply_to`` and ``correlation_id`` are for an MQTT 3.1.1 client; with MQTT 5 the response
topic and correlation data are properties, as for questions. A shard holder answers with
its own top-k (``faultline.shard_reply/1``), the coordinator merges them into one
``faultline.search/1``. Every bound is checked before anything is built from the bytes:
size first, then JSON, then shapes; an invalid message raises ``FleetError`` whose code the
error reply carries.

Vectors travel as JSON numbers. A float32 converted to a Python float is exact and JSON
keeps a float64 exactly (shortest round-trip repr), so a holder searches with the very
vectors the asker sent, and its float32 scores come back to the coordinator unchanged:
the merge sees what a local ``FaultLibrary.search`` sees.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from faultline.agent.coded_error import CodedError
from faultline.fault_library.library import ShardTopK

__all__ = [
    "REPLY_SCHEMA",
    "SEARCH_SCHEMA",
    "FleetError",
    "ParsedReply",
    "SearchLimits",
    "SearchRequest",
    "ShardReply",
    "encode_reply",
    "encode_request",
    "parse_reply",
    "parse_request",
]

SEARCH_SCHEMA = "faultline.search/1"
REPLY_SCHEMA = "faultline.shard_reply/1"
_TOPIC = re.compile(r"^[^#+\x00]{1,200}$")
_TEXT_MAX = 200  # characters of an id, label, version or correlation id
_QUERY_MAX = 500  # characters of a text search (a question's length)
_DESCRIPTION_MAX = 2000

ShardReply = ShardTopK | list[dict[str, Any]]
"""A holder's answer: top-k per query vector, or full-text hits (id, description, rank)."""


class FleetError(CodedError):
    """Why a request or reply was refused; ``code`` is what the error reply names."""


@dataclass(frozen=True, slots=True)
class SearchLimits:
    max_payload_bytes: int
    max_queries: int
    max_k: int


@dataclass(frozen=True, slots=True)
class SearchRequest:
    view: str
    k: int
    vectors: npt.NDArray[np.float32]
    version: str | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    text: str | None = None  # a full-text search instead of vectors


def parse_request(payload: bytes, limits: SearchLimits, dims: Mapping[str, int]) -> SearchRequest:
    """A search body, checked against the bounds and the library's views (``dims``: view
    -> vector length)."""
    body = _json_object(payload, limits.max_payload_bytes, "request")
    view = body.get("view", "window")
    if not isinstance(view, str) or view not in dims:
        raise FleetError("bad_view", f"'view' must be one of {', '.join(sorted(dims))}")
    k = body.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limits.max_k:
        raise FleetError("bad_k", f"'k' must be an integer from 1 to {limits.max_k}")
    text = body.get("text")
    if text is None:
        vectors = _vectors(body.get("vectors"), limits.max_queries, dims[view])
    elif "vectors" in body:
        raise FleetError("bad_request", "a search has 'vectors' or 'text', not both")
    elif not isinstance(text, str) or not text.strip() or len(text) > _QUERY_MAX:
        raise FleetError("bad_text", f"'text' must be 1 to {_QUERY_MAX} characters")
    else:
        vectors = np.zeros((0, dims[view]), np.float32)
    reply_to = _text(body, "reply_to")
    if reply_to is not None and not _TOPIC.match(reply_to):
        raise FleetError("bad_reply_to", "reply_to must be a topic without wildcards")
    return SearchRequest(
        view=view,
        k=k,
        vectors=vectors,
        version=_text(body, "version"),
        reply_to=reply_to,
        correlation_id=_text(body, "correlation_id"),
        text=text,
    )


def encode_request(request: SearchRequest) -> bytes:
    """The body a coordinator sends each shard (no reply_to: MQTT 5 properties carry it)."""
    body: dict[str, object] = {"view": request.view, "k": request.k, "version": request.version}
    if request.text is not None:
        body["text"] = request.text
    else:
        body["vectors"] = request.vectors.astype(np.float64).tolist()
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()


def encode_reply(
    shard: str, agent_id: str, answer: ShardReply | FleetError, version: str | None
) -> bytes:
    body: dict[str, object] = {
        "schema": REPLY_SCHEMA,
        "shard": shard,
        "agent_id": agent_id,
        "version": version,
    }
    if isinstance(answer, FleetError):
        body["error"] = {"code": answer.code, "reason": answer.message}
    elif isinstance(answer, list):
        body["hits"] = [
            {"id": h["id"], "description": h.get("description"), "rank": h.get("rank")}
            for h in answer
        ]
    else:
        body["ids"] = answer.ids.tolist()
        body["labels"] = answer.labels.tolist()
        body["scores"] = answer.scores.astype(np.float64).tolist()
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()


class ParsedReply(NamedTuple):
    answer: ShardReply | FleetError
    version: str | None  # the library version the holder searched
    agent_id: str | None  # which holder (replicas of a shard take turns)


def parse_reply(
    payload: bytes, *, max_bytes: int, n_queries: int, k: int, text: bool = False
) -> ParsedReply:
    """A holder's reply: its top-k (at most ``k`` per query, one row per query) or the
    error it reported, the library version it searched and who it is. A reply that breaks
    the format raises ``FleetError`` (``bad_reply``)."""
    try:
        body = _json_object(payload, max_bytes, "reply")
    except FleetError as exc:
        raise FleetError("bad_reply", exc.message) from None
    version = body.get("version")
    if version is not None and (not isinstance(version, str) or len(version) > _TEXT_MAX):
        raise FleetError("bad_reply", "'version' must be a short string")
    agent = body.get("agent_id")
    agent_id = agent[:_TEXT_MAX] if isinstance(agent, str) else None
    error = body.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise FleetError("bad_reply", "'error' must be an object")
        code, reason = error.get("code"), error.get("reason")
        return ParsedReply(FleetError(str(code)[:_TEXT_MAX], str(reason)[:400]), version, agent_id)
    if text:
        return ParsedReply(_hits(body.get("hits"), k), version, agent_id)
    ids = _rows(body.get("ids"), n_queries, k, "ids", str)
    labels = _rows(body.get("labels"), n_queries, k, "labels", str)
    scores = _rows(body.get("scores"), n_queries, k, "scores", float)
    width = {len(row) for part in (ids, labels, scores) for row in part}
    if len(width) > 1:
        raise FleetError("bad_reply", "ids, labels and scores must be equal-length rows")
    n = width.pop() if width else 0
    return ParsedReply(
        ShardTopK(
            scores=np.asarray(scores, dtype=np.float32).reshape(n_queries, n),
            ids=np.asarray(ids, dtype=np.str_).reshape(n_queries, n),
            labels=np.asarray(labels, dtype=np.str_).reshape(n_queries, n),
        ),
        version,
        agent_id,
    )


# -- helpers -------------------------------------------------------------------------------
def _json_object(payload: bytes, max_bytes: int, what: str) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise FleetError(
            "request_too_large", f"{len(payload):,} bytes; a {what} is at most {max_bytes:,}"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FleetError("bad_encoding", f"not UTF-8 (byte {exc.start})") from None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise FleetError("bad_json", f"not JSON: {str(exc)[:120]}") from None
    except RecursionError:
        raise FleetError("bad_json", "JSON is nested too deeply") from None
    if not isinstance(body, dict):
        raise FleetError("bad_json", f"a {what} is a JSON object")
    return body


def _text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _TEXT_MAX:
        raise FleetError("bad_request", f"'{key}' must be a string of at most {_TEXT_MAX}")
    return value


def _vectors(value: object, max_queries: int, dim: int) -> npt.NDArray[np.float32]:
    expected = f"'vectors': a list of 1 to {max_queries} lists of {dim} finite numbers"
    if not isinstance(value, list) or not 1 <= len(value) <= max_queries:
        raise FleetError("bad_vectors", expected)
    for row in value:
        if not isinstance(row, list) or len(row) != dim:
            raise FleetError("bad_vectors", expected)
        for x in row:
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise FleetError("bad_vectors", expected)
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.abs(array) <= np.finfo(np.float32).max):
        raise FleetError("bad_vectors", f"{expected} (within float32 range)")
    return array.astype(np.float32)


def _hits(value: object, k: int) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > k:
        raise FleetError("bad_reply", f"'hits' must be a list of at most {k}")
    out = []
    for hit in value:
        ok = (
            isinstance(hit, dict)
            and isinstance(hit.get("id"), str)
            and len(hit["id"]) <= _TEXT_MAX
            and isinstance(hit.get("description"), str)
            and len(hit["description"]) <= _DESCRIPTION_MAX
            and isinstance(hit.get("rank"), int | float)
            and not isinstance(hit.get("rank"), bool)
            and math.isfinite(hit["rank"])
        )
        if not ok:
            raise FleetError("bad_reply", "a hit is {id, description, rank}")
        out.append({"id": hit["id"], "description": hit["description"], "rank": hit["rank"]})
    return out


def _rows(value: object, n_queries: int, k: int, key: str, kind: type) -> list[list[Any]]:
    if not isinstance(value, list) or len(value) != n_queries:
        raise FleetError("bad_reply", f"'{key}' must hold one row per query ({n_queries})")
    for row in value:
        if not isinstance(row, list) or len(row) > k:
            raise FleetError("bad_reply", f"'{key}' rows must be lists of at most {k}")
        for x in row:
            if kind is str:
                ok = isinstance(x, str) and len(x) <= _TEXT_MAX
            else:
                ok = not isinstance(x, bool) and isinstance(x, int | float) and math.isfinite(x)
            if not ok:
                raise FleetError(
                    "bad_reply", f"'{key}' holds a value that is not a {kind.__name__}"
                )
    return value
