"""The live events page of ``clickstream local``: what arrives, what was refused, status, and SQL.

Served by the collector's process on the same port, under ``/_clickstream/`` (``/`` redirects
there). It only reads: events come from the durable stream through a read-only SQLite connection
(no consumer checkpoint, so the archiver's and the loader's progress are untouched), SQL goes
through :func:`clickstream.query.run_query` like ``clickstream query``, and refused requests are
kept in a bounded in-memory ring fed by the collector when it answers an error.

The page and its data routes are same-origin only: they carry no CORS headers, refuse a ``Host``
header that does not name a loopback address (DNS rebinding) and refuse clients that are not on
loopback, refuse cross-site requests (``Origin`` / ``Sec-Fetch-Site``), and the page is never
framed. The admin token of ``clickstream query`` stays in the state file; the page never sees it.
Static files ship in the package (``static/``): plain JS and CSS, no build step, no CDN.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import ipaddress
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson

from clickstream import contract
from clickstream.archive import ARCHIVE_DIR, ARCHIVE_PREFIX, ARCHIVER_CONSUMER, OBJECT_SUFFIX
from clickstream.collector import ADMIN_QUERY_PATH
from clickstream.sqlmodel import ModelNames
from clickstream.stream import STREAM_FILE, LocalStream, StreamRecord, now_ms
from clickstream.warehouse import LOADER_CONSUMER

log = logging.getLogger("clickstream.console")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
QueryFn = Callable[[str], tuple[list[str], list[list[Any]]]]

PAGE_PATH = "/_clickstream/"
API = PAGE_PATH + "api/"
STATIC_FILES = {"": ("index.html", "text/html; charset=utf-8"), "app.js": ("app.js", "text/javascript; charset=utf-8"),
                "app.css": ("app.css", "text/css; charset=utf-8")}
# The collector's own loopback admin route (`clickstream query`) lives under the same prefix; it is not ours.
RESERVED = frozenset({ADMIN_QUERY_PATH})
REFUSED_RING = 200  # refused requests kept in memory (newest win)
EVENTS_PAGE = 100  # at most this many records per poll, the newest
FILTER_WINDOW = 2000  # records scanned from the newest down when the page filters server-side
MAX_SQL_BYTES = 64 * 1024
STATUS_TTL_SECONDS = 2.0  # status is computed at most this often, however many pages poll
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
     b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
]


class StreamReader(LocalStream):
    """:class:`LocalStream`'s reader API over a read-only SQLite connection.

    It can neither write records nor move a checkpoint (``mode=ro``), so watching the stream never
    changes what the archiver or the loader will read next.
    """

    def __init__(self, data_dir: Path | str) -> None:
        self.path = Path(data_dir) / STREAM_FILE
        self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                     check_same_thread=False, timeout=5)
        self._conn.execute("PRAGMA busy_timeout=5000")

    def checkpoints(self) -> dict[str, int]:
        return dict(self._conn.execute("SELECT consumer, seq FROM checkpoints").fetchall())

    def arrival_of(self, seq: int) -> int | None:
        """Arrival time (epoch ms) of the record with sequence number ``seq``, if it is stored."""
        row = self._conn.execute(
            "SELECT arrival_ms FROM chunks WHERE first_seq <= ? AND first_seq + n > ? "
            "ORDER BY first_seq DESC LIMIT 1", (seq, seq)).fetchone()
        return row[0] if row else None

    def first_seq_since(self, since_ms: int) -> int:
        """The sequence number before the first record that arrived at or after ``since_ms``.

        Arrival times grow with sequence numbers, so a binary search over the primary key finds
        it in a few index lookups however long the stream is.
        """
        lo, hi = 0, self.last_seq()
        while lo < hi:
            mid = (lo + hi) // 2
            row = self._conn.execute("SELECT arrival_ms FROM chunks WHERE first_seq > ? ORDER BY first_seq LIMIT 1",
                                     (mid,)).fetchone()
            if row is None or row[0] >= since_ms:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def per_minute_after(self, seq: int) -> tuple[dict[int, int], int]:
        """Records per arrival minute (epoch minute -> count) in chunks after ``seq``, and the last seq counted."""
        rows = self._conn.execute(
            "SELECT arrival_ms / 60000, SUM(n), MAX(first_seq + n - 1) FROM chunks WHERE first_seq > ? GROUP BY 1",
            (seq,)).fetchall()
        return {m: n for m, n, _ in rows}, max((last for _, _, last in rows), default=seq)


class MinuteCounts:
    """Events per arrival minute over the last hour, counted incrementally.

    Each update scans only the chunks committed since the previous one, so a status page left
    open costs the collector's process next to nothing even at tens of thousands of events/s.
    """

    def __init__(self, minutes: int = 60) -> None:
        self.minutes = minutes
        self.counts: dict[int, int] = {}
        self.seq: int | None = None  # last sequence number counted

    def update(self, stream: StreamReader, now: int) -> list[dict[str, int]]:
        first = now // 60000 - self.minutes + 1
        if self.seq is None or self.seq > stream.last_seq():  # first call, or a new stream file
            self.counts, self.seq = {}, stream.first_seq_since(first * 60000)
        fresh, self.seq = stream.per_minute_after(self.seq)
        for minute, n in fresh.items():
            self.counts[minute] = self.counts.get(minute, 0) + n
        self.counts = {m: n for m, n in self.counts.items() if m >= first}
        return [{"minute": (first + i) * 60000, "events": self.counts.get(first + i, 0)} for i in range(self.minutes)]


def _loopback_host(host_header: str | None) -> bool:
    """True when a Host header names this machine's loopback: localhost, 127.0.0.0/8 or [::1]."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8080
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_client(scope: Scope) -> bool:
    client = (scope.get("client") or ("",))[0]
    try:
        return ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False


