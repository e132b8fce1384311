"""The real `faultline run` process: clean stop on SIGTERM/SIGINT, bad config exits 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from faultline.fault_library.library import FaultLibrary
from tests.collector import Collector
from tests.harness import agent_process_env, publish_windows, record_windows

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_publishes_offline_and_exits_zero(
    signum: signal.Signals,
    mosquitto_session: object,
    cwru_dir: Path,
    test_library: FaultLibrary,
    test_library_root: Path,
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    port = mosquitto_session.port  # type: ignore[attr-defined]
    env = agent_process_env(
        port,
        unique_prefix,
        test_library_root,
        tmp_path / "state",
        FAULTLINE__MQTT__CLIENT_ID=f"agent-{uuid.uuid4().hex[:6]}",
    )
    collector = Collector("127.0.0.1", port, [f"{unique_prefix}/#"])
    command = [sys.executable, "-m", "faultline.agent.cli", "run"]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        [(_t, status)] = collector.wait_for(
            lambda t, b: "/status/" in t and b.get("state") == "online", timeout=60
        )
        assert status["library"]["version"] == test_library.version
        windows = record_windows(cwru_dir, "133", "m1", 30, hop_s=0.25, ts0=1.7e9)
        publish_windows(port, unique_prefix, windows)
        # Signal while windows are in flight: what the agent took in must drain.
        collector.wait_for(lambda t, b: "/alerts/" in t, timeout=30)
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output
        counters = json.loads(output.split("agent stopped; counters ")[1].splitlines()[0])
        assert counters.get("undrained_at_stop", 0) == 0
        first_run_alerts = [b for t, b in collector.messages if "/alerts/" in t]
        assert len(first_run_alerts) == counters["received"] == counters["alerts"]
        statuses = [b for t, b in collector.messages if "/status/agent-" in t]
        assert statuses[-1]["state"] == "offline"
        assert statuses[-1]["reason"] == "clean stop"
        # Windows sent while the agent is down wait in its persistent broker session
        # (same client id, clean start off) and are answered after the restart.
        offline_windows = record_windows(cwru_dir, "133", "m1", 5, hop_s=0.25, ts0=1.8e9)
        publish_windows(port, unique_prefix, offline_windows)
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        alerts = collector.wait_for(
            lambda t, b: "/alerts/" in t and b["window_ts"] >= 1.8e9, count=5, timeout=60
        )
        assert sorted(b["window_ts"] for _t, b in alerts) == [w.ts for w in offline_windows]
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.close()


def test_run_with_bad_config_exits_2_naming_key_and_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        textwrap.dedent("""\
        mqtt:
          host: broker.local
          port: 99999
        """)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE")}
    proc = subprocess.run(
        [sys.executable, "-m", "faultline.agent.cli", "run", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "mqtt.port" in proc.stderr
    assert "line 3" in proc.stderr
    check = subprocess.run(
        [sys.executable, "-m", "faultline.agent.cli", "check-config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 2
    assert "mqtt.port" in check.stderr
