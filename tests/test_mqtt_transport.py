"""MqttTransport against real brokers: status/will, reconnect, persistent sessions, 3.1.1, amqtt.

Observers are plain paho clients, not MqttTransport, so the transport is checked against an
independent reading of what the broker actually holds.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from faultline.agent.transport.broker import (
    MosquittoProcess,
    broker_reachable,
    free_port,
    start_embedded_broker,
)
from faultline.agent.transport.mqtt import (
    InboundMessage,
    MqttTransport,
    PublishError,
    backoff_delay,
)

WAIT_S = 10.0


class Inbox:
    """Thread-safe list of received messages with a blocking wait."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[Any]], bool], timeout: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: pred(self.items), timeout)

    def payloads(self) -> list[bytes]:
        with self._cond:
            return [bytes(m.payload) for m in self.items]


class Observer:
    """A raw paho subscriber (MQTT 5 unless told otherwise)."""

    def __init__(self, port: int, topic: str, protocol: MQTTProtocolVersion = paho.MQTTv5) -> None:
        self.inbox = Inbox()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"obs-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
        )
        self.client.on_message = lambda _c, _u, msg: self.inbox.add(msg)
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT_S), "observer could not subscribe"

    def states(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.inbox.payloads()]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def observe() -> Iterator[Callable[..., Observer]]:
    opened: list[Observer] = []

    def make(port: int, topic: str, protocol: MQTTProtocolVersion = paho.MQTTv5) -> Observer:
        obs = Observer(port, topic, protocol)
        opened.append(obs)
        return obs

    yield make
    for obs in opened:
        obs.close()


@pytest.fixture
def transports() -> Iterator[Callable[..., tuple[MqttTransport, Inbox]]]:
    """Factory of started transports, each with its own inbox; all stopped at teardown."""
    made: list[MqttTransport] = []

    def make(
        port: int,
        *,
        client_id: str | None = None,
        status_topic: str = "t/status/unused",
        subscribe: list[str] | None = None,
        start: bool = True,
        handler: Callable[[InboundMessage], None] | None = None,
        **kwargs: Any,
    ) -> tuple[MqttTransport, Inbox]:
        inbox = Inbox()
        kwargs.setdefault("reconnect_min_s", 0.05)
        kwargs.setdefault("reconnect_max_s", 0.5)
        transport = MqttTransport(
            host="127.0.0.1",
            port=port,
            client_id=client_id or f"agent-{uuid.uuid4().hex[:8]}",
            status_topic=status_topic,
            status_online=lambda: {"library": "lib-v1", "windows": 3},
            on_message=handler or inbox.add,
            **kwargs,
        )
        made.append(transport)
        if subscribe:
            transport.subscribe(subscribe)
        if start:
            transport.start()
            assert transport.wait_connected(WAIT_S), "transport did not connect"
        return transport, inbox

    yield make
    for transport in made:
        transport.stop(timeout=2.0)


