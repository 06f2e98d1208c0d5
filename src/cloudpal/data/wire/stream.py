"""The asyncio shell around SecretStream + Mux: the only part of wire/ that touches sockets.

All protocol logic lives in the sans-IO modules; this file only moves bytes
between an asyncio StreamReader/StreamWriter pair (TCP, or any byte stream) and
them, and turns mux events into an async iterator. The dialer is the Noise
initiator, as in hyperswarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from cloudpal.data.errors import DecodeError, ProtocolError
from cloudpal.data.wire.noise import KeyPair
from cloudpal.data.wire.protomux import Channel, Event, Mux
from cloudpal.data.wire.secretstream import HandshakeComplete, Message, SecretStream

__all__ = ["Connection", "connect", "serve"]

log = logging.getLogger("cloudpal.data.wire")

READ_SIZE = 256 * 1024
HANDSHAKE_TIMEOUT = 10.0


class Connection:
    """An established secret-stream connection with its mux.

    Iterate it (`async for event in conn`) for mux events; iteration ends when the
    peer closes the stream and raises ProtocolError/DecodeError if it broke the
    protocol. Channel methods (`channel.send`, `close`) may be used directly
    followed by `flush()`; the wrappers here flush for you.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stream: SecretStream,
        *,
        keepalive: float | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.stream = stream
        self.mux = Mux()
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._error: BaseException | None = None
        self._closed = False
        self._last_write = time.monotonic()
        self._keepalive = keepalive
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def establish(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        is_initiator: bool,
        key_pair: KeyPair | None = None,
        keepalive: float | None = None,
        timeout: float = HANDSHAKE_TIMEOUT,
    ) -> Connection:
        """Run the handshake over an existing byte stream; returns once it completed."""
        conn = cls(reader, writer, SecretStream(is_initiator, key_pair), keepalive=keepalive)
        try:
            await asyncio.wait_for(conn._handshake(), timeout)
        except BaseException:
            writer.close()
            raise
        conn._tasks.append(asyncio.create_task(conn._read_loop()))
        if keepalive:
            conn._tasks.append(asyncio.create_task(conn._keepalive_loop(keepalive)))
        return conn

    @property
    def handshake_hash(self) -> bytes:
        assert self.stream.handshake_hash is not None
        return self.stream.handshake_hash

    @property
    def remote_public_key(self) -> bytes:
        assert self.stream.remote_public_key is not None
        return self.stream.remote_public_key

    # -- sending ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Move queued mux frames through the secret stream into the transport."""
        for frame in self.mux.frames_to_send():
            self.stream.send(frame)
        data = self.stream.data_to_send()
        if data and not self._closed:
            self.writer.write(data)
            self._last_write = time.monotonic()
        for event in self.mux.take_events():
            self._events.put_nowait(event)

    async def drain(self) -> None:
        await self.writer.drain()

    def open_channel(self, protocol: str, id: bytes | None = None, handshake: bytes = b"") -> Channel:
        """Open, or accept a `RemoteOpen` of, channel `(protocol, id)`."""
        channel = self.mux.open_channel(protocol, id, handshake)
        self.flush()
        return channel

    def reject(self, protocol: str, id: bytes | None = None) -> bool:
        rejected = self.mux.reject(protocol, id)
        self.flush()
        return rejected

    async def send(self, channel: Channel, type: int, payload: bytes = b"") -> bool:
        """Send one message and wait for the transport buffer to drain (backpressure)."""
        sent = channel.send(type, payload)
        self.flush()
        await self.writer.drain()
        return sent

    def close_channel(self, channel: Channel) -> None:
        channel.close()
        self.flush()

    def cork(self) -> None:
        self.mux.cork()

    def uncork(self) -> None:
        self.mux.uncork()
        self.flush()

    async def close(self) -> None:
        """Close the transport (the peer sees end of stream; its channels close)."""
        if self._closed:
            return
        if not self.stream.failed:
            with contextlib.suppress(ProtocolError):
                self.flush()
        self._closed = True
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()

    # -- receiving ----------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        event = await self._events.get()
        if event is None:
            self._events.put_nowait(None)  # stay exhausted for later readers
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        return event

    def ready_events(self, limit: int = 1024) -> list[Event]:
        """Events already received, without waiting (to handle a burst in one go)."""
        out: list[Event] = []
        while len(out) < limit and not self._events.empty():
            event = self._events.get_nowait()
            if event is None:  # end of stream: leave it for the iterator
                self._events.put_nowait(None)
                break
            out.append(event)
        return out

    async def next_event(self, timeout: float | None = None) -> Event:
        """The next event; StopAsyncIteration at end of stream, TimeoutError after `timeout`."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def _handshake(self) -> None:
        self.stream.start()
        self.flush()
        while not self.stream.handshake_complete:
            data = await self.reader.read(READ_SIZE)
            if not data:
                raise ProtocolError("connection closed during the handshake")
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        for event in self.stream.receive_data(data):
            if isinstance(event, Message):
                for mux_event in self.mux.receive_frame(event.plaintext):
                    self._events.put_nowait(mux_event)
            else:
                assert isinstance(event, HandshakeComplete)
        self.flush()

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                self._feed(data)
        except (ProtocolError, DecodeError) as exc:
            log.debug("peer broke the protocol: %s", exc)
            self._error = exc
        except (OSError, ConnectionError) as exc:
            log.debug("connection lost: %s", exc)
        finally:
            for event in self.mux.shutdown():
                self._events.put_nowait(event)
            self._events.put_nowait(None)
            if self._error is not None:
                await self.close()

    async def _keepalive_loop(self, interval: float) -> None:
        """Send an empty message after `interval` s without writes (Hypercore uses 5 s)."""
        while not self._closed and not self.stream.failed:
            await asyncio.sleep(max(0.0, self._last_write + interval - time.monotonic()))
            idle = time.monotonic() - self._last_write >= interval
            if idle and not self._closed and not self.stream.failed:
                self.stream.send_keepalive()
                self.flush()


async def connect(
    host: str, port: int, key_pair: KeyPair | None = None, *, keepalive: float | None = None
) -> Connection:
    """Dial a peer over TCP as the Noise initiator."""
    reader, writer = await asyncio.open_connection(host, port)
    return await Connection.establish(
        reader, writer, is_initiator=True, key_pair=key_pair, keepalive=keepalive
    )


async def serve(
    handler: Callable[[Connection], Awaitable[None]],
    host: str,
    port: int,
    key_pair: KeyPair | None = None,
    *,
    keepalive: float | None = None,
) -> asyncio.Server:
    """Listen on TCP; each accepted socket becomes a responder Connection passed to `handler`,
    closed when the handler returns. Failed handshakes are logged and dropped."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = await Connection.establish(
                reader, writer, is_initiator=False, key_pair=key_pair, keepalive=keepalive
            )
        except (ProtocolError, DecodeError, OSError, ConnectionError, TimeoutError) as exc:
            log.debug("handshake with a client failed: %s", exc)
            return
        try:
            await handler(conn)
        finally:
            await conn.close()

    return await asyncio.start_server(on_client, host, port)
