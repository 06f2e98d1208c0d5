"""The node's wallet: buys tickets by blind issuance, keeps them, and spends them at a data center.

Tickets are bought for the generic challenge of their issuer (no origin, no redemption context),
so any data center that takes that issuer's tickets accepts them, and a node that moves keeps its
unspent ones. The issuer sees only blinded messages; the data center sees only finalized tokens.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloudpal.errors import CloudPalError, Exhausted, HostError, InvalidInput, NotFound
from cloudpal.pay import tokens
from cloudpal.pay.dc import NODE_HEADER, PAY_PATH, fetch_directory, issuer_name_of
from cloudpal.state import Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS wallet_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS wallet_tickets (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        issuer TEXT NOT NULL,
        token_key_id BLOB NOT NULL,
        challenge_digest BLOB NOT NULL,
        token BLOB NOT NULL UNIQUE,
        bought REAL NOT NULL,
        spent REAL,
        spent_at TEXT)""",
]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Paid:
    spent: int
    balance_seconds: int | None
    refused: list[str]


def _http(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None,
          timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read(1 << 20)
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read(1 << 20)
    except (OSError, ValueError) as exc:
        raise HostError(f"cannot reach {url}: {exc}") from None


def _error_text(body: bytes, status: int) -> str:
    try:
        obj = json.loads(body)
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            return str(obj["error"])[:300]
    except ValueError:
        pass
    return f"HTTP {status}"


class Wallet:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("wallet", SCHEMA)

    def node_id(self) -> str:
        """The name this node is credited under at data centers (random, made once)."""
        row = self.db.conn.execute("SELECT value FROM wallet_meta WHERE key='node_id'").fetchone()
        if row:
            return str(row[0])
        with self.db.transaction() as c:
            row = c.execute("SELECT value FROM wallet_meta WHERE key='node_id'").fetchone()
            if row:
                return str(row[0])
            value = "node-" + secrets.token_hex(8)
            c.execute("INSERT INTO wallet_meta VALUES ('node_id', ?)", (value,))
            return value

    # ---- buying -------------------------------------------------------------------------

    def buy(self, issuer_url: str, count: int, account: str, progress: Progress | None = None) -> int:
        """Run `count` blind issuances; each finalized token is stored as soon as it verifies."""
        if count < 1 or count > 10000:
            raise InvalidInput("buy between 1 and 10000 tickets at a time")
        name = issuer_name_of(issuer_url)
        directory = fetch_directory(issuer_url)
        keys = directory["token-keys"]
        if not keys:
            raise Exhausted("the issuer publishes no token key")
        now = time.time()
        usable = [k for k in keys if (k.get("not-before") or 0) <= now + 300]
        entry = max(usable or keys, key=lambda k: k.get("not-before") or 0)
        pk = tokens.load_public_key_spki(entry["spki"])
        challenge = tokens.TokenChallenge(tokens.TOKEN_TYPE_BLIND_RSA, name, b"", ())
        request_uri = directory["issuer-request-uri"]
        bought = 0
        for _ in range(count):
            request, state = tokens.begin_issuance(pk, challenge)
            status, _, body = _http(request_uri, data=request.encode(), headers={
                "Content-Type": tokens.MEDIA_REQUEST, "Accept": tokens.MEDIA_RESPONSE,
                "Authorization": f"Bearer {account}"})
            if status != 200:
                if bought:
                    raise CloudPalError(f"bought {bought} of {count} tickets, then the issuer refused: "
                                        f"{_error_text(body, status)}")
                raise CloudPalError(f"the issuer refused: {_error_text(body, status)}")
            token = tokens.finish_issuance(state, tokens.TokenResponse.decode(body, len(request.blinded_msg)))
            with self.db.transaction() as c:
                c.execute("INSERT INTO wallet_tickets(issuer, token_key_id, challenge_digest, token, bought)"
                          " VALUES (?,?,?,?,?)",
                          (name, token.token_key_id, token.challenge_digest, token.encode(), time.time()))
            bought += 1
            if progress:
                progress(bought, count)
        return bought

    def tickets(self, include_spent: bool = True) -> list[dict[str, Any]]:
        rows = self.db.conn.execute(
            "SELECT id, issuer, token_key_id, bought, spent, spent_at FROM wallet_tickets"
            + ("" if include_spent else " WHERE spent IS NULL") + " ORDER BY id").fetchall()
        return [{"id": r["id"], "issuer": r["issuer"], "key": bytes(r["token_key_id"]).hex()[:16],
                 "bought": r["bought"], "spent": r["spent"], "spent_at": r["spent_at"]} for r in rows]

    # ---- paying ---------------------------------------------------------------------------

    def pay(self, dc_url: str, count: int = 1) -> Paid:
        """Answer the data center's PrivateToken challenge with `count` unspent tickets."""
        if count < 1:
            raise InvalidInput("pay at least one ticket")
        url = dc_url.rstrip("/") + PAY_PATH
        status, headers, body = _http(url)
        if status != 401 or "www-authenticate" not in headers:
            raise CloudPalError(f"{dc_url} did not ask for a PrivateToken (HTTP {status})")
        offered = tokens.parse_challenge_header(headers["www-authenticate"])
        digests = {ch.digest() for ch, _ in offered}
        key_ids = {tokens.token_key_id(tokens.load_public_key_spki(spki)) for _, spki in offered if spki}
        node = self.node_id()
        spent, balance = 0, None
        refused: list[str] = []
        while spent < count:
            rows = self.db.conn.execute(
                "SELECT id, token, challenge_digest, token_key_id FROM wallet_tickets WHERE spent IS NULL"
                " ORDER BY id").fetchall()
            row = next((r for r in rows if bytes(r["challenge_digest"]) in digests
                        and (not key_ids or bytes(r["token_key_id"]) in key_ids)), None)
            if row is None:
                if spent == 0 and not refused:
                    raise NotFound(f"no unspent ticket this data center accepts ({len(rows)} unspent)")
                break
            token = tokens.Token.decode(bytes(row["token"]))
            status, _, body = _http(url, data=b"{}", headers={
                "Authorization": tokens.format_authorization(token), NODE_HEADER: node,
                "Content-Type": "application/json"})
            text = _error_text(body, status)
            if status == 200 or "already spent" in text:  # either way it is gone: never offer it again
                with self.db.transaction() as c:
                    c.execute("UPDATE wallet_tickets SET spent=?, spent_at=? WHERE id=?",
                              (time.time(), dc_url, row["id"]))
            if status == 200:
                spent += 1
                balance = int(json.loads(body)["balance_seconds"])
            elif "already spent" in text:
                refused.append(text)
            else:  # the ticket stays in the wallet; the data center said why
                raise CloudPalError(f"{dc_url} refused a ticket after {spent} paid: {text}")
        return Paid(spent, balance, refused)


def migrate(db: Database) -> None:
    db.migrate("wallet", SCHEMA)
