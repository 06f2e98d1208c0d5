"""Import OCI / docker-save images into a content-addressed store and unpack their root filesystem.

Images come from the internet, so every byte is untrusted: each blob is checked against its digest
before use, and layers are applied by our own code (never ``tarfile.extractall``) which walks the
rootfs with ``O_NOFOLLOW`` directory fds and refuses anything that could reach outside it or exhaust
memory. Blobs are stored once by digest so images sharing layers share storage.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import IO, Any

import zstandard

from cloudpal.errors import InvalidInput

Progress = Callable[[int, int], None]

MAX_JSON_BYTES = 4 << 20  # manifests and configs are kilobytes; refuse before parsing more
MAX_HEADER_BYTES = 1 << 20  # a pax / GNU long-name header bigger than this is an attack, not a name
MAX_NAME_BYTES = 4096  # PATH_MAX
MAX_COMPONENT_BYTES = 255  # NAME_MAX
MAX_LAYER_BYTES = 64 << 30  # decompressed layer size cap: stops decompression bombs
MAX_ARCHIVE_MEMBERS = 100_000  # outer archives hold a handful of blobs
MAX_INDEX_DEPTH = 4
CHUNK = 256 << 10  # must stay below MAX_HEADER_BYTES: data reads share the bounded reader

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
CONFIG_TYPES = {
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
}
# media type -> compression ("" = plain tar)
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
DOCKER_LAYER_TYPE = {
    "": "application/vnd.docker.image.rootfs.diff.tar",
    "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_DOCKER_BLOB_NAME = re.compile(r"(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json|/layer\.tar)?")


@dataclass(frozen=True)
class Image:
    """An imported image: what the microVM needs to boot it, and where its unpacked rootfs lives."""

    id: str  # config digest; also names the rootfs directory
    digest: str  # what the source's index pointed at (manifest or index digest)
    manifest_digest: str
    layers: tuple[str, ...]  # layer blob digests, bottom first
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: dict[str, str]
    workdir: str
    user: str
    exposed_ports: tuple[tuple[int, str], ...]
    rootfs: Path
    size: int  # bytes of regular files in the unpacked rootfs (hardlinks counted once)


class _TooBig(Exception):
    """Raised by the bounded reader when tarfile asks for a header bigger than MAX_HEADER_BYTES."""


def _show(text: str) -> str:
    """Quote an attacker-chosen string for a one-line message without letting it run on."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _short(digest: str) -> str:
    return digest[:19] + "…" if len(digest) > 20 else digest


# ---------------------------------------------------------------- reading untrusted bytes


class _BoundedReader:
    """A seekable file wrapper whose single reads are capped, so tarfile cannot slurp a huge header."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.mode = "rb"

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > MAX_HEADER_BYTES:
            raise _TooBig
        return self._f.read(n)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._f.seek(pos, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()


def _file_size(f: IO[bytes]) -> int:
    return os.fstat(f.fileno()).st_size


def _open_tar(f: IO[bytes]) -> tarfile.TarFile:
    tar: tarfile.TarFile = tarfile.open(fileobj=_BoundedReader(f), mode="r:")  # type: ignore[call-overload]  # noqa: SIM115
    return tar


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Iterate members without tarfile's ever-growing member list (millions of entries would pile up)."""
    while True:
        member = tar.next()
        if member is None:
            return
        tar.members.clear()  # type: ignore[attr-defined]
        yield member


def _parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise InvalidInput(f"The image's {what} is not valid JSON.") from None


def _read_capped(stream: IO[bytes], limit: int, what: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise InvalidInput(f"The image's {what} is larger than {limit} bytes.")
    return data


def _check_digest(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"The image's {what} has no digest.")
    if _DIGEST.fullmatch(value):
        return value
    if ":" in value and not value.startswith("sha256:"):
        raise InvalidInput(f"The image's {what} uses digest {_show(value)}; only sha256 is supported.")
    raise InvalidInput(f"The image's {what} has a malformed digest {_show(value)}.")


class _Source:
    """Files of an image layout, read by relative path; never extracted to disk."""

    kind = ""

    def open(self, path: str) -> tuple[IO[bytes], int] | None:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        opened = self.open(path)
        if opened is None:
            return False
        opened[0].close()
        return True

    def close(self) -> None:
        """Release the underlying archive, if any."""


def _norm_parts(path: str) -> tuple[str, ...] | None:
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if path.startswith("/") or ".." in parts or "\0" in path:
        return None
    return parts


class _DirSource(_Source):
    kind = "OCI layout directory"

    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self, path: str) -> tuple[IO[bytes], int] | None:
        parts = _norm_parts(path)
        if not parts:
            return None
        target = self.root.joinpath(*parts)
        try:
            st = os.stat(target)
            if not stat.S_ISREG(st.st_mode):  # a fifo would hang us; a dir is not a blob
                return None
            return open(target, "rb"), st.st_size
        except OSError:
            return None


