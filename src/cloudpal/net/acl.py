"""ACL policy for the hub: parse a TOML policy, explain decisions, render nftables.

Every overlay packet passes through the node, so one nftables table on the node
enforces the whole policy. This module stays pure (no I/O): the caller feeds the
rendered script to ``nft -f -`` and can compare it with the last one applied to
skip needless reloads, which is why rendering is deterministic.

Policy semantics: anything not allowed is denied. A selector is ``"*"`` (every
device and the node), ``"group:NAME"`` or a device name (the node answers to its
node name). Names that are not enrolled are accepted and simply match nothing,
so a policy can be written before the devices join.
"""

from __future__ import annotations

import datetime as _dt
import functools
import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cloudpal.errors import InvalidInput, NotFound, PolicyError

__all__ = [
    "DEFAULT_POLICY_TEXT",
    "PROTOCOLS",
    "Decision",
    "Host",
    "Policy",
    "Rule",
    "check",
    "default_policy",
    "parse_policy",
    "render_nft",
]

PROTOCOLS = ("any", "tcp", "udp", "icmp")
"""Values of a rule's ``proto``; ``any`` is the default."""

DEFAULT_POLICY_TEXT = """\
# CloudPal ACL policy (TOML). Anything not allowed is denied.
#
# Selectors: "*" (every device and the node), "group:NAME", or a device name
# (the node is named by its node name). An example:
#
# [groups]
# laptops = ["laptop", "phone"]
#
# [[allow]]
# from = ["group:laptops"]
# to = ["nas"]
# proto = "tcp"                 # "any" (default), "tcp", "udp" or "icmp"
# ports = ["22", "8000-8080"]   # omit for all ports

# The default: every device and the node may reach each other.
[[allow]]
from = ["*"]
to = ["*"]
proto = "any"
"""

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT = re.compile(r"\s*([0-9]{1,5})\s*(?:-\s*([0-9]{1,5})\s*)?")
_TOML_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END = re.compile(r"\s*\(at end of document\)\s*$")
_TOP_KEYS = ("groups", "allow")
_RULE_KEYS = ("from", "to", "proto", "ports")
_NAME_RULES = "use 1-63 lowercase letters, digits or '-', not starting or ending with '-'"
_IFACE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Rule:
    """One ``[[allow]]`` table, validated; ports are sorted, merged inclusive ranges."""

    index: int
    line: int
    sources: tuple[str, ...]
    destinations: tuple[str, ...]
    proto: str
    ports: tuple[tuple[int, int], ...]

    @property
    def label(self) -> str:
        """How explanations and nft comments name this rule."""
        return f"rule {self.index} (line {self.line})"


@dataclass(frozen=True)
class Policy:
    """A validated policy; ``text`` is kept so the owner gets back what they wrote."""

    groups: Mapping[str, tuple[str, ...]] = field(hash=False)
    rules: tuple[Rule, ...]
    text: str

    def device_names(self) -> set[str]:
        """Every device name the policy mentions, so the caller can warn about unknown ones."""
        names = {member for members in self.groups.values() for member in members}
        for rule in self.rules:
            for selector in rule.sources + rule.destinations:
                if selector != "*" and not selector.startswith("group:"):
                    names.add(selector)
        return names

    def expand(self, selector: str, hosts: Iterable[str]) -> set[str]:
        """Names a selector stands for; ``*`` means every known host."""
        if selector == "*":
            return set(hosts)
        if selector.startswith("group:"):
            return set(self.groups.get(selector[len("group:") :], ()))
        return {selector}


@dataclass(frozen=True)
class Host:
    """A device or the node as rendering sees it; an empty address means "none in that family"."""

    name: str
    ipv4: str
    ipv6: str


@dataclass(frozen=True)
class Decision:
    """The verdict of :func:`check`, with the rule that allowed it and one readable line."""

    allowed: bool
    rule: Rule | None
    explanation: str


# --------------------------------------------------------------------------- parsing


def parse_policy(text: str, source: str = "policy") -> Policy:
    """Validate a policy's text; every problem is a PolicyError naming ``source`` and a line.

    Nothing but PolicyError escapes, whatever the text, because the owner edits
    this file by hand and a traceback would tell them nothing.
    """
    data = _load_toml(text, source)
    try:
        lines = _locate(text)
    except Exception:  # the locator is best effort; a wrong line beats a crash
        lines = {}
    return _Validator(text, source, lines).policy(data)


