#!/usr/bin/env python3
"""Data benchmarks: CloudPal's Hypercore against JS hypercore 11.37.1, side by side.

Every CloudPal figure is measured next to the same operation done by the pinned
JavaScript stack (js/node_modules, driven by bench/js/hc_bench.js) in the same
run on the same machine and disk, and the ratio is printed as a ratio of *rates*:
above 1 means CloudPal is faster.

1. Appending 1 KiB blocks to a core on disk: one block per append (each awaited
   in JS), and in batches of 100.  JS: ``new Hypercore(dir, {keyPair})``;
   CloudPal: ``open_store(dir).create(name, seed=...)``.
2. Replication over loopback TCP (Noise secret-stream) of N × 1 KiB and of
   M × 1 MiB blocks, from the reader's connect until every block is downloaded
   and verified, into an empty replica on disk.  JS writer → JS reader is the
   anchor for CloudPal writer → CloudPal reader; the mixed directions are
   measured too, for information.  Writer and reader are separate processes
   (one per core of a 2-core machine); the timing is taken inside the reader.
3. Reading every block back from a replica reopened from disk (JS:
   ``core.get(i)``; CloudPal: ``core.get(i)``).  Neither ``get`` re-hashes
   stored data; JS has an internal full re-verification (``core.core.audit()``),
   which is reported, and CloudPal has no such API.

JS and CloudPal writers use the same key seed and the same block contents, so
they build the same core (same key, same tree hash); every replica must end up
with that tree hash and every read-back with the same content digest, or the
run fails.  Run::

    .venv/bin/python bench/data_bench.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import hashlib
import json
import os
import platform
import selectors
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import report  # bench/report.py: shared by the benchmark scripts
from report import cpu_model

REPO = Path(__file__).resolve().parents[1]
JS_DIR = REPO / "js"
HC_BENCH = REPO / "bench" / "js" / "hc_bench.js"
MARK_START = "<!-- data-bench:start -->"
MARK_END = "<!-- data-bench:end -->"
SEED = bytes([0x11]) * 32  # the writers' key-pair seed (JS and CloudPal: the same core key)
CORE_NAME = "bench"
KIB = 1024
MIB = 1024 * 1024
READ_TIMEOUT = 600.0  # one replication may not take longer than this

# ------------------------------------------------------------------ block content


def block_pattern(size: int) -> bytes:
    """What hc_bench.js uses: SHA-256 chain from "cloudpal-data-bench", cut to `size` bytes."""
    out = bytearray()
    h = hashlib.sha256(b"cloudpal-data-bench").digest()
    while len(out) < max(size, 8):
        out += h
        h = hashlib.sha256(h).digest()
    return bytes(out[:size])


def make_blocks(start: int, count: int, size: int) -> list[bytes]:
    """Block i = u64le(i) ‖ pattern[8:size], byte for byte what hc_bench.js appends."""
    pattern = block_pattern(size)
    if size < 8:
        return [pattern] * count
    tail = pattern[8:]
    return [i.to_bytes(8, "little") + tail for i in range(start, start + count)]


# ------------------------------------------------------- CloudPal worker processes


@contextlib.contextmanager
def profiled(path: str | None) -> Iterator[None]:
    """cProfile the block into `path` (no-op without a path)."""
    if not path:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        prof.dump_stats(path)


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def w_append(a: argparse.Namespace) -> None:
    from cloudpal.data import open_store

    blocks = make_blocks(0, a.count, a.size)
    store = open_store(Path(a.home))
    core = store.create(CORE_NAME, seed=SEED)
    with profiled(a.profile):
        t0 = time.perf_counter()
        if a.batch == 1:
            for b in blocks:
                core.append(b)
        else:
            for i in range(0, a.count, a.batch):
                core.append(blocks[i:i + a.batch])
        ms = (time.perf_counter() - t0) * 1000
    emit({"event": "append", "ms": ms, "length": core.length, "key": core.key.hex(),
          "treeHash": core.tree_hash().hex()})
    store.close()


def w_make(a: argparse.Namespace) -> None:
    from cloudpal.data import open_store

    store = open_store(Path(a.home))
    core = store.create(CORE_NAME, seed=SEED)
    per = max(1, min(1000, 16 * MIB // max(a.size, 1)))
    for i in range(0, a.count, per):
        core.append(make_blocks(i, min(per, a.count - i), a.size))
    emit({"event": "made", "key": core.key.hex(), "length": core.length,
          "byteLength": core.byte_length, "treeHash": core.tree_hash().hex()})
    store.close()


def w_serve(a: argparse.Namespace) -> None:
    from cloudpal.data import open_store, seed

    store = open_store(Path(a.home))
    core = store.get(CORE_NAME)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def ready(addr: tuple[str, int]) -> None:
            emit({"event": "listening", "port": addr[1], "length": core.length,
                  "key": core.key.hex(), "treeHash": core.tree_hash().hex()})

        await seed(store, [core], "127.0.0.1", 0, on_ready=ready, stop=stop)

    with profiled(a.profile):
        asyncio.run(main())
    store.close()


def w_read(a: argparse.Namespace) -> None:
    from cloudpal.data import clone, open_store

    store = open_store(Path(a.home))
    key = bytes.fromhex(a.key)

    async def main() -> tuple[float, Any]:
        t0 = time.perf_counter()
        core = await clone(store, key, "127.0.0.1", a.port, timeout=READ_TIMEOUT)
        return (time.perf_counter() - t0) * 1000, core

    with profiled(a.profile):
        ms, core = asyncio.run(main())
    if core.contiguous_length != core.length:
        raise SystemExit(f"only {core.contiguous_length} of {core.length} blocks downloaded")
    emit({"event": "read", "ms": ms, "length": core.length, "byteLength": core.byte_length,
          "treeHash": core.tree_hash().hex()})
    store.close()


def w_getall(a: argparse.Namespace) -> None:
    from cloudpal.data import open_store

    with profiled(a.profile):
        t_open = time.perf_counter()
        store = open_store(Path(a.home))
        core = store.get(a.key)
        open_ms = (time.perf_counter() - t_open) * 1000
        length = core.length
        nbytes = 0
        t0 = time.perf_counter()
        for i in range(length):
            nbytes += len(core.get(i))
        ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    audited = core.audit()
    audit_ms = (time.perf_counter() - t0) * 1000
    if audited != length:
        raise RuntimeError(f"audit checked {audited} of {length} blocks")
    digest = hashlib.sha256()
    for i in range(length):
        digest.update(core.get(i))
    emit({"event": "getall", "openMs": open_ms, "ms": ms, "length": length, "bytes": nbytes,
          "auditMs": audit_ms, "digest": digest.hexdigest(), "treeHash": core.tree_hash().hex()})
    store.close()


WORKERS: dict[str, Callable[[argparse.Namespace], None]] = {
    "_append": w_append, "_make": w_make, "_serve": w_serve, "_read": w_read, "_getall": w_getall,
}


def worker_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog=f"data_bench.py {argv[0]}")
    ap.add_argument("--home", required=True)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--size", type=int, default=KIB)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--key", default="")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--profile", default=None)
    WORKERS[argv[0]](ap.parse_args(argv[1:]))
    return 0


# ------------------------------------------------------------------- processes


def py_cmd(worker: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), worker, *args]


def js_cmd(command: str, *args: str) -> list[str]:
    return ["node", str(HC_BENCH), command, *args]


def last_json(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return dict(json.loads(line))
    raise ValueError("no JSON result")


def run_json(argv: Sequence[str], timeout: float = READ_TIMEOUT) -> dict[str, Any]:
    """Run a worker to completion; its last stdout line is its JSON result."""
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, cwd=JS_DIR,
                             check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{shlex.join(argv)} did not finish within {timeout:.0f} s") from None
    if res.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {res.returncode}:\n{res.stderr[-3000:]}")
    try:
        return last_json(res.stdout)
    except ValueError:
        raise RuntimeError(f"{shlex.join(argv)} printed no result:\n{res.stdout[-2000:]}"
                           f"{res.stderr[-2000:]}") from None


class Server:
    """A serving writer process (JS or CloudPal) that prints one `listening` JSON line."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def start(self, timeout: float = 30.0) -> dict[str, Any]:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=JS_DIR)
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                self.stop()
                raise RuntimeError(f"{shlex.join(self.argv)} did not start listening")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                err = self.stop()
                raise RuntimeError(f"{shlex.join(self.argv)} exited before listening:\n{err}")
            buf += chunk
        sel.close()
        self.info = json.loads(buf.split(b"\n", 1)[0])
        return self.info

    @property
    def port(self) -> int:
        return int(self.info["port"])

    def stop(self) -> str:
        """SIGTERM (the CloudPal server then writes its profile), wait; returns its stderr."""
        proc, self.proc = self.proc, None
        if proc is None:
            return ""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        return err[-3000:]


