"""ACL policy: parsing and its messages, check() explanations, nftables rendering.

The rendered rulesets are also validated by the real nft in check mode (nothing
is applied), because nft's grammar, not ours, is what the node depends on.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudpal.errors import CloudPalError, InvalidInput, NotFound, PolicyError
from cloudpal.net.acl import (
    DEFAULT_POLICY_TEXT,
    Decision,
    Host,
    Policy,
    Rule,
    _locate,
    check,
    default_policy,
    parse_policy,
    render_nft,
)

EXAMPLE = """\
# groups of device names
[groups]
laptops = ["laptop", "phone"]
servers = ["nas"]

[[allow]]
from = ["group:laptops"]
to = ["nas", "group:servers"]
proto = "tcp"
ports = ["22", "8000-8080"]

[[allow]]   # everyone may ping the hub
from = ["*"]
to = ["hub"]
proto = "icmp"

[[allow]]
from = ["nas"]
to = ["group:laptops"]
proto = "any"
ports = ["5353"]
"""

V4_NET = "100.64.0.0/10"
V6_NET = "fd12:3456:789a::/48"


def host(name: str, index: int, *, v4: bool = True, v6: bool = True) -> Host:
    return Host(
        name,
        f"100.64.0.{index}" if v4 else "",
        f"fd12:3456:789a::{index:x}" if v6 else "",
    )


HOSTS = {
    h.name: h
    for h in (
        host("hub", 1),
        host("laptop", 2),
        host("phone", 3),
        host("nas", 4),
        host("tv", 5),
    )
}


def render(policy: Policy, hosts: dict[str, Host] | None = None, **kw: Any) -> str:
    hosts = HOSTS if hosts is None else hosts
    args: dict[str, Any] = {
        "table": "cloudpal",
        "wg_iface": "wg0",
        "hosts": hosts,
        "node": "hub",
        "v4_net": V4_NET,
        "v6_net": V6_NET,
        "full_tunnel": [],
    }
    args.update(kw)
    return render_nft(policy, **args)


def fails(text: str, source: str = "policy.toml") -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- parsing


def test_parses_the_example() -> None:
    policy = parse_policy(EXAMPLE, "policy.toml")
    assert dict(policy.groups) == {"laptops": ("laptop", "phone"), "servers": ("nas",)}
    assert policy.rules == (
        Rule(1, 6, ("group:laptops",), ("nas", "group:servers"), "tcp", ((22, 22), (8000, 8080))),
        Rule(2, 12, ("*",), ("hub",), "icmp", ()),
        Rule(3, 17, ("nas",), ("group:laptops",), "any", ((5353, 5353),)),
    )
    assert policy.text == EXAMPLE
    assert policy.device_names() == {"laptop", "phone", "nas", "hub"}


def test_policy_is_immutable_and_hashable() -> None:
    policy = parse_policy(EXAMPLE)
    with pytest.raises(TypeError):
        policy.groups["x"] = ("y",)  # type: ignore[index]
    assert hash(policy) == hash(parse_policy(EXAMPLE))
    assert policy == parse_policy(EXAMPLE)


def test_defaults_and_normalisation() -> None:
    policy = parse_policy(
        '[[allow]]\nfrom = ["a", "a"]\nto = ["b"]\n'
        'ports = [443, "80", " 20 - 22 ", "21-30", "31"]\n'
    )
    (rule,) = policy.rules
    assert rule.proto == "any"
    assert rule.sources == ("a",)
    assert rule.ports == ((20, 31), (80, 80), (443, 443))


def test_empty_policy_denies_everything() -> None:
    policy = parse_policy("# nothing allowed\n")
    assert policy.rules == ()
    assert not check(policy, "laptop", "nas", 22, "tcp", HOSTS).allowed


def test_default_policy() -> None:
    policy = default_policy()
    assert policy is default_policy()
    assert policy.text == DEFAULT_POLICY_TEXT
    (rule,) = policy.rules
    assert (rule.sources, rule.destinations, rule.proto, rule.ports) == (("*",), ("*",), "any", ())
    assert DEFAULT_POLICY_TEXT.splitlines()[rule.line - 1] == "[[allow]]"
    assert policy.device_names() == set()
    for proto, port in (("tcp", 22), ("udp", None), ("icmp", None)):
        assert check(policy, "laptop", "tv", port, proto, HOSTS).allowed
        assert check(policy, "hub", "phone", port, proto, HOSTS).allowed


def test_rule_lines_survive_odd_layout() -> None:
    text = (
        "# header\n"
        "[groups]\n"
        "a = [\n"
        '  "x",  # [[allow]] in a comment\n'
        "]\n"
        "\n"
        "  [[ 'allow' ]] # quoted, indented\n"
        'from = ["x"]\n'
        'to = ["y"]\n'
        '[["allow"]]\n'
        'from = ["group:a"]\n'
        'to = ["*"]\n'
    )
    policy = parse_policy(text)
    assert [r.line for r in policy.rules] == [7, 10]


def test_inline_allow_array_uses_the_key_line() -> None:
    text = '\n\nallow = [{from = ["a"], to = ["b"]}, {from = ["c"], to = ["*"]}]\n'
    policy = parse_policy(text)
    assert [r.line for r in policy.rules] == [3, 3]
    assert policy.rules[1].sources == ("c",)


def test_locate_ignores_headers_inside_strings_and_arrays() -> None:
    text = (
        'a = """\n'
        "[[allow]]\n"
        '"""\n'
        "b = '''\n[[allow]]'''\n"
        "c = [\n"
        '  [["allow"]],\n'
        '  "\\"[[allow]]",\n'
        "]\n"
        "[[allow]]\n"
        "x.y = 1\n"
        "[t.u]\n"
        "[[allow]]\n"
    )
    lines = _locate(text)
    assert lines[("a",)] == 1
    assert lines[("b",)] == 4
    assert lines[("c",)] == 6
    assert lines[("allow", 0)] == 10
    assert lines[("allow", 0, "x", "y")] == 11
    assert lines[("t", "u")] == 12
    assert lines[("allow", 1)] == 13


