"""The gateway broker's bridge to the plant broker, with two real Mosquitto processes.

The gateway broker runs the configuration that ``balena/mosquitto/broker-conf.sh`` (the
image's start step) renders from device variables; the plant broker is a persistent
Mosquitto behind ``tests/netproxy.py``, so the link between them can be cut. What must
hold for alerts published on the gateway: they appear at the plant, in order, none lost —
while all is up, across a restart of the plant broker, across a link that was down for a
while (queued on the gateway broker meanwhile), and across a kill -9 of the gateway broker
while they were queued. Commands published at the plant reach the gateway.

The bridge forwards at QoS 1: a message in flight when a link drops may arrive twice
(same ``message_id``, which consumers de-duplicate on); the test counts such copies and
checks order on first arrivals.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from faultline.agent.transport.broker import MosquittoProcess, find_mosquitto, free_port
from tests.collector import Collector
from tests.netproxy import TcpProxy

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
BROKER_CONF = REPO_ROOT / "balena" / "mosquitto" / "broker-conf.sh"


def render_broker_conf(**env: str) -> str:
    """The gateway broker's mosquitto.conf exactly as the image's entrypoint writes it."""
    done = subprocess.run(
        ["sh", str(BROKER_CONF)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class Bridged:
    plant: MosquittoProcess
    gateway: MosquittoProcess
    link: TcpProxy
    prefix: str
    bridge_id: str


@pytest.fixture
def bridged(tmp_path: Path) -> Iterator[Bridged]:
    if find_mosquitto() is None:
        pytest.fail("install mosquitto: apt-get install -y mosquitto")
    prefix = f"t/bridge-{uuid.uuid4().hex[:8]}"
    bridge_id = f"bridge-{uuid.uuid4().hex[:8]}"
    plant = MosquittoProcess(persistence=True, workdir=tmp_path / "plant").start()
    link = TcpProxy(plant.port).start()
    port = free_port()
    conf = render_broker_conf(
        BROKER_PORT=str(port),
        BROKER_BIND="127.0.0.1",
        BROKER_DATA=f"{tmp_path / 'gateway'}/",
        BROKER_USER=getpass.getuser(),
        PLANT_BROKER_HOST="127.0.0.1",
        PLANT_BROKER_PORT=str(link.port),
        PLANT_BRIDGE_ID=bridge_id,
        FAULTLINE__TOPICS__PREFIX=prefix,
    )
    gateway = MosquittoProcess(port, workdir=tmp_path / "gateway", config=conf).start()
    try:
        yield Bridged(plant, gateway, link, prefix, bridge_id)
    finally:
        gateway.stop()
        link.close()
        plant.stop()


class Publisher:
    """The agent's side, reduced to what the bridge sees: QoS 1 alerts on the gateway."""

    def __init__(self, port: int, prefix: str) -> None:
        self.prefix = prefix
        self.sent = 0
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"agent-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self._client.reconnect_delay_set(0.1, 1)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def alerts(self, n: int) -> None:
        for _ in range(n):
            body = {"asset": "pump-1", "seq": self.sent, "message_id": f"m{self.sent}"}
            info = self._client.publish(f"{self.prefix}/alerts/pump-1", json.dumps(body), qos=1)
            info.wait_for_publish(10)
            self.sent += 1

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _arrived(collector: Collector) -> tuple[list[int], int]:
    """Sequence numbers of alerts in order of first arrival, and the count of copies."""
    seen: set[str] = set()
    order: list[int] = []
    copies = 0
    for topic, body in list(collector.messages):
        if "/alerts/" not in topic:
            continue
        if body["message_id"] in seen:
            copies += 1
            continue
        seen.add(body["message_id"])
        order.append(body["seq"])
    return order, copies


def _wait_all(collector: Collector, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(_arrived(collector)[0]) < n:
        if time.monotonic() > deadline:
            got = len(_arrived(collector)[0])
            raise AssertionError(f"{got} of {n} alerts reached the plant in {timeout} s")
        time.sleep(0.1)


def _wait_bridge(collector: Collector, bridge_id: str, prefix: str, timeout: float) -> None:
    """The bridge's retained notification at the plant says 1 when its link is up."""
    topic = f"{prefix}/bridge/{bridge_id}/state"
    deadline = time.monotonic() + timeout
    while True:
        states = [body for t, body in collector.messages if t == topic]
        if states and states[-1] == 1:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"bridge not connected in {timeout} s: {states}")
        time.sleep(0.1)


