"""Tests for tests/netlab.py, the namespace lab every integration test stands on.

If the harness leaks namespaces, loses track of processes or mis-wires a segment,
every integration test above it fails in confusing ways (or, worse, passes on a
network that isn't the one it thinks it built).  These tests pin down the
contract: names carry the per-run prefix, hosts on a segment reach each other over
IPv4 and IPv6 immediately, and close() removes everything - also when the test
body raised.  They need root and iproute2 and FAIL (never skip) without them.

Only the benchmark range 198.18.0.0/24 and the documentation range
2001:db8:ff::/64 are used, so nothing here can clash with a real network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import netlab
from netlab import CommandFailed, CommandTimeout, Host, Lab, NetlabUnavailable, Segment

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

V4 = "198.18.0.0/24"
V6 = "2001:db8:ff::/64"


def netns_names() -> set[str]:
    return set(netlab._list_netns())


def pid_alive(pid: int) -> bool:
    return netlab._pid_alive(pid)


def wait_until(pred: object, within: float) -> bool:
    assert callable(pred)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())


@pytest.fixture(autouse=True)
def _root() -> None:
    netlab.require_root_tools("ping", "sysctl")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def three_hosts(lab: Lab) -> tuple[Segment, list[Host]]:
    seg = lab.add_segment("lan", V4, V6)
    hosts = []
    for i, name in enumerate(("a", "b", "c"), start=1):
        host = lab.add_host(name)
        lab.connect(host, seg, seg.ip4(i), seg.ip6(i))
        hosts.append(host)
    return seg, hosts


def test_hosts_on_a_segment_reach_each_other_over_v4_and_v6(lab: Lab) -> None:
    seg, (a, b, c) = three_hosts(lab)
    # No settling sleep: v6 addresses are nodad, so they work at once.
    for src, dst in ((a, 2), (a, 3), (b, 3), (c, 1)):
        assert src.ping(seg.ip4(dst)), f"{src.name} -> {seg.ip4(dst)}"
        assert src.ping(seg.ip6(dst)), f"{src.name} -> {seg.ip6(dst)}"
    assert not a.ping("198.18.0.99", timeout=0.3), "nobody has .99"
    # Address got the segment's prefix length and is not tentative.
    addrs = a.run("ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert "198.18.0.1/24" in addrs and "2001:db8:ff::1/64" in addrs
    assert "tentative" not in addrs


def test_every_name_carries_the_prefix(lab: Lab) -> None:
    seg, hosts = three_hosts(lab)
    assert lab.prefix.startswith("cp") and len(lab.prefix) == 6
    assert set(lab.namespaces) == {f"{lab.prefix}-{n}" for n in ("swlan", "a", "b", "c")}
    assert set(lab.namespaces) <= netns_names()
    assert [h.ns for h in hosts] == [f"{lab.prefix}-{n}" for n in "abc"]
    assert seg.ns == f"{lab.prefix}-swlan" and seg.bridge.startswith(lab.prefix)
    ports = hosts[0].run("ip", "-o", "link", "show", "master", seg.bridge, check=False)
    assert ports.returncode != 0, "the bridge must not be visible from a host namespace"
    sw_links = netlab._execute(["ip", "-n", seg.ns, "-o", "link"]).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in sw_links.splitlines()}
    assert names - {"lo"}, sw_links
    for name in names - {"lo"}:
        assert name.startswith(lab.prefix) and len(name) <= 15, name
    assert all(len(ns) <= 15 for ns in lab.namespaces)
    assert lab.ifname("wg1") == f"{lab.prefix}wg1"
    # Nothing leaked into the root namespace.
    root_links = netlab._execute(["ip", "-o", "link"]).stdout
    assert lab.prefix not in root_links


def test_routing_sysctl_and_default_routes() -> None:
    # Two halves of the assigned ranges, routed by a host acting as a router.
    with Lab() as lab:
        left = lab.add_segment("l", "198.18.0.0/25", "2001:db8:ff::/65")
        right = lab.add_segment("r", "198.18.0.128/25", "2001:db8:ff:0:8000::/65")
        router, a, b = lab.add_host("rtr"), lab.add_host("a"), lab.add_host("b")
        lab.connect(router, left, left.ip4(1), left.ip6(1))
        assert lab.connect(router, right, right.ip4(1), right.ip6(1), ifname="eth1") == "eth1"
        lab.connect(a, left, left.ip4(2), left.ip6(2))
        lab.connect(b, right, right.ip4(2), right.ip6(2))
        assert not a.ping(right.ip4(2), timeout=0.3), "no route yet"
        a.set_default_route(left.ip4(1), left.ip6(1))
        b.set_default_route(right.ip4(1), right.ip6(1))
        assert not a.ping(right.ip4(2), timeout=0.3), "router does not forward yet"
        router.sysctl("net.ipv4.ip_forward", "1")
        router.sysctl("net.ipv6.conf.all.forwarding", "1")
        assert router.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
        assert a.ping(right.ip4(2)) and a.ping(right.ip6(2), count=2)
        # sysctls are per namespace: the hosts did not become routers.
        assert a.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"


def test_close_kills_processes_and_removes_everything_even_on_error() -> None:
    marker_dir = netlab.MARKER_DIR
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        _, (a, b, _c) = three_hosts(lab)
        sleeper = a.popen("sleep", "1000")
        # A daemon the lab never saw (like wg-quick's wireguard-go): setsid + &.
        out = b.run("sh", "-c", "setsid sleep 1001 >/dev/null 2>&1 </dev/null & echo $!").stdout
        daemon = int(out)
        a.write_resolv_conf("nameserver 198.18.0.53\n")
        sock = netlab.WG_SOCK_DIR / f"{lab.prefix}wg0.sock"
        sock.parent.mkdir(parents=True, exist_ok=True)
        sock.write_text("")  # stands in for a SIGKILLed wireguard-go's socket
        namespaces = lab.namespaces
        assert sleeper.poll() is None and pid_alive(daemon)
        assert (marker_dir / f"{lab.prefix}.json").exists()
        raise RuntimeError("boom")
    assert sleeper.poll() is not None, "popen'd process survived close()"
    assert not pid_alive(daemon), "untracked process in a lab namespace survived close()"
    assert not (netns_names() & set(namespaces))
    assert not sock.exists()
    assert not (netlab.NETNS_ETC_DIR / a.ns).exists()
    assert not (marker_dir / f"{lab.prefix}.json").exists()
    # Logs are kept when the body raised: that is when you want to read them.
    assert lab.log_dir.is_dir()
    _rmtree(lab.log_dir)
    lab.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        lab.add_host("late")


def test_close_escalates_to_sigkill_within_the_grace_period() -> None:
    lab = Lab()
    host = lab.add_host("h")
    stubborn = host.popen("sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done")
    assert wait_until(lambda: "ready" in stubborn.read_log(), 5)
    t0 = time.monotonic()
    lab.close()
    elapsed = time.monotonic() - t0
    assert stubborn.poll() is not None
    assert netlab.TERM_GRACE <= elapsed < netlab.TERM_GRACE + 3, elapsed
    assert host.ns not in netns_names()
    assert not lab.log_dir.exists()


def test_run_reports_failures_with_everything_needed_to_debug(lab: Lab) -> None:
    h = lab.add_host("h")
    with pytest.raises(CommandFailed) as err:
        h.run("sh", "-c", "echo to-out; echo to-err >&2; exit 3")
    msg = str(err.value)
    assert isinstance(err.value, AssertionError)
    assert "exit code 3" in msg and "to-out" in msg and "to-err" in msg
    assert "sh -c 'echo to-out" in msg and h.ns in msg
    assert h.run("false", check=False).returncode == 1
    res = h.run("cat", input="hello\n", env={"PATH": "/usr/bin:/bin"})
    assert res.stdout == "hello\n" and res.args == ["cat"]
    assert h.run("sh", "-c", "echo $X", env={"X": "y", "PATH": "/bin"}).stdout == "y\n"
    with pytest.raises(CommandTimeout, match="timed out"):
        h.run("sleep", "10", timeout=0.3)
    # A daemon holding stdout must not make run() hang.
    t0 = time.monotonic()
    h.run("sh", "-c", "sleep 30 & echo started")
    assert time.monotonic() - t0 < 5


def test_popen_logs_and_resolv_conf(lab: Lab) -> None:
    h = lab.add_host("h")
    proc = h.popen("sh", "-c", "echo out; echo err >&2")
    assert proc.wait(timeout=5) == 0
    assert proc.log_path is not None and proc.log_path.parent == lab.log_dir
    assert proc.read_log().splitlines() == ["out", "err"]
    assert "out" in lab.dump_logs()
    piped = h.popen("echo", "piped", stdout=subprocess.PIPE)
    out, _ = piped.communicate(timeout=5)
    assert out == "piped\n"
    h.write_resolv_conf("nameserver 198.18.0.53\n")
    assert h.run("cat", "/etc/resolv.conf").stdout == "nameserver 198.18.0.53\n"
    assert Path("/etc/resolv.conf").read_text() != "nameserver 198.18.0.53\n"


def test_cleanup_stale_removes_only_labs_of_dead_owners() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    with Lab() as alive:
        alive.add_host("x")
        orphan = Lab()
        orphan.add_host("y")
        stray = orphan.add_host("z").popen("sleep", "1000")
        # Pretend the orphan's creator was SIGKILLed: its marker names a dead pid
        # and nobody calls close().
        marker = netlab.MARKER_DIR / f"{orphan.prefix}.json"
        info = json.loads(marker.read_text())
        marker.write_text(json.dumps({**info, "pid": dead.pid, "start_time": None}))
        netlab._open_labs.discard(orphan)
        Lab.cleanup_stale()
        assert not any(ns.startswith(orphan.prefix + "-") for ns in netns_names())
        assert not marker.exists()
        assert wait_until(lambda: stray.poll() is not None, 2)
        assert set(alive.namespaces) <= netns_names(), "live lab was touched"
        assert (netlab.MARKER_DIR / f"{alive.prefix}.json").exists()
    orphan.close()  # still safe after someone else cleaned up


def test_concurrent_labs_do_not_collide() -> None:
    errors: list[BaseException] = []
    prefixes: list[str] = []

    def one() -> None:
        try:
            with Lab() as lab:
                prefixes.append(lab.prefix)
                _, (a, _b, c) = three_hosts(lab)
                assert a.ping("198.18.0.3") and c.ping("2001:db8:ff::1")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(set(prefixes)) == 3
    assert not any(ns.startswith(tuple(p + "-" for p in prefixes)) for ns in netns_names())


def test_explicit_prefix_and_name_validation() -> None:
    with Lab(prefix="cpt" + os.urandom(2).hex()) as lab:
        with pytest.raises(ValueError, match="in use"):
            Lab(prefix=lab.prefix)
        with pytest.raises(ValueError, match="longer than 15"):
            lab.add_host("muchtoolongname")
        seg = lab.add_segment("s", V4)
        h = lab.add_host("h")
        with pytest.raises(ValueError, match="not in segment"):
            lab.connect(h, seg, "198.18.1.1")
        with pytest.raises(ValueError, match="no IPv6"):
            lab.connect(h, seg, "198.18.0.1", "2001:db8:ff::1")
        lab.connect(h, seg, "198.18.0.1")
        with pytest.raises(ValueError, match="already has"):
            lab.connect(h, seg, "198.18.0.2")
    with pytest.raises(ValueError, match="2-10 chars"):
        Lab(prefix="Bad-Prefix")


def test_require_root_tools_fails_clearly() -> None:
    netlab.require_root_tools("ip", "ping")
    with pytest.raises(NetlabUnavailable) as err:
        netlab.require_root_tools("wireguard-go", "no-such-tool-xyz")
    msg = str(err.value)
    assert isinstance(err.value, AssertionError)
    assert "missing: no-such-tool-xyz" in msg and "wireguard-go" in msg and "make deps" in msg


def test_env_with_path() -> None:
    env = netlab.env_with_path("/opt/x/bin", base={"PATH": "/usr/bin:/bin", "A": "1"})
    parts = env["PATH"].split(":")
    assert parts[0] == "/opt/x/bin" and "/usr/sbin" in parts and env["A"] == "1"


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
