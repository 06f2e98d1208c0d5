"""Helpers for data-pillar tests that run the real JavaScript Hypercore."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
