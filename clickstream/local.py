"""``clickstream local``: the whole pipeline on one machine."""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import uvicorn

from clickstream import contract
from clickstream.collector import Collector
from clickstream.stream import GroupCommitWriter


def banner(host: str, port: int, write_keys: Mapping[str, str], data_dir: Path) -> str:
    """How to send events to this pipeline: printed at start so a newcomer can copy and paste."""
    key = next(iter(write_keys))
    endpoint = f"http://{host}:{port}"
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
            f"Read what arrived:  clickstream records --data-dir {shlex.quote(str(data_dir))}",
            "Stop with Ctrl-C.",
        ]
    )


def run_local(
    *,
    host: str,
    port: int,
    data_dir: Path,
    write_keys: Mapping[str, str],
    origins: Sequence[str] = ("*",),
) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    data_dir.mkdir(parents=True, exist_ok=True)
    writer = GroupCommitWriter(data_dir)
    app = Collector(write_keys, writer, api_host=f"{host}:{port}{contract.API_PREFIX}", allowed_origins=origins)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        access_log=False,
        log_level="warning",
        http="httptools",
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    print(banner(host, port, write_keys, data_dir), flush=True)
    server.run()
    return 0
