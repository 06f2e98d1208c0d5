"""Entry point: global options, error handling, and the command groups."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from cloudpal import __version__
from cloudpal.cli.app import app
from cloudpal.cli.data import core
from cloudpal.cli.net import acl, device, invite, join_cmd, status
from cloudpal.cli.pay import dc, issuer, ticket
from cloudpal.errors import CloudPalError
from cloudpal.net import split_hostport
from cloudpal.state import default_home


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path), envvar="CLOUDPAL_HOME",
              help="Node home directory (default /var/lib/cloudpal as root).")
@click.version_option(__version__, prog_name="cloudpal")
@click.pass_context
def cli(ctx: click.Context, home: Path | None) -> None:
    """CloudPal: your own node for all your devices."""
    ctx.obj = home or default_home()


@cli.command()
@click.option("--endpoint", help="Public HOST:PORT devices dial (default: underlay address, port 51820).")
@click.option("--listen-port", type=click.IntRange(1, 65535), help="WireGuard UDP port (default 51820).")
@click.option("--interface", "iface", help="WireGuard interface name (default cloudpal0).")
@click.option("--ipv4-range", help="Overlay IPv4 range (default 100.64.0.0/10).")
@click.option("--zone", help="DNS zone for device names (default pal).")
@click.option("--name", "node_name", help="The node's own name in the zone (default node).")
@click.option("--enroll-port", type=click.IntRange(1, 65535),
              help="TCP port of the enrollment endpoint (default: the WireGuard port).")
@click.option("--backend", type=click.Choice(["auto", "kernel", "wireguard-go"]), default="auto",
              show_default=True)
@click.option("--dns-port", type=click.IntRange(1, 65535), default=53, show_default=True)
@click.pass_obj
def up(home: Path, endpoint: str | None, listen_port: int | None, iface: str | None,
       ipv4_range: str | None, zone: str | None, node_name: str | None,
       enroll_port: int | None, backend: str, dns_port: int) -> None:
    """Run the node in the foreground until SIGTERM or Ctrl-C."""
    import asyncio

    from cloudpal.net import NetOptions
    from cloudpal.net.hostnet import require_root
    from cloudpal.node import Node

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)
    require_root()
    if endpoint:
        split_hostport(endpoint)
    opts = NetOptions(iface=iface, endpoint=endpoint, listen_port=listen_port,
                      ipv4_range=ipv4_range, zone=zone, node_name=node_name,
                      enroll_port=enroll_port, backend=backend, dns_port=dns_port)

    def ready(st: dict[str, Any]) -> None:
        click.echo(f"cloudpal node {st['node']} up: {', '.join(st['addresses'])} on "
                   f"{st['interface']} ({st['backend']}), endpoint {st['endpoint']}, "
                   f"enroll at {st['enroll_url']}", err=True)
        click.echo("ready", err=True)

    asyncio.run(Node(home, opts).run(on_ready=ready))


cli.add_command(status)
cli.add_command(device)
cli.add_command(invite)
cli.add_command(acl)
cli.add_command(join_cmd)
cli.add_command(core)
cli.add_command(app)
cli.add_command(issuer)
cli.add_command(dc)
cli.add_command(ticket)


def main(argv: list[str] | None = None) -> None:
    try:
        rv = cli.main(args=argv, prog_name="cloudpal", standalone_mode=False)
    except CloudPalError as exc:
        click.echo(f"cloudpal: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("cloudpal: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except (TimeoutError, BrokenPipeError) as exc:
        click.echo(f"cloudpal: error: {exc}", err=True)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)
