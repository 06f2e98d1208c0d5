"""Hostile peers against a real CloudPal reader (`clone`), over real TCP on 127.0.0.1.

The reader already holds part of a core (downloaded honestly). A peer that then sends a
tampered block, a proof or signature that does not verify, a malformed or oversized
message, or plain garbage before/after the handshake must be disconnected with a clear
ProtocolError that is logged, and the reader's core must be left exactly as it was
(length, fork, tree hash, signature, blocks, Merkle nodes: checked on a reopened store)
and still valid (an honest peer can complete it afterwards).

The hostile peers are: the JS reference peer (`write --corrupt-block`), a real CloudPal
`seed` whose core answers requests with mutated proofs, and a scripted peer built from
the sans-IO wire parts (SecretStream, Mux, messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest_data import seeding

import cloudpal.data.net as data_net
from cloudpal.data import CoreStore, Hypercore, ProtocolError, clone, open_store
from cloudpal.data.crypto import (
    MultiSignature,
    Node,
    SignatureProof,
    capability,
    default_signer_manifest,
    discovery_key,
    encode_manifest,
    encode_multisig,
    key_pair,
    sign,
    signable,
)
from cloudpal.data.encoding import Writer
from cloudpal.data.replication import Replication
from cloudpal.data.wire.messages import (
    ChannelHandshake,
    Data,
    DataBlock,
    Message,
    Range,
    Request,
    Sync,
    decode_message,
    encode_message,
)
from cloudpal.data.wire.protomux import Channel, ChannelMessage, ChannelOpened, Mux
from cloudpal.data.wire.secretstream import Message as Plaintext
from cloudpal.data.wire.secretstream import SecretStream

REPO = Path(__file__).resolve().parents[2]
JS_DIR = REPO / "js"
HOST = "127.0.0.1"
SEED = bytes([0x33]) * 32
N = 40  # blocks the writer has
PREFIX = 10  # blocks the reader already holds


def block(i: int, salt: int = 0) -> bytes:
    """peer.js's generated content (block i, 1 KiB, every 6th empty), so JS and CloudPal
    writers with the same seed hold the very same core."""
    if (i + 1) % 6 == 0:
        return b""
    h = hashlib.sha256(b"cloudpal-peer-block" + struct.pack("<QQ", salt, i)).digest()
    return h * 32


JS_ARGS = ("--seed", SEED.hex(), "--blocks", str(N), "--empty-every", "6")


# ---- the reader's state -------------------------------------------------------------------


def snapshot(home: Path, key: bytes) -> dict[str, Any]:
    """Everything the reader stored for `key`, read from a freshly opened store."""
    store = open_store(home)
    try:
        core = store.get(key.hex())
        rid = core.record.id
        record = store.storage.find(key=key)
        assert record is not None
        nodes = store.storage.db.execute(
            "SELECT idx, size, hash FROM nodes WHERE core=? ORDER BY idx", (rid,)).fetchall()
        return {
            "length": core.length, "fork": core.fork, "tree_hash": core.tree_hash().hex(),
            "signature": core.signature, "byte_length": core.byte_length,
            "contiguous": core.contiguous_length, "manifest": record.manifest, "compat": record.compat,
            "blocks": dict(store.storage.blocks(rid, 0, max(core.length, N + 10))),
            "nodes": [tuple(n) for n in nodes],
        }
    finally:
        store.close()


@dataclasses.dataclass
class World:
    writer_store: CoreStore
    writer: Hypercore
    reader_home: Path

    @property
    def key(self) -> bytes:
        return self.writer.key


async def honest_clone(world: World, **kw: Any) -> Hypercore:
    store = open_store(world.reader_home)
    try:
        async with seeding(world.writer_store, [world.writer]) as port:
            return await clone(store, world.key, HOST, port, timeout=20, **kw)
    finally:
        store.close()


def make_world(tmp_path: Path, reader_end: int = PREFIX, extra: int = 0) -> World:
    """A writer with N blocks; a reader holding [0, reader_end) at length N; then the writer
    appends `extra` more (so the reader must ask for an upgrade)."""
    wstore = open_store(tmp_path / "writer")
    writer = wstore.create("log", seed=SEED)
    writer.append([block(i) for i in range(N)])
    world = World(wstore, writer, tmp_path / "reader")
    if reader_end:
        asyncio.run(honest_clone(world, end=reader_end))
    if extra:
        writer.append([block(i) for i in range(N, N + extra)])
    return world


def assert_still_valid(world: World) -> None:
    """An honest peer can complete the reader's core: it was left consistent."""
    core = asyncio.run(honest_clone(world))
    assert core.tree_hash() == world.writer.tree_hash() and core.length == world.writer.length
    store = open_store(world.reader_home)
    try:
        core = store.get(world.key.hex())
        assert list(core.iter_blocks(0, core.length)) == list(
            world.writer.iter_blocks(0, world.writer.length))
    finally:
        store.close()


