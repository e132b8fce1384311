"""Scatter a fleet search to the shard holders, gather their top-k until a deadline, merge.

A search on ``<prefix>/fleet/search`` reaches one coordinating gateway (a ``$share``
group). It publishes one request per shard of its library version on
``<prefix>/shards/<shard>/search`` (holders of a shard share a group too, so replicas split
the work) with MQTT 5 request/response: the response topic is this gateway's own
``<prefix>/fleet/replies/<client id>`` and the correlation data ``<request id>:<shard>``
says which search and which shard a reply is for. The request carries a message expiry of
the deadline (rounded up to a second), so the broker drops it rather than hand it to a
holder that comes back after the asker stopped waiting.

The answer leaves when every shard replied or at the deadline, whichever is first, naming
the shards that did not reply. Bounded: at most ``max_pending`` searches wait at once (the
next one is answered ``busy`` at once); each holds its request and at most one reply per
shard. Nothing here blocks paho's thread: parsing and publishing are cheap, and one timer
thread ends the searches whose deadline passed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from faultline.agent.fleet.gather import Gather
from faultline.agent.fleet.protocol import (
    FleetError,
    SearchLimits,
    SearchRequest,
    ShardReply,
    encode_request,
    parse_reply,
    parse_request,
)
from faultline.agent.transport.mqtt import InboundMessage
from faultline.fault_library.library import FaultLibrary

__all__ = ["Coordinator", "Reply", "SendRequest"]

log = logging.getLogger(__name__)

SendRequest = Callable[[str, bytes, bytes, int], None]
"""(topic, payload, correlation data, expiry s): one shard request, response topic set."""
Reply = Callable[
    [InboundMessage, SearchRequest | None, dict[str, object], Callable[[], None]], None
]
"""(the asker's message, its request, the answer or error body, ack): answer the asker."""


@dataclass(slots=True)
class _Pending:
    gather: Gather
    message: InboundMessage | None  # None: asked by this gateway (a question's thread)
    ack: Callable[[], None] | None
    done: threading.Event | None = None
    answer: dict[str, object] | None = None


class Coordinator:
    def __init__(
        self,
        *,
        library: Callable[[], FaultLibrary],
        shard_topic: Callable[[str], str],
        send_request: SendRequest,
        reply: Reply,
        limits: SearchLimits,
        deadline_s: float,
        max_pending: int,
    ) -> None:
        self._library = library
        self._shard_topic = shard_topic
        self._send_request = send_request
        self._reply = reply
        self._limits = limits
        self.deadline_s = deadline_s
        self._max_pending = max_pending
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.counts = {
            "searches": 0,
            "answered": 0,
            "partial": 0,
            "rejected": 0,
            "busy": 0,
            "replies": 0,
            "late_replies": 0,
            "bad_replies": 0,
        }

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._expire_loop, name="faultline-fleet-deadlines", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Answer every search still waiting with what it has (partial), then stop."""
        with self._lock:
            self._stopping = True
            waiting = list(self._pending)
            self._wake.notify_all()
        for rid in waiting:
            self._finish(rid)
        if self._thread is not None:
            self._thread.join(5.0)

    # -- the asker's search (paho's thread) ------------------------------------------------
    def offer(self, message: InboundMessage, ack: Callable[[], None]) -> None:
        library = self._library()
        dims = {view: int(library.manifest["views"][view]["dim"]) for view in library.views}
        self._count("searches")
        try:
            request = parse_request(message.payload, self._limits, dims)
        except FleetError as exc:
            self._count("rejected")
            self._reply(message, None, _error(exc), ack)
            return
        if self._scatter(request, message, ack) is None:
            self._count("busy")
            busy = FleetError("busy", "too many fleet searches waiting; ask again shortly")
            self._reply(message, request, _error(busy), ack)

    def search_text(self, text: str, k: int) -> dict[str, object]:
        """Full-text search of every shard's signature descriptions, for a question being
        answered here: blocks the caller's thread (never paho's) until the answer, at most
        the deadline. Raises ``FleetError`` (busy) when ``max_pending`` searches wait."""
        library = self._library()
        empty = np.zeros((0, 1), np.float32)
        request = SearchRequest(library.views[0], k, empty, library.version, text=text)
        pending = self._scatter(request, None, None, threading.Event())
        if pending is None or pending.done is None:
            raise FleetError("busy", "too many fleet searches waiting")
        if not pending.done.wait(self.deadline_s + 5.0):
            self._finish(pending.gather.id)
        if pending.answer is None:
            raise FleetError("no_answer", "the fleet search ended without an answer")
        return pending.answer

    def _scatter(
        self,
        request: SearchRequest,
        message: InboundMessage | None,
        ack: Callable[[], None] | None,
        done: threading.Event | None = None,
    ) -> _Pending | None:
        """Register the search and send one request per shard (None: no room)."""
        library = self._library()
        # The coordinator's own version: holders on another one say so (version_mismatch).
        request = dataclasses.replace(request, version=library.version)
        shards = library.all_shards
        rid = uuid.uuid4().hex
        now = time.monotonic()
        gather = Gather(request, shards, now, now + self.deadline_s, rid)
        pending = _Pending(gather, message, ack, done)
        with self._lock:
            if self._stopping or len(self._pending) >= self._max_pending:
                return None
            self._pending[rid] = pending
            self._wake.notify_all()
        body = encode_request(request)
        expiry = max(1, math.ceil(self.deadline_s))
        for shard in shards:
            correlation = f"{rid}:{shard}".encode()
            try:
                self._send_request(self._shard_topic(shard), body, correlation, expiry)
            except Exception as exc:  # a full client queue: that shard is missing, say why
                log.warning("fleet search %s: request to %s not sent: %s", rid, shard, exc)
                self._add(rid, shard, FleetError("not_sent", str(exc)[:200]), None)
        return pending

    # -- a holder's reply (paho's thread) --------------------------------------------------
    def on_reply(self, message: InboundMessage) -> None:
        rid, _, shard = (message.correlation_data or b"").decode("utf-8", "replace").partition(":")
        with self._lock:
            pending = self._pending.get(rid)
            request = pending.gather.request if pending else None
        if request is None:
            self._count("late_replies")  # after its deadline, or not ours
            return
        self._count("replies")
        try:
            reply, version, agent_id = parse_reply(
                message.payload,
                max_bytes=self._limits.max_payload_bytes,
                n_queries=len(request.vectors),
                k=request.k,
                text=request.text is not None,
            )
        except FleetError as exc:
            self._count("bad_replies")
            reply, version, agent_id = exc, None, None
        self._add(rid, shard, reply, version, agent_id)

    def _add(
        self,
        rid: str,
        shard: str,
        reply: ShardReply | FleetError,
        version: str | None,
        agent_id: str | None = None,
    ) -> None:
        with self._lock:
            pending = self._pending.get(rid)
            done = pending is not None and pending.gather.add(shard, reply, version, agent_id)
        if done:
            self._finish(rid)

    # -- answers ----------------------------------------------------------------------------
    def _finish(self, rid: str) -> None:
        with self._lock:
            pending = self._pending.pop(rid, None)
        if pending is None:
            return  # finished already (all replies and the deadline raced)
        body = pending.gather.answer(time.monotonic(), self.deadline_s)
        self._count("answered")
        if body["partial"]:
            self._count("partial")
            log.info("fleet search answered without shards %s", body["missing_shards"])
        if pending.done is not None:
            pending.answer = body
            pending.done.set()
        elif pending.message is not None and pending.ack is not None:
            self._reply(pending.message, pending.gather.request, body, pending.ack)

    def _expire_loop(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                now = time.monotonic()
                due = [rid for rid, p in self._pending.items() if p.gather.deadline <= now]
                if not due:
                    nearest = min((p.gather.deadline for p in self._pending.values()), default=None)
                    self._wake.wait(None if nearest is None else nearest - now)
                    continue
            for rid in due:
                self._finish(rid)

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def status(self) -> dict[str, object]:
        with self._lock:
            return {**self.counts, "pending": len(self._pending), "deadline_s": self.deadline_s}


def _error(exc: FleetError) -> dict[str, object]:
    return {"error": {"code": exc.code, "reason": exc.message}}
