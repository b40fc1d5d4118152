"""The HTTP server of ``clickstream local``: uvicorn with the limits a public endpoint needs.

uvicorn's httptools protocol has no header size limit, no timeout while headers or a body are
being sent, and no cap on connections, so slow or hostile clients could hold memory and file
descriptors for ever. :class:`GuardedProtocol` adds them; answers it gives by itself (the app never
sees those requests) are JSON like the API's errors and close the connection:

- 431 ``header_too_large`` when the headers exceed ``max_header_bytes``, and 414 ``uri_too_long``
  when the URL exceeds ``max_url_chars``: 10,240 each by default, API Gateway's limits for a
  Regional REST API ("Total combined size of all header values, including header names, values,
  any line terminators, and whitespaces: 10240 Bytes"; "Length, in characters, of the URL for a
  Regional API: 10240", https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-execution-service-limits-table.html);
- 408 ``request_timeout`` when the headers are not complete ``header_timeout`` seconds after the
  connection opened (or, on a kept-alive connection, after the request's first byte), or the body
  not complete ``body_timeout`` seconds after the headers;
- at ``max_connections``, a new connection takes the place of the one that has waited longest
  for a request (idle, or its headers unfinished); if every connection is busy with a request,
  the new one gets 503 ``too_many_connections`` (with Retry-After) and is closed at once, so
  descriptors are never exhausted and a client learns why.

Closing a timed-out connection frees what its request held (the app's body buffer goes with it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import logging
import signal
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from clickstream import contract

API_GATEWAY_MAX_HEADER_BYTES = 10240  # names, values, ": " and line ends (see the module docstring)
API_GATEWAY_MAX_URL_CHARS = 10240
SWEEP_SECONDS = 0.1  # how often deadlines are checked: timeouts fire up to this late
EVICT_IDLE_SECONDS = 0.5  # at the cap, a connection waiting this long for a request may be closed
TRIM_AFTER_BYTES = 16 * 1024 * 1024  # abandoned body bytes before the heap is handed back to the OS


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim: freed request bodies are ~64 KiB blocks that glibc keeps in the heap
    for reuse, so without it memory held by clients that left is never returned (measured: 300
    unfinished 400 KiB bodies, RSS 65 -> 190 MB, still 190 MB after they timed out)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


MALLOC_TRIM = _malloc_trim()


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = API_GATEWAY_MAX_HEADER_BYTES  # header names, values and framing
    max_url_chars: int = API_GATEWAY_MAX_URL_CHARS
    header_timeout: float = 10.0  # seconds to send the request line and headers
    body_timeout: float = 30.0  # seconds to send the body once the headers are in (SDKs time out at 10-15 s)
    max_connections: int = 1000  # open connections; beyond: 503 and close (keep below the fd limit)


def refusal(status: int, code: str, message: str, retry_after: bool = False) -> bytes:
    """A complete HTTP/1.1 response that ends the connection."""
    body = orjson.dumps({"code": code, "message": message})
    head = [STATUS_LINE[status], b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n", b"connection: close\r\n"]
    if retry_after:
        head.append(b"retry-after: " + str(contract.RETRY_AFTER_SECONDS).encode() + b"\r\n")
    return b"".join([*head, b"\r\n", body])


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header size, header/body time and connection limits."""

    limits = ServerLimits()
    refused: dict[str, int] = {}  # code -> count, per server class (see protocol_for)
    released = 0  # body bytes of requests abandoned (timed out, disconnected) since the last trim

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._body_bytes = 0  # of the current request
        self._header_bytes = 0  # header names, values and framing, as API Gateway counts them
        self._raw_header_bytes = 0  # bytes received while the headers were not complete
        self._heads_completed = 0  # request heads parsed on this connection (pipelining)
        self._in_headers = True
        self._header_overflow: str | None = None
        self._deadline: float | None = None  # loop time when the current phase times out
        self._phase = "headers"
        self._closed = False
        self._waiting_since = 0.0  # loop time since this connection waits for a request's first byte

    # -- timers -------------------------------------------------------------------------------
    # A deadline per connection and one sweep over all connections every SWEEP_SECONDS, rather
    # than a timer per request: two call_later + cancel per request cost ~15 us (measured with
    # uvloop), a fifth of a small request's whole budget; setting a float costs ~0.2 us.
    def _arm(self, seconds: float, phase: str) -> None:
        self._deadline = self.loop.time() + seconds
        self._phase = phase
        state = self.server_state
        if not getattr(state, "_clickstream_sweeping", False):
            state._clickstream_sweeping = True  # type: ignore[attr-defined]
            self.loop.call_later(SWEEP_SECONDS, _sweep, self.connections, self.loop)

    def _disarm(self) -> None:
        self._deadline = None

    def _timed_out(self, phase: str) -> None:
        self._deadline = None
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            return
        self._refuse(408, "request_timeout", f"the request {phase} took longer than "
                     f"{self.limits.header_timeout if phase == 'headers' else self.limits.body_timeout:g} s")

    def _refuse(self, status: int, code: str, message: str, retry_after: bool = False) -> None:
        type(self).refused[code] = type(self).refused.get(code, 0) + 1
        self._closed = True
        if not self.transport.is_closing():
            self.transport.write(refusal(status, code, message, retry_after))
            self.transport.close()

    # -- connection ---------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._waiting_since = self.loop.time()
        if len(self.connections) > self.limits.max_connections and not self._evict_one():
            self._refuse(503, "too_many_connections",
                         f"the server has {self.limits.max_connections} open connections; retry later", True)
            return
        self._arm(self.limits.header_timeout, "headers")

    def _evict_one(self) -> bool:
        """At the cap, make room by closing the connection that has waited longest for a request
        (idle keep-alive, or headers still unfinished) for at least EVICT_IDLE_SECONDS; never one
        whose request is being read or answered. So clients that hold connections without sending
        (slowloris) cannot lock out a client that sends its request at once."""
        now = self.loop.time()
        oldest: GuardedProtocol | None = None
        for other in self.connections:
            if (other is self or not isinstance(other, GuardedProtocol) or other._closed or not other._in_headers
                    or (other.cycle is not None and not other.cycle.response_complete)
                    or now - other._waiting_since < EVICT_IDLE_SECONDS):
                continue
            if oldest is None or other._waiting_since < oldest._waiting_since:
                oldest = other
        if oldest is None:
            return False
        if oldest._raw_header_bytes:
            oldest._refuse(408, "request_timeout", "the server needed the connection of this unfinished request")
        else:  # an idle connection: close it like a keep-alive timeout would
            type(self).refused["evicted_idle"] = type(self).refused.get("evicted_idle", 0) + 1
            oldest._closed = True
            oldest.transport.close()
        self.connections.discard(oldest)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._release()
        super().connection_lost(exc)

    def _release(self) -> None:
        """Count an abandoned request's body as freed; now and then give freed heap back to the OS."""
        cls = type(self)
        cls.released += self._body_bytes
        self._body_bytes = 0
        if cls.released >= TRIM_AFTER_BYTES and MALLOC_TRIM is not None:
            cls.released = 0
            self.loop.call_later(0.5, MALLOC_TRIM)  # once the app has dropped its buffers too

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._unset_keepalive_if_required()
        while self._in_headers:
            # The parser reports a header only once it is complete, buffering it until then; so the
            # raw bytes before the end of the headers (request line included) are bounded too.
            room = self.limits.max_header_bytes + self.limits.max_url_chars + 1024 - self._raw_header_bytes
            if len(data) <= room:
                self._raw_header_bytes += len(data)
                break
            completed = self._heads_completed
            self._feed(data[:room])
            if self._closed:
                return
            data = data[room:]
            if self._in_headers and self._heads_completed == completed:
                self._header_overflow = "headers"  # one head, still open after all that room
                self._refuse_headers()
                return
            # else: pipelined requests, a head completed in the slice: go on with the next one
        self._feed(data)

    def _refuse_headers(self) -> None:
        self._refuse(431, "header_too_large", f"the headers are larger than {self.limits.max_header_bytes} bytes")

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # as uvicorn: upgrade to a WebSocket if there is one
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._header_overflow == "url":
                self._refuse(414, "uri_too_long", f"the URL is longer than {self.limits.max_url_chars} characters")
            elif self._header_overflow:
                self._refuse_headers()
            else:
                self._refuse(400, "invalid_request", "invalid HTTP request")

    # -- parser callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._deadline is None:  # a kept-alive connection: this request's first byte starts the clock
            self._arm(self.limits.header_timeout, "headers")

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_url_chars:
            self._header_overflow = "url"
            raise ValueError("url too long")  # stops the parser; data_received answers 414

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # "name: value\r\n"
        if self._header_bytes > self.limits.max_header_bytes:
            self._header_overflow = "headers"
            raise ValueError("header too large")  # stops the parser; data_received answers 431
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._heads_completed += 1
        self._raw_header_bytes = 0
        self._arm(self.limits.body_timeout, "body")
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._waiting_since = self.loop.time()
        self._body_bytes = 0  # a finished request's memory is reused by the next ones; no trim needed
        self._in_headers = True  # what comes next on this connection is the next request's head
        super().on_message_complete()


