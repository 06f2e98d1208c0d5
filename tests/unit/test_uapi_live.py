"""UapiClient against a real wireguard-go in a throwaway network namespace.

Cross-checked with ``wg show dump`` so the codec is judged by WireGuard's own
tool, not by itself. Needs root and wireguard-go; without them the tests fail
(never skip), since the node cannot work on such a host either.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cloudpal.net import keys, uapi
from cloudpal.net.uapi import PeerSpec, UapiClient, UapiError

pytestmark = pytest.mark.netns


@dataclass
class Device:
    ns: str
    iface: str
    client: UapiClient
    log: Path

    def dump(self) -> list[list[str]]:
        """``wg show IFACE dump`` split into rows of tab-separated fields."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns, "wg", "show", self.iface, "dump"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert proc.returncode == 0, f"wg show failed: {proc.stderr.strip()}"
        return [line.split("\t") for line in proc.stdout.splitlines()]


def _require_host() -> dict[str, str]:
    if os.geteuid() != 0:
        pytest.fail("these tests need root (network namespaces and a TUN device): run as root")
    tools = {name: shutil.which(name) for name in ("wireguard-go", "wg", "ip")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        pytest.fail(
            f"missing tools {', '.join(missing)}: apt-get install wireguard-go wireguard-tools"
        )
    if not os.path.exists("/dev/net/tun"):
        pytest.fail("/dev/net/tun is missing, so wireguard-go cannot create its interface")
    return {name: path for name, path in tools.items() if path is not None}


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Device]:
    tools = _require_host()
    tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
    ns, iface = f"cloudpal-test-{tag}", f"cpt{tag}"  # iface: at most 3 + 5 + 4 = 12 chars
    log = tmp_path / "wireguard-go.log"
    subprocess.run([tools["ip"], "netns", "add", ns], check=True, timeout=10)
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [tools["ip"], "netns", "exec", ns, tools["wireguard-go"], "-f", iface],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            uapi.wait_ready(iface, timeout=5.0)
        except TimeoutError as exc:
            pytest.fail(f"{exc}; wireguard-go said: {log.read_text(errors='replace')[-500:]}")
        yield Device(ns, iface, UapiClient(iface, timeout=5.0), log)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run([tools["ip"], "netns", "del", ns], check=False, timeout=10)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(uapi.socket_path(iface))


def _pub() -> str:
    return keys.public_key(keys.generate_private_key())


def test_configure_three_peers_and_cross_check_with_wg(dev: Device) -> None:
    # An unclamped key straight from cryptography: the device stores it clamped.
    raw = X25519PrivateKey.generate().private_bytes_raw()
    raw = bytes([raw[0] | 7]) + raw[1:31] + bytes([raw[31] | 0x80])
    priv = base64.b64encode(raw).decode()
    psk = base64.b64encode(os.urandom(32)).decode()
    a, b, c = _pub(), _pub(), _pub()
    dev.client.set(
        private_key=priv,
        listen_port=51820,
        replace_peers=True,
        peers=[
            PeerSpec(a, ("100.64.0.2/32", "fd00::2/128"), "192.0.2.1:51820", 25, psk),
            PeerSpec(b, ("100.64.0.3/32",), "[2001:db8::1]:4500"),
            PeerSpec(c, ("100.64.0.4/32", "10.9.0.0/16")),
        ],
    )

    status = dev.client.get()
    assert status.public_key == keys.public_key(priv)
    assert status.listen_port == 51820 and status.fwmark is None
    assert set(status.peers) == {a, b, c}
    pa, pb, pc = status.peers[a], status.peers[b], status.peers[c]
    assert (pa.endpoint, pa.keepalive) == ("192.0.2.1:51820", 25)
    assert sorted(pa.allowed_ips) == ["100.64.0.2/32", "fd00::2/128"]
    assert (pb.endpoint, pb.allowed_ips, pb.keepalive) == (
        "[2001:db8::1]:4500",
        ["100.64.0.3/32"],
        0,
    )
    assert (pc.endpoint, sorted(pc.allowed_ips)) == (None, ["10.9.0.0/16", "100.64.0.4/32"])
    for p in (pa, pb, pc):
        assert (p.last_handshake, p.rx_bytes, p.tx_bytes) == (None, 0, 0)

    iface_row, *peer_rows = dev.dump()
    assert iface_row[0] != priv and iface_row[0] == keys.clamp(priv)
    assert iface_row[1:4] == [keys.public_key(priv), "51820", "off"]
    rows = {row[0]: row for row in peer_rows}
    assert set(rows) == {a, b, c}
    assert rows[a][1:3] == [psk, "192.0.2.1:51820"]
    assert sorted(rows[a][3].split(",")) == ["100.64.0.2/32", "fd00::2/128"]
    assert rows[a][7] == "25"
    assert rows[b][1:4] == ["(none)", "[2001:db8::1]:4500", "100.64.0.3/32"]
    assert rows[b][7] == "off"
    assert rows[c][2] == "(none)"
    assert sorted(rows[c][3].split(",")) == ["10.9.0.0/16", "100.64.0.4/32"]
    assert all(row[4:7] == ["0", "0", "0"] for row in peer_rows)

    # Changing a peer replaces its allowed IPs instead of adding to them.
    dev.client.set(peers=[PeerSpec(c, ("100.64.0.9/32",))])
    assert dev.client.get().peers[c].allowed_ips == ["100.64.0.9/32"]


