"""Block encryption against real hypercore 11.37.1 (node, js/node_modules): byte-for-byte vectors.

The node script below creates encrypted cores from fixed seeds and keys (default, compat and
``isBlockKey``), truncates one to get blocks of two forks, replicates it to a reader that has no
key (whose blocks are exactly the bytes on the wire) and dumps stored blocks, plaintexts, tree
hashes and byte lengths. Missing node or node_modules fails the test: this is the ground truth.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudpal.data.encryption import (
    DEFAULT_ENCRYPTION,
    PADDING,
    BlockEncryption,
    BlockKeys,
    block_encryption_key,
    decrypt_block,
    encrypt_block,
)
from cloudpal.data.errors import DecodeError, VerificationError

JS_DIR = Path(__file__).resolve().parents[2] / "js"
SEED = bytes(range(32))
ENCRYPTION_KEY = bytes(range(0xA0, 0xC0))
BLOCK_KEY = bytes([0x33]) * 32
SIZES = [0, 1, 100, 65536, 1048576]

NODE_SCRIPT = r"""
const fs = require('fs')
const os = require('os')
const path = require('path')
const Hypercore = require('hypercore')
const crypto = require('hypercore-crypto')

const SEED = Buffer.from(%(seed)r, 'hex')
const EK = Buffer.from(%(ek)r, 'hex')
const BK = Buffer.from(%(bk)r, 'hex')
const SIZES = %(sizes)s
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cloudpal-enc-vectors-'))
const hex = (b) => Buffer.from(b).toString('hex')

function plaintext(salt, i, size) {
  const b = Buffer.alloc(size)
  for (let k = 0; k < size; k++) b[k] = (k * 7 + i * 31 + salt) & 0xff
  return b
}

async function dump(core, from, to) {
  const out = []
  for (let i = from; i < to; i++) {
    out.push({ index: i, stored: hex(await core.get(i, { raw: true })), plain: hex(await core.get(i)) })
  }
  return out
}

async function appendAll(core, salt) {
  const first = core.length
  const fork = core.fork
  for (const [k, size] of SIZES.entries()) await core.append(plaintext(salt, first + k, size))
  return (await dump(core, first, core.length)).map((b) => ({ ...b, fork }))
}

async function summary(core) {
  return { key: hex(core.key), length: core.length, fork: core.fork, byteLength: core.byteLength,
           treeHash: hex(await core.treeHash()), padding: core.padding, compat: core.core.compat }
}

