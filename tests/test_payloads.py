"""Payload formats: every rejection code, round trips, and the binary layout as documented.

Pure tests: bytes in, objects or PayloadError out; no broker involved.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import time
import uuid
from typing import Any

import numpy as np
import pytest

from faultline.agent.transport import binary_format
from faultline.agent.transport.payloads import (
    AlertRecord,
    ErrorRecord,
    PayloadError,
    PayloadLimits,
    alert_message_id,
    answered_key,
    decode_spectrum,
    decode_window,
    encode_alert,
    encode_error,
    encode_spectrum_json,
    encode_window_binary,
    encode_window_json,
    new_message_id,
)
from faultline.encoders.geometry import bearing_preset
from faultline.encoders.signals import SpectrumFrame, Window

LIMITS = PayloadLimits(
    max_payload_bytes=2_097_152,
    min_samples=256,
    max_samples=65_536,
    min_fs=100.0,
    max_fs=100_000.0,
    min_rpm=10.0,
    max_rpm=30_000.0,
    max_spectrum_bins=32_769,
)
TS = 1_718_000_000.25
N = 2048


def _samples(n: int = N, seed: int = 0) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.random.default_rng(seed).normal(0.0, 0.3, n).astype(np.float32)


def _window_json(**overrides: Any) -> bytes:
    body: dict[str, Any] = {"ts": TS, "fs": 12000, "rpm": 1797.0, "samples": [0.1] * N}
    body.update(overrides)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def _with_sample(index: int, token: str, n: int = N) -> bytes:
    """A JSON window whose sample ``index`` is the raw JSON text ``token``."""
    values = ["0.5"] * n
    values[index] = token
    return f'{{"ts": {TS}, "fs": 12000, "samples": [{",".join(values)}]}}'.encode()


def _spectrum_json(**overrides: Any) -> bytes:
    body: dict[str, Any] = {"ts": TS, "fs": 12000, "n_fft": 1024, "magnitude": [0.01] * 513}
    body.update(overrides)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def _binary(n: int = N, *, rpm: float | None = 1797.0) -> bytes:
    return encode_window_binary(Window("a", TS, 12000.0, _samples(n), rpm=rpm))


def _binary_with_header(header_len: int = 28, flags: int = 0, n: int = N) -> bytes:
    """Built straight from the documented layout, independent of pack_window."""
    head = struct.pack("<4sHHdffI", b"FLW1", header_len, flags, TS, 12000.0, math.nan, n)
    return head + b"\x00" * (header_len - 28) + _samples(n).astype("<f4").tobytes()


_GOOD_BINARY = _binary()

# (code, decoder, payload, fragment of the message)
CASES: list[tuple[str, str, bytes, str]] = [
    ("oversized", "w", b"{" * 3 * 1024 * 1024, "payload is 3,145,728 bytes, limit is 2,097,152"),
    ("oversized", "s", b" " * 2_097_153, "payload is 2,097,153 bytes"),
    ("malformed_json", "w", b'{"ts": 1718000000, "fs":', "invalid JSON at line 1 column 25"),
    ("malformed_json", "w", b"", "payload is empty"),
    ("malformed_json", "w", b'{"ts": "\xff"}', "not UTF-8"),
    ("malformed_json", "w", b"[" * 200_000, "nested too deeply"),
    ("malformed_json", "s", b"{'ts': 1}", "invalid JSON"),
    ("not_an_object", "w", b"[1, 2, 3]", "must be a JSON object, got array"),
    ("not_an_object", "s", b'"hello"', "got string"),
    ("missing_field", "w", _window_json(fs=...), "missing required field 'fs'"),
    ("missing_field", "w", _window_json(ts=...), "missing required field 'ts'"),
    ("missing_field", "w", _window_json(samples=...), "missing required field 'samples'"),
    ("missing_field", "s", _spectrum_json(n_fft=...), "missing required field 'n_fft'"),
    ("missing_field", "s", _spectrum_json(magnitude=...), "missing required field 'magnitude'"),
    ("wrong_type", "w", _window_json(fs="12000"), "field 'fs' must be a number, got string"),
    ("wrong_type", "w", _window_json(fs=True), "field 'fs' must be a number, got boolean"),
    ("wrong_type", "w", _window_json(ts=None), "field 'ts' must be a number, got null"),
    ("wrong_type", "w", _window_json(rpm=[1797]), "field 'rpm' must be a number, got array"),
    ("wrong_type", "w", _window_json(samples={"x": 1}), "'samples' must be an array of numbers"),
    ("wrong_type", "w", _with_sample(5, '"0.5"'), "samples[5] must be a number, got string"),
    ("wrong_type", "w", _with_sample(7, "true"), "samples[7] must be a number, got boolean"),
    ("wrong_type", "w", _with_sample(9, "null"), "samples[9] must be a number, got null"),
    ("wrong_type", "w", _with_sample(3, "[1, 2]"), "samples[3] must be a number, got array"),
    ("wrong_type", "w", _window_json(bearing=6205), "field 'bearing' must be a string"),
    ("wrong_type", "s", _spectrum_json(n_fft=1024.0), "'n_fft' must be an integer, got number"),
    ("non_finite", "w", _with_sample(1203, "NaN"), "samples[1203] is NaN"),
    ("non_finite", "w", _with_sample(17, "Infinity"), "samples[17] is Infinity"),
    ("non_finite", "w", _with_sample(18, "-Infinity"), "samples[18] is -Infinity"),
    ("non_finite", "w", _with_sample(19, "1e400"), "samples[19] is Infinity"),
    ("non_finite", "w", _with_sample(20, "1" + "0" * 400), "samples[20] is Infinity"),
    ("non_finite", "w", _with_sample(22, "-1" + "0" * 400), "samples[22] is -Infinity"),
    ("non_finite", "w", _with_sample(21, "-4e38"), "samples[21] = -4e+38 is outside the float32"),
    (
        "non_finite",
        "s",
        _spectrum_json(magnitude=[0.0] * 512 + [math.nan]),
        "magnitude[512] is NaN",
    ),
    (
        "non_finite",
        "w",
        _GOOD_BINARY[:100] + struct.pack("<f", math.inf) + _GOOD_BINARY[104:],
        "samples[18] is Infinity",  # (100 - 28) / 4
    ),
    ("too_few_samples", "w", _window_json(samples=[0.1] * 10), "10 samples, minimum is 256"),
    ("too_few_samples", "w", _window_json(samples=[]), "0 samples, minimum is 256"),
    ("too_few_samples", "w", _binary(100), "100 samples, minimum is 256"),
    (
        "too_many_samples",
        "w",
        _window_json(samples=[0] * 70_000),
        "comma-separated values; a message carries at most 65,536 samples",
    ),
    ("too_many_samples", "w", _binary(70_000), "70,000 samples, maximum is 65,536"),
    ("bad_fs", "w", _window_json(fs=0), "fs 0 Hz is outside [100, 100000] Hz"),
    ("bad_fs", "w", _window_json(fs=1e6), "fs 1e+06 Hz is outside"),
    ("bad_fs", "w", b'{"ts": 1718000000, "fs": NaN, "samples": []}', "fs nan Hz is outside"),
    ("bad_fs", "s", _spectrum_json(fs=-12000), "fs -12000 Hz is outside"),
    ("bad_rpm", "w", _window_json(rpm=-5), "rpm -5 is outside [10, 30000]"),
    ("bad_rpm", "w", _window_json(rpm=1e9), "rpm 1e+09 is outside"),
    ("bad_rpm", "s", _spectrum_json(rpm=0), "rpm 0 is outside"),
    ("bad_timestamp", "w", _window_json(ts=0), "ts 0.0 is not unix seconds"),
    ("bad_timestamp", "w", _window_json(ts=-1.5), "is not unix seconds between 1970 and 2200"),
    ("bad_timestamp", "w", _window_json(ts=1_718_000_000_250), "(milliseconds? send seconds)"),
    ("bad_timestamp", "w", b'{"ts": Infinity, "fs": 1000, "samples": []}', "ts inf is not"),
    ("bad_timestamp", "s", _spectrum_json(ts=8e9), "ts 8000000000.0 is not"),
    (
        "binary_length",
        "w",
        _GOOD_BINARY[:-1],
        f"binary payload says {N} samples ({4 * N} bytes) but carries {4 * N - 1} bytes",
    ),
    ("binary_length", "w", _GOOD_BINARY + b"\x00", f"but carries {4 * N + 1} bytes"),
    ("binary_header", "w", _GOOD_BINARY[:20], "shorter than its 28-byte header (truncated)"),
    ("binary_header", "w", b"FLW1\x1c", "5 bytes, too short for the 28-byte FLW1 header"),
    ("binary_header", "w", _binary_with_header(header_len=12), "header_len is 12"),
    ("binary_header", "w", _binary_with_header(flags=0x0001), "critical bits 0x01"),
    ("bad_spectrum_length", "s", _spectrum_json(magnitude=[0.1] * 512), "needs n_fft//2+1 = 513"),
    (
        "bad_spectrum_length",
        "s",
        _spectrum_json(n_fft=1),
        "n_fft=1 gives 1 bins; allowed is 2 to 32,769",
    ),
    (
        "bad_spectrum_length",
        "s",
        _spectrum_json(n_fft=131_072),
        "65,537 bins; allowed is 2 to 32,769",
    ),
    ("unknown_bearing", "w", _window_json(bearing="6310"), "unknown bearing preset '6310'"),
    ("unknown_bearing", "s", _spectrum_json(bearing="nope"), "known presets: 6203, 6205"),
]


@pytest.mark.parametrize(
    ("code", "decoder", "payload", "fragment"),
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_rejection_has_code_and_precise_message(
    code: str, decoder: str, payload: bytes, fragment: str
) -> None:
    decode = decode_window if decoder == "w" else decode_spectrum
    with pytest.raises(PayloadError) as info:
        decode("pump-1", payload, LIMITS)
    assert info.value.code == code
    assert fragment in info.value.message
    assert isinstance(info.value, ValueError)


def test_every_documented_code_is_exercised() -> None:
    documented = {
        "oversized", "malformed_json", "not_an_object", "missing_field", "wrong_type",
        "non_finite", "too_few_samples", "too_many_samples", "bad_fs", "bad_rpm",
        "bad_timestamp", "binary_length", "binary_header", "bad_spectrum_length",
        "unknown_bearing",
    }  # fmt: skip
    assert {c[0] for c in CASES} == documented


def test_milliseconds_hint_only_when_plausible() -> None:
    with pytest.raises(PayloadError) as info:
        decode_window("a", _window_json(ts=8e9), LIMITS)  # 2223: neither seconds nor ms
    assert info.value.message.endswith("between 1970 and 2200")


def test_json_window_round_trip_is_exact() -> None:
    samples = _samples()
    window = Window("pump-1", TS, 12000.0, samples, rpm=1797.5, geometry=bearing_preset("6205"))
    payload = encode_window_json(window)
    json.loads(payload, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    decoded = decode_window("pump-1", payload, LIMITS)
    assert decoded.samples.dtype == np.float32
    assert np.array_equal(decoded.samples, samples)
    assert (decoded.asset, decoded.ts, decoded.fs, decoded.rpm) == ("pump-1", TS, 12000.0, 1797.5)
    assert decoded.geometry == bearing_preset("6205")
    assert decoded.meta == {"encoding": "json"}


def test_json_window_optional_fields_absent_or_null() -> None:
    decoded = decode_window("a", _window_json(rpm=None, samples=list(range(300))), LIMITS)
    assert decoded.rpm is None
    assert decoded.geometry is None
    assert decoded.samples[299] == 299.0  # JSON integers are numbers too
    assert decode_window("a", _window_json(rpm=..., extra={"x": 1}), LIMITS).rpm is None


def test_encode_window_json_refuses_nan() -> None:
    samples = _samples()
    samples[3] = np.nan
    with pytest.raises(ValueError, match="NaN or Infinity"):
        encode_window_json(Window("a", TS, 12000.0, samples))


def test_binary_window_round_trip_is_exact() -> None:
    samples = _samples(12_000)
    for rpm in (1797.0, None):
        payload = encode_window_binary(Window("a", TS, 12000.0, samples, rpm=rpm))
        assert len(payload) == 28 + 4 * 12_000
        decoded = decode_window("a", payload, LIMITS)
        assert np.array_equal(decoded.samples, samples)
        assert decoded.samples.flags.writeable  # a copy, not a view of the bytes
        assert (decoded.ts, decoded.fs, decoded.rpm) == (TS, 12000.0, rpm)
        assert decoded.meta == {"encoding": "binary"}


def test_binary_layout_matches_documented_offsets() -> None:
    payload = _binary(300, rpm=None)
    assert payload[:4] == b"FLW1"
    assert struct.unpack_from("<HH", payload, 4) == (28, 0)
    assert struct.unpack_from("<d", payload, 8)[0] == TS
    assert struct.unpack_from("<f", payload, 16)[0] == 12000.0
    assert math.isnan(struct.unpack_from("<f", payload, 20)[0])
    assert struct.unpack_from("<I", payload, 24)[0] == 300
    assert struct.unpack_from("<f", payload, 28)[0] == _samples(300)[0]


def test_binary_reader_skips_fields_a_newer_writer_appended() -> None:
    payload = _binary_with_header(header_len=36, flags=0x0100)  # advisory flag: ignored
    decoded = decode_window("a", payload, LIMITS)
    assert np.array_equal(decoded.samples, _samples())
    assert decoded.rpm is None


def test_unpack_rejects_header_len_beyond_payload() -> None:
    with pytest.raises(binary_format.BinaryLayoutError) as info:
        binary_format.unpack_window(_binary_with_header(header_len=40, n=0)[:32])
    assert info.value.code == "binary_header"


def test_spectrum_round_trip() -> None:
    magnitude = np.abs(_samples(2049))
    frame = SpectrumFrame("fan-2", TS, 25600.0, 4096, magnitude, rpm=None)
    decoded = decode_spectrum("fan-2", encode_spectrum_json(frame), LIMITS)
    assert np.array_equal(decoded.magnitude, magnitude)
    assert (decoded.n_fft, decoded.fs, decoded.ts, decoded.rpm) == (4096, 25600.0, TS, None)


def test_alert_payload() -> None:
    rec = AlertRecord(
        asset="pump-1",
        window_ts=TS,
        label="inner_race",
        confidence=0.876543,
        reason=None,
        neighbours=[("cwru-105-0003", "inner_race", 0.9912345), ("cwru-97-0001", "normal", 0.5)],
        latency_ms=3.14159,
        seq=42,
        message_id=new_message_id(),
        rpm=1797.0,
        rpm_source="message",
        library_version="v1",
        agent_id="gw-1",
        input_kind="window",
        emitted_at=TS + 1,
    )
    body = json.loads(encode_alert(rec))
    assert body["schema"] == "faultline.alert/1"
    assert body["neighbours"][0] == {"id": "cwru-105-0003", "label": "inner_race", "score": 0.9912}
    assert (body["confidence"], body["latency_ms"], body["seq"]) == (0.8765, 3.142, 42)
    assert (body["asset"], body["label"], body["reason"], body["rpm"]) == (
        "pump-1",
        "inner_race",
        None,
        1797.0,
    )
    with pytest.raises(ValueError, match="Out of range float"):
        encode_alert(AlertRecord(**{**vars(rec), "confidence": math.nan}))


def test_error_payload() -> None:
    rec = ErrorRecord(
        "faultline/sensors/p1/window", "p1", "bad_fs", "fs 0 Hz is outside", TS, 7, "g", "id-1"
    )
    body = json.loads(encode_error(rec))
    assert body == {
        "schema": "faultline.error/1",
        "topic": "faultline/sensors/p1/window",
        "asset": "p1",
        "code": "bad_fs",
        "reason": "fs 0 Hz is outside",
        "ts": TS,
        "seq": 7,
        "agent_id": "g",
        "message_id": "id-1",
        "replay": False,
    }


def test_alert_ids_derive_from_what_they_answer() -> None:
    key = answered_key("window", "p1", TS)
    first = alert_message_id("gw-1", key, "v1")
    # A redelivered window gives the same id; another gateway, window or library another.
    assert alert_message_id("gw-1", answered_key("window", "p1", TS), "v1") == first
    others = {
        alert_message_id("gw-2", key, "v1"),
        alert_message_id("gw-1", answered_key("window", "p1", TS + 0.5), "v1"),
        alert_message_id("gw-1", answered_key("spectrum", "p1", TS), "v1"),
        alert_message_id("gw-1", key, "v2"),
    }
    assert first not in others
    assert len(others) == 4
    assert uuid.UUID(first).version == 8


def test_message_ids_are_unique_uuid7_and_time_sortable() -> None:
    ids = [new_message_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert abs((parsed.int >> 80) / 1000 - time.time()) < 5  # ms timestamp in the top 48 bits
    earlier = new_message_id()
    time.sleep(0.002)
    assert new_message_id() > earlier


def test_a_huge_client_string_is_quoted_short() -> None:
    """Issue 14: a 1.6 MB bearing name came back whole in the error; now a short, escaped
    prefix and the length."""
    name = "\x1b[31m" + "x" * 1_600_000
    with pytest.raises(PayloadError) as info:
        decode_window("a", _window_json(bearing=name), LIMITS)
    assert info.value.code == "unknown_bearing"
    assert len(info.value.message) < 300
    assert "1,600,005 characters" in info.value.message
    assert "\x1b" not in info.value.message  # escaped: no terminal control reaches a log


def test_too_many_values_are_refused_before_parsing() -> None:
    """Issue 14: an oversized JSON window was parsed whole before its count was checked."""
    payload = b'{"ts": 1.7e9, "fs": 12000, "samples": [' + b"0," * 5000 + b"0]}"
    limits = dataclasses.replace(LIMITS, max_samples=4096)
    with pytest.raises(PayloadError) as info:
        decode_window("a", payload, limits)
    assert info.value.code == "too_many_samples"
    assert "5,003 or more comma-separated values" in info.value.message
    spectrum = b'{"ts": 1.7e9, "fs": 12000, "n_fft": 8, "magnitude": [' + b"1," * 300 + b"1]}"
    with pytest.raises(PayloadError) as info:
        decode_spectrum("a", spectrum, dataclasses.replace(LIMITS, max_spectrum_bins=100))
    assert info.value.code == "bad_spectrum_length"


def test_a_two_dimensional_samples_array_is_named_as_such() -> None:
    """Issue 14: [[...], [...]] was reported as 'window has 2 samples'."""
    payload = json.dumps({"ts": 1.7e9, "fs": 12000, "samples": [[0.1] * 2000] * 2}).encode()
    with pytest.raises(PayloadError) as info:
        decode_window("a", payload, LIMITS)
    assert info.value.code == "wrong_type"
    assert "array of arrays" in info.value.message
