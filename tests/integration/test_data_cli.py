"""`cloudpal core ...` on its own: create, append, info, cat, and clear refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CLOUDPAL = str(Path(sys.executable).parent / "cloudpal")


def run(home: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([CLOUDPAL, "--home", str(home), "core", *args], input=input,
                          capture_output=True, timeout=60, check=False)


def one_error(res: subprocess.CompletedProcess[bytes], words: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    err = res.stderr.decode()
    assert err.count("\n") == 1 and words in err, err


def test_create_append_cat_info(tmp_path: Path) -> None:
    home = tmp_path / "h"
    key = run(home, "create", "notes").stdout.decode().strip()
    assert len(key) == 64
    text = b"first\n\nthird line\n" + "unicode \u00e9\n".encode()
    assert run(home, "append", "notes", input=text).returncode == 0
    assert run(home, "cat", "notes").stdout == text  # an empty block is an empty line
    assert run(home, "cat", "notes", "--raw").stdout == text.replace(b"\n", b"")
    assert run(home, "cat", "notes", "--start", "1", "--end", "3").stdout == b"\nthird line\n"
    info = json.loads(run(home, "info", key, "--json").stdout)
    assert info["length"] == 4 and info["key"] == key and len(info["id"]) == 52
    assert info["byte_length"] == len(text) - 4
    by_id = json.loads(run(home, "info", info["id"], "--json").stdout)
    assert by_id["tree_hash"] == info["tree_hash"]
    human = run(home, "info", "notes").stdout.decode()
    assert info["discovery_key"] in human and info["tree_hash"] in human
    data = bytes(range(256)) * 10
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    assert run(home, "append", "notes", str(src), "--block-size", "1000").returncode == 0
    info = json.loads(run(home, "info", "notes", "--json").stdout)
    assert info["length"] == 4 + 3
    assert run(home, "cat", "notes", "--start", "4", "--raw").stdout == data
    assert b"verified 7 stored blocks of 7" in run(home, "verify", "notes").stdout


def test_refusals_are_one_line(tmp_path: Path) -> None:
    home = tmp_path / "h"
    run(home, "create", "notes")
    one_error(run(home, "create", "notes"), "already exists")
    one_error(run(home, "append", "ghost", input=b"x\n"), "no core named")
    one_error(run(home, "info", "zz" * 40), "no core named")
    one_error(run(home, "create", "e", "--encryption-key", "abc"), "64 hex digits")
    one_error(run(home, "clone", "00" * 32, "--peer", "127.0.0.1:1"), "cannot")
    one_error(run(home, "clone", "not-a-key", "--peer", "127.0.0.1:1"), "key")
    one_error(run(home, "seed", "notes", "--listen", "nope"), "invalid address")
