"""``faultline run --processes N``: N agent processes of one gateway, one stop signal.

Python runs one thread of Python at a time per process, and the hot path (decoding,
feature extraction) holds that lock most of the time: a second worker thread gains
nothing (issue 12 measured 1 or 2 workers alike). Processes do scale, and the MQTT broker
already knows how to split one stream between consumers: each process subscribes to the
sensor filters through one MQTT 5 shared subscription (``$share/<group>/...``), which the
broker balances. There is no dispatcher of ours in between.

Each process is a whole agent with its own identity and state:

* client id ``<gateway id>-p<i>``: its own persistent session, retained status and
  command topic (``<prefix>/commands/all`` still reaches every process);
* state folder ``<data_dir>/process-<i>``: its own outbox and answered-window table, so a
  crashed process's unacknowledged windows are redelivered to it (its session) and
  answered once;
* one library folder, built (if missing) by the supervisor before any process starts, and
  watched for new versions by each.

The supervisor forwards SIGTERM/SIGINT to every process and waits for them to drain; a
process that dies on its own is started again after a back-off (1 s doubling to 30 s,
reset after a minute of health), its exit logged with its code.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from faultline.agent.settings import Settings

log = logging.getLogger(__name__)

RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0  # a process that ran this long restarts at once when it dies
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def default_share_group(settings: Settings) -> str:
    """The configured group, else one named after the gateway: its processes share the
    stream, other gateways (other client ids) keep theirs unless configured alike."""
    return settings.topics.shared_group or settings.resolved_client_id()


def process_env(settings: Settings, index: int, group: str) -> dict[str, str]:
    """Environment overrides that make process ``index`` a distinct member of ``group``.

    Overrides win over the configuration file and the inherited environment (they are
    set last), so a device variable cannot make two processes share an outbox.
    """
    data_dir = settings.resolved_data_dir() / f"process-{index}"
    outbox = settings.resolved_outbox_path()
    if settings.outbox.path is not None:
        outbox_path = outbox.with_name(f"{outbox.stem}-p{index}{outbox.suffix}")
    else:
        outbox_path = data_dir / "outbox.sqlite"
    metrics = settings.metrics
    port = metrics.port + index if metrics.port else 0
    return {
        "FAULTLINE__METRICS__PORT": str(port),
        # One page per gateway: it reads the broker, so it shows every process's alerts.
        **({} if index == 0 else {"FAULTLINE__DASHBOARD__ENABLED": "false"}),
        "FAULTLINE__MQTT__CLIENT_ID": f"{settings.resolved_client_id()}-p{index}",
        "FAULTLINE__TOPICS__SHARED_GROUP": group,
        "FAULTLINE__DATA_DIR": str(data_dir),
        "FAULTLINE__OUTBOX__PATH": str(outbox_path),
        "FAULTLINE__LIBRARY__PATH": str(settings.resolved_library_path()),
        "FAULTLINE__PIPELINE__PROCESSES": "1",
    }


@dataclass
class _Member:
    index: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = RESTART_MIN_S
    restart_at: float | None = None
    exits: list[int] = field(default_factory=list)


class Supervisor:
    """Starts, restarts and stops N ``faultline run`` processes."""

    def __init__(
        self,
        settings: Settings,
        processes: int,
        *,
        argv: Sequence[str],
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self._argv = list(argv)
        self._base_env = dict(os.environ if base_env is None else base_env)
        self.group = default_share_group(settings)
        self._members = [_Member(i, process_env(settings, i, self.group)) for i in range(processes)]
        self._drain_s = settings.pipeline.drain_timeout_s * 2 + 10.0

    @property
    def pids(self) -> list[int]:
        return [m.proc.pid for m in self._members if m.proc is not None]

    def run(self, stop: threading.Event) -> int:
        """Run until ``stop``; returns 0 when every process stopped cleanly."""
        for member in self._members:
            self._start(member)
        log.info(
            "supervising %d agent processes on shared group %r: pids %s",
            len(self._members),
            self.group,
            self.pids,
        )
        try:
            while not stop.wait(0.5):
                now = time.monotonic()
                for member in self._members:
                    self._check(member, now)
        finally:
            codes = self._stop_all()
        return 0 if all(code == 0 for code in codes) else 1

    def _start(self, member: _Member) -> None:
        env = {**self._base_env, **member.env}
        # preexec_fn only calls prctl through a libc handle loaded beforehand: nothing in it
        # takes a lock another thread could hold at fork.
        member.proc = subprocess.Popen(
            self._argv,
            env=env,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
        member.started_at = time.monotonic()
        member.restart_at = None

    def _check(self, member: _Member, now: float) -> None:
        proc = member.proc
        if proc is not None and proc.poll() is not None:
            code = proc.returncode
            member.exits.append(code)
            ran_s = now - member.started_at
            if ran_s >= HEALTHY_AFTER_S:
                member.backoff_s = RESTART_MIN_S
            log.error(
                "agent process %d (pid %d) exited with code %d after %.1f s; restarting in %.0f s",
                member.index,
                proc.pid,
                code,
                ran_s,
                member.backoff_s,
            )
            member.proc = None
            member.restart_at = now + member.backoff_s
            member.backoff_s = min(member.backoff_s * 2, RESTART_MAX_S)
        if member.proc is None and member.restart_at is not None and now >= member.restart_at:
            self._start(member)

    def _stop_all(self) -> list[int]:
        for member in self._members:
            if member.proc is not None and member.proc.poll() is None:
                member.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._drain_s
        codes = []
        for member in self._members:
            if member.proc is None:
                continue
            proc = member.proc
            try:
                codes.append(proc.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                log.error(
                    "agent process %d did not stop in %.0f s; killed", member.index, self._drain_s
                )
                proc.kill()
                codes.append(proc.wait())
        return codes


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the supervisor dies (even by SIGKILL),
    so no agent process outlives its supervisor and holds the share group's windows."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def child_argv(config: str | None, log_level: str | None) -> list[str]:
    """The command line of one agent process (``faultline run`` without --processes)."""
    argv = [sys.executable, "-m", "faultline.agent.cli"]
    if log_level:
        argv += ["--log-level", log_level]
    argv.append("run")
    if config:
        argv += ["--config", str(Path(config))]
    return argv
