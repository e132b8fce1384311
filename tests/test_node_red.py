"""The Node-RED example flow (issue 15, item 4), loaded as operators import it into a real
Node-RED (npm `node-red` 4.1 and `@flowfuse/node-red-dashboard`, installed under .tools by
`make node-red`): a real agent's alert and report reach its table through MQTT v5."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.library import FaultLibrary
from tests.browser import chromium, console_errors, pixel_std
from tests.harness import agent_settings, publish_windows, record_windows, start_agent

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "docs" / "examples" / "node-red-flow.json"
RED_JS = ROOT / ".tools" / "node-red" / "node_modules" / "node-red" / "red.js"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _flow_for(broker_port: int, prefix: str) -> list[dict[str, Any]]:
    """The example as an operator adapts it: their broker, their topic prefix."""
    flow: list[dict[str, Any]] = json.loads(FLOW.read_text())
    for node in flow:
        if node["type"] == "mqtt-broker":
            node["port"] = str(broker_port)
        if node["type"] == "mqtt in":
            node["topic"] = node["topic"].replace("faultline/", f"{prefix}/", 1)
    return flow


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _wait(condition: Any, timeout: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def test_the_flow_in_node_red_receives_a_real_alert_and_report(
    mosquitto_session: Any,
    cwru_dir: Path,
    test_library: FaultLibrary,
    encoder: SpectrumEncoder,
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    if not RED_JS.exists():
        pytest.skip("Node-RED is not installed (make node-red)")
    broker = mosquitto_session.port
    user_dir = tmp_path / "node-red"
    user_dir.mkdir()
    (user_dir / "flows.json").write_text(json.dumps(_flow_for(broker, unique_prefix)))
    port = _free_port()
    log_path = tmp_path / "node-red.log"
    with log_path.open("wb") as log_file:
        red = subprocess.Popen(
            ["node", str(RED_JS), "--port", str(port), "--userDir", str(user_dir), "flows.json"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    agent = None
    driver = None
    try:
        # Connected means every node type of the flow was found and the flows started
        # (a missing type, such as the dashboard's, stops Node-RED before that).
        _wait(lambda: "Connected to broker" in log_path.read_text(), 60, "Node-RED", log_path)
        assert "missing" not in log_path.read_text().lower()
        base = f"http://127.0.0.1:{port}"
        assert _get_json(f"{base}/faultline/latest") == []

        agent = start_agent(agent_settings(broker, unique_prefix), test_library, encoder)
        windows = record_windows(cwru_dir, "133", "pump-7", 2, ts0=1.7e9)
        publish_windows(broker, unique_prefix, windows)

        def rows() -> list[dict[str, Any]]:
            got: list[dict[str, Any]] = _get_json(f"{base}/faultline/latest")
            kinds = {r["kind"] for r in got}
            return got if len(got) >= 3 and kinds == {"alert", "report"} else []

        got = _wait(rows, 60, "an alert and a report in the flow", log_path)
        alerts = [r for r in got if r["kind"] == "alert"]
        assert {r["asset"] for r in got} == {"pump-7"}
        assert all(r["verdict"] == "outer_race" for r in got)
        assert all(len(r["message_id"]) > 10 and r["cites"] for r in got)
        assert all(isinstance(r["velocity_mm_s"], float) for r in alerts)

        # The table and the chart, as the operator sees them in Dashboard 2.0.
        driver = chromium(1280, 900)
        driver.get(f"{base}/dashboard/faultline")
        _wait(lambda: "pump-7" in driver.find_element("tag name", "body").text, 30, "the table")
        _wait(lambda: driver.find_elements("css selector", "canvas"), 30, "the chart")
        shot = tmp_path / "node-red-dashboard.png"
        driver.save_screenshot(str(shot))
        assert pixel_std(shot.read_bytes()) > 10
        print(f"node-red dashboard screenshot: {shot}; console: {console_errors(driver)}")
    finally:
        if driver is not None:
            driver.quit()
        if agent is not None:
            agent.stop()
        red.terminate()
        red.wait(20)
