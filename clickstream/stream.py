"""The durable local stream: Kinesis's role in local mode, kept in one SQLite file (WAL mode).

Records get a sequence number and an arrival time when they are committed, like Kinesis's
SequenceNumber and ApproximateArrivalTimestamp. Consumers (archiver, warehouse loader) keep named
checkpoints in the same file, so a restart resumes where each left off.

Writes go through :class:`GroupCommitWriter`: one thread owns the write connection and commits
everything that queued up while the previous commit was being fsynced, so many concurrent requests
share one fsync and each is answered only after its records are on disk.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from clickstream.contract import Record

STREAM_FILE = "stream.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    partition_key TEXT NOT NULL,
    data BLOB NOT NULL,
    arrival_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class StreamRecord:
    seq: int
    partition_key: str
    data: bytes
    arrival_ms: int


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the stream file; ``synchronous=FULL`` makes every commit durable (fsync of the WAL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    if not readonly:
        conn.executescript(_SCHEMA)
    return conn


class LocalStream:
    """Read side and simple writes; safe to open from several processes at once."""

    def __init__(self, data_dir: Path | str) -> None:
        self.path = Path(data_dir) / STREAM_FILE
        self._conn = connect(self.path)

    def close(self) -> None:
        self._conn.close()

    def put(self, records: Sequence[Record]) -> tuple[int, int]:
        """Append records in one transaction; returns (first, last) sequence numbers."""
        return append(self._conn, records)

    def read(self, after: int = 0, limit: int = 1000) -> list[StreamRecord]:
        rows = self._conn.execute(
            "SELECT seq, partition_key, data, arrival_ms FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [StreamRecord(*row) for row in rows]

    def iter_from(self, after: int = 0, page: int = 1000) -> Iterator[StreamRecord]:
        while True:
            rows = self.read(after, page)
            if not rows:
                return
            yield from rows
            after = rows[-1].seq

    def last_seq(self) -> int:
        return self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def checkpoint(self, consumer: str) -> int:
        row = self._conn.execute("SELECT seq FROM checkpoints WHERE consumer = ?", (consumer,)).fetchone()
        return row[0] if row else 0

    def set_checkpoint(self, consumer: str, seq: int) -> None:
        self._conn.execute(
            "INSERT INTO checkpoints (consumer, seq, updated_ms) VALUES (?, ?, ?) "
            "ON CONFLICT(consumer) DO UPDATE SET seq = excluded.seq, updated_ms = excluded.updated_ms",
            (consumer, seq, now_ms()),
        )

    def lag(self, consumer: str) -> int | None:
        """Records ``consumer`` has not read yet; None while it has never checkpointed."""
        row = self._conn.execute("SELECT seq FROM checkpoints WHERE consumer = ?", (consumer,)).fetchone()
        return None if row is None else self.last_seq() - row[0]


def append(conn: sqlite3.Connection, records: Sequence[Record], arrival_ms: int | None = None) -> tuple[int, int]:
    arrival = now_ms() if arrival_ms is None else arrival_ms
    conn.execute("BEGIN IMMEDIATE")
    try:
        first = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0] + 1
        conn.executemany(
            "INSERT INTO records (partition_key, data, arrival_ms) VALUES (?, ?, ?)",
            [(r.partition_key, r.data, arrival) for r in records],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return first, first + len(records) - 1


class StreamFull(Exception):
    """Too much is waiting (write queue or unconsumed backlog): answer 429 so clients back off."""


class DiskFull(Exception):
    """Free disk space is below the floor: answer 503 rather than fail a write halfway."""


@dataclass
class Limits:
    """Backpressure settings for the local stream."""

    max_pending_records: int = 200_000  # queued for the writer, not yet committed
    max_backlog: int | None = 1_000_000  # committed but not yet read by ``consumer``
    consumer: str = "warehouse"
    min_free_bytes: int = 256 * 1024 * 1024
    check_seconds: float = 0.25


class GroupCommitWriter:
    """Appends records from asyncio code; the awaitable resolves once they are committed to disk."""

    def __init__(self, data_dir: Path | str, limits: Limits | None = None) -> None:
        self.path = Path(data_dir) / STREAM_FILE
        self.limits = limits or Limits()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._watch: threading.Thread | None = None
        self._stopping = threading.Event()
        self.backlog = 0
        self.free_bytes: int | None = None
        self.commits = 0
        self.records_written = 0

    def start(self) -> None:
        conn = connect(self.path)  # created here so schema errors surface before serving
        self._thread = threading.Thread(target=self._run, args=(conn,), name="stream-writer", daemon=True)
        self._thread.start()
        self._stopping.clear()
        self._watch = threading.Thread(target=self._watch_limits, name="stream-limits", daemon=True)
        self._watch.start()

    def stop(self) -> None:
        """Commit everything queued, then stop the threads."""
        self._stopping.set()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._watch is not None:
            self._watch.join(timeout=5)
            self._watch = None

    def _watch_limits(self) -> None:
        """Keep ``backlog`` and ``free_bytes`` fresh without touching the request path."""
        import shutil

        stream = LocalStream(self.path.parent)
        try:
            while not self._stopping.is_set():
                # Only a consumer that exists can fall behind; without one there is no backlog to bound.
                self.backlog = stream.lag(self.limits.consumer) or 0
                self.free_bytes = shutil.disk_usage(self.path.parent).free
                self._stopping.wait(self.limits.check_seconds)
        finally:
            stream.close()

    def check(self, incoming: int) -> None:
        """Raise if accepting ``incoming`` more records would break a limit."""
        if self.free_bytes is not None and self.free_bytes < self.limits.min_free_bytes:
            raise DiskFull(f"only {self.free_bytes // 2**20} MiB free on the stream's disk")
        if self.limits.max_backlog is not None and self.backlog > self.limits.max_backlog:
            raise StreamFull(f"{self.backlog} records are waiting for the {self.limits.consumer} consumer")
        if self._pending + incoming > self.limits.max_pending_records:
            raise StreamFull(f"{self._pending} records are waiting to be written")

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, records: Sequence[Record]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self.check(len(records))
            self._pending += len(records)
        self._queue.put((records, future, loop))
        return future

    def _run(self, conn: sqlite3.Connection) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            rows = [r for records, _, _ in batch for r in records]
            error: BaseException | None = None
            try:
                append(conn, rows)
                self.commits += 1
                self.records_written += len(rows)
            except BaseException as exc:  # report to every waiting request; they answer 503
                error = exc
            with self._lock:
                self._pending -= len(rows)
            for _, future, loop in batch:
                loop.call_soon_threadsafe(_settle, future, error)
        conn.close()


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
