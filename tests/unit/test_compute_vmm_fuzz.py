"""Bytes from QEMU (QMP), from the guest (control channel) and snapshot metadata from disk, fuzzed:
whatever arrives, the driver answers with a result or a VmError / guest exit, never a crash."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import tempfile
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudpal.compute.vmm import VmError
from cloudpal.compute.vmm import qemu as qemu_mod
from cloudpal.compute.vmm.qmp import Qmp

_json_lines = st.lists(
    st.one_of(
        st.binary(max_size=80),
        st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
                     lambda c: st.one_of(st.lists(c, max_size=3),
                                         st.dictionaries(st.sampled_from(
                                             ["QMP", "event", "id", "return", "error", "desc"]),
                                             c, max_size=3)),
                     max_leaves=8).map(lambda v: json.dumps(v).encode()),
    ),
    max_size=6,
).map(lambda lines: b"\n".join(lines) + b"\n")


async def _pair(data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, socket.socket]:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    theirs.sendall(data)
    theirs.shutdown(socket.SHUT_WR)
    return reader, writer, theirs


@settings(max_examples=150, deadline=None)
@given(_json_lines)
def test_qmp_reader_never_crashes(data: bytes) -> None:
    async def main() -> None:
        reader, writer, theirs = await _pair(data)
        qmp = Qmp(reader, writer)
        with contextlib.suppress(VmError, TimeoutError):
            await qmp.execute("query-status", timeout=0.2)
        await qmp.close()
        theirs.close()

    asyncio.run(main())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=60),
                          st.sampled_from([b"HELLO", b"READY", b"EXIT 3", b"EXIT x", b"PONG"])),
                max_size=8).map(lambda ls: b"\n".join(ls)))
def test_guest_control_lines_never_crash(data: bytes) -> None:
    async def main() -> None:
        reader, writer, theirs = await _pair(data)
        ctl = qemu_mod._Control(reader, writer)
        with contextlib.suppress(TimeoutError, qemu_mod._Exited):
            await ctl.expect("READY", time.monotonic() + 0.2)
        await ctl.close()
        theirs.close()

    asyncio.run(main())


@given(st.binary(max_size=300) | st.dictionaries(st.text(max_size=10), st.text(max_size=10))
       .map(lambda d: json.dumps(d).encode()))
def test_snapshot_meta_is_valid_or_refused(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "meta.json").write_bytes(data)
        try:
            meta = qemu_mod._read_meta(Path(tmp))
        except VmError:
            return
        assert meta["kind"] in ("boot", "idle") and isinstance(meta["fingerprint"], str)
