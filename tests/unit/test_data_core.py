"""Hypercore.audit: re-verifying what a core stores catches any change on disk."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from cloudpal.data import VerificationError, clone, open_store, seed


def _tamper(home: Path, sql: str) -> None:
    db = sqlite3.connect(home / "data" / "cores.db")
    db.execute(sql)
    db.commit()
    db.close()


def _fresh(home: Path) -> int:
    core = open_store(home).get("log")
    return core.audit()


def test_audit_passes_then_catches_each_kind_of_tampering(tmp_path: Path) -> None:
    blocks = [b"block %d" % i * (i % 5) for i in range(77)]
    for what, sql in (
        ("block", "UPDATE blocks SET data = x'00' || data WHERE idx = 40"),
        ("node", "UPDATE nodes SET hash = zeroblob(32) WHERE idx = 9"),
        ("signature", "UPDATE cores SET signature = zeroblob(68)"),
    ):
        home = tmp_path / what
        core = open_store(home).create("log", seed=bytes(range(32)))
        core.append(blocks)
        assert core.audit() == 77
        _tamper(home, sql)
        with pytest.raises(VerificationError):
            _fresh(home)


def test_audit_of_a_sparse_replica(tmp_path: Path) -> None:
    writer = open_store(tmp_path / "w").create("log", seed=bytes(range(32)))
    writer.append([b"x%d" % i for i in range(100)])
    reader_store = open_store(tmp_path / "r")

    async def run() -> None:
        stop = asyncio.Event()
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(seed(writer_store, [writer], "127.0.0.1", 0, stop=stop,
                                        on_ready=lambda a: ready.set_result(a[1])))
        try:
            await clone(reader_store, writer.key, "127.0.0.1", await ready, start=30, end=45)
        finally:
            stop.set()
            await task

    writer_store = open_store(tmp_path / "w")
    writer = writer_store.get("log")
    asyncio.run(run())
    replica = reader_store.get(writer.key.hex())
    assert replica.audit() == 15
    _tamper(tmp_path / "r", "UPDATE blocks SET data = x'41' WHERE idx = 31")
    with pytest.raises(VerificationError, match="block 31"):
        open_store(tmp_path / "r").get(writer.key.hex()).audit()
