"""Byte layout of the compact binary sensor window (``FLW1``).

The metadata rides in a small header rather than MQTT 5 user properties so the format
works unchanged over MQTT 3.1.1, which is all the demo's embedded amqtt broker speaks,
and survives bridges that drop properties. All integers and floats are little-endian::

    offset  size  type     field
    0       4     bytes    magic, always b"FLW1"
    4       2     uint16   header_len: bytes from offset 0 to the first sample (28 in v1)
    6       2     uint16   flags (v1 defines none; see below)
    8       8     float64  ts: unix time of the first sample, seconds
    16      4     float32  fs: sampling rate, Hz
    20      4     float32  rpm: shaft speed; NaN means "not sent"
    24      4     uint32   n_samples
    28..    4*n   float32  samples (starting at header_len)

The payload must be exactly ``header_len + 4 * n_samples`` bytes long.

Evolution: a later writer may append fields after offset 28 and raise ``header_len``;
v1 readers skip to ``header_len`` and keep working. Flag bits 0-7 are *critical* (they
would change how samples are read, e.g. a float16 encoding): a reader that does not
know a set critical bit rejects the payload. Bits 8-15 are advisory and ignored when
unknown. An incompatible change takes a new magic (``FLW2``). JSON can never start with
``F``, so the magic alone tells the two encodings apart.

This module knows offsets only; range and finiteness checks live in ``payloads``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from faultline.agent.coded_error import CodedError
from faultline.encoders.signals import FloatArray

MAGIC = b"FLW1"
HEADER = struct.Struct("<4sHHdffI")
HEADER_LEN_V1 = HEADER.size  # 28
_PREFIX = struct.Struct("<4sHH")  # enough to read header_len and flags first
CRITICAL_FLAGS = 0x00FF
KNOWN_FLAGS = 0x0000
_F32_MAX = float(np.finfo(np.float32).max)


class BinaryLayoutError(CodedError):
    """The bytes do not follow the layout; ``code`` is one of the payload error codes."""


@dataclass(frozen=True, slots=True)
class BinaryWindow:
    """Header fields and samples exactly as carried, not yet range-checked."""

    ts: float
    fs: float
    rpm: float | None
    samples: FloatArray
    flags: int
    header_len: int


def is_binary(payload: bytes) -> bool:
    return payload[:4] == MAGIC


def pack_window(ts: float, fs: float, rpm: float | None, samples: FloatArray) -> bytes:
    """Encode one window in the v1 layout (what the simulator publishes)."""
    data = np.ascontiguousarray(samples, dtype="<f4")
    if data.ndim != 1:
        raise ValueError(f"samples must be 1-D, got shape {data.shape}")
    if not abs(fs) <= _F32_MAX or (rpm is not None and not abs(rpm) <= _F32_MAX):
        raise ValueError(f"fs={fs} or rpm={rpm} does not fit float32")
    header = HEADER.pack(
        MAGIC,
        HEADER_LEN_V1,
        0,
        float(ts),
        float(fs),
        math.nan if rpm is None else float(rpm),
        data.size,
    )
    return header + data.tobytes()


def unpack_window(payload: bytes) -> BinaryWindow:
    """Split a binary window into fields; raise BinaryLayoutError on a malformed layout."""
    if len(payload) < _PREFIX.size:
        raise BinaryLayoutError(
            "binary_header",
            f"binary payload is {len(payload)} bytes, too short for the "
            f"{HEADER_LEN_V1}-byte FLW1 header",
        )
    _, header_len, flags = _PREFIX.unpack_from(payload)
    if header_len < HEADER_LEN_V1:
        raise BinaryLayoutError(
            "binary_header",
            f"binary header_len is {header_len}, the FLW1 header needs at least {HEADER_LEN_V1}",
        )
    if len(payload) < header_len:
        raise BinaryLayoutError(
            "binary_header",
            f"binary payload is {len(payload)} bytes, shorter than its "
            f"{header_len}-byte header (truncated)",
        )
    unknown_critical = flags & CRITICAL_FLAGS & ~KNOWN_FLAGS
    if unknown_critical:
        raise BinaryLayoutError(
            "binary_header",
            f"binary flags 0x{flags:04x} set critical bits 0x{unknown_critical:02x} "
            "this agent does not understand (newer sensor format?)",
        )
    _, _, _, ts, fs, rpm, n_samples = HEADER.unpack_from(payload)
    expected = header_len + 4 * n_samples
    if len(payload) != expected:
        raise BinaryLayoutError(
            "binary_length",
            f"binary payload says {n_samples} samples ({4 * n_samples} bytes) but carries "
            f"{len(payload) - header_len} bytes",
        )
    # astype copies: the array owns writable, native-order memory, not a view of bytes.
    samples = np.frombuffer(payload, dtype="<f4", count=n_samples, offset=header_len)
    return BinaryWindow(
        ts=ts,
        fs=fs,
        rpm=None if math.isnan(rpm) else rpm,
        samples=samples.astype(np.float32),
        flags=flags,
        header_len=header_len,
    )
