"""Noise XX, secret-stream and protomux against the JS vectors, fuzzing, and a live JS peer over TCP."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudpal.data.errors import DecodeError, ProtocolError
from cloudpal.data.wire.noise import KeyPair, NoiseHandshake
from cloudpal.data.wire.protomux import (
    Channel,
    ChannelClosed,
    ChannelMessage,
    ChannelOpened,
    ChannelRejected,
    Mux,
    RemoteOpen,
    RemoteOpenCancelled,
)
from cloudpal.data.wire.protomux import Event as MuxEvent
from cloudpal.data.wire.secretstream import (
    MAX_MESSAGE,
    HandshakeComplete,
    Message,
    SecretStream,
    stream_id,
)
from cloudpal.data.wire.stream import Connection, connect, serve

ROOT = Path(__file__).resolve().parents[2]
VECTORS_FILE = Path("/work/shared/notes/hypercore-vectors/noise-vectors.json")
JS_DIR = ROOT / "js"
JS_PEER = Path(__file__).with_name("data_wire_peer.js")


def _vectors() -> dict[str, Any]:
    if not VECTORS_FILE.exists():
        pytest.fail(f"{VECTORS_FILE} is missing")
    vectors: dict[str, Any] = json.loads(VECTORS_FILE.read_text())
    return vectors


def _kp(v: dict[str, Any], name: str) -> KeyPair:
    return KeyPair.from_seed(bytes.fromhex(v[name]))


def _vector_keys(v: dict[str, Any]) -> tuple[KeyPair, KeyPair, KeyPair, KeyPair]:
    """(initiator static, initiator ephemeral, responder static, responder ephemeral) of the transcript."""
    names = ("initiatorStaticSeed", "initiatorEphemeralSeed", "responderStaticSeed", "responderEphemeralSeed")
    si, ei, sr, er = (_kp(v, name) for name in names)
    return si, ei, sr, er


# -- Noise ------------------------------------------------------------------------------------------


def test_noise_transcript_matches_js_vectors() -> None:
    v = _vectors()
    si, ei, sr, er = _vector_keys(v)
    i = NoiseHandshake(True, si, ephemeral_key_pair=ei)
    r = NoiseHandshake(False, sr, ephemeral_key_pair=er)
    assert _kp(v, "initiatorStaticSeed").public_key.hex() == v["initiatorStaticPublicKey"]
    msg1 = i.send()
    assert msg1.hex() == v["msg1"]
    assert r.recv(msg1) == b""
    msg2 = r.send()
    assert msg2.hex() == v["msg2"]
    assert i.recv(msg2) == b""
    msg3 = i.send()
    assert msg3.hex() == v["msg3"]
    assert r.recv(msg3) == b""
    assert i.result is not None and r.result is not None
    assert i.result.handshake_hash.hex() == r.result.handshake_hash.hex() == v["handshakeHash"]
    assert i.result.tx.hex() == r.result.rx.hex() == v["initiator_tx"]
    assert i.result.rx.hex() == r.result.tx.hex() == v["initiator_rx"]
    assert i.result.remote_public_key.hex() == v["responderStaticPublicKey"]
    assert r.result.remote_public_key.hex() == v["initiatorStaticPublicKey"]
    hh = i.result.handshake_hash
    assert stream_id(hh, True).hex() == v["streamId_initiator"]
    assert stream_id(hh, False).hex() == v["streamId_responder"]


def test_secretstream_transcript_framing_matches_js_vectors() -> None:
    v = _vectors()
    si, ei, sr, er = _vector_keys(v)
    i = SecretStream(True, si, ephemeral_key_pair=ei)
    r = SecretStream(False, sr, ephemeral_key_pair=er)
    i.start()
    assert i.data_to_send().hex() == v["msg1_framed"]
    assert r.receive_data(bytes.fromhex(v["msg1_framed"])) == []
    assert r.data_to_send().hex() == v["msg2_framed"]
    events = i.receive_data(bytes.fromhex(v["msg2_framed"]))
    assert events == [HandshakeComplete(bytes.fromhex(v["handshakeHash"]), r.public_key)]
    out = i.data_to_send()
    assert out[:67].hex() == v["msg3_framed"]
    assert out[67:70] == b"\x38\x00\x00" and out[70:102].hex() == v["streamId_initiator"] and len(out) == 126
    events = r.receive_data(out)
    assert events == [HandshakeComplete(bytes.fromhex(v["handshakeHash"]), i.public_key)]
    header = r.data_to_send()
    assert header[:3] == b"\x38\x00\x00" and header[3:35].hex() == v["streamId_responder"]
    assert i.receive_data(header) == []
    assert i.established and r.established


def test_secretstream_sample_decrypts() -> None:
    """The JS-made ciphertext in the vectors pulls with PyNaCl (same libsodium construction)."""
    from nacl import bindings as sodium

    s = _vectors()["secretstream_sample"]
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    header, key = bytes.fromhex(s["header"]), bytes.fromhex(s["key"])
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    plain, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(state, bytes.fromhex(s["ciphertext"]))
    assert plain == s["plaintext"].encode() and tag == 0


def test_noise_rejects_out_of_turn_and_bad_keys() -> None:
    i = NoiseHandshake(True, KeyPair.generate())
    with pytest.raises(ProtocolError):
        i.recv(bytes(32))
    r = NoiseHandshake(False, KeyPair.generate())
    with pytest.raises(ProtocolError):
        r.send()
    r.recv(bytes(32))  # the all-zero "key" is accepted here and fails at the first DH
    with pytest.raises(ProtocolError):
        r.send()


# -- secret stream ----------------------------------------------------------------------------------


def _pair() -> tuple[SecretStream, SecretStream]:
    i, r = SecretStream(True), SecretStream(False)
    i.start()
    return i, r


def _shuttle(a: SecretStream, b: SecretStream) -> tuple[list[Any], list[Any]]:
    """Exchange bytes until both are quiet; returns (events of a, events of b)."""
    ea: list[Any] = []
    eb: list[Any] = []
    while True:
        da, db = a.data_to_send(), b.data_to_send()
        if not da and not db:
            return ea, eb
        eb += b.receive_data(da)
        ea += a.receive_data(db)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[x:y] for x, y in itertools.pairwise(points)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(st.binary(max_size=3000), max_size=8),
    cuts_i=st.lists(st.integers(min_value=0, max_value=10**6), max_size=30),
    cuts_r=st.lists(st.integers(min_value=0, max_value=10**6), max_size=30),
    early=st.booleans(),
)
def test_secretstream_roundtrip_any_chunking(
    messages: list[bytes], cuts_i: list[int], cuts_r: list[int], early: bool
) -> None:
    i, r = _pair()
    if early:  # queued before the handshake, sent right after our header
        for m in messages:
            i.send(m)
            r.send(m[::-1])
        i.send_keepalive()
    # run the handshake with bytes chopped arbitrarily
    events_i: list[Any] = []
    events_r: list[Any] = []
    for _ in range(4):
        for chunk in _chunks(i.data_to_send(), cuts_i):
            events_r += r.receive_data(chunk)
        for chunk in _chunks(r.data_to_send(), cuts_r):
            events_i += i.receive_data(chunk)
    assert i.established and r.established
    assert i.handshake_hash == r.handshake_hash
    assert i.remote_public_key == r.public_key and r.remote_public_key == i.public_key
    if not early:
        for m in messages:
            i.send(m)
            r.send_keepalive()
            r.send(m[::-1])
        for chunk in _chunks(i.data_to_send(), cuts_i):
            events_r += r.receive_data(chunk)
        for chunk in _chunks(r.data_to_send(), cuts_r):
            events_i += i.receive_data(chunk)
    assert [e.plaintext for e in events_r if isinstance(e, Message)] == [m for m in messages if m]
    assert [e.plaintext for e in events_i if isinstance(e, Message)] == [m[::-1] for m in messages if m]
    assert sum(isinstance(e, HandshakeComplete) for e in events_i + events_r) == 2


def test_secretstream_large_messages_and_limits() -> None:
    i, r = _pair()
    _shuttle(i, r)
    big = random.Random(1).randbytes(MAX_MESSAGE)
    i.send(big)
    data = i.data_to_send()
    assert data[:3] == b"\xff\xff\xff"
    events = []
    for k in range(0, len(data), 1 << 20):
        events += r.receive_data(data[k : k + (1 << 20)])
    assert events == [Message(big)]
    with pytest.raises(ValueError, match="frame limit"):
        i.send(bytes(MAX_MESSAGE + 1))


def _established() -> tuple[SecretStream, SecretStream]:
    i, r = _pair()
    _shuttle(i, r)
    return i, r


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"\x00\x00\x00", "shorter than 17"),
        (b"\x10\x00\x00" + bytes(16), "shorter than 17"),
        (b"\x11\x00\x00" + bytes(17), "authentication"),
    ],
)
def test_secretstream_bad_data_frames(frame: bytes, match: str) -> None:
    _, r = _established()
    with pytest.raises(ProtocolError, match=match):
        r.receive_data(frame)
    assert r.failed
    with pytest.raises(ProtocolError):
        r.receive_data(b"")


def test_secretstream_bad_header() -> None:
    i, r = _pair()
    r.receive_data(i.data_to_send())  # msg1
    i.receive_data(r.data_to_send())  # msg2 -> i sends msg3 + header
    r.receive_data(i.data_to_send())
    header = r.data_to_send()
    bad = bytearray(header)
    bad[5] ^= 1
    with pytest.raises(ProtocolError, match="stream id"):
        i.receive_data(bytes(bad))
    i2, r2 = _pair()
    r2.receive_data(i2.data_to_send())
    i2.receive_data(r2.data_to_send())
    r2.receive_data(i2.data_to_send())
    r2.data_to_send()
    with pytest.raises(ProtocolError, match="header message"):
        i2.receive_data(b"\x37\x00\x00" + bytes(55))


def _transcript() -> tuple[bytes, bytes]:
    """Everything each side of a session sends (handshake, header, a few messages)."""
    i, r = _pair()
    to_r = bytearray()
    to_i = bytearray()
    for _ in range(3):
        d = i.data_to_send()
        to_r += d
        r.receive_data(d)
        d = r.data_to_send()
        to_i += d
        i.receive_data(d)
    i.send(b"hello")
    i.send(b"")
    r.send(b"world")
    to_r += i.data_to_send()
    to_i += r.data_to_send()
    return bytes(to_r), bytes(to_i)


def _only_protocol_errors(stream: SecretStream, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            stream.receive_data(chunk)
    except (ProtocolError, DecodeError):
        pass


@settings(max_examples=300, deadline=None)
@given(garbage=st.lists(st.binary(max_size=400), max_size=6), initiator=st.booleans())
def test_fuzz_secretstream_garbage(garbage: list[bytes], initiator: bool) -> None:
    _only_protocol_errors(SecretStream(initiator), garbage)


TRANSCRIPT = _transcript()


@settings(max_examples=300, deadline=None)
@given(
    side=st.sampled_from([0, 1]),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), max_size=4),
    cut=st.integers(min_value=0),
    extra=st.binary(max_size=40),
)
def test_fuzz_secretstream_mutated_transcript(
    side: int, flips: list[tuple[int, int]], cut: int, extra: bytes
) -> None:
    data = bytearray(TRANSCRIPT[side])
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    data = data[: cut % (len(data) + 1)] + extra
    # side 0 = bytes the initiator sent, fed to a responder; side 1 the reverse
    _only_protocol_errors(SecretStream(side == 1), [bytes(data)])


# -- protomux ---------------------------------------------------------------------------------------


def _pump(a: Mux, b: Mux, ea: list[MuxEvent], eb: list[MuxEvent],
          on_b: Callable[[MuxEvent], None] | None = None) -> None:
    """Deliver frames both ways until both are quiet; `on_b` reacts to b's events (e.g. accept)."""
    while True:
        fa, fb = a.frames_to_send(), b.frames_to_send()
        if not fa and not fb:
            return
        for f in fa:
            for e in b.receive_frame(f):
                eb.append(e)
                if on_b is not None:
                    on_b(e)
            eb += b.take_events()
        for f in fb:
            ea += a.receive_frame(f)


