"""The wake proxy: the node's listeners for every app, which boot a sleeping app on first contact.

A client's connection is accepted and left unread while the app wakes, so whatever the client has
already sent waits in the kernel's socket buffer and reaches the app intact. Concurrent first
connections all await the same wake. The proxy also sees every byte, so it is where an app's
activity (open connections, last traffic) is measured for the idle stop and the runaway policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cloudpal.errors import HostError

log = logging.getLogger("cloudpal.compute.proxy")

CHUNK = 256 << 10

# wake(app, guest_port) -> the 127.0.0.1 port that reaches that guest port once the app is up
Waker = Callable[[str, int], Awaitable[int]]


@dataclass
class Activity:
    """What the proxy knows about one app's clients."""

    connections: int = 0
    last: float = field(default_factory=time.monotonic)
    bytes_in: int = 0
    bytes_out: int = 0
    accepted: int = 0

    def touch(self) -> None:
        self.last = time.monotonic()

    def idle_for(self) -> float:
        return 0.0 if self.connections else time.monotonic() - self.last


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    guest_port: int


class WakeProxy:
    def __init__(self, wake: Waker) -> None:
        self._wake = wake
        self._servers: dict[str, list[asyncio.Server]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._clients: set[asyncio.StreamWriter] = set()
        self.activity: dict[str, Activity] = {}

    def listening(self, app: str) -> list[tuple[str, int]]:
        out = []
        for server in self._servers.get(app, []):
            for sock in server.sockets:
                name = sock.getsockname()
                out.append((name[0], name[1]))
        return out

    async def serve(self, app: str, listens: list[Listen]) -> None:
        """Open the app's listeners (replacing any it had); all of them or none."""
        await self.close(app)
        servers: list[asyncio.Server] = []
        try:
            for item in listens:
                family = socket.AF_INET6 if ":" in item.host else socket.AF_INET
                handler = self._handler(app, item.guest_port)
                try:
                    server = await asyncio.start_server(handler, item.host, item.port, family=family,
                                                        reuse_address=True)
                except OSError as exc:
                    raise HostError(f"app {app!r} cannot listen on {item.host} port {item.port}: "
                                    f"{exc.strerror}") from None
                servers.append(server)
        except BaseException:
            for server in servers:
                server.close()
            raise
        self._servers[app] = servers
        self.activity.setdefault(app, Activity())

    async def close(self, app: str) -> None:
        for server in self._servers.pop(app, []):
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def close_all(self) -> None:
        for app in list(self._servers):
            await self.close(app)
        # Closing the sockets ends every relay; cancelling the handler tasks instead would make
        # asyncio's stream callback log the cancellation as an error.
        for writer in list(self._clients):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    def forget(self, app: str) -> None:
        self.activity.pop(app, None)

    def _handler(self, app: str, guest_port: int
                 ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            self._clients.add(writer)
            act = self.activity.setdefault(app, Activity())
            act.connections += 1
            act.accepted += 1
            act.touch()
            try:
                await self._relay(app, guest_port, reader, writer, act)
            finally:
                act.connections -= 1
                act.touch()
                self._tasks.discard(task)
                self._clients.discard(writer)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        return handle

    async def _relay(self, app: str, guest_port: int, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, act: Activity) -> None:
        try:
            port = await self._wake(app, guest_port)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except Exception as exc:  # the client sees a closed connection; the owner sees why
            log.warning("app %s: connection dropped, the app could not be woken: %s", app, exc)
            return
        self._clients.add(up_writer)
        try:
            async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, inbound: bool) -> None:
                try:
                    while data := await src.read(CHUNK):
                        dst.write(data)
                        if inbound:
                            act.bytes_in += len(data)
                        else:
                            act.bytes_out += len(data)
                        act.touch()
                        await dst.drain()
                    if dst.can_write_eof():
                        dst.write_eof()
                except (ConnectionError, OSError):
                    dst.close()
            a = asyncio.ensure_future(pump(reader, up_writer, True))
            b = asyncio.ensure_future(pump(up_reader, writer, False))
            try:
                await asyncio.gather(a, b)
            finally:
                a.cancel()
                b.cancel()
        finally:
            self._clients.discard(up_writer)
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()