async function main() {
  const out = { blockEncryptionKey: null, cases: {} }
  const keyPair = crypto.keyPair(SEED)

  // Default (manifest) core: all sizes in fork 0, then truncate to 3 and append all sizes in fork 1.
  const a = new Hypercore(path.join(tmp, 'a'), { keyPair, encryptionKey: EK })
  await a.ready()
  const fork0 = await appendAll(a, 0)
  const before = await summary(a)
  await a.truncate(3)
  const fork1 = await appendAll(a, 1)
  out.cases.default = { ...(await summary(a)), before, blocks: fork0.concat(fork1),
                        final: (await dump(a, 0, a.length)).map((b) => b.stored) }
  out.blockEncryptionKey = hex(Hypercore.blockEncryptionKey(a.key, EK))

  // A reader without the key: what it stores and returns is what came over the wire.
  const r = new Hypercore(path.join(tmp, 'r'), a.key)
  await r.ready()
  const s1 = a.replicate(true)
  const s2 = r.replicate(false)
  s1.pipe(s2).pipe(s1)
  await r.update({ wait: true })
  const wire = []
  for (let i = 0; i < r.length; i++) wire.push(hex(await r.get(i)))
  out.cases.default.wire = wire
  out.cases.default.readerTreeHash = hex(await r.treeHash())
  s1.destroy()
  s2.destroy()
  await r.close()
  await a.close()

  const c = new Hypercore(path.join(tmp, 'c'), { keyPair, compat: true, encryptionKey: EK })
  await c.ready()
  out.cases.compat = { blocks: await appendAll(c, 2) }
  Object.assign(out.cases.compat, await summary(c))
  await c.close()

  const b = new Hypercore(path.join(tmp, 'b'), { keyPair, encryptionKey: BK, isBlockKey: true })
  await b.ready()
  out.cases.blockKey = { blocks: await appendAll(b, 3) }
  Object.assign(out.cases.blockKey, await summary(b))
  await b.close()

  fs.writeFileSync(process.argv[1], JSON.stringify(out))
  fs.rmSync(tmp, { recursive: true, force: true })
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
"""


@pytest.fixture(scope="module")
def js(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the encryption vectors come from real hypercore (install nodejs)")
    if not (JS_DIR / "node_modules" / "hypercore" / "package.json").exists():
        pytest.fail(f"{JS_DIR}/node_modules is missing: run `make js` (npm ci in js/) first")
    out = tmp_path_factory.mktemp("enc") / "vectors.json"
    script = NODE_SCRIPT % {"seed": SEED.hex(), "ek": ENCRYPTION_KEY.hex(), "bk": BLOCK_KEY.hex(),
                            "sizes": json.dumps(SIZES)}
    proc = subprocess.run([node, "-e", script, str(out)], cwd=JS_DIR, capture_output=True, text=True,
                          timeout=120, check=False)
    if proc.returncode != 0:
        pytest.fail(f"the JS vector script failed:\n{proc.stderr}")
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _encryption(case: dict[str, Any], name: str) -> BlockEncryption:
    key = bytes.fromhex(case["key"])
    if name == "blockKey":
        return BlockEncryption(BLOCK_KEY, key, is_block_key=True)
    return BlockEncryption(ENCRYPTION_KEY, key, compat=name == "compat")


def _plaintext(salt: int, index: int, size: int) -> bytes:
    return bytes((k * 7 + index * 31 + salt) & 0xFF for k in range(size))


@pytest.mark.parametrize("name", ["default", "compat", "blockKey"])
def test_blocks_byte_for_byte(js: dict[str, Any], name: str) -> None:
    case = js["cases"][name]
    enc = _encryption(case, name)
    assert case["padding"] == PADDING
    assert case["compat"] is (name == "compat")
    sizes_seen = set()
    for block in case["blocks"]:
        index, fork = block["index"], block["fork"]
        stored, plain = bytes.fromhex(block["stored"]), bytes.fromhex(block["plain"])
        assert len(stored) == len(plain) + PADDING
        assert enc.encrypt(index, plain, fork) == stored, (name, index, len(plain))
        assert enc.decrypt(index, stored) == plain
        assert enc.fork_of(index, stored) == fork
        sizes_seen.add(len(plain))
    assert sizes_seen == set(SIZES)


def test_plaintexts_are_what_was_appended(js: dict[str, Any]) -> None:
    # Pins the script's content so the vectors above cannot be trivially self-consistent.
    salts = {"default": [0] * 5 + [1] * 5, "compat": [2] * 5, "blockKey": [3] * 5}
    for name, case in js["cases"].items():
        for block, salt in zip(case["blocks"], salts[name], strict=True):
            size = len(block["plain"]) // 2
            assert bytes.fromhex(block["plain"]) == _plaintext(salt, block["index"], size)


def test_key_derivation(js: dict[str, Any]) -> None:
    default, compat = js["cases"]["default"], js["cases"]["compat"]
    core_key = bytes.fromhex(default["key"])
    assert block_encryption_key(core_key, ENCRYPTION_KEY).hex() == js["blockEncryptionKey"]
    keys = BlockKeys.derive(ENCRYPTION_KEY, core_key)
    expected = hashlib.blake2b(DEFAULT_ENCRYPTION + core_key + ENCRYPTION_KEY, digest_size=32).digest()
    assert keys.block == expected
    assert keys.blinding == hashlib.blake2b(keys.block, digest_size=32).digest()
    compat_key = bytes.fromhex(compat["key"])
    ckeys = BlockKeys.derive(ENCRYPTION_KEY, compat_key, compat=True)
    assert ckeys.block == hashlib.blake2b(ENCRYPTION_KEY, digest_size=32, key=compat_key).digest()
    assert BlockKeys.derive(BLOCK_KEY, core_key, is_block_key=True).block == BLOCK_KEY


def test_wire_bytes_are_the_stored_ciphertext(js: dict[str, Any]) -> None:
    case = js["cases"]["default"]
    assert case["wire"] == case["final"]
    assert case["readerTreeHash"] == case["treeHash"]
    enc = _encryption(case, "default")
    # After truncate(3) + append: blocks 0..2 keep their fork-0 padding, 3..7 carry fork 1.
    assert [enc.fork_of(i, bytes.fromhex(b)) for i, b in enumerate(case["wire"])] == [0] * 3 + [1] * 5
    assert case["length"] == 8
    assert case["fork"] == 1


def _tree_hash(blocks: list[bytes]) -> tuple[bytes, int]:
    """Hypercore tree hash and byte length of a core holding exactly these stored blocks."""

    def b2(data: bytes) -> bytes:
        return hashlib.blake2b(data, digest_size=32).digest()

    def depth(i: int) -> int:
        d = 0
        while i & 1:
            i >>= 1
            d += 1
        return d

    roots: list[tuple[int, int, bytes]] = []
    for n, block in enumerate(blocks):
        roots.append((2 * n, len(block), b2(b"\x00" + len(block).to_bytes(8, "little") + block)))
        while len(roots) >= 2:
            (li, ls, lh), (ri, rs, rh) = roots[-2], roots[-1]
            d = depth(li)
            if depth(ri) != d or ri != li + (2 << d):
                break
            if (li >> (d + 1)) & 1:  # left node is a right child: not siblings
                break
            roots[-2:] = [(li + (1 << d), ls + rs, b2(b"\x01" + (ls + rs).to_bytes(8, "little") + lh + rh))]
    payload = b"".join(h + i.to_bytes(8, "little") + s.to_bytes(8, "little") for i, s, h in roots)
    return b2(b"\x02" + payload), sum(s for _, s, _ in roots)


@pytest.mark.parametrize("name", ["default", "compat", "blockKey"])
def test_tree_hashes_the_ciphertext(js: dict[str, Any], name: str) -> None:
    case = js["cases"][name]
    stored = [bytes.fromhex(b) for b in case.get("final") or [b["stored"] for b in case["blocks"]]]
    tree_hash, tree_bytes = _tree_hash(stored)
    assert tree_hash.hex() == case["treeHash"]
    assert case["byteLength"] == tree_bytes - PADDING * case["length"]  # JS reports plaintext bytes
    enc = _encryption(case, name)
    plain_hash, _ = _tree_hash([enc.decrypt(i, b) for i, b in enumerate(stored)])
    assert plain_hash.hex() != case["treeHash"]


def test_default_tree_hash_before_truncate(js: dict[str, Any]) -> None:
    case = js["cases"]["default"]
    stored = [bytes.fromhex(b["stored"]) for b in case["blocks"][:5]]
    assert _tree_hash(stored)[0].hex() == case["before"]["treeHash"]


def test_rejects_bad_arguments() -> None:
    key = bytes(32)
    with pytest.raises(ValueError):
        BlockEncryption(bytes(31), key)
    with pytest.raises(ValueError):
        BlockEncryption(key, bytes(33))
    enc = BlockEncryption(key, key)
    with pytest.raises(ValueError):
        enc.encrypt(-1, b"x", 0)
    with pytest.raises(ValueError):
        enc.encrypt(0, b"x", 1 << 64)
    for short in (b"", b"1234567"):
        with pytest.raises(DecodeError):
            enc.decrypt(0, short)
        with pytest.raises(DecodeError):
            enc.fork_of(0, short)


KEYS = BlockKeys.derive(ENCRYPTION_KEY, bytes(range(32)))


@given(st.integers(0, 2**53 - 1), st.binary(max_size=300), st.integers(0, 2**53 - 1))
def test_round_trip(index: int, plaintext: bytes, fork: int) -> None:
    stored = encrypt_block(index, plaintext, fork, KEYS)
    assert len(stored) == len(plaintext) + PADDING
    assert decrypt_block(index, stored, KEYS) == plaintext
    assert BlockEncryption.stored_size(len(plaintext)) == len(stored)


@settings(max_examples=300)
@given(st.integers(0, 2**64 - 1), st.binary(max_size=100))
def test_fuzz_decrypt(index: int, data: bytes) -> None:
    enc = BlockEncryption(ENCRYPTION_KEY, bytes(32))
    with contextlib.suppress(DecodeError, VerificationError):
        plain = enc.decrypt(index, data)
        assert len(plain) == len(data) - PADDING
        enc.fork_of(index, data)
