"""Composition root: builds every component from the settings and owns the stop event.

Start-up order is library -> pipeline -> transport (so nothing arrives before we can
answer); shutdown runs in reverse: stop intake, drain the pipeline, publish ``offline``.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from faultline.agent import __version__
from faultline.agent.dashboard import dashboard_from_settings
from faultline.agent.error_budget import ErrorBudget
from faultline.agent.fleet import SEARCH_SCHEMA, Coordinator, FleetError, SearchLimits, ShardHolder
from faultline.agent.fleet.protocol import SearchRequest
from faultline.agent.health import Heartbeat
from faultline.agent.library_watch import LibraryHolder, LibraryWatcher
from faultline.agent.memory_budget import resident_mb, worst_case
from faultline.agent.metrics import Counters, StageTimes
from faultline.agent.outbox import ClassPolicy, Outbox, OutboxConfig
from faultline.agent.pipeline import Diagnosis, Job, Pipeline
from faultline.agent.prometheus import AgentView, MetricsServer
from faultline.agent.questions.answer import ANSWER_SCHEMA, Answer
from faultline.agent.questions.history import AlertNote, AssetHistory
from faultline.agent.questions.parse import Question, QuestionError
from faultline.agent.questions.worker import Found, QuestionWorker
from faultline.agent.reports.facts import facts_from
from faultline.agent.reports.worker import ReportOffer, ReportPolicy, ReportWorker
from faultline.agent.reports.writer import ModelFile, default_model
from faultline.agent.settings import ConfigError, Settings
from faultline.agent.settings_errors import ConfigProblem
from faultline.agent.threads import limit_library_threads
from faultline.agent.transport.mqtt import InboundMessage, MqttTransport
from faultline.agent.transport.payloads import (
    QUOTE_LIMIT,
    AlertRecord,
    ErrorRecord,
    PayloadError,
    PayloadLimits,
    alert_message_id,
    answered_key,
    decode_command,
    decode_spectrum,
    decode_window,
    encode_alert,
    encode_error,
    new_message_id,
    quoted,
)
from faultline.agent.transport.topics import Topics, build_topics
from faultline.encoders.projection import ProjectionError
from faultline.encoders.severity import DEFAULT_MACHINE_CLASS
from faultline.encoders.signals import Measurement
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.encoders.text import TextEncoder
from faultline.fault_library.diagnosis import DecisionPolicy
from faultline.fault_library.knowledge_store import (
    KNOWLEDGE_FILE,
    KnowledgeBase,
    load_entries,
    write_knowledge,
)
from faultline.fault_library.library import FaultLibrary

log = logging.getLogger(__name__)

TOPIC_LIMIT = 256  # characters of a client's topic an error or a log line repeats
REASON_LIMIT = 400  # characters of a rejection's reason, whatever produced it


def topics_from_settings(settings: Settings) -> Topics:
    return build_topics(
        prefix=settings.topics.prefix,
        client_id=settings.resolved_client_id(),
        window_filters=list(settings.topics.window_filters),
        spectrum_filters=list(settings.topics.spectrum_filters),
        shared_group=settings.topics.shared_group,
        fleet_group=settings.fleet.group,
    )


def limits_from_settings(settings: Settings) -> PayloadLimits:
    lim = settings.limits
    return PayloadLimits(
        max_payload_bytes=lim.max_payload_bytes,
        min_samples=lim.min_samples,
        max_samples=lim.max_samples,
        min_fs=lim.min_fs,
        max_fs=lim.max_fs,
        min_rpm=lim.min_rpm,
        max_rpm=lim.max_rpm,
        max_spectrum_bins=lim.max_spectrum_bins,
    )


def policy_from_settings(settings: Settings) -> DecisionPolicy:
    """The decision's switches from the config: one mapping for ``run`` and ``diagnose``."""
    verdict = settings.verdict
    return DecisionPolicy(
        top_k=settings.pipeline.top_k,
        min_similarity=verdict.min_similarity,
        min_confidence=verdict.min_confidence,
        line_check=verdict.line_check,
        line_shift_db=verdict.line_shift_db,
        absence=verdict.absence,
        quality_gate=verdict.quality_gate,
    )


def encoder_from_settings(settings: Settings) -> SpectrumEncoder:
    """The spectrum encoder; the shipped projection was trained for one (target_fs,
    window_s), so other values are a configuration error, reported as one."""
    try:
        return SpectrumEncoder(
            target_fs=settings.encoder.target_fs, window_s=settings.encoder.window_s
        )
    except ProjectionError as exc:
        raise ConfigError(
            [
                ConfigProblem(
                    path="encoder.target_fs / encoder.window_s",
                    expected="the values the shipped spectrum model was trained for "
                    "(12000.0 and 1.0)",
                    given=f"{settings.encoder.target_fs} and {settings.encoder.window_s}",
                    source=str(exc),
                )
            ]
        ) from None


