"""What a microVM boots: the guest kernel, its initramfs, the per-app config, and the ext4 disks.

The Debian kernel is used as the guest kernel. Its bzImage is decompressed once into an ELF
``vmlinux`` because QEMU boots that directly (PVH), skipping seconds of decompression under TCG.
The initramfs is written here in Python (newc cpio, uncompressed: unpacking is cheaper than
decompressing under TCG): our ``/init`` script, a static busybox, and the virtio/ext4/overlay
modules. The per-app config is a second, tiny cpio the kernel concatenates onto the first, so the
shared base is built once per kernel and busybox.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import hashlib
import importlib.resources
import lzma
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import zstandard

from cloudpal.errors import Conflict, HostError, InvalidInput

XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b\x08"
ELF_MAGIC = b"\x7fELF"

# Loaded in this order by /init (dependencies are added in front of whatever needs them).
MODULES = (
    "virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console",
    "failover", "net_failover", "virtio_net",
    "crc16", "mbcache", "jbd2", "crc32c_generic", "libcrc32c", "ext4", "overlay",
)  # fmt: skip
# Applets /init calls by name; symlinked in /bin so a missing one fails the build, not the boot.
APPLETS = (
    "sh", "chown", "chroot", "cp", "date", "echo", "env", "insmod", "ip", "kill", "ls", "mkdir", "mount",
    "nsenter", "poweroff", "printf", "reboot", "rm", "sleep", "stat", "sync", "test", "umount",
)  # fmt: skip
KERNEL_CMDLINE = (
    "console=ttyS0 quiet panic=-1 pci=off nokaslr mitigations=off cryptomgr.notests audit=0 "
    "no_timer_check tsc=reliable random.trust_cpu=on 8250.nr_uarts=1 "
    "i8042.noaux i8042.nokbd i8042.nopnp i8042.dumbkbd"
)
INITRAMFS_FORMAT = 2  # bump when the initramfs layout changes, so caches rebuild
MAX_ETC_FILE = 4 << 20  # /etc/passwd and /etc/group of an image; bigger is an attack
MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel
BLOCK = 4096
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _atomic_path(dest: Path) -> tuple[int, Path]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".tmp-{dest.name}-")
    return fd, Path(tmp)


@contextlib.contextmanager
def _atomic_write(dest: Path, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Write ``dest`` via a temp file renamed into place, so readers never see a partial file."""
    fd, tmp = _atomic_path(dest)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


# ---------------------------------------------------------------- the guest kernel


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+~]", version))


def _bzimage_version(path: Path) -> str | None:
    """The version string a bzImage carries in its setup header (``kernel_version`` at 0x20e)."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x4000)
    except OSError:
        return None
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return None
    (offset,) = struct.unpack_from("<H", head, 0x20E)
    start = offset + 0x200
    end = head.find(b"\0", start)
    if offset == 0 or end < 0:
        return None
    return head[start:end].decode("ascii", "replace").split(" ", 1)[0] or None


@functools.cache
def _metapackage_kernels() -> tuple[str, ...]:
    """Kernel versions the ``linux-image-amd64`` metapackage depends on (asked once per process)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Depends}", "linux-image-amd64"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout  # fmt: skip
        return tuple(m.group(1) for m in re.finditer(r"linux-image-([A-Za-z0-9._+~-]+)", out))
    return ()


def find_guest_kernel() -> tuple[str, Path]:
    """The guest kernel as (version, /boot/vmlinuz path): ``CLOUDPAL_GUEST_KERNEL``, else the one
    the ``linux-image-amd64`` metapackage depends on, else the newest non-realtime kernel."""
    override = os.environ.get("CLOUDPAL_GUEST_KERNEL")
    if override:
        path = Path(override)
        if not path.is_file():
            raise HostError(f"CLOUDPAL_GUEST_KERNEL names {override!r}, which is not a file.")
        version = _bzimage_version(path) or path.name.removeprefix("vmlinuz-").removeprefix("vmlinux-")
        return re.sub(r"[^A-Za-z0-9._+~-]", "_", version)[:100] or "custom", path
    boot = Path("/boot")
    for version in _metapackage_kernels():
        candidate = boot / f"vmlinuz-{version}"
        if candidate.is_file():
            return version, candidate
    found = [
        p.name.removeprefix("vmlinuz-")
        for p in (boot.glob("vmlinuz-*") if boot.is_dir() else [])
        if p.is_file() and "-rt-" not in p.name
    ]
    if not found:
        raise HostError("No guest kernel found in /boot: install linux-image-amd64.")
    version = max(found, key=_version_key)
    return version, boot / f"vmlinuz-{version}"


