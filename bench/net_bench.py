#!/usr/bin/env python3
"""Network benchmarks: CloudPal's hub against the same thing wired by hand.

Every figure is measured next to an *anchor* taken in the same run, on the same
machine, with the same wireguard-go binary, and the ratio CloudPal/anchor is
printed, so a slow CI box or a noisy neighbour shows up in both columns instead
of in the conclusions.

1. TCP throughput device -> hub -> device (iperf3 through two WireGuard hops),
   CloudPal hub vs a hub made by hand (wireguard-go + ``wg set`` + ``ip`` +
   forwarding sysctls, no nftables).  Rounds are interleaved, alternating which
   setup goes first, so drift in the machine's speed hits both setups alike.
2. Time to enroll one device: ``cloudpal device add`` (CLI, process start
   included), ``cloudpal join --no-up`` over the enrollment endpoint, and join
   with ``wg-quick up`` until the first ping to the hub answers; the anchor for
   the last one is a hand-written config, a ``wg set`` peer on the hand hub,
   ``wg-quick up`` and the same ping loop.
3. Adding and removing many devices on a running hub through the control API,
   checked against ``wg show IF peers``; anchor: one ``wg set`` per peer on a
   bare wireguard-go interface.  Plus a per-command figure for the CLI.

Needs root, network namespaces, wireguard-go, wireguard-tools and iperf3.  Run::

    sudo .venv/bin/python bench/net_bench.py --write docs/benchmarks.md

It uses only 198.18.0.0/15 on the underlay and cleans everything up, also on
Ctrl-C (namespaces, processes, sockets, temporary files).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import report  # bench/report.py: shared by the benchmark scripts
from report import Stats, cpu_model, fmt_ms, ratio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from cloudpal.control import ControlClient  # noqa: E402
from cloudpal.net import keys  # noqa: E402
from netlab import Host, Lab, LabProcess, Segment, env_with_path, require_root_tools  # noqa: E402

SHIMS = REPO / "tests" / "integration" / "shims"
TOOLS = ("wireguard-go", "wg", "wg-quick", "iperf3", "ping", "ss", "sysctl")
MARK_START = "<!-- net-bench:start -->"
MARK_END = "<!-- net-bench:end -->"
MTU = 1420
KEEPALIVE = 25  # what CloudPal puts in device configs
WG_PORT = 51820
HUB_OVERLAY = "100.64.0.1"
HAND_V6 = "fd42:b3c4:5d6e"  # the hand-made overlay's ULA /48 (inside namespaces only)
JOINS_PER_HOST = 8  # the enrollment endpoint allows 10 attempts per client address in a burst


def cloudpal_bin() -> str:
    here = Path(sys.executable).parent / "cloudpal"
    if here.exists():
        return str(here)
    found = shutil.which("cloudpal") or str(REPO / ".venv" / "bin" / "cloudpal")
    return found


CLOUDPAL = cloudpal_bin()


def device_env() -> dict[str, str]:
    """What stock wg-quick needs here: wireguard-go, and the resolvconf shim for DNS=."""
    env = env_with_path(SHIMS)
    env["WG_QUICK_USERSPACE_IMPLEMENTATION"] = "wireguard-go"
    return env


def wg_env() -> dict[str, str]:
    env = env_with_path()
    env["WG_PROCESS_FOREGROUND"] = "1"
    return env


# ------------------------------------------------------------------ statistics




# ------------------------------------------------------------------- helpers


def timed(fn: Callable[..., object], *args: Any, **kwargs: Any) -> float:
    """Wall time of ``fn(*args, **kwargs)`` in seconds."""
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def wait_uapi(iface: str, timeout: float = 10.0) -> None:
    """Wait until wireguard-go accepts connections on its control socket."""
    path = f"/var/run/wireguard/{iface}.sock"
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(path)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"wireguard-go did not open {path}") from None
        time.sleep(0.01)


def wg_keypair() -> tuple[str, str]:
    """A key pair made the hand way, with `wg genkey | wg pubkey`."""
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True,
                         check=True).stdout
    return priv.strip(), pub.strip()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def ping_until(host: Host, addr: str, within: float = 15.0) -> None:
    """One ping after another (1 s timeout each) until ``addr`` answers."""
    deadline = time.monotonic() + within
    while True:
        res = host.run("ping", "-n", "-q", "-c", "1", "-W", "1", addr, check=False, timeout=10)
        if res.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host.name} cannot ping {addr} after {within:g} s")


def link_mtu(host: Host, iface: str) -> int:
    out = host.ip("-o", "link", "show", "dev", iface).stdout
    m = re.search(r"\bmtu (\d+)", out)
    if m is None:
        raise RuntimeError(f"no MTU for {iface} in {out!r}")
    return int(m.group(1))


def write_conf(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def hand_device_conf(priv: str, v4: str, v6: str, hub_pub: str, endpoint: str) -> str:
    """The wg-quick config a person would write by hand (same keys as CloudPal's, no DNS)."""
    return (
        "[Interface]\n"
        f"PrivateKey = {priv}\n"
        f"Address = {v4}/32, {v6}/128\n"
        f"MTU = {MTU}\n"
        "\n[Peer]\n"
        f"PublicKey = {hub_pub}\n"
        f"Endpoint = {endpoint}\n"
        f"AllowedIPs = 100.64.0.0/10, {HAND_V6}::/48\n"
        f"PersistentKeepalive = {KEEPALIVE}\n"
    )


# ---------------------------------------------------------------------- hubs


class CloudPalHub:
    """`cloudpal up` in a namespace; talked to over its control socket from here."""

    def __init__(self, host: Host, home: Path, iface: str, endpoint: str) -> None:
        self.host = host
        self.home = home
        self.iface = iface
        self.endpoint = endpoint
        self.proc: LabProcess | None = None
        self.client = ControlClient(home)

    def start(self, timeout: float = 30.0) -> float:
        t0 = time.perf_counter()
        self.proc = self.host.popen(CLOUDPAL, "--home", str(self.home), "up", "--interface",
                                    self.iface, "--endpoint", self.endpoint, env=env_with_path())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cloudpal up exited {self.proc.returncode}:\n"
                                   + self.proc.read_log())
            if (self.home / "control.sock").exists() and "ready" in self.proc.read_log():
                return time.perf_counter() - t0
            time.sleep(0.02)
        raise RuntimeError("cloudpal up did not become ready:\n" + self.proc.read_log())

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                print("net_bench: cloudpal up ignored SIGTERM for 20 s; killing it",
                      file=sys.stderr)
                proc.stop(1.0)
        if proc.returncode not in (0, None):
            print(f"net_bench: cloudpal up exited {proc.returncode}:\n{proc.read_log()[-2000:]}",
                  file=sys.stderr)

    def cli(self, *args: str) -> str:
        res = subprocess.run([CLOUDPAL, "--home", str(self.home), *args], capture_output=True,
                             text=True, timeout=60, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"cloudpal {shlex.join(args)} exited {res.returncode}: "
                               f"{res.stdout}{res.stderr}")
        return res.stdout

    def peers(self) -> int:
        out = self.host.run("wg", "show", self.iface, "peers").stdout
        return len(out.splitlines())


