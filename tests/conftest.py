"""Shared fixtures: a real collector on loopback, in a thread, over a fresh data dir."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import uvicorn

from clickstream.collector import Collector
from clickstream.stream import GroupCommitWriter, LocalStream

WRITE_KEYS = {"test-write-key": "web", "server-write-key": "backend"}
KEY = "test-write-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveCollector:
    url: str
    data_dir: Path
    app: Collector

    def records(self) -> list[dict]:
        stream = LocalStream(self.data_dir)
        try:
            return [orjson.loads(r.data) for r in stream.iter_from(0)]
        finally:
            stream.close()

    def raw_records(self):
        stream = LocalStream(self.data_dir)
        try:
            return list(stream.iter_from(0))
        finally:
            stream.close()


@pytest.fixture
def live_collector(tmp_path: Path) -> Iterator[LiveCollector]:
    port = free_port()
    writer = GroupCommitWriter(tmp_path)
    app = Collector(WRITE_KEYS, writer, api_host=f"127.0.0.1:{port}/v1")
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning",
                            access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("collector did not start")
        time.sleep(0.01)
    yield LiveCollector(f"http://127.0.0.1:{port}", tmp_path, app)
    server.should_exit = True
    thread.join(timeout=10)
