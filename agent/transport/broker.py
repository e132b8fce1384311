"""Brokers the agent can find or start itself: probe, local Mosquitto, embedded amqtt.

A fresh edge box or a demo laptop often has no broker yet. The agent (and the tests) need
one in seconds without root services: Mosquitto when its binary is installed (speaks MQTT 5,
which the transport prefers), else amqtt, a pure-Python MQTT 3.1.1 broker from PyPI run on
its own asyncio loop in a thread so the rest of the process stays thread-based.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

__all__ = [
    "AmqttBroker",
    "BrokerStartError",
    "EmbeddedBroker",
    "MosquittoProcess",
    "broker_reachable",
    "find_mosquitto",
    "free_port",
    "start_embedded_broker",
]

log = logging.getLogger(__name__)

_MOSQUITTO_FALLBACKS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
_START_TIMEOUT_S = 10.0


class BrokerStartError(RuntimeError):
    """A broker we started did not come up; the message carries the tail of its log."""


class EmbeddedBroker(Protocol):
    """What a caller needs from a broker this process started, whichever kind it is."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def kind(self) -> Literal["mosquitto", "amqtt"]: ...
    @property
    def protocol(self) -> Literal["5", "3.1.1"]: ...
    def stop(self) -> None: ...


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (never 1883, which a real broker may want)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != 1883:
            return port


