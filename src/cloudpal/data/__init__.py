"""The data pillar: Hypercore 11 in Python, wire-compatible with the JavaScript stack.

Public API: open a node's core store, create/append/read cores, and share them
with any Hypercore peer over TCP.
"""

from __future__ import annotations

from pathlib import Path

from cloudpal.data.core import CoreStore, Hypercore
from cloudpal.data.errors import DataError, DecodeError, ProtocolError, VerificationError
from cloudpal.data.ids import decode as parse_key
from cloudpal.data.net import clone, seed


def open_store(home: Path) -> CoreStore:
    """The core store in a node home (`HOME/data/cores.db`)."""
    return CoreStore(home)


__all__ = [
    "CoreStore",
    "DataError",
    "DecodeError",
    "Hypercore",
    "ProtocolError",
    "VerificationError",
    "clone",
    "open_store",
    "parse_key",
    "seed",
]