def test_mux_simultaneous_open_messages_close() -> None:
    a, b = Mux(), Mux()
    ea: list[MuxEvent] = []
    eb: list[MuxEvent] = []
    ca = a.open_channel("cloudpal/test", b"\x01" * 32, b"hs-a")
    cb = b.open_channel("cloudpal/test", b"\x01" * 32, b"hs-b")
    assert ca.local_id == cb.local_id == 1
    assert ca.send(0, b"before-open")  # allowed: travels after our open
    _pump(a, b, ea, eb)
    assert ea[0] == ChannelOpened(ca, b"hs-b") and eb[0] == ChannelOpened(cb, b"hs-a")
    assert eb[1] == ChannelMessage(cb, 0, b"before-open")
    cb.send(7, b"")
    _pump(a, b, ea, eb)
    assert ea[-1] == ChannelMessage(ca, 7, b"")
    ca.close()
    assert not ca.send(0, b"x")
    _pump(a, b, ea, eb)
    assert eb[-1] == ChannelClosed(cb) and cb.closed
    assert a.is_idle() and b.is_idle()
    # ids are reused after close
    assert a.open_channel("again").local_id == 1


def test_mux_accept_buffers_until_answered() -> None:
    a, b = Mux(), Mux()
    ea: list[MuxEvent] = []
    eb: list[MuxEvent] = []
    ca = a.open_channel("p", None, b"hello")
    ca.send(0, b"m1")
    ca.send(1, b"m2")
    _pump(a, b, ea, eb)
    assert eb == [RemoteOpen("p", None, b"hello", 1)]
    cb = b.open_channel("p", None, b"welcome")  # accept
    assert cb.opened
    assert b.take_events() == [
        ChannelOpened(cb, b"hello"), ChannelMessage(cb, 0, b"m1"), ChannelMessage(cb, 1, b"m2")
    ]
    _pump(a, b, ea, eb)
    assert ea == [ChannelOpened(ca, b"welcome")]


