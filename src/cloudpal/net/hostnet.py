"""The host mechanisms the hub needs: sysctls, interface addresses, nftables.

Every touch of the host's network stack outside WireGuard itself goes through
this module, so the rest of the code never shells out or speaks netlink.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

from pyroute2 import IPRoute, NetlinkError

from cloudpal.errors import HostError

SYSCTL_ROOT = Path("/proc/sys")
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _netlink(fn: Callable[_P, _T]) -> Callable[_P, _T]:
    """Run a pyroute2 call on a worker thread.

    pyroute2 0.9 drives its sockets with an asyncio loop of its own, which
    cannot run inside the node's loop; a short blocking hop to a thread can.
    """

    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(fn, *args, **kwargs).result()

    wrapper.__doc__ = fn.__doc__
    return wrapper


def read_sysctl(key: str) -> str | None:
    try:
        return (SYSCTL_ROOT / key.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def write_sysctl(key: str, value: str) -> None:
    path = SYSCTL_ROOT / key.replace(".", "/")
    try:
        path.write_text(value)
    except OSError as exc:
        raise HostError(f"cannot set {key}={value}: {exc.strerror}") from exc


class Sysctls:
    """Sets sysctls and remembers the old values so `restore` leaves the host as it was."""

    def __init__(self) -> None:
        self._saved: dict[str, str] = {}

    def set(self, key: str, value: str) -> None:
        old = read_sysctl(key)
        if old is None:
            raise HostError(f"sysctl {key} does not exist on this host")
        self._saved.setdefault(key, old)
        if old != value:
            write_sysctl(key, value)

    def restore(self) -> None:
        for key, value in reversed(list(self._saved.items())):
            with contextlib.suppress(HostError):
                write_sysctl(key, value)
        self._saved.clear()


@_netlink
def link_exists(iface: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=iface))


@_netlink
def configure_interface(iface: str, addresses: list[tuple[str, int]], mtu: int = 1420) -> None:
    """Give the WireGuard interface its overlay addresses and bring it up."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            raise HostError(f"interface {iface} vanished before it could be configured")
        index = found[0]
        ipr.link("set", index=index, mtu=mtu)
        for address, prefix in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            # IFA_F_NODAD (0x02): the overlay address is ours alone, use it at once.
            flags = 0x02 if family == socket.AF_INET6 else 0
            ipr.addr("add", index=index, address=address, prefixlen=prefix, family=family,
                     flags=flags)
        ipr.link("set", index=index, state="up")


@_netlink
def set_host_addresses(iface: str, addresses: list[str], present: bool) -> None:
    """Add (or remove) single-host addresses on the hub interface: apps' overlay addresses."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            raise HostError(f"interface {iface} is gone")
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            prefix = 128 if family == socket.AF_INET6 else 32
            try:
                if present:
                    ipr.addr("add", index=found[0], address=address, prefixlen=prefix, family=family,
                             flags=0x02 if family == socket.AF_INET6 else 0)
                else:
                    ipr.addr("del", index=found[0], address=address, prefixlen=prefix, family=family)
            except NetlinkError as exc:
                # EEXIST on add / EADDRNOTAVAIL on del: already as wanted.
                if exc.code not in (errno.EEXIST, errno.EADDRNOTAVAIL):
                    raise HostError(f"cannot {'add' if present else 'remove'} {address} on {iface}: "
                                    f"{exc}") from exc


@_netlink
def create_wireguard_link(iface: str) -> None:
    """Ask the kernel for a WireGuard link; NetlinkError where there is no module."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=iface, kind="wireguard")


@_netlink
def delete_link(iface: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=iface)
        if found:
            ipr.link("del", index=found[0])


def underlay_address() -> str:
    """The address devices most likely reach us at: the source of the default route."""
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))  # UDP connect sends nothing; it only picks a route
                addr = str(s.getsockname()[0])
                if not ipaddress.ip_address(addr).is_loopback:
                    return addr
        except OSError:
            continue
    return _first_global_address()


@_netlink
def _first_global_address() -> str:
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            addr = msg.get_attr("IFA_ADDRESS")
            if addr and not ipaddress.ip_address(addr).is_loopback and msg["scope"] == 0:
                return str(addr)
    raise HostError("cannot find an underlay address for devices to dial: pass --endpoint HOST:PORT")


def require_root() -> None:
    if os.geteuid() != 0:
        raise HostError("the node needs root privileges (to create its network interface)")


def require_tun() -> None:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as exc:
        raise HostError(f"/dev/net/tun is not usable ({exc.strerror}): the node needs TUN support") from exc
    os.close(fd)


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise HostError(f"{name} is not installed: apt-get install {package}")
    return path


def nft_apply(script: str) -> None:
    """Apply an nftables script as one atomic transaction (all or nothing)."""
    nft = require_tool("nft", "nftables")
    proc = subprocess.run([nft, "-f", "-"], input=script, text=True, capture_output=True, check=False)
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["unknown error"])[0]
        raise HostError(f"nftables refused the ruleset: {first}")


def nft_delete_table(table: str) -> None:
    nft = shutil.which("nft")
    if nft:
        subprocess.run([nft, "delete", "table", "inet", table], capture_output=True, check=False)
