"""WireGuard backends: the kernel module where it exists, wireguard-go otherwise.

Both present the same small interface (`apply`, `status`) so the hub logic
does not care which one carries the packets.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from pyroute2.netlink.exceptions import NetlinkError

from cloudpal.errors import HostError
from cloudpal.net.hostnet import (
    create_wireguard_link,
    delete_link,
    link_exists,
    require_tool,
    require_tun,
)
from cloudpal.net.uapi import (
    InterfaceStatus,
    PeerSpec,
    PeerStatus,
    UapiClient,
    socket_path,
    wait_ready,
)
from cloudpal.state import atomic_write


class Backend(Protocol):
    kind: str
    iface: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def apply(self, *, private_key: str | None = None, listen_port: int | None = None,
              peers: Iterable[PeerSpec] = (), remove: Iterable[str] = (),
              replace_peers: bool = False) -> None: ...
    def status(self) -> InterfaceStatus: ...


class UserspaceBackend:
    """wireguard-go in the foreground, driven over its UAPI control socket."""

    kind = "wireguard-go"

    def __init__(self, iface: str, log_path: Path, binary: str = "wireguard-go") -> None:
        self.iface = iface
        self.log_path = log_path
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = UapiClient(iface)

    @property
    def pid_file(self) -> Path:
        return self.log_path.with_name("wireguard-go.pid")

    def _reap_leftover(self) -> None:
        """Stop the wireguard-go a killed earlier run of this node left behind.

        The caller holds the home lock, so a wireguard-go recorded in this home
        for this interface can only be such a leftover.
        """
        try:
            pid = int(self.pid_file.read_text())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            argv = []
        if len(argv) >= 3 and argv[0].endswith(b"wireguard-go") and argv[1:3] == [
            b"-f", self.iface.encode()
        ]:
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
            if link_exists(self.iface):
                delete_link(self.iface)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def start(self) -> None:
        require_tun()
        exe = require_tool(self.binary, "wireguard-go")
        self._reap_leftover()
        if link_exists(self.iface):
            raise HostError(f"interface {self.iface} already exists: is another node running?")
        stale = Path(socket_path(self.iface))
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([exe, "-f", self.iface], stdout=log, stderr=log, env=env,
                                         start_new_session=True)
        atomic_write(self.pid_file, f"{self.proc.pid}\n")
        try:
            wait_ready(self.iface, timeout=10.0)
        except TimeoutError:
            self.stop()
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:]
            raise HostError(f"wireguard-go did not start: {' '.join(tail) or 'no output'}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        with contextlib.suppress(FileNotFoundError):
            Path(socket_path(self.iface)).unlink()
        with contextlib.suppress(Exception):
            delete_link(self.iface)

    def apply(self, *, private_key: str | None = None, listen_port: int | None = None,
              peers: Iterable[PeerSpec] = (), remove: Iterable[str] = (),
              replace_peers: bool = False) -> None:
        self.client.set(private_key=private_key, listen_port=listen_port, peers=peers,
                        remove=remove, replace_peers=replace_peers)

    def status(self) -> InterfaceStatus:
        return self.client.get()


class KernelBackend:
    """The in-kernel module: link created over netlink, configured with the `wg` tool.

    `wg` speaks generic netlink to the kernel; not exercised on machines without
    the module (ours), where the userspace backend is chosen.
    """

    kind = "kernel"

    def __init__(self, iface: str) -> None:
        self.iface = iface

    def start(self) -> None:
        require_tool("wg", "wireguard-tools")
        create_wireguard_link(self.iface)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            delete_link(self.iface)

    def _wg(self, *args: str, stdin: str | None = None) -> str:
        proc = subprocess.run(["wg", *args], input=stdin, text=True, capture_output=True, check=False)
        if proc.returncode != 0:
            raise HostError(f"wg {args[0]} failed: {proc.stderr.strip()}")
        return proc.stdout

    def apply(self, *, private_key: str | None = None, listen_port: int | None = None,
              peers: Iterable[PeerSpec] = (), remove: Iterable[str] = (),
              replace_peers: bool = False) -> None:
        lines = ["[Interface]"]
        if private_key:
            lines.append(f"PrivateKey = {private_key}")
        if listen_port is not None:
            lines.append(f"ListenPort = {listen_port}")
        for peer in peers:
            lines += ["[Peer]", f"PublicKey = {peer.public_key}"]
            if peer.allowed_ips:
                lines.append(f"AllowedIPs = {', '.join(peer.allowed_ips)}")
            if peer.endpoint:
                lines.append(f"Endpoint = {peer.endpoint}")
            if peer.keepalive:
                lines.append(f"PersistentKeepalive = {peer.keepalive}")
        conf = "\n".join(lines) + "\n"
        if replace_peers:
            self._wg("setconf", self.iface, "/dev/stdin", stdin=conf)
        elif len(lines) > 1:
            self._wg("addconf", self.iface, "/dev/stdin", stdin=conf)
        for key in remove:
            self._wg("set", self.iface, "peer", key, "remove")

    def status(self) -> InterfaceStatus:
        out = self._wg("show", self.iface, "dump")
        rows = [line.split("\t") for line in out.splitlines() if line]
        head, peers = rows[0], rows[1:]
        status = InterfaceStatus(
            public_key=head[1] if head[1] != "(none)" else None,
            listen_port=int(head[2]) if head[2].isdigit() else None,
            fwmark=None,
            peers={},
        )
        for p in peers:
            status.peers[p[0]] = PeerStatus(
                public_key=p[0],
                endpoint=None if p[2] == "(none)" else p[2],
                allowed_ips=[] if p[3] == "(none)" else p[3].split(","),
                last_handshake=float(p[4]) or None,
                rx_bytes=int(p[5]),
                tx_bytes=int(p[6]),
                keepalive=0 if p[7] == "off" else int(p[7]),
            )
        return status


def choose_backend(iface: str, log_path: Path, prefer: str = "auto") -> Backend:
    """Kernel WireGuard if the module can make a link, else wireguard-go."""
    if prefer in ("auto", "kernel"):
        try:
            create_wireguard_link(iface)
            delete_link(iface)
            return KernelBackend(iface)
        except NetlinkError as exc:
            if prefer == "kernel":
                raise HostError(f"kernel WireGuard is not available here: {exc}") from exc
    return UserspaceBackend(iface, log_path)

