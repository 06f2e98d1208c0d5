"""Hypercore 11 cryptography: keys, tree hashes, capabilities, manifests and signatures.

Byte-for-byte the JS `hypercore-crypto` 3.7 and hypercore 11.37.1 `lib/caps.js`,
`lib/verifier.js`, `lib/multisig.js` and the manifest/multiSignature encodings of
`lib/messages.js` (see docs notes hypercore.md §2-§3). Every hash is BLAKE2b through hashlib
and every signature Ed25519 through PyNaCl (libsodium), so nothing here is hand-rolled.

Why the manifest machinery matters: a v11 core's *key* is the hash of its manifest (not the
signer's public key) and its signature travels as a `multiSignature` structure, so a peer that
only knew "Ed25519 over the tree hash" could neither find nor verify a JS-made core.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from nacl import bindings as _sodium
from nacl.exceptions import BadSignatureError

from cloudpal.data.encoding import Reader, Writer
from cloudpal.data.errors import DecodeError, VerificationError

__all__ = [
    "DEFAULT_ENCRYPTION",
    "DEFAULT_NAMESPACE",
    "MANIFEST",
    "REPLICATE_INITIATOR",
    "REPLICATE_RESPONDER",
    "TREE",
    "KeyPair",
    "Manifest",
    "MultiSignature",
    "MultiSignatureV0",
    "Node",
    "PatchV0",
    "Prologue",
    "SignatureProof",
    "SignatureProofV0",
    "Signer",
    "Verifier",
    "blake2b256",
    "capability",
    "create_manifest",
    "decode_manifest",
    "decode_multisig",
    "decode_multisig_v0",
    "default_signer_manifest",
    "discovery_key",
    "encode_manifest",
    "encode_multisig",
    "encode_multisig_v0",
    "is_compat",
    "key_pair",
    "leaf_hash",
    "leaf_node",
    "manifest_hash",
    "namespace",
    "parent_hash",
    "parent_node",
    "sign",
    "signable",
    "signable_compat",
    "tree_hash",
    "verify",
]


# --------------------------------------------------------------------------- nodes and hashes


@dataclass(frozen=True, slots=True)
class Node:
    """A Merkle tree node: flat-tree `index`, `size` = data bytes below it, 32-byte BLAKE2b `hash`.

    Proofs on the wire (`wire.messages`) carry this same type.
    """

    index: int
    size: int
    hash: bytes


def blake2b256(*parts: bytes, key: bytes = b"") -> bytes:
    """BLAKE2b-256 of the concatenation (libsodium `crypto_generichash[_batch]`), optionally keyed."""
    h = hashlib.blake2b(digest_size=32, key=key)
    for p in parts:
        h.update(p)
    return h.digest()


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


def leaf_hash(block: bytes) -> bytes:
    """`crypto.data`: BLAKE2b(0x00 || u64(len) || block)."""
    return blake2b256(b"\x00", _u64(len(block)), block)


def parent_hash(a: Node, b: Node) -> bytes:
    """`crypto.parent`: BLAKE2b(0x01 || u64(sizes) || left || right), left = the lower index."""
    if a.index > b.index:
        a, b = b, a
    return blake2b256(b"\x01", _u64(a.size + b.size), a.hash, b.hash)


def tree_hash(roots: Sequence[Node]) -> bytes:
    """`crypto.tree`: BLAKE2b(0x02 || per root: hash || u64(index) || u64(size)), what gets signed."""
    parts = [b"\x02"]
    for r in roots:
        parts += (r.hash, _u64(r.index), _u64(r.size))
    return blake2b256(*parts)


def leaf_node(index: int, block: bytes) -> Node:
    """The leaf node of `block` at flat index `index` (= 2 * block index)."""
    return Node(index, len(block), leaf_hash(block))


def parent_node(index: int, a: Node, b: Node) -> Node:
    return Node(index, a.size + b.size, parent_hash(a, b))


def namespace(name: str | bytes, n: int | Sequence[int]) -> list[bytes]:
    """`crypto.namespace`: ns = BLAKE2b(name); entry i = BLAKE2b(ns || byte(i))."""
    ids = range(n) if isinstance(n, int) else n
    ns = blake2b256(name.encode() if isinstance(name, str) else name)
    return [blake2b256(ns, bytes([i])) for i in ids]


(
    TREE,
    REPLICATE_INITIATOR,
    REPLICATE_RESPONDER,
    MANIFEST,
    DEFAULT_NAMESPACE,
    DEFAULT_ENCRYPTION,
) = namespace("hypercore", 6)


def discovery_key(key: bytes) -> bytes:
    """BLAKE2b(message=b"hypercore", key=core key): the swarm topic that does not reveal the key."""
    if len(key) != 32:
        raise ValueError("Must pass a 32 byte buffer")
    return blake2b256(b"hypercore", key=key)


def capability(is_initiator: bool, key: bytes, handshake_hash: bytes) -> bytes:
    """`caps.replicate`: proves knowledge of the core key, bound to this Noise session (64-byte hash)."""
    return blake2b256(REPLICATE_INITIATOR if is_initiator else REPLICATE_RESPONDER, key, key=handshake_hash)


def signable(key: bytes, tree_hash: bytes, length: int, fork: int) -> bytes:
    """`caps.treeSignable`, 112 bytes: TREE || manifest hash (= key) || tree hash || u64 length || fork."""
    return TREE + _fixed(key, 32) + _fixed(tree_hash, 32) + _u64(length) + _u64(fork)


def signable_compat(tree_hash: bytes, length: int, fork: int, legacy: bool = False) -> bytes:
    """`caps.treeSignableCompat` (80 bytes; 48 without the TREE prefix in `legacy` mode)."""
    head = b"" if legacy else TREE
    return head + _fixed(tree_hash, 32) + _u64(length) + _u64(fork)


def _fixed(data: bytes, size: int) -> bytes:
    if len(data) != size:
        raise ValueError(f"expected {size} bytes, got {len(data)}")
    return data


# --------------------------------------------------------------------------- keys and signatures


@dataclass(frozen=True)
class KeyPair:
    """Ed25519 key pair in libsodium layout: 32-byte public key, 64-byte secret key (seed || public key)."""

    public_key: bytes
    secret_key: bytes = field(repr=False)


def key_pair(seed: bytes | None = None) -> KeyPair:
    """`crypto.keyPair(seed)`: deterministic from a 32-byte seed, random without one."""
    if seed is None:
        pk, sk = _sodium.crypto_sign_keypair()
    else:
        pk, sk = _sodium.crypto_sign_seed_keypair(_fixed(seed, 32))
    return KeyPair(bytes(pk), bytes(sk))


def sign(message: bytes, secret_key: bytes) -> bytes:
    """Detached Ed25519 signature (64 bytes): libsodium `crypto_sign` output minus the message."""
    return bytes(_sodium.crypto_sign(message, secret_key))[:64]


def verify(message: bytes, signature: bytes, public_key: bytes) -> bool:
    """Detached Ed25519 check; False (never an exception) for wrong sizes or a bad signature."""
    if len(signature) != 64 or len(public_key) != 32:
        return False
    try:
        _sodium.crypto_sign_open(signature + message, public_key)  # = crypto_sign_verify_detached
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


# --------------------------------------------------------------------------- manifests

_PATCH, _PROLOGUE, _LINKED, _USER_DATA = 1, 2, 4, 8


@dataclass(frozen=True)
class Signer:
    """One manifest signer; `signature` and the manifest `hash` only have one value ('ed25519'/'blake2b')."""

    public_key: bytes
    namespace: bytes = DEFAULT_NAMESPACE
    signature: str = "ed25519"


@dataclass(frozen=True)
class Prologue:
    """A pre-agreed tree hash for the first `length` blocks (no signature needed up to there)."""

    hash: bytes
    length: int


@dataclass(frozen=True)
class Manifest:
    """Who may sign a core (lib/messages.js `manifest`). The core key is `manifest_hash(manifest)`."""

    version: int = 1
    hash: str = "blake2b"
    allow_patch: bool = False
    quorum: int = 1
    signers: tuple[Signer, ...] = ()
    prologue: Prologue | None = None
    linked: tuple[bytes, ...] | None = None
    user_data: bytes | None = None


def default_signer_manifest(public_key: bytes) -> Manifest:
    """`Verifier.defaultSignerManifest`: what a v11 core made from a key pair uses."""
    return Manifest(version=1, quorum=1, signers=(Signer(public_key),))


def create_manifest(
    signers: Sequence[Signer],
    *,
    quorum: int | None = None,
    allow_patch: bool = False,
    prologue: Prologue | None = None,
    linked: Sequence[bytes] | None = None,
    user_data: bytes | None = None,
    version: int | None = None,
) -> Manifest:
    """`Verifier.createManifest`: fills defaults (quorum = majority, version 1, or 2 with linked/userData)."""
    if version is None:
        version = 2 if (linked or user_data is not None) else 1
    if quorum is None:
        quorum = (len(signers) >> 1) + 1 if signers else 0
    if quorum < 0:
        raise ValueError("Quorum cannot be negative")
    if quorum > len(signers) and quorum:
        raise ValueError("Quorum should not be higher than the number of signers")
    for s in signers:
        if s.signature != "ed25519":
            raise ValueError("Only Ed25519 signatures are supported")
        _fixed(s.public_key, 32)
        _fixed(s.namespace, 32)
    if prologue is not None and (len(prologue.hash) != 32 or prologue.length < 0):
        raise ValueError("Invalid prologue")
    if user_data is not None and version < 2:
        raise ValueError("Invalid field: userData")
    linked_t: tuple[bytes, ...] | None = None
    if linked:
        if version < 2:
            raise ValueError("Invalid field: linked")
        for k in linked:
            _fixed(k, 32)
        linked_t = tuple(linked)
    return Manifest(version, "blake2b", allow_patch, quorum, tuple(signers), prologue, linked_t, user_data)


def _enc_hash(w: Writer, name: str) -> None:
    if name != "blake2b":
        raise ValueError(f"Unknown hash: {name}")
    w.uint(0)


def _enc_signer(w: Writer, s: Signer) -> None:
    if s.signature != "ed25519":
        raise ValueError(f"Unknown signature: {s.signature}")
    w.uint(0).fixed(s.namespace, 32).fixed(s.public_key, 32)


def _dec_signer(r: Reader) -> Signer:
    sig = r.uint()
    if sig != 0:
        raise DecodeError(f"Unknown signature id: {sig}")
    ns = r.fixed(32)
    return Signer(public_key=r.fixed(32), namespace=ns)


def _dec_hash(r: Reader) -> str:
    n = r.uint()
    if n != 0:
        raise DecodeError(f"Unknown hash id: {n}")
    return "blake2b"


def _write_manifest(w: Writer, m: Manifest) -> None:
    w.uint(m.version)
    if m.version == 0:
        _enc_hash(w, m.hash)
        if m.prologue is not None and not m.signers:
            w.uint(0).fixed(m.prologue.hash, 32)
        elif m.quorum == 1 and len(m.signers) == 1 and not m.allow_patch:
            w.uint(1)
            _enc_signer(w, m.signers[0])
        else:
            w.uint(2).uint(1 if m.allow_patch else 0).uint(m.quorum)
            w.array(m.signers, _enc_signer)
        return
    flags = (
        (_PATCH if m.allow_patch else 0)
        | (_PROLOGUE if m.prologue is not None else 0)
        | (_LINKED if m.linked is not None else 0)
        | (_USER_DATA if m.user_data is not None else 0)
    )
    w.uint(flags)
    _enc_hash(w, m.hash)
    w.uint(m.quorum)
    w.array(m.signers, _enc_signer)
    if m.prologue is not None:
        w.fixed(m.prologue.hash, 32).uint(m.prologue.length)
    if m.linked is not None:
        w.array(m.linked, lambda ww, k: ww.fixed(k, 32))
    if m.user_data is not None:
        w.buffer(m.user_data)


def encode_manifest(m: Manifest) -> bytes:
    """compact-encoding of a manifest (all versions, as lib/messages.js `manifest.encode`)."""
    w = Writer()
    _write_manifest(w, m)
    return w.value()


def _read_manifest(r: Reader) -> Manifest:
    version = r.uint()
    if version == 0:
        h = _dec_hash(r)
        kind = r.uint()
        if kind > 2:
            raise DecodeError(f"Unknown type: {kind}")
        if kind == 0:
            return Manifest(0, h, False, 0, (), Prologue(r.fixed(32), 0))
        if kind == 1:
            return Manifest(0, h, False, 1, (_dec_signer(r),))
        flags = r.uint()
        quorum = r.uint()
        return Manifest(0, h, bool(flags & 1), quorum, tuple(r.array(_dec_signer)))
    if version > 3:
        raise DecodeError(f"Unknown version: {version}")
    flags = r.uint()
    h = _dec_hash(r)
    quorum = r.uint()
    signers = tuple(r.array(_dec_signer))
    prologue = Prologue(r.fixed(32), r.uint()) if flags & _PROLOGUE else None
    linked = tuple(r.array(lambda rr: rr.fixed(32))) if flags & _LINKED else None
    user_data = r.buffer() if flags & _USER_DATA else None
    return Manifest(version, h, bool(flags & _PATCH), quorum, signers, prologue, linked, user_data)


def decode_manifest(data: bytes) -> Manifest:
    """Decode a manifest; raises only DecodeError. Trailing bytes are ignored, as `c.decode` does."""
    return _read_manifest(Reader(data))


def manifest_hash(m: Manifest) -> bytes:
    """`Verifier.manifestHash`: BLAKE2b(MANIFEST || encode(manifest)), the core key of a v11 core."""
    return blake2b256(MANIFEST, encode_manifest(m))


def is_compat(key: bytes, manifest: Manifest | None) -> bool:
    """A "v10 style" core: a single signer whose public key *is* the core key."""
    return manifest is not None and len(manifest.signers) == 1 and key == manifest.signers[0].public_key


# --------------------------------------------------------------------------- multi-signatures


@dataclass(frozen=True)
class SignatureProof:
    """One signer's part of a v1 multiSignature; `patch` = number of extra blocks it signed (0 = none)."""

    signer: int
    signature: bytes
    patch: int = 0


