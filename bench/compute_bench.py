#!/usr/bin/env python3
"""Compute benchmarks: CloudPal's app wakes against the same QEMU launched by hand, in one run.

Every wake figure is measured next to an *anchor* taken in the same run, on the same machine, with
the very QEMU command line CloudPal used (read from ``/proc/PID/cmdline`` of its VM), the same
kernel, initrd and disks, and the ratio CloudPal/anchor is printed. Samples alternate between the
two sides (which one goes first alternates too), so drift in the machine's speed hits both alike.

1. Time from the TCP connect to the first response byte of ``GET / HTTP/1.0``, for
   * a cold wake: the app stopped and no boot snapshot, so CloudPal boots QEMU (and saves the boot
     snapshot at the guest's HELLO, as it does on every first start); anchor: the same QEMU started
     by hand (no cgroup, no proxy), ``cont`` over a raw QMP exchange, ``GO`` on the control socket
     when the guest says ``HELLO``, then connect-and-GET polled on the hostfwd port;
   * a boot-snapshot wake (``stop_app``, the boot snapshot present); anchor: a copy of that snapshot
     restored by hand (RAM copied extent for extent, timed, as CloudPal copies it too);
   * an idle-snapshot wake (after the service's idle path, ``_sleep``); anchor: a copy of an idle
     snapshot CloudPal made, restored by hand (``-incoming defer``, ``x-ignore-shared``,
     ``migrate-incoming exec:cat``, ``cont``, ``PING`` and ``TIME`` as the driver sends).
2. Host memory per running app with 1, then 3 apps up: QEMU RSS, the app cgroup's memory usage and
   the drop of the host's MemAvailable, per app; and the RSS of CloudPal's VM against the VM by hand.
3. Installing a 50 MiB image (fresh random bytes: no blob is already stored), gzip and uncompressed:
   ``import_image`` + ``AppService.install`` (what ``cloudpal app install`` does), against ``tar -x``
   of the same layer blobs plus ``mkfs.ext4`` of the root disk (``-d``) and of the data volume, with
   CloudPal's sizes and options (and, for information, that plus ``sha256sum``, ``cp`` and ``sync``
   of the blobs).

CloudPal runs in-process: an ``AppService`` with its own temporary home, no network pillar
(``names=None``) and a cgroup parent of its own. Needs root, QEMU and e2fsprogs. Run::

    sudo .venv/bin/python bench/compute_bench.py --write docs/benchmarks.md

Every QEMU, cgroup and temporary file it made is removed at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import errno
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import report  # bench/report.py: shared by the benchmark scripts
from report import Stats, fmt_ms, ratio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import oci_build  # noqa: E402
from cloudpal.compute import AppService, guest, import_image, migrate  # noqa: E402
from cloudpal.state import Database  # noqa: E402

MARK_START = "<!-- compute-bench:start -->"
MARK_END = "<!-- compute-bench:end -->"
APP = "web"
GUEST_PORT = oci_build.APP_PORT
REQUEST = b"GET / HTTP/1.0\r\n\r\n"
EXPECT = oci_build.HTTPD_INDEX
WAKE_TIMEOUT = 90.0  # seconds one wake may take (a cold boot under TCG takes ~4 s)
KINDS = ("cold", "boot", "idle")
KIND_NAME = {"cold": "cold wake (boot, no snapshot)", "boot": "boot-snapshot wake",
             "idle": "idle-snapshot wake"}
SIDES = ("cloudpal", "hand")
MIB = 1 << 20


def log(msg: str) -> None:
    print(f"compute_bench: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ statistics




# ------------------------------------------------------------------ host readings


def meminfo(key: str) -> int:
    """A /proc/meminfo field in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0]) * 1024
    raise KeyError(key)


