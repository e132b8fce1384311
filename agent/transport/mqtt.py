"""The agent's MQTT link: one paho client, kept connected, that only moves bytes.

Why it owns its network thread instead of paho's ``loop_start``: paho's built-in reconnect
doubles a fixed delay, so a fleet that lost its broker comes back in lock-step waves, and an
unexpected exception inside paho ends its thread silently. Here one supervisor thread
connects, runs ``client.loop()``, and on any loss waits a jittered, growing delay before the
next try; nothing raised below it can end it. Publishers on other threads only queue packets
(a no-op ``on_socket_register_write`` keeps paho from writing to the socket from their thread)
and the supervisor's ``select()`` is woken to send them.

What the broker sees: MQTT 5 (3.1.1 selectable), a persistent session (clean start off plus a
session expiry; clean session off in 3.1.1) so QoS 1 input queues at the broker while the
agent is away, a retained status topic that says ``online`` at every connect, and a retained
``offline`` Last Will for when the link dies without a goodbye.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from faultline.agent.transport.tls import (
    TlsParameters,
    explain_tls_error,
    make_ssl_context,
    speaks_tls,
)

__all__ = ["InboundMessage", "MqttTransport", "PublishError", "backoff_delay"]

log = logging.getLogger(__name__)

_LOOP_TICK_S = 0.25  # how often the supervisor notices stop() while the link is idle
_CONNACK_TIMEOUT_S = 10.0
_JSON = "application/json"
_NOT_AUTHORIZED = 0x87
_REFUSAL_LOG_EVERY_S = 60.0  # one log line per topic and reason this often, with a count
_MAX_REFUSAL_KEYS = 256  # distinct (topic, reason) counters; the rest are summed
_TOPIC_SHOWN = 120  # characters of a topic kept in counters and logs
_MAX_TRACKED_TOPICS = 65536  # mid -> topic for refusal logs (bounded by paho's queue anyway)


class PublishError(RuntimeError):
    """A message could not even be queued (queue full, invalid topic); the link state is not
    the cause: a down link queues QoS>0 messages instead of failing."""


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One received message, paho-free, so the pipeline never imports paho."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    user_properties: dict[str, str]
    content_type: str | None
    received_at: float  # time.monotonic() at receipt
    mid: int
    response_topic: str | None = None  # MQTT 5 request/response: where to answer
    correlation_data: bytes | None = None  # echoed byte for byte in the answer


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait before reconnect try ``attempt`` (1 = first retry).

    Full jitter over ``[min_s, min(max_s, min_s * 2**attempt)]``: clients that lost the same
    broker spread their returns over the whole window instead of arriving together, and none
    retries faster than ``min_s``.
    """
    cap = min(max_s, min_s * 2.0 ** min(max(attempt, 0), 32))
    return rng.uniform(min_s, max(min_s, cap))


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it untyped


def _noop_register_write(_client: paho.Client, _userdata: Any, _sock: Any) -> None:
    """Registered only so paho never writes from a publisher's thread (see module doc)."""


