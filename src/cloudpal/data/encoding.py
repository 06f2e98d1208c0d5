"""compact-encoding, the byte format of every Hypercore structure.

Mirrors the JS `compact-encoding` 3.x primitives: varint `uint` (0xfd/0xfe/0xff
prefixes, little-endian), length-prefixed buffers and strings, fixed-size
fields, arrays. Decoding never checks minimality (as in JS) but never reads past
the end and never returns a value JS would refuse (uint above 2^53-1).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import TypeVar

from cloudpal.data.errors import DecodeError

MAX_SAFE_INTEGER = 2**53 - 1
MAX_ARRAY = 0x100000
T = TypeVar("T")


class Writer:
    """Appends encoded fields; `value()` returns the bytes."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def value(self) -> bytes:
        return bytes(self.buf)

    def uint(self, n: int) -> Writer:
        if n < 0 or n > MAX_SAFE_INTEGER:
            raise ValueError(f"uint out of range: {n}")
        if n <= 0xFC:
            self.buf.append(n)
        elif n <= 0xFFFF:
            self.buf += b"\xfd" + n.to_bytes(2, "little")
        elif n <= 0xFFFFFFFF:
            self.buf += b"\xfe" + n.to_bytes(4, "little")
        else:
            self.buf += b"\xff" + n.to_bytes(8, "little")
        return self

    def uint8(self, n: int) -> Writer:
        self.buf.append(n)
        return self

    def uint32(self, n: int) -> Writer:
        self.buf += struct.pack("<I", n)
        return self

    def uint64(self, n: int) -> Writer:
        self.buf += struct.pack("<Q", n)
        return self

    def zigzag(self, n: int) -> Writer:
        return self.uint(2 * n if n >= 0 else -2 * n - 1)

    def boolean(self, b: bool) -> Writer:
        self.buf.append(1 if b else 0)
        return self

    def fixed(self, data: bytes, size: int) -> Writer:
        if len(data) != size:
            raise ValueError(f"expected {size} bytes, got {len(data)}")
        self.buf += data
        return self

    def raw(self, data: bytes) -> Writer:
        self.buf += data
        return self

    def buffer(self, data: bytes) -> Writer:
        self.uint(len(data))
        self.buf += data
        return self

    def optional_buffer(self, data: bytes | None) -> Writer:
        return self.buffer(data or b"")

    def string(self, text: str) -> Writer:
        return self.buffer(text.encode("utf-8"))

    def uint32array(self, words: Iterable[int]) -> Writer:
        items = list(words)
        self.uint(len(items))
        self.buf += struct.pack(f"<{len(items)}I", *items)
        return self

    def array(self, items: Iterable[T], enc: Callable[[Writer, T], object]) -> Writer:
        items = list(items)
        self.uint(len(items))
        for item in items:
            enc(self, item)
        return self


class Reader:
    """Reads fields from `data[start:end]`; every shortfall is a DecodeError."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes | bytearray | memoryview, start: int = 0, end: int | None = None) -> None:
        self.data = bytes(data) if not isinstance(data, bytes) else data
        self.pos = start
        self.end = len(self.data) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def done(self) -> bool:
        return self.pos >= self.end

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise DecodeError("unexpected end of data")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint8(self) -> int:
        return self._take(1)[0]

    def uint32(self) -> int:
        return int(struct.unpack("<I", self._take(4))[0])

    def uint64(self) -> int:
        return int(struct.unpack("<Q", self._take(8))[0])

    def uint(self) -> int:
        first = self.uint8()
        if first <= 0xFC:
            return first
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        n = int.from_bytes(self._take(size), "little")
        if n > MAX_SAFE_INTEGER:
            raise DecodeError("integer larger than 2^53-1")
        return n

    def zigzag(self) -> int:
        n = self.uint()
        return n // 2 if n % 2 == 0 else -(n + 1) // 2

    def boolean(self) -> bool:
        return self.uint8() == 1

    def fixed(self, size: int) -> bytes:
        return self._take(size)

    def raw(self) -> bytes:
        return self._take(self.remaining)

    def buffer(self) -> bytes:
        return self._take(self.uint())

    def optional_buffer(self) -> bytes | None:
        data = self.buffer()
        return data if data else None

    def string(self) -> str:
        try:
            return self.buffer().decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("string is not valid UTF-8") from None

    def uint32array(self) -> list[int]:
        count = self.uint()
        if count > MAX_ARRAY:
            raise DecodeError("array too long")
        return list(struct.unpack(f"<{count}I", self._take(4 * count)))

    def array(self, dec: Callable[[Reader], T]) -> list[T]:
        count = self.uint()
        if count > MAX_ARRAY:
            raise DecodeError("array too long")
        return [dec(self) for _ in range(count)]