@functools.cache
def default_policy() -> Policy:
    """The policy in force until the owner applies one: everyone may reach everyone."""
    return parse_policy(DEFAULT_POLICY_TEXT, "default policy")


def _load_toml(text: str, source: str) -> dict[str, Any]:
    """tomllib, with its errors reshaped to "SOURCE line N: reason"."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        pos = _TOML_POS.search(message)
        if pos:
            reason = message[: pos.start()]
            line, where = int(pos.group(1)), f" at column {pos.group(2)}"
        else:
            end = _TOML_END.search(message)
            reason = message[: end.start()] if end else message
            line, where = text.count("\n") + 1, " at the end of the file"
        reason = _one_line(reason) or "syntax error"
        reason = reason[0].lower() + reason[1:]
        raise PolicyError(f"{source} line {line}: invalid TOML: {reason}{where}") from None
    except RecursionError:
        raise PolicyError(f"{source}: invalid TOML: values are nested too deeply") from None
    except Exception as exc:  # e.g. ValueError for integers with thousands of digits
        raise PolicyError(f"{source}: invalid TOML: {_one_line(str(exc))}") from None


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _show(value: str) -> str:
    """A user-supplied string, quoted and shortened so that messages stay one line."""
    if len(value) > 40:
        value = value[:37] + "..."
    return repr(value)


def _type_name(value: object) -> str:
    """The TOML name of a parsed value's type, for "must be X, not Y" messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, _dt.datetime):
        return "a date-time"
    if isinstance(value, _dt.date):
        return "a date"
    if isinstance(value, _dt.time):
        return "a time"
    return "a value"


def _is_name(value: str) -> bool:
    return _LABEL.fullmatch(value) is not None


