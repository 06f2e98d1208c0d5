"""A small asyncio client for QEMU's QMP: JSON lines over a unix socket.

The bytes come from a process that may crash or misbehave halfway through a line, so every
malformed, oversized or unexpected message is a ``VmError``, never a crash, and a broken connection
fails every waiting command at once instead of leaving it to its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cloudpal.compute.vmm.base import VmError

MAX_LINE = 1 << 20  # QMP answers here are small; a bigger line means something is wrong
MAX_EVENTS = 256  # unclaimed events kept for a later wait_event


async def connect_unix(
    path: Path, deadline: float, *, alive: Callable[[], bool] | None = None, limit: int = MAX_LINE
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a unix socket a just-started process is about to create, retrying until ``deadline``
    (a ``time.monotonic()`` value) or until ``alive()`` says the process is gone."""
    delay = 0.002
    while True:
        try:
            return await asyncio.open_unix_connection(str(path), limit=limit)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            if alive is not None and not alive():
                raise VmError(f"QEMU exited before {path.name} accepted a connection.") from None
            if time.monotonic() >= deadline:
                why = e.strerror
                raise VmError(f"QEMU's {path.name} did not accept a connection in time ({why}).") from None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.005)  # QEMU creates its sockets within ms: poll tightly


class Qmp:
    """One QMP session: ``execute`` commands, ``wait_event`` for events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self._waiters: list[tuple[str, Callable[[dict[str, Any]], bool] | None, asyncio.Future[Any]]] = []
        self._error: VmError | None = None
        self._greeting: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(
        cls, path: Path, *, timeout: float = 10.0, alive: Callable[[], bool] | None = None
    ) -> Qmp:
        """Connect, read the greeting and negotiate capabilities (QMP's mandatory handshake)."""
        deadline = time.monotonic() + timeout
        reader, writer = await connect_unix(path, deadline, alive=alive)
        qmp = cls(reader, writer)
        try:
            greeting = await qmp._wait(qmp._greeting, max(0.1, deadline - time.monotonic()), "its greeting")
            if not isinstance(greeting.get("QMP"), dict):
                raise VmError("QEMU's QMP greeting is malformed.")
            await qmp.execute("qmp_capabilities", timeout=max(0.1, deadline - time.monotonic()))
        except BaseException:
            await qmp.close()
            raise
        return qmp

    @property
    def broken(self) -> VmError | None:
        return self._error

    async def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                      timeout: float = 10.0) -> Any:  # fmt: skip
        """Run one command and return its "return" value; a QMP error is a VmError."""
        if self._error is not None:
            raise self._error
        self._next_id += 1
        ident = f"c{self._next_id}"
        msg: dict[str, Any] = {"execute": command, "id": ident}
        if arguments is not None:
            msg["arguments"] = arguments
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = fut
        try:
            self._writer.write(json.dumps(msg).encode() + b"\n")
            await self._writer.drain()
        except (OSError, RuntimeError):
            self._pending.pop(ident, None)
            error = VmError(f"QMP connection lost while sending {command}.")
            self._fail(error)
            raise error from None
        try:
            return await self._wait(fut, timeout, f"{command}")
        finally:
            self._pending.pop(ident, None)

    async def wait_event(
        self, name: str, *, timeout: float = 10.0, match: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        """The first event called ``name`` (and passing ``match``), including ones already received."""
        for event in list(self._events):
            if event.get("event") == name and (match is None or match(event)):
                self._events.remove(event)
                return event
        if self._error is not None:
            raise self._error
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiter = (name, match, fut)
        self._waiters.append(waiter)
        try:
            result: dict[str, Any] = await self._wait(fut, timeout, f"event {name}")
            return result
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def _wait(self, fut: Awaitable[Any], timeout: float, what: str) -> Any:
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise VmError(f"QEMU did not answer {what} within {timeout:.1f} s.") from None

    def _fail(self, error: VmError) -> None:
        if self._error is None:
            self._error = error
        for fut in [*self._pending.values(), *(w[2] for w in self._waiters), self._greeting]:
            if not fut.done():
                fut.set_exception(self._error)
                fut.exception()  # mark retrieved: a nobody-awaits future must not warn

    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    line = await self._reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    raise VmError(f"QEMU sent a QMP message longer than {MAX_LINE} bytes.") from None
                except OSError:
                    line = b""
                if not line:
                    raise VmError("QEMU closed the QMP connection.")
                if not line.strip():
                    continue
                try:
                    msg = json.loads(line)
                except (ValueError, RecursionError):
                    raise VmError("QEMU sent malformed QMP JSON.") from None
                if not isinstance(msg, dict):
                    raise VmError("QEMU sent a QMP message that is not an object.")
                self._dispatch(msg)
        except VmError as e:
            self._fail(e)
        except asyncio.CancelledError:
            self._fail(VmError("The QMP connection was closed."))
            raise

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if "QMP" in msg:
            if not self._greeting.done():
                self._greeting.set_result(msg)
            return
        if "event" in msg:
            if not isinstance(msg["event"], str):
                raise VmError("QEMU sent a QMP event without a name.")
            for name, match, fut in self._waiters:
                if name == msg["event"] and not fut.done() and (match is None or match(msg)):
                    fut.set_result(msg)
                    return
            self._events.append(msg)
            return
        ident = msg.get("id")
        pending = self._pending.get(ident) if isinstance(ident, str) else None
        if pending is None or pending.done():
            return  # an answer nobody waits for any more (timed out): drop it
        if "return" in msg:
            pending.set_result(msg["return"])
        elif "error" in msg:
            err = msg["error"]
            desc = err.get("desc") if isinstance(err, dict) else None
            text = str(desc)[:300] if desc else repr(err)[:300]
            pending.set_exception(VmError(f"QEMU refused the command: {text}"))
        else:
            raise VmError("QEMU sent a QMP answer with neither return nor error.")

    async def close(self) -> None:
        await close_reader(self._task, self._writer)


async def close_reader(task: asyncio.Task[None], writer: asyncio.StreamWriter) -> None:
    """Stop a socket's read loop and close the socket (QMP and the guest control channel)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
