"""The local tracking API: the same contract as the deployed API Gateway, as a plain ASGI app.

``Collector(...)`` is an ASGI callable, so tests can drive it in process; ``clickstream local``
serves it with uvicorn. A 200 is sent only after the request's records are committed to the
local stream (see :mod:`clickstream.stream`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson

from clickstream import contract
from clickstream.ingest import BodyReader, IngestError, RequestIds, RequestInfo, build_records, media_type_ok
from clickstream.stream import DiskFull, GroupCommitWriter, StreamFull, now_ms

log = logging.getLogger("clickstream.collector")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]  # status, JSON body, extra headers
# A route handler gets the scope, the lower-cased request headers and ``receive``; raising
# IngestError answers with that error (Segment-shaped body, Retry-After when retryable).
Handler = Callable[[Scope, dict[str, str], Receive], Awaitable[Answer]]

_SUCCESS = contract.SUCCESS_BODY.encode()
ADMIN_QUERY_PATH = "/_clickstream/query"
OPENAPI_PATH = "/openapi.json"
ADMIN_TOKEN_HEADER = "x-clickstream-token"


class Collector:
    """ASGI app for the tracking API.

    ``writer`` is started and stopped with the ASGI lifespan (or by the caller when there is none).
    ``api_host`` is what analytics-next is told to send to (``host:port/v1``, no scheme).
    """

    def __init__(
        self,
        write_keys: Mapping[str, str],
        writer: GroupCommitWriter,
        *,
        api_host: str = "127.0.0.1:8080/v1",
        protocol: str = "http",
        allowed_origins: Sequence[str] = ("*",),
        on_startup: Sequence[Callable[[], None]] = (),
        on_shutdown: Sequence[Callable[[], None]] = (),
        query: Callable[[str], tuple[list[str], list[tuple]]] | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.write_keys = dict(write_keys)
        self.writer = writer
        self.api_host = api_host
        self.protocol = protocol
        self.allowed_origins = tuple(allowed_origins)
        self.on_startup = list(on_startup)
        self.on_shutdown = list(on_shutdown)
        self.query = query
        self.admin_token = admin_token
        self.requests = 0
        self.events = 0
        self.refused: dict[str, int] = {}
        self.console: Any = None  # clickstream.console.Console: the live events page, when mounted
        self._request_id = RequestIds()
        self._cors_any = self._cors_headers(None) if "*" in self.allowed_origins else None
        self._routes: dict[str, tuple[tuple[str, ...] | None, Handler]] = {}
        self._mounts: list[tuple[str, ASGIApp]] = []
        self.add_route(ADMIN_QUERY_PATH, self._admin_query, methods=None)  # hidden (404) unless authorised

    # -- extension points ---------------------------------------------------------------------
    def add_route(self, path: str, handler: Handler, methods: Sequence[str] | None = ("GET", "HEAD")) -> None:
        """Serve ``path`` exactly with ``handler`` (JSON answers); other methods get 405.

        ``methods=None`` hands every method to the handler. Tracking routes cannot be shadowed.
        """
        if contract.route_of(path) is not None or path.startswith(contract.SETTINGS_PREFIX):
            raise ValueError(f"{path} is a tracking API path")
        self._routes[path] = (tuple(methods) if methods is not None else None, handler)

    def mount(self, prefix: str, app: ASGIApp) -> None:
        """Hand every HTTP request under ``prefix`` (e.g. ``/_clickstream/ui/``) to another ASGI app
        as is: its own responses, headers and body reading. Routes added with add_route win."""
        if not prefix.startswith("/_clickstream/"):
            raise ValueError("mounted apps live under /_clickstream/")
        self._mounts.append((prefix, app))

    # -- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] not in self._routes:
            if self.console is not None and self.console.serves(scope["path"]):
                return await self.console(scope, receive, send)
            for prefix, app in self._mounts:
                if scope["path"].startswith(prefix):
                    await app(scope, receive, send)
                    return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        cors = self._cors_any or self._cors_headers(headers.get("origin"))
        try:
            status, body, extra = await self._handle(scope, headers, receive)
        except IngestError as exc:
            status, body, extra = exc.status, exc.body(), self._retry_after(exc.error)
            extra += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
            self.refused[exc.code] = self.refused.get(exc.code, 0) + 1
        except Exception:  # never let a bug become a hung connection or a silent 200
            log.exception("unexpected error")
            err = IngestError("internal_error")
            status, body, extra = err.status, err.body(), self._retry_after(err.error)
        if status >= 400 and self.console is not None:
            self.console.refused(scope, headers, status, body)
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *cors,
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.writer.start()
                for hook in self.on_startup:
                    hook()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.writer.stop()  # commits everything already queued
                for hook in self.on_shutdown:
                    hook()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- routing ------------------------------------------------------------------------------
    async def _handle(
        self, scope: Scope, headers: dict[str, str], receive: Receive
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        method = scope["method"]
        path = scope["path"]
        if method == "OPTIONS":
            return 204, b"", []
        route = self._routes.get(path)
        if route is not None:
            methods, handler = route
            if methods is not None and method not in methods:
                raise IngestError("method_not_allowed", f"{path} takes {', '.join(methods)}",
                                  headers={"Allow": ", ".join((*methods, "OPTIONS"))})
            return await handler(scope, headers, receive)
        if path == OPENAPI_PATH and method in ("GET", "HEAD"):
            from clickstream.openapi import document

            return 200, orjson.dumps(document(f"http://{self.api_host.removesuffix(contract.API_PREFIX)}")), []
        prefix, suffix = contract.SETTINGS_PREFIX, contract.SETTINGS_SUFFIX
        if path.startswith(prefix) and path.endswith(suffix) and len(path) > len(prefix) + len(suffix):
            if method not in ("GET", "HEAD"):
                raise IngestError("method_not_allowed", headers={"Allow": "GET, HEAD, OPTIONS"})
            return self._settings(path[len(prefix) : -len(suffix)])
        segment = contract.route_of(path)
        if segment is None:
            raise IngestError("not_found", f"no route {path}")
        if method != "POST":
            raise IngestError("method_not_allowed", f"{path} takes POST", headers={"Allow": "POST, OPTIONS"})
        if not media_type_ok(headers.get("content-type")):
            raise IngestError("unsupported_media_type")
        body = await self._read_body(headers, receive)
        if segment == contract.METRICS_ROUTE:
            return 200, _SUCCESS, []
        info = RequestInfo(
            route=segment,
            request_id=self._request_id(),
            received_at_ms=now_ms(),
            ip=(scope.get("client") or ("",))[0] or "",
            user_agent=headers.get("user-agent"),
            authorization=headers.get("authorization"),
        )
        records = build_records(info, body, self.write_keys)
        try:
            await self.writer.submit(records)
        except StreamFull as exc:
            raise IngestError("throttled", f"the local stream is behind ({exc}); retry later") from exc
        except DiskFull as exc:
            raise IngestError("unavailable", f"events cannot be stored ({exc}); retry later") from exc
        except IngestError:
            raise
        except Exception as exc:
            log.error("stream write failed: %s", exc)
            raise IngestError("unavailable") from exc
        self.requests += 1
        self.events += len(records)
        return 200, _SUCCESS, []

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes:
        encoding = headers.get("content-encoding")
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > contract.MAX_REQUEST_BYTES and not encoding:
            raise IngestError("request_too_large")
        reader = BodyReader(encoding)
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise IngestError("invalid_request", "client disconnected before sending the whole body")
            reader.feed(message.get("body", b""))
            more = message.get("more_body", False)
        return reader.finish()

    async def _admin_query(
        self, scope: Scope, headers: dict[str, str], receive: Receive
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Read-only SQL for `clickstream query` while this process owns the warehouse file."""
        client = (scope.get("client") or ("",))[0]
        if (self.query is None or not self.admin_token or client not in ("127.0.0.1", "::1")
                or headers.get(ADMIN_TOKEN_HEADER) != self.admin_token):
            raise IngestError("not_found", "no route " + ADMIN_QUERY_PATH)
        body = await self._read_body(headers, receive)
        try:
            sql = orjson.loads(body)["sql"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise IngestError("invalid_request", 'admin query body must be {"sql": "..."}') from exc
        from clickstream.query import QueryError, check_read_only
        from clickstream.warehouse import QueryFailed

        try:
            check_read_only(sql)  # an early, friendly error; the guard is where the query runs
            columns, rows = await asyncio.to_thread(self.query, sql)
        except QueryError as exc:
            raise IngestError("invalid_request", str(exc)) from exc
        except QueryFailed as exc:  # the query's fault is a 400; the server's (memory, I/O, process) a 503
            raise IngestError("unavailable" if exc.server_fault else "invalid_request",
                              f"query failed: {exc}") from exc
        return 200, orjson.dumps({"columns": columns, "rows": rows}, default=str), []

    def _settings(self, write_key: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        if write_key not in self.write_keys:
            raise IngestError("invalid_write_key")
        body = contract.settings_body(write_key, self.api_host, protocol=self.protocol)
        return 200, orjson.dumps(body), []

    # -- headers ------------------------------------------------------------------------------
    def _cors_headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        if "*" in self.allowed_origins:
            allow = "*"
        elif origin and origin in self.allowed_origins:
            allow = origin
        else:
            allow = self.allowed_origins[0] if self.allowed_origins else ""
        return [
            (b"access-control-allow-origin", allow.encode("latin-1")),
            (b"access-control-allow-methods", contract.CORS_ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", contract.CORS_ALLOW_HEADERS.encode()),
            (b"access-control-max-age", str(contract.CORS_MAX_AGE_SECONDS).encode()),
            (b"vary", b"Origin"),
        ]

    @staticmethod
    def _retry_after(error: contract.ErrorCode) -> list[tuple[bytes, bytes]]:
        if error.retryable:  # the contract's rule: the SDKs retry these, so say when
            return [(b"retry-after", str(contract.RETRY_AFTER_SECONDS).encode())]
        return []
