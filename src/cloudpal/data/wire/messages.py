"""The ten `hypercore/alpha` replication messages and the channel-open handshake, sans-IO.

Byte-for-byte the encodings of hypercore 11.37.1 lib/messages.js `wire`: a JS peer
must read what we write, and we must read what it writes. That dictates the quirks
kept here: optional trailing fields (noData flags/reason, want/unwant flags only
when non-zero, request priority), `range` omitting a length of 1, and decoding
that, like protomux, ignores bytes after the last field. The data message's
manifest is kept as raw bytes (the rest of the payload); `cloudpal.data` decodes
manifests elsewhere.

Every decoding failure is a `DecodeError`; an unknown type number is the subclass
`UnknownMessage` so a replicator can ignore it as JS does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from cloudpal.data.crypto import Node
from cloudpal.data.encoding import Reader, Writer
from cloudpal.data.errors import DecodeError

__all__ = [
    "MESSAGE_TYPES",
    "Bitfield",
    "Cancel",
    "ChannelHandshake",
    "Data",
    "DataBlock",
    "DataHash",
    "DataSeek",
    "DataUpgrade",
    "Extension",
    "Message",
    "NoData",
    "Node",
    "Range",
    "Request",
    "RequestBlock",
    "RequestSeek",
    "RequestUpgrade",
    "Sync",
    "UnknownMessage",
    "Unwant",
    "Want",
    "decode_message",
    "encode_message",
]


class UnknownMessage(DecodeError):
    """A type number beyond the channel's message list (JS protomux ignores these)."""

    def __init__(self, type: int) -> None:
        super().__init__(f"unknown hypercore message type {type}")
        self.type = type


# ---- shared parts -------------------------------------------------------------------


# Proofs carry Merkle tree nodes: the one Node type of the data pillar.

def _write_node(w: Writer, n: Node) -> None:
    w.uint(n.index).uint(n.size).fixed(n.hash, 32)


def _read_node(r: Reader) -> Node:
    return Node(index=r.uint(), size=r.uint(), hash=r.fixed(32))


def _write_nodes(w: Writer, nodes: tuple[Node, ...]) -> None:
    w.array(nodes, _write_node)


def _read_nodes(r: Reader) -> tuple[Node, ...]:
    return tuple(r.array(_read_node))


def _flags(*bits: bool) -> int:
    return sum(1 << i for i, bit in enumerate(bits) if bit)


# ---- channel open -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelHandshake:
    """The `hypercore/alpha` open payload: seeks flag (JS always sends it) and the capability."""

    seeks: bool
    capability: bytes

    def encode(self) -> bytes:
        return Writer().uint(1 if self.seeks else 0).fixed(self.capability, 32).value()

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> ChannelHandshake:
        r = Reader(payload)
        flags = r.uint()
        return cls(seeks=bool(flags & 1), capability=r.fixed(32))


# ---- 0 sync -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sync:
    """The sender's length/fork, its ack of ours (`remote_length`) and what it is doing."""

    TYPE: ClassVar[int] = 0

    fork: int
    length: int
    remote_length: int
    can_upgrade: bool = False
    uploading: bool = False
    downloading: bool = False
    has_manifest: bool = False
    allow_push: bool = False

    def _encode(self, w: Writer) -> None:
        w.uint(_flags(self.can_upgrade, self.uploading, self.downloading, self.has_manifest,
                      self.allow_push))
        w.uint(self.fork).uint(self.length).uint(self.remote_length)

    @classmethod
    def _decode(cls, r: Reader) -> Sync:
        flags = r.uint()
        return cls(fork=r.uint(), length=r.uint(), remote_length=r.uint(),
                   can_upgrade=bool(flags & 1), uploading=bool(flags & 2), downloading=bool(flags & 4),
                   has_manifest=bool(flags & 8), allow_push=bool(flags & 16))


# ---- 1 request ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestBlock:
    """A block (or hash) index and how many tree nodes up from it the requester lacks."""

    index: int
    nodes: int


@dataclass(frozen=True, slots=True)
class RequestSeek:
    bytes: int
    padding: int


@dataclass(frozen=True, slots=True)
class RequestUpgrade:
    """Grow the requester's tree from `start` (its length) by `length` blocks."""

    start: int
    length: int


