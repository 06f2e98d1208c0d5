"""Registry, address plan, invite codes and enrollment messages (no root needed)."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudpal.errors import Conflict, Exhausted, InvalidInput, NotFound, StateError
from cloudpal.net import enroll, keys
from cloudpal.net.addressing import AddressPlan, generate_ula48
from cloudpal.net.names import parse_duration, validate_name
from cloudpal.net.ratelimit import RateLimiter, TokenBucket
from cloudpal.net.registry import SCHEMA, Registry, format_invite_code, parse_invite_code
from cloudpal.state import Database


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    db = Database(tmp_path)
    db.migrate("net", SCHEMA)
    return Registry(db, AddressPlan.parse("100.64.0.0/29", "fd00:1:2::/48"))


def test_add_allocates_lowest_free_addresses(registry: Registry) -> None:
    a = registry.add("laptop")
    b = registry.add("phone")
    assert (a.ipv4, a.ipv6) == ("100.64.0.2", "fd00:1:2::2")
    assert (b.ipv4, b.ipv6) == ("100.64.0.3", "fd00:1:2::3")
    registry.revoke("laptop")
    assert registry.add("tablet").ipv4 == "100.64.0.2"


def test_exhausted_range_leaves_state_unchanged(registry: Registry) -> None:
    for i in range(5):  # a /29 has 6 hosts: the node and five devices
        registry.add(f"d{i}")
    with pytest.raises(Exhausted, match="exhausted"):
        registry.add("one-too-many")
    assert len(registry.devices()) == 5


def test_names_keys_and_duplicates(registry: Registry) -> None:
    for bad in ("", "Laptop", "-x", "x-", "a" * 64, "a.b", "a_b"):
        with pytest.raises(InvalidInput):
            registry.add(bad)
    registry.add("laptop")
    with pytest.raises(Conflict, match="already exists"):
        registry.add("laptop")
    with pytest.raises(InvalidInput, match="malformed public key"):
        registry.add("x", public_key="not-a-key")
    with pytest.raises(Conflict, match="node"):
        registry.add("node", reserved=frozenset({"node"}))
    assert [d.name for d in registry.devices()] == ["laptop"]


def test_own_key_and_revoked_key_refused(registry: Registry) -> None:
    pub = keys.public_key(keys.generate_private_key())
    dev = registry.add("phone", public_key=pub)
    assert dev.private_key is None and dev.public_key == pub
    with pytest.raises(Conflict, match="already belongs"):
        registry.add("phone2", public_key=pub)
    registry.revoke("phone")
    with pytest.raises(Conflict, match="revoked"):
        registry.add("phone", public_key=pub)
    with pytest.raises(NotFound):
        registry.revoke("phone")


def test_rename_and_renew(registry: Registry) -> None:
    registry.add("a", lifetime=1)
    registry.add("b")
    with pytest.raises(Conflict):
        registry.rename("a", "b")
    dev = registry.rename("a", "c")
    assert dev.expires is not None
    assert registry.renew("c", None).expires is None
    with pytest.raises(NotFound):
        registry.rename("zz", "yy")


def test_invite_lifecycle(registry: Registry) -> None:
    inv = registry.create_invite(uses=1, ttl=60)
    invite_id, secret = parse_invite_code(inv.code)
    assert (invite_id, secret) == (inv.id, inv.secret)
    pub = keys.public_key(keys.generate_private_key())
    with pytest.raises(InvalidInput, match="wrong"):
        registry.redeem_invite(inv.id, False, "laptop", pub)
    dev, _ = registry.redeem_invite(inv.id, True, "laptop", pub)
    assert dev.public_key == pub
    pub2 = keys.public_key(keys.generate_private_key())
    with pytest.raises(Exhausted, match="already been used"):
        registry.redeem_invite(inv.id, True, "phone", pub2)
    expired = registry.create_invite(uses=3, ttl=-1)
    with pytest.raises(Exhausted, match="expired"):
        registry.redeem_invite(expired.id, True, "phone", pub2)
    # a failed redemption (name taken) uses nothing
    inv2 = registry.create_invite(uses=1, ttl=60)
    with pytest.raises(Conflict):
        registry.redeem_invite(inv2.id, True, "laptop", pub2)
    assert registry.find_invite(inv2.id).uses_left == 1  # type: ignore[union-attr]


def test_concurrent_adds_from_threads(tmp_path: Path) -> None:
    """Two connections (as two processes would) never hand out one address twice."""
    plan = AddressPlan.parse("100.64.0.0/24", "fd00:1:2::/48")
    db0 = Database(tmp_path)
    db0.migrate("net", SCHEMA)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        reg = Registry(Database(tmp_path), plan)
        try:
            for i in range(15):
                reg.add(f"w{n}-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    devs = Registry(db0, plan).devices()
    assert len(devs) == 60 and len({d.index for d in devs}) == 60


def test_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="corrupt"):
        Database(tmp_path)


def test_address_plan() -> None:
    ula = AddressPlan.parse("100.64.0.0/10", generate_ula48())
    assert ula.ipv6.prefixlen == 48 and ula.ipv6.network_address.packed[0] == 0xFD
    assert ula.node_v4() == "100.64.0.1"
    with pytest.raises(InvalidInput):
        AddressPlan.parse("100.64.0.0/30", generate_ula48())
    with pytest.raises(InvalidInput):
        AddressPlan.parse("100.64.0.1/24", generate_ula48())


def test_durations_and_names() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("90s") == 90
    for bad in ("", "0d", "1y", "d", "-1h", "1.5h"):
        with pytest.raises(InvalidInput):
            parse_duration(bad)
    assert validate_name("laptop-2") == "laptop-2"


def test_enroll_messages_roundtrip_and_tamper() -> None:
    secret = b"s" * 16
    pub = keys.public_key(keys.generate_private_key())
    req = enroll.parse_request(enroll.build_request("abcdefgh", secret, "laptop", pub))
    assert enroll.request_mac_ok(req, secret)
    assert not enroll.request_mac_ok(req, b"x" * 16)
    grant = enroll.Grant("laptop", ["100.64.0.2/32"], ["100.64.0.1", "pal"], pub,
                         "198.18.0.1:51820", ["100.64.0.0/10"], 25)
    body = enroll.build_response(grant, secret)
    assert enroll.parse_response(body, secret) == grant
    obj = json.loads(body)
    obj["grant"]["endpoint"] = "203.0.113.9:51820"  # a man in the middle
    with pytest.raises(InvalidInput, match="not signed"):
        enroll.parse_response(json.dumps(obj).encode(), secret)


@given(st.binary(max_size=600))
def test_enroll_parsers_fuzz(data: bytes) -> None:
    for fn in (enroll.parse_request, lambda d: enroll.parse_response(d, b"k" * 16)):
        with contextlib.suppress(InvalidInput):
            fn(data)
    enroll.parse_error(data)


@given(st.text(max_size=60))
def test_invite_code_parser_fuzz(text: str) -> None:
    with contextlib.suppress(InvalidInput):
        parse_invite_code(text)


def test_invite_code_format() -> None:
    code = format_invite_code("abcdefgh", bytes(range(16)))
    assert parse_invite_code(code.upper()) == ("abcdefgh", bytes(range(16)))
    assert base64.b32encode(bytes(range(16)))  # sanity: 16 bytes -> 26 base32 chars
    with pytest.raises(InvalidInput):
        parse_invite_code("abcdefgh-" + "1" * 26)  # '1' is not base32


def test_rate_limiter() -> None:
    bucket = TokenBucket(rate=1.0, burst=2)
    assert bucket.take(0.0 + bucket.stamp) and bucket.take(bucket.stamp)
    assert not bucket.take(bucket.stamp)
    limiter = RateLimiter(per_client=(0.0, 3), total=(0.0, 100))
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")
