"""The local control API: HTTP over an owner-only unix socket in the node home.

The CLI is a thin client of this API; the daemon owns all state, so concurrent
CLI calls are serialized by the daemon's single event loop.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from cloudpal.errors import CloudPalError, InvalidInput, NodeNotRunning

SOCKET_NAME = "control.sock"
ERROR_STATUS = {"NotFound": 404, "Conflict": 409, "Exhausted": 410}


def error_status(exc: CloudPalError) -> int:
    return ERROR_STATUS.get(type(exc).__name__, 400)


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """A control request's body: empty, or one JSON object; anything else is one clear error."""
    if not raw:
        return {}
    try:
        obj = json.loads(raw)
    except ValueError:
        raise InvalidInput("request body is not JSON") from None
    if not isinstance(obj, dict):
        raise InvalidInput("request body is not a JSON object")
    return obj


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class ControlClient:
    """Calls the running node; raises the node's CloudPalError message as our own."""

    def __init__(self, home: Path, timeout: float = 60.0) -> None:
        self.path = home / SOCKET_NAME
        self.timeout = timeout

    def call(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        conn = _UnixConnection(str(self.path), self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload else {}
            try:
                conn.request(method, url, body=payload, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (FileNotFoundError, ConnectionRefusedError):
                raise NodeNotRunning(
                    f"the node is not running (no control socket at {self.path}): "
                    "start it with `cloudpal up`"
                ) from None
            except PermissionError:
                raise NodeNotRunning(
                    f"no permission to use {self.path}: run as the node's owner (root)"
                ) from None
            try:
                obj = json.loads(data) if data else None
            except ValueError:
                raise CloudPalError(f"the node answered garbage ({resp.status})") from None
            if resp.status >= 400:
                msg = obj.get("error") if isinstance(obj, dict) else None
                raise CloudPalError(msg or f"the node refused the request ({resp.status})")
            return obj
        finally:
            conn.close()
