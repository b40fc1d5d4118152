"""The local warehouse: the SQL model on DuckDB, fed from the local stream.

The loader plays Redshift's part: it copies new stream records into a table with the streaming
view's columns and rules (the "refresh") and runs the model's merge statements, transpiled from
``sql/redshift``, as one transaction. Progress is the highest sequence number in that table, written
in the same transaction as the rows, so a crash never loses or repeats a record's load. Opening a
warehouse runs setup, which applies the migrations it has not applied yet.

DuckDB allows one writing process per file. While ``clickstream local`` runs, its loader process
(:class:`LoaderProcess`) owns the file, and ``clickstream query`` reaches it through the collector's
loopback admin endpoint; otherwise ``query`` opens the file itself, read-only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from clickstream import segment_tables
from clickstream.ingest import RECORD_PREFIX
from clickstream.redshift_rules import MAX_RECORD_BYTES, not_super_json
from clickstream.sqlmodel import ModelNames, Statement, duckdb_statements
from clickstream.stream import LocalStream, StreamRecord

log = logging.getLogger("clickstream.warehouse")

WAREHOUSE_FILE = "warehouse.duckdb"
LOADER_CONSUMER = "warehouse"
SEQ_WIDTH = 20  # sequence numbers are zero-padded so that text order is numeric order
# Records per load while catching up: DuckDB's row group size (122,880 rows, see
# https://duckdb.org/docs/stable/guides/performance/how_to_tune_workloads). DuckDB writes a whole
# row group inserted by one transaction straight into the database file, compressed, at commit;
# smaller inserts go to the WAL, and a checkpoint writes them again, compressed, later. With
# 50,000-record loads a checkpoint costing ~1 s fell every four loads and the loader sustained
# ~41,000-46,000 events/s; with whole row groups the streaming table's rows (most of the bytes)
# are written once, and the rate is ~50,000-57,000 (docs/benchmarks.md). Bigger loads gain
# nothing more and take more memory.
LOAD_BATCH = 122_880


@dataclass
class LoadStats:
    records: int = 0
    merges: int = 0
    seconds: float = 0.0
    last_error: str | None = None
    history: list[tuple[int, float]] = field(default_factory=list)


class Warehouse:
    def __init__(self, path: Path | str, names: ModelNames | None = None, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.names = names or ModelNames()
        self.conn = duckdb.connect(str(self.path), read_only=read_only)
        self.conn.execute("SET TimeZone = 'UTC'")
        # Every commit is durable in the WAL; folding it into the file less often roughly halves
        # the loader's fixed cost per batch (measured: 31k -> 45k events/s).
        self.conn.execute("SET checkpoint_threshold = '256MB'")
        if not read_only:
            self.setup()
        self._merge = duckdb_statements("refresh", self.names)
        self._last_refresh: dt.datetime | None = None
        self._refresh_lock = threading.RLock()  # _last_refresh: set by loads, read by any thread
        self.stats = LoadStats()

    def setup(self) -> None:
        """The setup statements in order; a migration statement runs only if not yet applied, and is
        recorded in ``schema_migrations`` in the same transaction (Redshift: ``apply_migration``)."""
        for stmt in duckdb_statements("setup", self.names):
            if stmt.migration:
                self._apply_migration(stmt)
            else:
                self.conn.execute(stmt.sql)

    def _apply_migration(self, stmt: Statement) -> None:
        table = f"{self.names.schema}.schema_migrations"
        row = self.conn.execute(f"SELECT checksum FROM {table} WHERE name = ?", [stmt.migration]).fetchone()
        if row is not None:
            if row[0] != stmt.checksum:
                raise RuntimeError(f"migration {stmt.migration} was changed after it was applied: "
                                   "add a new migration instead")
            return
        self.conn.execute("BEGIN")
        try:
            self.conn.execute(stmt.sql)
            self.conn.execute(f"INSERT INTO {table} VALUES (?, ?, now()::TIMESTAMP)", [stmt.migration, stmt.checksum])
            self.conn.execute("COMMIT")
        except Exception:
            self.conn.execute("ROLLBACK")
            raise

    def use_loader_settings(self) -> None:
        """DuckDB as the loader runs it (``clickstream bench`` measures the same): one thread.

        The merge then runs only in the loader's (lower-priority) thread, instead of in worker
        threads started at full priority that compete with the collector. It is no slower: a load
        (LOAD_BATCH) is one row group, which DuckDB scans in one thread anyway, and on two cores a
        second thread only added contention (measured with 50,000-record loads: 62,000 vs 52,000
        events/s before checkpoints)."""
        self.conn.execute("SET threads = 1")

    def applied_migrations(self) -> list[str]:
        _, rows = self.query(f"SELECT name FROM {self.names.schema}.schema_migrations ORDER BY name")
        return [r[0] for r in rows]

    @classmethod
    def in_dir(cls, data_dir: Path | str, **kwargs) -> Warehouse:
        return cls(Path(data_dir) / WAREHOUSE_FILE, **kwargs)

    def close(self) -> None:
        self.conn.close()

    @property
    def table(self) -> str:
        return f"{self.names.schema}.{self.names.mv}"

    def last_loaded_seq(self) -> int:
        """The highest sequence number copied into the streaming table.

        It runs before every load and every idle poll, so it must not read the whole table (a cost
        per batch that grew with the table). Loads copy records in sequence order with one strictly
        increasing refresh_time each, so the highest is among the rows of the latest refresh: a
        literal lower bound on refresh_time lets DuckDB's row-group min/max skip everything older."""
        latest = self._latest_refresh()
        if latest is not None:
            _, rows = self.query(f"SELECT MAX(sequence_number) FROM {self.table} "
                                 f"WHERE refresh_time >= {_literal(latest.isoformat(sep=' '))}::TIMESTAMP")
            if rows and rows[0][0]:
                return int(rows[0][0])
        # nothing at the latest refresh (its load was rolled back, or rows were written by hand)
        _, rows = self.query(f"SELECT MAX(sequence_number) FROM {self.table}")
        return int(rows[0][0]) if rows and rows[0][0] else 0

    def _latest_refresh(self) -> dt.datetime | None:
        """The refresh_time of the latest load: read from the table once, then kept by :meth:`_refresh_time`.

        Other threads call it too (through :meth:`last_loaded_seq`): it reads on its own cursor,
        and the lock keeps a reader from overwriting a newer value set by a load."""
        with self._refresh_lock:
            if self._last_refresh is None:
                _, rows = self.query(f"SELECT MAX(refresh_time) FROM {self.table}")
                self._last_refresh = rows[0][0] if rows else None
            return self._last_refresh

    def _refresh_time(self) -> dt.datetime:
        """Like Redshift's refresh_time: one value per refresh, strictly increasing."""
        with self._refresh_lock:
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            latest = self._latest_refresh()
            if latest is not None and now <= latest:
                now = latest + dt.timedelta(microseconds=1)
            self._last_refresh = now
            return now

    def load(self, records: list[StreamRecord]) -> None:
        """Copy stream records into the streaming table and merge, as one transaction each.

        The streaming view's rules: a record is ``payload`` (JSON) only if it is UTF-8 JSON of at most
        MAX_RECORD_BYTES without a repeated key or NaN (what SUPER accepts), else its bytes
        (``raw_data``). The payload is stored as DuckDB writes it (minified, numbers normalised), so
        its length is what JSON_SIZE measures on Redshift, the size of the serialised form: a record
        of 1e5s grows when written as 100000.0s, and must be rejected as too large before any part
        of it is serialised (https://docs.aws.amazon.com/redshift/latest/dg/r_json_size.html).
        """
        if not records:
            return
        texts: list[str | None] = []
        raw: list[bytes | None] = []  # bytes only where they cannot be payload (rare)
        for r in records:
            text = None
            if len(r.data) <= MAX_RECORD_BYTES:
                try:
                    text = r.data.decode("utf-8")
                except UnicodeDecodeError:
                    text = None
                # a repeated key or NaN can only come from a writer other than the collector, which
                # re-serialises every message with orjson: check only what did not come from it
                if text is not None and not text.startswith(RECORD_PREFIX) and not_super_json(text):
                    text = None
            texts.append(text)
            raw.append(None if text is not None else r.data)
        refresh = self._refresh_time()
        self.conn.execute("BEGIN")
        try:
            self.conn.execute(
                f"""
                INSERT INTO {self.table} (approximate_arrival_timestamp, partition_key, shard_id, sequence_number,
                                          refresh_time, payload, raw_data, record_bytes)
                SELECT make_timestamp(a * 1000), pk, 'local', lpad(CAST(seq AS VARCHAR), {SEQ_WIDTH}, '0'),
                       ?::TIMESTAMP, p,
                       CASE WHEN p IS NULL THEN COALESCE(r, encode(t)) END,
                       COALESCE(octet_length(r), strlen(t))
                FROM (SELECT a, pk, seq, try(json(t)) AS p, t, r
                      FROM (SELECT UNNEST(?) AS a, UNNEST(?) AS pk, UNNEST(?) AS seq, UNNEST(?::VARCHAR[]) AS t,
                                   UNNEST(?::BLOB[]) AS r))
                """,
                [refresh, [r.arrival_ms for r in records], [r.partition_key for r in records],
                 [r.seq for r in records], texts, raw],
            )
            self.conn.execute("COMMIT")
        except Exception:
            self.conn.execute("ROLLBACK")
            with self._refresh_lock:
                self._last_refresh = None  # this refresh_time was not kept: read the latest again
            raise
        self.merge()

    def merge(self) -> None:
        """The refresh workflow's merge statements, in order (the Redshift workflow sends them as one
        BatchExecuteStatement, one transaction). The bounds the Redshift procedures read (watermark,
        start of the deduplication window) are filled in here as literals.

        Locally the staging steps (TEMP tables, never durable) run before the transaction and the
        writes to durable tables (rejected, events, watermark) in it: the same all-or-nothing for
        what is kept, and ~10% less work than carrying the TEMP tables through the transaction."""
        schema = self.names.schema
        in_transaction = False
        try:
            for stmt in self._merge:
                sql = stmt.sql
                if "${watermark}" in sql:
                    [mark] = self.conn.execute(
                        f"SELECT CAST(watermark AS VARCHAR) FROM {schema}.load_state WHERE name = 'events'").fetchall()
                    sql = sql.replace("${watermark}", _literal(mark[0]))
                if "${recent_since}" in sql:
                    [since] = self.conn.execute(
                        "SELECT CAST(COALESCE(MIN(received_at), now()) - to_days(CAST(? AS INTEGER)) AS VARCHAR) "
                        "FROM staging WHERE reason IS NULL", [self.names.dedup_window_days]).fetchall()
                    sql = sql.replace("${recent_since}", _literal(since[0]))
                if not in_transaction and _WRITE.match(sql):
                    self.conn.execute("BEGIN")
                    in_transaction = True
                self.conn.execute(sql)
            if in_transaction:
                self.conn.execute("COMMIT")
        except Exception:
            if in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.stats.merges += 1

    def spread_segment_tables(self) -> bool:
        """Spread the events merged since the last call into Segment's per-source tables.

        Not part of :meth:`merge`: the loader calls it once it has caught up with the stream, so a
        burst is merged into ``events`` at full speed and the per-event tables follow in one larger
        pass (a failure there is logged and retried; it never stops ``events`` from loading).
        Returns False when the pass failed."""
        return segment_tables.after_merge(self.conn, self.names)

    def load_from(self, stream: LocalStream, batch: int = LOAD_BATCH) -> int:
        """Load everything the stream has beyond what is loaded; returns the number of records."""
        total = 0
        while True:
            records = stream.read(self.last_loaded_seq(), batch)
            if not records:
                return total
            start = time.perf_counter()
            self.load(records)
            elapsed = time.perf_counter() - start
            self.stats.records += len(records)
            self.stats.seconds += elapsed
            stream.set_checkpoint(LOADER_CONSUMER, records[-1].seq)
            total += len(records)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """One read-only statement (see :func:`read_only_query`); it can never write or reconfigure."""
        return read_only_query(self.conn, sql)