class _Validator:
    """Turns tomllib's dict into a Policy; keeps source and line map for messages."""

    def __init__(self, text: str, source: str, lines: Mapping[tuple[str | int, ...], int]):
        self.text = text
        self.source = source
        self.lines = lines

    def line(self, *path: str | int) -> int:
        """Line of the exact path, else of the first thing under it, else 1."""
        exact = self.lines.get(path)
        if exact is not None:
            return exact
        under = [ln for p, ln in self.lines.items() if p[: len(path)] == path]
        if under:
            return min(under)
        if len(path) > 1:
            return self.line(*path[:-1])
        return 1

    def fail(self, line: int, reason: str) -> PolicyError:
        return PolicyError(f"{self.source} line {line}: {reason}")

    def policy(self, data: dict[str, Any]) -> Policy:
        for key in data:
            if key not in _TOP_KEYS:
                raise self.fail(
                    self.line(key),
                    f"unknown key {_show(key)}: a policy has only [groups] and [[allow]] tables",
                )
        groups = self.groups(data.get("groups", {}))
        raw_rules = data.get("allow", [])
        if not isinstance(raw_rules, list):
            raise self.fail(
                self.line("allow"),
                f"'allow' must be an array of tables written as [[allow]], "
                f"not {_type_name(raw_rules)}",
            )
        rules = tuple(self.rule(i, raw, groups) for i, raw in enumerate(raw_rules, start=1))
        return Policy(groups=MappingProxyType(groups), rules=rules, text=self.text)

    def groups(self, raw: object) -> dict[str, tuple[str, ...]]:
        if not isinstance(raw, dict):
            raise self.fail(
                self.line("groups"), f"'groups' must be a table, not {_type_name(raw)}"
            )
        groups: dict[str, tuple[str, ...]] = {}
        # Report problems in the order the owner reads the file.
        for name in sorted(raw, key=lambda n: self.line("groups", n)):
            members = raw[name]
            where = self.line("groups", name)
            if not _is_name(name):
                raise self.fail(where, f"invalid group name {_show(name)}: {_NAME_RULES}")
            if not isinstance(members, list):
                raise self.fail(
                    where,
                    f"group {_show(name)} must be an array of device names, "
                    f"not {_type_name(members)}",
                )
            if not members:
                raise self.fail(where, f"group {_show(name)} is empty: list at least one device")
            for member in members:
                if not isinstance(member, str):
                    raise self.fail(
                        where,
                        f"group {_show(name)} must list device names as strings, "
                        f"not {_type_name(member)}",
                    )
                if not _is_name(member):
                    raise self.fail(
                        where,
                        f"group {_show(name)} has an invalid device name {_show(member)}: "
                        f"{_NAME_RULES}",
                    )
            groups[name] = tuple(dict.fromkeys(members))
        return groups

    def rule(self, index: int, raw: object, groups: Mapping[str, tuple[str, ...]]) -> Rule:
        line = self.line("allow", index - 1)

        def fail(reason: str) -> PolicyError:
            return self.fail(line, f"rule {index}: {reason}")

        if not isinstance(raw, dict):
            raise fail(f"each [[allow]] entry must be a table, not {_type_name(raw)}")
        for key in raw:
            if key not in _RULE_KEYS:
                raise fail(f"unknown key {_show(key)}: a rule has from, to, proto and ports")
        sides: list[tuple[str, ...]] = []
        for key in ("from", "to"):
            if key not in raw:
                raise fail(f"missing '{key}': list selectors such as [\"*\"]")
            selectors = raw[key]
            if not isinstance(selectors, list):
                raise fail(f"'{key}' must be an array of selectors, not {_type_name(selectors)}")
            if not selectors:
                raise fail(f"'{key}' is empty: list at least one selector")
            for selector in selectors:
                if not isinstance(selector, str):
                    raise fail(
                        f"'{key}' must list selectors as strings, not {_type_name(selector)}"
                    )
                self.selector(selector, key, groups, fail)
            sides.append(tuple(dict.fromkeys(selectors)))
        proto = raw.get("proto", "any")
        if not isinstance(proto, str):
            raise fail(f"'proto' must be a string, not {_type_name(proto)}")
        if proto not in PROTOCOLS:
            raise fail(f"unknown proto {_show(proto)}: use any, tcp, udp or icmp")
        ports: tuple[tuple[int, int], ...] = ()
        if "ports" in raw:
            if proto == "icmp":
                raise fail("icmp has no ports: remove 'ports' or use tcp, udp or any")
            ports = self.ports(raw["ports"], fail)
        return Rule(
            index=index,
            line=line,
            sources=sides[0],
            destinations=sides[1],
            proto=proto,
            ports=ports,
        )

    @staticmethod
    def selector(
        selector: str,
        key: str,
        groups: Mapping[str, tuple[str, ...]],
        fail: Callable[[str], PolicyError],
    ) -> None:
        if selector == "*":
            return
        if selector.startswith("group:"):
            name = selector[len("group:") :]
            if not _is_name(name):
                raise fail(f"invalid group name in {_show(selector)}: {_NAME_RULES}")
            if name not in groups:
                raise fail(f"unknown group {_show(name)}")
            return
        if not _is_name(selector):
            raise fail(
                f"invalid selector {_show(selector)} in '{key}': use \"*\", \"group:NAME\" "
                f"or a device name ({_NAME_RULES})"
            )

    @staticmethod
    def ports(raw: object, fail: Callable[[str], PolicyError]) -> tuple[tuple[int, int], ...]:
        if not isinstance(raw, list):
            raise fail(f"'ports' must be an array such as [\"22\", \"8000-8080\"], "
                       f"not {_type_name(raw)}")
        if not raw:
            raise fail("'ports' is empty: list ports, or leave 'ports' out for all ports")
        ranges: list[tuple[int, int]] = []
        for item in raw:
            if isinstance(item, int) and not isinstance(item, bool):
                lo = hi = item
                shown = str(item)
            elif isinstance(item, str):
                m = _PORT.fullmatch(item)
                if not m:
                    raise fail(f"invalid port {_show(item)}: use a number such as \"22\" "
                               f"or a range such as \"8000-8080\"")
                lo = int(m.group(1))
                hi = int(m.group(2)) if m.group(2) else lo
                shown = _show(item)
            else:
                raise fail(f"'ports' must list strings or integers, not {_type_name(item)}")
            if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
                raise fail(f"port {shown} is out of range: ports are 1-65535")
            if lo > hi:
                raise fail(f"port range {shown} is backwards: write the lower port first")
            ranges.append((lo, hi))
        return _merge(ranges)