@dataclass(frozen=True)
class MultiSignature:
    proofs: tuple[SignatureProof, ...]
    patch: tuple[Node, ...] = ()


@dataclass(frozen=True)
class PatchV0:
    start: int
    length: int
    nodes: tuple[int, ...]


@dataclass(frozen=True)
class SignatureProofV0:
    signer: int
    signature: bytes
    patch: PatchV0 | None = None


@dataclass(frozen=True)
class MultiSignatureV0:
    proofs: tuple[SignatureProofV0, ...]
    patch: tuple[Node, ...] = ()


def _enc_node(w: Writer, n: Node) -> None:
    w.uint(n.index).uint(n.size).fixed(n.hash, 32)


def _dec_node(r: Reader) -> Node:
    return Node(r.uint(), r.uint(), r.fixed(32))


def encode_multisig(s: MultiSignature) -> bytes:
    """lib/messages.js `multiSignature`: proofs (signer, fixed64 signature, patch) then patch nodes."""
    w = Writer()
    w.array(s.proofs, lambda ww, p: ww.uint(p.signer).fixed(p.signature, 64).uint(p.patch))
    w.array(s.patch, _enc_node)
    return w.value()


def decode_multisig(data: bytes) -> MultiSignature:
    """Decode a v1 multiSignature; raises only DecodeError."""
    r = Reader(data)
    proofs = r.array(lambda rr: SignatureProof(rr.uint(), rr.fixed(64), rr.uint()))
    return MultiSignature(tuple(proofs), tuple(r.array(_dec_node)))


