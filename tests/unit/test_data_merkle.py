"""cloudpal.data.flat_tree and cloudpal.data.merkle against the notes and the real JS MerkleTree.

The cross-check runs tests/unit/data_merkle_proofs.js (node, cwd js/): it builds real
Hypercore 11.37.1 cores of 13 and 21 blocks from fixed seeds and dumps the proof JS's
`MerkleTree.proof` gives (or the error it throws) for every block index (plus one past the end)
× nodes 0..5 × every upgrade range (including invalid ones), hash and seek requests, plus
flat-tree tables, `maxMissingNodes` and a truncation. Our proofs must be identical, node for
node and error message for error message; every JS proof must then verify with our reader and
tampered copies must not. Missing node/js fails the test (never skips).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudpal.data import crypto as c
from cloudpal.data import flat_tree as flat
from cloudpal.data.crypto import Node
from cloudpal.data.errors import VerificationError
from cloudpal.data.merkle import (  # _verify_tree: to find where a proof's path ends
    BlockRequest,
    MemoryNodeStore,
    MerkleTree,
    Proof,
    ProofBlock,
    ProofRefused,
    ProofRequest,
    ProofSeek,
    ProofUpgrade,
    SeekRequest,
    StaleProof,
    StaleUpdate,
    UpgradeRequest,
    _verify_tree,
)

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "js"
SCRIPT = Path(__file__).with_name("data_merkle_proofs.js")
VECTORS = Path("/work/shared/notes/hypercore-vectors/vectors.json")
H = bytes.fromhex


# --------------------------------------------------------------------------- helpers


class Writer:
    """A writer core: tree + key pair + verifier, blocks kept in memory."""

    def __init__(self, seed: bytes, *, compat: bool = False, prologue: c.Prologue | None = None) -> None:
        self.kp = c.key_pair(seed)
        if compat:
            self.verifier = c.Verifier.from_compat_key(self.kp.public_key)
        else:
            signers = (c.Signer(self.kp.public_key),)
            self.verifier = c.Verifier.from_manifest(c.Manifest(quorum=1, signers=signers, prologue=prologue))
        self.store = MemoryNodeStore()
        self.tree = MerkleTree(self.store, prologue=prologue)
        self.blocks: list[bytes] = []

    def append(self, blocks: list[bytes]) -> None:
        u = self.tree.append(blocks)
        self.tree.commit(u.with_signature(self.verifier.sign(self.kp, u.tree_hash(), u.length, u.fork)))
        self.blocks += blocks

    def proof(self, req: ProofRequest) -> Proof:
        p = self.tree.proof(req)
        if p.block is not None:
            value = self.blocks[p.block.index] if p.block.index < len(self.blocks) else b"?"
            p = replace(p, block=replace(p.block, value=value))
        return p


def reader_at(writer: Writer, length: int) -> MerkleTree:
    """A reader that fully verified the writer's first `length` blocks (all nodes under them)."""
    head = 2 * length
    store = MemoryNodeStore(n for n in writer.store.nodes.values() if flat.right_span(n.index) < head)
    return MerkleTree.open(store, length, fork=writer.tree.fork, prologue=writer.tree.prologue)


def idx(nodes: tuple[Node, ...]) -> list[int]:
    return [n.index for n in nodes]


def js_block(i: int) -> bytes:
    """Block i of the JS cores (`blockValue` in data_merkle_proofs.js)."""
    return bytes(((i * 7 + j * 13 + 3) & 255) for j in range(i % 5 + 1))


def build_js_writer(core: dict[str, Any]) -> Writer:
    """The same core as the JS script's, appended in the same batches."""
    w = Writer(H(core["seed"]))
    n = core["n"]
    i = 0
    while i < n:
        k = min(n - i, 1 + i % 4)
        w.append([js_block(j) for j in range(i, i + k)])
        i += k
    return w


