"""Hypercore block encryption (``encryptionKey``), byte-compatible with hypercore 11.37.1.

What JS does (hypercore/lib/default-encryption.js, index.js ``_encode``/``preappend``/``_decode``):

* **Keys.** ``blockKey`` (32 bytes) is derived from the user's ``encryptionKey`` and the core key:
  - default (manifest) cores: ``B2b256(DEFAULT_ENCRYPTION ‖ coreKey ‖ encryptionKey)`` (unkeyed;
    ``DEFAULT_ENCRYPTION = namespace('hypercore', 6)[5]``; this is also ``Hypercore.blockEncryptionKey``);
  - compat cores (key = signer public key): ``B2b256(encryptionKey, key=coreKey)`` (keyed BLAKE2b);
  - ``isBlockKey: true``: ``blockKey = encryptionKey`` as given.
  ``blindingKey = B2b256(blockKey)`` (unkeyed).
* **Cipher.** libsodium ``crypto_stream_xor`` = **XSalsa20** (24-byte nonce, no MAC), not XChaCha20.
* **Block layout.** A stored block is ``padding(8) ‖ ciphertext`` (``len(plaintext) + 8`` bytes):
  ``padding = u64le(fork) XOR XSalsa20(blindingKey, nonce = u64le(index) ‖ 0^16)[0:8]`` (the fork the
  core had when the block was appended, blinded); ``ciphertext = plaintext XOR
  XSalsa20(blockKey, nonce = u64le(index) ‖ padding ‖ 0^8)``.
* **Merkle tree.** The tree hashes the *stored* bytes (padding + ciphertext): encryption runs in
  ``preappend`` before the leaf hash, and replication sends those same bytes. So leaf sizes, the tree
  ``byteLength`` and every proof cover ``len + 8`` per block (JS ``core.byteLength`` subtracts
  ``8 * length``), and a peer without the key can replicate and verify.
* **No integrity.** Nothing authenticates the plaintext beyond the tree: any block of at least 8 bytes
  "decrypts" (a wrong key gives garbage). Verify the block against the tree first, then decrypt.

XSalsa20 is not exposed by PyNaCl's Python API, so the libsodium function PyNaCl itself bundles
(``crypto_stream_xsalsa20_xor`` in ``nacl._sodium``) is called through ctypes, falling back to a
system libsodium; no primitive is implemented here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cloudpal.data.errors import DecodeError

PADDING = 8
KEY_BYTES = 32
NONCE_BYTES = 24
# namespace('hypercore', 6)[5] (hypercore/lib/caps.js).
DEFAULT_ENCRYPTION = bytes.fromhex("9aedb6f1dea8487cc1e1698f97eb2f063f6db4c649695622e7b675e2ceafa6e9")
_U64_LIMIT = 1 << 64

_XorFn = Callable[[bytes, bytes, bytes], bytes]


@functools.cache
def _xsalsa20_xor() -> _XorFn:
    """Finds libsodium's crypto_stream_xsalsa20_xor (PyNaCl's bundled copy first) once."""
    import nacl.bindings  # noqa: F401  (runs sodium_init before the first use)
    from nacl import _sodium

    candidates: list[str] = [_sodium.__file__]
    system = ctypes.util.find_library("sodium")
    if system:
        candidates.append(system)
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            fn = lib.crypto_stream_xsalsa20_xor
            sizes = (lib.crypto_stream_xsalsa20_keybytes(), lib.crypto_stream_xsalsa20_noncebytes())
        except (OSError, AttributeError):
            continue
        if sizes != (KEY_BYTES, NONCE_BYTES):
            continue
        fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_char_p, ctypes.c_char_p]
        fn.restype = ctypes.c_int
        return functools.partial(_call_xor, fn)
    raise RuntimeError("libsodium's crypto_stream_xsalsa20_xor is not available (PyNaCl or libsodium)")


def _call_xor(fn: Callable[..., int], message: bytes, nonce: bytes, key: bytes) -> bytes:
    if not message:
        return b""
    out = bytearray(len(message))
    c_out = (ctypes.c_char * len(out)).from_buffer(out)
    if fn(ctypes.addressof(c_out), message, len(message), nonce, key) != 0:
        raise RuntimeError("crypto_stream_xsalsa20_xor failed")
    return bytes(out)


def xsalsa20_xor(message: bytes, nonce: bytes, key: bytes) -> bytes:
    """libsodium ``crypto_stream_xor``: ``message`` XOR the XSalsa20 key stream (nonce 24, key 32)."""
    if len(nonce) != NONCE_BYTES or len(key) != KEY_BYTES:
        raise ValueError("XSalsa20 needs a 24-byte nonce and a 32-byte key")
    return _xsalsa20_xor()(bytes(message), bytes(nonce), bytes(key))


def _b2b256(data: bytes, key: bytes = b"") -> bytes:
    return hashlib.blake2b(data, digest_size=32, key=key).digest()


def _check_key(name: str, value: bytes) -> bytes:
    if len(value) != KEY_BYTES:
        raise ValueError(f"{name} must be {KEY_BYTES} bytes, got {len(value)}")
    return bytes(value)


def _u64(n: int, what: str) -> bytes:
    if not 0 <= n < _U64_LIMIT:
        raise ValueError(f"{what} out of range: {n}")
    return n.to_bytes(8, "little")


@dataclass(frozen=True)
class BlockKeys:
    """The two keys a core's blocks are encrypted with (see the module docstring)."""

    block: bytes
    blinding: bytes

    @classmethod
    def derive(cls, encryption_key: bytes, core_key: bytes, *, compat: bool = False,
               is_block_key: bool = False) -> BlockKeys:
        """JS ``DefaultEncryption.deriveKeys(encryptionKey, hypercoreKey, {block, compat})``.

        ``compat`` must be the core's compat flag (key == signer public key): the derivations differ.
        """
        encryption_key = _check_key("encryption key", encryption_key)
        core_key = _check_key("core key", core_key)
        if is_block_key:
            block = encryption_key
        elif compat:
            block = _b2b256(encryption_key, key=core_key)
        else:
            block = block_encryption_key(core_key, encryption_key)
        return cls(block=block, blinding=_b2b256(block))


