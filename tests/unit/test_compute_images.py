"""Image import: OCI layout / oci-archive / docker-save in, verified blobs and a rootfs out.

Images are built here in Python (no docker, no network). Every refusal is checked for its message
and for leaving nothing behind: no write outside the store, no rootfs, no temp files.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudpal.compute import Image, import_image
from cloudpal.errors import CloudPalError, InvalidInput

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oci_build import (
    MTIME,
    Compression,
    Entry,
    Format,
    compress,
    config_blob,
    tar_bytes,
    tar_tree,
    write_oci_layout,
)
from oci_build import digest as sha
from oci_build import directory as d
from oci_build import hardlink as hard
from oci_build import regular as f
from oci_build import symlink as sym
from oci_build import tarinfo as _info

BUSYBOX = Path("/bin/busybox")
BUSYBOX_BYTES = BUSYBOX.read_bytes() if BUSYBOX.is_file() else b"\x7fELF fake busybox\n" * 100


# ---------------------------------------------------------------- building images (tests/oci_build.py)


@dataclass
class Spec:
    """An image to build: layer tars with their compression, and the runtime config."""

    layers: list[tuple[bytes, str]]  # uncompressed tar, compression
    config: dict[str, Any] = field(
        default_factory=lambda: {
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"],
            "Env": ["PATH=/usr/bin:/bin", "GREETING=a=b"],
            "WorkingDir": "/srv",
            "User": "1000:1000",
            "ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "9000": {}},
        }
    )
    media_override: dict[int, str] = field(default_factory=dict)

    def config_bytes(self) -> bytes:
        return config_blob(self.config, [sha(t) for t, _ in self.layers])


def write_oci(spec: Spec, out: Path, fmt: Format = "oci-dir") -> Path:
    """Write the spec as an OCI layout directory (or another format of tests/oci_build.py)."""
    return write_oci_layout(
        out,
        [t for t, _ in spec.layers],
        spec.config,
        compression=[cast(Compression, c) for _, c in spec.layers],
        fmt=fmt,
        media_types=spec.media_override,
    )


def write_docker(spec: Spec, out: Path) -> Path:
    """A `docker save` tarball in the classic layout: <id>/layer.tar and <hex>.json."""
    return write_oci(spec, out, "docker")


def base_layer() -> bytes:
    return tar_bytes(
        [
            d("bin"),
            f("bin/busybox", BUSYBOX_BYTES, 0o755),
            sym("bin/sh", "busybox"),
            d("etc"),
            f("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
            f("etc/hostname", b"base\n"),
            d("opt/data"),
            f("opt/data/old", b"old"),
            d("opt/data/sub"),
            f("opt/data/sub/deep", b"deep"),
            d("usr/bin"),
            hard("usr/bin/env", "bin/busybox"),
            sym("usr/bin/up", "../../etc/passwd"),
            (_info("dev-fifo", tarfile.FIFOTYPE), None),
            (_info("srv", tarfile.DIRTYPE, 0o750), None),
        ]
    )


def top_layer() -> bytes:
    return tar_bytes(
        [
            f("etc/.wh.hostname", b""),
            d("opt/data"),
            f("opt/data/.wh..wh..opq", b""),
            f("opt/data/new", b"new", 0o600),
            f("etc/motd", b"hello\n", 0o4755),
        ]
    )


def busybox_spec(base: str = "gzip", top: str = "zstd") -> Spec:
    return Spec(layers=[(base_layer(), base), (top_layer(), top)])


def make_source(kind: str, spec: Spec, where: Path) -> Path:
    if kind == "docker":
        return write_docker(spec, where / "image.tar")
    if kind == "archive":
        return write_oci(spec, where / "image.oci.tar", "oci-archive")
    return write_oci(spec, where / "layout")


def snapshot(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


# ---------------------------------------------------------------- happy paths


def check_busybox_rootfs(image: Image) -> None:
    root = image.rootfs
    assert (root / "bin/busybox").read_bytes() == BUSYBOX_BYTES
    assert os.readlink(root / "bin/sh") == "busybox"
    assert os.readlink(root / "usr/bin/up") == "../../etc/passwd"
    assert os.stat(root / "usr/bin/env").st_ino == os.stat(root / "bin/busybox").st_ino
    assert not (root / "etc/hostname").exists()  # whiteout
    assert not (root / "etc/.wh.hostname").exists()
    assert sorted(os.listdir(root / "opt/data")) == ["new"]  # opaque dir hid lower entries
    assert not (root / "dev-fifo").exists()
    assert stat.S_IMODE(os.stat(root / "bin/busybox").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(root / "opt/data/new").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(root / "etc/motd").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(root / "srv").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o755
    assert os.stat(root / "etc/passwd").st_mtime == MTIME
    assert os.stat(root / "opt/data").st_mtime == MTIME
    assert os.lstat(root / "bin/sh").st_mtime == MTIME
    assert image.entrypoint == ("/bin/sh", "-c")
    assert image.cmd == ("echo hi",)
    assert image.env == {"PATH": "/usr/bin:/bin", "GREETING": "a=b"}
    assert image.workdir == "/srv"
    assert image.user == "1000:1000"
    assert image.exposed_ports == ((53, "udp"), (8080, "tcp"), (9000, "tcp"))
    assert image.size == len(BUSYBOX_BYTES) + len(b"root:x:0:0:root:/root:/bin/sh\n") + 3 + 6


@pytest.mark.parametrize(
    ("kind", "base", "top"),
    [
        ("dir", "gzip", "zstd"),
        ("archive", "", "gzip"),
        ("docker", "gzip", ""),
        ("docker", "zstd", "gzip"),
    ],
)
def test_import_formats(tmp_path: Path, kind: str, base: str, top: str) -> None:
    spec = busybox_spec(base, top)
    source = make_source(kind, spec, tmp_path)
    store = tmp_path / "store"
    seen: list[tuple[int, int]] = []
    image = import_image(source, store, progress=lambda done, total: seen.append((done, total)))

    config = spec.config_bytes()
    assert image.id == sha(config)
    assert image.rootfs == store / "rootfs" / sha(config)[7:]
    assert len(image.layers) == 2
    check_busybox_rootfs(image)
    for digest in (*image.layers, image.id, image.manifest_digest):
        blob = store / "blobs" / "sha256" / digest[7:]
        assert sha(blob.read_bytes()) == digest
    if kind != "docker":
        assert image.digest == image.manifest_digest
    total = sum(len(compress(t, cast(Compression, c))) for t, c in spec.layers)
    assert seen[-1] == (total, total)
    assert all(a <= b for (a, _), (b, _) in itertools.pairwise(seen))
    assert not [p for p in os.listdir(store) if p.startswith(".tmp")]
    assert os.listdir(store / "rootfs") == [sha(config)[7:]]


def test_gzipped_docker_save_and_reimport(tmp_path: Path) -> None:
    plain = write_docker(busybox_spec(), tmp_path / "image.tar")
    gz = tmp_path / "image.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    store = tmp_path / "store"
    first = import_image(gz, store)
    before = snapshot(store)
    again = import_image(gz, store)
    assert again == first and snapshot(store) == before
    check_busybox_rootfs(again)


def test_shared_layers_stored_once(tmp_path: Path) -> None:
    base = (base_layer(), "gzip")
    a = Spec(layers=[base, (top_layer(), "zstd")])
    b = Spec(layers=[base, (tar_bytes([f("app/run", b"#!/bin/sh\n", 0o755)]), "gzip")])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    store = tmp_path / "store"
    image_a = import_image(make_source("dir", a, tmp_path / "a"), store)
    blobs = store / "blobs" / "sha256"
    shared = blobs / image_a.layers[0][7:]
    inode_before = (os.stat(shared).st_ino, os.stat(shared).st_mtime_ns)
    before = set(os.listdir(blobs))

    image_b = import_image(make_source("dir", b, tmp_path / "b"), store)
    added = set(os.listdir(blobs)) - before
    assert image_b.layers[0] == image_a.layers[0]
    assert added == {image_b.layers[1][7:], image_b.id[7:], image_b.manifest_digest[7:]}
    assert (os.stat(shared).st_ino, os.stat(shared).st_mtime_ns) == inode_before
    assert (image_b.rootfs / "app/run").read_bytes() == b"#!/bin/sh\n"
    assert (image_b.rootfs / "etc/hostname").exists()


def test_empty_config_defaults(tmp_path: Path) -> None:
    spec = Spec(layers=[(tar_bytes([f("x", b"1")]), "")], config={})
    image = import_image(make_source("dir", spec, tmp_path), tmp_path / "store")
    assert (image.entrypoint, image.cmd, image.env, image.workdir, image.user) == ((), (), {}, "/", "")
    assert image.exposed_ports == ()


# ---------------------------------------------------------------- refusals


def assert_refused(tmp_path: Path, source: Path, pattern: str) -> None:
    """Import must fail with `pattern`, leave no rootfs or temp files, and write nothing outside the store."""
    store = tmp_path / "store"
    outside_before = snapshot(tmp_path) - {p for p in snapshot(tmp_path) if p.startswith("store")}
    with pytest.raises(InvalidInput, match=pattern) as err:
        import_image(source, store)
    assert "\n" not in str(err.value)
    outside_after = {p for p in snapshot(tmp_path) if not p.startswith("store")}
    assert outside_after == outside_before
    assert not (tmp_path.parent / "pwned").exists()
    if store.exists():
        assert not [p for p in os.listdir(store) if p.startswith(".tmp")]
        assert not os.listdir(store / "rootfs")


def layer_source(
    tmp_path: Path, entries: list[Entry], how: str = "gzip", fmt: int = tarfile.PAX_FORMAT
) -> Path:
    base = tar_bytes([d("etc"), f("etc/passwd", b"root\n")])
    spec = Spec(layers=[(base, "gzip"), (tar_bytes(entries, fmt), how)])
    (tmp_path / "outside").mkdir()
    return make_source("dir", spec, tmp_path)


@pytest.mark.parametrize(
    ("entries", "pattern"),
    [
        (
            [f("../pwned", b"x")],
            r"^Layer 2 has an entry '\.\./pwned' that climbs out of the root with '\.\.'\.$",
        ),
        ([f("a/../../pwned", b"x")], r"climbs out of the root"),
        ([f("/pwned", b"x")], r"^Layer 2 has an entry with an absolute path '/pwned'\.$"),
        (
            [sym("link", "/etc/passwd")],
            r"^Layer 2 has a symlink 'link' with an absolute target '/etc/passwd'\.$",
        ),
        (
            [sym("etc/link", "../../outside"), f("etc/link/pwned", b"x")],
            r"^Layer 2 has a symlink 'etc/link' pointing outside the image \('\.\./\.\./outside'\)\.$",
        ),
        (
            [hard("evil", "../outside/x")],
            r"^Layer 2 has a hardlink 'evil' to '\.\./outside/x', outside the image\.$",
        ),
        (
            [hard("evil", "/etc/shadow")],
            r"^Layer 2 has a hardlink 'evil' to '/etc/shadow', outside the image\.$",
        ),
        ([hard("evil", "nowhere")], r"^Layer 2 has a hardlink 'evil' to missing 'nowhere'\.$"),
        (
            [(_info("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), None)],
            r"^Layer 2 contains a device node 'dev/sda', which images may not carry\.$",
        ),
        (
            [(_info("dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1), None)],
            r"^Layer 2 contains a device node 'dev/mem', which images may not carry\.$",
        ),
        ([f("a" * 5000, b"x")], r"^Layer 2 has an entry whose name is longer than 4096 bytes\.$"),
        ([f("b" * 300, b"x")], r"^Layer 2 has an entry with a path component longer than 255 bytes\.$"),
        ([f("etc/passwd/x", b"x")], r"^Layer 2 writes through 'etc/passwd', which is not a directory\.$"),
    ],
    ids=[
        "dotdot",
        "dotdot-inner",
        "absolute",
        "abs-symlink",
        "escaping-symlink",
        "escaping-hardlink",
        "abs-hardlink",
        "missing-hardlink",
        "block-device",
        "char-device",
        "long-name",
        "long-component",
        "through-file",
    ],
)
def test_layer_refusals(tmp_path: Path, entries: list[Entry], pattern: str) -> None:
    assert_refused(tmp_path, layer_source(tmp_path, entries), pattern)


def test_write_through_earlier_symlink_refused(tmp_path: Path) -> None:
    source = layer_source(tmp_path, [sym("etc/lnk", "."), f("etc/lnk/x", b"x")])
    assert_refused(tmp_path, source, r"^Layer 2 writes through 'etc/lnk', which is not a directory\.$")


def test_huge_pax_header_refused(tmp_path: Path) -> None:
    ti, data = f("big", b"x")
    ti.pax_headers = {"comment": "x" * (2 << 20)}
    source = layer_source(tmp_path, [(ti, data)])
    assert_refused(tmp_path, source, r"^Layer 2 has a tar header larger than 1048576 bytes\.$")


def test_absurd_member_size_refused(tmp_path: Path) -> None:
    header = _info("huge", size=10**12).tobuf(tarfile.GNU_FORMAT)
    layer = header + b"\0" * 1024
    base = tar_bytes([f("ok", b"1")])
    spec = Spec(layers=[(base, ""), (layer, "gzip")])
    (tmp_path / "outside").mkdir()
    source = make_source("dir", spec, tmp_path)
    assert_refused(
        tmp_path, source, r"^Layer 2 has an entry 'huge' claiming 1000000000000 bytes, more than it holds\.$"
    )


def test_bad_layer_digest_refused(tmp_path: Path) -> None:
    source = make_source("dir", busybox_spec(), tmp_path)
    manifest = _manifest(source)
    blob = source / "blobs/sha256" / manifest["layers"][1]["digest"][7:]
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    digest = manifest["layers"][1]["digest"]
    assert_refused(tmp_path, source, rf"^Blob {digest[:19]}… is corrupt: its content hashes to sha256:")
    assert not (tmp_path / "store/blobs/sha256" / digest[7:]).exists()


def test_bad_config_digest_refused(tmp_path: Path) -> None:
    source = make_source("dir", busybox_spec(), tmp_path)
    digest = _manifest(source)["config"]["digest"]
    blob = source / "blobs/sha256" / digest[7:]
    blob.write_bytes(blob.read_bytes().replace(b"echo hi", b"echo HI"))
    assert_refused(tmp_path, source, r"^Blob sha256:\w+… \(config\) is corrupt: its content does not match")


def test_wrong_size_refused(tmp_path: Path) -> None:
    source = make_source("dir", busybox_spec(), tmp_path)
    blob = source / "blobs/sha256" / _manifest(source)["layers"][0]["digest"][7:]
    blob.write_bytes(blob.read_bytes() + b"extra")
    assert_refused(tmp_path, source, r"^Blob sha256:\w+… is not the \d+ bytes its descriptor says\.$")


def test_docker_layer_diff_id_mismatch(tmp_path: Path) -> None:
    spec = busybox_spec("gzip", "")
    config = spec.config_bytes()
    members: list[Entry] = [
        f("l0/layer.tar", compress(base_layer(), "gzip")),
        f("l1/layer.tar", tar_bytes([f("evil", b"x")])),
        f("cfg.json", config),
        f(
            "manifest.json",
            json.dumps([{"Config": "cfg.json", "Layers": ["l0/layer.tar", "l1/layer.tar"]}]).encode(),
        ),
    ]
    out = tmp_path / "image.tar"
    out.write_bytes(tar_bytes(members))
    assert_refused(tmp_path, out, r"^Layer 2 does not match its diff_id sha256:\w+… in the image config\.$")


def _manifest(layout: Path) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    result: dict[str, Any] = json.loads((layout / "blobs/sha256" / digest[7:]).read_text())
    return result


def test_missing_blob_refused(tmp_path: Path) -> None:
    source = make_source("dir", busybox_spec(), tmp_path)
    digest = _manifest(source)["layers"][1]["digest"]
    (source / "blobs/sha256" / digest[7:]).unlink()
    assert_refused(tmp_path, source, rf"^The image is missing blob {digest[:19]}… \(layer 2\)\.$")


def test_missing_blob_in_archive_refused(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    write_oci(busybox_spec(), layout)
    digest = _manifest(layout)["config"]["digest"]
    (layout / "blobs/sha256" / digest[7:]).unlink()
    source = tar_tree(layout, tmp_path / "image.tar")
    shutil.rmtree(layout)
    assert_refused(tmp_path, source, rf"^The image is missing blob {digest[:19]}… \(config\)\.$")


def test_unsupported_media_type_refused(tmp_path: Path) -> None:
    spec = busybox_spec()
    spec.media_override[1] = "application/vnd.oci.image.layer.v1.tar+bzip2"
    source = make_source("dir", spec, tmp_path)
    assert_refused(
        tmp_path,
        source,
        r"^Layer 2 has unsupported media type 'application/vnd\.oci\.image\.layer\.v1\.tar\+bzip2'\.$",
    )


def test_not_an_image_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_refused(
        tmp_path, tmp_path / "empty", r"is not an OCI layout, oci-archive or docker save archive\.$"
    )
    assert_refused(tmp_path, tmp_path / "nope", r"does not exist\.$")


def test_corrupt_compressed_layer_refused(tmp_path: Path) -> None:
    spec = busybox_spec()
    source = make_source("dir", spec, tmp_path)
    layer = _manifest(source)["layers"][1]
    junk = b"\x28\xb5\x2f\xfd" + b"garbage" * 10
    # rewrite blob + descriptor + manifest + index consistently so only decompression fails
    _replace_layer(source, 1, junk, layer["mediaType"])
    assert_refused(tmp_path, source, r"^Layer 2 is not valid zstd data\.$")


def _replace_layer(layout: Path, n: int, blob: bytes, media: str) -> None:
    manifest = _manifest(layout)
    manifest["layers"][n] = {"mediaType": media, "digest": sha(blob), "size": len(blob)}
    (layout / "blobs/sha256" / sha(blob)[7:]).write_bytes(blob)
    data = json.dumps(manifest).encode()
    (layout / "blobs/sha256" / sha(data)[7:]).write_bytes(data)
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": manifest["mediaType"], "digest": sha(data), "size": len(data)}],
    }
    (layout / "index.json").write_text(json.dumps(index))


# ---------------------------------------------------------------- fuzzing


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _fuzz_import(build: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = build(root)
        with contextlib.suppress(CloudPalError):
            import_image(source, root / "store")
        store = root / "store"
        if store.exists():
            assert not [p for p in os.listdir(store) if p.startswith(".tmp")]


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_archive_bytes(data: bytes) -> None:
    def build(root: Path) -> Path:
        (root / "x.tar").write_bytes(data)
        return root / "x.tar"

    _fuzz_import(build)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda c: (
                st.lists(c, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        ["manifests", "mediaType", "digest", "size", "platform", "config", "layers"]
                    ),
                    c,
                    max_size=4,
                )
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_fuzz_index_json(data: bytes) -> None:
    def build(root: Path) -> Path:
        (root / "layout").mkdir()
        write_oci(Spec(layers=[(tar_bytes([f("x", b"1")]), "")]), root / "layout")
        (root / "layout/index.json").write_bytes(data)
        return root / "layout"

    _fuzz_import(build)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.recursive(
            st.none() | st.integers() | st.text(max_size=20),
            lambda c: (
                st.lists(c, max_size=4)
                | st.dictionaries(st.sampled_from(["Config", "Layers", "RepoTags"]), c, max_size=3)
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_fuzz_docker_manifest_json(data: bytes) -> None:
    def build(root: Path) -> Path:
        members = [f("l/layer.tar", tar_bytes([f("x", b"1")])), f("manifest.json", data)]
        (root / "x.tar").write_bytes(tar_bytes(members))
        return root / "x.tar"

    _fuzz_import(build)


@FUZZ
@given(
    st.binary(max_size=4096),
    st.sampled_from(["", "gzip", "zstd"]),
    st.integers(0, 10_000),
    st.binary(min_size=1, max_size=8),
)
def test_fuzz_layer_bytes(junk: bytes, how: str, at: int, patch: bytes) -> None:
    """Corrupt layer tars whose digests are consistent, so the tar / decompression parsers see them."""
    good = tar_bytes([d("a"), f("a/b", b"hello"), sym("a/c", "b"), hard("a/d", "a/b")])
    base = bytearray(good if junk[:1] != b"\0" else junk)
    pos = at % max(len(base), 1)
    base[pos : pos + len(patch)] = patch

    def build(root: Path) -> Path:
        layout = root / "layout"
        layout.mkdir()
        spec = Spec(layers=[(bytes(base), how)])
        write_oci(spec, layout)
        return layout

    _fuzz_import(build)


_DOCKER_SAVE: list[bytes] = []


@FUZZ
@given(st.integers(0, 1 << 30), st.binary(min_size=1, max_size=16))
def test_fuzz_mutated_docker_save(at: int, patch: bytes) -> None:
    """Flip bytes anywhere in a real docker-save tarball: headers, JSON, compressed layers."""
    if not _DOCKER_SAVE:
        spec = Spec(layers=[(tar_bytes([d("a"), f("a/b", b"hello" * 50), sym("a/c", "b")]), "gzip")])
        with tempfile.TemporaryDirectory() as tmp:
            _DOCKER_SAVE.append(write_docker(spec, Path(tmp) / "x.tar").read_bytes())
    data = bytearray(_DOCKER_SAVE[0])
    pos = at % len(data)
    data[pos : pos + len(patch)] = patch

    def build(root: Path) -> Path:
        (root / "x.tar").write_bytes(bytes(data))
        return root / "x.tar"

    _fuzz_import(build)
