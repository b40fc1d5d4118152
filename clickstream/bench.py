"""``clickstream bench``: throughput and latency of the local tracking API, with a bare baseline.

The server under test runs as a separate process pinned to one core and the load generator to the
other (on a 2-core machine), so neither steals the other's CPU. After each run the stream is
counted: every acknowledged event must be there, or the run fails.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from clickstream import contract, loadgen
from clickstream.stream import LocalStream

BENCH_KEY = "bench-write-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _event(i: int) -> dict:
    """A realistic server-side track event (~450 bytes serialized, like the python SDK's)."""
    return {
        "type": "track",
        "event": "Product Viewed",
        "userId": f"user-{i % 5000}",
        "anonymousId": str(uuid.UUID(int=i)),
        "messageId": str(uuid.uuid4()),
        "timestamp": "2026-11-28T12:00:00.000000+00:00",
        "properties": {"product_id": f"sku-{i % 977}", "price": 19.99, "currency": "EUR", "category": "shoes"},
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}, "ip": "203.0.113.7"},
        "integrations": {},
    }


def _batch_bodies(n: int, size: int) -> list[bytes]:
    bodies = []
    for b in range(n):
        batch = [_event(b * size + i) for i in range(size)]
        bodies.append(json.dumps({"batch": batch, "sentAt": "2026-11-28T12:00:01.000000+00:00"}).encode())
    return bodies


def _single_bodies(n: int) -> list[bytes]:
    return [json.dumps({**_event(i), "writeKey": BENCH_KEY}).encode() for i in range(n)]


@dataclass
class Scenario:
    name: str
    path: str
    bodies: list[bytes]
    headers: dict[str, str]
    events_per_request: int


def scenarios(batch_size: int = 100) -> dict[str, Scenario]:
    basic = "Basic " + base64.b64encode(f"{BENCH_KEY}:".encode()).decode()
    return {
        "batch": Scenario("batch", "/v1/batch", _batch_bodies(20, batch_size),
                          {"Content-Type": "application/json", "Authorization": basic, "User-Agent": "bench"},
                          batch_size),
        "single": Scenario("single", "/v1/t", _single_bodies(200),
                           {"Content-Type": "text/plain", "User-Agent": "bench"}, 1),
    }


class ServerProcess:
    """The local collector (or the bare baseline) in its own process, pinned to CPU 0."""

    def __init__(self, bare: bool, data_dir: Path) -> None:
        self.port = _free_port()
        self.data_dir = data_dir
        if bare:
            cmd = [sys.executable, "-m", "clickstream.bench", "--bare-server", str(self.port)]
        else:
            cmd = [sys.executable, "-m", "clickstream.cli", "local", "--port", str(self.port),
                   "--data-dir", str(data_dir), "--write-key", f"{BENCH_KEY}=bench"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _pin(self.proc.pid, 0)
        self.cpus = sorted(os.sched_getaffinity(self.proc.pid)) if _CPUS else []
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"server did not start: {stderr}") from None
                time.sleep(0.05)

    def peak_rss_mb(self) -> float:
        """Peak resident memory of the server and its children (the warehouse loader process)."""
        total = 0.0
        pending = [self.proc.pid]
        while pending:
            pid = pending.pop()
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) / 1024
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pending += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=300)  # it drains: archives and loads the backlog the run left


# Read once, before this process pins itself: servers started later inherit that pinning, and
# reading the CPUs then would find only the generator's one.
_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def _pin(pid: int, cpu: int) -> None:
    if len(_CPUS) >= 2:
        os.sched_setaffinity(pid, {_CPUS[cpu % len(_CPUS)]})


@dataclass
class Figures:
    scenario: str
    server: str
    requests_per_s: float
    events_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    peak_rss_mb: float
    events_acknowledged: int
    events_in_stream: int | None
    server_cpus: list[int]
    generator_cpus: list[int]


def measure(scenario: Scenario, *, bare: bool, seconds: float, connections: int, rate: float | None = None,
            data_dir: Path) -> Figures:
    server = ServerProcess(bare, data_dir)
    try:
        cycle = itertools.cycle([loadgen.http_request("127.0.0.1", server.port, scenario.path, b, scenario.headers)
                                 for b in scenario.bodies])
        result = loadgen.run(loadgen.run_load("127.0.0.1", server.port, lambda: next(cycle), seconds=seconds,
                                              connections=connections, rate=rate))
        rss = server.peak_rss_mb()
    finally:
        server.stop()
    stored = None
    if not bare:
        stream = LocalStream(data_dir)
        stored = stream.count()
        stream.close()
    acked = result.ok * scenario.events_per_request
    return Figures(scenario.name, "bare" if bare else "clickstream", round(result.rps, 1),
                   round(result.rps * scenario.events_per_request, 1), round(result.percentile(50), 2),
                   round(result.percentile(95), 2), round(result.percentile(99), 2), result.errors, round(rss, 1),
                   acked, stored, server.cpus, sorted(os.sched_getaffinity(0)) if _CPUS else [])


