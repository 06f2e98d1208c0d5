"""Privacy Pass tokens: RFC 9578 token type 0x0002 (Blind RSA) and the RFC 9577 `PrivateToken` scheme.

Sans-IO: bytes and header strings in, values out. The client blinds a token input it alone knows,
the issuer signs it blind (so it cannot link a token to its sale), and any origin holding the
issuer's public key verifies the finished token. Every decoder raises only `TokenError` (an
`InvalidInput`) on bad input, because all of it comes off the network.

Type 2 is RSABSSA-SHA384-PSS-Deterministic over
`token_input = token_type || nonce || SHA-256(TokenChallenge) || token_key_id`, with the token key
published as an RSASSA-PSS SubjectPublicKeyInfo (RFC 9578 section 6.5) and
`token_key_id = SHA-256(that SPKI)`. Nk is the modulus size in bytes: 256 for the standard
2048-bit keys; 384 and 512 (3072/4096-bit keys) are accepted too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import struct
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cloudpal.errors import InvalidInput
from cloudpal.pay import blindrsa

TOKEN_TYPE_BLIND_RSA = 0x0002
NONCE_LEN = 32
DIGEST_LEN = 32
KEY_ID_LEN = 32
KEY_SIZES = (2048, 3072, 4096)
NK_SIZES = tuple(bits // 8 for bits in KEY_SIZES)

MEDIA_REQUEST = "application/private-token-request"
MEDIA_RESPONSE = "application/private-token-response"
MEDIA_DIRECTORY = "application/private-token-issuer-directory"
WELL_KNOWN_DIRECTORY = "/.well-known/private-token-issuer-directory"
AUTH_SCHEME = "PrivateToken"

_TOKEN_HEADER = 2 + NONCE_LEN + DIGEST_LEN + KEY_ID_LEN  # everything before the authenticator


class TokenError(InvalidInput):
    """A Privacy Pass message, header, key or directory is malformed or does not verify."""


class UnknownKey(TokenError):
    """The token (or request) names a token key the verifier (or issuer) does not hold."""


class WrongChallenge(TokenError):
    """The token answers a challenge this origin did not send."""


class BadSignature(TokenError):
    """The authenticator (or the issuer's blind signature) does not verify."""


# ---- messages -----------------------------------------------------------------------------


def _ascii_name(raw: bytes | str, what: str, *, allow_comma: bool = True) -> str:
    """Names in a challenge are URI authorities: printable ASCII without spaces."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if not raw or any(b < 0x21 or b > 0x7E for b in raw) or (not allow_comma and b"," in raw):
        raise TokenError(f"the token challenge's {what} is not a printable ASCII host name")
    return raw.decode("ascii")


@dataclass(frozen=True)
class TokenChallenge:
    """RFC 9577 section 2.1: what an origin asks for; tokens carry its SHA-256."""

    token_type: int
    issuer_name: str
    redemption_context: bytes = b""
    origin_info: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_type(self.token_type, "token challenge")
        if isinstance(self.origin_info, str | bytes):
            raise TokenError("origin_info is a sequence of origin names, not one string")
        object.__setattr__(self, "origin_info", tuple(self.origin_info))
        if not isinstance(self.issuer_name, str) or not all(isinstance(o, str) for o in self.origin_info):
            raise TokenError("issuer and origin names are strings")
        if len(_ascii_name(self.issuer_name, "issuer name")) > 0xFFFF:
            raise TokenError("the token challenge's issuer name is too long")
        if not isinstance(self.redemption_context, bytes) or len(self.redemption_context) not in (0, 32):
            raise TokenError("a redemption context is either empty or 32 bytes")
        for name in self.origin_info:
            _ascii_name(name, "origin name", allow_comma=False)
        if len(",".join(self.origin_info)) > 0xFFFF:
            raise TokenError("the token challenge's origin list is too long")

    def encode(self) -> bytes:
        issuer = self.issuer_name.encode("ascii")
        origins = ",".join(self.origin_info).encode("ascii")
        return b"".join((
            struct.pack(">HH", self.token_type, len(issuer)), issuer,
            struct.pack(">B", len(self.redemption_context)), self.redemption_context,
            struct.pack(">H", len(origins)), origins,
        ))

    @classmethod
    def decode(cls, data: bytes) -> TokenChallenge:
        reader = _Reader(data, "token challenge")
        token_type = reader.u16()
        _check_type(token_type, "token challenge")
        issuer = _ascii_name(reader.take(reader.u16()), "issuer name")
        context = reader.take(reader.u8())
        raw_origins = reader.take(reader.u16())
        reader.end()
        origins: tuple[str, ...] = ()
        if raw_origins:
            origins = tuple(_ascii_name(o, "origin name") for o in raw_origins.split(b","))
        return cls(token_type, issuer, context, origins)

    def digest(self) -> bytes:
        """challenge_digest as carried in tokens."""
        return hashlib.sha256(self.encode()).digest()


@dataclass(frozen=True)
class TokenRequest:
    """RFC 9578 section 6.1: the blinded token input, and which issuer key it is for."""

    token_type: int
    truncated_token_key_id: int
    blinded_msg: bytes

    def __post_init__(self) -> None:
        _check_type(self.token_type, "token request")
        if not 0 <= self.truncated_token_key_id <= 0xFF:
            raise TokenError("a truncated token key id is one byte")
        if len(self.blinded_msg) not in NK_SIZES:
            raise TokenError("the token request's blinded message has the wrong size")

    def encode(self) -> bytes:
        return struct.pack(">HB", self.token_type, self.truncated_token_key_id) + self.blinded_msg

    @classmethod
    def decode(cls, data: bytes, nk: int) -> TokenRequest:
        _check_nk(nk)
        reader = _Reader(data, "token request")
        token_type = reader.u16()
        _check_type(token_type, "token request")
        truncated = reader.u8()
        blinded = reader.take(nk)
        reader.end()
        return cls(token_type, truncated, blinded)


@dataclass(frozen=True)
class TokenResponse:
    """RFC 9578 section 6.2: the issuer's blind signature, Nk bytes."""

    blind_sig: bytes

    def __post_init__(self) -> None:
        if len(self.blind_sig) not in NK_SIZES:
            raise TokenError("the token response has the wrong size")

    def encode(self) -> bytes:
        return self.blind_sig

    @classmethod
    def decode(cls, data: bytes, nk: int) -> TokenResponse:
        _check_nk(nk)
        if len(data) != nk:
            raise TokenError(f"a token response is {nk} bytes, this one is {len(data)}")
        return cls(bytes(data))


@dataclass(frozen=True)
class Token:
    """RFC 9577 section 2.2: a finished token, redeemed in an Authorization header."""

    token_type: int
    nonce: bytes
    challenge_digest: bytes
    token_key_id: bytes
    authenticator: bytes

    def __post_init__(self) -> None:
        _check_type(self.token_type, "token")
        if len(self.nonce) != NONCE_LEN or len(self.challenge_digest) != DIGEST_LEN:
            raise TokenError("a token's nonce and challenge digest are 32 bytes each")
        if len(self.token_key_id) != KEY_ID_LEN:
            raise TokenError("a token key id is 32 bytes")
        if len(self.authenticator) not in NK_SIZES:
            raise TokenError("the token's authenticator has the wrong size")

    def token_input(self) -> bytes:
        """The AuthenticatorInput: what the authenticator signs."""
        return _token_input(self.nonce, self.challenge_digest, self.token_key_id)

    def encode(self) -> bytes:
        return self.token_input() + self.authenticator

    @classmethod
    def decode(cls, data: bytes) -> Token:
        if len(data) - _TOKEN_HEADER not in NK_SIZES:
            raise TokenError(f"a {len(data)}-byte token has no valid length for type 0x0002")
        reader = _Reader(data, "token")
        token_type = reader.u16()
        _check_type(token_type, "token")
        return cls(token_type, reader.take(NONCE_LEN), reader.take(DIGEST_LEN), reader.take(KEY_ID_LEN),
                   reader.take(len(data) - _TOKEN_HEADER))


def _token_input(nonce: bytes, challenge_digest: bytes, key_id: bytes) -> bytes:
    return struct.pack(">H", TOKEN_TYPE_BLIND_RSA) + nonce + challenge_digest + key_id


def _check_type(token_type: int, what: str) -> None:
    if token_type != TOKEN_TYPE_BLIND_RSA or isinstance(token_type, bool):
        shown = f"{token_type:#06x}" if isinstance(token_type, int) else repr(token_type)
        raise TokenError(f"the {what} has token type {shown}, not Blind RSA (0x0002)")


def _check_nk(nk: int) -> None:
    if nk not in NK_SIZES:
        raise TokenError(f"Nk must be one of {NK_SIZES}, not {nk}")


class _Reader:
    """Bounds-checked cursor over a TLS-presentation-language message."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise TokenError(f"the {self.what} is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def end(self) -> None:
        if self.pos != len(self.data):
            raise TokenError(f"the {self.what} has {len(self.data) - self.pos} trailing bytes")


# ---- token keys: SPKI with the RSASSA-PSS OID (RFC 9578 section 6.5) -----------------------

_OID_RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")
_OID_RSASSA_PSS = bytes.fromhex("2a864886f70d01010a")
_OID_MGF1 = bytes.fromhex("2a864886f70d010108")
_OID_SHA384 = bytes.fromhex("608648016503040202")


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + content


def _pss_params(null_hash_params: bool) -> bytes:
    """RSASSA-PSS-params for SHA-384, MGF1-SHA-384, salt 48 (trailer field left at its default)."""
    sha384 = _der(0x30, _der(0x06, _OID_SHA384) + (b"\x05\x00" if null_hash_params else b""))
    return _der(0x30, _der(0xA0, sha384) + _der(0xA1, _der(0x30, _der(0x06, _OID_MGF1) + sha384))
                + _der(0xA2, _der(0x02, b"\x30")))


# The RFC's own encoding omits the NULL hash parameters; the -draft vectors had them.
_PSS_PARAMS_OK = (_pss_params(False), _pss_params(True))
_PSS_ALGORITHM = _der(0x30, _der(0x06, _OID_RSASSA_PSS) + _PSS_PARAMS_OK[0])


def public_key_spki(pk: rsa.RSAPublicKey) -> bytes:
    """The token key encoding: SubjectPublicKeyInfo with the RSASSA-PSS OID and SHA-384 parameters."""
    rsa_public_key = pk.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return _der(0x30, _PSS_ALGORITHM + _der(0x03, b"\x00" + rsa_public_key))


def token_key_id(pk: rsa.RSAPublicKey) -> bytes:
    return hashlib.sha256(public_key_spki(pk)).digest()


class _Der:
    """A strict DER reader (definite, minimal lengths) for the few structures in an SPKI."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, tag: int) -> bytes:
        data, pos = self.data, self.pos
        if pos + 2 > len(data) or data[pos] != tag:
            raise TokenError("the token key is not a DER SubjectPublicKeyInfo")
        first = data[pos + 1]
        pos += 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            raw = data[pos:pos + count]
            if count == 0 or count > 4 or len(raw) != count or raw[0] == 0:
                raise TokenError("the token key has an invalid DER length")
            length = int.from_bytes(raw, "big")
            if length < 0x80:
                raise TokenError("the token key has a non-minimal DER length")
            pos += count
        if pos + length > len(data):
            raise TokenError("the token key is truncated")
        self.pos = pos + length
        return data[pos:pos + length]

    def integer(self) -> int:
        raw = self.read(0x02)
        if not raw or raw[0] & 0x80 or (len(raw) > 1 and raw[0] == 0 and not raw[1] & 0x80):
            raise TokenError("the token key has a malformed RSA integer")
        return int.from_bytes(raw, "big")

    def done(self) -> bool:
        return self.pos == len(self.data)

    def end(self) -> None:
        if not self.done():
            raise TokenError("the token key has trailing bytes")


def load_public_key_spki(data: bytes) -> rsa.RSAPublicKey:
    """Parse a token key: an RSASSA-PSS (SHA-384, salt 48) or plain rsaEncryption SPKI."""
    outer = _Der(bytes(data))
    spki = _Der(outer.read(0x30))
    outer.end()
    algorithm = _Der(spki.read(0x30))
    bits = spki.read(0x03)
    spki.end()
    oid = algorithm.read(0x06)
    params = algorithm.data[algorithm.pos:]
    if oid == _OID_RSA_ENCRYPTION:
        if params not in (b"", b"\x05\x00"):
            raise TokenError("the rsaEncryption token key has unexpected parameters")
    elif oid == _OID_RSASSA_PSS:
        if params and params not in _PSS_PARAMS_OK:
            raise TokenError("the RSASSA-PSS token key is not for SHA-384 with a 48-byte salt")
    else:
        raise TokenError("the token key is not an RSA key")
    if not bits or bits[0] != 0:
        raise TokenError("the token key's BIT STRING is malformed")
    outer_key = _Der(bits[1:])
    numbers = _Der(outer_key.read(0x30))
    outer_key.end()
    n, e = numbers.integer(), numbers.integer()
    numbers.end()
    if n.bit_length() not in KEY_SIZES or not n & 1 or e < 3 or not e & 1 or e >= n:
        raise TokenError(f"token keys are RSA keys of {', '.join(map(str, KEY_SIZES))} bits")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise TokenError("the token key is not a valid RSA public key") from None


def _nk(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> int:
    if key.key_size not in KEY_SIZES:
        raise TokenError(f"token keys are RSA keys of {', '.join(map(str, KEY_SIZES))} bits")
    return key.key_size // 8


# ---- issuance (RFC 9578 section 6) ----------------------------------------------------------


@dataclass(frozen=True)
class ClientState:
    """What the client keeps between its TokenRequest and the issuer's TokenResponse."""

    public_key: rsa.RSAPublicKey
    nonce: bytes
    challenge_digest: bytes
    token_key_id: bytes
    inv: bytes

    def token_input(self) -> bytes:
        return _token_input(self.nonce, self.challenge_digest, self.token_key_id)


def begin_issuance(pk: rsa.RSAPublicKey, challenge: TokenChallenge, *, nonce: bytes | None = None,
                   salt: bytes | None = None, r: int | None = None) -> tuple[TokenRequest, ClientState]:
    """Blind a fresh token input for `challenge` under the issuer key `pk`.

    `nonce`, `salt` and `r` are random unless given (known-answer tests pin them)."""
    nk = _nk(pk)
    if challenge.token_type != TOKEN_TYPE_BLIND_RSA:
        raise TokenError("the challenge is not for Blind RSA tokens")
    nonce = secrets.token_bytes(NONCE_LEN) if nonce is None else bytes(nonce)
    if len(nonce) != NONCE_LEN:
        raise TokenError("a token nonce is 32 bytes")
    key_id = token_key_id(pk)
    digest = challenge.digest()
    token_input = _token_input(nonce, digest, key_id)
    try:
        blinded, inv = blindrsa.blind(pk, blindrsa.prepare(token_input, randomized=False), salt=salt, r=r)
    except blindrsa.BlindRSAError as exc:
        raise TokenError(f"cannot blind the token request: {exc}") from None
    if len(blinded) != nk:
        raise TokenError("the blinded message has the wrong size")
    request = TokenRequest(TOKEN_TYPE_BLIND_RSA, key_id[-1], blinded)
    return request, ClientState(pk, nonce, digest, key_id, inv)


def finish_issuance(state: ClientState, response: TokenResponse) -> Token:
    """Unblind the issuer's signature; a signature that does not verify is refused (BadSignature)."""
    if len(response.blind_sig) != _nk(state.public_key):
        raise TokenError("the token response does not match the issuer key's size")
    token_input = state.token_input()
    try:
        authenticator = blindrsa.finalize(state.public_key, token_input, response.blind_sig, state.inv)
    except blindrsa.BlindRSAError:
        raise BadSignature("the issuer's token response does not verify under its token key") from None
    return Token(TOKEN_TYPE_BLIND_RSA, state.nonce, state.challenge_digest, state.token_key_id, authenticator)


def issue(sk: rsa.RSAPrivateKey, request: TokenRequest) -> TokenResponse:
    """The issuer's side: sign the blinded message, after checking it is for this key and size."""
    nk = _nk(sk)
    if request.token_type != TOKEN_TYPE_BLIND_RSA:
        raise TokenError("the token request is not for Blind RSA tokens")
    if request.truncated_token_key_id != token_key_id(sk.public_key())[-1]:
        raise UnknownKey("the token request is for another token key of this issuer")
    if len(request.blinded_msg) != nk:
        raise TokenError("the token request's blinded message does not match the key size")
    try:
        return TokenResponse(blindrsa.blind_sign(sk, request.blinded_msg))
    except blindrsa.BlindRSAError as exc:
        raise TokenError(f"cannot sign the token request: {exc}") from None


def verify_token(token: Token, public_keys: Mapping[bytes, rsa.RSAPublicKey],
                 accepted_challenges: Iterable[bytes]) -> None:
    """The origin's side (RFC 9578 section 6.4): known key, one of our challenges, valid signature.

    Double-spend checks (the nonce) are the caller's business."""
    pk = public_keys.get(token.token_key_id)
    if pk is None:
        raise UnknownKey("the token was issued under a token key this origin does not accept")
    matched = False
    for digest in accepted_challenges:
        matched |= hmac.compare_digest(token.challenge_digest, digest)
    if not matched:
        raise WrongChallenge("the token answers a challenge this origin did not send")
    if len(token.authenticator) != _nk(pk):
        raise BadSignature("the token's authenticator does not match its key's size")
    try:
        blindrsa.verify(pk, token.token_input(), token.authenticator)
    except blindrsa.BlindRSAError:
        raise BadSignature("the token's signature does not verify") from None


# ---- base64url (RFC 4648 section 5) ---------------------------------------------------------

_B64URL = re.compile(r"[A-Za-z0-9_-]*(={0,2})")


def b64url_encode(data: bytes) -> str:
    """With padding, as RFC 9577 and RFC 9578 require on the wire."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def b64url_decode(text: str, what: str = "value") -> bytes:
    """Accepts the value with or without its padding; nothing outside the url-safe alphabet."""
    m = _B64URL.fullmatch(text)
    body = text.rstrip("=")
    if m is None or len(body) % 4 == 1 or (m.group(1) and len(text) % 4):
        raise TokenError(f"the {what} is not valid base64url")
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(f"the {what} is not valid base64url") from None


# ---- HTTP authentication headers (RFC 9110 section 11, RFC 9577 section 2) ------------------

_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_RE_SKIP = re.compile(r"[ \t,]*")
_RE_OWS = re.compile(r"[ \t]*")
_RE_SCHEME = re.compile(_TCHAR + "+")
_RE_TOKEN68 = re.compile(r"([A-Za-z0-9\-._~+/]+=*)[ \t]*(?=,|\Z)")
# A value is a token or a quoted-string; the token may end in "=" padding, seen in the wild.
_QUOTED = r'"((?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*)"'
_RE_PARAM = re.compile("(" + _TCHAR + r"+)[ \t]*=[ \t]*(?:" + _QUOTED + "|(" + _TCHAR + "+=*))")
_RE_PARAM_START = re.compile(_TCHAR + r"+[ \t]*=")
_RE_UNESCAPE = re.compile(r"\\(.)")


def _skip(pattern: re.Pattern[str], value: str, pos: int) -> int:
    m = pattern.match(value, pos)
    return pos if m is None else m.end()


@dataclass(frozen=True)
class _AuthItem:
    scheme: str  # lower-cased
    token68: str | None
    params: dict[str, str]  # names lower-cased


def _parse_auth_list(value: str) -> list[_AuthItem]:
    """RFC 9110 `#challenge` / `credentials`: several schemes, each with token68 or auth-params."""
    items: list[_AuthItem] = []
    pos, n = 0, len(value)
    while True:
        pos = _skip(_RE_SKIP, value, pos)
        if pos == n:
            return items
        m = _RE_SCHEME.match(value, pos)
        if m is None:
            raise TokenError("the authentication header is malformed")
        scheme, pos = m.group().lower(), m.end()
        item = _AuthItem(scheme, None, {})
        items.append(item)
        after = _skip(_RE_OWS, value, pos)
        if after == n or value[after] == ",":
            pos = after
            continue
        if after == pos:
            raise TokenError("the authentication header is malformed")
        pos = after
        m68 = _RE_TOKEN68.match(value, pos)
        if m68 is not None:
            items[-1] = _AuthItem(scheme, m68.group(1), {})
            pos = m68.end()
            continue
        while True:
            mp = _RE_PARAM.match(value, pos)
            if mp is None:
                raise TokenError("the authentication header has a malformed parameter")
            name = mp.group(1).lower()
            quoted = mp.group(2)
            param = _RE_UNESCAPE.sub(r"\1", quoted) if quoted is not None else mp.group(3)
            if name in item.params:
                raise TokenError(f"the authentication header repeats the {name!r} parameter")
            item.params[name] = param
            pos = _skip(_RE_OWS, value, mp.end())
            if pos == n:
                break
            if value[pos] != ",":
                raise TokenError("the authentication header is malformed after a parameter")
            pos = _skip(_RE_SKIP, value, pos)
            if pos == n or _RE_PARAM_START.match(value, pos) is None:
                break  # the end, or the next challenge's scheme


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_challenge_header(challenges: Sequence[tuple[TokenChallenge, bytes]],
                            max_age: int | None = None) -> str:
    """A WWW-Authenticate value with one PrivateToken challenge per (challenge, token-key SPKI) pair.

    An empty SPKI leaves the token-key out (clients then need the key out of band)."""
    if not challenges:
        raise TokenError("a WWW-Authenticate header needs at least one challenge")
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0):
        raise TokenError("max-age is a number of seconds")
    parts = []
    for challenge, spki in challenges:
        part = f"{AUTH_SCHEME} challenge={_quote(b64url_encode(challenge.encode()))}"
        if spki:
            part += f", token-key={_quote(b64url_encode(spki))}"
        if max_age is not None:
            part += f", max-age={max_age}"
        parts.append(part)
    return ", ".join(parts)


def parse_challenge_header(value: str, *, strict: bool = False) -> list[tuple[TokenChallenge, bytes]]:
    """The Blind RSA challenges in a WWW-Authenticate value, in order, each with its token-key SPKI.

    Other schemes and token types (e.g. greased ones) are skipped, and so are malformed PrivateToken
    challenges: RFC 9577 has clients ignore a challenge they cannot validate, not the others beside
    it. `strict` raises TokenError for those instead. A header that does not even split into
    challenges raises either way. A missing token-key is returned as b"" (keys known out of band)."""
    out = []
    for item in _parse_auth_list(value):
        if item.scheme != AUTH_SCHEME.lower():
            continue
        try:
            parsed = _parse_one_challenge(item)
        except TokenError:
            if strict:
                raise
            continue
        if parsed is not None:
            out.append(parsed)
    return out


def _parse_one_challenge(item: _AuthItem) -> tuple[TokenChallenge, bytes] | None:
    if item.token68 is not None or "challenge" not in item.params:
        raise TokenError("a PrivateToken challenge has no challenge parameter")
    raw = b64url_decode(item.params["challenge"], "token challenge")
    if len(raw) < 2:
        raise TokenError("the token challenge is truncated")
    if int.from_bytes(raw[:2], "big") != TOKEN_TYPE_BLIND_RSA:
        return None
    challenge = TokenChallenge.decode(raw)
    key = item.params.get("token-key")
    return challenge, (b64url_decode(key, "token key") if key is not None else b"")


def format_authorization(token: Token) -> str:
    return f"{AUTH_SCHEME} token={_quote(b64url_encode(token.encode()))}"


def parse_authorization(value: str) -> Token:
    """The token in an `Authorization: PrivateToken token=...` value."""
    items = _parse_auth_list(value)
    if len(items) != 1 or items[0].scheme != AUTH_SCHEME.lower():
        raise TokenError("the Authorization header does not carry one PrivateToken")
    token = items[0].params.get("token")
    if token is None:
        raise TokenError("the PrivateToken credentials have no token parameter")
    return Token.decode(b64url_decode(token, "token"))


# ---- issuer directory (RFC 9578 section 4) --------------------------------------------------

_DIRECTORY_FIELDS = ("token-type", "token-key", "not-before")


def build_directory(issuer_request_uri: str,
                    keys: Sequence[tuple[rsa.RSAPublicKey | bytes, int | None]],
                    extra: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The directory JSON object: keys are (public key or SPKI, not-before unix time or None), most
    preferred first; `extra` adds non-standard fields to each key entry."""
    if extra is not None and len(extra) != len(keys):
        raise TokenError("give one extra mapping per token key")
    entries = []
    for i, (key, not_before) in enumerate(keys):
        spki = key if isinstance(key, bytes) else public_key_spki(key)
        entry: dict[str, Any] = {"token-type": TOKEN_TYPE_BLIND_RSA, "token-key": b64url_encode(spki)}
        if not_before is not None:
            entry["not-before"] = int(not_before)
        if extra is not None:
            if any(field in extra[i] for field in _DIRECTORY_FIELDS):
                raise TokenError("extra directory fields cannot replace the standard ones")
            entry.update(extra[i])
        entries.append(entry)
    return {"issuer-request-uri": issuer_request_uri, "token-keys": entries}


def parse_directory(data: bytes | str, *, base_url: str | None = None) -> dict[str, Any]:
    """Parse an issuer directory; only Blind RSA keys are kept, in the issuer's order.

    Each kept entry keeps its fields and gains "spki" (the decoded token-key, checked to be a usable
    RSA key); "not-before" is an int or None. With `base_url`, a relative issuer-request-uri is
    resolved against it."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise TokenError("the issuer directory is not JSON") from None
    if not isinstance(doc, dict):
        raise TokenError("the issuer directory is not a JSON object")
    uri = doc.get("issuer-request-uri")
    keys = doc.get("token-keys")
    if not isinstance(uri, str) or not uri or not isinstance(keys, list):
        raise TokenError("the issuer directory lacks issuer-request-uri or token-keys")
    if base_url is not None:
        uri = urllib.parse.urljoin(base_url, uri)
    kept = []
    for entry in keys:
        if not isinstance(entry, dict):
            raise TokenError("an issuer directory token key is not a JSON object")
        token_type = entry.get("token-type")
        if isinstance(token_type, bool) or not isinstance(token_type, int):
            raise TokenError("an issuer directory token key has no integer token-type")
        if token_type != TOKEN_TYPE_BLIND_RSA:
            continue
        key = entry.get("token-key")
        if not isinstance(key, str):
            raise TokenError("an issuer directory token key has no token-key string")
        spki = b64url_decode(key, "directory token-key")
        load_public_key_spki(spki)
        not_before = entry.get("not-before")
        if not_before is not None:
            if isinstance(not_before, float) and not_before.is_integer():
                not_before = int(not_before)
            if isinstance(not_before, bool) or not isinstance(not_before, int) or not_before < 0:
                raise TokenError("an issuer directory not-before is not a unix time")
        kept.append({**entry, "spki": spki, "not-before": not_before})
    return {"issuer-request-uri": uri, "token-keys": kept}
