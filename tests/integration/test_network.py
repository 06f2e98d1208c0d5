"""The personal network end to end: a real hub, stock wg-quick devices, real packets.

Tests run in file order and share one hub; each leaves the network as it found it
unless it says otherwise.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Hub, device_env, wait_for, wg_quick_up

from netlab import Host, Lab

HUB_UL = "198.18.0.1"
INET_HUB = "198.19.0.1"
INET_HOST = "198.19.0.2"


@dataclass
class Net:
    lab: Lab
    hub: Hub
    hub_host: Host
    inet: Host
    devices: dict[str, Host]
    work: Path
    configs: dict[str, str] = field(default_factory=dict)
    ifaces: dict[str, str] = field(default_factory=dict)

    def addr(self, name: str, family: int = 4) -> str:
        devs = json.loads(self.hub.cli("device", "ls", "--json").stdout)
        dev = next(d for d in devs if d["name"] == name)
        return str(dev["ipv4" if family == 4 else "ipv6"])

    def up(self, name: str, config: str) -> None:
        iface = f"{self.lab.prefix}{name}"[:15]
        self.ifaces[name] = iface
        self.configs[name] = config
        wg_quick_up(self.devices[name], self.work, iface, config)


@pytest.fixture(scope="module")
def net(lab: Lab) -> Iterator[Net]:
    ul = lab.add_segment("ul", "198.18.0.0/24", "2001:db8:18::/64")
    inet_seg = lab.add_segment("in", "198.19.0.0/24", "2001:db8:19::/64")
    hub_host = lab.add_host("hub")
    lab.connect(hub_host, ul, HUB_UL, "2001:db8:18::1")
    lab.connect(hub_host, inet_seg, INET_HUB, "2001:db8:19::1", ifname="eth1")
    hub_host.set_default_route(INET_HOST, "2001:db8:19::2")
    inet = lab.add_host("inet")
    lab.connect(inet, inet_seg, INET_HOST, "2001:db8:19::2")
    devices = {}
    for i, name in enumerate(("d1", "d2", "d3", "d4", "d5", "d6"), start=11):
        host = lab.add_host(name)
        lab.connect(host, ul, f"198.18.0.{i}", f"2001:db8:18::{i}")
        host.write_resolv_conf("")
        devices[name] = host
    work = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-"))
    hub = Hub(hub_host, work / "home", f"{lab.prefix}h",
              ["--interface", f"{lab.prefix}h", "--endpoint", f"{HUB_UL}:51820"])
    hub.start()
    n = Net(lab, hub, hub_host, inet, devices, work)
    try:
        for name in ("d1", "d2", "d3"):
            n.up(name, hub.cli("device", "add", name).stdout)
        yield n
    finally:
        for name, iface in n.ifaces.items():
            devices[name].run("wg-quick", "down", str(work / f"{iface}.conf"), check=False,
                              env=device_env())
        if hub.proc is not None:
            hub.stop()


def test_devices_ping_each_other_through_the_hub(net: Net) -> None:
    d1, d3 = net.devices["d1"], net.devices["d3"]
    for family in (4, 6):
        dst = net.addr("d2", family)
        assert wait_for(lambda dst=dst: d1.ping(dst), 10), f"d1 cannot ping d2 at {dst}"
        assert d3.ping(dst), f"d3 cannot ping d2 at {dst}"
    assert d1.ping("100.64.0.1") and d1.ping(net.addr("d3", 6))


def test_status_and_device_list(net: Net) -> None:
    st = json.loads(net.hub.cli("status", "--json").stdout)
    assert st["endpoint"] == f"{HUB_UL}:51820"
    assert st["addresses"][0] == "100.64.0.1" and st["addresses"][1].startswith("fd")
    assert st["backend"] == "wireguard-go"
    assert st["devices"] == 3 and set(st["online"]) == {"d1", "d2", "d3"}
    human = net.hub.cli("status").stdout
    assert "3 online" in human and f"{HUB_UL}:51820" in human
    table = net.hub.cli("device", "ls").stdout
    assert re.search(r"d1\s+100\.64\.0\.2\s+fd[0-9a-f:]+::2\s+online\s+\d+s ago", table), table
    devs = json.loads(net.hub.cli("device", "ls", "--json").stdout)
    assert all(d["rx_bytes"] > 0 and d["tx_bytes"] > 0 for d in devs)


def test_names_resolve_through_the_hub_dns(net: Net) -> None:
    d1 = net.devices["d1"]
    out = d1.run("getent", "ahostsv4", "d2.pal").stdout
    assert out.split()[0] == net.addr("d2")
    out = d1.run("getent", "ahostsv6", "d3.pal").stdout
    assert out.split()[0] == net.addr("d3", 6)
    out = d1.run("getent", "hosts", "node.pal").stdout
    assert out.split()[0] in ("100.64.0.1", json.loads(net.hub.cli("status", "--json").stdout)
                              ["addresses"][1])
    dig = d1.run("dig", "@100.64.0.1", "nosuch.pal", "A").stdout
    assert "status: NXDOMAIN" in dig
    assert d1.run("getent", "hosts", "nosuch.pal", check=False).returncode != 0
    # the search domain from the config makes bare names work too
    assert d1.run("getent", "ahostsv4", "d2").stdout.split()[0] == net.addr("d2")


def test_qr_code_decodes_to_the_exact_config(net: Net) -> None:
    png = net.work / "d1.png"
    net.hub.cli("device", "config", "d1", "--qr", str(png))
    out = subprocess.run(["zbarimg", "--raw", "-q", "-Sdisable", "-Sqrcode.enable", str(png)],
                         capture_output=True, text=True, check=True).stdout
    assert out.rstrip("\n") == net.configs["d1"].rstrip("\n")
    term = net.hub.cli("device", "config", "d1", "--qr-terminal").stdout
    assert len(term.splitlines()) > 10


def test_acl_deny_refuses_while_other_traffic_passes(net: Net) -> None:
    d1, d2, d3 = (net.devices[n] for n in ("d1", "d2", "d3"))
    server = d1.popen("python3", "-c", TCP_ECHO, "8080")
    try:
        d1_ip = net.addr("d1")
        assert wait_for(lambda: tcp_ok(d2, d1_ip, 8080), 5), "no TCP to d1 before the policy"
        policy = net.work / "policy.toml"
        policy.write_text(POLICY)
        out = net.hub.cli("acl", "apply", str(policy))
        assert "policy applied" in out.stdout
        assert not tcp_ok(d3, d1_ip, 8080), "d3 reached d1:8080 although the policy denies it"
        assert tcp_ok(d2, d1_ip, 8080), "d2 lost d1:8080 although the policy allows it"
        assert d3.ping(net.addr("d2")), "icmp d3 -> d2 is allowed and must pass"
        assert not d3.ping(d1_ip), "icmp d3 -> d1 is denied"
        check = net.hub.cli("acl", "check", "d3", "d1", "8080", check=False)
        assert check.returncode == 1 and check.stdout.startswith("deny")
        check = net.hub.cli("acl", "check", "d2", "d1", "8080")
        assert check.stdout.startswith("allow") and "rule 1" in check.stdout
        # an invalid policy is refused with its line, and the old one stays in force
        bad = net.work / "bad.toml"
        bad.write_text(POLICY + '\n[[allow]]\nfrom = ["group:nope"]\nto = ["*"]\n')
        res = net.hub.cli("acl", "apply", str(bad), check=False)
        assert res.returncode == 2
        assert re.fullmatch(r"cloudpal: error: bad\.toml line 1[0-9]: .*nope.*\n", res.stderr), res.stderr
        assert not tcp_ok(d3, d1_ip, 8080)
        assert tcp_ok(d2, d1_ip, 8080)
    finally:
        server.terminate()
        default = net.work / "default.toml"
        default.write_text('[[allow]]\nfrom = ["*"]\nto = ["*"]\n')
        net.hub.cli("acl", "apply", str(default))
    assert tcp_ok(d3, net.addr("d1"), 8080) is False  # server is gone: refused, not hanging
    assert d3.ping(net.addr("d1"))


def test_full_tunnel_reaches_the_internet_through_nat(net: Net) -> None:
    d4 = net.devices["d4"]
    assert not d4.ping(INET_HOST), "d4 reaches the internet without the tunnel: bad topology"
    net.up("d4", net.hub.cli("device", "add", "d4", "--full-tunnel").stdout)
    assert "AllowedIPs = 0.0.0.0/0, ::/0" in net.configs["d4"]
    assert wait_for(lambda: d4.ping(INET_HOST), 10), "full-tunnel d4 cannot reach the internet"
    assert d4.ping("2001:db8:19::2"), "full-tunnel d4 cannot reach the IPv6 internet (NAT66)"
    server = net.inet.popen("python3", "-c", TCP_PEER, "9090")
    try:
        assert wait_for(lambda: tcp_ok(d4, INET_HOST, 9090), 5)
        seen = d4.run("python3", "-c", TCP_READ, INET_HOST, "9090").stdout.strip()
        assert seen == INET_HUB, f"internet saw {seen}, not the hub's NAT address"
    finally:
        server.terminate()
    # a device without the full tunnel may not use the hub as its exit, even if it tries
    d1, iface = net.devices["d1"], net.ifaces["d1"]
    st = json.loads(net.hub.cli("status", "--json").stdout)
    d1.run("wg", "set", iface, "peer", st["public_key"], "allowed-ips",
           f"{st['ipv4_range']},{st['ipv6_range']},{INET_HOST}/32")
    d1.run("ip", "route", "add", f"{INET_HOST}/32", "dev", iface)
    try:
        assert d1.ping("100.64.0.1")
        assert not d1.ping(INET_HOST), "a split-tunnel device used the hub as its exit"
    finally:
        d1.run("ip", "route", "del", f"{INET_HOST}/32", check=False)
        d1.run("wg", "set", iface, "peer", st["public_key"], "allowed-ips",
               f"{st['ipv4_range']},{st['ipv6_range']}")


def test_join_with_an_invite(net: Net) -> None:
    d5 = net.devices["d5"]
    code = net.hub.cli("invite", "create", "--uses", "1", "--ttl", "10m").stdout.strip()
    url = f"http://{HUB_UL}:51820"
    iface = f"{net.lab.prefix}j"
    res = d5.run(CLOUDPAL_BIN(), "join", url, code, "--name", "d5", "--interface", iface,
                 "--config-dir", str(net.work), check=False, env=device_env())
    assert res.returncode == 0, res.stderr
    net.ifaces["d5"] = iface
    assert wait_for(lambda: d5.ping(net.addr("d1")), 10), "joined device cannot reach d1"
    conf = (net.work / f"{iface}.conf").read_text()
    private = re.search(r"^PrivateKey = (\S+)$", conf, re.M)
    assert private, conf
    # the private key never left the device: the hub has no copy anywhere in its home
    hub_view = net.hub.cli("device", "config", "d5").stdout
    assert not re.search(r"^PrivateKey", hub_view, re.M)
    for f in net.hub.home.iterdir():
        if f.is_file():
            assert private.group(1).encode() not in f.read_bytes(), f
    assert d5.run("getent", "ahostsv4", "d1.pal").stdout.split()[0] == net.addr("d1")
    # used, wrong and expired codes are refused clearly
    again = d5.run(CLOUDPAL_BIN(), "join", url, code, "--name", "x", "--no-up",
                   "--config-dir", str(net.work / "x"), check=False)
    assert again.returncode == 2 and "already been used" in again.stderr
    wrong = code[:-4] + ("aaaa" if not code.endswith("aaaa") else "bbbb")
    res = d5.run(CLOUDPAL_BIN(), "join", url, wrong, "--name", "y", "--no-up",
                 "--config-dir", str(net.work / "y"), check=False)
    assert res.returncode == 2 and "invite code is wrong" in res.stderr
    assert res.stderr.count("\n") == 1
    # guessing codes is rate-limited; garbage is refused, not crashed on
    codes = d5.run("python3", "-c", POST_GARBAGE, f"{url}/v1/enroll", "15").stdout.split()
    assert codes[0] == "400" and "429" in codes, codes


def test_device_that_keeps_its_own_key(net: Net) -> None:
    d6 = net.devices["d6"]
    private = d6.run("wg", "genkey").stdout.strip()
    public = d6.run("wg", "pubkey", input=private + "\n").stdout.strip()
    conf = net.hub.cli("device", "add", "d6", "--pubkey", public).stdout
    assert not re.search(r"^PrivateKey", conf, re.M)
    conf = conf.replace("[Interface]\n", f"[Interface]\nPrivateKey = {private}\n", 1)
    net.up("d6", conf)
    assert wait_for(lambda: d6.ping(net.addr("d1")), 10), "own-key device cannot reach d1"
    assert d6.ping(net.addr("d2", 6))


def test_revoked_device_stops_within_one_second(net: Net) -> None:
    d2 = net.devices["d2"]
    pub = next(d["public_key"] for d in json.loads(net.hub.cli("device", "ls", "--json").stdout)
               if d["name"] == "d2")
    target = net.addr("d1")
    pinger = d2.popen("ping", "-D", "-n", "-i", "0.05", "-W", "1", target)
    time.sleep(1.0)
    t0 = time.time()
    net.hub.cli("device", "revoke", "d2")
    time.sleep(2.0)
    pinger.terminate()
    pinger.wait(5)
    times = [float(m) for m in re.findall(r"^\[(\d+\.\d+)\].*bytes from", read_log(pinger), re.M)]
    assert times and times[0] < t0, "d2 was not reaching d1 before the revoke"
    last = max(times)
    assert last - t0 < 1.0, f"d2 still reached d1 {last - t0:.2f} s after revoke"
    res = net.hub.cli("device", "add", "d2again", "--pubkey", pub, check=False)
    assert res.returncode == 2 and "revoked" in res.stderr
    assert "d2" not in {d["name"] for d in json.loads(net.hub.cli("device", "ls", "--json").stdout)}


def test_restart_keeps_every_device_working(net: Net) -> None:
    hub = net.hub
    before = json.loads(hub.cli("status", "--json").stdout)
    assert hub.stop() == 0
    # nothing left behind: interface, firewall table, wireguard-go, control socket
    links = net.hub_host.run("ip", "-o", "link").stdout
    assert hub.iface not in links
    assert f"cloudpal_{hub.iface}" not in net.hub_host.run("nft", "list", "tables").stdout
    assert not (hub.home / "control.sock").exists()
    assert subprocess.run(["pgrep", "-f", f"wireguard-go -f {hub.iface}"],
                          capture_output=True).returncode == 1
    hub.start(extra=[])  # everything else comes from the home directory
    after = json.loads(hub.cli("status", "--json").stdout)
    for key in ("public_key", "addresses", "endpoint", "ipv6_range", "interface"):
        assert after[key] == before[key], key
    d1 = net.devices["d1"]
    t0 = time.monotonic()
    for name in ("d3", "d4", "d5"):
        dst = net.addr(name, 6 if name == "d3" else 4)
        assert wait_for(lambda dst=dst: d1.ping(dst, timeout=1), 30), f"d1 lost {name}"
    assert d1.run("getent", "ahostsv4", "d3.pal").stdout.split()[0] == net.addr("d3")
    assert wait_for(lambda: net.devices["d4"].ping(INET_HOST, timeout=1), 30)
    print(f"devices back {time.monotonic() - t0:.2f} s after restart")


def test_expiry_and_renew(net: Net) -> None:
    d3 = net.devices["d3"]
    d1_ip = net.addr("d1")
    net.hub.cli("device", "renew", "d3", "--expires", "2s")
    assert wait_for(lambda: not d3.ping(d1_ip, timeout=0.5), 6), "expired d3 still reaches d1"
    states = {d["name"]: d["state"] for d in json.loads(net.hub.cli("device", "ls", "--json").stdout)}
    assert states["d3"] == "expired"
    net.hub.cli("device", "renew", "d3", "--never")
    assert wait_for(lambda: d3.ping(d1_ip, timeout=1), 30), "renewed d3 cannot reach d1"


def test_rename_updates_dns(net: Net) -> None:
    net.hub.cli("device", "rename", "d3", "desk")
    d1 = net.devices["d1"]
    assert d1.run("getent", "ahostsv4", "desk.pal").stdout.split()[0] == net.addr("desk")
    assert d1.run("getent", "hosts", "d3.pal", check=False).returncode != 0
    net.hub.cli("device", "rename", "desk", "d3")


def _registry_view(net: Net) -> list[tuple[str, str, str, str]]:
    devs = json.loads(net.hub.cli("device", "ls", "--json").stdout)
    return [(d["name"], d["ipv4"], d["ipv6"], d["public_key"]) for d in devs]


def test_bad_input_gets_one_line_and_exit_2(net: Net) -> None:
    before = _registry_view(net)
    for args, words in (
        (["device", "add", "Bad_Name"], "invalid device name"),
        (["device", "add", "d1"], "already exists"),
        (["device", "add", "node"], "taken by the node"),
        (["device", "add", "k", "--pubkey", "abc"], "malformed public key"),
        (["device", "add", "k", "--expires", "soon"], "invalid duration"),
        (["device", "revoke", "ghost"], "no device named"),
        (["acl", "check", "ghost", "d1", "22"], "ghost"),
        (["invite", "create", "--ttl", "x"], "invalid duration"),
    ):
        res = net.hub.cli(*args, check=False)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert words in res.stderr and res.stderr.count("\n") == 1, (args, res.stderr)
    corrupt = net.work / "corrupt.toml"
    corrupt.write_bytes(b"[[allow]\nfrom = \xff\n")
    res = net.hub.cli("acl", "apply", str(corrupt), check=False)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert _registry_view(net) == before


def test_concurrent_cli_calls_do_not_corrupt_state(net: Net) -> None:
    from conftest import CLOUDPAL

    procs = [subprocess.Popen([CLOUDPAL, "--home", str(net.hub.home), "device", "add", f"c{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(20)]
    outs = [p.communicate(60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    devs = json.loads(net.hub.cli("device", "ls", "--json").stdout)
    addrs = [d["ipv4"] for d in devs]
    assert len(addrs) == len(set(addrs))
    peers = net.hub_host.run("wg", "show", net.hub.iface, "peers").stdout.split()
    assert len(peers) == len([d for d in devs if d["state"] != "expired"])
    for i in range(20):
        net.hub.cli("device", "revoke", f"c{i}")


# ---- small helpers run inside namespaces ------------------------------------

def CLOUDPAL_BIN() -> str:
    from conftest import CLOUDPAL

    return CLOUDPAL


def tcp_ok(host: Host, addr: str, port: int) -> bool:
    res = host.run("python3", "-c", TCP_CONNECT, addr, str(port), check=False, timeout=10)
    return res.returncode == 0


def read_log(proc: subprocess.Popen[str]) -> str:
    path = getattr(proc, "log_path", None)
    assert path is not None, "netlab popen must record log_path"
    return Path(path).read_text()


POLICY = """\
# d2 may use d1's web port; d3 may only ping d2
[groups]
trusted = ["d2"]

