"""What every benchmark script shares: the command line it was run with, and writing
its own marked section of docs/benchmarks.md without touching the others."""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path


def write_section(path: Path, body: str, start_mark: str, end_mark: str) -> None:
    """Replace the text between the markers (or append it), atomically."""
    section = f"{start_mark}\n{body}{end_mark}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = text.find(start_mark), text.find(end_mark)
    if start != -1 and end > start:
        text = text[:start] + section + text[end + len(end_mark):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def display_command() -> str:
    """The command that produced a result, as someone would retype it from the repo root."""
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    return shlex.join([str(exe), *sys.argv])
