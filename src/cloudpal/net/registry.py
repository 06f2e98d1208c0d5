"""Devices, revoked keys, invites and the ACL policy, stored in the node's database.

The registry is the source of truth; the hub's WireGuard peers, the firewall
and the DNS zone are derived from it after every change.
"""

from __future__ import annotations

import base64
import secrets
import sqlite3
import time
from dataclasses import dataclass

from cloudpal.errors import Conflict, Exhausted, InvalidInput, NotFound
from cloudpal.net import keys
from cloudpal.net.addressing import AddressPlan
from cloudpal.net.names import validate_name
from cloudpal.state import Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS net_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS devices (
        name TEXT PRIMARY KEY,
        public_key TEXT NOT NULL UNIQUE,
        private_key TEXT,
        host_index INTEGER NOT NULL UNIQUE,
        full_tunnel INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        expires REAL,
        last_endpoint TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS revoked_keys (
        public_key TEXT PRIMARY KEY, name TEXT NOT NULL, revoked REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS invites (
        id TEXT PRIMARY KEY,
        secret TEXT NOT NULL,
        uses_left INTEGER NOT NULL,
        expires REAL NOT NULL,
        full_tunnel INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    )""",
    # Apps served on the overlay take addresses from the same plan and names from the same zone.
    """CREATE TABLE IF NOT EXISTS services (
        name TEXT PRIMARY KEY, host_index INTEGER NOT NULL UNIQUE, created REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS acl_policy (
        id INTEGER PRIMARY KEY CHECK (id = 1), text TEXT NOT NULL, source TEXT NOT NULL,
        applied REAL NOT NULL)""",
]


@dataclass(frozen=True)
class Device:
    name: str
    public_key: str
    private_key: str | None
    index: int
    ipv4: str
    ipv6: str
    full_tunnel: bool
    created: float
    expires: float | None
    last_endpoint: str | None

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and self.expires <= (now or time.time())


@dataclass(frozen=True)
class Invite:
    id: str
    secret: bytes
    uses_left: int
    expires: float
    full_tunnel: bool

    @property
    def code(self) -> str:
        return format_invite_code(self.id, self.secret)


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=").lower()


def format_invite_code(invite_id: str, secret: bytes) -> str:
    return f"{invite_id}-{_b32(secret)}"


def parse_invite_code(code: str) -> tuple[str, bytes]:
    """Split 'ID-SECRET' into the public id and the 16-byte secret."""
    code = code.strip().lower()
    invite_id, sep, secret = code.partition("-")
    try:
        if not sep or len(invite_id) != 8 or len(secret) != 26:
            raise ValueError
        raw = base64.b32decode(secret.upper() + "======")
    except ValueError:
        raise InvalidInput("malformed invite code: expected the code `invite create` printed") from None
    return invite_id, raw


class Registry:
    def __init__(self, db: Database, plan: AddressPlan) -> None:
        self.db = db
        self.plan = plan

    # ---- devices -------------------------------------------------------------

    def _device(self, row: sqlite3.Row) -> Device:
        i = int(row["host_index"])
        return Device(
            name=row["name"],
            public_key=row["public_key"],
            private_key=row["private_key"],
            index=i,
            ipv4=self.plan.v4(i),
            ipv6=self.plan.v6(i),
            full_tunnel=bool(row["full_tunnel"]),
            created=row["created"],
            expires=row["expires"],
            last_endpoint=row["last_endpoint"],
        )

    def devices(self) -> list[Device]:
        rows = self.db.conn.execute("SELECT * FROM devices ORDER BY host_index").fetchall()
        return [self._device(r) for r in rows]

    def get(self, name: str) -> Device:
        row = self.db.conn.execute("SELECT * FROM devices WHERE name=?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no device named {name!r}")
        return self._device(row)

    def _insert(self, c: sqlite3.Connection, name: str, public_key: str,
                private_key: str | None, full_tunnel: bool, lifetime: int | None) -> None:
        """Insert a device inside the caller's write transaction."""
        if c.execute("SELECT 1 FROM devices WHERE name=?", (name,)).fetchone():
            raise Conflict(f"a device named {name!r} already exists")
        if c.execute("SELECT 1 FROM services WHERE name=?", (name,)).fetchone():
            raise Conflict(f"the name {name!r} is taken by an app")
        if c.execute("SELECT 1 FROM revoked_keys WHERE public_key=?", (public_key,)).fetchone():
            raise Conflict("that public key was revoked and cannot be enrolled again")
        other = c.execute("SELECT name FROM devices WHERE public_key=?", (public_key,)).fetchone()
        if other:
            raise Conflict(f"that public key already belongs to device {other[0]!r}")
        index = self.plan.first_free(self._used(c))
        now = time.time()
        c.execute(
            "INSERT INTO devices(name, public_key, private_key, host_index, full_tunnel,"
            " created, expires) VALUES (?,?,?,?,?,?,?)",
            (name, public_key, private_key, index, int(full_tunnel), now,
             now + lifetime if lifetime else None),
        )

    def add(
        self,
        name: str,
        *,
        public_key: str | None = None,
        full_tunnel: bool = False,
        lifetime: int | None = None,
        reserved: frozenset[str] = frozenset(),
    ) -> Device:
        """Enroll a device: validate, allocate the lowest free address, store."""
        validate_name(name)
        if name in reserved:
            raise Conflict(f"the name {name!r} is taken by the node")
        private_key = None
        if public_key is None:
            private_key = keys.generate_private_key()
            public_key = keys.public_key(private_key)
        else:
            public_key = base64.b64encode(keys.parse_key(public_key)).decode()
        with self.db.transaction() as c:
            self._insert(c, name, public_key, private_key, full_tunnel, lifetime)
        return self.get(name)

    def rename(self, old: str, new: str, reserved: frozenset[str] = frozenset()) -> Device:
        validate_name(new)
        if new in reserved:
            raise Conflict(f"the name {new!r} is taken by the node")
        with self.db.transaction() as c:
            if not c.execute("SELECT 1 FROM devices WHERE name=?", (old,)).fetchone():
                raise NotFound(f"no device named {old!r}")
            if c.execute("SELECT 1 FROM devices WHERE name=?", (new,)).fetchone():
                raise Conflict(f"a device named {new!r} already exists")
            if c.execute("SELECT 1 FROM services WHERE name=?", (new,)).fetchone():
                raise Conflict(f"the name {new!r} is taken by an app")
            c.execute("UPDATE devices SET name=? WHERE name=?", (new, old))
        return self.get(new)

    @staticmethod
    def _used(c: sqlite3.Connection) -> set[int]:
        rows = c.execute("SELECT host_index FROM devices UNION ALL SELECT host_index FROM services")
        return {r[0] for r in rows}

    # ---- services (apps on the overlay) ---------------------------------------

    def services(self) -> dict[str, tuple[str, str]]:
        rows = self.db.conn.execute("SELECT name, host_index FROM services ORDER BY host_index")
        return {r[0]: (self.plan.v4(r[1]), self.plan.v6(r[1])) for r in rows}

    def add_service(self, name: str, reserved: frozenset[str] = frozenset()) -> tuple[str, str]:
        """Give an app a name in the zone and its own overlay addresses (idempotent)."""
        validate_name(name)
        if name in reserved:
            raise Conflict(f"the name {name!r} is taken by the node")
        with self.db.transaction() as c:
            row = c.execute("SELECT host_index FROM services WHERE name=?", (name,)).fetchone()
            if row is None:
                if c.execute("SELECT 1 FROM devices WHERE name=?", (name,)).fetchone():
                    raise Conflict(f"the name {name!r} is taken by a device")
                index = self.plan.first_free(self._used(c))
                c.execute("INSERT INTO services(name, host_index, created) VALUES (?,?,?)",
                          (name, index, time.time()))
            else:
                index = row[0]
        return self.plan.v4(index), self.plan.v6(index)

    def remove_service(self, name: str) -> None:
        with self.db.transaction() as c:
            c.execute("DELETE FROM services WHERE name=?", (name,))

    def revoke(self, name: str) -> Device:
        """Forget the device and refuse its key from now on."""
        dev = self.get(name)
        with self.db.transaction() as c:
            c.execute("DELETE FROM devices WHERE name=?", (name,))
            c.execute(
                "INSERT OR REPLACE INTO revoked_keys(public_key, name, revoked) VALUES (?,?,?)",
                (dev.public_key, name, time.time()),
            )
        return dev

    def renew(self, name: str, lifetime: int | None) -> Device:
        """Set a new expiry counted from now (None: never expires)."""
        self.get(name)
        expires = time.time() + lifetime if lifetime else None
        with self.db.transaction() as c:
            c.execute("UPDATE devices SET expires=? WHERE name=?", (expires, name))
        return self.get(name)

    def save_endpoints(self, endpoints: dict[str, str]) -> None:
        """Remember where each device was last seen (public key -> endpoint)."""
        with self.db.transaction() as c:
            c.executemany(
                "UPDATE devices SET last_endpoint=? WHERE public_key=?",
                [(ep, pk) for pk, ep in endpoints.items()],
            )

    # ---- invites -------------------------------------------------------------

    def create_invite(self, uses: int, ttl: int, full_tunnel: bool = False) -> Invite:
        if uses < 1:
            raise InvalidInput("an invite needs at least one use")
        invite = Invite(
            id=_b32(secrets.token_bytes(5)),
            secret=secrets.token_bytes(16),
            uses_left=uses,
            expires=time.time() + ttl,
            full_tunnel=full_tunnel,
        )
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO invites(id, secret, uses_left, expires, full_tunnel, created)"
                " VALUES (?,?,?,?,?,?)",
                (invite.id, invite.secret.hex(), uses, invite.expires, int(full_tunnel), time.time()),
            )
        return invite

    def invites(self) -> list[Invite]:
        rows = self.db.conn.execute("SELECT * FROM invites ORDER BY created").fetchall()
        return [self._invite(r) for r in rows]

    @staticmethod
    def _invite(row: sqlite3.Row) -> Invite:
        return Invite(
            id=row["id"],
            secret=bytes.fromhex(row["secret"]),
            uses_left=row["uses_left"],
            expires=row["expires"],
            full_tunnel=bool(row["full_tunnel"]),
        )

    def find_invite(self, invite_id: str) -> Invite | None:
        row = self.db.conn.execute("SELECT * FROM invites WHERE id=?", (invite_id,)).fetchone()
        return self._invite(row) if row else None

    def redeem_invite(self, invite_id: str, mac_ok: bool, name: str, public_key: str,
                      lifetime: int | None = None,
                      reserved: frozenset[str] = frozenset()) -> tuple[Device, Invite]:
        """Check the invite and enroll the device in one step; a failure uses nothing."""
        validate_name(name)
        public_key = base64.b64encode(keys.parse_key(public_key)).decode()
        with self.db.transaction() as c:
            row = c.execute("SELECT * FROM invites WHERE id=?", (invite_id,)).fetchone()
            if row is None or not mac_ok:
                raise InvalidInput("the invite code is wrong")
            invite = self._invite(row)
            if invite.expires <= time.time():
                raise Exhausted("the invite code has expired")
            if invite.uses_left <= 0:
                raise Exhausted("the invite code has already been used")
            if name in reserved:
                raise Conflict(f"the name {name!r} is taken by the node")
            self._insert(c, name, public_key, None, invite.full_tunnel, lifetime)
            c.execute("UPDATE invites SET uses_left = uses_left - 1 WHERE id=?", (invite_id,))
        return self.get(name), invite

    # ---- policy --------------------------------------------------------------

    def policy_text(self) -> tuple[str, str] | None:
        row = self.db.conn.execute("SELECT text, source FROM acl_policy WHERE id=1").fetchone()
        return (row[0], row[1]) if row else None

    def set_policy_text(self, text: str, source: str) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO acl_policy(id, text, source, applied) VALUES (1,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET text=excluded.text, source=excluded.source,"
                " applied=excluded.applied",
                (text, source, time.time()),
            )

    # ---- node settings -------------------------------------------------------

    @staticmethod
    def meta(db: Database, key: str) -> str | None:
        row = db.conn.execute("SELECT value FROM net_meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def set_meta(db: Database, values: dict[str, str]) -> None:
        with db.transaction() as c:
            c.executemany(
                "INSERT INTO net_meta(key, value) VALUES (?,?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                list(values.items()),
            )

