"""A small HTTP/1.1 keep-alive load generator on asyncio (uvloop), for benchmarks on loopback.

Requests are pre-encoded bytes and responses are parsed only as far as status and length, so one
core drives several thousand requests per second; the benchmark measures its ceiling against a
bare server in the same run so the reader can tell whether the generator was the bottleneck.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int = 0
    ok: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def http_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


async def _worker(
    host: str, port: int, make_request: Callable[[], bytes], deadline: float, limit: list[int],
    result: LoadResult, rate_delay: float,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    scheduled = time.perf_counter() + random.uniform(0, rate_delay)  # spread the connections' phases
    try:
        while time.perf_counter() < deadline and limit[0] != 0:
            if limit[0] > 0:
                limit[0] -= 1
            payload = make_request()
            if rate_delay:
                # Open-loop pacing: requests are due on a fixed schedule, and latency counts from when a
                # request was due, so a slow answer is not hidden by sending the next one late.
                wait = scheduled - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                start = scheduled
                scheduled += rate_delay
            else:
                start = time.perf_counter()
            writer.write(payload)
            status = await _read_response(reader)
            result.latencies_ms.append((time.perf_counter() - start) * 1000)
            result.requests += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 200:
                result.ok += 1
            else:
                result.errors += 1
    finally:
        writer.close()


async def run_load(
    host: str, port: int, make_request: Callable[[], bytes], *, seconds: float, connections: int,
    max_requests: int = -1, rate: float | None = None,
) -> LoadResult:
    """Drive ``connections`` keep-alive connections for ``seconds`` (or ``max_requests`` in total).

    ``rate`` (requests/s over all connections) paces each connection on a fixed schedule (open loop),
    for latency at a given load level.
    """
    result = LoadResult()
    limit = [max_requests]
    rate_delay = connections / rate if rate else 0.0
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(
        *(_worker(host, port, make_request, deadline, limit, result, rate_delay) for _ in range(connections))
    )
    result.seconds = time.perf_counter() - start
    return result


def run(coro):
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - non-posix
        return asyncio.run(coro)