def _enc_proof_v0(w: Writer, p: SignatureProofV0) -> None:
    w.uint(1 if p.patch else 0).uint(p.signer).fixed(p.signature, 64)
    if p.patch:
        w.uint(p.patch.start).uint(p.patch.length).array(p.patch.nodes, Writer.uint)


def _dec_proof_v0(r: Reader) -> SignatureProofV0:
    flags = r.uint()
    signer = r.uint()
    sig = r.fixed(64)
    patch = PatchV0(r.uint(), r.uint(), tuple(r.array(Reader.uint))) if flags & 1 else None
    return SignatureProofV0(signer, sig, patch)


def encode_multisig_v0(s: MultiSignatureV0) -> bytes:
    """lib/messages.js `multiSignaturev0` (version-0 multi-signer manifests only)."""
    w = Writer()
    w.array(s.proofs, _enc_proof_v0)
    w.array(s.patch, _enc_node)
    return w.value()


def decode_multisig_v0(data: bytes) -> MultiSignatureV0:
    r = Reader(data)
    proofs = r.array(_dec_proof_v0)
    return MultiSignatureV0(tuple(proofs), tuple(r.array(_dec_node)))


# --------------------------------------------------------------------------- verifier


class Verifier:
    """Signs and checks a core's (tree hash, length, fork), as lib/verifier.js `Verifier`.

    Built from the core's manifest (`from_manifest`), from a compat key (`from_compat_key`), or
    from what a peer sent (`for_core`). Manifest cores (version >= 1) sign the 112-byte
    `signable` with the core key and ship a multiSignature; compat/version-0 cores sign the
    80-byte form and ship the raw 64 bytes. Patched multi-signatures (`allow_patch`, a signer
    that signed a longer tree) need the tree itself and are refused here, i.e. verify False.
    """

    def __init__(self, manifest_hash: bytes, manifest: Manifest, *, compat: bool | None = None,
                 legacy: bool = False) -> None:
        if compat is None:
            compat = is_compat(manifest_hash, manifest)
        self.manifest_hash = manifest_hash
        self.manifest = manifest
        self.compat = compat
        self.legacy = legacy
        self.version = 0 if compat else manifest.version
        self.allow_patch = not compat and manifest.allow_patch
        self.quorum = 1 if compat else manifest.quorum
        self.signers = manifest.signers
        self.prologue = None if compat else manifest.prologue

    def __repr__(self) -> str:
        return f"Verifier(key={self.manifest_hash.hex()[:16]}…, version={self.version}, compat={self.compat})"

    @classmethod
    def from_manifest(cls, manifest: Manifest, *, compat: bool | None = None,
                      legacy: bool = False) -> Verifier:
        return cls(manifest_hash(manifest), manifest, compat=compat, legacy=legacy)

    @classmethod
    def from_compat_key(cls, public_key: bytes, *, legacy: bool = False) -> Verifier:
        """A v10-style core whose key is the signer's public key."""
        return cls(public_key, default_signer_manifest(public_key), compat=True, legacy=legacy)

    @classmethod
    def for_core(cls, key: bytes, manifest: Manifest | None) -> Verifier:
        """The verifier for core `key` and the manifest a peer sent (or None); core.js `_verifyBatchUpgrade`.

        Without a manifest only a compat key can be verified. Raises VerificationError when the
        manifest is neither the one the key commits to nor a compat manifest for it.
        """
        if manifest is None:
            manifest = default_signer_manifest(key)
        if manifest_hash(manifest) != key and not is_compat(key, manifest):
            raise VerificationError("manifest does not match the core key")
        return cls(key, manifest)

    @property
    def key(self) -> bytes:
        return self.manifest_hash

    def _signable(self, signer: Signer, tree_hash: bytes, length: int, fork: int) -> bytes:
        if self.compat:
            return signable_compat(tree_hash, length, fork, self.legacy)
        ctx = signer.namespace if self.version == 0 else self.manifest_hash
        return signable(ctx, tree_hash, length, fork)

    def sign(self, key_pair: KeyPair, tree_hash: bytes, length: int, fork: int) -> bytes:
        """Sign as the signer holding `key_pair`: a 68-byte multiSignature for single-signer manifest
        cores, the raw 64 bytes for compat/version-0 cores and for one part of a multi-signer core."""
        for s in self.signers:
            if s.public_key == key_pair.public_key:
                sig = sign(self._signable(s, tree_hash, length, fork), key_pair.secret_key)
                if len(self.signers) != 1 or self.version == 0:
                    return sig
                return encode_multisig(MultiSignature((SignatureProof(0, sig, 0),)))
        raise ValueError("Public key is not a declared signer")

    def verify(self, signature: bytes | None, tree_hash: bytes, length: int, fork: int) -> bool:
        """True when `signature` covers (tree_hash, length, fork); never raises on garbage."""
        if self.version == 0:
            if not signature:
                return False
            if self.compat or (not self.allow_patch and len(self.signers) == 1):
                return bool(self.signers) and self._verify_one(self.signers[0], signature, tree_hash,
                                                               length, fork)
            return self._verify_multi(signature, tree_hash, length, fork)
        if self.prologue is not None and length <= self.prologue.length:
            return length == self.prologue.length and tree_hash == self.prologue.hash
        return self._verify_multi(signature, tree_hash, length, fork)

    def _verify_one(self, s: Signer, signature: bytes, tree_hash: bytes, length: int, fork: int) -> bool:
        try:
            message = self._signable(s, tree_hash, length, fork)
        except ValueError:
            return False
        return verify(message, signature, s.public_key)

    def _verify_multi(self, signature: bytes | None, tree_hash: bytes, length: int, fork: int) -> bool:
        if not signature or self.quorum == 0:
            return False
        try:
            if self.version >= 1:
                proofs = [(p.signer, p.signature, p.patch) for p in decode_multisig(signature).proofs]
            else:
                proofs = [(p.signer, p.signature, p.patch.length if p.patch else 0)
                          for p in decode_multisig_v0(signature).proofs]
        except DecodeError:
            return False
        if len(proofs) < self.quorum:
            return False
        tried: set[int] = set()
        for signer, sig, patch in proofs[: self.quorum]:
            if patch and self.allow_patch:
                return False  # needs the tree to rebuild the patched length; see class docstring
            if signer >= len(self.signers) or signer in tried:
                return False
            tried.add(signer)
            if not self._verify_one(self.signers[signer], sig, tree_hash, length, fork):
                return False
        return True
