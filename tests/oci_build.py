"""Build real OCI images offline, in Python, for the compute tests and benchmarks.

No docker, umoci or network: an OCI image is JSON plus tar layers, so ``tarfile``, ``json`` and
``hashlib`` are enough. Output is byte-for-byte reproducible (fixed mtimes, owners and compressor
settings), so two images built from the same layer share that layer's blob, as real images do.

Three formats, all accepted by :func:`cloudpal.compute.import_image`:

* ``oci-dir``: an OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/sha256``);
* ``oci-archive``: the same layout as one tar file (what ``skopeo copy oci-archive:`` writes);
* ``docker``: a classic ``docker save`` tarball (``manifest.json``, ``<hex>.json``, ``<id>/layer.tar``).

The app images (:func:`httpd_app`, :func:`counter_app`, :func:`burner_app`, :func:`padded_app`) run
on the host's static busybox and follow the guest contract in the compute design: they serve TCP 8080
and keep state only under ``/data``, the persistent volume's mount point.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import platform
import random
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, get_args

import zstandard

Compression = Literal["gzip", "zstd", ""]
Format = Literal["oci-dir", "oci-archive", "docker"]
Entry = tuple[tarfile.TarInfo, bytes | None]
Layer = Sequence[Entry] | bytes  # entries to tar, or an already-built uncompressed tar

MTIME = 1_700_000_000  # every entry, blob and archive member gets this mtime: reproducible digests
CREATED = "2023-11-14T22:13:20Z"  # MTIME as RFC 3339, for the image config
CHUNK = 1 << 20
GZIP_LEVEL = 6  # level 9 is several times slower on the padded benchmark layers for ~1% size
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APP_PORT = 8080

OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = {
    "": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


# ---------------------------------------------------------------- layer entries


def tarinfo(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **attrs: Any) -> tarfile.TarInfo:
    """A tar header with reproducible metadata; ``attrs`` (uid, gid, size, linkname, ...) override."""
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.mtime = MTIME
    for key, value in attrs.items():
        setattr(ti, key, value)
    return ti


def regular(name: str, data: bytes, mode: int = 0o644, *, uid: int = 0, gid: int = 0) -> Entry:
    return tarinfo(name, mode=mode, size=len(data), uid=uid, gid=gid), data


def directory(name: str, mode: int = 0o755, *, uid: int = 0, gid: int = 0) -> Entry:
    return tarinfo(name, tarfile.DIRTYPE, mode, uid=uid, gid=gid), None


def symlink(name: str, target: str, *, uid: int = 0, gid: int = 0) -> Entry:
    return tarinfo(name, tarfile.SYMTYPE, 0o777, linkname=target, uid=uid, gid=gid), None


def hardlink(name: str, target: str) -> Entry:
    """A hard link to ``target``, an earlier entry's path (relative to the layer root)."""
    return tarinfo(name, tarfile.LNKTYPE, linkname=target), None


def whiteout(path: str) -> Entry:
    """Delete ``path`` (file or directory) from the layers below: the ``.wh.<name>`` marker file."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return regular(f"{parent}/.wh.{name}" if parent else f".wh.{name}", b"")


def opaque(path: str) -> Entry:
    """Hide everything the layers below put in directory ``path``: the ``.wh..wh..opq`` marker."""
    return regular(f"{path.rstrip('/')}/.wh..wh..opq", b"")


def _tar_writer(out: Path | IO[bytes], fmt: int = tarfile.PAX_FORMAT) -> tarfile.TarFile:
    """A tar writer copying in big chunks (tarfile's default 16 KiB crawls through padding layers)."""
    if isinstance(out, Path):
        return tarfile.TarFile(out, mode="w", format=fmt, copybufsize=CHUNK)
    return tarfile.TarFile(fileobj=out, mode="w", format=fmt, copybufsize=CHUNK)


def write_tar(entries: Sequence[Entry], out: IO[bytes], fmt: int = tarfile.PAX_FORMAT) -> None:
    with _tar_writer(out, fmt) as tar:
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)


