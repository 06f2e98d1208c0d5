"""compact-encoding primitives against the vectors read from the JS package."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudpal.data.encoding import MAX_SAFE_INTEGER, Reader, Writer
from cloudpal.data.errors import DecodeError

UINTS = [(0, "00"), (252, "fc"), (253, "fdfd00"), (65535, "fdffff"), (65536, "fe00000100"),
         (2**32, "ff0000000001000000"), (2**53 - 1, "ffffffffffffff1f00")]


@pytest.mark.parametrize(("n", "hexed"), UINTS)
def test_uint_vectors(n: int, hexed: str) -> None:
    assert Writer().uint(n).value().hex() == hexed
    assert Reader(bytes.fromhex(hexed)).uint() == n


def test_other_vectors() -> None:
    assert Writer().string("hypercore/alpha").value().hex() == "0f6879706572636f72652f616c706861"
    assert Writer().optional_buffer(None).value().hex() == "00"
    assert Writer().uint32array([1, 0xDEADBEEF]).value().hex() == "0201000000efbeadde"
    assert Writer().uint64(5).value().hex() == "0500000000000000"
    assert [Writer().zigzag(n).value()[0] for n in (0, -1, 1, -2)] == [0, 1, 2, 3]


def test_refuses_what_js_refuses() -> None:
    with pytest.raises(DecodeError):
        Reader(bytes.fromhex("ff0000000000002000")).uint()  # 2^53
    with pytest.raises(DecodeError):
        Reader(b"\x05abc").buffer()
    with pytest.raises(DecodeError):
        Reader(b"\xfe\x00\x00\x20\x00").array(Reader.uint)  # count above 0x100000
    with pytest.raises(DecodeError):
        Reader(b"\x02\xff\xfe").string()
    with pytest.raises(ValueError):
        Writer().uint(MAX_SAFE_INTEGER + 1)


@given(st.lists(st.tuples(st.integers(0, MAX_SAFE_INTEGER), st.binary(max_size=40),
                          st.text(max_size=20), st.integers(-(2**40), 2**40), st.booleans())))
def test_round_trip(items: list[tuple[int, bytes, str, int, bool]]) -> None:
    w = Writer()
    w.array(items, lambda w, it: w.uint(it[0]).buffer(it[1]).string(it[2]).zigzag(it[3]).boolean(it[4]))
    r = Reader(w.value())
    assert r.array(lambda r: (r.uint(), r.buffer(), r.string(), r.zigzag(), r.boolean())) == items
    assert r.done()


@given(st.binary(max_size=64))
def test_fuzz_only_decode_errors(data: bytes) -> None:
    for read in (Reader.uint, Reader.buffer, Reader.string, Reader.uint32array, Reader.optional_buffer,
                 lambda r: r.array(Reader.string), lambda r: r.fixed(32), Reader.uint64):
        with contextlib.suppress(DecodeError):
            read(Reader(data))
