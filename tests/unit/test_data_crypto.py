"""cloudpal.data.crypto against the notes' vectors and the real JS hypercore 11.37.1.

Vectors come from /work/shared/notes/hypercore-vectors/vectors.json (generated with the JS
packages). Manifests of every version, multi-signer signatures and their verification are
cross-checked by running the JS `Verifier` (node, cwd js/) on the same inputs: the test fails,
never skips, when node or js/node_modules is missing.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudpal.data import crypto as c
from cloudpal.data.crypto import Manifest, Node, Prologue, Signer
from cloudpal.data.errors import DecodeError, VerificationError

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "js"
VECTORS = Path("/work/shared/notes/hypercore-vectors/vectors.json")
H = bytes.fromhex


@pytest.fixture(scope="module")
def v() -> dict[str, Any]:
    return json.loads(VECTORS.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def kp(v: dict[str, Any]) -> c.KeyPair:
    return c.key_pair(H(v["seed"]))


# --------------------------------------------------------------------------- constants and hashes


def test_namespaces(v: dict[str, Any]) -> None:
    ns = v["ns_hypercore"]
    assert H(ns["TREE"]) == c.TREE
    assert H(ns["REPLICATE_INITIATOR"]) == c.REPLICATE_INITIATOR
    assert H(ns["REPLICATE_RESPONDER"]) == c.REPLICATE_RESPONDER
    assert H(ns["MANIFEST"]) == c.MANIFEST
    assert H(ns["DEFAULT_NAMESPACE"]) == c.DEFAULT_NAMESPACE
    assert H(ns["DEFAULT_ENCRYPTION"]) == c.DEFAULT_ENCRYPTION
    ss = v["ns_secret_stream"]
    assert c.namespace("hyperswarm/secret-stream", 3) == [H(ss["NS_INITIATOR"]), H(ss["NS_RESPONDER"]),
                                                          H(ss["NS_SEND"])]
    assert c.namespace("hyperdrive", 1) == [H(v["ns_hyperdrive_BLOBS"])]
    assert c.namespace(b"corestore", [0]) == [H(v["ns_corestore_NS"])]


def test_key_pair(v: dict[str, Any], kp: c.KeyPair) -> None:
    assert kp.public_key == H(v["publicKey"])
    assert kp.secret_key == H(v["secretKey"])
    assert kp.secret_key not in repr(kp).encode()
    rnd = c.key_pair()
    assert len(rnd.public_key) == 32 and len(rnd.secret_key) == 64 and rnd != c.key_pair()
    with pytest.raises(ValueError):
        c.key_pair(b"short")


def test_manifest_key_and_discovery(v: dict[str, Any], kp: c.KeyPair) -> None:
    m = c.default_signer_manifest(kp.public_key)
    assert c.encode_manifest(m) == H(v["manifestEncoded"])
    assert c.decode_manifest(H(v["manifestEncoded"])) == m
    key = c.manifest_hash(m)
    assert key == H(v["manifestHash_key"]) == H(v["realHypercore"]["key"])
    assert c.discovery_key(key) == H(v["discoveryKey"])
    # compat core: key = public key (notes §3.6)
    assert c.discovery_key(kp.public_key).hex() == (
        "daaf3d66c0c7b35b2a9ca711d5cac1154025f2a37f9dd714ee59a894edaa90a9")
    assert c.is_compat(kp.public_key, m) and not c.is_compat(key, m)
    with pytest.raises(ValueError):
        c.discovery_key(b"\x00" * 31)


def test_capability(v: dict[str, Any]) -> None:
    cap = v["capability"]
    hh, key = H(cap["handshakeHash"]), H(cap["key"])
    assert c.capability(True, key, hh) == H(cap["initiator"])
    assert c.capability(False, key, hh) == H(cap["responder"])
    assert H(v["wire"]["handshake"])[1:] == H(cap["initiator"])


def test_hashes(v: dict[str, Any]) -> None:
    leaves = [c.leaf_node(2 * i, bytes([0x61 + i])) for i in range(3)]
    assert [[n.index, n.size, n.hash.hex()] for n in leaves] == [
        [x["index"], x["size"], x["hash"]] for x in v["leaves"]]
    p1 = c.parent_node(1, leaves[0], leaves[1])
    assert p1 == Node(1, 2, H(v["parent1"]["hash"]))
    assert c.parent_hash(leaves[1], leaves[0]) == p1.hash  # ordered by index, not by argument
    assert c.leaf_hash(b"a") == leaves[0].hash
    roots = [p1, leaves[2]]
    assert c.tree_hash(roots) == H(v["treeHash"])
    assert c.tree_hash([]) == c.blake2b256(b"\x02")


def test_tree_hash_length_7(kp: c.KeyPair) -> None:
    from cloudpal.data.merkle import MemoryNodeStore, MerkleTree

    tree = MerkleTree(MemoryNodeStore())
    _nodes, roots = tree.append_batch([bytes([x]) for x in b"abcdefg"])
    assert [r.index for r in roots] == [3, 9, 12]
    assert c.tree_hash(roots).hex() == "b6a8356cde3eeb5890dfdd11120af56c3f673298609d4175b432641dd66aa2d7"


# --------------------------------------------------------------------------- signatures


def test_signatures(v: dict[str, Any], kp: c.KeyPair) -> None:
    key = H(v["manifestHash_key"])
    th = H(v["treeHash"])
    assert c.signable(key, th, 3, 0) == H(v["signable"])
    assert c.signable_compat(th, 3, 0) == H(v["compat"]["signable"])
    assert c.signable_compat(th, 3, 0, legacy=True) == H(v["compat"]["signable"])[32:]
    assert c.sign(H(v["signable"]), kp.secret_key) == H(v["signatureRaw"])
    assert c.verify(H(v["signable"]), H(v["signatureRaw"]), kp.public_key)
    assert not c.verify(H(v["signable"])[:-1], H(v["signatureRaw"]), kp.public_key)
    assert not c.verify(H(v["signable"]), H(v["signatureRaw"])[:63], kp.public_key)
    assert not c.verify(H(v["signable"]), H(v["signatureRaw"]), kp.public_key[:31])

    ver = c.Verifier.from_manifest(c.default_signer_manifest(kp.public_key))
    assert ver.key == key and ver.version == 1 and not ver.compat
    sig = ver.sign(kp, th, 3, 0)
    assert sig == H(v["signatureMultisig"]) == H(v["realHypercore"]["signature"])
    assert len(sig) == 68
    assert ver.verify(sig, th, 3, 0)
    assert not ver.verify(sig, th, 4, 0)
    assert not ver.verify(sig, th, 3, 1)
    assert not ver.verify(sig, bytes(32), 3, 0)
    assert not ver.verify(H(v["signatureRaw"]), th, 3, 0)  # raw 64 bytes is not a multiSignature
    assert not ver.verify(None, th, 3, 0)
    assert not ver.verify(b"", th, 3, 0)

    compat = c.Verifier.from_compat_key(kp.public_key)
    assert compat.key == kp.public_key and compat.version == 0 and compat.compat
    csig = compat.sign(kp, th, 3, 0)
    assert csig == H(v["compat"]["signature"])
    assert compat.verify(csig, th, 3, 0)
    assert not compat.verify(sig, th, 3, 0)
    assert not compat.verify(csig, th, 2, 0)
    legacy = c.Verifier.from_compat_key(kp.public_key, legacy=True)
    assert legacy.verify(c.sign(c.signable_compat(th, 3, 0, True), kp.secret_key), th, 3, 0)

    with pytest.raises(ValueError):
        ver.sign(c.key_pair(bytes(32)), th, 3, 0)


def test_multisig_encoding(v: dict[str, Any]) -> None:
    raw = H(v["signatureRaw"])
    ms = c.MultiSignature((c.SignatureProof(0, raw, 0),))
    assert c.encode_multisig(ms) == H(v["signatureMultisig"])
    assert c.decode_multisig(H(v["signatureMultisig"])) == ms
    big = c.MultiSignature((c.SignatureProof(2, raw, 3), c.SignatureProof(300, raw)),
                           (Node(5, 70000, bytes(range(32))),))
    assert c.decode_multisig(c.encode_multisig(big)) == big
    v0 = c.MultiSignatureV0((c.SignatureProofV0(1, raw, c.PatchV0(4, 2, (0, 1))), c.SignatureProofV0(0, raw)),
                            (Node(9, 3, bytes(32)),))
    assert c.decode_multisig_v0(c.encode_multisig_v0(v0)) == v0
    for bad in (b"", b"\x01", b"\x01\x00" + raw[:10], b"\x05"):
        with pytest.raises(DecodeError):
            c.decode_multisig(bad)
        with pytest.raises(DecodeError):
            c.decode_multisig_v0(bad)


def _keys(n: int) -> list[c.KeyPair]:
    return [c.key_pair(bytes([0x40 + i]) * 32) for i in range(n)]


def test_quorum_verifier() -> None:
    kps = _keys(3)
    m = c.create_manifest([Signer(k.public_key) for k in kps])
    assert m.quorum == 2 and m.version == 1
    ver = c.Verifier.from_manifest(m)
    th = bytes(range(32))
    parts = [ver.sign(k, th, 5, 0) for k in kps]
    assert all(len(p) == 64 for p in parts)  # multi-signer: raw partial signatures

    def ms(*proofs: tuple[int, bytes]) -> bytes:
        return c.encode_multisig(c.MultiSignature(tuple(c.SignatureProof(i, s) for i, s in proofs)))

    assert ver.verify(ms((0, parts[0]), (2, parts[2])), th, 5, 0)
    assert ver.verify(ms((2, parts[2]), (1, parts[1]), (0, b"\x00" * 64)), th, 5, 0)  # only quorum checked
    assert not ver.verify(ms((0, parts[0])), th, 5, 0)  # below quorum
    assert not ver.verify(ms((0, parts[0]), (0, parts[0])), th, 5, 0)  # same signer twice
    assert not ver.verify(ms((0, parts[0]), (3, parts[2])), th, 5, 0)  # no such signer
    assert not ver.verify(ms((0, parts[0]), (1, parts[2])), th, 5, 0)  # wrong signer's signature
    patched = c.encode_multisig(c.MultiSignature((c.SignatureProof(0, parts[0], 0),
                                                  c.SignatureProof(1, parts[1], 2))))
    assert ver.verify(patched, th, 5, 0)  # patch ignored without allowPatch (as JS)
    pver = c.Verifier.from_manifest(c.create_manifest([Signer(k.public_key) for k in kps], allow_patch=True))
    assert not pver.verify(patched, th, 5, 0)  # patched proofs need the tree: refused
    zero = c.Verifier.from_manifest(c.create_manifest([], quorum=0))
    assert not zero.verify(ms((0, parts[0])), th, 5, 0)


def test_prologue_verifier() -> None:
    (k,) = _keys(1)
    th = bytes(range(32))
    m = c.create_manifest([Signer(k.public_key)], prologue=Prologue(th, 4))
    ver = c.Verifier.from_manifest(m)
    assert ver.verify(None, th, 4, 0)
    assert not ver.verify(None, th, 3, 0)
    assert not ver.verify(None, bytes(32), 4, 0)
    assert not ver.verify(None, th, 5, 0)
    assert ver.verify(ver.sign(k, bytes(32), 5, 0), bytes(32), 5, 0)


def test_version0_non_compat_signer() -> None:
    (k,) = _keys(1)
    ns = bytes([7]) * 32
    m = Manifest(version=0, quorum=1, signers=(Signer(k.public_key, ns),))
    key = c.manifest_hash(m)
    ver = c.Verifier(key, m)
    assert ver.version == 0 and not ver.compat
    sig = ver.sign(k, bytes(32), 2, 1)
    assert sig == c.sign(c.signable(ns, bytes(32), 2, 1), k.secret_key)  # namespace replaces the key
    assert ver.verify(sig, bytes(32), 2, 1)


def test_for_core(kp: c.KeyPair) -> None:
    m = c.default_signer_manifest(kp.public_key)
    key = c.manifest_hash(m)
    assert c.Verifier.for_core(key, m).key == key
    assert c.Verifier.for_core(kp.public_key, None).compat  # compat key without a manifest
    assert c.Verifier.for_core(kp.public_key, m).compat
    # without the manifest JS (and we) treat the key as a compat public key: nothing verifies
    blind = c.Verifier.for_core(key, None)
    assert blind.compat
    th = bytes(32)
    assert not blind.verify(c.Verifier.from_manifest(m).sign(kp, th, 1, 0), th, 1, 0)
    with pytest.raises(VerificationError):
        c.Verifier.for_core(key, c.default_signer_manifest(bytes(32)))


def test_create_manifest_validation() -> None:
    (k,) = _keys(1)
    s = Signer(k.public_key)
    assert c.create_manifest([s], user_data=b"").version == 2
    assert c.create_manifest([s], linked=[bytes(32)]).linked == (bytes(32),)
    assert c.create_manifest([s], linked=[]).linked is None
    for kwargs in ({"quorum": -1}, {"quorum": 2}, {"user_data": b"x", "version": 1},
                   {"linked": [bytes(32)], "version": 1}, {"linked": [b"x"]},
                   {"prologue": Prologue(b"x", 1)}):
        with pytest.raises(ValueError):
            c.create_manifest([s], **kwargs)
    with pytest.raises(ValueError):
        c.create_manifest([Signer(k.public_key, signature="rsa")])


# --------------------------------------------------------------------------- JS cross-check

JS_MANIFESTS = r"""
const Verifier = require('hypercore/lib/verifier')
const caps = require('hypercore/lib/caps')
const crypto = require('hypercore-crypto')
const b4a = require('b4a')
const H = (x) => (x === null ? null : b4a.from(x, 'hex'))
const hex = (b) => b4a.toString(b, 'hex')
const spec = JSON.parse(require('fs').readFileSync(0, 'utf8'))
const out = []
for (const s of spec) {
  const m = {
    version: s.version, hash: 'blake2b', allowPatch: s.allowPatch, quorum: s.quorum,
    signers: s.signers.map((x) => ({ signature: 'ed25519', namespace: H(x[1]), publicKey: H(x[0]) })),
    prologue: s.prologue && { hash: H(s.prologue[0]), length: s.prologue[1] },
    linked: s.linked && s.linked.map(H), userData: H(s.userData)
  }
  const enc = Verifier.encodeManifest(m)
  const key = Verifier.manifestHash(m)
  const dec = Verifier.decodeManifest(enc)
  const res = { enc: hex(enc), key: hex(key), reenc: hex(Verifier.encodeManifest(dec)) }
  if (s.sign) {
    const [th, length, fork] = [H(s.sign.treeHash), s.sign.length, s.sign.fork]
    const batch = {
      length, fork, hash: () => th,
      signable: (ns) => caps.treeSignable(ns, th, length, fork),
      signableCompat: (noHeader) => caps.treeSignableCompat(th, length, fork, noHeader)
    }
    const v = new Verifier(key, Verifier.createManifest(m))
    const kps = s.sign.seeds.map((x) => crypto.keyPair(H(x)))
    const parts = kps.map((kp) => v.sign(batch, kp))
    const sig = !s.sign.assemble ? parts[0]
      : v.assemble(s.sign.signers.map((signer, i) => ({ signer, signature: parts[i], patch: 0,
        nodes: null })))
    res.parts = parts.map(hex)
    res.sig = hex(sig)
    res.ok = v.verify(batch, sig)
  }
  out.push(res)
}
process.stdout.write(JSON.stringify(out))
"""


def _run_js(script: str, stdin: str) -> Any:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules/hypercore/lib/verifier.js").exists():
        pytest.fail("the JS reference stack is missing: install node 20, then run `npm ci` in js/ (make js)")
    res = subprocess.run([node, "-e", script], cwd=JS_DIR, input=stdin, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _manifest_cases() -> list[tuple[Manifest, list[c.KeyPair] | None, list[int]]]:
    kps = _keys(4)
    sg = [Signer(k.public_key, bytes([i + 1]) * 32) for i, k in enumerate(kps)]
    pro = Prologue(bytes(range(32)), 300)
    return [
        (c.default_signer_manifest(kps[0].public_key), kps[:1], [0]),
        (Manifest(1, quorum=2, signers=tuple(sg[:3])), [kps[2], kps[0]], [2, 0]),
        (Manifest(1, allow_patch=True, quorum=1, signers=tuple(sg[:2])), [kps[1]], [1]),
        (Manifest(1, quorum=1, signers=tuple(sg[:1]), prologue=pro), kps[:1], [0]),
        (Manifest(2, quorum=1, signers=tuple(sg[:1]), linked=(bytes(32), bytes([9]) * 32), user_data=b"hi"),
         kps[:1], [0]),
        (Manifest(2, quorum=1, signers=tuple(sg[:1]), user_data=b""), kps[:1], [0]),
        (Manifest(3, quorum=0, signers=(), linked=()), None, []),
        (Manifest(0, quorum=1, signers=tuple(sg[:1])), kps[:1], [0]),
        (Manifest(0, quorum=2, signers=tuple(sg[:3])), [kps[1], kps[2]], [1, 2]),
        (Manifest(0, allow_patch=True, quorum=1, signers=tuple(sg[:1])), kps[:1], [0]),
        (Manifest(0, quorum=0, signers=(), prologue=Prologue(bytes([3]) * 32, 0)), None, []),
    ]


def test_manifests_and_signatures_match_js() -> None:
    cases = _manifest_cases()
    th = bytes([0xAB]) * 32
    spec = []

    def assembled(m: Manifest) -> bool:
        """Whether signatures must be combined into a multiSignature (else one part is the signature)."""
        if len(m.signers) != 1:
            return True
        return m.version == 0 and m.allow_patch

    for m, kps, signers in cases:
        spec.append({
            "version": m.version, "allowPatch": m.allow_patch, "quorum": m.quorum,
            "signers": [[s.public_key.hex(), s.namespace.hex()] for s in m.signers],
            "prologue": [m.prologue.hash.hex(), m.prologue.length] if m.prologue else None,
            "linked": [k.hex() for k in m.linked] if m.linked is not None else None,
            "userData": m.user_data.hex() if m.user_data is not None else None,
            "sign": {"treeHash": th.hex(), "length": 1000, "fork": 2, "signers": signers,
                     "assemble": assembled(m),
                     "seeds": [k.secret_key[:32].hex() for k in kps]} if kps else None,
        })
    js = _run_js(JS_MANIFESTS, json.dumps(spec))
    assert len(js) == len(cases)
    for (m, kps, signers), res in zip(cases, js, strict=True):
        enc = c.encode_manifest(m)
        assert enc.hex() == res["enc"] == res["reenc"], m
        assert c.manifest_hash(m).hex() == res["key"]
        assert c.decode_manifest(enc) == m
        if not kps:
            continue
        ver = c.Verifier(c.manifest_hash(m), m)
        parts = [ver.sign(k, th, 1000, 2) for k in kps]
        assert [p.hex() for p in parts] == res["parts"], m
        if not assembled(m):
            sig = parts[0]
        elif ver.version == 0:
            sig = c.encode_multisig_v0(c.MultiSignatureV0(
                tuple(c.SignatureProofV0(i, p) for i, p in zip(signers, parts, strict=True))))
        else:
            sig = c.encode_multisig(c.MultiSignature(
                tuple(c.SignatureProof(i, p) for i, p in zip(signers, parts, strict=True))))
        assert sig.hex() == res["sig"], m
        assert res["ok"] is True
        assert ver.verify(sig, th, 1000, 2)
        assert not ver.verify(sig, th, 1001, 2)


# --------------------------------------------------------------------------- fuzzing

B32 = st.binary(min_size=32, max_size=32)
SIGNERS = st.lists(st.builds(Signer, B32, B32), max_size=3).map(tuple)
MANIFESTS_V1 = st.builds(
    Manifest,
    version=st.integers(1, 3), allow_patch=st.booleans(), quorum=st.integers(0, 2**40),
    signers=SIGNERS,
    prologue=st.none() | st.builds(Prologue, B32, st.integers(0, 2**53 - 1)),
    linked=st.none() | st.lists(B32, max_size=3).map(tuple),
    user_data=st.none() | st.binary(max_size=40),
)
MANIFESTS_V0 = st.one_of(
    st.builds(Manifest, version=st.just(0), quorum=st.just(0), signers=st.just(()),
              prologue=st.builds(Prologue, B32, st.just(0))),
    st.builds(Manifest, version=st.just(0), quorum=st.just(1), signers=SIGNERS.filter(lambda s: len(s) == 1)),
    st.builds(Manifest, version=st.just(0), allow_patch=st.booleans(), quorum=st.integers(0, 300),
              signers=SIGNERS).filter(
                  lambda m: not (m.quorum == 1 and len(m.signers) == 1 and not m.allow_patch)),
)


@settings(max_examples=300, deadline=None)
@given(MANIFESTS_V1 | MANIFESTS_V0)
def test_manifest_roundtrip(m: Manifest) -> None:
    enc = c.encode_manifest(m)
    assert c.decode_manifest(enc) == m
    assert c.manifest_hash(m) == c.blake2b256(c.MANIFEST, enc)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200) | MANIFESTS_V1.map(c.encode_manifest).flatmap(
    lambda b: st.tuples(st.just(b), st.integers(0, max(0, len(b) - 1)), st.integers(0, 255)).map(
        lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1:])))
def test_decode_manifest_fuzz(data: bytes) -> None:
    try:
        m = c.decode_manifest(data)
    except DecodeError:
        return
    assert isinstance(m, Manifest)
    c.manifest_hash(m)  # anything that decodes can be hashed (re-encoded)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_decode_multisig_fuzz(data: bytes) -> None:
    for dec in (c.decode_multisig, c.decode_multisig_v0):
        with contextlib.suppress(DecodeError):
            dec(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.binary(min_size=32, max_size=32), st.integers(0, 2**53 - 1),
       st.integers(0, 2**53 - 1))
def test_verify_garbage_never_raises(sig: bytes, th: bytes, length: int, fork: int) -> None:
    kps = _keys(3)
    for ver in (
        c.Verifier.from_manifest(c.default_signer_manifest(kps[0].public_key)),
        c.Verifier.from_compat_key(kps[0].public_key),
        c.Verifier.from_manifest(c.create_manifest([Signer(k.public_key) for k in kps])),
        c.Verifier.from_manifest(Manifest(0, quorum=2, signers=tuple(Signer(k.public_key) for k in kps))),
    ):
        assert ver.verify(sig, th, length, fork) is False
