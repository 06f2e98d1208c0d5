"""A Hypercore: a signed append-only log, stored in the node home.

A core couples the Merkle tree (merkle.py), the signer/verifier of its manifest
(crypto.py), optional block encryption (encryption.py) and the SQLite storage
(storage.py). Every change is prepared in memory, then written in one storage
transaction (blocks, nodes, head), then made visible: a crash leaves the core at
its last complete write, which always verifies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudpal.data import flat_tree, ids
from cloudpal.data.crypto import (
    KeyPair,
    Manifest,
    Node,
    Verifier,
    decode_manifest,
    default_signer_manifest,
    discovery_key,
    encode_manifest,
    key_pair,
    leaf_node,
    manifest_hash,
    parent_node,
)
from cloudpal.data.encryption import PADDING, BlockEncryption
from cloudpal.data.errors import DecodeError, VerificationError
from cloudpal.data.merkle import (
    BlockRequest,
    MemoryNodeStore,
    MerkleTree,
    Proof,
    ProofBlock,
    ProofRefused,
    ProofRequest,
    ProofUpgrade,
    SeekRequest,
    TreeUpdate,
    UpgradeRequest,
)
from cloudpal.data.replicator import InvalidProofRequest, ProofUnavailable
from cloudpal.data.storage import CoreRecord, Head, Storage
from cloudpal.data.wire import messages as wire
from cloudpal.errors import Conflict, InvalidInput, NotFound

NODE_CACHE = 1 << 16


class _Nodes:
    """The tree's NodeStore: reads through a cache from storage; writes are held
    until the core commits them together with blocks and head."""

    def __init__(self, storage: Storage, core: int) -> None:
        self.storage = storage
        self.core = core
        self.cache: dict[int, Node] = {}
        self.absent: set[int] = set()  # looked up and not stored: proofs ask for these a lot
        self.puts: dict[int, Node] = {}
        self.drops: list[tuple[int, int]] = []

    def get(self, index: int) -> Node | None:
        node = self.puts.get(index) or self.cache.get(index)
        if node is None and index not in self.absent and not self._dropped(index):
            row = self.storage.node(self.core, index)
            if len(self.cache) >= NODE_CACHE:
                self.cache.clear()
                self.absent.clear()
            if row is None:
                self.absent.add(index)
            else:
                node = self.cache[index] = Node(*row)
        return node

    def _dropped(self, index: int) -> bool:
        return any(a <= index < b for a, b in self.drops)

    def put_many(self, nodes: Iterable[Node]) -> None:
        for n in nodes:
            self.puts[n.index] = n
            self.absent.discard(n.index)

    def delete_range(self, start: int, end: int) -> None:
        self.drops.append((start, end))
        for i in [i for i in self.puts if start <= i < end]:
            del self.puts[i]
        for i in [i for i in self.cache if start <= i < end]:
            del self.cache[i]

    def take(self) -> tuple[list[Node], list[tuple[int, int]]]:
        puts, drops = list(self.puts.values()), self.drops
        self.cache.update(self.puts)
        self.puts, self.drops = {}, []
        return puts, drops

    def discard(self) -> None:
        self.puts, self.drops = {}, []
        self.cache.clear()
        self.absent.clear()


@dataclass
class _Deferred:
    """Writes held back during a burst of replication messages, stored as one transaction."""

    blocks: dict[int, bytes] = field(default_factory=dict)
    head: Head | None = None
    changed: bool = False


class Hypercore:
    """One core. Writable when its secret key is stored here; otherwise a (sparse) replica."""

    def __init__(self, storage: Storage, record: CoreRecord) -> None:
        self.storage = storage
        self.record = record
        self.key = record.key
        self.discovery_key = record.discovery_key
        self.compat = record.compat
        self.manifest: Manifest | None = decode_manifest(record.manifest) if record.manifest else None
        self.key_pair: KeyPair | None = None
        if record.secret_key is not None:
            self.key_pair = KeyPair(record.secret_key[32:], record.secret_key)
        self.verifier: Verifier | None = None
        if self.manifest is not None or self.compat:
            self.verifier = Verifier.for_core(self.key, self.manifest)
        self.encryption = (BlockEncryption(record.encryption_key, self.key, compat=self.compat)
                           if record.encryption_key else None)
        self.nodes = _Nodes(storage, record.id)
        self.listeners: list[Callable[[], None]] = []
        self._deferred: _Deferred | None = None
        self._load()

    def _load(self) -> None:
        head = self.storage.head(self.record.id)
        prologue = self.manifest.prologue if self.manifest else None
        self.tree = MerkleTree.open(self.nodes, head.length, fork=head.fork, signature=head.signature,
                                    prologue=prologue)
        self._present = bytearray()
        for i in self.storage.present(self.record.id, 0, head.length):
            self._mark(i)
        self._contig = 0
        self._advance()

    # ---- state --------------------------------------------------------------------

    @property
    def name(self) -> str | None:
        return self.record.name

    @property
    def length(self) -> int:
        return self.tree.length

    @property
    def fork(self) -> int:
        return self.tree.fork

    @property
    def writable(self) -> bool:
        return self.key_pair is not None

    @property
    def byte_length(self) -> int:
        """Bytes of block content (as JS reports it: without encryption padding)."""
        pad = PADDING * self.length if self.encryption is not None else 0
        return self.tree.byte_length - pad

    def tree_hash(self) -> bytes:
        return self.tree.tree_hash()

    @property
    def signature(self) -> bytes | None:
        return self.tree.signature

    @property
    def contiguous_length(self) -> int:
        return min(self._contig, self.length)

    def _mark(self, index: int) -> None:
        byte = index >> 3
        if byte >= len(self._present):
            self._present.extend(bytes(max(byte + 1 - len(self._present), len(self._present))))
        self._present[byte] |= 1 << (index & 7)

    def _advance(self) -> None:
        while self.has(self._contig):
            self._contig += 1

    def has(self, index: int) -> bool:
        byte = index >> 3
        return index >= 0 and byte < len(self._present) and bool(self._present[byte] >> (index & 7) & 1)

    def present(self, start: int, end: int) -> list[int]:
        return [i for i in range(start, end) if self.has(i)]

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name, "key": self.key.hex(), "id": ids.encode(self.key),
            "discovery_key": self.discovery_key.hex(), "length": self.length,
            "contiguous_length": self.contiguous_length, "byte_length": self.byte_length,
            "fork": self.fork, "tree_hash": self.tree_hash().hex(), "writable": self.writable,
            "encrypted": self.encryption is not None, "compat": self.compat,
        }

    def _changed(self) -> None:
        if self._deferred is not None:
            self._deferred.changed = True
            return
        for listener in list(self.listeners):
            listener()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Group the writes and change notifications of a burst of replication messages:
        one transaction and one notification instead of one per block. What a burst
        verified is stored together at its end (a crash loses the burst, never consistency)."""
        if self._deferred is not None:
            yield
            return
        self._deferred = _Deferred()
        try:
            yield
        finally:
            pending, self._deferred = self._deferred, None
            self._write_deferred(pending)
            if pending.changed:
                self._changed()

    def _write_deferred(self, pending: _Deferred) -> None:
        if not pending.blocks and pending.head is None and not self.nodes.puts:
            return
        nodes, drops = self.nodes.take()
        try:
            self.storage.write(self.record.id, blocks=sorted(pending.blocks.items()), nodes=nodes,
                               head=pending.head, drop_nodes=drops)
        except BaseException:
            self.nodes.discard()
            self._load()
            raise

    def _commit(self, update: TreeUpdate, blocks: list[tuple[int, bytes]],
                drop_blocks_from: int | None = None) -> None:
        """Write `update` with `blocks` in one transaction, then make it visible."""
        head = Head(update.length, update.byte_length, update.fork, update.signature) \
            if update.upgraded else None
        simple = drop_blocks_from is None and update.drop_to <= update.drop_from and not update.drop_nodes
        if self._deferred is not None and simple:
            self.tree.commit(update)  # its nodes wait in self.nodes until the burst ends
            self._deferred.blocks.update(blocks)
            if head is not None:
                self._deferred.head = head
        else:
            if self._deferred is not None:
                pending, self._deferred = self._deferred, _Deferred(changed=self._deferred.changed)
                self._write_deferred(pending)
            try:
                self.tree.commit(update)
                nodes, drops = self.nodes.take()
                self.storage.write(self.record.id, blocks=blocks, nodes=nodes, head=head,
                                   drop_blocks_from=drop_blocks_from, drop_nodes=drops)
            except BaseException:
                self.nodes.discard()
                self._load()  # back to what storage holds
                raise
        for i, _ in blocks:
            self._mark(i)
        self._advance()

    # ---- writing ------------------------------------------------------------------

    def append(self, blocks: Iterable[bytes] | bytes) -> int:
        """Append one block or a batch; returns the new length once it is stored."""
        batch = [blocks] if isinstance(blocks, bytes | bytearray) else list(blocks)
        if self.key_pair is None or self.verifier is None:
            raise Conflict("this core is a replica: only its writer can append")
        if not batch:
            return self.length
        start = self.length
        stored = [bytes(b) for b in batch]
        if self.encryption is not None:
            stored = [self.encryption.encrypt(start + i, b, self.fork) for i, b in enumerate(stored)]
        update = self.tree.append(stored)
        update = update.with_signature(
            self.verifier.sign(self.key_pair, update.tree_hash(), update.length, update.fork))
        self._commit(update, [(start + i, b) for i, b in enumerate(stored)])
        self._changed()
        return self.length

    def truncate(self, length: int) -> None:
        """Cut the log to `length` blocks; the fork id increments (readers see a new fork)."""
        if self.key_pair is None or self.verifier is None:
            raise Conflict("this core is a replica: only its writer can truncate")
        if not 0 <= length <= self.length:
            raise InvalidInput(f"cannot truncate a core of length {self.length} to {length}")
        update = self.tree.truncate(length)
        update = update.with_signature(
            self.verifier.sign(self.key_pair, update.tree_hash(), update.length, update.fork))
        self._commit(update, [], drop_blocks_from=length)
        self._present = self._present[: (length + 7) // 8]
        for i in range(length, len(self._present) * 8):
            if self.has(i):
                self._present[i >> 3] &= ~(1 << (i & 7)) & 0xFF
        self._contig = min(self._contig, length)
        self._changed()

    # ---- reading ------------------------------------------------------------------

    def stored_block(self, index: int) -> bytes:
        """The block as stored and replicated (ciphertext for an encrypted core)."""
        if not self.has(index) or index >= self.length:
            raise NotFound(f"block {index} is not stored here (length {self.length})")
        data = self._deferred.blocks.get(index) if self._deferred is not None else None
        if data is None:
            data = self.storage.block(self.record.id, index)
        if data is None:
            raise NotFound(f"block {index} is not stored here")
        return data

    def get(self, index: int) -> bytes:
        data = self.stored_block(index)
        if self.encryption is None:
            return data
        try:
            return self.encryption.decrypt(index, data)
        except DecodeError as exc:
            raise VerificationError(f"block {index} cannot be decrypted: {exc}") from exc

    def iter_blocks(self, start: int, end: int) -> Iterator[bytes]:
        """Blocks in [start, end) that are stored here, in order."""
        for index, data in self.storage.blocks(self.record.id, start, min(end, self.length)):
            yield data if self.encryption is None else self.encryption.decrypt(index, data)

    def audit(self) -> int:
        """Re-verify everything this core stores; returns the number of blocks checked.

        The signature must sign the roots' tree hash; every stored block must hash
        to its leaf; every stored node below a root must hash with its sibling into
        its stored parent. Together that chains each stored block to the signature,
        which is what a reader checked when the data arrived. Raises
        VerificationError at the first mismatch (disk corruption or tampering).
        """
        if self.length == 0:
            return 0
        if self.verifier is None or not self.verifier.verify(self.signature, self.tree_hash(),
                                                             self.length, self.fork):
            raise VerificationError("the stored signature does not sign the stored tree")
        roots = {r.index for r in self.tree.roots}
        head = 2 * self.length
        for index, size, digest in self.storage.nodes(self.record.id):
            node = Node(index, size, digest)
            if index in roots or flat_tree.right_span(index) >= head:
                continue
            parent = self.nodes.get(flat_tree.parent(index))
            sibling = self.nodes.get(flat_tree.sibling(index))
            if parent is None or sibling is None or parent_node(parent.index, node, sibling) != parent:
                raise VerificationError(f"stored Merkle node {index} does not chain to its parent")
        checked = 0
        for index, data in self.storage.blocks(self.record.id, 0, self.length):
            if leaf_node(2 * index, data) != self.nodes.get(2 * index):
                raise VerificationError(f"stored block {index} does not match its Merkle leaf")
            checked += 1
        return checked

    # ---- replication (ReplicatedCore) ---------------------------------------------

    @property
    def has_manifest(self) -> bool:
        return self.manifest is not None and not self.compat

    @property
    def needs_manifest(self) -> bool:
        return self.verifier is None

    def missing_nodes(self, index: int) -> int:
        return self.tree.missing_nodes(2 * index)

    def can_upgrade(self, remote_length: int, remote_fork: int) -> bool:
        if remote_fork != self.fork:
            return False
        if remote_length == 0:
            return True
        return remote_length < self.length and self.tree.upgradeable(remote_length)

    def adopt_fork(self, fork: int) -> None:
        """An empty replica takes the writer's fork (nothing of ours can conflict)."""
        if self.length == 0 and fork != self.fork:
            self.tree.fork = fork
            self.storage.write(self.record.id, head=Head(0, 0, fork, None))

    @property
    def can_reorg(self) -> bool:
        return not self.writable

    def reorg(self, data: wire.Data) -> bool:
        """Move a replica to the writer's newer fork (after a truncation upstream).

        `data` answers an upgrade from 0 on that fork: it must verify on its own (a
        fresh tree, the core's key) before anything is dropped, so a peer cannot make
        us discard data without the writer's signature. The replica then keeps the new
        signed head and re-downloads blocks; JS's partial reuse of the common prefix is
        not done (see notes). Returns True when the fork changed.
        """
        if self.writable or data.upgrade is None or data.fork <= self.fork or data.upgrade.start != 0:
            return False
        verifier = self._ensure_verifier(data)
        fresh = MerkleTree(MemoryNodeStore(), fork=data.fork)
        update = fresh.verify(Proof(fork=data.fork, upgrade=ProofUpgrade(
            0, data.upgrade.length, data.upgrade.nodes, data.upgrade.additional_nodes,
            data.upgrade.signature)), verifier)
        head = Head(update.length, update.byte_length, update.fork, update.signature)
        self.storage.write(self.record.id, nodes=update.nodes, head=head, drop_blocks_from=0,
                           drop_nodes=[(0, 1 << 62)])
        self.nodes.discard()
        self._load()
        self._changed()
        return True

    def proof(self, request: wire.Request) -> wire.Data:
        req = ProofRequest(
            block=BlockRequest(request.block.index, request.block.nodes) if request.block else None,
            hash=BlockRequest(request.hash.index, request.hash.nodes) if request.hash else None,
            seek=SeekRequest(request.seek.bytes, request.seek.padding) if request.seek else None,
            upgrade=UpgradeRequest(request.upgrade.start, request.upgrade.length)
            if request.upgrade else None,
        )
        manifest = encode_manifest(self.manifest) if (
            request.manifest and self.manifest is not None and not self.compat) else None
        value = None
        if request.block is not None:
            if request.block.index >= self.length or not self.has(request.block.index):
                if manifest is not None and request.upgrade is None:
                    return wire.Data(request=request.id, fork=self.fork, manifest=manifest)
                raise ProofUnavailable(f"block {request.block.index} is not stored here")
            value = self.stored_block(request.block.index)
        try:
            proof = self.tree.proof(req)
        except (ProofRefused, ValueError) as exc:
            raise InvalidProofRequest(str(exc)) from exc
        return wire.Data(
            request=request.id, fork=self.fork,
            block=wire.DataBlock(proof.block.index, value or b"", proof.block.nodes)
            if proof.block else None,
            hash=wire.DataHash(proof.hash.index, proof.hash.nodes) if proof.hash else None,
            seek=wire.DataSeek(proof.seek.bytes, proof.seek.nodes) if proof.seek else None,
            upgrade=wire.DataUpgrade(proof.upgrade.start, proof.upgrade.length, proof.upgrade.nodes,
                                     proof.upgrade.additional_nodes, proof.upgrade.signature)
            if proof.upgrade else None,
            manifest=manifest,
        )

    def _ensure_verifier(self, data: wire.Data) -> Verifier:
        if self.verifier is not None:
            return self.verifier
        manifest = None
        if data.manifest is not None:
            try:
                manifest = decode_manifest(data.manifest)
            except DecodeError as exc:
                raise VerificationError(f"the peer sent a malformed manifest: {exc}") from exc
            if manifest_hash(manifest) != self.key:
                raise VerificationError("the peer sent a manifest that does not match the core key")
        verifier = Verifier.for_core(self.key, manifest)  # no manifest: only a compat key verifies
        self.verifier = verifier
        if manifest is None:
            self.compat = True
            self.manifest = default_signer_manifest(self.key)
        else:
            self.manifest = manifest
        return verifier

    def apply(self, data: wire.Data, request: wire.Request) -> tuple[bool, int | None]:
        """Verify a peer's answer against the key and store what it proves."""
        had_verifier = self.verifier is not None
        verifier = self._ensure_verifier(data)
        proof = Proof(
            fork=data.fork,
            block=ProofBlock(data.block.index, data.block.value, data.block.nodes) if data.block else None,
            upgrade=ProofUpgrade(data.upgrade.start, data.upgrade.length, data.upgrade.nodes,
                                 data.upgrade.additional_nodes, data.upgrade.signature)
            if data.upgrade else None,
        )
        try:
            update = self.tree.verify(proof, verifier)
        except BaseException:
            if not had_verifier:
                self.verifier = None
                self.manifest = None
                self.compat = self.record.compat
            raise
        if not had_verifier:
            self.storage.set_manifest(self.record.id, encode_manifest(self.manifest)
                                      if self.manifest and not self.compat else b"")
            if self.compat:
                with self.storage.transaction() as c:
                    c.execute("UPDATE cores SET compat=1 WHERE id=?", (self.record.id,))
            if self.encryption is not None and self.compat:
                self.encryption = BlockEncryption(self.record.encryption_key or b"", self.key, compat=True)
        blocks = [(data.block.index, data.block.value)] if data.block else []
        self._commit(update, blocks)
        if update.upgraded or blocks:
            self._changed()
        return update.upgraded, data.block.index if data.block else None


class CoreStore:
    """All cores of a node home (Corestore's role): create, find, and open replicas."""

    def __init__(self, home: Path) -> None:
        self.storage = Storage(home / "data" / "cores.db")
        self._open: dict[bytes, Hypercore] = {}

    def close(self) -> None:
        self.storage.close()

    def _wrap(self, record: CoreRecord) -> Hypercore:
        core = self._open.get(record.key)
        if core is None:
            core = self._open[record.key] = Hypercore(self.storage, record)
        return core

    def create(self, name: str, *, seed: bytes | None = None, compat: bool = False,
               encryption_key: bytes | None = None) -> Hypercore:
        if not name or len(name) > 200 or any(c in name for c in "\0\n"):
            raise InvalidInput(f"invalid core name {name!r}")
        if self.storage.find(name=name) is not None:
            raise Conflict(f"a core named {name!r} already exists")
        kp = key_pair(seed)
        manifest = default_signer_manifest(kp.public_key)
        key = kp.public_key if compat else manifest_hash(manifest)
        if self.storage.find(key=key) is not None:
            raise Conflict("a core with that key already exists")
        record = self.storage.create_core(
            key, discovery_key(key), name=name, manifest=None if compat else encode_manifest(manifest),
            compat=compat, secret_key=kp.secret_key, encryption_key=encryption_key)
        return self._wrap(record)

    def get(self, ref: str) -> Hypercore:
        """A core by local name, hex key or z-base32 id."""
        record = self.storage.find(name=ref)
        if record is None:
            with contextlib.suppress(DecodeError):
                record = self.storage.find(key=ids.decode(ref))
        if record is None:
            raise NotFound(f"no core named or keyed {ref!r} here")
        return self._wrap(record)

    def by_discovery_key(self, dk: bytes) -> Hypercore | None:
        record = self.storage.find(discovery_key=dk)
        return None if record is None else self._wrap(record)

    def replica(self, key: bytes, *, encryption_key: bytes | None = None,
                name: str | None = None) -> Hypercore:
        """The local replica of a remote core (created empty the first time)."""
        record = self.storage.find(key=key)
        if record is None:
            if name is not None and self.storage.find(name=name) is not None:
                raise Conflict(f"a core named {name!r} already exists")
            record = self.storage.create_core(key, discovery_key(key), name=name,
                                              encryption_key=encryption_key)
        return self._wrap(record)

    def cores(self) -> list[Hypercore]:
        return [self._wrap(r) for r in self.storage.cores()]
