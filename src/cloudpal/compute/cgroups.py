"""Confine app processes (QEMU) in cgroups: CPU quota and weight, hard memory limit, pid limit, metering.

Both layouts are supported because hosts differ: a pure cgroup v2 host (``/sys/fs/cgroup`` is the unified
hierarchy with the cpu, memory and pids controllers) and a v1 host, where each controller is its own
hierarchy under ``/sys/fs/cgroup/<controller>`` (on some hosts ``cpu`` and ``cpuacct`` are one hierarchy
reached through symlinks; it is used once). A group lives at ``<hierarchy>/<parent>/<name>``.

Processes should be *born* inside their group (a child writes ``0`` into every :meth:`Cgroup.procs_files`
before exec) so that nothing they allocate is charged elsewhere and a fork cannot escape the limits.
Every file write is one ``write(2)``, as the kernel expects; host failures become :class:`HostError` with
one sentence, bad names and limits :class:`InvalidInput`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from cloudpal.errors import HostError, InvalidInput, NotFound

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")
V2_CONTROLLERS = ("cpu", "memory", "pids")
PERIOD_US = 100_000  # CFS period: cpu_percent is the quota per 100 ms, so 50 -> 50 ms of one cpu
MAX_CPU_PERCENT = 100 * 1024  # 1024 cpus; far beyond any host, but keeps the quota a sane number
REMOVE_TIMEOUT = 3.0  # seconds remove() waits for SIGKILLed processes to finish exiting
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


@dataclass(frozen=True)
class Limits:
    """What a group may use. ``None`` means unlimited."""

    cpu_percent: int | None  # quota as % of ONE cpu; may exceed 100 to allow more than one cpu
    cpu_weight: int = 100  # relative share when cpus are contended, 1..10000 (100 = the default)
    memory_bytes: int | None = None  # hard limit; swap is not allowed to extend it
    pids: int | None = None

    def __post_init__(self) -> None:
        _check_int("cpu_percent", self.cpu_percent, 1, MAX_CPU_PERCENT, optional=True)
        _check_int("cpu_weight", self.cpu_weight, 1, 10_000, optional=False)
        _check_int("memory_bytes", self.memory_bytes, 4096, 1 << 62, optional=True)
        _check_int("pids", self.pids, 1, 1 << 22, optional=True)


@dataclass(frozen=True)
class Usage:
    """A meter reading. CPU and throttling counters only grow; compare two readings for a rate."""

    cpu_seconds: float
    memory_bytes: int
    memory_peak_bytes: int
    nr_periods: int  # CFS periods in which the group ran
    nr_throttled: int  # of those, periods in which it hit its quota
    throttled_seconds: float


def _check_int(field: str, value: object, low: int, high: int, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"The {field} limit must be a whole number from {low} to {high}, not {value!r}.")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"The cgroup {kind} {name!r} is not valid: use 1 to 63 lowercase letters, digits and dashes, "
            "starting with a letter or digit."
        )


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (cloudpal must run as root to manage cgroups)"
    if exc.errno == errno.ENOENT:
        return "it does not exist (the cgroup controller is probably not available on this host)"
    if exc.errno == errno.EBUSY:
        return "the cgroup is busy"
    return os.strerror(exc.errno or 0).lower()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise HostError(f"Cannot read {path}: {_reason(exc)}.") from exc


def _read_int(path: Path) -> int:
    text = _read(path).strip()
    try:
        return int(text)
    except ValueError:
        raise HostError(f"Cannot read {path}: expected a number, found {text[:40]!r}.") from None


def _read_keyed(path: Path) -> dict[str, int]:
    """Parse a flat-keyed file (``key value`` per line) such as cpu.stat."""
    out: dict[str, int] = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def _write_raw(path: Path, value: str) -> None:
    """One write(2); no O_CREAT, so a missing interface file is an error instead of a stray file."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _write(path: Path, value: str) -> None:
    try:
        _write_raw(path, value)
    except OSError as exc:
        raise HostError(f"Cannot write {value!r} to {path}: {_reason(exc)}.") from exc


