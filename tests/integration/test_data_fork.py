"""A replica that holds the old fork follows the writer's truncation (a reorg).

The writer truncates and appends while the replica still has the old blocks:
on the next replication the replica verifies the writer's newly signed tree and
moves to its fork; nothing it dropped can be forced by an unsigned peer.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from pathlib import Path

from conftest_data import js_peer, require_js, seeding

from cloudpal.data import clone, open_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_stale_replica_follows_a_cloudpal_writers_truncation(tmp_path: Path) -> None:
    writer_store = open_store(tmp_path / "w")
    reader_store = open_store(tmp_path / "r")
    core = writer_store.create("log", seed=bytes(range(32)))
    core.append([b"old %d" % i for i in range(30)])

    async def sync_once() -> None:
        async with seeding(writer_store, [core]) as port:
            await clone(reader_store, core.key, "127.0.0.1", port, timeout=30)

    asyncio.run(sync_once())
    replica = reader_store.get(core.key.hex())
    assert (replica.length, replica.fork) == (30, 0)
    core.truncate(20)
    core.append([b"new %d" % i for i in range(15)])
    asyncio.run(sync_once())
    assert (replica.length, replica.fork) == (35, 1)
    assert replica.tree_hash() == core.tree_hash()
    assert [replica.get(i) for i in (19, 20, 34)] == [b"old 19", b"new 0", b"new 14"]
    reopened = open_store(tmp_path / "r").get(core.key.hex())
    assert (reopened.length, reopened.fork, reopened.tree_hash()) == (35, 1, core.tree_hash())


def test_stale_replica_follows_a_js_writers_truncation(tmp_path: Path) -> None:
    require_js()
    store = open_store(tmp_path / "r")
    jsdir = tmp_path / "js"
    seed_hex = "07" * 32

    def serve(*extra: str) -> tuple[subprocess.Popen[str], dict[str, object], int]:
        port = _free_port()
        proc = subprocess.Popen(js_peer("write", "--dir", str(jsdir), "--seed", seed_hex, *extra,
                                        "--listen", f"127.0.0.1:{port}"),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        ready: dict[str, object] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "ready":
                ready = event
            if event.get("event") == "listening":
                return proc, ready, int(event["port"])  # type: ignore[call-overload]
        proc.kill()
        raise AssertionError("JS writer did not start")

    proc, info, port = serve("--blocks", "30")
    try:
        key = bytes.fromhex(str(info["key"]))
        asyncio.run(clone(store, key, "127.0.0.1", port, timeout=30))
    finally:
        proc.kill()
        proc.wait()
    replica = store.get(key.hex())
    assert (replica.length, replica.fork) == (30, 0)

    proc, info, port = serve("--truncate", "20", "--then-blocks", "15")
    try:
        assert (info["length"], info["fork"]) == (35, 1)
        asyncio.run(clone(store, key, "127.0.0.1", port, timeout=30))
    finally:
        proc.kill()
        proc.wait()
    assert (replica.length, replica.fork) == (35, 1)
    assert replica.tree_hash().hex() == info["treeHash"]
    assert replica.contiguous_length == 35
