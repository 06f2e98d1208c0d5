"""@hyperswarm/secret-stream 6.9.2 as a sans-IO connection state machine.

The byte stream is a sequence of `uint24_le(len) ‖ payload` frames: three Noise
XX messages, then one 56-byte `streamId ‖ secretstream header` frame each way,
then one crypto_secretstream_xchacha20poly1305 ciphertext per message (TAG_MESSAGE,
no AD, never rekeyed). Feed received bytes to `receive_data()`, send whatever
`data_to_send()` returns. Every violation of that format raises ProtocolError and
leaves the stream failed (JS destroys the stream in the same cases), so a caller
only has to catch one exception type whatever bytes a peer sends.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from nacl import bindings as sodium
from nacl.exceptions import CryptoError

from cloudpal.data.errors import ProtocolError
from cloudpal.data.wire.noise import HandshakeResult, KeyPair, NoiseHandshake

__all__ = [
    "ABYTES",
    "MAX_FRAME",
    "MAX_MESSAGE",
    "Event",
    "HandshakeComplete",
    "Message",
    "SecretStream",
    "stream_id",
]

HEADERBYTES = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES  # 24
ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES  # 17
TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
IDHEADERBYTES = 32 + HEADERBYTES
MAX_FRAME = 2**24 - 1
MAX_MESSAGE = MAX_FRAME - ABYTES  # largest plaintext one frame can carry


def _namespace(name: bytes, count: int) -> list[bytes]:
    """hypercore-crypto `namespace`: B2b256(B2b256(name) ‖ i) for i < count."""
    ns = hashlib.blake2b(name, digest_size=32).digest()
    return [hashlib.blake2b(ns + bytes([i]), digest_size=32).digest() for i in range(count)]


NS_INITIATOR, NS_RESPONDER = _namespace(b"hyperswarm/secret-stream", 2)


def stream_id(handshake_hash: bytes, is_initiator: bool) -> bytes:
    """The 32-byte id a side puts in front of its header (keyed BLAKE2b, key = handshake hash)."""
    ns = NS_INITIATOR if is_initiator else NS_RESPONDER
    return hashlib.blake2b(ns, digest_size=32, key=handshake_hash).digest()


@dataclass(frozen=True)
class HandshakeComplete:
    """Noise finished: the 64-byte transcript hash (capabilities are keyed with it) and the peer's key."""

    handshake_hash: bytes
    remote_public_key: bytes


@dataclass(frozen=True)
class Message:
    """One decrypted non-empty message (one protomux frame)."""

    plaintext: bytes


Event = HandshakeComplete | Message

_HANDSHAKE, _HEADER, _OPEN, _FAILED = range(4)


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + payload