def _detect(root: Path) -> tuple[int, dict[str, Path]]:
    """Pick the cgroup version and the hierarchy root of each controller, or say why none is usable."""
    controllers_file = root / "cgroup.controllers"
    if controllers_file.exists():
        present = _read(controllers_file).split()
        missing = [c for c in V2_CONTROLLERS if c not in present]
        if missing:
            raise HostError(
                f"The cgroup v2 hierarchy at {root} lacks the {', '.join(missing)} controller(s), "
                "so apps cannot be confined."
            )
        return 2, dict.fromkeys((*V2_CONTROLLERS, "cpuacct"), root)
    hierarchies = {c: root / c for c in V1_CONTROLLERS}
    missing = [c for c, path in hierarchies.items() if not (path / "cgroup.procs").exists()]
    if missing:
        raise HostError(
            f"No usable cgroups at {root}: neither a v2 hierarchy with cpu, memory and pids nor v1 "
            f"hierarchies for {', '.join(missing)}."
        )
    return 1, hierarchies


def available(root: Path = ROOT) -> str | None:
    """None when cgroups can confine apps here, else a one-line reason (for ``cloudpal doctor`` etc.)."""
    try:
        version, hierarchies = _detect(root)
    except HostError as exc:
        return str(exc)
    for path in dict.fromkeys(hierarchies.values()):
        if not os.access(path, os.W_OK):
            who = "" if os.geteuid() == 0 else " (cloudpal must run as root to confine apps)"
            return f"The cgroup v{version} hierarchy {path} is not writable{who}."
    return None


