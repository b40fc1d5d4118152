"""Backpressure: a full backlog or a full disk gets 429/503 with Retry-After, and the SDK's retries
bring every event in once the consumer catches up."""

from __future__ import annotations

import time

import httpx
from segment.analytics import Client

from clickstream.local import build_pipeline
from clickstream.stream import Limits, LocalStream
from tests.conftest import KEY, WRITE_KEYS, LivePipeline, free_port, serve


def test_backlog_limit_answers_429_and_the_sdk_retries_until_all_land(tmp_path):
    port = free_port()
    limits = Limits(max_backlog=150, check_seconds=0.02)
    pipeline = build_pipeline(host="127.0.0.1", port=port, data_dir=tmp_path, write_keys=WRITE_KEYS,
                              load_interval=1.0, limits=limits)
    server, thread = serve(pipeline.app, port)
    live = LivePipeline(f"http://127.0.0.1:{port}", tmp_path, pipeline.app, pipeline)
    try:
        errors = []
        client = Client(KEY, host=live.url, upload_size=100, max_retries=20, on_error=lambda e, b: errors.append(e))
        for i in range(1000):
            client.track("u", "Backpressure", {"i": i}, message_id=f"bp-{i}")
        client.flush()
        client.join()
        assert errors == []
        assert pipeline.app.refused.get("throttled", 0) > 0, "the backlog limit never engaged"
        live.wait_loaded(timeout=30)
        ids = [r["id"] for r in live.query("SELECT id FROM clickstream.tracks")]
        assert len(ids) == 1000 and len(set(ids)) == 1000
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_throttled_and_disk_full_responses_carry_retry_after(tmp_path):
    port = free_port()
    pipeline = build_pipeline(host="127.0.0.1", port=port, data_dir=tmp_path, write_keys=WRITE_KEYS,
                              load_interval=30, limits=Limits(max_backlog=0, check_seconds=0.02))
    server, thread = serve(pipeline.app, port)
    try:
        url = f"http://127.0.0.1:{port}/v1/track"
        body = {"userId": "u", "event": "e", "writeKey": KEY}
        assert httpx.post(url, json=body).status_code == 200
        deadline = time.monotonic() + 5
        r = httpx.post(url, json=body)
        while r.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
            r = httpx.post(url, json=body)
        assert r.status_code == 429 and r.json()["code"] == "throttled" and r.headers["retry-after"] == "1"
        writer = pipeline.app.writer
        writer.limits.max_backlog = None
        writer.limits.min_free_bytes = 10**18  # more than any disk: "full"
        time.sleep(0.1)
        r = httpx.post(url, json=body)
        assert r.status_code == 503 and r.json()["code"] == "unavailable" and r.headers["retry-after"] == "1"
        stream = LocalStream(tmp_path)
        accepted = pipeline.app.events
        assert stream.count() == accepted  # the 429s and the 503 wrote nothing
        stream.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
