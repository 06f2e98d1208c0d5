"""The microVM driver interface: what the app lifecycle needs from a hypervisor, and nothing more.

One driver per VMM (QEMU today; Firecracker or cloud-hypervisor would slot in here where they
work). A driver boots a guest to READY, restores snapshots, and hands back a running ``Vm``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cloudpal.errors import HostError


@dataclass(frozen=True)
class Disk:
    path: Path
    readonly: bool


@dataclass(frozen=True)
class VmSpec:
    """Everything that decides a VM's command line. ``run_dir`` holds the per-run sockets, RAM file
    and pid file; ``cgroup_procs`` are cgroup.procs files QEMU joins before it execs."""

    name: str
    kernel: Path
    initrd: Path
    cmdline_extra: str
    memory_mib: int
    vcpus: int
    disks: tuple[Disk, ...]
    forwards: tuple[tuple[int, int], ...]  # (host port on 127.0.0.1, guest port)
    run_dir: Path
    console_log: Path
    cgroup_procs: tuple[Path, ...]
    accel: str  # "kvm" | "tcg"


class VmError(HostError):
    """A VM failed to boot or restore, or its guest ended early; the message says which and where
    the logs are."""


class Vm(Protocol):
    pid: int
    accel: str
    exited: asyncio.Future[int]  # QEMU's exit status; the guest app exiting ends QEMU

    async def snapshot_and_stop(self, dest: Path) -> None:
        """SYNC, pause, save device state and move the RAM file into ``dest`` (kind "idle"), quit."""
        ...

    async def shutdown(self, timeout: float = 10) -> None:
        """Ask the guest to stop the app and power off; kill the VM after ``timeout`` seconds."""
        ...

    def kill(self) -> None:
        """SIGKILL the VM now."""
        ...


class Driver(Protocol):
    name: str

    def reap(self, run_dir: Path) -> bool:
        """Kill a VM that a dead node process left running in ``run_dir``; True if there was one."""
        ...

    def accelerator(self, cache_dir: Path) -> str:
        """"kvm" if KVM really runs our guest here, else "tcg" (probed once, cached)."""
        ...

    async def boot(self, spec: VmSpec, *, boot_snapshot: Path | None = None, timeout: float = 60) -> Vm:
        """Cold boot to READY; with ``boot_snapshot``, save a snapshot at the guest's HELLO first."""
        ...

    async def restore(self, spec: VmSpec, snapshot: Path, *, timeout: float = 30) -> Vm:
        """Resume a "boot" or "idle" snapshot; VmError (and no QEMU left running) on any failure."""
        ...
