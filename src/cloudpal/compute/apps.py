"""The app lifecycle: install, wake (restore or boot), idle stop, runaway kill, usage.

One `AppService` lives in the node daemon. Each app's files sit in HOME/compute/apps/NAME:
`initrd` (CloudPal's init plus the app's config), `data.ext4` (its volume), `console.log`,
`run/` (the live VM's RAM file and sockets), `snap-boot/` (taken at the first successful start, at
the init's snapshot point, before the volume is mounted, so it stays valid while the volume
changes) and `snap-idle/` (taken at an idle stop, consumed by the next wake). Read-only root disks
are per image in HOME/compute/disks and shared between apps of the same image.

States: `stopped`, `snapshotted` and `runaway` are stored; `booting` and `running` exist only
while the node runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cloudpal.compute import cgroups, guest
from cloudpal.compute.proxy import Activity, Listen, WakeProxy
from cloudpal.compute.settings import AppSettings, ImageInfo
from cloudpal.compute.vmm import Disk, Driver, QemuMicrovm, Vm, VmError, VmSpec
from cloudpal.errors import Conflict, InvalidInput, NotFound, StateError
from cloudpal.state import Database

log = logging.getLogger("cloudpal.compute")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS apps (
        name TEXT PRIMARY KEY,
        image TEXT NOT NULL,
        settings TEXT NOT NULL,
        state TEXT NOT NULL,
        forwards TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS app_usage (
        name TEXT PRIMARY KEY,
        cpu_seconds REAL NOT NULL DEFAULT 0,
        peak_memory INTEGER NOT NULL DEFAULT 0,
        wakes INTEGER NOT NULL DEFAULT 0,
        cold_boots INTEGER NOT NULL DEFAULT 0,
        restores INTEGER NOT NULL DEFAULT 0,
        running_seconds REAL NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS app_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, app TEXT NOT NULL,
        kind TEXT NOT NULL, message TEXT NOT NULL)""",
]

TICK = 1.0  # seconds between metering samples
VCPUS = 1  # every app VM gets one vCPU: its CPU use is capped by its quota anyway
PINNED = 0.9  # share of the CPU quota that counts as "pinned"
QEMU_OVERHEAD_MIB = 192  # QEMU's own memory beside guest RAM (TCG code cache is capped at 64 MiB)
CGROUP_PARENT = "cloudpal"


class ServiceNames(Protocol):
    """What the network pillar offers apps: a name in the zone and overlay addresses."""

    def register_service(self, name: str) -> tuple[str, str]: ...
    def unregister_service(self, name: str) -> None: ...


