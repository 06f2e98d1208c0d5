"""Hypercore replication messages against the notes' vectors, real JS traces and the JS encoder itself.

The JS cross-checks drive one long-lived `node` process per module (JSON lines on
stdin/stdout) running hypercore 11.37.1's own `lib/messages.js`, so hypothesis can
generate and shrink hundreds of cases without paying node's start-up per case.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudpal.data.encoding import MAX_SAFE_INTEGER, Reader, Writer
from cloudpal.data.errors import DecodeError
from cloudpal.data.wire.messages import (
    MESSAGE_TYPES,
    Bitfield,
    Cancel,
    ChannelHandshake,
    Data,
    DataBlock,
    DataHash,
    DataSeek,
    DataUpgrade,
    Extension,
    Message,
    NoData,
    Node,
    Range,
    Request,
    RequestBlock,
    RequestSeek,
    RequestUpgrade,
    Sync,
    UnknownMessage,
    Unwant,
    Want,
    decode_message,
    encode_message,
)

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "js"
# The notes' machine-readable vectors; the values below are copied from it so the tests stand alone.
VECTORS_FILE = Path("/work/shared/notes/hypercore-vectors/vectors.json")
VECTORS = json.loads(VECTORS_FILE.read_text()) if VECTORS_FILE.exists() else None

H1 = bytes.fromhex("9cac92aaed9e7d11eb629465684582ce39cb496303998de123533b09e16f2f06")
H2 = bytes.fromhex("520abb1082986713dabf6862ccfe1bb6b87037647d0019b31219493ef186597c")
H4 = bytes.fromhex("9435aca782b6bc40e253392d45c885f3b1ad47f23e7b6c3f9daf5b0868c438c5")
SIG_RAW = bytes.fromhex("8b46e19c793a26f79f7e6e9110fcd3874801443c492bf02395f213a076a082d1"
                        "e3a49c4f76968a894e2fa9686f5a229b87b4af3a7312151cc36758f7da132a03")
SIG = b"\x01\x00" + SIG_RAW + b"\x00\x00"
MANIFEST = bytes.fromhex("0100000101004144eea531e483d54e0c14f4ca68e0644f355343ff6fcb0f005200e12cd747cb"
                         "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8")
DISCOVERY_KEY = bytes.fromhex("f5a5ca96021ad676c5d5a4d3173d456b34c652f306a2ec320a0cc0f2c4cb7040")
CAP_INITIATOR = bytes.fromhex("0d61649d08350c0fef479742848e2ea64745bee973ee289f451fa82a13981089")
CAP_RESPONDER = bytes.fromhex("a1a7a00db08b076b36b121bbc182bcb72f788760a86f5df9f9e1796c5267bc72")
PROOF_DATA = (
    "190100000161010201520abb1082986713dabf6862ccfe1bb6b87037647d0019b31219493ef186597c0003010401"
    "9435aca782b6bc40e253392d45c885f3b1ad47f23e7b6c3f9daf5b0868c438c500440100"
    + SIG_RAW.hex() + "0000" + MANIFEST.hex()
)

# §7.2 wire vectors (also `wire` in vectors.json).
WIRE_VECTORS: dict[str, tuple[Message, str]] = {
    "sync": (Sync(fork=0, length=3, remote_length=0, can_upgrade=True, uploading=True, downloading=True,
                  has_manifest=True), "0f000300"),
    "request_block0_upgrade": (Request(id=1, fork=0, block=RequestBlock(0, 0), upgrade=RequestUpgrade(0, 3),
                                       manifest=True), "19010000000003"),
    "range_full": (Range(start=0, length=3), "000003"),
    "range_one": (Range(start=7, length=1), "0207"),
    "want": (Want(start=0, length=32768), "00fd0080"),
    "noData": (NoData(request=4, reason=1), "040101"),
    "cancel": (Cancel(request=4), "04"),
    "extension": (Extension(name="foo", message=b"bar"), "03666f6f626172"),
    "bitfield": (Bitfield(start=0, words=(7,)), "000107000000"),
}


def test_type_table() -> None:
    assert [MESSAGE_TYPES[t] for t in range(10)] == [Sync, Request, Cancel, Data, NoData, Want, Unwant,
                                                     Bitfield, Range, Extension]
    assert all(t == cls.TYPE for t, cls in MESSAGE_TYPES.items())


@pytest.mark.parametrize("name", sorted(WIRE_VECTORS))
def test_wire_vectors(name: str) -> None:
    msg, hexed = WIRE_VECTORS[name]
    if VECTORS is not None:
        assert VECTORS["wire"][name] == hexed
    assert encode_message(msg) == (msg.TYPE, bytes.fromhex(hexed))
    assert decode_message(msg.TYPE, bytes.fromhex(hexed)) == msg


def test_handshake_vector() -> None:
    hexed = "01" + CAP_INITIATOR.hex()
    if VECTORS is not None:
        assert VECTORS["wire"]["handshake"] == hexed
    hs = ChannelHandshake(seeks=True, capability=CAP_INITIATOR)
    assert hs.encode().hex() == hexed
    assert ChannelHandshake.decode(bytes.fromhex(hexed)) == hs
    lenient = ChannelHandshake.decode(b"\x00" + CAP_INITIATOR + b"junk")  # trailing bytes ignored, as JS
    assert lenient == ChannelHandshake(False, CAP_INITIATOR)
    with pytest.raises(DecodeError):
        ChannelHandshake.decode(b"\x01" + CAP_INITIATOR[:31])
    with pytest.raises(ValueError):
        ChannelHandshake(True, b"short").encode()


def test_proof_data_message_vector() -> None:
    if VECTORS is not None:
        assert VECTORS["proof_block0_upgrade3"]["encodedDataMessage"] == PROOF_DATA
        assert VECTORS["manifestEncoded"] == MANIFEST.hex()
        assert VECTORS["signatureMultisig"] == SIG.hex()
    expected = Data(request=1, fork=0, block=DataBlock(0, b"a", (Node(2, 1, H2),)),
                    upgrade=DataUpgrade(0, 3, (Node(4, 1, H4),), (), SIG), manifest=MANIFEST)
    assert decode_message(3, bytes.fromhex(PROOF_DATA)) == expected
    assert encode_message(expected) == (3, bytes.fromhex(PROOF_DATA))


# ---- §7.5: frames of a real JS<->JS session ---------------------------------------------

KNOWN = [H1, H2, H4, SIG_RAW, MANIFEST, DISCOVERY_KEY]


def _expand(template: str) -> bytes:
    """The notes abbreviate long values as `abcd…wxyz`; put the full known value back."""
    out = []
    for token in template.replace("|", " ").split():
        if "…" in token:
            head, tail = token.split("…")
            (match,) = [k.hex() for k in KNOWN if k.hex().startswith(head) and k.hex().endswith(tail)]
            token = match
        out.append(token)
    return bytes.fromhex("".join(out))


def _split_frame(frame: bytes) -> list[tuple[int, int, bytes]]:
    """(channel, type, payload) of each message in a protomux frame, batches unpacked."""
    r = Reader(frame)
    channel, type_ = r.uint(), r.uint()
    if (channel, type_) != (0, 0):
        return [(channel, type_, r.raw())]
    channel = r.uint()
    out = []
    while not r.done():
        size = r.uint()
        if size == 0:
            channel = r.uint()
            continue
        inner = Reader(r.fixed(size))
        out.append((channel, inner.uint(), inner.raw()))
    return out


def _join_frame(parts: list[tuple[int, int, bytes]], batch: bool) -> bytes:
    w = Writer()
    if not batch:
        ((channel, type_, payload),) = parts
        return w.uint(channel).uint(type_).raw(payload).value()
    w.uint(0).uint(0).uint(parts[0][0])
    for _, type_, payload in parts:
        w.buffer(Writer().uint(type_).raw(payload).value())
    return w.value()


TRACE: list[tuple[str, bool, list[Message]]] = [
    ("00000105000f0003000408000003", True,
     [Sync(0, 3, 0, can_upgrade=True, uploading=True, downloading=True, has_manifest=True), Range(0, 3)]),
    ("000001050007000000", True, [Sync(0, 0, 0, can_upgrade=True, uploading=True, downloading=True)]),
    ("00000106011801000003", True, [Request(id=1, fork=0, upgrade=RequestUpgrade(0, 3), manifest=True)]),
    ("0103 18 01 00 | 00 03 | 02 01 02 9cac…2f06 04 01 9435…38c5 | 00 | 44 0100 8b46…2a03 0000 "
     "| 0100000101004144…31b8", False,
     [Data(request=1, fork=0, upgrade=DataUpgrade(0, 3, (Node(1, 2, H1), Node(4, 1, H4)), (), SIG),
           manifest=MANIFEST)]),
    ("0101 21 01 00 00 01 01", False, [Request(id=1, fork=0, block=RequestBlock(0, 1), priority=1)]),
    ("0103 01 01 00 00 01 61 01 02 01 520a…597c", False,
     [Data(request=1, fork=0, block=DataBlock(0, b"a", (Node(2, 1, H2),)))]),
]


@pytest.mark.parametrize(("template", "batch", "expected"), TRACE)
def test_trace_frames(template: str, batch: bool, expected: list[Message]) -> None:
    frame = _expand(template)
    parts = _split_frame(frame)
    assert all(channel == 1 for channel, _, _ in parts)
    assert [decode_message(t, payload) for _, t, payload in parts] == expected
    assert _join_frame([(1, *encode_message(m)) for m in expected], batch) == frame


def test_trace_open_frame() -> None:
    frame = _expand("00 01 01 0f6879706572636f72652f616c706861 20 f5a5ca96…c4cb7040 01") + CAP_RESPONDER
    r = Reader(frame)
    assert (r.uint(), r.uint(), r.uint(), r.string(), r.optional_buffer()) == \
        (0, 1, 1, "hypercore/alpha", DISCOVERY_KEY)
    assert ChannelHandshake.decode(r.raw()) == ChannelHandshake(seeks=True, capability=CAP_RESPONDER)


# ---- tolerance and errors -------------------------------------------------------------


@pytest.mark.parametrize(("type_", "hexed", "expected"), [
    (4, "04", NoData(4)),  # old peers: no flags at all
    (4, "0400", NoData(4)),
    (4, "040100", NoData(4, 0)),  # reason 0 flagged: kept as read, written back without it
    (5, "0003", Want(0, 3)),
    (5, "000300", Want(0, 3)),
    (5, "000303", Want(0, 3, any=True)),  # unknown flag bits are ignored
    (6, "00fd008001", Unwant(0, 32768, any=True)),
    (8, "000001", Range(0, 1)),  # a length of 1 need not use the flag
    (8, "030901", Range(9, 1, drop=True)),  # flag wins, no length read
    (0, "fd0001010203040506", Sync(1, 2, 3)),  # unknown flag bits and trailing bytes are ignored
    (1, "2001000000", Request(id=1, fork=0, priority=0)),
    (2, "05ffff", Cancel(5)),
    (3, "00010203", Data(request=1, fork=2)),
    (3, "0801020304000000", Data(1, 2, upgrade=DataUpgrade(3, 4))),  # empty signature is None
    (7, "2000", Bitfield(32, ())),
    (9, "00", Extension("", b"")),
    (9, "02ff61", Extension("\ufffda", b"")),  # JS decodes bad UTF-8 names with U+FFFD
])
def test_decode_tolerance(type_: int, hexed: str, expected: Message) -> None:
    assert decode_message(type_, bytes.fromhex(hexed)) == expected


@pytest.mark.parametrize(("type_", "hexed"), [
    (0, ""), (0, "0f0003"), (1, "01010000"), (1, "200100"), (2, ""), (3, "100102"), (3, "0101020001"),
    (3, "0801020304000005aa"), (4, ""), (5, "00"), (7, "000207000000"), (8, "0000"), (9, "05666f"),
    (2, "ff0000000000002000"),  # 2^53: JS refuses it
    (3, "0101020000fe01001000"),  # node array count above 0x100000
])
def test_decode_errors(type_: int, hexed: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(type_, bytes.fromhex(hexed))
    assert not isinstance(info.value, UnknownMessage)


@pytest.mark.parametrize("type_", [10, 11, 255, 1 << 40, -1])
def test_unknown_type(type_: int) -> None:
    with pytest.raises(UnknownMessage) as info:
        decode_message(type_, b"\x00\x00\x00")
    assert isinstance(info.value, DecodeError)
    assert info.value.type == type_


@pytest.mark.parametrize(("msg", "hexed"), [
    (NoData(4, 0), "0400"),
    (NoData(4, None), "0400"),
    (Request(id=1, fork=0, priority=0), "000100"),
    (Want(1, 2, any=False), "0102"),
    (Data(1, 2, upgrade=DataUpgrade(3, 4, signature=b"")), "0801020304000000"),
])
def test_js_falsy_defaults(msg: Message, hexed: str) -> None:
    assert encode_message(msg)[1].hex() == hexed


@pytest.mark.parametrize("msg", [
    Cancel(-1), Sync(0, 2**53, 0), Bitfield(0, (2**32,)), Bitfield(0, (-1,)), Data(0, 0, manifest=b""),
    Data(0, 0, block=DataBlock(0, b"", (Node(0, 0, b"short"),))), Request(id=0, fork=0, priority=-1),
])
def test_encode_rejects_out_of_range(msg: Message) -> None:
    with pytest.raises(ValueError):
        encode_message(msg)


# ---- strategies -------------------------------------------------------------------------

U = st.one_of(
    st.integers(0, 300),
    st.sampled_from([0xFC, 0xFD, 0xFFFF, 0x10000, 2**32 - 1, 2**32, MAX_SAFE_INTEGER]),
    st.integers(0, MAX_SAFE_INTEGER),
)
POS = U.filter(bool)
HASH = st.binary(min_size=32, max_size=32)
NODES = st.lists(st.builds(Node, U, U, HASH), max_size=3).map(tuple)


def _manifest(draw: st.DrawFn) -> bytes:
    """A valid, canonically encoded manifest (JS re-encodes what it decodes; §3.3)."""
    w = Writer()
    signer = st.tuples(HASH, HASH)
    kind = draw(st.sampled_from(["v1", "v0-prologue", "v0-signer"]))
    if kind == "v0-prologue":
        return w.uint(0).uint(0).uint(0).fixed(draw(HASH), 32).value()
    if kind == "v0-signer":
        ns, pk = draw(signer)
        return w.uint(0).uint(0).uint(1).uint(0).fixed(ns, 32).fixed(pk, 32).value()
    patch, prologue, linked, user = (draw(st.booleans()) for _ in range(4))
    w.uint(draw(st.sampled_from([1, 2]))).uint(patch | prologue << 1 | linked << 2 | user << 3).uint(0)
    w.uint(draw(U)).array(draw(st.lists(signer, max_size=2)),
                          lambda w, s: w.uint(0).fixed(s[0], 32).fixed(s[1], 32))
    if prologue:
        w.fixed(draw(HASH), 32).uint(draw(U))
    if linked:
        w.array(draw(st.lists(HASH, max_size=2)), lambda w, h: w.fixed(h, 32))
    if user:
        w.buffer(draw(st.binary(max_size=8)))
    return w.value()


MANIFESTS = st.composite(_manifest)()

MESSAGES: st.SearchStrategy[Message] = st.one_of(
    st.builds(Sync, U, U, U, st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    st.builds(Request, U, U, st.none() | st.builds(RequestBlock, U, U),
              st.none() | st.builds(RequestBlock, U, U),
              st.none() | st.builds(RequestSeek, U, U), st.none() | st.builds(RequestUpgrade, U, U),
              st.booleans(), st.none() | POS),
    st.builds(Cancel, U),
    st.builds(Data, U, U,
              st.none() | st.builds(DataBlock, U, st.binary(max_size=40), NODES),
              st.none() | st.builds(DataHash, U, NODES),
              st.none() | st.builds(DataSeek, U, NODES),
              st.none() | st.builds(DataUpgrade, U, U, NODES, NODES,
                                    st.none() | st.binary(min_size=1, max_size=70)),
              st.none() | MANIFESTS),
    st.builds(NoData, U, st.none() | POS),
    st.builds(Want, U, U, st.booleans()),
    st.builds(Unwant, U, U, st.booleans()),
    st.builds(Bitfield, U, st.lists(st.integers(0, 2**32 - 1), max_size=6).map(tuple)),
    st.builds(Range, U, st.just(1) | U, st.booleans()),
    st.builds(Extension, st.text(max_size=12), st.binary(max_size=24)),
)


@st.composite
def wire_inputs(draw: st.DrawFn) -> tuple[int, bytes]:
    """(type, payload) pairs near valid messages: valid, mutated, retyped, or random."""
    kind = draw(st.sampled_from(["valid", "truncated", "flipped", "extended", "retyped", "random"]))
    if kind == "random":
        return draw(st.integers(0, 9)), draw(st.binary(max_size=60))
    type_, payload = encode_message(draw(MESSAGES))
    if kind == "truncated":
        payload = payload[: draw(st.integers(0, len(payload)))]
    elif kind == "flipped" and payload:
        i = draw(st.integers(0, len(payload) - 1))
        payload = payload[:i] + bytes([draw(st.integers(0, 255))]) + payload[i + 1 :]
    elif kind == "extended":
        payload += draw(st.binary(min_size=1, max_size=8))
    elif kind == "retyped":
        type_ = draw(st.integers(0, 9))
    return type_, payload


# ---- properties ---------------------------------------------------------------------------


@given(MESSAGES)
@settings(max_examples=300, deadline=None)
def test_round_trip(msg: Message) -> None:
    type_, payload = encode_message(msg)
    assert type_ == msg.TYPE
    assert decode_message(type_, payload) == msg
    assert decode_message(type_, payload + b"\x00\x01") == msg or isinstance(msg, Data | Extension)


@given(st.one_of(st.tuples(st.integers(-3, 300), st.binary(max_size=80)), wire_inputs()))
@settings(max_examples=500, deadline=None)
def test_fuzz_decode_raises_only_decode_error(case: tuple[int, bytes]) -> None:
    type_, payload = case
    with contextlib.suppress(DecodeError):
        msg = decode_message(type_, payload)
        encode_message(msg)  # whatever decodes re-encodes (maybe more canonically)


@given(st.binary(max_size=40))
def test_fuzz_handshake(payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        ChannelHandshake.decode(payload).encode()


# ---- the real JS ---------------------------------------------------------------------------

JS_SERVER = r"""
const c = require('compact-encoding')
const m = require('hypercore/lib/messages.js')
const NAMES = ['sync', 'request', 'cancel', 'data', 'noData', 'want', 'unwant', 'bitfield', 'range',
  'extension']

