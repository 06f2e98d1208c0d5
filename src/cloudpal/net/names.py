"""Names and durations as users type them."""

from __future__ import annotations

import re

from cloudpal.errors import InvalidInput

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def validate_name(name: str, what: str = "device name") -> str:
    """A device name is one DNS label: lowercase letters, digits and '-'."""
    if not _LABEL.match(name):
        raise InvalidInput(
            f"invalid {what} {name!r}: use 1-63 lowercase letters, digits or '-', "
            "not starting or ending with '-'"
        )
    return name


def validate_zone(zone: str) -> str:
    parts = zone.strip(".").split(".")
    for part in parts:
        validate_name(part, "DNS zone label")
    return ".".join(parts)


def parse_duration(text: str) -> int:
    """'90s', '30m', '1h', '30d', '2w' -> seconds."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise InvalidInput(f"invalid duration {text!r}: use a number and s, m, h, d or w (e.g. 30d)")
    return int(m.group(1)) * _UNIT[m.group(2)]


def split_hostport(text: str, what: str = "endpoint", allow_any_port: bool = False) -> tuple[str, int]:
    """HOST:PORT or [V6]:PORT; port 0 ("any free port") only where a listener allows it."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    low = 0 if allow_any_port else 1
    if not sep or not host or not port.isdigit() or not low <= int(port) < 65536:
        raise InvalidInput(f"invalid {what} {text!r}: use HOST:PORT")
    return host, int(port)


def join_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
