"""One broken sensor cannot flood the errors topic or the log (issue 14, item 2): its first
rejections are published one by one, the rest are counted into a summary per source, and
nothing is lost from the counts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from faultline.agent.error_budget import ErrorBudget
from faultline.agent.transport.broker import MosquittoProcess
from tests.collector import Collector, sensor_client
from tests.harness import AgentProcess, agent_process_env


def test_budget_publishes_a_burst_then_the_rate_then_summarises() -> None:
    budget = ErrorBudget(rate=2.0, burst=3, summary_interval_s=5.0)
    admitted = [budget.admit("pump", "malformed_json", 0.0, "t") for _ in range(10)]
    assert admitted == [True] * 3 + [False] * 7
    assert budget.admit("fan", "bad_fs", 0.0, "t2"), "another source has its own budget"
    assert budget.admit("pump", "bad_fs", 0.5, "t")  # one token back after 0.5 s at 2/s
    assert budget.due(4.9) == []
    [summary] = budget.due(5.0)
    assert (summary.source, summary.topic, summary.counts) == ("pump", "t", {"malformed_json": 7})
    assert "7 more rejections" in summary.reason()
    assert budget.due(100.0) == [], "a summary is handed out once"


def test_budget_forgets_idle_sources_beyond_its_bound() -> None:
    budget = ErrorBudget(rate=1.0, burst=1)
    for i in range(25_000):
        budget.admit(f"s{i}", "x", float(i), "t")
    assert len(budget._buckets) <= 10_000


@pytest.mark.slow
def test_a_flooding_sensor_is_summarised_and_others_still_heard(
    mosquitto: MosquittoProcess, test_library_root: Path, unique_prefix: str, tmp_path: Path
) -> None:
    prefix = unique_prefix
    env = agent_process_env(
        mosquitto.port,
        prefix,
        test_library_root,
        tmp_path / "state",
        FAULTLINE__LIMITS__ERROR_SUMMARY_S="1",
    )
    collector = Collector("127.0.0.1", mosquitto.port, [f"{prefix}/errors", f"{prefix}/status/+"])
    agent = AgentProcess(env, tmp_path / "agent.log").start()
    sensor = sensor_client(mosquitto.port)
    try:
        collector.wait_for(lambda t, b: b.get("state") == "online", timeout=120)
        flood = 300
        for i in range(flood):
            sensor.publish(f"{prefix}/sensors/broken/window", f"garbage {i}".encode(), qos=1)
        for i in range(5):  # distinct payloads: one payload's copies share one error id
            body = f'{{"n": {i}}}'.encode()
            sensor.publish(f"{prefix}/sensors/fine/window", body, qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            broken = [b for t, b in collector.messages if b.get("asset") == "broken"]
            one_by_one = sum(1 for b in broken if b["code"] == "malformed_json")
            summarised = sum(
                int(b["reason"].split(" more rejections")[0].replace(",", ""))
                for b in broken
                if b["code"] == "rejections_summarised"
            )
            if one_by_one + summarised >= flood:
                break
            time.sleep(0.2)
        fine = [b for t, b in collector.messages if b.get("asset") == "fine"]
    finally:
        sensor.loop_stop()
        collector.close()
        assert agent.stop(60) == 0, agent.output()
    assert one_by_one + summarised == flood, (one_by_one, summarised)
    assert 20 <= one_by_one < 100, one_by_one  # the burst, then about 5/s
    assert [b["code"] for b in fine] == ["missing_field"] * 5
    log = agent.output(2000)
    assert log.count("rejected message on") < 120, "the log is not flooded either"