def test_mux_reject_and_cancel() -> None:
    a, b = Mux(), Mux()
    ea: list[MuxEvent] = []
    eb: list[MuxEvent] = []
    ca = a.open_channel("nobody", b"k")
    _pump(a, b, ea, eb)
    assert eb == [RemoteOpen("nobody", b"k", b"", 1)]
    assert b.reject("nobody", b"k") and not b.reject("nobody", b"k")
    _pump(a, b, ea, eb)
    assert ea == [ChannelRejected(ca)] and ca.closed
    assert a.is_idle() and a.open_channel("x").local_id == 1  # rejected id freed
    # closed before the remote answered: the remote acknowledges with a reject, ids stay in sync
    a2, b2 = Mux(), Mux()
    ea, eb = [], []
    c2 = a2.open_channel("late")
    c2.send(0, b"dropped")
    c2.close()
    _pump(a2, b2, ea, eb)
    assert eb == [RemoteOpen("late", None, b"", 1), RemoteOpenCancelled("late", None, 1)]
    assert a2.open_channel("late").local_id == 1
    _pump(a2, b2, ea, eb)
    assert isinstance(eb[-1], RemoteOpen) and eb[-1].remote_id == 1


def test_mux_cork_batch_bytes_match_notes_example() -> None:
    a = Mux()
    ch = a.open_channel("hypercore/alpha", b"d" * 32)
    a.frames_to_send()
    a.cork()
    ch.send(0, bytes.fromhex("0f000300"))  # sync
    ch.send(8, bytes.fromhex("000003"))  # range
    a.uncork()
    assert a.frames_to_send() == [bytes.fromhex("00000105000f0003000408000003")]
    # and the receiving side decodes the JS trace bytes into two messages
    b = Mux()
    b.receive_frame(b"\x00\x01\x01" + b"\x0fhypercore/alpha" + b"\x20" + b"d" * 32)
    cb = b.open_channel("hypercore/alpha", b"d" * 32)
    b.take_events()
    events = b.receive_frame(bytes.fromhex("00000105000f0003000408000003"))
    assert events == [
        ChannelMessage(cb, 0, bytes.fromhex("0f000300")), ChannelMessage(cb, 8, bytes.fromhex("000003"))
    ]


