"""`cloudpal up` itself: start-up refusals, clean stops, a small address range."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import tempfile
from pathlib import Path

from conftest import CLOUDPAL, Hub

from cloudpal.control import _UnixConnection
from netlab import Host, Lab


def _host(lab: Lab, name: str) -> Host:
    host = lab.add_host(name)
    seg = lab.add_segment(name[:4], "198.18.7.0/24")
    lab.connect(host, seg, "198.18.7.1")
    return host


def _up(host: Host, home: Path, *args: str, wrap: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return host.run(*wrap, CLOUDPAL, "--home", str(home), "up", *args, check=False, timeout=30)


def _one_error_line(res: subprocess.CompletedProcess[str], words: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], res.stderr


def test_up_refusals(lab: Lab) -> None:
    host = _host(lab, "n1")
    home = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-n1-"))
    iface = f"{lab.prefix}n1"
    # not root
    res = _up(host, home / "a", "--interface", iface,
              wrap=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"))
    _one_error_line(res, "root")
    # no /dev/net/tun (hidden by a private mount) and no kernel module
    res = host.run("unshare", "-m", "sh", "-c",
                   f'mount -t tmpfs none /dev/net && exec "$0" --home {home / "b"} up '
                   f"--interface {iface}", CLOUDPAL, check=False, timeout=30)
    _one_error_line(res, "/dev/net/tun")
    # a corrupt state database is reported, not overwritten
    (home / "c").mkdir(mode=0o700)
    garbage = b"definitely not sqlite " * 200
    (home / "c" / "state.db").write_bytes(garbage)
    res = _up(host, home / "c", "--interface", iface)
    _one_error_line(res, "corrupt")
    assert (home / "c" / "state.db").read_bytes() == garbage
    # bad options
    _one_error_line(_up(host, home / "d", "--endpoint", "nope"), "invalid endpoint")
    _one_error_line(_up(host, home / "d", "--ipv4-range", "100.64.0.0/31", "--interface", iface),
                    "too small")
    _one_error_line(_up(host, home / "d", "--interface", "x" * 16), "longer than 15")
    # none of this left anything behind
    assert iface not in host.run("ip", "-o", "link").stdout


def test_small_range_exhausts_cleanly_and_stops_on_sigint(lab: Lab) -> None:
    host = _host(lab, "n2")
    home = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-n2-")) / "home"
    iface = f"{lab.prefix}n2"
    hub = Hub(host, home, iface, ["--interface", iface, "--ipv4-range", "100.100.0.0/29",
                                  "--endpoint", "198.18.7.1:51820", "--name", "box"])
    hub.start()
    try:
        second = _up(host, home, "--interface", iface + "x")
        _one_error_line(second, "already running")
        for i in range(5):
            hub.cli("device", "add", f"d{i}")
        res = hub.cli("device", "add", "d5", check=False)
        _one_error_line(res, "exhausted")
        devs = json.loads(hub.cli("device", "ls", "--json").stdout)
        assert [d["ipv4"] for d in devs] == [f"100.100.0.{i}" for i in range(2, 7)]
        assert len(host.run("wg", "show", iface, "peers").stdout.split()) == 5
        st = json.loads(hub.cli("status", "--json").stdout)
        assert st["node"] == "box" and st["addresses"][0] == "100.100.0.1"
        assert st["online"] == [] and st["devices"] == 5
        _control_api_survives_garbage(home)
        assert len(json.loads(hub.cli("device", "ls", "--json").stdout)) == 5
        assert oct((home / "control.sock").stat().st_mode & 0o777) == "0o600"
        assert oct((home / "state.db").stat().st_mode & 0o777) == "0o600"
        assert oct(home.stat().st_mode & 0o777) == "0o700"
    finally:
        assert hub.stop(signal.SIGINT) == 0
    assert iface not in host.run("ip", "-o", "link").stdout
    assert "cloudpal_" not in host.run("nft", "list", "tables").stdout
    assert host.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
    res = subprocess.run([CLOUDPAL, "--home", str(home), "status"], capture_output=True, text=True)
    _one_error_line(res, "not running")


def _control_api_survives_garbage(home: Path) -> None:
    """Random bodies on every write endpoint get a JSON answer, never a server error."""
    rnd = random.Random(7)
    paths = ["/devices", "/devices/d0/rename", "/devices/d0/renew", "/invites", "/acl",
             "/acl/check", "/devices/ghost/revoke"]
    samples = [b"", b"{", b"[]", b"null", b'{"name": 5}', b'{"name": "Bad!"}', b'{"uses": "x"}',
               b'{"text": 1}', b'{"expires": 3}', b'{"port": "22"}', b'{"new_name": "d1"}']
    samples += [rnd.randbytes(rnd.randrange(1, 200)) for _ in range(40)]
    for body in samples:
        for path in paths:
            conn = _UnixConnection(str(home / "control.sock"), 10)
            conn.request("POST", path, body=body)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            assert resp.status < 500, (path, body, resp.status, data)
            if resp.status >= 400:
                assert isinstance(json.loads(data)["error"], str)


def test_restart_after_sigkill_reaps_the_leftover_wireguard_go(lab: Lab) -> None:
    host = _host(lab, "n3")
    home = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-n3-")) / "home"
    iface = f"{lab.prefix}n3"
    hub = Hub(host, home, iface, ["--interface", iface, "--endpoint", "198.18.7.1:51820"])
    hub.start()
    hub.cli("device", "add", "laptop")
    assert hub.proc is not None
    hub.proc.kill()  # the daemon dies without cleaning up
    hub.proc.wait()
    hub.proc = None
    old = subprocess.run(["pgrep", "-f", f"wireguard-go -f {iface}$"], capture_output=True,
                         text=True).stdout.split()
    assert len(old) == 1, "expected the killed node's wireguard-go to survive it"
    hub.start(extra=[])
    try:
        now = subprocess.run(["pgrep", "-f", f"wireguard-go -f {iface}$"], capture_output=True,
                             text=True).stdout.split()
        assert len(now) == 1 and now != old
        assert len(host.run("wg", "show", iface, "peers").stdout.split()) == 1
    finally:
        assert hub.stop() == 0
    assert iface not in host.run("ip", "-o", "link").stdout
