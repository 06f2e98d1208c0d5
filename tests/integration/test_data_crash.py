"""Crash safety: a writer killed with SIGKILL mid-stream of appends.

On reopen the core must verify (its stored blocks rebuild exactly the signed
tree), hold every block whose append had returned, and accept new appends that
the real JS hypercore can then download.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest_data import js_peer, require_js, seeding

from cloudpal.data import open_store
from cloudpal.data.crypto import Verifier
from cloudpal.data.merkle import MemoryNodeStore, MerkleTree

SEED = bytes(range(32))

WRITER = r"""
import sys
from pathlib import Path
from cloudpal.data import open_store
store = open_store(Path(sys.argv[1]))
try:
    core = store.get("log")
except Exception:
    core = store.create("log", seed=bytes(range(32)))
i = core.length
while True:
    batch = [b"block %d " % j * (1 + j % 50) if j % 9 else b"" for j in range(i, i + 1 + i % 3)]
    i = core.append(batch)
    print(i, flush=True)
"""


def block(j: int) -> bytes:
    return b"block %d " % j * (1 + j % 50) if j % 9 else b""


def kill_writer_after(home: Path, appends: int) -> int:
    """Run the writer, SIGKILL it after `appends` returned appends; the last reported length."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(home)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    last = 0
    try:
        for _ in range(appends):
            line = proc.stdout.readline()
            assert line, "writer died on its own"
            last = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return last


def check_core(home: Path, reported: int) -> int:
    store = open_store(home)
    try:
        core = store.get("log")
        assert core.length >= reported, f"lost appends: reported {reported}, reopened {core.length}"
        blocks = list(core.iter_blocks(0, core.length))
        assert blocks == [block(j) for j in range(core.length)]
        # the stored blocks rebuild exactly the signed tree
        tree = MerkleTree(MemoryNodeStore())
        tree.commit(tree.append(blocks))
        assert tree.tree_hash() == core.tree_hash()
        assert core.verifier is not None and core.signature is not None
        assert Verifier.for_core(core.key, core.manifest).verify(core.signature, core.tree_hash(),
                                                                 core.length, core.fork)
        return core.length
    finally:
        store.close()


def test_sigkill_mid_appends_leaves_a_valid_core_js_can_read(tmp_path: Path) -> None:
    require_js()
    home = tmp_path / "home"
    lengths = []
    for appends in (50, 400, 1500):  # three crashes into the same store
        reported = kill_writer_after(home, appends)
        lengths.append(check_core(home, reported))
    assert lengths == sorted(lengths) and lengths[-1] > lengths[0]

    store = open_store(home)
    core = store.get("log")
    core.append([b"after the crash", b""])
    expected = {"length": core.length, "treeHash": core.tree_hash().hex()}

    async def serve_and_read() -> dict[str, object]:
        async with seeding(store, [core]) as port:
            proc = await asyncio.create_subprocess_exec(
                *js_peer("read", "--key", core.key.hex(), "--connect", f"127.0.0.1:{port}",
                         "--summary", "--timeout", "60"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 90)
            assert proc.returncode == 0, err.decode()
            events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
            return next(e for e in events if e["event"] == "done")

    t0 = time.monotonic()
    done = asyncio.run(serve_and_read())
    assert {k: done[k] for k in expected} == expected, (done, expected, time.monotonic() - t0)
    store.close()
    assert os.stat(home / "data" / "cores.db").st_mode & 0o777 == 0o600
