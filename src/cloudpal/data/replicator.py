"""Replication of one core with one remote peer: the `hypercore/alpha` channel logic.

Sans-IO: a `Peer` is fed decoded messages (`receive`) and hands the messages it
wants sent to a callback; it never touches sockets. It is both sides at once, as
in JS: it serves requests from what its core holds (uploading) and downloads
what its owner wants (`want`), verifying every block and upgrade against the
core's key before the core stores it. A verification failure is a
`ProtocolError`: the connection owner drops the peer, the core is unchanged.

Behaviour follows hypercore 11's lib/replicator.js where a JS peer depends on
it: sync on open and after every change, the remoteLength echo a JS reader
needs before it asks for an upgrade, `range` announcements of what we hold,
request ids from 1, noData for what cannot be served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cloudpal.data.errors import ProtocolError, VerificationError
from cloudpal.data.merkle import StaleProof
from cloudpal.data.wire.messages import (
    Bitfield,
    Cancel,
    Data,
    Extension,
    Message,
    NoData,
    Range,
    Request,
    RequestBlock,
    RequestUpgrade,
    Sync,
    Unwant,
    Want,
)

log = logging.getLogger("cloudpal.data.replicator")

NOT_AVAILABLE = 1
INVALID_REQUEST = 2
WANT_BATCH = 2_097_152  # what JS peers use; remote wants must be aligned to it
MAX_INVALID_REQUESTS = 64


class ProofUnavailable(Exception):
    """The core does not hold what a request needs (answered with noData NOT_AVAILABLE)."""


class InvalidProofRequest(Exception):
    """A request that no proof can answer (answered with noData INVALID_REQUEST)."""


class ReplicatedCore(Protocol):
    """What a Peer needs from a core (implemented by `cloudpal.data.core.Hypercore`)."""

    @property
    def length(self) -> int: ...
    @property
    def fork(self) -> int: ...
    @property
    def contiguous_length(self) -> int: ...
    @property
    def has_manifest(self) -> bool:
        """A manifest is known and must be sent to readers (not a compat core)."""
    @property
    def needs_manifest(self) -> bool:
        """We lack the manifest and must ask for it with the first upgrade."""

    def has(self, index: int) -> bool: ...
    def missing_nodes(self, index: int) -> int: ...
    def can_upgrade(self, remote_length: int, remote_fork: int) -> bool: ...
    def adopt_fork(self, fork: int) -> None: ...
    @property
    def can_reorg(self) -> bool:
        """A replica (not the writer) that may move to a newer fork."""
    def reorg(self, data: Data) -> bool: ...
    def proof(self, request: Request) -> Data:
        """Answer a request; raises ProofUnavailable or InvalidProofRequest."""
    def apply(self, data: Data, request: Request) -> tuple[bool, int | None]:
        """Verify and store a response; returns (upgraded, stored block index).

        Raises VerificationError, leaving the core unchanged."""
    def present(self, start: int, end: int) -> list[int]: ...


@dataclass
class Wanted:
    """Blocks the owner wants: [start, end), end None = up to the remote's length (live)."""

    start: int
    end: int | None
    cursor: int = -1  # everything below it is stored
    scan: int = -1  # where the next request scan starts (past what is already requested)


