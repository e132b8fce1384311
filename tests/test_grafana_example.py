"""The Grafana dashboard example (issue 15, item 4), checked four ways: against Grafana's
own dashboard schema (the TypeScript types npm @grafana/schema generates from its CUE,
compiled with tsc: no Grafana server can be had here, neither Debian nor PyPI carries one);
its structure as Grafana reads it; every metric its queries name is one a running agent
serves (scraped); and every query is parsed and evaluated by a real Prometheus (Debian's)
scraping that agent."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.library import FaultLibrary
from tests.collector import Collector, sensor_client
from tests.harness import agent_settings, publish_windows, record_windows, start_agent

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "docs" / "examples" / "grafana-dashboard.json"
GRAFANA_TOOLS = REPO / ".tools" / "grafana" / "node_modules"
# Export-for-sharing metadata Grafana reads at import and strips: not part of the model.
IMPORT_ENVELOPE = ("__inputs", "__requires", "__elements")
# JSON carries an enum's value where the types declare a (nominal) TypeScript enum.
SCHEMA_CHECK = """import type {{ Dashboard }} from "{types}";
type Json<T> = T extends string ? `${{T}}` : T extends (infer U)[] ? Json<U>[]
  : T extends object ? {{ [K in keyof T]: Json<T[K]> }} : T;
export const dashboard: Json<Dashboard> = {body};
"""


def _schema_errors(body: dict[str, Any], workdir: Path) -> str:
    """tsc's complaints about ``body`` typed as Grafana's ``Dashboard`` ("" when none)."""
    types = GRAFANA_TOOLS / "@grafana/schema/dist/types/raw/dashboard/x/types.gen"
    source = workdir / "dashboard.ts"
    source.write_text(SCHEMA_CHECK.format(types=types, body=json.dumps(body, indent=1)))
    done = subprocess.run(
        [
            str(GRAFANA_TOOLS / ".bin" / "tsc"),
            "--noEmit",
            "--strict",
            "--target",
            "es2020",
            "--moduleResolution",
            "node",
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return "" if done.returncode == 0 else done.stdout + done.stderr


def test_the_dashboard_conforms_to_grafanas_own_schema(tmp_path: Path) -> None:
    body = json.loads(DASHBOARD.read_text())
    for key in IMPORT_ENVELOPE:
        body.pop(key, None)
    assert _schema_errors(body, tmp_path) == ""
    # The check can fail: a wrong type and an unknown field are both caught.
    body["panels"][0]["gridPos"]["w"] = "wide"
    body["templating"]["list"][0]["definition"] = "x"
    errors = _schema_errors(body, tmp_path)
    assert "not assignable to type 'number'" in errors
    assert "'\"definition\"' does not exist" in errors


SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "info": ("_info",),
    "gauge": ("",),
}
# Series that exist only after an event this test does not cause (an outbox message lost,
# a question asked): queries of these alone parse and evaluate, to nothing yet.
MAY_BE_EMPTY = {
    "faultline_outbox_evicted_total",
    "faultline_outbox_expired_total",
    "faultline_outbox_rejected_total",
    "faultline_questions_total",
}


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def test_dashboard_is_what_grafana_imports() -> None:
    board = _dashboard()
    assert board["uid"]
    assert board["title"]
    assert board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["w"] > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0, panel["title"]
        assert grid["y"] >= 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "table"}
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, (panel["title"], used)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _served_names(metrics_port: int) -> set[str]:
    text = _get(f"http://127.0.0.1:{metrics_port}/metrics").decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def _prometheus(metrics_port: int, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: faultline\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    return proc, port


def _query(port: int, expr: str) -> dict[str, Any]:
    # What Grafana sends: its variables expanded (all agents, a 30 s rate window).
    expr = expr.replace("$__rate_interval", "30s").replace("$instance", ".*")
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        return dict(json.loads(_get(url)))
    except urllib.error.HTTPError as exc:  # 400: the query does not parse
        return dict(json.loads(exc.read()))


@pytest.mark.slow
def test_every_query_names_served_metrics_and_evaluates_in_prometheus(
    mosquitto_session: Any,
    cwru_dir: Path,
    test_library: FaultLibrary,
    encoder: SpectrumEncoder,
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    port = mosquitto_session.port
    settings = agent_settings(
        port, unique_prefix, FAULTLINE__METRICS__ENABLED="true", FAULTLINE__METRICS__PORT="0"
    )
    agent = start_agent(settings, test_library, encoder)
    collector = Collector("127.0.0.1", port, [f"{unique_prefix}/reports/+"])
    prometheus = None
    try:
        assert agent.metrics is not None
        first = record_windows(cwru_dir, "133", "pump-7", 3, ts0=1.7e9)
        publish_windows(port, unique_prefix, first)
        sensor = sensor_client(port)
        sensor.publish(agent.topics.window("pump-7"), b"garbage", qos=1).wait_for_publish(5)
        sensor.loop_stop()
        collector.wait_for(lambda _t, _b: True)  # a report: its counters exist
        served = _served_names(agent.metrics.port)
        board = _dashboard()
        for title, expr in _queries(board):
            named = set(re.findall(r"\bfaultline_[a-z0-9_]+", expr))
            assert named, (title, expr)
            assert named <= served, (title, named - served)

        if shutil.which("prometheus") is None:
            pytest.skip("no prometheus binary (make prometheus) to evaluate the queries")
        prometheus, prom_port = _prometheus(agent.metrics.port, tmp_path)
        # A few scrapes after the traffic above, so rates and quantiles have two points.
        time.sleep(1)
        more = record_windows(cwru_dir, "133", "pump-7", 2, ts0=1.8e9)
        publish_windows(port, unique_prefix, more)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            up = _query(prom_port, "count_over_time(up[1m])") if prometheus.poll() is None else {}
            result = up["data"]["result"] if up.get("status") == "success" else []
            if result and float(result[0]["value"][1]) >= 6:
                break
            time.sleep(0.5)
        else:
            raise AssertionError((tmp_path / "prometheus.log").read_text()[-2000:])
        empty = set()
        for title, expr in _queries(board):
            answer = _query(prom_port, expr)
            assert answer["status"] == "success", (title, expr, answer.get("error"))
            if not answer["data"]["result"]:
                empty.update(re.findall(r"\bfaultline_[a-z0-9_]+", expr))
        assert empty <= MAY_BE_EMPTY, empty
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(20)
        collector.close()
        agent.stop()
