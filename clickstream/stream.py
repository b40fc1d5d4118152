"""The durable local stream: Kinesis's role in local mode, kept in one SQLite file (WAL mode).

Records get a sequence number and an arrival time when they are committed, like Kinesis's
SequenceNumber and ApproximateArrivalTimestamp. Consumers (archiver, warehouse loader) keep named
checkpoints in the same file, so a restart resumes where each left off.

The records of one put (one tracking request) are stored as one row, a *chunk*: the records back
to back plus their partition keys and sizes. Sequence numbers stay one per record and dense (a
chunk of n records starting at s holds s .. s+n-1), so readers see records, never chunks. One row
per request instead of one per message keeps the commit a single SQLite statement, which matters
for latency: the writer thread then needs Python's GIL twice per commit instead of once per row.

Writes go through :class:`GroupCommitWriter`: one thread owns the write connection and commits
everything that queued up while the previous commit was being fsynced, so many concurrent requests
share one fsync and each is answered only after its records are on disk.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import orjson

from clickstream.contract import Record

STREAM_FILE = "stream.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    first_seq INTEGER PRIMARY KEY,  -- sequence number of the chunk's first record
    n INTEGER NOT NULL,             -- records in the chunk
    arrival_ms INTEGER NOT NULL,
    keys BLOB NOT NULL,             -- JSON array: the records' partition keys
    sizes BLOB NOT NULL,            -- JSON array: the records' lengths in bytes
    data BLOB NOT NULL              -- the records back to back
);
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
"""

# Streams written before chunks existed held one row per record; they are converted on open.
_MIGRATE_RECORDS = """
INSERT INTO chunks (first_seq, n, arrival_ms, keys, sizes, data)
SELECT seq, 1, arrival_ms, json_array(partition_key), json_array(length(data)), data FROM records ORDER BY seq;
DROP TABLE records;
"""

_LAST_SEQ = "SELECT COALESCE((SELECT first_seq + n - 1 FROM chunks ORDER BY first_seq DESC LIMIT 1), 0)"
_CHUNKS_PER_STATEMENT = 128  # x 5 parameters stays below SQLite's oldest variable limit (999)


class StreamRecord(NamedTuple):
    seq: int
    partition_key: str
    data: bytes
    arrival_ms: int


class Chunk(NamedTuple):
    """The records of one put, ready to bind: built on the caller's thread, not the writer's."""

    n: int
    keys: bytes
    sizes: bytes
    data: bytes


def pack(records: Sequence[Record]) -> Chunk:
    return Chunk(len(records), orjson.dumps([r.partition_key for r in records]),
                 orjson.dumps([len(r.data) for r in records]), b"".join([r.data for r in records]))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _enable_wal(conn: sqlite3.Connection, timeout: float = 30.0) -> None:
    """Switch a new file to WAL. The switch needs an exclusive lock, and SQLite answers "database is
    locked" at once, without its busy handler, when another connection opening the same new file
    holds a lock (https://www.sqlite.org/wal.html#concurrency): retry until the file is WAL."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the stream file; ``synchronous=FULL`` makes every commit durable (fsync of the WAL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    _enable_wal(conn)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    if not readonly:
        conn.executescript(_SCHEMA)
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'").fetchone():
            conn.executescript("BEGIN IMMEDIATE;" + _MIGRATE_RECORDS + "COMMIT;")
    return conn


@functools.lru_cache(maxsize=_CHUNKS_PER_STATEMENT)
def _insert_sql(chunks: int) -> str:
    """One INSERT for ``chunks`` chunks; each gets the sequence numbers after the previous one's."""
    values = ",".join(f"({i},?,?,?,?,?)" for i in range(chunks))
    return (
        f"WITH v(i, n, arrival_ms, keys, sizes, data) AS (VALUES {values}), "
        f"base(b) AS ({_LAST_SEQ}) "
        "INSERT INTO chunks (first_seq, n, arrival_ms, keys, sizes, data) "
        "SELECT b + 1 + SUM(n) OVER (ORDER BY i) - n, n, arrival_ms, keys, sizes, data FROM v, base ORDER BY i"
    )