function revive (v) {
  if (v === null || typeof v !== 'object') return v
  if (Array.isArray(v)) return v.map(revive)
  if ('$hex' in v) return Buffer.from(v.$hex, 'hex')
  if ('$u32' in v) return Uint32Array.from(v.$u32)
  if ('$manifest' in v) return c.decode(m.manifest, Buffer.from(v.$manifest, 'hex'))
  const o = {}
  for (const k of Object.keys(v)) o[k] = revive(v[k])
  return o
}

function tag (v) {
  if (v === null || v === undefined) return null
  if (v instanceof Uint32Array) return { $u32: Array.from(v) }
  if (v instanceof Uint8Array) return { $hex: Buffer.from(v).toString('hex') }
  if (Array.isArray(v)) return v.map(tag)
  if (typeof v === 'object') {
    const o = {}
    for (const k of Object.keys(v)) o[k] = tag(v[k])
    return o
  }
  return v
}

function decodeWith (enc, hex) {
  const buffer = Buffer.from(hex, 'hex')
  return enc.decode({ start: 0, end: buffer.byteLength, buffer }) // as protomux does: no end check
}

function handle (q) {
  switch (q.op) {
    case 'encode': return c.encode(m.wire[NAMES[q.type]], revive(q.msg)).toString('hex')
    case 'decode': {
      const out = {}
      try {
        const v = decodeWith(m.wire[NAMES[q.type]], q.hex)
        if (v.manifest && typeof v.manifest === 'object') v.manifest = { $manifest: 'decoded' }
        out.value = tag(v)
      } catch (err) {
        out.error = err.message
      }
      if (q.manifest) {
        try { decodeWith(m.manifest, q.manifest); out.manifestOk = true } catch { out.manifestOk = false }
      }
      return out
    }
    case 'handshake-encode': return c.encode(m.wire.handshake, revive(q.msg)).toString('hex')
    case 'handshake-decode':
      try {
        return { value: tag(decodeWith(m.wire.handshake, q.hex)) }
      } catch (err) {
        return { error: err.message }
      }
  }
  throw new Error('bad op ' + q.op)
}

