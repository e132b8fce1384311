"""A folder's ``manifest.csv``: which recordings it holds, their labels, rates and digests.

The evaluation, the library builder, the demo set and ``.mat`` reading (whose files do not
store their sampling rate) all start from this list, so it is parsed and checked in one
place: a bad row is refused with the file, the row number and the column.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from faultline.encoders.geometry import bearing_preset
from faultline.fault_library.labels import parse_fault_label

__all__ = ["ManifestEntry", "RecordingError", "read_manifest", "sha256_file", "verify_sha256"]

_MANIFEST_REQUIRED = ("path", "fault", "fs_hz")
_MANIFEST_OPTIONAL = ("record_id", "fault_diameter_in", "load_hp", "rpm", "rpm_nominal")
"""CWRU's manifest has them all. Another rig's may lack the record id (then the file name
stands in), the fault size and the load, and may give only a nominal speed
(``rpm_nominal``: a setpoint the shaft misses by a few percent, refined from the
spectrum, see ``ManifestEntry.rpm_tolerance``)."""
NOMINAL_RPM_TOLERANCE = 0.1
"""How far a nominal speed may be off the shaft's: +-10 % (UESTC's setpoints: up to 8 %)."""


class RecordingError(ValueError):
    """A recording or manifest that cannot be used; the message names the file."""


@dataclass(frozen=True)
class ManifestEntry:
    """One row of a CWRU-style ``manifest.csv``; unknown columns land in ``meta``."""

    path: Path
    record_id: str
    label: str
    fault_size_in: float
    load_hp: int | None
    rpm: float | None
    fs: float
    sha256: str | None
    bearing: str = "6205"
    meta: dict[str, object] = field(default_factory=dict)
    rpm_tolerance: float = 0.0
    """0 when ``rpm`` is the measured speed; ``NOMINAL_RPM_TOLERANCE`` when nominal."""
    key: str | None = None
    """The variable that holds the signal in a .mat file whose layout is not CWRU's."""


def read_manifest(data_dir: str | Path, *, bearing: str | None = None) -> list[ManifestEntry]:
    """Parse ``<data_dir>/manifest.csv``; paths come back absolute (not checked to exist).

    ``bearing``: the bearing preset of rows without a ``bearing`` column (default 6205).
    """
    data_dir = Path(data_dir).resolve()
    manifest = data_dir / "manifest.csv"
    if not manifest.is_file():
        raise RecordingError(f"{manifest}: file not found")
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in _MANIFEST_REQUIRED if c not in columns]
        if missing:
            raise RecordingError(f"{manifest}: missing column(s) {', '.join(missing)}")
        entries: list[ManifestEntry] = []
        seen: set[str] = set()
        for number, raw_row in enumerate(reader, start=1):
            row = {k.strip(): (v or "").strip() for k, v in raw_row.items() if k is not None}
            entry = _manifest_row(manifest, number, row, bearing or "6205")
            if entry.record_id in seen:
                raise RecordingError(
                    f"{manifest}: row {number}, column 'record_id': duplicate {entry.record_id!r}"
                )
            seen.add(entry.record_id)
            entries.append(entry)
    return entries


def _manifest_row(
    manifest: Path, number: int, row: dict[str, str], default_bearing: str
) -> ManifestEntry:
    def fail(column: str, problem: str) -> RecordingError:
        return RecordingError(f"{manifest}: row {number}, column {column!r}: {problem}")

    def number_of(column: str, *, optional: bool = False, positive: bool = False) -> float | None:
        text = row.get(column, "")
        if not text:
            if optional:
                return None
            raise fail(column, "empty")
        try:
            value = float(text)
        except ValueError:
            raise fail(column, f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise fail(column, f"must be {'positive' if positive else '>= 0'}, got {text!r}")
        return value

    if not row["path"]:
        raise fail("path", "empty")
    record_id = row.get("record_id") or Path(row["path"]).stem
    try:
        label = parse_fault_label(row["fault"])
    except ValueError as exc:
        raise fail("fault", str(exc)) from None
    load = number_of("load_hp", optional=True)
    if load is not None and load != int(load):
        raise fail("load_hp", f"must be a whole number, got {row['load_hp']!r}")
    sha = row.get("sha256", "").lower() or None
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise fail("sha256", f"not a SHA-256 hex digest: {sha!r}")
    bearing = row.get("bearing", "") or default_bearing
    try:
        bearing_preset(bearing)
    except ValueError as exc:
        raise fail("bearing", str(exc)) from None
    fs = number_of("fs_hz", positive=True)
    if fs is None:  # unreachable (not optional); narrows the type
        raise fail("fs_hz", "empty")
    known = {*_MANIFEST_REQUIRED, *_MANIFEST_OPTIONAL, "sha256", "bearing", "key"}
    rpm = number_of("rpm", optional=True, positive=True)
    nominal = rpm is None and bool(row.get("rpm_nominal"))
    if nominal:
        rpm = number_of("rpm_nominal", positive=True)
    return ManifestEntry(
        path=(manifest.parent / row["path"]).resolve(),
        record_id=record_id,
        label=label,
        fault_size_in=number_of("fault_diameter_in", optional=True) or 0.0,
        load_hp=None if load is None else int(load),
        rpm=rpm,
        fs=fs,
        sha256=sha,
        bearing=bearing,
        meta={k: v for k, v in row.items() if k not in known},
        rpm_tolerance=NOMINAL_RPM_TOLERANCE if nominal else 0.0,
        key=row.get("key") or None,
    )


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large recordings never sit in memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(entry: ManifestEntry) -> bool:
    """Whether the file still has the bytes the manifest recorded."""
    if entry.sha256 is None:
        raise RecordingError(f"{entry.path}: the manifest records no sha256 to verify against")
    if not entry.path.is_file():
        raise RecordingError(f"{entry.path}: file not found")
    return sha256_file(entry.path) == entry.sha256
