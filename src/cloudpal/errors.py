"""Errors a user can cause.

Each carries one human sentence. The CLI prints it and exits 2; anything else
escaping is a bug and keeps its traceback.
"""


class CloudPalError(Exception):
    """A problem the user can fix, described in one sentence."""

    exit_code = 2


class InvalidInput(CloudPalError):
    """A name, key, address, duration or file the user gave is not acceptable."""


class NotFound(CloudPalError):
    """The named thing (device, invite, policy) does not exist."""


class Conflict(CloudPalError):
    """The request clashes with existing state (duplicate name, revoked key...)."""


class Exhausted(CloudPalError):
    """A finite resource (addresses, invite uses) has run out."""


class StateError(CloudPalError):
    """The node's home directory or state database is unusable."""


class PolicyError(InvalidInput):
    """An ACL policy file is invalid; the message names the line and the reason."""


class HostError(CloudPalError):
    """The host lacks something the node needs (root, /dev/net/tun, a tool)."""


class NodeNotRunning(CloudPalError):
    """The CLI could not reach the node's control socket."""