class Cgroup:
    """One group ``<parent>/<name>`` in every hierarchy it needs. Use :meth:`create` or :meth:`open`.

    The constructor only computes paths (reading which cgroup version the host has); ``root`` exists so
    tests can point it at a fake tree.
    """

    def __init__(self, name: str, *, parent: str = "cloudpal", root: Path = ROOT) -> None:
        _check_name("name", name)
        _check_name("parent", parent)
        self.name = name
        self.parent = parent
        self.root = root
        self.version, hierarchies = _detect(root)
        self._dirs = {c: h / parent / name for c, h in hierarchies.items()}
        # One directory per distinct hierarchy (cpu and cpuacct may be one mount reached twice).
        unique: dict[str, Path] = {}
        for hierarchy in hierarchies.values():
            unique.setdefault(os.path.realpath(hierarchy), hierarchy)
        self._hierarchies = tuple(unique.values())
        self.paths: tuple[Path, ...] = tuple(h / parent / name for h in self._hierarchies)
        self._sampled_peak = 0  # v2 without a usable memory.peak: the max of what usage() saw
        self._peak_fd: int | None = None  # v2: memory.peak resets only as seen through the fd written to
        self._peak_unusable = False

    def __repr__(self) -> str:
        return f"Cgroup({self.parent}/{self.name}, v{self.version})"

    def __del__(self) -> None:
        self._close_peak()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, name: str, limits: Limits, *, parent: str = "cloudpal", root: Path = ROOT) -> Cgroup:
        """Create (or reuse) the group and apply ``limits``; safe to call again with new limits."""
        if not isinstance(limits, Limits):
            raise InvalidInput("Cgroup limits must be a Limits value.")
        group = cls(name, parent=parent, root=root)
        created: list[Path] = []
        try:
            for path in [h / parent for h in group._hierarchies]:
                if _mkdir(path):
                    created.append(path)
            if group.version == 2:
                group._enable_v2_controllers()
            for path in group.paths:
                if _mkdir(path):
                    created.append(path)
            group.set_limits(limits)
        except BaseException:
            # Leave nothing half-made behind: only what this call created, innermost first.
            for path in reversed(created):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            raise
        return group

    @classmethod
    def open(cls, name: str, *, parent: str = "cloudpal", root: Path = ROOT) -> Cgroup | None:
        """The existing group, or None when it is missing from any hierarchy."""
        group = cls(name, parent=parent, root=root)
        return group if all(p.is_dir() for p in group.paths) else None

    def _enable_v2_controllers(self) -> None:
        """Delegate cpu, memory and pids from the root down to the parent (children need it enabled above)."""
        for where in (self.root, self.root / self.parent):
            control = where / "cgroup.subtree_control"
            enabled = _read(control).split()
            wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS if c not in enabled)
            if not wanted:
                continue
            try:
                _write_raw(control, wanted)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise HostError(
                        f"Cannot enable the {', '.join(V2_CONTROLLERS)} controllers in {where}: it holds "
                        "processes itself, which cgroup v2 forbids for a group that delegates controllers."
                    ) from exc
                raise HostError(f"Cannot enable cgroup controllers in {control}: {_reason(exc)}.") from exc

    def remove(self) -> None:
        """Kill everything inside, wait briefly for the processes to exit, and delete the group.

        Removing a group that is already gone does nothing.
        """
        self.kill_all()
        remaining = list(self.paths)
        deadline = time.monotonic() + REMOVE_TIMEOUT
        while True:
            for path in list(remaining):
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        continue
                    raise HostError(f"Cannot remove cgroup {path}: {_reason(exc)}.") from exc
                remaining.remove(path)
            if not remaining:
                break
            if time.monotonic() > deadline:
                raise HostError(
                    f"Cannot remove cgroup {remaining[0]}: it still holds processes or child groups "
                    f"{REMOVE_TIMEOUT:g} s after they were killed."
                )
            time.sleep(0.01)
            self.kill_all()  # catch anything forked while we were killing
        self._close_peak()

    # ------------------------------------------------------------------ processes

    def procs_files(self) -> tuple[Path, ...]:
        """The cgroup.procs file of every hierarchy: write ``0`` into each to move the writer in."""
        return tuple(p / "cgroup.procs" for p in self.paths)

    def add(self, pid: int) -> None:
        """Move a running process (all its threads) into the group."""
        for path in self.procs_files():
            try:
                _write_raw(path, str(pid))
            except ProcessLookupError:
                raise NotFound(
                    f"Process {pid} does not exist, so it cannot join cgroup {self.name}."
                ) from None
            except OSError as exc:
                raise HostError(f"Cannot move process {pid} into {path}: {_reason(exc)}.") from exc

    def pids(self) -> list[int]:
        """Every process in the group (in any hierarchy, for v1), sorted; none once it is removed."""
        found: set[int] = set()
        for path in self.procs_files():
            if not path.parent.is_dir():
                continue
            found.update(int(line) for line in _read(path).split())
        return sorted(found)

    def kill_all(self) -> None:
        """SIGKILL every process in the group; does not wait for them to finish exiting."""
        kill_file = self._dirs["cpu"] / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            _write(kill_file, "1")  # atomic: also gets processes forked during the kill
            return
        killed: set[int] = set()
        for _ in range(50):  # re-read: a process may fork between our read and its kill
            fresh = set(self.pids()) - killed
            if not fresh:
                return
            for pid in fresh:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed |= fresh

    # ------------------------------------------------------------------ limits

    def set_limits(self, limits: Limits) -> None:
        """Apply ``limits`` now; running processes are affected immediately."""
        if not isinstance(limits, Limits):
            raise InvalidInput("Cgroup limits must be a Limits value.")
        if self.version == 2:
            self._set_v2(limits)
        else:
            self._set_v1(limits)

    def _set_v1(self, limits: Limits) -> None:
        cpu = self._dirs["cpu"]
        _write(cpu / "cpu.cfs_period_us", str(PERIOD_US))
        quota = -1 if limits.cpu_percent is None else limits.cpu_percent * PERIOD_US // 100
        _write(cpu / "cpu.cfs_quota_us", str(quota))
        _write(cpu / "cpu.shares", str(max(2, limits.cpu_weight * 1024 // 100)))
        self._set_v1_memory(limits.memory_bytes)
        _write(self._dirs["pids"] / "pids.max", "max" if limits.pids is None else str(limits.pids))

    def _set_v1_memory(self, limit: int | None) -> None:
        memory = self._dirs["memory"]
        value = "-1" if limit is None else str(limit)
        memsw = memory / "memory.memsw.limit_in_bytes"  # memory+swap; absent without swap accounting
        has_memsw = memsw.exists()
        # The kernel keeps memsw >= mem at all times, so raise memsw first and lower it last.
        raising = limit is None or limit > _read_int(memory / "memory.limit_in_bytes")
        mem = memory / "memory.limit_in_bytes"
        for path in (memsw, mem) if raising else (mem, memsw):
            if path == memsw and not has_memsw:
                continue
            try:
                _write_raw(path, value)
            except OSError as exc:
                if exc.errno == errno.EBUSY and limit is not None:
                    used = _read_int(memory / "memory.usage_in_bytes")
                    raise HostError(
                        f"Cannot lower the memory limit of cgroup {self.parent}/{self.name} to {limit} "
                        f"bytes: it uses {used} bytes now and the kernel could not reclaim enough."
                    ) from exc
                raise HostError(f"Cannot write {value!r} to {path}: {_reason(exc)}.") from exc

    def _set_v2(self, limits: Limits) -> None:
        d = self._dirs["cpu"]
        quota = "max" if limits.cpu_percent is None else str(limits.cpu_percent * PERIOD_US // 100)
        _write(d / "cpu.max", f"{quota} {PERIOD_US}")
        _write(d / "cpu.weight", str(limits.cpu_weight))
        _write(d / "memory.max", "max" if limits.memory_bytes is None else str(limits.memory_bytes))
        if (d / "memory.swap.max").exists():
            # v2 counts swap separately: no swap keeps memory.max a hard limit, as memsw does on v1.
            _write(d / "memory.swap.max", "max" if limits.memory_bytes is None else "0")
        _write(d / "pids.max", "max" if limits.pids is None else str(limits.pids))

    # ------------------------------------------------------------------ metering

    def usage(self) -> Usage:
        """Read the meters: cumulative CPU time and throttling, current and peak memory."""
        if self.version == 1:
            stat = _read_keyed(self._dirs["cpu"] / "cpu.stat")
            memory = self._dirs["memory"]
            return Usage(
                cpu_seconds=_read_int(self._dirs["cpuacct"] / "cpuacct.usage") / 1e9,
                memory_bytes=_read_int(memory / "memory.usage_in_bytes"),
                memory_peak_bytes=_read_int(memory / "memory.max_usage_in_bytes"),
                nr_periods=stat.get("nr_periods", 0),
                nr_throttled=stat.get("nr_throttled", 0),
                throttled_seconds=stat.get("throttled_time", 0) / 1e9,
            )
        d = self._dirs["cpu"]
        stat = _read_keyed(d / "cpu.stat")
        current = _read_int(d / "memory.current")
        self._sampled_peak = max(self._sampled_peak, current)
        kernel_peak = self._read_v2_peak()
        return Usage(
            cpu_seconds=stat.get("usage_usec", 0) / 1e6,
            memory_bytes=current,
            memory_peak_bytes=max(self._sampled_peak, kernel_peak or 0),
            nr_periods=stat.get("nr_periods", 0),
            nr_throttled=stat.get("nr_throttled", 0),
            throttled_seconds=stat.get("throttled_usec", 0) / 1e6,
        )

    def _read_v2_peak(self) -> int | None:
        """memory.peak (Linux >= 5.19), through the fd a reset was written to; None when unusable."""
        if self._peak_unusable:
            return None
        try:
            if self._peak_fd is None:
                return int(_read(self._dirs["memory"] / "memory.peak").strip())
            os.lseek(self._peak_fd, 0, os.SEEK_SET)
            return int(os.read(self._peak_fd, 64).decode().strip())
        except (HostError, OSError, ValueError):
            return None

    def reset_peak(self) -> None:
        """Start a new peak-memory window (v1 exactly; v2 best effort, exact on Linux >= 6.12)."""
        if self.version == 1:
            _write(self._dirs["memory"] / "memory.max_usage_in_bytes", "0")
            return
        self._sampled_peak = _read_int(self._dirs["memory"] / "memory.current")
        self._close_peak()
        try:
            fd = os.open(self._dirs["memory"] / "memory.peak", os.O_RDWR | os.O_TRUNC | os.O_CLOEXEC)
        except OSError:
            self._peak_unusable = True  # missing or read-only (5.19..6.11): rely on sampled values
            return
        try:
            os.write(fd, b"reset")
        except OSError:
            os.close(fd)
            self._peak_unusable = True
            return
        self._peak_fd = fd

    def _close_peak(self) -> None:
        fd = getattr(self, "_peak_fd", None)
        if fd is not None:
            self._peak_fd = None
            with contextlib.suppress(OSError):
                os.close(fd)


def _mkdir(path: Path) -> bool:
    """Create one cgroup directory; True if this call created it."""
    try:
        os.mkdir(path)
    except FileExistsError:
        return False
    except OSError as exc:
        raise HostError(f"Cannot create cgroup {path}: {_reason(exc)}.") from exc
    return True
