"""The WireGuard cross-platform UAPI, spoken to wireguard-go over its unix socket.

Protocol: https://www.wireguard.com/xplatform/ -- ``key=value`` lines, keys in
hex, a request ends with an empty line and every response ends with
``errno=N`` and an empty line. Encoding and decoding are pure functions so they
can be tested and fuzzed without a daemon; :class:`UapiClient` only moves bytes.

wireguard-go applies a ``set`` line by line and is not transactional: on an
error the lines before the bad one stay applied. Hence :func:`encode_set`
validates everything first, so the daemon only ever sees well-formed requests.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import os
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

from cloudpal.errors import InvalidInput
from cloudpal.net import keys

DEFAULT_RUN_DIR = "/var/run/wireguard"

_IFACE_RE = re.compile(r"[A-Za-z0-9_.=+-]{1,15}")
_HEX_KEY_RE = re.compile(r"[0-9a-f]{64}")
_UINT_RE = re.compile(r"[0-9]{1,20}")
_ERRNO_RE = re.compile(r"-?[0-9]{1,10}")
_ENDPOINT_RE = re.compile(r"\[([^\[\]\s]+)\]:([0-9]{1,5})|([^:\[\]\s]+):([0-9]{1,5})")


@dataclass(frozen=True)
class PeerSpec:
    """A peer as the node wants it; a set replaces the peer's allowed IPs wholesale."""

    public_key: str
    allowed_ips: tuple[str, ...] = ()
    endpoint: str | None = None
    keepalive: int | None = None
    preshared_key: str | None = None


@dataclass
class PeerStatus:
    """A peer as the device reports it."""

    public_key: str
    endpoint: str | None
    allowed_ips: list[str]
    last_handshake: float | None
    rx_bytes: int
    tx_bytes: int
    keepalive: int


@dataclass
class InterfaceStatus:
    """The device as it reports itself; the private key is reduced to its public half."""

    public_key: str | None
    listen_port: int | None
    fwmark: int | None
    peers: dict[str, PeerStatus]


class UapiError(Exception):
    """The daemon refused a request or answered nonsense: a backend failure, not a user one.

    ``errno`` is negative, as on the wire (-22 is EINVAL).
    """

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


def _malformed(why: str) -> UapiError:
    return UapiError(-_errno.EPROTO, f"malformed UAPI response: {why}")


# --- encoding ----------------------------------------------------------------


