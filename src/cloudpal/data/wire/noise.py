"""Noise_XX_Ed25519_ChaChaPoly_BLAKE2b, the handshake of @hyperswarm/secret-stream.

Mirrors noise-handshake 4.2.0 with noise-curve-ed 2.1.0 exactly, because every
byte (and the 64-byte handshake hash that capabilities are keyed with) must
match a JS peer: empty prologue, HASHLEN 64 (BLAKE2b-512 for h, ck, HMAC and
HKDF), 32-byte cipher keys cut from 64-byte HKDF outputs, and an "Ed25519 DH"
that multiplies the remote Ed25519 point by the clamped SHA-512(seed) scalar.
Static and ephemeral keys are Ed25519 signing key pairs (libsodium layout).

Sans-IO: `send()` returns the next message, `recv()` consumes one; framing is
the caller's job (secretstream.py). Any failure is a ProtocolError.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from nacl import bindings as sodium
from nacl.exceptions import CryptoError

from cloudpal.data.errors import ProtocolError

PROTOCOL_NAME = b"Noise_XX_Ed25519_ChaChaPoly_BLAKE2b"
HASHLEN = 64
KEYLEN = 32
PKLEN = 32
MACLEN = 16
MAX_MESSAGE = 65535  # noise-handshake refuses longer ciphertexts

__all__ = ["HandshakeResult", "KeyPair", "NoiseHandshake"]


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 key pair in libsodium layout: 32-byte public key, 64-byte secret (seed ‖ pk)."""

    public_key: bytes
    secret_key: bytes

    def __post_init__(self) -> None:
        if len(self.public_key) != PKLEN or len(self.secret_key) != 64:
            raise ValueError("a key pair is a 32-byte public key and a 64-byte secret key")

    @classmethod
    def generate(cls) -> KeyPair:
        pk, sk = sodium.crypto_sign_keypair()
        return cls(pk, sk)

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        if len(seed) != 32:
            raise ValueError("seed must be 32 bytes")
        pk, sk = sodium.crypto_sign_seed_keypair(seed)
        return cls(pk, sk)


@dataclass(frozen=True)
class HandshakeResult:
    """What a completed handshake yields: split keys (this side's view) and the transcript hash."""

    tx: bytes
    rx: bytes
    handshake_hash: bytes
    remote_public_key: bytes


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASHLEN).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def _hkdf(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """RFC 5869 with empty info and two HASHLEN outputs (noise-handshake hkdf.js)."""
    prk = _hmac(chaining_key, ikm)
    out1 = _hmac(prk, b"\x01")
    out2 = _hmac(prk, out1 + b"\x02")
    return out1, out2


def _dh(local: KeyPair, remote_public_key: bytes) -> bytes:
    """noise-curve-ed `dh`: clamped SHA-512(seed) scalar times the remote Ed25519 point."""
    scalar = bytearray(sodium.crypto_hash_sha512(local.secret_key[:32])[:32])
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    try:
        return bytes(sodium.crypto_scalarmult_ed25519_noclamp(bytes(scalar), remote_public_key))
    except (CryptoError, ValueError, TypeError):
        # libsodium refuses non-points and small-order results; JS fails the handshake too.
        raise ProtocolError("noise handshake failed: invalid remote key") from None


class _SymmetricState:
    """h, ck and the cipher state k/n of the Noise spec, with HASHLEN 64."""

    def __init__(self) -> None:
        self.h = PROTOCOL_NAME + bytes(HASHLEN - len(PROTOCOL_NAME))
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def mix_key(self, dh: bytes) -> None:
        self.ck, temp = _hkdf(self.ck, dh)
        self.k = temp[:KEYLEN]
        self.n = 0

    def _nonce(self) -> bytes:
        return bytes(4) + self.n.to_bytes(8, "little")

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self.k is None:
            ciphertext = plaintext
        else:
            ciphertext = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
                plaintext, self.h, self._nonce(), self.k
            )
            if len(ciphertext) > MAX_MESSAGE:
                raise ProtocolError("noise payload too large")
            self.n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self.k is None:
            plaintext = ciphertext
        else:
            if len(ciphertext) > MAX_MESSAGE:
                raise ProtocolError("noise handshake failed: message too long")
            if len(ciphertext) < MACLEN:
                raise ProtocolError("noise handshake failed: message too short")
            try:
                plaintext = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
                    ciphertext, self.h, self._nonce(), self.k
                )
            except CryptoError:
                raise ProtocolError("noise handshake failed: authentication failed") from None
            self.n += 1
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        out1, out2 = _hkdf(self.ck, b"")
        return out1[:KEYLEN], out2[:KEYLEN]