def tar_bytes(entries: Sequence[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    write_tar(entries, buf, fmt)
    return buf.getvalue()


def tar_tree(src: Path, out: Path) -> Path:
    """Tar a directory tree (sorted, owners and mtimes normalized), e.g. an OCI layout into an oci-archive."""
    with _tar_writer(out) as tar:
        for path in sorted(src.rglob("*")):
            ti = tar.gettarinfo(str(path), arcname=path.relative_to(src).as_posix())
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mtime = MTIME
            if ti.isdir() or ti.mode & 0o100:
                ti.mode = 0o755
            elif ti.isreg():
                ti.mode = 0o644
            if ti.isreg():
                with open(path, "rb") as f:
                    tar.addfile(ti, f)
            else:
                tar.addfile(ti)
    return out


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 digest, size) of a file, read in chunks: layers can be gigabytes."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return "sha256:" + h.hexdigest(), n


def _compress_stream(src: IO[bytes], dst: IO[bytes], how: Compression, size: int) -> None:
    """The one compressor every blob goes through, so :func:`compress` matches written blobs exactly."""
    if how == "gzip":
        with gzip.GzipFile(fileobj=dst, mode="wb", compresslevel=GZIP_LEVEL, mtime=0, filename="") as z:
            shutil.copyfileobj(src, z, CHUNK)
    elif how == "zstd":
        zstandard.ZstdCompressor().copy_stream(src, dst, size=size, read_size=CHUNK)
    else:
        shutil.copyfileobj(src, dst, CHUNK)


def compress(data: bytes, how: Compression) -> bytes:
    """Compress an uncompressed layer tar exactly as :func:`write_oci_layout` stores it."""
    out = io.BytesIO()
    _compress_stream(io.BytesIO(data), out, how, len(data))
    return out.getvalue()


# ---------------------------------------------------------------- the image layout


def host_arch() -> str:
    return _ARCH.get(platform.machine(), platform.machine())


def _json(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def config_blob(config: Mapping[str, Any], diff_ids: Sequence[str]) -> bytes:
    """The image config document: runtime ``config`` (Entrypoint, Cmd, Env, ...) plus the layer diff_ids."""
    return _json(
        {
            "architecture": host_arch(),
            "os": "linux",
            "created": CREATED,
            "config": dict(config),
            "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        }
    )


def _split_ref(ref: str) -> tuple[str, str]:
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return name, tag


class _Blobs:
    """``blobs/sha256`` of a staging layout: everything is written to a temp file, hashed, then renamed."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "blobs" / "sha256"
        self.dir.mkdir(parents=True)

    def path(self, digest_: str) -> Path:
        return self.dir / digest_.removeprefix("sha256:")

    def _adopt(self, tmp: Path) -> tuple[str, int]:
        found, size = file_digest(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path(found))
        return found, size

    def _temp(self) -> tuple[IO[bytes], Path]:
        fd, name = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        return os.fdopen(fd, "wb"), Path(name)

    def put(self, data: bytes) -> tuple[str, int]:
        out, tmp = self._temp()
        with out:
            out.write(data)
        return self._adopt(tmp)

    def put_layer(self, layer: Layer, how: Compression) -> tuple[str, int, str]:
        """Store a layer blob; returns (blob digest, blob size, diff_id)."""
        out, tar = self._temp()
        with out:
            if isinstance(layer, bytes):
                out.write(layer)
            else:
                write_tar(layer, out)
        diff_id, tar_size = file_digest(tar)
        if not how:
            blob, size = self._adopt(tar)
            return blob, size, diff_id
        out, packed = self._temp()
        try:
            with out, open(tar, "rb") as src:
                _compress_stream(src, out, how, tar_size)
        finally:
            tar.unlink()
        blob, size = self._adopt(packed)
        return blob, size, diff_id


def write_oci_layout(
    dest: Path,
    layers: Sequence[Layer],
    config: Mapping[str, Any],
    *,
    compression: Compression | Sequence[Compression] = "gzip",
    fmt: Format = "oci-dir",
    ref: str = "cloudpal/app:latest",
    media_types: Mapping[int, str] | None = None,
) -> Path:
    """Write an image and return ``dest``.

    ``layers`` (bottom first) are entry lists or uncompressed tar bytes. ``config`` is the runtime part of
    the image config (``Entrypoint``, ``Cmd``, ``Env``, ``WorkingDir``, ``User``, ``ExposedPorts``);
    architecture, rootfs diff_ids and the rest are filled in. ``compression`` applies to every layer, or
    give one per layer; in the docker format it compresses ``layer.tar`` (docker load and import_image
    sniff it). ``ref`` names the image: the OCI index annotates its tag as
    ``org.opencontainers.image.ref.name``, docker lists it in ``RepoTags``. ``media_types`` overrides a
    layer's OCI media type by position (to build broken images).

    ``oci-dir`` writes the directory ``dest``, which must not exist or be empty; the archive formats
    write (or replace) the file ``dest``. Nothing partial is left at ``dest`` if building fails.
    """
    dest = Path(dest)
    if fmt not in get_args(Format):
        raise ValueError(f"unknown image format {fmt!r}")
    hows = [compression] * len(layers) if isinstance(compression, str) else list(compression)
    if len(hows) != len(layers) or any(h not in OCI_LAYER for h in hows):
        raise ValueError(f"compression {compression!r} does not fit {len(layers)} layers")
    if fmt == "oci-dir" and dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not an empty directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        blobs = _Blobs(stage / "layout")
        stored = [blobs.put_layer(layer, how) for layer, how in zip(layers, hows, strict=True)]
        cfg = config_blob(config, [diff_id for _, _, diff_id in stored])
        cfg_digest, cfg_size = blobs.put(cfg)
        if fmt == "docker":
            _write_docker(stage, blobs, stored, cfg_digest, ref, dest)
            return dest
        overrides = media_types or {}
        manifest = _json(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": {"mediaType": CONFIG_TYPE, "digest": cfg_digest, "size": cfg_size},
                "layers": [
                    {"mediaType": overrides.get(n, OCI_LAYER[how]), "digest": blob, "size": size}
                    for n, ((blob, size, _), how) in enumerate(zip(stored, hows, strict=True))
                ],
            }
        )
        man_digest, man_size = blobs.put(manifest)
        name, tag = _split_ref(ref)
        index = {
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "manifests": [
                {
                    "mediaType": MANIFEST_TYPE,
                    "digest": man_digest,
                    "size": man_size,
                    "platform": {"architecture": host_arch(), "os": "linux"},
                    "annotations": {REF_NAME: tag, IMAGE_NAME: f"{name}:{tag}"},
                }
            ],
        }
        layout = stage / "layout"
        (layout / "oci-layout").write_bytes(_json(OCI_LAYOUT))
        (layout / "index.json").write_bytes(_json(index))
        if fmt == "oci-archive":
            tar_tree(layout, stage / "image.tar")
            os.replace(stage / "image.tar", dest)
        else:
            for path in (layout, layout / "blobs", blobs.dir):
                os.chmod(path, 0o755)
            os.rename(layout, dest)  # replaces an empty directory atomically
        return dest
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _write_docker(
    stage: Path,
    blobs: _Blobs,
    stored: Sequence[tuple[str, int, str]],
    cfg_digest: str,
    ref: str,
    dest: Path,
) -> None:
    """A classic ``docker save`` tarball; layer dirs are named by chain (like docker's v1 ids)."""
    name, tag = _split_ref(ref)
    cfg_name = cfg_digest.removeprefix("sha256:") + ".json"
    layer_paths: list[str] = []
    members: list[tuple[tarfile.TarInfo, Path | bytes | None]] = []
    parent = ""
    for blob, size, _ in stored:
        layer_id = hashlib.sha256(f"{parent}\n{blob}".encode()).hexdigest()
        members.append((tarinfo(layer_id, tarfile.DIRTYPE, 0o755), None))
        members.append(_member(f"{layer_id}/VERSION", b"1.0"))
        legacy = {"id": layer_id, "created": CREATED, **({"parent": parent} if parent else {})}
        members.append(_member(f"{layer_id}/json", _json(legacy)))
        members.append((tarinfo(f"{layer_id}/layer.tar", size=size), blobs.path(blob)))
        layer_paths.append(f"{layer_id}/layer.tar")
        parent = layer_id
    members.append((tarinfo(cfg_name, size=blobs.path(cfg_digest).stat().st_size), blobs.path(cfg_digest)))
    manifest = [{"Config": cfg_name, "RepoTags": [f"{name}:{tag}"], "Layers": layer_paths}]
    members.append(_member("manifest.json", _json(manifest)))
    members.append(_member("repositories", _json({name: {tag: parent}})))
    tmp = stage / "image.tar"
    with _tar_writer(tmp) as tar:
        for ti, data in members:
            if isinstance(data, Path):
                with open(data, "rb") as f:
                    tar.addfile(ti, f)
            else:
                tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    os.replace(tmp, dest)


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarinfo(name, size=len(data)), data


# ---------------------------------------------------------------- busybox base layer


class BusyboxUnavailable(RuntimeError):
    """The host has no statically linked busybox to put in the test images."""


BUSYBOX_HINT = "install busybox-static (apt-get install busybox-static)"
APPLETS = (
    "sh", "httpd", "cat", "echo", "sleep", "ls", "mkdir", "sync", "id", "env", "pwd", "printf", "seq",
    "dd", "head", "mv", "rm", "readlink",
)  # fmt: skip
PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = b"root:x:0:\napp:x:1000:\n"
APP_UID = 1000


def elf_interpreter(path: Path) -> str | None:
    """The PT_INTERP program (dynamic loader) an ELF executable asks for; None if statically linked."""
    with open(path, "rb") as f:
        ident = f.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) or ident[5] not in (1, 2):
            raise ValueError(f"{path} is not an ELF executable")
        end = "<" if ident[5] == 1 else ">"
        if ident[4] == 2:  # ELF64: e_phoff at 0x20, e_phentsize/e_phnum at 0x36
            f.seek(0x20)
            (phoff,) = struct.unpack(end + "Q", f.read(8))
            f.seek(0x36)
        else:  # ELF32: e_phoff at 0x1C, e_phentsize/e_phnum at 0x2A
            f.seek(0x1C)
            (phoff,) = struct.unpack(end + "I", f.read(4))
            f.seek(0x2A)
        phentsize, phnum = struct.unpack(end + "HH", f.read(4))
        for n in range(phnum):
            f.seek(phoff + n * phentsize)
            header = f.read(phentsize)
            (p_type,) = struct.unpack(end + "I", header[:4])
            if p_type == 3:  # PT_INTERP: p_offset/p_filesz give the loader's path
                if ident[4] == 2:
                    offset, _vaddr, _paddr, filesz = struct.unpack(end + "QQQQ", header[8:40])
                else:
                    offset, _vaddr, _paddr, filesz = struct.unpack(end + "IIII", header[4:20])
                f.seek(offset)
                return f.read(filesz).rstrip(b"\0").decode(errors="replace")
    return None


def host_busybox() -> Path:
    """The host's busybox, checked to be static: the images have no libc for it to load."""
    found = shutil.which("busybox")
    if found is None:
        raise BusyboxUnavailable(f"No busybox on PATH; {BUSYBOX_HINT}.")
    path = Path(found).resolve()
    try:
        interp = elf_interpreter(path)
    except (OSError, ValueError) as e:
        raise BusyboxUnavailable(f"{found} cannot be used ({e}); {BUSYBOX_HINT}.") from None
    if interp is not None:
        raise BusyboxUnavailable(
            f"{found} is dynamically linked (it needs {interp}), so it cannot run alone in an image; "
            f"{BUSYBOX_HINT}."
        )
    return path


@functools.lru_cache(maxsize=4)
def _read(path: Path) -> bytes:
    return path.read_bytes()


def busybox_base() -> list[Entry]:
    """The shared base layer: static busybox with applet symlinks, root + ``app`` (1000:1000), /tmp, /data."""
    entries = [
        directory("bin"),
        regular("bin/busybox", _read(host_busybox()), 0o755),
        *(symlink(f"bin/{applet}", "busybox") for applet in APPLETS),
        directory("etc"),
        regular("etc/passwd", PASSWD),
        regular("etc/group", GROUP),
        directory("dev"),
        directory("proc", 0o555),
        directory("sys", 0o555),
        directory("root", 0o700),
        directory("home"),
        directory("home/app", uid=APP_UID, gid=APP_UID),
        directory("tmp", 0o1777),
        directory("data"),  # the persistent volume is mounted here
    ]
    return entries


def script(name: str, body: str) -> Entry:
    """An executable ``#!/bin/sh`` script. Keep them free of /dev/null: /dev may be an empty directory."""
    return regular(name, ("#!/bin/sh\n" + body.strip("\n") + "\n").encode(), 0o755)


# ---------------------------------------------------------------- the app images


@dataclass(frozen=True)
class ImageSpec:
    """A test image before it is written: layers (bottom first), runtime config, name."""

    layers: tuple[Layer, ...]
    config: Mapping[str, Any]
    ref: str

    def write(self, dest: Path, *, compression: Compression = "gzip", fmt: Format = "oci-dir") -> Path:
        return write_oci_layout(
            dest, self.layers, self.config, compression=compression, fmt=fmt, ref=self.ref
        )


HTTPD_INDEX = b"hello from cloudpal\n"
# No -h: httpd serves its working directory, so a wrong WorkingDir (/www) breaks the index page.
HTTPD_ENTRYPOINT = ["/bin/busybox", "httpd", "-f", "-p", str(APP_PORT)]
_HEADER = r"printf 'Content-Type: text/plain\r\n\r\n'"

ENV_CGI = f"""
# Who and where the app runs, and whether the image's Env reached it. busybox httpd hands its own
# environment to CGIs but runs each in the CGI's directory, so the working directory shown is the
# server's (our parent's, via /proc); plain pwd (/www/cgi-bin) only if /proc is not mounted.
{_HEADER}
id -u
if [ -e "/proc/$PPID/cwd" ]; then readlink "/proc/$PPID/cwd"; else pwd; fi
echo "$GREETING"
"""

_READ_COUNTER = """
n=0
[ -f /data/counter ] && n=$(cat /data/counter)
case $n in ''|*[!0-9]*) n=0 ;; esac
n=$((n + 1))
echo "$n" > /data/counter.tmp && mv /data/counter.tmp /data/counter && sync
"""

COUNTER_START = f"""
# Count boots in the persistent volume (/data/counter), then serve it.
{_READ_COUNTER.strip()}
echo "counter: boot $n, uid $(id -u), cwd $(pwd)"
exec /bin/busybox httpd -f -p {APP_PORT} -h /www
"""

COUNT_CGI = f"""
# Each request bumps /data/counter and returns the new value.
{_READ_COUNTER.strip()}
{_HEADER}
echo "$n"
"""

PUT_CGI = f"""
# /cgi-bin/put?TEXT stores TEXT (as sent, still URL-encoded) in /data/secret.
printf '%s' "$QUERY_STRING" > /data/secret && sync
{_HEADER}
echo stored
"""

GET_CGI = f"""
# Returns /data/secret, to check it survived a restart.
{_HEADER}
cat /data/secret
"""

LS_CGI = f"""
# What the app can see of storage: its volume, then a BLOCK line, then the block devices of its VM.
{_HEADER}
ls -la /data
echo BLOCK
ls /sys/block
"""


def base_config(**fields: Any) -> dict[str, Any]:
    return {"Env": [PATH_ENV], **fields}


def httpd_image() -> ImageSpec:
    app = [
        directory("www"),
        regular("www/index.html", HTTPD_INDEX),
        directory("www/cgi-bin"),
        script("www/cgi-bin/env", ENV_CGI),
    ]
    config = {
        "Entrypoint": HTTPD_ENTRYPOINT,
        "Env": [PATH_ENV, "GREETING=hi"],
        "WorkingDir": "/www",
        "User": "app",
        "ExposedPorts": {f"{APP_PORT}/tcp": {}},
    }
    return ImageSpec((tar_bytes(busybox_base()), tar_bytes(app)), config, "cloudpal/httpd:latest")


def counter_image() -> ImageSpec:
    app = [
        directory("app"),
        script("app/start.sh", COUNTER_START),
        directory("www"),
        regular("www/index.html", b"counter\n"),
        directory("www/cgi-bin"),
        script("www/cgi-bin/count", COUNT_CGI),
        script("www/cgi-bin/put", PUT_CGI),
        script("www/cgi-bin/get", GET_CGI),
        script("www/cgi-bin/ls", LS_CGI),
    ]
    config = base_config(
        Entrypoint=["/bin/sh"],
        Cmd=["/app/start.sh"],
        WorkingDir="/",
        User="",
        ExposedPorts={f"{APP_PORT}/tcp": {}},
    )
    return ImageSpec((tar_bytes(busybox_base()), tar_bytes(app)), config, "cloudpal/counter:latest")


def burner_image() -> ImageSpec:
    config = base_config(Cmd=["/bin/sh", "-c", "while :; do :; done"])
    return ImageSpec((tar_bytes(busybox_base()),), config, "cloudpal/burner:latest")


def padded_image(size_mb: int, *, seed: int | None = 0) -> ImageSpec:
    """httpd plus a layer holding ``size_mb`` MiB of random bytes in /pad/random.bin (incompressible).

    ``seed=None`` draws from os.urandom, so every build is a new image that shares no padding blob.
    """
    if size_mb < 0:
        raise ValueError("size_mb must not be negative")
    n = size_mb << 20
    if seed is None:
        data = os.urandom(n)
    else:  # randbytes is capped at 256 MiB a call (and builds an int that size): draw it in chunks
        rng = random.Random(seed)
        data = b"".join(rng.randbytes(min(CHUNK, n - at)) for at in range(0, n, CHUNK))
    httpd = httpd_image()
    pad: list[Entry] = [directory("pad"), regular("pad/random.bin", data)]
    return ImageSpec((*httpd.layers, pad), httpd.config, f"cloudpal/padded-{size_mb}m:latest")


def httpd_app(dest: Path, *, compression: Compression = "gzip", fmt: Format = "oci-dir") -> Path:
    """busybox httpd on 8080 as user ``app``: /index.html and the /cgi-bin/env CGI. Two layers."""
    return httpd_image().write(dest, compression=compression, fmt=fmt)


def counter_app(dest: Path, *, compression: Compression = "gzip", fmt: Format = "oci-dir") -> Path:
    """Root app keeping a boot/request counter in /data; CGIs count, put, get, ls. Shares httpd's base."""
    return counter_image().write(dest, compression=compression, fmt=fmt)


def burner_app(dest: Path, *, compression: Compression = "gzip", fmt: Format = "oci-dir") -> Path:
    """A shell spinning one CPU forever, no ports: for CPU limits and the runaway policy. One layer."""
    return burner_image().write(dest, compression=compression, fmt=fmt)


def padded_app(
    dest: Path,
    size_mb: int,
    *,
    compression: Compression = "gzip",
    fmt: Format = "oci-dir",
    seed: int | None = 0,
) -> Path:
    """:func:`httpd_app` plus ``size_mb`` MiB of incompressible data in a third layer (install benchmark)."""
    return padded_image(size_mb, seed=seed).write(dest, compression=compression, fmt=fmt)
