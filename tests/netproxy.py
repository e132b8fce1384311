"""A TCP proxy between the agent and its broker that a test can cut, stall and restore.

Loopback only: it listens on 127.0.0.1 and forwards to a loopback broker. It runs its own
asyncio loop in a daemon thread so the test's thread stays free to drive processes.

* ``cut()``: every open connection is closed at once and new ones are closed on accept
  (the broker unreachable: a pulled cable, a dead switch, a broker host down);
* ``stall_upstream()``: bytes from the agent to the broker are no longer read (they back
  up in the kernel buffers, then in the MQTT client), while bytes from the broker to the
  agent still flow: a congested or half-broken uplink, where windows keep arriving but
  nothing the agent sends gets through;
* ``restore()``: new connections are accepted and stalled bytes flow again, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from typing import Any

_CHUNK = 65536


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target_host:target_port``; see the module doc."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        if not target_host.startswith("127.") and target_host != "localhost":
            raise ValueError(f"the test proxy forwards to loopback only, not {target_host}")
        self.target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="netproxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False
        self._upstream_open: asyncio.Event | None = None
        self.connections = 0  # accepted while not cut: how often the agent (re)connected
        self.port = 0

    # ------------------------------------------------------------------ control (test thread)
    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def cut(self) -> None:
        self._call(self._set_cut(True))

    def stall_upstream(self) -> None:
        self._call(self._set_upstream(False))

    def restore(self) -> None:
        self._call(self._set_cut(False))
        self._call(self._set_upstream(True))

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # ------------------------------------------------------------------ the loop's side
    async def _start(self) -> None:
        self._upstream_open = asyncio.Event()
        self._upstream_open.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        sock: socket.socket = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])

    async def _set_cut(self, cut: bool) -> None:
        self._cut = cut
        if cut:
            for writer in list(self._writers):
                _abort(writer)
            self._writers.clear()

    async def _set_upstream(self, flowing: bool) -> None:
        assert self._upstream_open is not None
        if flowing:
            self._upstream_open.set()
        else:
            self._upstream_open.clear()

    async def _close(self) -> None:
        await self._set_cut(True)
        if self._server is not None:
            self._server.close()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._cut:
            _abort(client_w)
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(client_w)  # the broker itself is down: the agent sees a refused link
            return
        self.connections += 1
        self._writers.update((client_w, server_w))
        assert self._upstream_open is not None
        await asyncio.gather(
            self._pump(client_r, server_w, gate=self._upstream_open),
            self._pump(server_r, client_w, gate=None),
            return_exceptions=True,
        )
        for writer in (client_w, server_w):
            self._writers.discard(writer)
            _abort(writer)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        try:
            while True:
                if gate is not None:
                    await gate.wait()  # stalled: stop reading, let the sender's buffers fill
                data = await reader.read(_CHUNK)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close at once (RST where the kernel sends one), as a dead link would."""
    with contextlib.suppress(Exception):
        transport = writer.transport
        transport.abort()
