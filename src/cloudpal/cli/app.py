"""`cloudpal app ...`: apps in their own microVMs, through the running node."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from cloudpal.cli.net import _bytes, _client, _json
from cloudpal.compute.settings import AppSettings, parse_publish


def _settings(publish: tuple[str, ...], idle: str | None, cpu: str | None, memory: str | None,
              pids: int | None, runaway_after: str | None, volume: str | None,
              cpu_weight: int | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if publish:
        raw["publish"] = [str(parse_publish(p)) for p in publish]
    for key, value in (("idle", idle), ("cpu_percent", cpu), ("memory_mib", memory), ("pids", pids),
                       ("runaway_after", runaway_after), ("volume_mib", volume),
                       ("cpu_weight", cpu_weight)):
        if value is not None:
            raw[key] = value
    AppSettings().updated(raw)  # refuse bad input here, before anything is imported
    return raw


def _common(fn: Any) -> Any:
    for opt in reversed([
        click.option("--publish", "-p", multiple=True, metavar="[HOST:]PORT:GUEST_PORT",
                     help="Also serve a guest port on the host (default host 127.0.0.1)."),
        click.option("--idle", help="Snapshot and stop after this long unused (default 5m)."),
        click.option("--cpu", help="CPU quota in % of one CPU (default 100%; 'none' for no quota)."),
        click.option("--cpu-weight", type=int, help="CPU share against other apps, 1-10000 (default 100)."),
        click.option("--memory", help="Guest memory (default 128M)."),
        click.option("--pids", type=int, help="Thread limit for the VM's process (default 256)."),
        click.option("--runaway-after", help="Kill after pinning its CPU quota this long with no "
                     "client (default 60s)."),
    ]):
        fn = opt(fn)
    return fn


@click.group()
def app() -> None:
    """Apps: OCI images, each in its own microVM, woken by traffic."""


@app.command("install")
@click.argument("image", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, help="The app's name; it is served as NAME.pal.")
@_common
@click.option("--volume-size", "volume", help="Size of the persistent data volume (default 1G).")
@click.option("--upgrade", is_flag=True, help="Replace the image of an installed app; its data stays.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def install(ctx: click.Context, image: Path, name: str, publish: tuple[str, ...], idle: str | None,
            cpu: str | None, cpu_weight: int | None, memory: str | None, pids: int | None,
            runaway_after: str | None, volume: str | None, upgrade: bool, as_json: bool) -> None:
    """Import IMAGE (OCI layout dir, oci-archive or docker save tarball) and install it as NAME."""
    from cloudpal.compute import import_image
    from cloudpal.net import validate_name

    validate_name(name, "app name")
    settings = _settings(publish, idle, cpu, memory, pids, runaway_after, volume, cpu_weight)
    client = _client(ctx)
    store = Path(client.call("GET", "/apps-store")["image_store"])
    t0 = time.monotonic()
    if sys.stderr.isatty():
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), transient=True) as bar:
            task = bar.add_task(f"importing {image.name}", total=None)

            def tick(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)
            img = import_image(image, store, progress=tick)
    else:
        img = import_image(image, store)
    imported = time.monotonic() - t0
    body = {
        "name": name, "upgrade": upgrade, "settings": settings,
        "image": {
            "id": img.id, "digest": img.digest, "argv": [*img.entrypoint, *img.cmd],
            "env": img.env, "workdir": img.workdir or "/", "user": img.user,
            "exposed_ports": [p for p, proto in img.exposed_ports if proto == "tcp"],
            "rootfs": str(img.rootfs), "size": img.size,
        },
    }
    out = client.call("POST", "/apps", body)
    if as_json:
        _json(out)
        return
    where = ", ".join(out["listening"]) or "no ports"
    click.echo(f"{'upgraded' if upgrade else 'installed'} {name}: image {img.id[:19]} "
               f"({_bytes(img.size)}, imported in {imported:.1f} s), serving {where}")


@app.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List apps with their state and the accelerator in use."""
    out = _client(ctx).call("GET", "/apps")
    if as_json:
        _json(out)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"apps ({out['driver']}, accelerator {out['accel']})")
    for col in ("name", "state", "accel", "ports", "listening", "image"):
        table.add_column(col)
    for a in out["apps"]:
        table.add_row(a["name"], a["state"], out["accel"], " ".join(map(str, a["ports"])),
                      " ".join(a["listening"]), a["image"][7:19])
    Console().print(table)


@app.command("start")
@click.argument("name")
@click.pass_context
def start(ctx: click.Context, name: str) -> None:
    """Start NAME now (also clears a runaway mark)."""
    out = _client(ctx).call("POST", f"/apps/{name}/start")
    click.echo(f"{name}: {out['state']} ({out['woke_by']}, {out['accel']})")


@app.command("stop")
@click.argument("name")
@click.pass_context
def stop(ctx: click.Context, name: str) -> None:
    """Shut NAME down cleanly (its next connection boots it again)."""
    out = _client(ctx).call("POST", f"/apps/{name}/stop")
    click.echo(f"{name}: {out['state']}")


@app.command("rm")
@click.argument("name")
@click.pass_context
def rm(ctx: click.Context, name: str) -> None:
    """Remove NAME and its data volume."""
    _client(ctx).call("DELETE", f"/apps/{name}")
    click.echo(f"{name}: removed")


@app.command("set")
@click.argument("name")
@_common
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def set_cmd(ctx: click.Context, name: str, publish: tuple[str, ...], idle: str | None,
            cpu: str | None, cpu_weight: int | None, memory: str | None, pids: int | None,
            runaway_after: str | None, as_json: bool) -> None:
    """Change NAME's limits, idle time or published ports."""
    settings = _settings(publish, idle, cpu, memory, pids, runaway_after, None, cpu_weight)
    if not settings:
        raise click.UsageError("nothing to change: give at least one option")
    out = _client(ctx).call("POST", f"/apps/{name}/settings", settings)
    if as_json:
        _json(out)
    else:
        click.echo(f"{name}: " + ", ".join(f"{k}={v}" for k, v in sorted(out["settings"].items())))


@app.command("usage")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def usage(ctx: click.Context, as_json: bool) -> None:
    """CPU seconds, peak memory, wakes and time running, per app."""
    rows = _client(ctx).call("GET", "/apps-usage")
    if as_json:
        _json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="app usage")
    for col in ("name", "state", "cpu s", "peak memory", "wakes", "cold", "restores", "running",
                "throttled"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["state"], f"{r['cpu_seconds']:.2f}", _bytes(r["peak_memory"]),
                      str(r["wakes"]), str(r["cold_boots"]), str(r["restores"]),
                      f"{r['running_seconds']:.0f} s", str(r["throttled_periods"]))
    Console().print(table)


@app.command("events")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def events(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """What happened to apps: wakes, sleeps, runaway kills, failures."""
    q = f"?app={name}" if name else ""
    rows = _client(ctx).call("GET", f"/apps-events{q}")
    if as_json:
        _json(rows)
        return
    for r in rows:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"]))
        click.echo(f"{stamp} {r['app']} {r['kind']}: {r['message']}")


@app.command("logs")
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output.")
@click.pass_context
def logs(ctx: click.Context, name: str, follow: bool) -> None:
    """The guest console of NAME (kernel, init and the app's output)."""
    out = _client(ctx).call("GET", f"/apps/{name}")
    path = Path(out["log"])
    pos = 0
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                data = f.read()
        except FileNotFoundError:
            data = b""
        if data:
            pos += len(data)
            sys.stdout.write(data.decode("utf-8", "replace"))
            sys.stdout.flush()
        if not follow:
            return
        time.sleep(0.2)

