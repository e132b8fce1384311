"""Answer ``<prefix>/shards/<shard>/search`` for the shards this gateway loaded.

Which shards a gateway holds is its configuration (``library.shards``, all when unset);
it subscribes to each held shard's request topic through the fleet's ``$share`` group, so
N replicas of a shard split its requests and a request reaches one of them. paho's thread
only parses and queues; the search runs on this thread (one shard's top-k: well under a
millisecond per query for the libraries a gateway holds, but never on the MQTT thread).
Every request gets a reply: the shard's top-k, or an error naming what was wrong
(malformed, another library version, a shard not held here, busy).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from faultline.agent.fleet.protocol import (
    FleetError,
    SearchLimits,
    SearchRequest,
    ShardReply,
    encode_reply,
    parse_request,
)
from faultline.agent.queue_thread import QueueThread
from faultline.agent.transport.mqtt import InboundMessage
from faultline.fault_library.library import FaultLibrary

__all__ = ["HolderJob", "SendReply", "ShardHolder"]

log = logging.getLogger(__name__)

SendReply = Callable[[InboundMessage, str | None, bytes], None]
"""(the request message, its JSON reply_to, the reply body): answer the requester."""


@dataclass(frozen=True, slots=True)
class HolderJob:
    shard: str
    message: InboundMessage
    request: SearchRequest
    ack: Callable[[], None]


class ShardHolder(QueueThread[HolderJob]):
    def __init__(
        self,
        *,
        library: Callable[[], FaultLibrary],
        agent_id: str,
        send: SendReply,
        limits: SearchLimits,
        queue_size: int = 32,
    ) -> None:
        super().__init__("faultline-shard-holder", queue_size)
        self._library = library
        self._agent_id = agent_id
        self._send = send
        self._limits = limits
        self._lock = threading.Lock()
        self.counts = {"requests": 0, "answered": 0, "rejected": 0, "busy": 0}

    # -- paho's thread ----------------------------------------------------------------------
    def offer(self, shard: str, message: InboundMessage, ack: Callable[[], None]) -> None:
        self._count("requests")
        library = self._library()
        dims = {view: int(library.manifest["views"][view]["dim"]) for view in library.views}
        try:
            request = parse_request(message.payload, self._limits, dims)
            if shard not in library.shards:
                raise FleetError(
                    "shard_not_held",
                    f"{shard} is not loaded here (loaded: {', '.join(library.shards)})",
                )
            if request.version is not None and request.version != library.version:
                raise FleetError(
                    "version_mismatch",
                    f"this holder serves library {library.version}, asked {request.version}",
                )
        except FleetError as exc:
            self._count("rejected")
            self._answer(shard, message, None, exc, library.version, ack)
            return
        if not self.try_put(HolderJob(shard, message, request, ack)):
            self._count("busy")
            busy = FleetError("busy", f"{self.waiting} shard searches waiting here")
            self._answer(shard, message, request, busy, library.version, ack)

    # -- the thread -------------------------------------------------------------------------
    def handle(self, job: HolderJob) -> None:
        library = self._library()
        request = job.request
        found: ShardReply = (
            library.search_text_shard(job.shard, request.text, request.k, any_word=True)
            if request.text is not None
            else library.search_shard(job.shard, request.view, request.vectors, request.k)
        )
        self._count("answered")
        self._answer(job.shard, job.message, request, found, library.version, job.ack)

    def on_failure(self, job: HolderJob, exc: Exception) -> None:
        failure = FleetError("search_failed", f"{type(exc).__name__}: {str(exc)[:200]}")
        self._answer(job.shard, job.message, job.request, failure, None, job.ack)

    def _answer(
        self,
        shard: str,
        message: InboundMessage,
        request: SearchRequest | None,
        answer: ShardReply | FleetError,
        version: str | None,
        ack: Callable[[], None],
    ) -> None:
        try:
            self._send(
                message,
                request.reply_to if request else None,
                encode_reply(shard, self._agent_id, answer, version),
            )
        except Exception:
            # Not sent (client queue full): the coordinator names the shard at its deadline.
            log.exception("reply for %s not sent", shard)
        ack()

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def status(self) -> dict[str, object]:
        with self._lock:
            return {**self.counts, "queue": self.waiting, "shards": list(self._library().shards)}
