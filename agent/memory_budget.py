"""The agent's worst-case memory, from its configuration, checked at start-up.

Every store that grows with input is bounded by a setting; this module adds those bounds
up so an operator sees, before the gateway runs out of memory at 3 a.m., what the
configuration allows at most, and the agent refuses to start when that exceeds
``limits.memory_mb`` (issue 14: 300 windows of 480,000 samples once took the agent from
174 to 747 MB). Pure: the caller measures the resident memory after start-up (the
interpreter, the models, the library) and passes it in.

The factors are measured, not guessed (docs/ARCHITECTURE.md, "Memory"):

* ``DSP_WORKING_SET``: peak bytes the diagnosis of a batch allocates per byte of its
  float32 samples, plus ``DSP_FIXED`` (tracemalloc around ``diagnose_batch``): 0.7 MB for
  one 12 kHz window, 5.3 MB for 16, 18.4 MB for one of 480,000 samples, 58.8 MB for four,
  9.0 MB for eight 48 kHz windows: at most 10x the samples + 1 MB. A batch holds at most
  ``pipeline.batch_max_mb`` of samples.
* ``JSON_BYTES_PER_VALUE``: a JSON array parsed into Python (an 8-byte list slot and a
  24-byte float per value) plus its float64 and float32 copies: 44 bytes per sample, for
  at most ``limits.max_samples`` values (more are refused before parsing).
* ``OUTBOX_ENTRY_BYTES``: what the outbox keeps in memory per stored message (its id,
  topic, stream and numbers; the payload stays on disk): about 350 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from faultline.agent.settings import Settings
from faultline.agent.settings_errors import ConfigError, ConfigProblem

MB = 2**20
DSP_WORKING_SET = 10
DSP_FIXED = 1 * 2**20
JSON_BYTES_PER_VALUE = 44
OUTBOX_ENTRY_BYTES = 350
OUTBOX_MEMORY_MESSAGE_BYTES = 4096  # an alert or error held in memory when the disk fails
ANSWERED_KEY_BYTES = 200
ANSWERED_KEYS = 100_000
RPM_CACHE_BYTES = 256 * 200


@dataclass(frozen=True)
class MemoryBudget:
    """Worst-case resident memory, part by part, in MB, and the setting bounding each."""

    parts: dict[str, tuple[float, str]]

    @property
    def total_mb(self) -> float:
        return sum(mb for mb, _key in self.parts.values())

    def describe(self) -> str:
        rows = sorted(self.parts.items(), key=lambda kv: -kv[1][0])
        return "; ".join(f"{name} {mb:,.0f} MB ({key})" for name, (mb, key) in rows)


def worst_case(settings: Settings, baseline_mb: float) -> MemoryBudget:
    """What this configuration allows the agent process to hold at most."""
    limits, pipe, outbox = settings.limits, settings.pipeline, settings.outbox
    max_window = limits.max_samples * 4  # float32 samples
    queue = pipe.queue_max_mb * MB
    batch = pipe.workers * min(pipe.batch_max * max_window, max(pipe.batch_max_mb * MB, max_window))
    parse = max(limits.max_payload_bytes, limits.max_samples * JSON_BYTES_PER_VALUE)
    parts = {
        "start-up (interpreter, models, library)": (baseline_mb, "measured"),
        "queued windows": (queue / MB, "pipeline.queue_max_mb"),
        "diagnosis working set": (
            (DSP_WORKING_SET * batch + pipe.workers * DSP_FIXED) / MB,
            "pipeline.workers x pipeline.batch_max_mb",
        ),
        "message being parsed": (parse / MB, "limits.max_payload_bytes, limits.max_samples"),
        "outbox index": (outbox.max_rows * OUTBOX_ENTRY_BYTES / MB, "outbox.max_rows"),
        "outbox in memory (disk failed)": (
            outbox.memory_max_rows * OUTBOX_MEMORY_MESSAGE_BYTES / MB,
            "outbox.memory_max_rows",
        ),
        "answered windows": (ANSWERED_KEYS * ANSWERED_KEY_BYTES / MB, "fixed"),
        "speed estimates": (RPM_CACHE_BYTES / MB, "fixed"),
    }
    dashboard = getattr(settings, "dashboard", None)
    if dashboard is not None and dashboard.enabled:
        parts["dashboard's latest windows"] = (
            dashboard.assets * limits.max_payload_bytes / MB,
            "dashboard.assets, limits.max_payload_bytes",
        )
    return MemoryBudget(parts)


def resident_mb() -> float:
    """This process's resident memory now, MB (Linux /proc; 0 where it is unknown)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def check(settings: Settings, budget: MemoryBudget) -> None:
    """Refuse a configuration whose worst case exceeds ``limits.memory_mb``, naming the
    settings that weigh most (ConfigError: the CLI prints it and exits 2)."""
    limit = settings.limits.memory_mb
    if budget.total_mb <= limit:
        return
    raise ConfigError(
        [
            ConfigProblem(
                path="limits.memory_mb",
                expected=(
                    f"the configuration allows {budget.total_mb:,.0f} MB at worst, more than "
                    f"limits.memory_mb ({limit:,.0f} MB): lower the largest parts or raise "
                    f"the limit if the gateway has the memory. {budget.describe()}"
                ),
                given="",
                source="",
                is_form=False,
            )
        ]
    )