class _TarSource(_Source):
    """An oci-archive or docker-save tarball: indexed once, members streamed on demand."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.tar = _open_tar(f)
        total = _file_size(f)
        self.index: dict[tuple[str, ...], tarfile.TarInfo] = {}
        for n, member in enumerate(_members(self.tar)):
            if n >= MAX_ARCHIVE_MEMBERS:
                raise InvalidInput(f"The archive has more than {MAX_ARCHIVE_MEMBERS} entries.")
            if member.offset_data + member.size > total:
                raise InvalidInput(
                    f"Archive entry {_show(member.name)} claims more bytes than the file holds."
                )
            parts = _norm_parts(member.name)
            if parts and (member.isreg() or member.issym() or member.islnk()):
                self.index[parts] = member
        self.kind = "docker save archive" if ("manifest.json",) in self.index else "OCI archive"

    def open(self, path: str) -> tuple[IO[bytes], int] | None:
        parts = _norm_parts(path)
        for _ in range(16):  # docker save dedups layers with symlinks; follow a few, inside the archive
            if not parts or parts not in self.index:
                return None
            member = self.index[parts]
            if member.isreg():
                stream = self.tar.extractfile(member)
                return (stream, member.size) if stream is not None else None
            base = "" if member.islnk() else "/".join(parts[:-1]) + "/"
            joined: list[str] = []
            for p in (base + member.linkname).split("/"):
                if p == "..":
                    if not joined:
                        return None
                    joined.pop()
                elif p not in ("", "."):
                    joined.append(p)
            parts = tuple(joined)
        return None

    def close(self) -> None:
        self.tar.close()
        self._f.close()


# ---------------------------------------------------------------- the content store


class _Store:
    """Blobs by digest under ``blobs/sha256``, written atomically (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.rootfs = root / "rootfs"
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
            self.rootfs.mkdir(exist_ok=True)
            os.chmod(self.rootfs, 0o700)  # setuid files inside rootfs must not be reachable by host users
        except OSError as e:
            raise InvalidInput(f"Cannot use image store {str(root)!r}: {e.strerror}.") from None

    def path(self, digest: str) -> Path:
        return self.blobs / digest.removeprefix("sha256:")

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put(
        self, stream: IO[bytes], expected: str | None, size: int | None, tick: Callable[[int], None]
    ) -> str:
        """Copy a blob in, verifying digest and size; returns its digest. Skips blobs already stored."""
        if expected is not None and self.has(expected):
            tick(size or 0)
            return expected
        h = hashlib.sha256()
        n = 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-blob-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := _read_source(stream, CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    n += len(chunk)
                    tick(len(chunk))
                    if size is not None and n > size:
                        break
                out.flush()
                os.fsync(out.fileno())
            actual = "sha256:" + h.hexdigest()
            if size is not None and n != size:
                what = expected or actual
                raise InvalidInput(f"Blob {_short(what)} is not the {size} bytes its descriptor says.")
            if expected is not None and actual != expected:
                raise InvalidInput(
                    f"Blob {_short(expected)} is corrupt: its content hashes to {_short(actual)}."
                )
            os.replace(tmp, self.path(actual))
            _fsync_dir(self.blobs)
            return actual
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def put_bytes(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return self.put(BytesIO(data), digest, len(data), lambda _n: None)


def _read_source(stream: IO[bytes], n: int) -> bytes:
    try:
        return stream.read(n)
    except (tarfile.TarError, EOFError):
        raise InvalidInput("The image archive is truncated.") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rmtree(path: Path) -> None:
    """Remove a build dir even if a layer made some of its directories read-only."""

    def fix(func: Callable[..., Any], p: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            func(p)

    shutil.rmtree(path, onerror=fix)


# ---------------------------------------------------------------- locating the image in a source


@dataclass
class _LayerRef:
    path: str  # inside the source
    digest: str | None  # None for docker-save layers named by directory
    size: int | None
    compression: str | None  # None: sniff magic bytes


@dataclass
class _Plan:
    digest: str | None
    manifest: bytes | None  # None for docker-save: synthesized after the layers are stored
    config_path: str
    config_digest: str | None
    config_size: int | None
    layers: list[_LayerRef]
    extra_blobs: list[tuple[str, bytes]]  # nested indexes, already verified


def _fetch_json(
    src: _Source, path: str, digest: str | None, size: int | None, what: str
) -> tuple[bytes, Any]:
    if size is not None and size > MAX_JSON_BYTES:
        raise InvalidInput(f"The image's {what} is larger than {MAX_JSON_BYTES} bytes.")
    opened = src.open(path)
    if opened is None:
        if digest is not None:
            raise InvalidInput(f"The image is missing blob {_short(digest)} ({what}).")
        raise InvalidInput(f"The {src.kind} has no {_show(path)}.")
    stream, _ = opened
    with stream:
        data = _read_capped(stream, MAX_JSON_BYTES, what)
    if size is not None and len(data) != size:
        raise InvalidInput(f"The image's {what} is not the {size} bytes its descriptor says.")
    if digest is not None and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise InvalidInput(
            f"Blob {_short(digest)} ({what}) is corrupt: its content does not match its digest."
        )
    return data, _parse_json(data, what)


def _descriptor(value: object, what: str) -> tuple[str, str, int]:
    if not isinstance(value, dict):
        raise InvalidInput(f"The image's {what} descriptor is not an object.")
    digest = _check_digest(value.get("digest"), what)
    media = value.get("mediaType")
    size = value.get("size")
    if not isinstance(media, str):
        raise InvalidInput(f"The image's {what} descriptor has no media type.")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"The image's {what} descriptor has no valid size.")
    return digest, media, size


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def _pick(index: Any, what: str) -> tuple[str, str, int]:
    """Choose the manifest for this host from an index: the only one, or the linux/<our arch> one."""
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise InvalidInput(f"The image's {what} has no manifests list.")
    entries = index["manifests"]
    if not entries:
        raise InvalidInput(f"The image's {what} lists no manifests.")
    arch = _ARCH.get(platform.machine(), platform.machine())
    with_platform = [e for e in entries if isinstance(e, dict) and isinstance(e.get("platform"), dict)]
    if len(entries) > 1 and with_platform:
        for e in with_platform:
            if e["platform"].get("os") == "linux" and e["platform"].get("architecture") == arch:
                return _descriptor(e, "manifest")
        raise InvalidInput(f"The image has no variant for linux/{arch}.")
    return _descriptor(entries[0], "manifest")


def _plan_oci(src: _Source) -> _Plan:
    _, index = _fetch_json(src, "index.json", None, None, "index.json")
    digest, media, size = _pick(index, "index.json")
    top = digest
    extra: list[tuple[str, bytes]] = []
    for _ in range(MAX_INDEX_DEPTH):
        if media in MANIFEST_TYPES:
            break
        if media not in INDEX_TYPES:
            raise InvalidInput(f"The image's manifest has unsupported media type {_show(media)}.")
        data, nested = _fetch_json(src, _blob_path(digest), digest, size, "index")
        extra.append((digest, data))
        digest, media, size = _pick(nested, "index")
    else:
        raise InvalidInput("The image's indexes nest too deeply.")
    data, manifest = _fetch_json(src, _blob_path(digest), digest, size, "manifest")
    if not isinstance(manifest, dict):
        raise InvalidInput("The image's manifest is not a JSON object.")
    c_digest, c_media, c_size = _descriptor(manifest.get("config"), "config")
    if c_media not in CONFIG_TYPES:
        raise InvalidInput(f"The image's config has unsupported media type {_show(c_media)}.")
    raw_layers = manifest.get("layers")
    if not isinstance(raw_layers, list):
        raise InvalidInput("The image's manifest has no layers list.")
    layers = []
    for n, raw in enumerate(raw_layers, 1):
        l_digest, l_media, l_size = _descriptor(raw, f"layer {n}")
        if l_media not in LAYER_TYPES:
            raise InvalidInput(f"Layer {n} has unsupported media type {_show(l_media)}.")
        layers.append(_LayerRef(_blob_path(l_digest), l_digest, l_size, LAYER_TYPES[l_media]))
    return _Plan(top, data, _blob_path(c_digest), c_digest, c_size, layers, extra)


def _plan_docker(src: _Source) -> _Plan:
    _, doc = _fetch_json(src, "manifest.json", None, None, "manifest.json")
    if not isinstance(doc, list) or not doc:
        raise InvalidInput("The docker save manifest.json lists no images.")
    if len(doc) > 1:
        raise InvalidInput(f"The docker save archive holds {len(doc)} images; save one image at a time.")
    entry = doc[0]
    if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
        raise InvalidInput("The docker save manifest.json entry has no Config.")
    paths = entry.get("Layers")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise InvalidInput("The docker save manifest.json entry has no Layers list.")

    def named(path: str) -> str | None:
        m = _DOCKER_BLOB_NAME.fullmatch(path.removeprefix("./"))
        return "sha256:" + m.group(1) if m and not path.endswith("/layer.tar") else None

    config_path: str = entry["Config"]
    layers = [_LayerRef(p, named(p), None, None) for p in paths]
    return _Plan(None, None, config_path, named(config_path), None, layers, [])


# ---------------------------------------------------------------- the image config


@dataclass
class _Config:
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: dict[str, str]
    workdir: str
    user: str
    ports: tuple[tuple[int, str], ...]
    diff_ids: list[str]


def _str_list(value: object, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"The image config's {field} is not a list of strings.")
    return tuple(value)


def _parse_config(doc: Any) -> _Config:
    if not isinstance(doc, dict):
        raise InvalidInput("The image config is not a JSON object.")
    cfg = doc.get("config") or {}
    if not isinstance(cfg, dict):
        raise InvalidInput("The image config's config section is not an object.")
    env: dict[str, str] = {}
    for item in _str_list(cfg.get("Env"), "Env"):
        key, _, value = item.partition("=")
        env[key] = value
    strs = {}
    for key in ("WorkingDir", "User"):
        value = cfg.get(key) or ""
        if not isinstance(value, str):
            raise InvalidInput(f"The image config's {key} is not a string.")
        strs[key] = value
    ports = []
    exposed = cfg.get("ExposedPorts") or {}
    if not isinstance(exposed, dict):
        raise InvalidInput("The image config's ExposedPorts is not an object.")
    for key in exposed:
        number, _, proto = key.partition("/")
        proto = proto or "tcp"
        if not number.isdigit() or not 0 < int(number) < 65536 or proto not in ("tcp", "udp", "sctp"):
            raise InvalidInput(f"The image config exposes an invalid port {_show(key)}.")
        ports.append((int(number), proto))
    rootfs = doc.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise InvalidInput("The image config has no rootfs.diff_ids list.")
    return _Config(
        entrypoint=_str_list(cfg.get("Entrypoint"), "Entrypoint"),
        cmd=_str_list(cfg.get("Cmd"), "Cmd"),
        env=env,
        workdir=strs["WorkingDir"] or "/",
        user=strs["User"],
        ports=tuple(sorted(set(ports))),
        diff_ids=[_check_digest(d, "layer diff_id") for d in diff_ids],
    )


# ---------------------------------------------------------------- applying layers


def _refuse(layer: int, what: str) -> InvalidInput:
    return InvalidInput(f"Layer {layer} {what}.")


class _Rootfs:
    """Applies layer tars into a directory through O_NOFOLLOW dir fds, so no symlink is ever followed."""

    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.dirs: dict[tuple[str, ...], tuple[int, float | None, int, int]] = {}
        self.touched: set[tuple[str, ...]] = set()
        self.layer = 0
        self.as_root = os.geteuid() == 0

    def close(self) -> None:
        os.close(self.root_fd)

    # -- paths

    def _parts(self, name: str, what: str = "an entry") -> tuple[str, ...]:
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) > MAX_NAME_BYTES:
            raise _refuse(self.layer, f"has {what} whose name is longer than {MAX_NAME_BYTES} bytes")
        if name.startswith("/"):
            raise _refuse(self.layer, f"has {what} with an absolute path {_show(name)}")
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            raise _refuse(self.layer, f"has {what} {_show(name)} that climbs out of the root with '..'")
        if any(len(p.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES for p in parts):
            raise _refuse(
                self.layer, f"has {what} with a path component longer than {MAX_COMPONENT_BYTES} bytes"
            )
        return parts

    def _open_dir(self, parts: tuple[str, ...], create: bool) -> int:
        """An fd for directory ``parts``, refusing to pass through symlinks; makes missing dirs if asked."""
        fd = os.dup(self.root_fd)
        try:
            for i, comp in enumerate(parts):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                try:
                    nfd = os.open(comp, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(comp, 0o700, dir_fd=fd)
                    self.dirs.setdefault(parts[: i + 1], (0o755, None, 0, 0))
                    nfd = os.open(comp, flags, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        where = _show("/".join(parts[: i + 1]))
                        raise _refuse(
                            self.layer, f"writes through {where}, which is not a directory"
                        ) from None
                    raise
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _remove(fd: int, name: str) -> None:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)

    # -- whiteouts

    def _whiteout(self, parts: tuple[str, ...]) -> None:
        parent, base = parts[:-1], parts[-1]
        if base == ".wh..wh..opq":
            self._touch(parent)
            fd = self._open_dir(parent, create=True)
            try:
                self._clear_lower(fd, parent)
            finally:
                os.close(fd)
            return
        name = base[len(".wh.") :]
        if name in ("", ".", ".."):
            raise _refuse(self.layer, f"has a malformed whiteout {_show('/'.join(parts))}")
        try:
            fd = self._open_dir(parent, create=False)
        except FileNotFoundError:
            return
        try:
            self._remove(fd, name)
        finally:
            os.close(fd)

    def _clear_lower(self, fd: int, parts: tuple[str, ...]) -> None:
        """Opaque dir: drop everything a lower layer put here, keep what this layer added."""
        for name in os.listdir(fd):
            child = (*parts, name)
            if child not in self.touched:
                self._remove(fd, name)
                continue
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                cfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                try:
                    self._clear_lower(cfd, child)
                finally:
                    os.close(cfd)

    def _touch(self, parts: tuple[str, ...]) -> None:
        for i in range(1, len(parts) + 1):
            self.touched.add(parts[:i])

    # -- entries

    def apply(self, tar: tarfile.TarInfo, read: Callable[[tarfile.TarInfo], IO[bytes] | None]) -> None:
        parts = self._parts(tar.name)
        if tar.ischr() or tar.isblk():
            raise _refuse(self.layer, f"contains a device node {_show(tar.name)}, which images may not carry")
        if parts and parts[-1].startswith(".wh."):
            self._whiteout(parts)
            return
        if not parts or tar.isfifo():
            return  # the root entry itself; fifos are not carried
        if not (tar.isdir() or tar.isreg() or tar.issym() or tar.islnk()) or tar.issparse():
            raise _refuse(self.layer, f"has entry {_show(tar.name)} of an unsupported type")
        self._touch(parts)
        fd = self._open_dir(parts[:-1], create=True)
        try:
            name = parts[-1]
            if tar.isdir():
                self._dir(fd, name, parts, tar)
            elif tar.isreg():
                self._file(fd, name, tar, read)
            elif tar.issym():
                self._symlink(fd, name, parts, tar)
            else:
                self._hardlink(fd, name, tar)
        finally:
            os.close(fd)

    def _dir(self, fd: int, name: str, parts: tuple[str, ...], tar: tarfile.TarInfo) -> None:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=fd)
                os.mkdir(name, 0o700, dir_fd=fd)
        except FileNotFoundError:
            os.mkdir(name, 0o700, dir_fd=fd)
        self.dirs[parts] = (tar.mode & 0o7777, tar.mtime, tar.uid, tar.gid)

    def _file(
        self, fd: int, name: str, tar: tarfile.TarInfo, read: Callable[[tarfile.TarInfo], IO[bytes] | None]
    ) -> None:
        self._remove(fd, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(name, flags, 0o600, dir_fd=fd)
        try:
            src = read(tar)
            if src is not None:
                with src:
                    left = tar.size
                    while left > 0:
                        chunk = src.read(min(CHUNK, left))
                        if not chunk:
                            raise _refuse(self.layer, f"ends inside {_show(tar.name)}")
                        _write_all(out, chunk)
                        left -= len(chunk)
            self._owner(out, None, tar)
            os.fchmod(out, tar.mode & 0o7777)
            os.utime(out, ns=(_ns(tar.mtime), _ns(tar.mtime)))
        finally:
            os.close(out)

    def _symlink(self, fd: int, name: str, parts: tuple[str, ...], tar: tarfile.TarInfo) -> None:
        target = tar.linkname
        if not target or len(target.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise _refuse(self.layer, f"has a symlink {_show(tar.name)} with an empty or overlong target")
        if target.startswith("/"):
            raise _refuse(
                self.layer, f"has a symlink {_show(tar.name)} with an absolute target {_show(target)}"
            )
        depth = len(parts) - 1
        for comp in target.split("/"):
            if comp == "..":
                depth -= 1
                if depth < 0:
                    raise _refuse(
                        self.layer,
                        f"has a symlink {_show(tar.name)} pointing outside the image ({_show(target)})",
                    )
            elif comp not in ("", "."):
                depth += 1
        self._remove(fd, name)
        os.symlink(target, name, dir_fd=fd)
        self._owner(fd, name, tar)
        os.utime(name, ns=(_ns(tar.mtime), _ns(tar.mtime)), dir_fd=fd, follow_symlinks=False)

    def _hardlink(self, fd: int, name: str, tar: tarfile.TarInfo) -> None:
        target = tar.linkname
        if target.startswith("/") or ".." in target.split("/"):
            raise _refuse(
                self.layer, f"has a hardlink {_show(tar.name)} to {_show(target)}, outside the image"
            )
        tparts = self._parts(target, "a hardlink target")
        if not tparts:
            raise _refuse(self.layer, f"has a hardlink {_show(tar.name)} to the root directory")
        try:
            tfd = self._open_dir(tparts[:-1], create=False)
        except FileNotFoundError:
            raise _refuse(
                self.layer, f"has a hardlink {_show(tar.name)} to missing {_show(target)}"
            ) from None
        try:
            try:
                tst = os.stat(tparts[-1], dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError:
                raise _refuse(
                    self.layer, f"has a hardlink {_show(tar.name)} to missing {_show(target)}"
                ) from None
            if stat.S_ISDIR(tst.st_mode):
                raise _refuse(self.layer, f"has a hardlink {_show(tar.name)} to a directory")
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == (tst.st_dev, tst.st_ino):
                    return
            self._remove(fd, name)
            os.link(tparts[-1], name, src_dir_fd=tfd, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def _owner(self, fd: int, name: str | None, tar: tarfile.TarInfo) -> None:
        if not self.as_root or not (0 <= tar.uid < 2**32 - 1 and 0 <= tar.gid < 2**32 - 1):
            return
        if name is None:
            os.fchown(fd, tar.uid, tar.gid)
        else:
            os.chown(name, tar.uid, tar.gid, dir_fd=fd, follow_symlinks=False)

    def finish(self) -> None:
        """Set directory modes and mtimes last: adding children changed them, and 0o555 dirs block writes."""
        for parts, (mode, mtime, uid, gid) in sorted(self.dirs.items(), key=lambda kv: -len(kv[0])):
            try:
                fd = self._open_dir(parts, create=False)
            except (FileNotFoundError, InvalidInput):
                continue  # removed or replaced by a later layer
            try:
                if self.as_root and 0 <= uid < 2**32 - 1 and 0 <= gid < 2**32 - 1:
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
                if mtime is not None:
                    os.utime(fd, ns=(_ns(mtime), _ns(mtime)))
            finally:
                os.close(fd)
        os.fchmod(self.root_fd, 0o755)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _ns(mtime: float) -> int:
    return int(min(max(float(mtime), 0.0), 2.0**33)) * 1_000_000_000


def _decompress(path: Path, compression: str, store: _Store, layer: int) -> tuple[Path | None, str, int]:
    """Decompress a stored layer blob to a temp file in the store; returns (temp, diff_id, size)."""
    h = hashlib.sha256()
    n = 0
    fd, tmp = tempfile.mkstemp(dir=store.root, prefix=".tmp-layer-")
    try:
        with open(path, "rb") as raw, os.fdopen(fd, "wb") as out:
            reader: Any
            if compression == "gzip":
                reader = gzip.GzipFile(fileobj=raw, mode="rb")
            else:
                reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            with reader:
                while chunk := reader.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    n += len(chunk)
                    if n > MAX_LAYER_BYTES:
                        raise _refuse(layer, f"decompresses to more than {MAX_LAYER_BYTES} bytes")
        return Path(tmp), "sha256:" + h.hexdigest(), n
    except (OSError, EOFError, zlib.error, zstandard.ZstdError):
        os.unlink(tmp)
        raise _refuse(layer, f"is not valid {compression} data") from None
    except BaseException:
        os.unlink(tmp)
        raise


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    return "gzip" if head.startswith(GZIP_MAGIC) else "zstd" if head.startswith(ZSTD_MAGIC) else ""


def _apply_layer(fs: _Rootfs, tar_path: Path) -> None:
    with open(tar_path, "rb") as f:
        total = _file_size(f)
        if total == 0:
            return
        try:
            tar = _open_tar(f)
            for member in _members(tar):
                if member.offset_data + member.size > total:
                    raise _refuse(
                        fs.layer,
                        f"has an entry {_show(member.name)} claiming {member.size} bytes, more than it holds",
                    )
                fs.apply(member, tar.extractfile)
        except _TooBig:
            raise _refuse(fs.layer, f"has a tar header larger than {MAX_HEADER_BYTES} bytes") from None
        except (tarfile.TarError, EOFError, ValueError, OverflowError, UnicodeError):
            raise _refuse(fs.layer, "is not a valid tar archive") from None


def _build_rootfs(store: _Store, image_hex: str, layers: list[tuple[str, str]], diff_ids: list[str]) -> Path:
    """Unpack layers into a private temp dir and rename it into place only when every layer applied."""
    final = store.rootfs / image_hex
    if final.is_dir():
        return final
    work = Path(tempfile.mkdtemp(dir=store.root, prefix=".tmp-rootfs-"))
    try:
        root = work / "root"
        root.mkdir(mode=0o755)
        fs = _Rootfs(root)
        try:
            for n, ((digest, compression), diff_id) in enumerate(zip(layers, diff_ids, strict=True), 1):
                fs.layer = n
                fs.touched = set()
                blob = store.path(digest)
                if compression:
                    tmp, actual, _size = _decompress(blob, compression, store, n)
                else:
                    tmp, actual = None, digest
                try:
                    if actual != diff_id:
                        raise _refuse(n, f"does not match its diff_id {_short(diff_id)} in the image config")
                    try:
                        _apply_layer(fs, tmp or blob)
                    except OSError as e:
                        raise _refuse(n, f"cannot be unpacked: {e.strerror or e}") from None
                finally:
                    if tmp is not None:
                        tmp.unlink()
            fs.finish()
        finally:
            fs.close()
        try:
            os.rename(root, final)
        except OSError:
            if not final.is_dir():  # else a concurrent import of the same image won the race
                raise
        return final
    finally:
        _rmtree(work)


def _tree_size(root: Path) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


# ---------------------------------------------------------------- entry point


@contextlib.contextmanager
def _open_source(source: Path, store: _Store) -> Iterator[_Source]:
    if source.is_dir():
        yield _DirSource(source)
        return
    if not source.is_file():
        raise InvalidInput(f"Image {str(source)!r} does not exist.")
    tmp: Path | None = None
    try:
        kind = _sniff(source)
        if kind:  # `docker save | gzip`: decompress once so the tar can be indexed and seeked
            tmp, _, _ = _decompress(source, kind, store, 0)
        f = open(tmp or source, "rb")  # noqa: SIM115 - owned by the _TarSource from here on
        try:
            src = _TarSource(f)
        except _TooBig:
            f.close()
            raise InvalidInput(
                f"The image archive has a tar header larger than {MAX_HEADER_BYTES} bytes."
            ) from None
        except (tarfile.TarError, EOFError, ValueError, OverflowError, UnicodeError):
            f.close()
            raise InvalidInput(
                f"Image {str(source)!r} is not a tar archive, OCI layout or docker save file."
            ) from None
        except BaseException:
            f.close()
            raise
        try:
            yield src
        finally:
            src.close()
    except InvalidInput as e:
        if str(e).startswith("Layer 0 "):  # from _decompress of the whole archive
            raise InvalidInput(f"Image {str(source)!r} " + str(e).removeprefix("Layer 0 ")) from None
        raise
    finally:
        if tmp is not None:
            tmp.unlink()


def import_image(source: Path, store_root: Path, *, progress: Progress | None = None) -> Image:
    """Verify and store an image's blobs, unpack its rootfs, and return what is needed to boot it.

    ``source`` is an OCI layout directory, an oci-archive tar or a ``docker save`` tarball. Blobs land
    in ``store_root/blobs/sha256`` (shared between images); the rootfs in ``store_root/rootfs/<hex>``.
    ``progress(done, total)`` is called as layer bytes are copied.
    """
    source, store_root = Path(source), Path(store_root)
    store = _Store(store_root)
    with _open_source(source, store) as src:
        if src.exists("index.json"):
            plan = _plan_oci(src)
        else:
            if not src.exists("manifest.json"):
                raise InvalidInput(
                    f"Image {str(source)!r} is not an OCI layout, oci-archive or docker save archive."
                )
            plan = _plan_docker(src)
        config_bytes, config_doc = _fetch_json(
            src, plan.config_path, plan.config_digest, plan.config_size, "config"
        )
        config = _parse_config(config_doc)
        if len(config.diff_ids) != len(plan.layers):
            raise InvalidInput(
                f"The image has {len(plan.layers)} layers but its config names {len(config.diff_ids)}."
            )

        opened = []
        for n, ref in enumerate(plan.layers, 1):
            got = src.open(ref.path)
            if got is None:
                what = _short(ref.digest) if ref.digest else _show(ref.path)
                raise InvalidInput(f"The image is missing blob {what} (layer {n}).")
            opened.append(got)
        sizes = [size for _, size in opened]
        total = sum(sizes)
        done = 0

        def tick(k: int) -> None:
            nonlocal done
            done += k
            if progress is not None:
                progress(done, total)

        if progress is not None:
            progress(0, total)
        stored: list[tuple[str, str]] = []
        try:
            for ref, (stream, size) in zip(plan.layers, opened, strict=True):
                digest = store.put(stream, ref.digest, size if ref.size is None else ref.size, tick)
                compression = ref.compression if ref.compression is not None else _sniff(store.path(digest))
                stored.append((digest, compression))
        finally:
            for stream, _ in opened:
                stream.close()

        config_digest = store.put_bytes(config_bytes)
        for _digest, data in plan.extra_blobs:
            store.put_bytes(data)
        manifest = plan.manifest
        if manifest is None:  # docker save has no manifest blob: record the equivalent one
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {
                        "mediaType": "application/vnd.docker.container.image.v1+json",
                        "digest": config_digest,
                        "size": len(config_bytes),
                    },
                    "layers": [
                        {"mediaType": DOCKER_LAYER_TYPE[c], "digest": d, "size": store.path(d).stat().st_size}
                        for d, c in stored
                    ],
                },
                separators=(",", ":"),
            ).encode()
        manifest_digest = store.put_bytes(manifest)

    image_hex = config_digest.removeprefix("sha256:")
    rootfs = _build_rootfs(store, image_hex, stored, config.diff_ids)
    return Image(
        id=config_digest,
        digest=plan.digest or manifest_digest,
        manifest_digest=manifest_digest,
        layers=tuple(d for d, _ in stored),
        entrypoint=config.entrypoint,
        cmd=config.cmd,
        env=config.env,
        workdir=config.workdir,
        user=config.user,
        exposed_ports=config.ports,
        rootfs=rootfs,
        size=_tree_size(rootfs),
    )
