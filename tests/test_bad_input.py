"""Every kind of bad sensor message is rejected with a precise, published reason, and the
agent keeps serving the next good window (issue 3, item 9)."""

from __future__ import annotations

import dataclasses
import json
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faultline.agent.transport.payloads import encode_window_binary, encode_window_json
from faultline.encoders.signals import Window
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.catalog import read_manifest
from faultline.fault_library.library import FaultLibrary
from faultline.fault_library.recordings import iter_windows, read_recording
from tests.collector import Collector, sensor_client
from tests.harness import agent_settings, start_agent

pytestmark = pytest.mark.slow

MAX_BYTES = 300_000


def _good_window(cwru_dir: Path) -> Window:
    entry = next(e for e in read_manifest(cwru_dir) if e.record_id == "108")
    recording = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
    return next(iter_windows(recording, "bad-input", window_s=1.0, ts0=time.time()))


def _bad_payloads(good: Window) -> list[tuple[str, bytes, str]]:
    """(expected code, payload, fragment the reason must contain)."""
    samples = good.samples.astype(float).tolist()
    base: dict[str, Any] = {"ts": good.ts + 1.0, "fs": good.fs, "samples": samples}

    def js(**changes: Any) -> bytes:
        body = {**base, **changes}
        return json.dumps({k: v for k, v in body.items() if v is not None}).encode()

    with_nan = list(samples)
    with_nan[1203] = float("nan")
    with_inf = list(samples)
    with_inf[7] = float("inf")
    binary = encode_window_binary(good)
    too_long = dataclasses.replace(good, samples=np.resize(good.samples, 30_000))
    oversized = b'{"ts": 1, "fs": 12000, "samples": [' + b"0.0," * (MAX_BYTES // 4) + b"0.0]}"
    return [
        ("malformed_json", b'{"ts": 1, "fs": 12000, "samples": [0.1, 0.2', "JSON"),
        # Python's int-string limit (4,300 digits): was an uncaught ValueError, dropped with
        # only a log line (issue 14).
        (
            "malformed_json",
            b'{"ts": 1, "fs": 12000, "samples": [' + b"1" * 5000 + b", 0.5]}",
            "4300 digits",
        ),
        ("wrong_type", js(fs="12000"), "fs"),
        ("wrong_type", js(samples="0.1 0.2 0.3"), "samples"),
        ("non_finite", js(samples=with_nan), "1203"),
        ("non_finite", js(samples=with_inf), "7"),
        ("too_few_samples", js(samples=samples[:100]), "100"),
        ("too_many_samples", encode_window_binary(too_long), "30,000"),
        ("missing_field", json.dumps({"ts": 1.0, "samples": samples}).encode(), "fs"),
        ("bad_fs", js(fs=5.0), "fs"),
        ("bad_fs", js(fs=1e9), "fs"),
        ("oversized", oversized, f"{MAX_BYTES:,}"),
        ("binary_length", binary[:-1], "bytes"),
        ("binary_header", binary[:10], "header"),
        ("not_an_object", b"[1, 2, 3]", "object"),
    ]


def test_each_bad_payload_is_rejected_published_counted_and_agent_keeps_serving(
    mosquitto_session: object,
    cwru_dir: Path,
    test_library: FaultLibrary,
    encoder: SpectrumEncoder,
    unique_prefix: str,
) -> None:
    port = mosquitto_session.port  # type: ignore[attr-defined]
    settings = agent_settings(
        port,
        unique_prefix,
        FAULTLINE__LIMITS__MAX_PAYLOAD_BYTES=str(MAX_BYTES),
        FAULTLINE__LIMITS__MAX_SAMPLES="24000",
    )
    agent = start_agent(settings, test_library, encoder)
    collector = Collector("127.0.0.1", port, [f"{unique_prefix}/#"])
    sensor = sensor_client(port)
    good = _good_window(cwru_dir)
    cases = _bad_payloads(good)
    try:
        for i, (code, payload, fragment) in enumerate(cases):
            asset = f"bad-{i}"
            topic = agent.topics.window(asset)
            sensor.publish(topic, payload, qos=1).wait_for_publish(5)
            [(_t, error)] = collector.wait_for(
                lambda t, b, a=asset: t.endswith("/errors") and b.get("asset") == a, timeout=15
            )
            assert error["schema"] == "faultline.error/1"
            assert error["code"] == code, (code, error)
            assert fragment in error["reason"], (fragment, error["reason"])
            assert error["topic"] == topic
            assert error["ts"] > 0
            # ... and the very next good window on the same asset still gets its alert.
            sensor.publish(topic, encode_window_json(good), qos=1).wait_for_publish(5)
            collector.wait_for(
                lambda t, b, a=asset: "/alerts/" in t and b.get("asset") == a, timeout=15
            )
        counters = agent.counters.snapshot()
    finally:
        sensor.loop_stop()
        collector.close()
        agent.stop()
    assert counters["rejected"] == len(cases)
    for code in {c for c, _p, _f in cases}:
        assert counters[f"rejected.{code}"] == sum(1 for c, _p, _f in cases if c == code)
    assert counters["alerts"] == len(cases)


def test_spectrum_of_wrong_length_is_rejected(
    mosquitto_session: object,
    test_library: FaultLibrary,
    encoder: SpectrumEncoder,
    unique_prefix: str,
) -> None:
    port = mosquitto_session.port  # type: ignore[attr-defined]
    agent = start_agent(agent_settings(port, unique_prefix), test_library, encoder)
    collector = Collector("127.0.0.1", port, [f"{unique_prefix}/errors"])
    sensor = sensor_client(port)
    try:
        body = {"ts": 1.7e9, "fs": 12000.0, "n_fft": 4096, "magnitude": np.ones(100).tolist()}
        sensor.publish(agent.topics.spectrum("s1"), json.dumps(body), qos=1).wait_for_publish(5)
        [(_t, error)] = collector.wait_for(lambda t, b: True, timeout=15)
    finally:
        sensor.loop_stop()
        collector.close()
        agent.stop()
    assert error["code"] == "bad_spectrum_length"
    assert "2,049" in error["reason"]


def test_binary_header_layout_is_what_the_docs_say() -> None:
    window = Window(asset="a", ts=1.5, fs=12000.0, samples=np.arange(4, dtype=np.float32), rpm=1797)
    payload = encode_window_binary(window)
    assert payload[:4] == b"FLW1"
    (header_len,) = struct.unpack_from("<H", payload, 4)
    assert len(payload) == header_len + 4 * 4
    assert np.array_equal(np.frombuffer(payload[header_len:], "<f4"), window.samples)


def test_a_command_of_deeply_nested_json_is_answered_not_dropped(
    mosquitto_session: object,
    test_library: FaultLibrary,
    encoder: SpectrumEncoder,
    unique_prefix: str,
) -> None:
    """'[' x 100,000 on the command topic raised RecursionError inside the handler and was
    dropped with only a log line (issue 14); now it is an unknown command, published."""
    port = mosquitto_session.port  # type: ignore[attr-defined]
    agent = start_agent(agent_settings(port, unique_prefix), test_library, encoder)
    collector = Collector("127.0.0.1", port, [f"{unique_prefix}/errors"])
    sensor = sensor_client(port)
    try:
        for payload in (b"[" * 1000, b"[" * 100_000):
            sensor.publish(agent.topics.commands[1], payload, qos=1).wait_for_publish(5)
        errors = collector.wait_for(lambda t, b: b.get("code") == "unknown_command", count=2)
    finally:
        sensor.loop_stop()
        collector.close()
        agent.stop()
    assert len(errors) == 2
    assert agent.transport.stats["handler_errors"] == 0


def test_a_huge_asset_level_is_quoted_short_in_the_error(
    mosquitto_session: object,
    test_library: FaultLibrary,
    encoder: SpectrumEncoder,
    unique_prefix: str,
) -> None:
    """A client chooses the topic (up to 65,535 bytes): the error repeats a short, quoted
    prefix of it and of the asset level, not the whole (issue 14, echo nothing large)."""
    port = mosquitto_session.port  # type: ignore[attr-defined]
    agent = start_agent(agent_settings(port, unique_prefix), test_library, encoder)
    collector = Collector("127.0.0.1", port, [f"{unique_prefix}/errors"])
    sensor = sensor_client(port)
    try:
        asset = "a" * 20_000
        sensor.publish(agent.topics.window(asset), b"not json", qos=1).wait_for_publish(5)
        [(_t, error)] = collector.wait_for(lambda t, b: b.get("code") == "malformed_json")
    finally:
        sensor.loop_stop()
        collector.close()
        agent.stop()
    assert len(json.dumps(error)) < 2_000
    assert "20,000 characters" in error["asset"]
