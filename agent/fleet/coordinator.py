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

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from faultline.agent.fleet.gather import Gather
from faultline.agent.fleet.protocol import (
    FleetError,
    SearchLimits,
    SearchRequest,
    encode_request,
    parse_reply,
    parse_request,
)
from faultline.agent.transport.mqtt import InboundMessage
from faultline.fault_library.library import FaultLibrary, ShardTopK

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
    message: InboundMessage
    ack: Callable[[], None]


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
        # The coordinator's own version: holders on another one say so (version_mismatch).
        request = SearchRequest(
            request.view,
            request.k,
            request.vectors,
            library.version,
            request.reply_to,
            request.correlation_id,
        )
        shards = library.all_shards
        rid = uuid.uuid4().hex
        now = time.monotonic()
        with self._lock:
            full = self._stopping or len(self._pending) >= self._max_pending
            if not full:
                gather = Gather(request, shards, now, now + self.deadline_s)
                self._pending[rid] = _Pending(gather, message, ack)
                self._wake.notify_all()
        if full:
            self._count("busy")
            busy = FleetError("busy", "too many fleet searches waiting; ask again shortly")
            self._reply(message, request, _error(busy), ack)
            return
        body = encode_request(request)
        expiry = max(1, math.ceil(self.deadline_s))
        for shard in shards:
            try:
                self._send_request(
                    self._shard_topic(shard), body, f"{rid}:{shard}".encode(), expiry
                )
            except Exception as exc:  # a full client queue: that shard is missing, say why
                log.warning("fleet search %s: request to %s not sent: %s", rid, shard, exc)
                self._add(rid, shard, FleetError("not_sent", str(exc)[:200]), None)

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
            reply, version = parse_reply(
                message.payload,
                max_bytes=self._limits.max_payload_bytes,
                n_queries=len(request.vectors),
                k=request.k,
            )
        except FleetError as exc:
            self._count("bad_replies")
            reply, version = exc, None
        self._add(rid, shard, reply, version)

    def _add(
        self, rid: str, shard: str, reply: ShardTopK | FleetError, version: str | None
    ) -> None:
        with self._lock:
            pending = self._pending.get(rid)
            done = pending is not None and pending.gather.add(shard, reply, version)
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