@dataclass(frozen=True, slots=True)
class Request:
    """Ask for a block/hash/seek proof and/or an upgrade; `id` is echoed by data/noData.

    `priority` is a trailing field written only when truthy (JS uses 1 for `get()`):
    None and 0 both mean "absent" on the wire, as in JS.
    """

    TYPE: ClassVar[int] = 1

    id: int
    fork: int
    block: RequestBlock | None = None
    hash: RequestBlock | None = None
    seek: RequestSeek | None = None
    upgrade: RequestUpgrade | None = None
    manifest: bool = False
    priority: int | None = None

    def _encode(self, w: Writer) -> None:
        w.uint(_flags(self.block is not None, self.hash is not None, self.seek is not None,
                      self.upgrade is not None, self.manifest, bool(self.priority)))
        w.uint(self.id).uint(self.fork)
        if self.block is not None:
            w.uint(self.block.index).uint(self.block.nodes)
        if self.hash is not None:
            w.uint(self.hash.index).uint(self.hash.nodes)
        if self.seek is not None:
            w.uint(self.seek.bytes).uint(self.seek.padding)
        if self.upgrade is not None:
            w.uint(self.upgrade.start).uint(self.upgrade.length)
        if self.priority:
            w.uint(self.priority)

    @classmethod
    def _decode(cls, r: Reader) -> Request:
        flags = r.uint()
        id_, fork = r.uint(), r.uint()
        block = RequestBlock(r.uint(), r.uint()) if flags & 1 else None
        hash_ = RequestBlock(r.uint(), r.uint()) if flags & 2 else None
        seek = RequestSeek(r.uint(), r.uint()) if flags & 4 else None
        upgrade = RequestUpgrade(r.uint(), r.uint()) if flags & 8 else None
        priority = r.uint() if flags & 32 else None
        return cls(id=id_, fork=fork, block=block, hash=hash_, seek=seek, upgrade=upgrade,
                   manifest=bool(flags & 16), priority=priority)


# ---- 2 cancel -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cancel:
    """The requester abandons request `request`; it must not be answered."""

    TYPE: ClassVar[int] = 2

    request: int

    def _encode(self, w: Writer) -> None:
        w.uint(self.request)

    @classmethod
    def _decode(cls, r: Reader) -> Cancel:
        return cls(request=r.uint())


# ---- 3 data -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataBlock:
    """A block value and its proof nodes (siblings, bottom-up; order matters to JS)."""

    index: int
    value: bytes
    nodes: tuple[Node, ...] = ()


@dataclass(frozen=True, slots=True)
class DataHash:
    index: int
    nodes: tuple[Node, ...] = ()


@dataclass(frozen=True, slots=True)
class DataSeek:
    bytes: int
    nodes: tuple[Node, ...] = ()


@dataclass(frozen=True, slots=True)
class DataUpgrade:
    """Upgrade proof: echoed range, roots/siblings, nodes up to the signed length, signature.

    An empty signature is indistinguishable from none on the wire (optionalBuffer).
    """

    start: int
    length: int
    nodes: tuple[Node, ...] = ()
    additional_nodes: tuple[Node, ...] = ()
    signature: bytes | None = None


@dataclass(frozen=True, slots=True)
class Data:
    """The answer to request `request`. `manifest` is the encoded manifest (rest of the payload)."""

    TYPE: ClassVar[int] = 3

    request: int
    fork: int
    block: DataBlock | None = None
    hash: DataHash | None = None
    seek: DataSeek | None = None
    upgrade: DataUpgrade | None = None
    manifest: bytes | None = None

    def _encode(self, w: Writer) -> None:
        if self.manifest is not None and not self.manifest:
            raise ValueError("an empty manifest cannot be decoded by JS; use None")
        w.uint(_flags(self.block is not None, self.hash is not None, self.seek is not None,
                      self.upgrade is not None, self.manifest is not None))
        w.uint(self.request).uint(self.fork)
        if self.block is not None:
            w.uint(self.block.index).buffer(self.block.value)
            _write_nodes(w, self.block.nodes)
        if self.hash is not None:
            w.uint(self.hash.index)
            _write_nodes(w, self.hash.nodes)
        if self.seek is not None:
            w.uint(self.seek.bytes)
            _write_nodes(w, self.seek.nodes)
        if self.upgrade is not None:
            u = self.upgrade
            w.uint(u.start).uint(u.length)
            _write_nodes(w, u.nodes)
            _write_nodes(w, u.additional_nodes)
            w.optional_buffer(u.signature)
        if self.manifest is not None:
            w.raw(self.manifest)

    @classmethod
    def _decode(cls, r: Reader) -> Data:
        flags = r.uint()
        request, fork = r.uint(), r.uint()
        block = DataBlock(r.uint(), r.buffer(), _read_nodes(r)) if flags & 1 else None
        hash_ = DataHash(r.uint(), _read_nodes(r)) if flags & 2 else None
        seek = DataSeek(r.uint(), _read_nodes(r)) if flags & 4 else None
        upgrade = None
        if flags & 8:
            upgrade = DataUpgrade(start=r.uint(), length=r.uint(), nodes=_read_nodes(r),
                                  additional_nodes=_read_nodes(r), signature=r.optional_buffer())
        manifest = None
        if flags & 16:
            manifest = r.raw()
            if not manifest:  # JS fails reading the manifest's version
                raise DecodeError("data message flags a manifest but carries none")
        return cls(request=request, fork=fork, block=block, hash=hash_, seek=seek, upgrade=upgrade,
                   manifest=manifest)


