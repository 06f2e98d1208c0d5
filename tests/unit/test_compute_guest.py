"""What a microVM boots, built without booting: cpio archives, the app config script, the image's
users, kernel extraction, the base initramfs and the ext4 disks.

The app config is generated from image metadata (attacker-chosen strings) and sourced by the guest's
shell, so its quoting is checked by round-tripping hostile strings through a real ``busybox sh``.
"""

from __future__ import annotations

import io
import lzma
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudpal.compute import guest
from cloudpal.compute.guest import CpioEntry, parse_cpio, write_cpio
from cloudpal.errors import Conflict, HostError, InvalidInput

BUSYBOX = shutil.which("busybox")
ELF = b"\x7fELF\x02\x01\x01" + bytes(57) + b"kernel text " * 1000


def _need(tool: str | None, what: str) -> str:
    assert tool is not None, f"this test needs {what}: run `make deps`"
    return tool


# ---------------------------------------------------------------- cpio


def _sample_entries() -> list[CpioEntry]:
    return [
        CpioEntry("bin", stat.S_IFDIR | 0o755),
        CpioEntry("bin/tool", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n", uid=7, gid=8, mtime=1_700_000),
        CpioEntry("bin/odd", stat.S_IFREG | 0o644, b"x" * 4097),
        CpioEntry("bin/empty", stat.S_IFREG | 0o600, b""),
        CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"tool"),
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("a name with spaces and ünïcode", stat.S_IFREG | 0o644, b"\0\1\2"),
    ]


def test_cpio_round_trip_and_concatenation() -> None:
    buf = io.BytesIO()
    write_cpio(buf, _sample_entries())
    data = buf.getvalue()
    assert len(data) % 4 == 0
    assert parse_cpio(data) == _sample_entries()
    second = io.BytesIO()
    write_cpio(second, [CpioEntry("cloudpal/app.sh", stat.S_IFREG | 0o644, b"APP_NAME=x\n")])
    both = parse_cpio(data + second.getvalue())
    assert [e.name for e in both] == [e.name for e in _sample_entries()] + ["cloudpal/app.sh"]


def test_cpio_is_readable_by_gnu_cpio(tmp_path: Path) -> None:
    cpio = _need(shutil.which("cpio"), "cpio")
    archive = tmp_path / "a.cpio"
    with open(archive, "wb") as f:
        write_cpio(f, [e for e in _sample_entries() if not stat.S_ISCHR(e.mode)])
    with open(archive, "rb") as f:
        out = subprocess.run([cpio, "-it", "--quiet"], stdin=f, capture_output=True, check=True).stdout
    listed = out.decode()
    assert listed.splitlines() == [e.name for e in _sample_entries() if not stat.S_ISCHR(e.mode)]
    dest = tmp_path / "x"
    dest.mkdir()
    with open(archive, "rb") as f:
        subprocess.run([cpio, "-idm", "--quiet"], stdin=f, cwd=dest, check=True)
    assert (dest / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.readlink(dest / "bin" / "sh") == "tool"
    assert (dest / "bin" / "odd").read_bytes() == b"x" * 4097


def test_parse_cpio_rejects_garbage() -> None:
    with pytest.raises(InvalidInput):
        parse_cpio(b"not a cpio archive at all")
    buf = io.BytesIO()
    write_cpio(buf, [CpioEntry("f", stat.S_IFREG | 0o644, b"y" * 100)])
    with pytest.raises(InvalidInput, match="truncated"):
        parse_cpio(buf.getvalue()[:150])


# ---------------------------------------------------------------- app.sh


def _run_app_sh(tmp_path: Path, script: str, body: str) -> bytes:
    bb = _need(BUSYBOX, "busybox")
    (tmp_path / "app.sh").write_text(script)
    proc = subprocess.run([bb, "sh", "-c", f". ./app.sh\n{body}"], cwd=tmp_path, capture_output=True,
                          env={"PATH": "/usr/bin:/bin"}, timeout=20)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


HOSTILE = st.one_of(
    st.text(alphabet="a '\"\\$`!;&|*?()[]{}<>#~=\n\r\t-_%^é", max_size=30),
    st.lists(st.sampled_from(["$(touch PWNED)", "`touch PWNED`", "'\\''", "\"$HOME\"", "${x:-y}", "\n", " "]),
             max_size=6).map("".join),
    st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=20),
)
NAMES = st.from_regex(r"V_[A-Za-z0-9_]{0,10}", fullmatch=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    argv=st.lists(HOSTILE, min_size=1, max_size=6),
    env=st.dictionaries(NAMES, HOSTILE, max_size=5),
    name=HOSTILE,
    workdir=HOSTILE,
)
def test_app_sh_round_trips_hostile_strings(
    tmp_path: Path, argv: list[str], env: dict[str, str], name: str, workdir: str
) -> None:
    script = guest.app_script(name=name, argv=argv, env=env, workdir=workdir, uid=1000, gid=100,
                              ports=[8080, 443, 8080])  # fmt: skip
    names = sorted(env)
    body = (
        'app_start() { printf "%s\\0" "$@"; }\n'
        "app_exec\n"
        'printf "%s\\0" "$APP_NAME" "$APP_WORKDIR" "$APP_UID" "$APP_GID" "$APP_PORTS"\n'
        "app_env\n" + "".join(f'printf "%s\\0" "${n}"\n' for n in names)
    )
    out = _run_app_sh(tmp_path, script, body).split(b"\0")[:-1]
    got = [x.decode() for x in out]
    assert got[: len(argv)] == argv
    assert got[len(argv) : len(argv) + 5] == [name, workdir or "/", "1000", "100", "443 8080"]
    assert got[len(argv) + 5 :] == [env[n] for n in names]
    assert not (tmp_path / "PWNED").exists()


