"""Ask the fleet from outside it: one MQTT 5 request on ``<prefix>/fleet/search``, one answer.

What ``faultline library search --fleet`` uses: a short-lived client (clean start, no
session, no status topic) with the agent's broker settings (TLS, login), its own reply
topic and random correlation data, that waits for the answer or gives up after
``timeout_s`` (a coordinator answers by its deadline, partial or not).
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from faultline.agent.settings import MqttSettings
from faultline.agent.transport.tls import make_ssl_context
from faultline.agent.transport.topics import Topics

__all__ = ["FleetUnreachableError", "ask_fleet"]


class FleetUnreachableError(RuntimeError):
    """No broker, or no answer in time (no coordinator subscribed, or all busy)."""


def ask_fleet(mqtt: MqttSettings, topics: Topics, body: bytes, timeout_s: float) -> dict[str, Any]:
    """Publish ``body`` on the fleet's search topic and return the answer."""
    if mqtt.protocol != "5":
        raise FleetUnreachableError("fleet search needs MQTT 5 (mqtt.protocol is 3.1.1)")
    token = uuid.uuid4().hex
    topic, inbox = topics.fleet_search, topics.fleet_ask_inbox(token)
    correlation = token.encode()
    got: dict[str, Any] = {}
    answered, subscribed = threading.Event(), threading.Event()
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"faultline-ask-{token[:12]}", protocol=paho.MQTTv5
    )
    if mqtt.username is not None:
        client.username_pw_set(
            mqtt.username, mqtt.password.get_secret_value() if mqtt.password else None
        )
    tls = mqtt.tls_parameters()
    if tls is not None:
        client.tls_set_context(make_ssl_context(tls))

    def on_message(_c: object, _u: object, message: paho.MQTTMessage) -> None:
        if getattr(message.properties, "CorrelationData", None) == correlation:
            try:
                got.update(json.loads(message.payload))
            except ValueError:
                got["error"] = {"code": "bad_answer", "reason": "the answer is not JSON"}
            answered.set()

    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    try:
        client.connect(mqtt.host, mqtt.port, mqtt.keepalive_s)
    except OSError as exc:
        raise FleetUnreachableError(f"broker {mqtt.host}:{mqtt.port}: {exc}") from None
    client.loop_start()
    try:
        client.subscribe(inbox, qos=1)
        if not subscribed.wait(timeout_s):
            raise FleetUnreachableError(
                f"broker {mqtt.host}:{mqtt.port} did not confirm the subscribe"
            )
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = inbox
        props.CorrelationData = correlation
        props.MessageExpiryInterval = max(1, round(timeout_s))
        client.publish(topic, body, qos=1, properties=props)
        if not answered.wait(timeout_s):
            raise FleetUnreachableError(
                f"no answer on {topic} within {timeout_s:g} s: is a gateway with "
                "fleet.enabled and fleet.coordinate connected to this broker?"
            )
        return got
    finally:
        client.disconnect()
        client.loop_stop()
