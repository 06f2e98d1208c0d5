"""The data center's till: accepts Privacy Pass tickets (RFC 9578 type 2) as payment for hosting.

It verifies tokens offline, with the issuer's public keys (fetched from the issuer's directory and
cached in its own database, so a restart needs no issuer), and records each spent token in SQLite:
the primary key on the token's nonce and key id makes every token count exactly once, whatever the
concurrency and however many processes share the database. Each accepted ticket credits hosting
time to the node that presented it.

Its WWW-Authenticate header offers two challenges for its issuer: one bound to this data center
(for clients that fetch a token per challenge) and the generic one with no origin and no
redemption context, which is what prepaid tickets are bought for, so tickets move with a node from
one data center to another. A token made for another origin's challenge matches neither.
"""

from __future__ import annotations

import hashlib
import logging
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cloudpal.errors import CloudPalError, HostError, InvalidInput
from cloudpal.pay import tokens
from cloudpal.state import Database

log = logging.getLogger("cloudpal.dc")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS dc_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS dc_keys (
        token_key_id BLOB PRIMARY KEY, spki BLOB NOT NULL, not_before REAL NOT NULL,
        expires REAL, fetched REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS dc_spent (
        token_id BLOB PRIMARY KEY, spent REAL NOT NULL, node TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS dc_credits (
        node TEXT PRIMARY KEY, seconds INTEGER NOT NULL, tickets INTEGER NOT NULL, updated REAL NOT NULL)""",
]

PAY_PATH = "/pay"
NODE_HEADER = "cloudpal-node"
DEFAULT_SECONDS_PER_TICKET = 86400
MAX_NODE_ID = 128


class AlreadySpent(InvalidInput):
    """The token was redeemed before."""


@dataclass(frozen=True)
class Redemption:
    node: str
    credited: int
    balance: int


def fetch_directory(issuer_url: str, timeout: float = 10) -> dict[str, Any]:
    url = issuer_url.rstrip("/") + "/.well-known/private-token-issuer-directory"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = resp.read(1 << 20)
    except (OSError, ValueError) as exc:
        raise HostError(f"cannot fetch the issuer directory at {url}: {exc}") from None
    return tokens.parse_directory(data)


def issuer_name_of(issuer_url: str) -> str:
    """RFC 9578: a token's issuer_name is the issuer's host name (with the port when not default)."""
    parsed = urllib.parse.urlsplit(issuer_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidInput(f"invalid issuer URL {issuer_url!r}: use http(s)://HOST[:PORT]")
    return parsed.netloc


class DataCenter:
    def __init__(self, db: Database, name: str, issuer_url: str,
                 seconds_per_ticket: int = DEFAULT_SECONDS_PER_TICKET) -> None:
        from cloudpal.net import validate_name

        for label in name.split("."):
            validate_name(label, "data center name")
        self.db = db
        db.migrate("dc", SCHEMA)
        self.name = name
        self.issuer_url = issuer_url
        self.issuer_name = issuer_name_of(issuer_url)
        self.seconds_per_ticket = seconds_per_ticket
        self.own = tokens.TokenChallenge(tokens.TOKEN_TYPE_BLIND_RSA, self.issuer_name, b"", (name,))
        self.generic = tokens.TokenChallenge(tokens.TOKEN_TYPE_BLIND_RSA, self.issuer_name, b"", ())
        self.accepted = (self.own.digest(), self.generic.digest())
        self._stamp: tuple[Any, ...] = ()
        self._cache: list[tuple[bytes, rsa.RSAPublicKey, float, float | None]] = []

    # ---- issuer keys, cached ------------------------------------------------------------

    def refresh_keys(self) -> int:
        """Fetch the issuer's directory; keys that left it are forgotten (rotated out)."""
        return self.store_keys(fetch_directory(self.issuer_url))

    def store_keys(self, directory: dict[str, Any]) -> int:
        """Replace the cached keys with a fetched directory's. Runs on the thread that serves
        requests: they share one SQLite connection, which would otherwise show a request the
        half-replaced table (no keys at all) in the middle of this transaction."""
        now = time.time()
        with self.db.transaction() as c:
            c.execute("DELETE FROM dc_keys")
            for entry in directory["token-keys"]:
                pk = tokens.load_public_key_spki(entry["spki"])
                c.execute("INSERT OR REPLACE INTO dc_keys VALUES (?,?,?,?,?)",
                          (tokens.token_key_id(pk), entry["spki"], entry.get("not-before") or 0,
                           entry.get("cloudpal-expires"), now))
        return len(directory["token-keys"])

    def keys(self, now: float | None = None) -> dict[bytes, rsa.RSAPublicKey]:
        """The issuer keys valid now, by token key id (parsed once per refresh, not per ticket)."""
        now = time.time() if now is None else now
        stamp = tuple(self.db.conn.execute("SELECT count(*), max(fetched) FROM dc_keys").fetchone())
        if stamp != self._stamp:
            self._cache = [(bytes(r["token_key_id"]), tokens.load_public_key_spki(bytes(r["spki"])),
                            r["not_before"], r["expires"])
                           for r in self.db.conn.execute("SELECT * FROM dc_keys")]
            self._stamp = stamp
        return {kid: pk for kid, pk, not_before, expires in self._cache
                if not_before <= now + 300 and (expires is None or expires > now)}

    def challenge_header(self) -> str:
        spki = [tokens.public_key_spki(pk) for pk in self.keys().values()]
        pairs = [(ch, key) for ch in (self.own, self.generic) for key in spki[:1]]
        if not pairs:
            pairs = [(self.own, b""), (self.generic, b"")]
        return tokens.format_challenge_header(pairs)

    # ---- redemption ---------------------------------------------------------------------

    def redeem(self, authorization: str, node: str) -> Redemption:
        if not node or len(node) > MAX_NODE_ID or not node.isprintable():
            raise InvalidInput("name the node to credit in the CloudPal-Node header")
        token = tokens.parse_authorization(authorization)
        tokens.verify_token(token, self.keys(), self.accepted)
        token_id = hashlib.sha256(token.nonce + token.token_key_id).digest()
        now = time.time()
        with self.db.transaction() as c:
            if c.execute("SELECT 1 FROM dc_spent WHERE token_id=?", (token_id,)).fetchone():
                raise AlreadySpent("this ticket was already spent")
            c.execute("INSERT INTO dc_spent VALUES (?,?,?)", (token_id, now, node))
            c.execute(
                "INSERT INTO dc_credits VALUES (?,?,1,?) ON CONFLICT(node) DO UPDATE SET "
                "seconds=seconds+excluded.seconds, tickets=tickets+1, updated=excluded.updated",
                (node, self.seconds_per_ticket, now))
            balance = int(c.execute("SELECT seconds FROM dc_credits WHERE node=?", (node,)).fetchone()[0])
        log.info("ticket accepted: %d s of hosting for %s", self.seconds_per_ticket, node)
        return Redemption(node, self.seconds_per_ticket, balance)

    def credits(self, node: str) -> dict[str, Any]:
        r = self.db.conn.execute("SELECT * FROM dc_credits WHERE node=?", (node,)).fetchone()
        return {"node": node, "seconds": r["seconds"] if r else 0, "tickets": r["tickets"] if r else 0}

    def spent_count(self) -> int:
        return int(self.db.conn.execute("SELECT count(*) FROM dc_spent").fetchone()[0])


def dc_routes(dc: DataCenter) -> list[Route]:
    def challenge(status: int, error: str) -> Response:
        return JSONResponse({"error": error, "data_center": dc.name}, status_code=status,
                            headers={"WWW-Authenticate": dc.challenge_header()})

    async def pay(request: Request) -> Response:
        auth = request.headers.get("authorization")
        if not auth:
            return challenge(401, "payment required: present a PrivateToken")
        node = request.headers.get(NODE_HEADER) or "anonymous"
        try:
            await request.body()
            done = dc.redeem(auth, node)
        except AlreadySpent as exc:
            return challenge(401, str(exc))
        except tokens.TokenError as exc:
            return challenge(401, str(exc))
        except CloudPalError as exc:
            return challenge(400, str(exc))
        return JSONResponse({"node": done.node, "credited_seconds": done.credited,
                             "balance_seconds": done.balance})

    async def credits(request: Request) -> Response:
        return JSONResponse(dc.credits(request.path_params["node"]))

    return [
        Route(PAY_PATH, pay, methods=["GET", "POST"]),
        Route("/credits/{node}", credits, methods=["GET"]),
    ]

