"""`faultline run --processes N`: N real agent processes on one MQTT shared subscription.

A real Mosquitto, real `faultline run` processes, real CWRU windows. What must hold:
every window is answered exactly once by one of the processes, the broker spreads the
windows over both, each process numbers an asset's alerts in window order, a process that
dies is started again under its own client id, and one SIGTERM stops them all cleanly,
each leaving its retained ``offline`` status.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

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


def _online(collector: Collector) -> dict[str, float]:
    """Client id -> time of its newest retained/online status."""
    out: dict[str, float] = {}
    for (topic, body), at in zip(collector.messages, collector.arrived, strict=True):
        if "/status/" in topic and body.get("state") == "online":
            out[topic.rsplit("/", 1)[1]] = at
    return out


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_processes_share_the_stream_and_stop_together(
    mosquitto: MosquittoProcess,
    cwru_dir: Path,
    test_library_root: Path,
    test_library: object,
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    prefix = unique_prefix
    env = agent_process_env(
        mosquitto.port,
        prefix,
        test_library_root,
        tmp_path / "state",
        FAULTLINE__MQTT__CLIENT_ID="gw-1",
    )
    collector = Collector(
        "127.0.0.1",
        mosquitto.port,
        [f"{prefix}/alerts/+", f"{prefix}/status/+", f"{prefix}/errors"],
    )
    agent = AgentProcess(env, tmp_path / "agent.log", ["--processes", "2"]).start()
    try:
        wait_until(lambda: set(_online(collector)) == {"gw-1-p0", "gw-1-p1"}, 120, "two online")
        # Each process's own state; the supervisor's health file lists theirs.
        state = sorted(os.listdir(tmp_path / "state"))
        assert state == ["health.json", "process-0", "process-1"], state

        windows = list(
            itertools.chain.from_iterable(
                record_windows(cwru_dir, record, asset, 10, hop_s=0.5, ts0=1.7e9)
                for asset, record in ASSETS.items()
            )
        )
        publish_windows(mosquitto.port, prefix, windows)
        alerts = collector.wait_for(lambda t, _b: "/alerts/" in t, len(windows), timeout=120)
        time.sleep(1.0)  # a duplicate would come now
        alerts = [(t, b) for t, b in collector.messages if "/alerts/" in t]
        keys = [(b["asset"], b["window_ts"]) for _t, b in alerts]
        assert len(keys) == len(set(keys)) == len(windows), "each window answered once"
        by_process: dict[str, int] = {}
        for _t, body in alerts:
            by_process[body["agent_id"]] = by_process.get(body["agent_id"], 0) + 1
        assert set(by_process) == {"gw-1-p0", "gw-1-p1"}, by_process
        assert min(by_process.values()) >= len(windows) // 4, f"unbalanced: {by_process}"
        # Per process and asset, seq follows window order (one worker per process).
        streams: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for _t, body in alerts:
            streams.setdefault((body["agent_id"], body["asset"]), []).append(
                (body["seq"], body["window_ts"])
            )
        for stream, rows in streams.items():
            in_seq_order = [ts for _seq, ts in sorted(rows)]
            assert in_seq_order == sorted(in_seq_order), f"{stream} out of window order"

        # A process that dies is started again under its own identity.
        first, second = _children(agent.pid)
        before = _online(collector)["gw-1-p0"]
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: _online(collector).get("gw-1-p0", 0) > before, 60, "p0 back online")
        assert second in _children(agent.pid)
        assert "exited with code -9" in agent.output(200)

        assert agent.stop(90) == 0, agent.output()
        statuses = {
            t.rsplit("/", 1)[1]: b["state"] for t, b in collector.messages if "/status/" in t
        }
        assert statuses == {"gw-1-p0": "offline", "gw-1-p1": "offline"}, statuses
    finally:
        agent.kill9()
        collector.close()


def test_processes_must_be_positive(tmp_path: Path, test_library_root: Path) -> None:
    env = agent_process_env(1, "x", test_library_root, tmp_path, FAULTLINE__PIPELINE__PROCESSES="0")
    agent = AgentProcess(env, tmp_path / "agent.log").start()
    assert agent.proc is not None
    assert agent.proc.wait(60) == 2
    agent.stop()
    assert "pipeline.processes" in agent.output()
