"""The hub: keeps WireGuard peers, firewall and DNS in step with the registry.

Every operation runs on the node's event loop thread, one at a time, and ends
with `_sync`, which derives the data plane from the registry and changes only
what differs. So each CLI command takes effect on the running hub at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudpal.errors import Conflict, Exhausted, InvalidInput, NotFound
from cloudpal.net import acl, enroll, keys
from cloudpal.net.addressing import DEFAULT_IPV4_RANGE, AddressPlan, generate_ula48
from cloudpal.net.dns import DnsServer, Record, Zone
from cloudpal.net.enroll import grant_config
from cloudpal.net.hostnet import (
    Sysctls,
    configure_interface,
    nft_apply,
    nft_delete_table,
    set_host_addresses,
    underlay_address,
)
from cloudpal.net.names import join_hostport, split_hostport, validate_name, validate_zone
from cloudpal.net.ratelimit import RateLimiter
from cloudpal.net.registry import Device, Invite, Registry
from cloudpal.net.uapi import PeerSpec
from cloudpal.net.wireguard import Backend, choose_backend
from cloudpal.state import Database

log = logging.getLogger("cloudpal.net")

DEFAULT_PORT = 51820
ONLINE_WINDOW = 180.0  # a handshake at least every 2 minutes while a device is up
KEEPALIVE = 25


@dataclass
class NetOptions:
    """What `cloudpal up` was told; None means "as stored, or the default"."""

    iface: str | None = None
    endpoint: str | None = None
    listen_port: int | None = None
    ipv4_range: str | None = None
    zone: str | None = None
    node_name: str | None = None
    enroll_port: int | None = None
    backend: str = "auto"
    dns_port: int = 53


@dataclass
class Settings:
    iface: str
    endpoint: str
    listen_port: int
    zone: str
    node_name: str
    enroll_port: int
    private_key: str
    plan: AddressPlan


def load_settings(db: Database, opts: NetOptions) -> Settings:
    """Merge stored settings with the options given; store the result."""
    def meta(key: str) -> str | None:
        return Registry.meta(db, key)

    v4 = meta("ipv4_range")
    if opts.ipv4_range and v4 and opts.ipv4_range != v4:
        count = db.conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0]
        if count:
            raise Conflict(f"the node already uses {v4} for {count} devices; remove them first")
    plan = AddressPlan.parse(opts.ipv4_range or v4 or DEFAULT_IPV4_RANGE,
                             meta("ipv6_range") or generate_ula48())
    listen_port = opts.listen_port or int(meta("listen_port") or DEFAULT_PORT)
    endpoint = opts.endpoint or meta("endpoint_explicit")
    if endpoint:
        split_hostport(endpoint)
    zone = validate_zone(opts.zone or meta("zone") or "pal")
    node_name = validate_name(opts.node_name or meta("node_name") or "node", "node name")
    clash = db.conn.execute("SELECT 1 FROM devices WHERE name=?", (node_name,)).fetchone()
    if clash:
        raise Conflict(f"a device is already named {node_name!r}: pick another node name")
    iface = opts.iface or meta("iface") or "cloudpal0"
    if len(iface) > 15:
        raise InvalidInput(f"interface name {iface!r} is longer than 15 characters")
    settings = Settings(
        iface=iface,
        endpoint=endpoint or join_hostport(underlay_address(), listen_port),
        listen_port=listen_port,
        zone=zone,
        node_name=node_name,
        enroll_port=opts.enroll_port or int(meta("enroll_port") or listen_port),
        private_key=meta("private_key") or keys.generate_private_key(),
        plan=plan,
    )
    values = {
        "ipv4_range": str(plan.ipv4), "ipv6_range": str(plan.ipv6),
        "listen_port": str(listen_port), "zone": zone, "node_name": node_name,
        "iface": iface, "enroll_port": str(settings.enroll_port),
        "private_key": settings.private_key,
    }
    if endpoint:
        values["endpoint_explicit"] = endpoint
    Registry.set_meta(db, values)
    return settings


class NetworkService:
    def __init__(self, db: Database, home: Path, opts: NetOptions) -> None:
        self.db = db
        self.home = home
        self.opts = opts
        self.settings = load_settings(db, opts)
        self.registry = Registry(db, self.settings.plan)
        # The daemon is the only writer, so it keeps the device table in memory and
        # derives the data plane from it without re-reading the database each time.
        self._devices = {d.name: d for d in self.registry.devices()}
        self._services = self.registry.services()
        self.policy = self._load_policy()
        self.zone = Zone(self.settings.zone)
        self.dns = DnsServer(self.zone)
        self.limiter = RateLimiter()
        self.sysctls = Sysctls()
        self.backend: Backend | None = None
        self._applied: dict[str, tuple[str, ...]] = {}
        self._ruleset = ""
        self._next_expiry = float("inf")
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle ------------------------------------------------------------

    @property
    def table(self) -> str:
        return f"cloudpal_{self.settings.iface}".replace("-", "_")

    def _load_policy(self) -> acl.Policy:
        stored = self.registry.policy_text()
        if stored is None:
            return acl.default_policy()
        return acl.parse_policy(stored[0], stored[1])

    async def start(self) -> None:
        s = self.settings
        try:
            # Redirects between spokes must be off before the interface exists.
            self.sysctls.set("net.ipv4.conf.default.send_redirects", "0")
            self.sysctls.set("net.ipv4.conf.all.send_redirects", "0")
            self.backend = choose_backend(s.iface, self.home / "wireguard.log", self.opts.backend)
            self.backend.start()
            self.sysctls.set("net.ipv4.ip_forward", "1")
            self.sysctls.set("net.ipv6.conf.all.forwarding", "1")
            plan = s.plan
            configure_interface(s.iface, [(plan.node_v4(), plan.ipv4.prefixlen),
                                          (plan.node_v6(), plan.ipv6.prefixlen)])
            if self._services:
                set_host_addresses(s.iface, [a for v in self._services.values() for a in v], True)
            self._sync(initial=True)
            await self.dns.start([plan.node_v4(), plan.node_v6()], self.opts.dns_port)
        except BaseException:
            await self.stop()
            raise
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        log.info("hub %s up (%s) at %s, %s, endpoint %s", s.iface, self.backend.kind,
                 s.plan.node_v4(), s.plan.node_v6(), s.endpoint)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self.dns.stop()
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self._save_endpoints()
            self.backend.stop()
            self.backend = None
        nft_delete_table(self.table)
        self._ruleset = ""
        self.sysctls.restore()

    async def _housekeeping(self) -> None:
        """Drop expired devices from the data plane; remember where devices are."""
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            try:
                if time.time() >= self._next_expiry:
                    self._sync()
                if ticks % 30 == 0:
                    self._save_endpoints()
            except Exception:  # keep the hub running; the next tick retries
                log.exception("housekeeping failed")

    def _save_endpoints(self) -> None:
        assert self.backend is not None
        status = self.backend.status()
        seen = {k: p.endpoint for k, p in status.peers.items() if p.endpoint}
        if seen:
            self.registry.save_endpoints(seen)

    # ---- deriving the data plane ----------------------------------------------

    def _hosts(self, devices: list[Device]) -> dict[str, acl.Host]:
        plan = self.settings.plan
        hosts = {d.name: acl.Host(d.name, d.ipv4, d.ipv6) for d in devices}
        hosts[self.settings.node_name] = acl.Host(self.settings.node_name, plan.node_v4(),
                                                  plan.node_v6())
        for name, (v4, v6) in self._services.items():
            hosts[name] = acl.Host(name, v4, v6)
        return hosts

    def _render(self, policy: acl.Policy, devices: list[Device]) -> str:
        s = self.settings
        return acl.render_nft(
            policy, table=self.table, wg_iface=s.iface, hosts=self._hosts(devices),
            node=s.node_name, v4_net=str(s.plan.ipv4), v6_net=str(s.plan.ipv6),
            full_tunnel=[acl.Host(d.name, d.ipv4, d.ipv6) for d in devices if d.full_tunnel],
            local=list(self._services),
        )

    def _sync(self, initial: bool = False) -> None:
        assert self.backend is not None
        now = time.time()
        devices = list(self._devices.values())
        live = [d for d in devices if not d.expired(now)]
        self._next_expiry = min((d.expires for d in live if d.expires), default=float("inf"))
        desired: dict[str, tuple[str, ...]] = {
            d.public_key: (f"{d.ipv4}/32", f"{d.ipv6}/128") for d in live
        }
        if initial:
            specs = [
                PeerSpec(d.public_key, desired[d.public_key], endpoint=d.last_endpoint,
                         keepalive=KEEPALIVE if d.last_endpoint else None)
                for d in live
            ]
            self.backend.apply(private_key=self.settings.private_key,
                               listen_port=self.settings.listen_port, peers=specs,
                               replace_peers=True)
        else:
            changed = [PeerSpec(k, ips) for k, ips in desired.items() if self._applied.get(k) != ips]
            removed = [k for k in self._applied if k not in desired]
            if changed or removed:
                self.backend.apply(peers=changed, remove=removed)
        self._applied = desired
        ruleset = self._render(self.policy, devices)
        if ruleset != self._ruleset:
            nft_apply(ruleset)
            self._ruleset = ruleset
        plan = self.settings.plan
        records = {d.name: Record((d.ipv4,), (d.ipv6,)) for d in devices}
        records[self.settings.node_name] = Record((plan.node_v4(),), (plan.node_v6(),))
        for name, (v4, v6) in self._services.items():
            records[name] = Record((v4,), (v6,))
        self.zone.set_records(records)

    # ---- operations -------------------------------------------------------------

    @property
    def reserved(self) -> frozenset[str]:
        return frozenset({self.settings.node_name})

    def register_service(self, name: str) -> tuple[str, str]:
        """Serve an app as NAME.<zone> on its own overlay addresses, which the node owns."""
        if name in self._services:
            return self._services[name]
        addrs = self.registry.add_service(name, reserved=self.reserved)
        try:
            set_host_addresses(self.settings.iface, list(addrs), True)
        except BaseException:
            self.registry.remove_service(name)
            raise
        self._services[name] = addrs
        self._sync()
        log.info("app %s served at %s, %s", name, *addrs)
        return addrs

    def unregister_service(self, name: str) -> None:
        addrs = self._services.pop(name, None)
        if addrs is None:
            return
        self.registry.remove_service(name)
        set_host_addresses(self.settings.iface, list(addrs), False)
        self._sync()

    def device_config(self, name: str) -> str:
        return self._config(self.registry.get(name))

    def _grant(self, dev: Device) -> enroll.Grant:
        s = self.settings
        plan = s.plan
        routes = ["0.0.0.0/0", "::/0"] if dev.full_tunnel else [str(plan.ipv4), str(plan.ipv6)]
        return enroll.Grant(
            name=dev.name,
            addresses=[f"{dev.ipv4}/32", f"{dev.ipv6}/128"],
            dns=[plan.node_v4(), plan.node_v6(), s.zone],
            hub_public_key=keys.public_key(s.private_key),
            endpoint=s.endpoint,
            allowed_ips=routes,
            keepalive=KEEPALIVE,
        )

    def _config(self, dev: Device) -> str:
        return grant_config(self._grant(dev), dev.private_key)

    def add_device(self, name: str, public_key: str | None, full_tunnel: bool,
                   lifetime: int | None) -> dict[str, Any]:
        dev = self.registry.add(name, public_key=public_key, full_tunnel=full_tunnel,
                                lifetime=lifetime, reserved=self.reserved)
        self._devices[dev.name] = dev
        self._sync()
        log.info("device %s added (%s, %s)", dev.name, dev.ipv4, dev.ipv6)
        return {"device": self._device_json(dev, None), "config": self._config(dev)}

    def rename_device(self, old: str, new: str) -> dict[str, Any]:
        dev = self.registry.rename(old, new, reserved=self.reserved)
        del self._devices[old]
        self._devices[new] = dev
        self._sync()
        return self._device_json(dev, None)

    def revoke_device(self, name: str) -> dict[str, Any]:
        dev = self.registry.revoke(name)
        del self._devices[name]
        self._sync()
        log.info("device %s revoked", name)
        return self._device_json(dev, None)

    def renew_device(self, name: str, lifetime: int | None) -> dict[str, Any]:
        dev = self.registry.renew(name, lifetime)
        self._devices[name] = dev
        self._sync()
        return self._device_json(dev, None)

    def _device_json(self, dev: Device, peer: Any, now: float | None = None) -> dict[str, Any]:
        now = now or time.time()
        handshake = peer.last_handshake if peer else None
        if dev.expired(now):
            state = "expired"
        elif handshake and now - handshake < ONLINE_WINDOW:
            state = "online"
        else:
            state = "offline"
        return {
            "name": dev.name, "ipv4": dev.ipv4, "ipv6": dev.ipv6,
            "public_key": dev.public_key, "full_tunnel": dev.full_tunnel,
            "expires": dev.expires, "state": state,
            "last_handshake": handshake,
            "endpoint": peer.endpoint if peer else None,
            "rx_bytes": peer.rx_bytes if peer else 0,
            "tx_bytes": peer.tx_bytes if peer else 0,
            "own_key": dev.private_key is None,
        }

    def list_devices(self) -> list[dict[str, Any]]:
        assert self.backend is not None
        peers = self.backend.status().peers
        now = time.time()
        devices = sorted(self._devices.values(), key=lambda d: d.index)
        return [self._device_json(d, peers.get(d.public_key), now) for d in devices]

    @property
    def enroll_url(self) -> str:
        host, _ = split_hostport(self.settings.endpoint)
        return f"http://{join_hostport(host, self.settings.enroll_port)}"

    def status(self) -> dict[str, Any]:
        assert self.backend is not None
        s = self.settings
        devices = self.list_devices()
        return {
            "node": s.node_name, "zone": s.zone, "interface": s.iface,
            "backend": self.backend.kind,
            "public_key": keys.public_key(s.private_key),
            "addresses": [s.plan.node_v4(), s.plan.node_v6()],
            "ipv4_range": str(s.plan.ipv4), "ipv6_range": str(s.plan.ipv6),
            "endpoint": s.endpoint, "listen_port": s.listen_port,
            "enroll_url": self.enroll_url,
            "devices": len(devices),
            "online": [d["name"] for d in devices if d["state"] == "online"],
            "dns": [join_hostport(h, p) for h, p in self.dns.bound],
        }

    def create_invite(self, uses: int, ttl: int, full_tunnel: bool) -> dict[str, Any]:
        invite = self.registry.create_invite(uses, ttl, full_tunnel)
        return {"code": invite.code, "url": self.enroll_url, "uses": invite.uses_left,
                "expires": invite.expires, "full_tunnel": invite.full_tunnel}

    def list_invites(self) -> list[dict[str, Any]]:
        return [{"id": i.id, "uses_left": i.uses_left, "expires": i.expires,
                 "full_tunnel": i.full_tunnel} for i in self.registry.invites()]

    def enroll(self, body: bytes, client: str) -> tuple[int, bytes]:
        """Handle one enrollment HTTP request; returns status and body."""
        if not self.limiter.allow(client):
            log.warning("enrollment from %s rate-limited", client)
            return 429, enroll.error_body("too many enrollment attempts: wait a minute")
        invite: Invite | None = None
        try:
            req = enroll.parse_request(body)
            invite = self.registry.find_invite(req.invite)
            mac_ok = invite is not None and enroll.request_mac_ok(req, invite.secret)
            dev, invite = self.registry.redeem_invite(req.invite, mac_ok, req.name, req.public_key,
                                                      reserved=self.reserved)
        except Conflict as exc:
            return 409, enroll.error_body(str(exc))
        except Exhausted as exc:
            log.warning("enrollment from %s refused: %s", client, exc)
            return 410, enroll.error_body(str(exc))
        except (InvalidInput, NotFound) as exc:
            log.warning("enrollment from %s refused: %s", client, exc)
            status = 403 if "invite code is wrong" in str(exc) else 400
            return status, enroll.error_body(str(exc))
        self._devices[dev.name] = dev
        self._sync()
        log.info("device %s enrolled from %s with invite %s", dev.name, client, invite.id)
        return 200, enroll.build_response(self._grant(dev), invite.secret)

    def apply_policy(self, text: str, source: str) -> dict[str, Any]:
        policy = acl.parse_policy(text, source)
        devices = list(self._devices.values())
        ruleset = self._render(policy, devices)
        nft_apply(ruleset)  # refuses atomically; on failure the old ruleset stays
        self._ruleset = ruleset
        self.policy = policy
        self.registry.set_policy_text(text, source)
        known = set(self._hosts(devices))
        unknown = sorted(policy.device_names() - known)
        return {"rules": len(policy.rules), "groups": len(policy.groups),
                "unknown_devices": unknown}

    def policy_json(self) -> dict[str, Any]:
        return {"text": self.policy.text, "rules": len(self.policy.rules)}

    def check(self, src: str, dst: str, port: int | None, proto: str) -> dict[str, Any]:
        if proto not in ("tcp", "udp", "icmp"):
            raise InvalidInput(f"unknown protocol {proto!r}: use tcp, udp or icmp")
        if port is not None and not 0 < port < 65536:
            raise InvalidInput(f"invalid port {port}")
        d = acl.check(self.policy, src, dst, port, proto, self._hosts(list(self._devices.values())),
                      node=self.settings.node_name)
        return {"allowed": d.allowed, "explanation": d.explanation,
                "rule": d.rule.index if d.rule else None}


__all__ = ["NetOptions", "NetworkService"]
