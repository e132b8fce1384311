"""`faultline health` and `faultline run --on-config-error wait`, with real processes.

The balena image runs `faultline run --on-config-error wait` and `faultline health` as
its HEALTHCHECK. What must hold: a bad device variable is named in the log, the process
stays up (no crash loop), `health` says "config error" naming the key and exits 1, and
SIGTERM stops it at once with 0; a serving agent is healthy, turns unhealthy when its
broker has been gone for health.offline_after_s and healthy again when it is back; an
agent that stopped rewriting its file is unhealthy.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from faultline.agent.health import Heartbeat, judge, write_health
from faultline.agent.settings import load_settings
from faultline.agent.transport.broker import MosquittoProcess
from tests.harness import AgentProcess, agent_process_env, run_cli, wait_until


def test_bad_device_variable_waits_with_config_error(
    tmp_path: Path, test_library_root: Path
) -> None:
    env = agent_process_env(
        1883,  # never reached: the configuration is refused first
        "t/config-error",
        test_library_root,
        tmp_path / "state",
        FAULTLINE__MQTT__PORT="99999",
        FAULTLINE_ON_CONFIG_ERROR="wait",  # as the balena image sets it
    )
    agent = AgentProcess(env, tmp_path / "agent.log").start()
    try:
        wait_until(lambda: "FAULTLINE__MQTT__PORT" in agent.output(), 60, "the error in the log")
        log = agent.output()
        assert "mqtt.port" in log, log
        assert "99999" in log, log
        time.sleep(2.0)
        assert agent.proc is not None
        assert agent.proc.poll() is None, "it must not exit"
        checked = run_cli("health", env=env, timeout=60)
        assert checked.returncode == 1, checked
        assert checked.stdout.startswith("config error: mqtt.port"), checked.stdout
        assert "FAULTLINE__MQTT__PORT" in checked.stdout
        started = time.monotonic()
        assert agent.stop(30) == 0, agent.output()
        assert time.monotonic() - started < 10, "SIGTERM must end the wait at once"
    finally:
        agent.kill9()


def test_bad_variable_without_wait_still_exits_2(tmp_path: Path, test_library_root: Path) -> None:
    env = agent_process_env(1883, "t/x", test_library_root, tmp_path, FAULTLINE__MQTT__PORT="99999")
    agent = AgentProcess(env, tmp_path / "agent.log").start()
    assert agent.proc is not None
    assert agent.proc.wait(60) == 2
    agent.stop()
    assert "mqtt.port" in agent.output()


@pytest.mark.slow
def test_health_follows_the_running_agent(
    mosquitto: MosquittoProcess,
    test_library_root: Path,
    test_library: object,
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    env = agent_process_env(
        mosquitto.port,
        unique_prefix,
        test_library_root,
        tmp_path / "state",
        FAULTLINE__HEALTH__OFFLINE_AFTER_S="2",
    )
    health_file = tmp_path / "state" / "health.json"

    def health() -> tuple[int, str]:
        done = run_cli("health", env=env, timeout=60)
        return done.returncode, done.stdout.strip()

    agent = AgentProcess(env, tmp_path / "agent.log").start()
    try:
        wait_until(lambda: health()[0] == 0 and "connected" in health()[1], 120, "healthy")
        code, line = health()
        assert code == 0, line
        assert line.startswith("ok: connected to 127.0.0.1"), line
        assert "queue 0" in line

        mosquitto.stop()
        wait_until(lambda: health()[0] == 1, 30, "unhealthy without a broker")
        assert "unreachable" in health()[1]
        mosquitto.start()
        wait_until(lambda: health()[0] == 0, 30, "healthy again")

        assert agent.stop(60) == 0, agent.output()
        # Nobody rewrites the file any more: stale means hung or gone.
        time.sleep(1.5)
        stale = run_cli("health", "--max-age", "1", env=env, timeout=60)
        assert stale.returncode == 1, stale
        assert "not updated" in stale.stdout, stale
        assert health_file.is_file()
    finally:
        agent.kill9()


def _fake_agent(backlog: int, done: int, connected: bool = True) -> Any:
    settings = load_settings(None, env={"FAULTLINE__HEALTH__STUCK_AFTER_S": "5"})
    counts = {"alerts": done, "rejected": 0}
    return SimpleNamespace(
        settings=settings,
        counters=SimpleNamespace(get=lambda name: counts.get(name, 0)),
        transport=SimpleNamespace(connected=connected),
        pipeline=SimpleNamespace(backlog=backlog),
        outbox=SimpleNamespace(stats=lambda: {"mode": "disk", "depth": 0}),
        library=SimpleNamespace(current=SimpleNamespace(version="v1")),
        client_id="gw",
    )


def test_a_queue_that_does_not_move_is_unhealthy(tmp_path: Path) -> None:
    now = [1000.0]
    agent = _fake_agent(backlog=7, done=3)
    beat = Heartbeat(agent, clock=lambda: now[0])
    assert beat.fields()["state"] == "ok"
    now[0] += 6
    stuck = beat.fields()
    assert stuck["state"] == "unhealthy", stuck
    assert stuck["reason"] == "pipeline stuck: 7 windows queued, none finished for 6 s"
    agent.counters = SimpleNamespace(get=lambda name: 4 if name == "alerts" else 0)
    assert beat.fields()["state"] == "ok"  # one more window finished: moving again


def test_a_supervisor_is_as_healthy_as_its_sickest_process(tmp_path: Path) -> None:
    p0, p1, top = tmp_path / "p0.json", tmp_path / "p1.json", tmp_path / "health.json"
    write_health(p0, {"state": "ok", "reason": "ok: p0"})
    write_health(p1, {"state": "unhealthy", "reason": "pipeline stuck: 3 windows queued"})
    write_health(top, {"state": "supervising", "members": [str(p0), str(p1)]})
    verdict = judge(top)
    assert not verdict.healthy
    assert verdict.reason == "1 of 2 processes: pipeline stuck: 3 windows queued"
    write_health(p1, {"state": "ok", "reason": "ok: p1"})
    assert judge(top).healthy
    assert not judge(tmp_path / "missing.json").healthy
