"""The warehouse consumer recovers on its own: a failed merge is retried without new traffic (also
across a restart), and a killed consumer process is restarted and catches up."""

from __future__ import annotations

import os
import signal
import threading
import time

import duckdb
import httpx
import pytest

from clickstream.ingest import RequestInfo, build_records
from clickstream.stream import LocalStream
from clickstream.warehouse import RETRY_MAX_SECONDS, Loader, QueryFailed, Warehouse
from tests.conftest import KEY, WRITE_KEYS


def put_events(data_dir, ids: list[str]) -> None:
    body = ('{"batch":[' + ",".join(f'{{"type":"track","event":"E","userId":"u","messageId":"{m}"}}' for m in ids)
            + f'],"writeKey":"{KEY}"}}').encode()
    info = RequestInfo(route="batch", request_id=f"req-{ids[0]}", received_at_ms=int(time.time() * 1000), ip="::1")
    stream = LocalStream(data_dir)
    try:
        stream.put(build_records(info, body, WRITE_KEYS))
    finally:
        stream.close()


class FlakyMerge:
    """The warehouse's merge, failing (like an out-of-memory or I/O error) while ``broken`` is set."""

    def __init__(self, warehouse: Warehouse) -> None:
        self.real = warehouse.merge
        self.broken = threading.Event()
        self.failed = 0
        warehouse.merge = self  # Warehouse.load and the Loader both call warehouse.merge()

    def __call__(self) -> None:
        if self.broken.is_set():
            self.failed += 1
            raise duckdb.OutOfMemoryException("injected: failed to allocate")
        self.real()


def merged_ids(warehouse: Warehouse) -> list[str]:
    return [r[0] for r in warehouse.query("SELECT message_id FROM clickstream.events ORDER BY 1")[1]]


def wait_for(predicate, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_failed_merge_is_retried_until_merged_without_new_traffic(tmp_path):
    warehouse = Warehouse.in_dir(tmp_path)
    flaky = FlakyMerge(warehouse)
    flaky.broken.set()
    loader = Loader(warehouse, tmp_path, interval=0.1)
    loader.start()
    try:
        put_events(tmp_path, ["m1", "m2", "m3"])  # then no traffic at all
        wait_for(lambda: warehouse.last_loaded_seq() == 3 and flaky.failed >= 3, timeout=10)
        assert merged_ids(warehouse) == [] and loader.failures >= 3 and "injected" in loader.last_error
        flaky.broken.clear()  # the cause goes away
        took = wait_for(lambda: merged_ids(warehouse) == ["m1", "m2", "m3"], timeout=5)
        assert took < RETRY_MAX_SECONDS + 0.5, f"queryable {took:.2f} s after the failure cleared"
        wait_for(lambda: loader.failures == 0, timeout=2)
        assert loader.last_error is None
    finally:
        loader.stop()
        warehouse.close()


def test_a_failed_segment_tables_pass_is_retried_without_new_traffic(tmp_path, monkeypatch):
    """The per-source tables follow `events` even when their pass failed and no traffic comes."""
    from clickstream import segment_tables
    from clickstream import warehouse as warehouse_module

    monkeypatch.setattr(warehouse_module, "SPREAD_RETRY_SECONDS", 0.2)
    real, calls = segment_tables.DuckDBSegment.spread, []

    def failing_once(self):
        calls.append(1)
        if len(calls) == 1:
            raise duckdb.IOException("injected: disk hiccup")
        return real(self)

    monkeypatch.setattr(segment_tables.DuckDBSegment, "spread", failing_once)
    warehouse = Warehouse.in_dir(tmp_path)
    loader = Loader(warehouse, tmp_path, interval=0.1)
    loader.start()
    try:
        put_events(tmp_path, ["p1", "p2"])  # then no traffic at all
        wait_for(lambda: merged_ids(warehouse) == ["p1", "p2"], timeout=10)
        wait_for(lambda: warehouse.query("SELECT COUNT(*) FROM information_schema.tables "
                                         "WHERE table_schema = 'web' AND table_name = 'tracks'")[1][0][0] == 1
                 and warehouse.query("SELECT COUNT(*) FROM web.tracks")[1][0][0] == 2, timeout=10)
        assert len(calls) >= 2
    finally:
        loader.stop()
        warehouse.close()


def test_rows_left_unmerged_at_shutdown_are_merged_by_the_next_start(tmp_path):
    warehouse = Warehouse.in_dir(tmp_path)
    flaky = FlakyMerge(warehouse)
    flaky.broken.set()
    loader = Loader(warehouse, tmp_path, interval=0.1)
    loader.start()
    put_events(tmp_path, ["s1", "s2"])
    wait_for(lambda: warehouse.last_loaded_seq() == 2 and flaky.failed >= 2, timeout=10)
    loader.stop()  # its last pass fails too: loaded, not merged
    assert merged_ids(warehouse) == []
    warehouse.close()

    warehouse = Warehouse.in_dir(tmp_path)
    loader = Loader(warehouse, tmp_path, interval=0.1)
    loader.start()  # no new traffic
    try:
        took = wait_for(lambda: merged_ids(warehouse) == ["s1", "s2"], timeout=5)
        assert took < 1.5
    finally:
        loader.stop()
        warehouse.close()


@pytest.mark.slow
def test_a_killed_consumer_process_is_restarted_and_events_still_land(live_pipeline):
    consumer = live_pipeline.pipeline.warehouse
    consumer.restart_backoff = (0.2, 2.0)
    first = consumer.process.pid
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not consumer.process.is_alive() or consumer.process.pid != first, timeout=5)
    if consumer.process.pid == first:  # between death and restart: queries fail as a server fault
        try:
            consumer.query("SELECT 1")
        except QueryFailed as exc:
            assert exc.server_fault
    # events acknowledged while it is down or restarting are loaded once it is back
    batch = [{"type": "track", "event": "K", "userId": "u", "messageId": f"k-{i}"} for i in range(10)]
    r = httpx.post(live_pipeline.url + "/v1/batch", json={"batch": batch, "writeKey": KEY}, timeout=10)
    assert r.status_code == 200
    wait_for(lambda: consumer.restarts == 1 and consumer.process.is_alive(), timeout=15)
    assert consumer.process.pid != first
    status = consumer.status()
    assert status["alive"] and status["restarts"] == 1 and status["last_exit_code"] == -signal.SIGKILL
    live_pipeline.wait_loaded(timeout=15)
    ids = [r["id"] for r in live_pipeline.query("SELECT id FROM clickstream.tracks ORDER BY id")]
    assert ids == sorted(f"k-{i}" for i in range(10))
