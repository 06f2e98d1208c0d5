"""`cloudpal issuer|dc|ticket ...`: anonymous prepaid tickets (blind RSA, Privacy Pass).

The issuer and the data center are services run by other parties, each with its own home
directory; the wallet lives in the node's home. All three open their SQLite database directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click

from cloudpal.errors import CloudPalError, HostError, InvalidInput


def _db(ctx: click.Context) -> Any:
    from cloudpal.state import Database

    home = ctx.find_root().obj
    assert isinstance(home, Path)
    return Database(home)


def _listener(text: str) -> socket.socket:
    from cloudpal.net import split_hostport

    host, port = split_hostport(text, "listen address", allow_any_port=True)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HostError(f"cannot listen on {text}: {exc.strerror}") from None
    sock.listen(512)
    return sock


def _serve(routes: list[Any], sock: socket.socket, what: str,
           background: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
    import uvicorn
    from starlette.applications import Starlette

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    # No access log: request lines and client addresses are exactly what must not be kept.
    config = uvicorn.Config(Starlette(routes=routes), log_level="warning", access_log=False,
                            lifespan="off")
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(background()) if background else None
        click.echo(f"{what} listening on {url}", err=True)
        click.echo("ready", err=True)
        try:
            await server.serve(sockets=[sock])
        finally:
            if task:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    asyncio.run(main())


# ---- issuer ------------------------------------------------------------------------------------


@click.group()
def issuer() -> None:
    """Run a ticket issuer (its own --home): accounts, token keys, blind issuance."""


@issuer.command("serve")
@click.option("--listen", default="127.0.0.1:8700", show_default=True)
@click.option("--public-url", help="URL clients use (default: taken from each request).")
@click.option("--key-bits", type=click.Choice(["2048", "3072", "4096"]), default="2048", show_default=True)
@click.pass_context
def issuer_serve(ctx: click.Context, listen: str, public_url: str | None, key_bits: str) -> None:
    """Serve the issuer directory and RFC 9578 issuance."""
    from cloudpal.pay.issuer import Issuer, issuer_routes

    iss = Issuer(_db(ctx))
    key = iss.ensure_key(int(key_bits))
    click.echo(f"token key {key.token_key_id.hex()[:16]} ({key.bits} bits)", err=True)
    _serve(issuer_routes(iss, public_url), _listener(listen), "issuer")


@issuer.command("rotate")
@click.option("--key-bits", type=click.Choice(["2048", "3072", "4096"]), default="2048", show_default=True)
@click.option("--lifetime", default="90d", show_default=True, help="How long the key stays valid.")
@click.pass_context
def issuer_rotate(ctx: click.Context, key_bits: str, lifetime: str) -> None:
    """Sign new tickets with a new key; older keys stay valid until they expire."""
    from cloudpal.net import parse_duration
    from cloudpal.pay.issuer import Issuer

    key = Issuer(_db(ctx)).rotate(int(key_bits), parse_duration(lifetime))
    click.echo(f"new token key {key.token_key_id.hex()[:16]} ({key.bits} bits), valid until "
               f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(key.expires))} UTC")


@issuer.command("keys")
@click.pass_context
def issuer_keys(ctx: click.Context) -> None:
    """The keys tickets are verified with (newest signs)."""
    from cloudpal.pay.issuer import Issuer

    for k in Issuer(_db(ctx)).live_keys():
        click.echo(f"{k.token_key_id.hex()} {k.bits} bits, expires "
                   f"{time.strftime('%Y-%m-%d', time.gmtime(k.expires))}")


@issuer.group("account")
def issuer_account() -> None:
    """Buyers' accounts (a stand-in for real payment)."""


@issuer_account.command("add")
@click.argument("name")
@click.option("--credits", type=click.IntRange(0), default=0, show_default=True)
@click.pass_context
def account_add(ctx: click.Context, name: str, credits: int) -> None:
    """Create an account; prints its secret once (the buyer's --account)."""
    from cloudpal.pay.issuer import Issuer

    click.echo(Issuer(_db(ctx)).add_account(name, credits))


@issuer_account.command("credit")
@click.argument("name")
@click.argument("tickets", type=click.IntRange(1))
@click.pass_context
def account_credit(ctx: click.Context, name: str, tickets: int) -> None:
    """Record a payment: NAME may now be issued TICKETS more tickets."""
    from cloudpal.pay.issuer import Issuer

    click.echo(f"{name}: {Issuer(_db(ctx)).credit(name, tickets)} tickets left to issue")


@issuer_account.command("ls")
@click.pass_context
def account_ls(ctx: click.Context) -> None:
    from cloudpal.pay.issuer import Issuer

    for a in Issuer(_db(ctx)).accounts():
        click.echo(f"{a['name']}: {a['balance']} left, {a['issued']} issued")


# ---- data center --------------------------------------------------------------------------------


@click.group()
def dc() -> None:
    """Run a data center's till (its own --home): takes tickets as payment for hosting."""