def source_and_type(data: bytes) -> tuple[str | None, str | None]:
    """A record's source and message type (the message's, else the route's), for filtering."""
    try:
        envelope = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(envelope, dict):
        return None, None
    message = envelope.get("message")
    kind = message.get("type") if isinstance(message, dict) else None
    return envelope.get("source"), kind or envelope.get("routeType")


def listed(record: StreamRecord) -> dict[str, Any]:
    """A record as the page gets it: the stored bytes as text; the page parses and summarizes them.

    Parsing in the browser keeps the collector's process (and its GIL) out of the page's work.
    """
    return {"seq": record.seq, "arrivalMs": record.arrival_ms, "partitionKey": record.partition_key,
            "data": record.data.decode("utf-8", errors="replace")}


@dataclass
class Refusal:
    at_ms: int
    status: int
    code: str
    message: str
    method: str
    path: str
    source: str | None
    ip: str
    user_agent: str | None


class Console:
    """ASGI app for ``/`` and ``/_clickstream/...``; the collector hands those paths to it.

    ``query`` runs read-only SQL the way ``clickstream query`` does (default:
    :func:`clickstream.query.run_query` on ``data_dir``); ``health`` reports the child processes.
    """

    def __init__(self, data_dir: Path | str, write_keys: Mapping[str, str], *, query: QueryFn | None = None,
                 health: Callable[[], dict[str, Any]] | None = None, names: ModelNames | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.write_keys = dict(write_keys)
        self.names = names or ModelNames()
        self._query = query
        self._health = health
        self._refused: collections.deque[Refusal] = collections.deque(maxlen=REFUSED_RING)
        self._reader: StreamReader | None = None
        self._lock = threading.Lock()  # one reader connection, used from worker threads
        self._status: tuple[float, dict[str, Any]] | None = None
        self._minutes = MinuteCounts()
        self._status_lock = asyncio.Lock()
        self._static = {
            name: (resources.files(__package__).joinpath("static", file).read_bytes(), ctype.encode())
            for name, (file, ctype) in STATIC_FILES.items()
        }

    # -- what the collector calls --------------------------------------------------------------
    @staticmethod
    def serves(path: str) -> bool:
        return path == "/" or path == PAGE_PATH[:-1] or (path.startswith(PAGE_PATH) and path not in RESERVED)

    def refused(self, scope: Scope, headers: Mapping[str, str], status: int, body: bytes) -> None:
        """Remember a request the tracking API refused (called on the event loop; keep it cheap)."""
        try:
            error = orjson.loads(body)
        except orjson.JSONDecodeError:
            error = {}
        key = contract.write_key_from_basic_auth(headers.get("authorization"))
        self._refused.append(Refusal(
            now_ms(), status, str(error.get("code", "")), str(error.get("message", "")), scope.get("method", ""),
            scope.get("path", ""), self.write_keys.get(key) if key else None,
            (scope.get("client") or ("",))[0] or "", headers.get("user-agent")))

    # -- ASGI ----------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path, method = scope["path"], scope["method"]
        try:
            refusal = self._refuse(scope, headers, data=path.startswith(API))
            if refusal:
                await _send(send, 403, orjson.dumps({"code": "forbidden", "message": refusal}))
                return
            if path in ("/", PAGE_PATH[:-1]):
                await _send(send, 308 if method not in ("GET", "HEAD") else 302, b"", location=PAGE_PATH)
                return
            name = path[len(PAGE_PATH):]
            if name in self._static:
                if method not in ("GET", "HEAD"):
                    await _send(send, 405, _error("method_not_allowed", "GET only"), allow="GET, HEAD")
                    return
                body, ctype = self._static[name]
                await _send(send, 200, body if method == "GET" else b"", ctype, length=len(body))
                return
            handler = _ROUTES.get(name)
            if handler is None:
                await _send(send, 404, _error("not_found", f"no route {path}"))
                return
            want, func = handler
            if method != want:
                await _send(send, 405, _error("method_not_allowed", f"{path} takes {want}"), allow=want)
                return
            if want == "POST" and headers.get("content-type", "").split(";")[0].strip() != "application/json":
                await _send(send, 415, _error("unsupported_media_type", "send application/json"))
                return
            status, payload = await func(self, scope, receive)
            await _send(send, status, orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS))
        except Exception:  # a page bug must never take the collector down or hang a request
            log.exception("console request failed")
            await _send(send, 500, _error("internal_error", "the console failed; see the server log"))

    @staticmethod
    def _refuse(scope: Scope, headers: Mapping[str, str], *, data: bool) -> str | None:
        """Why this request may not see the page (or, with ``data``, its data), or None when it may.

        The page itself holds no data, so a link from elsewhere may open it; data routes answer
        only the page's own (same-origin) requests.
        """
        if not _loopback_client(scope):
            return "the live events page answers loopback clients only"
        host = headers.get("host")
        if not _loopback_host(host):
            return "the Host header must name a loopback address (localhost, 127.0.0.1 or [::1])"
        if not data:
            return None
        origin = headers.get("origin")
        if origin and origin.lower() not in (f"http://{host}".lower(), f"https://{host}".lower()):
            return f"cross-origin request from {origin} refused"
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return "cross-site request refused"
        return None

    # -- reading the stream --------------------------------------------------------------------
    def _stream(self) -> StreamReader:
        if self._reader is None:
            self._reader = StreamReader(self.data_dir)
        return self._reader

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def events(self, after: int, limit: int, source: str | None, kind: str | None, text: str | None) -> dict:
        """Records newer than ``after``, newest first, at most ``limit`` (older ones are skipped)."""
        with self._lock:
            stream = self._stream()
            last = stream.last_seq()
            filtering = bool(source or kind or text)
            window = FILTER_WINDOW if filtering else limit
            start = max(after, last - window)
            records = stream.read(start, last - start) if last > start else []
        out: list[dict] = []
        needle = (text or "").lower().encode()
        for record in reversed(records):
            if source or kind:
                got_source, got_kind = source_and_type(record.data)
                if (source and got_source != source) or (kind and got_kind != kind):
                    continue
            if needle and needle not in record.data.lower():
                continue
            out.append(listed(record))
            if len(out) >= limit:
                break
        return {"last": last, "skipped": max(0, start - after) if after else 0, "events": out}

    # -- status --------------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        async with self._status_lock:
            if self._status and time.monotonic() - self._status[0] < STATUS_TTL_SECONDS:
                return self._status[1]
            value = await asyncio.to_thread(self._compute_status)
            self._status = (time.monotonic(), value)
            return value

    def _compute_status(self) -> dict[str, Any]:
        now = now_ms()
        with self._lock:
            minutes = self._minutes.update(self._stream(), now)
        status: dict[str, Any] = {"now": now, "perMinute": minutes}
        status.update(pipeline_health(self.data_dir, self._stream_lock_read, self._run_sql, self._health,
                                      self.names))
        return status

    def _stream_lock_read(self, func: Callable[[StreamReader], Any]) -> Any:
        with self._lock:
            return func(self._stream())

    # -- SQL, the same way as `clickstream query` -------------------------------------------------
    def _run_sql(self, sql: str) -> tuple[list[str], list[list[Any]]]:
        if self._query is not None:
            return self._query(sql)
        from clickstream.query import run_query

        return run_query(self.data_dir, sql)

    async def run_sql(self, sql: str) -> tuple[int, dict[str, Any]]:
        from clickstream.query import QueryError

        try:
            columns, rows = await asyncio.to_thread(self._run_sql, sql)
        except QueryError as exc:
            if exc.server_fault:  # the pipeline's fault (e.g. its consumer process restarting): retry later
                return 503, {"code": "unavailable", "message": str(exc)}
            return 400, {"code": "invalid_query", "message": str(exc)}
        except Exception as exc:  # the warehouse's message is the caller's to read
            return 400, {"code": "invalid_query", "message": f"query failed: {exc}"}
        return 200, {"columns": columns, "rows": [list(r) for r in rows]}

    def refusals(self) -> list[dict[str, Any]]:
        return [r.__dict__ for r in reversed(self._refused)]


