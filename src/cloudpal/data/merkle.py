"""The Merkle tree of a Hypercore: appends, proofs for peers, and verification of their proofs.

A sans-IO port of hypercore 11.37.1 `lib/merkle-tree.js`. Nodes live in a `NodeStore` (any
storage with get/put/delete by flat-tree index), the tree head (length, fork, roots, signature)
lives in a `MerkleTree`. Nothing is written until `commit()`: `append`, `truncate` and `verify`
return a `TreeUpdate` the caller signs/persists, so a failed check leaves everything unchanged.

Why a faithful port and not "any correct Merkle proof": a JS reader checks node lists with
`NodeQueue.shift(expectedIndex)` and refuses a proof whose nodes come in another order, and a JS
writer answers (or refuses) requests by its own rules. `proof()` therefore produces exactly the
node lists of `MerkleTree.proof` (checked against the real JS code for every block, node count and
upgrade range of two cores, see tests/unit/test_data_merkle.py), and `verify()` accepts exactly
what JS's `verifyTree` + `verifyUpgrade` + signature check accept, with a few extra refusals
(leftover nodes, absurdly long node lists) that a JS writer never triggers.

The proof types mirror the wire `Request`/`Data` fields (block: index, value, nodes; upgrade:
start, length, nodes, additional_nodes, signature) so the replicator maps them field by field.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from cloudpal.data import flat_tree as flat
from cloudpal.data.crypto import Node, Prologue, Verifier, leaf_node, parent_node, tree_hash
from cloudpal.data.errors import DataError, VerificationError

__all__ = [
    "BlockRequest",
    "MemoryNodeStore",
    "MerkleTree",
    "Node",
    "NodeStore",
    "Proof",
    "ProofBlock",
    "ProofHash",
    "ProofRefused",
    "ProofRequest",
    "ProofSeek",
    "ProofUpgrade",
    "SeekRequest",
    "StaleProof",
    "StaleUpdate",
    "TreeUpdate",
    "UpgradeRequest",
]

# A valid path is at most ~54 nodes deep (indices < 2^53) and a tree has at most ~54 roots.
MAX_PROOF_NODES = 256
_MAX_STEPS = 1024  # JS's ASSERTION bound on every tree walk


class ProofRefused(DataError):
    """A request no proof can answer (bad range, too many nodes, nodes we lack).

    JS throws in `MerkleTree.proof` for exactly these cases; the replicator answers noData
    INVALID_REQUEST (reason 2) and counts the peer's invalid requests.
    """


class StaleProof(VerificationError):
    """A proof made for another state of ours (fork changed, length moved): JS ignores it.

    A subclass of VerificationError so callers that only care about "rejected" need one except
    clause; callers that want JS's leniency can ignore this one instead of dropping the peer.
    """


class StaleUpdate(DataError):
    """`commit()` of an update prepared against a head that has changed since."""


# --------------------------------------------------------------------------- storage


class NodeStore(Protocol):
    """Where tree nodes live, keyed by flat-tree index."""

    def get(self, index: int) -> Node | None: ...

    def put_many(self, nodes: Iterable[Node]) -> None: ...

    def delete_range(self, start: int, end: int) -> None:
        """Delete nodes with start <= index < end (truncation)."""


class MemoryNodeStore:
    """A dict-backed NodeStore for tests and in-memory cores."""

    def __init__(self, nodes: Iterable[Node] = ()) -> None:
        self.nodes: dict[int, Node] = {n.index: n for n in nodes}

    def get(self, index: int) -> Node | None:
        return self.nodes.get(index)

    def put_many(self, nodes: Iterable[Node]) -> None:
        for n in nodes:
            self.nodes[n.index] = n

    def delete_range(self, start: int, end: int) -> None:
        if end - start <= len(self.nodes):
            for i in range(start, end):
                self.nodes.pop(i, None)
        else:
            for i in [i for i in self.nodes if start <= i < end]:
                del self.nodes[i]

    def __len__(self) -> int:
        return len(self.nodes)


# --------------------------------------------------------------------------- requests and proofs


@dataclass(frozen=True)
class BlockRequest:
    """wire `request.block` / `request.hash`: `nodes` = how many path nodes the requester lacks."""

    index: int
    nodes: int


@dataclass(frozen=True)
class SeekRequest:
    bytes: int
    padding: int = 0


@dataclass(frozen=True)
class UpgradeRequest:
    start: int
    length: int


@dataclass(frozen=True)
class ProofRequest:
    """The proof-relevant part of a wire `Request` (`hash.index` is a flat-tree index)."""

    block: BlockRequest | None = None
    hash: BlockRequest | None = None
    seek: SeekRequest | None = None
    upgrade: UpgradeRequest | None = None


@dataclass(frozen=True)
class ProofBlock:
    """wire `data.block`. `proof()` leaves `value` None: the caller fills in the block bytes."""

    index: int
    value: bytes | None
    nodes: tuple[Node, ...] = ()


@dataclass(frozen=True)
class ProofHash:
    index: int
    nodes: tuple[Node, ...] = ()


@dataclass(frozen=True)
class ProofSeek:
    bytes: int
    nodes: tuple[Node, ...] = ()


@dataclass(frozen=True)
class ProofUpgrade:
    start: int
    length: int
    nodes: tuple[Node, ...] = ()
    additional_nodes: tuple[Node, ...] = ()
    signature: bytes | None = None


@dataclass(frozen=True)
class Proof:
    """The proof-relevant part of a wire `Data` message."""

    fork: int
    block: ProofBlock | None = None
    hash: ProofHash | None = None
    seek: ProofSeek | None = None
    upgrade: ProofUpgrade | None = None


@dataclass(frozen=True)
class TreeUpdate:
    """A change to the tree, computed but not applied: `MerkleTree.commit(update)` applies it.

    `nodes` are to be persisted; when `upgraded` the head becomes (length, fork, roots,
    signature). Truncations also list what to delete: [drop_from, drop_to) and `drop_nodes`.
    """

    base_length: int
    base_fork: int
    length: int
    fork: int
    roots: tuple[Node, ...]
    byte_length: int
    signature: bytes | None
    nodes: tuple[Node, ...] = ()
    upgraded: bool = False
    drop_from: int = 0
    drop_to: int = 0
    drop_nodes: tuple[int, ...] = ()

    def tree_hash(self) -> bytes:
        return tree_hash(self.roots)

    def with_signature(self, signature: bytes) -> TreeUpdate:
        return replace(self, signature=signature)


# --------------------------------------------------------------------------- internals


class _NodeQueue:
    """JS `NodeQueue`: hands out proof nodes in order, each must have the expected index."""

    __slots__ = ("extra", "i", "nodes", "remaining")

    def __init__(self, nodes: Sequence[Node], extra: Node | None = None) -> None:
        if len(nodes) > MAX_PROOF_NODES:
            raise VerificationError(f"too many proof nodes ({len(nodes)})")
        self.i = 0
        self.nodes = nodes
        self.extra = extra
        self.remaining = len(nodes) + (0 if extra is None else 1)

    def shift(self, index: int) -> Node:
        if self.extra is not None and self.extra.index == index:
            node = self.extra
            self.extra = None
            self.remaining -= 1
            return node
        if self.i >= len(self.nodes):
            raise VerificationError(f"expected node {index}, got (nil)")
        node = self.nodes[self.i]
        self.i += 1
        if node.index != index:
            raise VerificationError(f"expected node {index}, got node {node.index}")
        self.remaining -= 1
        return node


class _Batch:
    """The mutable head a verification or append works on (JS `MerkleTreeBatch`)."""

    __slots__ = ("byte_length", "length", "nodes", "roots")

    def __init__(self, roots: Sequence[Node], length: int, byte_length: int) -> None:
        self.roots = list(roots)
        self.length = length
        self.byte_length = byte_length
        self.nodes: list[Node] = []

    def append_root(self, node: Node, ite: flat.Iterator) -> None:
        """Push `node` (at `ite`) as the newest root and merge sibling roots into parents."""
        self.length += ite.factor // 2
        self.byte_length += node.size
        self.roots.append(node)
        self.nodes.append(node)
        while len(self.roots) > 1:
            a = self.roots[-1]
            b = self.roots[-2]
            if ite.sibling() != b.index:
                ite.sibling()  # back to the last root
                break
            parent = parent_node(ite.parent(), a, b)
            self.nodes.append(parent)
            del self.roots[-2:]
            self.roots.append(parent)


@dataclass
class _Pending:
    """Node indices a proof will carry, as JS `TreeProof.pending` (None = section not produced)."""

    node: list[int] | None = None
    seek: list[int] | None = None
    upgrade: list[int] | None = None
    additional: list[int] | None = None


@dataclass(frozen=True)
class _Indexed:
    value: bool  # a block (its value is sent) rather than a bare hash
    index: int  # flat-tree index
    nodes: int
    last_index: int  # last block covered


def _normalize(block: BlockRequest | None, hash_: BlockRequest | None) -> _Indexed | None:
    if block is not None:
        return _Indexed(True, 2 * block.index, block.nodes, block.index)
    if hash_ is not None:
        return _Indexed(False, hash_.index, hash_.nodes, flat.right_span(hash_.index) // 2)
    return None


def _unpadded_size(node: Node, padding: int, ite: flat.Iterator | None) -> int:
    if padding == 0:
        return node.size
    leaves = ite.count_leaves() if ite is not None else flat.count_leaves(node.index)
    return node.size - padding * leaves


# --------------------------------------------------------------------------- the tree


class MerkleTree:
    """A core's Merkle tree head (length, fork, roots, signature) over a `NodeStore`.

    `prologue` comes from the manifest (cores with a pre-agreed start); it changes which
    upgrades a writer serves and which a reader accepts, as in JS.
    """

    def __init__(self, store: NodeStore, *, length: int = 0, fork: int = 0, roots: Sequence[Node] = (),
                 signature: bytes | None = None, prologue: Prologue | None = None) -> None:
        if [r.index for r in roots] != flat.full_roots(2 * length):
            raise ValueError(f"roots {[r.index for r in roots]} do not match length {length}")
        self.store = store
        self.length = length
        self.fork = fork
        self.roots: tuple[Node, ...] = tuple(roots)
        self.signature = signature
        self.prologue = prologue

    @classmethod
    def open(cls, store: NodeStore, length: int, *, fork: int = 0, signature: bytes | None = None,
             prologue: Prologue | None = None) -> MerkleTree:
        """A tree at `length` whose roots are read from `store` (ValueError if one is missing)."""
        roots = []
        for i in flat.full_roots(2 * length):
            node = store.get(i)
            if node is None:
                raise ValueError(f"root {i} missing for length {length}")
            roots.append(node)
        return cls(store, length=length, fork=fork, roots=roots, signature=signature, prologue=prologue)

    def __repr__(self) -> str:
        return f"MerkleTree(length={self.length}, fork={self.fork}, byte_length={self.byte_length})"

    @property
    def byte_length(self) -> int:
        return sum(r.size for r in self.roots)

    def tree_hash(self) -> bytes:
        """The hash that is signed (`crypto.tree(roots)`)."""
        return tree_hash(self.roots)

    def get(self, index: int) -> Node | None:
        return self.store.get(index)

    def _stored(self, index: int, head: int) -> Node | None:
        """A stored node that lies inside the tree with head `head` (nodes beyond it are stale)."""
        if flat.right_span(index) >= head:
            return None
        return self.store.get(index)

    def get_roots(self, length: int) -> list[Node]:
        """The roots at `length` (ValueError if the store lacks one)."""
        if length == self.length:
            return list(self.roots)
        out = []
        for i in flat.full_roots(2 * length):
            node = self.store.get(i)
            if node is None:
                raise ValueError(f"root {i} missing for length {length}")
            out.append(node)
        return out

    def upgradeable(self, length: int) -> bool:
        """Whether we can prove an upgrade from `length` (its roots are stored): `MerkleTree.upgradeable`."""
        return all(self.store.get(i) is not None for i in flat.full_roots(2 * length))

    # ------------------------------------------------------------------ writing

    def _append(self, blocks: Iterable[bytes]) -> _Batch:
        batch = _Batch(self.roots, self.length, self.byte_length)
        for block in blocks:
            head = batch.length * 2
            batch.append_root(leaf_node(head, block), flat.iterator(head))
        return batch

    def append_batch(self, blocks: Iterable[bytes]) -> tuple[list[Node], list[Node]]:
        """Leaves and parents (in JS order) for `blocks` appended to this head, and the new roots; pure."""
        batch = self._append(blocks)
        return batch.nodes, batch.roots

    def append(self, blocks: Iterable[bytes]) -> TreeUpdate:
        """The update appending `blocks`; sign it (`with_signature`) before committing."""
        b = self._append(blocks)
        return TreeUpdate(self.length, self.fork, b.length, self.fork, tuple(b.roots), b.byte_length, None,
                          tuple(b.nodes), upgraded=True)

    def truncate(self, length: int, fork: int | None = None) -> TreeUpdate:
        """The update cutting the tree to `length` under a new fork (default fork + 1); unsigned."""
        if length < 0 or length > self.length:
            raise ValueError(f"cannot truncate a tree of length {self.length} to {length}")
        roots: list[Node] = []
        for i, index in enumerate(flat.full_roots(2 * length)):
            if i < len(self.roots) and self.roots[i].index == index:
                roots.append(self.roots[i])
                continue
            node = self.store.get(index)
            if node is None:
                raise ValueError(f"root {index} missing for length {length}")
            roots.append(node)
        drop_nodes: list[int] = []
        head = 2 * length
        if 0 < length < self.length:
            # parents below the new head that span past it (JS `_commitUpgrade`)
            ite = flat.iterator(head - 2)
            while True:
                if ite.contains(head) and ite.index < head:
                    drop_nodes.append(ite.index)
                if ite.offset == 0:
                    break
                ite.parent()
        new_fork = self.fork + 1 if fork is None else fork
        return TreeUpdate(self.length, self.fork, length, new_fork, tuple(roots),
                          sum(r.size for r in roots), None, (), upgraded=True,
                          drop_from=head, drop_to=2 * self.length if length < self.length else head,
                          drop_nodes=tuple(drop_nodes))

    def commit(self, update: TreeUpdate) -> None:
        """Persist `update` and move the head; StaleUpdate if the head changed since it was made."""
        if update.base_fork != self.fork or (
            update.base_length != self.length if update.upgraded else update.base_length > self.length
        ):
            raise StaleUpdate("tree was modified since the update was prepared")
        if update.drop_to > update.drop_from:
            self.store.delete_range(update.drop_from, update.drop_to)
        for i in update.drop_nodes:
            self.store.delete_range(i, i + 1)
        if update.nodes:
            self.store.put_many(update.nodes)
        if update.upgraded:
            self.length = update.length
            self.fork = update.fork
            self.roots = update.roots
            self.signature = update.signature

    # ------------------------------------------------------------------ reading helpers

    def missing_nodes(self, index: int, length: int | None = None) -> int:
        """How many path nodes above flat index `index` we lack (JS `MerkleTree.missingNodes`).

        This is what a reader puts in `request.block.nodes` (index = 2 * block) so the
        writer sends exactly the siblings up to a node we already trust; 0 when the node is
        outside the tree of `length` (default: our length).
        """
        head = 2 * (self.length if length is None else length)
        ite = flat.iterator(index)
        if ite.index + ite.factor // 2 - 1 >= head:
            return 0
        cnt = 0
        while not ite.contains(head) and self.store.get(ite.index) is None:
            cnt += 1
            if cnt >= _MAX_STEPS:
                raise ValueError(f"bad arguments to missing_nodes index={index} length={length}")
            ite.parent()
        return cnt

    @staticmethod
    def max_missing_nodes(index: int, length: int) -> int:
        """Path nodes from `index` up to its root at `length`, excluding both (JS `maxMissingNodes`)."""
        head = 2 * length
        ite = flat.iterator(index)
        if ite.index + ite.factor // 2 - 1 >= head:
            return 0
        if index in flat.full_roots(head):
            return 0
        ite.parent()
        cnt = 0
        while not ite.contains(head):
            cnt += 1
            ite.parent()
        return cnt

    @staticmethod
    def upgrade_length(upgrade: ProofUpgrade) -> int:
        """The length an upgrade proof leads to (the signed one, with additional nodes)."""
        if upgrade.additional_nodes:
            return flat.right_span(upgrade.additional_nodes[-1].index) // 2 + 1
        return upgrade.start + upgrade.length

    def byte_offset(self, index: int) -> int:
        """Bytes before flat index `index` (JS `MerkleTree.byteOffset`); ValueError if unknowable."""
        return self._byte_offset(index, self._node_or_value_error)

    def byte_range(self, block: int) -> tuple[int, int]:
        """(offset, size) of block `block`."""
        index = 2 * block
        if index >= 2 * self.length:
            raise ValueError("Index is out of bounds")
        node = self._node_or_value_error(index)
        return self.byte_offset(index), node.size

    def seek(self, byte_offset: int, padding: int = 0) -> tuple[int, int] | None:
        """(block, offset in block) of a byte offset using local nodes; None if a node is missing.

        Mirrors JS `ByteSeeker` without the remote part: None means "ask a peer (seek request)".
        """
        if not byte_offset:
            return 0, 0
        rest = byte_offset
        for root in self.roots:
            s = _unpadded_size(root, padding, None)
            if rest == s:
                return (flat.right_span(root.index) + 2) // 2, 0
            if rest > s:
                rest -= s
                continue
            ite = flat.iterator(root.index)
            while ite.index & 1:
                left = self.store.get(ite.left_child())
                if left is None:
                    return None
                s = _unpadded_size(left, padding, ite)
                if s == rest:
                    return (ite.right_span() + 2) // 2, 0
                if s > rest:
                    continue
                rest -= s
                ite.sibling()
            return ite.index // 2, rest
        return None

    def _node_or_value_error(self, index: int) -> Node:
        node = self.store.get(index)
        if node is None:
            raise ValueError(f"expected tree node {index}, got (nil)")
        return node

    def _byte_offset(self, index: int, get: _Getter) -> int:
        offset, _ = self._byte_offset_js(index, get)
        return offset

    def _byte_offset_js(self, index: int, get: _Getter) -> tuple[int, bool]:
        """(offset, skipped_root): `skipped_root` is when JS's `getByteOffsetBatch` yields NaN.

        JS pushes whole roots' sizes (numbers) into a list of nodes and then sums `.size`, so
        any offset past the first root is NaN there; proof generation mirrors the consequences.
        """
        if index == 2 * self.length:
            return self.byte_length, False
        if index & 1:
            index = flat.left_span(index)
        head = 0
        cnt = 0
        total = 0
        skipped = False
        for root in self.roots:
            head += 2 * (root.index - head + 1)
            if index >= head:
                total += root.size
                skipped = True
                continue
            ite = flat.iterator(root.index)
            while ite.index != index:
                cnt += 1
                if cnt >= _MAX_STEPS:
                    raise ValueError(f"bad byte offset index={index}")
                if index < ite.index:
                    ite.left_child()
                else:
                    total += get(ite.left_child()).size
                    ite.sibling()
            return total, skipped
        raise ValueError("Failed to find offset")

    # ------------------------------------------------------------------ proof generation

    def proof(self, request: ProofRequest) -> Proof:
        """The proof answering `request`, node for node what JS `MerkleTree.proof` + `settle` give.

        Raises ProofRefused where JS throws (→ noData INVALID_REQUEST). `block.value` is left
        None; `upgrade.signature` is our current signature.
        """
        gen = _ProofBuilder(self)
        return gen.build(request)

    # ------------------------------------------------------------------ verification

    def verify(self, proof: Proof, verifier: Verifier) -> TreeUpdate:
        """Check a peer's proof against this (reader) head; the update to commit if it holds.

        Verifies the block/hash/seek path, rebuilds the roots of an upgrade (including
        additional nodes) from our roots, checks the signature with `verifier` over the new
        (tree hash, length, fork), and requires a path not ending in the upgrade to end at a
        node we already store. Any failure raises VerificationError (StaleProof when the proof
        was made for another fork or length of ours); nothing else for well-typed input.
        """
        _check_shape(proof)
        if proof.fork != self.fork:
            raise StaleProof(f"proof for fork {proof.fork}, we are at fork {self.fork}")
        seen: list[Node] = []
        unverified = _verify_tree(proof, seen)
        batch = _Batch(self.roots, self.length, self.byte_length)
        upgraded = False
        if proof.upgrade is not None:
            up = proof.upgrade
            if up.start != self.length:
                raise StaleProof(f"upgrade from {up.start}, we are at length {self.length}")
            if _verify_upgrade(up, unverified, batch, self.prologue):
                unverified = None
            if batch.length <= self.length:
                raise StaleProof("upgrade does not extend the tree")
            if not verifier.verify(up.signature, tree_hash(batch.roots), batch.length, proof.fork):
                raise VerificationError("invalid upgrade signature")
            upgraded = True
        if unverified is not None:
            stored = self._stored(unverified.index, 2 * self.length)
            if stored is None:
                raise VerificationError(f"proof ends at node {unverified.index}, which we do not have")
            if stored.hash != unverified.hash or stored.size != unverified.size:
                raise VerificationError(f"invalid checksum at node {unverified.index}")
        nodes: dict[int, Node] = {}
        for n in (*seen, *batch.nodes):
            nodes.setdefault(n.index, n)
        if not upgraded:
            return TreeUpdate(self.length, self.fork, self.length, self.fork, self.roots, self.byte_length,
                              self.signature, tuple(nodes.values()))
        assert proof.upgrade is not None
        return TreeUpdate(self.length, self.fork, batch.length, proof.fork, tuple(batch.roots),
                          batch.byte_length, proof.upgrade.signature, tuple(nodes.values()), upgraded=True)


class _Getter(Protocol):
    def __call__(self, index: int) -> Node: ...


# --------------------------------------------------------------------------- verification helpers


def _check_shape(proof: Proof) -> None:
    """Reject what the wire cannot carry (negative numbers, short hashes) before any tree walk."""
    lists: list[tuple[Node, ...]] = []
    numbers = [proof.fork]
    if proof.block is not None:
        numbers.append(proof.block.index)
        lists.append(proof.block.nodes)
    if proof.hash is not None:
        numbers.append(proof.hash.index)
        lists.append(proof.hash.nodes)
    if proof.seek is not None:
        numbers.append(proof.seek.bytes)
        lists.append(proof.seek.nodes)
    if proof.upgrade is not None:
        numbers += (proof.upgrade.start, proof.upgrade.length)
        lists += (proof.upgrade.nodes, proof.upgrade.additional_nodes)
    for nodes in lists:
        if len(nodes) > MAX_PROOF_NODES:
            raise VerificationError(f"too many proof nodes ({len(nodes)})")
        for n in nodes:
            if n.index < 0 or n.size < 0 or len(n.hash) != 32:
                raise VerificationError(f"malformed node {n.index}")
    if min(numbers) < 0:
        raise VerificationError("negative number in proof")


def _verify_tree(proof: Proof, nodes: list[Node]) -> Node | None:
    """JS `verifyTree`: hash up the seek and block/hash paths; returns the (unverified) top node."""
    if proof.block is not None:
        if proof.block.value is None:
            raise VerificationError("block proof without a value")
        start: tuple[int, bytes | None, Sequence[Node]] | None = (
            2 * proof.block.index, proof.block.value, proof.block.nodes)
    elif proof.hash is not None:
        start = (proof.hash.index, None, proof.hash.nodes)
    else:
        start = None
    seek_nodes = proof.seek.nodes if proof.seek is not None else ()
    if start is None and not seek_nodes:
        return None

    root: Node | None = None
    if seek_nodes:
        ite = flat.iterator(seek_nodes[0].index)
        q = _NodeQueue(seek_nodes)
        root = q.shift(ite.index)
        nodes.append(root)
        while q.remaining > 0:
            node = q.shift(ite.sibling())
            root = parent_node(ite.parent(), root, node)
            nodes += (node, root)
    if start is None:
        return root

    index, value, path = start
    ite = flat.iterator(index)
    q = _NodeQueue(path, root)
    root = leaf_node(ite.index, value) if value is not None else q.shift(ite.index)
    nodes.append(root)
    while q.remaining > 0:
        node = q.shift(ite.sibling())
        root = parent_node(ite.parent(), root, node)
        nodes += (node, root)
    return root


def _verify_upgrade(up: ProofUpgrade, block_root: Node | None, batch: _Batch,
                    prologue: Prologue | None) -> bool:
    """JS `verifyUpgrade`: grow `batch` to the upgraded roots; True if `block_root` was used."""
    if prologue is not None and up.start < prologue.length and (up.start != 0 or up.length < prologue.length):
        raise VerificationError("upgrade does not satisfy prologue")
    if len(up.additional_nodes) > MAX_PROOF_NODES:
        raise VerificationError("too many additional nodes")
    q = _NodeQueue(up.nodes, block_root)
    grow = len(batch.roots) > 0
    i = 0
    to = 2 * (up.start + up.length)
    ite = flat.iterator(0)
    while ite.full_root(to):
        if i < len(batch.roots) and batch.roots[i].index == ite.index:
            i += 1
            ite.next_tree()
            continue
        if grow:
            grow = False
            root = ite.index
            if i < len(batch.roots):
                ite.seek(batch.roots[-1].index)
                steps = 0
                while ite.index != root:
                    steps += 1
                    if steps > _MAX_STEPS:
                        raise VerificationError("upgrade does not connect to our tree")
                    batch.append_root(q.shift(ite.sibling()), ite)
                ite.next_tree()
                continue
        batch.append_root(q.shift(ite.index), ite)
        ite.next_tree()

    if q.i < len(q.nodes):
        raise VerificationError(f"{len(q.nodes) - q.i} unused upgrade nodes")
    if prologue is not None and batch.length == prologue.length and tree_hash(batch.roots) != prologue.hash:
        raise VerificationError("upgrade does not match the prologue hash")

    extra = up.additional_nodes
    if extra:
        if not batch.roots:
            raise VerificationError("additional nodes without a tree")
        ite.seek(batch.roots[-1].index)
        i = 0
        while i < len(extra) and extra[i].index == ite.sibling():
            batch.append_root(extra[i], ite)
            i += 1
        while i < len(extra):
            node = extra[i]
            i += 1
            while node.index != ite.index:
                if ite.factor == 2:
                    raise VerificationError(f"unexpected node {node.index}")
                ite.left_child()
            batch.append_root(node, ite)
            ite.sibling()
    return q.extra is None


# --------------------------------------------------------------------------- proof generation


class _ProofBuilder:
    """JS `generateProof` and its helpers, over one tree head."""

    def __init__(self, tree: MerkleTree) -> None:
        self.tree = tree
        self.head = 2 * tree.length
        self.p = _Pending()

    def _get(self, index: int) -> Node:
        node = self.tree._stored(index, self.head)
        if node is None:
            raise ProofRefused(f"Expected tree node {index} from storage, got (nil)")
        return node

    def build(self, req: ProofRequest) -> Proof:
        tree = self.tree
        upgrade = req.upgrade
        seek = req.seek
        prologue = tree.prologue
        if prologue is not None and upgrade is not None and upgrade.start < prologue.length:
            upgrade = UpgradeRequest(0, prologue.length)

        fields = [x for r in (req.block, req.hash) if r is not None for x in (r.index, r.nodes)]
        fields += [seek.bytes, seek.padding] if seek is not None else []
        fields += [upgrade.start, upgrade.length] if upgrade is not None else []
        if fields and min(fields) < 0:
            raise ProofRefused("negative number in request")
        head = self.head
        frm = 2 * upgrade.start if upgrade else 0
        to = frm + 2 * upgrade.length if upgrade else head
        node = _normalize(req.block, req.hash)

        if head == 0:
            return Proof(tree.fork)  # nothing to prove from an empty core (JS sends an empty proof)
        if frm >= to or to > head:
            raise ProofRefused("Invalid upgrade")
        if seek is not None and upgrade is not None and node is not None and node.index >= frm:
            raise ProofRefused("Cannot both do a seek and block/hash request when upgrading")

        sub_tree = head
        p = self.p
        if node is not None and (upgrade is None or node.last_index < upgrade.start):
            sub_tree = _nodes_to_root(node.index, node.nodes, to)
            seek_root = self._seek_untrusted_tree(sub_tree, seek.bytes, seek.padding) if seek else head
            self._block_and_seek_proof(node, seek, seek_root, sub_tree)
        elif (node is not None or seek is not None) and upgrade is not None:
            if seek is not None:
                sub_tree = self._seek_from_head(to, seek.bytes, seek.padding)
            else:
                assert node is not None
                sub_tree = node.index

        if upgrade is not None:
            self._upgrade_proof(node, seek, frm, to, sub_tree)
            if head > to:
                self._additional_upgrade_proof(to, head)

        # settle
        nodes = self._nodes
        block = hash_ = None
        if req.block is not None:
            if p.node is None:
                raise ProofRefused("Invalid block request")
            block = ProofBlock(req.block.index, None, nodes(p.node))
        elif req.hash is not None:
            if p.node is None:
                raise ProofRefused("Invalid block request")
            hash_ = ProofHash(req.hash.index, nodes(p.node))
        seek_proof = ProofSeek(seek.bytes, nodes(p.seek)) if seek is not None and p.seek is not None else None
        up = None
        if upgrade is not None:
            up = ProofUpgrade(upgrade.start, upgrade.length, nodes(p.upgrade or []),
                              nodes(p.additional or []), tree.signature)
        return Proof(tree.fork, block, hash_, seek_proof, up)

    def _nodes(self, indices: list[int]) -> tuple[Node, ...]:
        return tuple(self._get(i) for i in indices)

    def _seek_proof(self, seek_root: int, root: int) -> None:
        ite = flat.iterator(seek_root)
        out = [ite.index]
        self.p.seek = out
        cnt = 0
        while ite.index != root:
            cnt += 1
            if cnt >= _MAX_STEPS:
                raise ProofRefused(f"Bad seekProof seekRoot={seek_root}, root={root}")
            ite.sibling()
            out.append(ite.index)
            ite.parent()

    def _block_and_seek_proof(self, node: _Indexed | None, seek: SeekRequest | None, seek_root: int,
                              root: int) -> None:
        if node is None:
            self._seek_proof(seek_root, root)
            return
        ite = flat.iterator(node.index)
        out: list[int] = []
        self.p.node = out
        if not node.value:
            out.append(ite.index)
        cnt = 0
        while ite.index != root:
            cnt += 1
            if cnt >= _MAX_STEPS:
                raise ProofRefused(f"Bad blockAndSeekProof seekRoot={seek_root}, root={root}")
            ite.sibling()
            if seek is not None and ite.contains(seek_root) and ite.index != seek_root:
                self._seek_proof(seek_root, ite.index)
            else:
                out.append(ite.index)
            ite.parent()

    def _upgrade_proof(self, node: _Indexed | None, seek: SeekRequest | None, frm: int, to: int,
                       sub_tree: int) -> None:
        p = self.p
        if frm == 0:
            p.upgrade = []
        ite = flat.iterator(0)
        while ite.full_root(to):
            if ite.index + ite.factor // 2 < frm:  # the requester already has this root
                ite.next_tree()
                continue
            if p.upgrade is None and ite.contains(frm - 2):  # connect to the requester's tree
                out: list[int] = []
                p.upgrade = out
                root = ite.index
                target = frm - 2
                ite.seek(target)
                cnt = 0
                while ite.index != root:
                    cnt += 1
                    if cnt >= _MAX_STEPS:
                        raise ProofRefused(f"Bad upgradeProof target={target}, root={root}")
                    ite.sibling()
                    if ite.index > target:
                        if p.node is None and p.seek is None and ite.contains(sub_tree):
                            self._block_and_seek_proof(node, seek, sub_tree, ite.index)
                        else:
                            out.append(ite.index)
                    ite.parent()
                ite.next_tree()
                continue
            if p.upgrade is None:
                p.upgrade = []
            if p.node is None and p.seek is None and ite.contains(sub_tree):
                # the block path reaches this root: send the path instead of the root
                self._block_and_seek_proof(node, seek, sub_tree, ite.index)
                ite.next_tree()
                continue
            p.upgrade.append(ite.index)
            ite.next_tree()

    def _additional_upgrade_proof(self, frm: int, to: int) -> None:
        p = self.p
        if frm == 0:
            p.additional = []
        ite = flat.iterator(0)
        while ite.full_root(to):
            if ite.index + ite.factor // 2 < frm:
                ite.next_tree()
                continue
            if p.additional is None and ite.contains(frm - 2):
                out: list[int] = []
                p.additional = out
                root = ite.index
                target = frm - 2
                ite.seek(target)
                cnt = 0
                while ite.index != root:
                    cnt += 1
                    if cnt >= _MAX_STEPS:
                        raise ProofRefused(f"Bad additionalUpgradeProof root={root} target={target}")
                    ite.sibling()
                    if ite.index > target:
                        out.append(ite.index)
                    ite.parent()
                ite.next_tree()
                continue
            if p.additional is None:
                p.additional = []
            p.additional.append(ite.index)
            ite.next_tree()

    # seeking inside proofs (JS seekFromHead / seekTrustedTree / seekUntrustedTree)

    def _seek_from_head(self, head: int, byte_offset: int, padding: int) -> int:
        for root in flat.full_roots(head):
            node = self.tree._stored(root, self.head)
            if node is None:
                raise ProofRefused(f"Expected tree node {root} from storage, got (nil)")
            size = _unpadded_size(node, padding, None)
            if byte_offset == size:
                return root
            if byte_offset > size:
                byte_offset -= size
                continue
            return self._seek_trusted_tree(root, byte_offset, padding)
        return head

    def _seek_trusted_tree(self, root: int, byte_offset: int, padding: int) -> int:
        if not byte_offset:
            return root
        ite = flat.iterator(root)
        cnt = 0
        while ite.index & 1:
            cnt += 1
            if cnt >= _MAX_STEPS:
                raise ProofRefused(f"Bad seekTrusted bytes={byte_offset}, padding={padding}")
            left = self.tree._stored(ite.left_child(), self.head)
            if left is not None:
                size = _unpadded_size(left, padding, ite)
                if size == byte_offset:
                    return ite.index
                if size > byte_offset:
                    continue
                byte_offset -= size
                ite.sibling()
            else:
                ite.parent()
                return ite.index
        return ite.index

    def _seek_untrusted_tree(self, root: int, byte_offset: int, padding: int) -> int:
        try:
            offset, nan = self.tree._byte_offset_js(root, self._get)
        except ValueError as e:
            raise ProofRefused(str(e)) from None
        if nan:
            # JS compares against NaN here: every check is false and seekTrustedTree(NaN) returns
            # `root` at once, so the seek collapses onto the requested subtree (no seek nodes).
            self._get(root)
            return root
        if padding:
            offset -= padding * flat.left_span(root) // 2
        if offset > byte_offset:
            raise ProofRefused("Invalid seek")
        if offset == byte_offset:
            return root
        byte_offset -= offset
        node = self._get(root)
        if _unpadded_size(node, padding, None) <= byte_offset:
            raise ProofRefused("Invalid seek")
        return self._seek_trusted_tree(root, byte_offset, padding)


def _nodes_to_root(index: int, nodes: int, head: int) -> int:
    """The ancestor `nodes` levels above `index`; refused if it reaches the tree's head."""
    ite = flat.iterator(index)
    for _ in range(nodes):
        ite.parent()
        if ite.contains(head):
            raise ProofRefused("Nodes is out of bounds")
    return ite.index

