"""Enrollment messages: a device redeems an invite code over plain HTTP.

The code is `ID-SECRET`. Only the ID travels; the device proves it knows the
secret with an HMAC over its name and public key, and the node answers with an
HMAC over the config it hands out. So an eavesdropper learns no usable code and
a man in the middle cannot swap the hub's key, without needing TLS certificates.
Sans-IO: these functions build and check JSON bodies; the HTTP lives elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass
from typing import Any

from cloudpal.errors import InvalidInput
from cloudpal.net import wgquick

MAX_BODY = 4096
PATH = "/v1/enroll"


@dataclass(frozen=True)
class EnrollRequest:
    invite: str
    name: str
    public_key: str
    mac: str


@dataclass(frozen=True)
class Grant:
    """What the node tells a newly enrolled device (everything but its private key)."""

    name: str
    addresses: list[str]
    dns: list[str]
    hub_public_key: str
    endpoint: str
    allowed_ips: list[str]
    keepalive: int


def _mac(secret: bytes, label: str, *parts: str) -> str:
    msg = "\0".join((label, *parts)).encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def build_request(invite: str, secret: bytes, name: str, public_key: str) -> bytes:
    mac = _mac(secret, "cloudpal-enroll-request-v1", invite, name, public_key)
    return _canonical(asdict(EnrollRequest(invite, name, public_key, mac))).encode()


def _load_object(body: bytes, what: str) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise InvalidInput(f"{what} is too large")
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput(f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise InvalidInput(f"{what} is not a JSON object")
    return obj


def parse_request(body: bytes) -> EnrollRequest:
    """Decode a request body; the MAC is checked later, against the invite's secret."""
    obj = _load_object(body, "enrollment request")
    fields = {}
    for key in ("invite", "name", "public_key", "mac"):
        value = obj.get(key)
        if not isinstance(value, str) or not value or len(value) > 256:
            raise InvalidInput(f"enrollment request lacks a valid {key!r}")
        fields[key] = value
    return EnrollRequest(**fields)


def request_mac_ok(req: EnrollRequest, secret: bytes) -> bool:
    want = _mac(secret, "cloudpal-enroll-request-v1", req.invite, req.name, req.public_key)
    return hmac.compare_digest(want, req.mac)


def build_response(grant: Grant, secret: bytes) -> bytes:
    config = asdict(grant)
    return _canonical(
        {"grant": config, "mac": _mac(secret, "cloudpal-enroll-response-v1", _canonical(config))}
    ).encode()


def parse_response(body: bytes, secret: bytes) -> Grant:
    """Decode and authenticate the node's answer; refuse anything not MACed with our secret."""
    obj = _load_object(body, "enrollment response")
    config, mac = obj.get("grant"), obj.get("mac")
    if not isinstance(config, dict) or not isinstance(mac, str):
        raise InvalidInput("enrollment response is missing its grant")
    want = _mac(secret, "cloudpal-enroll-response-v1", _canonical(config))
    if not hmac.compare_digest(want, mac):
        raise InvalidInput("the node's answer is not signed with this invite: wrong node?")
    try:
        grant = Grant(**config)
    except TypeError:
        raise InvalidInput("enrollment response has unexpected fields") from None
    for key in ("addresses", "dns", "allowed_ips"):
        value = getattr(grant, key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidInput(f"enrollment response has a bad {key!r}")
    if not isinstance(grant.keepalive, int):
        raise InvalidInput("enrollment response has a bad 'keepalive'")
    return grant


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def parse_error(body: bytes) -> str:
    try:
        obj = json.loads(body.decode("utf-8", "replace"))
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            return str(obj["error"])[:300]
    except ValueError:
        pass
    return body[:200].decode("utf-8", "replace") or "no details"


def grant_config(grant: Grant, private_key: str | None) -> str:
    """The wg-quick config for a device, as the stock WireGuard apps read it."""
    return wgquick.render(wgquick.DeviceConfig(
        private_key=private_key,
        addresses=tuple(grant.addresses),
        dns=tuple(grant.dns),
        hub_public_key=grant.hub_public_key,
        endpoint=grant.endpoint,
        allowed_ips=tuple(grant.allowed_ips),
        keepalive=grant.keepalive,
        name=grant.name,
    ))
