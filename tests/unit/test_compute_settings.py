"""App settings as typed by the owner: good values parse, bad ones are one clear InvalidInput."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudpal.compute.settings import AppSettings, ImageInfo, Publish, parse_cpu, parse_publish
from cloudpal.errors import InvalidInput


def test_publish_forms() -> None:
    assert parse_publish("127.0.0.1:8080:80") == Publish("127.0.0.1", 8080, 80)
    assert parse_publish("8080:80") == Publish("127.0.0.1", 8080, 80)
    assert parse_publish("[::1]:8443:443") == Publish("::1", 8443, 443)
    assert str(parse_publish("[::1]:8443:443")) == "[::1]:8443:443"
    for bad in ("", "80", "a:1:2", "127.0.0.1:0:80", "1.2.3.4:70000:1", "[::1:80:80", "1:2:3:4"):
        with pytest.raises(InvalidInput):
            parse_publish(bad)


def test_settings_update_and_round_trip() -> None:
    s = AppSettings().updated({"publish": ["127.0.0.1:8080:80"], "idle": "5m", "cpu_percent": "50%",
                               "memory_mib": "256M", "runaway_after": "30s", "pids": "64"})
    assert (s.idle, s.cpu_percent, s.memory_mib, s.runaway_after, s.pids) == (300, 50, 256, 30, 64)
    assert AppSettings.from_json(s.to_json()) == s
    assert AppSettings().updated({"cpu_percent": "none"}).cpu_percent is None
    assert AppSettings().updated({"memory_mib": "1G"}).memory_mib == 1024
    for bad in ({"idle": "soon"}, {"memory_mib": "1M"}, {"cpu_percent": "0%"}, {"nope": 1},
                {"publish": ["1:2", "1:3"]}, {"publish": "8080:80"}, {"pids": True}):
        with pytest.raises(InvalidInput):
            AppSettings().updated(bad)
    assert parse_cpu(150) == 150


def test_image_info_refusals() -> None:
    good = {"id": "sha256:" + "a" * 64, "digest": "sha256:" + "b" * 64, "argv": ["/bin/sh"],
            "rootfs": "/x"}
    assert ImageInfo.from_json(good).argv == ("/bin/sh",)
    for bad in ({**good, "argv": []}, {**good, "id": "x"}, {**good, "exposed_ports": [0]}, [], {"id": 1}):
        with pytest.raises(InvalidInput):
            ImageInfo.from_json(bad)


@given(st.dictionaries(st.sampled_from(["publish", "idle", "cpu_percent", "memory_mib", "pids",
                                        "runaway_after", "volume_mib", "other"]),
                       st.one_of(st.text(max_size=30), st.integers(), st.none(), st.booleans(),
                                 st.lists(st.text(max_size=30), max_size=3))))
def test_settings_fuzz(raw: dict[str, object]) -> None:
    try:
        s = AppSettings().updated(raw)
    except InvalidInput:
        return
    assert AppSettings.from_json(s.to_json()) == s


@given(st.text(max_size=40))
def test_publish_fuzz(text: str) -> None:
    try:
        p = parse_publish(text)
    except InvalidInput:
        return
    assert parse_publish(str(p)) == p
