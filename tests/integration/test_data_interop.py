"""CloudPal's Hypercore against the real JavaScript stack (hypercore 11.37.1), over real TCP.

Every scenario runs both ways: the JS reference peer (js/peer.js) writes and CloudPal
reads, and CloudPal writes and the JS peer reads. Both ends must agree on the core key,
tree hash, length, byte length, fork and on every block (peer.js's `blocksSha256`:
SHA-256 over u64le(len) ‖ block, recomputed here). JS is never optional: without node or
js/node_modules these tests fail and say to run `make js`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest_data import seeding

from cloudpal.data import CoreStore, Hypercore, clone, open_store
from cloudpal.data.replication import Replication
from cloudpal.data.wire.stream import connect
from cloudpal.errors import NotFound

REPO = Path(__file__).resolve().parents[2]
JS_DIR = REPO / "js"
PEER_JS = JS_DIR / "peer.js"
CLOUDPAL = str(Path(sys.executable).parent / "cloudpal")
HOST = "127.0.0.1"
MiB = 1024 * 1024

SEED = bytes(range(32))  # the key pair of notes/hypercore.md §3.6
SEED_BIG = bytes([0x11]) * 32
ENC_KEY = bytes(range(0x40, 0x60))
MARKER = b"CLOUDPAL-PLAINTEXT-MARKER-7f3a"

# notes/hypercore.md §3.6: seed 00..1f, append a, b, c (checked there against a real Hypercore)
VECTORS = {
    False: {
        "key": "798b52954f2f524c0a491fd95e508007de655fbdc048947a8afa2e65f1a03b77",
        "tree_hash": "7ea73eb86179fb7328e73663f90f4c91256574af1112efe97fdf9309e03b67a7",
        "signature": "0100" + "8b46e19c793a26f79f7e6e9110fcd3874801443c492bf02395f213a076a082d1"
                     "e3a49c4f76968a894e2fa9686f5a229b87b4af3a7312151cc36758f7da132a03" + "0000",
    },
    True: {
        "key": "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
        "tree_hash": "7ea73eb86179fb7328e73663f90f4c91256574af1112efe97fdf9309e03b67a7",
        "signature": "b03b0f6af7697029e8969c6d124d3b6e9dce41b2b93439c23f9d6185f53053aa"
                     "197fa540e537e70d9a43aba6dd47a53da18b0842571d6419e838217fd1a4ff08",
    },
}


# ---- the JS reference peer ---------------------------------------------------------------


def require_js() -> str:
    """node and the pinned JS stack, or a failure (never a skip) that says how to get them."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: install Node.js 20, then run `make js`")
    for pkg in ("hypercore", "@hyperswarm/secret-stream", "hypercore-crypto"):
        if not (JS_DIR / "node_modules" / pkg / "package.json").exists():
            pytest.fail(f"js/node_modules/{pkg} is missing: run `make js` (npm ci in js/)")
    return node


