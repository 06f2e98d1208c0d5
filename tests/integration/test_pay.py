"""Prepaid tickets end to end over real HTTP on loopback: a real issuer, a real data center and the
node's wallet, each its own `cloudpal` process and home; hostile tokens; 100 concurrent replays;
what each party stores."""

from __future__ import annotations

import base64
import http.client
import json
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloudpal.pay import tokens

CLOUDPAL = str(Path(sys.executable).parent / "cloudpal")


class Service:
    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        self.log = home.with_suffix(".log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([CLOUDPAL, "--home", str(home), *args], stdout=log,
                                         stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.log.read_text()
            m = re.search(r"listening on (http://\S+)", text)
            if m and "ready" in text:
                self.url = m.group(1)
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{args[0]} exited: {text}")
            time.sleep(0.05)
        raise AssertionError(f"{args[0]} did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([CLOUDPAL, "--home", str(home), *args], capture_output=True, text=True,
                         timeout=120, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"cloudpal {' '.join(args)}: {res.stdout}{res.stderr}")
    return res


@dataclass
class Pay:
    work: Path
    issuer: Service
    dc: Service
    node: Path
    account: str

    def wallet_tokens(self, spent: bool = False) -> list[bytes]:
        with sqlite3.connect(self.node / "state.db") as db:
            rows = db.execute("SELECT token FROM wallet_tickets WHERE spent IS "
                              + ("NOT NULL" if spent else "NULL") + " ORDER BY id").fetchall()
        return [bytes(r[0]) for r in rows]

    def credits(self, node: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.dc.url}/credits/{node}", timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def redeem(self, authorization: str, node: str = "tester") -> tuple[int, str]:
        req = urllib.request.Request(f"{self.dc.url}/pay", data=b"{}", method="POST", headers={
            "Authorization": authorization, "CloudPal-Node": node})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def pay() -> Iterator[Pay]:
    work = Path(tempfile.mkdtemp(prefix="cloudpal-pay-"))
    issuer = Service(work / "issuer", "issuer", "serve", "--listen", "127.0.0.1:0")
    services = [issuer]
    try:
        account = cli(work / "issuer", "issuer", "account", "add", "alice", "--credits", "40").stdout.strip()
        dc = Service(work / "dc", "dc", "serve", "--name", "dc1.example", "--issuer", issuer.url,
                     "--listen", "127.0.0.1:0", "--refresh", "1s")
        services.append(dc)
        p = Pay(work, issuer, dc, work / "node", account)
        yield p
        services.append(p.dc)  # a test may have restarted it
    finally:
        for s in services:
            s.stop()


def _node_id(p: Pay) -> str:
    with sqlite3.connect(p.node / "state.db") as db:
        return str(db.execute("SELECT value FROM wallet_meta WHERE key='node_id'").fetchone()[0])


def test_buy_then_pay(pay: Pay) -> None:
    out = cli(pay.node, "ticket", "buy", "6", "--issuer", pay.issuer.url, "--account", pay.account).stdout
    assert "bought 6 ticket(s)" in out and "6 unspent" in out
    listed = json.loads(cli(pay.node, "ticket", "ls", "--json").stdout)
    assert len(listed) == 6 and all(t["spent"] is None for t in listed)
    out = cli(pay.node, "ticket", "pay", "2", "--dc", pay.dc.url).stdout
    assert "paid 2 ticket(s); 48 h" in out
    assert len(pay.wallet_tokens()) == 4 and len(pay.wallet_tokens(spent=True)) == 2
    node = _node_id(pay)
    assert pay.credits(node)["tickets"] == 2
    assert pay.credits(node) == {"node": node, "seconds": 2 * 86400, "tickets": 2}
    # moving to another data center of the same issuer: the unspent tickets still pay there
    dc2 = Service(pay.work / "dc2", "dc", "serve", "--name", "dc2.example", "--issuer", pay.issuer.url,
                  "--listen", "127.0.0.1:0")
    try:
        assert "paid 1 ticket(s); 24 h" in cli(pay.node, "ticket", "pay", "--dc", dc2.url).stdout
    finally:
        dc2.stop()
    assert len(pay.wallet_tokens()) == 3
    accounts = cli(pay.work / "issuer", "issuer", "account", "ls").stdout
    assert "alice: 34 left, 6 issued" in accounts
    # a spent ticket is refused; nothing is credited twice
    status, body = pay.redeem(tokens.format_authorization(tokens.Token.decode(pay.wallet_tokens(True)[0])))
    assert status == 401 and "already spent" in body
    assert pay.credits(node)["tickets"] == 2


def test_one_token_redeemed_100_times_at_once_counts_once(pay: Pay) -> None:
    token = tokens.Token.decode(pay.wallet_tokens()[0])
    auth = tokens.format_authorization(token)
    before = pay.credits("racer")["tickets"]
    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(lambda _: pay.redeem(auth, "racer"), range(100)))
    assert sorted(s for s, _ in results).count(200) == 1, results[:3]
    assert all("already spent" in b for s, b in results if s != 200)
    assert pay.credits("racer")["tickets"] == before + 1