class Steps:
    """Progress of a bench: one line per measured run on stderr, so minutes of work never look stuck.

    On a terminal a rich spinner also shows the run in progress with its elapsed time.
    """

    def __init__(self, total: int, file: TextIO | None = None) -> None:
        from rich.console import Console

        self.total, self.done = total, 0
        self.console = Console(file=file or sys.stderr, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[dict[str, str]]:
        """Set ``note["result"]`` inside the block: it ends the step's line."""
        self.done += 1
        prefix = f"[{self.done}/{self.total}] {label}"
        note: dict[str, str] = {}
        began = time.monotonic()
        if self.console.is_terminal:
            with self.console.status(f"{prefix} ..."):
                yield note
        else:
            yield note
        self.console.print(f"{prefix}: {note.get('result', 'done')} ({time.monotonic() - began:.0f} s)",
                           markup=False)


def http_steps(names: list[str]) -> int:
    return 3 * len(names)  # peak, half of peak, bare server


def _summary(f: Figures) -> str:
    return f"{f.requests_per_s:,.0f} req/s, {f.events_per_s:,.0f} events/s, p99 {f.p99_ms} ms, {f.errors} errors"


def run_bench(names: list[str], seconds: float, connections: int, batch_size: int,
              steps: Steps | None = None) -> list[Figures]:
    _pin(os.getpid(), 1)
    out: list[Figures] = []
    all_scenarios = scenarios(batch_size)
    steps = steps or Steps(http_steps(names), file=io.StringIO())
    for name in names:
        sc = all_scenarios[name]
        with tempfile.TemporaryDirectory(prefix="clickstream-bench-") as tmp:
            with steps.step(f"{name}: clickstream local at peak, {seconds:g} s") as note:
                peak = measure(sc, bare=False, seconds=seconds, connections=connections, data_dir=Path(tmp) / "a")
                note["result"] = _summary(peak)
            with steps.step(f"{name}: clickstream local at half of peak, {seconds:g} s") as note:
                half = measure(sc, bare=False, seconds=seconds, connections=connections,
                               rate=peak.requests_per_s / 2, data_dir=Path(tmp) / "b")
                note["result"] = _summary(half)
            with steps.step(f"{name}: bare server at peak, {seconds:g} s") as note:
                bare = measure(sc, bare=True, seconds=seconds, connections=connections, data_dir=Path(tmp) / "c")
                note["result"] = _summary(bare)
            shutil.rmtree(tmp, ignore_errors=True)
        for fig in (peak, half):
            if fig.events_in_stream != fig.events_acknowledged:
                raise SystemExit(f"LOST EVENTS: acknowledged {fig.events_acknowledged}, stored {fig.events_in_stream}")
        half.scenario = f"{name}@half"
        out += [peak, half, bare]
    return out


@dataclass
class LoaderFigures:
    events: int
    # From the first read of the stream until every merged row is in the DuckDB file: the loads
    # and merges, and the checkpoint that folds the last of the WAL into the file (DuckDB runs one
    # by itself every ~200,000 events; the last one is timed too, so a run's length does not
    # decide whether it pays for one).
    seconds: float
    events_per_s: float
    batch: int
    checkpoint_seconds: float  # the last checkpoint, included in seconds
    rows_in_events: int
    rows_in_rejected: int
    # Segment's per-source tables, filled by one pass after the load (as the loader does once it
    # has caught up): seconds, and rows written to <source>.tracks.
    segment_seconds: float
    segment_rows_in_tracks: int


def bench_loader(events: int = 200_000, batch: int | None = None) -> LoaderFigures:
    """Events merged per second into DuckDB: stream -> streaming table -> staging -> events, with
    DuckDB's settings as the loader process runs it, checkpoints included."""
    from clickstream.ingest import RequestInfo, build_records
    from clickstream.warehouse import LOAD_BATCH, Warehouse

    batch = batch or LOAD_BATCH  # the loader's own
    with tempfile.TemporaryDirectory(prefix="clickstream-bench-load-") as tmp:
        stream = LocalStream(tmp)
        keys = {BENCH_KEY: "bench"}
        bodies = _batch_bodies(max(1, events // 100), 100)
        for n, body in enumerate(bodies):
            info = RequestInfo("batch", f"req-{n}", int(time.time() * 1000), "203.0.113.9", "bench")
            stream.put(build_records(info, body.replace(b'"batch"', b'"writeKey":"' + BENCH_KEY.encode()
                                                        + b'","batch"', 1), keys))
        wh = Warehouse.in_dir(tmp)
        wh.use_loader_settings()
        start = time.perf_counter()
        loaded = wh.load_from(stream, batch=batch)
        checkpoint = time.perf_counter()
        wh.conn.execute("CHECKPOINT")
        seconds = time.perf_counter() - start
        checkpoint_seconds = time.perf_counter() - checkpoint
        start = time.perf_counter()
        wh.spread_segment_tables()
        segment_seconds = time.perf_counter() - start
        rows = wh.query("SELECT COUNT(*) FROM clickstream.events")[1][0][0]
        rejected = wh.query("SELECT COUNT(*) FROM clickstream.rejected")[1][0][0]
        tracks = wh.query("SELECT COUNT(*) FROM bench.tracks")[1][0][0]
        wh.close()
        stream.close()
    if rows != loaded or tracks != loaded:
        raise SystemExit(f"loader lost events: {loaded} loaded, {rows} in events, {tracks} in bench.tracks, "
                         f"{rejected} rejected")
    return LoaderFigures(loaded, round(seconds, 2), round(loaded / seconds, 1), batch, round(checkpoint_seconds, 2),
                         rows, rejected, round(segment_seconds, 2), tracks)


def bench_replay(events: int = 200_000) -> dict:
    """Records replayed per second from a local archive (gzip objects) into a fresh local stream."""
    import datetime as dt
    import gzip

    from clickstream import archive, replay
    from clickstream.ingest import RequestInfo, build_records

    keys = {BENCH_KEY: "bench"}
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix="clickstream-bench-replay-") as tmp:
        root = Path(tmp) / "source" / archive.ARCHIVE_DIR
        bodies = _batch_bodies(max(1, events // 100), 100)
        per_object = 50  # 5,000 records per object, like a few seconds of busy Firehose buffering
        for first in range(0, len(bodies), per_object):
            lines = []
            for n, body in enumerate(bodies[first:first + per_object], first):
                info = RequestInfo("batch", f"req-{n}", int(start.timestamp() * 1000), "203.0.113.9", "bench")
                lines += [r.data for r in build_records(info, body.replace(
                    b'"batch"', b'"writeKey":"' + BENCH_KEY.encode() + b'","batch"', 1), keys)]
            path = root / archive.object_key(archive.ARCHIVE_PREFIX, "bench", start)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gzip.compress(b"".join(lines), compresslevel=6))
        target = replay.LocalTarget(Path(tmp) / "target")
        stats = replay.replay(archive.LocalArchive(root), target, start - dt.timedelta(minutes=1),
                              start + dt.timedelta(minutes=1))
        stored = target.stream.count()
    if stored != stats.records:
        raise SystemExit(f"replay lost records: {stats.records} replayed, {stored} stored")
    return replay.stats_dict(stats)


def print_table(figures: list[Figures]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="clickstream bench (local tracking API)")
    for col in ("scenario", "server", "req/s", "events/s", "p50 ms", "p95 ms", "p99 ms", "errors", "peak RSS MB",
                "acked = stored"):
        table.add_column(col, justify="right")
    for f in figures:
        check = "-" if f.events_in_stream is None else f"{f.events_acknowledged} = {f.events_in_stream}"
        table.add_row(f.scenario, f.server, f"{f.requests_per_s:,.0f}", f"{f.events_per_s:,.0f}", f"{f.p50_ms}",
                      f"{f.p95_ms}", f"{f.p99_ms}", str(f.errors), f"{f.peak_rss_mb}", check)
    console = Console()
    console.width = max(console.width, 140)
    console.print(table)
    if figures:
        print(f"server pinned to CPU {figures[0].server_cpus}, load generator to CPU {figures[0].generator_cpus}")
    by = {(f.scenario, f.server): f for f in figures}
    for name in ("batch", "single"):
        ours, bare = by.get((name, "clickstream")), by.get((name, "bare"))
        if ours and bare and bare.requests_per_s:
            print(f"{name}: {ours.requests_per_s / bare.requests_per_s:.0%} of the bare server's requests/s")


def to_json(figures: list[Figures]) -> str:
    return json.dumps([asdict(f) for f in figures], indent=2)


# -- the bare baseline: same uvicorn/httptools/uvloop stack, reads the body, answers 200 ----------
async def bare_app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = contract.SUCCESS_BODY.encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _serve_bare(port: int) -> None:
    import uvicorn

    uvicorn.run(bare_app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http="httptools",
                loop="uvloop", lifespan="off")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-server":
        _serve_bare(int(sys.argv[2]))
