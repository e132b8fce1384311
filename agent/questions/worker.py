"""Questions on their own thread: paho's network thread only parses and queues.

Embedding a question (MiniLM) and searching take milliseconds to tens of milliseconds, so
they never run on the MQTT thread. The text model and the knowledge base load at the first
question (a gateway nobody asks spends no memory on them), and again when the library
version changes. The queue is bounded: a full queue answers "busy" at once.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from faultline.agent.questions.answer import Answer, compose_answer, find_asset
from faultline.agent.questions.history import AssetHistory
from faultline.agent.questions.parse import Question, QuestionError, parse_question
from faultline.agent.queue_thread import QueueThread
from faultline.agent.transport.mqtt import InboundMessage
from faultline.fault_library.knowledge_store import KnowledgeBase

__all__ = ["Found", "QuestionJob", "QuestionWorker"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QuestionJob:
    message: InboundMessage
    question: Question
    ack: Callable[[], None]


@dataclass(frozen=True, slots=True)
class Found:
    """Signature descriptions a question matched: ``(id, description)``, best first, and
    the shards a fleet search could not reach (None: searched here only)."""

    hits: list[tuple[str, str]]
    missing_shards: list[str] | None = None


SIGNATURE_MIN_COSINE = 0.45
_WINDOW_PART = re.compile(r",\s*window at [0-9.]+ s\)?$")


def recording_of(description: str) -> str:
    """A signature's description without its window offset: one entry per recording."""
    return _WINDOW_PART.sub("", description)


Reply = Callable[
    [InboundMessage, Question | None, Answer | QuestionError, Callable[[], None]], None
]


class QuestionWorker(QueueThread[QuestionJob]):
    def __init__(
        self,
        *,
        knowledge: Callable[[], KnowledgeBase | None],
        knowledge_key: Callable[[], Path | None],
        history: AssetHistory,
        reply: Reply,
        signatures: Callable[[str], Found] = lambda _q: Found([]),
        queue_size: int = 32,
    ) -> None:
        super().__init__("faultline-questions", queue_size)
        self._signatures = signatures
        self._knowledge = knowledge
        self._knowledge_key = knowledge_key
        self._history = history
        self._reply = reply
        self._kb: KnowledgeBase | None = None
        self._kb_key: Path | None = None
        self._lock = threading.Lock()
        self.counts = {"asked": 0, "answered": 0, "unknown": 0, "rejected": 0, "busy": 0}
        self.knowledge_error: str | None = None

    # ------------------------------------------------------------------ MQTT thread
    def offer(self, message: InboundMessage, ack: Callable[[], None]) -> None:
        with self._lock:
            self.counts["asked"] += 1
        try:
            question = parse_question(message.payload)
        except QuestionError as exc:
            with self._lock:
                self.counts["rejected"] += 1
            self._reply(message, None, exc, ack)
            return
        if not self.try_put(QuestionJob(message, question, ack)):
            with self._lock:
                self.counts["busy"] += 1
            busy = QuestionError("busy", "too many questions waiting; ask again shortly")
            self._reply(message, question, busy, ack)

    # ------------------------------------------------------------------ the thread
    def handle(self, job: QuestionJob) -> None:
        self._reply(job.message, job.question, self.answer(job.question), job.ack)

    def on_failure(self, job: QuestionJob, exc: Exception) -> None:
        failure = QuestionError("answer_failed", f"{type(exc).__name__}: {exc}")
        self._reply(job.message, job.question, failure, job.ack)

    def answer(self, question: Question) -> Answer:
        kb = self._current_knowledge()
        hits = kb.search(question.text, 5) if kb is not None else []
        relevant = kb.relevant(hits) if kb is not None else False
        asset = find_asset(question, self._history.assets())
        notes = self._history.of(asset) if asset else []
        matches, missing = (
            self._matching_signatures(kb, question.text) if kb is not None else ([], None)
        )
        answer = compose_answer(
            question, asset=asset, notes=notes, hits=hits, relevant=relevant, signatures=matches
        )
        answer = dataclasses.replace(answer, missing_shards=missing)
        with self._lock:
            self.counts["answered" if answer.known else "unknown"] += 1
        return answer

    def _matching_signatures(
        self, kb: KnowledgeBase, question: str
    ) -> tuple[list[tuple[str, str, float]], list[str] | None]:
        """The library's recordings a question is about: BM25 candidates over the signature
        descriptions, re-ranked by MiniLM, one per recording, kept above
        ``SIGNATURE_MIN_COSINE`` (a description is short and formulaic: a higher bar than
        for knowledge entries)."""
        try:
            found = self._signatures(question)
        except Exception as exc:  # the library's text search must not cost the answer
            log.warning("library description search failed: %s", exc)
            return [], None
        distinct: dict[str, tuple[str, str]] = {}
        for signature_id, description in found.hits:
            distinct.setdefault(recording_of(description), (signature_id, description))
        if not distinct:
            return [], found.missing_shards
        candidates = list(distinct.values())
        cosines = kb.similarity(question, [d for _i, d in candidates])
        ranked = sorted(
            ((i, d, c) for (i, d), c in zip(candidates, cosines, strict=True)),
            key=lambda t: -t[2],
        )
        return [t for t in ranked if t[2] >= SIGNATURE_MIN_COSINE][:2], found.missing_shards

    def _current_knowledge(self) -> KnowledgeBase | None:
        key = self._knowledge_key()
        if self._kb is None or key != self._kb_key:
            try:
                self._kb = self._knowledge()
                self.knowledge_error = None
            except Exception as exc:  # a missing model, an unreadable file: say so, go on
                log.error("knowledge base unavailable: %s", exc)
                self._kb = None
                self.knowledge_error = f"{type(exc).__name__}: {exc}"
            self._kb_key = key
        return self._kb

    def status(self) -> dict[str, object]:
        with self._lock:
            return {
                **self.counts,
                "queue": self.waiting,
                "knowledge": None if self._kb is None else self._kb.describe(),
                "knowledge_error": self.knowledge_error,
            }
