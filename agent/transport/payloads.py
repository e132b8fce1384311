"""The one place that knows payload formats, in and out.

Inbound (asset id comes from the topic, never from the payload):

* sensor window, JSON: ``{"ts": 1718000000.25, "fs": 12000, "rpm": 1797, "bearing": "6205",
  "samples": [0.012, -0.034, ...]}``; ``rpm`` and ``bearing`` (a preset name) are optional
  and ``null`` means absent. Unknown fields are ignored so sensors can add some first.
* sensor window, binary float32: see ``binary_format`` (magic ``FLW1``, 28-byte header).
  A payload starting with the magic is binary; anything else is parsed as JSON.
* spectrum, JSON: ``{"ts", "fs", "n_fft", "magnitude": [n_fft // 2 + 1 floats], "rpm"?,
  "bearing"?}``.

Every rejection is a ``PayloadError`` with a stable ``code`` (counted and published on the
errors topic) and a ``message`` precise enough to fix the sensor without a debugger:
oversized, malformed_json, not_an_object, missing_field, wrong_type, non_finite,
too_few_samples, too_many_samples, bad_fs, bad_rpm, bad_timestamp, binary_length,
binary_header, bad_spectrum_length, unknown_bearing. The byte limit is checked before
parsing so an oversized message costs nothing; booleans are not numbers; NaN/Infinity
(which Python's json accepts) are rejected with the index of the first bad value.

Outbound: windows and spectra (simulator), alerts (``faultline.alert/1``) and rejections
(``faultline.error/1``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson

from faultline.agent.coded_error import CodedError
from faultline.agent.transport import binary_format
from faultline.encoders.geometry import BEARING_PRESETS, BearingGeometry, bearing_preset
from faultline.encoders.signals import FloatArray, SpectrumFrame, Window

__all__ = [
    "AlertRecord",
    "ErrorRecord",
    "PayloadError",
    "PayloadLimits",
    "alert_message_id",
    "answered_key",
    "decode_command",
    "decode_spectrum",
    "decode_window",
    "encode_alert",
    "encode_error",
    "encode_spectrum_json",
    "encode_window_binary",
    "encode_window_json",
    "new_message_id",
    "quoted",
]

ALERT_SCHEMA = "faultline.alert/1"
ERROR_SCHEMA = "faultline.error/1"
MAX_TS = 7258118400.0  # 2200-01-01T00:00:00Z: beyond it a "seconds" value is really ms or µs
_F32_MAX = float(np.finfo(np.float32).max)
_MIN_MS_HINT = 946684800.0  # 2000-01-01: only then is "you sent milliseconds" a likely story


class PayloadError(CodedError):
    """A payload the agent refuses; ``code`` is for machines, ``message`` for people."""

    code_in_text = True


@dataclass(frozen=True)
class PayloadLimits:
    """Bounds for inbound payloads (inclusive); the app maps configuration into it."""

    max_payload_bytes: int
    min_samples: int
    max_samples: int
    min_fs: float
    max_fs: float
    min_rpm: float
    max_rpm: float
    max_spectrum_bins: int


# ---------------------------------------------------------------- inbound


def decode_window(asset: str, payload: bytes, limits: PayloadLimits) -> Window:
    """Bytes from a sensor topic -> validated Window, or PayloadError."""
    _check_size(payload, limits)
    if binary_format.is_binary(payload):
        try:
            raw = binary_format.unpack_window(payload)
        except binary_format.BinaryLayoutError as exc:
            raise PayloadError(exc.code, exc.message) from None
        _check_ts(raw.ts)
        _check_fs(raw.fs, limits)
        if raw.rpm is not None:
            _check_rpm(raw.rpm, limits)
        _check_count(raw.samples.size, limits)
        _check_values(raw.samples, "samples")
        return Window(asset, raw.ts, raw.fs, raw.samples, raw.rpm, meta={"encoding": "binary"})
    _check_value_count(payload, limits.max_samples, "samples", "too_many_samples")
    obj = _parse_object(payload)
    ts, fs, rpm, geometry = _common_fields(obj, limits)
    values = _array(obj, "samples")
    _check_count(len(values), limits)
    samples = _to_float32(values, "samples")
    return Window(asset, ts, fs, samples, rpm, geometry, meta={"encoding": "json"})


def decode_spectrum(asset: str, payload: bytes, limits: PayloadLimits) -> SpectrumFrame:
    """Bytes from a spectrum topic -> validated SpectrumFrame, or PayloadError."""
    _check_size(payload, limits)
    _check_value_count(payload, limits.max_spectrum_bins, "bins", "bad_spectrum_length")
    obj = _parse_object(payload)
    ts, fs, rpm, geometry = _common_fields(obj, limits)
    if "n_fft" not in obj:
        raise PayloadError("missing_field", "missing required field 'n_fft'")
    n_fft = obj["n_fft"]
    if type(n_fft) is not int:
        raise PayloadError("wrong_type", f"field 'n_fft' must be an integer, got {_kind(n_fft)}")
    values = _array(obj, "magnitude")
    bins = n_fft // 2 + 1
    if n_fft < 2 or bins > limits.max_spectrum_bins:
        raise PayloadError(
            "bad_spectrum_length",
            f"n_fft={n_fft:,} gives {bins:,} bins; allowed is 2 to {limits.max_spectrum_bins:,}",
        )
    if len(values) != bins:
        raise PayloadError(
            "bad_spectrum_length",
            f"magnitude has {len(values):,} bins but n_fft={n_fft} needs n_fft//2+1 = {bins:,}",
        )
    magnitude = _to_float32(values, "magnitude")
    meta: dict[str, object] = {"encoding": "json"}
    return SpectrumFrame(asset, ts, fs, n_fft, magnitude, rpm, geometry, meta)


def _common_fields(
    obj: dict[str, Any], limits: PayloadLimits
) -> tuple[float, float, float | None, BearingGeometry | None]:
    ts = _check_ts(_number(obj, "ts"))
    fs = _check_fs(_number(obj, "fs"), limits)
    rpm = None if obj.get("rpm") is None else _check_rpm(_number(obj, "rpm"), limits)
    return ts, fs, rpm, _bearing(obj)


def _check_size(payload: bytes, limits: PayloadLimits) -> None:
    if len(payload) > limits.max_payload_bytes:
        raise PayloadError(
            "oversized",
            f"payload is {len(payload):,} bytes, limit is {limits.max_payload_bytes:,}",
        )


_OTHER_VALUES = 64  # commas a window's other fields may use besides its array


def _check_value_count(payload: bytes, most: int, what: str, code: str) -> None:
    """Refuse, before parsing, a JSON payload with more values than one message may carry.

    A JSON array of n values has n - 1 commas, so a payload with more commas than the
    array's limit (plus a few for the other fields) cannot be valid; counting them runs at
    memory speed (about 0.1 ms per MB), where parsing a 2 MB payload of small numbers into
    Python objects costs about 10 ms and 30 MB. One sensor sending such payloads would
    otherwise starve the others (issue 14: 15 rejections/s)."""
    commas = payload.count(b",")
    if commas > most + _OTHER_VALUES:
        raise PayloadError(
            code,
            f"payload holds {commas + 1:,} or more comma-separated values; a message carries "
            f"at most {most:,} {what}",
        )


def _parse_object(payload: bytes) -> dict[str, Any]:
    """Parse with orjson (about 3x faster than ``json`` on a window of floats: parsing was
    the largest cost of a JSON window); a payload orjson refuses is parsed again by the
    standard library, which says where it is wrong, and accepts the NaN and Infinity
    literals sensors do send, so that they are reported with the index of the bad value."""
    if not payload:
        raise PayloadError("malformed_json", "payload is empty")
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        obj = _parse_strictly(payload)
    if not isinstance(obj, dict):
        raise PayloadError("not_an_object", f"payload must be a JSON object, got {_kind(obj)}")
    return obj


def _parse_strictly(payload: bytes) -> Any:
    """The standard library's parse: precise errors for what orjson refused."""
    try:
        return json.loads(payload)
    except json.JSONDecodeError as exc:
        raise PayloadError(
            "malformed_json", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except UnicodeDecodeError as exc:
        raise PayloadError("malformed_json", f"payload is not UTF-8 text: {exc.reason}") from None
    except RecursionError:  # "[[[[..." nested deeper than the interpreter's stack
        raise PayloadError("malformed_json", "JSON is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits (int_max_str_digits)
        raise PayloadError("malformed_json", f"unreadable JSON: {str(exc)[:120]}") from None


_KINDS = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string"}


def _kind(value: object) -> str:
    """JSON's name for a decoded value's type, as a sensor author would write it."""
    return _KINDS.get(type(value), "array" if isinstance(value, list) else "object")


def _number(obj: dict[str, Any], name: str) -> float:
    if name not in obj:
        raise PayloadError("missing_field", f"missing required field {name!r}")
    value = obj[name]
    if type(value) not in (int, float):  # excludes bool, a subclass of int
        raise PayloadError("wrong_type", f"field {name!r} must be a number, got {_kind(value)}")
    try:
        return float(value)
    except OverflowError:  # an integer beyond float64
        return math.inf


def _bearing(obj: dict[str, Any]) -> BearingGeometry | None:
    name = obj.get("bearing")
    if name is None:
        return None
    if not isinstance(name, str):
        raise PayloadError("wrong_type", f"field 'bearing' must be a string, got {_kind(name)}")
    try:
        return bearing_preset(name)
    except ValueError:
        known = ", ".join(sorted(BEARING_PRESETS))
        raise PayloadError(
            "unknown_bearing", f"unknown bearing preset {quoted(name)}; known presets: {known}"
        ) from None


def decode_command(payload: bytes) -> str | None:
    """The ``command`` of an operator command (``{"command": "status"}``), or None for
    anything else: garbage, another type, "[" x 100,000. Never raises; the caller says
    which commands exist."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    command = body.get("command") if isinstance(body, dict) else None
    return command if isinstance(command, str) else None


QUOTE_LIMIT = 48


def quoted(value: str, limit: int = QUOTE_LIMIT) -> str:
    """A client-supplied string as an error message or a log line may show it: escaped
    (``repr``, so control characters and terminal escapes stay inert) and cut to ``limit``
    characters with its full length said. A 1.6 MB "bearing" name once came back as a
    1.5 MB error message and a 1.5 MB log line (issue 14): nothing large is echoed."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value):,} characters)"


def _check_ts(ts: float) -> float:
    if not 0 < ts < MAX_TS:
        hint = " (milliseconds? send seconds)" if _MIN_MS_HINT < ts / 1000 < MAX_TS else ""
        raise PayloadError(
            "bad_timestamp",
            f"ts {ts!r} is not unix seconds between 1970 and 2200{hint}",
        )
    return ts


def _check_fs(fs: float, limits: PayloadLimits) -> float:
    return _check_range("bad_fs", "fs", fs, limits.min_fs, limits.max_fs, unit=" Hz")


def _check_rpm(rpm: float, limits: PayloadLimits) -> float:
    return _check_range("bad_rpm", "rpm", rpm, limits.min_rpm, limits.max_rpm)


def _check_range(
    code: str, name: str, value: float, low: float, high: float, *, unit: str = ""
) -> float:
    if not low <= value <= high:  # also rejects NaN
        raise PayloadError(code, f"{name} {value:g}{unit} is outside [{low:g}, {high:g}]{unit}")
    return value


def _check_count(n: int, limits: PayloadLimits) -> None:
    if n < limits.min_samples:
        raise PayloadError(
            "too_few_samples", f"window has {n:,} samples, minimum is {limits.min_samples:,}"
        )
    if n > limits.max_samples:
        raise PayloadError(
            "too_many_samples", f"window has {n:,} samples, maximum is {limits.max_samples:,}"
        )


def _array(obj: dict[str, Any], name: str) -> list[Any]:
    if name not in obj:
        raise PayloadError("missing_field", f"missing required field {name!r}")
    values = obj[name]
    if not isinstance(values, list):
        raise PayloadError(
            "wrong_type", f"field {name!r} must be an array of numbers, got {_kind(values)}"
        )
    if values and isinstance(values[0], list):  # said before counting: 2 rows != 2 samples
        raise PayloadError(
            "wrong_type",
            f"field {name!r} must be a flat array of numbers, got an array of arrays "
            "(one channel per message)",
        )
    return values


def _to_float32(values: list[Any], name: str) -> FloatArray:
    """JSON numbers -> float32, naming the first element that is not a finite number.

    numpy would quietly turn "1.5", true and null into numbers or NaN, so element types
    are checked first (one pass over type objects is ~0.1 ms for 12,000 samples).
    """
    if not set(map(type, values)) <= {float, int}:
        index, bad = next((i, v) for i, v in enumerate(values) if type(v) not in (float, int))
        raise PayloadError("wrong_type", f"{name}[{index}] must be a number, got {_kind(bad)}")
    try:
        array = np.asarray(values, dtype=np.float64)
    except OverflowError:  # an integer literal beyond float64
        inf = [math.inf if v > 0 else -math.inf for v in values]
        array = np.array([float(v) if abs(v) < 1e308 else inf[i] for i, v in enumerate(values)])
    _check_values(array, name)
    return array.astype(np.float32)


def _check_values(array: npt.NDArray[np.floating[Any]], name: str) -> None:
    ok = np.abs(array) <= _F32_MAX  # False for NaN and ±inf too
    if ok.all():
        return
    index = int(np.argmin(ok))
    value = float(array[index])
    if math.isnan(value):
        what = "is NaN"
    elif math.isinf(value):
        what = "is Infinity" if value > 0 else "is -Infinity"
    else:
        what = f"= {value:g} is outside the float32 range (±3.4e38)"
    raise PayloadError("non_finite", f"{name}[{index}] {what}")


# ---------------------------------------------------------------- outbound


def _number_list(values: FloatArray, name: str) -> str:
    """float32 -> JSON array text; 9 significant digits round-trip float32 exactly.

    Roughly 40% smaller and twice as fast as ``json.dumps(values.tolist())``, which
    prints the float64 expansion of every float32.
    """
    array = np.asarray(values, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or Infinity, which JSON cannot carry")
    return "[" + ",".join(map("{:.9g}".format, array.tolist())) + "]"


def _head(
    ts: float, fs: float, rpm: float | None, geometry: BearingGeometry | None
) -> dict[str, Any]:
    head: dict[str, Any] = {"ts": float(ts), "fs": float(fs)}
    if rpm is not None:
        head["rpm"] = float(rpm)
    # Only presets have a wire name; a custom geometry stays in the agent's asset config.
    preset = next((k for k, g in BEARING_PRESETS.items() if g == geometry), None)
    if preset is not None:
        head["bearing"] = preset
    return head


def encode_window_json(window: Window) -> bytes:
    head = json.dumps(_head(window.ts, window.fs, window.rpm, window.geometry), allow_nan=False)
    return f'{head[:-1]}, "samples": {_number_list(window.samples, "samples")}}}'.encode()


def encode_window_binary(window: Window) -> bytes:
    """FLW1 bytes; the bearing preset cannot travel in v1 and is dropped."""
    return binary_format.pack_window(window.ts, window.fs, window.rpm, window.samples)


def encode_spectrum_json(frame: SpectrumFrame) -> bytes:
    head_dict = _head(frame.ts, frame.fs, frame.rpm, frame.geometry)
    head_dict["n_fft"] = int(frame.n_fft)
    head = json.dumps(head_dict, allow_nan=False)
    return f'{head[:-1]}, "magnitude": {_number_list(frame.magnitude, "magnitude")}}}'.encode()


@dataclass(frozen=True)
class AlertRecord:
    """Everything an alert says; neighbours are (library id, label, score) triples."""

    asset: str
    window_ts: float
    label: str
    confidence: float
    reason: str | None
    neighbours: Sequence[tuple[str, str, float]]
    latency_ms: float
    seq: int
    message_id: str
    rpm: float | None
    rpm_source: str
    library_version: str
    agent_id: str
    input_kind: Literal["window", "spectrum"]
    emitted_at: float
    evidence: str | None = None
    """The characteristic lines read when the verdict was cross-checked with them."""
    code: str | None = None
    """Why the answer is what it is, as a stable code (``Verdict.code``): ``novel``,
    ``ambiguous``, ``lines``, ``no_lines``, ``absence``, ``baseline`` or a signal-quality
    code (``constant``, ``clipped``, ``tone``, ``dropout``); null for a plain match."""
    replay: bool = False
    """True when the outbox sends it after an outage (it then also has ``replayed_at``)."""
    severity: dict[str, object] | None = None
    """How bad, computed by code (``encoders/severity.py``): velocity RMS and its ISO zone,
    the damage stage of the defect lines; null for a sensor spectrum."""


def encode_alert(rec: AlertRecord) -> bytes:
    """JSON alert; raises ValueError on NaN/Infinity (a bug upstream, never valid JSON)."""
    body = {"schema": ALERT_SCHEMA, **vars(rec)}
    body["confidence"] = round(rec.confidence, 4)
    body["latency_ms"] = round(rec.latency_ms, 3)
    body["neighbours"] = [
        {"id": nid, "label": label, "score": round(score, 4)}
        for nid, label, score in rec.neighbours
    ]
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ErrorRecord:
    """One rejected message: where it came from, why, and when (unix seconds)."""

    topic: str
    asset: str | None
    code: str
    reason: str
    ts: float
    seq: int
    agent_id: str
    message_id: str = ""
    replay: bool = False


def encode_error(rec: ErrorRecord) -> bytes:
    body = {"schema": ERROR_SCHEMA, **vars(rec)}
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()


def answered_key(kind: str, asset: str, window_ts: float) -> str:
    """What an inbound measurement is, for answering a redelivered copy once."""
    return f"{kind}|{asset}|{window_ts!r}"


def alert_message_id(agent_id: str, key: str, library_version: str) -> str:
    """An alert's id, derived from what it answers: a window redelivered after a crash (or
    retained) yields the same id, so consumers can de-duplicate. UUID layout, version 8
    (RFC 9562, custom), from a SHA-256 of gateway, measurement key and library version."""
    digest = bytearray(hashlib.sha256(f"{agent_id}|{key}|{library_version}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(digest)))


def new_message_id() -> str:
    """A UUIDv7-style id (RFC 9562, method 3): 48-bit unix ms, 12-bit sub-ms, 62 random bits.

    Time-sortable so the SQLite outbox appends at the end of its index and ids read in
    emission order when logged; 62 random bits keep ids from several gateways distinct
    without coordination. Within one ~250 ns slice order is arbitrary (``seq`` is exact).
    """
    now = time.time_ns()
    ms, sub_ms = divmod(now, 1_000_000)
    rand_a = sub_ms * 4096 // 1_000_000
    rand_b = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))
