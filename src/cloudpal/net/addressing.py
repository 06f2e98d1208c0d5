"""Overlay address plan.

The node takes host index 1 of the IPv4 range and of its IPv6 ULA /48; a
device with index i gets the i-th host of the IPv4 range and prefix::i, so one
integer per device is the whole allocation and both families stay in step.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from cloudpal.errors import Exhausted, InvalidInput

DEFAULT_IPV4_RANGE = "100.64.0.0/10"
NODE_INDEX = 1


def generate_ula48() -> str:
    """A random RFC 4193 unique-local /48 (fd00::/8 + 40 random bits)."""
    rnd = os.urandom(5)
    net = ipaddress.IPv6Network((int.from_bytes(b"\xfd" + rnd, "big") << 80, 48))
    return str(net)


def parse_ipv4_range(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise InvalidInput(f"invalid IPv4 range {text!r}: {exc}") from exc
    if net.prefixlen > 29:
        raise InvalidInput(f"IPv4 range {text} is too small: use a /29 or larger")
    return net


@dataclass(frozen=True)
class AddressPlan:
    ipv4: ipaddress.IPv4Network
    ipv6: ipaddress.IPv6Network

    @classmethod
    def parse(cls, ipv4: str, ipv6: str) -> AddressPlan:
        return cls(parse_ipv4_range(ipv4), ipaddress.IPv6Network(ipv6))

    @property
    def max_index(self) -> int:
        """Last usable host index (the broadcast address is left out)."""
        return self.ipv4.num_addresses - 2

    def v4(self, index: int) -> str:
        return str(self.ipv4.network_address + index)

    def v6(self, index: int) -> str:
        return str(self.ipv6.network_address + index)

    def node_v4(self) -> str:
        return self.v4(NODE_INDEX)

    def node_v6(self) -> str:
        return self.v6(NODE_INDEX)

    def first_free(self, used: set[int]) -> int:
        """Lowest index not in `used`, above the node's; Exhausted when none is left."""
        index = NODE_INDEX + 1
        while index in used:
            index += 1
        if index > self.max_index:
            raise Exhausted(
                f"the address range {self.ipv4} is exhausted ({self.max_index - 1} devices)"
            )
        return index
