"""A real hub (`cloudpal up` in its own namespace) and real devices (stock wg-quick)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from netlab import Host, Lab, require_root_tools

CLOUDPAL = str(Path(sys.executable).parent / "cloudpal")
SHIMS = str(Path(__file__).parent / "shims")
TOOLS = ("wireguard-go", "wg", "wg-quick", "nft", "ping", "ip", "zbarimg", "dig", "getent")


def device_env() -> dict[str, str]:
    """What stock wg-quick needs on a machine without the kernel module."""
    return dict(
        os.environ,
        WG_QUICK_USERSPACE_IMPLEMENTATION="wireguard-go",
        PATH=SHIMS + ":" + os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    )


def cgroup_remount_script() -> str:
    """Shell commands that mount this host's cgroup hierarchies again under a fresh /sys."""
    cmds = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, target, fstype, opts, *_ = line.split()
        if not target.startswith("/sys/fs/cgroup"):
            continue
        keep = ",".join(o for o in opts.split(",") if o not in ("rw", "ro", "relatime", "nosuid",
                                                               "nodev", "noexec"))
        option = f"-o {keep} " if keep else ""
        cmds.append(f"mkdir -p {target} && mount -t {fstype} {option}cgroup {target} && ")
    return "".join(cmds)


class Hub:
    """`cloudpal up` running in `host`'s namespace with its own home."""

    def __init__(self, host: Host, home: Path, iface: str, args: list[str]) -> None:
        self.host = host
        self.home = home
        self.iface = iface
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.log = home.parent / f"{home.name}.log"

    def start(self, extra: list[str] | None = None, timeout: float = 20.0) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        log = open(self.log, "a")  # noqa: SIM115 - the child keeps it
        # `ip netns exec` mounts a fresh /sys, which hides the cgroup hierarchies the node meters
        # apps with: mount the same hierarchies again (v1 or v2 alike) before exec'ing the node.
        argv = ["ip", "netns", "exec", self.host.ns, "sh", "-c", cgroup_remount_script() + 'exec "$@"',
                "sh", CLOUDPAL, "--home", str(self.home), "up", *(extra if extra is not None else self.args)]
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"cloudpal up exited {self.proc.returncode}:\n"
                                     + self.log.read_text())
            if "ready" in self.log.read_text()[offset:]:
                return
            time.sleep(0.05)
        raise AssertionError("cloudpal up did not become ready:\n" + self.log.read_text())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("cloudpal up did not stop within 15 s") from None
        finally:
            self.proc = None

    def cli(self, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([CLOUDPAL, "--home", str(self.home), *args], capture_output=True,
                              text=True, input=input, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"cloudpal {' '.join(args)} exited {proc.returncode}: "
                                 f"{proc.stdout}{proc.stderr}")
        return proc


def wg_quick_up(dev: Host, conf_dir: Path, iface: str, config: str) -> Path:
    path = conf_dir / f"{iface}.conf"
    path.write_text(config)
    path.chmod(0o600)
    dev.run("wg-quick", "up", str(path), env=device_env())
    return path


def wait_for(pred: object, timeout: float, interval: float = 0.1) -> bool:
    assert callable(pred)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    require_root_tools(*TOOLS)
    with Lab() as lab:
        yield lab
