"""The network pillar: a WireGuard hub for one person's devices.

Public API used by the node daemon and the CLI. Names are imported on first
use (PEP 562), so a CLI command that only talks to the control socket does not
pay for the daemon's imports (HTTP server, netlink, DNS).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudpal.net import qr
    from cloudpal.net.api import control_routes, enroll_routes
    from cloudpal.net.enroll import grant_config
    from cloudpal.net.join_client import join
    from cloudpal.net.names import parse_duration, split_hostport, validate_name
    from cloudpal.net.registry import parse_invite_code
    from cloudpal.net.service import NetOptions, NetworkService
    from cloudpal.state import Database

_EXPORTS = {
    "qr": "",  # the module itself
    "control_routes": "cloudpal.net.api",
    "enroll_routes": "cloudpal.net.api",
    "join": "cloudpal.net.join_client",
    "parse_duration": "cloudpal.net.names",
    "parse_invite_code": "cloudpal.net.registry",
    "NetOptions": "cloudpal.net.service",
    "NetworkService": "cloudpal.net.service",
    "grant_config": "cloudpal.net.enroll",
    "split_hostport": "cloudpal.net.names",
    "validate_name": "cloudpal.net.names",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cloudpal.net' has no attribute {name!r}")
    mod = importlib.import_module(module or f"cloudpal.net.{name}")
    value = mod if not module else getattr(mod, name)
    globals()[name] = value
    return value


def migrate(db: Database) -> None:
    """Create or upgrade the network pillar's tables."""
    from cloudpal.net.registry import SCHEMA

    db.migrate("net", SCHEMA)


__all__ = [
    "NetOptions",
    "NetworkService",
    "control_routes",
    "enroll_routes",
    "grant_config",
    "join",
    "migrate",
    "parse_duration",
    "parse_invite_code",
    "qr",
    "split_hostport",
    "validate_name",
]
