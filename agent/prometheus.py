"""Prometheus metrics: the agent's counters, stage times and state, read at scrape time.

Why a custom collector instead of incrementing ``prometheus_client`` metrics on the hot
path: the agent already counts everything once (``Counters``, ``StageTimes``, the outbox's,
the transport's and the workers' own counts) for its retained status; reading them when
Prometheus scrapes costs the hot path nothing and keeps one source of truth, so the status
topic and ``/metrics`` can never disagree. ``prometheus_client`` does the exposition format
and the HTTP server (a daemon thread; stopped with the agent).

Names follow Prometheus conventions: ``faultline_`` prefix, ``_total`` for counters, base
units (``_seconds``, ``_bytes``), labels for what varies (``code``, ``label``, ``stage``,
``class``). The full list is in docs/ARCHITECTURE.md ("Metrics").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from faultline.agent.metrics import BATCH_BUCKETS, SECONDS_BUCKETS, Counters, StageTimes

log = logging.getLogger(__name__)

# Counters whose name maps one to one (Counters key -> metric name, help).
_PLAIN_COUNTERS = {
    "received": ("faultline_windows_received_total", "Sensor messages received."),
    "alerts": ("faultline_windows_answered_total", "Windows answered with an alert."),
    "duplicates": (
        "faultline_windows_duplicate_total",
        "Windows seen again (redelivered or retained) and answered once.",
    ),
    "queue_full_waits": (
        "faultline_pipeline_queue_full_waits_total",
        "Times intake waited for room in the full pipeline queue.",
    ),
}


@dataclass(frozen=True)
class AgentView:
    """What the collector reads; each a cheap, thread-safe snapshot."""

    counters: Counters
    stages: StageTimes
    backlog: Callable[[], int]
    backlog_bytes: Callable[[], int]
    outbox: Callable[[], Mapping[str, Any]]
    transport: Callable[[], Mapping[str, int]]
    connected: Callable[[], bool]
    library: Callable[[], Mapping[str, Any]]
    reports: Callable[[], Mapping[str, Any] | None]
    questions: Callable[[], Mapping[str, Any]]
    memory_worst_case_mb: Callable[[], float]


class AgentCollector(Collector):
    """Turns an :class:`AgentView` into metric families at each scrape."""

    def __init__(self, view: AgentView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        yield from self._counters()
        yield from self._pipeline()
        yield from self._outbox()
        yield from self._mqtt()
        yield from self._library()
        yield from self._workers()
        yield from self._memory()

    def _counters(self) -> Iterator[Metric]:
        counts = self._view.counters.snapshot()
        for key, (name, doc) in _PLAIN_COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=counts.get(key, 0))
        rejected = CounterMetricFamily(
            "faultline_windows_rejected_total",
            "Messages rejected, by reason code (the code on the errors topic).",
            labels=["code"],
        )
        alerts = CounterMetricFamily(
            "faultline_alerts_total", "Alerts published, by verdict label.", labels=["label"]
        )
        for key, value in counts.items():
            if key.startswith("rejected.") and key != "rejected.summarised":
                rejected.add_metric([key.removeprefix("rejected.")], value)
            elif key.startswith("alerts."):
                alerts.add_metric([key.removeprefix("alerts.")], value)
        yield rejected
        yield alerts
        yield CounterMetricFamily(
            "faultline_rejections_summarised_total",
            "Rejections over their source's error budget: counted, published as a summary.",
            value=counts.get("rejected.summarised", 0),
        )

    def _pipeline(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "faultline_pipeline_queue_depth",
            "Windows waiting for a pipeline worker.",
            value=self._view.backlog(),
        )
        yield GaugeMetricFamily(
            "faultline_pipeline_queue_bytes",
            "Sample bytes of the windows queued or being processed (pipeline.queue_max_mb).",
            value=self._view.backlog_bytes(),
        )
        stage = HistogramMetricFamily(
            "faultline_stage_seconds",
            "Time per window in each stage of the hot path (a batch's time shared by its "
            "windows): decode, queued, diagnose (= encode + search + decide), alert, "
            "received_to_durable; publish per outgoing message.",
            labels=["stage"],
        )
        for name, (cumulative, total) in sorted(self._view.stages.histograms().items()):
            buckets = [(_le(b), c) for b, c in zip(SECONDS_BUCKETS, cumulative, strict=False)]
            buckets.append(("+Inf", cumulative[-1]))
            stage.add_metric([name], buckets, total)
        yield stage
        cumulative, windows = self._view.stages.batch_histogram()
        batches = HistogramMetricFamily(
            "faultline_pipeline_batch_windows", "Windows per micro-batch."
        )
        buckets = [(_le(float(b)), c) for b, c in zip(BATCH_BUCKETS, cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        batches.add_metric([], buckets, float(windows))
        yield batches

    def _outbox(self) -> Iterator[Metric]:
        stats = self._view.outbox()
        yield GaugeMetricFamily(
            "faultline_outbox_depth_messages",
            "Messages in the outbox not yet acknowledged by the broker.",
            value=float(stats.get("depth", 0) or 0),
        )
        yield GaugeMetricFamily(
            "faultline_outbox_bytes",
            "Bytes of the messages in the outbox.",
            value=float(stats.get("bytes", 0) or 0),
        )
        yield GaugeMetricFamily(
            "faultline_outbox_file_bytes",
            "Size of the outbox file and its WAL on disk.",
            value=float(stats.get("file_bytes", 0) or 0),
        )
        age = stats.get("oldest_age_s")
        yield GaugeMetricFamily(
            "faultline_outbox_oldest_age_seconds",
            "Age of the oldest message still in the outbox (0 when empty).",
            value=float(age or 0.0),
        )
        yield GaugeMetricFamily(
            "faultline_outbox_on_disk",
            "1 when the outbox writes to its file, 0 when it serves from memory.",
            value=1.0 if stats.get("mode") == "disk" else 0.0,
        )
        for field, doc in (
            ("accepted", "Messages accepted into the outbox"),
            ("delivered", "Messages acknowledged by the broker"),
            ("evicted", "Messages evicted by the size cap (drop_oldest)"),
            ("expired", "Messages dropped at their time to live"),
            ("rejected", "Messages refused by the size cap (reject_new)"),
        ):
            yield _labelled_counter(
                f"faultline_outbox_{field}_total", f"{doc}, by class.", "class", stats.get(field)
            )
        yield CounterMetricFamily(
            "faultline_outbox_replayed_total",
            "Messages sent again after a reconnect or a restart.",
            value=float(stats.get("replayed", 0) or 0),
        )

    def _mqtt(self) -> Iterator[Metric]:
        stats = self._view.transport()
        yield GaugeMetricFamily(
            "faultline_mqtt_connected",
            "1 while the link to the broker is up.",
            value=1.0 if self._view.connected() else 0.0,
        )
        for key, doc in (
            ("connects", "Successful connections to the broker"),
            ("disconnects", "Lost or closed connections"),
            ("connect_failures", "Connections the broker refused"),
            ("published", "Messages handed to the broker"),
            ("publish_failures", "Publishes that could not be sent"),
        ):
            yield CounterMetricFamily(
                f"faultline_mqtt_{key}_total", f"{doc}.", value=float(stats.get(key, 0))
            )

    def _memory(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "faultline_memory_worst_case_bytes",
            "Resident memory the configuration allows at most (process_resident_memory_bytes "
            "is the present value).",
            value=self._view.memory_worst_case_mb() * 2**20,
        )

    def _library(self) -> Iterator[Metric]:
        info = self._view.library()
        yield InfoMetricFamily(
            "faultline_library",
            "The fault library version being served.",
            value={"version": str(info["version"]), "model_id": str(info["model_id"])},
        )
        signatures = GaugeMetricFamily(
            "faultline_library_signatures",
            "Fault signatures in the library, by view.",
            labels=["view"],
        )
        for view, count in sorted(info["signatures"].items()):
            signatures.add_metric([view], float(count or 0))
        yield signatures

    def _workers(self) -> Iterator[Metric]:
        reports = self._view.reports()
        if reports is not None:
            yield _labelled_counter(
                "faultline_reports_total", "Report offers and outcomes.", "outcome", reports
            )
            yield GaugeMetricFamily(
                "faultline_reports_queue_depth",
                "Reports waiting for the writer.",
                value=float(reports.get("queue", 0) or 0),
            )
            made = reports.get("generation") or {}
            for key, doc in (
                ("prompt_tokens", "Prompt tokens the report model evaluated"),
                ("completion_tokens", "Tokens the report model generated"),
            ):
                yield CounterMetricFamily(
                    f"faultline_reports_{key}_total", f"{doc}.", value=float(made.get(key, 0))
                )
            yield CounterMetricFamily(
                "faultline_reports_generation_seconds_total",
                "Seconds the report model spent generating (tokens/s = rate of "
                "faultline_reports_completion_tokens_total / rate of this).",
                value=float(made.get("seconds", 0.0)),
            )
        yield _labelled_counter(
            "faultline_questions_total",
            "Questions and outcomes.",
            "outcome",
            self._view.questions(),
        )


def _labelled_counter(
    name: str, doc: str, label: str, values: Mapping[str, Any] | None
) -> CounterMetricFamily:
    """One counter family from a mapping of counts (non-count entries, such as a queue
    depth or a description, are left out)."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted((values or {}).items()):
        if isinstance(value, int) and not isinstance(value, bool) and key != "queue":
            family.add_metric([key], float(value))
    return family


def _le(bound: float) -> str:
    return repr(float(bound))


class MetricsServer:
    """``/metrics`` over HTTP on ``host:port`` for one agent process."""

    def __init__(self, view: AgentView, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(view))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU, fds
        self._host = host
        self._port = port
        self._server: Any = None

    @property
    def port(self) -> int:
        return int(self._server.server_port) if self._server is not None else self._port

    def start(self) -> None:
        """Serve; a port already taken is logged and the agent serves without metrics
        (its MQTT duty matters more than its dashboard)."""
        try:
            self._server, _thread = start_http_server(
                self._port, addr=self._host, registry=self.registry
            )
        except OSError as exc:
            log.error("metrics endpoint %s:%d not served: %s", self._host, self._port, exc)
            return
        log.info("metrics at http://%s:%d/metrics", self._host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
