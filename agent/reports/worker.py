"""Reports on their own thread: the alert path never waits for the model.

``offer`` is called for every alert on the pipeline's thread and costs a dictionary
lookup: it decides whether this window deserves a report (the asset's first, a changed
verdict, zone or damage stage, or ``min_interval_s`` since the last) and, if so, queues it
without waiting (a full queue drops the offer, counted; the next window offers again).
One worker thread loads the model once and writes one report at a time: a 2-core gateway
has no second core to give it while windows arrive, and llama.cpp is fastest with one
request and all its threads. Facts come from code (facts.py); the model writes prose,
the guard checks it, and the template stands in whenever the model is missing, slow,
unparsable or refused; the report says which and why.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from faultline.agent.queue_thread import QueueThread
from faultline.agent.reports.facts import ReportFacts, with_line_history
from faultline.agent.reports.guard import check_narrative
from faultline.agent.reports.template import template_actions, template_narrative
from faultline.agent.reports.writer import (
    Generated,
    ModelError,
    ModelFile,
    NarrativeWriter,
)
from faultline.encoders.severity import Severity

__all__ = [
    "REPORT_SCHEMA",
    "ReportJob",
    "ReportOffer",
    "ReportPolicy",
    "ReportWorker",
    "build_report",
]

log = logging.getLogger(__name__)

REPORT_SCHEMA = "faultline.report/1"
_HISTORY = 60  # windows of line heights kept per asset for the trend


@dataclass(frozen=True, slots=True)
class ReportPolicy:
    min_interval_s: float = 600.0
    queue_size: int = 16
    threads: int = 1
    n_ctx: int = 1024
    max_tokens: int = 320
    timeout_s: float = 30.0
    temperature: float = 0.2
    seed: int = 7


@dataclass(frozen=True, slots=True)
class ReportJob:
    """One report to write: its facts (already complete) and what triggered it."""

    facts: ReportFacts
    trigger: str
    message_id: str
    offered_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class ReportOffer:
    """What decides whether an alert gets a report: cheap to make for every alert."""

    asset: str
    label: str
    zone: str | None
    stage: int | None
    strongest_db: float | None  # the strongest decisive line over its threshold

    @classmethod
    def of(
        cls,
        asset: str,
        label: str,
        severity: Severity | None,
        decisive_margins: Mapping[str, float],
    ) -> ReportOffer:
        return cls(
            asset,
            label,
            None if severity is None else severity.zone,
            None if severity is None else severity.damage.stage,
            max(decisive_margins.values(), default=None),
        )


@dataclass
class _AssetState:
    label: str
    zone: str | None
    stage: int | None
    reported_at: float
    lines: deque[float] = field(default_factory=lambda: deque(maxlen=_HISTORY))


def build_report(
    job: ReportJob,
    *,
    seq: int,
    agent_id: str,
    generated: Generated | None,
    fallback: str | None,
    refused: dict[str, Any] | None,
    model: dict[str, str] | None,
) -> dict[str, Any]:
    """The report body (schema ``faultline.report/1``); pure."""
    facts = job.facts
    use_model = generated is not None and fallback is None
    narrative = generated.narrative if use_model and generated else template_narrative(facts)
    actions = generated.actions if use_model and generated else template_actions(facts)
    return {
        "schema": REPORT_SCHEMA,
        "message_id": job.message_id,
        "seq": seq,
        "agent_id": agent_id,
        "asset": facts.asset,
        "window_ts": facts.window_ts,
        "alert_id": facts.alert_id,
        "library_version": facts.library_version,
        "verdict": {
            "label": facts.label,
            "confidence": round(facts.confidence, 4),
            "code": facts.code,
            "reason": facts.reason,
        },
        "severity": None if facts.severity is None else facts.severity.as_dict(),
        "evidence": facts.evidence_dict(),
        "narrative": narrative,
        "actions": actions,
        "generated_by": "llm" if use_model else "template",
        "refused": refused,
        "fallback": fallback,
        "trigger": job.trigger,
        "model": model,
        "generation": {
            "seconds": round(generated.seconds, 3) if generated else 0.0,
            "prompt_tokens": generated.prompt_tokens if generated else 0,
            "completion_tokens": generated.completion_tokens if generated else 0,
            "tokens_per_s": round(generated.tokens_per_s, 2) if generated else 0.0,
        },
        "emitted_at": time.time(),
        "replay": False,
    }


class ReportWorker(QueueThread[ReportJob]):
    """Bounded queue + one thread; ``publish(asset, message_id, build)`` hands a report to
    the outbox (``build(seq)`` makes its payload once numbered)."""

    def __init__(
        self,
        policy: ReportPolicy,
        *,
        model: Callable[[], ModelFile] | None,
        publish: Callable[[str, str, Callable[[int], bytes]], None],
        agent_id: str,
        on_mode_change: Callable[[], None] | None = None,
    ) -> None:
        super().__init__("faultline-reports", policy.queue_size)
        self.policy = policy
        self._model = model
        self._publish = publish
        self._agent_id = agent_id
        self._on_mode_change = on_mode_change
        self._assets: dict[str, _AssetState] = {}
        self._lock = threading.Lock()
        self._writer: NarrativeWriter | None = None
        self._mode = "starting"
        self._mode_reason: str | None = None
        self.counts: dict[str, int] = {
            "offered": 0,
            "queued": 0,
            "skipped": 0,
            "dropped_queue_full": 0,
            "written_llm": 0,
            "written_template": 0,
            "refused": 0,
            "timeouts": 0,
            "unparsable": 0,
            "failed": 0,
        }
        # What the model produced, over every generation that returned (refused and
        # timed-out ones too: their time and tokens were spent): tokens/s is their ratio.
        self._generation = {"prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}

    # ------------------------------------------------------------------ intake (hot path)
    def offer(self, offer: ReportOffer, message_id: str, facts: Callable[[], ReportFacts]) -> bool:
        """Queue a report for this alert if it deserves one; never waits. ``facts`` is
        called only then: most alerts are skipped, and the pipeline's thread should not
        build what nobody reads."""
        now = time.monotonic()
        zone, stage, strongest = offer.zone, offer.stage, offer.strongest_db
        with self._lock:
            self.counts["offered"] += 1
            state = self._assets.get(offer.asset)
            if state is None:
                trigger: str | None = "first"
            elif state.label != offer.label:
                trigger = "verdict_changed"
            elif (state.zone, state.stage) != (zone, stage):
                trigger = "severity_changed"
            elif now - state.reported_at >= self.policy.min_interval_s:
                trigger = "interval"
            else:
                trigger = None
            history = list(state.lines) if state else []
            if state is not None and strongest is not None:
                state.lines.append(strongest)
            if trigger is None:
                self.counts["skipped"] += 1
                return False
            job = ReportJob(with_line_history(facts(), history), trigger, message_id)
            if not self.try_put(job):
                self.counts["dropped_queue_full"] += 1
                return False
            self.counts["queued"] += 1
            fresh = _AssetState(offer.label, zone, stage, now)
            if state is not None:
                fresh.lines = state.lines
            elif strongest is not None:
                fresh.lines.append(strongest)
            self._assets[offer.asset] = fresh
            return True

    # ------------------------------------------------------------------ the thread
    def on_start(self) -> None:
        self._load()

    def on_failure(self, job: ReportJob, exc: Exception) -> None:
        with self._lock:
            self.counts["failed"] += 1

    def _load(self) -> None:
        if self._model is None:
            self._set_mode("template", "reports.llm is off")
            return
        try:
            model = self._model()
            self._writer = NarrativeWriter(
                model,
                threads=self.policy.threads,
                n_ctx=self.policy.n_ctx,
                max_tokens=self.policy.max_tokens,
                timeout_s=self.policy.timeout_s,
                temperature=self.policy.temperature,
                seed=self.policy.seed,
            )
        except ModelError as exc:
            log.error("report model unavailable, template reports only: %s", exc)
            self._set_mode("template", str(exc))
            return
        log.info("report model %s loaded (%s)", model.model_id, model.path)
        self._set_mode("llm", None)

    def _set_mode(self, mode: str, reason: str | None) -> None:
        self._mode, self._mode_reason = mode, reason
        if self._on_mode_change is not None:
            self._on_mode_change()

    def handle(self, job: ReportJob) -> None:
        facts = job.facts
        generated: Generated | None = None
        fallback: str | None = None
        refused: dict[str, Any] | None = None
        if self._writer is None:
            fallback = "model_unavailable"
        else:
            evidence = facts.prompt_text()
            generated = self._writer.write(evidence, cancelled=lambda: self.stopping)
            if generated is not None:
                self._count_generation(generated)
            if generated is None and self.stopping:
                fallback = "cancelled"  # the agent is stopping
            elif generated is None:
                fallback = "unparsable"
                with self._lock:
                    self.counts["unparsable"] += 1
            else:
                if generated.seconds >= self.policy.timeout_s:
                    fallback = "timeout"
                    with self._lock:
                        self.counts["timeouts"] += 1
                text = " ".join([generated.narrative, *generated.actions])
                problems = check_narrative(text, facts, evidence)
                if problems and fallback is None:
                    fallback = "refused"
                    refused = {
                        "reasons": problems,
                        "narrative": generated.narrative,
                        "actions": generated.actions,
                    }
                    with self._lock:
                        self.counts["refused"] += 1
        model = (
            None
            if self._writer is None
            else {
                "id": self._writer.model.model_id,
                "sha256": self._writer.sha256,
                "path": str(self._writer.model.path),
            }
        )
        with self._lock:
            self.counts["written_template" if fallback else "written_llm"] += 1

        def build(seq: int) -> bytes:
            body = build_report(
                job,
                seq=seq,
                agent_id=self._agent_id,
                generated=generated,
                fallback=fallback,
                refused=refused,
                model=model,
            )
            return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()

        self._publish(facts.asset, job.message_id, build)

    def _count_generation(self, generated: Generated) -> None:
        with self._lock:
            self._generation["prompt_tokens"] += generated.prompt_tokens
            self._generation["completion_tokens"] += generated.completion_tokens
            self._generation["seconds"] += generated.seconds

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, object]:
        with self._lock:
            made = dict(self._generation)
            return {
                "mode": self._mode,
                "degraded_reason": self._mode_reason,
                "model": None if self._writer is None else self._writer.model.model_id,
                "queue": self.waiting,
                **self.counts,
                "generation": {
                    "prompt_tokens": int(made["prompt_tokens"]),
                    "completion_tokens": int(made["completion_tokens"]),
                    "seconds": round(made["seconds"], 3),
                    "tokens_per_s": round(
                        made["completion_tokens"] / made["seconds"] if made["seconds"] else 0.0,
                        2,
                    ),
                },
            }
