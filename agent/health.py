"""The agent's health, as a container health check (and a person) asks for it.

A running ``faultline run`` rewrites a small JSON file in its data folder every second
(``<data_dir>/health.json``): its state, whether its broker link is up, which library it
serves, how deep its pipeline queue is and when it last finished a window. ``faultline
health`` reads that file and exits 0 or 1 with one line saying why, so the image's
``HEALTHCHECK`` reports the agent's own view instead of "the process exists".

States: ``starting`` (loading or building the library; healthy), ``ok``, ``unhealthy``
(broker unreachable for longer than ``health.offline_after_s``, or windows queued and none
finished for ``health.stuck_after_s``), ``config_error`` (the agent is waiting for a
corrected device variable, see ``faultline run --on-config-error wait``) and
``supervising`` (``--processes N``: the file lists each process's own health file).
A file not rewritten for ``MAX_AGE_S`` means a hung or dead agent.

The file is written by whoever is in charge at the moment: a :class:`Beacon` thread
during start-up, while waiting on a configuration error and while supervising processes;
the agent's own main loop (:class:`Heartbeat`) once it runs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faultline.agent.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from faultline.agent.app import Agent

__all__ = [
    "HEALTH_FILE",
    "MAX_AGE_S",
    "Beacon",
    "HealthVerdict",
    "Heartbeat",
    "config_error_fields",
    "fallback_data_dir",
    "health_path",
    "judge",
    "locate",
    "read_health",
    "write_health",
]

log = logging.getLogger(__name__)

HEALTH_FILE = "health.json"
MAX_AGE_S = 30.0  # rewritten every second; older than this: the writer is hung or gone
HEALTHY_STATES = ("ok", "starting")


def fallback_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the health file goes when the configuration cannot be loaded at all.

    The same rule as :meth:`Settings.resolved_data_dir`, read from the raw environment,
    so ``run`` (writing) and ``health`` (reading) agree while both fail to load settings.
    """
    env = os.environ if env is None else env
    raw = env.get("FAULTLINE__DATA_DIR", "").strip()
    if raw and Path(raw).is_absolute():
        return Path(raw)
    xdg = env.get("XDG_DATA_HOME", "")
    root = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return root / "faultline"


def health_path(settings: Settings | None, env: Mapping[str, str] | None = None) -> Path:
    data_dir = fallback_data_dir(env) if settings is None else settings.resolved_data_dir(env)
    return data_dir / HEALTH_FILE


def write_health(path: Path, fields: Mapping[str, Any]) -> None:
    """Replace ``path`` atomically (a reader never sees half a file)."""
    body = {**fields, "written_at": time.time(), "pid": os.getpid()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, separators=(",", ":"), default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_health(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def config_error_fields(error: ConfigError) -> dict[str, Any]:
    problems = [str(p) for p in error.problems]
    return {
        "state": "config_error",
        "reason": f"config error: {problems[0] if problems else error}",
        "problems": problems,
    }


class Beacon:
    """A daemon thread that rewrites the health file every ``interval_s`` from ``fields``.

    A write that fails (read-only or full disk) is logged once and retried: the health
    file must never be the reason the agent stops.
    """

    def __init__(
        self, path: Path, fields: Callable[[], Mapping[str, Any]], interval_s: float = 1.0
    ) -> None:
        self.path = path
        self._fields = fields
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faultline-health", daemon=True)
        self._failing = False

    def start(self) -> Beacon:
        self.write()
        self._thread.start()
        return self

    def write(self) -> None:
        try:
            write_health(self.path, self._fields())
            self._failing = False
        except OSError as exc:
            if not self._failing:
                log.warning("cannot write the health file %s: %s", self.path, exc)
            self._failing = True

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2 * self._interval_s + 1)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.write()


class Heartbeat:
    """The running agent's health, judged from its own counters once per main-loop turn."""

    def __init__(self, agent: Agent, *, clock: Callable[[], float] = time.time) -> None:
        self._agent = agent
        self._clock = clock
        cfg = agent.settings.health
        self._stuck_after_s = cfg.stuck_after_s
        self._offline_after_s = cfg.offline_after_s
        self._progress = -1
        self._last_progress_at = clock()
        self._offline_since: float | None = None
        self._beacon = Beacon(health_path(agent.settings), self.fields)

    def beat(self) -> None:
        """Called from ``Agent.run_forever``'s loop, about once a second."""
        self._beacon.write()

    def fields(self) -> dict[str, Any]:
        agent, now = self._agent, self._clock()
        counters = agent.counters
        # A window leaves the queue as an alert or as an error: either is progress.
        progress = counters.get("alerts") + counters.get("rejected")
        if progress != self._progress:
            self._progress, self._last_progress_at = progress, now
        connected = agent.transport.connected
        if connected:
            self._offline_since = None
        elif self._offline_since is None:
            self._offline_since = now
        backlog = agent.pipeline.backlog
        outbox = agent.outbox.stats()
        state, reason = "ok", "ok"
        idle_s = now - self._last_progress_at
        mqtt = agent.settings.mqtt
        if self._offline_since is not None and now - self._offline_since >= self._offline_after_s:
            state = "unhealthy"
            reason = (
                f"broker {mqtt.host}:{mqtt.port} unreachable for {now - self._offline_since:.0f} s"
            )
        elif backlog > 0 and idle_s >= self._stuck_after_s:
            state = "unhealthy"
            reason = f"pipeline stuck: {backlog} windows queued, none finished for {idle_s:.0f} s"
        else:
            link = "connected" if connected else "reconnecting"
            reason = (
                f"ok: {link} to {mqtt.host}:{mqtt.port}, library {agent.library.current.version}, "
                f"queue {backlog}, outbox {outbox.get('depth')}"
            )
        return {
            "state": state,
            "reason": reason,
            "agent": agent.client_id,
            "connected": connected,
            "library": agent.library.current.version,
            "queue_depth": backlog,
            "windows_done": progress,
            "last_progress_at": self._last_progress_at,
            "outbox": {"mode": outbox.get("mode"), "depth": outbox.get("depth")},
        }


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    healthy: bool
    reason: str


def judge(path: Path, *, now: float | None = None, max_age_s: float = MAX_AGE_S) -> HealthVerdict:
    """The verdict on one health file (and, for a supervisor, on each of its processes)."""
    now = time.time() if now is None else now
    data = read_health(path)
    if data is None:
        return HealthVerdict(False, f"no readable health file at {path} (agent not started?)")
    age = now - float(data.get("written_at", 0.0))
    if age > max_age_s:
        return HealthVerdict(
            False, f"health file {path} not updated for {age:.0f} s (agent hung or stopped)"
        )
    state = str(data.get("state", "?"))
    if state == "supervising":
        members = [judge(Path(p), now=now, max_age_s=max_age_s) for p in data.get("members", [])]
        sick = [m.reason for m in members if not m.healthy]
        if sick:
            return HealthVerdict(False, f"{len(sick)} of {len(members)} processes: {sick[0]}")
        return HealthVerdict(True, f"ok: {len(members)} processes healthy")
    reason = str(data.get("reason", state))
    return HealthVerdict(state in HEALTHY_STATES, reason)


def locate(config: str | None, env: Mapping[str, str] | None = None) -> Path:
    """The health file of the agent that ``faultline run --config config`` starts."""
    try:
        settings: Settings | None = load_settings(config, env)
    except ConfigError:
        settings = None  # the agent is in config-error mode and wrote where this points
    return health_path(settings, env)
