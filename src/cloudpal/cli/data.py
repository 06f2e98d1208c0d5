"""`cloudpal core ...`: create, fill, inspect and share Hypercore logs.

These commands work on the node home's core store directly (SQLite serializes
concurrent processes), so a log can be shared with any Hypercore peer without
the daemon running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import IO, Any

import click

from cloudpal.errors import CloudPalError, InvalidInput


def _store(ctx: click.Context) -> Any:
    from cloudpal.data import open_store

    home = ctx.find_root().obj
    assert isinstance(home, Path)
    return open_store(home)


def _hostport(text: str, listening: bool = False) -> tuple[str, int]:
    from cloudpal.net import split_hostport

    return split_hostport(text, "address", allow_any_port=listening)


def _read_blocks(stream: IO[bytes], block_size: int | None) -> list[bytes]:
    if block_size is not None:
        blocks = []
        while chunk := stream.read(block_size):
            blocks.append(chunk)
        return blocks
    data = stream.read()
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # a final newline ends the last line, it does not start an empty block
    return lines


@click.group()
def core() -> None:
    """Hypercore logs: signed, append-only, replicated with any Hypercore peer."""


@core.command("create")
@click.argument("name")
@click.option("--encryption-key", help="64 hex digits: encrypt blocks (compatible with Hypercore).")
@click.option("--compat", is_flag=True, help="A v10-style core whose key is the signer's public key.")
@click.pass_context
def core_create(ctx: click.Context, name: str, encryption_key: str | None, compat: bool) -> None:
    """Create a writable core and print its key."""
    key = _hex32(encryption_key, "encryption key") if encryption_key else None
    c = _store(ctx).create(name, encryption_key=key, compat=compat)
    click.echo(c.key.hex())


def _hex32(text: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise InvalidInput(f"the {what} must be 64 hex digits")
    return raw


@core.command("append")
@click.argument("name")
@click.argument("file", type=click.File("rb"), default="-")
@click.option("--block-size", type=click.IntRange(1, 16 * 1024 * 1024),
              help="Cut the input into blocks of this many bytes instead of one block per line.")
@click.pass_context
def core_append(ctx: click.Context, name: str, file: IO[bytes], block_size: int | None) -> None:
    """Append FILE (or stdin): one block per line, or --block-size bytes each."""
    c = _store(ctx).get(name)
    blocks = _read_blocks(file, block_size)
    length = c.append(blocks) if blocks else c.length
    click.echo(f"appended {len(blocks)} blocks; length {length}", err=True)


@core.command("info")
@click.argument("core_ref", metavar="NAME|KEY")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def core_info(ctx: click.Context, core_ref: str, as_json: bool) -> None:
    """Key (hex and z-base32), discovery key, length, byte length, fork, tree hash."""
    info = _store(ctx).get(core_ref).info()
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    for k in ("name", "key", "id", "discovery_key", "length", "contiguous_length", "byte_length",
              "fork", "tree_hash", "writable", "encrypted"):
        click.echo(f"{k:<18} {info.get(k)}")


@core.command("cat")
@click.argument("core_ref", metavar="NAME|KEY")
@click.option("--start", type=click.IntRange(0), default=0)
@click.option("--end", type=click.IntRange(0), default=None)
@click.option("--raw", is_flag=True, help="Write the blocks' bytes with no separator.")
@click.pass_context
def core_cat(ctx: click.Context, core_ref: str, start: int, end: int | None, raw: bool) -> None:
    """Print blocks, one per line, as `append` reads them."""
    c = _store(ctx).get(core_ref)
    out = sys.stdout.buffer
    for block in c.iter_blocks(start, c.length if end is None else end):
        out.write(block if raw else block + b"\n")
    out.flush()


@core.command("verify")
@click.argument("core_ref", metavar="NAME|KEY")
@click.pass_context
def core_verify(ctx: click.Context, core_ref: str) -> None:
    """Re-verify every stored block and tree node against the core's signature."""
    c = _store(ctx).get(core_ref)
    checked = c.audit()
    click.echo(f"verified {checked} stored blocks of {c.length} (fork {c.fork}): all match the signed tree")


@core.command("seed")
@click.argument("core_ref", metavar="NAME|KEY")
@click.option("--listen", "listen", required=True, metavar="HOST:PORT")
@click.pass_context
def core_seed(ctx: click.Context, core_ref: str, listen: str) -> None:
    """Serve a core to any Hypercore peer that connects (Ctrl-C stops)."""
    from cloudpal.data import seed

    store = _store(ctx)
    c = store.get(core_ref)
    host, port = _hostport(listen, listening=True)

    def ready(addr: tuple[str, int]) -> None:
        click.echo(f"seeding {c.key.hex()} (length {c.length}) on {addr[0]}:{addr[1]}", err=True)

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(seed(store, [c], host, port, on_ready=ready))
    except OSError as exc:
        raise CloudPalError(f"cannot listen on {listen}: {exc.strerror or exc}") from None


@core.command("clone")
@click.argument("key")
@click.option("--peer", required=True, metavar="HOST:PORT")
@click.option("--live", is_flag=True, help="Keep downloading new blocks as the writer appends.")
@click.option("--start", type=click.IntRange(0), default=0)
@click.option("--end", type=click.IntRange(0), default=None)
@click.option("--encryption-key", help="64 hex digits, for an encrypted core.")
@click.option("--name", help="A local name for the clone.")
@click.pass_context
def core_clone(ctx: click.Context, key: str, peer: str, live: bool, start: int, end: int | None,
               encryption_key: str | None, name: str | None) -> None:
    """Download a core (all, a range, or live) from a peer, verifying every block."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from cloudpal.data import clone, parse_key

    store = _store(ctx)
    host, port = _hostport(peer)
    ek = _hex32(encryption_key, "encryption key") if encryption_key else None
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} blocks"), TimeElapsedColumn())
    with Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("clone", total=None)

        def on_progress(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        try:
            c = asyncio.run(clone(store, parse_key(key), host, port, start=start, end=end, live=live,
                                  encryption_key=ek, name=name, on_progress=on_progress))
        except (OSError, TimeoutError) as exc:
            reason = exc.strerror or str(exc) or "timed out"
            raise CloudPalError(f"cannot clone from {peer}: {reason}") from None
    click.echo(f"cloned {c.key.hex()}: length {c.length}, {c.contiguous_length} blocks contiguous",
               err=True)
