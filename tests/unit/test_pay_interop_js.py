"""cloudpal.pay.tokens against the standard Privacy Pass library, @cloudflare/privacypass-ts 0.8.1.

js/privacypass.mjs wraps the library (client, issuer, verify, keyinfo, mint). Checked here, with no
CloudPal HTTP service involved (the origin and issuer stubs below are a few lines over tokens.py):
  * CloudPal-made tokens verify with the library, library-made tokens verify with CloudPal, and
    CloudPal's issuer signature equals the library's for the same key and request;
  * token keys (SPKI with the RSASSA-PSS OID) and token_key_id are byte-identical both ways;
  * CloudPal's client issues tokens from the library's HTTP issuer (urllib), including an
    RFC 9578 known answer with the RFC's own key loaded into the JS issuer;
  * the library's HTTP client runs the whole RFC 9577 flow against origins that challenge and
    verify with tokens.py, with tokens from the JS issuer and from a tokens.py issuer.
Missing node or the npm package fails the tests (never skips): run `make js`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cloudpal.pay import tokens as t

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "js"
CLI = JS / "privacypass.mjs"
PACKAGE = JS / "node_modules" / "@cloudflare" / "privacypass-ts" / "package.json"
VECTORS = json.loads(Path(__file__).with_name("pay_token_vectors.json").read_text())
H = bytes.fromhex


def require_privacypass() -> None:
    """Fail (never skip) when node or the pinned library is missing."""
    if shutil.which("node") is None:
        pytest.fail("node is not installed: install Node.js 20 and run `make js`")
    if not PACKAGE.exists():
        pytest.fail("@cloudflare/privacypass-ts is not installed: run `make js` (npm ci in js/)")
    version = json.loads(PACKAGE.read_text())["version"]
    if version != "0.8.1":
        pytest.fail(f"js/ has @cloudflare/privacypass-ts {version}, the tests pin 0.8.1: run `make js`")


@pytest.fixture(autouse=True)
def _js_present() -> None:
    require_privacypass()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def node(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["node", str(CLI), *args], cwd=JS, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"privacypass.mjs {args[0]} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


def js_verify(spki: bytes, token: bytes, challenge: bytes) -> dict[str, Any]:
    proc = node("verify", "--token-key", b64(spki), "--token", b64(token), "--challenge", b64(challenge),
                check=False)
    result: dict[str, Any] = json.loads(proc.stdout)
    assert proc.returncode == (0 if result["valid"] else 1), proc.stderr
    return result


@cache
def key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def pem_file(sk: rsa.RSAPrivateKey, path: Path) -> Path:
    path.write_bytes(sk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return path


def rfc_key() -> rsa.RSAPrivateKey:
    sk = serialization.load_pem_private_key(H(VECTORS["skS"]), None)
    assert isinstance(sk, rsa.RSAPrivateKey)
    return sk


CHALLENGES = [
    t.TokenChallenge(2, "issuer.example", b"", ("origin.example",)),
    t.TokenChallenge(2, "issuer.example", bytes(range(32)), ()),
    t.TokenChallenge(2, "127.0.0.1:8443", b"\xff" * 32, ("foo.example", "bar.example", "baz.example")),
    t.TokenChallenge(2, "issuer.example", b"", ()),
]


# --------------------------------------------------------------------------- JS issuer process


@dataclass
class JsIssuer:
    url: str
    token_key: bytes
    token_key_id: bytes
    proc: subprocess.Popen[str]


@contextlib.contextmanager
def js_issuer(*extra: str) -> Iterator[JsIssuer]:
    proc = subprocess.Popen(["node", str(CLI), "issuer", "--port", "0", *extra], cwd=JS, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        seen: dict[str, str] = {}
        while "ready" not in seen:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"the JS issuer exited early: {proc.stderr.read() if proc.stderr else ''}")
            name, _, value = line.strip().partition(" ")
            seen[name] = value
        yield JsIssuer(f"http://127.0.0.1:{seen['ready']}", t.b64url_decode(seen["token-key"]),
                       H(seen["token-key-id"]), proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def issuer() -> Iterator[JsIssuer]:
    require_privacypass()
    with js_issuer() as running:
        yield running


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def issue_via_http(directory_url: str, challenge: t.TokenChallenge, **pin: Any) -> t.Token:
    """CloudPal's client side against an HTTP issuer: directory, TokenRequest, TokenResponse."""
    status, body = http(directory_url + t.WELL_KNOWN_DIRECTORY)
    assert status == 200, body
    directory = t.parse_directory(body, base_url=directory_url)
    pk = t.load_public_key_spki(directory["token-keys"][0]["spki"])
    request, state = t.begin_issuance(pk, challenge, **pin)
    status, body = http(directory["issuer-request-uri"], request.encode(),
                        {"Content-Type": t.MEDIA_REQUEST, "Accept": t.MEDIA_RESPONSE})
    assert status == 200, body
    return t.finish_issuance(state, t.TokenResponse.decode(body, len(request.blinded_msg)))