class Proc:
    """A helper process; for peer.js, its stdout JSON events are collected by a thread."""

    def __init__(self, argv: Sequence[str], log: Path, *, stdin: bool = False, json_events: bool = True,
                 cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv, cwd=cwd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if json_events else subprocess.DEVNULL, stderr=err)
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._eof = False
        self._thread: threading.Thread | None = None
        if json_events:
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "unparsable", "line": line[:200].decode(errors="replace")}
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def stderr(self, tail: int = 3000) -> str:
        try:
            return self.log.read_bytes()[-tail:].decode(errors="replace")
        except OSError:
            return ""

    def describe(self) -> str:
        errors = [e for e in self.events if e.get("event") == "error"]
        return (f"{' '.join(self.argv[:3])} (exit {self.proc.poll()}), error events {errors}, "
                f"stderr:\n{self.stderr()}")

    def event(self, name: str, timeout: float = 30.0,
              pred: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The first event called `name` (matching `pred`); waits for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events:
                    if e.get("event") == name and (pred is None or pred(e)):
                        return e
                if self._eof:
                    raise AssertionError(f"no {name!r} event before the peer ended: {self.describe()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {name!r} event within {timeout}s: {self.describe()}")
                self._cond.wait(left)

    def named(self, name: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e.get("event") == name]

    def send_line(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def wait(self, timeout: float = 30.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s: {self.describe()}") from None
        if self._thread is not None:
            self._thread.join(5)
        return code

    def stop(self) -> None:
        """SIGTERM, then SIGKILL: used by every finalizer, whatever state the process is in."""
        with contextlib.suppress(OSError, ValueError):
            self.close_stdin()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdout.close()


class Procs:
    """Every helper process a test starts; the fixture kills all of them at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.node: str | None = None

    def js(self, *args: str, stdin: bool = False) -> Proc:
        if self.node is None:
            self.node = require_js()
        n = len(self.procs)
        proc = Proc([self.node, str(PEER_JS), *args], self.tmp / f"js-{n}-{args[0]}.log", stdin=stdin,
                    cwd=JS_DIR)
        self.procs.append(proc)
        return proc

    def js_run(self, *args: str, timeout: float = 60.0) -> Proc:
        """Run peer.js to completion; it must exit 0."""
        proc = self.js(*args)
        code = proc.wait(timeout)
        assert code == 0, f"peer.js {args[0]} exited {code}: {proc.describe()}"
        return proc

    def cli_bg(self, home: Path, *args: str) -> Proc:
        n = len(self.procs)
        proc = Proc([CLOUDPAL, "--home", str(home), *args], self.tmp / f"cli-{n}-{args[1]}.log",
                    json_events=False)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.kill_all()


def cli(home: Path, *args: str, input: bytes | None = None, timeout: float = 60) -> bytes:
    proc = subprocess.run([CLOUDPAL, "--home", str(home), *args], input=input, capture_output=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"cloudpal {' '.join(args)} exited {proc.returncode}: {proc.stderr!r}"
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# ---- peer.js's generated content, digests ------------------------------------------------


def gen_block(index: int, size: int, salt: int = 0) -> bytes:
    """peer.js blockContent: SHA-256("cloudpal-peer-block" ‖ u64le(salt) ‖ u64le(index)) repeated."""
    if size == 0:
        return b""
    h = hashlib.sha256(b"cloudpal-peer-block" + struct.pack("<QQ", salt, index)).digest()
    return (h * (size // 32 + 1))[:size]


def gen_size(index: int, *, block_size: int = 1024, empty_every: int = 0, large_every: int = 0,
             large_size: int = MiB) -> int:
    k = index + 1
    if empty_every and k % empty_every == 0:
        return 0
    if large_every and k % large_every == 0:
        return large_size
    return block_size


def gen_blocks(start: int, count: int, salt: int = 0, **sizes: int) -> list[bytes]:
    return [gen_block(i, gen_size(i, **sizes), salt) for i in range(start, start + count)]


def digest(blocks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for b in blocks:
        h.update(struct.pack("<Q", len(b)))
        h.update(b)
    return h.hexdigest()


def append_all(core: Hypercore, blocks: list[bytes], batch: int = 1000) -> None:
    for i in range(0, len(blocks), batch):
        core.append(blocks[i:i + batch])


def js_blocks(proc: Proc) -> dict[int, bytes]:
    return {e["index"]: bytes.fromhex(e["hex"]) for e in proc.named("block")}


def assert_same_core(core: Hypercore, js: dict[str, Any]) -> None:
    """A CloudPal core and a peer.js core event describe the same core state."""
    assert core.key.hex() == js["key"]
    assert core.discovery_key.hex() == js["discoveryKey"]
    assert core.length == js["length"]
    assert core.fork == js["fork"]
    assert core.byte_length == js["byteLength"]
    assert core.tree_hash().hex() == js["treeHash"]


def reopened(home: Path, key: bytes) -> tuple[CoreStore, Hypercore]:
    store = open_store(home)
    return store, store.get(key.hex())


# ---- the CloudPal side -------------------------------------------------------------------


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def event(proc: Proc, name: str, timeout: float = 30.0,
                pred: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    return await asyncio.to_thread(proc.event, name, timeout, pred)


def js_writer(procs: Procs, *args: str, stdin: bool = False) -> tuple[Proc, dict[str, Any], int]:
    """A listening peer.js writer: (process, its `ready` event, port)."""
    proc = procs.js("write", *args, "--listen", f"{HOST}:0", stdin=stdin)
    ready = proc.event("ready", 60)
    port = proc.event("listening", 10)["port"]
    return proc, ready, port


def js_read(procs: Procs, key: bytes, port: int, *args: str) -> Proc:
    return procs.js("read", "--key", key.hex(), "--connect", f"{HOST}:{port}", "--quiet", *args)


async def js_read_done(procs: Procs, key: bytes, port: int, *args: str,
                       timeout: float = 60.0) -> tuple[Proc, dict[str, Any]]:
    proc = js_read(procs, key, port, *args)
    done = await event(proc, "done", timeout)
    assert await asyncio.to_thread(proc.wait, timeout) == 0, proc.describe()
    return proc, done


# ==== 1. 10,000 blocks with empty and 1 MiB blocks ========================================

BIG = {"empty_every": 7, "large_every": 1000}
BIG_N = 10_000
BIG_ARGS = ("--blocks", str(BIG_N), "--empty-every", "7", "--large-every", "1000")


def test_big_js_writer_to_cloudpal(procs: Procs, tmp_path: Path) -> None:
    _, ready, port = js_writer(procs, "--seed", SEED_BIG.hex(), *BIG_ARGS, "--quiet")
    key = bytes.fromhex(ready["key"])
    home = tmp_path / "reader"
    store = open_store(home)
    core = asyncio.run(clone(store, key, HOST, port, timeout=60))
    assert_same_core(core, ready)
    assert core.length == core.contiguous_length == BIG_N
    assert core.get(6) == b"" and len(core.get(999)) == MiB  # empty and 1 MiB blocks made it
    assert digest(core.iter_blocks(0, BIG_N)) == ready["blocksSha256"]
    store.close()

    store, core = reopened(home, key)  # what was stored, not what was in memory
    assert_same_core(core, ready)
    assert core.contiguous_length == BIG_N
    store.close()


def test_big_cloudpal_writer_to_js(procs: Procs, tmp_path: Path) -> None:
    store = open_store(tmp_path / "writer")
    core = store.create("big", seed=SEED_BIG)
    blocks = gen_blocks(0, BIG_N, **BIG)
    append_all(core, blocks)
    want = digest(blocks)
    # the same seed and blocks written by JS give the very same core
    reference = procs.js_run("write", "--seed", SEED_BIG.hex(), *BIG_ARGS, "--quiet").event("ready")
    assert_same_core(core, reference)
    assert reference["blocksSha256"] == want

    async def main() -> dict[str, Any]:
        async with seeding(store, [core]) as port:
            _, done = await js_read_done(procs, core.key, port, "--summary")
            return done

    done = asyncio.run(main())
    assert_same_core(core, done)
    assert done["blocks"] == BIG_N and done["contiguousLength"] == BIG_N
    assert done["bytes"] == core.byte_length
    assert done["blocksSha256"] == want
    store.close()


# ==== 2. live appends while connected =====================================================


def test_live_js_writer_to_cloudpal_clone(procs: Procs, tmp_path: Path) -> None:
    """JS `write --stdin` fed line by line while a CloudPal `clone(live=True)` follows it."""
    writer, ready, port = js_writer(procs, "--blocks", "3", "--stdin", stdin=True)
    key = bytes.fromhex(ready["key"])
    store = open_store(tmp_path / "reader")
    core = store.replica(key)
    lines = [b"live block one", b"", b"live block three", b"\x01\x02 binary-ish \xff", b"last"]

    async def main() -> Hypercore:
        stop = asyncio.Event()
        task = asyncio.create_task(clone(store, key, HOST, port, live=True, stop=stop))
        try:
            await until(lambda: core.contiguous_length == 3, 20, "the initial blocks")
            for n, line in enumerate(lines, start=4):
                writer.send_line(line)
                await event(writer, "append", 10, lambda e, n=n: e["length"] == n)
                await until(lambda n=n: core.contiguous_length == n, 10, f"live block {n - 1}")
                assert core.get(n - 1) == line
        finally:
            stop.set()
        return await asyncio.wait_for(task, 10)

    result = asyncio.run(main())
    assert result is core
    last = writer.named("append")[-1]
    assert_same_core(core, last)
    assert [core.get(i) for i in range(3, 8)] == lines
    assert digest(core.iter_blocks(0, 8)) == digest(gen_blocks(0, 3) + lines)
    store.close()


def test_live_cloudpal_writer_to_js_reader(procs: Procs, tmp_path: Path) -> None:
    """CloudPal `append` while a JS `read --live` is connected."""
    store = open_store(tmp_path / "writer")
    core = store.create("live")
    core.append([b"one", b"two", b"three"])
    live = [[b"four"], [b""], [b"six", b"seven"], [b"eight " * 1000]]

    async def main() -> Proc:
        async with seeding(store, [core]) as port:
            reader = js_read(procs, core.key, port, "--live", "--expect-length", "8")
            synced = await event(reader, "synced", 30)
            assert synced["length"] == 3
            for batch in live:
                core.append(batch)
                await event(reader, "block", 10, lambda e: e["index"] == core.length - 1)
            await event(reader, "done", 10)
            assert await asyncio.to_thread(reader.wait, 10) == 0
            return reader

    reader = asyncio.run(main())
    blocks = [b"one", b"two", b"three"] + [b for batch in live for b in batch]
    assert js_blocks(reader) == dict(enumerate(blocks))
    done = reader.event("done")
    assert_same_core(core, done)
    assert done["blocksSha256"] == digest(blocks)
    store.close()


# ==== 3. ranged (sparse) downloads ========================================================


def test_sparse_js_writer_to_cloudpal(procs: Procs, tmp_path: Path) -> None:
    _, ready, port = js_writer(procs, "--blocks", "300", "--empty-every", "9")
    key = bytes.fromhex(ready["key"])
    home = tmp_path / "reader"
    store = open_store(home)
    core = asyncio.run(clone(store, key, HOST, port, start=100, end=120, timeout=30))
    assert_same_core(core, ready)  # the signed length and tree hash are the writer's
    assert [i for i in range(300) if core.has(i)] == list(range(100, 120))
    assert core.contiguous_length == 0
    assert store.storage.count_blocks(core.record.id) == 20
    assert [core.get(i) for i in range(100, 120)] == gen_blocks(100, 20, empty_every=9)
    with pytest.raises(NotFound):
        core.get(0)
    store.close()

    store, core = reopened(home, key)
    assert store.storage.present(core.record.id, 0, 300) == list(range(100, 120))
    assert_same_core(core, ready)
    store.close()


def test_sparse_cloudpal_writer_to_js(procs: Procs, tmp_path: Path) -> None:
    store = open_store(tmp_path / "writer")
    core = store.create("sparse")
    blocks = gen_blocks(0, 300, empty_every=9)
    core.append(blocks)
    js_dir = tmp_path / "js-reader"

    async def main() -> tuple[Proc, dict[str, Any]]:
        async with seeding(store, [core]) as port:
            return await js_read_done(procs, core.key, port, "--dir", str(js_dir),
                                      "--start", "100", "--end", "120")

    reader, done = asyncio.run(main())
    assert_same_core(core, done)
    assert js_blocks(reader) == {i: blocks[i] for i in range(100, 120)}
    assert done["blocks"] == 20 and done["contiguousLength"] == 0
    assert done["blocksSha256"] == digest(blocks[100:120])
    # what the JS reader stored: exactly the requested blocks
    info = procs.js_run("info", "--dir", str(js_dir), "--dump", "--no-digest", "--quiet")
    assert sorted(js_blocks(info)) == list(range(100, 120))
    store.close()


# ==== 4. encrypted cores ==================================================================

ENC_LINES = [MARKER + b" block %d" % i for i in range(6)] + [b"", MARKER * 2000, b"tail " + MARKER]


def assert_no_plaintext(home: Path) -> None:
    files = [p for p in (home / "data").iterdir() if p.is_file()]
    assert any(p.name == "cores.db" for p in files)
    for p in files:
        assert MARKER not in p.read_bytes(), f"{p.name} holds a plaintext block"


def test_encrypted_js_writer_to_cloudpal(procs: Procs, tmp_path: Path) -> None:
    src = tmp_path / "lines.txt"
    src.write_bytes(b"\n".join(ENC_LINES) + b"\n")
    _, ready, port = js_writer(procs, "--encryption-key", ENC_KEY.hex(), "--from-file", str(src))
    assert ready["encrypted"] and ready["length"] == len(ENC_LINES)
    key = bytes.fromhex(ready["key"])
    home = tmp_path / "reader"
    store = open_store(home)

    async def main() -> tuple[Hypercore, Proc]:
        core = await clone(store, key, HOST, port, encryption_key=ENC_KEY, timeout=30)
        # a JS reader without the key gets the blocks as they travel and are stored
        raw_reader, _ = await js_read_done(procs, key, port, "--raw")
        return core, raw_reader

    core, raw_reader = asyncio.run(main())
    assert_same_core(core, ready)
    assert [core.get(i) for i in range(len(ENC_LINES))] == ENC_LINES
    assert digest(core.iter_blocks(0, core.length)) == ready["blocksSha256"]
    raw = js_blocks(raw_reader)
    for i, line in enumerate(ENC_LINES):
        stored = core.stored_block(i)
        assert stored == raw[i]  # CloudPal stores exactly the JS ciphertext
        assert len(stored) == len(line) + 8 and MARKER not in stored
    store.close()
    assert_no_plaintext(home)
    store, core = reopened(home, key)
    assert core.get(len(ENC_LINES) - 1) == ENC_LINES[-1]
    store.close()


def test_encrypted_cloudpal_writer_to_js(procs: Procs, tmp_path: Path) -> None:
    home = tmp_path / "writer"
    store = open_store(home)
    core = store.create("secret", encryption_key=ENC_KEY)
    core.append(ENC_LINES)
    assert core.byte_length == sum(map(len, ENC_LINES))
    assert_no_plaintext(home)

    async def main() -> tuple[Proc, Proc]:
        async with seeding(store, [core]) as port:
            plain, _ = await js_read_done(procs, core.key, port, "--encryption-key", ENC_KEY.hex())
            raw, _ = await js_read_done(procs, core.key, port)  # no key: blocks as stored
            return plain, raw

    plain, raw = asyncio.run(main())
    assert_same_core(core, plain.event("done"))
    assert js_blocks(plain) == dict(enumerate(ENC_LINES))
    assert plain.event("done")["blocksSha256"] == digest(ENC_LINES)
    for i, block in js_blocks(raw).items():
        assert block == core.stored_block(i) and MARKER not in block
    store.close()
    assert_no_plaintext(home)


# ==== 5. truncated (forked) cores =========================================================

TRUNC_ARGS = ("--seed", SEED.hex(), "--blocks", "30", "--empty-every", "4", "--truncate", "20",
              "--then-blocks", "15")


def forked_blocks() -> list[bytes]:
    return gen_blocks(0, 20, empty_every=4) + gen_blocks(20, 15, salt=1, empty_every=4)


def test_truncated_js_writer_to_cloudpal(procs: Procs, tmp_path: Path) -> None:
    _, ready, port = js_writer(procs, *TRUNC_ARGS)
    assert ready["fork"] == 1 and ready["length"] == 35
    key = bytes.fromhex(ready["key"])
    store = open_store(tmp_path / "reader")
    core = asyncio.run(clone(store, key, HOST, port, timeout=30))
    assert_same_core(core, ready)
    assert digest(core.iter_blocks(0, 35)) == ready["blocksSha256"] == digest(forked_blocks())
    store.close()


def test_truncated_cloudpal_writer_to_js(procs: Procs, tmp_path: Path) -> None:
    store = open_store(tmp_path / "writer")
    core = store.create("forked", seed=SEED)
    core.append(gen_blocks(0, 30, empty_every=4))
    core.truncate(20)
    core.append(gen_blocks(20, 15, salt=1, empty_every=4))
    assert (core.fork, core.length) == (1, 35)
    # the same operations in JS give the same core (key, fork, tree hash)
    reference = procs.js_run("write", *TRUNC_ARGS, "--quiet").event("ready")
    assert_same_core(core, reference)

    async def main() -> dict[str, Any]:
        async with seeding(store, [core]) as port:
            _, done = await js_read_done(procs, core.key, port, "--summary")
            return done

    done = asyncio.run(main())
    assert_same_core(core, done)
    assert done["blocksSha256"] == digest(forked_blocks())
    store.close()


# ==== 6. byte-identical vectors for fixed seeds ===========================================


def trace_signatures(proc: Proc) -> list[str]:
    """Upgrade signatures in the `data` messages a peer.js --trace sent."""
    sigs = []
    for line in proc.stderr(tail=10**7).splitlines():
        if not line.startswith("TRACE "):
            continue
        rec = json.loads(line[6:])
        for msg in rec.get("msgs", []):
            upgrade = msg.get("type") == "data" and (msg.get("fields") or {}).get("upgrade")
            if rec.get("dir") == "out" and upgrade:
                sigs.append(upgrade["signature"])
    return sigs


@pytest.mark.parametrize("compat", [False, True], ids=["manifest", "compat"])
def test_fixed_seed_vectors_match_js(procs: Procs, tmp_path: Path, compat: bool) -> None:
    flag = ("--compat",) if compat else ()
    src = tmp_path / "abc.txt"
    src.write_bytes(b"a\nb\nc\n")
    js_dir = str(tmp_path / "js-core")
    procs.js_run("write", "--dir", js_dir, "--seed", SEED.hex(), *flag, "--from-file", str(src), "--quiet")
    info = procs.js_run("info", "--dir", js_dir, "--quiet").event("info")
    assert info["compat"] is compat

    store = open_store(tmp_path / "cloudpal")
    core = store.create("vec", seed=SEED, compat=compat)
    for block in (b"a", b"b", b"c"):
        core.append(block)
    vec = VECTORS[compat]
    assert core.key.hex() == vec["key"] == info["key"]
    assert core.tree_hash().hex() == vec["tree_hash"] == info["treeHash"]
    assert core.signature is not None and core.signature.hex() == vec["signature"]
    assert_same_core(core, info)
    if compat:
        assert info["key"] == info["manifest"]["signers"][0]["publicKey"]

    # the signature JS itself sends for this core (reopened, served once, traced)
    _, _, port = js_writer(procs, "--dir", js_dir, "--trace")
    reader_store = open_store(tmp_path / "reader")
    replica = asyncio.run(clone(reader_store, core.key, HOST, port, timeout=30))
    assert replica.signature == core.signature
    assert replica.tree_hash() == core.tree_hash() and replica.compat is compat
    assert trace_signatures(procs.procs[-1]) == [vec["signature"]]
    store.close()
    reader_store.close()


# ==== 7. compat cores both ways ===========================================================

COMPAT_SEED = bytes([0x22]) * 32
COMPAT_ARGS = ("--seed", COMPAT_SEED.hex(), "--compat", "--blocks", "200", "--empty-every", "5",
               "--large-every", "50", "--large-size", "100000")
COMPAT_SIZES = {"empty_every": 5, "large_every": 50, "large_size": 100000}


def test_compat_js_writer_to_cloudpal(procs: Procs, tmp_path: Path) -> None:
    _, ready, port = js_writer(procs, *COMPAT_ARGS)
    assert ready["compat"] and ready["key"] == ready["publicKey"]
    key = bytes.fromhex(ready["key"])
    home = tmp_path / "reader"
    store = open_store(home)
    core = asyncio.run(clone(store, key, HOST, port, timeout=30))  # nothing tells it "compat"
    assert core.compat
    assert_same_core(core, ready)
    assert digest(core.iter_blocks(0, 200)) == ready["blocksSha256"]
    store.close()
    store, core = reopened(home, key)
    assert core.compat and core.tree_hash().hex() == ready["treeHash"]
    store.close()


def test_compat_cloudpal_writer_to_js(procs: Procs, tmp_path: Path) -> None:
    store = open_store(tmp_path / "writer")
    core = store.create("compat", seed=COMPAT_SEED, compat=True)
    blocks = gen_blocks(0, 200, **COMPAT_SIZES)
    core.append(blocks)
    reference = procs.js_run("write", *COMPAT_ARGS, "--quiet").event("ready")
    assert_same_core(core, reference)
    assert core.key.hex() == reference["publicKey"]

    async def main() -> dict[str, Any]:
        async with seeding(store, [core]) as port:
            _, done = await js_read_done(procs, core.key, port, "--summary")
            return done

    done = asyncio.run(main())
    assert_same_core(core, done)
    assert done["blocksSha256"] == digest(blocks)
    store.close()


# ==== 8. several cores over one connection ================================================


def three_cores(store: CoreStore) -> list[Hypercore]:
    a = store.create("a")
    a.append(gen_blocks(0, 120, empty_every=10))
    b = store.create("b", compat=True)
    b.append([b"b%d" % i for i in range(70)])
    c = store.create("c", encryption_key=ENC_KEY)
    c.append([b"c%d" % i for i in range(40)])
    return [a, b, c]


def test_two_cores_one_connection_cloudpal(tmp_path: Path) -> None:
    """Two cores offered by one `seed`, both replicated over a single connection."""
    wstore = open_store(tmp_path / "writer")
    a, b, _ = three_cores(wstore)
    rstore = open_store(tmp_path / "reader")
    ra, rb = rstore.replica(a.key), rstore.replica(b.key)

    async def main() -> int:
        async with seeding(wstore, [a, b]) as port:
            conn = await connect(HOST, port)
            rep = Replication(conn, name="reader")
            peers = [rep.add(ra), rep.add(rb)]
            for peer in peers:
                peer.want(0, None)
            runner = asyncio.create_task(rep.run())
            try:
                ok = await rep.wait_until(
                    lambda: ra.contiguous_length == a.length and rb.contiguous_length == b.length, 30)
                assert ok, "the connection ended before both cores were downloaded"
                channels = len(list(conn.mux))
            finally:
                await conn.close()
                with contextlib.suppress(Exception):
                    await runner
            return channels

    assert asyncio.run(main()) == 2
    for src, dst in ((a, ra), (b, rb)):
        assert dst.tree_hash() == src.tree_hash() and dst.length == src.length
        assert list(dst.iter_blocks(0, dst.length)) == list(src.iter_blocks(0, src.length))
    assert rb.compat
    wstore.close()
    rstore.close()


def test_js_reads_each_core_from_one_cloudpal_seed(procs: Procs, tmp_path: Path) -> None:
    """One seed offering two cores (and holding a third): JS readers fetch each, concurrently."""
    store = open_store(tmp_path / "writer")
    cores = three_cores(store)

    async def main() -> list[Proc]:
        async with seeding(store, cores[:2]) as port:
            readers = [js_read(procs, c.key, port, *(("--encryption-key", ENC_KEY.hex()) if c.encryption
                                                   else ())) for c in cores]
            for r in readers:
                await event(r, "done", 30)
                assert await asyncio.to_thread(r.wait, 10) == 0, r.describe()
            return readers

    readers = asyncio.run(main())
    for core, reader in zip(cores, readers, strict=True):
        assert_same_core(core, reader.event("done"))
        assert js_blocks(reader) == dict(enumerate(core.iter_blocks(0, core.length)))
    store.close()


# ==== 9. the CLI (`cloudpal core ...`) against JS =========================================

CLI_INPUT = (b"first line\n\nthird line, after an empty one\n\ttabbed \xc3\xa9t\xc3\xa9\n"
             + b"x" * 70000 + b"\n")


def test_cli_writer_to_js_reader(procs: Procs, tmp_path: Path) -> None:
    home = tmp_path / "home"
    key = bytes.fromhex(cli(home, "core", "create", "log").decode().strip())
    src = tmp_path / "input.txt"
    src.write_bytes(CLI_INPUT)
    cli(home, "core", "append", "log", str(src))
    lines = CLI_INPUT.split(b"\n")[:-1]
    assert b"" in lines
    assert cli(home, "core", "cat", "log") == CLI_INPUT
    info = json.loads(cli(home, "core", "info", "log", "--json"))
    assert info["key"] == key.hex() and info["length"] == len(lines)

    port = free_port()
    seeder = procs.cli_bg(home, "core", "seed", "log", "--listen", f"{HOST}:{port}")
    deadline = time.monotonic() + 20
    while b"seeding" not in seeder.log.read_bytes():
        assert seeder.proc.poll() is None, f"core seed exited: {seeder.stderr()}"
        assert time.monotonic() < deadline, "core seed did not start"
        time.sleep(0.05)
    reader = js_read(procs, key, port)
    done = reader.event("done", 30)
    assert reader.wait(10) == 0
    assert js_blocks(reader) == dict(enumerate(lines))
    assert done["key"] == key.hex() and done["length"] == len(lines)
    assert done["treeHash"] == info["tree_hash"] and done["byteLength"] == info["byte_length"]
    assert done["blocksSha256"] == digest(lines)


def test_cli_clone_from_js_writer(procs: Procs, tmp_path: Path) -> None:
    src = tmp_path / "input.txt"
    src.write_bytes(CLI_INPUT)
    _, ready, port = js_writer(procs, "--from-file", str(src))
    home = tmp_path / "home"
    cli(home, "core", "clone", ready["key"], "--peer", f"{HOST}:{port}", "--name", "copy")
    assert cli(home, "core", "cat", "copy") == CLI_INPUT
    info = json.loads(cli(home, "core", "info", "copy", "--json"))
    assert info["tree_hash"] == ready["treeHash"] and info["length"] == ready["length"]
    assert info["contiguous_length"] == ready["length"] and not info["writable"]

