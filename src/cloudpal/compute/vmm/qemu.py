"""The QEMU ``microvm`` driver: cold boot, boot and idle snapshots, control channel, KVM probe.

Guest RAM lives in a file (``memory-backend-file,share=on``) and migration runs with
``x-ignore-shared``, so a snapshot is that RAM file plus ~60 kB of device state: saving takes
milliseconds and an idle snapshot just moves the RAM file aside. A restored VM maps the RAM file
shared again, in its own run dir, so it can be snapshotted the same way later.

QEMU is always started paused (``-S``): the control socket is connected before the guest runs, so
no line is written while nobody listens. Whatever goes wrong, QEMU is killed and reaped before the
error leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudpal.compute import guest
from cloudpal.compute.vmm.base import VmError, VmSpec
from cloudpal.compute.vmm.qmp import Qmp, close_reader, connect_unix
from cloudpal.errors import HostError

QEMU_BINARY = "qemu-system-x86_64"
MAX_CTL_LINE = 4096
MAX_CTL_QUEUE = 1024
MAX_META = 64 << 10
PROBE_TIMEOUT = 8.0
CHUNK = 1 << 20
FICLONE = 0x40049409
ACCELS = ("kvm", "tcg")


# ---------------------------------------------------------------- small helpers


def _opt(path: Path | str) -> str:
    """A path inside a QEMU ``key=value,...`` option: commas are escaped by doubling."""
    return str(path).replace(",", ",,")


def _tail(path: Path, offset: int = 0, lines: int = 3) -> str:
    """The last non-empty lines of a log written since ``offset``, safe to put in one message."""
    try:
        with open(path, "rb") as f:
            f.seek(max(offset, os.fstat(f.fileno()).st_size - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [" ".join(ln.split())[:200] for ln in text.splitlines() if ln.strip()]
    cleaned = ["".join(c if c.isprintable() else "?" for c in ln) for ln in kept[-lines:]]
    return " | ".join(cleaned)


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy a mostly-empty RAM file keeping holes: reflink if the filesystem can, else data only."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(src, "rb") as fin, open(fd, "wb") as fout:
        os.fchmod(fd, 0o600)
        size = os.fstat(fin.fileno()).st_size
        with contextlib.suppress(OSError):
            import fcntl

            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            return
        zero = bytes(CHUNK)
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break  # only a hole left
                raise
            try:
                end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            except OSError:
                end = size
            pos = start
            while pos < end:
                chunk = os.pread(fin.fileno(), min(CHUNK, end - pos), pos)
                if not chunk:
                    break
                if chunk != zero[: len(chunk)]:
                    os.pwrite(fout.fileno(), chunk, pos)
                pos += len(chunk)
            pos = max(pos, end)
        os.ftruncate(fout.fileno(), size)


def move_file(src: Path, dst: Path) -> None:
    """Rename, or copy sparsely and delete when ``src`` and ``dst`` are on different filesystems."""
    try:
        os.replace(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        tmp = dst.with_name(f".tmp-{dst.name}")
        copy_sparse(src, tmp)
        os.replace(tmp, dst)
        src.unlink()


def _read_meta(snapshot: Path) -> dict[str, Any]:
    try:
        with open(snapshot / "meta.json", "rb") as f:
            data = f.read(MAX_META + 1)
        meta = json.loads(data) if len(data) <= MAX_META else None
    except (OSError, ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict) or meta.get("kind") not in ("boot", "idle") or not isinstance(
        meta.get("fingerprint"), str
    ):
        raise VmError(f"The snapshot {snapshot} has no valid meta.json.")
    return meta


def _write_meta(dir_: Path, meta: dict[str, Any]) -> None:
    with open(os.open(dir_ / "meta.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(meta, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _rename_dir(tmp: Path, dest: Path) -> None:
    """Put a finished snapshot dir in place of ``dest`` (replacing an older one)."""
    old: Path | None = None
    if dest.exists():
        old = dest.with_name(f".old-{dest.name}-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(dest, old)
    os.rename(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class _Fail(Exception):
    """A boot/restore failure described by ``what``; turned into a VmError once QEMU is gone."""


class _Exited(Exception):
    """The guest reported ``EXIT <status>`` (the app ended) or the control channel closed."""

    def __init__(self, status: int | None) -> None:
        super().__init__(status)
        self.status = status


class _Control:
    """The guest's control channel: one reader task queues lines; ``expect`` picks them up."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()
        self.app_status: int | None = None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(cls, path: Path, deadline: float, alive: Callable[[], bool]) -> _Control:
        reader, writer = await connect_unix(path, deadline, alive=alive, limit=MAX_CTL_LINE)
        return cls(reader, writer)

    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    raw = await self._reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    continue  # an oversized line from the guest: drop it, the rest still counts
                except OSError:
                    raw = b""
                if not raw:
                    break
                line = raw.decode("ascii", "replace").strip()
                if line.startswith("EXIT "):
                    with contextlib.suppress(ValueError):
                        self.app_status = int(line[5:])
                if self.lines.qsize() < MAX_CTL_QUEUE:
                    self.lines.put_nowait(line)
        finally:
            self.lines.put_nowait(None)

    def send(self, line: str) -> None:
        self._writer.write(line.encode() + b"\n")

    async def expect(self, wanted: str, deadline: float) -> None:
        """Wait for the line ``wanted``; other lines are skipped. EXIT or EOF raise ``_Exited``."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            line = await asyncio.wait_for(self.lines.get(), remaining)
            if line is None:
                self.lines.put_nowait(None)  # stays closed for later callers
                raise _Exited(self.app_status)
            if line == wanted:
                return
            if line.startswith("EXIT "):
                raise _Exited(self.app_status)

    async def close(self) -> None:
        await close_reader(self._task, self._writer)


# ---------------------------------------------------------------- a running VM


class QemuVm:
    """A running QEMU. ``exited`` resolves with QEMU's exit status once it has been reaped."""

    def __init__(self, spec: VmSpec, proc: asyncio.subprocess.Process, fingerprint: str,
                 console_offset: int) -> None:  # fmt: skip
        self.spec = spec
        self.proc = proc
        self.pid = proc.pid
        self.accel = spec.accel
        self.fingerprint = fingerprint
        self.console_offset = console_offset
        self.qmp: Qmp | None = None
        self.ctl: _Control | None = None
        self.keep_ram = False  # a restore that failed before `cont` gives the RAM file back
        self.snapshot_error: str | None = None  # why the boot snapshot was skipped, if it was
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    @property
    def app_status(self) -> int | None:
        """The app's exit status the guest reported (``EXIT n``), if it has exited."""
        return self.ctl.app_status if self.ctl is not None else None

    def alive(self) -> bool:
        return self.proc.returncode is None

    async def _reap(self) -> None:
        rc = await self.proc.wait()
        run = self.spec.run_dir
        for name in ("qmp.sock", "ctl.sock", "qemu.pid", *(() if self.keep_ram else ("ram",))):
            with contextlib.suppress(OSError):
                (run / name).unlink()
        if not self.exited.done():
            self.exited.set_result(rc)

    def kill(self) -> None:
        """SIGKILL QEMU now (``exited`` resolves once it is reaped)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)

    async def _close(self) -> None:
        for conn in (self.qmp, self.ctl):
            if conn is not None:
                await conn.close()

    async def kill_and_wait(self, grace: float = 0) -> None:
        """End QEMU (after ``grace`` seconds for it to end by itself) and wait until it is reaped."""
        if grace > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.exited), grace)
        self.kill()
        with contextlib.suppress(BaseException):
            await asyncio.shield(self.exited)
        await self._close()

    def error(self, what: str) -> VmError:
        """``what`` plus the end of the console (guest) and qemu.log (host side) for context."""
        parts = [what.rstrip(".")]
        console = _tail(self.spec.console_log, self.console_offset)
        if console:
            parts.append(f"console: {console}")
        qlog = _tail(self.spec.run_dir / "qemu.log")
        if qlog:
            parts.append(f"qemu: {qlog}")
        return VmError(f"{self.spec.name}: " + "; ".join(parts) + f" (logs: {self.spec.console_log}).")

    async def _migrate_done(self, deadline: float) -> None:
        assert self.qmp is not None
        delay = 0.001
        while True:
            info = await self.qmp.execute("query-migrate", timeout=max(0.1, deadline - time.monotonic()))
            status = info.get("status") if isinstance(info, dict) else None
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                desc = info.get("error-desc", status) if isinstance(info, dict) else status
                raise VmError(f"the migration {status}: {str(desc)[:200]}")
            if time.monotonic() >= deadline:
                raise VmError("the migration did not finish in time")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def save_state(self, tmp: Path, deadline: float) -> None:
        """Pause the guest and write its device state (RAM excluded) to ``tmp/state``."""
        assert self.qmp is not None
        await self.qmp.execute("stop")
        await self.qmp.execute("migrate-set-capabilities", {
            "capabilities": [{"capability": "x-ignore-shared", "state": True}]})  # fmt: skip
        await self.qmp.execute("migrate", {"uri": "exec:cat > " + shlex.quote(str(tmp / "state"))})
        await self._migrate_done(deadline)

    def meta(self, kind: str) -> dict[str, Any]:
        return {"kind": kind, "fingerprint": self.fingerprint, "created": time.time(),
                "accel": self.accel, "memory_mib": self.spec.memory_mib}  # fmt: skip

    async def snapshot_and_stop(self, dest: Path) -> None:
        """SYNC the guest, pause it, save its device state and move its RAM into ``dest`` (an "idle"
        snapshot), and end QEMU. QEMU is not running afterwards, whether this succeeds or not."""
        dest = Path(dest)
        deadline = time.monotonic() + 60
        tmp: Path | None = None
        try:
            if not self.alive() or self.ctl is None or self.qmp is None:
                raise VmError("the VM is not running")
            self.ctl.send("SYNC")
            try:
                await self.ctl.expect("SYNCED", time.monotonic() + 30)
            except TimeoutError:
                raise VmError("the guest did not confirm SYNC within 30 s") from None
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".tmp-{dest.name}-"))
            await self.save_state(tmp, deadline)
            self.keep_ram = True  # QEMU ending must not delete the RAM file we are about to move
            with contextlib.suppress(VmError):
                await self.qmp.execute("quit", timeout=5)
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), 5)
            except TimeoutError:
                self.kill()
                await asyncio.shield(self.exited)
            move_file(self.spec.run_dir / "ram", tmp / "ram")
            _write_meta(tmp, self.meta("idle"))
            _rename_dir(tmp, dest)
            tmp = None
        except _Exited as e:
            raise self.error(f"the guest exited (status {e.status}) while being snapshotted") from None
        except (VmError, OSError) as e:
            raise self.error(f"the idle snapshot failed: {e}") from None
        finally:
            await self.kill_and_wait()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                (self.spec.run_dir / "ram").unlink()

    async def shutdown(self, timeout: float = 10) -> None:
        """Ask the guest to stop its app and power off; SIGKILL after ``timeout`` seconds."""
        try:
            if self.alive() and self.ctl is not None:
                self.ctl.send("STOP")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.exited), timeout)
        finally:
            await self.kill_and_wait()
            with contextlib.suppress(OSError):
                (self.spec.run_dir / "ram").unlink()


# ---------------------------------------------------------------- the driver


class QemuMicrovm:
    """The QEMU ``-M microvm`` driver (see the module docstring)."""

    name = "qemu-microvm"

    def __init__(self, qemu: str | None = None, *, probe_timeout: float = PROBE_TIMEOUT) -> None:
        self._qemu = qemu
        self.probe_timeout = probe_timeout
        self._digests: dict[tuple[str, int, int, int], bytes] = {}

    @property
    def qemu(self) -> str:
        path = self._qemu or shutil.which(QEMU_BINARY)
        if path is None:
            raise HostError(f"{QEMU_BINARY} is not installed: install qemu-system-x86.")
        return path

    def reap(self, run_dir: Path) -> bool:
        """Kill a QEMU that a node which died (SIGKILL, crash) left running in ``run_dir``: it would
        keep the app's volume open and its ports bound. True if there was one."""
        try:
            pid = int((run_dir / "qemu.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return False
        if os.fsencode(_opt(run_dir / "qemu.pid")) not in cmdline:
            return False  # the pid was reused by something else
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(200):  # until it is gone or a zombie (its new parent reaps it)
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            except (OSError, IndexError):
                break
            time.sleep(0.01)
        return True

    # ------------------------------------------------------------ command line

    def argv(self, spec: VmSpec, *, run: str | None = None, console: str | None = None) -> list[str]:
        """QEMU's command line; ``run``/``console`` replace the per-run paths (for the fingerprint)."""
        run = _opt(spec.run_dir) if run is None else run
        console = _opt(spec.console_log) if console is None else console
        if spec.accel not in ACCELS:
            raise VmError(f"Unknown accelerator {spec.accel!r}.")
        tcg = spec.accel == "tcg"
        mem = int(spec.memory_mib)
        cmdline = " ".join(p for p in (guest.kernel_cmdline(spec.accel), spec.cmdline_extra) if p)
        argv = [
            self.qemu,
            "-M", "microvm,memory-backend=mem",
            "-object", f"memory-backend-file,id=mem,size={mem}M,mem-path={run}/ram,share=on",
            "-accel", "tcg,tb-size=64" if tcg else "kvm",
            "-cpu", "max" if tcg else "host",
            "-m", f"{mem}M",
            "-smp", str(int(spec.vcpus)),
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-kernel", str(spec.kernel),
            "-initrd", str(spec.initrd),
            "-append", cmdline,
            "-chardev", f"file,id=con,path={console},append=on",
            "-serial", "chardev:con",
        ]  # fmt: skip
        for i, disk in enumerate(spec.disks):
            ro = "on" if disk.readonly else "off"
            argv += ["-drive", f"file={_opt(disk.path)},if=none,id=disk{i},format=raw,readonly={ro}",
                     "-device", f"virtio-blk-device,drive=disk{i}"]  # fmt: skip
        fwd = "".join(f",hostfwd=tcp:127.0.0.1:{int(h)}-:{int(g)}" for h, g in spec.forwards)
        argv += [
            "-netdev", f"user,id=n0,restrict=on{fwd}",
            "-device", "virtio-net-device,netdev=n0",
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=ctl,path={run}/ctl.sock,server=on,wait=off",
            "-device", "virtserialport,chardev=ctl,name=cloudpal.ctl",
            "-qmp", f"unix:{run}/qmp.sock,server=on,wait=off",
        ]  # fmt: skip
        return argv

    def _file_digest(self, path: Path) -> bytes:
        """sha256 of a file, remembered while its size and mtime stay the same (saves ~4 ms a wake)."""
        st = os.stat(path)
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        cached = self._digests.get(key)
        if cached is None:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
            cached = self._digests[key] = h.digest()
        return cached

    def fingerprint(self, spec: VmSpec) -> str:
        """What a snapshot must match to be restored: the command line minus per-run paths, plus the
        QEMU binary and the initrd's content (both are baked into the snapshot's RAM and devices)."""
        h = hashlib.sha256()
        for arg in self.argv(spec, run="RUN", console="CONSOLE"):
            h.update(arg.encode() + b"\0")
        try:
            st = os.stat(self.qemu)
            h.update(f"{st.st_size}:{st.st_mtime_ns}\0".encode())
            h.update(self._file_digest(spec.initrd))
        except OSError as e:
            raise VmError(f"{spec.name}: cannot read {e.filename}: {e.strerror}.") from None
        return h.hexdigest()

    # ------------------------------------------------------------ process

    async def _spawn(
        self, spec: VmSpec, argv: list[str], action: str, fingerprint: str | None = None
    ) -> QemuVm:
        """Start QEMU paused, inside its cgroups, output to run_dir/qemu.log."""
        spec.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in ("qmp.sock", "ctl.sock", "qemu.pid"):
            with contextlib.suppress(FileNotFoundError):
                (spec.run_dir / name).unlink()
        spec.console_log.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.console_log, "ab") as con:
            offset = con.tell()
            con.write(f"cloudpal: {action} ({self.name}, {spec.accel})\n".encode())
        fp = fingerprint or self.fingerprint(spec)
        full = [*argv, "-pidfile", _opt(spec.run_dir / "qemu.pid"), "-S"]
        # No preexec_fn: it forces a full fork() of the node, 10-20 ms on every wake. QEMU starts
        # paused (-S), so it joins its cgroups right after the spawn, before the guest runs. The
        # umask covers the RAM file and device state (the guest's secrets); run_dir is 0700 anyway.
        old_umask = os.umask(0o077)
        try:
            with open(spec.run_dir / "qemu.log", "wb") as log:
                proc = await asyncio.create_subprocess_exec(
                    *full, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
        except OSError as e:
            raise VmError(f"{spec.name}: cannot start QEMU: {e.strerror}.") from None
        finally:
            os.umask(old_umask)
        for p in spec.cgroup_procs:
            try:
                with open(p, "w") as f:
                    f.write(str(proc.pid))
            except OSError as e:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise VmError(f"{spec.name}: cannot put QEMU into its cgroup ({p}): {e.strerror}.") from None
        return QemuVm(spec, proc, fp, offset)

    async def _connect(self, vm: QemuVm, deadline: float) -> None:
        run = vm.spec.run_dir
        vm.qmp = await Qmp.connect(run / "qmp.sock", timeout=max(0.5, deadline - time.monotonic()),
                                   alive=vm.alive)  # fmt: skip
        vm.ctl = await _Control.connect(run / "ctl.sock", deadline, vm.alive)

    async def _expect(self, vm: QemuVm, line: str, deadline: float, stage: str) -> None:
        assert vm.ctl is not None
        try:
            await vm.ctl.expect(line, deadline)
        except TimeoutError:
            raise _Fail(f"the guest did not reach {stage} in time") from None
        except _Exited as e:
            if e.status is not None:
                raise _Fail(f"the app exited with status {e.status} before it was ready") from None
            raise _Fail(f"QEMU stopped before the guest reached {stage}") from None

    # ------------------------------------------------------------ boot / restore

    async def boot(self, spec: VmSpec, *, boot_snapshot: Path | None = None, timeout: float = 60) -> QemuVm:
        """Cold boot to READY. With ``boot_snapshot``, the guest's HELLO point is saved there first."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(FileNotFoundError):
            (spec.run_dir / "ram").unlink()
        vm = await self._spawn(spec, self.argv(spec), "cold boot")
        try:
            await self._connect(vm, deadline)
            assert vm.qmp is not None and vm.ctl is not None
            await vm.qmp.execute("cont")
            await self._expect(vm, "HELLO", deadline, "HELLO")
            if boot_snapshot is not None:
                await self._save_boot_snapshot(vm, Path(boot_snapshot), deadline)
            vm.ctl.send("GO")
            await self._expect(vm, "READY", deadline, "READY")
            return vm
        except BaseException as e:
            await vm.kill_and_wait(grace=2 if vm.app_status is not None else 0)
            if isinstance(e, _Fail):
                raise vm.error(str(e)) from None
            if isinstance(e, (VmError, OSError)):
                raise vm.error(f"the boot failed: {e}") from None
            raise

    async def _save_boot_snapshot(self, vm: QemuVm, dest: Path, deadline: float) -> None:
        """Snapshot at HELLO; a failure here only costs the snapshot, not the boot."""
        assert vm.qmp is not None
        tmp: Path | None = None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".tmp-{dest.name}-"))
            await vm.save_state(tmp, deadline)
            copy_sparse(vm.spec.run_dir / "ram", tmp / "ram")
            _write_meta(tmp, vm.meta("boot"))
            _rename_dir(tmp, dest)
            tmp = None
        except (VmError, OSError) as e:
            if vm.qmp.broken is not None or not vm.alive():
                raise
            vm.snapshot_error = str(e)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        await vm.qmp.execute("cont")

    async def restore(self, spec: VmSpec, snapshot: Path, *, timeout: float = 30) -> QemuVm:
        """Resume a snapshot: "boot" (RAM copied, then GO -> READY) or "idle" (RAM moved in and the
        snapshot consumed, then PING -> PONG). An idle snapshot whose restore fails before the guest
        ran again is left intact; once it ran, the snapshot is gone (the volume moved on)."""
        snapshot = Path(snapshot)
        deadline = time.monotonic() + timeout
        meta = _read_meta(snapshot)
        kind = meta["kind"]
        fp = self.fingerprint(spec)
        if meta["fingerprint"] != fp:
            raise VmError(f"{spec.name}: the {kind} snapshot was taken with a different VM configuration.")
        state, ram = snapshot / "state", snapshot / "ram"
        try:
            ram_size = ram.stat().st_size
            state.stat()
        except OSError:
            raise VmError(f"{spec.name}: the {kind} snapshot is incomplete.") from None
        if ram_size != spec.memory_mib << 20:
            raise VmError(f"{spec.name}: the {kind} snapshot's RAM file has the wrong size.")
        spec.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        run_ram = spec.run_dir / "ram"
        try:
            if kind == "idle":
                move_file(ram, run_ram)
            else:
                copy_sparse(ram, run_ram)
        except OSError as e:
            raise VmError(f"{spec.name}: cannot bring the snapshot's RAM in: {e.strerror}.") from None
        vm: QemuVm | None = None
        started = False
        try:
            argv = [*self.argv(spec), "-incoming", "defer"]
            vm = await self._spawn(spec, argv, f"{kind} snapshot restore", fp)
            vm.keep_ram = kind == "idle"
            await self._connect(vm, deadline)
            assert vm.qmp is not None and vm.ctl is not None
            await vm.qmp.execute("migrate-set-capabilities", {
                "capabilities": [{"capability": "x-ignore-shared", "state": True}]})  # fmt: skip
            await vm.qmp.execute("migrate-incoming", {"uri": "exec:cat " + shlex.quote(str(state))})
            await vm._migrate_done(deadline)
            started = True
            vm.keep_ram = False
            await vm.qmp.execute("cont")
            if kind == "boot":
                vm.ctl.send(f"TIME {int(time.time())}")
                vm.ctl.send("GO")
                await self._expect(vm, "READY", deadline, "READY")
            else:
                vm.ctl.send("PING")
                vm.ctl.send(f"TIME {int(time.time())}")  # after PING: the answer need not wait for it
                await self._expect(vm, "PONG", deadline, "PONG")
                shutil.rmtree(snapshot, ignore_errors=True)
            return vm
        except BaseException as e:
            if vm is not None:
                await vm.kill_and_wait(grace=2 if vm.app_status is not None else 0)
            if kind == "idle":
                if started:
                    shutil.rmtree(snapshot, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        move_file(run_ram, ram)
            else:
                with contextlib.suppress(OSError):
                    run_ram.unlink()
            if isinstance(e, (_Fail, VmError, OSError)):
                what = str(e) if isinstance(e, _Fail) else f"the {kind} snapshot restore failed: {e}"
                if vm is None:
                    raise VmError(f"{spec.name}: {what}") from None
                raise vm.error(what) from None
            raise

    # ------------------------------------------------------------ accelerator

    def accelerator(self, cache_dir: Path) -> str:
        """"kvm" if KVM really runs our guest here, else "tcg". ``CLOUDPAL_ACCEL`` forces one.

        The probe boots the guest kernel under KVM until its init says HELLO (a KVM that opens but
        cannot run an unmodified kernel, like PVM, fails here) and is cached per host and kernel."""
        forced = os.environ.get("CLOUDPAL_ACCEL", "").strip()
        if forced:
            if forced not in ACCELS:
                raise HostError(f"CLOUDPAL_ACCEL must be kvm or tcg, not {forced[:20]!r}.")
            return forced
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        version, _ = guest.find_guest_kernel()
        st = os.stat(self.qemu)
        key = f"{os.uname().release}|{version}|{self.qemu}|{st.st_size}:{st.st_mtime_ns}"
        cache = cache_dir / "accel.json"
        with contextlib.suppress(OSError, ValueError, AttributeError):
            cached = json.loads(cache.read_text())
            if cached.get("key") == key and cached.get("accel") in ACCELS:
                return str(cached["accel"])
        accel, why = self._probe_kvm(cache_dir)
        tmp = cache.with_name(f".tmp-accel-{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "accel": accel, "why": why, "probed": time.time()}))
        os.replace(tmp, cache)
        return accel

    def _probe_kvm(self, cache_dir: Path) -> tuple[str, str]:
        try:
            fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
            os.close(fd)
        except OSError as e:
            return "tcg", f"/dev/kvm: {e.strerror}"
        kernel = guest.kernel_image(cache_dir)
        initrd = guest.base_initramfs(cache_dir)
        run = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".probe-"))
        try:
            spec = VmSpec(name="kvm-probe", kernel=kernel, initrd=initrd, cmdline_extra="", memory_mib=128,
                          vcpus=1, disks=(), forwards=(), run_dir=run, console_log=run / "console.log",
                          cgroup_procs=(), accel="kvm")  # fmt: skip
            argv = self.argv(spec)
            with open(run / "qemu.log", "wb") as log:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # fmt: skip
            try:
                ok = _wait_hello(run / "ctl.sock", proc, time.monotonic() + self.probe_timeout)
            finally:
                proc.kill()
                proc.wait()
            if ok:
                return "kvm", "the guest booted under KVM"
            return "tcg", "the guest did not boot under KVM: " + (_tail(run / "qemu.log") or "timeout")
        finally:
            shutil.rmtree(run, ignore_errors=True)


def _wait_hello(path: Path, proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Blocking: connect to the probe VM's control socket and wait for the guest's HELLO."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        while True:
            if proc.poll() is not None or time.monotonic() >= deadline:
                return False
            try:
                sock.connect(str(path))
                break
            except OSError:
                time.sleep(0.01)
        buf = b""
        while b"HELLO\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(buf) > MAX_CTL_LINE:
                return False
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(256)
            except OSError:  # timeout, or QEMU died under us
                return False
            if not chunk:
                return False
            buf += chunk
        return True
    finally:
        sock.close()
