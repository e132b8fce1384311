"""Composition root: builds every component from the settings and owns the stop event.

Start-up order is library -> pipeline -> transport (so nothing arrives before we can
answer); shutdown runs in reverse: stop intake, drain the pipeline, publish ``offline``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from faultline.agent import __version__
from faultline.agent.library_watch import LibraryHolder, LibraryWatcher
from faultline.agent.metrics import Counters, Sequence
from faultline.agent.pipeline import Diagnosis, Job, Pipeline
from faultline.agent.settings import ConfigError, Settings
from faultline.agent.settings_errors import ConfigProblem
from faultline.agent.transport.mqtt import InboundMessage, MqttTransport
from faultline.agent.transport.payloads import (
    AlertRecord,
    ErrorRecord,
    PayloadError,
    PayloadLimits,
    decode_spectrum,
    decode_window,
    encode_alert,
    encode_error,
    new_message_id,
)
from faultline.agent.transport.topics import Topics, build_topics
from faultline.encoders.projection import ProjectionError
from faultline.encoders.signals import Measurement
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.diagnosis import DecisionPolicy
from faultline.fault_library.library import FaultLibrary

log = logging.getLogger(__name__)


def topics_from_settings(settings: Settings) -> Topics:
    return build_topics(
        prefix=settings.topics.prefix,
        client_id=settings.resolved_client_id(),
        window_filters=list(settings.topics.window_filters),
        spectrum_filters=list(settings.topics.spectrum_filters),
        shared_group=settings.topics.shared_group,
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


def transport_from_settings(
    settings: Settings,
    *,
    client_id: str,
    status_topic: str,
    status_online: Callable[[], dict[str, object]],
    on_message: Callable[[InboundMessage], None],
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
        tls=mqtt.tls,
        ca_certs=str(mqtt.ca_certs) if mqtt.ca_certs else None,
        status_topic=status_topic,
        status_online=status_online,
        on_message=on_message,
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
            )
            if library_root is not None
            else None
        )
        self._limits = limits_from_settings(settings)
        self._alert_seq = Sequence()
        self._error_seq = Sequence()
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
            queue_size=pipe.queue_size,
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
        )

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self.pipeline.start()
        self.transport.subscribe(self.topics.subscriptions(), qos=self.settings.mqtt.qos)
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
        if left:
            log.warning("%d queued windows were not processed before the drain bound", left)
        self.transport.stop()
        self.library.close()
        log.info("agent stopped; counters %s", json.dumps(self.counters.snapshot()))

    def run_forever(self, stop_event: threading.Event | None = None) -> None:
        """Run until SIGTERM/SIGINT (or ``stop_event``), then stop cleanly."""
        stop = stop_event or threading.Event()
        install_stop_signals(stop)
        self.start()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            self.stop()

    # -- intake (paho's network thread) ---------------------------------------------
    def _on_message(self, message: InboundMessage) -> None:
        if message.topic in self.topics.commands:
            self._on_command(message)
            return
        self.counters.add("received")
        route = self.topics.classify(message.topic)
        if route is None:
            self._reject(message.topic, None, "unexpected_topic", "no configured filter matches")
            return
        kind, asset = route
        try:
            measurement = self._decode(kind, asset, message.payload)
        except PayloadError as exc:
            self._reject(message.topic, asset, exc.code, exc.message)
            return
        job = Job(measurement=measurement, topic=message.topic, received_at=message.received_at)
        if not self.pipeline.submit(job):
            self._reject(message.topic, asset, "shutting_down", "agent is stopping; not queued")

    def _decode(self, kind: str, asset: str, payload: bytes) -> Measurement:
        decoded: Measurement
        if kind == "spectrum":
            decoded = decode_spectrum(asset, payload, self._limits)
        else:
            decoded = decode_window(asset, payload, self._limits)
        return self._with_asset_defaults(decoded)

    def _with_asset_defaults(self, item: Measurement) -> Measurement:
        """Fill rpm and bearing geometry from the asset's configuration when not sent."""
        asset_cfg = self.settings.assets.get(item.asset)
        if asset_cfg is None:
            return item
        changes: dict[str, object] = {}
        if item.rpm is None and asset_cfg.rpm is not None:
            changes["rpm"] = asset_cfg.rpm
            changes["meta"] = {**item.meta, "rpm_source": "asset"}
        geometry = asset_cfg.bearing_geometry()
        if item.geometry is None and geometry is not None:
            changes["geometry"] = geometry
        return dataclasses.replace(item, **changes) if changes else item  # type: ignore[arg-type]

    def _on_command(self, message: InboundMessage) -> None:
        """Operator commands: ``{"command": "reload_library"}`` or ``{"command": "status"}``."""
        self.counters.add("commands")
        try:
            command = json.loads(message.payload).get("command")
        except (ValueError, AttributeError):
            command = None
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
        self.transport.publish_status()

    def _on_library_refused(self, version: str, reason: str) -> None:
        self._reject(
            f"{self.watcher.root if self.watcher else ''}/current",
            None,
            "library_refused",
            f"version {version} refused, still serving {self.library.current.version}: {reason}",
        )

    # -- outputs ---------------------------------------------------------------------
    def _publish_alert(self, diagnosis: Diagnosis) -> None:
        item = diagnosis.job.measurement
        rpm_source = str(item.meta.get("rpm_source", diagnosis.rpm_source))
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
            seq=0,  # numbered at send time, below
            message_id=new_message_id(),
            rpm=diagnosis.rpm,
            rpm_source=rpm_source,
            library_version=diagnosis.library_version,
            agent_id=self.client_id,
            input_kind=diagnosis.view,
            emitted_at=time.time(),
        )
        topic = self.topics.alert(item.asset)
        self._alert_seq.emit(
            lambda seq: self.transport.publish(
                topic, encode_alert(dataclasses.replace(record, seq=seq)), qos=1
            )
        )
        self.counters.add("alerts")
        self.counters.add(f"alerts.{record.label}")

    def _on_pipeline_failure(self, job: Job, code: str, reason: str) -> None:
        self._reject(job.topic, job.measurement.asset, code, reason)

    def _reject(self, topic: str, asset: str | None, code: str, reason: str) -> None:
        """Count, log and publish a rejection where operators see it; keep serving."""
        self.counters.add("rejected")
        self.counters.add(f"rejected.{code}")
        log.warning("rejected message on %s (asset %s): %s: %s", topic, asset, code, reason)
        record = ErrorRecord(
            topic=topic,
            asset=asset,
            code=code,
            reason=reason,
            ts=time.time(),
            seq=0,  # numbered at send time, below
            agent_id=self.client_id,
        )
        try:
            self._error_seq.emit(
                lambda seq: self.transport.publish(
                    self.topics.errors, encode_error(dataclasses.replace(record, seq=seq)), qos=1
                )
            )
        except Exception:
            log.exception("could not publish the rejection of %s", topic)

    def _status_fields(self) -> dict[str, object]:
        library = self.library.current
        views = library.info().get("views", {})
        return {
            "agent": self.client_id,
            "version": __version__,
            "since": self._started_at,
            "library": {
                "version": library.version,
                "model_id": library.model_id,
                "signatures": {view: v.get("count") for view, v in views.items()},
                "index": {view: v.get("index") for view, v in views.items()},
            },
            "topics": {"alerts": self.topics.alert("+"), "errors": self.topics.errors},
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