# Each error class, with the line the message must name.
ANY = '[[allow]]\nfrom = ["*"]\nto = ["*"]\n'  # a valid rule to extend
ERRORS = [
    ('[groups]\nlaptops = ["a"\n', "line 3: invalid TOML"),
    (ANY + "proto = tcp\n", "line 4: invalid TOML: invalid value at column 9"),
    ('[[allow]]\nfrom = "*\n', "line 2: invalid TOML: illegal character"),
    ('\n\n[owner]\nname = "me"\n', "line 3: unknown key 'owner'"),
    ("\nversion = 2\n", "line 2: unknown key 'version'"),
    (ANY + "\n" + ANY + 'port = "22"\n', "line 5: rule 2: unknown key 'port'"),
    ('[[allow]]\nto = ["*"]\n', "line 1: rule 1: missing 'from'"),
    ('\n[[allow]]\nfrom = ["*"]\n', "line 2: rule 1: missing 'to'"),
    (
        '[[allow]]\nfrom = "*"\nto = ["*"]\n',
        "line 1: rule 1: 'from' must be an array of selectors, not a string",
    ),
    (
        '[[allow]]\nfrom = ["*"]\nto = [1]\n',
        "line 1: rule 1: 'to' must list selectors as strings, not an integer",
    ),
    ('[[allow]]\nfrom = []\nto = ["*"]\n', "line 1: rule 1: 'from' is empty"),
    ('[[allow]]\nfrom = ["*"]\nto = ["Laptop"]\n', "rule 1: invalid selector 'Laptop' in 'to'"),
    ('[[allow]]\nfrom = ["-a"]\nto = ["*"]\n', "invalid selector '-a'"),
    ('[[allow]]\nfrom = ["' + "a" * 64 + '"]\nto = ["*"]\n', "invalid selector"),
    ('[[allow]]\nfrom = ["**"]\nto = ["*"]\n', "invalid selector '**'"),
    ('[[allow]]\nfrom = ["group:"]\nto = ["*"]\n', "invalid group name in 'group:'"),
    (
        '[groups]\na = ["x"]\n\n' + ANY + '\n[[allow]]\nfrom = ["group:foo"]\nto = ["*"]\n',
        "policy.toml line 8: rule 2: unknown group 'foo'",
    ),
    ('[groups]\nok = ["a"]\nBad = ["a"]\n', "line 3: invalid group name 'Bad'"),
    (
        '[groups]\nok = ["a"]\n\nx = ["a", "b c"]\n',
        "line 4: group 'x' has an invalid device name 'b c'",
    ),
    ('[groups]\nx = ["group:y"]\n', "line 2: group 'x' has an invalid device name 'group:y'"),
    ("[groups]\nx = []\n", "line 2: group 'x' is empty"),
    ('[groups]\nx = "a"\n', "line 2: group 'x' must be an array of device names, not a string"),
    ("[groups]\nx = [true]\n", "group 'x' must list device names as strings, not a boolean"),
    ("groups = 3\n", "line 1: 'groups' must be a table, not an integer"),
    ('\nallow = {from = ["*"]}\n', "line 2: 'allow' must be an array of tables"),
    ("allow = [1]\n", "line 1: rule 1: each [[allow]] entry must be a table, not an integer"),
    (ANY + 'proto = "sctp"\n', "line 1: rule 1: unknown proto 'sctp'"),
    (ANY + "proto = 6\n", "'proto' must be a string, not an integer"),
    (ANY + 'ports = ["0"]\n', "rule 1: port '0' is out of range"),
    (ANY + "ports = [65536]\n", "port 65536 is out of range"),
    (ANY + 'ports = ["90-80"]\n', "port range '90-80' is backwards"),
    (ANY + 'ports = ["http"]\n', "invalid port 'http'"),
    (ANY + 'ports = ["1-2-3"]\n', "invalid port '1-2-3'"),
    (ANY + 'ports = ["٢٢"]\n', "invalid port"),
    (ANY + "ports = [1.5]\n", "'ports' must list strings or integers, not a float"),
    (ANY + 'ports = "22"\n', "'ports' must be an array"),
    (ANY + "ports = []\n", "'ports' is empty"),
    (ANY + 'proto = "icmp"\nports = ["22"]\n', "rule 1: icmp has no ports"),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_errors_name_source_line_and_reason(text: str, expected: str) -> None:
    message = fails(text)
    assert message.startswith("policy.toml line ") or message.startswith("policy.toml: ")
    assert expected in message, message


def test_toml_errors_at_end_of_file_name_the_last_line() -> None:
    assert fails("[groups]\n\nx = ", "p") .startswith("p line 3: invalid TOML")


def test_errors_are_reported_in_reading_order() -> None:
    text = '[groups]\nfirst = []\nsecond = ["Bad"]\n'
    assert "line 2:" in fails(text)


def test_pathological_toml_is_a_policy_error() -> None:
    assert "invalid TOML" in fails("a = " + "9" * 5000)
    assert "nested too deeply" in fails("a = " + "[" * 5000)


def test_unknown_devices_are_accepted() -> None:
    policy = parse_policy('[[allow]]\nfrom = ["ghost"]\nto = ["*"]\n')
    assert policy.device_names() == {"ghost"}
    assert not check(policy, "laptop", "nas", 22, "tcp", HOSTS).allowed


# --------------------------------------------------------------------------- check


@pytest.fixture(scope="module")
def example() -> Policy:
    return parse_policy(EXAMPLE, "policy.toml")


def test_check_allow_explanation(example: Policy) -> None:
    decision = check(example, "laptop", "nas", 22, "tcp", HOSTS)
    assert decision == Decision(
        True, example.rules[0], "allow: rule 1 (line 6) allows group:laptops -> nas tcp 22"
    )
    decision = check(example, "phone", "nas", 8080, "tcp", HOSTS)
    assert decision.allowed and decision.rule is example.rules[0]


def test_check_deny_explanation(example: Policy) -> None:
    decision = check(example, "tv", "nas", 22, "tcp", HOSTS)
    assert decision == Decision(
        False,
        None,
        "deny: no rule allows tv -> nas tcp 22; the policy denies what it does not allow",
    )


def test_check_ports_and_protocols(example: Policy) -> None:
    def allowed(src: str, dst: str, port: int | None, proto: str) -> bool:
        return check(example, src, dst, port, proto, HOSTS).allowed

    assert not allowed("laptop", "nas", 23, "tcp")
    assert not allowed("laptop", "nas", 7999, "tcp")
    assert allowed("laptop", "nas", 8000, "tcp")
    assert not allowed("laptop", "nas", 8081, "tcp")
    assert not allowed("laptop", "nas", 22, "udp")  # tcp only
    assert not allowed("nas", "laptop", 22, "tcp")  # rules are one-way
    # any + ports means tcp and udp on those ports, never icmp
    assert allowed("nas", "phone", 5353, "udp")
    assert allowed("nas", "phone", 5353, "tcp")
    assert not allowed("nas", "phone", 5354, "udp")
    assert not allowed("nas", "phone", None, "icmp")
    # icmp rule to the hub, from every device
    assert allowed("tv", "hub", None, "icmp")
    assert not allowed("tv", "hub", 80, "tcp")
    assert not allowed("hub", "tv", None, "icmp")


def test_check_any_port_needs_a_rule_for_all_ports(example: Policy) -> None:
    decision = check(example, "laptop", "nas", None, "tcp", HOSTS)
    assert not decision.allowed
    assert decision.explanation == (
        "deny: no rule allows laptop -> nas tcp (any port); the policy denies what it does "
        "not allow (rule 1 (line 6) allows only ports 22, 8000-8080)"
    )
    everything = parse_policy('[[allow]]\nfrom = ["laptop"]\nto = ["nas"]\nproto = "udp"\n')
    assert check(everything, "laptop", "nas", None, "udp", HOSTS).explanation == (
        "allow: rule 1 (line 1) allows laptop -> nas udp (any port)"
    )


def test_check_group_expansion_and_first_matching_rule() -> None:
    policy = parse_policy(
        "[groups]\nall = ['laptop', 'phone', 'nas']\nmedia = ['tv']\n"
        "[[allow]]\nfrom = ['group:media', 'group:all']\nto = ['tv', 'group:all']\nproto = 'udp'\n"
        "[[allow]]\nfrom = ['*']\nto = ['*']\n"
    )
    decision = check(policy, "phone", "nas", 53, "udp", HOSTS)
    assert decision.rule is policy.rules[0]
    assert decision.explanation == "allow: rule 1 (line 4) allows group:all -> group:all udp 53"
    decision = check(policy, "phone", "nas", 53, "tcp", HOSTS)
    assert decision.rule is policy.rules[1]
    assert decision.explanation == "allow: rule 2 (line 8) allows * -> * tcp 53"


def test_check_the_node_answers_dns_and_ping(example: Policy) -> None:
    locked = parse_policy("")
    assert not check(locked, "tv", "hub", 53, "udp", HOSTS).allowed
    dns = check(locked, "tv", "hub", 53, "udp", HOSTS, node="hub")
    assert dns == Decision(
        True, None, "allow: the node always answers DNS from devices (tv -> hub udp 53)"
    )
    assert check(locked, "tv", "hub", None, "icmp", HOSTS, node="hub").allowed
    assert not check(locked, "tv", "hub", 22, "tcp", HOSTS, node="hub").allowed


def test_check_rejects_unknown_names_and_bad_queries(example: Policy) -> None:
    with pytest.raises(NotFound, match="no device or node named 'ghost'"):
        check(example, "ghost", "nas", 22, "tcp", HOSTS)
    with pytest.raises(NotFound):
        check(example, "nas", "ghost", 22, "tcp", HOSTS)
    with pytest.raises(InvalidInput, match="unknown protocol"):
        check(example, "laptop", "nas", 22, "sctp", HOSTS)
    with pytest.raises(InvalidInput, match="icmp has no ports"):
        check(example, "laptop", "nas", 22, "icmp", HOSTS)
    with pytest.raises(InvalidInput, match="out of range"):
        check(example, "laptop", "nas", 0, "tcp", HOSTS)


# --------------------------------------------------------------------------- render


def test_render_default_policy() -> None:
    out = render(default_policy(), full_tunnel=[HOSTS["phone"]])
    lines = out.splitlines()
    assert lines[:3] == [
        "table inet cloudpal {}",
        "delete table inet cloudpal",
        "table inet cloudpal {",
    ]
    body = [line.strip() for line in lines]
    # the open default overlay is accepted first thing, with no per-rule chain
    assert 'iifname "wg0" oifname "wg0" accept' in body
    assert "jump overlay" not in out and "jump to_node" not in out
    assert 'iifname "wg0" oifname != "wg0" jump egress' in body
    assert 'iifname != "wg0" oifname "wg0" jump inbound' in body
    assert "ip saddr { 100.64.0.3 } accept" in body
    assert "ip6 saddr { fd12:3456:789a::3 } accept" in body
    assert f'oifname != "wg0" ip saddr {V4_NET} masquerade' in body
    assert f'oifname != "wg0" ip6 saddr {V6_NET} masquerade' in body
    assert "type nat hook postrouting priority srcnat; policy accept;" in body
    assert out.endswith("}\n")


def test_open_overlay_stays_out_of_connection_tracking() -> None:
    """An allow-all overlay is not filtered, so its packets never touch conntrack: with no
    full-tunnel device nothing is stateful at all; with one, NAT needs conntrack and the
    device-to-device packets are exempted. A restrictive policy stays stateful."""
    plain = render(default_policy())
    assert " ct " not in plain and "notrack" not in plain and "masquerade" not in plain
    body = [line.strip() for line in render(default_policy(), full_tunnel=[HOSTS["phone"]])
            .splitlines()]
    assert "type filter hook prerouting priority raw; policy accept;" in body
    hub4 = HOSTS["hub"].ipv4
    assert f'iifname "wg0" ip daddr {V4_NET} ip daddr != {hub4} notrack' in body
    restrictive = [line.strip() for line in render(parse_policy(EXAMPLE)).splitlines()]
    assert "notrack" not in restrictive and 'iifname "wg0" jump to_node' in restrictive
    assert 'iifname "wg0" oifname "wg0" jump overlay' in restrictive
    to_node = restrictive[restrictive.index("chain to_node {"):]
    assert "udp dport 53 accept" in to_node and "meta l4proto { icmp, ipv6-icmp } accept" in to_node


def test_render_default_policy_does_not_depend_on_devices() -> None:
    few = {"hub": HOSTS["hub"]}
    assert render(default_policy(), few) == render(default_policy())


def test_render_is_deterministic() -> None:
    policy = parse_policy(EXAMPLE)
    shuffled = list(HOSTS.items())
    outputs = set()
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        tunnel = [HOSTS["tv"], HOSTS["laptop"]]
        random.Random(seed).shuffle(tunnel)
        outputs.add(render(policy, dict(shuffled), full_tunnel=tunnel))
    assert len(outputs) == 1


def test_render_rules(example: Policy) -> None:
    body = [line.strip() for line in render(example).splitlines()]
    assert (
        "ip saddr { 100.64.0.2, 100.64.0.3 } ip daddr { 100.64.0.4 } tcp dport { 22, 8000-8080 } "
        'accept comment "rule 1 line 6"'
    ) in body
    assert (
        "ip6 saddr { fd12:3456:789a::2, fd12:3456:789a::3 } ip6 daddr { fd12:3456:789a::4 } "
        'tcp dport { 22, 8000-8080 } accept comment "rule 1 line 6"'
    ) in body
    assert (
        "ip saddr { 100.64.0.4 } ip daddr { 100.64.0.2, 100.64.0.3 } "
        'meta l4proto { tcp, udp } th dport { 5353 } accept comment "rule 3 line 17"'
    ) in body
    icmp = (
        "ip saddr { 100.64.0.0/10 } ip daddr { 100.64.0.1 } meta l4proto { icmp, ipv6-icmp } "
        'accept comment "rule 2 line 12"'
    )
    assert icmp in body
    # rule 2's destination is the node, so it appears in to_node too
    to_node = body[body.index("chain to_node {") :]
    assert icmp in to_node
    assert not any("rule 1 " in line for line in to_node)


def test_render_protocols_without_ports() -> None:
    policy = parse_policy(
        "[[allow]]\nfrom = ['laptop']\nto = ['nas']\nproto = 'udp'\n"
        "[[allow]]\nfrom = ['laptop']\nto = ['nas']\n"
    )
    body = [line.strip() for line in render(policy).splitlines()]
    assert (
        "ip saddr { 100.64.0.2 } ip daddr { 100.64.0.4 } meta l4proto udp "
        'accept comment "rule 1 line 1"'
    ) in body
    assert 'ip saddr { 100.64.0.2 } ip daddr { 100.64.0.4 } accept comment "rule 2 line 5"' in body


def test_render_leaves_out_rules_with_an_empty_side() -> None:
    policy = parse_policy(
        "[groups]\nv6only = ['tv']\n"
        "[[allow]]\nfrom = ['ghost']\nto = ['*']\n"
        "[[allow]]\nfrom = ['group:v6only']\nto = ['nas', 'ghost']\n"
    )
    hosts = dict(HOSTS, tv=host("tv", 5, v4=False))
    out = render(policy, hosts)
    assert "rule 1 " not in out
    assert "{ }" not in out
    rule2 = [line.strip() for line in out.splitlines() if "rule 2 " in line]
    assert rule2 == [
        "ip6 saddr { fd12:3456:789a::5 } ip6 daddr { fd12:3456:789a::4 } "
        'accept comment "rule 2 line 6"'
    ]


def test_render_star_swallows_names_on_the_same_side() -> None:
    policy = parse_policy("[[allow]]\nfrom = ['laptop', '*']\nto = ['nas']\n")
    assert f"ip saddr {{ {V4_NET} }} ip daddr {{ 100.64.0.4 }}" in render(policy)


def test_render_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidInput):
        render(default_policy(), wg_iface='wg0" accept')
    with pytest.raises(InvalidInput):
        render(default_policy(), table="a b")
    with pytest.raises(NotFound):
        render(default_policy(), node="ghost")
    with pytest.raises(InvalidInput):
        render(default_policy(), v4_net=V6_NET)