class HandHub:
    """A hub wired by hand: wireguard-go, `wg set`, `ip addr/route`, forwarding on."""

    def __init__(self, host: Host, iface: str, work: Path, port: int = WG_PORT,
                 forward: bool = True) -> None:
        self.host = host
        self.iface = iface
        self.work = work
        self.port = port
        self.forward = forward
        self.proc: LabProcess | None = None
        self.private, self.public = wg_keypair()

    def start(self) -> None:
        h = self.host
        if self.forward:
            # as CloudPal does: no redirects between spokes, set before the interface exists
            h.sysctl("net.ipv4.conf.default.send_redirects", "0")
            h.sysctl("net.ipv4.conf.all.send_redirects", "0")
        self.proc = h.popen("wireguard-go", "-f", self.iface, env=wg_env())
        wait_uapi(self.iface)
        key = write_conf(self.work / f"{self.iface}.key", self.private + "\n")
        h.run("wg", "set", self.iface, "private-key", str(key), "listen-port", str(self.port))
        if self.forward:
            h.ip("addr", "add", f"{HUB_OVERLAY}/10", "dev", self.iface)
            h.ip("addr", "add", f"{HAND_V6}::1/48", "dev", self.iface, "nodad")
            h.ip("link", "set", self.iface, "mtu", str(MTU), "up")
            h.sysctl("net.ipv4.ip_forward", "1")
            h.sysctl("net.ipv6.conf.all.forwarding", "1")

    def add_peer(self, pub: str, v4: str, v6: str) -> None:
        self.host.run("wg", "set", self.iface, "peer", pub, "allowed-ips", f"{v4}/32,{v6}/128")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