def _sweep(connections: set, loop: Any) -> None:
    """Time out connections past their deadline; runs for as long as the server's loop does."""
    now = loop.time()
    for connection in list(connections):
        deadline = getattr(connection, "_deadline", None)
        if deadline is not None and now >= deadline:
            connection._timed_out(connection._phase)
    loop.call_later(SWEEP_SECONDS, _sweep, connections, loop)


def protocol_for(limits: ServerLimits) -> type[GuardedProtocol]:
    """A protocol class bound to ``limits`` (uvicorn instantiates it per connection)."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits, "refused": {}})


class Server(uvicorn.Server):
    """uvicorn's server, but a stop asked for by SIGTERM or Ctrl-C is a normal exit.

    uvicorn re-raises the signal after its graceful shutdown, so the process dies of it (exit
    143) before Python's exit handlers run, and multiprocessing warns about leaked semaphores.
    Here the graceful shutdown is the end: the process exits 0 and cleans up.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


FD_RESERVE = 128  # descriptors kept for everything but client connections (files, pipes, the loop)


def fit_descriptors(limits: ServerLimits) -> ServerLimits:
    """Make room for ``max_connections`` under the process's open-file limit.

    The connection cap only works below that limit: past it, accept() fails and every client is
    starved. The soft limit is raised towards the hard one as far as needed; if the hard limit is
    too low, the cap is lowered to fit, with a warning.
    """
    try:
        import resource
    except ImportError:  # not on POSIX
        return limits
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = limits.max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        fitted = max(soft - FD_RESERVE, 1)
        logging.getLogger("clickstream.server").warning(
            "the open-file limit is %d: at most %d connections instead of %d", soft, fitted, limits.max_connections)
        return dataclasses.replace(limits, max_connections=fitted)
    return limits


def config(app: Any, host: str, port: int, *, limits: ServerLimits | None = None,
           forwarded_allow_ips: str | None = None, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration of ``clickstream local`` (also used by tests, so they test it).

    Forwarding headers (X-Forwarded-For/-Proto) are trusted only from ``forwarded_allow_ips``:
    by default the client IP is the TCP peer, as API Gateway's ``$context.identity.sourceIp``.
    """
    return uvicorn.Config(
        app, host=host, port=port, lifespan="on", access_log=False, log_level="warning",
        http=protocol_for(fit_descriptors(limits or ServerLimits())),
        proxy_headers=forwarded_allow_ips is not None, forwarded_allow_ips=forwarded_allow_ips,
        timeout_graceful_shutdown=10, **options)