def pipeline_health(data_dir: Path, with_stream: Callable[[Callable[[StreamReader], Any]], Any],
                    run_sql: QueryFn, children: Callable[[], dict[str, Any]] | None,
                    names: ModelNames) -> dict[str, Any]:
    """Backlog, archive, warehouse and child-process health, computed from what is on disk.

    Kept in one function so that a dedicated health endpoint can reuse it (or replace it).
    """
    now = now_ms()

    def from_stream(stream: StreamReader) -> dict[str, Any]:
        last = stream.last_seq()
        marks = stream.checkpoints()
        out = {}
        for consumer in (LOADER_CONSUMER, ARCHIVER_CONSUMER):
            done = marks.get(consumer)  # None: nothing consumed yet (the archiver checkpoints per object)
            oldest = stream.arrival_of((done or 0) + 1) if (done or 0) < last else None
            out[consumer] = {"checkpoint": done, "backlog": last - (done or 0),
                             "lagSeconds": 0.0 if oldest is None else round((now - oldest) / 1000, 1)}
        return {"records": last, "lastSeq": last, "consumers": out}  # dense sequence numbers: no COUNT scan

    stream = with_stream(from_stream)
    objects, newest = 0, None
    root = data_dir / ARCHIVE_DIR / ARCHIVE_PREFIX
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(OBJECT_SUFFIX) and not name.startswith("."):
                objects += 1
                mtime = os.stat(os.path.join(dirpath, name)).st_mtime
                newest = mtime if newest is None or mtime > newest else newest
    archive = {"objects": objects, "newestObject": _iso(newest), **stream["consumers"][ARCHIVER_CONSUMER]}
    warehouse: dict[str, Any] = dict(stream["consumers"][LOADER_CONSUMER])
    schema = names.schema
    try:
        _, rows = run_sql(f"SELECT watermark FROM {schema}.load_state WHERE name = 'events'")
        warehouse["lastMerge"] = rows[0][0] if rows and str(rows[0][0]) > "1970-01-01 00:00:00" else None
        _, rows = run_sql(f"SELECT source, type, COUNT(*) AS n FROM {schema}.events GROUP BY 1, 2 ORDER BY 3 DESC")
        totals = [{"source": s, "type": t, "events": n} for s, t, n in rows]
        _, rows = run_sql(f"SELECT COUNT(*) FROM {schema}.rejected")
        warehouse["rejected"] = rows[0][0]
        warehouse["error"] = None
    except Exception as exc:  # the status page shows why instead of failing
        totals = []
        warehouse["error"] = str(exc)
    return {"stream": {"records": stream["records"], "lastSeq": stream["lastSeq"]}, "archive": archive,
            "warehouse": warehouse, "totals": totals, "processes": children() if children else {}}


