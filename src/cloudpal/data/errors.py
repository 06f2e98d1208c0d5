"""Errors of the data pillar. Every decoder raises only DecodeError on bad bytes."""

from cloudpal.errors import CloudPalError


class DataError(CloudPalError):
    """Base of data-pillar errors."""


class DecodeError(DataError):
    """Bytes from a peer or a file do not decode as the expected structure."""


class VerificationError(DataError):
    """A block, proof or signature does not verify against the core's key."""


class ProtocolError(DataError):
    """A peer broke the replication protocol (beyond malformed bytes)."""