def _decompress_payload(data: bytes) -> bytes | None:
    """Find the compressed kernel inside a bzImage and return it if it decompresses to an ELF."""
    for magic in (XZ_MAGIC, ZSTD_MAGIC, GZIP_MAGIC):
        start = data.find(magic)
        while start >= 0:
            out = b""
            try:
                if magic == XZ_MAGIC:
                    out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
                elif magic == ZSTD_MAGIC:
                    out = zstandard.ZstdDecompressor().decompressobj().decompress(data[start:])
                else:
                    out = zlib.decompressobj(wbits=31).decompress(data[start:])
            except (lzma.LZMAError, zstandard.ZstdError, zlib.error):
                out = b""
            if out.startswith(ELF_MAGIC):
                return out
            start = data.find(magic, start + 1)
    return None


def kernel_image(cache_dir: Path) -> Path:
    """The guest kernel as an uncompressed ELF ``cache_dir/vmlinux-<version>``, extracted once."""
    version, vmlinuz = find_guest_kernel()
    dest = Path(cache_dir) / f"vmlinux-{version}"
    with contextlib.suppress(OSError):
        if dest.stat().st_mtime_ns >= vmlinuz.stat().st_mtime_ns:  # else: a rebuilt kernel, same version
            return dest
    try:
        data = vmlinuz.read_bytes()
    except OSError as e:
        raise HostError(f"Cannot read the guest kernel {str(vmlinuz)!r}: {e.strerror}.") from None
    elf = data if data.startswith(ELF_MAGIC) else _decompress_payload(data)
    if elf is None:
        raise HostError(f"Cannot find an xz, zstd or gzip compressed ELF kernel inside {str(vmlinuz)!r}.")
    with _atomic_write(dest) as f:
        f.write(elf)
    return dest


def modules_dir(version: str) -> Path:
    return Path("/lib/modules") / version


# ---------------------------------------------------------------- cpio (newc)


@dataclass(frozen=True)
class CpioEntry:
    """One archive member. ``data`` is file content or a symlink's target; ``rdev`` = (major, minor)."""

    name: str
    mode: int
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def write_cpio(out: IO[bytes], entries: Iterable[CpioEntry]) -> None:
    """Write a newc ("070701") archive, the format the kernel unpacks into its initial rootfs."""
    for ino, e in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], 1):
        name = e.name.lstrip("/").encode() + b"\0"
        fields = (
            ino, e.mode, e.uid, e.gid, 1, e.mtime, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(name), 0,
        )  # fmt: skip
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out.write(header + name + _pad4(len(header) + len(name)))
        out.write(e.data + _pad4(len(e.data)))


def parse_cpio(data: bytes) -> list[CpioEntry]:
    """Read every member of one or more concatenated newc archives (zero padding between is skipped)."""
    entries: list[CpioEntry] = []
    pos = 0
    while pos < len(data):
        if data[pos : pos + 4] == b"\0\0\0\0":
            pos += 4
            continue
        if data[pos : pos + 6] != b"070701" or pos + 110 > len(data):
            raise InvalidInput(f"Not a newc cpio archive at offset {pos}.")
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, uid, gid, mtime, size, rmaj, rmin, namesize = f[1], f[2], f[3], f[5], f[6], f[9], f[10], f[11]
        name_end = pos + 110 + namesize
        name = data[pos + 110 : name_end - 1].decode()
        body = name_end + (-name_end % 4)
        content = data[body : body + size]
        if len(content) != size:
            raise InvalidInput(f"The cpio member {name!r} is truncated.")
        pos = body + size + (-(body + size) % 4)
        if name != "TRAILER!!!":
            entries.append(CpioEntry(name, mode, content, uid, gid, mtime, (rmaj, rmin)))
    return entries


def _dir(name: str) -> CpioEntry:
    return CpioEntry(name, stat.S_IFDIR | 0o755)