def test_app_sh_exports_only_inside_app_env(tmp_path: Path) -> None:
    script = guest.app_script(name="x", argv=["a"], env={"FOO": "1"}, workdir="/", uid=0, gid=0, ports=[])
    body = 'printf "%s" "${FOO:-unset}"; app_env; printf "%s" "$FOO"'
    assert _run_app_sh(tmp_path, script, body) == b"unset1"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"argv": []}, "no command"),
        ({"argv": ["a\0b"]}, "NUL"),
        ({"env": {"A-B": "x"}}, "not a valid name"),
        ({"env": {"A=B": "x"}}, "not a valid name"),
        ({"env": {"A": "x\0"}}, "NUL"),
        ({"uid": -1}, "out of range"),
        ({"gid": 2**32}, "out of range"),
        ({"ports": [0]}, "between 1 and 65535"),
        ({"ports": [70000]}, "between 1 and 65535"),
    ],
)
def test_app_sh_refuses_what_it_cannot_express(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"name": "x", "argv": ["a"], "env": {}, "workdir": "/", "uid": 0, "gid": 0,
                               "ports": [80]}  # fmt: skip
    args.update(kwargs)
    with pytest.raises(InvalidInput, match=match):
        guest.app_script(**args)  # type: ignore[arg-type]


def test_app_config_cpio_and_initrd(tmp_path: Path) -> None:
    base = tmp_path / "base.cpio"
    with open(base, "wb") as f:
        write_cpio(f, [CpioEntry("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n")])
    cfg = guest.app_config_cpio(tmp_path / "app.cpio", name="web", argv=["httpd", "-f"], env={"A": "b"},
                                workdir="/srv", uid=5, gid=6, ports=[80])  # fmt: skip
    initrd = guest.app_initrd(base, cfg, tmp_path / "initrd")
    entries = {e.name: e for e in parse_cpio(initrd.read_bytes())}
    assert set(entries) == {"init", "cloudpal", "cloudpal/app.sh"}
    text = entries["cloudpal/app.sh"].data.decode()
    assert "set -- httpd -f" in text and "APP_PORTS=80" in text and "APP_HOSTNAME=web" in text
    assert not list(tmp_path.glob(".tmp-*"))


# ---------------------------------------------------------------- resolve_user


