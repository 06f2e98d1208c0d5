"""The node's DNS server: names for the overlay, a forwarder for everything else.

Devices ask the node for ``NAME.pal`` (like Tailscale's MagicDNS) and, when their
traffic is full-tunnel, for every other name too, so the node answers its zone
authoritatively and relays the rest to the host's own resolvers.

The protocol half is sans-IO, as in h11: :func:`handle_query` maps query bytes to
a :class:`Reply`, a :class:`Forward` decision or ``None`` (drop), touching no
socket and never raising, so it can be tested and fuzzed on its own.
:class:`DnsServer` is the thin asyncio shell that owns the UDP and TCP sockets and
talks to the upstream resolvers.

dnslib reads and writes the wire format. Its parser raises more than DNSError on
hostile input, so handle_query turns any parse failure into FORMERR. It also
rejects labels that are not UTF-8, which DNS allows: such queries get FORMERR
too. Upstream answers are relayed byte for byte, never re-encoded.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import re
import secrets
import socket
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from dnslib import (
    AAAA,
    CLASS,
    EDNS0,
    NS,
    OPCODE,
    PTR,
    QTYPE,
    RCODE,
    RR,
    SOA,
    A,
    Buffer,
    DNSBuffer,
    DNSError,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)

from cloudpal.errors import HostError, InvalidInput

__all__ = ["DnsServer", "Forward", "Record", "Reply", "Zone", "handle_query"]

log = logging.getLogger(__name__)

_CLASSES = frozenset({CLASS.IN, CLASS.reverse["*"]})  # the classes we answer for: IN and ANY
_TRANSFERS = frozenset({QTYPE.AXFR, QTYPE.IXFR})
_BADVERS = 16  # extended RCODE (RFC 6891): the upper 8 bits go in the OPT record
_COPIED_FLAGS = 0x7800 | 0x0100 | 0x0010  # opcode, RD and CD (RFC 1035, 6840)
_UDP_PLAIN = 512  # limit for clients without EDNS (RFC 1035)
_UDP_EDNS = 1232  # what we advertise and send at most: avoids IP fragmentation (DNS flag day 2020)

# SOA timers. Nobody transfers this zone, so only MINIMUM (negative-cache TTL) matters.
_SOA_REFRESH = 3600
_SOA_RETRY = 600
_SOA_EXPIRE = 86400

_Name = tuple[bytes, ...]  # labels, as received (case preserved)
_Question = tuple[_Name, int, int]  # lower-cased name, type, class
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_DECIMAL_RE = re.compile(rb"0|[1-9][0-9]{0,2}")
_HEX = frozenset(b"0123456789abcdef")


# --------------------------------------------------------------------------
# Public data types


@dataclass(frozen=True)
class Record:
    """The overlay addresses one name resolves to."""

    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]


@dataclass(frozen=True)
class Reply:
    """Send ``data`` back to the client as the complete answer."""

    data: bytes


@dataclass(frozen=True)
class Forward:
    """The name is not ours: send ``query`` upstream, relay the answer under ``query_id``."""

    query: bytes
    query_id: int


# --------------------------------------------------------------------------
# Zone


@dataclass(frozen=True, slots=True)
class _Entry:
    record: Record
    a: tuple[Any, ...]  # dnslib A / AAAA rdata, ready to answer with
    aaaa: tuple[Any, ...]
    addresses: tuple[_Address, ...]  # parsed, for the reverse (PTR) map


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """Everything a query reads, swapped as one object so it never sees half an update."""

    names: dict[bytes, _Entry]
    reverse: dict[_Address, tuple[Any, ...]]  # dnslib PTR rdata, sorted by name
    serial: int


class Zone:
    """The names the node answers for; replaced wholesale with set_records when devices change."""

    def __init__(self, origin: str = "pal", ttl: int = 30) -> None:
        labels = _split_name(origin.lower()) if isinstance(origin, str) else None
        if not labels or not all(_LABEL_RE.fullmatch(label) for label in labels):
            raise InvalidInput(f"The DNS zone {origin!r} is not a valid domain name.")
        if len(".".join(labels)) > 190:
            raise InvalidInput(f"The DNS zone {origin!r} is too long to leave room for names.")
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= 86400:
            raise InvalidInput(f"The DNS TTL {ttl!r} must be whole seconds, at most 86400.")
        self._origin = ".".join(labels)
        self._labels: _Name = tuple(label.encode("ascii") for label in labels)
        self._ttl = ttl
        self._snap = _Snapshot({}, {}, int(time.time()) & 0xFFFFFFFF)
        self._ptr_cache: dict[bytes, Any] = {}

    @property
    def origin(self) -> str:
        """The zone's domain, lower-case and without a trailing dot (``"pal"``)."""
        return self._origin

    @property
    def ttl(self) -> int:
        """TTL of every answer, and of NXDOMAIN caching: small, because devices come and go."""
        return self._ttl

    def set_records(self, records: Mapping[str, Record]) -> None:
        """Replace every name (``"laptop"``, without the zone) at once.

        A name is one DNS label, compared case-insensitively. Raises InvalidInput, before
        changing anything, if a name or address cannot be served.
        """
        names: dict[bytes, _Entry] = {}
        reverse: dict[_Address, list[bytes]] = {}
        for raw_name, record in records.items():
            name = raw_name.lower() if isinstance(raw_name, str) else ""
            if not _LABEL_RE.fullmatch(name):
                raise InvalidInput(
                    f"The device name {raw_name!r} cannot be a DNS name; use at most 63 letters, "
                    "digits and hyphens."
                )
            key = name.encode("ascii")
            if key in names:
                raise InvalidInput(f"The device name {raw_name!r} is used twice (case is ignored).")
            entry = self._snap.names.get(key)
            if entry is None or entry.record != record:  # unchanged names are not re-parsed
                v4 = [_parse_v4(text, raw_name) for text in record.ipv4]
                v6 = [_parse_v6(text, raw_name) for text in record.ipv6]
                entry = _Entry(
                    Record(tuple(map(str, v4)), tuple(map(str, v6))),
                    tuple(A(tuple(a.packed)) for a in v4),
                    tuple(AAAA(tuple(a.packed)) for a in v6),
                    tuple([*v4, *v6]),
                )
            names[key] = entry
            for address in entry.addresses:
                reverse.setdefault(address, []).append(key)
        ptr_cache = self._ptr_cache
        self._ptr_cache = {}
        for key in names:
            ptr = ptr_cache.get(key) or PTR(DNSLabel((key, *self._labels)))
            self._ptr_cache[key] = ptr
        ptrs = {
            address: tuple(self._ptr_cache[key] for key in sorted(keys))
            for address, keys in reverse.items()
        }
        # Serial only has to grow; time-based so a restarted node does not go backwards.
        serial = max((self._snap.serial + 1) & 0xFFFFFFFF, int(time.time()) & 0xFFFFFFFF)
        self._snap = _Snapshot(names, ptrs, serial)

    def lookup(self, name: str) -> Record | None:
        """The addresses of ``name``, relative (``laptop``) or in the zone (``laptop.pal.``)."""
        labels = _split_name(name.lower()) if isinstance(name, str) else None
        if labels is None:
            return None
        origin = self._origin.split(".")
        if len(labels) == len(origin) + 1 and labels[1:] == origin:
            labels = labels[:1]
        if len(labels) != 1 or not _LABEL_RE.fullmatch(labels[0]):
            return None
        entry = self._snap.names.get(labels[0].encode("ascii"))
        return None if entry is None else entry.record