SPREAD_RETRY_SECONDS = 2.0  # a failed Segment-tables pass is retried this often (it logs each failure)
RETRY_MAX_SECONDS = 1.0  # a failed load or merge is retried at least this often: queryable ~1 s after recovery


# A statement that writes a durable table (leading comments skipped).
# A comment ends at its first */ (no ".*?" that could span several): one way to match, no backtracking.
_WRITE = re.compile(r"^\s*(?:/\*(?:[^*]|\*(?!/))*\*/\s*|--[^\n]*\n\s*)*(?:INSERT|UPDATE|DELETE)\b", re.I)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Loader:
    """Background thread of ``clickstream local``: load and merge every ``interval`` seconds.

    A failed load or merge is retried with backoff (``interval`` doubling up to
    :data:`RETRY_MAX_SECONDS`) whether or not new records arrive: rows whose merge failed are merged
    by the retry, not by the next request. Each start begins with a merge too, so rows loaded before
    a crash or a failed last merge at shutdown become queryable without new traffic.
    """

    def __init__(self, warehouse: Warehouse, data_dir: Path | str, interval: float = 0.5,
                 batch: int = LOAD_BATCH) -> None:
        self.warehouse = warehouse
        self.batch = batch  # records per load while catching up (bigger loads amortise each merge)
        self.data_dir = Path(data_dir)
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self._merge_due = True  # a previous run may have left loaded rows unmerged
        self._spread_due = True  # ... or merged rows not yet in the per-source tables
        self._spread_retry_at = 0.0
        self.failures = 0  # consecutive failed passes; 0 when the last one succeeded
        self.last_error: str | None = None

    def start(self, *, lock_configuration: bool = False) -> None:
        """Start the thread; ``lock_configuration`` locks DuckDB's settings (see :func:`lock_down`)
        once the loader's own are made, before the thread shares the connection."""
        self.warehouse.use_loader_settings()
        if lock_configuration:
            lock_down(self.warehouse.conn)

        def loop() -> None:
            # Ingest latency first: the merge is background work, so it runs at a lower priority
            # (Linux schedules threads individually; DuckDB's workers are started from here).
            with contextlib.suppress(AttributeError, OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
            stream = LocalStream(self.data_dir)
            # Register as a consumer at once, so the collector's backlog limit sees us from the start.
            stream.set_checkpoint(LOADER_CONSUMER, self.warehouse.last_loaded_seq())
            try:
                delay = self.interval
                while True:
                    delay = self._attempt(stream, delay)
                    if self._stop.wait(delay):
                        break
                try:  # a last pass on shutdown: what was acknowledged is queryable
                    self.run_once(stream)
                except Exception:
                    log.exception("the last warehouse load before shutdown failed; the next start retries it")
            finally:
                stream.close()

        self._thread = threading.Thread(target=loop, name="warehouse-loader", daemon=True)
        self._thread.start()

    def run_once(self, stream: LocalStream) -> None:
        """Load and merge what is new; if nothing is, merge what an earlier failure left unmerged."""
        with self.lock:
            try:
                loaded = self.warehouse.load_from(stream, batch=self.batch)  # each load merges all pending
                if self._merge_due and not loaded:
                    self.warehouse.merge()
                    stream.set_checkpoint(LOADER_CONSUMER, self.warehouse.last_loaded_seq())
                if loaded or self._merge_due:
                    self._spread_due = True
                if self._spread_due and time.monotonic() >= self._spread_retry_at:
                    # caught up: the per-event tables follow; a failed pass is retried without traffic
                    self._spread_due = not self.warehouse.spread_segment_tables()
                    self._spread_retry_at = time.monotonic() + (SPREAD_RETRY_SECONDS if self._spread_due else 0)
                self._merge_due = False
            except Exception:
                self._merge_due = True  # rows may be loaded but not merged: the retry merges them
                raise

    def _attempt(self, stream: LocalStream, delay: float) -> float:
        """One pass; returns how long to wait before the next (backoff after a failure)."""
        try:
            self.run_once(stream)
        except Exception as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.warehouse.stats.last_error = self.last_error
            if self.failures & (self.failures - 1) == 0:  # 1st, 2nd, 4th, 8th ...: the log stays readable
                log.error("warehouse load or merge failed (%d in a row); retrying: %s", self.failures,
                          self.last_error, exc_info=self.failures == 1)
            return min(max(delay * 2, self.interval), RETRY_MAX_SECONDS)
        if self.failures:
            log.warning("warehouse load and merge recovered after %d failed attempts", self.failures)
        self.failures = 0
        self.last_error = self.warehouse.stats.last_error = None
        return self.interval

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


# -- the query path -------------------------------------------------------------------------------
# Queries come from `clickstream query` (through the collector's admin endpoint) and run in the
# process that also loads and merges. Whatever their SQL says, they must not change the warehouse
# or the process: the guard is DuckDB's, not a parser's (clickstream.query.check_read_only only
# gives an early, friendlier error). Three layers:
#   1. DuckDB's own parser must find exactly one statement, of a reading type;
#   2. it runs inside BEGIN TRANSACTION READ ONLY, always rolled back, so a write hidden anywhere
#      (a data-modifying CTE, nextval, CREATE MACRO ...) fails in the engine;
#   3. the database's configuration is locked and file access is off (lock_down), so SET/PRAGMA
#      cannot starve the loader and COPY/ATTACH/read_csv cannot touch files.
READ_ONLY_STATEMENTS = frozenset({"SELECT", "EXPLAIN", "PRAGMA"})  # SHOW/DESCRIBE parse as SELECT
# DuckDB errors that mean the server failed, not the query: answered 5xx, never 400.
SERVER_FAULTS: tuple[type[Exception], ...] = (duckdb.OutOfMemoryException, duckdb.IOException,
                                              duckdb.InternalException, duckdb.FatalException,
                                              duckdb.InterruptException)


class QueryFailed(Exception):
    """A query that failed; the message is DuckDB's (or the reason it could not run).

    ``server_fault`` is True when the server is at fault (out of memory, I/O, the loader process
    down): the caller may retry later. False means the query itself is wrong or not allowed.
    """

    def __init__(self, message: str, *, server_fault: bool = False) -> None:
        super().__init__(message)
        self.server_fault = server_fault


def lock_down(conn: duckdb.DuckDBPyConnection) -> None:
    """After the loader's own settings: no file access from SQL, and no configuration change at all.

    Both are database-wide and one-way (DuckDB refuses to undo them while the database is open).
    """
    conn.execute("SET enable_external_access = false")
    conn.execute("SET lock_configuration = true")


def read_only_query(conn: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one reading statement on its own cursor, in a read-only transaction that is rolled back.

    Its own cursor, so readers in other threads never share the loader's connection. Raises
    :class:`QueryFailed` for any failure, with ``server_fault`` telling whose fault it was.
    """
    cursor = conn.cursor()
    try:
        statements = cursor.extract_statements(sql)
        if len(statements) != 1:
            raise QueryFailed(f"give exactly one SQL statement, not {len(statements)}")
        kind = statements[0].type.name
        if kind not in READ_ONLY_STATEMENTS:
            raise QueryFailed(f"only read-only queries are allowed, not {kind}")
        cursor.execute("BEGIN TRANSACTION READ ONLY")
        try:
            result = cursor.execute(sql)
            columns = [d[0] for d in result.description] if result.description else []
            return columns, result.fetchall()
        finally:
            with contextlib.suppress(duckdb.Error):
                cursor.execute("ROLLBACK")
    except SERVER_FAULTS as exc:
        raise QueryFailed(str(exc), server_fault=True) from exc
    except duckdb.Error as exc:
        raise QueryFailed(str(exc)) from exc
    finally:
        cursor.close()


class LoaderProcess:
    """The stream's consumers (warehouse loader, archiver) in a supervised child process.

    Merging and archiving are CPU-heavy; in their own process they no longer share the collector's
    GIL, and they run at a lower priority (nice 10), so ingest latency stays low while they catch up.
    Queries (``clickstream query`` through the collector) go to it over a pipe. The child exits
    when told to, and also when its parent dies (even by ``kill -9``), releasing the DuckDB file.

    A thread in the parent supervises the child: if it dies without being told to stop (a crash,
    ``kill -9``, the OOM killer), the exit is logged and a new child is started with backoff
    (``restart_backoff``: first and longest delay, doubling), which resumes from the checkpoints.
    ``status()`` reports restarts and the loader's failures for ``/health``.
    """

    def __init__(self, data_dir: Path | str, *, interval: float = 0.5, batch: int = LOAD_BATCH,
                 archive: dict[str, float] | None = None,
                 restart_backoff: tuple[float, float] = (0.2, 30.0)) -> None:
        import multiprocessing

        self._ctx = multiprocessing.get_context("spawn")
        self._args = (str(data_dir), interval, batch, archive)
        self._stop = self._ctx.Event()
        self._ready = self._ctx.Event()
        # Written by the child: consecutive failed loader passes and the last error (UTF-8, cut).
        self._failures = self._ctx.Value("i", 0, lock=False)
        self._last_error = self._ctx.Array("c", 512, lock=False)
        self._lock = threading.Lock()  # one query at a time on the pipe; swapping the child
        self._conn: Any = None
        self.process: Any = None
        self.restart_backoff = restart_backoff
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.last_restart_ms: int | None = None
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    def _launch(self, timeout: float) -> None:
        """Start a child and wait until it serves queries; then make it the current one."""
        conn, child = self._ctx.Pipe()
        self._ready.clear()
        process = self._ctx.Process(target=_loader_main, name="clickstream-loader", daemon=True,
                                    args=(*self._args, child, self._stop, self._ready, os.getpid(),
                                          self._failures, self._last_error))
        process.start()
        child.close()  # the child's end lives in the child; EOF then means it died
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if not process.is_alive() or time.monotonic() > deadline:
                process.kill()
                process.join(5)
                conn.close()
                raise RuntimeError(f"the warehouse loader process did not start (exit code {process.exitcode})")
        with self._lock:
            old = self._conn
            self.process, self._conn = process, conn
        if old is not None:
            old.close()

    def start(self, timeout: float = 60.0) -> None:
        self._launch(timeout)
        self._supervisor = threading.Thread(target=self._supervise, name="loader-supervisor", daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        from multiprocessing.connection import wait

        first, longest = self.restart_backoff
        delay = first
        while not self._stopping.is_set():
            process = self.process
            wait([process.sentinel], timeout=0.5)
            if self._stopping.is_set():
                return
            if process.is_alive():
                continue
            self.last_exit_code = process.exitcode
            log.error("the warehouse/archive process (pid %s) exited with code %s; restarting in %.1f s",
                      process.pid, process.exitcode, delay)
            if self._stopping.wait(delay):
                return
            try:
                self._launch(60.0)
            except Exception:
                log.exception("restarting the warehouse/archive process failed; trying again")
                delay = min(delay * 2, longest)
                continue
            self.restarts += 1
            self.last_restart_ms = time.time_ns() // 1_000_000
            log.warning("the warehouse/archive process is running again (pid %s, restart %d)",
                        self.process.pid, self.restarts)
            started = time.monotonic()
            # Back off only while the child keeps dying soon after start; a long healthy run resets it.
            while not self._stopping.is_set() and self.process.is_alive() and time.monotonic() - started < 60:
                wait([self.process.sentinel], timeout=0.5)
            delay = first if self.process.is_alive() else min(delay * 2, longest)

    def stop(self, timeout: float = 60.0) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout)
        self._stop.set()
        if self.process is not None:
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        if self._conn is not None:
            self._conn.close()

    def status(self) -> dict[str, Any]:
        """The child's state for health reports."""
        process = self.process
        alive = bool(process is not None and process.is_alive())
        failures = self._failures.value if alive else 0
        error = self._last_error.value.decode("utf-8", "replace") if failures else None
        return {"alive": alive, "pid": process.pid if process is not None else None, "restarts": self.restarts,
                "last_exit_code": self.last_exit_code, "last_restart_ms": self.last_restart_ms,
                "load_failures": failures, "last_error": error or None}

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._lock:
            process, conn = self.process, self._conn
            if process is None or not process.is_alive():
                raise QueryFailed("the warehouse process is not running (it is restarted); retry shortly",
                                  server_fault=True)
            try:
                conn.send(sql)
                while not conn.poll(0.2):
                    if not process.is_alive():
                        raise QueryFailed("the warehouse process stopped during the query; retry shortly",
                                          server_fault=True)
                ok, payload = conn.recv()
            except (EOFError, OSError) as exc:
                raise QueryFailed(f"the warehouse process is unreachable ({exc}); retry shortly",
                                  server_fault=True) from exc
        if not ok:
            server_fault, message = payload
            raise QueryFailed(message, server_fault=server_fault)
        return payload


def _loader_main(data_dir: str, interval: float, batch: int, archive: dict[str, float] | None, conn, stop, ready,
                 parent_pid: int, failures, last_error) -> None:
    import signal

    from clickstream.archive import Archiver

    # Ctrl-C and a SIGTERM sent to the whole process group reach this process too: shut down the
    # same way as when the parent asks (flush the archive buffer, finish the merge), not abruptly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(OSError):
        os.nice(10)
    deadline = time.monotonic() + 30
    while True:  # a killed predecessor may still hold the file for a moment
        try:
            warehouse = Warehouse.in_dir(data_dir)
            break
        except duckdb.IOException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    loader = Loader(warehouse, data_dir, interval=interval, batch=batch)
    loader.start(lock_configuration=True)  # after the loader's own settings nothing can change them
    archiver = None
    if archive is not None:
        archiver = Archiver(data_dir, buffer_bytes=int(archive["buffer_bytes"]),
                            buffer_seconds=archive["buffer_seconds"])
        archiver.start()
    ready.set()
    try:
        while not stop.is_set() and os.getppid() == parent_pid:
            failures.value = loader.failures
            last_error.value = (loader.last_error or "").encode("utf-8", "replace")[:500]
            if not conn.poll(0.2):
                continue
            try:
                sql = conn.recv()
            except EOFError:
                break
            try:
                columns, rows = warehouse.query(sql)
                conn.send((True, (columns, [tuple(r) for r in rows])))
            except QueryFailed as exc:  # the caller shows DuckDB's message
                conn.send((False, (exc.server_fault, str(exc))))
            except Exception as exc:  # e.g. a result that cannot be pickled
                conn.send((False, (True, f"{type(exc).__name__}: {exc}")))
    finally:
        if archiver is not None:
            archiver.stop()  # flushes its buffer, like Firehose on a final buffer
        loader.stop()
        warehouse.close()