def _file(name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
    return CpioEntry(name, stat.S_IFREG | perm, data)


def _symlink(name: str, target: str) -> CpioEntry:
    return CpioEntry(name, stat.S_IFLNK | 0o777, target.encode())


# ---------------------------------------------------------------- the base initramfs


def _init_script() -> bytes:
    return importlib.resources.files("cloudpal.compute").joinpath("guest_init.sh").read_bytes()


def _is_static_elf(data: bytes) -> bool:
    """True for an x86-64 ELF executable without a program interpreter (PT_INTERP)."""
    if not data.startswith(ELF_MAGIC) or len(data) < 64 or data[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 4 > len(data):
            return False
        if struct.unpack_from("<I", data, off)[0] == 3:  # PT_INTERP
            return False
    return True


def _busybox() -> bytes:
    path = shutil.which("busybox")
    if path is None:
        raise HostError("busybox is not installed: install busybox-static.")
    data = Path(path).read_bytes()
    if not _is_static_elf(data):
        raise HostError(f"{path} is not a statically linked busybox: install busybox-static.")
    return data


def _busybox_applets(path: str) -> set[str]:
    try:
        out = subprocess.run([path, "--list"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        raise HostError(f"Cannot list the applets of {path}: install busybox-static.") from None
    return set(out.split())


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def resolve_modules(moddir: Path, wanted: Sequence[str] = MODULES) -> list[str]:
    """Relative paths (from modules.dep) of ``wanted`` and their dependencies, dependencies first.

    Modules the kernel has built in are skipped; a module it has neither way is a HostError.
    """
    try:
        dep_text = (moddir / "modules.dep").read_text()
    except OSError:
        raise HostError(f"{moddir}/modules.dep is missing: install the guest kernel's modules.") from None
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in dep_text.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[_module_name(path)] = (path.strip(), rest.split())
    builtin: set[str] = set()
    with contextlib.suppress(OSError):
        builtin = {_module_name(p) for p in (moddir / "modules.builtin").read_text().split()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, path: str | None) -> None:
        key = _module_name(path) if path else name.replace("-", "_")
        if key in seen:
            return
        seen.add(key)
        if key not in deps:
            if key in builtin:
                return
            raise HostError(f"The guest kernel has no {key} module in {moddir}.")
        mod_path, needs = deps[key]
        for dep in reversed(needs):  # modules.dep lists the deepest dependency last
            visit(_module_name(dep), dep)
        order.append(mod_path)

    for name in wanted:
        visit(name, None)
    return order


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    name = path.name
    try:
        if name.endswith(".xz"):
            data = lzma.decompress(data)
        elif name.endswith(".zst"):
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        elif name.endswith(".gz"):
            data = gzip.decompress(data)
    except (lzma.LZMAError, zstandard.ZstdError, OSError, EOFError):
        raise HostError(f"The kernel module {path} is corrupt.") from None
    if not data.startswith(ELF_MAGIC):
        raise HostError(f"The kernel module {path} is not an ELF object.")
    return data


def _app_dev() -> list[CpioEntry]:
    """The app's /dev (copied onto a tmpfs by /init): the usual nodes, no disks or control port."""
    chars = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9),
             "tty": (5, 0)}  # fmt: skip
    links = {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
             "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}  # fmt: skip
    return [
        _dir("cloudpal/dev"), _dir("cloudpal/dev/pts"), _dir("cloudpal/dev/shm"),
        *(CpioEntry(f"cloudpal/dev/{n}", stat.S_IFCHR | 0o666, rdev=rdev) for n, rdev in chars.items()),
        *(_symlink(f"cloudpal/dev/{n}", t) for n, t in links.items()),
    ]  # fmt: skip


def base_initramfs(cache_dir: Path) -> Path:
    """The shared initramfs (init, busybox, modules), cached by kernel version, busybox and init."""
    version, _ = find_guest_kernel()
    busybox = _busybox()
    init = _init_script()
    key = hashlib.sha256()
    layout = f"{INITRAMFS_FORMAT} {' '.join(MODULES)} {' '.join(APPLETS)}".encode()
    for part in (layout, version.encode(), busybox, init):
        key.update(hashlib.sha256(part).digest())
    dest = Path(cache_dir) / f"initramfs-{version}-{key.hexdigest()[:16]}.cpio"
    if dest.is_file():
        return dest
    bb_path = shutil.which("busybox")
    assert bb_path is not None
    applets = _busybox_applets(bb_path)
    missing = [a for a in APPLETS if a not in applets]
    if missing:
        raise HostError(f"busybox lacks the applets {', '.join(missing)}: install busybox-static.")
    moddir = modules_dir(version)
    modules = resolve_modules(moddir)
    entries = [_dir(d) for d in ("bin", "dev", "proc", "sys", "run", "tmp", "ro", "rw", "root", "cloudpal")]
    entries += [
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
        _file("init", init, 0o755),
        _file("bin/busybox", busybox, 0o755),
        *(_symlink(f"bin/{a}", "busybox") for a in APPLETS),
        _dir("cloudpal/modules"),
        *_app_dev(),
    ]
    names = []
    for rel in modules:
        name = _module_name(rel) + ".ko"
        names.append(name)
        entries.append(_file(f"cloudpal/modules/{name}", _read_module(moddir / rel)))
    entries.append(_file("cloudpal/modules.order", "".join(n + "\n" for n in names).encode()))
    with _atomic_write(dest) as f:
        write_cpio(f, entries)
    return dest


# ---------------------------------------------------------------- per-app config


def _check_text(value: str, what: str) -> str:
    if "\0" in value:
        raise InvalidInput(f"The app's {what} contains a NUL byte.")
    return value


def _hostname(name: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return label or "app"


def app_script(
    *, name: str, argv: Sequence[str], env: Mapping[str, str], workdir: str, uid: int, gid: int,
    ports: Iterable[int],
) -> str:  # fmt: skip
    """The text of ``/cloudpal/app.sh``: variables, ``app_env`` (exports) and ``app_exec`` (argv)."""
    if not argv:
        raise InvalidInput("The app has no command to run: the image sets no entrypoint or cmd.")
    for n in (uid, gid):
        if not 0 <= n <= MAX_ID:
            raise InvalidInput(f"The app's user or group id {n} is out of range.")
    port_list = sorted(set(ports))
    for p in port_list:
        if not 1 <= p <= 65535:
            raise InvalidInput(f"The app's port {p} is not between 1 and 65535.")
    q = shlex.quote
    lines = [
        "# CloudPal app config, sourced by /init. Generated; every value is shell-quoted.",
        f"APP_NAME={q(_check_text(name, 'name'))}",
        f"APP_HOSTNAME={q(_hostname(name))}",
        f"APP_WORKDIR={q(_check_text(workdir or '/', 'working directory'))}",
        f"APP_UID={uid}",
        f"APP_GID={gid}",
        f"APP_PORTS={q(' '.join(map(str, port_list)))}",
        "app_env() {",
        "  :",
    ]
    for key, value in env.items():
        if not ENV_NAME.fullmatch(key):
            raise InvalidInput(f"The app's environment variable name {key[:60]!r} is not a valid name.")
        lines.append(f"  export {q(key + '=' + _check_text(value, 'environment'))}")
    lines += ["}", "app_exec() {", "  set -- " + " ".join(q(_check_text(a, "command")) for a in argv)]
    lines += ['  app_start "$@"', "}", ""]
    return "\n".join(lines)


def app_config_cpio(
    dest: Path, *, name: str, argv: Sequence[str], env: Mapping[str, str], workdir: str, uid: int,
    gid: int, ports: Iterable[int],
) -> Path:  # fmt: skip
    """Write the per-app cpio holding ``/cloudpal/app.sh`` (see :func:`app_script`)."""
    script = app_script(name=name, argv=argv, env=env, workdir=workdir, uid=uid, gid=gid, ports=ports)
    dest = Path(dest)
    with _atomic_write(dest) as f:
        write_cpio(f, [_dir("cloudpal"), _file("cloudpal/app.sh", script.encode())])
    return dest


def app_initrd(base: Path, config: Path, dest: Path) -> Path:
    """The app's initrd: the base initramfs followed by its config cpio (the kernel unpacks both)."""
    dest = Path(dest)
    with _atomic_write(dest) as out:
        for part in (base, config):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    return dest


# ---------------------------------------------------------------- users from the image


def _read_in_root(root: Path, rel: str) -> bytes | None:
    """Read ``rel`` as seen from inside ``root`` (like chroot: symlinks, even absolute ones and
    ``..``, resolve within it); None if missing. Never opens anything outside ``root``."""
    stack: list[int] = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]
    todo = [p for p in rel.split("/") if p]
    hops = 0
    try:
        while todo:
            comp = todo.pop(0)
            if comp == ".":
                continue
            if comp == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            try:
                st = os.stat(comp, dir_fd=stack[-1], follow_symlinks=False)
            except FileNotFoundError:
                return None
            except NotADirectoryError:
                return None
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > 40:
                    raise InvalidInput(f"The image's /{rel} is a symlink loop.")
                target = os.readlink(comp, dir_fd=stack[-1])
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                todo = [p for p in target.split("/") if p] + todo
                continue
            if todo:
                if not stat.S_ISDIR(st.st_mode):
                    return None
                stack.append(os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=stack[-1]))
                continue
            if not stat.S_ISREG(st.st_mode):
                raise InvalidInput(f"The image's /{rel} is not a regular file.")
            fd = os.open(comp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=stack[-1])
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise InvalidInput(f"The image's /{rel} is not a regular file.")
                data = f.read(MAX_ETC_FILE + 1)
            if len(data) > MAX_ETC_FILE:
                raise InvalidInput(f"The image's /{rel} is larger than {MAX_ETC_FILE} bytes.")
            return data
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            return None
        raise InvalidInput(f"Cannot read the image's /{rel}: {e.strerror}.") from None
    finally:
        for fd in stack:
            os.close(fd)


def _parse_db(data: bytes | None) -> list[list[str]]:
    if data is None:
        return []
    rows = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def _parse_id(text: str) -> int | None:
    if not text.isascii() or not text.isdigit():
        return None
    n = int(text)
    if n > MAX_ID:
        raise InvalidInput(f"The image's user or group id {text[:20]} is out of range.")
    return n


def resolve_user(rootfs: Path, user: str) -> tuple[int, int]:
    """The (uid, gid) an image's ``user`` ("", "name", "uid", "uid:gid", "name:group") runs as,
    looked up in the image's own /etc/passwd and /etc/group."""
    if "\0" in user or "\n" in user:
        raise InvalidInput("The image's user contains a control character.")
    if not user:
        return 0, 0
    name, sep, group = user.partition(":")
    if sep and not group:
        raise InvalidInput(f"The image's user {user[:60]!r} has an empty group.")
    passwd = _parse_db(_read_in_root(Path(rootfs), "etc/passwd"))
    uid = _parse_id(name)
    gid: int | None = None
    if uid is None:
        for row in passwd:
            if row[0] == name and len(row) >= 4:
                uid, gid = _parse_id(row[2]), _parse_id(row[3])
                break
        if uid is None:
            raise InvalidInput(f"The image's user {name[:60]!r} is not in its /etc/passwd.")
    else:
        for row in passwd:
            if len(row) >= 4 and _parse_id(row[2]) == uid:
                gid = _parse_id(row[3])
                break
    if group:
        gid = _parse_id(group)
        if gid is None:
            for row in _parse_db(_read_in_root(Path(rootfs), "etc/group")):
                if row[0] == group and len(row) >= 3:
                    gid = _parse_id(row[2])
                    break
            if gid is None:
                raise InvalidInput(f"The image's group {group[:60]!r} is not in its /etc/group.")
    return uid, gid if gid is not None else 0


# ---------------------------------------------------------------- ext4 disks


def _mkfs(args: list[str], target: Path) -> None:
    mkfs = shutil.which("mkfs.ext4") or next(
        (p for p in ("/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4") if os.access(p, os.X_OK)), None
    )
    if mkfs is None:
        raise HostError("mkfs.ext4 is not installed: install e2fsprogs.")
    try:
        proc = subprocess.run([mkfs, *args, str(target)], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise HostError("mkfs.ext4 took longer than 10 minutes.") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise HostError(f"mkfs.ext4 failed: {lines[-1] if lines else f'exit status {proc.returncode}'}")


def _tree_usage(root: Path) -> tuple[int, int]:
    """(bytes in 4 KiB blocks, inodes) a directory tree needs on ext4, hardlinks counted once."""
    seen: set[tuple[int, int]] = set()
    blocks = inodes = 1
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            inodes += 1
            if stat.S_ISREG(st.st_mode) or (stat.S_ISLNK(st.st_mode) and st.st_size > 59):
                blocks += -(-st.st_size // BLOCK) + (1 if st.st_size > 12 * BLOCK else 0)
            elif stat.S_ISDIR(st.st_mode):
                blocks += max(1, -(-st.st_size // BLOCK))
    return blocks * BLOCK, inodes


def rootfs_disk_geometry(rootfs_dir: Path) -> tuple[int, int]:
    """(image size in bytes, inode count) for an ext4 image holding ``rootfs_dir``, with margin."""
    used, inodes = _tree_usage(rootfs_dir)
    inodes = inodes + inodes // 4 + 256
    size = used + used // 5 + inodes * 256 + (16 << 20)
    return -(-size // (1 << 20)) << 20, inodes


def build_rootfs_disk(rootfs_dir: Path, dest: Path) -> Path:
    """An ext4 image of ``rootfs_dir`` (read-only in the guest, so no journal), built atomically."""
    rootfs_dir, dest = Path(rootfs_dir), Path(dest)
    if not rootfs_dir.is_dir():
        raise InvalidInput(f"The image root filesystem {str(rootfs_dir)!r} is not a directory.")
    size, inodes = rootfs_disk_geometry(rootfs_dir)
    return _new_ext4(dest, size, ["-N", str(inodes), "-O", "^has_journal", "-E", "root_owner=0:0",
                                  "-L", "rootfs", "-d", str(rootfs_dir)], replace=True)


def _new_ext4(dest: Path, size: int, args: list[str], *, replace: bool) -> Path:
    """mkfs.ext4 into a sparse temp file of ``size`` bytes (0600), then put it at ``dest``: replacing
    what is there, or (``replace=False``) linking, so a file created meanwhile is never replaced."""
    fd, tmp = _atomic_path(dest)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, size)
        os.close(fd)
        fd = -1
        _mkfs(["-q", "-F", "-b", str(BLOCK), "-m", "0", *args], tmp)
        if replace:
            os.replace(tmp, dest)
        else:
            os.link(tmp, dest)
    except FileExistsError:
        raise Conflict(f"The data volume {str(dest)!r} already exists.") from None
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


MIN_VOLUME_BYTES = 16 << 20


def create_volume(dest: Path, size_bytes: int) -> Path:
    """A new, empty journaled ext4 data volume (sparse, mode 0600). Refuses to replace an existing one."""
    dest = Path(dest)
    if size_bytes < MIN_VOLUME_BYTES:
        raise InvalidInput(f"A data volume must be at least {MIN_VOLUME_BYTES >> 20} MiB.")
    if dest.exists():
        raise Conflict(f"The data volume {str(dest)!r} already exists.")
    size = -(-size_bytes // BLOCK) * BLOCK
    return _new_ext4(dest, size, ["-L", "data", "-E", "lazy_itable_init=1,lazy_journal_init=1"],
                     replace=False)


# ---------------------------------------------------------------- kernel command line


_TSC_LINE = re.compile(r"tsc: (Refined TSC clocksource calibration|Detected):? ([0-9]+(?:\.[0-9]+)?) MHz")


def _tsc_from_text(text: str) -> int | None:
    found: dict[str, float] = {}
    for m in _TSC_LINE.finditer(text):
        found[m.group(1)] = float(m.group(2))
    mhz = found.get("Refined TSC clocksource calibration") or found.get("Detected")
    return round(mhz * 1000) if mhz else None


@functools.cache
def tsc_khz() -> int | None:
    """The host TSC frequency in kHz (dmesg, else /proc/cpuinfo), or None if it cannot be read."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10, check=False).stdout
        khz = _tsc_from_text(out)
        if khz:
            return khz
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu MHz":
                with contextlib.suppress(ValueError):
                    mhz = float(value)
                    if mhz > 0:
                        return round(mhz * 1000)
    return None


def kernel_cmdline(accel: str) -> str:
    """The guest kernel command line; under TCG the guest cannot calibrate its TSC, so we tell it."""
    if accel == "tcg":
        khz = tsc_khz()
        if khz:
            return f"{KERNEL_CMDLINE} tsc_early_khz={khz}"
    return KERNEL_CMDLINE