def process_health(processes: Mapping[str, Any]) -> dict[str, Any]:
    """Alive, pid and exit code of each child process (``multiprocessing.Process`` objects)."""
    return {name: {"alive": proc.is_alive(), "pid": proc.pid, "exitcode": proc.exitcode}
            for name, proc in processes.items()}


def _iso(epoch_s: float | None) -> str | None:
    return None if epoch_s is None else dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC).isoformat(timespec="seconds")


def _error(code: str, message: str) -> bytes:
    return orjson.dumps({"code": code, "message": message})


async def _send(send: Send, status: int, body: bytes, content_type: bytes = b"application/json", *,
                length: int | None = None, location: str | None = None, allow: str | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body) if length is None else length)
                                                  .encode()), *_SECURITY_HEADERS]
    if location:
        headers.append((b"location", location.encode()))
    if allow:
        headers.append((b"allow", allow.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_json(receive: Receive) -> Any:
    parts, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ValueError("client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_SQL_BYTES:
            raise ValueError(f"body larger than {MAX_SQL_BYTES} bytes")
        parts.append(chunk)
        more = message.get("more_body", False)
    return orjson.loads(b"".join(parts))


def _arg(scope: Scope, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0] if values and values[0] != "" else None


def _int_arg(scope: Scope, name: str, default: int) -> int:
    value = _arg(scope, name)
    return int(value) if value and value.isascii() and value.isdigit() else default  # '²'.isdigit() is True


async def _events(console: Console, scope: Scope, receive: Receive) -> tuple[int, Any]:
    limit = min(max(_int_arg(scope, "limit", EVENTS_PAGE), 1), EVENTS_PAGE)
    result = await asyncio.to_thread(console.events, _int_arg(scope, "after", 0), limit, _arg(scope, "source"),
                                     _arg(scope, "type"), _arg(scope, "q"))
    return 200, result


async def _refused(console: Console, scope: Scope, receive: Receive) -> tuple[int, Any]:
    """The ring only: cheap enough for the page to poll all the time (the tab's badge)."""
    return 200, {"refused": console.refusals(), "ringSize": REFUSED_RING}


async def _rejected(console: Console, scope: Scope, receive: Receive) -> tuple[int, Any]:
    """The ring and the warehouse's ``rejected`` table (a query: polled only while the tab is open)."""
    schema = console.names.schema
    status, warehouse = await console.run_sql(
        f"SELECT reason, source, message_id, received_at, sequence_number, raw_format, raw_record "
        f"FROM {schema}.rejected ORDER BY loaded_at DESC, sequence_number DESC LIMIT 100")
    return 200, {"refused": console.refusals(), "ringSize": REFUSED_RING,
                 "warehouse": warehouse if status == 200 else {"error": warehouse["message"]}}


async def _status(console: Console, scope: Scope, receive: Receive) -> tuple[int, Any]:
    return 200, await console.status()


async def _sql(console: Console, scope: Scope, receive: Receive) -> tuple[int, Any]:
    try:
        body = await _read_json(receive)
        sql = body["sql"]
        if not isinstance(sql, str):
            raise TypeError("sql must be a string")
    except (ValueError, KeyError, TypeError) as exc:
        return 400, {"code": "invalid_request", "message": f'send {{"sql": "..."}} ({exc})'}
    return await console.run_sql(sql)


_ROUTES: dict[str, tuple[str, Callable[[Console, Scope, Receive], Awaitable[tuple[int, Any]]]]] = {
    "api/events": ("GET", _events),
    "api/refused": ("GET", _refused),
    "api/rejected": ("GET", _rejected),
    "api/status": ("GET", _status),
    "api/sql": ("POST", _sql),
}