def test_alerts_cross_the_bridge_through_restarts_and_outages(bridged: Bridged) -> None:
    prefix = bridged.prefix
    plant_side = Collector(
        "127.0.0.1",
        bridged.plant.port,
        [f"{prefix}/alerts/+", f"{prefix}/status/+", f"{prefix}/bridge/#"],
        persistent=True,  # a plant dashboard that must not miss an alert
    )
    publisher = Publisher(bridged.gateway.port, prefix)
    try:
        _wait_bridge(plant_side, bridged.bridge_id, prefix, 30)

        # 1. All up.
        publisher.alerts(50)
        _wait_all(plant_side, 50, 30)

        # 2. The plant broker restarts; the gateway keeps publishing meanwhile.
        bridged.plant.stop()
        publisher.alerts(100)
        bridged.plant.start()
        _wait_all(plant_side, 150, 90)

        # 3. The link is down for a while: alerts queue on the gateway broker.
        bridged.link.cut()
        for _ in range(10):
            publisher.alerts(50)
            time.sleep(0.5)
        assert len(_arrived(plant_side)[0]) == 150, "nothing crosses a cut link"
        bridged.link.restore()
        _wait_all(plant_side, 650, 90)

        # 4. Queued on the gateway broker, which is then killed (power cut) and restarted:
        # its store (autosave_interval 1) still holds them for the plant.
        bridged.link.cut()
        publisher.alerts(200)
        time.sleep(2.5)  # past one autosave
        bridged.gateway.kill()
        bridged.gateway.start()
        bridged.link.restore()
        _wait_all(plant_side, 850, 90)

        order, copies = _arrived(plant_side)
        assert order == list(range(publisher.sent)), "every alert once, in publication order"
        # Copies are QoS 1 redeliveries of what was in flight at a cut, or sent after the
        # gateway broker's last save before its kill: reported, never hidden.
        print(f"bridge: {publisher.sent} alerts, {len(order)} arrived, {copies} copies")
    finally:
        publisher.close()
        plant_side.close()


def test_commands_reach_the_gateway_and_status_reaches_the_plant(bridged: Bridged) -> None:
    prefix = bridged.prefix
    plant_side = Collector("127.0.0.1", bridged.plant.port, [f"{prefix}/#"])
    gateway_side = Collector("127.0.0.1", bridged.gateway.port, [f"{prefix}/commands/#"])
    agent = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    operator = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    try:
        _wait_bridge(plant_side, bridged.bridge_id, prefix, 30)
        agent.connect("127.0.0.1", bridged.gateway.port)
        agent.loop_start()
        status = json.dumps({"state": "online", "agent": "gw-1"})
        agent.publish(f"{prefix}/status/gw-1", status, qos=1, retain=True).wait_for_publish(10)
        agent.publish(f"{prefix}/errors", '{"code": "x"}', qos=1).wait_for_publish(10)
        plant_side.wait_for(lambda t, _b: t == f"{prefix}/status/gw-1", 1, timeout=30)
        plant_side.wait_for(lambda t, _b: t == f"{prefix}/errors", 1, timeout=30)

        operator.connect("127.0.0.1", bridged.plant.port)
        operator.loop_start()
        command = '{"command": "reload_library"}'
        operator.publish(f"{prefix}/commands/all", command, qos=1).wait_for_publish(10)
        got = gateway_side.wait_for(lambda t, _b: t == f"{prefix}/commands/all", 1, timeout=30)
        assert got[0][1] == {"command": "reload_library"}
        # Sensor windows stay local: nothing under sensors/ is bridged out.
        agent.publish(f"{prefix}/sensors/pump-1/window", "{}", qos=1).wait_for_publish(10)
        time.sleep(1.0)
        assert not [t for t, _b in plant_side.messages if "/sensors/" in t]
    finally:
        for client in (agent, operator):
            client.loop_stop()
            client.disconnect()
        plant_side.close()
        gateway_side.close()
