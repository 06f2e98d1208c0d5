"""The network pillar: a WireGuard hub for one person's devices.

Public API used by the node daemon and the CLI.
"""

from cloudpal.net import qr
from cloudpal.net.api import control_routes, enroll_routes
from cloudpal.net.join import join
from cloudpal.net.names import parse_duration
from cloudpal.net.registry import SCHEMA, parse_invite_code
from cloudpal.net.service import NetOptions, NetworkService, grant_config, split_hostport
from cloudpal.state import Database


def migrate(db: Database) -> None:
    """Create or upgrade the network pillar's tables."""
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
]