def outbox_from_settings(settings: Settings, on_fault: Callable[[str, str], None]) -> Outbox:
    box = settings.outbox
    return Outbox(
        OutboxConfig(
            path=settings.resolved_outbox_path() if box.enabled else None,
            policies={
                name: ClassPolicy(ttl_s=c.ttl_s, on_full=c.on_full)
                for name, c in box.classes.items()
            },
            max_rows=box.max_rows,
            max_bytes=box.max_bytes,
            memory_max_rows=box.memory_max_rows,
            replay_rate=box.replay_rate,
            window=box.window,
            commit_wait_s=box.commit_wait_ms / 1000.0,
            synchronous=box.synchronous,
            answered_retention_s=box.answered_retention_s,
        ),
        on_fault=on_fault,
    )


def report_worker_from_settings(
    settings: Settings,
    *,
    agent_id: str,
    publish: Callable[[str, str, Callable[[int], bytes]], None],
    on_mode_change: Callable[[], None] | None = None,
) -> ReportWorker | None:
    """The report worker the settings ask for (None: reports off)."""
    cfg = settings.reports
    if not cfg.enabled:
        return None
    model: Callable[[], ModelFile] | None = None
    if cfg.llm:
        path = cfg.model_path

        def model() -> ModelFile:
            if path is None:
                return default_model()
            return ModelFile(path.expanduser(), path.name, cfg.model_sha256)

    return ReportWorker(
        ReportPolicy(
            min_interval_s=cfg.min_interval_s,
            queue_size=cfg.queue_size,
            threads=cfg.threads,
            n_ctx=cfg.n_ctx,
            max_tokens=cfg.max_tokens,
            timeout_s=cfg.timeout_s,
            temperature=cfg.temperature,
            seed=cfg.seed,
        ),
        model=model,
        publish=publish,
        agent_id=agent_id,
        on_mode_change=on_mode_change,
    )


def transport_from_settings(
    settings: Settings,
    *,
    client_id: str,
    status_topic: str,
    status_online: Callable[[], dict[str, object]],
    on_message: Callable[[InboundMessage], None],
    on_connection_change: Callable[[bool], None] | None = None,
    on_published: Callable[[int, bool], None] | None = None,
    manual_ack: bool = False,
) -> MqttTransport:
    mqtt = settings.mqtt
    return MqttTransport(
        host=mqtt.host,
        port=mqtt.port,
        client_id=client_id,
        protocol=mqtt.protocol,
        username=mqtt.username,
        password=mqtt.password.get_secret_value() if mqtt.password else None,
        keepalive_s=mqtt.keepalive_s,
        session_expiry_s=mqtt.session_expiry_s,
        clean_start=mqtt.clean_start,
        reconnect_min_s=mqtt.reconnect_min_s,
        reconnect_max_s=mqtt.reconnect_max_s,
        max_inflight=mqtt.max_inflight,
        max_queued_messages=mqtt.max_queued_messages,
        tls=mqtt.tls_parameters(),
        status_topic=status_topic,
        status_online=status_online,
        on_message=on_message,
        on_connection_change=on_connection_change,
        on_published=on_published,
        manual_ack=manual_ack,
    )


