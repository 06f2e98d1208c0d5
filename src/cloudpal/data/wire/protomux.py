"""protomux 3.12.1 as a sans-IO multiplexer over secret-stream messages.

Each secret-stream message is one frame `uint channelId ‖ uint type ‖ payload`.
Channel 0 carries control messages: batch (0), open (1), reject (2), close (3).
A side tags its channel messages with its *own* local id (announced in its
open); the receiver maps that remote id to its channel. A channel
`(protocol, id)` is fully open once both sides sent an open for it.

The id bookkeeping mirrors JS exactly (local ids from 1, freed ids reused
last-in-first-out, an id closed before the remote acknowledged it is kept until
the remote's open or reject arrives), since a JS peer validates the ids we
announce and we validate its ids the same way it does. Message payloads are
opaque bytes; the hypercore message codec lives in messages.py.

Sans-IO: `receive_frame()` returns events; every call that produces output
queues frames that `frames_to_send()` hands out, each frame one plaintext for
`SecretStream.send`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from cloudpal.data.encoding import Reader, Writer
from cloudpal.data.errors import DecodeError, ProtocolError

__all__ = [
    "Channel",
    "ChannelClosed",
    "ChannelMessage",
    "ChannelOpened",
    "ChannelRejected",
    "Event",
    "Mux",
    "RemoteOpen",
    "RemoteOpenCancelled",
]

MAX_BATCH = 8 * 1024 * 1024  # JS flushes a batch once it reaches this size
MAX_PENDING_BYTES = 32 * 1024 * 1024  # buffered for remote opens nobody accepted yet (JS pauses instead)
MAX_BATCH_DEPTH = 8  # JS never nests batches; bound recursion on hostile input

_BATCH, _OPEN, _REJECT, _CLOSE = 0, 1, 2, 3


class Channel:
    """One side of a `(protocol, id)` channel. Create with `Mux.open_channel`."""

    def __init__(self, mux: Mux, info: _Info, protocol: str, id: bytes | None) -> None:
        self.protocol = protocol
        self.id = id
        self.local_id = 0  # ours, announced in our open; 0 once closed
        self.remote_id = 0  # theirs; 0 until they opened (or once closed)
        self.opened = False  # both opens seen (stays True after close)
        self.closed = False
        self.remote_handshake: bytes | None = None
        self.user_data: object = None  # free slot for the owner (e.g. a replication peer)
        self._mux = mux
        self._info = info

    def send(self, type: int, payload: bytes = b"") -> bool:
        """Queue message `type` with `payload`; False (nothing sent) once the channel is closed.

        Allowed before the channel is fully open: the remote buffers it until it accepts.
        """
        if self.closed:
            return False
        self._mux._send_message(self.local_id, Writer().uint(type).raw(payload).value())
        return True

    def close(self) -> None:
        """Send close; the remote just forgets the channel (there is no close acknowledgement)."""
        if self.closed:
            return
        local_id = self.local_id
        self._mux._close_channel(self)
        self._mux._write_control(_CLOSE, Writer().uint(local_id).value())

    def cork(self) -> None:
        self._mux.cork()

    def uncork(self) -> None:
        self._mux.uncork()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open" if self.opened else "opening"
        id_hex = self.id.hex() if self.id else None
        ids = f"local={self.local_id} remote={self.remote_id}"
        return f"<Channel {self.protocol!r} id={id_hex} {state} {ids}>"


@dataclass(frozen=True)
class ChannelOpened:
    """Both sides opened `channel`; `remote_handshake` is the rest of the remote's open message."""

    channel: Channel
    remote_handshake: bytes


@dataclass(frozen=True)
class ChannelMessage:
    """A message on an open channel. Types a protocol does not know should be ignored (as JS does)."""

    channel: Channel
    type: int
    payload: bytes


@dataclass(frozen=True)
class ChannelClosed:
    """The remote closed `channel` (our own `close()` produces no event)."""

    channel: Channel


@dataclass(frozen=True)
class ChannelRejected:
    """The remote refused our open of `channel`; it is closed now."""

    channel: Channel


