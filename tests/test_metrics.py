"""Prometheus metrics (issue 15, item 1): a running agent's real /metrics endpoint, scraped
over HTTP and parsed with Prometheus' own text parser."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.library import FaultLibrary
from tests.collector import Collector, sensor_client
from tests.harness import (
    agent_settings,
    publish_windows,
    record_windows,
    start_agent,
    wait_until,
)

pytestmark = pytest.mark.slow


def _scrape(port: int) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    families: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return families


def test_a_running_agent_serves_its_metrics(
    mosquitto_session: object,
    cwru_dir: object,
    test_library: FaultLibrary,
    encoder: SpectrumEncoder,
    unique_prefix: str,
) -> None:
    port = mosquitto_session.port  # type: ignore[attr-defined]
    settings = agent_settings(
        port, unique_prefix, FAULTLINE__METRICS__ENABLED="true", FAULTLINE__METRICS__PORT="0"
    )
    agent = start_agent(settings, test_library, encoder)
    collector = Collector(
        "127.0.0.1", port, [f"{unique_prefix}/alerts/+", f"{unique_prefix}/errors"]
    )
    try:
        assert agent.metrics is not None
        windows = record_windows(cwru_dir, "105", "pump-7", 3, ts0=1.7e9)  # type: ignore[arg-type]
        publish_windows(port, unique_prefix, windows)
        sensor = sensor_client(port)
        sensor.publish(agent.topics.window("pump-7"), b"garbage", qos=1).wait_for_publish(5)
        sensor.loop_stop()
        collector.wait_for(lambda t, _b: "/alerts/" in t, count=3)
        collector.wait_for(lambda t, _b: t.endswith("/errors"))
        # The sender counts a hand-over just after paho took it (the broker may be quicker).
        wait_until(
            lambda: agent.stages.snapshot().get("publish", {}).get("windows", 0) >= 4,
            10,
            "four hand-overs to paho",
        )
        metrics = _scrape(agent.metrics.port)
    finally:
        collector.close()
        agent.stop()

    def value(name: str, **labels: str) -> float:
        return sum(
            v
            for n, lab, v in metrics.get(_family(name), [])
            if n == name and labels.items() <= lab.items()
        )

    assert value("faultline_windows_received_total") == 4
    assert value("faultline_windows_answered_total") == 3
    assert value("faultline_windows_rejected_total", code="malformed_json") == 1
    assert sum(v for n, _l, v in metrics["faultline_alerts"] if n == "faultline_alerts_total") == 3
    assert value("faultline_stage_seconds_count", stage="diagnose") == 3
    assert value("faultline_stage_seconds_count", stage="decode") == 3
    assert value("faultline_stage_seconds_bucket", stage="diagnose", le="+Inf") == 3
    assert value("faultline_stage_seconds_sum", stage="diagnose") > 0
    # diagnose_batch's own parts, each charged to every window of its batch, within the
    # whole it is part of.
    for part in ("encode", "search", "decide"):
        assert value("faultline_stage_seconds_count", stage=part) == 3, part
        assert value("faultline_stage_seconds_sum", stage=part) > 0, part
    parts = sum(
        value("faultline_stage_seconds_sum", stage=part) for part in ("encode", "search", "decide")
    )
    assert parts <= value("faultline_stage_seconds_sum", stage="diagnose")
    # Every outgoing message handed to paho: the three alerts and the error at least.
    assert value("faultline_stage_seconds_count", stage="publish") >= 4
    assert value("faultline_pipeline_batch_windows_sum") == 3
    assert value("faultline_mqtt_connected") == 1
    assert value("faultline_outbox_accepted_total", **{"class": "alert"}) == 3
    [(_n, info, _v)] = metrics["faultline_library_info"]
    assert info["version"] == test_library.version
    assert value("faultline_library_signatures", view="window") > 0
    assert "faultline_pipeline_queue_depth" in metrics
    assert "faultline_outbox_oldest_age_seconds" in metrics


def _family(sample: str) -> str:
    """The family a sample belongs to (Prometheus' parser strips these suffixes)."""
    for suffix in ("_total", "_bucket", "_count", "_sum", "_info"):
        if sample.endswith(suffix):
            return sample.removesuffix(suffix)
    return sample
