"""Sharing cores over TCP: `seed` serves them, `clone` downloads one.

Thin asyncio functions over `wire.stream` (transport) and `Replication`
(channels and peers); the protocol itself lives in the sans-IO modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from cloudpal.data.core import CoreStore, Hypercore
from cloudpal.data.errors import ProtocolError
from cloudpal.data.replication import Replication
from cloudpal.data.wire.stream import Connection, connect, serve

log = logging.getLogger("cloudpal.data.net")

KEEPALIVE = 5.0  # seconds of write silence before an empty frame, as JS does


async def seed(store: CoreStore, cores: Sequence[Hypercore], host: str, port: int, *,
               on_ready: Callable[[tuple[str, int]], None] | None = None,
               stop: asyncio.Event | None = None) -> None:
    """Serve `cores` (and any other core of the store a peer asks for) until `stop` is set."""
    offered = {c.discovery_key: c for c in cores}

    def lookup(dk: bytes) -> Hypercore | None:
        return offered.get(dk) or store.by_discovery_key(dk)

    async def handler(conn: Connection) -> None:
        rep = Replication(conn, lookup, name="seed")
        for core in cores:
            rep.add(core)
        try:
            await rep.run()
        except ProtocolError as exc:
            log.warning("dropped a peer: %s", exc)
        except Exception:  # one broken connection must not take the others down
            log.exception("replication with a peer failed")

    server = await serve(handler, host, port, keepalive=KEEPALIVE)
    sock = server.sockets[0].getsockname()
    if on_ready:
        on_ready((sock[0], sock[1]))
    try:
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop.wait()
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


async def clone(store: CoreStore, key: bytes, host: str, port: int, *, start: int = 0,
                end: int | None = None, live: bool = False, encryption_key: bytes | None = None,
                name: str | None = None, timeout: float | None = 60.0,
                on_progress: Callable[[int, int | None], None] | None = None,
                stop: asyncio.Event | None = None) -> Hypercore:
    """Download `key` from a peer, verifying every block: [start, end), where end None means
    the writer's length when we connect; or, with `live`, keep following the writer until
    `stop` is set or the peer leaves. Raises ProtocolError if the peer misbehaves or leaves
    before the download is complete."""
    core = store.replica(key, encryption_key=encryption_key, name=name)
    try:
        conn = await asyncio.wait_for(connect(host, port, keepalive=KEEPALIVE), timeout)
    except ProtocolError as exc:
        log.warning("handshake with %s:%d failed: %s", host, port, exc)
        raise
    rep = Replication(conn, name="clone")
    peer = rep.add(core)
    runner = asyncio.create_task(rep.run())
    try:
        if not live and end is None:
            if not await rep.wait_until(lambda: peer.remote_synced, timeout):
                # the connection ended before the peer said how long the core is
                await asyncio.wait({runner}, timeout=5)
                if runner.done() and not runner.cancelled() and runner.exception() is not None:
                    raise ProtocolError(f"download failed: {runner.exception()}")
                raise ProtocolError("download failed: the peer closed the connection before "
                                    "announcing the core")
            end = peer.remote_length
        peer.want(start, None if live else end)
        rep.conn.flush()

        def finished() -> bool:
            if on_progress is not None:
                on_progress(max(0, core.contiguous_length - start), None if end is None else end - start)
            return not live and peer.satisfied()

        waiters = {asyncio.create_task(rep.wait_until(finished)), runner}
        if stop is not None:
            waiters.add(asyncio.create_task(stop.wait()))
        await asyncio.wait(waiters, timeout=None if live else timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        for task in waiters:
            if task is not runner:
                task.cancel()
        if not live and not peer.satisfied():
            if runner.done() and not runner.cancelled() and runner.exception() is not None:
                raise ProtocolError(f"download failed: {runner.exception()}")
            raise ProtocolError(f"download incomplete: the peer left or timed out with "
                                f"{core.contiguous_length} of {end} blocks here")
    finally:
        await conn.close()
        with contextlib.suppress(asyncio.CancelledError, ProtocolError):
            await runner
    return core
