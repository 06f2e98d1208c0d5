"""WireGuard (Curve25519) keys.

Keys travel as standard base64 (44 characters with one ``=``), the form every
WireGuard tool prints; the UAPI socket wants hex, hence the converters. Only
the canonical base64 spelling of 32 bytes is accepted, so a key has exactly one
text form and string comparison of stored keys is sound.
"""

from __future__ import annotations

import base64
import re

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cloudpal.errors import InvalidInput

KEY_LEN = 32
_B64_RE = re.compile(r"[A-Za-z0-9+/]{43}=")
_HEX_RE = re.compile(r"[0-9a-fA-F]{64}")


def _clamp_bytes(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def generate_private_key() -> str:
    """A fresh private key, already clamped so it reads back unchanged from the device."""
    return _b64(_clamp_bytes(X25519PrivateKey.generate().private_bytes_raw()))


def clamp(private_b64: str) -> str:
    """The clamped form of a private key, which is what wireguard-go stores and reports."""
    return _b64(_clamp_bytes(parse_key(private_b64, "private key")))


def public_key(private_b64: str) -> str:
    """The public key of a base64 private key (clamped or not: X25519 clamps anyway)."""
    raw = parse_key(private_b64, "private key")
    return _b64(X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw())


def parse_key(text: str, what: str = "public key") -> bytes:
    """The 32 bytes of a canonical base64 key; anything else is the user's typo.

    The key itself is never echoed in the error, since *what* may be a private key.
    """
    candidate = text.strip() if isinstance(text, str) else ""
    if _B64_RE.fullmatch(candidate):
        raw = base64.b64decode(candidate, validate=True)  # the regex guarantees validity
        # Reject non-canonical spellings (stray low bits in the last character).
        if len(raw) == KEY_LEN and _b64(raw) == candidate:
            return raw
    raise InvalidInput(f"malformed {what}: expected 44 base64 characters encoding {KEY_LEN} bytes")


def to_hex(b64: str, what: str = "key") -> str:
    """Lower-case hex of a base64 key, the spelling the UAPI protocol uses."""
    return parse_key(b64, what).hex()


def from_hex(hex_text: str) -> str:
    """Base64 of a 64-digit hex key as printed by the UAPI protocol."""
    if not isinstance(hex_text, str) or not _HEX_RE.fullmatch(hex_text):
        raise InvalidInput("malformed hex key: expected 64 hexadecimal digits")
    return _b64(bytes.fromhex(hex_text))