def _merge(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, overlapping or adjacent ranges joined: nft rejects overlapping set intervals."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)


# --------------------------------------------------------------------------- line map

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _locate(text: str) -> dict[tuple[str | int, ...], int]:
    """Map table headers and keys to their 1-based lines, since tomllib keeps no positions.

    Paths look like ``("groups", "laptops")`` or ``("allow", 1)`` for the second
    ``[[allow]]``. Only run on text tomllib accepted, so the scanner may assume
    valid TOML; it still tracks strings, comments and brackets so that a
    ``[[allow]]`` inside a multi-line string or array is not taken for a header.
    """
    found: dict[tuple[str | int, ...], int] = {}
    arrays: dict[tuple[str | int, ...], int] = {}
    table: tuple[str | int, ...] = ()
    pos, line, end = 0, 1, len(text)

    def skip_blank(i: int, ln: int, newlines: bool) -> tuple[int, int]:
        while i < end:
            c = text[i]
            if c in " \t\r":
                i += 1
            elif c == "\n" and newlines:
                i, ln = i + 1, ln + 1
            elif c == "#":
                while i < end and text[i] != "\n":
                    i += 1
            else:
                break
        return i, ln

    def read_key(i: int) -> tuple[list[str], int]:
        parts: list[str] = []
        while True:
            i, _ = skip_blank(i, 0, False)
            if text.startswith('"', i):
                j = i + 1
                while text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
                parts.append(str(tomllib.loads("k = " + text[i : j + 1])["k"]))
                i = j + 1
            elif text.startswith("'", i):
                j = text.index("'", i + 1)
                parts.append(text[i + 1 : j])
                i = j + 1
            else:
                m = _BARE_KEY.match(text, i)
                if not m:
                    raise ValueError("no key")
                parts.append(m.group())
                i = m.end()
            i, _ = skip_blank(i, 0, False)
            if not text.startswith(".", i):
                return parts, i
            i += 1

    def resolve(parts: Iterable[str]) -> tuple[str | int, ...]:
        path: list[str | int] = []
        for part in parts:
            path.append(part)
            if tuple(path) in arrays:
                path.append(arrays[tuple(path)] - 1)
        return tuple(path)

    def skip_string(i: int, ln: int) -> tuple[int, int]:
        quote = text[i]
        if text.startswith(quote * 3, i):
            i += 3
            while not text.startswith(quote * 3, i):
                if text[i] == "\n":
                    ln += 1
                i += 2 if quote == '"' and text[i] == "\\" and text[i + 1] != "\n" else 1
            i += 3
            extra = 0
            while extra < 2 and text.startswith(quote, i):
                i, extra = i + 1, extra + 1
            return i, ln
        i += 1
        while text[i] != quote:
            i += 2 if quote == '"' and text[i] == "\\" else 1
        return i + 1, ln

    def skip_value(i: int, ln: int) -> tuple[int, int]:
        depth = 0
        while i < end:
            c = text[i]
            if c in "\"'":
                i, ln = skip_string(i, ln)
            elif c in "[{":
                depth, i = depth + 1, i + 1
            elif c in "]}":
                depth, i = depth - 1, i + 1
            elif c == "#":
                while i < end and text[i] != "\n":
                    i += 1
            elif c == "\n":
                if depth <= 0:
                    return i, ln
                i, ln = i + 1, ln + 1
            else:
                i += 1
        return i, ln

    while True:
        pos, line = skip_blank(pos, line, True)
        if pos >= end:
            return found
        if text.startswith("[[", pos):
            parts, pos = read_key(pos + 2)
            parent = resolve(parts[:-1])
            key = (*parent, parts[-1])
            arrays[key] = arrays.get(key, 0) + 1
            table = (*key, arrays[key] - 1)
            found.setdefault(table, line)
            pos += 2
        elif text.startswith("[", pos):
            parts, pos = read_key(pos + 1)
            table = resolve(parts)
            found.setdefault(table, line)
            pos += 1
        else:
            parts, pos = read_key(pos)
            found.setdefault((*table, *parts), line)
            pos, line = skip_value(pos + 1, line)  # past the '='


# --------------------------------------------------------------------------- check


def check(
    policy: Policy,
    src: str,
    dst: str,
    port: int | None,
    proto: str,
    hosts: Mapping[str, Host],
    *,
    node: str | None = None,
) -> Decision:
    """Say whether the policy lets ``src`` reach ``dst``, and which rule does, in one line.

    ``port`` None asks about every port (and is the only choice for icmp); a rule
    limited to some ports does not allow "every port". Pass ``node`` to account
    for what the ruleset always lets devices do to the node: DNS and ping.
    """
    for name in (src, dst):
        if name not in hosts:
            raise NotFound(f"there is no device or node named {_show(name)}")
    if proto not in ("tcp", "udp", "icmp"):
        raise InvalidInput(f"unknown protocol {_show(proto)}: use tcp, udp or icmp")
    if port is not None and proto == "icmp":
        raise InvalidInput("icmp has no ports: leave the port out")
    if port is not None and not 1 <= port <= 65535:
        raise InvalidInput(f"port {port} is out of range: ports are 1-65535")
    what = f"{src} -> {dst} {_traffic(proto, port)}"

    partial: Rule | None = None
    for rule in policy.rules:
        src_sel = _first_match(policy, rule.sources, src, hosts)
        dst_sel = _first_match(policy, rule.destinations, dst, hosts)
        if src_sel is None or dst_sel is None or rule.proto not in ("any", proto):
            continue
        if rule.ports:
            if proto == "icmp":
                continue  # "any" with ports means tcp and udp only
            if port is None or not any(lo <= port <= hi for lo, hi in rule.ports):
                partial = partial or rule
                continue
        return Decision(
            True,
            rule,
            f"allow: {rule.label} allows {src_sel} -> {dst_sel} {_traffic(proto, port)}",
        )
    if node is not None and dst == node != src and (proto == "icmp" or port == 53):
        service = "ping" if proto == "icmp" else "DNS"
        return Decision(
            True, None, f"allow: the node always answers {service} from devices ({what})"
        )
    hint = ""
    if partial is not None:
        hint = f" ({partial.label} allows only ports {_ports_text(partial.ports)})"
    return Decision(
        False,
        None,
        f"deny: no rule allows {what}; the policy denies what it does not allow{hint}",
    )


def _first_match(
    policy: Policy, selectors: Iterable[str], name: str, hosts: Mapping[str, Host]
) -> str | None:
    for selector in selectors:
        if name in policy.expand(selector, hosts):
            return selector
    return None


def _traffic(proto: str, port: int | None) -> str:
    if port is None:
        return proto if proto == "icmp" else f"{proto} (any port)"
    return f"{proto} {port}"


def _ports_text(ports: Iterable[tuple[int, int]]) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ports)