def test_status_is_retained_online_with_payload_fields(
    mosquitto: MosquittoProcess, unique_prefix: str, transports: Any, observe: Any
) -> None:
    status = f"{unique_prefix}/status"
    transport, _ = transports(mosquitto.port, status_topic=status)
    # Subscribe only once the broker has acknowledged the status, so what arrives is the
    # retained copy (connected is not enough: the status may still be on its way).
    deadline = time.monotonic() + WAIT_S
    while transport.stats["delivered"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert transport.stats["delivered"] >= 1
    obs = observe(mosquitto.port, status)  # subscribes after the fact: sees the retained copy
    assert obs.inbox.wait_for(lambda items: len(items) >= 1)
    message = obs.inbox.items[0]
    assert message.retain
    assert json.loads(message.payload) == {"state": "online", "library": "lib-v1", "windows": 3}
    assert message.properties.ContentType == "application/json"


_VICTIM = """
import sys, time
from faultline.agent.transport.mqtt import MqttTransport
t = MqttTransport(host="127.0.0.1", port=int(sys.argv[1]), client_id=sys.argv[2],
                  status_topic=sys.argv[3], status_online=lambda: {}, on_message=print)
t.start()
assert t.wait_connected(10)
print("ready", flush=True)
time.sleep(60)
"""


def test_last_will_goes_out_when_the_process_dies(
    mosquitto: MosquittoProcess, unique_prefix: str, observe: Any
) -> None:
    status = f"{unique_prefix}/status"
    obs = observe(mosquitto.port, status)
    victim = subprocess.Popen(
        [sys.executable, "-c", _VICTIM, str(mosquitto.port), "victim-1", status],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert victim.stdout is not None
        assert victim.stdout.readline().strip() == "ready"
        assert obs.inbox.wait_for(lambda items: len(items) >= 1)
        victim.send_signal(signal.SIGKILL)  # no DISCONNECT: only the broker's will can tell
        victim.wait(5)
    finally:
        victim.kill()
        victim.wait(5)
    assert obs.inbox.wait_for(lambda items: len(items) >= 2)
    will = obs.states()[1]
    assert will["state"] == "offline"
    assert will["reason"] == "connection lost"
    assert will["client_id"] == "victim-1"
    late = observe(mosquitto.port, status)
    assert late.inbox.wait_for(lambda items: len(items) >= 1)
    assert late.inbox.items[0].retain
    assert late.states()[0]["reason"] == "connection lost"


def test_clean_stop_leaves_retained_offline_and_no_will(
    mosquitto: MosquittoProcess, unique_prefix: str, transports: Any, observe: Any
) -> None:
    status = f"{unique_prefix}/status"
    transport, _ = transports(mosquitto.port, status_topic=status)
    obs = observe(mosquitto.port, status)
    assert obs.inbox.wait_for(lambda items: len(items) >= 1)
    transport.stop()
    assert not transport.connected
    assert obs.inbox.wait_for(lambda items: len(items) >= 2)
    time.sleep(0.3)  # a will, if the broker sent one, would arrive right after
    assert [s["state"] for s in obs.states()] == ["online", "offline"]
    assert obs.states()[1]["reason"] == "clean stop"
    late = observe(mosquitto.port, status)
    assert late.inbox.wait_for(lambda items: len(items) >= 1)
    assert late.inbox.items[0].retain
    assert late.states()[0]["reason"] == "clean stop"


def test_reconnects_resubscribes_and_flushes_after_broker_restart(
    mosquitto: MosquittoProcess, unique_prefix: str, transports: Any
) -> None:
    changes = Inbox()
    topic = f"{unique_prefix}/in/a"
    transport, inbox = transports(
        mosquitto.port, subscribe=[f"{unique_prefix}/in/#"], on_connection_change=changes.add
    )
    transport.publish(topic, b"before")
    assert inbox.wait_for(lambda items: len(items) == 1)

    mosquitto.stop()  # no persistence: the broker forgets our subscription
    assert changes.wait_for(lambda items: items == [True, False])
    transport.publish(topic, b"while-down", qos=1)  # must queue, not raise
    mosquitto.start()

    assert transport.wait_connected(WAIT_S)
    assert transport.session_present is False
    assert inbox.wait_for(lambda items: len(items) == 2), "queued QoS1 message lost"
    transport.publish(topic, b"after")
    assert inbox.wait_for(lambda items: len(items) == 3), "not resubscribed after restart"
    assert [m.payload for m in inbox.items] == [b"before", b"while-down", b"after"]
    assert changes.items == [True, False, True]
    stats = transport.stats
    assert stats["connects"] == 2
    assert stats["disconnects"] == 1
    assert stats["received"] == 3


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_persistent_session_queues_qos1_while_consumer_is_away(
    mosquitto: MosquittoProcess,
    unique_prefix: str,
    transports: Any,
    protocol: Literal["5", "3.1.1"],
) -> None:
    topic = f"{unique_prefix}/q"
    consumer_id = f"consumer-{uuid.uuid4().hex[:6]}"
    consumer, _ = transports(
        mosquitto.port, client_id=consumer_id, subscribe=[topic], protocol=protocol
    )
    assert consumer.session_present is False
    consumer.stop()
    producer, _ = transports(mosquitto.port, protocol=protocol)
    for i in range(3):
        producer.publish(topic, f"m{i}".encode(), qos=1)
    producer.stop()  # waits for its offline status, so the three PUBACKs came first

    # Same client id, no subscribe() call: delivery can only come from the broker's session.
    again, inbox = transports(mosquitto.port, client_id=consumer_id, protocol=protocol)
    assert again.session_present is True
    assert inbox.wait_for(lambda items: len(items) == 3)
    assert sorted(m.payload for m in inbox.items) == [b"m0", b"m1", b"m2"]
    assert all(m.qos == 1 for m in inbox.items)


def test_persistent_session_survives_broker_restart_with_persistence(
    tmp_path: Any, unique_prefix: str, transports: Any
) -> None:
    topic = f"{unique_prefix}/q"
    with MosquittoProcess(persistence=True, workdir=tmp_path / "broker") as broker:
        consumer, _ = transports(broker.port, client_id="persisted-consumer", subscribe=[topic])
        consumer.stop()
        producer, _ = transports(broker.port)
        producer.publish(topic, b"kept-1")
        producer.publish(topic, b"kept-2")
        producer.stop()
        broker.stop()  # SIGTERM: mosquitto writes its database
        assert (tmp_path / "broker" / "mosquitto.db").is_file()
        broker.start()
        again, inbox = transports(broker.port, client_id="persisted-consumer")
        assert again.session_present is True
        assert inbox.wait_for(lambda items: len(items) == 2)
        assert [m.payload for m in inbox.items] == [b"kept-1", b"kept-2"]


def test_manual_ack_unacked_message_is_redelivered(
    mosquitto: MosquittoProcess, unique_prefix: str, transports: Any
) -> None:
    topic = f"{unique_prefix}/work"
    consumer, inbox = transports(
        mosquitto.port, client_id="acker", subscribe=[topic], manual_ack=True
    )
    producer, _ = transports(mosquitto.port)
    producer.publish(topic, b"job-1")
    producer.publish(topic, b"job-2")
    assert inbox.wait_for(lambda items: len(items) == 2)
    consumer.ack(inbox.items[0])  # job-2 stays unacknowledged
    time.sleep(0.2)
    consumer.stop()

    again, inbox2 = transports(mosquitto.port, client_id="acker", manual_ack=True)
    assert inbox2.wait_for(lambda items: len(items) >= 1)
    time.sleep(0.3)
    assert [m.payload for m in inbox2.items] == [b"job-2"]
    again.ack(inbox2.items[0])


def test_handler_exception_is_logged_and_the_loop_goes_on(
    mosquitto: MosquittoProcess,
    unique_prefix: str,
    transports: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = f"{unique_prefix}/in"
    good = Inbox()

    def handler(message: InboundMessage) -> None:
        if message.payload == b"boom":
            raise RuntimeError("handler bug")
        good.add(message)

    transport, _ = transports(mosquitto.port, subscribe=[topic], handler=handler)
    transport.publish(topic, b"boom")
    transport.publish(topic, b"fine", user_properties={"asset": "pump-7"}, content_type="x/y")
    assert good.wait_for(lambda items: len(items) == 1)
    message = good.items[0]
    assert message.payload == b"fine"
    assert message.user_properties == {"asset": "pump-7"}
    assert message.content_type == "x/y"
    assert transport.stats["handler_errors"] == 1
    assert any(topic in r.getMessage() and r.exc_info for r in caplog.records)


def test_mqtt_311_mode_pubsub_and_status(
    mosquitto: MosquittoProcess, unique_prefix: str, transports: Any, observe: Any
) -> None:
    topic = f"{unique_prefix}/in"
    status = f"{unique_prefix}/status"
    transport, inbox = transports(
        mosquitto.port, protocol="3.1.1", subscribe=[topic], status_topic=status
    )
    transport.publish(topic, "text payload", user_properties={"dropped": "in 3.1.1"})
    assert inbox.wait_for(lambda items: len(items) == 1)
    assert inbox.items[0].payload == b"text payload"
    assert inbox.items[0].user_properties == {}
    obs = observe(mosquitto.port, status, protocol=paho.MQTTv311)
    assert obs.inbox.wait_for(lambda items: len(items) >= 1)
    assert obs.states()[0]["state"] == "online"


def test_amqtt_broker_carries_a_311_transport(
    unique_prefix: str, transports: Any, observe: Any
) -> None:
    broker = start_embedded_broker("amqtt")
    try:
        assert (broker.kind, broker.protocol) == ("amqtt", "3.1.1")
        assert broker_reachable(broker.host, broker.port)
        topic = f"{unique_prefix}/in"
        status = f"{unique_prefix}/status"
        consumer, inbox = transports(
            broker.port, protocol="3.1.1", subscribe=[topic], status_topic=status
        )
        producer, _ = transports(broker.port, protocol="3.1.1")
        producer.publish(topic, b"via amqtt")
        assert inbox.wait_for(lambda items: len(items) == 1)
        assert inbox.items[0].payload == b"via amqtt"
        obs = observe(broker.port, status, protocol=paho.MQTTv311)
        assert obs.inbox.wait_for(lambda items: len(items) >= 1)
        assert obs.states()[0]["state"] == "online"
        obs.close()
        consumer.stop()
        producer.stop()
    finally:
        broker.stop()
    assert not broker_reachable(broker.host, broker.port, timeout=0.3)


def test_publish_while_never_connected_queues_until_full(transports: Any) -> None:
    transport, _ = transports(free_port(), start=False, max_queued_messages=3)
    for i in range(3):
        transport.publish("t/x", f"{i}", qos=1)
    with pytest.raises(PublishError, match="queue full"):
        transport.publish("t/x", b"one too many", qos=1)
    transport.publish("t/x", b"qos0 is dropped, not raised", qos=0)
    with pytest.raises(PublishError, match="cannot publish"):
        transport.publish("t/+/wild", b"", qos=1)
    stats = transport.stats
    assert (stats["published"], stats["publish_failures"]) == (3, 3)


def test_transport_keeps_retrying_until_a_broker_appears(transports: Any) -> None:
    port = free_port()
    transport, _ = transports(port, start=False)
    transport.start()
    time.sleep(0.5)
    assert not transport.connected
    assert transport.stats["connect_failures"] >= 2
    with MosquittoProcess(port) as broker:
        assert transport.wait_connected(WAIT_S)
        assert broker.port == port


def test_backoff_grows_with_full_jitter_and_respects_bounds() -> None:
    import random

    rng = random.Random(7)
    for attempt in range(1, 12):
        cap = min(30.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert min(delays) >= 0.5
        assert max(delays) <= cap
        assert max(delays) - min(delays) > 0.3 * (cap - 0.5)  # spread, not a fixed step
    assert backoff_delay(10_000, 0.5, 30.0, rng) <= 30.0


def test_broker_reachable_needs_an_mqtt_handshake(mosquitto_session: MosquittoProcess) -> None:
    assert broker_reachable(mosquitto_session.host, mosquitto_session.port)
    with socket.socket() as silent:  # accepts TCP, never answers CONNECT
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        assert not broker_reachable("127.0.0.1", silent.getsockname()[1], timeout=0.3)
    assert not broker_reachable("127.0.0.1", free_port(), timeout=0.3)
