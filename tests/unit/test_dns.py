"""The overlay DNS server: the sans-IO core with dnslib-built queries, fuzzing, and real sockets."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dnslib import EDNS0, OPCODE, QTYPE, RCODE, DNSHeader, DNSQuestion, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudpal.errors import CloudPalError, HostError, InvalidInput
from cloudpal.net import dns
from cloudpal.net.dns import DnsServer, Forward, Record, Reply, Zone, handle_query

T = TypeVar("T")

LAPTOP = Record(("100.64.0.2",), ("fd7a:115c:a1e0::2",))
NODE = Record(("100.64.0.1",), ("fd7a:115c:a1e0::1",))
PHONE = Record(("100.64.0.3",), ())


def make_zone(origin: str = "pal") -> Zone:
    zone = Zone(origin, ttl=30)
    zone.set_records({"laptop": LAPTOP, "node": NODE, "Phone": PHONE})
    return zone


@pytest.fixture
def zone() -> Zone:
    return make_zone()


def query(name: str, qtype: str = "A", qclass: str = "IN", qid: int | None = None) -> bytes:
    record = DNSRecord.question(name, qtype, qclass)
    if qid is not None:
        record.header.id = qid
    return bytes(record.pack())


def ask(zone: Zone, data: bytes, *, udp: bool = False) -> DNSRecord:
    result = handle_query(zone, data, udp=udp)
    assert isinstance(result, Reply), result
    reply = DNSRecord.parse(result.data)
    assert reply.header.id == struct.unpack_from("!H", data)[0]
    assert reply.header.qr == 1
    return reply


def rdatas(reply: DNSRecord, rtype: str) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == getattr(QTYPE, rtype)]


# --------------------------------------------------------------------------
# handle_query: in-zone answers


def test_a_record_is_authoritative_and_echoes_the_query(zone: Zone) -> None:
    reply = ask(zone, query("laptop.pal", "A", qid=0x1234))
    assert reply.header.rcode == RCODE.NOERROR
    assert reply.header.aa == 1 and reply.header.rd == 1 and reply.header.ra == 1
    assert str(reply.q.qname) == "laptop.pal." and reply.q.qtype == QTYPE.A
    assert rdatas(reply, "A") == ["100.64.0.2"]
    assert [rr.ttl for rr in reply.rr] == [30]
    assert reply.auth == []


def test_aaaa_record(zone: Zone) -> None:
    reply = ask(zone, query("node.pal", "AAAA"))
    assert rdatas(reply, "AAAA") == ["fd7a:115c:a1e0::1"]
    assert rdatas(reply, "A") == []


def test_any_returns_both_families(zone: Zone) -> None:
    reply = ask(zone, query("laptop.pal", "ANY"))
    assert rdatas(reply, "A") == ["100.64.0.2"]
    assert rdatas(reply, "AAAA") == ["fd7a:115c:a1e0::2"]


def test_missing_family_is_nodata_with_soa(zone: Zone) -> None:
    reply = ask(zone, query("phone.pal", "AAAA"))
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1
    assert reply.rr == []
    assert [rr.rtype for rr in reply.auth] == [QTYPE.SOA]


@pytest.mark.parametrize("qtype", ["MX", "TXT", "SRV", "HTTPS", "CAA", "PTR"])
def test_other_qtypes_for_existing_names_are_nodata(zone: Zone, qtype: str) -> None:
    reply = ask(zone, query("laptop.pal", qtype))
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1
    assert reply.rr == []
    assert [rr.rtype for rr in reply.auth] == [QTYPE.SOA]


@pytest.mark.parametrize("name", ["nobody.pal", "x.laptop.pal", "a.b.c.pal", "_srv._tcp.pal"])
def test_unknown_names_in_zone_are_nxdomain_with_soa(zone: Zone, name: str) -> None:
    reply = ask(zone, query(name, "A"))
    assert reply.header.rcode == RCODE.NXDOMAIN and reply.header.aa == 1
    assert reply.rr == []
    (soa,) = reply.auth
    assert soa.rtype == QTYPE.SOA and str(soa.rname) == "pal." and soa.ttl == 30
    assert soa.rdata.times[-1] == 30  # MINIMUM: how long resolvers cache the NXDOMAIN


def test_zone_apex(zone: Zone) -> None:
    soa = ask(zone, query("pal", "SOA"))
    assert soa.header.rcode == RCODE.NOERROR and soa.header.aa == 1
    assert [rr.rtype for rr in soa.rr] == [QTYPE.SOA]
    assert str(soa.rr[0].rdata.mname) == "pal." and str(soa.rr[0].rdata.rname) == "hostmaster.pal."
    ns = ask(zone, query("pal.", "NS"))
    assert rdatas(ns, "NS") == ["pal."]
    anything = ask(zone, query("pal", "ANY"))
    assert sorted(rr.rtype for rr in anything.rr) == sorted([QTYPE.SOA, QTYPE.NS])
    a = ask(zone, query("pal", "A"))
    assert a.header.rcode == RCODE.NOERROR and a.rr == []
    assert [rr.rtype for rr in a.auth] == [QTYPE.SOA]


def test_names_are_case_insensitive_and_the_question_is_echoed_verbatim(zone: Zone) -> None:
    reply = ask(zone, query("LaPtOp.PaL", "A"))
    assert rdatas(reply, "A") == ["100.64.0.2"]
    assert str(reply.q.qname) == "LaPtOp.PaL."
    assert rdatas(ask(zone, query("PHONE.pal", "A")), "A") == ["100.64.0.3"]
    nx = ask(zone, query("Nobody.PAL", "A"))
    assert nx.header.rcode == RCODE.NXDOMAIN


def test_ptr_for_overlay_addresses(zone: Zone) -> None:
    v4 = ask(zone, query("2.0.64.100.in-addr.arpa", "PTR"))
    assert v4.header.aa == 1 and rdatas(v4, "PTR") == ["laptop.pal."]
    name6 = ".".join(reversed("fd7a115ca1e0" + "0" * 19 + "1")) + ".ip6.arpa"
    v6 = ask(zone, query(name6.upper(), "PTR"))
    assert rdatas(v6, "PTR") == ["node.pal."]
    nodata = ask(zone, query("3.0.64.100.in-addr.arpa", "A"))
    assert nodata.header.rcode == RCODE.NOERROR and nodata.rr == []


@pytest.mark.parametrize(
    "name", ["9.0.64.100.in-addr.arpa", "8.8.8.8.in-addr.arpa", "64.100.in-addr.arpa", "ip6.arpa"]
)
def test_ptr_for_other_addresses_is_forwarded(zone: Zone, name: str) -> None:
    assert isinstance(handle_query(zone, query(name, "PTR")), Forward)


def test_transfers_and_other_classes_are_refused(zone: Zone) -> None:
    assert ask(zone, query("pal", "AXFR")).header.rcode == RCODE.REFUSED
    chaos = ask(zone, query("laptop.pal", "TXT", qclass="CH"))
    assert chaos.header.rcode == RCODE.REFUSED and chaos.header.aa == 0
    assert isinstance(handle_query(zone, query("version.bind", "TXT", qclass="CH")), Forward)


def test_custom_origin_and_ttl() -> None:
    zone = Zone("Home.Example.", ttl=5)
    assert zone.origin == "home.example"
    zone.set_records({"nas": Record(("10.1.2.3",), ())})
    reply = ask(zone, query("nas.home.example", "A"))
    assert rdatas(reply, "A") == ["10.1.2.3"] and reply.rr[0].ttl == 5
    assert isinstance(handle_query(zone, query("nas.pal", "A")), Forward)
    assert isinstance(handle_query(zone, query("example", "A")), Forward)


# --------------------------------------------------------------------------
# handle_query: forwarding and malformed input


@pytest.mark.parametrize("name", ["example.com", "pal.example.com", "xpal", "com", "."])
def test_names_outside_the_zone_are_forwarded_as_is(zone: Zone, name: str) -> None:
    data = query(name, "A", qid=4242)
    result = handle_query(zone, data)
    assert result == Forward(query=data, query_id=4242)


def test_responses_and_runts_are_dropped(zone: Zone) -> None:
    response = DNSRecord.question("laptop.pal").reply().pack()
    assert handle_query(zone, bytes(response)) is None
    assert handle_query(zone, b"") is None
    assert handle_query(zone, b"\x12\x34\x01\x00\x00\x01") is None


@pytest.mark.parametrize("opcode", [OPCODE.IQUERY, OPCODE.STATUS, OPCODE.NOTIFY, OPCODE.UPDATE])
def test_other_opcodes_get_notimp(zone: Zone, opcode: int) -> None:
    record = DNSRecord(DNSHeader(id=77, opcode=opcode), q=DNSQuestion("pal", QTYPE.SOA))
    reply = ask(zone, bytes(record.pack()))
    assert reply.header.rcode == RCODE.NOTIMP and reply.header.opcode == opcode


def header(qid: int = 9, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


LAPTOP_QUESTION = b"\x06laptop\x03pal\x00\x00\x01\x00\x01"


@pytest.mark.parametrize(
    "data",
    [
        header(qd=0),  # no question
        header(qd=2) + LAPTOP_QUESTION,  # counts promise a second question
        header() + LAPTOP_QUESTION[:-3],  # question cut short
        header() + b"\x06lap",  # label cut short
        header() + b"\xc0\x0c\x00\x01\x00\x01",  # pointer in the question
        header() + b"\xc0\x00\x00\x01\x00\x01",  # pointer into the header
        header() + b"\x40" + b"a" * 64 + b"\x03pal\x00\x00\x01\x00\x01",  # 64-byte label
        header() + b"\x46laptop\x00\x00\x01\x00\x01",  # reserved label type
        header() + b"\x3f" + b"a" * 63 + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",
        header(an=1) + LAPTOP_QUESTION,  # answer record missing
        header(ar=1) + LAPTOP_QUESTION + b"\xc0\x1d\x00\x01",  # pointer to itself
        header(ar=1) + LAPTOP_QUESTION + b"\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x09ab",
        # two OPT records
        header(ar=2) + LAPTOP_QUESTION + (b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00") * 2,
        # OPT with an owner name
        header(ar=1) + LAPTOP_QUESTION + b"\x01x\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00",
    ],
)
def test_malformed_bodies_get_formerr(zone: Zone, data: bytes) -> None:
    reply = ask(zone, data)
    assert reply.header.rcode == RCODE.FORMERR
    assert reply.header.rd == 1 and reply.questions == []


def test_pointer_loops_terminate(zone: Zone) -> None:
    # additional record owner: pointer chain 29 -> 31 -> 29 ... must be rejected, not followed
    data = header(ar=1) + LAPTOP_QUESTION + b"\xc0\x1f\xc0\x1d"
    assert ask(zone, data).header.rcode == RCODE.FORMERR


def test_pointer_cycles_through_two_pointers_terminate(zone: Zone) -> None:
    # dnslib only catches a pointer to itself; A (646 -> 640) and B (649 -> 636) jump
    # back and forth until its recursion runs out, which must still give FORMERR.
    filler = (b"\x3f" + b"a" * 63) * 9 + b"\x1f" + b"a" * 31
    data = header(ar=1) + LAPTOP_QUESTION + filler + b"\x09aaa\x08aaaaa\xc2\x80a\xc2\x7c"
    assert (data[636], data[640], data[646:648], data[649:]) == (9, 8, b"\xc2\x80", b"\xc2\x7c")
    assert ask(zone, data).header.rcode == RCODE.FORMERR


@pytest.mark.parametrize("name", [b"\x02\xff\xfe\x03pal\x00", b"\x03caf\xe9\x03com\x00"])
def test_names_that_are_not_utf8_get_formerr(zone: Zone, name: bytes) -> None:
    # DNS allows any bytes in a label, but dnslib refuses to parse labels that are not
    # UTF-8, so such queries are answered FORMERR rather than looked up or forwarded.
    reply = ask(zone, header() + name + b"\x00\x01\x00\x01")
    assert reply.header.rcode == RCODE.FORMERR and reply.questions == []


def test_compressed_names_elsewhere_in_the_query_are_accepted(zone: Zone) -> None:
    # a (strange but legal) authority record whose owner points back at the question
    data = (
        header(ns=1) + LAPTOP_QUESTION + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04\x01\x02\x03\x04"
    )
    assert rdatas(ask(zone, data), "A") == ["100.64.0.2"]


def test_edns_is_answered_with_opt(zone: Zone) -> None:
    record = DNSRecord.question("laptop.pal", "A")
    record.add_ar(EDNS0(udp_len=4096, flags="do"))
    reply = ask(zone, bytes(record.pack()))
    (opt,) = reply.ar
    assert opt.rtype == QTYPE.OPT and opt.rclass == 1232
    assert opt.ttl & 0x8000  # DO copied (RFC 3225)
    assert rdatas(reply, "A") == ["100.64.0.2"]


def test_unknown_edns_version_gets_badvers(zone: Zone) -> None:
    record = DNSRecord.question("laptop.pal", "A")
    record.add_ar(EDNS0(version=1))
    reply = ask(zone, bytes(record.pack()))
    (opt,) = reply.ar
    assert reply.rr == [] and reply.header.rcode == 0
    assert (opt.ttl >> 24) << 4 | reply.header.rcode == 16  # BADVERS


def test_large_answers_are_truncated_over_udp_only() -> None:
    zone = Zone()
    many = tuple(f"fd00::{i:x}" for i in range(1, 41))
    zone.set_records({"big": Record(("10.0.0.1",), many)})
    data = query("big.pal", "ANY")
    full = ask(zone, data)
    assert len(full.rr) == 41 and full.header.tc == 0
    truncated = ask(zone, data, udp=True)
    assert truncated.header.tc == 1 and truncated.rr == []
    assert str(truncated.q.qname) == "big.pal." and truncated.header.rcode == RCODE.NOERROR
    assert len(handle_query(zone, data, udp=True).data) <= 512  # type: ignore[union-attr]
    edns = DNSRecord.question("big.pal", "ANY")
    edns.add_ar(EDNS0(udp_len=4096))
    roomy = ask(zone, bytes(edns.pack()), udp=True)  # 1232 bytes is enough for 41 records
    assert roomy.header.tc == 0 and len(roomy.rr) == 41


# --------------------------------------------------------------------------
# Zone


def test_set_records_replaces_everything(zone: Zone) -> None:
    zone.set_records({"tablet": Record(("100.64.0.9",), ())})
    assert zone.lookup("laptop") is None
    assert ask(zone, query("laptop.pal")).header.rcode == RCODE.NXDOMAIN
    assert rdatas(ask(zone, query("tablet.pal")), "A") == ["100.64.0.9"]
    assert isinstance(handle_query(zone, query("2.0.64.100.in-addr.arpa", "PTR")), Forward)


def test_lookup_accepts_relative_and_absolute_names(zone: Zone) -> None:
    for name in ("laptop", "LAPTOP", "laptop.pal", "Laptop.PAL.", "laptop."):
        assert zone.lookup(name) == LAPTOP, name
    assert zone.lookup("phone") == PHONE
    for name in ("nobody", "laptop.other", "x.laptop.pal", "", ".", "pal", "laptop..pal"):
        assert zone.lookup(name) is None, name


def test_addresses_are_normalised_and_shared_addresses_get_every_ptr() -> None:
    zone = Zone()
    zone.set_records({"b": Record(("100.64.0.5",), ("FD00:0::1",)), "a": Record(("100.64.0.5",), ())})
    assert zone.lookup("b") == Record(("100.64.0.5",), ("fd00::1",))
    reply = ask(zone, query("5.0.64.100.in-addr.arpa", "PTR"))
    assert rdatas(reply, "PTR") == ["a.pal.", "b.pal."]


def test_serial_grows_with_every_change(zone: Zone) -> None:
    def serial() -> int:
        return int(ask(zone, query("pal", "SOA")).rr[0].rdata.times[0])

    first = serial()
    zone.set_records({})
    assert serial() > first


@pytest.mark.parametrize(
    "records",
    [
        {"bad name": Record((), ())},
        {"-dash": Record((), ())},
        {"a.b": Record((), ())},
        {"x" * 64: Record((), ())},
        {"": Record((), ())},
        {"laptop": Record(("fd00::1",), ())},
        {"laptop": Record((), ("100.64.0.1",))},
        {"laptop": Record(("300.1.1.1",), ())},
        {"laptop": Record((), ("fe80::1%eth0",))},
        {"Laptop": Record((), ()), "laptop": Record((), ())},
    ],
)
def test_unusable_records_are_rejected_without_changing_the_zone(
    zone: Zone, records: dict[str, Record]
) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        zone.set_records(records)
    assert isinstance(excinfo.value, CloudPalError)
    message = str(excinfo.value)
    assert message.endswith(".") and "\n" not in message
    assert zone.lookup("laptop") == LAPTOP


@pytest.mark.parametrize("origin, ttl", [("", 30), ("a..b", 30), ("bad zone", 30), ("pal", -1)])
def test_bad_zone_settings_are_rejected(origin: str, ttl: int) -> None:
    with pytest.raises(InvalidInput):
        Zone(origin, ttl)


# --------------------------------------------------------------------------
# Fuzzing: handle_query never raises and only ever says sensible things

VALID_QUERIES = [
    query("laptop.pal", "A"),
    query("LAPTOP.pal", "AAAA"),
    query("pal", "SOA"),
    query("nobody.pal", "MX"),
    query("example.com", "A"),
    query("2.0.64.100.in-addr.arpa", "PTR"),
    bytes(DNSRecord(DNSHeader(opcode=OPCODE.NOTIFY), q=DNSQuestion("pal", QTYPE.SOA)).pack()),
]
_edns = DNSRecord.question("laptop.pal", "ANY")
_edns.add_ar(EDNS0(udp_len=1400, flags="do"))
VALID_QUERIES.append(bytes(_edns.pack()))

FUZZ_ZONE = make_zone()


def check(data: bytes, *, udp: bool = False) -> None:
    result = handle_query(FUZZ_ZONE, data, udp=udp)
    if result is None:
        return
    if isinstance(result, Forward):
        assert result.query == data
        assert result.query_id == struct.unpack_from("!H", data)[0]
        return
    assert isinstance(result, Reply)
    reply = DNSRecord.parse(result.data)  # whatever we send is well-formed DNS
    assert reply.header.qr == 1
    assert reply.header.id == struct.unpack_from("!H", data)[0]
    if udp:
        assert len(result.data) <= 1232


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_fuzz_arbitrary_bytes(data: bytes, udp: bool) -> None:
    check(data, udp=udp)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3))
def test_fuzz_query_headers_with_arbitrary_bodies(body: bytes, an: int, ns: int, ar: int) -> None:
    check(header(an=an, ns=ns, ar=ar) + body)


@st.composite
def mutated_queries(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID_QUERIES)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and data:
            data[position] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and data:
            del data[position]
    return bytes(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_queries(), st.booleans())
def test_fuzz_mutated_valid_queries(data: bytes, udp: bool) -> None:
    check(data, udp=udp)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=63), min_size=0, max_size=5),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
)
def test_fuzz_well_formed_questions(labels: list[bytes], qtype: int, qclass: int) -> None:
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    check(header() + name + struct.pack("!HH", qtype, qclass), udp=True)


# --------------------------------------------------------------------------
# Configuration helpers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1.1.1.1", ("1.1.1.1", 53)),
        (" 9.9.9.9:5353 ", ("9.9.9.9", 5353)),
        ("2001:db8::1", ("2001:db8::1", 53)),
        ("[2001:db8::1]:5300", ("2001:db8::1", 5300)),
        ("[::1]", ("::1", 53)),
    ],
)
def test_upstream_syntax(text: str, expected: tuple[str, int]) -> None:
    assert dns._parse_upstream(text) == expected


@pytest.mark.parametrize("text", ["dns.google", "1.1.1.1:0", "1.1.1.1:99999", "[::1]:x", "", "1.2.3"])
def test_bad_upstreams_are_rejected(text: str) -> None:
    with pytest.raises(InvalidInput):
        DnsServer(Zone(), [text])


def test_resolv_conf_upstreams(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch lan\nnameserver 192.0.2.53\nnameserver fd00::53\noptions x\n")
    resolved = tmp_path / "resolved.conf"
    assert dns._system_upstreams(conf, resolved) == [("192.0.2.53", 53), ("fd00::53", 53)]
    conf.write_text("nameserver 127.0.0.53\n")
    assert dns._system_upstreams(conf, resolved) == [("127.0.0.53", 53)]  # resolved's own
    resolved.write_text("nameserver 203.0.113.1\n")  # ... upstreams, when it tells us
    assert dns._system_upstreams(conf, resolved) == [("203.0.113.1", 53)]
    assert dns._system_upstreams(tmp_path / "missing", resolved) == []


# --------------------------------------------------------------------------
# Real sockets


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 15)

    return asyncio.run(bounded())


@asynccontextmanager
async def serving(
    zone: Zone,
    upstreams: Sequence[str] | None = (),
    addresses: Sequence[str] = ("127.0.0.1", "::1"),
    **kw: Any,
) -> AsyncIterator[DnsServer]:
    server = DnsServer(zone, upstreams, **kw)
    await server.start(addresses, port=0)
    try:
        yield server
    finally:
        await server.stop()


async def udp_ask(host: str, port: int, data: bytes, timeout: float = 4.0) -> bytes:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if not answer.done():
                answer.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(host, port))
    try:
        transport.sendto(data)
        return await asyncio.wait_for(answer, timeout)
    finally:
        transport.close()


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 4), "big")
    return await asyncio.wait_for(reader.readexactly(size), 4)


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


async def tcp_ask(host: str, port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(frame(data))
        return await read_frame(reader)
    finally:
        writer.close()


async def dig(port: int, *args: str, server: str = "127.0.0.1") -> str:
    path = shutil.which("dig")
    if path is None:
        pytest.fail("dig is not installed; install dnsutils (apt-get install dnsutils) to run this test")
    process = await asyncio.create_subprocess_exec(
        path,
        f"@{server}",
        "-p",
        str(port),
        "+time=3",
        "+tries=1",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode() + out.decode()
    return out.decode().strip()


def test_dig_and_raw_clients_over_udp_and_tcp_on_ipv4_and_ipv6() -> None:
    async def scenario() -> None:
        async with serving(make_zone()) as server:
            (v4, port), (v6, port6) = server.bound
            assert (v4, v6) == ("127.0.0.1", "::1") and port == port6 > 1024
            assert await dig(port, "laptop.pal", "A", "+short") == "100.64.0.2"
            assert await dig(port, "laptop.pal", "AAAA", "+short", server="::1") == "fd7a:115c:a1e0::2"
            assert await dig(port, "-x", "100.64.0.3", "+short", "+tcp") == "phone.pal."
            assert "status: NXDOMAIN" in await dig(port, "nobody.pal", "A")

            for host in ("127.0.0.1", "::1"):
                udp = DNSRecord.parse(await udp_ask(host, port, query("node.pal", "A", qid=11)))
                assert udp.header.id == 11 and rdatas(udp, "A") == ["100.64.0.1"]
                tcp = DNSRecord.parse(await tcp_ask(host, port, query("node.pal", "AAAA", qid=12)))
                assert tcp.header.id == 12 and rdatas(tcp, "AAAA") == ["fd7a:115c:a1e0::1"]

    run(scenario())


def test_tcp_partial_writes_and_pipelining() -> None:
    async def scenario() -> None:
        async with serving(make_zone(), addresses=["127.0.0.1"]) as server:
            port = server.bound[0][1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # one query dribbled out a byte at a time
            for byte in frame(query("laptop.pal", "A", qid=1)):
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.002)
            assert DNSRecord.parse(await read_frame(reader)).header.id == 1
            # three queries in one segment, on the same connection
            names = {2: "laptop.pal", 3: "node.pal", 4: "nobody.pal"}
            writer.write(b"".join(frame(query(n, "A", qid=i)) for i, n in names.items()))
            replies = [DNSRecord.parse(await read_frame(reader)) for _ in names]
            assert sorted(r.header.id for r in replies) == [2, 3, 4]
            # a response (QR=1) is ignored, the connection stays usable
            writer.write(frame(bytes(DNSRecord.question("x.pal").reply().pack())))
            writer.write(frame(query("phone.pal", "A", qid=5)))
            assert DNSRecord.parse(await read_frame(reader)).header.id == 5
            # half-close after a query: the answer still arrives, then EOF
            writer.write(frame(query("node.pal", "A", qid=6)))
            writer.write_eof()
            assert DNSRecord.parse(await read_frame(reader)).header.id == 6
            assert await asyncio.wait_for(reader.read(), 4) == b""
            writer.close()

    run(scenario())


def test_tcp_oversized_messages_and_idle_connections_are_closed() -> None:
    async def scenario() -> None:
        async with serving(make_zone(), addresses=["127.0.0.1"], tcp_idle_timeout=0.3) as server:
            port = server.bound[0][1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\xff\xff" + b"x" * 100)
            assert await asyncio.wait_for(reader.read(), 4) == b""
            writer.close()

            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            writer.write(b"\x00")  # half a length prefix, then silence
            assert await asyncio.wait_for(reader.read(), 4) == b""
            assert 0.2 < time.monotonic() - started < 2
            writer.close()

    run(scenario())


def example_zone() -> Zone:
    zone = Zone("example")
    zone.set_records(
        {
            "www": Record(("192.0.2.80",), ()),
            "big": Record(("192.0.2.1",), tuple(f"2001:db8::{i:x}" for i in range(1, 41))),
        }
    )
    return zone


def test_forwarding_relays_upstream_answers_with_the_client_id() -> None:
    async def scenario() -> None:
        async with serving(example_zone(), addresses=["127.0.0.1"]) as upstream:
            target = f"127.0.0.1:{upstream.bound[0][1]}"
            async with serving(make_zone(), [target]) as server:
                port = server.bound[0][1]
                assert await dig(port, "www.example", "+short") == "192.0.2.80"
                assert await dig(port, "laptop.pal", "+short") == "100.64.0.2"  # still ours
                for host in ("127.0.0.1", "::1"):
                    udp = DNSRecord.parse(await udp_ask(host, port, query("WWW.example", qid=0xBEEF)))
                    assert udp.header.id == 0xBEEF and rdatas(udp, "A") == ["192.0.2.80"]
                    assert str(udp.q.qname) == "WWW.example."
                    tcp = DNSRecord.parse(await tcp_ask(host, port, query("www.example", qid=7)))
                    assert tcp.header.id == 7 and rdatas(tcp, "A") == ["192.0.2.80"]
                nx = DNSRecord.parse(await udp_ask("127.0.0.1", port, query("no.example", qid=8)))
                assert nx.header.id == 8 and nx.header.rcode == RCODE.NXDOMAIN
                assert nx.header.aa == 1  # the upstream's answer, not ours
                # Too big for plain UDP: relayed with TC to UDP clients, fetched over TCP
                # for TCP clients.
                big = query("big.example", "ANY", qid=9)
                cut = DNSRecord.parse(await udp_ask("127.0.0.1", port, big))
                assert cut.header.tc == 1 and cut.header.id == 9
                whole = DNSRecord.parse(await tcp_ask("127.0.0.1", port, big))
                assert whole.header.tc == 0 and len(whole.rr) == 41 and whole.header.id == 9

    run(scenario())


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_dead_upstream_fails_over_to_the_next() -> None:
    async def scenario() -> None:
        async with serving(example_zone(), addresses=["127.0.0.1"]) as upstream:
            dead = f"127.0.0.1:{free_udp_port()}"  # nothing listens: ICMP port unreachable
            good = f"127.0.0.1:{upstream.bound[0][1]}"
            async with serving(make_zone(), [dead, good], addresses=["127.0.0.1"]) as server:
                started = time.monotonic()
                reply = await udp_ask("127.0.0.1", server.bound[0][1], query("www.example"))
                assert rdatas(DNSRecord.parse(reply), "A") == ["192.0.2.80"]
                assert time.monotonic() - started < 0.4

    run(scenario())


def test_silent_upstream_gives_servfail_without_blocking_other_queries() -> None:
    async def scenario() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))  # receives, never answers
            target = f"127.0.0.1:{silent.getsockname()[1]}"
            async with serving(make_zone(), [target], addresses=["127.0.0.1"]) as server:
                port = server.bound[0][1]
                started = time.monotonic()
                slow_udp = asyncio.ensure_future(udp_ask("127.0.0.1", port, query("a.example", qid=21)))
                slow_tcp = asyncio.ensure_future(tcp_ask("127.0.0.1", port, query("b.example", qid=22)))
                await asyncio.sleep(0.1)
                fast = DNSRecord.parse(await udp_ask("127.0.0.1", port, query("laptop.pal")))
                assert rdatas(fast, "A") == ["100.64.0.2"]
                assert time.monotonic() - started < 0.6
                for slow, qid in ((slow_udp, 21), (slow_tcp, 22)):
                    reply = DNSRecord.parse(await slow)
                    assert reply.header.rcode == RCODE.SERVFAIL and reply.header.id == qid
                    assert str(reply.q.qname) in ("a.example.", "b.example.")
                assert 1.8 < time.monotonic() - started < 2.6

    run(scenario())


def test_no_upstream_gives_servfail_at_once() -> None:
    async def scenario() -> None:
        async with serving(make_zone(), [], addresses=["127.0.0.1"]) as server:
            started = time.monotonic()
            reply = DNSRecord.parse(await udp_ask("127.0.0.1", server.bound[0][1], query("example.com")))
            assert reply.header.rcode == RCODE.SERVFAIL
            assert time.monotonic() - started < 0.5

    run(scenario())


def test_never_forwards_to_itself_and_reads_resolv_conf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with serving(make_zone(), addresses=["127.0.0.1"]) as probe:
            port = probe.bound[0][1]
        server = DnsServer(make_zone(), [f"127.0.0.1:{port}", "192.0.2.53"])
        await server.start(["127.0.0.1"], port)
        try:
            assert server.upstreams == [("192.0.2.53", 53)]
        finally:
            await server.stop()

        conf = tmp_path / "resolv.conf"
        conf.write_text("nameserver 127.0.0.1\nnameserver 192.0.2.54\n")
        monkeypatch.setattr(dns, "_RESOLV_CONF", conf)
        server = DnsServer(make_zone())
        await server.start(["127.0.0.1"], 0)
        try:  # 127.0.0.1:53 is not us (we are on another port), so it stays
            assert server.upstreams == [("127.0.0.1", 53), ("192.0.2.54", 53)]
        finally:
            await server.stop()

    run(scenario())


def test_bind_failures_are_host_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dns, "_BIND_WAIT", 0.2)

    async def scenario() -> None:
        async with serving(make_zone(), addresses=["127.0.0.1"]) as first:
            port = first.bound[0][1]
            with pytest.raises(HostError, match="already uses it"):
                await DnsServer(make_zone(), []).start(["127.0.0.1"], port)
        started = time.monotonic()
        with pytest.raises(HostError, match="no interface has that address"):
            await DnsServer(make_zone(), []).start(["192.0.2.254"], 0)
        assert time.monotonic() - started >= 0.2
        with pytest.raises(InvalidInput):
            await DnsServer(make_zone(), []).start(["localhost"], 0)
        # stop() freed the port: it can be served again
        again = DnsServer(make_zone(), [])
        await again.start(["127.0.0.1"], port)
        await again.stop()
        assert again.bound == []

    run(scenario())