class Peer:
    def __init__(self, core: ReplicatedCore, send: Callable[[Message], None],
                 max_inflight: int = 256, name: str = "peer") -> None:
        self.core = core
        self._send = send
        self.name = name
        self.max_inflight = max_inflight
        self.opened = False
        # what the remote told us
        self.remote_synced = False
        self.remote_fork = 0
        self.remote_length = 0
        self.remote_can_upgrade = False
        self.remote_downloading = True
        self.remote_has_manifest = False
        self.remote_contiguous = 0
        self.remote_blocks: set[int] = set()
        self.length_acked = 0
        # our requests
        self._free_ids: list[int] = []
        self._next_id = 1
        self.inflight: dict[int, Request] = {}
        self._inflight_blocks: set[int] = set()
        self._upgrade_inflight = False
        self._unavailable: set[int] = set()
        self.wants: list[Wanted] = []
        self._sent_wants: set[int] = set()
        self.invalid_requests = 0
        self._announced = 0
        self._last_sync: Sync | None = None
        self._reorg_inflight = False
        self._reorg_requests: set[int] = set()
        self._reorg_tried: set[int] = set()

    # ---- owner API ----------------------------------------------------------------

    @property
    def downloading(self) -> bool:
        return bool(self.wants) or bool(self.inflight)

    def want(self, start: int = 0, end: int | None = None) -> None:
        """Download blocks [start, end); end None follows the remote as it grows (live)."""
        self.wants.append(Wanted(start, end))
        if self.opened:
            self._send_wants()
            self.send_sync()
            self._update()

    def satisfied(self) -> bool:
        """Every bounded want is stored locally (live wants are never satisfied)."""
        for w in self.wants:
            if w.end is None or w.end > self.core.length:
                return False
            w.cursor = max(w.cursor, w.start)
            while w.cursor < w.end and self.core.has(w.cursor):
                w.cursor += 1
            if w.cursor < w.end:
                return False
        return True

    def on_open(self) -> None:
        """The channel is open (capability checked by the caller): say what we have."""
        self.opened = True
        self.send_sync()
        self._announce()
        self._send_wants()
        self._update()

    def on_local_change(self) -> None:
        """Our core was appended to, truncated or filled in: tell the remote."""
        if not self.opened:
            return
        self._announce()
        self.send_sync()
        self._update()

    # ---- sending ----------------------------------------------------------------

    def send_sync(self, force: bool = False) -> None:
        """Tell the remote our state; skipped when nothing it would learn has changed."""
        same_fork = self.core.fork == self.remote_fork
        sync = Sync(
            fork=self.core.fork,
            length=self.core.length,
            remote_length=self.remote_length if same_fork else 0,
            can_upgrade=self.core.can_upgrade(self.remote_length, self.remote_fork),
            uploading=True,
            downloading=self.downloading,
            has_manifest=self.core.has_manifest,
            allow_push=False,
        )
        if sync != self._last_sync or force:
            self._last_sync = sync
            self._send(sync)

    def _announce(self) -> None:
        """`range(0, contig)`: on open, when we become fully contiguous, after appends or a
        truncation; not for every block a download adds (JS does not either)."""
        contig = min(self.core.contiguous_length, self.core.length)
        if contig != self._announced and (contig == self.core.length or contig < self._announced):
            self._announced = contig
            if contig > 0:
                self._send(Range(start=0, length=contig, drop=False))

    def _send_wants(self) -> None:
        """Ask the remote to announce what it has in the batches we want."""
        for w in self.wants:
            first = w.start // WANT_BATCH
            last = first if w.end is None else max(first, (w.end - 1) // WANT_BATCH)
            for batch in range(first, last + 1):
                if batch not in self._sent_wants:
                    self._sent_wants.add(batch)
                    self._send(Want(start=batch * WANT_BATCH, length=WANT_BATCH, any=False))

    def _request_id(self) -> int:
        if self._free_ids:
            return self._free_ids.pop()
        rid = self._next_id
        self._next_id += 1
        return rid

    def _send_request(self, req: Request) -> None:
        self.inflight[req.id] = req
        self._send(req)

    # ---- receiving --------------------------------------------------------------

    def receive(self, msg: Message) -> None:
        """Handle one message from the remote; raises ProtocolError to drop the peer.

        What it stores reaches the owner through the core's change listeners."""
        if isinstance(msg, Sync):
            self._on_sync(msg)
        elif isinstance(msg, Request):
            self._on_request(msg)
        elif isinstance(msg, Data):
            self._on_data(msg)
        elif isinstance(msg, NoData):
            self._on_no_data(msg)
        elif isinstance(msg, Range):
            self._on_range(msg)
        elif isinstance(msg, Bitfield):
            self._on_bitfield(msg)
        elif isinstance(msg, Want):
            self._on_want(msg)
        elif isinstance(msg, (Unwant, Cancel, Extension)):
            pass  # we answer requests at once, so there is nothing to cancel
        self._update()

    def _on_sync(self, msg: Sync) -> None:
        length_changed = msg.length != self.remote_length
        self.remote_synced = True
        self.remote_fork = msg.fork
        self.remote_length = msg.length
        self.remote_can_upgrade = msg.can_upgrade
        self.remote_downloading = msg.downloading
        self.remote_has_manifest = msg.has_manifest
        self.length_acked = msg.remote_length if msg.fork == self.core.fork else 0
        if length_changed:
            self._unavailable.clear()
            self._rescan()
        # A JS reader asks for an upgrade only once we have acknowledged its length.
        if msg.fork == self.core.fork and self.core.length > msg.length:
            self.send_sync()

    def _on_request(self, msg: Request) -> None:
        if msg.fork != self.core.fork:
            self._send(NoData(request=msg.id, reason=NOT_AVAILABLE))
            return
        try:
            data = self.core.proof(msg)
        except ProofUnavailable:
            self._send(NoData(request=msg.id, reason=NOT_AVAILABLE))
        except InvalidProofRequest as exc:
            self.invalid_requests += 1
            log.info("%s: invalid request %s: %s", self.name, msg.id, exc)
            if self.invalid_requests > MAX_INVALID_REQUESTS:
                raise ProtocolError("peer sent too many invalid requests") from None
            self._send(NoData(request=msg.id, reason=INVALID_REQUEST))
        else:
            self._send(data)

    def _on_data(self, msg: Data) -> None:
        req = self.inflight.pop(msg.request, None)
        if req is None:
            return  # not asked for (or cancelled): ignored, as JS does
        self._free_ids.append(req.id)
        if req.block is not None:
            self._inflight_blocks.discard(req.block.index)
        if req.upgrade is not None:
            self._upgrade_inflight = False
        if req.id in self._reorg_requests:
            self._reorg_requests.discard(req.id)
            self._reorg_inflight = False
            if msg.fork != req.fork or msg.upgrade is None:
                raise ProtocolError("peer answered a fork proof request with something else")
            try:
                moved = self.core.reorg(msg)
            except VerificationError as exc:
                raise ProtocolError(f"peer sent a fork proof that does not verify: {exc}") from exc
            if moved:
                for w in self.wants:
                    w.cursor = w.scan = -1
                self._unavailable.clear()
                self.send_sync()
            return
        if msg.fork != req.fork or (msg.block is not None and (
                req.block is None or msg.block.index != req.block.index)) or (
                msg.upgrade is not None and req.upgrade is None):
            raise ProtocolError("peer answered with data that does not match the request")
        try:
            upgraded, _ = self.core.apply(msg, req)
        except StaleProof:
            return  # made for an older state of ours (JS ignores these too)
        except VerificationError as exc:
            raise ProtocolError(f"peer sent data that does not verify: {exc}") from exc
        if upgraded:
            self._unavailable.clear()
            self._rescan()
            self.send_sync()

    def _rescan(self) -> None:
        for w in self.wants:
            w.scan = w.cursor

    def _on_no_data(self, msg: NoData) -> None:
        req = self.inflight.pop(msg.request, None)
        if req is None:
            return
        self._free_ids.append(req.id)
        if req.block is not None:
            self._inflight_blocks.discard(req.block.index)
            self._unavailable.add(req.block.index)
            self._rescan()
        if req.upgrade is not None:
            self._upgrade_inflight = False
            self.remote_can_upgrade = False
        if req.id in self._reorg_requests:
            self._reorg_requests.discard(req.id)
            self._reorg_inflight = False

    def _on_range(self, msg: Range) -> None:
        end = msg.start + msg.length
        if msg.drop:
            self.remote_blocks.difference_update(range(msg.start, min(end, msg.start + 65536)))
            self.remote_contiguous = min(self.remote_contiguous, msg.start)
            return
        if msg.start <= self.remote_contiguous:
            self.remote_contiguous = max(self.remote_contiguous, end)
        elif msg.length <= 65536:
            self.remote_blocks.update(range(msg.start, end))
        self._unavailable.difference_update(range(msg.start, min(end, msg.start + 65536)))
        self._rescan()

    def _on_bitfield(self, msg: Bitfield) -> None:
        for w, word in enumerate(msg.words):
            while word:
                bit = word & -word
                self.remote_blocks.add(msg.start + 32 * w + bit.bit_length() - 1)
                word ^= bit
        self._rescan()

    def _on_want(self, msg: Want) -> None:
        contig = min(self.core.contiguous_length, self.core.length)
        if contig > 0 and (msg.start + msg.length <= contig or contig == self.core.length):
            self._send(Range(start=0, length=contig, drop=False))
            return
        present = self.core.present(msg.start, min(msg.start + msg.length, self.core.length))
        if not present:
            return
        words = [0] * ((present[-1] - msg.start) // 32 + 1)
        for i in present:
            off = i - msg.start
            words[off // 32] |= 1 << (off % 32)
        self._send(Bitfield(start=msg.start, words=tuple(words)))

    # ---- downloading ------------------------------------------------------------

    def _remote_has(self, index: int) -> bool:
        return (index < self.remote_contiguous or index in self.remote_blocks) and \
            index < self.remote_length

    def _update(self) -> None:
        if not self.opened or not self.wants:
            return
        core = self.core
        if self.remote_synced and core.length == 0 and self.remote_fork != core.fork:
            core.adopt_fork(self.remote_fork)
            # A JS writer offers upgrades (canUpgrade) only to a peer on its fork: tell it ours.
            self.send_sync()
        elif (self.remote_synced and self.remote_fork > core.fork and self.remote_length > 0
              and not self._reorg_inflight and core.can_reorg
              and self.remote_fork not in self._reorg_tried):
            # The writer truncated: ask for its new signed tree from 0 (a fork proof).
            self._reorg_inflight = True
            self._reorg_tried.add(self.remote_fork)
            rid = self._request_id()
            self._reorg_requests.add(rid)
            self._send_request(Request(
                id=rid, fork=self.remote_fork,
                upgrade=RequestUpgrade(start=0, length=self.remote_length),
                manifest=core.needs_manifest and self.remote_has_manifest))
            return
        if (not self._upgrade_inflight and self.remote_synced and self.remote_fork == core.fork
                and self.remote_length > core.length and self.remote_can_upgrade):
            self._upgrade_inflight = True
            self._send_request(Request(
                id=self._request_id(), fork=core.fork, block=None, hash=None, seek=None,
                upgrade=RequestUpgrade(start=core.length, length=self.remote_length - core.length),
                manifest=core.needs_manifest and self.remote_has_manifest, priority=None,
            ))
        budget = 65536  # indices looked at per update, so a sparse remote cannot stall us
        for w in self.wants:
            end = core.length if w.end is None else min(w.end, core.length)
            w.cursor = max(w.cursor, w.start)
            while w.cursor < end and core.has(w.cursor):
                w.cursor += 1
            index = max(w.cursor, w.scan)
            while index < end and len(self.inflight) < self.max_inflight and budget > 0:
                budget -= 1
                if (index not in self._inflight_blocks and index not in self._unavailable
                        and self._remote_has(index) and not core.has(index)):
                    self._inflight_blocks.add(index)
                    self._send_request(Request(
                        id=self._request_id(), fork=core.fork,
                        block=RequestBlock(index=index, nodes=core.missing_nodes(index)),
                        hash=None, seek=None, upgrade=None, manifest=False, priority=None,
                    ))
                index += 1
            w.scan = index