def test_mux_batch_with_channel_switch_and_control() -> None:
    a, b = Mux(), Mux()
    ea: list[MuxEvent] = []
    eb: list[MuxEvent] = []
    a.cork()
    c1 = a.open_channel("one")
    c2 = a.open_channel("two")
    c1.send(0, b"a")
    c2.send(1, b"b")
    c1.send(2, b"c")
    a.uncork()
    frames = a.frames_to_send()
    assert len(frames) == 1 and frames[0][:2] == b"\x00\x00"
    def accept(e: MuxEvent) -> None:
        if isinstance(e, RemoteOpen):
            b.open_channel(e.protocol, e.id)

    for f in frames:
        for e in b.receive_frame(f):
            eb.append(e)
            accept(e)
    eb += b.take_events()
    _pump(a, b, ea, eb, accept)
    got = [(e.channel.protocol, e.type, e.payload) for e in eb if isinstance(e, ChannelMessage)]
    # all three sat in one frame, so each channel's messages were buffered until it was accepted
    assert got == [("one", 0, b"a"), ("one", 2, b"c"), ("two", 1, b"b")]
    assert sum(isinstance(e, ChannelOpened) for e in ea) == 2


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"\x00\x01\x00\x01p\x00", "id 0"),  # open with id 0
        (b"\x00\x01\x02\x01p\x00", "not available"),  # skips id 1
        (b"\x00\x02\x05", "invalid reject"),  # reject of an id we never opened
    ],
)
def test_mux_invalid_control(frame: bytes, match: str) -> None:
    m = Mux()
    with pytest.raises(ProtocolError, match=match):
        m.receive_frame(frame)
    assert m.failed