def append(conn: sqlite3.Connection, chunks: Sequence[Chunk], arrival_ms: int | None = None) -> None:
    """Commit ``chunks`` atomically and durably, in order.

    Up to 128 chunks are one autocommit statement: SQLite takes the write lock, numbers the
    records after the last committed one and fsyncs, all inside one call that releases the GIL.
    """
    arrival = now_ms() if arrival_ms is None else arrival_ms
    groups = [chunks[i : i + _CHUNKS_PER_STATEMENT] for i in range(0, len(chunks), _CHUNKS_PER_STATEMENT)]

    def insert(group: Sequence[Chunk]) -> None:
        conn.execute(_insert_sql(len(group)), [p for c in group for p in (c.n, arrival, c.keys, c.sizes, c.data)])

    if len(groups) == 1:
        insert(groups[0])
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for group in groups:
            insert(group)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class LocalStream:
    """Read side and simple writes; safe to open from several processes at once."""

    def __init__(self, data_dir: Path | str) -> None:
        self.path = Path(data_dir) / STREAM_FILE
        self._conn = connect(self.path)

    def close(self) -> None:
        self._conn.close()

    def put(self, records: Sequence[Record]) -> None:
        """Append records as one chunk, in one durable transaction."""
        if records:
            append(self._conn, [pack(records)])

    def read(self, after: int = 0, limit: int = 1000) -> list[StreamRecord]:
        """Up to ``limit`` records with sequence numbers above ``after``, in order."""
        row = self._conn.execute(
            "SELECT first_seq FROM chunks WHERE first_seq <= ? ORDER BY first_seq DESC LIMIT 1", (after + 1,)
        ).fetchone()
        cursor = self._conn.execute(
            "SELECT first_seq, arrival_ms, keys, sizes, data FROM chunks WHERE first_seq >= ? ORDER BY first_seq",
            (row[0] if row else 0,),
        )
        out: list[StreamRecord] = []
        try:
            for first, arrival, keys, sizes, data in cursor:
                offset = 0
                for i, (key, size) in enumerate(zip(orjson.loads(keys), orjson.loads(sizes), strict=True)):
                    if first + i > after:
                        out.append(StreamRecord(first + i, key, data[offset : offset + size], arrival))
                        if len(out) >= limit:
                            return out
                    offset += size
        finally:
            cursor.close()
        return out

    def iter_from(self, after: int = 0, page: int = 1000) -> Iterator[StreamRecord]:
        while True:
            rows = self.read(after, page)
            if not rows:
                return
            yield from rows
            after = rows[-1].seq

    def arrival_ms_of(self, seq: int) -> int | None:
        """Arrival time of the record with sequence number ``seq`` (its chunk's), None if there is none."""
        row = self._conn.execute(
            "SELECT first_seq, n, arrival_ms FROM chunks WHERE first_seq <= ? ORDER BY first_seq DESC LIMIT 1", (seq,)
        ).fetchone()
        return row[2] if row and row[0] + row[1] > seq else None

    def last_seq(self) -> int:
        return self._conn.execute(_LAST_SEQ).fetchone()[0]

    def count(self) -> int:
        return self._conn.execute("SELECT COALESCE(SUM(n), 0) FROM chunks").fetchone()[0]

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
        return None if row is None else self.last_seq() - row[0]  # sequence numbers are dense


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
        self._queue.put((pack(records), future, loop))
        return future

    def _run(self, conn: sqlite3.Connection) -> None:
        # Kept lean: every Python step here competes for the GIL with the event loop.
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
            chunks = [chunk for chunk, _, _ in batch]
            records = sum(chunk.n for chunk in chunks)
            error: BaseException | None = None
            try:
                append(conn, chunks)
                self.commits += 1
                self.records_written += records
            except BaseException as exc:  # report to every waiting request; they answer 503
                error = exc
            with self._lock:
                self._pending -= records
            waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
            for _, future, loop in batch:
                waiting.setdefault(loop, []).append(future)
            for loop, futures in waiting.items():  # one wake-up per loop, not one per request
                loop.call_soon_threadsafe(_settle, futures, error)
        conn.close()


def _settle(futures: list[asyncio.Future], error: BaseException | None) -> None:
    for future in futures:
        if future.done():  # the request was cancelled (client went away)
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
