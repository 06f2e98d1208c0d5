"""Replicate cores over one connection, as Corestore does: one `hypercore/alpha`
channel per core, opened by us for the cores we bring and accepted for remote
opens of cores the store already holds.

This is the asyncio edge: it moves events between the wire `Connection` and the
sans-IO `Peer`s. A peer that breaks the protocol or sends anything that does not
verify is disconnected and logged; the cores keep only what verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from cloudpal.data.crypto import capability
from cloudpal.data.errors import DecodeError, ProtocolError
from cloudpal.data.replicator import Peer
from cloudpal.data.wire.messages import (
    ChannelHandshake,
    Message,
    UnknownMessage,
    decode_message,
    encode_message,
)
from cloudpal.data.wire.protomux import (
    Channel,
    ChannelClosed,
    ChannelMessage,
    ChannelOpened,
    ChannelRejected,
    RemoteOpen,
)

if TYPE_CHECKING:
    from cloudpal.data.core import Hypercore
    from cloudpal.data.wire.stream import Connection

log = logging.getLogger("cloudpal.data.replication")

PROTOCOL = "hypercore/alpha"


class Replication:
    """The replication of any number of cores over one established connection."""

    def __init__(self, conn: Connection, lookup: Callable[[bytes], Hypercore | None] | None = None,
                 name: str = "peer") -> None:
        self.conn = conn
        self.lookup = lookup
        self.name = name
        self.peers: dict[bytes, Peer] = {}  # by discovery key
        self.cores: dict[bytes, Hypercore] = {}
        self.changed = asyncio.Condition()
        self._listeners: list[tuple[Hypercore, Callable[[], None]]] = []
        self.ended = False

    @property
    def is_initiator(self) -> bool:
        return self.conn.stream.is_initiator

    def add(self, core: Hypercore) -> Peer:
        """Open this core's channel (or accept the remote's open of it)."""
        dk = core.discovery_key
        if dk in self.peers:
            return self.peers[dk]
        cap = capability(self.is_initiator, core.key, self.conn.handshake_hash)
        handshake = ChannelHandshake(seeks=True, capability=cap).encode()
        channel = self.conn.mux.open_channel(PROTOCOL, dk, handshake)
        def send(msg: Message, ch: Channel = channel) -> None:
            self._send(ch, msg)

        peer = Peer(core, send, name=self.name)
        channel.user_data = peer
        self.peers[dk] = peer
        self.cores[dk] = core

        def on_change(p: Peer = peer) -> None:
            p.on_local_change()
            self._flush()

        core.listeners.append(on_change)
        self._listeners.append((core, on_change))
        self._flush()
        return peer

    def _send(self, channel: Channel, msg: Message) -> None:
        type_, payload = encode_message(msg)
        channel.send(type_, payload)

    def _flush(self) -> None:
        with contextlib.suppress(ProtocolError):
            self.conn.flush()

    async def run(self) -> None:
        """Process the connection until it ends; ProtocolError if the peer misbehaved."""
        try:
            try:
                async for event in self.conn:
                    # Handle everything that has arrived as one burst: the cores store what
                    # it verified in one transaction and announce it once.
                    with contextlib.ExitStack() as burst:
                        for core in list(self.cores.values()):
                            burst.enter_context(core.deferred())
                        self._on_event(event)
                        for more in self.conn.ready_events():
                            self._on_event(more)
                    self._flush()
                    await self.conn.drain()
                    async with self.changed:
                        self.changed.notify_all()
            except (ConnectionError, OSError):
                # The read loop hangs up on a peer that broke the protocol; a write racing with
                # that fails with "connection lost". Report the peer's error, not our write.
                error = self.conn._error
                if isinstance(error, (ProtocolError, DecodeError)):
                    raise error from None
                raise
        except (ProtocolError, DecodeError) as exc:
            log.warning("%s: disconnected: %s", self.name, exc)
            await self.conn.close()
            raise ProtocolError(str(exc)) from exc
        except (ConnectionError, OSError) as exc:
            log.info("%s: connection lost: %s", self.name, exc)
        finally:
            self.ended = True
            for core, listener in self._listeners:
                with contextlib.suppress(ValueError):
                    core.listeners.remove(listener)
            async with self.changed:
                self.changed.notify_all()

    def _on_event(self, event: object) -> None:
        if isinstance(event, RemoteOpen):
            core = None
            if event.protocol == PROTOCOL and event.id is not None:
                core = self.cores.get(event.id) or (self.lookup(event.id) if self.lookup else None)
            if core is None:
                self.conn.mux.reject(event.protocol, event.id)
            else:
                self.add(core)
        elif isinstance(event, ChannelOpened):
            peer = event.channel.user_data
            assert isinstance(peer, Peer)
            hs = ChannelHandshake.decode(event.remote_handshake)
            core = self.cores[event.channel.id or b""]
            expected = capability(not self.is_initiator, core.key, self.conn.handshake_hash)
            if hs.capability != expected:
                raise ProtocolError("remote sent an invalid replication capability")
            self.conn.mux.cork()
            peer.on_open()
            self.conn.mux.uncork()
        elif isinstance(event, ChannelMessage):
            peer = event.channel.user_data
            if not isinstance(peer, Peer):
                return
            try:
                msg = decode_message(event.type, event.payload)
            except UnknownMessage:
                return
            peer.receive(msg)
        elif isinstance(event, (ChannelClosed, ChannelRejected)):
            peer = event.channel.user_data
            if isinstance(peer, Peer):
                peer.opened = False

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until `predicate()` holds (checked after every event); False if the
        connection ended first."""
        async def waiter() -> bool:
            async with self.changed:
                while not predicate():
                    if self.ended:
                        return predicate()
                    await self.changed.wait()
                return True

        return await asyncio.wait_for(waiter(), timeout)
