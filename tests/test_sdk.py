"""The official segment-analytics-python SDK against the local collector, unchanged."""

from __future__ import annotations

import datetime as dt

import pytest
from segment.analytics import Client
from segment.analytics.request import APIError

from tests.conftest import KEY


@pytest.mark.parametrize("sync_mode", [True, False], ids=["sync", "async"])
@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
def test_python_sdk_events_land_as_envelopes(live_collector, sync_mode, use_gzip):
    errors = []
    client = Client(KEY, host=live_collector.url, sync_mode=sync_mode, gzip=use_gzip,
                    on_error=lambda e, batch: errors.append(e), max_retries=1)
    ts = dt.datetime(2026, 11, 1, 12, 0, 0, tzinfo=dt.UTC)
    client.identify("user-1", {"email": "a@example.com", "plan": "pro"}, timestamp=ts)
    client.track("user-1", "Order Completed", {"revenue": 12.5, "items": ["a", "b"]}, timestamp=ts)
    client.page("user-1", "Docs", "Install", {"url": "https://example.com/docs"})
    client.screen("user-1", "Onboarding", "Welcome")
    client.group("user-1", "acme", {"name": "ACME"})
    client.alias("anon-7", "user-1")
    client.flush()
    if not sync_mode:
        client.join()
    assert errors == []
    recs = live_collector.records()
    by_type = {r["message"]["type"]: r for r in recs}
    assert sorted(by_type) == ["alias", "group", "identify", "page", "screen", "track"]
    track = by_type["track"]["message"]
    assert track["event"] == "Order Completed" and track["userId"] == "user-1"
    assert track["properties"] == {"revenue": 12.5, "items": ["a", "b"]}
    assert track["timestamp"].startswith("2026-11-01T12:00:00")
    assert track["context"]["library"]["name"] == "analytics-python"
    assert by_type["identify"]["message"]["traits"] == {"email": "a@example.com", "plan": "pro"}
    assert by_type["alias"]["message"]["previousId"] == "anon-7"
    assert by_type["group"]["message"]["groupId"] == "acme"
    for rec in recs:
        assert rec["route"] == "batch" and rec["source"] == "web"
        assert rec["batch"]["sentAt"]  # the SDK stamps sentAt on the batch
        assert rec["userAgent"].startswith("analytics-python/")
        assert len(rec["message"]["messageId"]) <= 100
    assert len({r["message"]["messageId"] for r in recs}) == 6


def test_python_sdk_gives_up_on_unknown_key_and_nothing_is_written(live_collector):
    client = Client("unknown-key-123", host=live_collector.url, sync_mode=True, max_retries=0)
    with pytest.raises(APIError) as info:
        client.track("user-1", "Nope")
    assert info.value.status == 401 and info.value.code == "invalid_write_key"
    assert live_collector.records() == []