@dataclass
class _App:
    name: str
    image: ImageInfo
    settings: AppSettings
    state: str
    forwards: dict[int, int]  # guest port -> 127.0.0.1 port QEMU forwards from
    created: float
    vm: Vm | None = None
    waking: asyncio.Future[None] | None = None
    cgroup: cgroups.Cgroup | None = None
    monitor: asyncio.Task[None] | None = None
    addresses: tuple[str, ...] = ()
    woke_by: str = ""
    started: float = 0.0
    # metering
    last_cpu: float | None = None
    last_tick: float = 0.0
    rate_base: tuple[float, float] | None = None
    pinned_since: float | None = None
    usage: dict[str, Any] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class AppService:
    def __init__(self, db: Database, home: Path, names: ServiceNames | None = None,
                 driver: Driver | None = None, cgroup_parent: str = CGROUP_PARENT) -> None:
        self.db = db
        self.home = home
        self.root = home / "compute"
        self.names = names
        self.driver: Driver = driver or QemuMicrovm()
        self.cgroup_parent = cgroup_parent
        self.proxy = WakeProxy(self._wake_port)
        self.apps: dict[str, _App] = {}
        self.accel: str | None = None
        self._lock = asyncio.Lock()  # serializes install/upgrade/rm against each other
        self._tasks: list[asyncio.Task[None]] = []
        self.on_event: Callable[[str, str, str], None] | None = None

    # ---- paths ------------------------------------------------------------------

    @property
    def image_store(self) -> Path:
        return self.root / "images"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def app_dir(self, name: str) -> Path:
        return self.root / "apps" / name

    def _disk(self, image: ImageInfo) -> Path:
        return self.root / "disks" / f"{image.id.removeprefix('sha256:')}.ext4"

    # ---- lifecycle of the service ----------------------------------------------------

    async def start(self) -> None:
        for sub in ("apps", "disks", "cache", "images"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        rows = self.db.conn.execute("SELECT * FROM apps ORDER BY name").fetchall()
        for row in rows:
            app = _App(
                name=row["name"], image=ImageInfo.from_json(json.loads(row["image"])),
                settings=AppSettings.from_json(json.loads(row["settings"])), state=row["state"],
                forwards={int(k): int(v) for k, v in json.loads(row["forwards"]).items()},
                created=row["created"],
            )
            self.apps[app.name] = app
        for app in self.apps.values():
            if self.driver.reap(self.app_dir(app.name) / "run"):
                self._event(app.name, "reaped", "killed the VM a previous node process left running")
            try:
                await self._serve(app)
            except Exception as exc:  # one app's port clash must not keep the node down
                self._event(app.name, "error", f"cannot listen: {exc}")

    async def stop(self) -> None:
        """Node shutdown: snapshot every running app so the next wake resumes it."""
        await self.proxy.close_all()
        running = [a for a in self.apps.values() if a.vm is not None or a.waking is not None]
        await asyncio.gather(*(self._sleep(a, "node stopping") for a in running),
                             return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        for app in self.apps.values():
            if app.cgroup is not None:
                with contextlib.suppress(Exception):
                    app.cgroup.remove()

    async def accelerator(self) -> str:
        if self.accel is None:
            self.accel = await asyncio.to_thread(self.driver.accelerator, self.cache)
            log.info("microVMs use %s (%s)", self.accel, self.driver.name)
        return self.accel

    # ---- state ------------------------------------------------------------------

    def _event(self, name: str, kind: str, message: str) -> None:
        log.info("app %s: %s", name, message)
        with self.db.transaction() as c:
            c.execute("INSERT INTO app_events(time, app, kind, message) VALUES (?,?,?,?)",
                      (time.time(), name, kind, message))
        with contextlib.suppress(OSError), open(self.app_dir(name) / "console.log", "a") as f:
            f.write(f"[cloudpal] {time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        if self.on_event:
            self.on_event(name, kind, message)

    def _save(self, app: _App) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO apps(name, image, settings, state, forwards, created, updated)"
                " VALUES (?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET image=excluded.image,"
                " settings=excluded.settings, state=excluded.state, forwards=excluded.forwards,"
                " updated=excluded.updated",
                (app.name, json.dumps(app.image.to_json()), json.dumps(app.settings.to_json()),
                 app.state, json.dumps({str(k): v for k, v in app.forwards.items()}), app.created,
                 time.time()),
            )
            c.execute("INSERT OR IGNORE INTO app_usage(name) VALUES (?)", (app.name,))

    def _set_state(self, app: _App, state: str) -> None:
        app.state = state
        if state in ("stopped", "snapshotted", "runaway"):
            self._store_state(app, state)

    def _store_state(self, app: _App, state: str) -> None:
        with self.db.transaction() as c:
            c.execute("UPDATE apps SET state=?, updated=? WHERE name=?", (state, time.time(), app.name))

    def _add_usage(self, name: str, **delta: float) -> None:
        sets = ", ".join(
            f"{k}=max({k}, ?)" if k == "peak_memory" else f"{k}={k}+?" for k in delta
        )
        with self.db.transaction() as c:
            c.execute(f"UPDATE app_usage SET {sets} WHERE name=?", (*delta.values(), name))

    def get(self, name: str) -> _App:
        app = self.apps.get(name)
        if app is None:
            raise NotFound(f"no app named {name!r}")
        return app

    # ---- install / upgrade / remove -------------------------------------------------

    async def install(self, name: str, image_json: Any, settings_json: dict[str, Any],
                      upgrade: bool = False) -> dict[str, Any]:
        from cloudpal.net import validate_name

        validate_name(name, "app name")
        image = ImageInfo.from_json(image_json)
        rootfs = Path(image.rootfs).resolve()
        store = (self.image_store / "rootfs").resolve()
        if rootfs.parent != store or not rootfs.is_dir():
            raise InvalidInput("the image's root filesystem is not in this node's image store; "
                               "import it with `cloudpal app install`")
        async with self._lock:
            old = self.apps.get(name)
            if old is not None and not upgrade:
                raise Conflict(f"an app named {name!r} is already installed (use --upgrade)")
            if old is None and upgrade:
                raise NotFound(f"no app named {name!r} to upgrade")
            settings = (old.settings if old else AppSettings()).updated(settings_json)
            uid, gid = guest.resolve_user(rootfs, image.user)
            ports = self._guest_ports(image, settings)
            addresses: tuple[str, ...] = ()
            if self.names is not None and old is None:
                addresses = self.names.register_service(name)  # refuses a device's name first
            d = self.app_dir(name)
            try:
                if old is not None:
                    await self._halt(old, "upgrade")
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
                disk = self._disk(image)
                if not disk.exists():
                    await asyncio.to_thread(guest.build_rootfs_disk, rootfs, disk)
                volume = d / "data.ext4"
                if not volume.exists():
                    await asyncio.to_thread(guest.create_volume, volume, settings.volume_mib << 20)
                await self._build_initrd(name, image, uid, gid, ports)
                forwards = dict(old.forwards) if old else {}
                for p in ports:
                    if p not in forwards:
                        forwards[p] = _free_port()
                forwards = {p: forwards[p] for p in ports}
                for snap in ("snap-boot", "snap-idle"):
                    shutil.rmtree(d / snap, ignore_errors=True)
                app = old or _App(name=name, image=image, settings=settings, state="stopped",
                                  forwards=forwards, created=time.time())
                app.image, app.settings, app.forwards, app.state = image, settings, forwards, "stopped"
                self._save(app)
            except BaseException:
                if old is None:
                    if self.names is not None:
                        self.names.unregister_service(name)
                    shutil.rmtree(d, ignore_errors=True)
                raise
            if old is None:
                self.apps[name] = app
                app.addresses = addresses
            try:
                await self._serve(app)
            except Exception as exc:
                self._event(name, "error", f"cannot listen: {exc}")
                raise
            self._event(name, "upgrade" if old else "install",
                        f"{'upgraded to' if old else 'installed'} image {image.id[:19]}")
            return self.describe(app)

    async def _build_initrd(self, name: str, image: ImageInfo, uid: int, gid: int,
                            ports: list[int]) -> None:
        d = self.app_dir(name)
        base = await asyncio.to_thread(guest.base_initramfs, self.cache)
        cfg = d / "app.cpio"
        await asyncio.to_thread(
            guest.app_config_cpio, cfg, name=name, argv=list(image.argv), env=dict(image.env),
            workdir=image.workdir, uid=uid, gid=gid, ports=ports)
        await asyncio.to_thread(guest.app_initrd, base, cfg, d / "initrd")

    @staticmethod
    def _guest_ports(image: ImageInfo, settings: AppSettings) -> list[int]:
        return sorted(set(image.exposed_ports) | {p.guest_port for p in settings.publish})

    async def remove(self, name: str) -> dict[str, Any]:
        async with self._lock:
            app = self.get(name)
            await self._halt(app, "removed")
            await self.proxy.close(name)
            self.proxy.forget(name)
            if self.names is not None:
                self.names.unregister_service(name)
            with self.db.transaction() as c:
                c.execute("DELETE FROM apps WHERE name=?", (name,))
                c.execute("DELETE FROM app_usage WHERE name=?", (name,))
            del self.apps[name]
            shutil.rmtree(self.app_dir(name), ignore_errors=True)
            if app.cgroup is not None:
                with contextlib.suppress(Exception):
                    app.cgroup.remove()
            self._event(name, "remove", "removed with its data volume")
            return {"name": name, "removed": True}

    async def update_settings(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            app = self.get(name)
            new = app.settings.updated(changes)
            if new.volume_mib != app.settings.volume_mib:
                raise InvalidInput("the volume size is fixed at install time")
            reboot = new.memory_mib != app.settings.memory_mib or new.publish != app.settings.publish
            app.settings = new
            if reboot:
                ports = self._guest_ports(app.image, new)
                uid, gid = guest.resolve_user(Path(app.image.rootfs), app.image.user)
                if reboot:
                    await self._halt(app, "settings changed")
                    shutil.rmtree(self.app_dir(name) / "snap-boot", ignore_errors=True)
                await self._build_initrd(name, app.image, uid, gid, ports)
                app.forwards = {p: app.forwards.get(p) or _free_port() for p in ports}
            self._save(app)
            if app.cgroup is not None:
                app.cgroup.set_limits(self._limits(app))
            await self._serve(app)
            self._event(name, "settings", "settings changed: " + json.dumps(changes, sort_keys=True))
            return self.describe(app)

    # ---- listening ------------------------------------------------------------------

    async def _serve(self, app: _App) -> None:
        if self.names is not None and not app.addresses:
            app.addresses = self.names.register_service(app.name)
        listens = [Listen(addr, p, p) for addr in app.addresses
                   for p in self._guest_ports(app.image, app.settings)]
        listens += [Listen(p.host, p.port, p.guest_port) for p in app.settings.publish]
        await self.proxy.serve(app.name, listens)

    # ---- waking -----------------------------------------------------------------------

    async def _wake_port(self, name: str, guest_port: int) -> int:
        app = self.get(name)
        await self.wake(app, reason="connection")
        return app.forwards[guest_port]

    async def wake(self, app: _App, reason: str) -> None:
        """Bring the app up once, however many callers ask at the same time."""
        if app.vm is not None and not app.vm.exited.done():
            return
        if app.state == "runaway" and reason != "start":
            raise StateError(f"app {app.name!r} was stopped as a runaway; "
                             f"start it with `cloudpal app start {app.name}`")
        if app.waking is None:
            app.waking = asyncio.ensure_future(self._bring_up(app, reason))
            app.waking.add_done_callback(lambda f: setattr(app, "waking", None))
        await asyncio.shield(app.waking)

    def _limits(self, app: _App) -> cgroups.Limits:
        s = app.settings
        return cgroups.Limits(cpu_percent=s.cpu_percent, cpu_weight=s.cpu_weight,
                              memory_bytes=(s.memory_mib + QEMU_OVERHEAD_MIB) << 20, pids=s.pids)

    async def _spec(self, app: _App) -> VmSpec:
        d = self.app_dir(app.name)
        kernel = await asyncio.to_thread(guest.kernel_image, self.cache)
        accel = await self.accelerator()
        for guest_port, port in list(app.forwards.items()):
            if not _port_free(port):  # taken meanwhile: a new port changes QEMU's command line
                app.forwards[guest_port] = _free_port()
                for snap in ("snap-boot", "snap-idle"):
                    shutil.rmtree(d / snap, ignore_errors=True)
                self._save(app)
        assert app.cgroup is not None
        return VmSpec(
            name=app.name, kernel=kernel, initrd=d / "initrd", cmdline_extra="",
            memory_mib=app.settings.memory_mib, vcpus=VCPUS,
            disks=(Disk(self._disk(app.image), True), Disk(d / "data.ext4", False)),
            forwards=tuple((port, g) for g, port in sorted(app.forwards.items())),
            run_dir=d / "run", console_log=d / "console.log",
            cgroup_procs=app.cgroup.procs_files(), accel=accel,
        )

    async def _bring_up(self, app: _App, reason: str) -> None:
        t0 = time.monotonic()
        d = self.app_dir(app.name)
        app.state = "booting"
        app.cgroup = await asyncio.to_thread(cgroups.Cgroup.create, app.name, self._limits(app),
                                             parent=self.cgroup_parent)
        app.cgroup.reset_peak()
        try:
            spec = await self._spec(app)
            shutil.rmtree(spec.run_dir, ignore_errors=True)
            spec.run_dir.mkdir(mode=0o700)
            vm: Vm | None = None
            how = ""
            for kind in ("idle", "boot"):
                snap = d / f"snap-{kind}"
                if vm is None and (snap / "meta.json").exists():
                    try:
                        vm = await self.driver.restore(spec, snap)
                        how = f"{kind} snapshot"
                    except VmError as exc:
                        self._event(app.name, "restore-failed",
                                    f"restoring the {kind} snapshot failed, falling back: {exc}")
                        shutil.rmtree(snap, ignore_errors=True)
                        shutil.rmtree(spec.run_dir, ignore_errors=True)
                        spec.run_dir.mkdir(mode=0o700)
            if vm is None:
                boot_snap = d / "snap-boot"
                vm = await self.driver.boot(
                    spec, boot_snapshot=None if (boot_snap / "meta.json").exists() else boot_snap)
                how = "cold boot"
        except BaseException as exc:
            self._set_state(app, "stopped")
            if isinstance(exc, Exception):
                self._event(app.name, "wake-failed", f"could not start: {exc}")
            raise
        shutil.rmtree(d / "snap-idle", ignore_errors=True)
        app.vm = vm
        app.woke_by = how
        app.started = time.monotonic()
        app.state = "running"
        app.pinned_since = None
        app.last_cpu = None
        app.rate_base = None
        app.usage = {}
        self._store_state(app, "stopped")  # what a restart finds if the node dies while it runs
        self.proxy.activity.setdefault(app.name, Activity()).touch()
        ms = (time.monotonic() - t0) * 1000
        self._add_usage(app.name, wakes=1, cold_boots=int(how == "cold boot"),
                        restores=int(how != "cold boot"))
        self._event(app.name, "wake", f"up by {how} in {ms:.0f} ms ({reason}, {vm.accel})")
        app.monitor = asyncio.ensure_future(self._watch(app, vm))

    # ---- stopping ---------------------------------------------------------------------

    async def _sleep(self, app: _App, why: str) -> None:
        """Idle stop (and node shutdown): snapshot, then stop."""
        if app.waking is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(app.waking)
        vm = app.vm
        if vm is None:
            return
        app.vm = None
        self._stop_monitor(app)
        self._meter(app, vm)
        t0 = time.monotonic()
        try:
            await vm.snapshot_and_stop(self.app_dir(app.name) / "snap-idle")
        except Exception as exc:
            vm.kill()
            self._set_state(app, "stopped")
            self._event(app.name, "snapshot-failed", f"snapshot failed, stopped instead: {exc}")
            return
        self._set_state(app, "snapshotted")
        self._event(app.name, "sleep",
                    f"snapshotted and stopped ({why}) in {(time.monotonic() - t0) * 1000:.0f} ms")

    async def _halt(self, app: _App, why: str) -> None:
        """Owner stop, upgrade or removal: a clean shutdown so the volume is consistent."""
        if app.waking is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(app.waking)
        vm = app.vm
        app.vm = None
        if vm is not None:
            self._stop_monitor(app)
            self._meter(app, vm)
            await vm.shutdown()
            self._event(app.name, "stop", f"stopped ({why})")
        shutil.rmtree(self.app_dir(app.name) / "snap-idle", ignore_errors=True)
        if app.state != "runaway" or why != "owner":
            self._set_state(app, "stopped")

    def _stop_monitor(self, app: _App) -> None:
        if app.monitor is not None and app.monitor is not asyncio.current_task():
            app.monitor.cancel()
        app.monitor = None

    async def start_app(self, name: str) -> dict[str, Any]:
        app = self.get(name)
        if app.state == "runaway":
            self._set_state(app, "stopped")
            self._event(name, "start", "runaway mark cleared by the owner")
        await self.wake(app, reason="start")
        return self.describe(app)

    async def stop_app(self, name: str) -> dict[str, Any]:
        app = self.get(name)
        await self._halt(app, "owner")
        return self.describe(app)

    # ---- metering, idle and runaway ------------------------------------------------------

    def _meter(self, app: _App, vm: Vm, tick: bool = False) -> float | None:
        """Fold the cgroup's counters into the stored totals. On a monitor tick (one per TICK) also
        return the CPU rate since the previous tick; other callers (usage reports) fold only."""
        now = time.monotonic()
        if app.cgroup is None:
            return None
        try:
            u = app.cgroup.usage()
        except Exception:
            return None
        delta: dict[str, float] = {"peak_memory": u.memory_peak_bytes}
        if app.last_cpu is None:
            delta["cpu_seconds"] = u.cpu_seconds
            delta["running_seconds"] = now - app.started
        else:
            delta["cpu_seconds"] = max(0.0, u.cpu_seconds - app.last_cpu)
            delta["running_seconds"] = now - app.last_tick
        app.last_cpu, app.last_tick = u.cpu_seconds, now
        self._add_usage(app.name, **delta)
        rate = None
        if tick:
            if app.rate_base is not None:
                cpu0, t0 = app.rate_base
                rate = max(0.0, u.cpu_seconds - cpu0) / (now - t0) if now > t0 else None
            app.rate_base = (u.cpu_seconds, now)
            app.usage["cpu_rate"] = rate
        app.usage.update({"throttled": u.nr_throttled, "periods": u.nr_periods,
                          "memory": u.memory_bytes})
        return rate

    async def _watch(self, app: _App, vm: Vm) -> None:
        """Once per TICK while the VM runs: meter it, and apply the runaway and idle policies."""
        while True:
            done, _ = await asyncio.wait([vm.exited], timeout=TICK)
            if app.vm is not vm:
                return
            if done:
                app.vm = None
                self._meter(app, vm)
                code = vm.exited.result()
                self._set_state(app, "stopped")
                self._event(app.name, "exit", f"the VM stopped by itself (status {code})")
                return
            try:
                if await self._tick(app, vm):
                    return
            except Exception:  # a failed tick (say, a busy database) must not end the monitoring
                log.exception("app %s: monitoring tick failed", app.name)

    async def _tick(self, app: _App, vm: Vm) -> bool:
        """One monitoring step; True once the VM was stopped by a policy."""
        quota = (app.settings.cpu_percent or 100) / 100.0  # read each tick: `app set` changes it
        rate = self._meter(app, vm, tick=True)
        act = self.proxy.activity.get(app.name)
        busy_clients = act is not None and act.connections > 0
        now = time.monotonic()
        if rate is not None and rate >= PINNED * min(quota, float(VCPUS)) and not busy_clients:
            app.pinned_since = app.pinned_since or now
            if now - app.pinned_since >= app.settings.runaway_after:
                await self._runaway(app, vm, now - app.pinned_since)
                return True
        else:
            app.pinned_since = None
        if act is not None and act.idle_for() >= app.settings.idle:
            await self._sleep(app, f"idle for {app.settings.idle} s")
            return True
        return False

    async def _runaway(self, app: _App, vm: Vm, pinned: float) -> None:
        app.vm = None
        app.monitor = None
        vm.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(vm.exited), 5)
        self._meter(app, vm)
        shutil.rmtree(self.app_dir(app.name) / "snap-idle", ignore_errors=True)
        self._set_state(app, "runaway")
        pct = app.settings.cpu_percent
        self._event(app.name, "runaway",
                    f"killed as a runaway: pinned at its CPU quota ({pct}%) for {pinned:.0f} s with no "
                    f"client connected; it stays stopped until `cloudpal app start {app.name}`")

    # ---- reports ------------------------------------------------------------------------

    def describe(self, app: _App) -> dict[str, Any]:
        return {
            "name": app.name, "state": app.state, "image": app.image.id, "digest": app.image.digest,
            "accel": self.accel or "", "argv": list(app.image.argv),
            "ports": self._guest_ports(app.image, app.settings),
            "addresses": list(app.addresses),
            "listening": [f"{h}:{p}" if ":" not in h else f"[{h}]:{p}"
                          for h, p in self.proxy.listening(app.name)],
            "settings": app.settings.to_json(),
            "pid": app.vm.pid if app.vm is not None else None,
            "woke_by": app.woke_by if app.vm is not None else "",
            "snapshot": (self.app_dir(app.name) / "snap-idle" / "meta.json").exists(),
            "boot_snapshot": (self.app_dir(app.name) / "snap-boot" / "meta.json").exists(),
            "log": str(self.app_dir(app.name) / "console.log"),
        }

    def list_apps(self) -> list[dict[str, Any]]:
        return [self.describe(a) for a in sorted(self.apps.values(), key=lambda a: a.name)]

    def usage(self) -> list[dict[str, Any]]:
        out = []
        for app in sorted(self.apps.values(), key=lambda a: a.name):
            if app.vm is not None:
                self._meter(app, app.vm)
            row = self.db.conn.execute("SELECT * FROM app_usage WHERE name=?", (app.name,)).fetchone()
            act = self.proxy.activity.get(app.name)
            out.append({
                "name": app.name, "state": app.state,
                "cpu_seconds": row["cpu_seconds"] if row else 0.0,
                "peak_memory": row["peak_memory"] if row else 0,
                "wakes": row["wakes"] if row else 0,
                "cold_boots": row["cold_boots"] if row else 0,
                "restores": row["restores"] if row else 0,
                "running_seconds": row["running_seconds"] if row else 0.0,
                "throttled_periods": app.usage.get("throttled", 0) if app.vm else 0,
                "cpu_rate": app.usage.get("cpu_rate") if app.vm else None,
                "connections": act.connections if act else 0,
                "bytes_in": act.bytes_in if act else 0, "bytes_out": act.bytes_out if act else 0,
            })
        return out

    def events(self, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if name is not None:
            self.get(name)
        rows = self.db.conn.execute(
            "SELECT * FROM app_events WHERE (? IS NULL OR app=?) ORDER BY id DESC LIMIT ?",
            (name, name, limit)).fetchall()
        return [dict(r) for r in reversed(rows)]


def migrate(db: Database) -> None:
    db.migrate("compute", SCHEMA)