# --------------------------------------------------------------------------- real nft


def nft_check(script: str, tmp_path: Path) -> None:
    """Validate with `nft -c` (check only); a missing nft or non-root is a failure, not a skip."""
    nft = shutil.which("nft")
    if nft is None:
        pytest.fail("nft (nftables) is not installed: the rendered ruleset cannot be validated")
    if os.geteuid() != 0:
        pytest.fail("nft -c needs root to validate rulesets: run this test as root")
    path = tmp_path / "ruleset.nft"
    path.write_text(script)
    result = subprocess.run(
        [nft, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, f"nft rejected the ruleset:\n{result.stderr}\n{script}"


COMPLEX = """\
[groups]
laptops = ["laptop", "phone", "ghost"]
servers = ["nas", "hub"]
v6only = ["tv"]

[[allow]]
from = ["group:laptops", "tv"]
to = ["group:servers", "*"]
ports = ["22", "80", "8000-8080", "443", "1-10"]

[[allow]]
from = ["*"]
to = ["hub"]
proto = "udp"
ports = ["51820"]

[[allow]]
from = ["group:v6only"]
to = ["group:laptops"]
proto = "icmp"

[[allow]]
from = ["ghost"]
to = ["nas"]

[[allow]]
from = ["nas"]
to = ["laptop", "phone"]
proto = "tcp"

[[allow]]
from = ["phone"]
to = ["group:servers"]
"""


@pytest.mark.parametrize(
    ("name", "text", "hosts", "tunnel"),
    [
        ("default", DEFAULT_POLICY_TEXT, HOSTS, ["phone"]),
        ("complex", COMPLEX, dict(HOSTS, tv=host("tv", 5, v4=False)), ["laptop", "tv"]),
        (
            "ipv6-only",
            COMPLEX,
            {n: host(n, i, v4=False) for i, n in enumerate(HOSTS, start=1)},
            ["tv"],
        ),
        ("ipv4-only", EXAMPLE, {n: host(n, i, v6=False) for i, n in enumerate(HOSTS, 1)}, []),
        ("nothing-allowed", "", HOSTS, []),
        ("node-only", DEFAULT_POLICY_TEXT, {"hub": HOSTS["hub"]}, []),
    ],
)
def test_nft_accepts_rendered_ruleset(
    name: str, text: str, hosts: dict[str, Host], tunnel: list[str], tmp_path: Path
) -> None:
    policy = parse_policy(text, name)
    nft_check(render(policy, hosts, full_tunnel=[hosts[n] for n in tunnel]), tmp_path)


# --------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOMLISH = st.sampled_from(
    [
        "[groups]", "[[allow]]", "[allow]", "[[groups]]", "from", "to", "proto", "ports",
        "=", " = ", "[", "]", "{", "}", ",", '"', "'", '"""', "'''", "\n", "\n", "#", ".",
        '"*"', '"group:a"', '"tcp"', '"icmp"', '"22"', '"1-2"', "22", "-1", "1e999", "nan",
        "true", "1979-05-27T07:32:00Z", "a", "laptops", '["x"]', "\\", "\\u00e9", "\t", " ",
    ]
)


def _assert_only_policy_errors(text: str) -> None:
    try:
        policy = parse_policy(text)
    except PolicyError as exc:
        message = str(exc)
        assert message.startswith("policy line ") or message.startswith("policy: ")
        assert "\n" not in message
    else:
        assert isinstance(policy, Policy)
        policy.device_names()


@FUZZ
@given(st.text())
def test_fuzz_arbitrary_text(text: str) -> None:
    _assert_only_policy_errors(text)


@FUZZ
@given(st.lists(TOMLISH | st.text(max_size=3), max_size=40).map("".join))
def test_fuzz_tomlish_text(text: str) -> None:
    _assert_only_policy_errors(text)


KEYS = st.sampled_from(["groups", "allow", "from", "to", "proto", "ports", "a", "x-y"]) | st.text(
    max_size=5
)
SCALARS = (
    st.sampled_from(["*", "group:a", "group:Bad", "a", "nas", "tcp", "udp", "icmp", "any",
                     "22", "0", "8000-8080", "9-1", "", "-a"])
    | st.text(max_size=6)
    | st.integers(-(2**70), 2**70)
    | st.booleans()
    | st.floats()
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=10,
)
RULES = st.lists(
    st.dictionaries(st.sampled_from(["from", "to", "proto", "ports"]) | KEYS, VALUES, max_size=5),
    max_size=4,
)
GROUPS = st.dictionaries(
    st.sampled_from(["a", "b", "Bad", "-x"]) | KEYS,
    st.lists(SCALARS, max_size=3) | VALUES,
    max_size=4,
)
DOCS = st.fixed_dictionaries(
    {}, optional={"groups": GROUPS | VALUES, "allow": RULES | VALUES}
) | st.dictionaries(KEYS, VALUES, max_size=3)


def _inline(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_inline(v)}" for k, v in value.items()) + "}"


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _dump(doc: dict[str, Any], noise: random.Random) -> str:
    """A small TOML writer: tables and arrays of tables as headers, the rest inline."""

    def pad() -> str:
        return noise.choice(["", " ", "  # note", "\t#[[allow]]"])

    out: list[str] = []
    tables: list[tuple[str, Any]] = []
    for key, value in doc.items():
        if isinstance(value, dict) or (
            isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
        ):
            tables.append((key, value))
        else:
            out.append(f"{_key(key)} = {_inline(value)}{pad()}")
    for key, value in tables:
        for table in value if isinstance(value, list) else [value]:
            brackets = ("[[", "]]") if isinstance(value, list) else ("[", "]")
            out.append(f"{pad().strip()}\n{brackets[0]}{_key(key)}{brackets[1]}{pad()}")
            out.extend(f"{_key(k)} = {_inline(v)}{pad()}" for k, v in table.items())
    return "\n".join(out) + "\n"