require('readline').createInterface({ input: process.stdin }).on('line', (line) => {
  let reply
  try { reply = { ok: handle(JSON.parse(line)) } } catch (err) { reply = { crash: String(err && err.stack) } }
  process.stdout.write(JSON.stringify(reply) + '\n')
})
"""


class JS:
    """A running node process answering one JSON request per line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def __call__(self, **query: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(query) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the node helper died"
        reply = json.loads(line)
        assert "crash" not in reply, reply.get("crash")
        return reply["ok"]


@pytest.fixture(scope="module")
def js() -> Iterator[JS]:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules/hypercore/lib/messages.js").exists():
        pytest.fail("the JS reference stack is missing: install node 20, then run `npm ci` in js/ (make js)")
    proc = subprocess.Popen([node, "-e", JS_SERVER], cwd=JS_DIR, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        yield JS(proc)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def to_js(value: Any) -> Any:
    """The object JS's messages.js encodes to / decodes as the same bytes (buffers tagged for JSON)."""
    if isinstance(value, Bitfield):
        return {"start": value.start, "bitfield": {"$u32": list(value.words)}}
    if is_dataclass(value):
        out: dict[str, Any] = {}
        for f in fields(value):
            v = getattr(value, f.name)
            if isinstance(value, Data) and f.name == "manifest":
                out["manifest"] = None if v is None else {"$manifest": v.hex()}
            elif f.name in ("priority", "reason"):
                out[f.name] = v or 0  # JS's absent value
            else:
                out[_camel(f.name)] = to_js(v)
        return out
    if isinstance(value, bytes):
        return {"$hex": value.hex()}
    if isinstance(value, tuple):
        return [to_js(v) for v in value]
    return value


@given(MESSAGES)
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_js_encodes_identically(js: JS, msg: Message) -> None:
    type_, payload = encode_message(msg)
    assert js(op="encode", type=type_, msg=to_js(msg)) == payload.hex()


@given(wire_inputs())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_js_decodes_identically(js: JS, case: tuple[int, bytes]) -> None:
    type_, payload = case
    try:
        ours: Message | None = decode_message(type_, payload)
    except DecodeError:
        ours = None
    manifest = ours.manifest if isinstance(ours, Data) else None
    theirs = js(op="decode", type=type_, hex=payload.hex(), manifest=manifest and manifest.hex())
    if manifest is not None:
        # We keep the manifest raw; JS parses it in place, so it fails exactly when the manifest does.
        assert ("error" not in theirs) == theirs["manifestOk"], theirs
        if "error" in theirs:
            return
        expected = to_js(ours)
        expected["manifest"] = {"$manifest": "decoded"}
        assert theirs["value"] == expected
        return
    if ours is None:
        assert "error" in theirs, (payload.hex(), theirs)
    else:
        assert theirs.get("value") == to_js(ours), (payload.hex(), theirs)


@given(st.builds(ChannelHandshake, st.booleans(), HASH), st.binary(max_size=40))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_js_handshake(js: JS, hs: ChannelHandshake, junk: bytes) -> None:
    assert js(op="handshake-encode", msg=to_js(hs)) == hs.encode().hex()
    theirs = js(op="handshake-decode", hex=junk.hex())
    try:
        ours = ChannelHandshake.decode(junk)
    except DecodeError:
        assert "error" in theirs
    else:
        assert theirs["value"] == to_js(ours)


# A surrogate, a code point above U+10FFFF, an overlong form, a cut sequence.
BAD_UTF8 = [b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xe2\x82"]
NAME_BYTES = st.lists(st.one_of(st.binary(max_size=3), st.text(max_size=2).map(str.encode),
                                st.sampled_from(BAD_UTF8)),
                      max_size=6).map(b"".join)


@given(NAME_BYTES, st.binary(max_size=4))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_js_extension_names_decode_identically(js: JS, name: bytes, message: bytes) -> None:
    """Bad UTF-8 in a name becomes U+FFFD exactly as Node's decoder does it, never an error."""
    payload = Writer().buffer(name).raw(message).value()
    assert js(op="decode", type=9, hex=payload.hex())["value"] == to_js(decode_message(9, payload))
