"""Real microVMs: QEMU (TCG here) boots the Debian kernel with our initramfs and a busybox httpd app.

The app's rootfs is built in the test (static busybox, a page and a CGI that counts in the data
volume), so the whole path is exercised: ext4 disks, init protocol, port forwarding, the volume,
boot and idle snapshots. Boots are shared where a test can continue from the previous state; the
file takes about half a minute. It FAILS (never skips) when QEMU or the guest kernel is missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cloudpal.compute import guest
from cloudpal.compute.vmm import Disk, QemuMicrovm, QemuVm, VmError, VmSpec

COUNT_CGI = """#!/bin/sh
n=$(cat /data/counter 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" >/data/counter
printf 'Content-Type: text/plain\\r\\n\\r\\n%s %s %s %s\\n' "$n" "$(id -u)" "$FOO" "$APP_UID"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(port: int, path: str = "/cgi-bin/count") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as r:
        body: bytes = r.read()
        return body.decode()


async def _aget(port: int, path: str = "/cgi-bin/count") -> str:
    return await asyncio.to_thread(_get, port, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _rootfs(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "cat", "date", "echo", "id", "printf"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nwww:x:1000:1000::/www:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nwww:x:1000:\n")
    cgi = root / "www" / "cgi-bin" / "count"
    cgi.parent.mkdir(parents=True)
    cgi.write_text(COUNT_CGI)
    cgi.chmod(0o755)
    now = root / "www" / "cgi-bin" / "now"
    now.write_text("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$(date +%s)\"\n")
    now.chmod(0o755)
    (root / "www" / "index.html").write_text("hello from the guest\n")


@dataclass
class Lab:
    driver: QemuMicrovm
    cache: Path
    work: Path
    kernel: Path
    base: Path
    rootfs: Path
    disk: Path

    def spec(self, name: str, *, argv: list[str], user: str = "", volume_mib: int = 32) -> VmSpec:
        d = self.work / name
        d.mkdir()
        uid, gid = guest.resolve_user(self.rootfs, user)
        port = _free_port()
        cfg = guest.app_config_cpio(d / "app.cpio", name=name, argv=argv, env=ENV,
                                    workdir="/www", uid=uid, gid=gid, ports=[8080])  # fmt: skip
        guest.app_initrd(self.base, cfg, d / "initrd")
        guest.create_volume(d / "data.ext4", volume_mib << 20)
        return VmSpec(
            name=name, kernel=self.kernel, initrd=d / "initrd", cmdline_extra="", memory_mib=128, vcpus=1,
            disks=(Disk(self.disk, True), Disk(d / "data.ext4", False)), forwards=((port, 8080),),
            run_dir=d / "run", console_log=d / "console.log", cgroup_procs=(), accel="tcg",
        )  # fmt: skip


# APP_UID: images may set names init uses itself (.NET images do); the app must still run as `user`
ENV = {"FOO": "it's \"quoted\"", "APP_UID": "0"}
HTTPD = ["busybox", "httpd", "-f", "-p", "8080", "-h", "."]  # "." = the image's workdir, /www


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    missing = [t for t in ("qemu-system-x86_64", "busybox", "mkfs.ext4") if shutil.which(t) is None]
    assert not missing, (
        f"compute tests need {missing}: run `make deps` (qemu-system-x86, busybox-static, e2fsprogs)"
    )
    try:
        guest.find_guest_kernel()
    except Exception as e:
        pytest.fail(f"compute tests need a guest kernel: {e}")
    work = tmp_path_factory.mktemp("vm")
    cache = work / "cache"
    rootfs = work / "rootfs"
    _rootfs(rootfs)
    disk = guest.build_rootfs_disk(rootfs, work / "rootfs.ext4")
    kernel, base = guest.kernel_image(cache), guest.base_initramfs(cache)
    yield Lab(QemuMicrovm(), cache, work, kernel, base, rootfs, disk)


def test_lifecycle_boot_snapshots_and_volume(lab: Lab) -> None:
    """Cold boot (+ boot snapshot) -> shutdown -> boot snapshot restore -> idle snapshot -> restore ->
    shutdown -> cold boot: the volume's counter goes 1, 2, 3, 4 through all of it."""
    spec = lab.spec("web", argv=HTTPD, user="www")
    port = spec.forwards[0][0]
    boot_snap = lab.work / "web" / "snap-boot"
    idle_snap = lab.work / "web" / "snap-idle"
    timings: dict[str, float] = {}

    async def run() -> None:
        t = time.monotonic()
        vm = await lab.driver.boot(spec, boot_snapshot=boot_snap)
        timings["cold boot to READY (with boot snapshot)"] = time.monotonic() - t
        try:
            assert vm.accel == "tcg" and _alive(vm.pid) and vm.snapshot_error is None
            assert (boot_snap / "meta.json").is_file() and (boot_snap / "ram").is_file()
            assert await _aget(port, "/index.html") == "hello from the guest\n"
            # uid from the image's /etc/passwd, env quoted intact, volume chowned to the app's user
            assert await _aget(port) == "1 1000 it's \"quoted\" 0\n"
        finally:
            await vm.shutdown()
        assert await vm.exited == 0 and not _alive(vm.pid)
        assert not (spec.run_dir / "ram").exists()

        t = time.monotonic()
        vm = await lab.driver.restore(spec, boot_snap)
        timings["boot snapshot restore to READY"] = time.monotonic() - t
        assert (boot_snap / "meta.json").is_file(), "a boot snapshot is reusable"
        assert (await _aget(port)).startswith("2 ")

        t = time.monotonic()
        await vm.snapshot_and_stop(idle_snap)
        timings["idle snapshot save"] = time.monotonic() - t
        assert vm.exited.done() and not _alive(vm.pid)
        assert sorted(p.name for p in idle_snap.iterdir()) == ["meta.json", "ram", "state"]

        # a different configuration (here: memory) is refused, and the snapshot stays usable
        with pytest.raises(VmError, match="different VM configuration"):
            await lab.driver.restore(replace(spec, memory_mib=96), idle_snap)
        assert (idle_snap / "ram").is_file()

        await asyncio.sleep(2)  # the guest's clock stood still meanwhile; restore must set it
        t = time.monotonic()
        vm = await lab.driver.restore(spec, idle_snap)
        timings["idle restore to PONG"] = time.monotonic() - t
        body = await _aget(port)
        timings["idle restore to first HTTP byte"] = time.monotonic() - t
        assert body.startswith("3 ")
        assert not idle_snap.exists(), "an idle snapshot is consumed by its restore"
        assert abs(int(await _aget(port, "/cgi-bin/now")) - time.time()) < 1.5
        await vm.shutdown()

        vm = await lab.driver.boot(spec)
        try:
            assert (await _aget(port)).startswith("4 ")
        finally:
            vm.kill()
            assert await vm.exited != 0

    asyncio.run(run())
    for what, seconds in timings.items():
        print(f"{what}: {seconds * 1000:.0f} ms")


def test_missing_app_binary_is_a_clear_error(lab: Lab) -> None:
    spec = lab.spec("nobin", argv=["/usr/bin/not-there", "--flag"])

    async def run() -> None:
        with pytest.raises(VmError) as info:
            await lab.driver.boot(spec, timeout=60)
        msg = str(info.value)
        assert "exited with status 127 before it was ready" in msg
        assert "'/usr/bin/not-there' is not in the image" in msg
        assert str(spec.console_log) in msg
        assert not (spec.run_dir / "ram").exists()
        assert not list(spec.run_dir.glob("*.sock"))

    asyncio.run(run())
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    for pid in pids:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert str(spec.run_dir).encode() not in f.read(), "QEMU was left running"


def test_app_exiting_on_its_own_ends_the_vm(lab: Lab) -> None:
    """The app (a shell whose httpd daemonizes) exits 3 after READY: QEMU ends, the status is kept."""
    spec = lab.spec("quits", argv=["sh", "-c", "busybox httpd -p 8080 -h /www && sleep 1 && exit 3"])

    async def run() -> None:
        vm = await lab.driver.boot(spec)
        assert await asyncio.wait_for(vm.exited, 20) == 0
        assert vm.app_status == 3
        assert "app exited with status 3" in spec.console_log.read_text()

    asyncio.run(run())


def test_failed_restore_leaves_no_qemu_and_keeps_idle_snapshot(lab: Lab) -> None:
    """A corrupt device state fails the restore before the guest runs: VmError, no QEMU, and the
    idle snapshot (its RAM moved back) is still there for a retry or a cold boot."""
    spec = lab.spec("corrupt", argv=HTTPD)
    snap = lab.work / "corrupt" / "snap-idle"

    async def run() -> None:
        vm = await lab.driver.boot(spec)
        await vm.snapshot_and_stop(snap)
        state = (snap / "state").read_bytes()
        (snap / "state").write_bytes(state[: len(state) // 2])
        with pytest.raises(VmError, match="idle snapshot restore failed"):
            await lab.driver.restore(spec, snap)
        assert (snap / "ram").stat().st_size == 128 << 20
        assert not (spec.run_dir / "ram").exists()
        (snap / "state").write_bytes(state)
        vm2 = await lab.driver.restore(spec, snap)
        assert isinstance(vm2, QemuVm)
        assert (await _aget(spec.forwards[0][0])).startswith("1 ")
        await vm2.shutdown()

    asyncio.run(run())


def test_accelerator_probe_is_cached_and_overridable(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOUDPAL_ACCEL", raising=False)
    accel = lab.driver.accelerator(lab.cache)
    assert accel in ("kvm", "tcg")
    assert (lab.cache / "accel.json").is_file()
    assert lab.driver.accelerator(lab.cache) == accel
    monkeypatch.setenv("CLOUDPAL_ACCEL", "tcg")
    assert lab.driver.accelerator(lab.cache) == "tcg"
    monkeypatch.setenv("CLOUDPAL_ACCEL", "hvf")
    with pytest.raises(Exception, match="kvm or tcg"):
        lab.driver.accelerator(lab.cache)