def _split_name(name: str) -> list[str] | None:
    """Labels of a presentation-format name (one trailing dot allowed), None if malformed."""
    stripped = name[:-1] if name.endswith(".") else name
    if not stripped:
        return []
    labels = stripped.split(".")
    return None if any(not label for label in labels) else labels


def _parse_v4(text: str, owner: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise InvalidInput(f"{text!r} of device {owner!r} is not an IPv4 address.") from None


def _parse_v6(text: str, owner: str) -> ipaddress.IPv6Address:
    try:
        address = ipaddress.IPv6Address(text)
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise InvalidInput(f"{text!r} of device {owner!r} is not an IPv6 address.") from None
    if address.scope_id:
        raise InvalidInput(f"{text!r} of device {owner!r} must not carry a %scope.")
    return address


# --------------------------------------------------------------------------
# Wire format (dnslib)


def _header(data: bytes) -> Any | None:
    """The message's dnslib DNSHeader, or None if it is too short to have one."""
    try:
        return DNSHeader.parse(Buffer(data))
    except DNSError:
        return None


def _parse(data: bytes) -> Any | None:
    """The message as a dnslib DNSRecord if it is a well-formed one-question query, else None."""
    try:
        record = DNSRecord.parse(data)
        if len(record.questions) != 1:
            return None
        question = DNSBuffer()
        record.q.pack(question)  # raises for a label over 63 bytes or a name over 255
    except Exception:  # DNSError mostly, but pointer cycles raise RecursionError, and so on
        return None
    if data[12 : 12 + len(question.data)] != question.data:
        return None  # compressed: nothing but the header precedes the question to point at
    if any(rr.rtype == QTYPE.OPT for rr in (*record.rr, *record.auth)):
        return None  # RFC 6891 6.1.1: one OPT, root owner, additional section
    opts = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
    if len(opts) > 1 or any(rr.rname.label for rr in opts):
        return None
    return record


def _opt(query: Any) -> Any | None:
    """The query's EDNS OPT record, if any."""
    return next((rr for rr in query.ar if rr.rtype == QTYPE.OPT), None)


def _question(data: bytes) -> _Question | None:
    """The lower-cased question of a message, to match upstream replies to our query.

    Only the header and question are read: an upstream answer is relayed as is, and a
    record further on that dnslib cannot parse must not cost the client its answer.
    """
    buffer = DNSBuffer(data)
    try:
        if DNSHeader.parse(buffer).q != 1:
            return None
        question = DNSQuestion.parse(buffer)
    except Exception:  # see _parse
        return None
    return tuple(label.lower() for label in question.qname.label), question.qtype, question.qclass


def _reply(
    header: Any,
    query: Any | None,
    rcode: int,
    *,
    aa: bool = False,
    tc: bool = False,
    answers: Sequence[Any] = (),
    authority: Sequence[Any] = (),
) -> bytes:
    """Encode a response to ``header``'s message; with ``query``, echo its question and EDNS."""
    reply = DNSRecord(
        DNSHeader(
            id=header.id,
            bitmap=header.bitmap & _COPIED_FLAGS,
            qr=1,
            ra=1,
            aa=int(aa),
            tc=int(tc),
            rcode=rcode & 0xF,
        ),
        q=None if query is None else query.q,
        rr=list(answers),
        auth=list(authority),
    )
    opt = None if query is None else _opt(query)
    if opt is not None:
        flags = "do" if opt.edns_do else ""  # DNSSEC OK is copied (RFC 3225)
        reply.add_ar(EDNS0(udp_len=_UDP_EDNS, ext_rcode=rcode >> 4, flags=flags))
    return bytes(reply.pack())


def _failure(query: bytes, rcode: int) -> bytes:
    """An error reply (SERVFAIL...) to a query handle_query already accepted."""
    return _reply(_header(query), _parse(query), rcode)


# --------------------------------------------------------------------------
# Answering


def handle_query(zone: Zone, data: bytes, *, udp: bool = False) -> Reply | Forward | None:
    """What to do with one DNS message from a client.

    Returns None for what deserves no answer (too short for a header, or itself a
    response: answering those enables reflection loops). A message with a header but
    a body that does not parse gets FORMERR. ``udp=True`` truncates an answer that
    exceeds the client's UDP buffer (512 bytes, or its EDNS size up to 1232) so it
    retries over TCP.
    """
    data = bytes(data)
    header = _header(data)
    if header is None or header.qr:
        return None
    query = _parse(data)
    if header.opcode != OPCODE.QUERY:  # not IQUERY, STATUS, NOTIFY, UPDATE...
        return Reply(_reply(header, query, RCODE.NOTIMP))
    if query is None:
        return Reply(_reply(header, None, RCODE.FORMERR))
    opt = _opt(query)
    if opt is not None and opt.edns_ver != 0:
        return Reply(_reply(header, query, _BADVERS))
    answer = _answer(zone, query.q)
    if answer is None:
        return Forward(data, header.id)
    rcode, aa, answers, authority = answer
    wire = _reply(header, query, rcode, aa=aa, answers=answers, authority=authority)
    if udp:
        limit = _UDP_PLAIN if opt is None else min(max(opt.edns_len, _UDP_PLAIN), _UDP_EDNS)
        if len(wire) > limit:
            wire = _reply(header, query, rcode, aa=aa, tc=True)
    return Reply(wire)


_Answer = tuple[int, bool, list[Any], list[Any]]  # rcode, AA, answer and authority RRs


def _answer(zone: Zone, question: Any) -> _Answer | None:
    """Our answer for the question (a dnslib DNSQuestion), or None when it belongs upstream."""
    snap = zone._snap  # read once: a concurrent set_records swaps the whole snapshot
    qname = question.qname
    name = tuple(label.lower() for label in qname.label)
    origin = zone._labels
    if len(name) >= len(origin) and name[len(name) - len(origin) :] == origin:
        return _answer_zone(zone, snap, question, name[: len(name) - len(origin)])
    address = _reverse_address(name)
    if address is None or address not in snap.reverse:
        return None
    if question.qclass not in _CLASSES:
        return RCODE.REFUSED, False, [], []
    if question.qtype not in (QTYPE.PTR, QTYPE.ANY):
        return RCODE.NOERROR, True, [], []  # NODATA; the reverse zone is not ours to give an SOA
    ptrs = [RR(qname, QTYPE.PTR, ttl=zone.ttl, rdata=ptr) for ptr in snap.reverse[address]]
    return RCODE.NOERROR, True, ptrs, []


def _answer_zone(zone: Zone, snap: _Snapshot, question: Any, relative: _Name) -> _Answer:
    qtype = question.qtype
    if question.qclass not in _CLASSES or qtype in _TRANSFERS:
        return RCODE.REFUSED, False, [], []  # devices may list each other only by asking
    origin = DNSLabel(zone._labels)
    ttl = zone.ttl
    # MNAME: the node is the zone's only server and answers at the apex.
    times = (snap.serial, _SOA_REFRESH, _SOA_RETRY, _SOA_EXPIRE, ttl)
    soa = RR(origin, QTYPE.SOA, ttl=ttl, rdata=SOA(origin, DNSLabel((b"hostmaster", *zone._labels)), times))
    if not relative:
        ns = RR(origin, QTYPE.NS, ttl=ttl, rdata=NS(origin))
        apex = {QTYPE.SOA: [soa], QTYPE.NS: [ns], QTYPE.ANY: [soa, ns]}.get(qtype, [])
        return RCODE.NOERROR, True, apex, [] if apex else [soa]
    entry = snap.names.get(relative[0]) if len(relative) == 1 else None
    if entry is None:
        return RCODE.NXDOMAIN, True, [], [soa]
    answers: list[Any] = []
    if qtype in (QTYPE.A, QTYPE.ANY):
        answers += [RR(question.qname, QTYPE.A, ttl=ttl, rdata=rd) for rd in entry.a]
    if qtype in (QTYPE.AAAA, QTYPE.ANY):
        answers += [RR(question.qname, QTYPE.AAAA, ttl=ttl, rdata=rd) for rd in entry.aaaa]
    return RCODE.NOERROR, True, answers, [] if answers else [soa]


def _reverse_address(name: _Name) -> _Address | None:
    """The address a lower-cased in-addr.arpa / ip6.arpa name stands for, if complete."""
    if len(name) == 6 and name[4:] == (b"in-addr", b"arpa"):
        if all(_DECIMAL_RE.fullmatch(octet) for octet in name[:4]):
            octets = [int(octet) for octet in reversed(name[:4])]
            if max(octets) <= 255:
                return ipaddress.IPv4Address(bytes(octets))
    elif (
        len(name) == 34
        and name[32:] == (b"ip6", b"arpa")
        and all(len(nibble) == 1 and nibble[0] in _HEX for nibble in name[:32])
    ):
        return ipaddress.IPv6Address(bytes.fromhex(b"".join(reversed(name[:32])).decode()))
    return None


# --------------------------------------------------------------------------
# The asyncio shell

_FORWARD_TIMEOUT = 2.0  # whole budget per forwarded query, all upstreams included
_STAGGER = 0.5  # ask the next upstream if the previous one is silent this long
_TCP_IDLE_TIMEOUT = 10.0  # RFC 7766 suggests seconds, not minutes, for a busy server
_MAX_TCP_QUERY = 4096  # real queries are < 512 bytes; bigger ones are abuse
_MAX_TCP_CLIENTS = 64
_MAX_PIPELINE = 16  # queries answered concurrently on one TCP connection
_MAX_FORWARDS = 256  # concurrent upstream queries; each costs a socket
_BIND_WAIT = 3.0  # a new IPv6 address is "tentative" (unbindable) until DAD ends, ~1-2 s
_RESOLV_CONF = Path("/etc/resolv.conf")
_RESOLVED_CONF = Path("/run/systemd/resolve/resolv.conf")  # resolved's real upstreams
_RESOLVED_STUBS = frozenset({"127.0.0.53", "127.0.0.54"})

_Upstream = tuple[str, int]


class DnsServer:
    """Serves a Zone over UDP and TCP on the overlay addresses and forwards the rest."""

    def __init__(
        self,
        zone: Zone,
        upstreams: Sequence[str] | None = None,
        *,
        forward_timeout: float = _FORWARD_TIMEOUT,
        tcp_idle_timeout: float = _TCP_IDLE_TIMEOUT,
    ) -> None:
        """``upstreams`` are ``IP``, ``IP:port`` or ``[IPv6]:port``; [] forwards nothing
        (SERVFAIL) and None reads /etc/resolv.conf at start(), skipping our own addresses.
        """
        self._zone = zone
        if isinstance(upstreams, str):
            upstreams = [upstreams]
        self._configured = None if upstreams is None else [_parse_upstream(u) for u in upstreams]
        self._upstreams: list[_Upstream] = []
        self._forward_timeout = forward_timeout
        self._tcp_idle_timeout = tcp_idle_timeout
        self._udp: list[tuple[asyncio.DatagramTransport, _UdpListener]] = []
        self._tcp: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._bound: list[tuple[str, int]] = []
        self._forwarding = 0
        self._connections = 0
        self._running = False

    @property
    def bound(self) -> list[tuple[str, int]]:
        """(address, port) listened on, UDP and TCP alike, one entry per address."""
        return list(self._bound)

    @property
    def upstreams(self) -> list[tuple[str, int]]:
        """(address, port) of the resolvers names outside the zone go to, in order."""
        return list(self._upstreams)

    async def start(self, addresses: Sequence[str], port: int = 53) -> None:
        """Listen on UDP and TCP ``port`` of each address (IPv4 or IPv6).

        IPv6 sockets are V6ONLY so an IPv4 socket on the same port never clashes. An
        address must be on an interface already; one added moments ago may still be
        tentative (IPv6 DAD), so binding is retried for a few seconds. Callers who
        create the address can avoid the wait with ``ip addr add ... nodad``.
        Port 0 picks one free port shared by every address (for tests). Raises
        HostError if a socket cannot be had, InvalidInput for a bad address.
        """
        if self._running:
            raise RuntimeError("DnsServer.start() called twice")
        if isinstance(addresses, str):
            addresses = [addresses]
        hosts = list(dict.fromkeys(_listen_host(a) for a in addresses))
        if not hosts:
            raise InvalidInput("The DNS server needs at least one address to listen on.")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise InvalidInput(f"DNS port {port!r} is not a port number.")
        for attempt in range(20 if port == 0 else 1):
            try:
                sockets, chosen = await _bind_all(hosts, port)
                break
            except _PortTaken:
                if attempt == 19:
                    raise HostError("Could not find a free port for the DNS server.") from None
        loop = asyncio.get_running_loop()
        try:
            for udp, tcp in sockets:
                transport, listener = await loop.create_datagram_endpoint(
                    lambda: _UdpListener(self), sock=udp
                )
                self._udp.append((transport, listener))
                self._tcp.append(await asyncio.start_server(self._serve_tcp, sock=tcp))
        except BaseException:
            await self._close_listeners()
            for udp, tcp in sockets:  # those not yet handed to a transport
                udp.close()
                tcp.close()
            raise
        self._running = True
        self._bound = [(host.split("%")[0], chosen) for host in hosts]
        mine = {(_same_host(host), chosen) for host in hosts}
        if self._configured is None:
            candidates = _system_upstreams(_RESOLV_CONF, _RESOLVED_CONF)
        else:
            candidates = self._configured
        self._upstreams = [u for u in candidates if (_same_host(u[0]), u[1]) not in mine]
        if len(self._upstreams) < len(candidates):
            log.warning("DNS: not forwarding to our own listening addresses")
        if not self._upstreams:
            log.warning("DNS: no upstream resolver; names outside .%s get SERVFAIL", self._zone.origin)

    async def stop(self) -> None:
        """Close every socket and abandon queries in flight; start() may be called again."""
        self._running = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await self._close_listeners()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._bound = []
        self._upstreams = []

    async def _close_listeners(self) -> None:
        for transport, _ in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
        for _, listener in self._udp:  # the socket closes a loop iteration later: wait,
            await listener.closed  # so the port is free once stop() returns
        for server in self._tcp:
            await server.wait_closed()
        self._udp = []
        self._tcp = []

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- UDP --------------------------------------------------------------

    def _on_datagram(self, transport: asyncio.DatagramTransport, data: bytes, addr: Any) -> None:
        try:
            result = handle_query(self._zone, data, udp=True)
        except Exception:  # a bug must not silence DNS for everyone else
            log.exception("DNS: failed to handle a query")
            return
        if isinstance(result, Reply):
            transport.sendto(result.data, addr)
        elif isinstance(result, Forward):
            self._spawn(self._relay_udp(transport, result, addr))

    async def _relay_udp(self, transport: asyncio.DatagramTransport, fwd: Forward, addr: Any) -> None:
        reply = await self._forward(fwd, tcp=False)
        if not transport.is_closing():
            transport.sendto(reply, addr)

    # -- TCP (RFC 7766) ---------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or not self._running or self._connections >= _MAX_TCP_CLIENTS:
            writer.close()
            return
        self._connections += 1
        self._tasks.add(task)  # so stop() can cancel it
        slots = asyncio.Semaphore(_MAX_PIPELINE)
        send_lock = asyncio.Lock()
        answering: set[asyncio.Task[None]] = set()
        try:
            while (message := await self._read_message(reader)) is not None:
                await slots.acquire()  # stop reading while the pipeline is full
                child = asyncio.get_running_loop().create_task(
                    self._answer_tcp(message, writer, send_lock, slots)
                )
                answering.add(child)
                child.add_done_callback(answering.discard)
            if answering:  # the client may half-close after its last query
                await asyncio.wait(answering)
        finally:
            for child in answering:
                child.cancel()
            writer.close()
            self._connections -= 1
            self._tasks.discard(task)

    async def _read_message(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next length-prefixed message, or None: EOF, idle, or oversized."""
        try:
            async with asyncio.timeout(self._tcp_idle_timeout):
                size = int.from_bytes(await reader.readexactly(2), "big")
                if not 12 <= size <= _MAX_TCP_QUERY:
                    return None
                return await reader.readexactly(size)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return None

    async def _answer_tcp(
        self,
        message: bytes,
        writer: asyncio.StreamWriter,
        send_lock: asyncio.Lock,
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            result = handle_query(self._zone, message)
            if isinstance(result, Forward):
                data = await self._forward(result, tcp=True)
            elif isinstance(result, Reply):
                data = result.data
            else:
                return
            async with send_lock:  # one frame at a time; replies may go out of order
                writer.write(len(data).to_bytes(2, "big") + data)
                await writer.drain()
        except ConnectionError:
            pass
        except Exception:
            log.exception("DNS: failed to answer over TCP")
        finally:
            slots.release()

    # -- forwarding -------------------------------------------------------

    async def _forward(self, fwd: Forward, *, tcp: bool) -> bytes:
        """The upstream answer under the client's id, or SERVFAIL after the time budget."""
        question = _question(fwd.query)
        if not self._upstreams or question is None or self._forwarding >= _MAX_FORWARDS:
            return _failure(fwd.query, RCODE.SERVFAIL)
        self._forwarding += 1
        try:
            async with asyncio.timeout(self._forward_timeout):
                reply = await self._race(fwd.query, question, tcp)
        except TimeoutError:
            reply = None
        finally:
            self._forwarding -= 1
        if reply is None:
            return _failure(fwd.query, RCODE.SERVFAIL)
        return fwd.query_id.to_bytes(2, "big") + reply[2:]

    async def _race(self, query: bytes, question: _Question, tcp: bool) -> bytes | None:
        """Ask upstreams in order, starting the next when one fails or stays silent.

        A quick SERVFAIL/REFUSED does not end the race: another upstream may know.
        """
        waiting = list(self._upstreams)
        pending: set[asyncio.Task[bytes]] = set()
        fallback: bytes | None = None
        loop = asyncio.get_running_loop()
        try:
            while waiting or pending:
                if waiting:
                    host, port = waiting.pop(0)
                    pending.add(loop.create_task(_ask(host, port, query, question, tcp)))
                done, pending = await asyncio.wait(
                    pending,
                    timeout=_STAGGER if waiting else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    error = task.exception()
                    if error is not None:
                        log.debug("DNS: upstream failed: %r", error)
                        continue
                    reply = task.result()
                    header = _header(reply)  # not None: _answers checked the reply
                    if header is not None and header.rcode in (RCODE.SERVFAIL, RCODE.REFUSED):
                        fallback = reply
                        continue
                    return reply
            return fallback
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)


class _PortTaken(Exception):
    """Port 0 picked a port some other address already uses: pick again."""


class _UdpListener(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython's datagram transports do not subclass DatagramTransport: cast, not check.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self._transport is not None:
            self._server._on_datagram(self._transport, data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("DNS: UDP error: %r", exc)  # ICMP from a client that went away

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _UpstreamUdp(asyncio.DatagramProtocol):
    """Waits for the one datagram that answers our query; ignores strays and spoofs."""

    def __init__(self, qid: int, question: _Question, reply: asyncio.Future[bytes]) -> None:
        self._qid = qid
        self._question = question
        self._reply = reply

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self._reply.done() and _answers(data, self._qid, self._question):
            self._reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self._reply.done():  # e.g. ECONNREFUSED: nothing listens there
            self._reply.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._reply.done():
            self._reply.set_exception(exc or ConnectionError("upstream socket closed"))


def _answers(data: bytes, qid: int, question: _Question) -> bool:
    """Whether ``data`` is the response to our query (same id and question)."""
    header = _header(data)
    if header is None or header.id != qid or not header.qr:
        return False
    if header.q == 0:
        return bool(header.rcode != RCODE.NOERROR)  # FORMERR and friends may omit the question
    return _question(data) == question


async def _ask(host: str, port: int, query: bytes, question: _Question, tcp: bool) -> bytes:
    """One upstream's answer: UDP, then TCP if it was truncated and the client is on TCP.

    Each attempt gets a fresh socket (random source port) and a random id, so an
    off-path attacker must guess both to spoof an answer.
    """
    reply = await _ask_udp(host, port, query, question)
    header = _header(reply)  # not None: _answers checked the reply
    if tcp and header is not None and header.tc:
        reply = await _ask_tcp(host, port, query, question)
    return reply


async def _ask_udp(host: str, port: int, query: bytes, question: _Question) -> bytes:
    loop = asyncio.get_running_loop()
    qid = secrets.randbits(16)
    reply: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UpstreamUdp(qid, question, reply), remote_addr=(host, port)
    )
    try:
        transport.sendto(qid.to_bytes(2, "big") + query[2:])
        return await reply
    finally:
        if not reply.done():
            reply.cancel()
        transport.close()


async def _ask_tcp(host: str, port: int, query: bytes, question: _Question) -> bytes:
    qid = secrets.randbits(16)
    message = qid.to_bytes(2, "big") + query[2:]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(len(message).to_bytes(2, "big") + message)
        await writer.drain()
        while True:
            size = int.from_bytes(await reader.readexactly(2), "big")
            data = await reader.readexactly(size)
            if _answers(data, qid, question):
                return data
    finally:
        writer.close()


# -- sockets and configuration ---------------------------------------------


def _listen_host(address: str) -> str:
    """Validate a listen address (an IP literal, IPv6 may carry %scope)."""
    try:
        return str(ipaddress.ip_address(address.strip()))
    except (ValueError, AttributeError):
        raise InvalidInput(f"{address!r} is not an IP address the DNS server can listen on.") from None


def _same_host(host: str) -> str:
    """Canonical form for "is this us": unspecified means this host's loopback."""
    address = ipaddress.ip_address(host.split("%")[0])
    if address.is_unspecified:
        return "127.0.0.1" if address.version == 4 else "::1"
    return str(address)


async def _bind_all(hosts: list[str], port: int) -> tuple[list[tuple[socket.socket, socket.socket]], int]:
    """Bound UDP and TCP sockets for each host, all on one port (chosen if 0)."""
    pairs: list[tuple[socket.socket, socket.socket]] = []
    chosen = port
    try:
        for host in hosts:
            udp = await _bind(host, chosen, socket.SOCK_DGRAM, picked=port == 0 and chosen != 0)
            if chosen == 0:
                chosen = udp.getsockname()[1]
            try:
                tcp = await _bind(host, chosen, socket.SOCK_STREAM, picked=port == 0)
            except BaseException:
                udp.close()
                raise
            pairs.append((udp, tcp))
    except BaseException:
        for udp, tcp in pairs:
            udp.close()
            tcp.close()
        raise
    return pairs, chosen


async def _bind(host: str, port: int, kind: socket.SocketKind, *, picked: bool) -> socket.socket:
    """A non-blocking socket bound to host:port, waiting out a tentative address."""
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=kind, flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
    )[0]
    deadline = time.monotonic() + _BIND_WAIT
    while True:
        sock = socket.socket(family, kind)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if kind == socket.SOCK_STREAM:  # restart despite TIME_WAIT; never for UDP,
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # which would share
            sock.setblocking(False)
            sock.bind(sockaddr)
            if kind == socket.SOCK_STREAM:
                sock.listen(128)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRNOTAVAIL and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                continue
            if exc.errno == errno.EADDRINUSE and picked:
                raise _PortTaken from None
            proto = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
            reason = {
                errno.EADDRINUSE: "another program already uses it",
                errno.EADDRNOTAVAIL: "no interface has that address",
                errno.EACCES: "ports below 1024 need root",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise HostError(f"Cannot serve DNS on {host} {proto} port {port}: {reason}.") from None


def _parse_upstream(text: str) -> _Upstream:
    """``IP``, ``IP:port`` or ``[IPv6]:port`` (port 53 if absent) as (host, port)."""
    bad = InvalidInput(f"DNS upstream {text!r} must be an IP address, optionally with :port.")
    value = text.strip() if isinstance(text, str) else ""
    host, port = value, "53"
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", value)
    if bracketed:
        host, port = bracketed[1], bracketed[2] or "53"
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise bad from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise bad
    return str(address), int(port)


def _nameservers(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    servers = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            servers.append(fields[1])
    return servers


def _system_upstreams(resolv_conf: Path, resolved_conf: Path) -> list[_Upstream]:
    """The host's resolvers from resolv.conf.

    If it names only systemd-resolved's stub, use resolved's own upstreams instead:
    the stub may well be configured to ask us, which would loop.
    """
    servers = _nameservers(resolv_conf)
    if servers and all(s in _RESOLVED_STUBS for s in servers):
        servers = _nameservers(resolved_conf) or servers
    upstreams: list[_Upstream] = []
    for server in servers:
        try:
            upstreams.append(_parse_upstream(server))
        except InvalidInput:
            log.warning("DNS: ignoring nameserver %r in %s", server, resolv_conf)
    return upstreams