def _tcp_open(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def broker_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when an MQTT broker answers a CONNECT with a CONNACK within ``timeout``.

    A bare TCP connect would call any listening process a broker; a real handshake does not.
    MQTT 3.1.1 so amqtt answers too. A refusing CONNACK (bad credentials) still counts: a
    broker is there, it just wants a login.
    """
    deadline = time.monotonic() + timeout
    answered = threading.Event()
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"faultline-probe-{uuid.uuid4().hex[:12]}",
        protocol=paho.MQTTv311,
        clean_session=True,
        reconnect_on_failure=False,
    )
    client.on_connect = lambda *_args: answered.set()
    client.connect_timeout = max(0.1, deadline - time.monotonic())
    try:
        client.connect(host, port, keepalive=5)
    except (OSError, ValueError):
        return False
    try:
        while not answered.is_set() and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != paho.MQTT_ERR_SUCCESS:
                break
        return answered.is_set()
    finally:
        # Without a network thread disconnect() writes DISCONNECT and closes the socket at once.
        with contextlib.suppress(Exception):
            client.disconnect()


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary: PATH first, then where Debian and source builds put it."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _MOSQUITTO_FALLBACKS:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


MAX_QUEUED_MESSAGES = 100_000


class MosquittoProcess:
    """A private Mosquitto on a loopback port; restartable on the same port (tests need that)."""

    kind: Literal["mosquitto"] = "mosquitto"
    protocol: Literal["5"] = "5"

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        persistence: bool = False,
        autosave_interval_s: int = 1,
        binary: str | None = None,
        workdir: Path | None = None,
        config: str | None = None,
        extra_conf: Sequence[str] = (),
    ) -> None:
        """``config``: a whole mosquitto.conf to run instead of the generated one (its
        listener must be ``port``), e.g. the gateway broker's as ``balena/mosquitto``
        renders it. ``extra_conf``: lines appended to the generated mosquitto.conf (e.g. a
        TLS listener with its cafile/certfile/keyfile, an acl_file); the plain loopback
        listener on ``port`` stays, for clients that need no TLS."""
        found = binary or find_mosquitto()
        if found is None:
            raise BrokerStartError("mosquitto binary not found (apt-get install -y mosquitto)")
        self._binary = found
        self.host = host
        self.port = port if port is not None else free_port()
        self.persistence = persistence
        self.autosave_interval_s = autosave_interval_s
        self.extra_conf = list(extra_conf)
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="faultline-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._config = config
        self._write_conf()

    def _write_conf(self) -> None:
        if self._config is not None:
            self.conf_path.write_text(self._config, encoding="utf-8")
            return
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            # Mosquitto's default of 1000 queued QoS 1 messages per client silently drops
            # the rest: an agent catching up after an outage (or a burst) would lose
            # windows. Measured: a 2000-window burst lost 832 at the default.
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        if self.persistence:
            lines.append(f"persistence_location {self.workdir}/")
            # Mosquitto's default autosave (every 1800 s, or at a clean exit) loses what it
            # acknowledged since the last save when it is killed. Measured (issue 10): five
            # kill -9 restarts under 20 windows/s lost 342 of 1,200 windows at the default,
            # none at 1 s.
            lines.append(f"autosave_interval {self.autosave_interval_s}")
        if os.geteuid() == 0:
            # As root mosquitto would drop to user "mosquitto", who cannot write our temp dir.
            lines.append(f"user {getpass.getuser()}")
        lines += self.extra_conf
        self.conf_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (benchmarks read its CPU use)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def start(self, timeout: float = _START_TIMEOUT_S) -> MosquittoProcess:
        """Start (or restart) on the same port and return once it accepts MQTT connections."""
        if self.running:
            return self
        if not self.conf_path.exists():
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._write_conf()
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                [self._binary, "-c", str(self.conf_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerStartError(
                    f"mosquitto exited with {self._proc.returncode} on port {self.port}:\n"
                    f"{self.log_tail()}"
                )
            if _tcp_open(self.host, self.port, 0.2):
                log.debug("mosquitto up on %s:%d (pid %d)", self.host, self.port, self._proc.pid)
                return self
            time.sleep(0.02)
        self.kill()
        raise BrokerStartError(
            f"mosquitto did not listen on {self.host}:{self.port} within {timeout}s:\n"
            f"{self.log_tail()}"
        )

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait: Mosquitto writes its persistence file on a clean exit."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, no persistence written."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5.0)

    def cleanup(self) -> None:
        """Stop and remove the work dir if we created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MosquittoProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class AmqttBroker:
    """amqtt (MQTT 3.1.1 only) on its own asyncio loop in a daemon thread."""

    kind: Literal["amqtt"] = "amqtt"
    protocol: Literal["3.1.1"] = "3.1.1"

    def __init__(self, port: int | None = None, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port if port is not None else free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None

    def _config(self) -> dict[str, Any]:
        # Only the anonymous-auth plugin: the $SYS and packet-logging defaults are noise here.
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }

    def start(self, timeout: float = _START_TIMEOUT_S) -> AmqttBroker:
        if self._thread is not None:
            return self
        from amqtt.broker import Broker

        started = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        async def boot() -> None:
            self._broker = Broker(self._config(), loop=loop)
            await self._broker.start()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(boot())
            except BaseException as exc:  # reported to start()'s caller below
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"amqtt-{self.port}", daemon=True)
        self._thread.start()
        if not started.wait(timeout) or failure:
            self._thread = None
            detail = repr(failure[0]) if failure else f"no start within {timeout}s"
            raise BrokerStartError(f"amqtt on {self.host}:{self.port} failed: {detail}")
        log.debug("amqtt up on %s:%d", self.host, self.port)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        loop, thread, broker = self._loop, self._thread, self._broker
        self._thread = None
        if loop is None or thread is None or broker is None:
            return
        future = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
        try:
            future.result(timeout)
        except Exception:
            log.warning("amqtt on port %d did not shut down cleanly", self.port, exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()

    def __enter__(self) -> AmqttBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _OwnedMosquitto(MosquittoProcess):
    """Mosquitto whose stop() also removes its temp dir (callers of the factory own nothing)."""

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_embedded_broker(
    prefer: Literal["mosquitto", "amqtt", "auto"] = "auto",
    *,
    port: int | None = None,
) -> EmbeddedBroker:
    """Start a loopback broker: Mosquitto when installed (or asked for), else amqtt."""
    if prefer == "mosquitto" or (prefer == "auto" and find_mosquitto() is not None):
        return _OwnedMosquitto(port).start()
    return AmqttBroker(port).start()
