"""`cloudpal up`: the node daemon, composing the pillars on one event loop.

Start order: lock the home, open state, bring up the network, then the control
socket and the enrollment endpoint. Stop runs the same list backwards, always,
so SIGTERM or Ctrl-C leaves no interface, firewall table or process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from cloudpal.compute import AppService, app_routes
from cloudpal.compute import migrate as migrate_compute
from cloudpal.control import SOCKET_NAME
from cloudpal.errors import HostError, StateError
from cloudpal.net import NetOptions, NetworkService, control_routes, enroll_routes, migrate
from cloudpal.state import Database, ensure_home

log = logging.getLogger("cloudpal.node")


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the node owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def home_lock(home: Path) -> Iterator[None]:
    fd = os.open(home / "node.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(f"another node is already running with home {home}") from None
        yield
    finally:
        os.close(fd)


def _unix_listener(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


def _tcp_listener(port: int) -> socket.socket:
    """Dual-stack listener on every address (devices enroll over the underlay)."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        addr: tuple[Any, ...] = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        addr = ("0.0.0.0", port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise HostError(f"cannot listen for enrollment on TCP port {port}: {exc.strerror}") from exc
    sock.listen(128)
    return sock


class Node:
    def __init__(self, home: Path, net_opts: NetOptions) -> None:
        self.home = home
        self.net_opts = net_opts
        self.servers: list[tuple[_QuietServer, asyncio.Task[None]]] = []
        self.stopping = asyncio.Event()

    async def _serve(self, app: Starlette, sock: socket.socket) -> None:
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        server = _QuietServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        self.servers.append((server, task))
        while not server.started:
            if task.done():
                task.result()
                raise HostError("an HTTP listener stopped during start-up")
            await asyncio.sleep(0.01)

    async def run(self, on_ready: Callable[[dict[str, Any]], None] | None = None) -> None:
        ensure_home(self.home)
        with home_lock(self.home):
            db = Database(self.home)
            try:
                migrate(db)
                migrate_compute(db)
                await self._run(db, on_ready)
            finally:
                db.close()

    async def _run(self, db: Database, on_ready: Callable[[dict[str, Any]], None] | None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        net = NetworkService(db, self.home, self.net_opts)
        apps = AppService(db, self.home, names=net)
        socket_path = self.home / SOCKET_NAME
        try:
            await net.start()
            await apps.start()
            enroll_sock = _tcp_listener(net.settings.enroll_port)
            await self._serve(Starlette(routes=enroll_routes(net)), enroll_sock)
            await self._serve(Starlette(routes=[*control_routes(net), *app_routes(apps)]),
                              _unix_listener(socket_path))
            status = net.status()
            if on_ready:
                on_ready(status)
            await self.stopping.wait()
            log.info("stopping")
        finally:
            for server, _ in self.servers:
                server.should_exit = True
            for _, task in self.servers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 5)
            self.servers.clear()
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()
            with contextlib.suppress(Exception):
                await apps.stop()
            await net.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