# --------------------------------------------------------------------------- (a) tokens both ways


@pytest.mark.parametrize("challenge", CHALLENGES, ids=["origin", "context", "origins", "cross-origin"])
def test_cloudpal_tokens_verify_with_the_library(challenge: t.TokenChallenge) -> None:
    sk = key()
    spki = t.public_key_spki(sk.public_key())
    request, state = t.begin_issuance(sk.public_key(), challenge)
    token = t.finish_issuance(state, t.issue(sk, request)).encode()
    assert js_verify(spki, token, challenge.encode()) == {"valid": True}
    flipped = token[:-1] + bytes([token[-1] ^ 1])
    assert js_verify(spki, flipped, challenge.encode())["reason"] == "the signature does not verify"
    other = CHALLENGES[(CHALLENGES.index(challenge) + 1) % len(CHALLENGES)]
    assert js_verify(spki, token, other.encode())["reason"] == "the token answers another challenge"
    other_key = t.public_key_spki(rfc_key().public_key())
    reason = js_verify(other_key, token, challenge.encode())["reason"]
    assert reason == "the token was issued under another token key"


@pytest.mark.parametrize("challenge", CHALLENGES, ids=["origin", "context", "origins", "cross-origin"])
def test_library_tokens_verify_with_cloudpal(challenge: t.TokenChallenge, tmp_path: Path) -> None:
    sk = key()
    minted = json.loads(node("mint", "--challenge", b64(challenge.encode()),
                             "--private-key", str(pem_file(sk, tmp_path / "key.pem"))).stdout)
    assert minted["verified"] is True
    pk = sk.public_key()
    assert t.b64url_decode(minted["tokenKey"]) == t.public_key_spki(pk)
    # The library's Authorization value (unquoted, padded) parses; its token verifies here.
    token = t.parse_authorization(minted["authorization"])
    assert token.encode() == t.b64url_decode(minted["token"])
    t.verify_token(token, {t.token_key_id(pk): pk}, [challenge.digest()])
    with pytest.raises(t.WrongChallenge):
        t.verify_token(token, {t.token_key_id(pk): pk}, [t.TokenChallenge(2, "x.example").digest()])
    # Blind RSA signing is deterministic: CloudPal's issuer answers the library's request identically.
    request = t.TokenRequest.decode(t.b64url_decode(minted["tokenRequest"]), 256)
    assert request.truncated_token_key_id == t.token_key_id(pk)[-1]
    assert t.issue(sk, request).encode() == t.b64url_decode(minted["tokenResponse"])


def test_library_minted_with_its_own_key() -> None:
    challenge = CHALLENGES[0]
    minted = json.loads(node("mint", "--challenge", b64(challenge.encode())).stdout)
    pk = t.load_public_key_spki(t.b64url_decode(minted["tokenKey"]))
    token = t.Token.decode(t.b64url_decode(minted["token"]))
    t.verify_token(token, {t.token_key_id(pk): pk}, [challenge.digest()])