# ------------------------------------------------------------------ the bench


@dataclass
class Options:
    rounds: int
    seconds: int
    devices: int
    reps: int
    cli_devices: int


@dataclass
class Results:
    facts: dict[str, str] = field(default_factory=dict)
    tput: dict[str, list[float]] = field(default_factory=lambda: {"cloudpal": [], "hand": []})
    retrans: dict[str, list[int]] = field(default_factory=lambda: {"cloudpal": [], "hand": []})
    # CPU seconds used during the timed runs: hub wireguard-go of each setup, cloudpal's Python
    cpu: dict[str, float] = field(default_factory=lambda: {"cloudpal": 0.0, "hand": 0.0,
                                                           "node": 0.0})
    mtus: dict[str, int] = field(default_factory=dict)
    hub_start: float = 0.0
    add_cli: list[float] = field(default_factory=list)
    join_noup: list[float] = field(default_factory=list)
    join_up: list[float] = field(default_factory=list)
    join_up_cmd: list[float] = field(default_factory=list)
    hand_up: list[float] = field(default_factory=list)
    bulk_n: int = 0
    bulk_add: float = 0.0
    bulk_remove: float = 0.0
    bulk_add_each: list[float] = field(default_factory=list)  # seconds per request, in order
    bulk_remove_each: list[float] = field(default_factory=list)
    bulk_peers_before: int = 0
    bulk_peers_after_add: int = 0
    bulk_peers_after_remove: int = 0
    wg_add: float = 0.0
    wg_remove: float = 0.0
    wg_peers_after_add: int = 0
    cli_add: list[float] = field(default_factory=list)
    cli_revoke: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, lab: Lab, opts: Options, work: Path) -> None:
        self.lab = lab
        self.opts = opts
        self.work = work
        self.res = Results()
        self.cp_seg: Segment = lab.add_segment("cp", "198.18.0.0/24")
        self.hd_seg: Segment = lab.add_segment("hd", "198.18.1.0/24")
        self.join_hosts: list[Host] = []
        self.joins = 0

    # ---- topology -----------------------------------------------------------

    def host(self, name: str, seg: Segment, index: int) -> Host:
        h = self.lab.add_host(name)
        self.lab.connect(h, seg, seg.ip4(index))
        return h

    def build(self) -> None:
        lab = self.lab
        self.cp_hub_host = self.host("cphub", self.cp_seg, 1)
        self.cp_a = self.host("cpa", self.cp_seg, 11)
        self.cp_b = self.host("cpb", self.cp_seg, 12)
        self.hd_hub_host = self.host("hdhub", self.hd_seg, 1)
        self.hd_a = self.host("hda", self.hd_seg, 11)
        self.hd_b = self.host("hdb", self.hd_seg, 12)
        self.hd_c = self.host("hdc", self.hd_seg, 21)
        for h in (self.cp_a, self.cp_b, self.hd_a, self.hd_b, self.hd_c):
            h.write_resolv_conf("")

        self.cp = CloudPalHub(self.cp_hub_host, self.work / "home", lab.ifname("cph"),
                              f"{self.cp_seg.ip4(1)}:{WG_PORT}")
        self.res.hub_start = self.cp.start()
        self.hd = HandHub(self.hd_hub_host, lab.ifname("hdh"), self.work)
        self.hd.start()

        # CloudPal devices: the config `device add` prints, brought up by stock wg-quick
        self.cp_ifs = {"a": lab.ifname("cpa"), "b": lab.ifname("cpb")}
        for tag, h in (("a", self.cp_a), ("b", self.cp_b)):
            conf = self.cp.cli("device", "add", f"dev{tag}")
            path = write_conf(self.work / f"{self.cp_ifs[tag]}.conf", conf)
            h.run("wg-quick", "up", str(path), env=device_env())
        devs = {d["name"]: d for d in self.cp.client.call("GET", "/devices")}
        self.cp_b_addr = str(devs["devb"]["ipv4"])

        # hand devices: hand-written configs and hand-added peers
        self.hd_ifs = {"a": lab.ifname("hda"), "b": lab.ifname("hdb")}
        endpoint = f"{self.hd_seg.ip4(1)}:{WG_PORT}"
        for i, (tag, h) in enumerate((("a", self.hd_a), ("b", self.hd_b)), start=2):
            priv, pub = wg_keypair()
            v4, v6 = f"100.64.0.{i}", f"{HAND_V6}::{i}"
            self.hd.add_peer(pub, v4, v6)
            conf = hand_device_conf(priv, v4, v6, self.hd.public, endpoint)
            path = write_conf(self.work / f"{self.hd_ifs[tag]}.conf", conf)
            h.run("wg-quick", "up", str(path), env=device_env())
        self.hd_b_addr = "100.64.0.3"

        for label, a, b, addr in (("cloudpal", self.cp_a, self.cp_b, self.cp_b_addr),
                                  ("hand", self.hd_a, self.hd_b, self.hd_b_addr)):
            ping_until(a, addr)
            if not b.ping(HUB_OVERLAY):
                raise RuntimeError(f"{label}: device B cannot ping the hub")
        self.res.mtus = {
            "CloudPal hub": link_mtu(self.cp_hub_host, self.cp.iface),
            "CloudPal dev A": link_mtu(self.cp_a, self.cp_ifs["a"]),
            "CloudPal dev B": link_mtu(self.cp_b, self.cp_ifs["b"]),
            "hand hub": link_mtu(self.hd_hub_host, self.hd.iface),
            "hand dev A": link_mtu(self.hd_a, self.hd_ifs["a"]),
            "hand dev B": link_mtu(self.hd_b, self.hd_ifs["b"]),
        }
        if set(self.res.mtus.values()) != {MTU}:
            raise RuntimeError(f"MTUs differ, the comparison would be unfair: {self.res.mtus}")

    # ---- 1. throughput ------------------------------------------------------

    def iperf(self, client: Host, addr: str, seconds: int) -> tuple[float, int]:
        res = client.run("iperf3", "-c", addr, "-t", str(seconds), "-J", check=False,
                         timeout=seconds + 30)
        try:
            data = json.loads(res.stdout)
        except ValueError:
            raise RuntimeError(f"iperf3 gave no JSON: {res.stdout[-500:]}{res.stderr}") from None
        if "error" in data:
            raise RuntimeError(f"iperf3 -c {addr}: {data['error']}")
        end = data["end"]
        return float(end["sum_received"]["bits_per_second"]), int(end["sum_sent"]["retransmits"])

    def throughput(self) -> None:
        for h in (self.cp_b, self.hd_b):
            h.popen("iperf3", "-s")
        for h in (self.cp_b, self.hd_b):
            deadline = time.monotonic() + 10
            while not h.run("ss", "-Hltn", "sport = :5201").stdout.strip():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"iperf3 server in {h.name} did not start")
                time.sleep(0.05)
        setups = {"cloudpal": (self.cp_a, self.cp_b_addr), "hand": (self.hd_a, self.hd_b_addr)}
        assert self.cp.proc is not None and self.hd.proc is not None
        node_pid = self.cp.proc.pid
        wg_pids = {"cloudpal": child_pids(node_pid), "hand": [self.hd.proc.pid]}
        for client, addr in setups.values():  # warm-up: handshakes, page cache, CPU clocks
            self.iperf(client, addr, 1)
        for r in range(self.opts.rounds):
            order = ["cloudpal", "hand"] if r % 2 == 0 else ["hand", "cloudpal"]
            for name in order:
                client, addr = setups[name]
                before = sum(cpu_seconds(p) for p in wg_pids[name]), cpu_seconds(node_pid)
                bps, retr = self.iperf(client, addr, self.opts.seconds)
                self.res.cpu[name] += sum(cpu_seconds(p) for p in wg_pids[name]) - before[0]
                if name == "cloudpal":
                    self.res.cpu["node"] += cpu_seconds(node_pid) - before[1]
                self.res.tput[name].append(bps / 1e6)
                self.res.retrans[name].append(retr)
                print(f"  round {r + 1}/{self.opts.rounds} {name:8s} {bps / 1e6:7.1f} Mbit/s",
                      file=sys.stderr)

    # ---- 2. enrollment ------------------------------------------------------

    def join_host(self) -> Host:
        """A fresh device namespace every few joins, to stay under the per-address limit."""
        k = self.joins // JOINS_PER_HOST
        self.joins += 1
        while len(self.join_hosts) <= k:
            n = len(self.join_hosts)
            h = self.host(f"cpj{n}", self.cp_seg, 21 + n)
            h.write_resolv_conf("")
            self.join_hosts.append(h)
        return self.join_hosts[k]

    def invite(self) -> tuple[str, str]:
        inv = self.cp.client.call("POST", "/invites", {"uses": 1, "ttl": "10m"})
        return str(inv["url"]), str(inv["code"])

    def enrollment(self) -> None:
        reps = self.opts.reps
        for i in range(reps):
            self.res.add_cli.append(timed(self.cp.cli, "device", "add", f"e{i}"))
        for i in range(reps):
            h = self.join_host()
            url, code = self.invite()
            cdir = self.work / "join" / f"n{i}"
            argv = [CLOUDPAL, "join", url, code, "--no-up", "--config-dir", str(cdir),
                    "--name", f"n{i}"]
            self.res.join_noup.append(timed(h.run, *argv, env=device_env()))
        for i in range(reps):
            steps = [self.join_up_once, self.hand_up_once]
            for step in steps if i % 2 == 0 else steps[::-1]:
                step(i)

    def join_up_once(self, i: int) -> None:
        h = self.join_host()
        url, code = self.invite()
        iface = self.lab.ifname(f"j{i}")
        cdir = self.work / "join" / f"u{i}"
        t0 = time.perf_counter()
        h.run(CLOUDPAL, "join", url, code, "--config-dir", str(cdir), "--name", f"u{i}",
              "--interface", iface, env=device_env())
        t1 = time.perf_counter()
        ping_until(h, HUB_OVERLAY)
        t2 = time.perf_counter()
        self.res.join_up_cmd.append(t1 - t0)
        self.res.join_up.append(t2 - t0)
        h.run("wg-quick", "down", str(cdir / f"{iface}.conf"), env=device_env())

    def hand_up_once(self, i: int) -> None:
        h = self.hd_c
        iface = self.lab.ifname(f"k{i}")
        v4, v6 = f"100.64.1.{i + 2}", f"{HAND_V6}::1:{i + 2:x}"
        path = self.work / "hand" / f"{iface}.conf"
        endpoint = f"{self.hd_seg.ip4(1)}:{WG_PORT}"
        t0 = time.perf_counter()
        priv, pub = wg_keypair()
        self.hd.add_peer(pub, v4, v6)
        write_conf(path, hand_device_conf(priv, v4, v6, self.hd.public, endpoint))
        h.run("wg-quick", "up", str(path), env=device_env())
        ping_until(h, HUB_OVERLAY)
        self.res.hand_up.append(time.perf_counter() - t0)
        h.run("wg-quick", "down", str(path), env=device_env())
        self.hd.host.run("wg", "set", self.hd.iface, "peer", pub, "remove")

    # ---- 3. many devices ----------------------------------------------------

    def bulk(self) -> None:
        n = self.opts.devices
        r = self.res
        r.bulk_n = n
        call = self.cp.client.call
        r.bulk_peers_before = self.cp.peers()
        t0 = time.perf_counter()
        for i in range(n):
            r.bulk_add_each.append(timed(call, "POST", "/devices", {"name": f"b{i}"}))
        r.bulk_add = time.perf_counter() - t0
        r.bulk_peers_after_add = self.cp.peers()
        registered = len(call("GET", "/devices"))
        expected = r.bulk_peers_before + n
        if r.bulk_peers_after_add != expected or registered != r.bulk_peers_after_add:
            r.notes.append(f"after adding {n} devices the hub has {r.bulk_peers_after_add} "
                           f"WireGuard peers and {registered} devices "
                           f"(expected {r.bulk_peers_before + n})")
        t0 = time.perf_counter()
        for i in range(n):
            r.bulk_remove_each.append(timed(call, "POST", f"/devices/b{i}/revoke"))
        r.bulk_remove = time.perf_counter() - t0
        r.bulk_peers_after_remove = self.cp.peers()
        if r.bulk_peers_after_remove != r.bulk_peers_before:
            r.notes.append(f"after revoking them the hub still has {r.bulk_peers_after_remove} "
                           f"peers (expected {r.bulk_peers_before})")

    def bulk_anchor(self) -> None:
        """One `wg set` per peer on a bare wireguard-go interface (from the root namespace:
        the UAPI socket is global, so no `ip netns exec` cost is counted)."""
        n = self.opts.devices
        bare = HandHub(self.hd_hub_host, self.lab.ifname("bare"), self.work, port=WG_PORT + 1,
                       forward=False)
        bare.start()
        pubs = [keys.public_key(keys.generate_private_key()) for _ in range(n)]
        env = env_with_path()

        def wg(*args: str) -> None:
            subprocess.run(["wg", *args], check=True, env=env, stdout=subprocess.DEVNULL)

        t0 = time.perf_counter()
        for i, pub in enumerate(pubs, start=2):
            wg("set", bare.iface, "peer", pub, "allowed-ips",
               f"100.64.{i >> 8}.{i & 255}/32,{HAND_V6}::{i:x}/128")
        self.res.wg_add = time.perf_counter() - t0
        out = self.hd_hub_host.run("wg", "show", bare.iface, "peers").stdout
        self.res.wg_peers_after_add = len(out.splitlines())
        t0 = time.perf_counter()
        for pub in pubs:
            wg("set", bare.iface, "peer", pub, "remove")
        self.res.wg_remove = time.perf_counter() - t0
        bare.stop()

    def cli_devices(self) -> None:
        n = self.opts.cli_devices
        for i in range(n):
            self.res.cli_add.append(timed(self.cp.cli, "device", "add", f"c{i}"))
        for i in range(n):
            self.res.cli_revoke.append(timed(self.cp.cli, "device", "revoke", f"c{i}"))

    def run(self) -> Results:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("building the lab (2 hubs, 5 devices)", self.build),
            (f"throughput: {self.opts.rounds} rounds x {self.opts.seconds} s per setup",
             self.throughput),
            (f"enrollment: {self.opts.reps} repetitions each", self.enrollment),
            (f"anchor: {self.opts.devices} peers with wg set", self.bulk_anchor),
            (f"{self.opts.devices} devices via the control API", self.bulk),
            (f"{self.opts.cli_devices} devices via the CLI", self.cli_devices),
        ]
        try:
            for what, fn in steps:
                t0 = time.perf_counter()
                print(f"net_bench: {what} ...", file=sys.stderr)
                fn()
                print(f"net_bench:   done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        finally:
            if hasattr(self, "cp"):
                self.cp.stop()
            if hasattr(self, "hd"):
                self.hd.stop()
        return self.res


# ------------------------------------------------------------------ reporting


def machine_facts() -> dict[str, str]:
    def first_line(argv: Sequence[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, check=False,
                                 env=env_with_path())
        except OSError:
            return "?"
        lines = (out.stdout or out.stderr).strip().splitlines()
        return lines[0] if lines else "?"

    cpu = cpu_model()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "wireguard-go": first_line(["wireguard-go", "--version"]).split()[-1],
        "wireguard-go binary": shutil.which("wireguard-go", path=env_with_path()["PATH"]) or "?",
        "wireguard-tools": first_line(["wg", "--version"]).split()[1],
        "iperf3": first_line(["iperf3", "--version"]),
        "python": platform.python_version(),
    }


def render(res: Results, opts: Options, command: str, when: str) -> str:
    f = res.facts
    cp, hd = Stats(res.tput["cloudpal"]), Stats(res.tput["hand"])
    n = res.bulk_n
    rows: list[tuple[str, str, str, str]] = []

    def row(what: str, mine: str, anchor: str, r: str) -> None:
        rows.append((what, mine, anchor, r))

    def gbit(mbps: list[float]) -> float:
        return sum(mbps) * opts.seconds / 1000

    row(f"TCP device→hub→device, Mbit/s: median (min–max), {opts.rounds}×{opts.seconds} s",
        f"{cp.median:.1f} ({cp.min:.1f}–{cp.max:.1f})",
        f"{hd.median:.1f} ({hd.min:.1f}–{hd.max:.1f})",
        f"**{cp.median / hd.median:.2f}** (target ≥ 0.95)")
    paired = [a / b for a, b in zip(res.tput["cloudpal"], res.tput["hand"], strict=True)]
    row("  same, median of the per-round ratios (pairs run back to back)", "–", "–",
        f"{statistics.median(paired):.2f} ({min(paired):.2f}–{max(paired):.2f})")
    cpu_cp = res.cpu["cloudpal"] / gbit(res.tput["cloudpal"])
    cpu_hd = res.cpu["hand"] / gbit(res.tput["hand"])
    row("  hub wireguard-go CPU seconds per Gbit carried (incl. kernel forwarding)",
        f"{cpu_cp:.2f}", f"{cpu_hd:.2f}", ratio(cpu_cp, cpu_hd))
    add, noup = Stats(res.add_cli), Stats(res.join_noup)
    up, hand = Stats(res.join_up), Stats(res.hand_up)
    upcmd = Stats(res.join_up_cmd)
    row("`cloudpal device add` (CLI), ms: median / p95",
        f"{fmt_ms(add.median)} / {fmt_ms(add.p95)}", "–", "–")
    row("`cloudpal join --no-up` in a device netns, ms: median / p95",
        f"{fmt_ms(noup.median)} / {fmt_ms(noup.p95)}", "–", "–")
    row("join + `wg-quick up` + first ping to the hub, ms: median / p95",
        f"{fmt_ms(up.median)} / {fmt_ms(up.p95)}",
        f"{fmt_ms(hand.median)} / {fmt_ms(hand.p95)}",
        f"{up.median / hand.median:.2f}")
    row("  of which the `cloudpal join` command, ms: median",
        f"{fmt_ms(upcmd.median)}", "–", "–")
    row(f"add {n} devices (API / `wg set` per peer), s total",
        f"{res.bulk_add:.2f}", f"{res.wg_add:.2f}", ratio(res.bulk_add, res.wg_add))
    row("  per device, ms", fmt_ms(res.bulk_add / n), fmt_ms(res.wg_add / n),
        ratio(res.bulk_add, res.wg_add))
    row(f"remove {n} devices (API revoke / `wg set … remove`), s total",
        f"{res.bulk_remove:.2f}", f"{res.wg_remove:.2f}", ratio(res.bulk_remove, res.wg_remove))
    row("  per device, ms", fmt_ms(res.bulk_remove / n), fmt_ms(res.wg_remove / n),
        ratio(res.bulk_remove, res.wg_remove))
    tenth = max(1, n // 10)
    for what, each in (("add", res.bulk_add_each), ("remove", res.bulk_remove_each)):
        first, last = Stats(each[:tenth]), Stats(each[-tenth:])
        row(f"  {what}: API request latency, first {tenth} → last {tenth} requests, "
            "ms median", f"{fmt_ms(first.median)} → {fmt_ms(last.median)}", "–", "–")
    ca, cr = Stats(res.cli_add), Stats(res.cli_revoke)
    row(f"`cloudpal device add` ×{len(res.cli_add)} via CLI, ms per command: median / p95",
        f"{fmt_ms(ca.median)} / {fmt_ms(ca.p95)}", "–", "–")
    row(f"`cloudpal device revoke` ×{len(res.cli_revoke)} via CLI, ms: median / p95",
        f"{fmt_ms(cr.median)} / {fmt_ms(cr.p95)}", "–", "–")

    out = ["## Network benchmark results", ""]
    out.append(f"Produced by `{command}` on {when}.")
    out.append("")
    out.append(f"Machine: nproc {f['nproc']} ({f['cpu']}), kernel {f['kernel']}, "
               f"wireguard-go {f['wireguard-go']} ({f['wireguard-go binary']}), "
               f"wireguard-tools {f['wireguard-tools']}, {f['iperf3']}, Python {f['python']}; "
               f"1-minute load average {f['load before']} at the start and {f['load after']} "
               "at the end (the machine is shared: other load shows up here).")
    out.append("")
    out.append("| Measurement | CloudPal | Anchor (by hand) | Ratio CloudPal/anchor |")
    out.append("|---|---:|---:|---:|")
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    out.append("")
    per = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(res.tput["cloudpal"], res.tput["hand"],
                                                        strict=True))
    out.append(f"- Throughput per round, CloudPal/hand Mbit/s (CloudPal ran first in rounds "
               f"1, 3, 5…, hand in rounds 2, 4…): {per}. TCP retransmits, median: CloudPal "
               f"{statistics.median(res.retrans['cloudpal']):.0f}, hand "
               f"{statistics.median(res.retrans['hand']):.0f}.")
    busy = opts.rounds * opts.seconds / 100  # CPU seconds -> percent of one core
    out.append(f"- CPU of the hub during the timed runs, in % of one core: wireguard-go "
               f"{res.cpu['cloudpal'] / busy:.0f}% (CloudPal) vs {res.cpu['hand'] / busy:.0f}% "
               f"(hand); the `cloudpal up` Python process {res.cpu['node'] / busy:.1f}%. "
               "Forwarding, nftables and conntrack on the hub run largely in the wireguard-go "
               "threads that write packets to the TUN device, so the firewall's cost shows up "
               "in the CPU-per-Gbit row.")
    out.append(f"- All six WireGuard interfaces had MTU {MTU}; devices keep alive every "
               f"{KEEPALIVE} s in both setups; the hand hub has no nftables ruleset.")
    out.append(f"- Peers after adding {n} devices: `wg show` counted "
               f"{res.bulk_peers_after_add} on the CloudPal hub "
               f"({res.bulk_peers_before} before, {res.bulk_peers_after_remove} after removing "
               f"them) and {res.wg_peers_after_add} on the bare interface.")
    out.append(f"- `cloudpal up` took {res.hub_start:.2f} s from process start to \"ready\".")
    out.append(f"- Enrollment: {len(res.add_cli)} repetitions each; p95 is nearest-rank. "
               "`device add` runs in the root namespace; `join` runs under `ip netns exec` in "
               "a device namespace (a few ms of that is namespace entry). Join-with-up and its "
               "anchor were interleaved. The anchor is `wg genkey`/`wg pubkey`, `wg set` of the "
               "peer on the hand hub, writing the config, `wg-quick up` and the ping loop "
               "(`ping -c 1 -W 1` repeated).")
    out.append("- Many devices: one control-API request per device from a single client, "
               "sequentially; the anchor runs one `wg` process per peer from the root namespace "
               "(the wireguard-go socket is global, so no `ip netns exec`).")
    out += [f"- **Note:** {note}" for note in res.notes]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=10, help="throughput rounds per setup")
    ap.add_argument("--seconds", type=int, default=5, help="seconds per iperf3 run")
    ap.add_argument("--devices", type=int, default=1000, help="devices to add and remove")
    ap.add_argument("--reps", type=int, default=10, help="repetitions of each enrollment")
    ap.add_argument("--cli-devices", type=int, default=20, help="devices added via the CLI")
    ap.add_argument("--quick", action="store_true", help="small numbers, for a smoke run")
    ap.add_argument("--write", type=Path, metavar="FILE",
                    help="replace the results section of FILE (e.g. docs/benchmarks.md)")
    args = ap.parse_args(argv)
    if args.quick:
        opts = Options(rounds=2, seconds=2, devices=50, reps=3, cli_devices=5)
    else:
        opts = Options(args.rounds, args.seconds, args.devices, args.reps, args.cli_devices)
    if min(opts.rounds, opts.seconds, opts.devices, opts.reps, opts.cli_devices) < 1:
        ap.error("every count must be at least 1")
    require_root_tools(*TOOLS)
    Lab.cleanup_stale()
    command = report.display_command()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = f"{os.getloadavg()[0]:.2f}"
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="net-bench-"))
    try:
        with Lab() as lab:
            res = Bench(lab, opts, work).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res.facts = machine_facts()
    res.facts["load before"] = load_before
    res.facts["load after"] = f"{os.getloadavg()[0]:.2f}"
    body = render(res, opts, command, when)
    print()
    print(body)
    print(f"net_bench: finished in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.write:
        report.write_section(args.write, body, MARK_START, MARK_END)
        print(f"net_bench: wrote the results section of {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