@FUZZ
@given(DOCS, st.randoms(use_true_random=False), st.integers(0, 3))
def test_fuzz_structured_toml(doc: dict[str, Any], noise: random.Random, damage: int) -> None:
    text = _dump(doc, noise)
    for _ in range(damage):  # some documents get a byte or two of damage
        at = noise.randrange(len(text) + 1)
        text = text[:at] + noise.choice(["", "[", '"', "\n", "=", "]]"]) + text[at + 1 :]
    _assert_only_policy_errors(text)


NAMES = st.sampled_from(["hub", "laptop", "phone", "nas", "tv", "ghost"])
SELECTORS = st.lists(NAMES | st.sampled_from(["*", "group:g1", "group:g2"]), min_size=1, max_size=3)
VALID_RULES = st.lists(
    st.fixed_dictionaries(
        {"from": SELECTORS, "to": SELECTORS},
        optional={
            "proto": st.sampled_from(["any", "tcp", "udp"]),
            "ports": st.lists(
                st.integers(1, 65535).map(str)
                | st.tuples(st.integers(1, 3000), st.integers(0, 100)).map(
                    lambda t: f"{t[0]}-{t[0] + t[1]}"
                ),
                min_size=1,
                max_size=4,
            ),
        },
    ),
    max_size=5,
)


@settings(max_examples=40, deadline=None)
@given(VALID_RULES, st.randoms(use_true_random=False))
def test_fuzz_valid_policies_parse_with_right_lines(
    rules: list[dict[str, Any]], noise: random.Random
) -> None:
    doc = {"groups": {"g1": ["laptop", "hub"], "g2": ["nas", "ghost"]}, "allow": rules}
    text = _dump(doc, noise)
    policy = parse_policy(text)
    assert len(policy.rules) == len(rules)
    lines = text.splitlines()
    for rule, raw in zip(policy.rules, rules, strict=True):
        assert lines[rule.line - 1].startswith("[[allow]]")
        assert rule.sources == tuple(dict.fromkeys(raw["from"]))
    out = render(policy, full_tunnel=[HOSTS["tv"]])
    assert out == render(policy, dict(reversed(list(HOSTS.items()))), full_tunnel=[HOSTS["tv"]])
    for src in HOSTS:
        decision = check(policy, src, "nas", 22, "tcp", HOSTS)
        assert decision.explanation.startswith("allow: " if decision.allowed else "deny: ")
        assert (decision.rule is not None) == decision.allowed


def test_policy_error_is_a_cloudpal_error() -> None:
    assert issubclass(PolicyError, CloudPalError)