def block_encryption_key(core_key: bytes, encryption_key: bytes) -> bytes:
    """JS ``Hypercore.blockEncryptionKey(key, encryptionKey)`` (the non-compat block key)."""
    return _b2b256(DEFAULT_ENCRYPTION + _check_key("core key", core_key)
                   + _check_key("encryption key", encryption_key))


def _blind_fork(index_le: bytes, fork: int, blinding: bytes) -> bytes:
    return xsalsa20_xor(_u64(fork, "fork"), index_le + bytes(16), blinding)


def encrypt_block(index: int, plaintext: bytes, fork: int, keys: BlockKeys) -> bytes:
    """The bytes JS stores, hashes into the tree and replicates for block ``index``.

    ``fork`` is the core's fork at append time (``core.header.tree.fork``).
    """
    index_le = _u64(index, "block index")
    padding = _blind_fork(index_le, fork, keys.blinding)
    return padding + xsalsa20_xor(plaintext, index_le + padding + bytes(8), keys.block)


def _split(index: int, block: bytes) -> tuple[bytes, bytes, bytes]:
    """(u64le(index), padding, ciphertext) of a stored block; DecodeError if it has no room for padding."""
    index_le = _u64(index, "block index")
    block = bytes(block)
    if len(block) < PADDING:
        raise DecodeError(f"encrypted block {index} has {len(block)} bytes, fewer than the padding")
    return index_le, block[:PADDING], block[PADDING:]


def decrypt_block(index: int, block: bytes, keys: BlockKeys) -> bytes:
    """Plaintext of a stored/replicated block. Raises DecodeError if it cannot hold the padding.

    There is no MAC: verify the block against the Merkle tree before trusting the plaintext.
    """
    index_le, padding, ciphertext = _split(index, block)
    return xsalsa20_xor(ciphertext, index_le + padding + bytes(8), keys.block)


def block_fork(index: int, block: bytes, keys: BlockKeys) -> int:
    """The (unblinded) fork a stored block was written in; diagnostic, JS never reads it."""
    index_le, padding, _ = _split(index, block)
    return int.from_bytes(xsalsa20_xor(padding, index_le + bytes(16), keys.blinding), "little")


class BlockEncryption:
    """Encrypts and decrypts one core's blocks, like a JS session opened with ``{ encryptionKey }``."""

    padding = PADDING

    def __init__(self, encryption_key: bytes, core_key: bytes, *, compat: bool = False,
                 is_block_key: bool = False) -> None:
        self.keys = BlockKeys.derive(encryption_key, core_key, compat=compat, is_block_key=is_block_key)

    def encrypt(self, index: int, plaintext: bytes, fork: int) -> bytes:
        """Stored bytes (``padding ‖ ciphertext``) for ``plaintext`` appended at ``index`` in ``fork``."""
        return encrypt_block(index, plaintext, fork, self.keys)

    def decrypt(self, index: int, block: bytes) -> bytes:
        """Plaintext of stored block ``index`` (DecodeError if shorter than the padding)."""
        return decrypt_block(index, block, self.keys)

    def fork_of(self, index: int, block: bytes) -> int:
        """The fork stored block ``index`` was appended in."""
        return block_fork(index, block, self.keys)

    @staticmethod
    def stored_size(plaintext_size: int) -> int:
        """Size of the stored (and hashed, and replicated) block for a plaintext of this size."""
        return plaintext_size + PADDING
