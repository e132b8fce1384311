"""The dashboard's own MQTT client: it reads what the agents published, and writes nothing.

Reading the broker rather than the agent's internals means the page shows what operators
downstream receive (every process of a ``--processes N`` gateway, and other gateways on the
same prefix), and the hot path carries no dashboard code at all. A clean session: a page is
live, not a record, so nothing is queued for the dashboard while it is away.

Sensor windows are the heavy traffic: the observer subscribes to the sensor filters only
while a page asks for spectra, and drops them again after ``spectra_idle_s``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from faultline.agent.dashboard.state import DashboardState, RawMeasurement
from faultline.agent.settings import MqttSettings
from faultline.agent.transport.topics import Topics

__all__ = ["Observer"]

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 256 * 1024  # an alert, report or status larger than this is not kept


class Observer:
    def __init__(
        self,
        mqtt: MqttSettings,
        topics: Topics,
        state: DashboardState,
        *,
        max_window_bytes: int,
        spectra_idle_s: float,
    ) -> None:
        self._topics = topics
        self._state = state
        self._max_window_bytes = max_window_bytes
        self._idle_s = spectra_idle_s
        self._lock = threading.Lock()
        self._wanted_at = 0.0
        self._windows_on = False
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self.connected = False
        prefix = topics.prefix
        self._outputs = [
            f"{prefix}/alerts/+",
            f"{prefix}/reports/+",
            f"{prefix}/errors",
            f"{prefix}/status/+",
        ]
        self._inputs = [f.filter for f in topics.inputs]
        v5 = mqtt.protocol == "5"
        client_id = f"{topics.client_id}-dashboard-{uuid.uuid4().hex[:6]}"[:64]
        if v5:
            self._client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
            )
        else:
            self._client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=paho.MQTTv311,
                clean_session=True,
            )
        if mqtt.username is not None:
            password = mqtt.password.get_secret_value() if mqtt.password else None
            self._client.username_pw_set(mqtt.username, password)
        if mqtt.tls:
            self._client.tls_set(ca_certs=str(mqtt.ca_certs) if mqtt.ca_certs else None)
        self._client.reconnect_delay_set(
            max(1, round(mqtt.reconnect_min_s)), max(1, round(mqtt.reconnect_max_s))
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._host, self._port, self._keepalive = mqtt.host, mqtt.port, mqtt.keepalive_s

    def start(self) -> None:
        self._client.connect_async(self._host, self._port, self._keepalive)
        self._client.loop_start()
        self._timer = threading.Thread(target=self._idle_loop, name="dashboard-idle", daemon=True)
        self._timer.start()

    def stop(self) -> None:
        self._stop.set()
        self._client.disconnect()
        self._client.loop_stop()
        if self._timer is not None:
            self._timer.join(2.0)

    @property
    def streaming(self) -> bool:
        """Subscribed to the sensor windows (a page asked for spectra lately)."""
        return self._windows_on

    def want_windows(self) -> None:
        """A page asked for a spectrum: receive windows (again) for ``spectra_idle_s``."""
        with self._lock:
            self._wanted_at = time.monotonic()
            if self._windows_on or not self.connected:
                return
            self._windows_on = True
        self._client.subscribe([(f, 0) for f in self._inputs])

    def _idle_loop(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                idle = self._windows_on and time.monotonic() - self._wanted_at > self._idle_s
                if idle:
                    self._windows_on = False
            if idle:
                self._client.unsubscribe(self._inputs)

    # -- paho's thread ----------------------------------------------------------------
    def _on_connect(self, client: paho.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        if getattr(rc, "is_failure", False):
            log.warning("dashboard: broker refused the connection: %s", rc)
            return
        self.connected = True
        filters = [(f, 1) for f in self._outputs]
        with self._lock:
            recent = time.monotonic() - self._wanted_at <= self._idle_s and self._wanted_at > 0
            self._windows_on = recent
        if recent:
            filters += [(f, 0) for f in self._inputs]
        client.subscribe(filters)

    def _on_disconnect(self, *_args: object) -> None:
        self.connected = False
        with self._lock:
            self._windows_on = False

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        try:
            self._route(msg.topic, bytes(msg.payload))
        except Exception:  # a strange message must not end paho's thread
            log.exception("dashboard: could not take the message on %s", msg.topic)

    def _route(self, topic: str, payload: bytes) -> None:
        route = self._topics.classify(topic)
        if route is not None:
            kind, asset = route
            if len(payload) <= self._max_window_bytes:
                self._state.measurement(asset, RawMeasurement(kind, payload, time.time()))
            return
        rest = topic.removeprefix(f"{self._topics.prefix}/")
        head, _, tail = rest.partition("/")
        if head == "status" and not payload:
            self._state.status(tail, None)
            return
        body = _json(payload)
        if body is None:
            self._state.counts["unreadable"] += 1
        elif head == "alerts":
            self._state.alert(tail, body)
        elif head == "reports":
            self._state.report(tail, body)
        elif head == "errors":
            self._state.error(body)
        elif head == "status":
            self._state.status(tail, body)


def _json(payload: bytes) -> dict[str, Any] | None:
    if len(payload) > MAX_JSON_BYTES:
        return None
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None
