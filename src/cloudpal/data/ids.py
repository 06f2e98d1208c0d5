"""Core key ids as people see them: z-base32 (52 chars) or hex (64 chars).

Mirrors `hypercore-id-encoding` 1.3 (with `z32` 1.1) so ids copied from JS tools,
Keet or `pear://` links decode here to the same key, and ours decode there:
z-base32 is lowercase only; the 4 padding bits of the last character are ignored
on decode (as z32 does) and zero on encode; hex is either case, nothing else
(Node's hex parser stops at the first bad character, which JS then rejects by length).
"""

from __future__ import annotations

from cloudpal.data.errors import DecodeError

__all__ = ["ALPHABET", "decode", "encode", "is_valid", "normalize"]

ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"
_REVERSE = {ch: i for i, ch in enumerate(ALPHABET)}
_HEX = frozenset("0123456789abcdefABCDEF")
KEY_SIZE = 32
Z32_LENGTH = 52  # ceil(256 / 5)


def encode(key: bytes) -> str:
    """The 52-char z-base32 id of a 32-byte key. Anything else is a ValueError (a caller bug)."""
    if not isinstance(key, bytes | bytearray | memoryview) or len(key) != KEY_SIZE:
        raise ValueError("key must be 32 bytes")
    n = int.from_bytes(key, "big") << 4  # pad 256 bits to 52 quintets
    return "".join(ALPHABET[(n >> (5 * i)) & 31] for i in reversed(range(Z32_LENGTH)))


def decode(text: str | bytes) -> bytes:
    """The 32-byte key of a z-base32 id, hex id, `pear://<id>/...` link, or 32 raw bytes.

    Raises DecodeError for everything JS rejects.
    """
    if isinstance(text, bytes | bytearray | memoryview):
        if len(text) != KEY_SIZE:
            raise DecodeError("ID must be 32 bytes long")
        return bytes(text)
    if not isinstance(text, str):
        raise DecodeError("Invalid Hypercore key")
    if text.startswith("pear://"):
        text = text[7:].split("/")[0]
    if len(text) == Z32_LENGTH:
        n = 0
        for pos, ch in enumerate(text):
            bits = _REVERSE.get(ch)
            if bits is None:
                raise DecodeError(f"Invalid character in base32 input: {ch!r} at position {pos}")
            n = (n << 5) | bits
        return (n >> 4).to_bytes(KEY_SIZE, "big")
    if len(text) == 2 * KEY_SIZE and _HEX.issuperset(text):
        return bytes.fromhex(text)
    raise DecodeError("Invalid Hypercore key")


def normalize(text: str | bytes) -> str:
    """Any accepted form, as the canonical z-base32 id."""
    return encode(decode(text))


def is_valid(text: str | bytes) -> bool:
    try:
        decode(text)
    except DecodeError:
        return False
    return True
