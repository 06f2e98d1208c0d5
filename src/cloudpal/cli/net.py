"""Network commands: status, device, invite, join, acl."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import click

from cloudpal.control import ControlClient
from cloudpal.errors import InvalidInput, PolicyError
from cloudpal.net.names import parse_duration


def _client(ctx: click.Context) -> ControlClient:
    home = ctx.find_root().obj
    assert isinstance(home, Path)
    return ControlClient(home)


def _json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    secs = int(time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{secs}s ago"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _expiry(ts: float | None) -> str:
    if ts is None:
        return "never"
    left = ts - time.time()
    return "expired" if left <= 0 else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _emit_config(text: str, qr_file: Path | None, qr_terminal: bool) -> None:
    from cloudpal.net import qr

    if qr_file:
        qr.write_png(text, str(qr_file))
        click.echo(f"QR code written to {qr_file}", err=True)
    if qr_terminal:
        click.echo(qr.terminal(text))
    if not qr_file and not qr_terminal:
        click.echo(text, nl=False)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show what the node is doing."""
    st = _client(ctx).call("GET", "/status")
    if as_json:
        _json(st)
        return
    online = st["online"]
    click.echo(f"node        {st['node']}.{st['zone']}  ({st['backend']} on {st['interface']})")
    click.echo(f"addresses   {', '.join(st['addresses'])}")
    click.echo(f"ranges      {st['ipv4_range']}, {st['ipv6_range']}")
    click.echo(f"endpoint    {st['endpoint']}   enroll: {st['enroll_url']}")
    click.echo(f"devices     {st['devices']} ({len(online)} online"
               f"{': ' + ', '.join(online) if online else ''})")
    click.echo(f"dns         {', '.join(st['dns']) or 'off'}")


@click.group()
def device() -> None:
    """Add, list, rename, revoke and renew devices."""


@device.command("add")
@click.argument("name")
@click.option("--pubkey", help="Enroll a device that keeps its own private key.")
@click.option("--full-tunnel", is_flag=True, help="Route all of the device's traffic via the node.")
@click.option("--expires", help="Key lifetime, e.g. 30d (default: never).")
@click.option("--qr", "qr_file", type=click.Path(path_type=Path), help="Write the config as a QR PNG.")
@click.option("--qr-terminal", is_flag=True, help="Draw the config as a QR code here.")
@click.pass_context
def device_add(ctx: click.Context, name: str, pubkey: str | None, full_tunnel: bool,
               expires: str | None, qr_file: Path | None, qr_terminal: bool) -> None:
    """Add a device and print its wg-quick config."""
    if expires:
        parse_duration(expires)
    res = _client(ctx).call("POST", "/devices", {"name": name, "public_key": pubkey,
                                                 "full_tunnel": full_tunnel, "expires": expires})
    _emit_config(res["config"], qr_file, qr_terminal)


@device.command("config")
@click.argument("name")
@click.option("--qr", "qr_file", type=click.Path(path_type=Path), help="Write it as a QR PNG.")
@click.option("--qr-terminal", is_flag=True, help="Draw it as a QR code in the terminal.")
@click.pass_context
def device_config(ctx: click.Context, name: str, qr_file: Path | None, qr_terminal: bool) -> None:
    """Print a device's wg-quick config again."""
    res = _client(ctx).call("GET", f"/devices/{name}/config")
    _emit_config(res["config"], qr_file, qr_terminal)


@device.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def device_ls(ctx: click.Context, as_json: bool) -> None:
    """List devices with their addresses, last handshake and traffic."""
    from rich.console import Console
    from rich.table import Table

    devices = _client(ctx).call("GET", "/devices")
    if as_json:
        _json(devices)
        return
    table = Table(box=None, pad_edge=False)
    for col in ("NAME", "IPV4", "IPV6", "STATE", "HANDSHAKE", "RX", "TX", "EXPIRES"):
        table.add_column(col, no_wrap=True)
    for d in devices:
        name = d["name"] + (" (full tunnel)" if d["full_tunnel"] else "")
        table.add_row(name, d["ipv4"], d["ipv6"], d["state"], _ago(d["last_handshake"]),
                      _bytes(d["rx_bytes"]), _bytes(d["tx_bytes"]), _expiry(d["expires"]))
    Console(width=200).print(table)


@device.command("rename")
@click.argument("name")
@click.argument("new_name")
@click.pass_context
def device_rename(ctx: click.Context, name: str, new_name: str) -> None:
    """Rename a device (its keys and addresses stay)."""
    _client(ctx).call("POST", f"/devices/{name}/rename", {"new_name": new_name})
    click.echo(f"renamed {name} to {new_name}")