# ------------------------------------------------------------------ the bench


@dataclass
class Options:
    reps: int
    one_count: int  # appends of one block each
    batch_count: int  # blocks appended in batches
    batch: int
    small_count: int  # 1 KiB blocks replicated
    large_count: int  # 1 MiB blocks replicated
    profile: Path | None = None


@dataclass
class Results:
    facts: dict[str, str] = field(default_factory=dict)
    # seconds per repetition, by measurement and side ("py", "js", or a direction "js>py")
    times: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    extra: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tree_hashes: dict[str, str] = field(default_factory=dict)

    def add(self, what: str, side: str, seconds: float) -> None:
        self.times.setdefault(what, {}).setdefault(side, []).append(seconds)

    def add_extra(self, what: str, side: str, seconds: float) -> None:
        self.extra.setdefault(what, {}).setdefault(side, []).append(seconds)


DIRECTIONS = ("js>js", "py>py", "js>py", "py>js")
SIDE_NAME = {"js": "JS", "py": "CloudPal"}


def direction_name(d: str) -> str:
    w, r = d.split(">")
    return f"{SIDE_NAME[w]} writer → {SIDE_NAME[r]} reader"


class Bench:
    def __init__(self, opts: Options, work: Path) -> None:
        self.opts = opts
        self.work = work
        self.res = Results()
        self._n = 0

    def fresh(self, tag: str) -> Path:
        self._n += 1
        return self.work / f"{self._n:03d}-{tag}"

    def prof(self, name: str) -> list[str]:
        if self.opts.profile is None:
            return []
        self.opts.profile.mkdir(parents=True, exist_ok=True)
        return ["--profile", str(self.opts.profile / f"{name}.prof")]

    def log(self, msg: str) -> None:
        print(f"data_bench: {msg}", file=sys.stderr, flush=True)

    def expect_hash(self, label: str, result: dict[str, Any]) -> None:
        """Every core built from the bench blocks must have the same tree (same content)."""
        h = str(result["treeHash"])
        ref = self.res.tree_hashes.setdefault(label, h)
        if h != ref:
            raise RuntimeError(f"{label}: tree hash {h} differs from the first one {ref}")

    # ---- 1. append ------------------------------------------------------------

    def append_round(self, rep: int) -> None:
        o = self.opts
        cases = (("append1", o.one_count, 1), ("appendN", o.batch_count, o.batch))
        for what, count, batch in cases:
            sides = ("py", "js") if rep % 2 == 0 else ("js", "py")
            for side in sides:
                home = self.fresh(f"{what}-{side}")
                args = ["--count", str(count), "--size", str(KIB), "--batch", str(batch)]
                if side == "py":
                    r = run_json(py_cmd("_append", "--home", str(home), *args,
                                        *self.prof(f"{what}-r{rep}")))
                else:
                    r = run_json(js_cmd("append", "--dir", str(home), "--seed", SEED.hex(), *args))
                if r["length"] != count:
                    raise RuntimeError(f"{what} {side}: length {r['length']}, expected {count}")
                self.expect_hash(f"{what} ({count} blocks)", r)
                self.res.add(what, side, r["ms"] / 1000)
                shutil.rmtree(home, ignore_errors=True)

    # ---- 2. replication and 3. read-back --------------------------------------------

    def replicate(self, what: str, count: int, size: int) -> None:
        o = self.opts
        self.log(f"{what}: preparing writers ({count} × {size} B)")
        js_dir, py_home = self.fresh(f"{what}-jsw"), self.fresh(f"{what}-pyw")
        jm = run_json(js_cmd("make", "--dir", str(js_dir), "--seed", SEED.hex(), "--count", str(count),
                             "--size", str(size)))
        pm = run_json(py_cmd("_make", "--home", str(py_home), "--count", str(count), "--size", str(size)))
        for m in (jm, pm):
            if m["length"] != count or m["byteLength"] != count * size:
                raise RuntimeError(f"{what}: a writer has {m['length']} blocks / {m['byteLength']} B")
            self.expect_hash(what, m)
        if jm["key"] != pm["key"]:
            raise RuntimeError(f"{what}: JS key {jm['key']} != CloudPal key {pm['key']}")
        key = str(jm["key"])
        servers = {"js": Server(js_cmd("serve", "--dir", str(js_dir), "--listen", "127.0.0.1:0")),
                   "py": Server(py_cmd("_serve", "--home", str(py_home), *self.prof(f"{what}-serve")))}
        replicas: dict[str, Path] = {}
        try:
            for s in servers.values():
                self.expect_hash(what, s.start())
            for rep in range(o.reps):
                order = DIRECTIONS[rep % 4:] + DIRECTIONS[:rep % 4]  # rotate who goes first
                for d in order:
                    writer, reader = d.split(">")
                    port = servers[writer].port
                    home = self.fresh(f"{what}-{writer}2{reader}")
                    if reader == "py":
                        r = run_json(py_cmd("_read", "--home", str(home), "--key", key, "--port", str(port),
                                            *self.prof(f"{what}-{writer}2py-r{rep}")))
                    else:
                        r = run_json(js_cmd("read", "--dir", str(home), "--key", key, "--connect",
                                            f"127.0.0.1:{port}"))
                    if r["length"] != count or r["byteLength"] != count * size:
                        raise RuntimeError(f"{what} {d}: replica has {r['length']} blocks")
                    self.expect_hash(what, r)
                    self.res.add(f"{what}:{d}", reader, r["ms"] / 1000)
                    self.log(f"{what} rep {rep + 1}/{o.reps} {direction_name(d)}: "
                             f"{r['ms'] / 1000:.2f} s")
                    if d in ("js>js", "py>py"):
                        old = replicas.get(reader)
                        replicas[reader] = home
                        if old is not None:
                            shutil.rmtree(old, ignore_errors=True)
                    else:
                        shutil.rmtree(home, ignore_errors=True)
        finally:
            for side, s in servers.items():
                err = s.stop()
                if err.strip() and side == "py" and "Traceback" in err:
                    self.res.notes.append(f"the CloudPal seed process logged an error: {err[-300:]}")
        self.read_back(what, key, replicas)
        shutil.rmtree(js_dir, ignore_errors=True)
        shutil.rmtree(py_home, ignore_errors=True)
        for p in replicas.values():
            shutil.rmtree(p, ignore_errors=True)

    def read_back(self, what: str, key: str, replicas: dict[str, Path]) -> None:
        digests: dict[str, str] = {}
        for rep in range(self.opts.reps):
            sides = ("py", "js") if rep % 2 == 0 else ("js", "py")
            for side in sides:
                if side == "py":
                    r = run_json(py_cmd("_getall", "--home", str(replicas["py"]), "--key", key,
                                        *self.prof(f"{what}-getall-r{rep}")))
                    self.res.add_extra(f"{what}:audit", "py", r["auditMs"] / 1000)
                else:
                    r = run_json(js_cmd("getall", "--dir", str(replicas["js"]), "--key", key, "--audit"))
                    if r["audit"]["corrupt"] or r["audit"]["droppedBlocks"] or r["audit"]["droppedTreeNodes"]:
                        raise RuntimeError(f"{what}: JS audit of the replica failed: {r['audit']}")
                    self.res.add_extra(f"{what}:audit", "js", r["auditMs"] / 1000)
                self.expect_hash(what, r)
                if digests.setdefault(side, r["digest"]) != r["digest"]:
                    raise RuntimeError(f"{what}: read-back digest changed between runs")
                self.res.add(f"{what}:get", side, r["ms"] / 1000)
                self.res.add_extra(f"{what}:open", side, r["openMs"] / 1000)
        if digests["py"] != digests["js"]:
            raise RuntimeError(f"{what}: CloudPal read back {digests['py']}, JS {digests['js']}")

    def run(self) -> Results:
        o = self.opts
        for rep in range(o.reps):
            self.log(f"append, repetition {rep + 1}/{o.reps}")
            self.append_round(rep)
        self.replicate("small", o.small_count, KIB)
        self.replicate("large", o.large_count, MIB)
        return self.res


