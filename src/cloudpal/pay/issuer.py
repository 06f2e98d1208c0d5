"""The ticket issuer: sells blind-signed Privacy Pass tokens (RFC 9578 type 2) against an account.

It knows who pays (an account and its balance) but, by construction, never sees the tokens it
signs: a request carries only a blinded message. Nothing that could link a purchase to a token is
kept or logged: no blinded message, no signature, no per-token row. What the database holds is
accounts, balances, purchase counts and the token keys.

Keys rotate: `rotate()` adds a new key that new tickets are signed with, and older keys stay in the
directory (so tickets already sold still verify) until they expire.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cloudpal.errors import CloudPalError, Conflict, Exhausted, InvalidInput, NotFound
from cloudpal.pay import tokens
from cloudpal.state import Database

log = logging.getLogger("cloudpal.issuer")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS issuer_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS issuer_keys (
        token_key_id BLOB PRIMARY KEY,
        private_key BLOB NOT NULL,
        bits INTEGER NOT NULL,
        not_before REAL NOT NULL,
        expires REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS issuer_accounts (
        name TEXT PRIMARY KEY,
        secret_hash BLOB NOT NULL UNIQUE,
        balance INTEGER NOT NULL CHECK (balance >= 0),
        issued INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL)""",
]

REQUEST_PATH = "/token-request"
DIRECTORY_PATH = "/.well-known/private-token-issuer-directory"
DEFAULT_KEY_LIFETIME = 90 * 86400
MAX_REQUEST = 4096  # a type-2 TokenRequest is 3 + Nk bytes


@dataclass(frozen=True)
class IssuerKey:
    token_key_id: bytes
    private_key: rsa.RSAPrivateKey
    bits: int
    not_before: float
    expires: float

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()


def _hash_secret(secret: str) -> bytes:
    return hashlib.sha256(b"cloudpal-issuer-account\0" + secret.encode()).digest()