@dataclass(frozen=True)
class RemoteOpen:
    """The remote opened a channel we have no open for. Answer with `Mux.open_channel(protocol, id, …)`
    to accept or `Mux.reject(protocol, id)`; until then its messages are buffered."""

    protocol: str
    id: bytes | None
    handshake: bytes
    remote_id: int


@dataclass(frozen=True)
class RemoteOpenCancelled:
    """The remote closed a channel from a `RemoteOpen` before we answered; we rejected it for them
    (the reject is the acknowledgement that lets the remote reuse its id)."""

    protocol: str
    id: bytes | None
    remote_id: int


Event = ChannelOpened | ChannelMessage | ChannelClosed | ChannelRejected | RemoteOpen | RemoteOpenCancelled


@dataclass(eq=False)
class _Info:
    """Per-(protocol, id) bookkeeping (JS `_infos` entries)."""

    protocol: str
    id: bytes | None
    opened: int = 0
    incoming: list[int] = field(default_factory=list)  # remote ids awaiting our answer
    outgoing: list[int] = field(default_factory=list)  # our local ids awaiting the remote's open

    @property
    def key(self) -> tuple[str, bytes]:
        return (self.protocol, self.id or b"")


@dataclass(eq=False)
class _Remote:
    """A remote id in use: the open's handshake, and messages buffered until we accept."""

    info: _Info
    handshake: bytes
    pending: list[tuple[int, bytes]] | None
    session: Channel | None = None


def _pending_size(payload: bytes) -> int:
    return 512 + len(payload)  # JS byteSize: a fixed overhead per message keeps tiny floods bounded too


