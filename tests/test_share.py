"""Two gateways split one sensor stream through an MQTT 5 shared subscription.

Two real `faultline run` processes with distinct client ids (two gateways: ``gw-a`` and
``gw-b``, each with its own state folder) join one share group (``topics.shared_group``)
on a real Mosquitto; the scaling is the broker's, there is no protocol of ours between
them. What must hold: every window is answered by exactly one gateway, none by both, none
missed, and one answer (one ``message_id``) per window — also when ``gw-a`` is killed
with -9 in the middle of the stream and comes back later.

What Mosquitto does with the dead gateway's windows (observed here with 2.0.11; MQTT 5
§4.8.2 leaves it to the server): ``gw-a``'s session outlives its connection
(``mqtt.session_expiry_s``), and Mosquitto keeps it in the group's round robin. The
windows it had sent to ``gw-a`` unacknowledged stay in that session, and so do about half
of the windows published while ``gw-a`` is dead: they are queued for ``gw-a``, not handed
to ``gw-b``, and answered when ``gw-a`` returns (measured: 19 of the 37 windows of the
second half). So with Mosquitto a dead gateway's share waits for its return, or for its
session to expire; an answer is late, never lost or doubled. The returning ``gw-a`` drops
as duplicates redelivered windows whose answers its outbox already held. Counts printed.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from faultline.agent.transport.broker import MosquittoProcess
from tests.collector import Collector
from tests.harness import (
    AgentProcess,
    agent_process_env,
    publish_windows,
    record_windows,
    wait_until,
)

pytestmark = pytest.mark.slow

ASSETS = {"pump-a": "97", "pump-b": "105", "fan-c": "118", "fan-d": "130"}
GROUP = "line-1"


def _online(collector: Collector) -> set[str]:
    latest: dict[str, str] = {}
    for topic, body in list(collector.messages):
        if "/status/" in topic:
            latest[topic.rsplit("/", 1)[1]] = str(body.get("state"))
    return {gw for gw, state in latest.items() if state == "online"}


def _alerts(collector: Collector) -> list[dict[str, Any]]:
    return [body for topic, body in list(collector.messages) if "/alerts/" in topic]


def test_two_gateways_split_a_stream_exactly_once_through_a_kill(
    mosquitto: MosquittoProcess,
    cwru_dir: Path,
    test_library_root: Path,
    test_library: object,
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    prefix = unique_prefix
    gateways = {
        gw: AgentProcess(
            agent_process_env(
                mosquitto.port,
                prefix,
                test_library_root,
                tmp_path / gw,
                FAULTLINE__MQTT__CLIENT_ID=gw,
                FAULTLINE__TOPICS__SHARED_GROUP=GROUP,
            ),
            tmp_path / f"{gw}.log",
        )
        for gw in ("gw-a", "gw-b")
    }
    collector = Collector("127.0.0.1", mosquitto.port, [f"{prefix}/alerts/+", f"{prefix}/status/+"])
    windows = list(
        itertools.chain.from_iterable(
            record_windows(cwru_dir, record, asset, 20, hop_s=0.25, ts0=1.7e9)
            for asset, record in ASSETS.items()
        )
    )
    # Interleave the assets, as four sensors publishing at once would.
    windows.sort(key=lambda w: (w.ts, w.asset))
    first, second = windows[:40], windows[40:]
    try:
        for agent in gateways.values():
            agent.start()
        wait_until(lambda: _online(collector) == {"gw-a", "gw-b"}, 120, "both gateways online")

        publish_windows(mosquitto.port, prefix, first)
        # Mid-stream: gw-a has answered some of its share and holds more in flight.
        wait_until(
            lambda: sum(a["agent_id"] == "gw-a" for a in _alerts(collector)) >= 3,
            60,
            "gw-a answering",
        )
        gateways["gw-a"].kill9()
        killed_at = len(_alerts(collector))
        publish_windows(mosquitto.port, prefix, second)
        time.sleep(3.0)  # gw-a stays dead a while; gw-b goes on serving
        during = _alerts(collector)[killed_at:]
        gateways["gw-a"].start()
        wait_until(
            lambda: len({a["message_id"] for a in _alerts(collector)}) >= len(windows),
            120,
            "every window answered",
        )
        time.sleep(2.0)  # a duplicate answer would arrive now

        alerts = _alerts(collector)
        by_window: dict[tuple[str, float], set[str]] = {}
        ids: dict[tuple[str, float], set[str]] = {}
        for alert in alerts:
            key = (alert["asset"], alert["window_ts"])
            by_window.setdefault(key, set()).add(alert["agent_id"])
            ids.setdefault(key, set()).add(alert["message_id"])
        expected = {(w.asset, w.ts) for w in windows}
        assert set(by_window) == expected, "every window answered, nothing else"
        assert all(len(gws) == 1 for gws in by_window.values()), "no window answered by both"
        assert all(len(m) == 1 for m in ids.values()), "one answer per window"
        share = {gw: sum(gws == {gw} for gws in by_window.values()) for gw in gateways}
        assert min(share.values()) >= 5, f"the broker spread the stream: {share}"
        # While gw-a was dead, only gw-b answered.
        assert {a["agent_id"] for a in during} <= {"gw-b"}, during
        copies = len(alerts) - len(expected)
        late = sum(by_window[(w.asset, w.ts)] == {"gw-a"} for w in second)
        returned = [a for a in alerts[killed_at + len(during) :] if a["agent_id"] == "gw-a"]
        print(
            f"share: {len(windows)} windows, answered by {share}; {len(during)} answered by "
            f"gw-b while gw-a was dead; {len(returned)} answered by gw-a after its return "
            f"({late} of the {len(second)} published while it was dead were queued in its "
            f"session); {copies} copies of an answer (same message_id)"
        )
        for agent in gateways.values():
            assert agent.stop(60) == 0, agent.output()
    finally:
        for agent in gateways.values():
            agent.kill9()
        collector.close()