def _bought_for(pay: Pay, challenge: tokens.TokenChallenge) -> tokens.Token:
    with urllib.request.urlopen(pay.issuer.url + "/.well-known/private-token-issuer-directory") as r:
        directory = tokens.parse_directory(r.read())
    entry = max(directory["token-keys"], key=lambda k: k.get("not-before") or 0)
    pk = tokens.load_public_key_spki(entry["spki"])
    request, state = tokens.begin_issuance(pk, challenge)
    req = urllib.request.Request(directory["issuer-request-uri"], data=request.encode(), method="POST",
                                 headers={"Content-Type": tokens.MEDIA_REQUEST,
                                          "Authorization": f"Bearer {pay.account}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read()
    return tokens.finish_issuance(state, tokens.TokenResponse.decode(body, len(request.blinded_msg)))


def test_hostile_tokens_are_refused_and_never_counted(pay: Pay) -> None:
    issuer_name = pay.issuer.url.split("//")[1]
    good = tokens.Token.decode(pay.wallet_tokens()[0])
    before = pay.credits("mallory")
    cases: dict[str, str] = {}
    tampered = tokens.Token(good.token_type, good.nonce, good.challenge_digest, good.token_key_id,
                            good.authenticator[:-1] + bytes([good.authenticator[-1] ^ 1]))
    cases["tampered authenticator"] = tokens.format_authorization(tampered)
    other_nonce = tokens.Token(good.token_type, bytes(32), good.challenge_digest, good.token_key_id,
                               good.authenticator)
    cases["tampered nonce"] = tokens.format_authorization(other_nonce)
    unknown = tokens.Token(good.token_type, good.nonce, good.challenge_digest, bytes(32), good.authenticator)
    cases["unknown key"] = tokens.format_authorization(unknown)
    elsewhere = _bought_for(pay, tokens.TokenChallenge(2, issuer_name, b"", ("dc2.example",)))
    cases["another data center"] = tokens.format_authorization(elsewhere)
    cases["bad base64"] = 'PrivateToken token="!!!not base64!!!"'
    cases["short structure"] = 'PrivateToken token="' + base64.urlsafe_b64encode(b"\0\2abc").decode() + '"'
    cases["wrong scheme"] = "Bearer abc"
    cases["empty"] = "PrivateToken token="
    for what, auth in cases.items():
        status, body = pay.redeem(auth, "mallory")
        assert status in (400, 401), (what, status, body)
        assert json.loads(body)["error"], what
    # the token for the other data center is valid there, just not here
    assert pay.credits("mallory") == before
    # a truncated request: Content-Length promises more than arrives
    host, port = pay.dc.url.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\nAuthorization: "
                  + cases["tampered authenticator"].encode()[:40])
        s.shutdown(socket.SHUT_WR)
        s.recv(1000)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/pay")
    assert conn.getresponse().status == 401  # still serving
    assert pay.credits("mallory") == before


def test_an_expired_issuer_key_is_refused(pay: Pay) -> None:
    cli(pay.work / "issuer", "issuer", "rotate", "--lifetime", "4s")
    # the running issuer reads keys from its database at each request
    time.sleep(1.5)  # let the data center's 1 s refresh see the new key
    cli(pay.node, "ticket", "buy", "1", "--issuer", pay.issuer.url, "--account", pay.account)
    short = tokens.Token.decode(pay.wallet_tokens()[-1])
    time.sleep(5)
    status, body = pay.redeem(tokens.format_authorization(short), "late")
    assert status == 401 and "key" in json.loads(body)["error"], body
    assert pay.credits("late")["tickets"] == 0
    # older keys stay valid: the tickets bought before the rotation still pay
    out = cli(pay.node, "ticket", "pay", "1", "--dc", pay.dc.url).stdout
    assert "paid 1 ticket(s)" in out


def _cells(db_path: Path, skip: tuple[str, ...]) -> set[bytes]:
    out: set[bytes] = set()
    with sqlite3.connect(db_path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for t in tables:
            if t in skip or t in ("schema", "sqlite_sequence"):
                continue
            for row in db.execute(f"SELECT * FROM {t}"):  # table names come from sqlite itself
                for v in row:
                    if isinstance(v, bytes | str) and len(v) >= 8:
                        out.add(v if isinstance(v, bytes) else v.encode())
    return out


def test_issuer_and_data_center_share_nothing_about_a_ticket(pay: Pay) -> None:
    issuer_db = pay.work / "issuer" / "state.db"
    dc_db = pay.work / "dc" / "state.db"
    # public keys are meant to be shared; everything else must not match
    issuer_cells = _cells(issuer_db, skip=("issuer_keys",))
    dc_cells = _cells(dc_db, skip=("dc_keys",))
    assert not issuer_cells & dc_cells
    issuer_bytes = issuer_db.read_bytes() + pay.issuer.log.read_bytes()
    for wal in issuer_db.parent.glob("state.db-wal"):
        issuer_bytes += wal.read_bytes()
    for raw in pay.wallet_tokens(spent=True):
        tok = tokens.Token.decode(raw)
        for piece in (tok.nonce, tok.authenticator, tok.nonce.hex().encode(), raw):
            assert piece not in issuer_bytes
    dc_bytes = dc_db.read_bytes() + pay.dc.log.read_bytes()
    assert b"alice" not in dc_bytes and pay.account.encode() not in dc_bytes


# ---- interop with the standard Privacy Pass client and issuer (@cloudflare/privacypass-ts 0.8.1)

JS = Path(__file__).resolve().parents[2] / "js"


def _require_js() -> None:
    if not shutil.which("node") or not (JS / "node_modules" / "@cloudflare" / "privacypass-ts").exists():
        pytest.fail("node or @cloudflare/privacypass-ts is missing: run `make js`", pytrace=False)


def test_the_standard_client_buys_from_cloudpal_and_pays_cloudpal(pay: Pay) -> None:
    _require_js()
    before = pay.credits("anonymous")["tickets"]
    res = subprocess.run(["node", str(JS / "privacypass.mjs"), "client", "--issuer", pay.issuer.url,
                          "--origin", pay.dc.url + "/pay", "--header", f"Authorization: Bearer {pay.account}",
                          "--count", "3"], cwd=JS, capture_output=True, text=True, timeout=120, check=False)
    attempts = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert res.returncode == 0 and len(attempts) == 3, res.stdout + res.stderr
    assert all(a["status"] == 200 for a in attempts), attempts
    assert pay.credits("anonymous")["tickets"] == before + 3


def test_the_wallet_buys_from_the_standard_issuer(pay: Pay) -> None:
    _require_js()
    proc = subprocess.Popen(["node", str(JS / "privacypass.mjs"), "issuer", "--port", "0"], cwd=JS,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    services: list[Service] = []
    try:
        assert proc.stdout is not None
        port = ""
        while not port:
            line = proc.stdout.readline()
            assert line, f"the JS issuer exited: {proc.stderr.read() if proc.stderr else ''}"
            if line.startswith("ready "):
                port = line.split()[1]
        js_url = f"http://127.0.0.1:{port}"
        dc = Service(pay.work / "dc-js", "dc", "serve", "--name", "dc3.example", "--issuer", js_url,
                     "--listen", "127.0.0.1:0")
        services.append(dc)
        node = pay.work / "node-js"
        out = cli(node, "ticket", "buy", "2", "--issuer", js_url, "--account", "unused").stdout
        assert "bought 2 ticket(s)" in out
        out = cli(node, "ticket", "pay", "2", "--dc", dc.url).stdout
        assert "paid 2 ticket(s); 48 h" in out
        # the CloudPal data center of the other issuer does not take them
        res = cli(pay.node, "ticket", "pay", "1", "--dc", dc.url, check=False)
        assert res.returncode == 2 and "no unspent ticket" in res.stderr
    finally:
        for s in services:
            s.stop()
        proc.terminate()
        proc.wait(10)


def test_the_data_center_verifies_offline(pay: Pay) -> None:
    """With the issuer gone, a restarted data center still takes tickets with its cached keys."""
    pay.issuer.stop()
    pay.dc.stop()
    pay.dc = Service(pay.work / "dc", "dc", "serve", "--name", "dc1.example", "--issuer", pay.issuer.url,
                     "--listen", "127.0.0.1:0")
    assert "cached key" in pay.dc.log.read_text()
    assert "paid 1 ticket(s)" in cli(pay.node, "ticket", "pay", "--dc", pay.dc.url).stdout
