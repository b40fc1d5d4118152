"""``clickstream local``: the whole pipeline on one machine."""

from __future__ import annotations

import asyncio
import logging
import secrets
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from clickstream import contract, server
from clickstream.archive import DEFAULT_BUFFER_BYTES, DEFAULT_BUFFER_SECONDS
from clickstream.collector import ADMIN_QUERY_PATH, Collector
from clickstream.console import PAGE_PATH, Console, process_health
from clickstream.health import HEALTH_PATH, HealthReport
from clickstream.query import LOCAL_STATE_FILE, write_state
from clickstream.server import ServerLimits
from clickstream.stream import GroupCommitWriter, Limits
from clickstream.warehouse import LoaderProcess


def banner(host: str, port: int, write_keys: Mapping[str, str], data_dir: Path) -> str:
    """How to send events to this pipeline: printed at start so a newcomer can copy and paste."""
    key = next(iter(write_keys))
    endpoint = f"http://{host}:{port}"
    invoked = Path(sys.argv[0]) if sys.argv and Path(sys.argv[0]).name == "clickstream" else None
    prog = shlex.quote(str(invoked)) if invoked else "clickstream"  # e.g. .venv/bin/clickstream
    body = '{"userId":"user-1","event":"Signed Up","properties":{"plan":"pro"}}'
    curl = (
        f"curl -sS -u {shlex.quote(key + ':')} -H 'Content-Type: application/json' "
        f"-d {shlex.quote(body)} {endpoint}/v1/track"
    )
    sources = ", ".join(f"{k} -> {v}" for k, v in write_keys.items())
    return "\n".join(
        [
            f"Clickstream local pipeline listening on {endpoint}",
            f"  write keys : {sources}",
            f"  data dir   : {data_dir}",
            f"  live events: http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}{PAGE_PATH}",
            "",
            "Send an event with curl:",
            f"  {curl}",
            "",
            "Or with the official Segment Python SDK (pip install segment-analytics-python):",
            "  import segment.analytics as analytics",
            f"  analytics.write_key = {key!r}",
            f"  analytics.host = {endpoint!r}",
            "  analytics.track('user-1', 'Signed Up', {'plan': 'pro'})",
            "  analytics.flush()",
            "",
            "Node (npm install @segment/analytics-node; save as send.mjs, run with node send.mjs):",
            "  import { Analytics } from '@segment/analytics-node'",
            f"  const analytics = new Analytics({{ writeKey: {key!r}, host: {endpoint!r} }})",
            "  analytics.on('error', (err) => console.error('clickstream:', err.reason ?? err))",
            "  analytics.track({ userId: 'user-1', event: 'Signed Up', properties: { plan: 'pro' } })",
            "  await analytics.closeAndFlush()  // send now; without it the process waits for the 10 s timer",
            "",
            "Browser (@segment/analytics-next; the settings endpoint is served by this API):",
            "  AnalyticsBrowser.load(",
            f"    {{ writeKey: {key!r}, cdnURL: {endpoint!r} }},",
            f"    {{ integrations: {{ 'Segment.io': {{ apiHost: {f'{host}:{port}{contract.API_PREFIX}'!r}, "
            "protocol: 'http' } } },",
            "  )",
            "",
            "Query the warehouse (Segment-style tables, queryable within a second or two):",
            f"  {prog} query --data-dir {shlex.quote(str(data_dir))} "
            "'SELECT event, user_id, timestamp FROM clickstream.tracks ORDER BY timestamp DESC LIMIT 10'",
            f"Raw stream records:  {prog} records --data-dir {shlex.quote(str(data_dir))}",
            f"Archive (Firehose layout): {data_dir / 'archive'} (written every 5 MiB or 300 s; now: "
            f"{prog} archive --flush --data-dir {shlex.quote(str(data_dir))})",
            "Stop with Ctrl-C.",
        ]
    )


@dataclass
class LocalPipeline:
    """Everything ``clickstream local`` runs, wired together; ``app`` is the ASGI entry point."""

    app: Collector
    warehouse: LoaderProcess  # the warehouse loader and the archiver, in a child process
    health: HealthReport  # what GET /health answers


def build_pipeline(
    *,
    host: str,
    port: int,
    data_dir: Path,
    write_keys: Mapping[str, str],
    origins: Sequence[str] = ("*",),
    archive_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    archive_buffer_seconds: float = DEFAULT_BUFFER_SECONDS,
    load_interval: float = 0.5,
    limits: Limits | None = None,
) -> LocalPipeline:
    """Collector + durable stream, archiver and warehouse loader, started and stopped together."""
    data_dir.mkdir(parents=True, exist_ok=True)
    writer = GroupCommitWriter(data_dir, limits)
    warehouse = LoaderProcess(data_dir, interval=load_interval, archive={
        "buffer_bytes": archive_buffer_bytes, "buffer_seconds": archive_buffer_seconds})
    token = secrets.token_urlsafe(24)
    admin_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    state_path = data_dir / LOCAL_STATE_FILE
    health = HealthReport(data_dir, writer=writer, consumer=warehouse, archive_buffer_seconds=archive_buffer_seconds)

    def startup() -> None:
        warehouse.start()
        write_state(data_dir, f"http://{admin_host}:{port}{ADMIN_QUERY_PATH}", token,
                    health_url=f"http://{admin_host}:{port}{HEALTH_PATH}")

    def shutdown() -> None:
        # The writer has committed everything queued; archive and load what is left, then close.
        state_path.unlink(missing_ok=True)
        warehouse.stop()
        health.close()

    app = Collector(write_keys, writer, api_host=f"{host}:{port}{contract.API_PREFIX}", allowed_origins=origins,
                    on_startup=[startup], on_shutdown=[shutdown], query=warehouse.query, admin_token=token)
    app.console = Console(data_dir, write_keys, health=lambda: process_health({"loader+archiver": warehouse.process}))

    async def health_route(scope: dict, headers: dict[str, str], receive) -> tuple[int, bytes, list]:
        doc = await asyncio.to_thread(health)
        return (200 if doc["status"] == "ok" else 503), orjson.dumps(doc), [(b"cache-control", b"no-store")]

    app.add_route(HEALTH_PATH, health_route)
    health.refusals.append(app.refused)  # the API's refusals by error code
    return LocalPipeline(app, warehouse, health)


def run_local(*, host: str, port: int, data_dir: Path, write_keys: Mapping[str, str],
              server_limits: ServerLimits | None = None, forwarded_allow_ips: str | None = None, **options) -> int:
    """Serve until SIGTERM or Ctrl-C; after the graceful stop, exit status 0."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    pipeline = build_pipeline(host=host, port=port, data_dir=data_dir, write_keys=write_keys, **options)
    config = server.config(pipeline.app, host, port, limits=server_limits, forwarded_allow_ips=forwarded_allow_ips,
                           loop="uvloop" if sys.platform != "win32" else "asyncio")
    protocol = config.http  # server.config always sets our protocol class, never a name
    assert isinstance(protocol, type) and issubclass(protocol, server.GuardedProtocol)
    pipeline.health.refusals.append(protocol.refused)  # and the server's own (408, 414, 431, 503)
    print(banner(host, port, write_keys, data_dir), flush=True)
    server.Server(config).run()
    return 0