def test_mux_remote_id_in_use_and_ignored_frames() -> None:
    m = Mux()
    assert m.receive_frame(b"\x00\x01\x01\x01p\x00")[0] == RemoteOpen("p", None, b"", 1)
    assert m.receive_frame(b"") == []  # empty frames are ignored
    assert m.receive_frame(b"\x09\x00xyz") == []  # unknown remote channel: ignored
    assert m.receive_frame(b"\x00\x07zz") == []  # unknown control type: ignored
    assert m.receive_frame(b"\x00\x03\x09") == []  # close of unknown id: ignored
    with pytest.raises(ProtocolError, match="not available"):
        m.receive_frame(b"\x00\x01\x01\x01q\x00")


@settings(max_examples=400, deadline=None)
@given(frames=st.lists(st.binary(max_size=60), max_size=8), prefix=st.booleans())
def test_fuzz_mux(frames: list[bytes], prefix: bool) -> None:
    m = Mux()
    if prefix:
        m.open_channel("p")
    try:
        for f in ([b"\x00\x01\x01\x01p\x00"] if prefix else []) + frames:
            for e in m.receive_frame(f):
                if isinstance(e, RemoteOpen) and len(e.protocol) % 2:
                    m.open_channel(e.protocol, e.id, unique=False)
                elif isinstance(e, RemoteOpen):
                    m.reject(e.protocol, e.id)
            m.frames_to_send()
    except (ProtocolError, DecodeError):
        pass


