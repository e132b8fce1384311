"""A storm of hostile payloads over a real broker at a running agent (issue 14, item 7).

100,000 messages of 12 kinds (random bytes, cut JSON, wrong types, 5,000-digit numbers,
nesting 100,000 deep, NaN samples, forged FLW1 headers, oversized and non-UTF-8 payloads,
garbage commands and questions, replayed windows) with a good CWRU window every 2,000. What
must hold: the agent never dies; every sensor message is accounted for (answered, rejected
with a code, or recognised as a duplicate: its own /metrics says so, and the sums match
what was sent); the errors topic is not flooded (the per-source budget summarises); memory
stays bounded; and every good window is answered as before the storm.
"""

from __future__ import annotations

import json
import struct
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from faultline.agent.transport import binary_format
from faultline.agent.transport.broker import MosquittoProcess, free_port
from faultline.agent.transport.payloads import encode_window_json
from faultline.encoders.signals import Window
from tests.collector import Collector
from tests.harness import AgentProcess, agent_process_env, record_windows

pytestmark = pytest.mark.slow

STORM = 100_000
GOOD_EVERY = 2_000
MAX_PAYLOAD = 200_000  # the agent's limit in this test: a few oversized ones cost little
RSS_BOUND_MB = 600.0


def _hostile(rng: np.random.Generator, i: int, good: Window) -> tuple[str, bytes]:
    """(kind, payload) number ``i``: distinct payloads (one payload's copies are one error)."""
    kind = i % 10
    tag = f'"n": {i}'
    if kind == 0:
        return "random", rng.bytes(int(rng.integers(0, 600)))
    if kind == 1:
        full = encode_window_json(good)
        return "cut_json", full[: int(rng.integers(1, 400))] + str(i).encode()
    if kind == 2:
        return "wrong_type", f'{{{tag}, "ts": "yesterday", "fs": true, "samples": "x"}}'.encode()
    if kind == 3:
        return (
            "huge_number",
            f'{{{tag}, "ts": 1.7e9, "fs": 12000, "samples": [{"9" * 5000}]}}'.encode(),
        )
    if kind == 4:
        return "nested", f"[{i},".encode() + b"[" * 3_000
    if kind == 5:
        samples = ", ".join(["NaN", *["0.5"] * 1500])
        return "nan", f'{{{tag}, "ts": 1.7e9, "fs": 12000, "samples": [{samples}]}}'.encode()
    if kind == 6:
        header = struct.pack(
            "<HHdffI", int(rng.integers(0, 65536)), 0, float(i), 12000.0, -1.0, 10**9
        )
        return "forged_binary", binary_format.MAGIC + header + rng.bytes(64)
    if kind == 7:
        if i % 1000 == 7:  # rare: parsing nothing costs little, but moving 200 kB does
            return "oversized", b"[" + b"0," * (MAX_PAYLOAD // 2) + b"0]"
        return "bad_fs", f'{{{tag}, "ts": 1.7e9, "fs": -5, "samples": [0.1, 0.2]}}'.encode()
    if kind == 8:
        return "not_utf8", b'{"ts": \xff\xfe' + str(i).encode()
    return "bad_rpm", f'{{{tag}, "ts": 1.7e9, "fs": 12000, "rpm": 1e9, "samples": [1]}}'.encode()


def _scrape(port: int) -> dict[str, float]:
    """Sample name{labels} -> value from the agent's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_storm_of_hostile_payloads_loses_nothing_and_good_windows_still_answered(
    mosquitto: MosquittoProcess,
    cwru_dir: Path,
    test_library_root: Path,
    test_library: object,
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    prefix = unique_prefix
    metrics_port = free_port()
    env = agent_process_env(
        mosquitto.port,
        prefix,
        test_library_root,
        tmp_path / "state",
        FAULTLINE__METRICS__ENABLED="true",
        FAULTLINE__METRICS__PORT=str(metrics_port),
        FAULTLINE__LIMITS__MAX_PAYLOAD_BYTES=str(MAX_PAYLOAD),
    )
    collector = Collector(
        "127.0.0.1",
        mosquitto.port,
        [f"{prefix}/alerts/+", f"{prefix}/errors", f"{prefix}/status/+"],
    )
    agent = AgentProcess(env, tmp_path / "agent.log").start()
    sensor = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"storm-{prefix[-8:]}")
    sensor.max_inflight_messages_set(1000)  # a fast, misbehaving sensor
    sensor.connect("127.0.0.1", mosquitto.port)
    sensor.loop_start()
    rng = np.random.default_rng(7)
    goods = record_windows(cwru_dir, "108", "good", STORM // GOOD_EVERY + 2, hop_s=0.1, ts0=1.7e9)
    try:
        collector.wait_for(lambda t, b: b.get("state") == "online", timeout=120)
        window_topic = f"{prefix}/sensors/storm/window"
        # Before the storm: what the agent says of a good window.
        sensor.publish(f"{prefix}/sensors/good/window", encode_window_json(goods[0]), qos=1)
        [(_t, control)] = collector.wait_for(lambda t, b: "/alerts/good" in t, timeout=60)
        kinds: dict[str, int] = {}
        sent_sensor = 1
        commands = questions = replays = 0
        good_sent = 1
        rss_peak = _rss_mb(agent.pid)
        started = time.monotonic()
        for i in range(STORM):
            if i % GOOD_EVERY == GOOD_EVERY - 1:
                body = encode_window_json(goods[good_sent])
                sensor.publish(f"{prefix}/sensors/good/window", body, qos=1)
                good_sent += 1
                sent_sensor += 1
            if i % 97 == 0:
                sensor.publish(f"{prefix}/commands/all", rng.bytes(40), qos=1)
                commands += 1
            if i % 101 == 0:
                sensor.publish(f"{prefix}/query", rng.bytes(60), qos=1)
                questions += 1
            if i % 400 == 0:  # the control window again: answered once, then duplicates
                body = encode_window_json(goods[0])
                sensor.publish(f"{prefix}/sensors/good/window", body, qos=1)
                sent_sensor += 1
                replays += 1
            kind, payload = _hostile(rng, i, goods[0])
            kinds[kind] = kinds.get(kind, 0) + 1
            info = sensor.publish(window_topic, payload, qos=1)
            sent_sensor += 1
            if i % 10_000 == 9_999:
                info.wait_for_publish(60)
                rss_peak = max(rss_peak, _rss_mb(agent.pid))
                # Keep the broker's queue for the agent under its limit (100,000).
                deadline = time.monotonic() + 120
                while (
                    _scrape(metrics_port)["faultline_windows_received_total"] < sent_sensor - 40_000
                ):
                    assert time.monotonic() < deadline, "the agent stopped taking windows"
                    time.sleep(0.5)
        info.wait_for_publish(60)
        deadline = time.monotonic() + 180
        while True:
            metrics = _scrape(metrics_port)
            rss_peak = max(rss_peak, _rss_mb(agent.pid))
            if metrics["faultline_windows_received_total"] >= sent_sensor:
                break
            assert time.monotonic() < deadline, (
                metrics["faultline_windows_received_total"],
                sent_sensor,
            )
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        goods_back = collector.wait_for(
            lambda t, b: "/alerts/good" in t, count=good_sent, timeout=60
        )
        metrics = _scrape(metrics_port)
        # The agent publishes the summaries still inside their interval when it stops: stop
        # it while the collector listens, then count.
        code = agent.stop(90)
        time.sleep(1.0)
        errors = [b for t, b in collector.messages if t.endswith("/errors")]
    finally:
        sensor.loop_stop()
        collector.close()
        agent.stop(90)  # a no-op once stopped above
    assert code == 0, agent.output()

    rejected = {
        key.split("code=")[1].rstrip("}"): value
        for key, value in metrics.items()
        if key.startswith("faultline_windows_rejected_total{")
    }
    answered = metrics["faultline_windows_answered_total"]
    duplicates = metrics["faultline_windows_duplicate_total"]
    received = metrics["faultline_windows_received_total"]
    sensor_rejections = sum(v for k, v in rejected.items() if k not in ("unknown_command",))
    report: dict[str, Any] = {
        "payloads": STORM,
        "sensor messages": sent_sensor,
        "commands": commands,
        "questions": questions,
        "kinds": kinds,
        "rejected by code": rejected,
        "answered": answered,
        "duplicates": duplicates,
        "errors published": len(errors),
        "rss peak MB": round(rss_peak, 1),
        "seconds": round(elapsed, 1),
    }
    print(json.dumps(report, indent=1))
    # No silent drop: every sensor message is an alert, a counted rejection or a duplicate.
    assert received == sent_sensor
    assert answered + sensor_rejections + duplicates == received, report
    assert rejected.get("unknown_command", 0) == commands
    asked = {
        k.split("outcome=")[1].rstrip("}"): v for k, v in metrics.items() if "questions_total{" in k
    }
    assert asked["asked"] == questions
    assert asked["rejected"] + asked["answered"] + asked["unknown"] + asked["busy"] == questions
    assert answered == good_sent
    assert duplicates == replays
    # The budget: a flood is summarised, not published message by message.
    assert len(errors) < 0.05 * sensor_rejections
    summarised = sum(
        int(b["reason"].split(" more rejections")[0].replace(",", ""))
        for b in errors
        if b["code"] == "rejections_summarised"
    )
    assert summarised > 0.9 * sensor_rejections
    assert rss_peak < RSS_BOUND_MB
    # Every good window, during and after the storm, answered as before it.
    assert {b["label"] for _t, b in goods_back} == {control["label"]}