# ------------------------------------------------------------------ reporting


def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return "?"
    return out.strip().splitlines()[0] if out.strip() else "?"


def package_version(name: str) -> str:
    try:
        return str(json.loads((JS_DIR / "node_modules" / name / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "?"


def machine_facts(work: Path) -> dict[str, str]:
    cpu = cpu_model()
    fs = "?"
    with contextlib.suppress(OSError, IndexError):
        out = subprocess.run(["df", "-T", str(work)], capture_output=True, text=True, check=False).stdout
        fs = out.splitlines()[1].split()[1]
    import nacl

    return {
        "nproc": str(os.cpu_count()), "cpu": cpu, "kernel": platform.release(),
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "pynacl": getattr(nacl, "__version__", "?"), "node": first_line(["node", "--version"]),
        "hypercore": package_version("hypercore"),
        "secret-stream": package_version("@hyperswarm/secret-stream"),
        "hypercore-storage": package_version("hypercore-storage"),
        "rocksdb-native": package_version("rocksdb-native"),
        "fs": fs,
    }


def fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def fmt_mb(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def fmt_s(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def spread(values: list[float], fmt: Callable[[float], str]) -> str:
    """Median (min–max) of rates; one value alone."""
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}–{fmt(max(values))})"


def render(res: Results, opts: Options, command: str, when: str) -> str:
    f = res.facts
    rows: list[tuple[str, str, str, str]] = []
    summary: list[tuple[str, float]] = []  # (what, median ratio) for the headline

    def rates(seconds: list[float], amount: float) -> list[float]:
        return [amount / s for s in seconds]

    def row(what: str, py: list[float], js: list[float], amount: float, fmt: Callable[[float], str],
            headline: str | None = None, bold: bool = True) -> None:
        pr, jr = rates(py, amount), rates(js, amount)
        r = statistics.median(pr) / statistics.median(jr)
        shown = f"**{r:.2f}**" if bold else f"{r:.2f}"
        rows.append((what, spread(pr, fmt), spread(jr, fmt), shown))
        if headline:
            summary.append((headline, r))

    t = res.times
    n1, nb, b = opts.one_count, opts.batch_count, opts.batch
    row(f"append 1 KiB blocks one at a time ({n1:,} appends), blocks/s",
        t["append1"]["py"], t["append1"]["js"], n1, fmt_int, "append one at a time")
    row(f"append 1 KiB blocks in batches of {b} ({nb:,} blocks), blocks/s",
        t["appendN"]["py"], t["appendN"]["js"], nb, fmt_int, f"append in batches of {b}")
    for what, count, size, label in (("small", opts.small_count, KIB, "1 KiB"),
                                     ("large", opts.large_count, MIB, "1 MiB")):
        mb, anchor = count * size / 1e6, t[f"{what}:js>js"]["js"]
        row(f"replicate {count:,} × {label}: CloudPal → CloudPal vs JS → JS, MB/s",
            t[f"{what}:py>py"]["py"], anchor, mb, fmt_mb, f"replicate {count:,} × {label}")
        row("  same, blocks/s", t[f"{what}:py>py"]["py"], anchor, count, fmt_int, bold=False)
        for d in ("js>py", "py>js"):
            mixed = t[f"{what}:{d}"][d.split(">")[1]]
            row(f"  {direction_name(d)} (info) vs JS → JS, MB/s", mixed, anchor, mb, fmt_mb,
                bold=False)
        row(f"read back all {count:,} × {label} of the replica reopened from disk (`get`), "
            "blocks/s", t[f"{what}:get"]["py"], t[f"{what}:get"]["js"], count, fmt_int,
            f"read back {count:,} × {label}")
        row("  same, MB/s", t[f"{what}:get"]["py"], t[f"{what}:get"]["js"], mb, fmt_mb, bold=False)
        e = res.extra
        po, jo = statistics.median(e[f"{what}:open"]["py"]), statistics.median(e[f"{what}:open"]["js"])
        rows.append(("  opening the replica before the reads, ms (median)", f"{po * 1000:.1f}",
                     f"{jo * 1000:.1f}", "–"))
        row("full re-verification of everything stored (CloudPal `core.audit()`, JS internal "
            "`core.core.audit()`), MB/s", e[f"{what}:audit"]["py"], e[f"{what}:audit"]["js"], mb, fmt_mb,
            f"verify {count:,} × {label}")

    out = ["## Data benchmark results", ""]
    out.append(f"Produced by `{command}` on {when}.")
    out.append("")
    out.append(f"Machine: nproc {f['nproc']} ({f['cpu']}), kernel {f['kernel']}, temp files on "
               f"{f['fs']}; Python {f['python']} with SQLite {f['sqlite']} and PyNaCl {f['pynacl']}; "
               f"node {f['node']} with hypercore {f['hypercore']} (hypercore-storage "
               f"{f['hypercore-storage']}, rocksdb-native {f['rocksdb-native']}), secret-stream "
               f"{f['secret-stream']}; 1-minute load average {f['load before']} at the start and "
               f"{f['load after']} at the end (the machine is shared: other load shows up here).")
    out.append("")
    how = (f"the median of {opts.reps} runs (min–max in brackets)" if opts.reps > 1
           else "from a single run")
    out.append(f"Rates are {how}; the ratio is CloudPal's median rate over JS's, so **above 1 "
               "means CloudPal is faster**. MB = 10⁶ bytes. Target: ≥ 1 on every bold row.")
    out.append("")
    out.append("| Measurement | CloudPal | JS hypercore | Ratio CloudPal/JS (rates) |")
    out.append("|---|---:|---:|---:|")
    out += [f"| {a} | {b_} | {c} | {d} |" for a, b_, c, d in rows]
    out.append("")
    behind = [f"{what} ({r:.2f})" for what, r in summary if r < 1]
    ahead = [f"{what} ({r:.2f})" for what, r in summary if r >= 1]
    if behind:
        out.append(f"- **Below target:** {', '.join(behind)}. At or above it: "
                   f"{', '.join(ahead) or 'none'}.")
    else:
        out.append(f"- Every bold row is at or above the target: {', '.join(ahead)}.")
    out.append("- Appends: each run creates a new core on disk (JS: `new Hypercore(dir, {keyPair})`, "
               "RocksDB; CloudPal: `open_store(dir).create(...)`, SQLite WAL with synchronous=NORMAL) "
               "in a fresh process; only the append loop is timed, blocks are built beforehand. "
               "One at a time, each JS `append` is awaited before the next; each CloudPal `append` "
               "is one signed, committed SQLite transaction.")
    out.append("- Replication: the writer (JS `hc_bench.js serve` / CloudPal `seed`) has the core "
               "on disk and keeps serving for all runs; each run is a fresh reader process with an "
               "empty store, timed inside the reader from just before the TCP connect (Noise "
               "handshake included) until the whole range is downloaded and verified (JS: "
               "`update()` then `download({start: 0, end: length}).done()`; CloudPal: `clone()`, "
               "which also creates the empty replica record). Runs rotate the order of the four "
               "directions. Both readers verify every block and proof against the key as it "
               "arrives, before storing it.")
    out.append("- Read-back: a fresh process reopens the JS⇢JS (JS) or CloudPal⇢CloudPal "
               "(CloudPal) replica and calls `get(i)` for every block in order; only the `get` loop "
               "is timed (opening is the separate row). Neither `get` re-hashes what is on disk: "
               "blocks were verified when they were downloaded. JS can re-verify everything stored "
               "with the internal `core.core.audit({dryRun: true})` (not a public Hypercore "
               "method); CloudPal's `core.audit()` re-hashes every stored block and node and checks "
               "the signature, which is what the verification row compares.")
    hashes = ", ".join(f"{k} {v[:16]}…" for k, v in res.tree_hashes.items())
    out.append("- Checks: JS and CloudPal writers use the same seed and blocks, so they build the "
               "same core; every writer and every replica had the same tree hash per data set "
               f"({hashes}), and JS and CloudPal read back the same SHA-256 of all blocks.")
    out += [f"- **Note:** {note}" for note in res.notes]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in WORKERS:
        return worker_main(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--reps", type=int, default=5, help="repetitions of every measurement")
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition: a smoke run")
    ap.add_argument("--write", type=Path, metavar="FILE",
                    help="replace the data results section of FILE (e.g. docs/benchmarks.md)")
    ap.add_argument("--tmp", type=Path, default=None,
                    help="directory for the cores (default: the system temp dir)")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="cProfile every CloudPal worker into DIR/*.prof (slows CloudPal down; "
                         "not with --write)")
    args = ap.parse_args(argv)
    if args.quick:
        opts = Options(reps=1, one_count=1_000, batch_count=10_000, batch=100, small_count=4_000,
                       large_count=20)
    else:
        opts = Options(reps=args.reps, one_count=5_000, batch_count=50_000, batch=100,
                       small_count=20_000, large_count=100)
    opts.profile = args.profile
    if opts.reps < 1:
        ap.error("--reps must be at least 1")
    if args.profile and args.write:
        ap.error("profiled runs are slower: do not --write them")
    if shutil.which("node") is None or not (JS_DIR / "node_modules" / "hypercore").is_dir():
        ap.error("needs node and the pinned JS stack in js/node_modules (make js)")
    command = report.display_command()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = f"{os.getloadavg()[0]:.2f}"
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="data-bench-", dir=args.tmp))
    try:
        res = Bench(opts, work).run()
        res.facts = machine_facts(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res.facts["load before"] = load_before
    res.facts["load after"] = f"{os.getloadavg()[0]:.2f}"
    if opts.profile:
        res.notes.append(f"profiled run (cProfile in every CloudPal worker, profiles in "
                         f"{opts.profile}): CloudPal figures are inflated")
    body = render(res, opts, command, when)
    print()
    print(body)
    print(f"data_bench: finished in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.write:
        report.write_section(args.write, body, MARK_START, MARK_END)
        print(f"data_bench: wrote the data results section of {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