class SecretStream:
    """One end of a secret-stream connection (no I/O inside).

    The initiator (the dialer, as in hyperswarm) must call `start()` once; the
    responder speaks only when spoken to. Messages passed to `send()` before the
    handshake is done are queued and go out right after this side's header, as
    JS does.
    """

    def __init__(
        self,
        is_initiator: bool,
        key_pair: KeyPair | None = None,
        *,
        ephemeral_key_pair: KeyPair | None = None,
    ) -> None:
        self.is_initiator = is_initiator
        self.key_pair = key_pair if key_pair is not None else KeyPair.generate()
        self._noise: NoiseHandshake | None = NoiseHandshake(
            is_initiator, self.key_pair, ephemeral_key_pair=ephemeral_key_pair
        )
        self._state = _HANDSHAKE
        self._started = False
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._queued: list[bytes] = []
        self._push: sodium.crypto_secretstream_xchacha20poly1305_state | None = None
        self._pull = sodium.crypto_secretstream_xchacha20poly1305_state()
        self._rx = b""
        self.handshake_hash: bytes | None = None
        self.remote_public_key: bytes | None = None

    @property
    def public_key(self) -> bytes:
        return self.key_pair.public_key

    @property
    def handshake_complete(self) -> bool:
        return self.handshake_hash is not None

    @property
    def established(self) -> bool:
        """Both headers exchanged: messages flow both ways."""
        return self._state == _OPEN

    @property
    def failed(self) -> bool:
        return self._state == _FAILED

    # -- outgoing -------------------------------------------------------------------------------

    def start(self) -> None:
        """Emit the initiator's first Noise message (no-op for the responder or when repeated)."""
        if self._started:
            return
        self._started = True
        if self.is_initiator and self._noise is not None:
            self._outbuf += _frame(self._noise.send())

    def send(self, plaintext: bytes) -> None:
        """Encrypt one message into one frame (queued until our header is out)."""
        if len(plaintext) > MAX_MESSAGE:
            raise ValueError(f"message of {len(plaintext)} bytes exceeds the frame limit of {MAX_MESSAGE}")
        if self._state == _FAILED:
            raise ProtocolError("secret stream has failed")
        if self._push is None:
            self._queued.append(bytes(plaintext))
            return
        cipher = sodium.crypto_secretstream_xchacha20poly1305_push(
            self._push, bytes(plaintext), None, TAG_MESSAGE
        )
        self._outbuf += _frame(cipher)

    def send_keepalive(self) -> None:
        """An empty message: JS sends one after 5 s without writes and drops it on receipt."""
        self.send(b"")

    def data_to_send(self) -> bytes:
        """All bytes produced since the last call, to be written to the transport in order."""
        out = bytes(self._outbuf)
        self._outbuf.clear()
        return out

    # -- incoming -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Consume transport bytes (any chunking); returns the events they complete."""
        if self._state == _FAILED:
            raise ProtocolError("secret stream has failed")
        if self.is_initiator:
            self.start()  # the initiator's first message always precedes anything it answers
        self._inbuf += data
        events: list[Event] = []
        pos = 0
        buf = self._inbuf
        try:
            while len(buf) - pos >= 3:
                length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
                if len(buf) - pos - 3 < length:
                    break
                frame = bytes(buf[pos + 3 : pos + 3 + length])
                pos += 3 + length
                self._incoming(frame, events)
        except ProtocolError:
            self._fail()
            raise
        del buf[:pos]
        return events

    def _incoming(self, frame: bytes, events: list[Event]) -> None:
        if self._state == _HANDSHAKE:
            self._on_handshake_message(frame, events)
        elif self._state == _HEADER:
            self._on_header(frame)
        else:
            self._on_message(frame, events)

    def _on_handshake_message(self, frame: bytes, events: list[Event]) -> None:
        noise = self._noise
        assert noise is not None
        noise.recv(frame)
        if not noise.complete:
            self._outbuf += _frame(noise.send())
        if noise.result is not None:
            self._setup(noise.result, events)

    def _setup(self, result: HandshakeResult, events: list[Event]) -> None:
        """Handshake done: send our id+header frame, then anything queued (JS `_setupSecretStream`)."""
        self._noise = None
        self.handshake_hash = result.handshake_hash
        self.remote_public_key = result.remote_public_key
        self._rx = result.rx
        self._push = sodium.crypto_secretstream_xchacha20poly1305_state()
        header = sodium.crypto_secretstream_xchacha20poly1305_init_push(self._push, result.tx)
        self._outbuf += _frame(stream_id(result.handshake_hash, self.is_initiator) + header)
        self._state = _HEADER
        events.append(HandshakeComplete(result.handshake_hash, result.remote_public_key))
        queued, self._queued = self._queued, []
        for plaintext in queued:
            self.send(plaintext)

    def _on_header(self, frame: bytes) -> None:
        assert self.handshake_hash is not None
        if len(frame) != IDHEADERBYTES:
            raise ProtocolError(f"invalid header message: {len(frame)} bytes instead of {IDHEADERBYTES}")
        expected = stream_id(self.handshake_hash, not self.is_initiator)
        if not hmac.compare_digest(frame[:32], expected):
            raise ProtocolError("invalid header: stream id does not match the handshake")
        try:
            sodium.crypto_secretstream_xchacha20poly1305_init_pull(self._pull, frame[32:], self._rx)
        except (CryptoError, ValueError) as exc:
            raise ProtocolError(f"invalid header: {exc}") from None
        self._state = _OPEN

    def _on_message(self, frame: bytes, events: list[Event]) -> None:
        if len(frame) < ABYTES:
            raise ProtocolError(f"invalid message: {len(frame)}-byte frame is shorter than {ABYTES}")
        try:
            plaintext, _tag = sodium.crypto_secretstream_xchacha20poly1305_pull(self._pull, frame, None)
        except (CryptoError, ValueError):
            raise ProtocolError("message failed authentication") from None
        if plaintext:  # empty = keep-alive
            events.append(Message(plaintext))

    def _fail(self) -> None:
        self._state = _FAILED
        self._inbuf.clear()
        self._queued.clear()
        self._noise = None