def test_remove_and_replace_peers(dev: Device) -> None:
    a, b, c = _pub(), _pub(), _pub()
    dev.client.set(peers=[PeerSpec(k, (f"100.64.0.{i}/32",)) for i, k in enumerate((a, b, c), 2)])
    never_added = _pub()
    dev.client.set(remove=[b, never_added])  # removing an unknown peer is harmless
    assert set(dev.client.get().peers) == {a, c}
    assert {row[0] for row in dev.dump()[1:]} == {a, c}

    dev.client.set(replace_peers=True, peers=[PeerSpec(b, ("100.64.0.3/32",))])
    assert set(dev.client.get().peers) == {b}
    assert [row[0] for row in dev.dump()[1:]] == [b]


def test_invalid_requests_report_errno_and_leave_the_device_usable(dev: Device) -> None:
    assert uapi.decode_errno(dev.client.request(b"set=1\nbogus_key=1\n\n")) == -22
    with pytest.raises(UapiError) as exc:
        dev.client.apply(b"set=1\nlisten_port=notaport\n\n")
    assert exc.value.errno == -22
    with pytest.raises(UapiError) as exc:
        uapi.decode_get(dev.client.request(b"get=2\n\n"))
    assert exc.value.errno < 0
    dev.client.set(listen_port=51821)
    assert dev.client.get().listen_port == 51821


def test_missing_daemon_is_a_uapi_error_and_wait_ready_times_out(tmp_path: Path) -> None:
    _require_host()
    client = UapiClient("cptnothere", run_dir=str(tmp_path), timeout=1.0)
    with pytest.raises(UapiError):
        client.get()
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="did not open"):
        uapi.wait_ready("cptnothere", timeout=0.2, run_dir=str(tmp_path))
    assert time.monotonic() - start < 2


def test_thousands_of_peers_in_one_request(dev: Device) -> None:
    n = 2000
    pubs = [base64.b64encode(i.to_bytes(4, "big") * 8).decode() for i in range(1, n + 1)]
    specs = [PeerSpec(p, (f"100.64.{i // 250}.{i % 250 + 2}/32",)) for i, p in enumerate(pubs)]
    start = time.monotonic()
    dev.client.set(replace_peers=True, peers=specs)
    status = dev.client.get()
    elapsed = time.monotonic() - start
    assert len(status.peers) == n
    assert status.peers[pubs[-1]].allowed_ips == [specs[-1].allowed_ips[0]]
    assert elapsed < 5, f"set+get of {n} peers took {elapsed:.1f}s"


def test_kernel_backend_configuration_path(dev: Device) -> None:
    """The kernel backend configures through the `wg` tool, which speaks netlink to the
    kernel and the same UAPI to wireguard-go; driving wireguard-go with it checks every
    line this backend writes and parses, on a host without the kernel module."""
    from cloudpal.net.wireguard import KernelBackend

    backend = KernelBackend(dev.iface)
    priv = keys.generate_private_key()
    peers = [keys.public_key(keys.generate_private_key()) for _ in range(3)]
    backend.apply(private_key=priv, listen_port=51999, replace_peers=True, peers=[
        PeerSpec(peers[0], ("100.64.0.2/32", "fd00::2/128")),
        PeerSpec(peers[1], ("100.64.0.3/32",), endpoint="198.18.0.9:51820", keepalive=25),
    ])
    backend.apply(peers=[PeerSpec(peers[2], ("100.64.0.4/32",))])
    st = backend.status()
    assert st.public_key == keys.public_key(priv) and st.listen_port == 51999
    assert set(st.peers) == set(peers)
    assert sorted(st.peers[peers[0]].allowed_ips) == ["100.64.0.2/32", "fd00::2/128"]
    assert st.peers[peers[1]].endpoint == "198.18.0.9:51820"
    assert st.peers[peers[1]].keepalive == 25
    assert st.peers[peers[2]].last_handshake is None
    backend.apply(remove=[peers[0]])
    assert set(backend.status().peers) == set(peers[1:])
    assert set(dev.client.get().peers) == set(peers[1:])