@device.command("revoke")
@click.argument("name")
@click.pass_context
def device_revoke(ctx: click.Context, name: str) -> None:
    """Cut a device off now and refuse its key from then on."""
    _client(ctx).call("POST", f"/devices/{name}/revoke")
    click.echo(f"revoked {name}")


@device.command("renew")
@click.argument("name")
@click.option("--expires", default=None, help="New lifetime from now, e.g. 30d.")
@click.option("--never", is_flag=True, help="Make the key never expire.")
@click.pass_context
def device_renew(ctx: click.Context, name: str, expires: str | None, never: bool) -> None:
    """Extend an expiring (or expired) device key."""
    if never == bool(expires):
        raise InvalidInput("give either --expires DURATION or --never")
    if expires:
        parse_duration(expires)
    dev = _client(ctx).call("POST", f"/devices/{name}/renew", {"expires": expires})
    click.echo(f"{name} now expires: {_expiry(dev['expires'])}")


@click.group()
def invite() -> None:
    """Invite codes that let another machine join by itself."""


@invite.command("create")
@click.option("--uses", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--ttl", default="1h", show_default=True, help="How long the code stays valid.")
@click.option("--full-tunnel", is_flag=True, help="Devices joining with it use the full tunnel.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def invite_create(ctx: click.Context, uses: int, ttl: str, full_tunnel: bool,
                  as_json: bool) -> None:
    """Print a code for `cloudpal join URL CODE`."""
    parse_duration(ttl)
    res = _client(ctx).call("POST", "/invites", {"uses": uses, "ttl": ttl,
                                                 "full_tunnel": full_tunnel})
    if as_json:
        _json(res)
        return
    click.echo(res["code"])
    click.echo(f"on the new device: cloudpal join {res['url']} {res['code']}", err=True)


@invite.command("ls")
@click.pass_context
def invite_ls(ctx: click.Context) -> None:
    """List invites with their uses left and expiry."""
    for inv in _client(ctx).call("GET", "/invites"):
        click.echo(f"{inv['id']}  uses left {inv['uses_left']}  expires {_expiry(inv['expires'])}")


@click.command("join")
@click.argument("url")
@click.argument("code")
@click.option("--name", default=None, help="This device's name (default: the hostname).")
@click.option("--interface", "iface", default="pal0", show_default=True)
@click.option("--config-dir", type=click.Path(path_type=Path), default=Path("/etc/wireguard"),
              show_default=True)
@click.option("--no-up", is_flag=True, help="Only write the config; do not run wg-quick up.")
def join_cmd(url: str, code: str, name: str | None, iface: str, config_dir: Path,
             no_up: bool) -> None:
    """Join a node with an invite code: keys are made here, the tunnel comes up."""
    from cloudpal.net import join

    name = name or socket.gethostname().split(".")[0].lower()
    grant, path = join(url, code, name, config_dir, iface, up=not no_up)
    click.echo(f"joined as {grant.name} ({', '.join(grant.addresses)}); config in {path}"
               + ("" if no_up else f"; {iface} is up"))


@click.group()
def acl() -> None:
    """The access policy between devices."""


@acl.command("apply")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.pass_context
def acl_apply(ctx: click.Context, file: Path) -> None:
    """Validate a TOML policy and put it in force (the old one stays if it is invalid)."""
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{file.name}: not UTF-8 text") from None
    res = _client(ctx).call("POST", "/acl", {"text": text, "source": file.name})
    click.echo(f"policy applied: {res['rules']} rules, {res['groups']} groups")
    if res["unknown_devices"]:
        click.echo(f"warning: no such devices (yet): {', '.join(res['unknown_devices'])}", err=True)


@acl.command("show")
@click.pass_context
def acl_show(ctx: click.Context) -> None:
    """Print the policy in force."""
    click.echo(_client(ctx).call("GET", "/acl")["text"], nl=False)


@acl.command("check")
@click.argument("src")
@click.argument("dst")
@click.argument("port", required=False, type=click.IntRange(1, 65535))
@click.option("--proto", type=click.Choice(["tcp", "udp", "icmp"]), default="tcp",
              show_default=True)
@click.pass_context
def acl_check(ctx: click.Context, src: str, dst: str, port: int | None, proto: str) -> None:
    """Explain whether SRC may reach DST on PORT (exit 1 when denied)."""
    res = _client(ctx).call("POST", "/acl/check", {"src": src, "dst": dst, "port": port,
                                                   "proto": proto})
    click.echo(res["explanation"])
    ctx.exit(0 if res["allowed"] else 1)
