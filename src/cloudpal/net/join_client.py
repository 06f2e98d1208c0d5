"""`cloudpal join`: enroll this machine with a node and bring its tunnel up.

The private key is generated here and never leaves this machine; only the
public key and a MAC proving knowledge of the invite secret are sent.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from cloudpal.errors import CloudPalError, HostError, InvalidInput
from cloudpal.net import enroll, keys
from cloudpal.net.enroll import grant_config
from cloudpal.net.names import validate_name
from cloudpal.net.registry import parse_invite_code
from cloudpal.state import atomic_write


class JoinRefused(CloudPalError):
    """The node said no (wrong, used or expired code; name taken; rate limit)."""


def request_grant(url: str, code: str, name: str, public_key: str,
                  timeout: float = 15.0) -> enroll.Grant:
    invite_id, secret = parse_invite_code(code)
    body = enroll.build_request(invite_id, secret, name, public_key)
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    req = urllib.request.Request(url.rstrip("/") + enroll.PATH, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read(enroll.MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        raise JoinRefused(f"the node refused to enroll this device: "
                          f"{enroll.parse_error(exc.read(enroll.MAX_BODY))}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise JoinRefused(f"cannot reach the node at {url}: {reason}") from None
    return enroll.parse_response(data, secret)


def join(url: str, code: str, name: str, config_dir: Path, iface: str,
         up: bool = True) -> tuple[enroll.Grant, Path]:
    """Enroll, write `<config_dir>/<iface>.conf` (0600) and run `wg-quick up` on it."""
    validate_name(name)
    if len(iface) > 15 or not iface.replace("-", "").replace("_", "").isalnum():
        raise InvalidInput(f"invalid interface name {iface!r}")
    path = config_dir / f"{iface}.conf"
    if path.exists():
        raise InvalidInput(f"{path} already exists: remove it or pick another --interface")
    if up and shutil.which("wg-quick") is None:
        raise HostError("wg-quick is not installed: apt-get install wireguard-tools")
    private_key = keys.generate_private_key()
    grant = request_grant(url, code, name, keys.public_key(private_key))
    atomic_write(path, grant_config(grant, private_key), mode=0o600)
    if up:
        proc = subprocess.run(["wg-quick", "up", str(path)], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise HostError(f"enrolled, config in {path}, but wg-quick up failed: {last}")
    return grant, path