class NoiseHandshake:
    """One side of an XX handshake: -> e; <- e, ee, s, es; -> s, se.

    `ephemeral_key_pair` exists only so tests can reproduce the JS transcript;
    leave it unset in real use (a fresh key pair is drawn per handshake).
    """

    def __init__(
        self,
        is_initiator: bool,
        static_key_pair: KeyPair,
        *,
        ephemeral_key_pair: KeyPair | None = None,
        prologue: bytes = b"",
    ) -> None:
        self.is_initiator = is_initiator
        self.static = static_key_pair
        self._e = ephemeral_key_pair
        self._re: bytes | None = None
        self._rs: bytes | None = None
        self._state = _SymmetricState()
        self._state.mix_hash(prologue)
        self._step = 0  # index of the next XX message (0, 1, 2); 3 = complete
        self.result: HandshakeResult | None = None

    @property
    def complete(self) -> bool:
        return self.result is not None

    def _our_turn(self) -> bool:
        return (self._step % 2 == 0) == self.is_initiator

    def send(self, payload: bytes = b"") -> bytes:
        """Produce the next handshake message (unframed)."""
        if self._step > 2 or not self._our_turn():
            raise ProtocolError("noise handshake: not our turn to send")
        s = self._state
        out = bytearray()
        if self._step == 0:  # -> e
            out += self._send_e()
        elif self._step == 1:  # <- e, ee, s, es
            out += self._send_e()
            s.mix_key(_dh(self._eph(), self._remote_e()))
            out += s.encrypt_and_hash(self.static.public_key)
            s.mix_key(_dh(self.static, self._remote_e()))
        else:  # -> s, se
            out += s.encrypt_and_hash(self.static.public_key)
            s.mix_key(_dh(self.static, self._remote_e()))
        out += s.encrypt_and_hash(payload)
        self._advance()
        return bytes(out)

    def recv(self, message: bytes) -> bytes:
        """Consume the remote's next handshake message; returns its (JS: always empty) payload."""
        if self._step > 2 or self._our_turn():
            raise ProtocolError("noise handshake: unexpected message")
        s = self._state
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(message):
                raise ProtocolError("noise handshake failed: message too short")
            chunk = message[pos : pos + n]
            pos += n
            return bytes(chunk)

        if self._step == 0:  # -> e
            self._re = take(PKLEN)
            s.mix_hash(self._re)
        elif self._step == 1:  # <- e, ee, s, es
            self._re = take(PKLEN)
            s.mix_hash(self._re)
            s.mix_key(_dh(self._eph(), self._re))
            self._rs = s.decrypt_and_hash(take(PKLEN + MACLEN))
            s.mix_key(_dh(self._eph(), self._rs))
        else:  # -> s, se
            self._rs = s.decrypt_and_hash(take(PKLEN + MACLEN))
            s.mix_key(_dh(self._eph(), self._rs))
        payload = s.decrypt_and_hash(bytes(message[pos:]))
        self._advance()
        return payload

    def _send_e(self) -> bytes:
        e = self._eph()
        self._state.mix_hash(e.public_key)
        return e.public_key

    def _eph(self) -> KeyPair:
        if self._e is None:
            self._e = KeyPair.generate()
        return self._e

    def _remote_e(self) -> bytes:
        assert self._re is not None, "remote ephemeral key is set by the first message"
        return self._re

    def _advance(self) -> None:
        self._step += 1
        if self._step < 3:
            return
        assert self._rs is not None
        k1, k2 = self._state.split()
        tx, rx = (k1, k2) if self.is_initiator else (k2, k1)
        self.result = HandshakeResult(tx, rx, self._state.h, self._rs)
        self._e = None
