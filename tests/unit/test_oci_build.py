"""tests/oci_build.py: the images it writes are valid OCI / docker-save images and the apps in them work.

Validity is checked twice: structurally here (digests, diff_ids, media types, annotations) and by
importing every app in every format and compression with cloudpal's own importer. When run as root
the apps are also started in a chroot inside a private network namespace and spoken to over HTTP.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from cloudpal.compute import Image, import_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import oci_build as ob
from oci_build import Compression, Format

FORMATS: tuple[Format, ...] = ("oci-dir", "oci-archive", "docker")
COMPRESSIONS: tuple[Compression, ...] = ("gzip", "zstd", "")
PATH = ob.PATH_ENV.partition("=")[2]
BUSYBOX = ob.host_busybox() if shutil.which("busybox") else None


@pytest.fixture(autouse=True)
def _static_busybox() -> None:
    if BUSYBOX is None:  # fail, never skip: CI installs it
        pytest.fail("these tests need a static busybox: apt-get install busybox-static", pytrace=False)


def _padded(dest: Path, *, compression: Compression = "gzip", fmt: Format = "oci-dir") -> Path:
    return ob.padded_app(dest, 1, compression=compression, fmt=fmt)


APPS: dict[str, Callable[..., Path]] = {
    "httpd": ob.httpd_app,
    "counter": ob.counter_app,
    "burner": ob.burner_app,
    "padded": _padded,
}

# entrypoint, cmd, env, workdir, user, exposed ports, layer count
Expected = tuple[tuple[str, ...], tuple[str, ...], dict[str, str], str, str, tuple[Any, ...], int]
EXPECTED: dict[str, Expected] = {
    "httpd": (
        ("/bin/busybox", "httpd", "-f", "-p", "8080"),
        (),
        {"PATH": PATH, "GREETING": "hi"},
        "/www",
        "app",
        ((8080, "tcp"),),
        2,
    ),
    "counter": (("/bin/sh",), ("/app/start.sh",), {"PATH": PATH}, "/", "", ((8080, "tcp"),), 2),
    "burner": ((), ("/bin/sh", "-c", "while :; do :; done"), {"PATH": PATH}, "/", "", (), 1),
    "padded": (
        ("/bin/busybox", "httpd", "-f", "-p", "8080"),
        (),
        {"PATH": PATH, "GREETING": "hi"},
        "/www",
        "app",
        ((8080, "tcp"),),
        3,
    ),
}


def _check_base(image: Image) -> None:
    root = image.rootfs
    assert BUSYBOX is not None
    assert (root / "bin/busybox").read_bytes() == BUSYBOX.read_bytes()
    assert stat.S_IMODE(os.stat(root / "bin/busybox").st_mode) == 0o755
    for applet in ob.APPLETS:
        assert os.readlink(root / "bin" / applet) == "busybox"
    assert b"app:x:1000:1000:" in (root / "etc/passwd").read_bytes()
    assert b"app:x:1000:" in (root / "etc/group").read_bytes()
    assert os.listdir(root / "data") == []
    assert stat.S_IMODE(os.stat(root / "tmp").st_mode) == 0o1777
    if os.geteuid() == 0:
        assert os.stat(root / "home/app").st_uid == 1000


@pytest.mark.parametrize("compression", COMPRESSIONS, ids=["gzip", "zstd", "plain"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("app", APPS)
def test_apps_import(tmp_path: Path, app: str, fmt: Format, compression: Compression) -> None:
    source = APPS[app](tmp_path / "image", compression=compression, fmt=fmt)
    assert source == tmp_path / "image"
    image = import_image(source, tmp_path / "store")
    entrypoint, cmd, env, workdir, user, ports, n_layers = EXPECTED[app]
    assert (image.entrypoint, image.cmd, image.env) == (entrypoint, cmd, env)
    assert (image.workdir, image.user, image.exposed_ports) == (workdir, user, ports)
    assert len(image.layers) == n_layers
    _check_base(image)
    root = image.rootfs
    if app in ("httpd", "padded"):
        assert (root / "www/index.html").read_bytes() == b"hello from cloudpal\n"
    if app == "padded":
        assert (root / "pad/random.bin").stat().st_size == 1 << 20
    if app == "counter":
        assert sorted(os.listdir(root / "www/cgi-bin")) == ["count", "get", "ls", "put"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


# ---------------------------------------------------------------- structure


def _read_source(path: Path) -> dict[str, bytes]:
    """Every regular file of a layout directory or archive, by relative path."""
    if path.is_dir():
        return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    files = {}
    with tarfile.open(path) as tar:
        for member in tar:
            stream = tar.extractfile(member) if member.isreg() else None
            if stream is not None:
                files[member.name] = stream.read()
    return files


def _decompress(blob: bytes, how: Compression) -> bytes:
    if how == "gzip":
        return gzip.decompress(blob)
    if how == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(blob).read()
    return blob


@pytest.mark.parametrize("compression", COMPRESSIONS, ids=["gzip", "zstd", "plain"])
@pytest.mark.parametrize("fmt", ["oci-dir", "oci-archive"])
def test_oci_layout_structure(tmp_path: Path, fmt: Format, compression: Compression) -> None:
    files = _read_source(ob.httpd_app(tmp_path / "image", compression=compression, fmt=fmt))
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert ob.digest(data) == "sha256:" + name.removeprefix("blobs/sha256/")
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2 and index["mediaType"] == ob.INDEX_TYPE
    [entry] = index["manifests"]
    assert entry["annotations"][ob.REF_NAME] == "latest"
    assert entry["annotations"][ob.IMAGE_NAME] == "cloudpal/httpd:latest"
    assert entry["platform"] == {"architecture": ob.host_arch(), "os": "linux"}

    def blob(descriptor: dict[str, Any]) -> bytes:
        data = files["blobs/sha256/" + descriptor["digest"].removeprefix("sha256:")]
        assert len(data) == descriptor["size"]
        return data

    assert entry["mediaType"] == ob.MANIFEST_TYPE
    manifest = json.loads(blob(entry))
    assert manifest["mediaType"] == ob.MANIFEST_TYPE and manifest["schemaVersion"] == 2
    assert manifest["config"]["mediaType"] == ob.CONFIG_TYPE
    config = json.loads(blob(manifest["config"]))
    assert config["os"] == "linux" and config["rootfs"]["type"] == "layers"
    diff_ids = config["rootfs"]["diff_ids"]
    assert len(manifest["layers"]) == len(diff_ids) == 2
    for layer, diff_id in zip(manifest["layers"], diff_ids, strict=True):
        assert layer["mediaType"] == ob.OCI_LAYER[compression]
        tar = _decompress(blob(layer), compression)
        assert ob.digest(tar) == diff_id
        assert ob.compress(tar, compression) == blob(layer)  # compress() is the blob writer's codec
    assert len(files) == 2 + 4  # oci-layout, index.json; manifest, config, two layers


@pytest.mark.parametrize("compression", COMPRESSIONS, ids=["gzip", "zstd", "plain"])
def test_docker_save_structure(tmp_path: Path, compression: Compression) -> None:
    files = _read_source(ob.counter_app(tmp_path / "image.tar", compression=compression, fmt="docker"))
    [entry] = json.loads(files["manifest.json"])
    assert entry["RepoTags"] == ["cloudpal/counter:latest"]
    config_bytes = files[entry["Config"]]
    assert entry["Config"] == ob.digest(config_bytes).removeprefix("sha256:") + ".json"
    config = json.loads(config_bytes)
    layers = [_decompress(files[path], compression) for path in entry["Layers"]]
    assert [ob.digest(t) for t in layers] == config["rootfs"]["diff_ids"]
    top = entry["Layers"][-1].removesuffix("/layer.tar")
    assert json.loads(files["repositories"]) == {"cloudpal/counter": {"latest": top}}
    assert json.loads(files[f"{top}/json"])["parent"] == entry["Layers"][0].removesuffix("/layer.tar")


def test_builds_are_reproducible(tmp_path: Path) -> None:
    for fmt in FORMATS[1:]:
        a = ob.httpd_app(tmp_path / f"a-{fmt}", fmt=fmt)
        b = ob.httpd_app(tmp_path / f"b-{fmt}", fmt=fmt)
        assert a.read_bytes() == b.read_bytes()

    def padding(seed: int | None) -> bytes:
        layer = ob.padded_image(1, seed=seed).layers[2]
        return layer if isinstance(layer, bytes) else ob.tar_bytes(layer)

    assert padding(0) == padding(0) != padding(1)
    assert padding(None) != padding(None)


def test_padding_is_incompressible(tmp_path: Path) -> None:
    files = _read_source(ob.padded_app(tmp_path / "image", 2, compression="gzip"))
    index = json.loads(files["index.json"])
    manifest = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"][7:]])
    assert manifest["layers"][2]["size"] > 2 << 20


# ---------------------------------------------------------------- sharing and scripts


def test_apps_share_the_base_layer(tmp_path: Path) -> None:
    store = tmp_path / "store"
    images = [
        import_image(ob.httpd_app(tmp_path / "httpd", compression="zstd"), store),
        import_image(ob.counter_app(tmp_path / "counter.tar", compression="zstd", fmt="oci-archive"), store),
        import_image(ob.burner_app(tmp_path / "burner", compression="zstd"), store),
    ]
    base = images[0].layers[0]
    assert [image.layers[0] for image in images] == [base] * 3
    expected = {d[7:] for image in images for d in (*image.layers, image.id, image.manifest_digest)}
    assert set(os.listdir(store / "blobs/sha256")) == expected
    assert len(expected) == 1 + 2 + 3 + 3  # base, two app layers, three configs, three manifests


CGI_SCRIPTS = {
    "httpd": ["www/cgi-bin/env"],
    "counter": ["app/start.sh", "www/cgi-bin/count", "www/cgi-bin/put", "www/cgi-bin/get", "www/cgi-bin/ls"],
}


@pytest.mark.parametrize("app", CGI_SCRIPTS)
def test_scripts_are_executable_and_parse(tmp_path: Path, app: str) -> None:
    assert BUSYBOX is not None
    image = import_image(APPS[app](tmp_path / "image"), tmp_path / "store")
    for rel in CGI_SCRIPTS[app]:
        path = image.rootfs / rel
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, rel
        assert path.read_bytes().startswith(b"#!/bin/sh\n"), rel
        check = subprocess.run([str(BUSYBOX), "sh", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, f"{rel}: {check.stderr}"
    broken = tmp_path / "broken.sh"
    broken.write_text("if true; then\n")
    assert subprocess.run([str(BUSYBOX), "sh", "-n", str(broken)], capture_output=True).returncode != 0


# ---------------------------------------------------------------- entries, errors, busybox


def test_entry_helpers(tmp_path: Path) -> None:
    assert ob.whiteout("etc/hostname")[0].name == "etc/.wh.hostname"
    assert ob.whiteout("top/")[0].name == ".wh.top"
    assert ob.opaque("opt/data/")[0].name == "opt/data/.wh..wh..opq"
    lower = [
        ob.directory("etc"),
        ob.regular("etc/hostname", b"base\n"),
        ob.regular("etc/motd", b"hi\n", 0o640, uid=1000, gid=1001),
        ob.directory("opt/data", 0o750),
        ob.regular("opt/data/old", b"old"),
        ob.symlink("etc/link", "motd"),
        ob.hardlink("etc/motd2", "etc/motd"),
        ob.directory("gone"),
        ob.regular("gone/file", b"x"),
    ]
    upper = [
        ob.whiteout("etc/hostname"),
        ob.whiteout("gone"),
        ob.directory("opt/data", 0o750),
        ob.opaque("opt/data"),
        ob.regular("opt/data/new", b"new"),
    ]
    source = ob.write_oci_layout(tmp_path / "image", [lower, ob.tar_bytes(upper)], {"Cmd": ["/x"]})
    root = import_image(source, tmp_path / "store").rootfs
    assert sorted(os.listdir(root)) == ["etc", "opt"]
    assert sorted(os.listdir(root / "etc")) == ["link", "motd", "motd2"]
    assert os.listdir(root / "opt/data") == ["new"]
    assert os.readlink(root / "etc/link") == "motd"
    motd = os.stat(root / "etc/motd")
    assert os.stat(root / "etc/motd2").st_ino == motd.st_ino
    assert stat.S_IMODE(motd.st_mode) == 0o640
    assert stat.S_IMODE(os.stat(root / "opt/data").st_mode) == 0o750
    if os.geteuid() == 0:
        assert (motd.st_uid, motd.st_gid) == (1000, 1001)


def test_write_refusals_leave_nothing(tmp_path: Path) -> None:
    layer = [ob.regular("x", b"1")]
    (tmp_path / "full").mkdir()
    (tmp_path / "full/keep").write_text("mine")
    with pytest.raises(FileExistsError):
        ob.write_oci_layout(tmp_path / "full", [layer], {})
    assert os.listdir(tmp_path / "full") == ["keep"]
    with pytest.raises(ValueError, match="does not fit"):
        ob.write_oci_layout(tmp_path / "a", [layer], {}, compression=["gzip", "zstd"])
    with pytest.raises(ValueError, match="unknown image format"):
        ob.write_oci_layout(tmp_path / "a", [layer], {}, fmt="zip")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        ob.write_oci_layout(tmp_path / "a", [layer, [("not a tarinfo", None)]], {})  # type: ignore[list-item]
    assert sorted(os.listdir(tmp_path)) == ["full"]
    (tmp_path / "empty").mkdir()
    ob.write_oci_layout(tmp_path / "empty", [layer], {})
    assert (tmp_path / "empty/index.json").is_file()
    old = tmp_path / "old.tar"
    old.write_text("stale")
    ob.write_oci_layout(old, [layer], {}, fmt="oci-archive")
    assert tarfile.is_tarfile(old)


def test_elf_interpreter(tmp_path: Path) -> None:
    assert BUSYBOX is not None
    assert ob.elf_interpreter(BUSYBOX) is None
    dynamic = Path(sys.executable).resolve()
    assert "ld" in (ob.elf_interpreter(dynamic) or "ld")  # our python is dynamic; a static one is fine
    text = tmp_path / "script"
    text.write_text("#!/bin/sh\n")
    with pytest.raises(ValueError, match="not an ELF"):
        ob.elf_interpreter(text)


def test_busybox_must_be_static(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A dynamically linked ELF to pose as busybox: Debian's /bin/sh and friends always are.
    candidates = [Path("/bin/sh").resolve(), Path("/usr/bin/env"), Path(sys.executable).resolve()]
    dynamic = next((p for p in candidates if p.exists() and ob.elf_interpreter(p)), None)
    assert dynamic is not None, f"none of {candidates} is a dynamically linked ELF"
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(ob.BusyboxUnavailable, match=r"^No busybox on PATH; install busybox-static"):
        ob.busybox_base()
    monkeypatch.setattr(shutil, "which", lambda _name: str(dynamic))
    with pytest.raises(ob.BusyboxUnavailable, match=r"is dynamically linked \(it needs /.*\), so it cannot"):
        ob.busybox_base()
    script = tmp_path / "busybox"
    script.write_text("#!/bin/sh\n")
    monkeypatch.setattr(shutil, "which", lambda _name: str(script))
    with pytest.raises(ob.BusyboxUnavailable, match="is not an ELF executable"):
        ob.busybox_base()


# ---------------------------------------------------------------- the apps really run (root only)


UNSHARE = ["unshare", "--net", "--pid", "--mount", "--fork", "--kill-child"]


def _can_sandbox() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("chroot"):
        return False
    probe = [*UNSHARE, "true"]
    return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0


@pytest.fixture
def _sandbox_ok() -> None:
    if not _can_sandbox():  # fail, never skip: CI runs as root with util-linux
        pytest.fail("these tests need root, chroot and unshare", pytrace=False)


needs_sandbox = pytest.mark.usefixtures("_sandbox_ok")

_WAIT = """
for i in $(seq 100); do
  "$BB" wget -q -O /dev/null http://127.0.0.1:8080/ 2>/dev/null && break
  sleep 0.05