def _check_port(value: int, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
        raise InvalidInput(f"{what} must be a whole number from {low} to 65535, not {value!r}")
    return value


def _check_endpoint(endpoint: str) -> str:
    """An IP literal endpoint; wireguard-go cannot resolve names, so callers must."""
    m = _ENDPOINT_RE.fullmatch(endpoint)
    if m is None:
        raise InvalidInput(f"endpoint {endpoint!r} is not of the form host:port or [ipv6]:port")
    host, port = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(
            f"endpoint {endpoint!r} must use an IP address, not a host name"
        ) from None
    if m.group(1) is not None and addr.version != 6:
        raise InvalidInput(f"endpoint {endpoint!r} puts an IPv4 address in brackets")
    _check_port(int(port), f"endpoint {endpoint!r} port", low=1)
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def _check_network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except (ValueError, TypeError):
        raise InvalidInput(f"allowed IP {text!r} is not an IP network like 10.0.0.2/32") from None


def encode_set(
    *,
    private_key: str | None = None,
    listen_port: int | None = None,
    replace_peers: bool = False,
    peers: Iterable[PeerSpec] = (),
    remove: Iterable[str] = (),
) -> bytes:
    """One ``set=1`` request doing all of it, so thousands of peers cost one round trip.

    Raises InvalidInput for any bad key, address or number before anything is sent.
    """
    out = ["set=1"]
    if private_key is not None:
        out.append("private_key=" + keys.to_hex(private_key, "private key"))
    if listen_port is not None:
        out.append(f"listen_port={_check_port(listen_port, 'listen port')}")
    if replace_peers:
        out.append("replace_peers=true")
    seen: set[str] = set()
    for peer in peers:
        pub = keys.to_hex(peer.public_key, "public key")
        if pub in seen:
            raise InvalidInput(f"peer {peer.public_key} is listed twice")
        seen.add(pub)
        out.append("public_key=" + pub)
        if peer.preshared_key is not None:
            out.append("preshared_key=" + keys.to_hex(peer.preshared_key, "preshared key"))
        if peer.endpoint is not None:
            out.append("endpoint=" + _check_endpoint(peer.endpoint))
        if peer.keepalive is not None:
            ka = _check_port(peer.keepalive, "persistent keepalive")
            out.append(f"persistent_keepalive_interval={ka}")
        out.append("replace_allowed_ips=true")
        out.extend("allowed_ip=" + _check_network(ip) for ip in peer.allowed_ips)
    for key in remove:
        pub = keys.to_hex(key, "public key")
        if pub in seen:
            raise InvalidInput(f"peer {key} is both set and removed in one request")
        seen.add(pub)
        out.append(f"public_key={pub}\nremove=true")
    out.append("\n")  # the last line's newline plus the empty line ending the request
    return "\n".join(out).encode("ascii")


# --- decoding ----------------------------------------------------------------


def _pairs(data: bytes) -> tuple[list[tuple[str, str]], int]:
    """Split a response into its key/value lines and the trailing errno."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise _malformed("not ASCII") from None
    if text.endswith("\n\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    else:
        raise _malformed("truncated")
    pairs: list[tuple[str, str]] = []
    for line in text.split("\n"):
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise _malformed(f"line {line[:40]!r} is not key=value")
        pairs.append((key, value))
    key, value = pairs.pop()
    if key != "errno" or not _ERRNO_RE.fullmatch(value):
        raise _malformed("it does not end with an errno line")
    return pairs, int(value)


def _uint(key: str, value: str) -> int:
    if not _UINT_RE.fullmatch(value):
        raise _malformed(f"{key}={value[:40]!r} is not a number")
    return int(value)


def _hex_key(key: str, value: str) -> str:
    if not _HEX_KEY_RE.fullmatch(value):
        raise _malformed(f"{key} is not 64 hex digits")
    return keys.from_hex(value)


def decode_errno(data: bytes) -> int:
    """The errno a response ends with (0 on success); UapiError if it is not a response."""
    return _pairs(data)[1]


def decode_get(data: bytes) -> InterfaceStatus:
    """Parse a ``get=1`` response; UapiError (never anything else) if it failed or is garbled."""
    pairs, err = _pairs(data)
    if err != 0:
        raise UapiError(err, f"wireguard-go refused get with errno {err}")
    status = InterfaceStatus(public_key=None, listen_port=None, fwmark=None, peers={})
    peer: PeerStatus | None = None
    handshake: dict[str, list[int]] = {}
    for key, value in pairs:
        if peer is None and key == "private_key":
            status.public_key = keys.public_key(_hex_key(key, value))
        elif peer is None and key == "listen_port":
            status.listen_port = _uint(key, value)
        elif peer is None and key == "fwmark":
            status.fwmark = _uint(key, value)
        elif key == "public_key":
            pub = _hex_key(key, value)
            if pub in status.peers:
                raise _malformed("a peer is listed twice")
            peer = PeerStatus(pub, None, [], None, 0, 0, 0)
            status.peers[pub] = peer
            handshake[pub] = [0, 0]
        elif peer is None:
            continue  # an interface key this code does not know yet
        elif key == "endpoint":
            if not value or any(c.isspace() for c in value):
                raise _malformed("bad endpoint")
            peer.endpoint = value
        elif key == "allowed_ip":
            try:
                ipaddress.ip_network(value, strict=False)
            except (ValueError, TypeError):
                raise _malformed(f"allowed_ip {value[:40]!r} is not a network") from None
            peer.allowed_ips.append(value)
        elif key == "last_handshake_time_sec":
            handshake[peer.public_key][0] = _uint(key, value)
        elif key == "last_handshake_time_nsec":
            handshake[peer.public_key][1] = _uint(key, value)
        elif key == "rx_bytes":
            peer.rx_bytes = _uint(key, value)
        elif key == "tx_bytes":
            peer.tx_bytes = _uint(key, value)
        elif key == "persistent_keepalive_interval":
            peer.keepalive = _uint(key, value)
        elif key == "preshared_key":
            _hex_key(key, value)  # validated, but never exposed
        elif key in ("private_key", "listen_port", "fwmark"):
            raise _malformed(f"{key} appears inside a peer")
        # protocol_version and future peer keys are ignored
    for pub, (sec, nsec) in handshake.items():
        if sec or nsec:
            status.peers[pub].last_handshake = sec + nsec / 1e9
    return status


# --- I/O -----------------------------------------------------------------------


def socket_path(iface: str, run_dir: str = DEFAULT_RUN_DIR) -> str:
    """Where wireguard-go listens for *iface*; the name is checked so it cannot escape run_dir."""
    if not _IFACE_RE.fullmatch(iface) or iface in (".", ".."):
        raise InvalidInput(f"interface name {iface!r} must be 1 to 15 letters, digits or . _ = + -")
    return os.path.join(run_dir, iface + ".sock")


def wait_ready(iface: str, timeout: float = 5.0, run_dir: str = DEFAULT_RUN_DIR) -> None:
    """Block until the daemon accepts connections: the socket file appears before it listens."""
    path = socket_path(iface, run_dir)
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                sock.connect(path)
                return
            except OSError:
                pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"wireguard-go did not open {path} within {timeout:g} seconds")
        time.sleep(0.01)


class UapiClient:
    """One connection per request to a wireguard-go control socket."""

    def __init__(self, iface: str, run_dir: str = DEFAULT_RUN_DIR, timeout: float = 5.0) -> None:
        self.iface = iface
        self.path = socket_path(iface, run_dir)
        self.timeout = timeout

    def request(self, payload: bytes) -> bytes:
        """Send one raw request and return the raw response up to its closing empty line."""
        deadline = time.monotonic() + self.timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                sock.sendall(payload)
                chunks: list[bytes] = []
                last = b""
                while True:
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise _malformed("the daemon closed the connection mid-response")
                    chunks.append(chunk)
                    if b"\n\n" in last[-1:] + chunk:
                        data = b"".join(chunks)
                        return data[: data.index(b"\n\n") + 2]
                    last = chunk
            except TimeoutError as exc:
                raise UapiError(
                    -_errno.ETIMEDOUT, f"wireguard-go at {self.path} did not answer in time"
                ) from exc
            except OSError as exc:
                raise UapiError(
                    -(exc.errno or _errno.EIO), f"cannot talk to wireguard-go at {self.path}: {exc}"
                ) from exc

    def apply(self, payload: bytes) -> None:
        """Send a prepared ``set`` request; UapiError if the daemon refuses it."""
        err = decode_errno(self.request(payload))
        if err != 0:
            raise UapiError(err, f"wireguard-go refused the change to {self.iface} (errno {err})")

    def get(self) -> InterfaceStatus:
        return decode_get(self.request(b"get=1\n\n"))

    def set(
        self,
        *,
        private_key: str | None = None,
        listen_port: int | None = None,
        replace_peers: bool = False,
        peers: Iterable[PeerSpec] = (),
        remove: Iterable[str] = (),
    ) -> None:
        """Apply a configuration change in a single request (see :func:`encode_set`)."""
        self.apply(
            encode_set(
                private_key=private_key,
                listen_port=listen_port,
                replace_peers=replace_peers,
                peers=peers,
                remove=remove,
            )
        )
