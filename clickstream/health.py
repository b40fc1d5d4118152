"""The local pipeline's health: what ``GET /health`` answers and ``clickstream status`` prints.

Lags come from the stream file itself (each consumer's checkpoint against the last sequence number,
and the arrival time of the oldest record a consumer has not taken yet), so they are true whether
or not the consumer process is alive, and ``clickstream status`` can compute them with no server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clickstream.archive import ARCHIVER_CONSUMER
from clickstream.stream import LocalStream, now_ms
from clickstream.warehouse import LOADER_CONSUMER

HEALTH_PATH = "/health"
# A consumer further behind than this (oldest record it has not taken, in seconds) is reported.
WAREHOUSE_BEHIND_SECONDS = 60.0
ARCHIVE_GRACE_SECONDS = 60.0  # beyond its buffer interval


def consumer_lag(stream: LocalStream, consumer: str, now: int | None = None) -> dict[str, Any]:
    """Records ``consumer`` has not taken, and the age in seconds of the oldest of them."""
    last = stream.last_seq()
    done = stream.checkpoint(consumer)
    lag = max(last - done, 0)
    seconds = 0.0
    if lag:
        arrival = stream.arrival_ms_of(done + 1)
        if arrival is not None:
            seconds = max(((now if now is not None else now_ms()) - arrival) / 1000, 0.0)
    return {"lag_records": lag, "lag_seconds": round(seconds, 3)}


class HealthReport:
    """Builds the health document of a running pipeline (thread-safe; one stream connection)."""

    def __init__(self, data_dir: Path | str, *, writer: Any = None, consumer: Any = None,
                 archive_buffer_seconds: float | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.writer = writer  # GroupCommitWriter: queue, backlog, free disk
        self.consumer = consumer  # LoaderProcess: alive, restarts, load failures
        self.archive_buffer_seconds = archive_buffer_seconds
        self._lock = threading.Lock()
        self._stream: LocalStream | None = None
        # Counters of refused requests by code (live dicts: the collector's, the HTTP server's).
        self.refusals: list[Mapping[str, int]] = []

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None

    def __call__(self) -> dict[str, Any]:
        with self._lock:
            if self._stream is None:
                self._stream = LocalStream(self.data_dir)
            doc = build(self._stream, writer=self.writer, consumer=self.consumer,
                        archive_buffer_seconds=self.archive_buffer_seconds)
        refused: dict[str, int] = {}
        for counts in self.refusals:
            for code, n in list(counts.items()):
                refused[code] = refused.get(code, 0) + n
        doc["refused"] = dict(sorted(refused.items()))  # since start, by error code
        return doc


def build(stream: LocalStream, *, writer: Any = None, consumer: Any = None,
          archive_buffer_seconds: float | None = None) -> dict[str, Any]:
    """The health document; ``status`` is "ok", "degraded" (see ``problems``) or "stopped"."""
    now = now_ms()
    problems: list[str] = []
    warehouse = consumer_lag(stream, LOADER_CONSUMER, now)
    archive = consumer_lag(stream, ARCHIVER_CONSUMER, now)
    archive["buffer_seconds"] = archive_buffer_seconds
    doc: dict[str, Any] = {"status": "ok", "problems": problems,
                           "stream": {"last_sequence_number": stream.last_seq()}}
    if writer is not None:
        limits = writer.limits
        doc["stream"].update({"write_queue": writer.pending, "free_bytes": writer.free_bytes,
                              "min_free_bytes": limits.min_free_bytes})
        doc["backlog"] = {"records": writer.backlog, "limit": limits.max_backlog, "consumer": limits.consumer}
        if limits.max_backlog is not None and writer.backlog > limits.max_backlog:
            problems.append(f"ingest is throttled (429): {writer.backlog} records wait for the {limits.consumer} "
                            f"consumer (limit {limits.max_backlog})")
        if writer.free_bytes is not None and writer.free_bytes < limits.min_free_bytes:
            problems.append(f"ingest is refused (503): only {writer.free_bytes // 2**20} MiB free on the stream's disk")
    if consumer is not None:
        process = consumer.status()
        warehouse.update({"load_failures": process.pop("load_failures"), "last_error": process.pop("last_error")})
        doc["consumer_process"] = process
        if not process["alive"]:
            problems.append("the warehouse/archive process is down (it is being restarted)")
        if warehouse["load_failures"]:
            problems.append(f"warehouse loads fail ({warehouse['load_failures']} in a row, retried): "
                            f"{warehouse['last_error']}")
    else:
        doc["status"] = "stopped"
    if warehouse["lag_seconds"] > WAREHOUSE_BEHIND_SECONDS:
        problems.append(f"the warehouse is {warehouse['lag_seconds']:.0f} s behind the stream")
    allowed = (archive_buffer_seconds or 0) + ARCHIVE_GRACE_SECONDS
    if archive["lag_seconds"] > allowed:
        problems.append(f"the archive is {archive['lag_seconds']:.0f} s behind the stream")
    doc["warehouse"], doc["archive"] = warehouse, archive
    if problems and doc["status"] == "ok":
        doc["status"] = "degraded"
    return doc


def offline(data_dir: Path | str) -> dict[str, Any]:
    """What the files say when no ``clickstream local`` runs for ``data_dir``."""
    stream = LocalStream(data_dir)
    try:
        return build(stream)
    finally:
        stream.close()


def _count(n: int | None, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def format_status(doc: dict[str, Any], where: str | None = None) -> str:
    """``clickstream status`` as text: one line per part of the pipeline."""
    lines = [f"clickstream local: {'running' if doc['status'] != 'stopped' else 'not running'}"
             + (f", {doc['status']}" if doc["status"] != "stopped" else "") + (f" ({where})" if where else "")]
    lines += [f"  problem    : {p}" for p in doc["problems"]]
    stream = doc["stream"]
    text = f"  stream     : last sequence number {stream['last_sequence_number']:,}"
    if "write_queue" in stream:
        text += f"; write queue {_count(stream['write_queue'], 'record')}"
        if stream.get("free_bytes") is not None:
            text += f"; {stream['free_bytes'] / 2**30:,.1f} GiB free"
    lines.append(text)
    if "backlog" in doc:
        b = doc["backlog"]
        limit = "no limit" if b["limit"] is None else f"limit {b['limit']:,}"
        lines.append(f"  backlog    : {_count(b['records'], 'record')} waiting for the {b['consumer']} ({limit})")
    w = doc["warehouse"]
    text = f"  warehouse  : {_count(w['lag_records'], 'record')} behind ({w['lag_seconds']:.1f} s)"
    if "load_failures" in w:
        text += "; loads ok" if not w["load_failures"] else f"; {w['load_failures']} failed loads in a row"
    lines.append(text)
    a = doc["archive"]
    text = f"  archive    : {_count(a['lag_records'], 'record')} behind ({a['lag_seconds']:.1f} s"
    lines.append(text + (f"; buffers up to {a['buffer_seconds']:g} s)" if a.get("buffer_seconds") else ")"))
    if doc.get("refused"):
        lines.append("  refused    : " + ", ".join(f"{n:,} {code}" for code, n in doc["refused"].items()))
    if "consumer_process" in doc:
        c = doc["consumer_process"]
        text = f"  consumer   : pid {c['pid']}, {'alive' if c['alive'] else 'down'}, {_count(c['restarts'], 'restart')}"
        if c["last_exit_code"] is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c["last_restart_ms"] / 1000)) \
                if c.get("last_restart_ms") else "?"
            text += f" (last exit code {c['last_exit_code']}, restarted {when} UTC)"
        lines.append(text)
    return "\n".join(lines) + "\n"