# --------------------------------------------------------------------------- nftables

_REJECT = ("meta l4proto tcp reject with tcp reset", "reject with icmpx admin-prohibited")
_ESTABLISHED = "ct state established,related accept"


def render_nft(
    policy: Policy,
    *,
    table: str,
    wg_iface: str,
    hosts: Mapping[str, Host],
    node: str,
    v4_net: str,
    v6_net: str,
    full_tunnel: Iterable[Host],
    local: Iterable[str] = (),
) -> str:
    """The whole nftables script that atomically replaces ``table inet TABLE``.

    ``*`` renders as the overlay nets, so the default policy's ruleset is the
    same whatever devices exist; names render as sets of their addresses, and a
    rule whose side matches no address is left out (nft refuses empty sets).
    """
    if not _TABLE.fullmatch(table):
        raise InvalidInput(f"invalid nftables table name {_show(table)}")
    if not _IFACE.fullmatch(wg_iface):
        raise InvalidInput(f"invalid interface name {_show(wg_iface)}")
    if node not in hosts:
        raise NotFound(f"the node {_show(node)} is missing from the hosts")
    nets = {
        4: ipaddress.ip_network(v4_net, strict=False),
        6: ipaddress.ip_network(v6_net, strict=False),
    }
    if nets[4].version != 4 or nets[6].version != 6:
        raise InvalidInput(f"the overlay nets {v4_net} and {v6_net} must be IPv4 and IPv6")
    iface = f'"{wg_iface}"'
    node_host = hosts[node]

    overlay = [_ESTABLISHED, "ct state invalid drop"]
    to_node = [
        _ESTABLISHED,
        "udp dport 53 accept",
        "tcp dport 53 accept",
        "meta l4proto { icmp, ipv6-icmp } accept",
    ]
    # The node answers for itself and for its apps (``local``: their names in ``hosts``).
    served = [node, *(n for n in local if n in hosts and n != node)]
    for rule in policy.rules:
        to_me = [n for n in served if _includes(policy, rule.destinations, n)]
        for family in (4, 6):
            sources = _addresses(policy, rule.sources, hosts, family, nets[family])
            targets = _addresses(policy, rule.destinations, hosts, family, nets[family])
            overlay.extend(_rule_lines(rule, family, sources, targets))
            if to_me:
                mine = _addresses(policy, to_me, {n: hosts[n] for n in to_me}, family, nets[family])
                to_node.extend(_rule_lines(rule, family, sources, mine))
    overlay.extend(_REJECT)
    to_node.extend(_REJECT)

    tunnelled = list(full_tunnel)
    egress: list[str] = []
    for family in (4, 6):
        addrs = _sorted_addresses(_address(h, family) for h in tunnelled)
        if addrs:
            egress.append(f"{_ip(family)} saddr {{ {', '.join(addrs)} }} accept")
    egress.extend(_REJECT)

    # An open overlay (some rule allows * -> * on everything) needs no filtering
    # between devices or towards the node, so its packets are accepted first thing
    # and never touch connection tracking: CloudPal then adds nothing measurable
    # to the data path. Conntrack is only switched on by stateful rules or NAT.
    open_overlay = _overlay_open(policy)
    forward = f"iifname {iface} oifname {iface} " + ("accept" if open_overlay else "jump overlay")
    chains: list[tuple[str, str | None, list[str]]] = [
        ("forward", "type filter hook forward priority 0; policy accept;", [
            forward,
            f"iifname {iface} oifname != {iface} jump egress",
            f"iifname != {iface} oifname {iface} jump inbound",
        ]),
    ]
    if not open_overlay:
        chains.append(("overlay", None, overlay))
    chains.append(("egress", None, egress))
    chains.append(("inbound", None, [_ESTABLISHED, "drop"] if tunnelled else ["drop"]))
    if not open_overlay:
        chains.append(("input", "type filter hook input priority 0; policy accept;", [
            f"iifname {iface} jump to_node",
        ]))
        chains.append(("to_node", None, to_node))
    if tunnelled:  # NAT only when some device uses the node as its exit
        chains.append(("postrouting", "type nat hook postrouting priority srcnat; policy accept;", [
            f"oifname != {iface} ip saddr {nets[4]} masquerade",
            f"oifname != {iface} ip6 saddr {nets[6]} masquerade",
        ]))
        if open_overlay:
            # NAT switches conntrack on: keep device-to-device packets out of it.
            # WireGuard's allowed-ips pin each source, so the destination decides.
            chains.insert(0, ("untracked", "type filter hook prerouting priority raw; policy accept;", [
                f"iifname {iface} {_ip(f)} daddr {nets[f]} {_ip(f)} daddr != {_address(node_host, f)} "
                "notrack"
                for f in (4, 6)
                if _address(node_host, f)
            ]))
    out = [f"table inet {table} {{}}", f"delete table inet {table}", f"table inet {table} {{"]
    for name, base, body in chains:
        out.append(f"\tchain {name} {{")
        if base:
            out.append(f"\t\t{base}")
        out.extend(f"\t\t{stmt}" for stmt in body)
        out.append("\t}")
    out.append("}")
    return "\n".join(out) + "\n"


