"""The wake proxy over real sockets: a held connection loses no byte, activity is counted."""

from __future__ import annotations

import asyncio

from cloudpal.compute.proxy import Listen, WakeProxy


async def _echo_upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data.upper())
        await writer.drain()
    writer.close()


def test_bytes_sent_during_the_wake_arrive_and_wakes_are_awaited() -> None:
    async def main() -> None:
        backend = await asyncio.start_server(_echo_upper, "127.0.0.1", 0)
        port = backend.sockets[0].getsockname()[1]
        calls: list[tuple[str, int]] = []
        gate = asyncio.Event()

        async def wake(app: str, guest_port: int) -> int:
            calls.append((app, guest_port))
            await gate.wait()  # the app is "booting"
            return int(port)

        proxy = WakeProxy(wake)
        await proxy.serve("web", [Listen("127.0.0.1", 0, 80)])
        (host, lport), = proxy.listening("web")
        clients = [await asyncio.open_connection(host, lport) for _ in range(3)]
        payload = bytes(range(256)) * 4096  # 1 MiB, sent before the app is up
        for _, w in clients:
            w.write(payload)
        await asyncio.sleep(0.2)
        assert proxy.activity["web"].connections == 3
        assert proxy.activity["web"].idle_for() == 0.0
        gate.set()
        for r, w in clients:
            w.write_eof()
            got = await asyncio.wait_for(r.read(), 10)
            assert got == payload.upper()
            w.close()
        await asyncio.sleep(0.1)
        act = proxy.activity["web"]
        assert act.connections == 0 and act.bytes_in == 3 * len(payload) == act.bytes_out
        assert calls == [("web", 80)] * 3
        await proxy.close_all()
        backend.close()

    asyncio.run(main())


def test_a_failed_wake_closes_the_client() -> None:
    async def main() -> None:
        async def wake(app: str, guest_port: int) -> int:
            raise RuntimeError("no kernel")

        proxy = WakeProxy(wake)
        await proxy.serve("web", [Listen("127.0.0.1", 0, 80)])
        (host, lport), = proxy.listening("web")
        r, w = await asyncio.open_connection(host, lport)
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
        await proxy.close_all()

    asyncio.run(main())


def test_listening_twice_on_one_port_is_a_clear_error() -> None:
    async def main() -> None:
        async def wake(app: str, guest_port: int) -> int:
            return 1

        proxy = WakeProxy(wake)
        await proxy.serve("a", [Listen("127.0.0.1", 0, 80)])
        (_, port), = proxy.listening("a")
        try:
            await proxy.serve("b", [Listen("127.0.0.1", port, 80)])
        except Exception as exc:
            assert "cannot listen" in str(exc)
        else:
            raise AssertionError("second listener on the same port was allowed")
        await proxy.close_all()

    asyncio.run(main())