def assert_logged(caplog: pytest.LogCaptureFixture, fragment: str) -> None:
    records = [r for r in caplog.records
               if r.name.startswith("cloudpal.data") and r.levelno >= logging.WARNING]
    assert any(fragment in r.getMessage() for r in records), (
        f"no warning mentioning {fragment!r}: {[r.getMessage() for r in records]}")


@pytest.fixture(autouse=True)
def _warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cloudpal.data")


@pytest.fixture
def seed_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of `seed`/`clone` replications that have ended (how the seed sees the hang-up)."""
    ended: list[str] = []

    class Recorded(Replication):
        async def run(self) -> None:
            try:
                await super().run()
            finally:
                ended.append(self.name)

    monkeypatch.setattr(data_net, "Replication", Recorded)
    return ended


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# ==== 1. the JS peer sends a tampered block ===============================================


class JSWriter:
    """`node js/peer.js write ... --listen`; killed by the fixture whatever happens."""

    def __init__(self, tmp: Path, *args: str) -> None:
        node = shutil.which("node")
        if node is None:
            pytest.fail("node is not installed: install Node.js 20, then run `make js`")
        if not (JS_DIR / "node_modules" / "hypercore" / "package.json").exists():
            pytest.fail("js/node_modules/hypercore is missing: run `make js` (npm ci in js/)")
        self.log = tmp / "js-writer.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen([node, str(JS_DIR / "peer.js"), "write", *args, "--listen",
                                          f"{HOST}:0"], cwd=JS_DIR, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=err)
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.events.append(json.loads(line))
                self._cond.notify_all()

    def event(self, name: str, timeout: float = 30, pred: Callable[[dict[str, Any]], bool] | None = None,
              ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events:
                    if e["event"] == name and (pred is None or pred(e)):
                        return e
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"peer.js: no {name} event: {self.events[-3:]} "
                                         f"{self.log.read_text()[-2000:]}")
                self._cond.wait(min(left, 0.2))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def js_writers(tmp_path: Path) -> Iterator[Callable[..., JSWriter]]:
    started: list[JSWriter] = []

    def start(*args: str) -> JSWriter:
        started.append(JSWriter(tmp_path, *args))
        return started[-1]

    try:
        yield start
    finally:
        for w in started:
            w.stop()


def test_js_tampered_block(tmp_path: Path, js_writers: Callable[..., JSWriter],
                           caplog: pytest.LogCaptureFixture) -> None:
    js = js_writers(*JS_ARGS, "--corrupt-block", "15")
    port = js.event("listening")["port"]
    key = bytes.fromhex(js.event("ready")["key"])
    home = tmp_path / "reader"
    store = open_store(home)
    asyncio.run(clone(store, key, HOST, port, end=PREFIX, timeout=20))  # blocks 0..9 are intact
    store.close()
    before = snapshot(home, key)
    assert before["length"] == N and sorted(before["blocks"]) == list(range(PREFIX))

    store = open_store(home)
    with pytest.raises(ProtocolError, match="does not verify"):
        asyncio.run(clone(store, key, HOST, port, start=15, end=16, timeout=20))
    store.close()
    js.event("disconnect", 10, lambda e: e["conn"] == 2)  # we hung up on it
    assert_logged(caplog, "does not verify")
    assert snapshot(home, key) == before

    # a whole download from it stores every good block it can, never block 15
    store = open_store(home)
    with pytest.raises(ProtocolError, match="does not verify"):
        asyncio.run(clone(store, key, HOST, port, timeout=20))
    core = store.get(key.hex())
    assert not core.has(15) and core.tree_hash().hex() == before["tree_hash"]
    assert all(core.get(i) == block(i) for i in core.present(0, N))
    store.close()

    # the same core from an honest CloudPal writer (same seed, same blocks) completes it
    world = make_world(tmp_path / "honest", reader_end=0)
    assert world.key == key
    world.reader_home = home
    assert_still_valid(world)


# ==== 2. a real CloudPal seed whose proofs are mutated ====================================

Mutation = Callable[[Data, Request, Hypercore], Data]


def flip(data: bytes, at: int = -1) -> bytes:
    b = bytearray(data or b"\x00")
    b[at] ^= 0xFF
    return bytes(b)


def flip_node(n: Node) -> Node:
    return Node(n.index, n.size, flip(n.hash))


def with_block(data: Data, **changes: Any) -> Data:
    assert data.block is not None
    return dataclasses.replace(data, block=dataclasses.replace(data.block, **changes))


def with_upgrade(data: Data, **changes: Any) -> Data:
    assert data.upgrade is not None, "the reader asked for no upgrade"
    return dataclasses.replace(data, upgrade=dataclasses.replace(data.upgrade, **changes))


def proof_nodes(data: Data) -> tuple[Node, ...]:
    assert data.block is not None and data.block.nodes, "the proof has no nodes to tamper with"
    return data.block.nodes


BLOCK_ATTACKS: dict[str, tuple[Mutation, str]] = {
    "tampered-value": (lambda d, r, c: with_block(d, value=flip(d.block.value if d.block else b"")),
                       "invalid checksum"),
    "oversized-value": (lambda d, r, c: with_block(d, value=(d.block.value if d.block else b"")
                                                   + bytes(8 << 20)), "invalid checksum"),
    "bad-proof-node": (lambda d, r, c: with_block(d, nodes=(flip_node(proof_nodes(d)[0]),
                                                         *proof_nodes(d)[1:])), "invalid checksum"),
    "missing-proof-node": (lambda d, r, c: with_block(d, nodes=proof_nodes(d)[:-1]), "proof ends at node"),
    "extra-proof-node": (lambda d, r, c: with_block(d, nodes=(*proof_nodes(d), proof_nodes(d)[0])),
                         "expected node"),
    "other-block": (lambda d, r, c: with_block(d, index=(d.block.index + 1) if d.block else 0),
                    "does not match the request"),
    "other-fork": (lambda d, r, c: dataclasses.replace(d, fork=d.fork + 1), "does not match the request"),
}


def other_signer(d: Data, r: Request, c: Hypercore) -> Data:
    """A well-formed signature of exactly what the writer signs, by a key that is not its signer."""
    intruder = key_pair(bytes([0x99]) * 32)
    raw = sign(signable(c.key, c.tree_hash(), c.length, c.fork), intruder.secret_key)
    return with_upgrade(d, signature=encode_multisig(MultiSignature((SignatureProof(0, raw),))))


UPGRADE_ATTACKS: dict[str, tuple[Mutation, str]] = {
    "flipped-signature": (lambda d, r, c: with_upgrade(d, signature=flip((d.upgrade.signature or b"")
                                                                         if d.upgrade else b"", 10)),
                          "invalid upgrade signature"),
    "truncated-signature": (lambda d, r, c: with_upgrade(d, signature=(d.upgrade.signature or b"")[:40]
                                                         if d.upgrade else b""), "invalid upgrade signature"),
    "no-signature": (lambda d, r, c: with_upgrade(d, signature=None), "invalid upgrade signature"),
    "other-signer": (other_signer, "invalid upgrade signature"),
    "forged-root": (lambda d, r, c: with_upgrade(d, nodes=tuple(flip_node(n) for n in d.upgrade.nodes)
                                                 if d.upgrade else ()), "invalid upgrade signature"),
    "longer-upgrade": (lambda d, r, c: with_upgrade(d, length=d.upgrade.length + 1 if d.upgrade else 0),
                       "expected node"),
}


async def attack_via_seed(world: World, mutate: Mutation, seed_runs: list[str],
                          monkeypatch: pytest.MonkeyPatch, **clone_args: Any) -> ProtocolError:
    """Serve the writer with a real `seed`, every answer mutated; returns the reader's error."""
    core = world.writer
    honest = core.proof
    served: list[Data] = []

    def proof(request: Request) -> Data:
        data = mutate(honest(request), request, core)
        served.append(data)
        return data

    store = open_store(world.reader_home)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(core, "proof", proof)
            async with seeding(world.writer_store, [core]) as port:
                with pytest.raises(ProtocolError) as info:
                    await clone(store, world.key, HOST, port, timeout=20, **clone_args)
                await until(lambda: "seed" in seed_runs, 5, "the seed to see the reader hang up")
    finally:
        store.close()
    assert served, "the reader never asked for anything"
    return info.value