@dc.command("serve")
@click.option("--name", required=True, help="This data center's name (the origin in its challenges).")
@click.option("--issuer", "issuer_url", required=True, help="URL of the issuer whose tickets it takes.")
@click.option("--listen", default="127.0.0.1:8800", show_default=True)
@click.option("--hours-per-ticket", type=click.IntRange(1), default=24, show_default=True)
@click.option("--refresh", default="10m", show_default=True, help="How often to re-read the issuer's keys.")
@click.pass_context
def dc_serve(ctx: click.Context, name: str, issuer_url: str, listen: str, hours_per_ticket: int,
             refresh: str) -> None:
    """Answer with PrivateToken challenges and credit hosting time for valid tickets."""
    from cloudpal.net import parse_duration
    from cloudpal.pay.dc import DataCenter, dc_routes, fetch_directory

    every = parse_duration(refresh)
    center = DataCenter(_db(ctx), name, issuer_url, hours_per_ticket * 3600)
    try:
        n = center.refresh_keys()
        click.echo(f"{n} issuer key(s) from {issuer_url}", err=True)
    except HostError as exc:
        if not center.keys():
            raise
        click.echo(f"warning: {exc}; using the {len(center.keys())} cached key(s)", err=True)
    sock = _listener(listen)

    async def refresher() -> None:
        while True:
            await asyncio.sleep(every)
            try:  # the fetch in a thread; the database write back here, on the serving loop
                directory = await asyncio.to_thread(fetch_directory, issuer_url)
                center.store_keys(directory)
            except CloudPalError as exc:  # unreachable issuer or a bad directory: keep what we have
                logging.getLogger("cloudpal.dc").warning("%s; keeping the cached keys", exc)

    _serve(dc_routes(center), sock, f"data center {name}", refresher)


@dc.command("credits")
@click.argument("node")
@click.pass_context
def dc_credits(ctx: click.Context, node: str) -> None:
    """Hosting time credited to NODE."""
    from cloudpal.pay.dc import SCHEMA

    db = _db(ctx)
    db.migrate("dc", SCHEMA)
    r = db.conn.execute("SELECT seconds, tickets FROM dc_credits WHERE node=?", (node,)).fetchone()
    click.echo(json.dumps({"node": node, "seconds": r[0] if r else 0, "tickets": r[1] if r else 0}))


# ---- the node's wallet ------------------------------------------------------------------------------


@click.group()
def ticket() -> None:
    """The node's wallet of prepaid hosting tickets."""


@ticket.command("buy")
@click.argument("count", type=click.IntRange(1, 10000))
@click.option("--issuer", "issuer_url", required=True)
@click.option("--account", envvar="CLOUDPAL_ISSUER_ACCOUNT", required=True,
              help="Your account secret at the issuer (or CLOUDPAL_ISSUER_ACCOUNT).")
@click.pass_context
def ticket_buy(ctx: click.Context, count: int, issuer_url: str, account: str) -> None:
    """Buy COUNT tickets by blind issuance: the issuer never sees them."""
    from cloudpal.pay.wallet import Wallet

    wallet = Wallet(_db(ctx))
    t0 = time.monotonic()
    if sys.stderr.isatty() and count > 1:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("buying tickets", total=count)
            n = wallet.buy(issuer_url, count, account, lambda done, _: bar.update(task, completed=done))
    else:
        n = wallet.buy(issuer_url, count, account)
    left = len(wallet.tickets(include_spent=False))
    click.echo(f"bought {n} ticket(s) in {time.monotonic() - t0:.1f} s; {left} unspent")


@ticket.command("ls")
@click.option("--all", "show_all", is_flag=True, help="Include spent tickets.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ticket_ls(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """The tickets in the wallet."""
    from cloudpal.pay.wallet import Wallet

    rows = Wallet(_db(ctx)).tickets(include_spent=show_all)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["bought"]))
        state = f"spent at {r['spent_at']}" if r["spent"] else "unspent"
        click.echo(f"#{r['id']} {r['issuer']} key {r['key']} bought {when} {state}")
    if not as_json:
        click.echo(f"{sum(1 for r in rows if not r['spent'])} unspent")


@ticket.command("pay")
@click.argument("count", type=click.IntRange(1), default=1)
@click.option("--dc", "dc_url", required=True, help="The data center's URL.")
@click.pass_context
def ticket_pay(ctx: click.Context, count: int, dc_url: str) -> None:
    """Pay the data center COUNT tickets for hosting time."""
    from cloudpal.pay.wallet import Wallet

    paid = Wallet(_db(ctx)).pay(dc_url, count)
    if paid.spent == 0:
        raise InvalidInput("no ticket was accepted: " + "; ".join(paid.refused))
    hours = (paid.balance_seconds or 0) / 3600
    click.echo(f"paid {paid.spent} ticket(s); {hours:.0f} h of hosting credited in total")