done
"""


def _sandbox(root: Path, script: str) -> str:
    """Run a shell script in fresh net, pid and mount namespaces, with a /proc mounted in ``root``.

    Port 8080 is ours, every process dies with the script, and the mount vanishes with the namespace.
    """
    assert BUSYBOX is not None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "BB": str(BUSYBOX), "WAIT": _WAIT}
    done = subprocess.run(
        [*UNSHARE, "sh", "-ec", f"ip link set lo up\nmount -t proc proc {root}/proc\n{script}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_sandbox
def test_httpd_app_serves(tmp_path: Path) -> None:
    root = import_image(ob.httpd_app(tmp_path / "image"), tmp_path / "store").rootfs
    out = _sandbox(
        root,
        f"""
chroot --userspec=1000:1000 {root} /bin/sh -c \
  'cd /www && exec /bin/env -i {ob.PATH_ENV} GREETING=hi {" ".join(ob.HTTPD_ENTRYPOINT)}' &
eval "$WAIT"
"$BB" wget -q -O- http://127.0.0.1:8080/
"$BB" wget -q -O- http://127.0.0.1:8080/cgi-bin/env
kill $!
""",
    )
    assert out == "hello from cloudpal\n1000\n/www\nhi\n"


@needs_sandbox
def test_counter_app_counts_and_persists(tmp_path: Path) -> None:
    root = import_image(ob.counter_app(tmp_path / "image"), tmp_path / "store").rootfs
    start = f"chroot {root} /bin/env -i {ob.PATH_ENV} /bin/sh /app/start.sh &"
    get = '"$BB" wget -q -O- http://127.0.0.1:8080/cgi-bin/'
    out = _sandbox(
        root,
        f"""
{start}
eval "$WAIT"
{get}count
{get}count
{get}'put?s3cret'
kill $!; wait $! || true
{start}
eval "$WAIT"
{get}get; echo
{get}count
{get}ls
kill $!
""",
    )
    lines = out.splitlines()
    assert lines[:6] == [
        "counter: boot 1, uid 0, cwd /",
        "2",
        "3",
        "stored",
        "counter: boot 4, uid 0, cwd /",
        "s3cret",
    ]
    assert lines[6] == "5"
    listing = "\n".join(lines[7:])
    volume, block = listing.split("\nBLOCK")
    assert " counter" in volume and " secret" in volume
    assert block.strip() == ""  # no /sys in the chroot; the guest shows vda and vdb here
    assert (root / "data/counter").read_text() == "5\n"
    assert (root / "data/secret").read_text() == "s3cret"
    assert sorted(os.listdir(root / "data")) == ["counter", "secret"]
    assert os.listdir(root / "dev") == []
