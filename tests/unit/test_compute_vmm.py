"""The QEMU driver's host side without a guest: the QMP client against a scripted fake QEMU, the
command line and its fingerprint, snapshot files, and failures while starting QEMU."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from cloudpal.compute.vmm import Disk, QemuMicrovm, VmError, VmSpec
from cloudpal.compute.vmm import qemu as qemu_mod
from cloudpal.compute.vmm.qmp import Qmp

GREETING = b'{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}\r\n'
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(path: Path, handler: Handler) -> asyncio.AbstractServer:
    return await asyncio.start_unix_server(handler, str(path))


async def _answer_caps(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(GREETING)
    msg = json.loads(await reader.readline())
    assert msg["execute"] == "qmp_capabilities"
    writer.write(json.dumps({"return": {}, "id": msg["id"]}).encode() + b"\r\n")


def test_qmp_execute_events_and_errors(tmp_path: Path) -> None:
    sock = tmp_path / "qmp.sock"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _answer_caps(reader, writer)
        writer.write(b'{"event": "EARLY", "data": {}}\r\n')
        while line := await reader.readline():
            msg = json.loads(line)
            ident = msg["id"]
            if msg["execute"] == "query-status":
                writer.write(b'{"event": "STOP", "data": {}}\r\n')
                writer.write(json.dumps({"return": {"status": "paused"}, "id": ident}).encode() + b"\r\n")
            elif msg["execute"] == "slow":
                pass  # never answered
            else:
                err = {"class": "CommandNotFound", "desc": f"The command {msg['execute']} has not been found"}
                writer.write(json.dumps({"error": err, "id": ident}).encode() + b"\r\n")

    async def run() -> None:
        server = await _serve(sock, handler)
        qmp = await Qmp.connect(sock, timeout=5)
        assert await qmp.execute("query-status") == {"status": "paused"}
        assert (await qmp.wait_event("STOP", timeout=1))["event"] == "STOP"
        assert (await qmp.wait_event("EARLY", timeout=1))["event"] == "EARLY"  # buffered before we asked
        with pytest.raises(VmError, match="refused the command: The command nope has not been found"):
            await qmp.execute("nope")
        with pytest.raises(VmError, match=r"did not answer slow within 0\.2 s"):
            await qmp.execute("slow", timeout=0.2)
        assert await qmp.execute("query-status") == {"status": "paused"}  # still usable
        await qmp.close()
        await asyncio.sleep(0.05)  # let the fake server see EOF
        server.close()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("garbage", "match"),
    [
        (b'{"return": {}, "id": \r\n', "malformed QMP JSON"),
        (b"[1, 2, 3]\r\n", "not an object"),
        (b'{"id": "c2"}\r\n', "neither return nor error"),
        (b'{"event": 5}\r\n', "without a name"),
        (b"x" * (2 << 20) + b"\r\n", "longer than"),
        (b"", "closed the QMP connection"),
    ],
)
def test_qmp_malformed_input_fails_pending_commands_at_once(
    tmp_path: Path, garbage: bytes, match: str
) -> None:
    sock = tmp_path / "qmp.sock"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _answer_caps(reader, writer)
        await reader.readline()
        writer.write(garbage)
        await writer.drain()
        writer.close()

    async def run() -> None:
        server = await _serve(sock, handler)
        qmp = await Qmp.connect(sock, timeout=5)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(VmError, match=match):
            await qmp.execute("query-status", timeout=30)
        assert loop.time() - t0 < 5, "a broken connection must not wait for the timeout"
        with pytest.raises(VmError, match=match):
            await qmp.execute("query-status")
        await qmp.close()
        server.close()

    asyncio.run(run())


def test_qmp_bad_greeting_and_no_socket(tmp_path: Path) -> None:
    sock = tmp_path / "qmp.sock"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"hello": "not qmp"}\r\n{"QMP": 1}\r\n')

    async def run() -> None:
        with pytest.raises(VmError, match="did not accept a connection in time"):
            await Qmp.connect(tmp_path / "absent.sock", timeout=0.2)
        with pytest.raises(VmError, match="exited before"):
            await Qmp.connect(tmp_path / "absent.sock", timeout=5, alive=lambda: False)
        server = await _serve(sock, handler)
        with pytest.raises(VmError, match="greeting is malformed"):
            await Qmp.connect(sock, timeout=2)
        server.close()

    asyncio.run(run())


# ---------------------------------------------------------------- command line and snapshots


def _spec(tmp_path: Path, **kw: object) -> VmSpec:
    initrd = tmp_path / "initrd"
    if not initrd.exists():
        initrd.write_bytes(b"initrd v1")
    base = VmSpec(
        name="web", kernel=tmp_path / "vmlinux", initrd=initrd, cmdline_extra="", memory_mib=128, vcpus=1,
        disks=(Disk(tmp_path / "root,odd.ext4", True), Disk(tmp_path / "data.ext4", False)),
        forwards=((18080, 8080),), run_dir=tmp_path / "run", console_log=tmp_path / "console.log",
        cgroup_procs=(), accel="tcg",
    )  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def test_argv_and_fingerprint(tmp_path: Path) -> None:
    driver = QemuMicrovm(qemu="/bin/true")
    spec = _spec(tmp_path)
    argv = driver.argv(spec)
    joined = " ".join(argv)
    assert f"mem-path={tmp_path}/run/ram,share=on" in joined
    assert "microvm,memory-backend=mem" in joined and "tcg,tb-size=64" in joined and "-no-reboot" in argv
    assert f"file={tmp_path}/root,,odd.ext4,if=none,id=disk0,format=raw,readonly=on" in argv
    assert "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:18080-:8080" in argv
    assert "tsc_early_khz" in argv[argv.index("-append") + 1] or "tsc_early_khz" not in joined
    kvm = driver.argv(replace(spec, accel="kvm"))
    assert "kvm" in kvm and "host" in kvm
    with pytest.raises(VmError, match="Unknown accelerator"):
        driver.argv(replace(spec, accel="hvf"))

    fp = driver.fingerprint(spec)
    # per-run paths do not count...
    moved = replace(spec, run_dir=tmp_path / "elsewhere", console_log=tmp_path / "c2")
    assert driver.fingerprint(moved) == fp
    # ...but everything the guest sees does
    for changed in (replace(spec, memory_mib=256), replace(spec, forwards=((18081, 8080),)),
                    replace(spec, disks=spec.disks[:1]), replace(spec, cmdline_extra="x=1")):  # fmt: skip
        assert driver.fingerprint(changed) != fp
    spec.initrd.write_bytes(b"initrd v2")
    assert driver.fingerprint(spec) != fp


def test_restore_refusals_do_not_touch_the_snapshot(tmp_path: Path) -> None:
    driver = QemuMicrovm(qemu="/bin/true")
    spec = _spec(tmp_path)
    snap = tmp_path / "snap"
    snap.mkdir()

    async def restore() -> None:
        await driver.restore(spec, snap)

    with pytest.raises(VmError, match=r"no valid meta\.json"):
        asyncio.run(restore())
    (snap / "meta.json").write_text("[not a dict]")
    with pytest.raises(VmError, match=r"no valid meta\.json"):
        asyncio.run(restore())
    (snap / "meta.json").write_text(json.dumps({"kind": "idle", "fingerprint": "0" * 64}))
    (snap / "ram").write_bytes(b"ram")
    with pytest.raises(VmError, match="different VM configuration"):
        asyncio.run(restore())
    (snap / "meta.json").write_text(json.dumps({"kind": "idle", "fingerprint": driver.fingerprint(spec)}))
    with pytest.raises(VmError, match="incomplete"):
        asyncio.run(restore())
    (snap / "state").write_bytes(b"state")
    with pytest.raises(VmError, match="wrong size"):
        asyncio.run(restore())
    assert (snap / "ram").read_bytes() == b"ram"


def _fake_qemu(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-qemu"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_qemu_failing_at_start_is_a_vm_error_with_its_log(tmp_path: Path) -> None:
    qemu = _fake_qemu(tmp_path, "echo 'qemu: Could not set up host forwarding rule' >&2\nexit 1\n")
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    spec = _spec(tmp_path, cgroup_procs=(procs,))

    async def run() -> None:
        with pytest.raises(VmError) as info:
            await QemuMicrovm(qemu=qemu).boot(spec, timeout=10)
        assert "Could not set up host forwarding rule" in str(info.value)
        assert "web:" in str(info.value)

    asyncio.run(run())
    assert procs.read_text().isdigit(), "QEMU's pid is written into its cgroup before it runs"
    assert "cold boot" in spec.console_log.read_text()


def test_qemu_that_hangs_is_killed_on_timeout(tmp_path: Path) -> None:
    qemu = _fake_qemu(tmp_path, "echo $$ > \"$(dirname \"$0\")/pid\"\nexec sleep 60\n")
    spec = _spec(tmp_path)

    async def run() -> None:
        with pytest.raises(VmError, match=r"did not accept a connection in time|did not reach"):
            await QemuMicrovm(qemu=qemu).boot(spec, timeout=0.5)

    asyncio.run(run())
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_cgroup_join_failure(tmp_path: Path) -> None:
    qemu = _fake_qemu(tmp_path, "exit 0\n")
    spec = _spec(tmp_path, cgroup_procs=(tmp_path / "no" / "cgroup.procs",))

    async def run() -> None:
        with pytest.raises(VmError, match="cannot put QEMU into its cgroup"):
            await QemuMicrovm(qemu=qemu).boot(spec, timeout=5)

    asyncio.run(run())


def test_copy_sparse_and_move_across_filesystems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "ram"
    with open(src, "wb") as f:
        f.truncate(64 << 20)
        f.seek(5 << 20)
        f.write(b"guest data")
        f.seek(40 << 20)
        f.write(os.urandom(3 << 20))
        f.seek(50 << 20)
        f.write(bytes(2 << 20))  # written zeros: need not take space in the copy
    dst = tmp_path / "copy"
    qemu_mod.copy_sparse(src, dst)
    assert dst.stat().st_size == src.stat().st_size
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_blocks * 512 <= 5 << 20

    real_replace = os.replace
    calls = []

    def cross_device(a: object, b: object) -> None:
        calls.append(a)
        if len(calls) == 1:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(a, b)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", cross_device)
    moved = tmp_path / "moved"
    content = src.read_bytes()
    qemu_mod.move_file(src, moved)
    assert not src.exists() and moved.read_bytes() == content
