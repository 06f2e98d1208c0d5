"""The node's home directory and its one SQLite database.

Every pillar keeps its tables here. Writes go through short transactions in WAL
mode, so a crash leaves either the old or the new state, never half of one, and
concurrent writers (two CLI calls, the daemon) serialize instead of corrupting.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cloudpal.errors import StateError

DEFAULT_ROOT_HOME = "/var/lib/cloudpal"
DB_NAME = "state.db"


def default_home() -> Path:
    """`CLOUDPAL_HOME`, else /var/lib/cloudpal as root, else ~/.local/share/cloudpal."""
    env = os.environ.get("CLOUDPAL_HOME")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path(DEFAULT_ROOT_HOME)
    return Path.home() / ".local" / "share" / "cloudpal"


def ensure_home(home: Path) -> Path:
    """Create the home directory owner-only (it holds private keys)."""
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(home, 0o700)
    except OSError as exc:
        raise StateError(f"cannot use home directory {home}: {exc.strerror}") from exc
    return home


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write a file so readers see the old or the new content, never a torn one."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Database:
    """One connection to the node's state database.

    `transaction()` takes the write lock up front (BEGIN IMMEDIATE) so that a
    read-check-write sequence cannot interleave with another process.
    """

    def __init__(self, home: Path) -> None:
        self.home = ensure_home(home)
        self.path = home / DB_NAME
        fresh = not self.path.exists()
        try:
            self.conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            if fresh:
                os.chmod(self.path, 0o600)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            row = self.conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise StateError(f"state database {self.path} is corrupt: {row[0] if row else '?'}")
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state database {self.path} is corrupt or unreadable: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any error."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state database {self.path} is unusable: {exc}") from exc
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def migrate(self, name: str, statements: list[str]) -> None:
        """Create a pillar's tables; `name` versions that pillar's schema."""
        with self.transaction() as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema (pillar TEXT PRIMARY KEY, version INTEGER)")
            for stmt in statements:
                c.execute(stmt)
            c.execute(
                "INSERT INTO schema(pillar, version) VALUES (?, ?) "
                "ON CONFLICT(pillar) DO UPDATE SET version=excluded.version",
                (name, len(statements)),
            )

    def close(self) -> None:
        self.conn.close()