def mem_available(samples: int = 5) -> int:
    """Median of a few MemAvailable readings 0.2 s apart (other jobs on the machine move it)."""
    vals = []
    for i in range(samples):
        if i:
            time.sleep(0.2)
        vals.append(meminfo("MemAvailable"))
    return int(statistics.median(vals))


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem of a process, in bytes (empty if it is gone)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[name] = int(rest.split()[0]) * 1024
    return out


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cmdline(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [a.decode() for a in raw.split(b"\0")[:-1]]


# ------------------------------------------------------------------ the client


def first_byte(port: int, deadline: float, poll: float | None) -> tuple[float, int, bytes]:
    """Connect to 127.0.0.1:port, send the GET and read the answer. Returns (perf_counter at the first
    byte, attempts, the whole answer). With ``poll``, a refused, reset or empty connection is retried
    every ``poll`` seconds until ``deadline`` (time.monotonic); without, the first failure raises."""
    attempts = 0
    while True:
        attempts += 1
        why = "closed without answering"
        try:
            left = max(0.05, deadline - time.monotonic())
            with socket.create_connection(("127.0.0.1", port), timeout=left) as s:
                s.sendall(REQUEST)
                first = s.recv(1)
                if first:
                    t = time.perf_counter()
                    chunks = [first]
                    while data := s.recv(65536):
                        chunks.append(data)
                    return t, attempts, b"".join(chunks)
        except OSError as e:
            why = str(e)
        if poll is None or time.monotonic() >= deadline:
            raise RuntimeError(f"no answer on 127.0.0.1:{port} after {attempts} attempt(s): {why}")
        time.sleep(poll)


def check_answer(body: bytes, who: str) -> None:
    if not body.startswith(b"HTTP/1.") or EXPECT not in body:
        raise RuntimeError(f"{who}: unexpected answer {body[:200]!r}")


# ------------------------------------------------------------------ QEMU by hand


LIVE: dict[int, asyncio.subprocess.Process] = {}  # QEMUs this script started itself


async def open_unix(path: Path, deadline: float, proc: asyncio.subprocess.Process
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    while True:
        try:
            return await asyncio.open_unix_connection(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            if proc.returncode is not None:
                raise RuntimeError(f"QEMU exited before {path.name} accepted") from None
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{path} did not accept a connection in time") from None
            await asyncio.sleep(0.002)


class HandVm:
    """QEMU started by hand with a given argv: raw QMP and control-socket lines, nothing of CloudPal."""

    def __init__(self, argv: list[str], run: Path) -> None:
        self.argv = argv
        self.run = run
        self.proc: asyncio.subprocess.Process | None = None
        self.qr: asyncio.StreamReader | None = None
        self.qw: asyncio.StreamWriter | None = None
        self.cr: asyncio.StreamReader | None = None
        self.cw: asyncio.StreamWriter | None = None
        self.seen: dict[str, float] = {}  # control line -> perf_counter when it arrived
        self.spawned = self.connected = 0.0
        self._watch: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, deadline: float) -> None:
        with open(self.run / "qemu.log", "wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        LIVE[self.proc.pid] = self.proc
        self.spawned = time.perf_counter()
        self.qr, self.qw = await open_unix(self.run / "qmp.sock", deadline, self.proc)
        await self.qr.readline()  # the greeting
        await self.qmp("qmp_capabilities")
        self.cr, self.cw = await open_unix(self.run / "ctl.sock", deadline, self.proc)
        self.connected = time.perf_counter()

    async def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        assert self.qr is not None and self.qw is not None
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.qw.write(json.dumps(msg).encode() + b"\n")
        while True:
            line = await self.qr.readline()
            if not line:
                raise RuntimeError(f"QMP closed during {command}: {self.log_tail()}")
            answer = json.loads(line)
            if "return" in answer:
                return answer["return"]
            if "error" in answer:
                raise RuntimeError(f"QMP {command}: {answer['error']}")

    def send(self, line: str) -> None:
        assert self.cw is not None
        self.cw.write(line.encode() + b"\n")

    async def expect(self, wanted: str) -> None:
        assert self.cr is not None
        while True:
            line = await self.cr.readline()
            if not line:
                raise RuntimeError(f"the control socket closed before {wanted}: {self.log_tail()}")
            if line.strip() == wanted.encode():
                self.seen[wanted] = time.perf_counter()
                return

    def watch(self) -> None:
        """Record the time of every later control line (READY, PONG) without waiting for it."""
        async def loop() -> None:
            assert self.cr is not None
            while line := await self.cr.readline():
                self.seen.setdefault(line.decode(errors="replace").strip(), time.perf_counter())
        self._watch = asyncio.ensure_future(loop())

    async def migrate_in(self, state: Path, deadline: float) -> None:
        await self.qmp("migrate-set-capabilities",
                       {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
        await self.qmp("migrate-incoming", {"uri": "exec:cat " + shlex.quote(str(state))})
        while True:
            status = (await self.qmp("query-migrate")).get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled") or time.monotonic() > deadline:
                raise RuntimeError(f"incoming migration {status}: {self.log_tail()}")
            await asyncio.sleep(0.001)

    async def wait_line(self, line: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while line not in self.seen and time.monotonic() < end:
            await asyncio.sleep(0.01)

    async def stop(self, clean: bool) -> None:
        """``clean``: STOP (the guest unmounts its volume and powers off), else SIGKILL at once."""
        proc = self.proc
        if proc is None:
            return
        try:
            if clean and proc.returncode is None and self.cw is not None:
                with contextlib.suppress(OSError):
                    self.send("STOP")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 15)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
        finally:
            LIVE.pop(proc.pid, None)
            if self._watch is not None:
                self._watch.cancel()
            for w in (self.qw, self.cw):
                if w is not None:
                    w.close()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return " | ".join((self.run / "qemu.log").read_text(errors="replace").splitlines()[-3:])
        return ""


# ------------------------------------------------------------------ results


@dataclass
class Sample:
    total: float  # connect -> first byte, seconds
    up: float | None  # start -> the VM reported READY (boot) or PONG (idle restore)
    rss: int  # QEMU VmRSS right after the answer, bytes
    cpu: float  # QEMU CPU seconds until then
    throttled: float = 0.0  # seconds the app's cgroup was throttled during the wake (CloudPal)
    attempts: int = 1
    snap_save: float = 0.0  # seconds spent saving the boot snapshot at HELLO (CloudPal, cold)
    spawned: float | None = None  # start -> the QEMU process exists (fork + exec returned)
    connected: float | None = None  # start -> QMP and the control socket connected


@dataclass
class Options:
    cold: int
    boot: int
    idle: int
    install_reps: int
    install_mb: int
    apps: int
    poll: float


@dataclass
class Results:
    facts: dict[str, str] = field(default_factory=dict)
    wakes: dict[str, dict[str, list[Sample]]] = field(
        default_factory=lambda: {k: {s: [] for s in SIDES} for k in KINDS})
    boot_snap_save: list[float] = field(default_factory=list)  # CloudPal cold: snapshot at HELLO
    memory: list[dict[str, Any]] = field(default_factory=list)
    install: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    restore_extra: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ the bench


class Bench:
    def __init__(self, opts: Options, work: Path) -> None:
        self.opts = opts
        self.work = work
        self.home = work / "home"
        self.cgroup_parent = f"cloudpal-bench-{os.getpid()}"
        self.res = Results()
        self.svc: AppService | None = None
        self.db: Database | None = None
        self.port = 0  # the published port the proxy listens on (CloudPal's side)
        self.fwd = 0  # the 127.0.0.1 port QEMU forwards to the guest's 8080 (both sides)
        self.events: list[tuple[float, str, str, str]] = []
        self.marks: list[tuple[float, str]] = []  # (perf_counter, "spawned" | "connected") in the driver
        self.cold_argv: list[str] = []
        self.restore_argv: list[str] = []
        self.app_run = Path()
        self.app_console = Path()
        self.hand_run = work / "hand-run"
        self.hand_console = work / "hand-console.log"
        self._pairs = 0

    # ---- CloudPal -------------------------------------------------------------------

    @property
    def service(self) -> AppService:
        assert self.svc is not None
        return self.svc

    async def setup(self) -> None:
        self.home.mkdir()
        self.db = Database(self.home)
        migrate(self.db)
        svc = AppService(self.db, self.home, names=None, cgroup_parent=self.cgroup_parent)
        self.svc = svc
        svc.on_event = lambda name, kind, msg: self.events.append((time.perf_counter(), name, kind, msg))
        drv: Any = svc.driver
        save = drv._save_boot_snapshot

        async def timed_save(vm: Any, dest: Path, deadline: float) -> None:  # measures, changes nothing
            t0 = time.perf_counter()
            try:
                await save(vm, dest, deadline)
            finally:
                self.res.boot_snap_save.append(time.perf_counter() - t0)

        drv._save_boot_snapshot = timed_save
        spawn, connect = drv._spawn, drv._connect

        async def timed_spawn(*args: Any, **kwargs: Any) -> Any:
            vm = await spawn(*args, **kwargs)
            self.marks.append((time.perf_counter(), "spawned"))
            return vm

        async def timed_connect(*args: Any, **kwargs: Any) -> None:
            await connect(*args, **kwargs)
            self.marks.append((time.perf_counter(), "connected"))

        drv._spawn, drv._connect = timed_spawn, timed_connect
        await svc.start()
        src = oci_build.httpd_app(self.work / "httpd")
        self.image_body = await asyncio.to_thread(self.image_json, src)
        self.port = free_port()
        await svc.install(APP, self.image_body, {"publish": [f"127.0.0.1:{self.port}:{GUEST_PORT}"]})
        app = svc.get(APP)
        self.fwd = app.forwards[GUEST_PORT]
        self.app_run = svc.app_dir(APP) / "run"
        self.app_console = svc.app_dir(APP) / "console.log"

    def image_json(self, src: Path) -> dict[str, Any]:
        """import_image and the body `cloudpal app install` sends (cli/app.py)."""
        img = import_image(src, self.service.image_store)
        return {"id": img.id, "digest": img.digest, "argv": [*img.entrypoint, *img.cmd], "env": img.env,
                "workdir": img.workdir or "/", "user": img.user,
                "exposed_ports": [p for p, proto in img.exposed_ports if proto == "tcp"],
                "rootfs": str(img.rootfs), "size": img.size}

    def throttled(self, name: str) -> float:
        app = self.service.get(name)
        if app.cgroup is None:
            return 0.0
        with contextlib.suppress(Exception):
            return app.cgroup.usage().throttled_seconds
        return 0.0

    async def cp_prepare(self, kind: str) -> None:
        """Put the app in the state a `kind` wake starts from (untimed)."""
        svc, d = self.service, self.service.app_dir(APP)
        app = svc.get(APP)
        if kind in ("cold", "boot"):
            await svc.stop_app(APP)
            if kind == "cold":
                shutil.rmtree(d / "snap-boot", ignore_errors=True)
            elif not (d / "snap-boot" / "meta.json").exists():
                raise RuntimeError("no boot snapshot to wake from")
        else:
            if app.vm is None and app.state != "snapshotted":
                await asyncio.to_thread(first_byte, self.port, time.monotonic() + WAKE_TIMEOUT, None)
            if app.state != "snapshotted":
                await svc._sleep(app, "benchmark")
            if app.state != "snapshotted" or not (d / "snap-idle" / "meta.json").exists():
                raise RuntimeError(f"the idle snapshot failed (state {app.state})")

    async def cp_sample(self, kind: str, *, port: int | None = None, name: str = APP) -> Sample:
        """One timed wake through CloudPal's proxy."""
        svc = self.service
        port = port or self.port
        thr0 = self.throttled(name)
        mark, saves, marks = len(self.events), len(self.res.boot_snap_save), len(self.marks)
        t0 = time.perf_counter()
        t1, attempts, body = await asyncio.to_thread(first_byte, port, time.monotonic() + WAKE_TIMEOUT,
                                                     None)
        check_answer(body, f"CloudPal {kind} wake")
        app = svc.get(name)
        if app.vm is None:
            raise RuntimeError("the app is not running after answering")
        rss, cpu = proc_status(app.vm.pid).get("VmRSS", 0), proc_cpu(app.vm.pid)
        woke = [e for e in self.events[mark:] if e[1] == name and e[2] == "wake"]
        if not woke:
            raise RuntimeError(f"no wake event for a {kind} wake")
        want = {"cold": "cold boot", "boot": "boot snapshot", "idle": "idle snapshot"}[kind]
        if app.woke_by != want:
            raise RuntimeError(f"expected a wake by {want}, got {app.woke_by!r}")
        at = {what: t - t0 for t, what in self.marks[marks:]}  # the last of each (after a fallback)
        return Sample(total=t1 - t0, up=woke[0][0] - t0, rss=rss, cpu=cpu,
                      throttled=self.throttled(name) - thr0, attempts=attempts,
                      snap_save=sum(self.res.boot_snap_save[saves:]), spawned=at.get("spawned"),
                      connected=at.get("connected"))

    # ---- by hand ------------------------------------------------------------------

    def retarget(self, argv: list[str]) -> list[str]:
        """CloudPal's argv with its per-run paths (run dir: RAM file, sockets, pid file; console log)
        moved to ours; nothing else changes."""
        old_run, old_con = str(self.app_run), str(self.app_console)
        out = [a.replace(old_con, str(self.hand_console)).replace(old_run, str(self.hand_run)) for a in argv]
        if any(old_run in a or old_con in a for a in out):
            raise RuntimeError("CloudPal's run dir is still in the by-hand argv")
        return out

    def fresh_run(self) -> None:
        shutil.rmtree(self.hand_run, ignore_errors=True)
        self.hand_run.mkdir(mode=0o700)

    def assert_cp_down(self) -> None:
        """The by-hand VM opens the app's data volume read-write: CloudPal's VM must not be running."""
        app = self.service.get(APP)
        if app.vm is not None or app.waking is not None:
            raise RuntimeError("CloudPal's VM is running during a by-hand sample")

    async def hand_cold(self) -> Sample:
        self.assert_cp_down()
        self.fresh_run()
        deadline = time.monotonic() + WAKE_TIMEOUT
        vm = HandVm(self.retarget(self.cold_argv), self.hand_run)
        t0 = time.perf_counter()
        try:
            await vm.start(deadline)
            await vm.qmp("cont")
            await vm.expect("HELLO")
            vm.send("GO")
            vm.watch()
            t1, attempts, body = await asyncio.to_thread(first_byte, self.fwd, deadline, self.opts.poll)
            check_answer(body, "by-hand cold boot")
            rss, cpu = proc_status(vm.pid).get("VmRSS", 0), proc_cpu(vm.pid)
            await vm.wait_line("READY", 5)
            up = vm.seen.get("READY")
            return Sample(total=t1 - t0, up=None if up is None else up - t0, rss=rss, cpu=cpu,
                          attempts=attempts, spawned=vm.spawned - t0, connected=vm.connected - t0)
        finally:
            await vm.stop(clean=True)

    async def hand_restore(self, kind: str, snap: Path) -> Sample:
        """Restore a copy of a CloudPal snapshot by hand, as qemu.py does, minus CloudPal."""
        self.assert_cp_down()
        self.fresh_run()
        ram = self.hand_run / "ram"
        if kind == "idle":  # CloudPal moves an idle snapshot's RAM in (a rename): copied beforehand
            await asyncio.to_thread(copy_extents, snap / "ram", ram)
        deadline = time.monotonic() + WAKE_TIMEOUT
        vm = HandVm(self.retarget(self.restore_argv), self.hand_run)
        t0 = time.perf_counter()
        try:
            if kind == "boot":  # a boot snapshot is kept for the next time: its RAM is copied, timed
                await asyncio.to_thread(copy_extents, snap / "ram", ram)
            await vm.start(deadline)
            await vm.migrate_in(snap / "state", deadline)
            await vm.qmp("cont")
            if kind == "boot":
                vm.send(f"TIME {int(time.time())}")
                vm.send("GO")
            else:
                vm.send("PING")
                vm.send(f"TIME {int(time.time())}")
            vm.watch()
            t1, attempts, body = await asyncio.to_thread(first_byte, self.fwd, deadline, self.opts.poll)
            check_answer(body, f"by-hand {kind} restore")
            rss, cpu = proc_status(vm.pid).get("VmRSS", 0), proc_cpu(vm.pid)
            line = "READY" if kind == "boot" else "PONG"
            await vm.wait_line(line, 5)
            up = vm.seen.get(line)
            return Sample(total=t1 - t0, up=None if up is None else up - t0, rss=rss, cpu=cpu,
                          attempts=attempts, spawned=vm.spawned - t0, connected=vm.connected - t0)
        finally:
            # A booted guest has mounted the volume: STOP unmounts it cleanly. An idle-restored guest
            # is a copy of CloudPal's sleeping one: killing it leaves the volume as CloudPal's
            # snapshot expects it.
            await vm.stop(clean=kind == "boot")

    # ---- phases -------------------------------------------------------------------

    async def warm_up(self) -> None:
        """Untimed: the KVM probe, caches, page cache; and the argv CloudPal's VMs run with."""
        svc = self.service
        log("warm-up: CloudPal cold wake (probes the accelerator once)")
        await self.cp_prepare("cold")
        await self.cp_sample("cold")
        app = svc.get(APP)
        assert app.vm is not None
        self.cold_argv = cmdline(app.vm.pid)
        self.res.argv = self.cold_argv
        log("warm-up: CloudPal boot-snapshot wake")
        await self.cp_prepare("boot")
        await self.cp_sample("boot")
        assert app.vm is not None
        self.restore_argv = cmdline(app.vm.pid)
        if "-incoming" not in self.restore_argv:
            raise RuntimeError("CloudPal's restore argv has no -incoming")
        extra = [a for a in self.restore_argv if a not in self.cold_argv]
        self.res.restore_extra = extra
        if [a for a in self.restore_argv if a not in ("-incoming", "defer")] != self.cold_argv:
            self.res.notes.append("the restore argv differs from the cold one by more than "
                                  f"`-incoming defer`: {extra}")
        self.res.facts["accel"] = app.vm.accel
        self.res.facts["memory"] = str(app.settings.memory_mib)
        self.res.facts["cpu"] = str(app.settings.cpu_percent)
        await svc.stop_app(APP)
        log("warm-up: the same QEMU by hand")
        await self.hand_cold()

    def order(self, i: int) -> tuple[str, ...]:
        return SIDES if i % 2 == 0 else SIDES[::-1]

    def record(self, kind: str, side: str, s: Sample, i: int, n: int) -> None:
        self.res.wakes[kind][side].append(s)
        up = f", up at {fmt_ms(s.up)} ms" if s.up is not None else ""
        if s.spawned is not None and s.connected is not None:
            up += f", QEMU at {fmt_ms(s.spawned)}, sockets at {fmt_ms(s.connected)}"
        log(f"{kind} {i + 1}/{n} {side}: {fmt_ms(s.total)} ms{up}, RSS {s.rss / MIB:.0f} MiB"
            + (f", throttled {fmt_ms(s.throttled)} ms" if s.throttled else "")
            + (f", {s.attempts} connects" if s.attempts > 1 else ""))

    async def cold_phase(self) -> None:
        n = self.opts.cold
        for i in range(n):
            for side in self.order(i):
                if side == "cloudpal":
                    await self.cp_prepare("cold")
                    s = await self.cp_sample("cold")
                else:
                    await self.service.stop_app(APP)
                    s = await self.hand_cold()
                self.record("cold", side, s, i, n)
        await self.service.stop_app(APP)

    async def boot_phase(self) -> None:
        d = self.service.app_dir(APP)
        snap = self.work / "anchor-snap-boot"
        if not (d / "snap-boot" / "meta.json").exists():
            raise RuntimeError("the cold wakes left no boot snapshot")
        await asyncio.to_thread(copy_snapshot, d / "snap-boot", snap)
        n = self.opts.boot
        for i in range(n):
            for side in self.order(i):
                if side == "cloudpal":
                    await self.cp_prepare("boot")
                    s = await self.cp_sample("boot")
                else:
                    await self.service.stop_app(APP)
                    s = await self.hand_restore("boot", snap)
                self.record("boot", side, s, i, n)

    async def idle_phase(self) -> None:
        d = self.service.app_dir(APP)
        snap = self.work / "anchor-snap-idle"
        await self.cp_prepare("idle")
        await asyncio.to_thread(copy_snapshot, d / "snap-idle", snap)
        n = self.opts.idle
        for i in range(n):
            for side in self.order(i):
                await self.cp_prepare("idle")  # CloudPal asleep for both: one VM on the volume
                if side == "cloudpal":
                    s = await self.cp_sample("idle")
                else:
                    s = await self.hand_restore("idle", snap)
                self.record("idle", side, s, i, n)

    async def memory_phase(self) -> None:
        svc = self.service
        names = [APP] + [f"web{i}" for i in range(2, self.opts.apps + 1)]
        ports = {APP: self.port}
        for name in names[1:]:
            ports[name] = free_port()
            await svc.install(name, self.image_body,
                              {"publish": [f"127.0.0.1:{ports[name]}:{GUEST_PORT}"]})
        for name in names:  # every app starts the same way: a cold boot
            await svc.stop_app(name)
            shutil.rmtree(svc.app_dir(name) / "snap-boot", ignore_errors=True)
        await asyncio.sleep(2)
        base = await asyncio.to_thread(mem_available)
        base_free = meminfo("MemFree")
        steps = [names[:1], names[1:]] if len(names) > 1 else [names]
        running: list[str] = []
        for step in steps:
            for name in step:
                await self.cp_sample("cold", port=ports[name], name=name)
                running.append(name)
            await asyncio.sleep(3)  # let the guests settle after their first request
            avail = await asyncio.to_thread(mem_available)
            free = meminfo("MemFree")
            per: list[dict[str, Any]] = []
            for name in running:
                app = svc.get(name)
                assert app.vm is not None and app.cgroup is not None
                st = proc_status(app.vm.pid)
                per.append({"name": name, "rss": st.get("VmRSS", 0), "anon": st.get("RssAnon", 0),
                            "file": st.get("RssFile", 0), "shmem": st.get("RssShmem", 0),
                            "cgroup": app.cgroup.usage().memory_bytes})
            self.res.memory.append({"apps": len(running), "drop": base - avail,
                                    "free_drop": base_free - free, "per": per})
            log(f"memory with {len(running)} app(s): MemAvailable down {(base - avail) / MIB:.0f} MiB, "
                "RSS " + ", ".join(f"{p['rss'] / MIB:.0f}" for p in per) + " MiB")
        for name in names:
            await svc.stop_app(name)

    async def install_phase(self) -> None:
        svc = self.service
        mb = self.opts.install_mb
        for comp in ("gzip", ""):
            label = comp or "uncompressed"
            rows = self.res.install.setdefault(label, [])
            for rep in range(self.opts.install_reps):
                src = self.work / f"padded-{label}-{rep}"
                await asyncio.to_thread(oci_build.padded_app, src, mb, compression=comp, seed=None)
                blobs = layer_blobs(src)
                row: dict[str, float] = {"bytes": float(sum(p.stat().st_size for p, _ in blobs))}
                name = f"big-{'gz' if comp else 'raw'}-{rep}"
                for side in self.order(rep):
                    if side == "cloudpal":
                        t0 = time.perf_counter()
                        body = await asyncio.to_thread(self.image_json, src)
                        t1 = time.perf_counter()
                        await svc.install(name, body, {})
                        t2 = time.perf_counter()
                        row |= {"import": t1 - t0, "install": t2 - t1}
                        row["disk"] = float(svc._disk(svc.get(name).image).stat().st_size)
                    else:
                        row |= await self.install_anchor(blobs, rep)
                rows.append(row)
                log(f"install {label} {rep + 1}/{self.opts.install_reps}: import {row['import']:.2f} s + "
                    f"install {row['install']:.2f} s; by hand tar {row['tar']:.2f} s + mkfs "
                    f"{row['mkfs']:.2f} s + volume {row['mkvol']:.2f} s")
                if row["disk"] != row["anchor_disk"]:
                    self.res.notes.append(f"install {label}: CloudPal's root disk is {row['disk'] / MIB:.0f} "
                                          f"MiB, the anchor's {row['anchor_disk'] / MIB:.0f} MiB")
                await svc.remove(name)
                shutil.rmtree(src, ignore_errors=True)

    async def install_anchor(self, blobs: list[tuple[Path, str]], rep: int) -> dict[str, float]:
        """tar -x every layer blob in order, then mkfs.ext4 -d of the tree (CloudPal's options, size
        from the same formula) and mkfs.ext4 of a data volume the size of CloudPal's."""
        out = self.work / f"anchor-{rep}"
        out.mkdir()
        root = out / "rootfs"
        root.mkdir()
        t0 = time.perf_counter()
        for path, media in blobs:
            z = ["-z"] if media.endswith("+gzip") else []
            await run_cmd(["tar", "-x", *z, "-f", str(path), "-C", str(root)])
        t1 = time.perf_counter()
        size, inodes = guest.rootfs_disk_geometry(root)
        disk = out / "rootfs.ext4"
        with open(disk, "wb") as f:
            f.truncate(size)
        await run_cmd(["mkfs.ext4", "-q", "-F", "-b", "4096", "-N", str(inodes), "-m", "0", "-O",
                       "^has_journal", "-E", "root_owner=0:0", "-L", "rootfs", "-d", str(root), str(disk)])
        t2 = time.perf_counter()
        vol = out / "data.ext4"
        with open(vol, "wb") as f:
            f.truncate(self.service.get(APP).settings.volume_mib * MIB)
        await run_cmd(["mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", "-L", "data", "-E",
                       "lazy_itable_init=1,lazy_journal_init=1", str(vol)])
        t3 = time.perf_counter()
        # For information: what CloudPal does besides, roughly by hand: check the blobs' digests and
        # keep a durable copy of them (cp, then sync of the copies).
        store = out / "blobs"
        store.mkdir()
        paths = [str(p) for p, _ in blobs]
        await run_cmd(["sha256sum", *paths])
        await run_cmd(["cp", *paths, str(store)])
        await run_cmd(["sync", *(str(store / p.name) for p, _ in blobs)])
        t4 = time.perf_counter()
        anchor_disk = float(disk.stat().st_size)
        shutil.rmtree(out, ignore_errors=True)
        return {"tar": t1 - t0, "mkfs": t2 - t1, "mkvol": t3 - t2, "store": t4 - t3,
                "anchor_disk": anchor_disk}

    async def run(self) -> Results:
        await self.setup()
        await self.warm_up()
        log(f"cold wakes: {self.opts.cold} per side")
        await self.cold_phase()
        log(f"boot-snapshot wakes: {self.opts.boot} per side")
        await self.boot_phase()
        log(f"idle-snapshot wakes: {self.opts.idle} per side")
        await self.idle_phase()
        log(f"memory: 1 then {self.opts.apps} apps")
        await self.memory_phase()
        log(f"install: {self.opts.install_mb} MiB image, {self.opts.install_reps} per compression")
        await self.install_phase()
        app = self.service.get(APP)
        if app.forwards[GUEST_PORT] != self.fwd:
            self.res.notes.append("CloudPal moved the app's forward port during the run")
        return self.res

    async def close(self) -> None:
        """Stop every VM (CloudPal's and ours) and remove the service's cgroups."""
        for pid, proc in list(LIVE.items()):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)
            LIVE.pop(pid, None)
        svc = self.svc
        if svc is not None:
            for app in list(svc.apps.values()):
                vm = app.vm
                if vm is not None:
                    app.vm = None
                    vm.kill()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(vm.exited), 10)
            with contextlib.suppress(Exception):
                await svc.stop()
        if self.db is not None:
            with contextlib.suppress(Exception):
                self.db.close()


# ------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_cmd(argv: Sequence[str]) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {proc.returncode}: {err.decode()[-500:]}")


def copy_extents(src: Path, dst: Path) -> None:
    """Copy a sparse file extent for extent: holes stay holes, data (zeros included) stays data, so
    the copy has the layout of CloudPal's own RAM file (``cp`` would punch holes for zero blocks)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            while start < end:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), end - start, start, start)
                if n <= 0:
                    raise OSError(f"copy_file_range stopped at {start} of {src}")
                start += n
            pos = end
        fout.truncate(size)


def copy_snapshot(src: Path, dst: Path) -> None:
    dst.mkdir()
    for item in src.iterdir():
        if item.name == "ram":
            copy_extents(item, dst / "ram")
        else:
            shutil.copy2(item, dst / item.name)


def layer_blobs(layout: Path) -> list[tuple[Path, str]]:
    """The layer blobs of an OCI layout directory, bottom first, with their media types."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].removeprefix("sha256:")).read_text())
    return [(blobs / layer["digest"].removeprefix("sha256:"), layer["mediaType"])
            for layer in manifest["layers"]]


def cleanup_host(work: Path, cgroup_parent: str) -> list[str]:
    """Last resort after the orderly close: SIGKILL any process still running from our work dir
    (ours: CloudPal's QEMUs and the by-hand ones), remove our cgroup parent in every hierarchy."""
    left: list[str] = []
    marker = str(work).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
                left.append(f"process {entry.name}")
    time.sleep(0.2 if left else 0)
    root = Path("/sys/fs/cgroup")
    groups = [root / cgroup_parent] if (root / "cgroup.controllers").exists() else [
        h / cgroup_parent for h in root.iterdir() if h.is_dir()]
    for group in groups:
        if not group.is_dir():
            continue
        for child in sorted((p for p in group.iterdir() if p.is_dir()), reverse=True):
            for _ in range(50):
                try:
                    child.rmdir()
                    left.append(f"cgroup {child}")
                    break
                except OSError:
                    with contextlib.suppress(OSError):
                        for pid in (child / "cgroup.procs").read_text().split():
                            os.kill(int(pid), signal.SIGKILL)
                    time.sleep(0.05)
        with contextlib.suppress(OSError):
            group.rmdir()
    return left


# ------------------------------------------------------------------ reporting


def machine_facts() -> dict[str, str]:
    cpu = report.cpu_model()
    qemu = "?"
    with contextlib.suppress(OSError, IndexError):
        qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                              check=False).stdout.splitlines()[0].replace("QEMU emulator version ", "")
    fs = "?"
    with contextlib.suppress(OSError, IndexError):
        out = subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True, text=True,
                             check=False).stdout
        fs = out.splitlines()[1].split()[1]
    cgv = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"
    return {"nproc": str(os.cpu_count()), "cpu model": cpu, "kernel": platform.release(), "qemu": qemu,
            "python": platform.python_version(), "fs": fs, "cgroup": cgv,
            "memtotal": f"{meminfo('MemTotal') / (1 << 30):.1f}"}


def render(res: Results, opts: Options, command: str, when: str) -> str:
    f = res.facts
    rows: list[tuple[str, str, str, str]] = []

    def row(what: str, mine: str, anchor: str, r: str) -> None:
        rows.append((what, mine, anchor, r))

    def p50p95(values: list[float]) -> str:
        s = Stats(values)
        return f"{fmt_ms(s.median)} / {fmt_ms(s.p95)}"

    headline: list[tuple[str, float]] = []
    for kind in KINDS:
        cp, hd = res.wakes[kind]["cloudpal"], res.wakes[kind]["hand"]
        if not cp or not hd:
            continue
        ct, ht = [s.total for s in cp], [s.total for s in hd]
        r50 = Stats(ct).median / Stats(ht).median
        r95 = Stats(ct).p95 / Stats(ht).p95
        headline.append((KIND_NAME[kind], r50))
        row(f"{KIND_NAME[kind]}: connect → first byte, ms p50 / p95 ({len(ct)} + {len(ht)})",
            p50p95(ct), p50p95(ht), f"**{r50:.2f}** / {r95:.2f}")
        paired = [a / b for a, b in zip(ct, ht, strict=False)]
        row("  same, median of the per-pair ratios (min–max)", "–", "–",
            f"{statistics.median(paired):.2f} ({min(paired):.2f}–{max(paired):.2f})")
        for label, attr in (("QEMU process started (fork + exec returned)", "spawned"),
                            ("QMP (after `qmp_capabilities`) and control socket connected", "connected")):
            lc = [getattr(s, attr) for s in cp if getattr(s, attr) is not None]
            lh = [getattr(s, attr) for s in hd if getattr(s, attr) is not None]
            if lc and lh:
                row(f"  {label} at, ms p50", fmt_ms(Stats(lc).median), fmt_ms(Stats(lh).median), "–")
        upc = [s.up for s in cp if s.up is not None]
        uph = [s.up for s in hd if s.up is not None]
        up_line = "READY" if kind != "idle" else "PONG"
        if upc and uph:
            row(f"  of which until the guest's {up_line} (CloudPal: the wake is done), ms p50",
                fmt_ms(Stats(upc).median), fmt_ms(Stats(uph).median),
                ratio(Stats(upc).median, Stats(uph).median))
            rest_c = [s.total - s.up for s in cp if s.up is not None]
            rest_h = [s.total - s.up for s in hd if s.up is not None]
            row(f"  first byte minus {up_line} (CloudPal: proxy connect + request + answer; by hand "
                "the GET was already under way), ms p50", fmt_ms(Stats(rest_c).median),
                fmt_ms(Stats(rest_h).median), "–")
        if kind == "cold":
            row("  of which saving the boot snapshot at HELLO (CloudPal only), ms p50",
                fmt_ms(Stats([s.snap_save for s in cp]).median), "–", "–")
        thr = [s.throttled for s in cp]
        if any(thr):
            row(f"  QEMU throttled by the app's CPU quota ({f.get('cpu', '?')}% of a CPU) during "
                "the wake, ms p50 / max", f"{fmt_ms(Stats(thr).median)} / {fmt_ms(max(thr))}",
                "– (no cgroup)", "–")
        row("  QEMU CPU time until the answer, ms p50", fmt_ms(Stats([s.cpu for s in cp]).median),
            fmt_ms(Stats([s.cpu for s in hd]).median),
            ratio(Stats([s.cpu for s in cp]).median, Stats([s.cpu for s in hd]).median))
        rc, rh = Stats([s.rss / MIB for s in cp]).median, Stats([s.rss / MIB for s in hd]).median
        row("  QEMU RSS right after the answer, MiB p50", f"{rc:.0f}", f"{rh:.0f}", ratio(rc, rh))
    for m in res.memory:
        per = m["per"]
        n = m["apps"]
        rss = [p["rss"] / MIB for p in per]
        cg = [p["cgroup"] / MIB for p in per]
        row(f"{n} app{'s' if n > 1 else ''} running (woken cold, one GET each): QEMU RSS per app, MiB",
            " / ".join(f"{x:.0f}" for x in rss) + f" (sum {sum(rss):.0f})", "–", "–")
        row("  of which anonymous (QEMU, TCG code cache) + file (guest RAM file, binaries) + shmem, "
            "MiB per app", " / ".join(f"{p['anon'] / MIB:.0f}+{p['file'] / MIB:.0f}+{p['shmem'] / MIB:.0f}"
                                      for p in per), "–", "–")
        row("  app cgroup memory usage per app, MiB", " / ".join(f"{x:.0f}" for x in cg), "–", "–")
        row("  host MemAvailable drop, MiB per app", f"{m['drop'] / MIB / n:.0f} "
            f"(total {m['drop'] / MIB:.0f})", "–", "–")
        row("  host MemFree drop (counts the page cache too), MiB per app",
            f"{m['free_drop'] / MIB / n:.0f} (total {m['free_drop'] / MIB:.0f})", "–", "–")
    for label, inst in res.install.items():
        if not inst:
            continue
        tot_c = [r["import"] + r["install"] for r in inst]
        tot_h = [r["tar"] + r["mkfs"] + r["mkvol"] for r in inst]
        mb = statistics.median(r["bytes"] for r in inst) / 1e6
        c, h = Stats(tot_c).median, Stats(tot_h).median
        row(f"install a {opts.install_mb} MiB image, {label} ({mb:.1f} MB of layer blobs): s p50 "
            f"(MB/s), {len(inst)} runs", f"{c:.2f} ({mb / c:.0f})", f"{h:.2f} ({mb / h:.0f})",
            f"**{c / h:.2f}**")
        full = [r["tar"] + r["mkfs"] + r["mkvol"] + r["store"] for r in inst]
        hf = Stats(full).median
        row("  same, anchor plus `sha256sum`, `cp` and `sync` of the layer blobs, s p50 (MB/s)", "–",
            f"{hf:.2f} ({mb / hf:.0f})", f"{c / hf:.2f}")
        row("  CloudPal `import_image` / `AppService.install`; by hand `tar -x` / `mkfs.ext4 -d` "
            "root disk / `mkfs.ext4` volume, s p50",
            f"{Stats([r['import'] for r in inst]).median:.2f} / "
            f"{Stats([r['install'] for r in inst]).median:.2f}",
            f"{Stats([r['tar'] for r in inst]).median:.2f} / {Stats([r['mkfs'] for r in inst]).median:.2f}"
            f" / {Stats([r['mkvol'] for r in inst]).median:.2f}", "–")

    out = ["## Compute benchmark results", ""]
    out.append(f"Produced by `{command}` on {when}.")
    out.append("")
    out.append(f"Machine: nproc {f['nproc']} ({f['cpu model']}), {f['memtotal']} GiB RAM, kernel "
               f"{f['kernel']}, cgroup {f['cgroup']}, QEMU {f['qemu']} with accelerator "
               f"**{f.get('accel', '?')}**, temp files on {f['fs']}, Python {f['python']}; guest "
               f"{f.get('memory', '?')} MiB, 1 vCPU, CPU quota {f.get('cpu', '?')}% of a CPU "
               f"(CloudPal's defaults); 1-minute load average {f['load before']} at the start and "
               f"{f['load after']} at the end (the machine is shared: other load shows up here).")
    out.append("")
    out.append("| Measurement | CloudPal | Anchor (same QEMU by hand) | Ratio CloudPal/anchor |")
    out.append("|---|---:|---:|---:|")
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    out.append("")
    over = [f"{what} ({r:.2f})" for what, r in headline if r > 1.10]
    fine = [f"{what} ({r:.2f})" for what, r in headline if r <= 1.10]
    if over:
        out.append(f"- **Over the 10% overhead target (median ratio > 1.10):** {', '.join(over)}. "
                   f"Within it: {', '.join(fine) or 'none'}.")
    else:
        out.append(f"- Every wake is within the 10% overhead target (median ratio ≤ 1.10): "
                   f"{', '.join(fine)}.")
    out.append("- Wakes: timed from just before the TCP connect to the first byte of the answer to "
               "`GET / HTTP/1.0` (the `httpd_app` test image: busybox httpd). CloudPal: connect to the "
               "published port (`--publish 127.0.0.1:P:8080`) of an in-process `AppService`; its "
               "proxy wakes the app and relays. Anchor: starting with the launch of the same QEMU, "
               "connect-and-GET on QEMU's hostfwd port every "
               f"{opts.poll * 1000:.0f} ms (a refused or empty connection is retried) once the guest "
               "got `GO` (boot) or `cont` (idle restore). Samples alternate CloudPal/by hand, "
               "swapping which goes first; p95 is nearest-rank (the slowest sample below 20).")
    out.append("- The anchor runs the argv read from `/proc/PID/cmdline` of CloudPal's VM, with only the "
               "per-run paths (RAM file, sockets, pid file, console log) moved to its own directory: same "
               "kernel, initrd, root disk, data volume, hostfwd port, `-S` and pidfile; restores add "
               f"`{' '.join(res.restore_extra)}` as CloudPal does. It is not in a cgroup (CloudPal "
               "writes QEMU's pid into the app's cgroups right after the spawn, while QEMU is paused), and "
               "talks raw QMP: `qmp_capabilities`, `cont`; for restores "
               "`migrate-set-capabilities x-ignore-shared`, `migrate-incoming exec:cat STATE`, "
               "`query-migrate` polled until completed, `cont`. On the control socket it waits for "
               "`HELLO` and sends `GO` (cold), sends `TIME`, `GO` (boot snapshot) or `PING`, `TIME` "
               "(idle snapshot), as the driver does, but never waits for `READY`/`PONG` before "
               "connecting.")
    out.append("- Snapshot anchors restore copies of CloudPal's own snapshots (taken in this run): the "
               "boot snapshot's RAM is copied inside the timed span (CloudPal copies it too, to keep "
               "the snapshot); an idle snapshot's RAM is copied before the clock starts (CloudPal "
               "renames it into place). Copies go extent for extent (`copy_file_range` between "
               "`SEEK_DATA`/`SEEK_HOLE`), so they have the same holes and data as CloudPal's file; "
               "plain `cp` would punch holes for zero blocks, which changes the page cache the "
               "restored guest faults in. The by-hand VMs ran only "
               "while CloudPal's app was stopped or asleep, since both open the same data volume; a "
               "by-hand VM booted to the app is ended with `STOP` (clean unmount), an idle-restored "
               "one with SIGKILL (the volume stays as CloudPal's sleeping guest left it).")
    out.append("- Memory: apps woken by a cold boot and one GET each, read 3 s later. RSS is "
               "`VmRSS` of each QEMU (with its RssAnon/RssFile/RssShmem split). Guest RAM is a shared "
               "mapping of a regular file in the app's run directory (`memory-backend-file,share=on`), "
               "so it is page cache: it shows as file RSS, and the kernel counts it in MemAvailable as "
               "reclaimable, so the MemAvailable drop (median of 5 readings, before the first wake "
               "and after each step) undercounts what the guests hold; the MemFree drop counts it "
               "(and any other page cache filled meanwhile, e.g. by other jobs). The cgroup figure is "
               f"the app cgroup's memory usage (cgroup {f['cgroup']}: the page cache charged to it "
               "included). The RSS of the same VM by hand is in the wake rows above (read right "
               "after the first answer); after a restore, RSS depends on how many RAM-file pages "
               "are in the page cache (fault-around maps cached neighbours), not only on what the "
               "guest touched.")
    if res.install:
        out.append(f"- Install: `oci_build.padded_app(dest, {opts.install_mb}, seed=None)` (busybox httpd "
                   f"plus {opts.install_mb} MiB of fresh random bytes; built before the clock starts). "
                   "CloudPal: `import_image` (verify and store the blobs, unpack the rootfs) then "
                   "`AppService.install` (root disk `mkfs.ext4 -d`, 1 GiB data volume, initrd). "
                   "Anchor: `tar -x` (with `-z` for gzip) of the same layer blobs into an empty "
                   "directory, `mkfs.ext4 -d` of it with CloudPal's options and size formula, and "
                   "`mkfs.ext4` of a data volume of the same size: the disk work, without blob "
                   "storage, digest checks, whiteout handling or the initrd. The info row adds "
                   "`sha256sum` of the blobs and a durable copy of them (`cp`, `sync`), roughly what "
                   "`import_image` does besides (it also checks each layer's uncompressed diff_id and "
                   "fsyncs). Runs alternate which side goes first. MB = 10⁶ bytes of layer blobs.")
    out += [f"- **Note:** {note}" for note in res.notes]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ main


async def amain(bench: Bench) -> Results:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await bench.run()
    finally:
        log("stopping every VM")
        await bench.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--cold", type=int, default=7, help="cold wakes per side")
    ap.add_argument("--boot", type=int, default=15, help="boot-snapshot wakes per side")
    ap.add_argument("--snapshot", type=int, default=15, help="idle-snapshot wakes per side")
    ap.add_argument("--install-reps", type=int, default=3, help="installs per compression")
    ap.add_argument("--install-mb", type=int, default=50, help="MiB of padding in the install image")
    ap.add_argument("--apps", type=int, default=3, help="apps running at once for the memory figures")
    ap.add_argument("--poll", type=float, default=0.01,
                    help="seconds between the by-hand connect attempts")
    ap.add_argument("--quick", action="store_true", help="small numbers, for a smoke run")
    ap.add_argument("--write", type=Path, metavar="FILE",
                    help="replace the compute results section of FILE (e.g. docs/benchmarks.md)")
    ap.add_argument("--tmp", type=Path, default=None, help="directory for the work files")
    args = ap.parse_args(argv)
    if args.quick:
        opts = Options(cold=2, boot=3, idle=3, install_reps=1, install_mb=10, apps=2, poll=args.poll)
    else:
        opts = Options(cold=args.cold, boot=args.boot, idle=args.snapshot, install_reps=args.install_reps,
                       install_mb=args.install_mb, apps=args.apps, poll=args.poll)
    if min(opts.cold, opts.boot, opts.idle, opts.install_reps, opts.apps) < 1 or opts.install_mb < 0:
        ap.error("every count must be at least 1")
    if os.geteuid() != 0:
        ap.error("needs root (cgroups for the apps)")
    for tool in ("qemu-system-x86_64", "mkfs.ext4", "tar", "cp", "sha256sum", "sync"):
        if shutil.which(tool) is None:
            ap.error(f"needs {tool}")
    command = report.display_command()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = f"{os.getloadavg()[0]:.2f}"
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="compute-bench-", dir=args.tmp))
    bench = Bench(opts, work)
    try:
        res = asyncio.run(amain(bench))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted: nothing written")
        return 130
    finally:
        left = cleanup_host(work, bench.cgroup_parent)
        if left:
            log("removed leftovers: " + ", ".join(left))
        shutil.rmtree(work, ignore_errors=True)
    res.facts |= machine_facts()
    res.facts["load before"] = load_before
    res.facts["load after"] = f"{os.getloadavg()[0]:.2f}"
    body = render(res, opts, command, when)
    print()
    print(body)
    log(f"finished in {time.perf_counter() - t0:.0f} s")
    if args.write:
        report.write_section(args.write, body, MARK_START, MARK_END)
        log(f"wrote the compute results section of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