class Issuer:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("issuer", SCHEMA)
        self._keys: list[IssuerKey] | None = None
        self._stamp: tuple[Any, ...] = ()

    # ---- keys ---------------------------------------------------------------------

    def live_keys(self, now: float | None = None) -> list[IssuerKey]:
        """Unexpired keys, newest first (the first one signs new tickets)."""
        now = time.time() if now is None else now
        # `cloudpal issuer rotate` may run beside the server: reload when the key table changed.
        stamp = tuple(self.db.conn.execute("SELECT count(*), max(not_before) FROM issuer_keys").fetchone())
        if self._keys is None or stamp != self._stamp:
            self._stamp = stamp
            rows = self.db.conn.execute(
                "SELECT * FROM issuer_keys ORDER BY not_before DESC").fetchall()
            loaded = []
            for r in rows:
                sk = serialization.load_der_private_key(r["private_key"], password=None)
                assert isinstance(sk, rsa.RSAPrivateKey)
                loaded.append(IssuerKey(r["token_key_id"], sk, r["bits"], r["not_before"], r["expires"]))
            self._keys = loaded
        return [k for k in self._keys if k.expires > now]

    def rotate(self, bits: int = 2048, lifetime: int = DEFAULT_KEY_LIFETIME) -> IssuerKey:
        """Add a signing key. Its truncated id (last byte) must differ from every live key's, so a
        TokenRequest always names exactly one key."""
        if bits not in (2048, 3072, 4096):
            raise InvalidInput("issuer keys are 2048, 3072 or 4096 bits")
        taken = {k.token_key_id[-1] for k in self.live_keys()}
        while True:
            sk = rsa.generate_private_key(public_exponent=65537, key_size=bits)
            key_id = tokens.token_key_id(sk.public_key())
            if key_id[-1] not in taken:
                break
        now = time.time()
        der = sk.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
        with self.db.transaction() as c:
            c.execute("INSERT INTO issuer_keys VALUES (?,?,?,?,?)", (key_id, der, bits, now, now + lifetime))
        self._keys = None
        log.info("new token key %s (%d bits), valid until %s", key_id.hex()[:16], bits,
                 time.strftime("%Y-%m-%d", time.gmtime(now + lifetime)))
        return self.live_keys()[0]

    def ensure_key(self, bits: int = 2048) -> IssuerKey:
        keys = self.live_keys()
        return keys[0] if keys else self.rotate(bits)

    def directory(self, base_url: str) -> dict[str, Any]:
        keys = self.live_keys()
        return tokens.build_directory(
            base_url.rstrip("/") + REQUEST_PATH,
            [(k.public_key, int(k.not_before)) for k in keys],
            extra=[{"cloudpal-expires": int(k.expires)} for k in keys],
        )

    # ---- accounts -------------------------------------------------------------------

    def add_account(self, name: str, credits: int) -> str:
        """Create an account with `credits` tickets paid for; returns its bearer secret (shown once)."""
        from cloudpal.net import validate_name

        validate_name(name, "account name")
        if credits < 0:
            raise InvalidInput("credits cannot be negative")
        secret = secrets.token_urlsafe(24)
        with self.db.transaction() as c:
            if c.execute("SELECT 1 FROM issuer_accounts WHERE name=?", (name,)).fetchone():
                raise Conflict(f"an account named {name!r} already exists")
            c.execute("INSERT INTO issuer_accounts(name, secret_hash, balance, created) VALUES (?,?,?,?)",
                      (name, _hash_secret(secret), credits, time.time()))
        return secret

    def credit(self, name: str, credits: int) -> int:
        if credits <= 0:
            raise InvalidInput("credit a positive number of tickets")
        with self.db.transaction() as c:
            cur = c.execute("UPDATE issuer_accounts SET balance=balance+? WHERE name=?", (credits, name))
            if cur.rowcount == 0:
                raise NotFound(f"no account named {name!r}")
            return int(c.execute("SELECT balance FROM issuer_accounts WHERE name=?", (name,)).fetchone()[0])

    def accounts(self) -> list[dict[str, Any]]:
        rows = self.db.conn.execute(
            "SELECT name, balance, issued, created FROM issuer_accounts ORDER BY name")
        return [dict(r) for r in rows]

    def _account(self, secret: str) -> str:
        # Looked up by the secret's hash: lookup timing can only reveal bits of a SHA-256 output.
        row = self.db.conn.execute("SELECT name FROM issuer_accounts WHERE secret_hash=?",
                                   (_hash_secret(secret),)).fetchone()
        if row is None:
            raise PermissionError("unknown account")
        return str(row[0])

    # ---- issuance -------------------------------------------------------------------

    def issue(self, secret: str, body: bytes) -> bytes:
        """Sign one blinded TokenRequest and charge the account one ticket, atomically."""
        name = self._account(secret)
        if len(body) > MAX_REQUEST:
            raise InvalidInput("the token request is too large")
        keys = self.live_keys()
        if not keys:
            raise Exhausted("the issuer has no valid token key")
        by_truncated = {k.token_key_id[-1]: k for k in keys}
        if len(body) < 3:
            raise InvalidInput("the token request is truncated")
        key = by_truncated.get(body[2])
        if key is None:
            raise InvalidInput("the token request names no current token key of this issuer")
        request = tokens.TokenRequest.decode(body, key.bits // 8)
        with self.db.transaction() as c:
            row = c.execute("SELECT balance FROM issuer_accounts WHERE name=?", (name,)).fetchone()
            if row is None or row[0] < 1:
                raise Exhausted("the account has no tickets left to issue: buy more")
            response = tokens.issue(key.private_key, request)
            c.execute("UPDATE issuer_accounts SET balance=balance-1, issued=issued+1 WHERE name=?", (name,))
        return response.encode()


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def issuer_routes(issuer: Issuer, base_url: str | None = None) -> list[Route]:
    async def directory(request: Request) -> Response:
        base = base_url or str(request.base_url)
        return JSONResponse(issuer.directory(base),
                            media_type=tokens.MEDIA_DIRECTORY, headers={"Cache-Control": "max-age=300"})

    async def token_request(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != tokens.MEDIA_REQUEST:
            return JSONResponse({"error": f"send a {tokens.MEDIA_REQUEST} body"}, status_code=415)
        secret = _bearer(request)
        if secret is None:
            return JSONResponse({"error": "an account is required: Authorization: Bearer SECRET"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        body = await request.body()
        try:
            answer = issuer.issue(secret, body)
        except PermissionError:
            return JSONResponse({"error": "unknown account"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        except Exhausted as exc:
            return JSONResponse({"error": str(exc)}, status_code=402)
        except CloudPalError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return Response(answer, media_type=tokens.MEDIA_RESPONSE)

    return [
        Route(DIRECTORY_PATH, directory, methods=["GET"]),
        Route(REQUEST_PATH, token_request, methods=["POST"]),
    ]
