"""Helpers for data-pillar tests that run the real JavaScript Hypercore."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloudpal.data import CoreStore, Hypercore, seed

REPO = Path(__file__).resolve().parents[2]
JS = REPO / "js"


def require_js() -> None:
    """Fail (never skip) when the pinned JS stack is not installed."""
    if shutil.which("node") is None:
        pytest.fail("node is not installed: install Node.js 20 and run `make js`")
    if not (JS / "node_modules" / "hypercore" / "package.json").exists():
        pytest.fail("the pinned JS Hypercore stack is missing: run `make js` (npm ci in js/)")


def js_peer(*args: str) -> list[str]:
    """argv for the JS reference peer (js/peer.js)."""
    return ["node", str(JS / "peer.js"), *args]


@contextlib.asynccontextmanager
async def seeding(store: CoreStore, cores: list[Hypercore], host: str = "127.0.0.1") -> AsyncIterator[int]:
    """A real CloudPal `seed` on a free port of `host`; yields the port, stops it afterwards."""
    stop = asyncio.Event()
    ready: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(seed(store, cores, host, 0, on_ready=ready.set_result, stop=stop))
    try:
        await asyncio.wait({ready, task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert ready.done(), "seed did not start listening"
        yield ready.result()[1]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
