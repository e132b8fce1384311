"""A real MQTT subscriber for tests: collects JSON messages per topic filter."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class Collector:
    """Subscribes with a plain paho client and records every JSON message it receives."""

    def __init__(
        self, host: str, port: int, filters: list[str], *, persistent: bool = False
    ) -> None:
        """``persistent``: a session the broker keeps across its own restarts and ours
        (clean start off, one hour expiry), so what is published while this collector is
        cut off is queued for it, as for a dashboard that must not miss an alert."""
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.properties: list[dict[str, str]] = []  # MQTT 5 user properties, per message
        self.arrived: list[float] = []  # time.monotonic() at arrival, per message
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-collector-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_a, **_k: self._subscribed.set()
        self._client.on_connect = lambda c, *_a, **_k: c.subscribe([(f, 1) for f in filters])
        self._client.reconnect_delay_set(0.1, 1)
        if persistent:
            connect = Properties(PacketTypes.CONNECT)
            connect.SessionExpiryInterval = 3600
            self._client.connect(host, port, clean_start=False, properties=connect)
        else:
            self._client.connect(host, port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"collector could not subscribe at {host}:{port}")

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = {"_raw": msg.payload.decode("utf-8", "replace")}
        user = getattr(msg.properties, "UserProperty", None) or []
        with self._cond:
            self.messages.append((msg.topic, body))
            self.properties.append(dict(user))
            self.arrived.append(time.monotonic())
            self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[str, dict[str, Any]], bool], count: int = 1, timeout: float = 30
    ) -> list[tuple[str, dict[str, Any]]]:
        """Block until ``count`` messages satisfy ``predicate``; fail loudly otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [(t, b) for t, b in self.messages if predicate(t, b)]
                if len(hits) >= count:
                    return hits
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"waited {timeout}s for {count} matching messages, got {len(hits)}; "
                        f"last seen: {self.messages[-3:]}"
                    )
                self._cond.wait(remaining)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def sensor_client(port: int) -> mqtt.Client:
    """A plain paho client standing in for a sensor (started; call ``loop_stop`` after)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"sensor-{uuid.uuid4().hex[:8]}"
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client