class Mux:
    """The channel multiplexer of one connection."""

    def __init__(self) -> None:
        self._local: list[Channel | None] = []
        self._free: list[int] = []  # zero-based slots in _local, reused LIFO like JS
        self._remote: list[_Remote | None] = []
        self._infos: dict[tuple[str, bytes], _Info] = {}
        self._corked = 0
        self._batch: list[tuple[int, bytes]] | None = None
        self._batch_size = 0
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._buffered = 0
        self._failed = False

    # -- public API -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Channel]:
        """Channels not closed yet."""
        return (c for c in self._local if c is not None)

    def is_idle(self) -> bool:
        return len(self._local) == len(self._free)

    @property
    def failed(self) -> bool:
        return self._failed

    def open_channel(
        self, protocol: str, id: bytes | None = None, handshake: bytes = b"", *, unique: bool = True
    ) -> Channel:
        """Open (or accept, if the remote already opened it) channel `(protocol, id)`.

        When it accepts, `ChannelOpened` and the buffered messages are queued as events:
        get them from `take_events()` or the next `receive_frame()`.
        """
        id = id or None
        info = self._get(protocol, id)
        if unique and info.opened > 0:
            raise ValueError(f"channel {protocol!r} with this id is already open")
        channel = Channel(self, info, protocol, id)
        remote_id = info.incoming.pop(0) if info.incoming else 0
        channel.remote_id = remote_id

        slot = self._free.pop() if self._free else len(self._local)
        if slot == len(self._local):
            self._local.append(None)
        self._local[slot] = channel
        channel.local_id = slot + 1
        info.opened += 1
        if remote_id == 0:
            info.outgoing.append(channel.local_id)
        w = Writer().uint(channel.local_id).string(protocol).optional_buffer(id).raw(handshake)
        self._write_control(_OPEN, w.value())

        if remote_id:
            remote = self._remote[remote_id - 1]
            assert remote is not None, "an incoming remote id always has a slot"
            self._fully_open(channel, remote)
        return channel

    def reject(self, protocol: str, id: bytes | None = None) -> bool:
        """Refuse the oldest unanswered remote open of `(protocol, id)`; False if there is none."""
        info = self._infos.get((protocol, id or b""))
        if info is None or not info.incoming:
            return False
        self._reject_remote(info.incoming.pop(0))
        self._gc(info)
        return True

    def cork(self) -> None:
        """Collect outgoing messages into one batch frame until the matching `uncork()`."""
        self._corked += 1
        if self._corked == 1:
            self._batch = []
            self._batch_size = 1

    def uncork(self) -> None:
        if self._corked == 0:
            raise RuntimeError("uncork() without cork()")
        self._corked -= 1
        if self._corked == 0:
            assert self._batch is not None
            self._send_batch(self._batch)
            self._batch = None

    def frames_to_send(self) -> list[bytes]:
        """Frames produced since the last call, each one plaintext for the secret stream, in order."""
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[Event]:
        """Events produced outside `receive_frame` (accepting a remote open, `shutdown`)."""
        events, self._events = self._events, []
        return events

    def receive_frame(self, frame: bytes) -> list[Event]:
        """Handle one decrypted secret-stream message. Raises ProtocolError/DecodeError on violations,
        after which the mux is unusable (JS destroys the stream)."""
        if self._failed:
            raise ProtocolError("mux has failed")
        if frame:  # JS ignores empty frames
            try:
                reader = Reader(frame)
                self._decode(reader.uint(), reader, 0)
            except (ProtocolError, DecodeError):
                self._failed = True
                raise
        return self.take_events()

    def shutdown(self) -> list[Event]:
        """The transport ended: close every channel locally (no frames) and report them closed."""
        for channel in list(self):
            self._close_channel(channel)
            self._events.append(ChannelClosed(channel))
        return self.take_events()

    # -- incoming -------------------------------------------------------------------------------

    def _decode(self, remote_id: int, reader: Reader, depth: int) -> None:
        type = reader.uint()
        if remote_id == 0:
            self._on_control(type, reader, depth)
            return
        remote = self._remote[remote_id - 1] if remote_id <= len(self._remote) else None
        if remote is None:
            return  # closed or never opened: ignored like JS (may be a message still in flight)
        payload = reader.raw()
        if remote.pending is not None:
            self._buffered += _pending_size(payload)
            if self._buffered > MAX_PENDING_BYTES:
                raise ProtocolError("remote sent too much to channels we have not accepted")
            remote.pending.append((type, payload))
            return
        assert remote.session is not None
        self._events.append(ChannelMessage(remote.session, type, payload))

    def _on_control(self, type: int, reader: Reader, depth: int) -> None:
        if type == _BATCH:
            self._on_batch(reader, depth + 1)
        elif type == _OPEN:
            self._on_open(reader)
        elif type == _REJECT:
            self._on_reject(reader.uint())
        elif type == _CLOSE:
            self._on_close(reader.uint())
        # other control types are ignored, as in JS

    def _on_batch(self, reader: Reader, depth: int) -> None:
        if depth > MAX_BATCH_DEPTH:
            raise ProtocolError("batch nested too deeply")
        end = reader.end
        remote_id = reader.uint()
        while reader.pos < end:
            length = reader.uint()
            if length == 0:
                remote_id = reader.uint()
                continue
            sub_end = min(reader.pos + length, end)
            self._decode(remote_id, Reader(reader.data, reader.pos, sub_end), depth)
            reader.pos = sub_end

    def _on_open(self, reader: Reader) -> None:
        remote_id = reader.uint()
        # JS decodes strings leniently (invalid UTF-8 becomes U+FFFD); such a protocol just goes unclaimed.
        protocol = reader.buffer().decode("utf-8", "replace")
        id = reader.optional_buffer()
        handshake = reader.raw()
        if remote_id == 0:
            raise ProtocolError("invalid open message: channel id 0")
        rid = remote_id - 1
        if rid == len(self._remote):  # the remote may grow its ids by one
            self._remote.append(None)
        if rid >= len(self._remote) or self._remote[rid] is not None:
            raise ProtocolError(f"invalid open message: channel id {remote_id} is not available")

        info = self._get(protocol, id)
        if info.outgoing:  # answers an open of ours
            local_id = info.outgoing.pop(0)
            channel = self._local[local_id - 1]
            if channel is None:  # we closed it before the answer came: now the id can be reused
                self._free.append(local_id - 1)
                self._gc(info)
                return
            remote = _Remote(info, handshake, None, channel)
            self._remote[rid] = remote
            channel.remote_id = remote_id
            self._fully_open(channel, remote)
            return

        self._remote[rid] = _Remote(info, handshake, [])
        info.incoming.append(remote_id)
        self._events.append(RemoteOpen(protocol, id, handshake, remote_id))

    def _on_reject(self, local_id: int) -> None:
        for info in self._infos.values():
            if local_id not in info.outgoing:
                continue
            info.outgoing.remove(local_id)
            channel = self._local[local_id - 1]
            self._free.append(local_id - 1)
            if channel is not None:
                self._close_channel(channel)
                self._events.append(ChannelRejected(channel))
            self._gc(info)
            return
        raise ProtocolError(f"invalid reject message: channel {local_id} was not being opened")

    def _on_close(self, remote_id: int) -> None:
        if remote_id == 0 or remote_id > len(self._remote):
            return
        remote = self._remote[remote_id - 1]
        if remote is None:
            return
        if remote.session is not None:
            channel = remote.session
            self._close_channel(channel)
            self._events.append(ChannelClosed(channel))
            return
        # Closed before we answered its open. JS leaves the slot taken until its pair handler
        # answers; answering with a reject now frees the id on both sides at once.
        info = remote.info
        if remote_id in info.incoming:
            info.incoming.remove(remote_id)
        self._reject_remote(remote_id)
        self._gc(info)
        self._events.append(RemoteOpenCancelled(info.protocol, info.id, remote_id))

    # -- state changes --------------------------------------------------------------------------

    def _fully_open(self, channel: Channel, remote: _Remote) -> None:
        remote.session = channel
        channel.opened = True
        channel.remote_handshake = remote.handshake
        self._events.append(ChannelOpened(channel, remote.handshake))
        pending, remote.pending = remote.pending, None
        for type, payload in pending or ():
            self._buffered -= _pending_size(payload)
            self._events.append(ChannelMessage(channel, type, payload))

    def _close_channel(self, channel: Channel) -> None:
        """JS Channel._close: free the remote slot, and our id too if the remote had acknowledged it."""
        channel.closed = True
        info = channel._info
        info.opened -= 1
        if channel.remote_id > 0:
            self._remote[channel.remote_id - 1] = None
            channel.remote_id = 0
            self._free.append(channel.local_id - 1)
        self._local[channel.local_id - 1] = None
        channel.local_id = 0
        self._gc(info)

    def _reject_remote(self, remote_id: int) -> None:
        remote = self._remote[remote_id - 1]
        if remote is not None and remote.pending:
            self._buffered -= sum(_pending_size(p) for _, p in remote.pending)
        self._remote[remote_id - 1] = None
        self._write_control(_REJECT, Writer().uint(remote_id).value())

    def _get(self, protocol: str, id: bytes | None) -> _Info:
        key = (protocol, id or b"")
        info = self._infos.get(key)
        if info is None:
            info = self._infos[key] = _Info(protocol, id or None)
        return info

    def _gc(self, info: _Info) -> None:
        if info.opened == 0 and not info.outgoing and not info.incoming:
            self._infos.pop(info.key, None)

    # -- outgoing -------------------------------------------------------------------------------

    def _write_control(self, type: int, body: bytes) -> None:
        self._send_message(0, bytes([type]) + body)

    def _send_message(self, local_id: int, type_and_payload: bytes) -> None:
        if self._batch is None:
            self._out.append(Writer().uint(local_id).raw(type_and_payload).value())
            return
        if self._batch_size >= MAX_BATCH:
            self._send_batch(self._batch)
            self._batch = []
            self._batch_size = 1
        if not self._batch or self._batch[-1][0] != local_id:
            self._batch_size += 1 + len(Writer().uint(local_id).value())
        self._batch_size += len(Writer().uint(len(type_and_payload)).value()) + len(type_and_payload)
        self._batch.append((local_id, type_and_payload))

    def _send_batch(self, batch: list[tuple[int, bytes]]) -> None:
        """`00 00 <id> (<len> <type‖payload>)*`, with `00 <id>` wherever the channel changes."""
        if not batch:
            return
        prev = batch[0][0]
        w = Writer().uint(0).uint(_BATCH).uint(prev)
        for local_id, message in batch:
            if local_id != prev:
                w.uint(0).uint(local_id)
                prev = local_id
            w.buffer(message)
        self._out.append(w.value())