def _overlay_open(policy: Policy) -> bool:
    """True when some rule lets every device reach every device on every port."""
    return any(
        "*" in r.sources and "*" in r.destinations and r.proto == "any" and not r.ports
        for r in policy.rules
    )


def _ip(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def _address(host: Host, family: int) -> str:
    return host.ipv4 if family == 4 else host.ipv6


def _sorted_addresses(addresses: Iterable[str]) -> list[str]:
    """Unique, numerically sorted, normalised: deterministic output and no duplicate elements."""
    parsed = {ipaddress.ip_address(a) for a in addresses if a}
    return [str(a) for a in sorted(parsed)]


def _includes(policy: Policy, selectors: Iterable[str], name: str) -> bool:
    return any(s == "*" or name in policy.expand(s, ()) for s in selectors)


def _addresses(
    policy: Policy,
    selectors: Iterable[str],
    hosts: Mapping[str, Host],
    family: int,
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> list[str]:
    """One side of a rule for one family; ``*`` alone, since a net plus its hosts overlaps."""
    selectors = tuple(selectors)
    if "*" in selectors:
        return [str(net)]
    names: set[str] = set()
    for selector in selectors:
        names |= policy.expand(selector, ())
    return _sorted_addresses(_address(hosts[n], family) for n in names if n in hosts)


def _rule_lines(rule: Rule, family: int, sources: list[str], targets: list[str]) -> list[str]:
    if not sources or not targets:
        return []
    ip = _ip(family)
    parts = [
        f"{ip} saddr {{ {', '.join(sources)} }}",
        f"{ip} daddr {{ {', '.join(targets)} }}",
    ]
    ports = f"{{ {_ports_text(rule.ports)} }}"
    if rule.proto == "icmp":
        parts.append("meta l4proto { icmp, ipv6-icmp }")
    elif rule.proto == "any" and rule.ports:
        parts.append(f"meta l4proto {{ tcp, udp }} th dport {ports}")
    elif rule.proto != "any":
        parts.append(f"{rule.proto} dport {ports}" if rule.ports else f"meta l4proto {rule.proto}")
    parts.append(f'accept comment "rule {rule.index} line {rule.line}"')
    return [" ".join(parts)]