def request_of(case: list[Any]) -> ProofRequest:
    b, h, s, up, _ = case
    return ProofRequest(
        block=BlockRequest(*b) if b else None,
        hash=BlockRequest(*h) if h else None,
        seek=SeekRequest(*s) if s else None,
        upgrade=UpgradeRequest(*up) if up else None,
    )


def summary(p: Proof) -> list[Any]:
    """Our proof in the JS dump's shape."""
    return [
        idx(p.block.nodes) if p.block else None,
        idx(p.hash.nodes) if p.hash else None,
        idx(p.seek.nodes) if p.seek else None,
        idx(p.upgrade.nodes) if p.upgrade else None,
        idx(p.upgrade.additional_nodes) if p.upgrade else None,
        [p.upgrade.start, p.upgrade.length] if p.upgrade else None,
    ]


@pytest.fixture(scope="module")
def js_dump() -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules/hypercore/lib/merkle-tree.js").exists():
        pytest.fail("the JS reference stack is missing: install node 20, then run `npm ci` in js/ (make js)")
    res = subprocess.run([node, str(SCRIPT)], cwd=JS_DIR, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def js_writers(js_dump: dict[str, Any]) -> list[Writer]:
    return [build_js_writer(core) for core in js_dump["cores"]]


# --------------------------------------------------------------------------- flat tree


def test_flat_tree_table() -> None:
    # notes §4.1
    table = [(0, 0, 1, 2, (0, 0), None), (1, 1, 3, 5, (0, 2), (0, 2)), (3, 2, 7, 11, (0, 6), (1, 5)),
             (4, 0, 5, 6, (4, 4), None), (9, 1, 11, 13, (8, 10), (8, 10)), (11, 2, 7, 3, (8, 14), (9, 13))]
    for i, d, p, s, sp, ch in table:
        got = (flat.depth(i), flat.parent(i), flat.sibling(i), flat.spans(i), flat.children(i))
        assert got == (d, p, s, sp, ch)
        assert (flat.left_span(i), flat.right_span(i)) == sp
        assert flat.count_leaves(i) == 2**d
    roots = {1: [0], 2: [1], 3: [1, 4], 4: [3], 5: [3, 8], 6: [3, 9], 7: [3, 9, 12], 8: [7], 40: [31, 71]}
    for length, expected in roots.items():
        assert flat.full_roots(2 * length) == expected
    assert flat.full_roots(0) == []
    with pytest.raises(ValueError):
        flat.full_roots(3)
    with pytest.raises(ValueError):
        flat.future_roots(3)
    assert flat.index(3, 1) == 23 and flat.offset(23) == 1 and flat.offset(6) == 3
    assert flat.left_child(4) == -1 and flat.right_child(4) == -1
    assert flat.depth(2**60 - 1) == 60 and flat.parent(2**60 - 1) == 2**61 - 1  # no 32-bit limits


SNAKE = {"leftChild": "left_child", "rightChild": "right_child", "nextTree": "next_tree",
         "prevTree": "prev_tree", "leftSpan": "left_span", "rightSpan": "right_span", "isLeft": "is_left",
         "isRight": "is_right", "countLeaves": "count_leaves", "peekLeftSpan": "peek_left_span",
         "peekRightSpan": "peek_right_span"}


def test_flat_tree_matches_js(js_dump: dict[str, Any]) -> None:
    f = js_dump["flat"]
    for row in f["fns"]:
        i = row[0]
        ch = flat.children(i)
        mine = [i, flat.depth(i), flat.offset(i), flat.parent(i), flat.sibling(i), flat.left_child(i),
                flat.right_child(i), list(ch) if ch else None, flat.left_span(i), flat.right_span(i),
                flat.count(i), flat.count_leaves(i), list(flat.spans(i)), flat.next_leaf(i)]
        assert mine == row
    for i, (roots, future) in enumerate(f["roots"]):
        assert flat.full_roots(2 * i) == roots
        assert flat.future_roots(2 * i) == future
    for a, b, patch in f["patches"]:
        assert flat.patch(2 * a, 2 * b) == patch, (a, b)
    for start, contains, is_root, steps in f["iterators"]:
        ite = flat.iterator(start)
        assert [ite.contains(j) for j in range(40)] == contains
        assert [ite.is_root(n) for n in range(40)] == is_root
        for op, (ret, index, offset, factor) in zip(f["ops"], steps, strict=True):
            got = getattr(ite, SNAKE.get(op, op))()
            assert [got, ite.index, ite.offset, ite.factor] == [ret, index, offset, factor], (start, op)
    for to, seen in f["fullRootWalks"]:
        walk = []
        ite = flat.iterator(0)
        while ite.full_root(to):
            walk.append([ite.index, ite.factor])
            ite.next_tree()
        assert walk == seen
        assert [x[0] for x in walk] == flat.full_roots(to)


# --------------------------------------------------------------------------- vectors


def test_vectors_tree_and_proofs() -> None:
    v = json.loads(VECTORS.read_text())
    w = Writer(H(v["seed"]))
    nodes, roots = w.tree.append_batch([b"a", b"b", b"c"])
    assert [[n.index, n.size, n.hash.hex()] for n in nodes] == [
        [0, 1, v["leaves"][0]["hash"]], [2, 1, v["leaves"][1]["hash"]], [1, 2, v["parent1"]["hash"]],
        [4, 1, v["leaves"][2]["hash"]]]
    assert [[r.index, r.size, r.hash.hex()] for r in roots] == [
        [r["index"], r["size"], r["hash"]] for r in v["roots"]]
    w.append([b"a", b"b", b"c"])
    assert w.tree.tree_hash() == H(v["treeHash"]) and w.tree.byte_length == 3 and w.tree.length == 3
    assert w.tree.signature == H(v["signatureMultisig"])
    assert w.verifier.key == H(v["manifestHash_key"])
    assert sorted([n.index, n.size, n.hash.hex()] for n in w.store.nodes.values()) == [
        [n["index"], n["size"], n["hash"]] for n in v["realStoredNodes"]]

    pv = v["proof_block0_upgrade3"]
    p = w.proof(ProofRequest(block=BlockRequest(0, 0), upgrade=UpgradeRequest(0, 3)))
    assert p.block is not None and p.upgrade is not None
    assert p.block.value == pv["block"]["value"].encode()
    assert [[n.index, n.size, n.hash.hex()] for n in p.block.nodes] == [
        [n["index"], n["size"], n["hash"]] for n in pv["block"]["nodes"]]
    assert [[n.index, n.size, n.hash.hex()] for n in p.upgrade.nodes] == [
        [n["index"], n["size"], n["hash"]] for n in pv["upgrade"]["nodes"]]
    assert p.upgrade.additional_nodes == () and p.upgrade.signature == H(pv["upgrade"]["signature"])
    assert (p.upgrade.start, p.upgrade.length) == (0, 3)
    # the notes' first-upgrade trace: roots 1 and 4 when no block is asked for
    p = w.proof(ProofRequest(upgrade=UpgradeRequest(0, 3)))
    assert p.upgrade is not None and idx(p.upgrade.nodes) == [1, 4]
    for block, key in ((2, "proof_block2_noupgrade_nodes0"), (1, "proof_block1_noupgrade_nodes0")):
        p = w.proof(ProofRequest(block=BlockRequest(block, 0)))
        assert p.block is not None and idx(p.block.nodes) == v[key]["nodes"] == []
        assert p.upgrade is None
    p = w.proof(ProofRequest(block=BlockRequest(0, 1)))
    assert p.block is not None and idx(p.block.nodes) == [2]

    w7 = Writer(H(v["seed"]))
    w7.append([bytes([x]) for x in b"abcdefg"])
    assert [r.index for r in w7.tree.roots] == [3, 9, 12]
    assert w7.tree.tree_hash().hex() == "b6a8356cde3eeb5890dfdd11120af56c3f673298609d4175b432641dd66aa2d7"


def test_notes_live_append_flow() -> None:
    """Notes §7.5: reader at 3 asks upgrade{3,1}, writer is at 5 → additional node 8, roots [3, 8]."""
    w = Writer(bytes(range(32)))
    w.append([b"a", b"b", b"c"])
    reader = MerkleTree(MemoryNodeStore())
    first = w.proof(ProofRequest(upgrade=UpgradeRequest(0, 3)))
    reader.commit(reader.verify(first, w.verifier))
    assert reader.length == 3 and reader.tree_hash() == w.tree.tree_hash()
    w.append([b"d"])
    w.append([b"e"])
    p = w.proof(ProofRequest(upgrade=UpgradeRequest(3, 1)))
    assert p.upgrade is not None
    assert idx(p.upgrade.nodes) == [6] and idx(p.upgrade.additional_nodes) == [8]
    assert MerkleTree.upgrade_length(p.upgrade) == 5
    u = reader.verify(p, w.verifier)
    reader.commit(u)
    assert reader.length == 5 and [r.index for r in reader.roots] == [3, 8]
    assert reader.signature == w.tree.signature and reader.byte_length == 5
    # blocks 3 and 4 now need no nodes (leaf 6 and root 8 are known)
    assert reader.missing_nodes(6) == 0 and reader.missing_nodes(8) == 0
    assert reader.missing_nodes(0) == 1  # leaf 0 is missing, its parent 1 (an old root) is stored
    for b in range(5):
        req = ProofRequest(block=BlockRequest(b, reader.missing_nodes(2 * b)))
        reader.commit(reader.verify(w.proof(req), w.verifier))
    assert all(reader.store.get(i) == w.store.get(i) for i in range(10))


# --------------------------------------------------------------------------- JS cross-check


def test_js_writer_state(js_dump: dict[str, Any], js_writers: list[Writer]) -> None:
    for core, w in zip(js_dump["cores"], js_writers, strict=True):
        assert w.verifier.key.hex() == core["key"]
        assert w.kp.public_key.hex() == core["publicKey"]
        assert [b.hex() for b in w.blocks] == core["blocks"]
        assert sorted([n.index, n.size, n.hash.hex()] for n in w.store.nodes.values()) == core["nodes"]
        assert w.tree.tree_hash().hex() == core["treeHash"]
        assert w.tree.signature is not None and w.tree.signature.hex() == core["signature"]
        assert w.tree.byte_length == core["byteLength"]
        for i, length, expected in core["maxMissing"]:
            assert MerkleTree.max_missing_nodes(i, length) == expected, (i, length)


def test_js_proofs_identical(js_dump: dict[str, Any], js_writers: list[Writer]) -> None:
    total = refused = 0
    for core, w in zip(js_dump["cores"], js_writers, strict=True):
        for case in core["cases"]:
            expected = case[4]
            try:
                got: Any = summary(w.tree.proof(request_of(case)))
            except ProofRefused as e:
                got = f"E:INVALID_OPERATION: {e}"
                refused += 1
            assert got == expected, case
            total += 1
    assert total > 120_000 and refused > 40_000 and total - refused > 25_000


def test_js_proofs_verify(js_dump: dict[str, Any], js_writers: list[Writer]) -> None:
    """Every proof JS produced verifies with our reader, unless its path ends at a node a reader
    at `upgrade.start` cannot have (then it is refused for that reason, as JS's verifier does);
    a sample of tampered copies is always refused."""
    rng = random.Random(5)
    verified = unreachable = tampered = 0
    for core, w in zip(js_dump["cores"], js_writers, strict=True):
        n = core["n"]
        readers = {length: reader_at(w, length) for length in range(n + 1)}
        for case in core["cases"]:
            if isinstance(case[4], str):
                continue
            proof = w.proof(request_of(case))
            start = proof.upgrade.start if proof.upgrade else n
            reader = readers[start]
            try:
                update = reader.verify(proof, w.verifier)
            except VerificationError as e:
                assert "which we do not have" in str(e), (case, e)
                unreachable += 1
                continue
            verified += 1
            if proof.upgrade:
                assert update.upgraded and update.length == MerkleTree.upgrade_length(proof.upgrade) == n
                assert update.tree_hash() == w.tree.tree_hash() and update.roots == w.tree.roots
            stored = all(w.store.get(x.index) == x for x in update.nodes)
            assert stored, case
            if rng.random() < 0.04:
                tampered += check_tampering(reader, proof, w.verifier, rng)
    assert verified > 24_000 and unreachable > 2_000 and tampered > 10_000


def check_tampering(full: MerkleTree, proof: Proof, verifier: c.Verifier, rng: random.Random) -> int:
    """Flip/drop/replace parts of a valid proof: each copy must raise VerificationError.

    Checked with a lean reader that stores only its roots and the node the proof's path ends at,
    so that a shortened path cannot end at some other node a full reader happens to store.
    """
    top = _verify_tree(proof, [])
    keep = [*full.roots, *([top] if top is not None and full.store.get(top.index) == top else [])]
    reader = MerkleTree(MemoryNodeStore(keep), length=full.length, fork=full.fork, roots=full.roots,
                        prologue=full.prologue)
    reader.verify(proof, verifier)
    sections = [s for s in ("block", "hash", "seek")
                if getattr(proof, s) is not None and getattr(proof, s).nodes]
    variants: list[Proof] = []

    def nodes_of(p: Proof) -> list[tuple[str, str, tuple[Node, ...]]]:
        out = [(s, "nodes", getattr(p, s).nodes) for s in sections]
        if p.upgrade:
            out += [("upgrade", f, getattr(p.upgrade, f)) for f in ("nodes", "additional_nodes")
                    if getattr(p.upgrade, f)]
        return out

    for sec, fld, nodes in nodes_of(proof):
        k = rng.randrange(len(nodes))
        node = nodes[k]
        flipped = bytearray(node.hash)
        flipped[rng.randrange(32)] ^= 1 << rng.randrange(8)
        for changed in (replace(node, hash=bytes(flipped)), replace(node, size=node.size + 1),
                        replace(node, index=node.index + 2)):
            variants.append(_with_nodes(proof, sec, fld, (*nodes[:k], changed, *nodes[k + 1:])))
        variants.append(_with_nodes(proof, sec, fld, nodes[:k] + nodes[k + 1:]))  # dropped
    if proof.block is not None and proof.block.value:
        value = bytearray(proof.block.value)
        value[rng.randrange(len(value))] ^= 0x80
        variants.append(replace(proof, block=replace(proof.block, value=bytes(value))))
        variants.append(replace(proof, block=replace(proof.block, value=proof.block.value + b"x")))
    if proof.upgrade is not None:
        sig = bytearray(proof.upgrade.signature or b"")
        sig[rng.randrange(2, 66)] ^= 4
        variants.append(replace(proof, upgrade=replace(proof.upgrade, signature=bytes(sig))))
        variants.append(replace(proof, upgrade=replace(proof.upgrade, signature=None)))
        variants.append(replace(proof, upgrade=replace(proof.upgrade, signature=bytes(sig[2:66]))))
        variants.append(replace(proof, upgrade=replace(proof.upgrade, additional_nodes=(
            *proof.upgrade.additional_nodes, Node(2**40, 1, bytes(32))))))
    for bad in variants:
        with pytest.raises(VerificationError):
            reader.verify(bad, verifier)
    return len(variants)


def _with_nodes(p: Proof, sec: str, fld: str, nodes: tuple[Node, ...]) -> Proof:
    part = getattr(p, sec)
    return replace(p, **{sec: replace(part, **{fld: nodes})})


def test_js_truncate(js_dump: dict[str, Any], js_writers: list[Writer]) -> None:
    for core, w in zip(js_dump["cores"], js_writers, strict=True):
        t = core["truncate"]
        before = dict(w.store.nodes)
        u = w.tree.truncate(t["length"])
        assert u.fork == t["fork"] == 1 and u.length == t["length"]
        assert [[r.index, r.size, r.hash.hex()] for r in u.roots] == t["roots"]
        assert u.tree_hash().hex() == t["treeHash"]
        signed = u.with_signature(w.verifier.sign(w.kp, u.tree_hash(), u.length, u.fork))
        assert signed.signature is not None and signed.signature.hex() == t["signature"]
        w.tree.commit(signed)
        assert all(flat.right_span(i) < 2 * u.length for i in w.store.nodes)
        assert all(before[i] == n for i, n in w.store.nodes.items())
        w.blocks = w.blocks[: u.length]
        w.append([b"after-truncate"])
        assert w.tree.length == t["appended"]["length"]
        assert w.tree.tree_hash().hex() == t["appended"]["treeHash"]
        assert w.tree.signature is not None and w.tree.signature.hex() == t["appended"]["signature"]


# --------------------------------------------------------------------------- local behaviour


def test_stale_and_mismatched_state() -> None:
    w = Writer(bytes([9]) * 32)
    w.append([b"x", b"yy", b"zzz"])
    reader = MerkleTree(MemoryNodeStore())
    p = w.proof(ProofRequest(block=BlockRequest(1, 0), upgrade=UpgradeRequest(0, 3)))
    with pytest.raises(StaleProof):
        reader.verify(replace(p, fork=1), w.verifier)
    u = reader.verify(p, w.verifier)
    reader.commit(u)
    with pytest.raises(StaleProof):  # made for length 0, we are at 3 now
        reader.verify(p, w.verifier)
    with pytest.raises(StaleUpdate):
        reader.commit(u)
    # a block proof with no upgrade must end at a node we have
    with pytest.raises(VerificationError, match="do not have"):
        MerkleTree(MemoryNodeStore()).verify(w.proof(ProofRequest(block=BlockRequest(0, 1))), w.verifier)
    # another core's signature
    other = Writer(bytes([8]) * 32)
    with pytest.raises(VerificationError, match="signature"):
        MerkleTree(MemoryNodeStore()).verify(p, other.verifier)
    with pytest.raises(VerificationError):
        no_value = ProofBlock(1, None, p.block.nodes if p.block else ())
        MerkleTree(MemoryNodeStore()).verify(replace(p, block=no_value), w.verifier)
    with pytest.raises(ValueError):
        MerkleTree(MemoryNodeStore(), length=3)
    with pytest.raises(ValueError):
        MerkleTree.open(MemoryNodeStore(), 3)
    with pytest.raises(ValueError):
        w.tree.truncate(4)
    # what the wire cannot carry is refused up front
    with pytest.raises(VerificationError, match="malformed"):
        reader.verify(replace(p, block=ProofBlock(0, b"x", (Node(-1, 1, bytes(32)),))), w.verifier)
    with pytest.raises(VerificationError, match="negative"):
        reader.verify(replace(p, block=ProofBlock(-1, b"x", ())), w.verifier)
    with pytest.raises(VerificationError, match="too many"):
        reader.verify(replace(p, block=ProofBlock(0, b"x", (Node(2, 1, bytes(32)),) * 300)), w.verifier)
    with pytest.raises(ProofRefused, match="negative"):
        w.tree.proof(ProofRequest(block=BlockRequest(0, -1)))
    # an empty core answers with an empty proof, as JS
    empty = MerkleTree(MemoryNodeStore())
    assert empty.proof(ProofRequest(block=BlockRequest(0, 0), upgrade=UpgradeRequest(0, 1))) == Proof(0)


def test_compat_and_prologue_cores() -> None:
    w = Writer(bytes([3]) * 32, compat=True)
    w.append([b"one", b"two", b"three", b"four", b"five"])
    assert w.tree.signature is not None and len(w.tree.signature) == 64
    r = MerkleTree(MemoryNodeStore())
    r.commit(r.verify(w.proof(ProofRequest(block=BlockRequest(4, 0), upgrade=UpgradeRequest(0, 5))),
                      c.Verifier.for_core(w.kp.public_key, None)))
    assert r.length == 5 and r.tree_hash() == w.tree.tree_hash()

    # prologue: the first 4 blocks are fixed by hash, no signature is needed up to there
    blocks = [b"p0", b"p1", b"p2", b"p3"]
    _, roots = MerkleTree(MemoryNodeStore()).append_batch(blocks)
    pro = c.Prologue(c.tree_hash(roots), 4)
    w = Writer(bytes([4]) * 32, prologue=pro)
    w.append(blocks)
    p = w.proof(ProofRequest(upgrade=UpgradeRequest(0, 4)))
    assert p.upgrade is not None
    r = MerkleTree(MemoryNodeStore(), prologue=pro)
    r.verify(replace(p, upgrade=replace(p.upgrade, signature=None)), w.verifier)  # the hash suffices
    w.append([b"later"])
    p = w.proof(ProofRequest(upgrade=UpgradeRequest(2, 3)))  # JS rewrites a start inside the prologue
    assert p.upgrade is not None and (p.upgrade.start, p.upgrade.length) == (0, 4)
    assert idx(p.upgrade.additional_nodes) == [8]
    with pytest.raises(VerificationError):  # past the prologue a signature is needed again
        r.verify(replace(p, upgrade=replace(p.upgrade, signature=None)), w.verifier)
    r.commit(r.verify(p, w.verifier))
    assert r.length == 5 and r.tree_hash() == w.tree.tree_hash()
    with pytest.raises(VerificationError, match="prologue"):
        MerkleTree(MemoryNodeStore(), prologue=pro).verify(
            replace(p, upgrade=replace(p.upgrade, start=0, length=3)), w.verifier)
    bad = MerkleTree(MemoryNodeStore(), prologue=c.Prologue(bytes(32), 4))
    with pytest.raises(VerificationError):
        bad.verify(p, w.verifier)


def test_missing_nodes_and_seek() -> None:
    w = Writer(bytes([5]) * 32)
    sizes = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    w.append([bytes([i]) * s for i, s in enumerate(sizes)])
    t = w.tree
    assert t.missing_nodes(0) == 0  # a writer has everything
    assert t.missing_nodes(2 * 11) == 0  # outside the tree
    r = MerkleTree(MemoryNodeStore())
    r.commit(r.verify(w.proof(ProofRequest(upgrade=UpgradeRequest(0, 11))), w.verifier))
    # roots are 7, 17, 20: block 0 needs siblings 2, 5, 11 (3 nodes) to reach root 7
    assert [x.index for x in r.roots] == [7, 17, 20]
    assert r.missing_nodes(0) == 3 and r.missing_nodes(16) == 1 and r.missing_nodes(20) == 0
    for i in range(16):
        assert r.missing_nodes(i, 0) == 0
    for b in (0, 5, 9):
        nodes = r.missing_nodes(2 * b)
        assert nodes <= MerkleTree.max_missing_nodes(2 * b, r.length)
        r.commit(r.verify(w.proof(ProofRequest(block=BlockRequest(b, nodes))), w.verifier))
    assert r.missing_nodes(2) == 0 and r.missing_nodes(12) == 1

    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    for b in range(len(sizes)):
        assert t.byte_offset(2 * b) == offsets[b]
        assert t.byte_range(b) == (offsets[b], sizes[b])
    assert t.byte_offset(22) == t.byte_length == offsets[-1]
    with pytest.raises(ValueError):
        t.byte_range(11)
    for byte in range(offsets[-1] + 1):
        block = max(i for i in range(len(offsets)) if offsets[i] <= byte)
        assert t.seek(byte) == (block, byte - offsets[block]), byte
    assert t.seek(offsets[-1] + 1) is None
    assert r.seek(offsets[-1] - 1) == (10, sizes[10] - 1)
    assert r.seek(4) == (2, 0)  # node 1 is known
    assert r.seek(28) is None  # block 6 (leaf 12) is needed and missing
    assert r.upgradeable(11) and not r.upgradeable(3) and t.upgradeable(3)


# --------------------------------------------------------------------------- properties

BLOCKS = st.lists(st.binary(max_size=6), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(BLOCKS, st.data())
def test_batch_splits_do_not_matter(blocks: list[bytes], data: st.DataObject) -> None:
    one = MerkleTree(MemoryNodeStore())
    one.commit(one.append(blocks))
    split = MerkleTree(MemoryNodeStore())
    i = 0
    while i < len(blocks):
        k = data.draw(st.integers(1, len(blocks) - i))
        split.commit(split.append(blocks[i:i + k]))
        i += k
    assert split.roots == one.roots and split.tree_hash() == one.tree_hash()
    assert split.length == len(blocks) and split.byte_length == sum(map(len, blocks))
    assert split.store.nodes == one.store.nodes  # type: ignore[attr-defined]
    assert [r.index for r in one.roots] == flat.full_roots(2 * len(blocks))
    assert len(one.store.nodes) == 2 * len(blocks) - bin(len(blocks)).count("1")  # type: ignore[attr-defined]


@settings(max_examples=120, deadline=None)
@given(BLOCKS, st.data())
def test_reader_round_trip(blocks: list[bytes], data: st.DataObject) -> None:
    """A reader at any length verifies upgrades (optionally with a block) and realistic block proofs."""
    w = Writer(bytes([6]) * 32)
    n = len(blocks)
    cut = data.draw(st.integers(1, n))
    w.append(blocks[:cut])
    start = data.draw(st.integers(0, cut - 1))
    r = reader_at(w, start)
    if n > cut:
        w.append(blocks[cut:])  # the writer grew since: additional nodes
    b = data.draw(st.none() | st.integers(0, cut - 1))
    nodes = r.missing_nodes(2 * b) if b is not None and b < start else 0
    req = ProofRequest(block=BlockRequest(b, nodes) if b is not None else None,
                       upgrade=UpgradeRequest(start, cut - start))
    p = w.proof(req)
    u = r.verify(p, w.verifier)
    r.commit(u)
    assert r.length == n and r.tree_hash() == w.tree.tree_hash()
    for i in data.draw(st.lists(st.integers(0, n - 1), max_size=5)):
        r.commit(r.verify(w.proof(ProofRequest(block=BlockRequest(i, r.missing_nodes(2 * i)))), w.verifier))
        assert r.store.get(2 * i) == w.store.get(2 * i)


HASH32 = st.binary(min_size=32, max_size=32)
NODES = st.lists(st.builds(Node, st.integers(0, 80) | st.integers(0, 2**53 - 1), st.integers(0, 50), HASH32),
                 max_size=6).map(tuple)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 12), st.builds(
    Proof, st.just(0),
    st.none() | st.builds(ProofBlock, st.integers(0, 40), st.binary(max_size=4), NODES),
    st.none(),
    st.none() | st.builds(ProofSeek, st.integers(0, 50), NODES),
    st.none() | st.builds(ProofUpgrade, st.integers(0, 14), st.integers(0, 20), NODES, NODES,
                          st.none() | st.binary(max_size=70)),
))
def test_garbage_proofs_only_raise_verification_error(length: int, proof: Proof) -> None:
    w = Writer(bytes([7]) * 32)
    if length:
        w.append([bytes([i]) for i in range(length)])
    with contextlib.suppress(VerificationError):
        w.tree.verify(proof, w.verifier)