@settings(max_examples=150, deadline=None)
@given(rng=st.randoms(use_true_random=False))
def test_mux_two_peers_stay_consistent(rng: random.Random) -> None:
    """Random opens/closes/corks on both sides, frames delivered late, opens answered late: two
    well-behaved muxes never accuse each other, and every channel left open is paired id for id."""
    a, b = Mux(), Mux()
    inbox: dict[int, list[bytes]] = {id(a): [], id(b): []}
    pending: dict[int, list[RemoteOpen]] = {id(a): [], id(b): []}
    channels: dict[int, list[Channel]] = {id(a): [], id(b): []}
    other = {id(a): b, id(b): a}

    def answer(m: Mux, opens: list[RemoteOpen], p: float) -> None:
        for e in list(opens):
            if rng.random() < p:
                opens.remove(e)
                if rng.random() < 0.6 and not any(c.protocol == e.protocol and not c.closed
                                                  for c in channels[id(m)]):
                    channels[id(m)].append(m.open_channel(e.protocol, e.id, b"acc"))
                else:
                    m.reject(e.protocol, e.id)

    def deliver(m: Mux, count: int) -> None:
        q = inbox[id(m)]
        for frame in q[:count]:
            pending[id(m)] += [e for e in m.receive_frame(frame) if isinstance(e, RemoteOpen)]
        del q[:count]

    for _ in range(120):
        m = rng.choice([a, b])
        op = rng.random()
        if op < 0.15:
            protocol = rng.choice("pqr")
            if not any(c.protocol == protocol and not c.closed for c in channels[id(m)]):
                channels[id(m)].append(m.open_channel(protocol))
        elif op < 0.25 and channels[id(m)]:
            rng.choice(channels[id(m)]).close()
        elif op < 0.35 and channels[id(m)]:
            rng.choice(channels[id(m)]).send(0, b"x")
        elif op < 0.4:
            m.cork()
        elif op < 0.45 and m._corked:
            m.uncork()
        else:
            deliver(m, rng.randrange(len(inbox[id(m)]) + 1))
        for x in (a, b):
            answer(x, pending[id(x)], 0.3)
            inbox[id(other[id(x)])] += x.frames_to_send()
    for x in (a, b):  # settle: uncork, answer everything, deliver everything
        while x._corked:
            x.uncork()
    for _ in range(6):
        for x in (a, b):
            answer(x, pending[id(x)], 1.0)
            inbox[id(other[id(x)])] += x.frames_to_send()
        for x in (a, b):
            deliver(x, len(inbox[id(x)]))
    for ca in a:
        assert ca.opened, ca
        cb = next(c for c in b if c.local_id == ca.remote_id)
        assert cb.remote_id == ca.local_id and cb.protocol == ca.protocol


def test_mux_nested_batches_bounded() -> None:
    message = b"\x00\x00"  # control type 0 (batch) on channel 0, no entries
    for _ in range(50):
        message = b"\x00\x00" + bytes([len(message)]) + message  # a batch whose one entry is `message`
    with pytest.raises(ProtocolError, match="nested"):
        Mux().receive_frame(b"\x00" + message)
    assert Mux().receive_frame(b"\x00\x00\x00\x02\x00\x00") == []  # one level of nesting is fine


# -- asyncio shell, Python <-> Python ---------------------------------------------------------------


