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
from clickstream.local import LocalPipeline, build_pipeline
from clickstream.stream import GroupCommitWriter, LocalStream

WRITE_KEYS = {"test-write-key": "web", "server-write-key": "backend"}
# Everything in the stream loaded, and nothing loaded still waiting for the merge.
CAUGHT_UP = (
    "SELECT (SELECT MAX(CAST(sequence_number AS BIGINT)) FROM clickstream.clickstream_stream) AS loaded, "
    "(SELECT COUNT(*) FROM clickstream.clickstream_stream s, clickstream.load_state w "
    " WHERE w.name = 'events' AND s.refresh_time > w.watermark) AS unmerged")
KEY = "test-write-key"


# The default limit per test is short (pyproject: timeout = 60), so a hang costs a minute, not five.
# Tests that legitimately take longer on a busy 2-core machine get their own limit here, in one
# place (measured under load: CDK synth via the CLI 35 s, the VTL differential 33 s, the stacks'
# module-scoped synth 24 s in setup, kill -9 runs up to 21 s). A test's own timeout mark wins.
SLOW_LIMIT = 120  # every test marked slow: real subprocesses, crash and load tests
LONGER_LIMITS = {
    "tests/test_cdk.py": 240,  # synthesizes the stacks, runs cfn-lint and the CDK CLI
    "tests/test_warehouse_stack.py": 180,
    "tests/test_vtl.py::test_vtl_and_local_produce_the_same_records": 180,  # 800 rendered requests
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is not None:
            continue
        limit = next((n for prefix, n in LONGER_LIMITS.items() if item.nodeid.startswith(prefix)), None)
        if limit is None and item.get_closest_marker("slow") is not None:
            limit = SLOW_LIMIT
        if limit is not None:
            item.add_marker(pytest.mark.timeout(limit))


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


def serve(app, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning",
                            access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    return server, thread


@pytest.fixture
def live_collector(tmp_path: Path) -> Iterator[LiveCollector]:
    """The tracking API and durable stream only."""
    port = free_port()
    app = Collector(WRITE_KEYS, GroupCommitWriter(tmp_path), api_host=f"127.0.0.1:{port}/v1")
    server, thread = serve(app, port)
    yield LiveCollector(f"http://127.0.0.1:{port}", tmp_path, app)
    server.should_exit = True
    thread.join(timeout=10)


@dataclass
class LivePipeline(LiveCollector):
    pipeline: LocalPipeline | None = None

    def wait_loaded(self, timeout: float = 10.0) -> None:
        """Until the warehouse has loaded and merged everything in the stream."""
        stream = LocalStream(self.data_dir)
        try:
            last = stream.last_seq()
        finally:
            stream.close()
        deadline = time.monotonic() + timeout
        while True:
            row = self.query(CAUGHT_UP)[0]
            if (row["loaded"] or 0) >= last and row["unmerged"] == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("warehouse did not catch up")
            time.sleep(0.05)

    def query(self, sql: str) -> list[dict]:
        columns, rows = self.pipeline.warehouse.query(sql)
        return [dict(zip(columns, r, strict=True)) for r in rows]


@pytest.fixture
def live_pipeline(tmp_path: Path) -> Iterator[LivePipeline]:
    """What `clickstream local` runs: API, stream, archiver (1 s buffer) and warehouse loader."""
    port = free_port()
    pipeline = build_pipeline(host="127.0.0.1", port=port, data_dir=tmp_path, write_keys=WRITE_KEYS,
                              archive_buffer_seconds=1.0, load_interval=0.1)
    server, thread = serve(pipeline.app, port)
    yield LivePipeline(f"http://127.0.0.1:{port}", tmp_path, pipeline.app, pipeline)
    server.should_exit = True
    thread.join(timeout=30)
