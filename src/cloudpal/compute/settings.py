"""An app's settings as the owner types them: `--publish 127.0.0.1:8080:80 --cpu 50% --memory 256M`.

Pure parsing, shared by the CLI (to refuse bad input before the node is asked) and the node (which
never trusts what it is sent).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cloudpal.errors import InvalidInput

_SIZE = re.compile(r"^(\d+)([kKmMgG]?)[iI]?[bB]?$")
_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}  # a bare number means MiB
_PERCENT = re.compile(r"^(\d{1,5})%?$")
_DURATION = re.compile(r"^(\d{1,7})([smhd]?)$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

MIN_MEMORY_MIB = 64
MAX_MEMORY_MIB = 64 << 10


@dataclass(frozen=True)
class Publish:
    """Serve guest port `guest_port` on the host at `host`:`port`."""

    host: str
    port: int
    guest_port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}:{self.guest_port}"


@dataclass(frozen=True)
class AppSettings:
    publish: tuple[Publish, ...] = ()
    idle: int = 300  # seconds without connections or traffic before a snapshot-and-stop
    cpu_percent: int | None = 100  # CFS quota in % of one CPU; None = no quota
    cpu_weight: int = 100  # relative CPU share against other apps when the CPU is contended
    memory_mib: int = 128  # guest RAM; the cgroup allows this plus QEMU's own overhead
    pids: int = 256  # threads QEMU may have (the guest's own processes are inside the VM)
    runaway_after: int = 60  # seconds pinned at the CPU quota with no client before a kill
    volume_mib: int = 1024

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["publish"] = [str(p) for p in self.publish]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AppSettings:
        return cls().updated(d)

    def updated(self, d: dict[str, Any]) -> AppSettings:
        """Apply the owner's strings or the stored JSON values; unknown keys are refused."""
        changes: dict[str, Any] = {}
        for key, value in d.items():
            if value is None and key != "cpu_percent":
                continue
            if key == "publish":
                if not isinstance(value, list):
                    raise InvalidInput("publish must be a list of HOST:PORT:GUEST_PORT")
                changes[key] = tuple(parse_publish(str(v)) for v in value)
                ports = [(p.host, p.port) for p in changes[key]]
                if len(set(ports)) != len(ports):
                    raise InvalidInput("the same host address and port is published twice")
            elif key in ("idle", "runaway_after"):
                changes[key] = parse_seconds(value, key.replace("_", " "))
            elif key == "cpu_percent":
                changes[key] = parse_cpu(value)
            elif key == "memory_mib":
                changes[key] = parse_memory(value)
            elif key == "volume_mib":
                changes[key] = parse_size_mib(value, "volume size", 16, 16 << 20)
            elif key == "pids":
                changes[key] = parse_int(value, "pids limit", 16, 1 << 20)
            elif key == "cpu_weight":
                changes[key] = parse_int(value, "CPU weight", 1, 10000)
            else:
                raise InvalidInput(f"unknown app setting {key!r}")
        return replace(self, **changes)


def parse_int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise InvalidInput(f"invalid {what} {value!r}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"invalid {what} {value!r}: use a whole number from {low} to {high}")
    return value


def parse_publish(text: str) -> Publish:
    """[HOST:]PORT:GUEST_PORT; HOST may be an IPv6 address in brackets; default 127.0.0.1."""
    bad = InvalidInput(f"invalid --publish {text!r}: use [HOST:]PORT:GUEST_PORT, "
                       "e.g. 127.0.0.1:8080:80")
    host = "127.0.0.1"
    rest = text.strip()
    if rest.startswith("["):
        end = rest.find("]:")
        if end < 0:
            raise bad
        host, rest = rest[1:end], rest[end + 2:]
    parts = rest.split(":")
    if len(parts) == 3 and host == "127.0.0.1" and not text.strip().startswith("["):
        host = parts.pop(0)
    if len(parts) != 2:
        raise bad
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise bad from None
    if not all(p.isdigit() and len(p) <= 5 for p in parts):
        raise bad
    port, guest = int(parts[0]), int(parts[1])
    if not (1 <= port <= 65535 and 1 <= guest <= 65535):
        raise bad
    return Publish(str(addr), port, guest)


def parse_size_mib(value: object, what: str, low: int, high: int) -> int:
    """'256M', '1G', '512MiB', 256 -> MiB."""
    if isinstance(value, int) and not isinstance(value, bool):
        mib = value
    else:
        m = _SIZE.match(str(value).strip())
        if not m or len(m.group(1)) > 12:
            raise InvalidInput(f"invalid {what} {value!r}: use a size such as 256M or 1G")
        mib = int(m.group(1)) * _UNITS[m.group(2).lower()] // (1 << 20)
    if not low <= mib <= high:
        raise InvalidInput(f"invalid {what} {value!r}: it must be between {low} MiB and {high} MiB")
    return mib


def parse_memory(value: object) -> int:
    return parse_size_mib(value, "memory size", MIN_MEMORY_MIB, MAX_MEMORY_MIB)


def parse_cpu(value: object) -> int | None:
    """'50%' (of one CPU), '200%' (two CPUs), 'none' (no quota)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "unlimited")):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        pct = value
    else:
        m = _PERCENT.match(str(value).strip())
        if not m:
            raise InvalidInput(f"invalid CPU quota {value!r}: use a percentage of one CPU, e.g. 50%")
        pct = int(m.group(1))
    if not 1 <= pct <= 6400:
        raise InvalidInput(f"invalid CPU quota {value!r}: use 1% to 6400%")
    return pct


def parse_seconds(value: object, what: str) -> int:
    """'5m', '90s', '1h', 300 -> seconds (at least 1)."""
    if isinstance(value, int) and not isinstance(value, bool):
        secs = value
    else:
        m = _DURATION.match(str(value).strip())
        if not m:
            raise InvalidInput(f"invalid {what} {value!r}: use a duration such as 90s, 5m or 1h")
        secs = int(m.group(1)) * _SECONDS[m.group(2)]
    if not 1 <= secs <= 30 * 86400:
        raise InvalidInput(f"invalid {what} {value!r}: use 1 s to 30 days")
    return secs


@dataclass(frozen=True)
class ImageInfo:
    """What the node keeps of an imported image (see compute.images.Image)."""

    id: str
    digest: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = ""
    exposed_ports: tuple[int, ...] = ()
    rootfs: str = ""
    size: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> ImageInfo:
        if not isinstance(d, dict):
            raise InvalidInput("image must be an object")
        try:
            info = cls(
                id=str(d["id"]), digest=str(d["digest"]),
                argv=tuple(str(a) for a in d["argv"]),
                env={str(k): str(v) for k, v in dict(d.get("env") or {}).items()},
                workdir=str(d.get("workdir") or "/"), user=str(d.get("user") or ""),
                exposed_ports=tuple(int(p) for p in d.get("exposed_ports") or ()),
                rootfs=str(d["rootfs"]), size=int(d.get("size") or 0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"image description is incomplete: {exc}") from None
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", info.id):
            raise InvalidInput("image id must be a sha256 digest")
        if not info.argv:
            raise InvalidInput("the image has neither an entrypoint nor a cmd: nothing to run")
        if not all(1 <= p <= 65535 for p in info.exposed_ports):
            raise InvalidInput("image exposes an invalid port")
        return info