# --------------------------------------------------------------------------- (b) token keys


@pytest.mark.parametrize("form", ["pss", "rsaEncryption"])
def test_token_key_encoding_matches_the_library(form: str) -> None:
    for sk in (key(), rfc_key()):
        pk = sk.public_key()
        spki = t.public_key_spki(pk) if form == "pss" else pk.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        info = json.loads(node("keyinfo", "--token-key", b64(spki)).stdout)
        assert t.b64url_decode(info["tokenKey"]) == t.public_key_spki(pk)
        assert H(info["tokenKeyId"]) == t.token_key_id(pk)
    assert t.public_key_spki(rfc_key().public_key()) == H(VECTORS["pkS"])


def test_library_generated_key_reencodes_identically(issuer: JsIssuer) -> None:
    pk = t.load_public_key_spki(issuer.token_key)
    assert t.public_key_spki(pk) == issuer.token_key
    assert t.token_key_id(pk) == issuer.token_key_id


# --------------------------------------------------------------------------- (c) CloudPal client, JS issuer


def test_cloudpal_client_against_the_js_issuer(issuer: JsIssuer) -> None:
    pk = t.load_public_key_spki(issuer.token_key)
    keys = {t.token_key_id(pk): pk}
    seen = set()
    for challenge in CHALLENGES:
        token = issue_via_http(issuer.url, challenge)
        assert token.token_key_id == issuer.token_key_id
        t.verify_token(token, keys, [challenge.digest()])
        assert js_verify(issuer.token_key, token.encode(), challenge.encode())["valid"] is True
        seen.add(token.nonce)
    assert len(seen) == len(CHALLENGES)
    status, body = http(issuer.url + "/stats")
    assert status == 200 and json.loads(body)["issued"] >= len(CHALLENGES)


def test_js_issuer_refuses_what_cloudpal_would(issuer: JsIssuer) -> None:
    pk = t.load_public_key_spki(issuer.token_key)
    request, _ = t.begin_issuance(pk, CHALLENGES[0])
    wrong_key = t.TokenRequest(2, request.truncated_token_key_id ^ 0xFF, request.blinded_msg)
    headers = {"Content-Type": t.MEDIA_REQUEST}
    assert http(issuer.url + "/token-request", wrong_key.encode(), headers)[0] == 400
    assert http(issuer.url + "/token-request", request.encode()[:-1], headers)[0] == 400
    assert http(issuer.url + "/token-request", request.encode(), {"Content-Type": "text/plain"})[0] == 415


def test_rfc9578_known_answer_through_the_js_issuer(tmp_path: Path) -> None:
    """The RFC's own issuer key in the JS issuer: CloudPal's pinned request gets the RFC's response."""
    with js_issuer("--private-key", str(pem_file(rfc_key(), tmp_path / "rfc.pem"))) as running:
        assert running.token_key == H(VECTORS["pkS"])
        for vector in VECTORS["vectors"]:
            challenge = t.TokenChallenge.decode(H(vector["token_challenge"]))
            token = issue_via_http(running.url, challenge, nonce=H(vector["nonce"]), salt=H(vector["salt"]),
                                   r=int(vector["blind"], 16))
            assert token.encode() == H(vector["token"])


# --------------------------------------------------------------------------- the library's HTTP client


Reply = tuple[int, dict[str, str], bytes]
Handle = Callable[[str, str, dict[str, str], bytes], Reply]


@dataclass
class Stub:
    """A tiny HTTP server in a thread; `handle(method, path, headers, body) -> (status, headers, body)`."""

    handle: Handle
    server: ThreadingHTTPServer = field(init=False)

    def __post_init__(self) -> None:
        handle = self.handle

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, out_headers, out = handle(self.command, self.path, headers, body)
                self.send_response(status)
                for name, value in out_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = _serve

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def stub(handle: Handle) -> Iterator[Stub]:
    server = Stub(handle)
    try:
        yield server
    finally:
        server.close()


