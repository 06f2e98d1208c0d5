"""Throwaway network-namespace labs for CloudPal's integration tests and benchmarks.

CloudPal's node is a WireGuard hub, and the only honest way to test it is to run
the real node and real devices (stock ``wg-quick`` on ``wireguard-go``) on real
network stacks.  This module builds those stacks out of Linux network namespaces:

* every *host* is a namespace ``{prefix}-{name}``;
* every L2 *segment* is a bridge living in its own namespace ``{prefix}-sw{name}``,
  so nothing is ever created in (or can break) the root namespace;
* hosts are plugged into segments with veth pairs.

Why the prefix everywhere: several test runs (pytest-xdist workers, a benchmark in
another terminal, CI jobs on one machine) may build labs at the same time, and some
names are global even across namespaces - namespace names themselves, and the
``/var/run/wireguard/<ifname>.sock`` control sockets of ``wireguard-go``, which live
in the shared filesystem.  A short random per-run prefix keeps them apart; name
WireGuard interfaces with :meth:`Lab.ifname` for the same reason.

Why cleanup is so defensive: a leaked namespace keeps its processes, interfaces and
sockets alive forever and makes the next run fail in confusing ways.  ``Lab.close()``
therefore kills every process inside the lab's namespaces (not only the ones it
started - ``wg-quick`` daemonises ``wireguard-go``), deletes the namespaces and the
files it created, and never raises.  A marker file under ``/run/cloudpal-netlab/``
records the creating pid so :meth:`Lab.cleanup_stale` can later remove labs left by
runs that crashed or were SIGKILLed before they could clean up.

Everything is done with the ``ip`` command: it is what the kernel developers test,
it handles the /run/netns mount dance correctly, and it behaves the same when many
processes create and delete namespaces concurrently.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "CommandFailed",
    "CommandTimeout",
    "Host",
    "Lab",
    "LabProcess",
    "NetlabUnavailable",
    "Segment",
    "env_with_path",
    "require_root_tools",
]

MARKER_DIR = Path("/run/cloudpal-netlab")
WG_SOCK_DIR = Path("/var/run/wireguard")
NETNS_ETC_DIR = Path("/etc/netns")
NETNS_RUN_DIR = Path("/run/netns")

#: Linux interface names (IFNAMSIZ - 1).  We hold namespace names to it too, so one
#: rule covers every name the lab makes.
MAX_NAME = 15
#: Grace period between SIGTERM and SIGKILL when tearing a lab down.
TERM_GRACE = 3.0

# sbin dirs are often missing from PATH when tests are started through sudo, an IDE
# or a venv wrapper; `ip`, `sysctl`, `nft` and `wg-quick`'s helpers live there.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,9}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_OUTPUT_LIMIT = 8000


# --------------------------------------------------------------------------- errors


class CommandFailed(AssertionError):
    """A command run by the lab failed.

    It subclasses ``AssertionError`` so that a failing command inside a test shows up
    as a test *failure* with everything needed to debug it (argv, namespace, exit
    code, stdout, stderr) right in the pytest report, instead of as an opaque error.
    """

    def __init__(
        self,
        argv: Iterable[str],
        returncode: int | None,
        stdout: str,
        stderr: str,
        *,
        ns: str | None = None,
        note: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.ns = ns
        where = f" in netns {ns}" if ns else ""
        status = note or f"exit code {returncode}"
        super().__init__(
            f"command failed ({status}){where}: {shlex.join(self.argv)}\n"
            f"--- stdout ---\n{_clip(stdout)}\n--- stderr ---\n{_clip(stderr)}"
        )


class CommandTimeout(CommandFailed):
    """A command did not finish within its timeout (its process group was killed)."""


class NetlabUnavailable(AssertionError):
    """The machine cannot run netns tests (not root, or a tool is missing).

    Deliberately an ``AssertionError`` and not a skip: a silently skipped
    integration suite looks exactly like a passing one.
    """


def _clip(text: str) -> str:
    text = text.rstrip("\n")
    if len(text) <= _OUTPUT_LIMIT:
        return text
    return f"[... {len(text) - _OUTPUT_LIMIT} chars clipped ...]\n" + text[-_OUTPUT_LIMIT:]


def _warn(msg: str) -> None:
    # Cleanup must never raise, but silently swallowing problems hides leaks.
    print(f"netlab: warning: {msg}", file=sys.stderr)


# --------------------------------------------------------------------- environment


def _which(tool: str) -> str | None:
    path = os.environ.get("PATH", "")
    extra = [d for d in _SBIN_DIRS if d not in path.split(os.pathsep)]
    return shutil.which(tool, path=os.pathsep.join([path, *extra]))


def env_with_path(
    *extra_dirs: str | os.PathLike[str], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Return a full environment with ``extra_dirs`` prepended to PATH.

    ``Host.run``/``Host.popen`` *replace* the environment when given ``env`` (like
    :mod:`subprocess`), so build it with this helper: it starts from ``base``
    (default ``os.environ``), puts e.g. a directory with the ``cloudpal`` entry
    point first, and makes sure the sbin dirs are present so ``ip``/``nft``/
    ``sysctl`` resolve inside the namespace too.
    """
    env = dict(os.environ if base is None else base)
    parts = [os.fspath(d) for d in extra_dirs]
    parts += [p for p in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep) if p]
    parts += [d for d in _SBIN_DIRS if d not in parts]
    env["PATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


def require_root_tools(*tools: str) -> None:
    """Fail loudly unless we are root and every tool (plus ``ip``) is installed.

    Call it at the top of netns tests or in a fixture.  Tests must FAIL, never
    skip, when the lab can't run - otherwise a broken CI box reports green.
    """
    wanted = list(dict.fromkeys(["ip", *tools]))
    missing = [t for t in wanted if _which(t) is None]
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("not running as root")
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if "wireguard-go" in wanted and not Path("/dev/net/tun").exists():
        problems.append("missing: /dev/net/tun (wireguard-go needs the tun device)")
    if problems:
        raise NetlabUnavailable(
            f"netns tests need root and: {', '.join(wanted)}; "
            f"{'; '.join(problems)}; run `make deps` (as root)"
        )


def _ip_bin() -> str:
    found = _which("ip")
    if found is None:
        raise NetlabUnavailable("netns tests need iproute2's `ip`; run `make deps`")
    return found


# ----------------------------------------------------------------- running commands


def _execute(
    argv: list[str],
    *,
    display: list[str] | None = None,
    ns: str | None = None,
    check: bool = True,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion and capture its output.

    Output goes to temporary *files*, not pipes: commands such as ``wg-quick up``
    leave daemons behind that may inherit stdout, and reading a pipe until EOF
    would then hang until the daemon dies.  The child gets its own session so a
    timeout (or Ctrl-C) kills everything it spawned, not just the first process.
    """
    shown = display if display is not None else argv
    run_env = dict(env) if env is not None else env_with_path()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=run_env,
            start_new_session=True,
        )
        timed_out = False
        try:
            proc.communicate(input.encode() if input is not None else None, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except BaseException:
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if timed_out:
        raise CommandTimeout(
            shown, None, stdout, stderr, ns=ns, note=f"timed out after {timeout:g} s"
        )
    result = subprocess.CompletedProcess(shown, proc.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise CommandFailed(shown, proc.returncode, stdout, stderr, ns=ns)
    return result


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _proc_start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (None if gone or a zombie).

    Stored with the pid in lab markers so a recycled pid isn't mistaken for the
    lab's still-running owner.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _pid_alive(pid: int, start_time: int | None = None) -> bool:
    started = _proc_start_time(pid)
    return started is not None and (start_time is None or started == start_time)


# --------------------------------------------------------------- namespace helpers


def _list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_RUN_DIR.iterdir())
    except FileNotFoundError:
        return []


def _netns_pids(ns: str) -> set[int]:
    try:
        res = _execute([_ip_bin(), "netns", "pids", ns], check=False, timeout=10)
    except CommandFailed:
        return set()
    me = os.getpid()
    return {int(tok) for tok in res.stdout.split() if tok.isdigit() and int(tok) != me}


def _create_netns(ns: str) -> None:
    # The very first `ip netns add` on a machine sets up the /run/netns mount; two
    # processes doing that at once can make one fail spuriously.  Retry a little.
    for attempt in range(3):
        try:
            _execute([_ip_bin(), "netns", "add", ns], timeout=10)
            return
        except CommandFailed:
            if attempt == 2 or (NETNS_RUN_DIR / ns).exists():
                raise
            time.sleep(0.05 * (attempt + 1))


def _delete_netns(ns: str) -> None:
    for attempt in range(3):
        if not (NETNS_RUN_DIR / ns).exists():
            return
        res = _execute([_ip_bin(), "netns", "delete", ns], check=False, timeout=10)
        if res.returncode == 0 or not (NETNS_RUN_DIR / ns).exists():
            return
        if attempt == 2:
            _warn(f"could not delete netns {ns}: {res.stderr.strip()}")
        time.sleep(0.1)


def _terminate(procs: Iterable[subprocess.Popen[Any]], pids: Iterable[int], grace: float) -> None:
    """SIGTERM process groups and loose pids, wait up to ``grace`` s, then SIGKILL."""
    procs = list(procs)
    pids = set(pids)
    for p in procs:
        _killpg(p.pid, signal.SIGTERM)
    for pid in pids:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in procs) and not any(_pid_alive(x) for x in pids):
            break
        time.sleep(0.02)
    for p in procs:
        # Also hits children left in the group after the leader exited.
        _killpg(p.pid, signal.SIGKILL)
    for pid in pids:
        if _pid_alive(pid):
            _kill(pid, signal.SIGKILL)
    for p in procs:
        try:
            p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            _warn(f"process {p.pid} survived SIGKILL")


def _kill_netns_processes(namespaces: Iterable[str], grace: float) -> None:
    """Kill every process in the namespaces, including daemons nobody tracked."""
    pids: set[int] = set()
    for ns in namespaces:
        pids |= _netns_pids(ns)
    if pids:
        _terminate([], pids, grace)


# --------------------------------------------------------------------- marker files


def _marker_path(prefix: str) -> Path:
    return MARKER_DIR / f"{prefix}.json"


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _marker_owner_alive(info: dict[str, Any] | None) -> bool:
    if info is None:
        # Unreadable: maybe being written right now.  Err on the side of not
        # destroying someone else's lab.
        return True
    pid = info.get("pid")
    start = info.get("start_time")
    if not isinstance(pid, int):
        return False
    return _pid_alive(pid, start if isinstance(start, int) else None)


def _live_prefixes() -> set[str]:
    try:
        markers = list(MARKER_DIR.glob("*.json"))
    except OSError:
        return set()
    return {m.stem for m in markers if _marker_owner_alive(_read_marker(m))}


def _remove_wg_sockets(prefix: str) -> None:
    """Remove ``/var/run/wireguard/{prefix}*.sock`` left by SIGKILLed wireguard-go.

    A socket that also matches a *longer* live prefix (``cp1`` vs ``cp12``) belongs
    to that other lab and is left alone.
    """
    others = [p for p in _live_prefixes() if p != prefix and p.startswith(prefix)]
    try:
        socks = list(WG_SOCK_DIR.glob(f"{prefix}*.sock"))
    except OSError:
        return
    for sock in socks:
        if any(sock.name.startswith(o) for o in others):
            continue
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()


def _teardown_orphan(prefix: str, info: dict[str, Any] | None) -> None:
    """Remove everything a dead lab with ``prefix`` left behind (never raises)."""
    try:
        namespaces = [ns for ns in _list_netns() if ns.startswith(prefix + "-")]
        _kill_netns_processes(namespaces, grace=1.0)
        for ns in namespaces:
            _delete_netns(ns)
            shutil.rmtree(NETNS_ETC_DIR / ns, ignore_errors=True)
        _remove_wg_sockets(prefix)
        if info and info.get("owns_log_dir") and isinstance(info.get("log_dir"), str):
            shutil.rmtree(info["log_dir"], ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            _marker_path(prefix).unlink()
    except Exception as exc:
        _warn(f"cleanup of stale lab {prefix!r} failed: {exc!r}")


# ------------------------------------------------------------------------ lab parts


class LabProcess(subprocess.Popen[str]):
    """A process started with :meth:`Host.popen`; the lab kills it on close.

    ``log_path`` is the file receiving its stdout/stderr (None if both were
    redirected elsewhere).  It runs in its own session, so :meth:`stop` and the
    lab's cleanup reach its children as well.
    """

    log_path: Path | None = None
    host: Host | None = None

    def read_log(self) -> str:
        """Return what the process has logged so far ('' if it has no log file)."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = TERM_GRACE) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` s; return exit code."""
        _terminate([self], [], timeout)
        return self.returncode


@dataclass(eq=False)
class Segment:
    """An L2 segment: a bridge in its own namespace that hosts plug into."""

    lab: Lab = field(repr=False)
    name: str
    ns: str
    bridge: str
    cidr4: ipaddress.IPv4Network
    cidr6: ipaddress.IPv6Network | None

    def ip4(self, index: int) -> str:
        """The ``index``-th address of the IPv4 prefix (``seg.ip4(1)`` -> x.x.x.1)."""
        return str(self.cidr4[index])

    def ip6(self, index: int) -> str:
        """The ``index``-th address of the IPv6 prefix."""
        if self.cidr6 is None:
            raise ValueError(f"segment {self.name} has no IPv6 prefix")
        return str(self.cidr6[index])


@dataclass(eq=False)
class Host:
    """A network namespace standing in for one machine (node, phone, laptop, router)."""

    lab: Lab = field(repr=False)
    name: str
    ns: str
    interfaces: dict[str, Segment] = field(default_factory=dict, repr=False)

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 30,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace and wait for it (``ip netns exec``).

        Returns text stdout/stderr.  With ``check`` a non-zero exit raises
        :class:`CommandFailed`; a timeout always raises :class:`CommandTimeout`.
        ``env`` replaces the environment (see :func:`env_with_path`); by default
        the caller's environment plus the sbin dirs is used.
        """
        if not argv:
            raise ValueError("run() needs a command")
        return _execute(
            [_ip_bin(), "netns", "exec", self.ns, *argv],
            display=list(argv),
            ns=self.ns,
            check=check,
            timeout=timeout,
            env=env,
            input=input,
        )

    def popen(
        self,
        *argv: str,
        env: dict[str, str] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> LabProcess:
        """Start a long-running process (node, iperf3 server...) in the namespace.

        The lab tracks it and kills it on close.  Unless redirected, stdout and
        stderr go to one log file in the lab's log dir (``proc.log_path``), because
        pipes nobody reads eventually block the writer and wedge the test.
        """
        return self.lab._popen(self, list(argv), env=env, stdout=stdout, stderr=stderr)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ip -n NS args...`` (cheaper than ``run('ip', ...)``: no mount ns)."""
        return _execute(
            [_ip_bin(), "-n", self.ns, *args],
            display=["ip", "-n", self.ns, *args],
            ns=self.ns,
            check=check,
            timeout=30,
        )

    def set_default_route(self, via4: str | None, via6: str | None = None) -> None:
        """Point the IPv4 and/or IPv6 default route at a gateway on a segment."""
        if via4 is not None:
            self.ip("-4", "route", "replace", "default", "via", via4)
        if via6 is not None:
            self.ip("-6", "route", "replace", "default", "via", via6)

    def sysctl(self, key: str, value: str) -> None:
        """Set a sysctl inside this namespace (net.* keys are per-namespace)."""
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def ping(self, addr: str, count: int = 1, timeout: float = 2.0) -> bool:
        """True if ``addr`` (v4 or v6) answers ``count`` pings within ``timeout`` s each."""
        argv = ["ping", "-n", "-q", "-c", str(count), "-W", f"{timeout:g}"]
        if count > 1:
            argv += ["-i", "0.2"]
        res = self.run(*argv, addr, check=False, timeout=count * (timeout + 0.2) + 5)
        return res.returncode == 0

    def wait_ping(self, addr: str, within: float = 10.0) -> bool:
        """Ping ``addr`` repeatedly until it answers or ``within`` s pass.

        For paths that need a moment to come up (a WireGuard handshake, a route
        the node installs asynchronously) without sprinkling sleeps in tests.
        """
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if self.ping(addr, timeout=max(0.5, min(1.0, left))):
                return True
            if time.monotonic() >= deadline:
                return False

    def write_resolv_conf(self, text: str) -> None:
        """Give this host its own /etc/resolv.conf.

        ``ip netns exec`` bind-mounts ``/etc/netns/NS/*`` over ``/etc``, so
        processes started with :meth:`run`/:meth:`popen` see this file.
        """
        d = NETNS_ETC_DIR / self.ns
        d.mkdir(parents=True, exist_ok=True)
        self.lab._etc_dirs.add(d)
        (d / "resolv.conf").write_text(text)


# ------------------------------------------------------------------------------ lab

_open_labs: weakref.WeakSet[Lab] = weakref.WeakSet()


def _close_open_labs() -> None:
    for lab in list(_open_labs):
        lab.close()


atexit.register(_close_open_labs)


class Lab:
    """A set of namespaces, segments and processes that is torn down as a unit.

    Use as a context manager (or call :meth:`close` in a fixture finalizer).  On
    an exception inside ``with`` the process logs are kept and their directory is
    printed, since that is exactly when you want to read them.
    """

    def __init__(self, prefix: str | None = None, *, log_dir: str | os.PathLike[str] | None = None):
        require_root_tools()
        self._lock = threading.Lock()
        self._closed = False
        self._hosts: dict[str, Host] = {}
        self._segments: dict[str, Segment] = {}
        self._namespaces: list[str] = []
        self._procs: list[LabProcess] = []
        self._etc_dirs: set[Path] = set()
        self._veth_seq = 0
        self._proc_seq = 0
        self.prefix = self._claim_prefix(prefix)
        try:
            if log_dir is None:
                self.log_dir = Path(tempfile.mkdtemp(prefix=f"netlab-{self.prefix}-"))
                self._owns_log_dir = True
            else:
                self.log_dir = Path(log_dir)
                self.log_dir.mkdir(parents=True, exist_ok=True)
                self._owns_log_dir = False
            self._write_marker()
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                _marker_path(self.prefix).unlink()
            raise
        _open_labs.add(self)

    # ------------------------------------------------------------------ naming

    def _claim_prefix(self, prefix: str | None) -> str:
        """Reserve a prefix by creating its marker file with O_EXCL.

        The exclusive create is what makes concurrent runs safe: two processes can
        generate the same random prefix, but only one can create the marker.
        """
        MARKER_DIR.mkdir(parents=True, exist_ok=True)
        if prefix is not None and not _PREFIX_RE.match(prefix):
            raise ValueError(
                f"lab prefix {prefix!r} must be 2-10 chars of [a-z0-9] starting with a letter"
            )
        for _ in range(50):
            cand = prefix if prefix is not None else "cp" + secrets.token_hex(2)
            try:
                fd = os.open(_marker_path(cand), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = _read_marker(_marker_path(cand))
                if prefix is None:
                    continue
                if _marker_owner_alive(info):
                    owner = info.get("pid") if info else "?"
                    raise ValueError(f"lab prefix {cand!r} is in use by pid {owner}") from None
                _teardown_orphan(cand, info)
                continue
            os.close(fd)
            leftovers = [ns for ns in _list_netns() if ns.startswith(cand + "-")]
            if not leftovers:
                return cand
            # Namespaces without a marker: not provably ours, so don't touch them.
            with contextlib.suppress(FileNotFoundError):
                _marker_path(cand).unlink()
            if prefix is not None:
                raise ValueError(
                    f"namespaces {leftovers} already use lab prefix {cand!r}; delete them "
                    "(`ip netns delete NAME`) or pick another prefix"
                )
        raise RuntimeError("could not find a free lab prefix")

    def _write_marker(self) -> None:
        info = {
            "pid": os.getpid(),
            "start_time": _proc_start_time(os.getpid()),
            "created": time.time(),
            "log_dir": str(self.log_dir),
            "owns_log_dir": self._owns_log_dir,
        }
        tmp = MARKER_DIR / f".{self.prefix}.tmp"
        tmp.write_text(json.dumps(info))
        tmp.replace(_marker_path(self.prefix))

    def ifname(self, tag: str) -> str:
        """A prefixed interface name, e.g. ``lab.ifname("wg1")`` -> ``cp1a2bwg1``.

        Use it for WireGuard interfaces: ``wireguard-go`` puts its control socket
        at ``/var/run/wireguard/<ifname>.sock``, which is shared by all namespaces,
        so two hosts (or two runs) with a ``wg0`` would clash.
        """
        name = self.prefix + tag
        _check_ifname(name)
        return name

    @property
    def hosts(self) -> dict[str, Host]:
        """Hosts by name."""
        return dict(self._hosts)

    @property
    def segments(self) -> dict[str, Segment]:
        """Segments by name."""
        return dict(self._segments)

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this lab created, in creation order."""
        return list(self._namespaces)

    def _new_ns(self, ns: str) -> None:
        if len(ns) > MAX_NAME:
            raise ValueError(
                f"namespace name {ns!r} is longer than {MAX_NAME} chars; use a shorter name"
            )
        with self._lock:
            if self._closed:
                raise RuntimeError("lab is closed")
            if ns in self._namespaces:
                raise ValueError(f"namespace {ns!r} already exists in this lab")
            self._namespaces.append(ns)
        try:
            _create_netns(ns)
        except BaseException:
            with self._lock:
                self._namespaces.remove(ns)
            raise

    # ----------------------------------------------------------------- building

    def add_host(self, name: str) -> Host:
        """Create namespace ``{prefix}-{name}`` with lo up and IPv6 DAD disabled.

        DAD is off so addresses (including link-local ones and those of WireGuard
        interfaces created later) are usable at once, not 'tentative' for ~1 s.
        """
        _check_name(name)
        ns = f"{self.prefix}-{name}"
        self._new_ns(ns)
        host = Host(self, name, ns)
        with self._lock:
            self._hosts[name] = host
        host.ip("link", "set", "lo", "up")
        host.run(
            "sysctl", "-q", "-w",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        )  # fmt: skip
        return host

    def add_segment(self, name: str, cidr4: str, cidr6: str | None = None) -> Segment:
        """Create an L2 segment: a bridge in its own namespace ``{prefix}-sw{name}``.

        STP and multicast snooping are off: STP would hold new ports in 'listening'
        for seconds, and snooping can drop IPv6 neighbour discovery on a bridge
        with no MLD querier.  IPv6 is disabled in the switch namespace so the
        switch itself never puts packets on the wire.
        """
        _check_name(name)
        net4 = ipaddress.IPv4Network(cidr4, strict=False)
        net6 = ipaddress.IPv6Network(cidr6, strict=False) if cidr6 is not None else None
        ns = f"{self.prefix}-sw{name}"
        self._new_ns(ns)
        bridge = f"{self.prefix}br{len(self._segments)}"
        _check_ifname(bridge)
        ip = _ip_bin()
        _execute(
            [ip, "netns", "exec", ns, "sysctl", "-q", "-w",
             "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
            ns=ns,
        )  # fmt: skip
        _execute(
            [ip, "-n", ns, "link", "add", bridge, "type", "bridge",
             "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"],
            ns=ns,
        )  # fmt: skip
        _execute([ip, "-n", ns, "link", "set", bridge, "up"], ns=ns)
        seg = Segment(self, name, ns, bridge, net4, net6)
        with self._lock:
            self._segments[name] = seg
        return seg

    def connect(
        self,
        host: Host,
        segment: Segment,
        ipv4: str | None,
        ipv6: str | None = None,
        ifname: str = "eth0",
    ) -> str:
        """Plug ``host`` into ``segment`` with a veth pair; returns ``ifname``.

        The pair is created directly across the two namespaces, so no interface
        ever appears in the root namespace.  Addresses get the segment's prefix
        length; IPv6 addresses are added ``nodad`` so they work immediately.
        """
        if host.lab is not self or segment.lab is not self:
            raise ValueError("host and segment must belong to this lab")
        _check_ifname(ifname)
        if ifname in host.interfaces:
            raise ValueError(f"{host.name} already has an interface {ifname}")
        addr4 = addr6 = None
        if ipv4 is not None:
            a4 = ipaddress.IPv4Address(ipv4)
            if a4 not in segment.cidr4:
                raise ValueError(f"{ipv4} is not in segment {segment.name} ({segment.cidr4})")
            addr4 = f"{a4}/{segment.cidr4.prefixlen}"
        if ipv6 is not None:
            if segment.cidr6 is None:
                raise ValueError(f"segment {segment.name} has no IPv6 prefix")
            a6 = ipaddress.IPv6Address(ipv6)
            if a6 not in segment.cidr6:
                raise ValueError(f"{ipv6} is not in segment {segment.name} ({segment.cidr6})")
            addr6 = f"{a6}/{segment.cidr6.prefixlen}"
        with self._lock:
            self._veth_seq += 1
            peer = f"{self.prefix}p{self._veth_seq}"
        _check_ifname(peer)
        ip = _ip_bin()
        _execute(
            [ip, "-n", host.ns, "link", "add", ifname, "type", "veth",
             "peer", "name", peer, "netns", segment.ns],
            ns=host.ns,
        )  # fmt: skip
        host.interfaces[ifname] = segment
        _execute(
            [ip, "-n", segment.ns, "link", "set", peer, "master", segment.bridge], ns=segment.ns
        )
        _execute([ip, "-n", segment.ns, "link", "set", peer, "up"], ns=segment.ns)
        if addr4 is not None:
            host.ip("-4", "addr", "add", addr4, "dev", ifname)
        if addr6 is not None:
            host.ip("-6", "addr", "add", addr6, "dev", ifname, "nodad")
        host.ip("link", "set", ifname, "up")
        return ifname

    def _popen(
        self,
        host: Host,
        argv: list[str],
        *,
        env: dict[str, str] | None,
        stdout: int | IO[Any] | None,
        stderr: int | IO[Any] | None,
    ) -> LabProcess:
        if not argv:
            raise ValueError("popen() needs a command")
        with self._lock:
            if self._closed:
                raise RuntimeError("lab is closed")
            self._proc_seq += 1
            seq = self._proc_seq
        log_path: Path | None = None
        log_file: IO[Any] | None = None
        if stdout is None or stderr is None:
            base = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(argv[0])) or "proc"
            log_path = self.log_dir / f"{seq:03d}-{host.name}-{base}.log"
            log_file = open(log_path, "w")  # noqa: SIM115 - handed to the child, closed below
        try:
            out = log_file if stdout is None else stdout
            err = (subprocess.STDOUT if stdout is None else log_file) if stderr is None else stderr
            proc = LabProcess(
                [_ip_bin(), "netns", "exec", host.ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(env) if env is not None else env_with_path(),
                text=True,
                start_new_session=True,
            )
        finally:
            if log_file is not None:
                log_file.close()
        proc.log_path = log_path
        proc.host = host
        with self._lock:
            self._procs.append(proc)
            closed = self._closed
        if closed:  # raced with close(): don't leak it
            proc.stop(0.5)
            raise RuntimeError("lab is closed")
        return proc

    @property
    def processes(self) -> list[LabProcess]:
        """Processes started with :meth:`Host.popen`, in start order."""
        return list(self._procs)

    def dump_logs(self) -> str:
        """All process logs concatenated, for assertion messages on failure."""
        parts = []
        for p in self._procs:
            if p.log_path is not None:
                parts.append(f"===== {p.log_path.name} (exit {p.poll()}) =====\n{p.read_log()}")
        return "\n".join(parts)

    # ---------------------------------------------------------------- teardown

    def close(self, keep_logs: bool = False) -> None:
        """Tear everything down.  Idempotent; never raises (problems are printed).

        Order matters: processes first (a namespace with live processes only
        loses its name on delete - the stack, its sockets and daemons stay alive),
        then namespaces (which destroys their veths and bridges), then files.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            procs = list(self._procs)
            namespaces = list(self._namespaces)
        _open_labs.discard(self)

        def guard(what: str, fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:
                _warn(f"{what} failed during lab {self.prefix} cleanup: {exc!r}")

        def kill_all() -> None:
            pids: set[int] = set()
            for ns in namespaces:
                pids |= _netns_pids(ns)
            _terminate(procs, pids, TERM_GRACE)
            # Anything spawned while we were waiting.
            _kill_netns_processes(namespaces, grace=0.5)

        guard("killing processes", kill_all)
        for ns in reversed(namespaces):
            guard(f"deleting netns {ns}", _delete_netns, ns)
        guard("removing wireguard sockets", _remove_wg_sockets, self.prefix)
        for d in {*self._etc_dirs, *(NETNS_ETC_DIR / ns for ns in namespaces)}:
            guard(f"removing {d}", shutil.rmtree, d, True)
        if self._owns_log_dir:
            if keep_logs:
                print(f"netlab: logs of lab {self.prefix} kept in {self.log_dir}", file=sys.stderr)
            else:
                guard("removing log dir", shutil.rmtree, self.log_dir, True)
        guard("removing marker", _marker_path(self.prefix).unlink, True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(keep_logs=exc_type is not None)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Lab {self.prefix} {state}: {len(self._namespaces)} namespaces>"

    @staticmethod
    def cleanup_stale(prefix_pattern: str = "cp") -> None:
        """Remove labs left behind by runs that died without closing them.

        Only labs whose marker (``/run/cloudpal-netlab/<prefix>.json``) names a
        dead process are touched, and only their namespaces (``<prefix>-*``),
        ``/etc/netns`` dirs, wireguard sockets and log dirs.  Namespaces matching
        the scheme but without a marker are left alone: nothing proves they are
        ours.  Safe to call while other labs are running.
        """
        try:
            markers = sorted(MARKER_DIR.glob(f"{prefix_pattern}*.json"))
        except OSError:
            return
        for marker in markers:
            info = _read_marker(marker)
            if info is None:
                # Freshly O_EXCL-created and not yet written, or garbage.  Only
                # treat it as stale once it is clearly old.
                with contextlib.suppress(OSError):
                    if time.time() - marker.stat().st_mtime > 60:
                        _teardown_orphan(marker.stem, None)
                continue
            if not _marker_owner_alive(info):
                _teardown_orphan(marker.stem, info)


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(f"lab name {name!r} must be [A-Za-z0-9_-] and start alphanumeric")


def _check_ifname(name: str) -> None:
    if not _IFNAME_RE.match(name) or name in (".", ".."):
        raise ValueError(f"interface name {name!r} must be 1-{MAX_NAME} chars of [A-Za-z0-9_.-]")