class MqttTransport:
    """A self-healing MQTT connection with remembered subscriptions and a status topic."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        status_topic: str,
        status_online: Callable[[], dict[str, object]],
        on_message: Callable[[InboundMessage], None],
        on_connection_change: Callable[[bool], None] | None = None,
        on_published: Callable[[int, bool], None] | None = None,
        protocol: Literal["5", "3.1.1"] = "5",
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        session_expiry_s: int = 3600,
        clean_start: bool = False,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        max_inflight: int = 20,
        max_queued_messages: int = 10000,
        tls: TlsParameters | None = None,
        manual_ack: bool = False,
    ) -> None:
        if protocol not in ("5", "3.1.1"):
            raise ValueError(f"protocol must be '5' or '3.1.1', got {protocol!r}")
        if not client_id:
            raise ValueError("client_id must be non-empty: a persistent session is keyed by it")
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")
        self.host = host
        self.port = port
        self._where = f"{host}:{port}"  # for log lines
        self.client_id = client_id
        self.protocol = protocol
        self.status_topic = status_topic
        self._v5 = protocol == "5"
        self._status_online = status_online
        self._handler = on_message
        self._on_connection_change = on_connection_change
        self._on_published = on_published
        self._keepalive_s = keepalive_s
        self._session_expiry_s = session_expiry_s
        self._clean_start = clean_start
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._max_queued = max_queued_messages
        self._manual_ack = manual_ack

        self._lock = threading.Lock()
        self._filters: dict[str, int] = {}
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "connects",
                "disconnects",
                "connect_failures",
                "published",
                "delivered",
                "received",
                "publish_failures",
                "publish_refused",
                "handler_errors",
            ),
            0,
        )
        self._stop = threading.Event()
        self._stopping = False
        self._link_up = threading.Event()  # CONNACK accepted, link not lost since
        self._ready = threading.Event()  # link up and the resubscription acknowledged
        self._link_down = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        self._had_session = False  # a CONNACK was accepted before (clean start only once)
        self._session_ok = False  # this connection attempt got an accepted CONNACK
        self._session_present: bool | None = None
        self._session_lost = False
        self._pending_sub_mid: int | None = None
        self._generation = 0  # connection count, to drop acks that belong to a dead link
        self._unacked: dict[int, int] = {}  # mid -> generation (manual_ack only)
        self._warned_v311_props = False
        self._tls = tls
        self._tls_error: BaseException | None = None  # the last one, to explain a lost link
        self._probed_tls = False  # this failure streak already asked "is that a TLS port?"
        self._topic_of: dict[int, str] = {}  # mid -> topic of publishes awaiting a PUBACK
        self._refusals: dict[tuple[str, str], int] = {}  # (topic, reason) -> count
        self._refusal_logged: dict[tuple[str, str], tuple[float, int]] = {}

        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            clean_session=None if self._v5 else clean_start,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        client = self._client
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        client.suppress_exceptions = True  # a callback bug is logged, never kills the loop
        client.connect_timeout = 5.0
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(max_queued_messages)
        if username is not None:
            client.username_pw_set(username, password)
        if tls is not None:
            client.tls_set_context(make_ssl_context(tls, on_error=self._on_tls_error))
            if tls.insecure:
                client.tls_insecure_set(True)
                log.warning(
                    "MQTT TLS to %s without host-name checking (mqtt.tls_insecure): any "
                    "certificate the CA signed is accepted for this host",
                    self._where,
                )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_register_write = _noop_register_write
        client.on_socket_unregister_write = _noop_register_write

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        return self._link_up.is_set()

    @property
    def session_present(self) -> bool | None:
        """Broker's answer at the last accepted connect: did it still hold our session?"""
        return self._session_present

    @property
    def session_lost(self) -> bool:
        """At the last connect the broker had forgotten the session it held for us."""
        return self._session_lost

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    @property
    def refusals(self) -> dict[str, dict[str, int]]:
        """Publishes the broker refused (MQTT 5 PUBACK reason codes), per topic and reason."""
        with self._lock:
            items = list(self._refusals.items())
        out: dict[str, dict[str, int]] = {}
        for (topic, reason), count in items:
            out.setdefault(topic, {})[reason] = count
        return out

    def start(self) -> None:
        """Connect in the background and keep reconnecting until stop(); returns at once."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._supervise, name=f"mqtt-{self.client_id}", daemon=True
        )
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        """True once the link is up and the remembered filters are re-subscribed (SUBACK)."""
        return self._ready.wait(timeout)

    def subscribe(self, filters: Sequence[str], qos: int = 1) -> None:
        """Remember filters (re-subscribed at every connect) and subscribe now if connected."""
        with self._lock:
            new = [f for f in filters if self._filters.get(f) != qos]
            for topic_filter in filters:
                self._filters[topic_filter] = qos
        if new and self.connected:
            self._send_subscribe([(f, qos) for f in new], track=False)

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        user_properties: Mapping[str, str] | None = None,
        content_type: str | None = None,
        correlation_data: bytes | None = None,
        response_topic: str | None = None,
        expiry_s: int | None = None,
    ) -> int:
        """Queue a message and return its packet id (``on_published`` reports its PUBACK).

        QoS>0 survives a down link in paho's memory (up to max_queued_messages) and is
        resent on reconnect; the outbox keeps the durable copy. QoS 0 on a down link is
        dropped and counted in ``publish_failures`` (MQTT semantics). Raises PublishError
        only when the message cannot be queued at all.
        """
        props = self._publish_properties(
            user_properties, content_type, correlation_data, response_topic, expiry_s
        )
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        except ValueError as exc:
            self._count("publish_failures")
            raise PublishError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            self._count("publish_failures")
            raise PublishError(
                f"MQTT outgoing queue full ({self._max_queued} messages waiting for broker "
                f"{self.host}:{self.port}); message to {topic!r} dropped"
            )
        if info.rc == paho.MQTT_ERR_NO_CONN and qos == 0:
            self._count("publish_failures")
            log.debug("link down: QoS 0 message to %s dropped", topic)
            return info.mid
        self._count("published")
        self._track(info.mid, topic)
        return info.mid

    def publish_status(self) -> None:
        """Re-publish the retained online status (e.g. after the fault library changed)."""
        if self.connected:
            self._publish_online()

    def ack(self, message: InboundMessage) -> None:
        """Acknowledge a QoS>0 message (manual_ack mode) once it is safely handed over.

        An ack for a message received on an earlier connection is dropped: the broker
        redelivers that message on the new one (same mid), and that delivery gets acked.
        """
        if not self._manual_ack or message.qos == 0:
            return
        with self._lock:
            generation = self._unacked.get(message.mid)
            if generation != self._generation:
                return
            del self._unacked[message.mid]
        self._client.ack(message.mid, message.qos)

    def stop(self, timeout: float = 5.0) -> None:
        """Say offline (retained, QoS 1, waited for), disconnect cleanly, end the thread."""
        thread = self._thread
        if thread is None or self._stopping:
            return
        self._stopping = True
        deadline = time.monotonic() + timeout
        if self.connected:
            payload = self._status_payload("offline", reason="clean stop")
            try:
                info = self._client.publish(
                    self.status_topic,
                    payload,
                    qos=1,
                    retain=True,
                    properties=self._publish_properties(None, _JSON),
                )
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
                if not info.is_published():
                    log.warning("offline status not acknowledged within %.1fs", timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("offline status not published: %s", exc)
            self._link_down.clear()
            if self._client.disconnect() == paho.MQTT_ERR_SUCCESS:
                self._link_down.wait(max(0.1, deadline - time.monotonic()))
        self._stop.set()
        thread.join(max(0.1, deadline - time.monotonic()) + _LOOP_TICK_S)
        if thread.is_alive():
            log.warning("MQTT thread for %s did not end within %.1fs", self.client_id, timeout)
        self._thread = None

    # ------------------------------------------------------------------ supervisor thread

    def _supervise(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self._session_ok = False
                    self._run_connection()
                except Exception:
                    log.exception("MQTT link to %s failed unexpectedly", self._where)
                if self._stop.is_set() or self._stopping:
                    break
                failures = 1 if self._session_ok else failures + 1
                delay = backoff_delay(
                    failures, self._reconnect_min_s, self._reconnect_max_s, self._rng
                )
                log.info("MQTT reconnect to %s in %.2fs (attempt %d)", self._where, delay, failures)
                self._stop.wait(delay)
        finally:
            self._close_quietly()

    def _run_connection(self) -> None:
        """One connection: connect, then run paho's loop until the link drops or stop()."""
        client = self._client
        client.will_set(
            self.status_topic,
            self._status_payload("offline", reason="connection lost"),
            qos=1,
            retain=True,
            properties=self._will_properties(),
        )
        try:
            if self._v5:
                props = _properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self._session_expiry_s
                client.connect(
                    self.host,
                    self.port,
                    keepalive=self._keepalive_s,
                    clean_start=self._clean_start and not self._had_session,
                    properties=props,
                )
            else:
                client.connect(self.host, self.port, keepalive=self._keepalive_s)
        except OSError as exc:
            self._count("connect_failures")
            if isinstance(exc, ssl.SSLError) or self._tls_error is not None:
                log.error(
                    "MQTT TLS connect to %s failed: %s",
                    self._where,
                    explain_tls_error(self._take_tls_error() or exc),
                )
            elif (
                self._tls is not None
                and not self._probed_tls
                and not speaks_tls(self.host, self.port)
            ):
                self._probed_tls = True  # once per failure streak
                log.error(
                    "MQTT connect to %s failed (%s): the broker does not speak TLS on this "
                    "port; use its TLS port, or set mqtt.tls: false",
                    self._where,
                    exc,
                )
            else:
                log.warning("MQTT connect to %s failed: %s", self._where, exc)
            return
        connack_deadline = time.monotonic() + _CONNACK_TIMEOUT_S
        while not self._stop.is_set():
            if self._stopping and self._link_down.is_set():
                return  # stop() disconnected cleanly; looping again would only log noise
            rc = client.loop(timeout=_LOOP_TICK_S)
            if rc != paho.MQTT_ERR_SUCCESS:
                log.debug("MQTT loop ended: %s", paho.error_string(rc))
                self._explain_early_close()
                return
            if not self._session_ok and time.monotonic() > connack_deadline:
                self._count("connect_failures")
                log.warning(
                    "MQTT broker %s sent no CONNACK within %.0fs", self._where, _CONNACK_TIMEOUT_S
                )
                return

    def _explain_early_close(self) -> None:
        """Say why the link ended, when paho alone would only say "Connection reset"."""
        tls_error = self._take_tls_error()
        if tls_error is not None:
            log.error("MQTT TLS link to %s ended: %s", self._where, explain_tls_error(tls_error))
            return
        if self._session_ok or self._tls is not None or self._probed_tls:
            return
        # Closed before any CONNACK, over plain TCP: the classic cause is a TLS listener
        # receiving our plain CONNECT. Ask the port once per failure streak.
        self._probed_tls = True
        if speaks_tls(self.host, self.port):
            log.error(
                "MQTT broker %s closed the connection before answering CONNECT, and that "
                "port speaks TLS: it is a TLS listener; set mqtt.tls: true (and mqtt.ca_certs)",
                self._where,
            )
        else:
            log.warning(
                "MQTT broker %s closed the connection before answering CONNECT", self._where
            )

    def _on_tls_error(self, exc: BaseException) -> None:
        self._tls_error = exc

    def _take_tls_error(self) -> BaseException | None:
        exc, self._tls_error = self._tls_error, None
        return exc

    def _close_quietly(self) -> None:
        """After the last loop: close a socket still open (e.g. stop() during a connect)."""
        try:
            if self._client.socket() is not None:
                self._client.disconnect()
                self._client.loop(timeout=0.1)
        except Exception:
            log.debug("closing MQTT socket after stop", exc_info=True)

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(
        self,
        _client: paho.Client,
        _userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._count("connect_failures")
            log.error(
                "MQTT broker %s refused %s: %s (code %d)",
                self._where,
                self.client_id,
                reason_code,
                reason_code.value,
            )
            return
        self._session_ok = True
        self._probed_tls = False
        # A broker that restarted from an old save (or lost its disk) no longer knows our
        # subscriptions: what it accepted for us before we subscribed again is gone.
        self._session_lost = (
            self._had_session and not self._clean_start and not flags.session_present
        )
        self._had_session = True
        self._session_present = bool(flags.session_present)
        with self._lock:
            self._generation += 1
            self._unacked.clear()
            self._stats["connects"] += 1
            filters = list(self._filters.items())
        log.info(
            "MQTT connected to %s as %s (MQTT %s, session present: %s)",
            self._where,
            self.client_id,
            self.protocol,
            self._session_present,
        )
        self._link_down.clear()
        self._link_up.set()
        if filters:
            # Listeners hear of the link, and "online" is said, at the SUBACK
            # (_on_subscribe): paho re-sends the messages left in flight right after this
            # callback returns, so a listener (the outbox) told now could put a newer
            # message of a stream on the wire before an older one's re-send (seen in the
            # broker-kill test: seq 782 before 781); and a sensor that starts on our online
            # status must not publish into subscriptions that do not exist yet.
            self._send_subscribe(filters, track=True)
        else:
            self._link_ready()

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        was_up = self._link_up.is_set()
        self._link_up.clear()
        self._ready.clear()
        self._link_down.set()
        if not was_up:
            log.debug("MQTT connection attempt ended: %s", reason_code)
            return
        self._count("disconnects")
        if self._stopping:
            log.info("MQTT disconnected from %s (clean stop)", self._where)
        elif flags.is_disconnect_packet_from_server:
            log.warning(
                "MQTT broker %s closed the session: %s (code %d)",
                self._where,
                reason_code,
                reason_code.value,
            )
        else:
            # paho reports a dropped socket as "Unspecified error" (128): say what happened.
            log.warning(
                "MQTT connection to %s lost (paho: %s, code %d)",
                self._where,
                reason_code,
                reason_code.value,
            )
        self._notify(False)

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        self._count("received")
        try:
            topic = message.topic
        except UnicodeDecodeError:
            log.warning("dropped a message whose topic is not UTF-8: %r", message._topic)
            self._ack_raw(message)
            return
        props = message.properties
        user_props = {str(k): str(v) for k, v in getattr(props, "UserProperty", [])}
        content_type = getattr(props, "ContentType", None)
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        inbound = InboundMessage(
            topic=topic,
            payload=bytes(message.payload),
            qos=message.qos,
            retain=bool(message.retain),
            user_properties=user_props,
            content_type=content_type,
            received_at=time.monotonic(),
            mid=message.mid,
            response_topic=str(response_topic) if response_topic else None,
            correlation_data=bytes(correlation) if correlation is not None else None,
        )
        if self._manual_ack and message.qos > 0:
            with self._lock:
                self._unacked[message.mid] = self._generation
        try:
            self._handler(inbound)
        except Exception:
            self._count("handler_errors")
            log.exception(
                "message handler failed on topic %s (%d bytes); dropped",
                topic,
                len(inbound.payload),
            )
            # A poison message left unacked would hold a broker inflight slot forever.
            self.ack(inbound)

    def _on_publish(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        # Runs inside paho's outgoing-message lock: the callback must only queue the news.
        ok = not reason_code.is_failure
        with self._lock:
            topic = self._topic_of.pop(mid, None)
        if ok:
            self._count("delivered")
        else:
            self._count("publish_failures")
            self._count("publish_refused")
            self._note_refusal(topic or "?", reason_code)
        if self._on_published is not None:
            try:
                self._on_published(mid, ok)
            except Exception:
                log.exception("on_published(%d) handler failed", mid)

    def _note_refusal(self, topic: str, reason_code: ReasonCode) -> None:
        """Count a refused publish and log it, once per topic and reason per minute."""
        reason = str(reason_code)
        # Response topics are chosen by whoever asks a question: bound what they can add.
        topic = topic if len(topic) <= _TOPIC_SHOWN else topic[: _TOPIC_SHOWN - 3] + "..."
        key = (topic, reason)
        now = time.monotonic()
        with self._lock:
            if key not in self._refusals and len(self._refusals) >= _MAX_REFUSAL_KEYS:
                key = ("(other topics)", reason)
            self._refusals[key] = self._refusals.get(key, 0) + 1
            total = self._refusals[key]
            last = self._refusal_logged.get(key)
            if last is not None and now - last[0] < _REFUSAL_LOG_EVERY_S:
                return
            self._refusal_logged[key] = (now, total)
        since = total - (last[1] if last is not None else 0)
        why = (
            ": the broker's ACL does not let this client publish there"
            if reason_code.value == _NOT_AUTHORIZED
            else ""
        )
        log.error(
            "MQTT broker %s refused a publish to %r: %s (code %d)%s; %d refused so far "
            "(%d since the last line)",
            self._where,
            key[0],
            reason,
            reason_code.value,
            why,
            total,
            since,
        )

    def _track(self, mid: int, topic: str) -> None:
        with self._lock:
            if len(self._topic_of) >= _MAX_TRACKED_TOPICS:
                self._topic_of.pop(next(iter(self._topic_of)))
            self._topic_of[mid] = topic

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error(
                "MQTT broker %s refused subscriptions (mid %d): %s%s",
                self._where,
                mid,
                ", ".join(failed),
                " (its ACL denies this client those filters)"
                if any(rc.value == _NOT_AUTHORIZED for rc in reason_codes)
                else "",
            )
        if mid == self._pending_sub_mid:
            self._pending_sub_mid = None
            self._link_ready()

    def _link_ready(self) -> None:
        """Connected and subscribed: tell listeners, say online, release waiters.

        Listeners hear of the link before anyone waiting in wait_connected() is released:
        what those waiters publish next is then live, not taken for a replay."""
        self._notify(True)
        self._publish_online()
        self._ready.set()

    # ------------------------------------------------------------------ helpers

    def _send_subscribe(self, filters: list[tuple[str, int]], *, track: bool) -> None:
        rc, mid = self._client.subscribe(filters)
        if rc != paho.MQTT_ERR_SUCCESS:
            log.warning("MQTT subscribe %s not sent: %s", filters, paho.error_string(rc))
            return
        log.info("MQTT subscribing to %s", ", ".join(f"{f} (qos {q})" for f, q in filters))
        if track:
            self._pending_sub_mid = mid

    def _publish_online(self) -> None:
        try:
            fields = self._status_online()
        except Exception:
            log.exception("status_online() failed; publishing a bare online status")
            fields = {}
        payload = json.dumps({"state": "online", **fields}, default=str).encode()
        info = self._client.publish(
            self.status_topic,
            payload,
            qos=1,
            retain=True,
            properties=self._publish_properties(None, _JSON),
        )
        self._track(info.mid, self.status_topic)

    def _status_payload(self, state: str, *, reason: str) -> bytes:
        body = {"state": state, "reason": reason, "client_id": self.client_id, "ts": time.time()}
        return json.dumps(body).encode()

    def _publish_properties(
        self,
        user_properties: Mapping[str, str] | None,
        content_type: str | None,
        correlation_data: bytes | None = None,
        response_topic: str | None = None,
        expiry_s: int | None = None,
    ) -> Properties | None:
        """MQTT 5 properties of a publish; ``response_topic`` and ``correlation_data``
        make it a request (MQTT 5 request/response), ``expiry_s`` lets the broker drop it
        once nobody waits for it any more."""
        extras = (content_type, correlation_data, response_topic, expiry_s)
        if not user_properties and all(x is None for x in extras):
            return None
        if not self._v5:
            if not self._warned_v311_props:
                self._warned_v311_props = True
                log.info("MQTT 3.1.1 carries no user properties/content type; not sent")
            return None
        props = _properties(PacketTypes.PUBLISH)
        if user_properties:
            props.UserProperty = [(str(k), str(v)) for k, v in user_properties.items()]
        if content_type is not None:
            props.ContentType = content_type
        if correlation_data is not None:
            props.CorrelationData = correlation_data
        if response_topic is not None:
            props.ResponseTopic = response_topic
        if expiry_s is not None:
            props.MessageExpiryInterval = expiry_s
        return props

    def _will_properties(self) -> Properties | None:
        if not self._v5:
            return None
        props = _properties(PacketTypes.WILLMESSAGE)
        props.ContentType = _JSON
        return props

    def _ack_raw(self, message: paho.MQTTMessage) -> None:
        if self._manual_ack and message.qos > 0:
            self._client.ack(message.mid, message.qos)

    def _count(self, name: str) -> None:
        with self._lock:
            self._stats[name] += 1

    def _notify(self, up: bool) -> None:
        if self._on_connection_change is None:
            return
        try:
            self._on_connection_change(up)
        except Exception:
            log.exception("on_connection_change(%s) handler failed", up)