@pytest.fixture
def image(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n# a comment\nwww:x:33:34::/var/www:/bin/false\nbroken\n"
        "app:x:1000:1000::/home/app:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nstaff:x:50:app\nwww:x:34:\n")
    return root


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", (0, 0)),
        ("root", (0, 0)),
        ("www", (33, 34)),
        ("app", (1000, 1000)),
        ("33", (33, 34)),  # a known uid takes its primary group
        ("4242", (4242, 0)),  # an unknown uid runs with gid 0, as docker does
        ("4242:77", (4242, 77)),
        ("www:staff", (33, 50)),
        ("app:0", (1000, 0)),
        ("1000:www", (1000, 34)),
    ],
)
def test_resolve_user(image: Path, user: str, expected: tuple[int, int]) -> None:
    assert guest.resolve_user(image, user) == expected


@pytest.mark.parametrize(
    ("user", "match"),
    [
        ("nobody", "not in its /etc/passwd"),
        ("www:nogroup", "not in its /etc/group"),
        ("www:", "empty group"),
        ("99999999999", "out of range"),
        ("a\nb", "control character"),
    ],
)
def test_resolve_user_refusals(image: Path, user: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        guest.resolve_user(image, user)


def test_resolve_user_follows_symlinks_only_inside_the_image(tmp_path: Path) -> None:
    outside = tmp_path / "host"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc" / "passwd").write_text("decoy:x:4242:4242::/:/bin/sh\n")
    root = outside / "rootfs"
    (root / "usr" / "share").mkdir(parents=True)
    (root / "usr" / "share" / "passwd").write_text("inside:x:7:8::/:/bin/sh\n")

    # An absolute link resolves against the image's root, like in the guest.
    (root / "etc").mkdir()
    (root / "etc" / "passwd").symlink_to("/usr/share/passwd")
    assert guest.resolve_user(root, "inside") == (7, 8)

    # A link climbing out with ../ stops at the image's root and never reads the host's file.
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").symlink_to("../../../etc/passwd")  # = host/etc/passwd if followed naively
    with pytest.raises(InvalidInput):
        guest.resolve_user(root, "decoy")

    # /etc itself pointing outside.
    (root / "etc" / "passwd").unlink()
    (root / "etc").rmdir()
    (root / "etc").symlink_to(str(outside / "etc"))
    with pytest.raises(InvalidInput, match="not in its /etc/passwd"):
        guest.resolve_user(root, "decoy")
    assert guest.resolve_user(root, "4242") == (4242, 0)  # numeric still works: no passwd needed


def test_resolve_user_refuses_special_files(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    os.mkfifo(root / "etc" / "passwd")  # reading it would hang
    with pytest.raises(InvalidInput, match="not a regular file"):
        guest.resolve_user(root, "app")


# ---------------------------------------------------------------- kernel


def _fake_bzimage(payload: bytes, version: str = "9.9.9-test") -> bytes:
    head = bytearray(0x4000)
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x20E, 0x1000)
    text = f"{version} (builder@x) #1\0".encode()
    head[0x1200 : 0x1200 + len(text)] = text
    return bytes(head) + payload + b"\0trailing junk after the stream" * 10


def test_kernel_extraction_from_xz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "vmlinuz-fake"
    decoy = lzma.compress(b"not an elf", format=lzma.FORMAT_XZ)
    fake.write_bytes(_fake_bzimage(decoy + lzma.compress(ELF, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)))
    monkeypatch.setenv("CLOUDPAL_GUEST_KERNEL", str(fake))
    assert guest.find_guest_kernel() == ("9.9.9-test", fake)
    out = guest.kernel_image(tmp_path / "cache")
    assert out == tmp_path / "cache" / "vmlinux-9.9.9-test"
    assert out.read_bytes() == ELF
    mtime = out.stat().st_mtime_ns
    assert guest.kernel_image(tmp_path / "cache").stat().st_mtime_ns == mtime  # cached


def test_kernel_extraction_refuses_non_elf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "vmlinuz-bad"
    fake.write_bytes(_fake_bzimage(lzma.compress(b"\x00" * 5000, format=lzma.FORMAT_XZ)))
    monkeypatch.setenv("CLOUDPAL_GUEST_KERNEL", str(fake))
    with pytest.raises(HostError, match="compressed ELF kernel"):
        guest.kernel_image(tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*"))
    monkeypatch.setenv("CLOUDPAL_GUEST_KERNEL", str(tmp_path / "missing"))
    with pytest.raises(HostError, match="not a file"):
        guest.find_guest_kernel()


def test_real_guest_kernel_is_found() -> None:
    version, path = guest.find_guest_kernel()
    assert path.is_file() and version in path.name and "-rt-" not in version


def test_is_static_elf() -> None:
    assert guest._is_static_elf(Path(_need(BUSYBOX, "busybox-static")).read_bytes())
    assert not guest._is_static_elf(Path("/bin/sh").resolve().read_bytes())  # dynamically linked
    assert not guest._is_static_elf(b"#!/bin/sh\n")


# ---------------------------------------------------------------- initramfs


def _fake_modules(moddir: Path) -> None:
    kernel = moddir / "kernel"
    kernel.mkdir(parents=True)
    deps = []
    for name in guest.MODULES:
        rel = f"kernel/{name.replace('_', '-') if name == 'virtio_net' else name}.ko"
        data = ELF + name.encode()
        if name in ("ext4", "jbd2"):
            rel += ".xz"
            data = lzma.compress(data)
        (moddir / rel).write_bytes(data)
        needs = {"ext4": "kernel/jbd2.ko.xz kernel/crc16.ko kernel/mbcache.ko", "jbd2": "kernel/crc16.ko",
                 "virtio_mmio": "kernel/virtio.ko kernel/virtio_ring.ko"}.get(name, "")  # fmt: skip
        deps.append(f"{rel}: {needs}".rstrip())
    deps.reverse()
    (moddir / "modules.dep").write_text("\n".join(deps) + "\n")
    (moddir / "modules.builtin").write_text("kernel/builtin_thing.ko\n")


def test_resolve_modules_orders_dependencies_first(tmp_path: Path) -> None:
    _fake_modules(tmp_path)
    order = guest.resolve_modules(tmp_path, ["ext4", "builtin_thing", "virtio_mmio"])
    # modules.dep lists the deepest dependency last: it is loaded first
    assert order == ["kernel/mbcache.ko", "kernel/crc16.ko", "kernel/jbd2.ko.xz", "kernel/ext4.ko.xz",
                     "kernel/virtio_ring.ko", "kernel/virtio.ko", "kernel/virtio_mmio.ko"]  # fmt: skip
    with pytest.raises(HostError, match="no nonexistent module"):
        guest.resolve_modules(tmp_path, ["nonexistent"])


def test_base_initramfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "vmlinuz-fake"
    fake.write_bytes(_fake_bzimage(lzma.compress(ELF)))
    monkeypatch.setenv("CLOUDPAL_GUEST_KERNEL", str(fake))
    _fake_modules(tmp_path / "mods")
    monkeypatch.setattr(guest, "modules_dir", lambda version: tmp_path / "mods")
    path = guest.base_initramfs(tmp_path / "cache")
    entries = {e.name: e for e in parse_cpio(path.read_bytes())}
    assert entries["init"].data == (Path(guest.__file__).parent / "guest_init.sh").read_bytes()
    assert entries["init"].mode == stat.S_IFREG | 0o755
    assert guest._is_static_elf(entries["bin/busybox"].data)
    assert all(entries[f"bin/{a}"].data == b"busybox" for a in guest.APPLETS)
    assert entries["dev/console"].rdev == (5, 1) and stat.S_ISCHR(entries["dev/console"].mode)
    order = entries["cloudpal/modules.order"].data.decode().split()
    assert order.index("crc16.ko") < order.index("jbd2.ko") < order.index("ext4.ko")
    assert order.index("virtio.ko") < order.index("virtio_mmio.ko")
    for name in order:  # all stored uncompressed, as plain .ko
        assert entries[f"cloudpal/modules/{name}"].data.startswith(b"\x7fELF")
    assert entries["cloudpal/modules/ext4.ko"].data.endswith(b"ext4")
    assert stat.S_ISCHR(entries["cloudpal/dev/null"].mode)
    mtime = path.stat().st_mtime_ns
    assert guest.base_initramfs(tmp_path / "cache") == path and path.stat().st_mtime_ns == mtime


# ---------------------------------------------------------------- disks


def _dumpe2fs(path: Path) -> str:
    tool = _need(shutil.which("dumpe2fs") or "/usr/sbin/dumpe2fs", "e2fsprogs")
    return subprocess.run([tool, "-h", str(path)], capture_output=True, text=True, check=True).stdout


def test_build_rootfs_disk(tmp_path: Path) -> None:
    src = tmp_path / "rootfs"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "big").write_bytes(os.urandom(3 << 20))
    for i in range(2000):  # many small files: the inode count must follow
        (src / f"f{i}").write_text("x")
    (src / "bin" / "link").symlink_to("big")
    disk = guest.build_rootfs_disk(src, tmp_path / "out" / "rootfs.ext4")
    info = _dumpe2fs(disk)
    assert "has_journal" not in info
    assert stat.S_IMODE(disk.stat().st_mode) == 0o600
    debugfs = ["debugfs", "-R", "ls -l /bin", str(disk)]
    listing = subprocess.run(debugfs, capture_output=True, text=True, check=False).stdout
    assert "big" in listing and "link" in listing
    assert not list(disk.parent.glob(".tmp-*"))


def test_create_volume(tmp_path: Path) -> None:
    vol = guest.create_volume(tmp_path / "data.ext4", 64 << 20)
    assert stat.S_IMODE(vol.stat().st_mode) == 0o600
    assert vol.stat().st_size == 64 << 20
    assert vol.stat().st_blocks * 512 < 32 << 20  # sparse
    assert "has_journal" in _dumpe2fs(vol)
    with pytest.raises(Conflict, match="already exists"):
        guest.create_volume(vol, 64 << 20)
    with pytest.raises(InvalidInput, match="at least"):
        guest.create_volume(tmp_path / "small.ext4", 1 << 20)
    assert not list(tmp_path.glob(".tmp-*"))


def test_mkfs_failure_is_a_host_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    tool = fake_bin / "mkfs.ext4"
    tool.write_text("#!/bin/sh\necho 'mke2fs 1.47.0'\necho 'a complaint' >&2\necho 'on fire' >&2\nexit 1\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    with pytest.raises(HostError, match=r"mkfs\.ext4 failed: on fire"):
        guest.create_volume(tmp_path / "v.ext4", 32 << 20)
    assert not list(tmp_path.glob("*.ext4")) and not list(tmp_path.glob(".tmp-*"))


# ---------------------------------------------------------------- command line


def test_tsc_parsing_prefers_the_refined_value() -> None:
    text = (
        "[    0.000000] tsc: Detected 2596.000 MHz processor\n"
        "[    1.234567] tsc: Refined TSC clocksource calibration: 2596.123 MHz\n"
    )
    assert guest._tsc_from_text(text) == 2596123
    assert guest._tsc_from_text("[0.0] tsc: Detected 3000.5 MHz processor") == 3000500
    assert guest._tsc_from_text("nothing here") is None


def test_kernel_cmdline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest, "tsc_khz", lambda: 2500000)
    assert guest.kernel_cmdline("tcg").endswith(" tsc_early_khz=2500000")
    assert "tsc_early_khz" not in guest.kernel_cmdline("kvm")
    assert guest.kernel_cmdline("kvm").startswith("console=ttyS0 quiet panic=-1 pci=off")
    monkeypatch.setattr(guest, "tsc_khz", lambda: None)
    assert "tsc_early_khz" not in guest.kernel_cmdline("tcg")


def test_host_tsc_is_read() -> None:
    khz = guest.tsc_khz()
    assert khz is None or 100_000 < khz < 10_000_000
