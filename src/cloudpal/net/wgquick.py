"""wg-quick configuration files, as the stock WireGuard apps import them.

The same text goes to ``wg-quick``, the Android/iOS/desktop apps and QR codes,
so :func:`render` sticks to the keys all of them understand and refuses any
value that could break out of its line. :func:`parse` reads the format back the
way wg-quick does (``#`` starts a comment anywhere, ``key = value`` inside
``[Interface]``/``[Peer]`` sections) without interpreting the values.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass

from cloudpal.errors import InvalidInput
from cloudpal.net import keys

_SECTIONS = {"interface": "Interface", "peer": "Peer"}
# wg-quick accepts these several times and concatenates them; parse joins them likewise.
_LIST_KEYS = {"address", "dns", "allowedips"}
_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_SECTION_RE = re.compile(r"\[([A-Za-z]+)\]")
_DOMAIN_RE = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_][A-Za-z0-9_-]{0,62}(\.[A-Za-z0-9_-]{1,63})*\.?")
_HOSTNAME_RE = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9][A-Za-z0-9-]{0,62}(\.[A-Za-z0-9-]{1,63})*\.?")
_ENDPOINT_RE = re.compile(r"\[([^\[\]\s]+)\]:([0-9]{1,5})|([^:\[\]\s]+):([0-9]{1,5})")


@dataclass(frozen=True)
class DeviceConfig:
    """Everything a device needs to join the overlay through the hub."""

    private_key: str | None
    addresses: tuple[str, ...]
    dns: tuple[str, ...]
    hub_public_key: str
    endpoint: str
    allowed_ips: tuple[str, ...]
    keepalive: int = 25
    mtu: int | None = None
    name: str | None = None


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_interface(text))
    except (ValueError, TypeError):
        raise InvalidInput(f"address {text!r} is not an IP address with a prefix length") from None


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except (ValueError, TypeError):
        raise InvalidInput(f"allowed IP {text!r} is not an IP network like 10.0.0.0/24") from None


def _dns(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except (ValueError, TypeError):
        pass
    if isinstance(text, str) and _DOMAIN_RE.fullmatch(text):
        return text
    raise InvalidInput(f"DNS entry {text!r} is neither an IP address nor a search domain")


def _endpoint(text: str) -> str:
    m = _ENDPOINT_RE.fullmatch(text) if isinstance(text, str) else None
    if m is not None:
        bracketed = m.group(1) is not None
        host, port = (m.group(1), m.group(2)) if bracketed else (m.group(3), m.group(4))
        try:
            addr = ipaddress.ip_address(host)
            host_ok = addr.version == 6 or not bracketed
            host = f"[{addr}]" if addr.version == 6 else str(addr)
        except ValueError:
            host_ok = not bracketed and _HOSTNAME_RE.fullmatch(host) is not None
        if host_ok and 1 <= int(port) <= 65535:
            return f"{host}:{int(port)}"
    raise InvalidInput(f"endpoint {text!r} is not of the form host:port or [ipv6]:port")


def _name(text: str) -> str:
    if not text or not text.isprintable() or text != text.strip():
        raise InvalidInput(f"device name {text!r} must be one line of printable text")
    return text


def _number(value: int, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{what} must be a whole number from {low} to {high}, not {value!r}")
    return value


def render(cfg: DeviceConfig) -> str:
    """The config file text; every value is validated, so the output is always importable."""
    lines: list[str] = []
    if cfg.name is not None:
        lines.append(f"# CloudPal device {_name(cfg.name)}")
    lines.append("[Interface]")
    if cfg.private_key is None:
        lines.append("# Add the line 'PrivateKey = <this device's private key>' here;")
        lines.append("# CloudPal never saw that key, the device generated it.")
    else:
        private = keys.parse_key(cfg.private_key, "private key")
        lines.append(f"PrivateKey = {base64.b64encode(private).decode()}")
    if cfg.addresses:
        lines.append("Address = " + ", ".join(_address(a) for a in cfg.addresses))
    if cfg.dns:
        lines.append("DNS = " + ", ".join(_dns(d) for d in cfg.dns))
    if cfg.mtu is not None:
        lines.append(f"MTU = {_number(cfg.mtu, 'MTU', 576, 65535)}")
    lines.append("")
    lines.append("[Peer]")
    hub = keys.parse_key(cfg.hub_public_key, "hub public key")
    lines.append(f"PublicKey = {base64.b64encode(hub).decode()}")
    lines.append(f"Endpoint = {_endpoint(cfg.endpoint)}")
    if cfg.allowed_ips:
        lines.append("AllowedIPs = " + ", ".join(_network(n) for n in cfg.allowed_ips))
    if _number(cfg.keepalive, "persistent keepalive", 0, 65535):
        lines.append(f"PersistentKeepalive = {cfg.keepalive}")
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, list[dict[str, str]]]:
    """Sections and their raw ``key: value`` pairs, keys spelled as written.

    Repeated Address/DNS/AllowedIPs lines are joined with ", " as wg-quick does;
    any other repeated key, stray line or unknown section raises InvalidInput.
    """
    if not isinstance(text, str):
        raise InvalidInput("a WireGuard config must be text")
    result: dict[str, list[dict[str, str]]] = {"Interface": [], "Peer": []}
    current: dict[str, str] | None = None
    spelled: dict[str, str] = {}  # lower-case key -> spelling used in *current*
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _SECTION_RE.fullmatch(line)
        if m is not None:
            section = _SECTIONS.get(m.group(1).lower())
            if section is None:
                raise InvalidInput(f"line {lineno}: unknown section [{m.group(1)}]")
            current, spelled = {}, {}
            result[section].append(current)
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY_RE.fullmatch(key):
            raise InvalidInput(f"line {lineno}: expected 'Key = value' or a [Section] header")
        if current is None:
            raise InvalidInput(f"line {lineno}: {key} appears before any [Interface] or [Peer]")
        lower = key.lower()
        if lower not in spelled:
            spelled[lower] = key
            current[key] = value
        elif lower in _LIST_KEYS:
            first = spelled[lower]
            current[first] = ", ".join(v for v in (current[first], value) if v)
        else:
            raise InvalidInput(f"line {lineno}: {key} is given twice in the same section")
    return result