class Agent:
    """The running agent: MQTT intake -> validation -> pipeline -> alerts."""

    def __init__(
        self,
        settings: Settings,
        library: FaultLibrary,
        encoder: SpectrumEncoder | None = None,
        *,
        library_root: Path | None = None,
    ) -> None:
        self.settings = settings
        self.counters = Counters()
        self.stages = StageTimes()
        # Measured here, with the models and library loaded; `faultline run` refuses a
        # configuration over limits.memory_mb before it builds the agent.
        self.memory = worst_case(settings, resident_mb())
        self.topics = topics_from_settings(settings)
        self.client_id = self.topics.client_id
        self._encoder = encoder or encoder_from_settings(settings)
        self.library = LibraryHolder(library)
        # Hot swap needs to know where versions are published; tests that hand in a
        # library object without a root simply run without watching.
        self.watcher = (
            LibraryWatcher(
                library_root,
                self.library,
                expected_model_id=self._encoder.model_id,
                interval_s=settings.library.watch_interval_s,
                on_swap=self._on_library_swap,
                on_refused=self._on_library_refused,
                trust=settings.library.trust(),
            )
            if library_root is not None
            else None
        )
        self._limits = limits_from_settings(settings)
        self._error_budget = ErrorBudget(
            settings.limits.errors_per_s,
            settings.limits.error_burst,
            settings.limits.error_summary_s,
        )
        # Everything the agent says goes through the outbox; built before the transport,
        # whose callbacks (PUBACK, link changes) it needs.
        self.outbox = outbox_from_settings(settings, self._on_outbox_fault)
        self._started_at = time.time()
        self._stopped = threading.Event()
        pipe = settings.pipeline
        self.pipeline = Pipeline(
            encoder=self._encoder,
            library=lambda: self.library.current,
            on_diagnosis=self._publish_alert,
            on_failure=self._on_pipeline_failure,
            policy=policy_from_settings(settings),
            counters=self.counters,
            stages=self.stages,
            queue_size=pipe.queue_size,
            queue_max_bytes=int(pipe.queue_max_mb * 2**20),
            batch_max_bytes=int(pipe.batch_max_mb * 2**20),
            batch_max=pipe.batch_max,
            batch_wait_s=pipe.batch_wait_ms / 1000.0,
            workers=pipe.workers,
        )
        self.transport = transport_from_settings(
            settings,
            client_id=self.client_id,
            status_topic=self.topics.status,
            status_online=self._status_fields,
            on_message=self._on_message,
            on_connection_change=self._on_link_change,
            on_published=self.outbox.published,
            # A window is acknowledged only once its answer is durable (see _on_message).
            manual_ack=True,
        )
        self.outbox.attach(self._send)
        self.history = AssetHistory()
        self.shard_holder, self.coordinator = self._fleet_from_settings(settings)
        self.questions = QuestionWorker(
            knowledge=self._open_knowledge,
            knowledge_key=lambda: self.library.current.path,
            history=self.history,
            reply=self._publish_answer,
            signatures=self._question_signatures,
        )
        self.reports = report_worker_from_settings(
            settings,
            agent_id=self.client_id,
            publish=self._publish_report,
            on_mode_change=self.transport.publish_status,
        )
        self.metrics = (
            MetricsServer(self._metrics_view(), settings.metrics.host, settings.metrics.port)
            if settings.metrics.enabled
            else None
        )
        self.dashboard = dashboard_from_settings(
            settings,
            self.topics,
            self._limits,
            live=lambda: {
                **self._status_fields(),
                "counters": self.counters.snapshot(),
                "connected": self.transport.connected,
                "queue_depth": self.pipeline.backlog,
            },
        )

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        log.info(
            "worst-case memory %.0f MB of %.0f allowed: %s",
            self.memory.total_mb,
            self.settings.limits.memory_mb,
            self.memory.describe(),
        )
        limit_library_threads(self.settings.pipeline.library_threads)
        if self.metrics is not None:
            self.metrics.start()
        if self.dashboard is not None:
            self.dashboard.start()
        self.outbox.start()
        self.questions.start()
        if self.shard_holder is not None:
            self.shard_holder.start()
        if self.coordinator is not None:
            self.coordinator.start()
        if self.reports is not None:
            self.reports.start()
        self.pipeline.start()
        self.transport.subscribe(self.topics.subscriptions(), qos=self.settings.mqtt.qos)
        self._subscribe_fleet()
        self.transport.start()
        if self.watcher is not None:
            self.watcher.start()
        log.info(
            "agent %s started: library %s (%s), subscribed to %s",
            self.client_id,
            self.library.current.version,
            self.library.current.model_id,
            ", ".join(self.topics.subscriptions()),
        )

    def stop(self) -> None:
        """Stop intake, drain in-flight windows within the bound, publish offline."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.watcher is not None:
            self.watcher.stop()
        left = self.pipeline.stop(self.settings.pipeline.drain_timeout_s)
        self.tick(final=True)
        if left:
            # Not acknowledged: the broker redelivers them at the next start.
            log.warning("%d queued windows were not processed before the drain bound", left)
        if self.coordinator is not None:
            self.coordinator.stop()  # searches still waiting are answered with what they have
        if self.shard_holder is not None:
            self.shard_holder.stop()
        self.questions.stop()
        if self.reports is not None:
            # The report being generated is cut short (its template is published); queued
            # ones are dropped: the next alert of each asset offers a report again.
            unwritten = self.reports.stop(5.0)
            if unwritten:
                log.info("%d queued reports not written at stop", unwritten)
        waiting = self.outbox.stop(self.settings.pipeline.drain_timeout_s)
        if waiting:
            log.info("%d outgoing messages stay in the outbox for the next start", waiting)
        self.transport.stop()
        if self.metrics is not None:
            self.metrics.stop()
        if self.dashboard is not None:
            self.dashboard.stop()
        self.library.close()
        log.info("agent stopped; counters %s", json.dumps(self.counters.snapshot()))

    def run_forever(self, stop_event: threading.Event | None = None) -> None:
        """Run until SIGTERM/SIGINT (or ``stop_event``), then stop cleanly."""
        stop = stop_event or threading.Event()
        install_stop_signals(stop)
        self.start()
        # What start-up built (settings, models, the library's tables: hundreds of thousands
        # of objects) lives as long as the process: moved out of the cyclic collector's
        # reach, so its full collections, which the hot path's allocations trigger, do not
        # walk it again and again (py-spy: 5.6 % of the agent's samples in gc before).
        gc.collect()
        gc.freeze()
        heartbeat = Heartbeat(self)  # <data_dir>/health.json, read by `faultline health`
        try:
            while not stop.wait(1.0):
                self.tick()
                heartbeat.beat()
        finally:
            self.stop()

    # -- intake (paho's network thread) ---------------------------------------------
    def _on_message(self, message: InboundMessage) -> None:
        """Every inbound message is acknowledged to the broker only once what answers it (an
        alert, or the error saying why not) is in the outbox: ``kill -9`` at any moment
        loses no message the broker accepted, it is redelivered and answered then. A
        failure nobody foresaw still ends in a published, counted rejection: no message is
        ever dropped with only a log line."""

        def ack() -> None:
            # Receipt to durable answer: the agent's whole share of a window's latency.
            self.stages.add("received_to_durable", time.monotonic() - message.received_at)
            self.transport.ack(message)

        try:
            self._handle_message(message, ack)
        except Exception as exc:
            log.exception("handling a message on %s failed", message.topic)
            self._reject(
                message.topic,
                None,
                "handler_failed",
                f"{type(exc).__name__}: {str(exc)[:200]}",
                ack=ack,
            )

    def _handle_message(self, message: InboundMessage, ack: Callable[[], None]) -> None:

        if message.topic in self.topics.commands:
            ack()
            self._on_command(message)
            return
        if self._route_fleet(message):
            return
        if message.topic == self.topics.query:
            # Acknowledged once its answer (or the error saying why there is none) is
            # in the outbox, like a window.
            self.questions.offer(message, ack)
            return
        self.counters.add("received")
        route = self.topics.classify(message.topic)
        if route is None:
            self._reject(
                message.topic, None, "unexpected_topic", "no configured filter matches", ack=ack
            )
            return
        kind, asset = route
        started = time.perf_counter()
        try:
            measurement = self._decode(kind, asset, message.payload)
            self.stages.add("decode", time.perf_counter() - started)
        except PayloadError as exc:
            # The error's id is derived from the payload: a copy redelivered after a crash
            # is reported under the same id, so consumers count it once.
            digest = hashlib.sha256(message.payload).hexdigest()[:32]
            self._reject(message.topic, asset, exc.code, exc.message, ack=ack, about=digest)
            return
        key = answered_key(kind, asset, measurement.ts)
        if not self.outbox.claim(key, ack):
            # Redelivered after a crash, or retained and seen again: answered once.
            self.counters.add("duplicates")
            return
        job = Job(
            measurement=measurement,
            topic=message.topic,
            received_at=message.received_at,
            answers=key,
            ack=ack,
        )
        if not self.pipeline.submit(job):
            # Not acknowledged: the broker keeps it for the next start.
            self.outbox.release(key)
            self._reject(message.topic, asset, "shutting_down", "agent is stopping; not queued")

    def _route_fleet(self, message: InboundMessage) -> bool:
        """Fleet searches, shard holders' replies and shard requests (False: none of
        those). Acknowledged once answered, or at once for a reply (nothing waits on it)."""

        def ack() -> None:
            self.transport.ack(message)

        if self.coordinator is not None:
            if message.topic == self.topics.fleet_search and self.settings.fleet.coordinate:
                self.coordinator.offer(message, ack)
                return True
            if message.topic == self.topics.fleet_replies:
                ack()
                self.coordinator.on_reply(message)
                return True
        shard = self.topics.shard_of(message.topic) if self.shard_holder is not None else None
        if shard is not None and self.shard_holder is not None:
            self.shard_holder.offer(shard, message, ack)
            return True
        return False

    def _decode(self, kind: str, asset: str, payload: bytes) -> Measurement:
        decoded: Measurement
        if kind == "spectrum":
            decoded = decode_spectrum(asset, payload, self._limits)
        else:
            decoded = decode_window(asset, payload, self._limits)
        return self._with_asset_defaults(decoded)

    def _with_asset_defaults(self, item: Measurement) -> Measurement:
        """Fill rpm and bearing geometry from the asset's configuration when not sent, and
        say how its severity is judged (machine class, unit of the samples)."""
        asset_cfg = self.settings.assets.get(item.asset)
        judged = self._severity_meta(item.asset)
        if asset_cfg is None:
            return dataclasses.replace(item, meta={**item.meta, **judged}) if judged else item
        changes: dict[str, object] = {}
        if judged:
            changes["meta"] = {**item.meta, **judged}
        if item.rpm is None and asset_cfg.rpm is not None:
            changes["rpm"] = asset_cfg.rpm
            changes["meta"] = {**item.meta, **judged, "rpm_source": "asset"}
        geometry = asset_cfg.bearing_geometry()
        if item.geometry is None and geometry is not None:
            changes["geometry"] = geometry
        return dataclasses.replace(item, **changes) if changes else item  # type: ignore[arg-type]

    def _severity_meta(self, asset: str) -> dict[str, object]:
        """What diagnose_batch reads to judge severity, when it differs from its defaults."""
        defaults = self.settings.severity
        cfg = self.settings.assets.get(asset)
        machine = (cfg.machine_class if cfg else None) or defaults.machine_class
        unit = (cfg.accel_unit if cfg else None) or defaults.accel_unit
        meta: dict[str, object] = {}
        if machine != DEFAULT_MACHINE_CLASS:
            meta["machine_class"] = machine
        if unit != "g":
            meta["accel_unit_m_s2"] = 1.0
        return meta

    def _on_command(self, message: InboundMessage) -> None:
        """Operator commands: ``{"command": "reload_library"}`` or ``{"command": "status"}``."""
        self.counters.add("commands")
        command = decode_command(message.payload)
        if command == "reload_library" and self.watcher is not None:
            self.watcher.request_check()
        elif command == "status":
            self.transport.publish_status()
        else:
            known = "reload_library, status" if self.watcher is not None else "status"
            self._reject(
                message.topic, None, "unknown_command", f"expected {{'command': one of {known}}}"
            )

    def _on_library_swap(self, old: FaultLibrary, new: FaultLibrary) -> None:
        self.counters.add("library_swaps")
        self._subscribe_fleet()  # a resharded version may hold shards of new names
        self.transport.publish_status()

    def _on_library_refused(self, version: str, reason: str) -> None:
        self._reject(
            f"{self.watcher.root if self.watcher else ''}/current",
            None,
            "library_refused",
            f"version {version} refused, still serving {self.library.current.version}: {reason}",
        )

    # -- outputs ---------------------------------------------------------------------
    def _send(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool,
        user_properties: dict[str, str],
        correlation_data: bytes | None,
    ) -> int:
        """How the outbox hands a message to the broker (QoS 1: PUBACK deletes it)."""
        started = time.perf_counter()
        mid = self.transport.publish(
            topic,
            payload,
            qos=1,
            retain=retain,
            user_properties=user_properties,
            content_type="application/json",
            correlation_data=correlation_data,
        )
        # Every outgoing message's hand-over to paho (alerts, reports, errors, answers).
        self.stages.add("publish", time.perf_counter() - started)
        return mid

    def _publish_alert(self, diagnosis: Diagnosis) -> None:
        job = diagnosis.job
        item = job.measurement
        rpm_source = str(item.meta.get("rpm_source", diagnosis.rpm_source))
        key = job.answers or answered_key(diagnosis.view, item.asset, item.ts)
        record = AlertRecord(
            asset=item.asset,
            window_ts=item.ts,
            label=diagnosis.verdict.label,
            confidence=diagnosis.verdict.confidence,
            reason=diagnosis.verdict.reason,
            evidence=diagnosis.verdict.evidence,
            code=diagnosis.verdict.code,
            neighbours=[(n.id, n.label, n.score) for n in diagnosis.neighbours],
            latency_ms=diagnosis.latency_ms,
            seq=0,  # numbered by the outbox, in the asset's stream
            message_id=alert_message_id(self.client_id, key, diagnosis.library_version),
            rpm=diagnosis.rpm,
            rpm_source=rpm_source,
            library_version=diagnosis.library_version,
            agent_id=self.client_id,
            input_kind=diagnosis.view,
            emitted_at=time.time(),
            severity=None if diagnosis.severity is None else diagnosis.severity.as_dict(),
        )
        self.outbox.put(
            "alert",
            item.asset,
            self.topics.alert(item.asset),
            lambda seq: encode_alert(dataclasses.replace(record, seq=seq)),
            record.message_id,
            answers=job.answers,
            on_stored=job.ack,
        )
        self.counters.add("alerts")
        self.counters.add(f"alerts.{record.label}")
        severity = diagnosis.severity
        self.history.add(
            item.asset,
            AlertNote(
                message_id=record.message_id,
                window_ts=item.ts,
                label=record.label,
                confidence=record.confidence,
                zone=None if severity is None else severity.zone,
                damage_stage=None if severity is None else severity.damage.stage,
                strongest_line_db=None if severity is None else severity.damage.strongest_db,
            ),
        )
        if self.reports is not None:
            report_id = alert_message_id(self.client_id, f"report|{key}", record.library_version)
            self.reports.offer(
                ReportOffer.of(
                    item.asset,
                    record.label,
                    diagnosis.severity,
                    {} if diagnosis.lines is None else diagnosis.lines.decisive_margins,
                ),
                report_id,
                lambda: facts_from(
                    diagnosis,
                    asset=item.asset,
                    window_ts=item.ts,
                    alert_id=record.message_id,
                    library_version=diagnosis.library_version,
                ),
            )

    def _publish_report(self, asset: str, message_id: str, build: Callable[[int], bytes]) -> None:
        """Reports leave through the outbox like alerts (class ``report``, own stream)."""
        self.outbox.put("report", asset, self.topics.report(asset), build, message_id)
        self.history.add(asset, AlertNote(message_id, 0.0, "", 0.0, None, None, None, "report"))

    def _open_knowledge(self) -> KnowledgeBase:
        """The knowledge base stored with the current library version; one built from the
        packaged text for a library made before versions carried one."""
        stored = self.library.current.path / KNOWLEDGE_FILE
        encoder = TextEncoder()
        if stored.is_file():
            return KnowledgeBase(stored, encoder)
        built = self.settings.resolved_data_dir() / KNOWLEDGE_FILE
        built.parent.mkdir(parents=True, exist_ok=True)
        built.unlink(missing_ok=True)
        entries, _sha = load_entries()
        write_knowledge(built, entries, encoder)
        log.info("library %s has no knowledge base; built %s", self.library.current.version, built)
        return KnowledgeBase(built, encoder)

    def _publish_answer(
        self,
        message: InboundMessage,
        question: Question | None,
        answer: Answer | QuestionError,
        ack: Callable[[], None],
    ) -> None:
        """Answer where the asker said (MQTT 5 response topic, else ``reply_to``, else the
        answers topic), correlation data echoed byte for byte, through the outbox."""
        topic = message.response_topic or (question.reply_to if question else None)
        body: dict[str, object] = {
            "schema": ANSWER_SCHEMA,
            "question": question.text if question else None,
            "correlation_id": question.correlation_id if question else None,
            "agent_id": self.client_id,
            "answered_at": time.time(),
            "replay": False,
        }
        if isinstance(answer, QuestionError):
            self.counters.add(f"questions.rejected.{answer.code}")
            body["error"] = {"code": answer.code, "reason": answer.message}
        else:
            self.counters.add("questions.answered" if answer.known else "questions.unknown")
            body.update(
                answer=answer.text,
                known=answer.known,
                asset=answer.asset,
                citations=answer.citations,
            )
            if answer.missing_shards is not None:
                # Its signature search went over the fleet: say which shards it lacked.
                body.update(
                    missing_shards=answer.missing_shards, partial=bool(answer.missing_shards)
                )
        self._send_answer(message, topic, body, ack)

    def _send_answer(
        self,
        message: InboundMessage,
        topic: str | None,
        body: dict[str, object],
        ack: Callable[[], None],
    ) -> None:
        """An answer (question or fleet search) through the outbox, class ``answer``, to
        ``topic`` or the answers topic, with the asker's MQTT 5 correlation data."""
        message_id = new_message_id()
        body["message_id"] = message_id
        payload = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
        self.outbox.put(
            "answer",
            "agent",
            topic or self.topics.answers,
            lambda seq: payload,
            message_id,
            on_stored=ack,
            correlation=message.correlation_data,
        )

    # -- fleet search (agent/fleet/) ---------------------------------------------------
    def _fleet_from_settings(
        self, settings: Settings
    ) -> tuple[ShardHolder | None, Coordinator | None]:
        fleet = settings.fleet
        if not fleet.enabled:
            return None, None
        limits = SearchLimits(fleet.max_payload_bytes, fleet.max_queries, fleet.max_k)
        holder = ShardHolder(
            library=lambda: self.library.current,
            agent_id=self.client_id,
            send=self._send_shard_reply,
            limits=limits,
            queue_size=fleet.queue_size,
        )
        # Every member can scatter (its questions' signature search); `coordinate` only
        # says whether it also takes searches from <prefix>/fleet/search.
        coordinator = Coordinator(
            library=lambda: self.library.current,
            shard_topic=self.topics.shard_search,
            send_request=self._send_shard_request,
            reply=self._publish_search_answer,
            limits=limits,
            deadline_s=fleet.deadline_s,
            max_pending=fleet.max_pending,
        )
        return holder, coordinator

    def _question_signatures(self, question: str) -> Found:
        """The signature descriptions a question matches: over every shard of the fleet
        when fleet search is on (naming shards that did not reply), else the shards here."""
        library = self.library.current
        if self.coordinator is None:
            hits = library.search_text(question, 20, any_word=True)
            return Found([(str(h["id"]), str(h["description"])) for h in hits])
        try:
            body = self.coordinator.search_text(question, 20)
        except FleetError as exc:  # busy: the shards held here, the others named
            log.warning("question's fleet search not sent (%s); searching here only", exc)
            hits = library.search_text(question, 20, any_word=True)
            elsewhere = [s for s in library.all_shards if s not in library.shards]
            return Found([(str(h["id"]), str(h["description"])) for h in hits], elsewhere)
        results, missing = body["results"], body["missing_shards"]
        assert isinstance(results, list)
        assert isinstance(missing, list)
        return Found(
            [(str(h["id"]), str(h["description"])) for h in results[0]],
            [str(s) for s in missing],
        )

    def _subscribe_fleet(self) -> None:
        if self.shard_holder is None:
            return
        filters = self.topics.fleet_subscriptions(
            self.library.current.shards, coordinate=self.settings.fleet.coordinate
        )
        self.transport.subscribe(filters, qos=1)

    def _send_shard_request(
        self, topic: str, payload: bytes, correlation: bytes, expiry_s: int
    ) -> None:
        self.transport.publish(
            topic,
            payload,
            qos=1,
            content_type="application/json",
            correlation_data=correlation,
            response_topic=self.topics.fleet_replies,
            expiry_s=expiry_s,
        )

    def _send_shard_reply(
        self, message: InboundMessage, reply_to: str | None, payload: bytes
    ) -> None:
        """Straight to the broker, not through the outbox: the coordinator waits for it
        a deadline long, and a reply that misses it is worth nothing."""
        self.transport.publish(
            message.response_topic or reply_to or self.topics.answers,
            payload,
            qos=1,
            content_type="application/json",
            correlation_data=message.correlation_data,
        )

    def _publish_search_answer(
        self,
        message: InboundMessage,
        request: SearchRequest | None,
        body: dict[str, object],
        ack: Callable[[], None],
    ) -> None:
        topic = message.response_topic or (request.reply_to if request else None)
        if "error" in body:
            self.counters.add(f"fleet.rejected.{body['error']['code']}")  # type: ignore[index]
        else:
            self.counters.add("fleet.partial" if body.get("partial") else "fleet.answered")
        body = {
            "schema": SEARCH_SCHEMA,
            **body,
            "correlation_id": request.correlation_id if request else None,
            "agent_id": self.client_id,
            "answered_at": time.time(),
            "replay": False,
        }
        self._send_answer(message, topic, body, ack)

    def _on_pipeline_failure(self, job: Job, code: str, reason: str) -> None:
        self._reject(
            job.topic,
            job.measurement.asset,
            code,
            reason,
            answers=job.answers,
            ack=job.ack,
            about=job.answers,
        )

    def _reject(
        self,
        topic: str,
        asset: str | None,
        code: str,
        reason: str,
        *,
        answers: str | None = None,
        ack: Callable[[], None] | None = None,
        about: str | None = None,
    ) -> None:
        """Count, log and publish a rejection where operators see it; keep serving.

        The topic and asset come from the client (a topic may be 65,535 bytes) and are
        quoted short; the reason is cut to ``REASON_LIMIT`` characters as a last guard (the
        decoders already quote what they echo)."""
        self.counters.add("rejected")
        self.counters.add(f"rejected.{code}")
        topic = topic if len(topic) <= TOPIC_LIMIT else quoted(topic, TOPIC_LIMIT)
        asset = asset if asset is None or len(asset) <= QUOTE_LIMIT else quoted(asset)
        if not self._error_budget.admit(asset or topic, code, time.monotonic(), topic):
            # Over the source's budget: counted above, summarised by tick(), not said alone.
            self.counters.add("rejected.summarised")
            if ack is not None:
                ack()
            return
        if len(reason) > REASON_LIMIT:
            reason = f"{reason[:REASON_LIMIT]}... ({len(reason):,} characters)"
        log.warning("rejected message on %s (asset %s): %s: %s", topic, asset, code, reason)
        self._publish_error(topic, asset, code, reason, answers=answers, ack=ack, about=about)

    def tick(self, *, final: bool = False) -> None:
        """Housekeeping, once a second from the main loop (and at stop, ``final``): publish
        the summaries of rejections that were over their source's budget."""
        for summary in self._error_budget.due(time.monotonic(), everything=final):
            asset = None if summary.source == summary.topic else summary.source
            log.warning(
                "rejected message on %s (asset %s): %s", summary.topic, asset, summary.reason()
            )
            self._publish_error(summary.topic, asset, "rejections_summarised", summary.reason())

    def _on_link_change(self, up: bool) -> None:
        self.outbox.link_changed(up)
        if up and self.transport.session_lost:
            # Said once per reconnect: windows the broker took while it had no session for
            # us (between its restart and our subscribing again) were never queued for us.
            self._reject(
                "broker",
                None,
                "broker_session_lost",
                f"the broker at {self.settings.mqtt.host}:{self.settings.mqtt.port} no longer "
                "held this agent's session (restarted from an older save, or its store was "
                "lost): windows published before the agent subscribed again were not queued "
                "for it; give the broker persistence that saves promptly (autosave_interval 1)",
            )

    def _on_outbox_fault(self, code: str, reason: str) -> None:
        """Evictions, expiries, a full or corrupt disk: on the errors topic and the status."""
        self.counters.add(f"outbox.{code}")
        # Essential: admitted even to a full outbox (the report of a loss must not be lost).
        self._publish_error("outbox", None, code, reason, essential=True)
        self.transport.publish_status()

    def _publish_error(
        self,
        topic: str,
        asset: str | None,
        code: str,
        reason: str,
        *,
        answers: str | None = None,
        ack: Callable[[], None] | None = None,
        about: str | None = None,
        essential: bool = False,
    ) -> None:
        """``about``: what the error answers (a window's key, a payload's digest); its id is
        derived from it (a redelivered copy yields the same id), else a fresh one."""
        message_id = (
            alert_message_id(
                self.client_id, f"error|{topic}|{code}|{about}", self.library.current.version
            )
            if about is not None
            else new_message_id()
        )
        record = ErrorRecord(
            topic=topic,
            asset=asset,
            code=code,
            reason=reason,
            ts=time.time(),
            seq=0,  # numbered by the outbox
            agent_id=self.client_id,
            message_id=message_id,
        )
        try:
            self.outbox.put(
                "error",
                "agent",
                self.topics.errors,
                lambda seq: encode_error(dataclasses.replace(record, seq=seq)),
                record.message_id,
                answers=answers,
                on_stored=ack,
                essential=essential,
            )
        except Exception:
            log.exception("could not queue the error report for %s", topic)
            if ack is not None:
                ack()

    def _library_summary(self) -> dict[str, object]:
        """The library being served, as the status and the metrics show it."""
        library = self.library.current
        views = library.info().get("views", {})
        return {
            "version": library.version,
            "model_id": library.model_id,
            "signatures": {view: v.get("count") for view, v in views.items()},
            "index": {view: v.get("index") for view, v in views.items()},
        }

    def _metrics_view(self) -> AgentView:
        return AgentView(
            counters=self.counters,
            stages=self.stages,
            backlog=lambda: self.pipeline.backlog,
            backlog_bytes=lambda: self.pipeline.backlog_bytes,
            outbox=self.outbox.stats,
            transport=lambda: self.transport.stats,
            connected=lambda: self.transport.connected,
            library=self._library_summary,
            reports=lambda: None if self.reports is None else self.reports.status(),
            questions=self.questions.status,
            memory_worst_case_mb=lambda: self.memory.total_mb,
        )

    def _fleet_status(self) -> dict[str, object] | None:
        if self.shard_holder is None:
            return None
        return {
            "holder": self.shard_holder.status(),
            "coordinator": None if self.coordinator is None else self.coordinator.status(),
        }

    def _status_fields(self) -> dict[str, object]:
        return {
            "agent": self.client_id,
            "version": __version__,
            "since": self._started_at,
            "library": self._library_summary(),
            "topics": {"alerts": self.topics.alert("+"), "errors": self.topics.errors},
            "outbox": self.outbox.stats(),
            "refused_by_broker": self.transport.refusals,
            "reports": None if self.reports is None else self.reports.status(),
            "questions": self.questions.status(),
            "fleet": self._fleet_status(),
            "stages": self.stages.snapshot(),
            "memory": {
                "resident_mb": round(resident_mb(), 1),
                "worst_case_mb": round(self.memory.total_mb, 1),
                "limit_mb": self.settings.limits.memory_mb,
            },
        }


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM (balena, docker) and SIGINT (Ctrl-C) both mean: stop cleanly."""
    if threading.current_thread() is not threading.main_thread():
        return

    def _handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def default_library_root(settings: Settings) -> Path:
    return settings.resolved_library_path()