@pytest.mark.parametrize("attack", sorted(BLOCK_ATTACKS))
def test_seed_with_bad_block_proofs(tmp_path: Path, attack: str, seed_runs: list[str],
                                    monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    mutate, message = BLOCK_ATTACKS[attack]
    world = make_world(tmp_path)
    before = snapshot(world.reader_home, world.key)
    err = asyncio.run(attack_via_seed(world, mutate, seed_runs, monkeypatch, start=PREFIX, end=N))
    assert message in str(err)
    assert_logged(caplog, message)
    assert snapshot(world.reader_home, world.key) == before
    assert_still_valid(world)


@pytest.mark.parametrize("attack", sorted(UPGRADE_ATTACKS))
def test_seed_with_bad_upgrades(tmp_path: Path, attack: str, seed_runs: list[str],
                                monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    mutate, message = UPGRADE_ATTACKS[attack]
    world = make_world(tmp_path, reader_end=N, extra=5)  # the reader must upgrade from N to N + 5
    before = snapshot(world.reader_home, world.key)
    err = asyncio.run(attack_via_seed(world, mutate, seed_runs, monkeypatch))
    assert message in str(err)
    assert_logged(caplog, message)
    assert snapshot(world.reader_home, world.key) == before
    assert_still_valid(world)


@pytest.mark.parametrize("attack", ["other-manifest", "no-manifest"])
def test_seed_with_bad_manifest(tmp_path: Path, attack: str, seed_runs: list[str],
                                monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A fresh reader learns the manifest from the peer: a wrong (or missing) one is refused
    and not remembered."""
    world = make_world(tmp_path, reader_end=0)
    store = open_store(world.reader_home)
    store.replica(world.key)  # the reader knows only the key
    store.close()
    before = snapshot(world.reader_home, world.key)
    other = encode_manifest(default_signer_manifest(key_pair(bytes([0x44]) * 32).public_key))

    def mutate(d: Data, r: Request, c: Hypercore) -> Data:
        if d.manifest is None:
            return d
        return dataclasses.replace(d, manifest=other if attack == "other-manifest" else None)

    err = asyncio.run(attack_via_seed(world, mutate, seed_runs, monkeypatch))
    message = ("manifest that does not match the core key" if attack == "other-manifest"
               else "invalid upgrade signature")
    assert message in str(err)
    assert_logged(caplog, message)
    after = snapshot(world.reader_home, world.key)
    assert after == before and after["manifest"] is None and not after["compat"]
    assert_still_valid(world)


# ==== 3. a scripted peer built from the sans-IO wire parts =================================


class Hostile:
    """The server end of one connection, speaking (or not) secret-stream + protomux by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.key = key
        self.stream = SecretStream(False)
        self.mux = Mux()
        self.events: list[object] = []

    async def read(self, n: int = 65536) -> bytes:
        data = await asyncio.wait_for(self.reader.read(n), 10)
        if not data:
            raise EOFError("the reader hung up")
        return data

    def raw(self, data: bytes) -> None:
        self.writer.write(data)

    def flush(self) -> None:
        for frame in self.mux.frames_to_send():
            self.stream.send(frame)
        self.raw(self.stream.data_to_send())
        self.events.extend(self.mux.take_events())

    def feed(self, data: bytes) -> None:
        for ev in self.stream.receive_data(data):
            if isinstance(ev, Plaintext):
                self.events.extend(self.mux.receive_frame(ev.plaintext))

    async def handshake(self, *, header: bool = True) -> None:
        """Noise as the responder; `header=False` keeps our id+header frame back."""
        while not self.stream.handshake_complete:
            self.feed(await self.read())
            out = self.stream.data_to_send()
            if not header and self.stream.handshake_complete:
                return  # msg2 went out earlier; what remains is our header: drop it
            self.raw(out)

    async def wait(self, pred: Callable[[], bool]) -> None:
        while not pred():
            self.feed(await self.read())
            self.flush()

    async def open(self, cap: bytes | None = None) -> Channel:
        assert self.stream.handshake_hash is not None
        cap = cap if cap is not None else capability(False, self.key, self.stream.handshake_hash)
        channel = self.mux.open_channel("hypercore/alpha", discovery_key(self.key),
                                        ChannelHandshake(True, cap).encode())
        self.flush()
        await self.wait(lambda: any(isinstance(e, ChannelOpened) for e in self.events))
        return channel

    def send(self, channel: Channel, msg: Message | tuple[int, bytes]) -> None:
        type_, payload = msg if isinstance(msg, tuple) else encode_message(msg)
        channel.send(type_, payload)
        self.flush()

    def frame(self, plaintext: bytes) -> None:
        self.stream.send(plaintext)
        self.flush()

    async def announce(self, channel: Channel, length: int) -> Request:
        """Behave like a writer of `length` blocks until the reader asks for a block."""
        self.send(channel, Sync(fork=0, length=length, remote_length=0, can_upgrade=True, uploading=True,
                                has_manifest=True))
        self.send(channel, Range(start=0, length=length))

        def block_request() -> Request | None:
            for e in self.events:
                if isinstance(e, ChannelMessage) and e.type == Request.TYPE:
                    req = decode_message(e.type, e.payload)
                    if isinstance(req, Request) and req.block is not None:
                        return req
            return None

        await self.wait(lambda: block_request() is not None)
        req = block_request()
        assert req is not None
        return req

    async def hung_up(self, timeout: float = 10) -> bool:
        """Did the reader close the connection (whatever it sent before)?"""
        await self.drain()
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ConnectionError):
            while time.monotonic() < deadline:
                data = await asyncio.wait_for(self.reader.read(65536), deadline - time.monotonic())
                if not data:
                    return True
            return False
        return True

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()


Script = Callable[[Hostile], Awaitable[None]]


@contextlib.asynccontextmanager
async def hostile_server(key: bytes, script: Script) -> AsyncIterator[tuple[int, list[BaseException | None]]]:
    """A TCP server running `script` on each connection; yields (port, outcomes)."""
    outcomes: list[BaseException | None] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h = Hostile(reader, writer, key)
        try:
            await script(h)
            outcomes.append(None)
        except BaseException as exc:  # reported to the test
            outcomes.append(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(on_client, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1], outcomes
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)


def after_open(send: Callable[[Hostile, Channel], None]) -> Script:
    """Open the core's channel properly, then misbehave; the reader must hang up."""
    async def script(h: Hostile) -> None:
        await h.handshake()
        channel = await h.open()
        send(h, channel)
        assert await h.hung_up(), "the reader kept the connection open"
    return script


async def script_garbage_then_close(h: Hostile) -> None:
    h.raw(b"GET / HTTP/1.1\r\nHost: cloudpal\r\n\r\n")
    await h.drain()


async def script_framed_garbage_msg2(h: Hostile) -> None:
    await h.read()  # the reader's msg1
    h.raw(b"\x60\x00\x00" + os.urandom(96))
    assert await h.hung_up()


async def script_trailing_garbage(h: Hostile) -> None:
    h.feed(await h.read())  # msg1 → our msg2, sent with junk right behind it
    h.raw(h.stream.data_to_send() + b"\x05\x00\x00junk!" + os.urandom(64))
    assert await h.hung_up()


async def script_header_garbage(h: Hostile) -> None:
    await h.handshake(header=False)
    h.raw(b"\x38\x00\x00" + os.urandom(56))
    assert await h.hung_up()


async def script_frame_garbage(h: Hostile) -> None:
    await h.handshake()
    h.raw(b"\x40\x00\x00" + os.urandom(64))
    assert await h.hung_up()


async def script_oversized_frame(h: Hostile) -> None:
    await h.handshake()
    h.raw(b"\xff\xff\xff" + os.urandom(0xFFFFFF))  # the largest frame there is, not authentic
    assert await h.hung_up()


async def script_oversized_block(h: Hostile) -> None:
    """A 15 MiB block in a valid frame, answering the reader's own request: must not verify."""
    await h.handshake()
    channel = await h.open()
    req = await h.announce(channel, N)
    assert req.block is not None
    h.send(channel, Data(request=req.id, fork=0, block=DataBlock(req.block.index, bytes(15 << 20))))
    assert await h.hung_up()


async def script_bad_capability(h: Hostile) -> None:
    await h.handshake()
    await h.open(cap=bytes(32))
    assert await h.hung_up()


def nested_batch(depth: int) -> bytes:
    inner = b"\x03\x01"  # close(1): type ‖ payload of a control message
    for _ in range(depth):
        body = Writer().uint(0).buffer(inner).value()  # channel 0, one message
        inner = b"\x00" + body  # type batch
    return b"\x00" + inner


WIRE_ATTACKS: dict[str, tuple[Script, str]] = {
    "garbage-before-handshake": (script_garbage_then_close, "connection closed during the handshake"),
    "garbage-as-handshake": (script_framed_garbage_msg2, "noise handshake failed"),
    "garbage-after-handshake-message": (script_trailing_garbage, "invalid header"),
    "garbage-as-header": (script_header_garbage, "invalid header"),
    "garbage-after-header": (script_frame_garbage, "message failed authentication"),
    "oversized-garbage-frame": (script_oversized_frame, "message failed authentication"),
    "not-protomux": (after_open(lambda h, ch: h.frame(b"\x00\x01")), "unexpected end of data"),
    "open-channel-0": (after_open(lambda h, ch: h.frame(
        Writer().uint(0).uint(1).uint(0).string("hypercore/alpha").uint(0).value())), "channel id 0"),
    "batch-bomb": (after_open(lambda h, ch: h.frame(nested_batch(20))), "nested too deeply"),
    "bad-capability": (script_bad_capability, "invalid replication capability"),
    "truncated-data": (after_open(lambda h, ch: h.send(ch, (Data.TYPE, b"\x01\x01\x00\x05"))),
                       "unexpected end of data"),
    "oversized-length-field": (after_open(lambda h, ch: h.send(ch, (
        Data.TYPE, Writer().uint(1).uint(1).uint(0).uint(5).uint(1 << 40).value() + bytes(100)))),
        "unexpected end of data"),
    "too-many-nodes": (after_open(lambda h, ch: h.send(ch, (
        Data.TYPE, Writer().uint(1).uint(1).uint(0).uint(5).buffer(b"x").uint(0x100001).value()))),
        "array too long"),
    "integer-overflow": (after_open(lambda h, ch: h.send(ch, (
        Sync.TYPE, b"\x00\x00\xff" + struct.pack("<Q", 1 << 60) + b"\x00"))), "larger than 2^53-1"),
    "oversized-block": (script_oversized_block, "does not verify"),
}


@pytest.mark.parametrize("attack", list(WIRE_ATTACKS))
def test_wire_level_hostile_peer(tmp_path: Path, attack: str, caplog: pytest.LogCaptureFixture) -> None:
    script, message = WIRE_ATTACKS[attack]
    world = make_world(tmp_path)
    before = snapshot(world.reader_home, world.key)

    async def main() -> tuple[ProtocolError, list[BaseException | None]]:
        store = open_store(world.reader_home)
        try:
            async with hostile_server(world.key, script) as (port, outcomes):
                with pytest.raises(ProtocolError) as info:
                    await clone(store, world.key, HOST, port, timeout=20)
                await until(lambda: bool(outcomes), 15, "the hostile script to finish")
                return info.value, outcomes
        finally:
            store.close()

    err, outcomes = asyncio.run(main())
    assert message in str(err), repr(err)
    assert outcomes == [None], f"the hostile peer's checks failed: {outcomes}"
    assert_logged(caplog, message)
    assert snapshot(world.reader_home, world.key) == before
    assert_still_valid(world)
