"""What every benchmark script shares: the command line it was run with, and writing
its own marked section of docs/benchmarks.md without touching the others."""

from __future__ import annotations

import contextlib
import math
import shlex
import statistics
import sys
from dataclasses import dataclass
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


@dataclass
class Stats:
    """Repeated measurements of one thing."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def p95(self) -> float:
        """Nearest-rank 95th percentile (with fewer than 20 samples: the slowest one)."""
        ordered = sorted(self.values)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "n/a"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("?" if unknown)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"
