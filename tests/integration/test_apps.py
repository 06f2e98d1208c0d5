"""Apps in real QEMU microVMs behind a real node: wake on traffic, idle snapshot, volumes, runaway.

Everything here is real: `cloudpal up` in a namespace, a stock wg-quick device reaching NAME.pal
over the overlay, QEMU booting Debian's kernel with CloudPal's init (TCG on CI), cgroups metering.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Hub, device_env, wait_for, wg_quick_up

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import oci_build
from netlab import Host, Lab

HUB_UL = "198.18.40.1"
FETCH = (
    "import sys, urllib.request\n"
    "try:\n"
    "    r = urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))\n"
    "    sys.stdout.write(r.read().decode())\n"
    "except Exception as e:\n"
    "    sys.exit(f'fetch failed: {e}')\n"
)


def require_vm_tools() -> None:
    missing = [t for t in ("qemu-system-x86_64", "mkfs.ext4", "busybox") if not shutil.which(t)]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make deps` (apt qemu-system-x86 "
                    "linux-image-amd64 busybox-static e2fsprogs)", pytrace=False)


@dataclass
class Apps:
    lab: Lab
    hub: Hub
    hub_host: Host
    dev: Host
    work: Path

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.hub.cli(*args, "--json", timeout=180).stdout)

    def app(self, name: str) -> dict[str, Any]:
        out = self.cli_json("app", "ls")
        return next(a for a in out["apps"] if a["name"] == name)

    def usage(self, name: str) -> dict[str, Any]:
        return next(u for u in self.cli_json("app", "usage") if u["name"] == name)

    def events(self, name: str) -> list[dict[str, Any]]:
        return list(self.cli_json("app", "events", name))

    def fetch(self, host: Host, url: str, timeout: float = 90) -> str:
        res = host.run(sys.executable, "-c", FETCH, url, str(timeout), check=False,
                       timeout=timeout + 10)
        assert res.returncode == 0, f"GET {url}: {res.stderr.strip()}"
        return res.stdout


@pytest.fixture(scope="module")
def apps(lab: Lab) -> Iterator[Apps]:
    require_vm_tools()
    ul = lab.add_segment("au", "198.18.40.0/24")
    hub_host = lab.add_host("ahub")
    lab.connect(hub_host, ul, HUB_UL)
    dev = lab.add_host("adev")
    lab.connect(dev, ul, "198.18.40.11")
    dev.write_resolv_conf("")
    work = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-apps-"))
    iface = f"{lab.prefix}a"
    hub = Hub(hub_host, work / "home", iface, ["--interface", iface, "--endpoint", f"{HUB_UL}:51820"])
    hub.start()
    conf = work / f"{iface}d.conf"
    try:
        wg_quick_up(dev, work, f"{iface}d", hub.cli("device", "add", "phone").stdout)
        yield Apps(lab, hub, hub_host, dev, work)
    finally:
        dev.run("wg-quick", "down", str(conf), check=False, env=device_env())
        if hub.proc is not None:
            hub.stop()
        print(hub.log.read_text()[-3000:])


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, just not reaped yet


def _install(a: Apps, image: Path, name: str, *opts: str) -> dict[str, Any]:
    return dict(a.cli_json("app", "install", str(image), "--name", name, *opts))


def test_cold_wake_over_the_overlay_honours_the_image_config(apps: Apps) -> None:
    image = oci_build.httpd_app(apps.work / "httpd")
    out = _install(apps, image, "web", "--idle", "4s")
    assert out["state"] == "stopped" and out["ports"] == [8080]
    assert apps.app("web")["accel"] in ("kvm", "tcg")
    t0 = time.monotonic()
    body = apps.fetch(apps.dev, "http://web.pal:8080/")
    cold = time.monotonic() - t0
    assert body == "hello from cloudpal\n"
    info = apps.app("web")
    assert info["state"] == "running" and info["woke_by"] == "cold boot", info
    env = apps.fetch(apps.dev, "http://web.pal:8080/cgi-bin/env").split()
    assert env == ["1000", "/www", "hi"], env  # user, workdir and env from the image config
    woke = [e for e in apps.events("web") if e["kind"] == "wake"]
    assert len(woke) == 1 and "cold boot" in woke[0]["message"]
    log = apps.hub.cli("app", "logs", "web").stdout
    assert "cloudpal: ready" in log, log[-2000:]
    print(f"cold wake answered in {cold:.2f} s")


def test_idle_stop_then_snapshot_wake(apps: Apps) -> None:
    assert wait_for(lambda: apps.app("web")["state"] == "snapshotted", 30, 0.5), apps.events("web")
    assert apps.app("web")["snapshot"]
    t0 = time.monotonic()
    assert apps.fetch(apps.dev, "http://web.pal:8080/") == "hello from cloudpal\n"
    warm = time.monotonic() - t0
    info = apps.app("web")
    assert info["woke_by"] == "idle snapshot", apps.events("web")
    assert not info["snapshot"]  # consumed by the wake
    print(f"snapshot wake answered in {warm:.2f} s")


def test_concurrent_first_connections_share_one_wake(apps: Apps) -> None:
    apps.hub.cli("app", "stop", "web")
    assert apps.app("web")["state"] == "stopped"
    before = apps.usage("web")["wakes"]
    with ThreadPoolExecutor(6) as pool:
        bodies = list(pool.map(lambda _: apps.fetch(apps.dev, "http://web.pal:8080/"), range(6)))
    assert bodies == ["hello from cloudpal\n"] * 6
    assert apps.usage("web")["wakes"] == before + 1
    assert apps.app("web")["woke_by"] == "boot snapshot"


def test_a_failed_restore_falls_back(apps: Apps) -> None:
    snaps = apps.hub.home / "compute" / "apps" / "web"
    assert wait_for(lambda: apps.app("web")["state"] == "snapshotted", 30, 0.5), apps.events("web")
    (snaps / "snap-idle" / "state").write_bytes(b"not a migration stream")
    assert apps.fetch(apps.dev, "http://web.pal:8080/") == "hello from cloudpal\n"
    assert apps.app("web")["woke_by"] == "boot snapshot"
    assert any(e["kind"] == "restore-failed" and "idle snapshot" in e["message"]
               for e in apps.events("web"))
    apps.hub.cli("app", "stop", "web")
    (snaps / "snap-boot" / "state").write_bytes(b"\0" * 100)
    assert apps.fetch(apps.dev, "http://web.pal:8080/") == "hello from cloudpal\n"
    info = apps.app("web")
    assert info["woke_by"] == "cold boot" and info["boot_snapshot"], info  # and a new boot snapshot


def test_volume_survives_and_apps_cannot_see_each_other(apps: Apps) -> None:
    image = oci_build.counter_app(apps.work / "counter")
    _install(apps, image, "ctr", "--publish", "127.0.0.1:18080:8080", "--idle", "1h")
    _install(apps, image, "ctr2", "--idle", "1h")
    local = "http://127.0.0.1:18080"
    first = int(apps.fetch(apps.hub_host, f"{local}/cgi-bin/count"))
    second = int(apps.fetch(apps.hub_host, f"{local}/cgi-bin/count"))
    assert second == first + 1
    apps.fetch(apps.hub_host, f"{local}/cgi-bin/put?only-for-ctr")
    apps.hub.cli("app", "stop", "ctr")  # clean shutdown; the next request boots again
    third = int(apps.fetch(apps.dev, "http://ctr.pal:8080/cgi-bin/count"))
    # +1 for the new boot (start.sh counts boots in the same file), +1 for the request
    assert third == second + 2, "the counter did not survive a stop and a wake"
    listing = apps.fetch(apps.dev, "http://ctr2.pal:8080/cgi-bin/ls")
    assert "secret" not in listing and "only-for-ctr" not in listing, listing
    assert sorted(listing.split("BLOCK")[1].split()) == ["vda", "vdb"], listing
    mine = apps.fetch(apps.dev, "http://ctr.pal:8080/cgi-bin/ls")
    assert "secret" in mine
    # an upgrade keeps the volume and drops the snapshots made from the old image
    upgraded = oci_build.counter_app(apps.work / "counter2", compression="zstd", fmt="docker")
    out = _install(apps, upgraded, "ctr", "--upgrade")
    assert out["state"] == "stopped" and not out["boot_snapshot"] and not out["snapshot"]
    fourth = int(apps.fetch(apps.dev, "http://ctr.pal:8080/cgi-bin/count"))
    assert fourth == third + 2
    assert apps.app("ctr")["woke_by"] == "cold boot"
    apps.hub.cli("app", "rm", "ctr2")
    assert not (apps.hub.home / "compute" / "apps" / "ctr2").exists()
    # a node restart snapshots running apps and resumes them on the next connection
    apps.hub.stop()
    apps.hub.start()
    assert apps.app("ctr")["state"] == "snapshotted"
    fifth = int(apps.fetch(apps.dev, "http://ctr.pal:8080/cgi-bin/count"))
    assert fifth == fourth + 1 and apps.app("ctr")["woke_by"] == "idle snapshot"
    assert apps.fetch(apps.hub_host, "http://127.0.0.1:18080/cgi-bin/get").strip() == "only-for-ctr"
    # a node killed outright leaves its QEMU behind; the next start kills it and boots afresh
    pid = apps.app("ctr")["pid"]
    apps.hub.stop(signal.SIGKILL)
    assert _alive(pid)
    apps.hub.start()
    assert not _alive(pid)
    assert any(e["kind"] == "reaped" for e in apps.events("ctr"))
    sixth = int(apps.fetch(apps.dev, "http://ctr.pal:8080/cgi-bin/count"))
    assert sixth > fifth and apps.app("ctr")["state"] == "running"


def test_burner_is_throttled_then_killed_as_a_runaway(apps: Apps) -> None:
    image = oci_build.burner_app(apps.work / "burner")
    _install(apps, image, "burn", "--cpu", "30%", "--runaway-after", "6s")
    apps.hub.cli("app", "start", "burn", timeout=180)
    samples: list[dict[str, Any]] = []

    def runaway() -> bool:
        u = apps.usage("burn")
        samples.append(u)
        return bool(u["state"] == "runaway")
    assert wait_for(runaway, 60, 0.5), samples[-3:]
    rates = [s["cpu_rate"] for s in samples if s["cpu_rate"] is not None]
    assert rates and max(rates) < 0.45, rates  # held at its 30% quota (1 s samples), not a whole CPU
    assert max(s["throttled_periods"] for s in samples) > 0
    assert apps.app("burn")["state"] == "runaway"
    assert any(e["kind"] == "runaway" for e in apps.events("burn"))
    # it stays down until the owner starts it again
    time.sleep(2)
    assert apps.app("burn")["pid"] is None
    apps.hub.cli("app", "rm", "burn")


def test_usage_and_bad_input(apps: Apps) -> None:
    u = apps.usage("web")
    assert u["cpu_seconds"] > 0.5 and u["peak_memory"] > 50 << 20 and u["wakes"] >= 3
    assert u["running_seconds"] > 1
    assert apps.fetch(apps.dev, "http://web.pal:8080/") == "hello from cloudpal\n"  # up, in its cgroup
    out = apps.cli_json("app", "set", "web", "--cpu", "80%", "--cpu-weight", "50", "--idle", "10m")
    assert (out["settings"]["cpu_percent"], out["settings"]["cpu_weight"], out["settings"]["idle"]) == (
        80, 50, 600)
    v1, v2 = Path("/sys/fs/cgroup/cpu/cloudpal/web"), Path("/sys/fs/cgroup/cloudpal/web")
    if v1.exists():  # the limits change live on the app's cgroup
        assert (v1 / "cpu.shares").read_text().strip() == "512"
        assert (v1 / "cpu.cfs_quota_us").read_text().strip() == "80000"
    else:
        assert (v2 / "cpu.weight").read_text().strip() == "50"
    bad = apps.work / "bad"
    oci_build.padded_app(bad, 1, seed=None)  # blobs this node has never stored
    blob = max((bad / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    blob.write_bytes(blob.read_bytes()[:-1] + b"x")
    res = apps.hub.cli("app", "install", str(bad), "--name", "bad", check=False)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "corrupt" in lines[0], res.stderr
    res = apps.hub.cli("app", "install", str(bad), "--name", "web", "--cpu", "lots", check=False)
    assert res.returncode == 2 and "CPU quota" in res.stderr
    res = apps.hub.cli("app", "install", str(apps.work / "httpd"), "--name", "phone", check=False)
    assert res.returncode == 2 and "taken by a device" in res.stderr
    assert [a["name"] for a in apps.cli_json("app", "ls")["apps"]] == ["ctr", "web"]
    assert not (apps.hub.home / "compute" / "apps" / "phone").exists()


def test_acl_policies_name_apps(apps: Apps) -> None:
    policy = apps.work / "apps.toml"
    policy.write_text('[[allow]]\nfrom = ["phone"]\nto = ["ctr"]\nproto = "tcp"\nports = ["8080"]\n')
    apps.hub.cli("acl", "apply", str(policy))
    try:
        assert apps.fetch(apps.dev, "http://ctr.pal:8080/cgi-bin/get").strip() == "only-for-ctr"
        res = apps.dev.run(sys.executable, "-c", FETCH, "http://web.pal:8080/", "5", check=False,
                           timeout=20)
        assert res.returncode != 0 and "refused" in res.stderr, res.stderr
    finally:
        policy.write_text('[[allow]]\nfrom = ["*"]\nto = ["*"]\n')
        apps.hub.cli("acl", "apply", str(policy))
    assert apps.fetch(apps.dev, "http://web.pal:8080/") == "hello from cloudpal\n"
