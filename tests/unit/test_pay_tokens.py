"""cloudpal.pay.tokens: RFC 9578 type 0x0002 issuance and the RFC 9577 PrivateToken scheme.

Known answers come from the RFCs themselves (tests/unit/pay_token_vectors.json): all five RFC 9578
Appendix A.2 vectors (issuer key, SPKI, challenge, nonce, blind, salt, request, response, token),
the five RFC 9577 Appendix A.1 challenge/AuthenticatorInput vectors and both A.2 header vectors.
Every decoder is then fuzzed: garbage gives a TokenError, never anything else.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudpal.errors import InvalidInput
from cloudpal.pay import tokens as t

VECTORS = json.loads(Path(__file__).with_name("pay_token_vectors.json").read_text())
H = bytes.fromhex
CHALLENGE = t.TokenChallenge(t.TOKEN_TYPE_BLIND_RSA, "issuer.example", b"", ("origin.example",))
BAD_CONTEXT = b"\x00\x02\x00\x01i\x05abcde\x00\x00"  # a challenge with a 5-byte redemption context


@cache
def rfc_key() -> rsa.RSAPrivateKey:
    sk = serialization.load_pem_private_key(H(VECTORS["skS"]), None)
    assert isinstance(sk, rsa.RSAPrivateKey)
    return sk


@cache
def key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_token(sk: rsa.RSAPrivateKey, challenge: t.TokenChallenge = CHALLENGE) -> t.Token:
    request, state = t.begin_issuance(sk.public_key(), challenge)
    return t.finish_issuance(state, t.issue(sk, request))


def b64(data: bytes, pad: bool = True) -> str:
    text = base64.urlsafe_b64encode(data).decode()
    return text if pad else text.rstrip("=")


# --------------------------------------------------------------------------- RFC known answers


def test_rfc9578_token_key_spki_and_id() -> None:
    pk = rfc_key().public_key()
    assert t.public_key_spki(pk) == H(VECTORS["pkS"])
    assert t.load_public_key_spki(H(VECTORS["pkS"])).public_numbers() == pk.public_numbers()
    assert t.token_key_id(pk).hex() == VECTORS["rfc9577_structures"][0]["token_key_id"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=[f"A.2-{i}" for i in range(1, 6)])
def test_rfc9578_blind_rsa_vectors(vector: dict[str, str]) -> None:
    sk = rfc_key()
    pk = t.load_public_key_spki(H(VECTORS["pkS"]))
    challenge = t.TokenChallenge.decode(H(vector["token_challenge"]))
    assert challenge.encode() == H(vector["token_challenge"])

    request, state = t.begin_issuance(pk, challenge, nonce=H(vector["nonce"]), salt=H(vector["salt"]),
                                      r=int(vector["blind"], 16))
    assert request.encode() == H(vector["token_request"])
    assert t.TokenRequest.decode(H(vector["token_request"]), 256) == request

    response = t.issue(sk, request)
    assert response.encode() == H(vector["token_response"])
    token = t.finish_issuance(state, t.TokenResponse.decode(H(vector["token_response"]), 256))
    assert token.encode() == H(vector["token"])
    assert t.Token.decode(H(vector["token"])) == token
    t.verify_token(token, {t.token_key_id(pk): pk}, [challenge.digest()])


@pytest.mark.parametrize("vector", VECTORS["rfc9577_structures"], ids=[f"A.1-{i}" for i in range(1, 6)])
def test_rfc9577_challenge_and_authenticator_input(vector: dict[str, str]) -> None:
    origins = H(vector["origin_info"]).decode()
    challenge = t.TokenChallenge(t.TOKEN_TYPE_BLIND_RSA, H(vector["issuer_name"]).decode(),
                                 H(vector["redemption_context"]),
                                 tuple(origins.split(",")) if origins else ())
    assert t.TokenChallenge.decode(challenge.encode()) == challenge
    token = t.Token(t.TOKEN_TYPE_BLIND_RSA, H(vector["nonce"]), challenge.digest(), H(vector["token_key_id"]),
                    bytes(256))
    assert token.token_input() == H(vector["token_authenticator_input"])


@pytest.mark.parametrize("vector", VECTORS["rfc9577_headers"], ids=["A.2-1", "A.2-2"])
def test_rfc9577_header_vectors(vector: dict[str, Any]) -> None:
    parsed = t.parse_challenge_header(vector["header"])
    # The second header also offers a VOPRF (type 1) challenge: not ours, so ignored.
    assert [(c.encode().hex(), k.hex()) for c, k in parsed] == [(c, vector["token_key"])
                                                                for c in vector["challenges"]]
    formatted = t.format_challenge_header(parsed, max_age=vector["max_age"])
    assert t.parse_challenge_header(formatted) == parsed
    assert formatted == (f'PrivateToken challenge="{b64(parsed[0][0].encode())}", '
                         f'token-key="{b64(parsed[0][1])}", max-age=10')


# --------------------------------------------------------------------------- issuance and verification


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_issuance_round_trip_every_key_size(bits: int) -> None:
    sk = key(bits)
    pk = sk.public_key()
    request, state = t.begin_issuance(pk, CHALLENGE)
    assert request.truncated_token_key_id == t.token_key_id(pk)[-1]
    assert len(request.encode()) == 3 + bits // 8
    response = t.issue(sk, t.TokenRequest.decode(request.encode(), bits // 8))
    token = t.finish_issuance(state, t.TokenResponse.decode(response.encode(), bits // 8))
    assert t.Token.decode(token.encode()) == token
    assert token.challenge_digest == CHALLENGE.digest() and token.token_key_id == t.token_key_id(pk)
    t.verify_token(token, {t.token_key_id(pk): pk}, [b"\x00" * 32, CHALLENGE.digest()])
    assert t.load_public_key_spki(t.public_key_spki(pk)).public_numbers() == pk.public_numbers()


def test_tokens_are_unlinkable_and_fresh() -> None:
    sk = key()
    one, two = make_token(sk), make_token(sk)
    assert one.nonce != two.nonce and one.authenticator != two.authenticator


def test_verify_token_refusals() -> None:
    sk, other = key(2048), key(3072)
    pk = sk.public_key()
    token = make_token(sk)
    keys = {t.token_key_id(pk): pk}
    with pytest.raises(t.UnknownKey):
        t.verify_token(token, {t.token_key_id(other.public_key()): other.public_key()}, [CHALLENGE.digest()])
    with pytest.raises(t.WrongChallenge):
        t.verify_token(token, keys, [])
    other_challenge = t.TokenChallenge(t.TOKEN_TYPE_BLIND_RSA, "issuer.example", b"", ())
    with pytest.raises(t.WrongChallenge):
        t.verify_token(token, keys, [other_challenge.digest()])
    tampered = [
        t.Token(2, bytes(32), token.challenge_digest, token.token_key_id, token.authenticator),
        t.Token(2, token.nonce, token.challenge_digest, token.token_key_id,
                token.authenticator[:-1] + bytes([token.authenticator[-1] ^ 1])),
        t.Token(2, token.nonce, token.challenge_digest, token.token_key_id, bytes(256)),
        t.Token(2, token.nonce, token.challenge_digest, token.token_key_id, b"\xff" * 256),
    ]
    for bad in tampered:
        with pytest.raises(t.BadSignature):
            t.verify_token(bad, keys, [CHALLENGE.digest()])
    # A token made for another challenge under the same key fails on the challenge, not later.
    with pytest.raises(t.WrongChallenge):
        t.verify_token(make_token(sk, other_challenge), keys, [CHALLENGE.digest()])
    # Keyed under the wrong id: the key id is signed, so the signature fails.
    with pytest.raises(t.BadSignature):
        t.verify_token(make_token(other), {t.token_key_id(other.public_key()): pk}, [CHALLENGE.digest()])
    assert issubclass(t.BadSignature, t.TokenError) and issubclass(t.TokenError, InvalidInput)


def test_issuer_and_client_refusals() -> None:
    sk, other = key(2048), key(3072)
    request, state = t.begin_issuance(sk.public_key(), CHALLENGE)
    with pytest.raises(t.UnknownKey):
        t.issue(sk, t.TokenRequest(2, request.truncated_token_key_id ^ 1, request.blinded_msg))
    with pytest.raises(t.TokenError):  # sized for a 3072-bit key
        t.issue(other, t.TokenRequest(2, t.token_key_id(other.public_key())[-1], request.blinded_msg))
    with pytest.raises(t.TokenError):  # blinded message >= n
        t.issue(sk, t.TokenRequest(2, request.truncated_token_key_id, b"\xff" * 256))
    response = t.issue(sk, request)
    with pytest.raises(t.BadSignature):
        flipped = response.blind_sig[:-1] + bytes([response.blind_sig[-1] ^ 1])
        t.finish_issuance(state, t.TokenResponse(flipped))
    _, other_state = t.begin_issuance(sk.public_key(), CHALLENGE)
    with pytest.raises(t.BadSignature):  # a response to another request
        t.finish_issuance(other_state, response)
    with pytest.raises(t.TokenError):
        t.begin_issuance(sk.public_key(), CHALLENGE, nonce=b"short")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(t.TokenError):
        t.begin_issuance(small.public_key(), CHALLENGE)
    with pytest.raises(t.TokenError):
        t.issue(small, t.TokenRequest(2, 0, bytes(256)))


def test_message_constructors_validate() -> None:
    bad: list[Callable[[], object]] = [
        lambda: t.TokenChallenge(1, "issuer.example"),
        lambda: t.TokenChallenge(2, ""),
        lambda: t.TokenChallenge(2, "issuer example"),
        lambda: t.TokenChallenge(2, "issuér.example"),
        lambda: t.TokenChallenge(2, "i", b"x" * 16),
        lambda: t.TokenChallenge(2, "i", b"", ("a,b",)),
        lambda: t.TokenChallenge(2, "i", b"", ("",)),
        lambda: t.TokenChallenge(2, "i", b"", "origin.example"),  # type: ignore[arg-type]
        lambda: t.TokenRequest(1, 0, bytes(256)),
        lambda: t.TokenRequest(2, 256, bytes(256)),
        lambda: t.TokenRequest(2, 0, bytes(255)),
        lambda: t.TokenResponse(bytes(100)),
        lambda: t.Token(2, bytes(31), bytes(32), bytes(32), bytes(256)),
        lambda: t.Token(2, bytes(32), bytes(32), bytes(32), bytes(257)),
        lambda: t.Token(3, bytes(32), bytes(32), bytes(32), bytes(256)),
    ]
    for make in bad:
        with pytest.raises(t.TokenError):
            make()
    assert t.TokenChallenge(2, "i", b"", ["a", "b"]).origin_info == ("a", "b")  # type: ignore[arg-type]


def test_decoders_refuse_framing_errors() -> None:
    token = make_token(key()).encode()
    request = H(VECTORS["vectors"][0]["token_request"])
    challenge = H(VECTORS["vectors"][0]["token_challenge"])
    cases: list[Callable[[], object]] = [
        lambda: t.Token.decode(token[:-1]),
        lambda: t.Token.decode(token + b"\x00"),
        lambda: t.Token.decode(b"\x00\x01" + token[2:]),
        lambda: t.TokenRequest.decode(request[:-1], 256),
        lambda: t.TokenRequest.decode(request + b"\x00", 256),
        lambda: t.TokenRequest.decode(b"\x00\x01" + request[2:], 256),
        lambda: t.TokenRequest.decode(request, 255),
        lambda: t.TokenResponse.decode(bytes(255), 256),
        lambda: t.TokenChallenge.decode(challenge[:-1]),
        lambda: t.TokenChallenge.decode(challenge + b"\x00"),
        lambda: t.TokenChallenge.decode(b"\x00\x01" + challenge[2:]),
        lambda: t.TokenChallenge.decode(b"\x00\x02\x00\x00\x00\x00\x00"),  # empty issuer name
        lambda: t.TokenChallenge.decode(b"\x00\x02\x00\x01i\x05abcde\x00\x00"),  # 5-byte context
        lambda: t.TokenChallenge.decode(b"\x00\x02\x00\x01i\x00\x00\x02a,"),  # empty origin name
    ]
    for case in cases:
        with pytest.raises(t.TokenError):
            case()


# --------------------------------------------------------------------------- token keys


def test_spki_variants_accepted_and_refused() -> None:
    pk = key().public_key()
    spki = t.public_key_spki(pk)
    plain = pk.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert t.load_public_key_spki(plain).public_numbers() == pk.public_numbers()
    # The pre-RFC drafts' PSS encoding (explicit NULL hash parameters), e.g. the draft-16 vector key.
    modulus = pk.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    drafts = t._der(0x30, t._der(0x30, t._der(0x06, t._OID_RSASSA_PSS) + t._pss_params(True))
                    + t._der(0x03, b"\x00" + modulus))
    assert drafts[:4].hex() == "30820156"
    assert t.load_public_key_spki(drafts).public_numbers() == pk.public_numbers()
    unrestricted = t._der(0x30, t._der(0x30, t._der(0x06, t._OID_RSASSA_PSS))
                          + t._der(0x03, b"\x00" + modulus))
    assert t.load_public_key_spki(unrestricted).public_numbers() == pk.public_numbers()
    salt32 = spki.replace(bytes.fromhex("a203020130"), bytes.fromhex("a203020120"))
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    long_length = b"\x30\x84\x00\x00\x01\x52" + spki[4:]  # non-minimal DER length
    for bad in (salt32, ec_key, small, long_length, spki[:-1], spki + b"\x00", b"", b"\x30\x00"):
        with pytest.raises(t.TokenError):
            t.load_public_key_spki(bad)


# --------------------------------------------------------------------------- HTTP headers


def test_challenge_header_forms() -> None:
    spki = t.public_key_spki(key().public_key())
    other = t.TokenChallenge(2, "issuer.example", b"\x07" * 32, ("a.example", "b.example"))
    c1, c2 = b64(CHALLENGE.encode()), b64(other.encode())
    k_pad, k_bare = b64(spki), b64(spki, pad=False)
    grease = b64(b"\x02\xaa" + b"random bytes")
    voprf = b64(b"\x00\x01" + CHALLENGE.encode()[2:])
    expected = [(CHALLENGE, spki), (other, spki)]
    for header in [
        t.format_challenge_header(expected),
        f'PrivateToken challenge="{c1}", token-key="{k_pad}", '
        f'PrivateToken challenge="{c2}", token-key="{k_pad}"',
        f"PrivateToken challenge={c1},token-key={k_bare},"
        f"PrivateToken challenge={c2.rstrip('=')},token-key={k_pad}",
        f'privatetoken Challenge = "{c1}" , TOKEN-KEY="{k_pad}", realm="a \\"quoted\\" realm, with commas"'
        f', max-age=30,, PrivateToken token-key="{k_pad}",challenge="{c2}"',
        f'Basic realm="x", Bearer abc/def==, PrivateToken challenge="{grease}", token-key="{k_pad}", '
        f'PrivateToken challenge="{voprf}", PrivateToken challenge="{c1}", token-key="{k_pad}", '
        f'Negotiate, PrivateToken challenge="{c2}", token-key="{k_pad}", Digest a=b',
    ]:
        assert t.parse_challenge_header(header) == expected, header
    assert t.parse_challenge_header(f"PrivateToken challenge={c1}") == [(CHALLENGE, b"")]
    assert t.parse_challenge_header("") == [] and t.parse_challenge_header("Basic realm=x") == []
    assert t.format_challenge_header([(CHALLENGE, b"")]) == f'PrivateToken challenge="{c1}"'
    assert "max-age=0" in t.format_challenge_header([(CHALLENGE, spki)], max_age=0)


@pytest.mark.parametrize("header", [
    "PrivateToken",
    "PrivateToken realm=x",
    "PrivateToken abcdef==",
    "PrivateToken challenge=!!!!",
    "PrivateToken challenge=A",
    "PrivateToken challenge=AAIAAA=",
    "PrivateToken challenge=AA+A",
    "PrivateToken challenge=AA",
    f'PrivateToken challenge={b64(CHALLENGE.encode())}, token-key="@@"',
    f"PrivateToken challenge={b64(CHALLENGE.encode()[:-1])}",
    f"PrivateToken challenge={b64(CHALLENGE.encode() + b'x')}",
    f"PrivateToken challenge={b64(BAD_CONTEXT)}",
])
def test_malformed_challenges_are_ignored_or_refused(header: str) -> None:
    """RFC 9577: a challenge that does not validate is ignored; the good ones beside it still count."""
    good = f'PrivateToken challenge="{b64(CHALLENGE.encode())}"'
    assert t.parse_challenge_header(header) == []
    assert t.parse_challenge_header(f"{header}, {good}") == [(CHALLENGE, b"")]
    assert t.parse_challenge_header(f"{good}, {header}") == [(CHALLENGE, b"")]
    with pytest.raises(t.TokenError):
        t.parse_challenge_header(header, strict=True)


@pytest.mark.parametrize("header", [
    'PrivateToken challenge="AAIA',
    "PrivateToken challenge=AAIA AAIA",
    f"PrivateToken challenge={b64(CHALLENGE.encode())}, challenge={b64(CHALLENGE.encode())}",
    "PrivateToken =x",
    '"PrivateToken" challenge=x',
    "PrivateToken\x00 challenge=x",
    "PrivateToken challenge=x;y",
    "PrivateToken challenge=AA+/",
    f"PrivateToken challenge={b64(CHALLENGE.encode())}, token-key=@@",
    "PrivateToken challenge=\"a\"b",
])
def test_challenge_header_syntax_garbage(header: str) -> None:
    with pytest.raises(t.TokenError):
        t.parse_challenge_header(header)


def test_format_challenge_header_refusals() -> None:
    with pytest.raises(t.TokenError):
        t.format_challenge_header([])
    with pytest.raises(t.TokenError):
        t.format_challenge_header([(CHALLENGE, b"")], max_age=-1)


def test_authorization_header() -> None:
    token = make_token(key())
    raw = token.encode()
    wrong_type = b"\x00\x01" + raw[2:]
    header = t.format_authorization(token)
    assert header == f'PrivateToken token="{b64(raw)}"'
    for value in (header, f"PrivateToken token={b64(raw)}", f"privatetoken  TOKEN={b64(raw, pad=False)}",
                  f'PrivateToken extensions="AAAA", token="{b64(raw)}", other=x'):
        assert t.parse_authorization(value) == token
    for bad in ("", "Bearer abc", f"Bearer token={b64(raw)}", "PrivateToken", "PrivateToken token=",
                f"PrivateToken token={b64(raw)}, PrivateToken token={b64(raw)}",
                f"PrivateToken token={b64(raw[:-1])}", f"PrivateToken {b64(raw)}",
                f"PrivateToken token={b64(wrong_type)}"):
        with pytest.raises(t.TokenError):
            t.parse_authorization(bad)


# --------------------------------------------------------------------------- issuer directory


def test_directory_round_trip() -> None:
    pk1, pk2 = key().public_key(), key(3072).public_key()
    built = t.build_directory("https://issuer.example/token-request",
                              [(pk1, 1700000000), (t.public_key_spki(pk2), None)],
                              extra=[{"cloudpal-expires": 1800000000}, {}])
    assert built == {"issuer-request-uri": "https://issuer.example/token-request", "token-keys": [
        {"token-type": 2, "token-key": b64(t.public_key_spki(pk1)), "not-before": 1700000000,
         "cloudpal-expires": 1800000000},
        {"token-type": 2, "token-key": b64(t.public_key_spki(pk2))}]}
    parsed = t.parse_directory(json.dumps(built).encode())
    assert parsed["issuer-request-uri"] == "https://issuer.example/token-request"
    assert [(k["spki"], k["not-before"], k.get("cloudpal-expires")) for k in parsed["token-keys"]] == [
        (t.public_key_spki(pk1), 1700000000, 1800000000), (t.public_key_spki(pk2), None, None)]
    # Other token types are skipped, unknown fields kept, padding optional, relative URIs resolved.
    doc = {"issuer-request-uri": "/token-request", "future-field": True, "token-keys": [
        {"token-type": 1, "token-key": "AAAA"},
        {"token-type": 0x02AA, "token-key": "whatever"},
        {"token-type": 2, "token-key": b64(t.public_key_spki(pk1), pad=False), "not-before": 1.7e9}]}
    parsed = t.parse_directory(json.dumps(doc), base_url="https://issuer.example:8443/x")
    assert parsed["issuer-request-uri"] == "https://issuer.example:8443/token-request"
    keys = [(k["spki"], k["not-before"]) for k in parsed["token-keys"]]
    assert keys == [(t.public_key_spki(pk1), 1700000000)]
    with pytest.raises(t.TokenError):
        t.build_directory("u", [(pk1, None)], extra=[{"token-key": "x"}])
    with pytest.raises(t.TokenError):
        t.build_directory("u", [(pk1, None)], extra=[])


@pytest.mark.parametrize("doc", [
    b"", b"\xff\xfe", b"[" * 100000, b"[]", b"null", b'{"token-keys": []}',
    b'{"issuer-request-uri": "", "token-keys": []}',
    b'{"issuer-request-uri": "u", "token-keys": {}}',
    b'{"issuer-request-uri": "u", "token-keys": [1]}',
    b'{"issuer-request-uri": "u", "token-keys": [{"token-type": "2", "token-key": "AAAA"}]}',
    b'{"issuer-request-uri": "u", "token-keys": [{"token-type": true, "token-key": "AAAA"}]}',
    b'{"issuer-request-uri": "u", "token-keys": [{"token-type": 2}]}',
    b'{"issuer-request-uri": "u", "token-keys": [{"token-type": 2, "token-key": "AAAA"}]}',
    b'{"issuer-request-uri": "u", "token-keys": [{"token-type": 2, "token-key": "A*A"}]}',
])
def test_directory_garbage(doc: bytes) -> None:
    with pytest.raises(t.TokenError):
        t.parse_directory(doc)


def test_directory_bad_not_before() -> None:
    entry = {"token-type": 2, "token-key": b64(t.public_key_spki(key().public_key()))}
    for not_before in (-1, "1", True, 1.5, float("inf")):
        doc = json.dumps({"issuer-request-uri": "u", "token-keys": [{**entry, "not-before": not_before}]})
        with pytest.raises(t.TokenError):
            t.parse_directory(doc)


# --------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_token_error(fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    with contextlib.suppress(t.TokenError):
        fn(*args, **kwargs)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid encoding with a few bytes flipped, cut, inserted or appended."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "append", "truncate"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut" and data:
            del data[i]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=3))
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=3))
        else:
            del data[i:]
    return bytes(data)


_V = VECTORS["vectors"]
_TOKENS = [H(v["token"]) for v in _V]
_REQUESTS = [H(v["token_request"]) for v in _V]
_CHALLENGES = [H(v["token_challenge"]) for v in _V]
_SPKIS = [H(VECTORS["pkS"])]
_SPKI_SEEDS = [*_SPKIS, *_CHALLENGES[:1]]


@FUZZ
@given(st.one_of(st.binary(max_size=600), mutated(_TOKENS)))
def test_fuzz_token_decode(data: bytes) -> None:
    only_token_error(t.Token.decode, data)


@FUZZ
@given(st.one_of(st.binary(max_size=600), mutated(_REQUESTS)), st.sampled_from([256, 384, 512, 100]))
def test_fuzz_request_and_response_decode(data: bytes, nk: int) -> None:
    only_token_error(t.TokenRequest.decode, data, nk)
    only_token_error(t.TokenResponse.decode, data, nk)


@FUZZ
@given(st.one_of(st.binary(max_size=120), mutated(_CHALLENGES)))
def test_fuzz_challenge_decode(data: bytes) -> None:
    try:
        challenge = t.TokenChallenge.decode(data)
    except t.TokenError:
        return
    assert challenge.encode() == data


@FUZZ
@given(st.one_of(st.binary(max_size=400), mutated(_SPKI_SEEDS)))
def test_fuzz_spki(data: bytes) -> None:
    only_token_error(t.load_public_key_spki, data)


_HEADER_PIECES = ["PrivateToken", "privatetoken", "Basic", " ", "  ", "\t", ",", ", ", "=", '"', "\\",
                  "challenge", "token-key", "max-age", "token", "realm", "/", "+",
                  b64(_CHALLENGES[1]), b64(_CHALLENGES[1], pad=False), b64(_SPKIS[0]), "AAIA", "==", "é"]


@FUZZ
@given(st.one_of(st.text(max_size=80), st.lists(st.sampled_from(_HEADER_PIECES), max_size=14).map("".join)))
def test_fuzz_headers(value: str) -> None:
    only_token_error(t.parse_challenge_header, value)
    only_token_error(t.parse_challenge_header, value, strict=True)
    only_token_error(t.parse_authorization, value)


@FUZZ
@given(st.lists(st.sampled_from(_HEADER_PIECES), max_size=14).map("".join),
       st.sampled_from(["challenge=", "token-key=", "token="]))
def test_fuzz_header_values(garbage: str, name: str) -> None:
    value = f"PrivateToken {name}{garbage}"
    only_token_error(t.parse_challenge_header, value)
    only_token_error(t.parse_challenge_header, value, strict=True)
    only_token_error(t.parse_authorization, value)


_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.sampled_from(
        ["issuer-request-uri", "token-keys", "token-type", "token-key", "not-before", "x"]), c, max_size=4)),
    max_leaves=10)
_GOOD_DIR = json.dumps(t.build_directory("https://i.example/r", [(H(VECTORS["pkS"]), 1)])).encode()


@FUZZ
@given(st.one_of(st.binary(max_size=200), _json.map(lambda v: json.dumps(v).encode()), mutated([_GOOD_DIR])))
def test_fuzz_directory(data: bytes) -> None:
    only_token_error(t.parse_directory, data)
