"""Core ids (z-base32/hex) against the real `hypercore-id-encoding`, via one node process per module."""

from __future__ import annotations

import json
import shutil
import string
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudpal.data import ids
from cloudpal.data.errors import DecodeError

JS_DIR = Path(__file__).resolve().parents[2] / "js"
KEY = bytes.fromhex("798b52954f2f524c0a491fd95e508007de655fbdc048947a8afa2e65f1a03b77")
KEY_ID = "xgfiffkxf7jran1jd9cihwryy9xgkz77abrje6wk9ezgmhpy8p5o"  # hypercore-id-encoding's encode(KEY)


def test_known_ids() -> None:
    assert ids.encode(KEY) == KEY_ID
    assert ids.encode(bytes(32)) == "y" * 52
    assert ids.encode(b"\xff" * 32) == "9" * 51 + "o"
    forms: list[str | bytes] = [KEY_ID, KEY.hex(), KEY.hex().upper(), f"pear://{KEY_ID}/a/b",
                                f"pear://{KEY.hex()}", KEY]
    for text in forms:
        assert ids.decode(text) == KEY
    assert ids.decode(KEY_ID[:-1] + "y")[-1] == KEY[-1] - 1  # last char carries 1 key bit + 4 padding bits
    assert ids.decode(KEY_ID[:-1] + "6") == KEY  # padding bits are ignored, as z32 does
    assert ids.normalize(KEY.hex()) == KEY_ID
    assert ids.is_valid(KEY_ID) and not ids.is_valid(KEY_ID.upper())


@pytest.mark.parametrize("text", [
    KEY_ID.upper(), KEY_ID[:-1], KEY_ID + "y", KEY.hex()[:-1], " " + KEY.hex()[1:], KEY.hex()[:62] + "0g",
    KEY.hex()[:62] + " 0", "pear://", "", KEY[:31], "l" + KEY_ID[1:], "v" + KEY_ID[1:],
])
def test_rejects(text: str | bytes) -> None:
    with pytest.raises(DecodeError):
        ids.decode(text)


def test_encode_needs_32_bytes() -> None:
    for bad in (b"", KEY[:31], KEY + b"\x00"):
        with pytest.raises(ValueError):
            ids.encode(bad)


@given(st.binary(min_size=32, max_size=32))
def test_round_trip(key: bytes) -> None:
    assert len(ids.encode(key)) == 52
    assert ids.decode(ids.encode(key)) == key == ids.decode(key.hex())


# ---- the real JS --------------------------------------------------------------------------

JS_SERVER = r"""
const ids = require('hypercore-id-encoding')
require('readline').createInterface({ input: process.stdin }).on('line', (line) => {
  const q = JSON.parse(line)
  let reply
  try {
    reply = q.op === 'encode' ? { value: ids.encode(Buffer.from(q.hex, 'hex')) }
      : { value: ids.decode(q.text).toString('hex') }
  } catch (err) {
    reply = { error: err.message }
  }
  process.stdout.write(JSON.stringify(reply) + '\n')
})
"""


@pytest.fixture(scope="module")
def js() -> Iterator[Any]:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules/hypercore-id-encoding/index.js").exists():
        pytest.fail("the JS reference stack is missing: install node 20, then run `npm ci` in js/ (make js)")
    proc = subprocess.Popen([node, "-e", JS_SERVER], cwd=JS_DIR, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def ask(**query: Any) -> dict[str, Any]:
        stdin.write(json.dumps(query) + "\n")
        stdin.flush()
        line = stdout.readline()
        assert line, "the node helper died"
        reply: dict[str, Any] = json.loads(line)
        return reply

    try:
        yield ask
    finally:
        stdin.close()
        proc.wait(timeout=10)


CHARS = ids.ALPHABET + string.hexdigits + "ABXYZlv02 /:é"


@st.composite
def id_texts(draw: st.DrawFn) -> str:
    """Strings near valid ids: mutated z-base32/hex ids, pear links, near-miss lengths, junk."""
    key = draw(st.binary(min_size=32, max_size=32))
    text = draw(st.sampled_from([ids.encode(key), key.hex(), key.hex().upper()]))
    kind = draw(st.sampled_from(["valid", "replace", "cut", "extend", "junk"]))
    if kind == "junk":
        text = draw(st.text(CHARS, min_size=50, max_size=66) | st.text(max_size=70))
    elif kind != "valid":
        i = draw(st.integers(0, len(text) - 1))
        extra = draw(st.text(CHARS, min_size=1, max_size=2))
        text = {"replace": text[:i] + extra + text[i + len(extra):], "cut": text[:i] + text[i + 1:],
                "extend": text[:i] + extra + text[i:]}[kind]
    if draw(st.booleans()):
        text = "pear://" + text + draw(st.sampled_from(["", "/", "/app/x", "?q"]))
    return text


@given(st.binary(min_size=32, max_size=32))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_js_encodes_identically(js: Any, key: bytes) -> None:
    assert js(op="encode", hex=key.hex()) == {"value": ids.encode(key)}


@given(id_texts())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_js_decodes_identically(js: Any, text: str) -> None:
    theirs = js(op="decode", text=text)
    try:
        ours = ids.decode(text).hex()
    except DecodeError:
        assert "error" in theirs, (text, theirs)
    else:
        assert theirs == {"value": ours}, text