[[allow]]
from = ["group:trusted", "d4", "d5"]
to = ["*"]

[[allow]]
from = ["d3"]
to = ["d2"]
proto = "icmp"

[[allow]]
from = ["d1"]
to = ["*"]
"""

POST_GARBAGE = """
import sys, urllib.request, urllib.error
for _ in range(int(sys.argv[2])):
    req = urllib.request.Request(sys.argv[1], data=b"{not json", method="POST")
    try:
        urllib.request.urlopen(req, timeout=5)
        print(200)
    except urllib.error.HTTPError as exc:
        print(exc.code)
"""

TCP_CONNECT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.sendall(b"ping\\n"); assert s.recv(16) == b"ping\\n"
"""

TCP_ECHO = """
import socket, sys
srv = socket.create_server(("::", int(sys.argv[1])), family=socket.AF_INET6, dualstack_ipv6=True)
while True:
    c, _ = srv.accept()
    c.settimeout(2)
    try:
        c.sendall(c.recv(16))
    except OSError:
        pass
    c.close()
"""

TCP_PEER = """
import socket, sys
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
while True:
    c, peer = srv.accept()
    data = c.recv(16)
    c.sendall(data if data == b"ping\\n" else peer[0].encode() + b"\\n")
    c.close()
"""

TCP_READ = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.sendall(b"who\\n"); print(s.recv(64).decode().strip())
"""
