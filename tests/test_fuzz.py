"""Property-based fuzzing of everything a client or an operator hands the agent (issue 14,
item 7): the payload decoders, the command and question parsers and the config loader.

Each must return a valid value or raise its own documented error, never anything else,
whatever the bytes. Every example is real input to the real function; hypothesis shrinks a
failure to its smallest form. Bounded example counts keep this file under a minute; the
storm over a real broker at a running agent is in tests/test_storm.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faultline.agent.questions.parse import Question, QuestionError, parse_question
from faultline.agent.settings import ConfigError, Settings, load_settings
from faultline.agent.transport import binary_format
from faultline.agent.transport.payloads import (
    PayloadError,
    PayloadLimits,
    decode_command,
    decode_spectrum,
    decode_window,
)
from faultline.encoders.signals import SpectrumFrame, Window

T = TypeVar("T")
E = TypeVar("E", bound=Exception)

LIMITS = PayloadLimits(
    max_payload_bytes=65_536,
    min_samples=64,
    max_samples=4096,
    min_fs=1000.0,
    max_fs=200_000.0,
    min_rpm=30.0,
    max_rpm=60_000.0,
    max_spectrum_bins=4097,
)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON values of every type, nested; numbers include the extremes sensors produce.
_numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
)
_scalars = st.one_of(st.none(), st.booleans(), _numbers, st.text(max_size=20))
_json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
_fields = st.sampled_from(["ts", "fs", "rpm", "bearing", "samples", "n_fft", "magnitude", "extra"])


def _sample_arrays() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(_numbers, min_size=0, max_size=200),
        st.lists(st.floats(-10, 10), min_size=60, max_size=300),
        _json_values,
    )


_window_bodies = st.fixed_dictionaries(
    {},
    optional={
        "ts": st.one_of(_numbers, st.just(1.7e9), _json_values),
        "fs": st.one_of(_numbers, st.just(12_000.0), _json_values),
        "rpm": st.one_of(_numbers, st.none(), st.just(1797.0)),
        "bearing": st.one_of(st.sampled_from(["6205", "6203", "nope"]), _json_values),
        "samples": _sample_arrays(),
        "n_fft": st.one_of(st.integers(-5, 9000), _json_values),
        "magnitude": _sample_arrays(),
    },
).flatmap(
    lambda body: st.dictionaries(_fields, _json_values, max_size=2).map(
        lambda extra: {**extra, **body}
    )
)


def _attempt(call: Callable[[], T], error: type[E]) -> tuple[T | None, E | None]:
    """The value, or the documented error; anything else propagates and fails the test."""
    try:
        return call(), None
    except error as exc:
        return None, exc


def _check_error(exc: PayloadError | QuestionError | None) -> None:
    assert exc is not None
    assert exc.code
    assert 0 < len(exc.message) < 1000, exc.message


def _check_window(result: Window) -> None:
    """What a decoder may hand the pipeline: bounded, finite, typed."""
    assert result.samples.dtype == np.float32
    assert LIMITS.min_samples <= result.samples.size <= LIMITS.max_samples
    assert np.all(np.isfinite(result.samples))
    assert LIMITS.min_fs <= result.fs <= LIMITS.max_fs
    assert 0 < result.ts < 7258118400.0
    assert result.rpm is None or LIMITS.min_rpm <= result.rpm <= LIMITS.max_rpm


@FUZZ
@given(st.binary(max_size=4096))
def test_any_bytes_decode_to_a_window_or_a_payload_error(payload: bytes) -> None:
    for decode in (decode_window, decode_spectrum):
        result, exc = _attempt(lambda d=decode: d("a", payload, LIMITS), PayloadError)
        if isinstance(result, Window):
            _check_window(result)
        elif result is None:
            _check_error(exc)


@FUZZ
@given(_window_bodies, st.booleans())
def test_any_json_object_decodes_to_a_valid_window_or_a_payload_error(
    body: dict[str, Any], nan_literals: bool
) -> None:
    try:
        text = json.dumps(body, allow_nan=nan_literals)
    except ValueError:
        text = json.dumps(body, allow_nan=True)
    payload = text.encode()
    window, exc = _attempt(lambda: decode_window("a", payload, LIMITS), PayloadError)
    if window is None:
        _check_error(exc)
    else:
        _check_window(window)
    frame, exc = _attempt(lambda: decode_spectrum("a", payload, LIMITS), PayloadError)
    if frame is None:
        _check_error(exc)
    else:
        assert isinstance(frame, SpectrumFrame)
        assert frame.magnitude.shape == (frame.n_fft // 2 + 1,)
        assert np.all(np.isfinite(frame.magnitude))


@FUZZ
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=2048),
)
def test_any_binary_header_decodes_to_a_valid_window_or_a_payload_error(
    header_len: int, flags: int, ts: float, fs: float, rpm: float, count: int, body: bytes
) -> None:
    """The FLW1 magic followed by any header values and any body."""
    payload = binary_format.MAGIC + struct.pack("<HHdffI", header_len, flags, ts, fs, rpm, count)
    window, exc = _attempt(lambda: decode_window("a", payload + body, LIMITS), PayloadError)
    if window is None:
        _check_error(exc)
        assert exc is not None
        assert exc.code.startswith(("binary_", "bad_", "too_", "non_")), exc.code
    else:
        _check_window(window)


@FUZZ
@given(st.one_of(st.binary(max_size=512), _json_values.map(lambda v: json.dumps(v).encode())))
def test_any_command_payload_is_a_string_or_none(payload: bytes) -> None:
    command = decode_command(payload)
    assert command is None or isinstance(command, str)


def test_deeply_nested_payloads_are_refused_not_raised() -> None:
    roomy = dataclasses.replace(LIMITS, max_payload_bytes=10**6)
    for payload in (b"[" * 100_000, b'{"a":' * 50_000, b'{"samples": ' + b"[" * 5000):
        assert decode_command(payload) is None
        for decode in (decode_window, decode_spectrum):
            with pytest.raises(PayloadError) as info:
                decode("a", payload, roomy)
            assert info.value.code == "malformed_json"
    with pytest.raises(QuestionError) as asked:
        parse_question(b'{"question": ' + b"[" * 4000)
    assert asked.value.code == "bad_json"


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=5000),
        st.text(max_size=600).map(str.encode),
        st.dictionaries(
            st.sampled_from(["question", "asset", "reply_to", "correlation_id", "x"]),
            _json_values,
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_any_question_payload_is_a_question_or_a_question_error(payload: bytes) -> None:
    question, exc = _attempt(lambda: parse_question(payload), QuestionError)
    if question is None:
        assert exc is not None
        assert exc.code
    else:
        assert isinstance(question, Question)
        assert question.text.strip()


def _config_keys() -> list[str]:
    """Every FAULTLINE__SECTION__KEY of the model (and some that are not)."""
    keys = ["FAULTLINE__NOPE", "FAULTLINE__MQTT__NOPE", "FAULTLINE__ASSETS__P1__RPM"]
    for section, field in Settings.model_fields.items():
        annotation = field.annotation
        sub = getattr(annotation, "model_fields", None)
        if sub:
            keys += [f"FAULTLINE__{section.upper()}__{name.upper()}" for name in sub]
        else:
            keys.append(f"FAULTLINE__{section.upper()}")
    return keys


_env_values = st.one_of(
    st.text(max_size=30),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True).map(str),
    st.sampled_from(["true", "false", "", "null", "[1, 2]", "{a: 1}", "1e999", "-0"]),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_config_keys()), _env_values, max_size=6))
def test_any_environment_loads_or_names_its_key(env: dict[str, str]) -> None:
    loaded, exc = _attempt(lambda: load_settings(None, env=env), ConfigError)
    if loaded is None:
        text = str(exc)
        assert text.strip()
        # The error names a key that was set (as a variable or as a config path).
        assert any(
            key in text or key.removeprefix("FAULTLINE__").lower().replace("__", ".") in text
            for key in env
        ), text
    else:
        assert isinstance(loaded, Settings)
        assert math.isfinite(loaded.pipeline.batch_wait_ms)
