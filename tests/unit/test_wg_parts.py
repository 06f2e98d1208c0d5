"""Keys, the UAPI codec, wg-quick configs and QR codes, without a running daemon."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudpal.errors import CloudPalError, InvalidInput
from cloudpal.net import keys, qr, uapi, wgquick
from cloudpal.net.uapi import PeerSpec, UapiError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


PUB_A = keys.public_key(keys.generate_private_key())
PUB_B = keys.public_key(keys.generate_private_key())


# --- keys ------------------------------------------------------------------------


def test_generated_key_is_clamped_and_matches_cryptography() -> None:
    priv = keys.generate_private_key()
    raw = base64.b64decode(priv)
    assert len(raw) == 32 and raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40
    assert keys.clamp(priv) == priv
    expected = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    assert keys.public_key(priv) == b64(expected)


def test_clamping_does_not_change_the_public_key() -> None:
    raw = bytes(range(224, 256))  # every clamped bit is "wrong"
    assert keys.clamp(b64(raw)) != b64(raw)
    assert keys.public_key(b64(raw)) == keys.public_key(keys.clamp(b64(raw)))


def test_parse_key_accepts_canonical_base64_with_surrounding_whitespace() -> None:
    assert keys.parse_key(f"  {PUB_A}\n") == base64.b64decode(PUB_A)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        b64(bytes(31)),
        b64(bytes(33)),
        b64(bytes(32)).rstrip("="),  # missing padding
        b64(bytes(32))[:-2] + "B=",  # non-canonical trailing bits
        b64(bytes(32))[:-1] + "==",
        "é" * 44,
        "A" * 43 + "\u00bd",
        b64(bytes(32))[:10] + " " + b64(bytes(32))[11:],
        b64(bytes(32)).replace("A", "-"),  # url-safe alphabet
    ],
)
def test_parse_key_rejects_anything_else(bad: str) -> None:
    with pytest.raises(InvalidInput, match=r"^malformed public key: "):
        keys.parse_key(bad)


def test_parse_key_names_what_it_parsed_but_never_echoes_it() -> None:
    with pytest.raises(InvalidInput, match=r"^malformed private key: ") as exc:
        keys.parse_key("secretsecret", "private key")
    assert "secretsecret" not in str(exc.value)


def test_hex_roundtrip_and_rejects() -> None:
    hx = keys.to_hex(PUB_A)
    assert hx == base64.b64decode(PUB_A).hex() and len(hx) == 64
    assert keys.from_hex(hx) == PUB_A
    assert keys.from_hex(hx.upper()) == PUB_A
    for bad in ("", hx[:-1], hx + "0", "g" * 64, " " + hx[1:]):
        with pytest.raises(InvalidInput):
            keys.from_hex(bad)


# --- uapi encoding ---------------------------------------------------------------


def test_encode_set_full_request() -> None:
    priv = keys.generate_private_key()
    psk = b64(os.urandom(32))
    data = uapi.encode_set(
        private_key=priv,
        listen_port=51820,
        replace_peers=True,
        peers=[
            PeerSpec(PUB_A, ("100.64.0.2/32", "fd00::2/128"), "192.0.2.1:51820", 25, psk),
            PeerSpec(PUB_B, ("10.0.0.5/24",), "[2001:db8::1]:1"),
        ],
        remove=[keys.public_key(keys.generate_private_key())],
    )
    text = data.decode()
    assert text.endswith("\n\n") and text.count("\n\n") == 1
    lines = text[:-2].split("\n")
    removed = lines[-2].removeprefix("public_key=")
    assert lines == [
        "set=1",
        f"private_key={keys.to_hex(priv)}",
        "listen_port=51820",
        "replace_peers=true",
        f"public_key={keys.to_hex(PUB_A)}",
        f"preshared_key={keys.to_hex(psk)}",
        "endpoint=192.0.2.1:51820",
        "persistent_keepalive_interval=25",
        "replace_allowed_ips=true",
        "allowed_ip=100.64.0.2/32",
        "allowed_ip=fd00::2/128",
        f"public_key={keys.to_hex(PUB_B)}",
        "endpoint=[2001:db8::1]:1",
        "replace_allowed_ips=true",
        "allowed_ip=10.0.0.0/24",  # normalised the way wireguard-go would store it
        f"public_key={removed}",
        "remove=true",
    ]


def test_encode_set_minimal() -> None:
    assert uapi.encode_set() == b"set=1\n\n"
    assert uapi.encode_set(listen_port=0) == b"set=1\nlisten_port=0\n\n"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"private_key": "nope"},
        {"listen_port": 65536},
        {"listen_port": -1},
        {"listen_port": True},
        {"peers": [PeerSpec("nope")]},
        {"peers": [PeerSpec(PUB_A, ("10.0.0.1/33",))]},
        {"peers": [PeerSpec(PUB_A, ("10.0.0.1/32\nremove=true",))]},
        {"peers": [PeerSpec(PUB_A, endpoint="example.com:51820")]},
        {"peers": [PeerSpec(PUB_A, endpoint="192.0.2.1")]},
        {"peers": [PeerSpec(PUB_A, endpoint="192.0.2.1:0")]},
        {"peers": [PeerSpec(PUB_A, endpoint="192.0.2.1:70000")]},
        {"peers": [PeerSpec(PUB_A, endpoint="[192.0.2.1]:1")]},
        {"peers": [PeerSpec(PUB_A, endpoint="1.2.3.4:5\nremove=true")]},
        {"peers": [PeerSpec(PUB_A, keepalive=70000)]},
        {"peers": [PeerSpec(PUB_A, preshared_key="x")]},
        {"peers": [PeerSpec(PUB_A), PeerSpec(PUB_A)]},
        {"peers": [PeerSpec(PUB_A)], "remove": [PUB_A]},
        {"remove": ["nope"]},
    ],
)
def test_encode_set_rejects_bad_input_before_sending(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        uapi.encode_set(**kwargs)  # type: ignore[arg-type]


def test_encode_set_thousands_of_peers_is_one_request() -> None:
    pubs = [b64(i.to_bytes(2, "big") * 16) for i in range(5000)]
    specs = [PeerSpec(p, (f"100.64.{i // 256}.{i % 256}/32",)) for i, p in enumerate(pubs)]
    data = uapi.encode_set(replace_peers=True, peers=specs)
    assert data.count(b"public_key=") == 5000 and data.endswith(b"\n\n")
    assert data.count(b"\n\n") == 1


# --- uapi decoding ---------------------------------------------------------------

SAMPLE_GET = (
    "private_key={priv}\n"
    "listen_port=51820\n"
    "fwmark=7\n"
    "public_key={a}\n"
    "preshared_key=" + "0" * 64 + "\n"
    "protocol_version=1\n"
    "endpoint=[2001:db8::1]:51820\n"
    "last_handshake_time_sec=1700000000\n"
    "last_handshake_time_nsec=500000000\n"
    "tx_bytes=10\n"
    "rx_bytes=20\n"
    "persistent_keepalive_interval=25\n"
    "allowed_ip=100.64.0.2/32\n"
    "allowed_ip=fd00::2/128\n"
    "public_key={b}\n"
    "last_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\n"
    "tx_bytes=0\n"
    "rx_bytes=0\n"
    "persistent_keepalive_interval=0\n"
    "errno=0\n\n"
)


def test_decode_get_sample() -> None:
    priv = keys.generate_private_key()
    data = SAMPLE_GET.format(priv=keys.to_hex(priv), a=keys.to_hex(PUB_A), b=keys.to_hex(PUB_B))
    st_ = uapi.decode_get(data.encode())
    assert st_.public_key == keys.public_key(priv)
    assert (st_.listen_port, st_.fwmark) == (51820, 7)
    assert list(st_.peers) == [PUB_A, PUB_B]
    a, b = st_.peers[PUB_A], st_.peers[PUB_B]
    assert a.endpoint == "[2001:db8::1]:51820"
    assert a.allowed_ips == ["100.64.0.2/32", "fd00::2/128"]
    assert a.last_handshake == pytest.approx(1700000000.5)
    assert (a.rx_bytes, a.tx_bytes, a.keepalive) == (20, 10, 25)
    assert (b.endpoint, b.allowed_ips, b.last_handshake, b.keepalive) == (None, [], None, 0)


def test_decode_get_empty_device() -> None:
    st_ = uapi.decode_get(b"errno=0\n\n")
    assert st_ == uapi.InterfaceStatus(None, None, None, {})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"errno=0",  # truncated
        b"listen_port=1\n\n",  # no errno
        b"listen_port=x\nerrno=0\n\n",
        b"listen_port=-1\nerrno=0\n\n",
        b"public_key=zz\nerrno=0\n\n",
        b"garbage\nerrno=0\n\n",
        b"\xff\nerrno=0\n\n",
        ("public_key=" + "1" * 64 + "\nlisten_port=1\nerrno=0\n\n").encode(),
        ("public_key=" + "1" * 64 + "\npublic_key=" + "1" * 64 + "\nerrno=0\n\n").encode(),
        ("public_key=" + "1" * 64 + "\nallowed_ip=nope\nerrno=0\n\n").encode(),
        b"errno=0\nlisten_port=1\n\n",
    ],
)
def test_decode_get_malformed(data: bytes) -> None:
    with pytest.raises(UapiError) as exc:
        uapi.decode_get(data)
    assert exc.value.errno < 0 and not isinstance(exc.value, CloudPalError)


def test_decode_get_reports_daemon_errno() -> None:
    with pytest.raises(UapiError) as exc:
        uapi.decode_get(b"errno=-22\n\n")
    assert exc.value.errno == -22


def test_decode_errno() -> None:
    assert uapi.decode_errno(b"errno=0\n\n") == 0
    assert uapi.decode_errno(b"errno=-22\n\n") == -22
    assert uapi.decode_errno(b"errno=-22\n") == -22
    for bad in (b"", b"errno=\n\n", b"errno=x\n\n", b"errno=0", b"\n\n"):
        with pytest.raises(UapiError):
            uapi.decode_errno(bad)


_UAPI_KEYS = [
    "private_key",
    "listen_port",
    "fwmark",
    "public_key",
    "preshared_key",
    "protocol_version",
    "endpoint",
    "last_handshake_time_sec",
    "last_handshake_time_nsec",
    "tx_bytes",
    "rx_bytes",
    "persistent_keepalive_interval",
    "allowed_ip",
    "errno",
    "remove",
]
_UAPI_VALUES = st.one_of(
    st.sampled_from(["0", "1", "-22", "1" * 64, "f" * 64, "1.2.3.4:5", "10.0.0.0/8", "", "x"]),
    st.text(alphabet="0123456789abcdef:/.[]-", max_size=70),
)
_UAPI_LINES = st.lists(
    st.tuples(st.sampled_from(_UAPI_KEYS), _UAPI_VALUES).map(lambda kv: f"{kv[0]}={kv[1]}\n"),
    max_size=12,
).map(lambda ls: ("".join(ls) + "errno=0\n\n").encode())


@FUZZ
@given(st.one_of(st.binary(max_size=300), _UAPI_LINES))
def test_fuzz_decoders_raise_only_uapi_error(data: bytes) -> None:
    for decode in (uapi.decode_get, uapi.decode_errno):
        with contextlib.suppress(UapiError):
            decode(data)


# --- wg-quick --------------------------------------------------------------------


def _cfg(**over: object) -> wgquick.DeviceConfig:
    base: dict[str, object] = dict(
        private_key=keys.generate_private_key(),
        addresses=("100.64.0.2/32", "fd12:3456:789a::2/128"),
        dns=("100.64.0.1", "fd12:3456:789a::1", "pal.internal"),
        hub_public_key=PUB_A,
        endpoint="node.example.com:51820",
        allowed_ips=("100.64.0.0/10", "fd12:3456:789a::/48"),
        keepalive=25,
        mtu=1380,
        name="laptop",
    )
    base.update(over)
    return wgquick.DeviceConfig(**base)  # type: ignore[arg-type]


def test_render_exact_text() -> None:
    cfg = _cfg()
    assert wgquick.render(cfg) == (
        "# CloudPal device laptop\n"
        "[Interface]\n"
        f"PrivateKey = {cfg.private_key}\n"
        "Address = 100.64.0.2/32, fd12:3456:789a::2/128\n"
        "DNS = 100.64.0.1, fd12:3456:789a::1, pal.internal\n"
        "MTU = 1380\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {PUB_A}\n"
        "Endpoint = node.example.com:51820\n"
        "AllowedIPs = 100.64.0.0/10, fd12:3456:789a::/48\n"
        "PersistentKeepalive = 25\n"
    )


def test_render_parse_roundtrip() -> None:
    cfg = _cfg()
    assert wgquick.parse(wgquick.render(cfg)) == {
        "Interface": [
            {
                "PrivateKey": cfg.private_key,
                "Address": ", ".join(cfg.addresses),
                "DNS": ", ".join(cfg.dns),
                "MTU": "1380",
            }
        ],
        "Peer": [
            {
                "PublicKey": PUB_A,
                "Endpoint": cfg.endpoint,
                "AllowedIPs": ", ".join(cfg.allowed_ips),
                "PersistentKeepalive": "25",
            }
        ],
    }


def test_render_without_private_key_leaves_a_comment() -> None:
    text = wgquick.render(_cfg(private_key=None, name=None, mtu=None, keepalive=0, dns=()))
    assert "PrivateKey" in text and not any(
        line.startswith("PrivateKey") for line in text.splitlines()
    )
    assert text.startswith("[Interface]\n#")
    parsed = wgquick.parse(text)
    assert "PrivateKey" not in parsed["Interface"][0]
    assert set(parsed["Interface"][0]) == {"Address"}
    assert "PersistentKeepalive" not in parsed["Peer"][0]


def test_render_full_tunnel_and_v6_endpoint() -> None:
    text = wgquick.render(_cfg(endpoint="[2001:db8::1]:51820", allowed_ips=("0.0.0.0/0", "::/0")))
    peer = wgquick.parse(text)["Peer"][0]
    assert peer["Endpoint"] == "[2001:db8::1]:51820"
    assert peer["AllowedIPs"] == "0.0.0.0/0, ::/0"


@pytest.mark.parametrize(
    "over",
    [
        {"private_key": "bad"},
        {"hub_public_key": "bad"},
        {"addresses": ("not-an-ip/32",)},
        {"addresses": ("100.64.0.2/32\nPostUp = rm -rf /",)},
        {"dns": ("bad domain",)},
        {"dns": ("a.b\nPostUp=x",)},
        {"endpoint": "host"},
        {"endpoint": "host:0"},
        {"endpoint": "host:99999"},
        {"endpoint": "ho st:1"},
        {"endpoint": "[not-v6]:1"},
        {"endpoint": "2001:db8::1:51820"},
        {"allowed_ips": ("0.0.0.0/33",)},
        {"keepalive": -1},
        {"mtu": 10},
        {"name": "two\nlines"},
        {"name": ""},
    ],
)
def test_render_rejects_values_that_would_break_the_file(over: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        wgquick.render(_cfg(**over))


def test_parse_wg_quick_conventions() -> None:
    text = (
        "  # leading comment\r\n"
        "[interface]   # section names are case-insensitive\r\n"
        "PrivateKey=abc # trailing comment\n"
        "Address = 10.0.0.2/32\n"
        "address = fd00::2/128\n"
        "PostUp = echo hi\n"
        "\n"
        "[Peer]\n"
        "[Peer]\n"
        "PublicKey = x\n"
        "DNS =\n"
    )
    assert wgquick.parse(text) == {
        "Interface": [
            {"PrivateKey": "abc", "Address": "10.0.0.2/32, fd00::2/128", "PostUp": "echo hi"}
        ],
        "Peer": [{}, {"PublicKey": "x", "DNS": ""}],
    }


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("PrivateKey = x\n", "before any"),
        ("[Interface]\nno equals sign\n", "line 2"),
        ("[Interface]\n= value\n", "line 2"),
        ("[Interface]\nPrivate Key = x\n", "line 2"),
        ("[Wat]\n", "unknown section"),
        ("[Interface\n", "line 1"),
        ("[Interface]\nListenPort = 1\nlistenport = 2\n", "twice"),
    ],
)
def test_parse_rejects(text: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        wgquick.parse(text)


_CONF_TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(
        st.sampled_from(
            [
                "[Interface]",
                "[Peer]",
                "[peer",
                "Address = 1",
                "DNS=",
                "x",
                "=",
                "#",
                "a=b=c",
                "PublicKey = k # c",
                "  ",
                "\r",
                "ListenPort = 1",
                "listenport=2",
                "[]",
            ]
        ),
        max_size=15,
    ).map("\n".join),
)


@FUZZ
@given(_CONF_TEXT)
def test_fuzz_parse_raises_only_invalid_input(text: str) -> None:
    try:
        result = wgquick.parse(text)
    except InvalidInput:
        return
    assert set(result) == {"Interface", "Peer"}


@FUZZ
@given(
    name=st.one_of(st.none(), st.text(min_size=1, max_size=30)),
    dns=st.lists(st.sampled_from(["1.1.1.1", "::1", "lan", "pal.internal."]), max_size=4),
    keepalive=st.integers(0, 65535),
)
def test_fuzz_render_roundtrips_or_refuses(
    name: str | None, dns: list[str], keepalive: int
) -> None:
    cfg = _cfg(name=name, dns=tuple(dns), keepalive=keepalive)
    try:
        text = wgquick.render(cfg)
    except InvalidInput:
        assert name is not None  # only a bad name can be refused here
        return
    parsed = wgquick.parse(text)
    assert parsed["Interface"][0]["PrivateKey"] == cfg.private_key
    assert parsed["Interface"][0].get("DNS", "") == ", ".join(dns)
    assert parsed["Peer"][0].get("PersistentKeepalive", "0") == str(keepalive)
    assert len(parsed["Interface"]) == len(parsed["Peer"]) == 1


# --- QR --------------------------------------------------------------------------


def _zbar(path: Path) -> bytes:
    zbarimg = shutil.which("zbarimg")
    assert zbarimg, "zbarimg is not installed (apt-get install zbar-tools)"
    # QR only: with every symbology on, zbar now and then also "finds" a 1-D barcode (say a
    # Codabar "A+5B") in the random-looking modules of a QR code and prints that too.
    proc = subprocess.run([zbarimg, "--raw", "-q", "-Sdisable", "-Sqrcode.enable", str(path)],
                          capture_output=True, check=True)
    return proc.stdout


@pytest.mark.parametrize("name", ["laptop", "Zoë's phone 日本"])
def test_qr_png_decodes_to_the_exact_config(tmp_path: Path, name: str) -> None:
    text = wgquick.render(_cfg(name=name))
    assert text.endswith("\n")
    path = tmp_path / "device.png"
    qr.write_png(text, str(path))
    # zbarimg --raw prints the payload followed by one newline of its own.
    assert _zbar(path) == (text + "\n").encode()
    assert path.stat().st_mode & 0o077 == 0, "the PNG holds a private key"
    assert [p.name for p in tmp_path.iterdir()] == ["device.png"], "temp file left behind"


def test_qr_png_of_a_large_config_fits(tmp_path: Path) -> None:
    nets = tuple(f"10.{i}.0.0/16" for i in range(60))
    text = wgquick.render(_cfg(allowed_ips=nets))
    assert len(text) > 1000
    qr.write_png(text, str(tmp_path / "big.png"), scale=3)
    assert _zbar(tmp_path / "big.png") == (text + "\n").encode()


def test_qr_png_replaces_atomically_and_refuses_oversize(tmp_path: Path) -> None:
    path = tmp_path / "q.png"
    path.write_bytes(b"old")
    qr.write_png("hello", str(path))
    assert _zbar(path) == b"hello\n"
    with pytest.raises(InvalidInput, match="too long"):
        qr.write_png("x" * 5000, str(path))
    assert _zbar(path) == b"hello\n"  # the old file survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.png"]


def test_qr_terminal_is_multiline() -> None:
    out = qr.terminal(wgquick.render(_cfg()))
    lines = out.splitlines()
    assert len(lines) > 10 and all(line for line in lines)
