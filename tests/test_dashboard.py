"""The local web dashboard (issue 15, item 2): its spectra and bounds, and the real page
in a real headless Chromium fed by a running agent through a real Mosquitto."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faultline.agent.dashboard.spectra import spectra_of
from faultline.agent.dashboard.state import DashboardState, RawMeasurement
from faultline.encoders.geometry import bearing_preset
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.library import FaultLibrary
from tests.browser import chromium, console_errors, pixel_std
from tests.collector import Collector
from tests.harness import agent_settings, publish_windows, record_windows, start_agent, wait_until

OUTER_RACE_3HP = "133"  # 12 kHz drive end, 0.007 in outer race, 3 hp: not in the test library


def test_envelope_spectrum_shows_the_outer_race_line_at_its_marker(cwru_dir: Path) -> None:
    [window] = record_windows(cwru_dir, OUTER_RACE_3HP, "pump-7", 1)
    geometry = bearing_preset("6205")
    assert window.rpm is not None
    out = spectra_of(window, window.rpm, geometry, points=2048)
    bpfo = geometry.frequencies_hz(window.rpm).bpfo
    families = {(m["family"], m["k"]) for m in out["markers"]}
    for family in ("BPFO", "BPFI", "BSF", "FTF"):
        assert {(family, k) for k in range(1, 5)} <= families
    env = out["envelope"]
    values = np.asarray(env["values"])
    near = values[int((bpfo - 3) / env["df"]) : int((bpfo + 3) / env["df"]) + 1].max()
    assert near > 10 * np.median(values)  # the defect line stands out at the BPFO marker
    assert len(out["spectrum"]["values"]) <= 2048
    assert out["spectrum"]["df"] * len(out["spectrum"]["values"]) == pytest.approx(6000, rel=0.01)


def test_state_keeps_a_bounded_number_of_assets_and_alerts() -> None:
    state = DashboardState(assets=3, history=5)
    for i in range(20):
        state.alert(f"a{i}", {"asset": f"a{i}", "n": i})
        state.measurement(f"a{i}", RawMeasurement("window", b"x" * 100, float(i)))
    snap = state.snapshot()
    assert sorted(snap["assets"]) == ["a17", "a18", "a19"]
    assert [a["n"] for a in snap["alerts"]] == [19, 18, 17, 16, 15]
    assert state.latest_measurement("a0") is None
    assert state.latest_measurement("a19") is not None


def test_dashboard_is_off_by_default() -> None:
    from faultline.agent.settings import load_settings

    settings = load_settings(None, env={})
    assert not settings.dashboard.enabled
    assert settings.dashboard.host == "127.0.0.1"


@pytest.mark.slow
def test_page_shows_a_live_alert_and_draws_its_spectra(
    mosquitto_session: Any,
    cwru_dir: Path,
    test_library: FaultLibrary,
    encoder: SpectrumEncoder,
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    port = mosquitto_session.port
    settings = agent_settings(
        port,
        unique_prefix,
        FAULTLINE__DASHBOARD__ENABLED="true",
        FAULTLINE__DASHBOARD__PORT="0",
    )
    agent = start_agent(settings, test_library, encoder)
    collector = Collector("127.0.0.1", port, [f"{unique_prefix}/alerts/+"])
    driver = None
    try:
        dashboard = agent.dashboard
        assert dashboard is not None
        driver = chromium()
        driver.get(dashboard.url)
        # The page polls once a second; its first poll makes the dashboard take windows.
        wait_until(lambda: dashboard.observer.streaming, 15, "the page's first poll")
        windows = record_windows(cwru_dir, OUTER_RACE_3HP, "pump-7", 2, ts0=1.7e9)
        publish_windows(port, unique_prefix, windows)
        alerts = collector.wait_for(lambda t, _b: "/alerts/" in t, count=2)
        last_id = alerts[-1][1]["message_id"]
        row = f'#alerts tr[data-message-id="{last_id}"]'
        wait_until(lambda: driver.find_elements("css selector", row), 20, "the alert in the page")
        card = driver.find_element("css selector", '.card[data-asset="pump-7"]')
        assert alerts[-1][1]["label"] in card.text
        canvas = driver.find_element("css selector", "#envelope")
        wait_until(lambda: int(canvas.get_attribute("data-points") or 0) > 0, 20, "the spectra")
        assert int(canvas.get_attribute("data-markers")) >= 8  # BPFO/BPFI/BSF/FTF harmonics
        spectrum = driver.find_element("css selector", "#spectrum")
        assert int(spectrum.get_attribute("data-points")) > 1000
        assert "BPFO" in driver.find_element("css selector", "#legend").text
        counters = driver.find_element("css selector", "#counters").text
        assert "windows received" in counters
        shot = tmp_path / "dashboard.png"
        driver.save_screenshot(str(shot))
        png = shot.read_bytes()
        assert pixel_std(png) > 10, "the screenshot is blank"
        errors = console_errors(driver)
        assert not errors, errors
        with urllib.request.urlopen(dashboard.url + "api/state", timeout=5) as response:
            state = json.load(response)
        assert state["assets"]["pump-7"]["alert"]["message_id"] == last_id
        print(f"dashboard screenshot: {shot}")
    finally:
        if driver is not None:
            driver.quit()
        collector.close()
        agent.stop()


def test_only_the_first_process_of_a_gateway_serves_the_page() -> None:
    from faultline.agent.settings import load_settings
    from faultline.agent.supervisor import process_env

    settings = load_settings(None, env={"FAULTLINE__DASHBOARD__ENABLED": "true"})
    assert "FAULTLINE__DASHBOARD__ENABLED" not in process_env(settings, 0, "g")
    assert process_env(settings, 1, "g")["FAULTLINE__DASHBOARD__ENABLED"] == "false"
