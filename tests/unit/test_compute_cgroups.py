"""cgroups: real groups on this host (limits really throttle, meter, OOM-kill, stop forks) plus the v2
file handling over a fake tree, so both layouts are covered whichever one the host has.

The real tests need root and cgroups; they fail (never skip) when those are missing, because the compute
pillar cannot confine apps without them. Each run uses its own parent group and removes it.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from cloudpal.compute.cgroups import Cgroup, Limits, Usage, available
from cloudpal.errors import HostError, InvalidInput, NotFound

MiB = 1 << 20
BUSY = "while True: pass"
HOLD_50M = "import sys; b = b'\\x01' * (50 << 20); print('ok', flush=True); sys.stdin.read()"
FORK_LOOP = """
import os, time
kids, err = [], None
for _ in range(50):
    try:
        pid = os.fork()
    except OSError as exc:
        err = exc.errno
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
print(len(kids), err, flush=True)
for k in kids:
    os.kill(k, 9)
    os.waitpid(k, 0)
"""

Make = Callable[[str, Limits], Cgroup]


class Spawn(Protocol):
    def __call__(self, group: Cgroup, code: str, **kw: Any) -> subprocess.Popen[str]: ...


# ---------------------------------------------------------------- real cgroups


@pytest.fixture
def make_group() -> Iterator[Make]:
    reason = available()
    if reason is not None:
        pytest.fail(f"cgroups are unusable on this host, so app confinement cannot be tested: {reason}")
    parent = f"cloudpal-test-{os.getpid()}"
    groups: list[Cgroup] = []

    def make(name: str, limits: Limits) -> Cgroup:
        group = Cgroup.create(name, limits, parent=parent)
        groups.append(group)
        return group

    yield make
    try:
        for group in groups:
            group.remove()
            assert not any(path.exists() for path in group.paths)
    finally:  # the parent goes even when a test left its group behind in a bad state
        for group in groups:
            group.remove()
        for parent_dir in {p.parent for g in groups for p in g.paths}:
            os.rmdir(parent_dir)


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    children: list[subprocess.Popen[str]] = []

    def run(group: Cgroup, code: str, **kw: Any) -> subprocess.Popen[str]:
        files = group.procs_files()

        def join() -> None:  # in the child, before exec: born inside the group
            for path in files:
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, b"0")
                os.close(fd)

        child = subprocess.Popen([sys.executable, "-c", code], preexec_fn=join, text=True, **kw)
        children.append(child)
        return child

    yield run
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


def cpu_rate(group: Cgroup, seconds: float) -> tuple[float, Usage]:
    before, start = group.usage(), time.monotonic()
    time.sleep(seconds)
    after, end = group.usage(), time.monotonic()
    return (after.cpu_seconds - before.cpu_seconds) / (end - start), after


def quota_file(group: Cgroup) -> str:
    cpu = group.paths[0]  # the cpu hierarchy comes first
    name = "cpu.max" if group.version == 2 else "cpu.cfs_quota_us"
    return (cpu / name).read_text().strip()


def dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"  # a zombie is dead, only waiting to be reaped


def test_busy_child_is_born_inside_is_throttled_and_quota_changes_live(
    make_group: Make, spawn: Spawn
) -> None:
    group = make_group("busy", Limits(cpu_percent=20))
    child = spawn(group, BUSY)
    time.sleep(0.2)
    assert child.pid in group.pids()
    assert f"/cloudpal-test-{os.getpid()}/busy" in Path(f"/proc/{child.pid}/cgroup").read_text()

    rate, usage = cpu_rate(group, 1.5)
    assert 0.1 <= rate <= 0.3, f"cpu rate {rate:.2f} with a 20% quota"
    assert usage.nr_throttled > 0 and usage.throttled_seconds > 0
    assert usage.nr_periods >= usage.nr_throttled

    group.set_limits(Limits(cpu_percent=60))
    assert quota_file(group).split()[0] == "60000"
    rate, _ = cpu_rate(group, 1.0)
    assert 0.35 <= rate <= 0.75, f"cpu rate {rate:.2f} after raising the quota to 60%"


def test_memory_peak_is_recorded_and_reset(make_group: Make, spawn: Spawn) -> None:
    group = make_group("peak", Limits(cpu_percent=None))
    child = spawn(group, "b = b'\\x01' * (50 << 20)")
    assert child.wait(timeout=10) == 0
    usage = group.usage()
    assert usage.memory_peak_bytes >= 50 * MiB
    assert usage.memory_bytes < usage.memory_peak_bytes
    group.reset_peak()
    assert group.usage().memory_peak_bytes < 50 * MiB


def test_memory_limit_oom_kills(make_group: Make, spawn: Spawn) -> None:
    group = make_group("oom", Limits(cpu_percent=None, memory_bytes=30 * MiB))
    child = spawn(group, "b = b'\\x01' * (100 << 20)")
    assert child.wait(timeout=10) == -signal.SIGKILL
    assert group.usage().memory_peak_bytes <= 30 * MiB


def test_lowering_memory_below_usage(make_group: Make, spawn: Spawn) -> None:
    group = make_group("lower", Limits(cpu_percent=None, memory_bytes=200 * MiB))
    child = spawn(group, HOLD_50M, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == "ok\n"
    if group.version == 1:  # v1 refuses with EBUSY: the caller is told, the old limit stays
        with pytest.raises(
            HostError, match=r"Cannot lower the memory limit .* to 10485760 bytes: it uses \d+"
        ):
            group.set_limits(Limits(cpu_percent=None, memory_bytes=10 * MiB))
        assert child.poll() is None
    else:  # v2 accepts the limit and the kernel OOM-kills to meet it
        group.set_limits(Limits(cpu_percent=None, memory_bytes=10 * MiB))
        assert child.wait(timeout=10) == -signal.SIGKILL


def test_pids_limit_stops_fork_loop(make_group: Make, spawn: Spawn) -> None:
    group = make_group("forks", Limits(cpu_percent=None, pids=5))
    child = spawn(group, FORK_LOOP, stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=10)
    forked, err = out.split()
    assert (int(forked), err) == (4, str(errno.EAGAIN))  # the loop itself is the fifth process
    assert child.returncode == 0


def test_add_moves_a_running_process(make_group: Make) -> None:
    group = make_group("added", Limits(cpu_percent=None))
    child = subprocess.Popen(["sleep", "30"])
    try:
        group.add(child.pid)
        assert group.pids() == [child.pid]
    finally:
        child.kill()
        child.wait()
    with pytest.raises(NotFound, match=f"Process {child.pid} does not exist"):
        group.add(child.pid)


def test_kill_all_and_remove_leave_nothing(make_group: Make, spawn: Spawn) -> None:
    group = make_group("doomed", Limits(cpu_percent=50, pids=20))
    code = "import subprocess\nfor _ in range(3):\n    subprocess.Popen(['sleep', '60'])\n" + BUSY
    child = spawn(group, code)
    deadline = time.monotonic() + 5
    while len(group.pids()) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    members = group.pids()
    assert len(members) == 4 and child.pid in members

    group.kill_all()
    assert child.wait(timeout=5) == -signal.SIGKILL
    group.remove()
    assert all(dead(pid) for pid in members)
    assert not any(p.exists() for p in group.paths)
    assert Cgroup.open("doomed", parent=f"cloudpal-test-{os.getpid()}") is None
    group.remove()  # idempotent: already gone


def test_create_is_idempotent_and_open_finds_it(make_group: Make) -> None:
    parent = f"cloudpal-test-{os.getpid()}"
    assert Cgroup.open("again", parent=parent) is None
    group = make_group("again", Limits(cpu_percent=30))
    again = Cgroup.create("again", Limits(cpu_percent=70), parent=parent)
    assert again.paths == group.paths
    assert quota_file(group).split()[0] == "70000"
    opened = Cgroup.open("again", parent=parent)
    assert opened is not None and opened.version == group.version and opened.paths == group.paths
    assert set(group.procs_files()) == {p / "cgroup.procs" for p in group.paths}


@pytest.mark.parametrize("name", ["", "App", "-app", "a_b", "a/b", "..", "a" * 64, "é", "a b"])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="is not valid"):
        Cgroup.create(name, Limits(cpu_percent=10))
    with pytest.raises(InvalidInput, match="is not valid"):
        Cgroup.open("ok", parent=name)


@pytest.mark.parametrize(
    "kw",
    [
        {"cpu_percent": 0},
        {"cpu_percent": -5},
        {"cpu_percent": True},
        {"cpu_percent": 1.5},
        {"cpu_percent": 10, "cpu_weight": 0},
        {"cpu_percent": 10, "cpu_weight": 10_001},
        {"cpu_percent": 10, "memory_bytes": 0},
        {"cpu_percent": 10, "pids": 0},
    ],
)
def test_invalid_limits_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(InvalidInput, match="limit must be a whole number"):
        Limits(**kw)  # type: ignore[arg-type]


def test_available_here() -> None:
    assert available() is None, "cgroups must be usable on the test host"


# ---------------------------------------------------------------- fake trees (file handling)

V2_GROUP_FILES = {
    "cgroup.procs": "",
    "cgroup.kill": "",
    "cpu.max": "max 100000\n",
    "cpu.weight": "100\n",
    "cpu.stat": "usage_usec 0\n",
    "memory.max": "max\n",
    "memory.swap.max": "max\n",
    "memory.current": "0\n",
    "memory.peak": "0\n",
    "pids.max": "max\n",
}


def fake_v2(root: Path, *, enabled: str = "", skip: tuple[str, ...] = ()) -> Path:
    """A unified hierarchy with cpu, memory and pids, and the group dir cloudpal/app with its files."""
    group = root / "cloudpal" / "app"
    group.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (root / "cgroup.subtree_control").write_text(enabled)
    (root / "cloudpal" / "cgroup.subtree_control").write_text("")
    (root / "cloudpal" / "cgroup.procs").write_text("")
    for name, text in V2_GROUP_FILES.items():
        if name not in skip:
            (group / name).write_text(text)
    return group


def test_v2_create_delegates_controllers_and_writes_limits(tmp_path: Path) -> None:
    d = fake_v2(tmp_path)
    group = Cgroup.create(
        "app", Limits(cpu_percent=250, cpu_weight=50, memory_bytes=64 * MiB, pids=32), root=tmp_path
    )
    assert group.version == 2
    assert group.paths == (d,) and group.procs_files() == (d / "cgroup.procs",)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (tmp_path / "cloudpal" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    files = {
        name: (d / name).read_text()
        for name in ("cpu.max", "cpu.weight", "memory.max", "memory.swap.max", "pids.max")
    }
    assert files == {
        "cpu.max": "250000 100000",
        "cpu.weight": "50",
        "memory.max": str(64 * MiB),
        "memory.swap.max": "0",
        "pids.max": "32",
    }
    group.set_limits(Limits(cpu_percent=None))
    files = {
        name: (d / name).read_text() for name in ("cpu.max", "memory.max", "memory.swap.max", "pids.max")
    }
    assert files == {
        "cpu.max": "max 100000",
        "memory.max": "max",
        "memory.swap.max": "max",
        "pids.max": "max",
    }


def test_v2_controllers_already_enabled_are_left_alone(tmp_path: Path) -> None:
    fake_v2(tmp_path, enabled="cpuset cpu io memory pids\n", skip=("memory.swap.max",))
    (tmp_path / "cloudpal" / "cgroup.subtree_control").write_text("cpu memory\n")
    Cgroup.create("app", Limits(cpu_percent=10, memory_bytes=MiB), root=tmp_path)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "cpuset cpu io memory pids\n"
    assert (tmp_path / "cloudpal" / "cgroup.subtree_control").read_text() == "+pids"
    assert not (tmp_path / "cloudpal" / "app" / "memory.swap.max").exists()  # no swap accounting: skipped


def test_v2_usage_parsing(tmp_path: Path) -> None:
    d = fake_v2(tmp_path)
    (d / "cpu.stat").write_text(
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 40\nnr_throttled 12\n"
        "throttled_usec 750000\nnr_bursts 0\nburst_usec 0\n"
    )
    (d / "memory.current").write_text("1048576\n")
    (d / "memory.peak").write_text("8388608\n")
    (d / "cgroup.procs").write_text("12\n7\n")
    group = Cgroup.open("app", root=tmp_path)
    assert group is not None
    assert group.usage() == Usage(
        cpu_seconds=2.5,
        memory_bytes=MiB,
        memory_peak_bytes=8 * MiB,
        nr_periods=40,
        nr_throttled=12,
        throttled_seconds=0.75,
    )
    assert group.pids() == [7, 12]


def test_v2_peak_without_memory_peak_tracks_samples(tmp_path: Path) -> None:
    d = fake_v2(tmp_path, skip=("memory.peak",))
    group = Cgroup.create("app", Limits(cpu_percent=None), root=tmp_path)
    for current, peak in ((100, 100), (300, 300), (50, 300)):
        (d / "memory.current").write_text(f"{current}\n")
        assert group.usage().memory_peak_bytes == peak
    group.reset_peak()
    assert group.usage().memory_peak_bytes == 50


def test_v2_reset_peak_through_writable_memory_peak(tmp_path: Path) -> None:
    d = fake_v2(tmp_path)
    (d / "memory.current").write_text("4096\n")
    (d / "memory.peak").write_text("999999\n")
    group = Cgroup.create("app", Limits(cpu_percent=None), root=tmp_path)
    assert group.usage().memory_peak_bytes == 999999
    group.reset_peak()  # the fake file now holds "reset", not a number: falls back to samples
    assert (d / "memory.peak").read_text() == "reset"
    assert group.usage().memory_peak_bytes == 4096


def test_v2_kill_all_uses_cgroup_kill(tmp_path: Path) -> None:
    d = fake_v2(tmp_path)
    group = Cgroup.create("app", Limits(cpu_percent=None), root=tmp_path)
    group.kill_all()
    assert (d / "cgroup.kill").read_text() == "1"


def test_v2_missing_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io\n")
    with pytest.raises(HostError, match="lacks the memory, pids controller"):
        Cgroup.create("app", Limits(cpu_percent=10), root=tmp_path)
    reason = available(tmp_path)
    assert reason is not None and "lacks the memory, pids controller" in reason


def test_no_cgroups_at_all(tmp_path: Path) -> None:
    reason = available(tmp_path)
    assert reason is not None and reason.startswith(f"No usable cgroups at {tmp_path}")


def test_failed_create_leaves_nothing(tmp_path: Path) -> None:
    fake_v2(tmp_path)
    (tmp_path / "cloudpal" / "app").rename(tmp_path / "elsewhere")  # new group dir will lack its files
    with pytest.raises(HostError, match=r"cpu.max: it does not exist \(the cgroup controller"):
        Cgroup.create("fresh", Limits(cpu_percent=10), root=tmp_path)
    assert not (tmp_path / "cloudpal" / "fresh").exists()
    assert (tmp_path / "cloudpal").exists()  # not ours to remove: it existed before


def test_v1_layout_with_comounted_cpu_cpuacct(tmp_path: Path) -> None:
    (tmp_path / "cpu,cpuacct").mkdir()
    (tmp_path / "cpu").symlink_to("cpu,cpuacct")
    (tmp_path / "cpuacct").symlink_to("cpu,cpuacct")
    for hierarchy in ("cpu,cpuacct", "memory", "pids"):
        (tmp_path / hierarchy / "cgroup.procs").parent.mkdir(exist_ok=True)
        (tmp_path / hierarchy / "cgroup.procs").write_text("")
        (tmp_path / hierarchy / "cloudpal" / "app").mkdir(parents=True)
    cpu, memory, pids = (tmp_path / h / "cloudpal" / "app" for h in ("cpu", "memory", "pids"))
    for d, names in (
        (cpu, ("cgroup.procs", "cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares", "cpuacct.usage")),
        (memory, ("cgroup.procs", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes")),
        (pids, ("cgroup.procs", "pids.max")),
    ):
        for name in names:
            (d / name).write_text("9223372036854771712\n" if "limit" in name else "0\n")
    (cpu / "cpu.stat").write_text("nr_periods 10\nnr_throttled 4\nthrottled_time 300000000\n")
    (cpu / "cpuacct.usage").write_text("1500000000\n")
    (memory / "memory.usage_in_bytes").write_text("2097152\n")
    (memory / "memory.max_usage_in_bytes").write_text("6291456\n")

    group = Cgroup.create(
        "app", Limits(cpu_percent=20, cpu_weight=50, memory_bytes=30 * MiB, pids=5), root=tmp_path
    )
    assert group.version == 1
    assert len(group.paths) == 3  # cpu and cpuacct are one hierarchy, used once
    assert [p.read_text() for p in (cpu / "cpu.cfs_quota_us", cpu / "cpu.shares", pids / "pids.max")] == [
        "20000",
        "512",
        "5",
    ]
    assert (memory / "memory.limit_in_bytes").read_text() == str(30 * MiB)
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == str(30 * MiB)
    assert group.usage() == Usage(
        cpu_seconds=1.5,
        memory_bytes=2 * MiB,
        memory_peak_bytes=6 * MiB,
        nr_periods=10,
        nr_throttled=4,
        throttled_seconds=0.3,
    )
    group.reset_peak()
    assert (memory / "memory.max_usage_in_bytes").read_text() == "0"
    group.set_limits(Limits(cpu_percent=None))
    assert (cpu / "cpu.cfs_quota_us").read_text() == "-1"
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == "-1"