async def _py_py() -> None:
    async def handler(conn: Connection) -> None:
        async for event in conn:
            if isinstance(event, RemoteOpen):
                conn.open_channel(event.protocol, event.id, b"srv")
            elif isinstance(event, ChannelMessage):
                await conn.send(event.channel, 1, event.payload[::-1])
            elif isinstance(event, ChannelClosed):
                return

    server = await serve(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        conn = await connect("127.0.0.1", port, KeyPair.generate())
        ch = conn.open_channel("p", b"i")
        opened = await conn.next_event(5)
        assert opened == ChannelOpened(ch, b"srv")
        await conn.send(ch, 0, b"abc")
        assert await conn.next_event(5) == ChannelMessage(ch, 1, b"cba")
        conn.close_channel(ch)
        async for _ in conn:  # the server handler returns and closes: iteration ends
            pass
        await conn.close()
    finally:
        server.close()
        await server.wait_closed()


def test_asyncio_python_to_python() -> None:
    asyncio.run(asyncio.wait_for(_py_py(), 10))


async def _memory_pair() -> None:
    """Connection works over any StreamReader/StreamWriter pair, here a local socket pair."""
    import socket

    s1, s2 = socket.socketpair()
    r1, w1 = await asyncio.open_connection(sock=s1)
    r2, w2 = await asyncio.open_connection(sock=s2)
    c1, c2 = await asyncio.gather(
        Connection.establish(r1, w1, is_initiator=True, keepalive=0.02),
        Connection.establish(r2, w2, is_initiator=False),
    )
    assert c1.handshake_hash == c2.handshake_hash
    assert c1.remote_public_key == c2.stream.public_key
    await asyncio.sleep(0.1)  # a few keep-alives go out and are swallowed
    assert c2.stream.established
    c2.writer.write(b"\x14\x00\x00" + bytes(20))  # not a valid ciphertext: c1 must fail with ProtocolError
    with pytest.raises(ProtocolError, match="authentication"):
        async for _ in c1:
            pass
    async for _ in c2:  # c1 closed the socket on the error: c2 just ends
        pass
    await c1.close()
    await c2.close()


def test_asyncio_over_socketpair() -> None:
    asyncio.run(asyncio.wait_for(_memory_pair(), 10))


# -- live interop with the JS stack -----------------------------------------------------------------

SIZES = [0, 1, 17, 1000, 65536, 1 << 20]
TEST_ID = b"cloudpal-test-id"


def _require_js() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: install Node.js 20, then run `npm ci` in js/")
    for pkg in ("@hyperswarm/secret-stream", "protomux", "compact-encoding", "b4a"):
        if not (JS_DIR / "node_modules" / pkg / "package.json").exists():
            pytest.fail(f"js/node_modules/{pkg} is missing: run `npm ci` in js/")
    return node


class _Driver:
    """Drives one Connection through the interop scenario, recording frames to spot batches."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.frames: list[bytes] = []
        mux = conn.mux
        original = mux.receive_frame

        def recording(frame: bytes) -> list[MuxEvent]:
            self.frames.append(frame)
            return original(frame)

        mux.receive_frame = recording  # type: ignore[method-assign]
        self.seen: list[MuxEvent] = []
        self.channels: dict[str, Channel] = {}

    async def until(self, done: Callable[[], bool]) -> None:
        while not done():
            event = await self.conn.next_event(15)
            self.seen.append(event)
            if isinstance(event, RemoteOpen):
                if event.protocol == "cloudpal/accept":
                    assert event.handshake == b"please-accept"
                    self.channels["accept"] = self.conn.open_channel(event.protocol, event.id, b"py-accepts")
                else:
                    assert event.protocol == "cloudpal/reject"
                    assert self.conn.reject(event.protocol, event.id)

    def messages(self, name: str, type: int | None = None) -> list[bytes]:
        ch = self.channels.get(name)
        return [e.payload for e in self.seen if isinstance(e, ChannelMessage) and e.channel is ch
                and (type is None or e.type == type)]

    def _more_than(self, count: int) -> Callable[[], bool]:
        return lambda: len(self.messages("main", 1)) > count

    def has(self, kind: type, name: str) -> bool:
        return any(isinstance(e, kind) and getattr(e, "channel", None) is self.channels.get(name)
                   for e in self.seen)

    async def run(self) -> None:
        conn = self.conn
        main = self.channels["main"] = conn.open_channel("cloudpal/test", TEST_ID, b"py-hello")
        self.channels["from-py"] = conn.open_channel("cloudpal/from-py", None, b"py-wants")
        self.channels["nobody"] = conn.open_channel("cloudpal/nobody", b"x", b"")
        await self.until(lambda: self.has(ChannelOpened, "main") and self.has(ChannelOpened, "from-py")
                         and self.has(ChannelRejected, "nobody") and self.messages("accept") == [b"early"])
        opened = {e.channel.protocol: e.remote_handshake for e in self.seen if isinstance(e, ChannelOpened)}
        assert opened == {"cloudpal/test": b"js-hello", "cloudpal/from-py": b"js-accepts",
                          "cloudpal/accept": b"please-accept"}
        assert self.channels["nobody"].closed

        rng = random.Random(7)
        for size in SIZES:
            payload = rng.randbytes(size)
            await conn.send(main, 0, payload)
            await self.until(self._more_than(len(self.messages("main", 1))))
            assert self.messages("main", 1)[-1] == payload[::-1], size
        await conn.send(self.channels["from-py"], 0, b"from python")
        await self.until(lambda: self.messages("from-py") == [b"nohtyp morf"])
        conn.stream.send_keepalive()  # JS must ignore an empty message
        conn.flush()

        # a batch from us (JS answers a multi-message batch with a batch of its own)
        before = len(self.frames)
        conn.cork()
        main.send(0, b"a")
        main.send(0, b"bb")
        self.channels["from-py"].send(0, b"ccc")
        main.send(0, b"dddd")
        conn.uncork()
        await self.until(lambda: len(self.messages("main", 1)) == len(SIZES) + 3
                         and len(self.messages("from-py")) == 2)
        assert self.messages("main", 1)[-3:] == [b"a", b"bb", b"dddd"]
        assert self.messages("from-py")[-1] == b"ccc"
        assert any(f[:2] == b"\x00\x00" for f in self.frames[before:]), "JS should have replied with a batch"

        # a batch from JS spanning two channels
        before = len(self.frames)
        await conn.send(main, 2, b"")
        await self.until(
            lambda: self.messages("accept")[-1:] == [b"y"] and len(self.messages("main", 1)) >= len(SIZES) + 6
        )
        assert self.messages("main", 1)[-3:] == [b"x1", b"x2", b"x3"]
        batch = [f for f in self.frames[before:] if f[:2] == b"\x00\x00"]
        assert len(batch) == 1 and batch[0].count(b"x") == 3

        # close: JS reacts by closing the channel it opened
        conn.close_channel(main)
        await self.until(lambda: self.has(ChannelClosed, "accept"))
        assert main.closed and self.channels["accept"].closed
        await conn.close()


async def _read_js_events(proc: asyncio.subprocess.Process, lines: list[dict[str, Any]]) -> None:
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        lines.append(json.loads(line))


async def _interop(js_listens: bool) -> tuple[list[dict[str, Any]], Connection]:
    node = _require_js()
    key_pair = KeyPair.generate()
    lines: list[dict[str, Any]] = []
    conns: list[Connection] = []
    server: asyncio.Server | None = None
    if js_listens:
        proc = await asyncio.create_subprocess_exec(
            node, str(JS_PEER), "listen", cwd=JS_DIR,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        try:
            first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10) or b"{}")
            assert first.get("event") == "listening", first
            reader = asyncio.create_task(_read_js_events(proc, lines))
            conn = await connect("127.0.0.1", first["port"], key_pair)
            conns.append(conn)
            await _Driver(conn).run()
        except BaseException:
            proc.kill()
            raise
    else:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def handler(conn: Connection) -> None:
            conns.append(conn)
            try:
                await _Driver(conn).run()
            except BaseException as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        server = await serve(handler, "127.0.0.1", 0, key_pair)
        port = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            node, str(JS_PEER), "connect", str(port), cwd=JS_DIR,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        reader = asyncio.create_task(_read_js_events(proc, lines))
        try:
            await asyncio.wait_for(done, 25)
        except BaseException:
            proc.kill()
            raise
        finally:
            server.close()
    try:
        await asyncio.wait_for(proc.wait(), 10)
        await reader
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.stderr is not None
    stderr = (await proc.stderr.read()).decode()
    assert proc.returncode == 0, stderr
    assert conns[0].stream.public_key == key_pair.public_key
    return lines, conns[0]


@pytest.mark.parametrize("js_listens", [True, False], ids=["python-dials-js", "js-dials-python"])
def test_live_interop_with_js(js_listens: bool) -> None:
    lines, conn = asyncio.run(asyncio.wait_for(_interop(js_listens), 28))
    by_event: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_event.setdefault(line["event"], []).append(line)
    assert "error" not in by_event, by_event["error"]
    hs = by_event["handshake"][0]
    assert hs["hash"] == conn.handshake_hash.hex()
    assert hs["remotePublicKey"] == conn.stream.public_key.hex()
    assert hs["publicKey"] == conn.remote_public_key.hex()
    assert by_event["main-open"] == [{"event": "main-open", "handshake": b"py-hello".hex()}]
    assert by_event["from-py-open"] == [{"event": "from-py-open", "handshake": b"py-wants".hex()}]
    assert by_event["accept-open"] == [{"event": "accept-open", "handshake": b"py-accepts".hex()}]
    assert by_event["rejected"] == [{"event": "rejected", "isRemote": True, "opened": False}]
    assert by_event["main-closed"] == [{"event": "main-closed", "isRemote": True}]
    assert by_event["accept-closed"] == [{"event": "accept-closed", "isRemote": False}]
    assert "end" in by_event