# ---- 4 noData -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoData:
    """Request `request` cannot be served. reason: 1 NOT_AVAILABLE, 2 INVALID_REQUEST.

    The reason trails only when truthy (flags bit0); None and 0 both mean "absent",
    and old peers may omit the flags entirely.
    """

    TYPE: ClassVar[int] = 4

    request: int
    reason: int | None = None

    def _encode(self, w: Writer) -> None:
        w.uint(self.request)
        if self.reason:
            w.uint(1).uint(self.reason)
        else:
            w.uint(0)

    @classmethod
    def _decode(cls, r: Reader) -> NoData:
        request = r.uint()
        flags = r.uint() if not r.done() else 0
        return cls(request=request, reason=r.uint() if flags & 1 else None)


# ---- 5 want, 6 unwant ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Span:
    start: int
    length: int
    any: bool = False

    def _encode(self, w: Writer) -> None:
        w.uint(self.start).uint(self.length)
        if self.any:  # flags are written only when non-zero
            w.uint(1)

    @staticmethod
    def _fields(r: Reader) -> tuple[int, int, bool]:
        start, length = r.uint(), r.uint()
        flags = r.uint() if not r.done() else 0
        return start, length, bool(flags & 1)


@dataclass(frozen=True, slots=True)
class Want(_Span):
    """Asks the remote to announce what it has in [start, start+length) (JS: aligned power-of-two spans)."""

    TYPE: ClassVar[int] = 5

    @classmethod
    def _decode(cls, r: Reader) -> Want:
        start, length, any_ = cls._fields(r)
        return cls(start=start, length=length, any=any_)


@dataclass(frozen=True, slots=True)
class Unwant(_Span):
    """Withdraws an earlier `Want` of the same span."""

    TYPE: ClassVar[int] = 6

    @classmethod
    def _decode(cls, r: Reader) -> Unwant:
        start, length, any_ = cls._fields(r)
        return cls(start=start, length=length, any=any_)


# ---- 7 bitfield ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bitfield:
    """Blocks held from `start` (a multiple of 32): bit j of word w is block start + 32w + j."""

    TYPE: ClassVar[int] = 7

    start: int
    words: tuple[int, ...]

    def _encode(self, w: Writer) -> None:
        if any(not 0 <= word <= 0xFFFFFFFF for word in self.words):
            raise ValueError("bitfield words must be uint32")
        w.uint(self.start).uint32array(self.words)

    @classmethod
    def _decode(cls, r: Reader) -> Bitfield:
        start = r.uint()
        count = r.uint()  # JS's uint32array has no element limit (unlike `array`); the bytes bound it
        return cls(start=start, words=struct.unpack(f"<{count}I", r.fixed(4 * count)))


# ---- 8 range ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Range:
    """The sender has (or dropped, `drop`) blocks [start, start+length); a length of 1 is only a flag."""

    TYPE: ClassVar[int] = 8

    start: int
    length: int
    drop: bool = False

    def _encode(self, w: Writer) -> None:
        w.uint(_flags(self.drop, self.length == 1)).uint(self.start)
        if self.length != 1:
            w.uint(self.length)

    @classmethod
    def _decode(cls, r: Reader) -> Range:
        flags = r.uint()
        start = r.uint()
        return cls(start=start, length=1 if flags & 2 else r.uint(), drop=bool(flags & 1))


# ---- 9 extension --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Extension:
    """A user extension message; name "" means the sender's previous extension name."""

    TYPE: ClassVar[int] = 9

    name: str
    message: bytes

    def _encode(self, w: Writer) -> None:
        w.string(self.name).raw(self.message)

    @classmethod
    def _decode(cls, r: Reader) -> Extension:
        # JS decodes names leniently (U+FFFD for bad UTF-8) rather than failing the stream.
        name = r.buffer().decode("utf-8", errors="replace")
        return cls(name=name, message=r.raw())


# ---- dispatch -----------------------------------------------------------------------

Message: TypeAlias = Sync | Request | Cancel | Data | NoData | Want | Unwant | Bitfield | Range | Extension

MESSAGE_TYPES: Mapping[int, type[Message]] = {
    cls.TYPE: cls for cls in (Sync, Request, Cancel, Data, NoData, Want, Unwant, Bitfield, Range, Extension)
}

_DECODERS: dict[int, Callable[[Reader], Message]] = {t: cls._decode for t, cls in MESSAGE_TYPES.items()}


def encode_message(msg: Message) -> tuple[int, bytes]:
    """(protomux type, payload) of `msg`. Out-of-range fields raise ValueError."""
    w = Writer()
    msg._encode(w)
    return msg.TYPE, w.value()


def decode_message(type: int, payload: bytes | bytearray | memoryview) -> Message:
    """Decode a channel message; bytes after the last field are ignored, as protomux does.

    Raises UnknownMessage for a type outside 0..9 and DecodeError for anything malformed.
    """
    decoder = _DECODERS.get(type)
    if decoder is None:
        raise UnknownMessage(type)
    return decoder(Reader(payload))