def origin_stub(spki: bytes, issuer_name: str) -> Handle:
    """An origin that challenges and verifies with tokens.py only (two challenges, as a real one might)."""
    pk = t.load_public_key_spki(spki)
    own = t.TokenChallenge(2, issuer_name, b"", ("127.0.0.1",))
    generic = t.TokenChallenge(2, issuer_name, b"", ())
    spent: set[bytes] = set()
    lock = threading.Lock()

    def handle(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        header = t.format_challenge_header([(own, spki), (generic, spki)], max_age=60)
        challenge = {"WWW-Authenticate": header}
        auth = headers.get("authorization")
        if auth is None:
            return 401, challenge, b'{"error": "payment required"}'
        try:
            token = t.parse_authorization(auth)
            t.verify_token(token, {t.token_key_id(pk): pk}, [own.digest(), generic.digest()])
        except t.TokenError as exc:
            return 401, challenge, json.dumps({"error": str(exc)}).encode()
        with lock:
            if token.nonce in spent:
                return 401, challenge, b'{"error": "already spent"}'
            spent.add(token.nonce)
        return 200, {"Content-Type": "application/json"}, json.dumps({"spent": len(spent)}).encode()

    return handle


def issuer_stub(sk: rsa.RSAPrivateKey, secret: str) -> Handle:
    """An issuer that signs with tokens.issue behind a bearer secret."""

    def handle(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        if method == "GET" and path == t.WELL_KNOWN_DIRECTORY:
            directory = t.build_directory("/token-request", [(sk.public_key(), 1700000000)])
            return 200, {"Content-Type": t.MEDIA_DIRECTORY}, json.dumps(directory).encode()
        if method != "POST" or path != "/token-request":
            return 404, {}, b""
        if headers.get("authorization") != f"Bearer {secret}":
            return 401, {}, b"no account"
        if headers.get("content-type") != t.MEDIA_REQUEST:
            return 415, {}, b""
        try:
            response = t.issue(sk, t.TokenRequest.decode(body, 256))
        except t.TokenError as exc:
            return 400, {}, str(exc).encode()
        return 200, {"Content-Type": t.MEDIA_RESPONSE}, response.encode()

    return handle


def client_lines(*args: str) -> tuple[int, list[dict[str, Any]]]:
    proc = node("client", *args, check=False)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines


@pytest.mark.parametrize("quoted", [False, True])
def test_library_client_js_issuer_cloudpal_origin(issuer: JsIssuer, quoted: bool) -> None:
    name = issuer.url.removeprefix("http://")
    with stub(origin_stub(issuer.token_key, name)) as origin:
        code, lines = client_lines("--issuer", issuer.url, "--origin", origin.url + "/paid", "--count", "3",
                                   *(["--quoted"] if quoted else []))
    assert code == 0, lines
    assert [(line["challengeStatus"], line["status"]) for line in lines] == [(401, 200)] * 3
    assert [json.loads(line["body"])["spent"] for line in lines] == [1, 2, 3]
    assert {line["tokenKeyId"] for line in lines} == {issuer.token_key_id.hex()}


def test_library_client_cloudpal_issuer_and_origin() -> None:
    sk = key()
    spki = t.public_key_spki(sk.public_key())
    with stub(issuer_stub(sk, "s3cret")) as iss, \
            stub(origin_stub(spki, iss.url.removeprefix("http://"))) as origin:
        code, lines = client_lines("--issuer", iss.url, "--origin", origin.url, "--count", "2",
                                   "--header", "Authorization: Bearer s3cret")
        assert code == 0, lines
        assert [line["status"] for line in lines] == [200, 200]
        code, lines = client_lines("--issuer", iss.url, "--origin", origin.url,
                                   "--header", "Authorization: Bearer wrong")
        assert code == 1 and "401" in lines[0]["error"] and "status" not in lines[0]
