"""Events become Segment-style rows: the model on DuckDB, fed by the real local pipeline."""

from __future__ import annotations

import datetime as dt
import json

import httpx
from segment.analytics import Client

from clickstream.contract import Record
from clickstream.stream import LocalStream
from clickstream.warehouse import Warehouse
from tests.conftest import KEY

UTC = dt.UTC


def post_batch(live, body: dict) -> None:
    r = httpx.post(live.url + "/v1/batch", json={**body, "writeKey": KEY}, timeout=10)
    assert r.status_code == 200, r.text


def test_sdk_events_land_in_segment_tables(live_pipeline):
    client = Client(KEY, host=live_pipeline.url, sync_mode=True)
    ts = dt.datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
    client.identify("user-1", {"email": "a@example.com", "name": "Ada"}, timestamp=ts)
    client.track("user-1", "Order Completed", {"revenue": 12.5}, timestamp=ts)
    client.page("user-1", "Docs", "Install", {"url": "https://example.com/docs"})
    client.screen("user-1", "Onboarding", "Welcome")
    client.group("user-1", "acme", {"name": "ACME"})
    client.alias("anon-7", "user-1")
    live_pipeline.wait_loaded()
    counts = {t: live_pipeline.query(f"SELECT COUNT(*) AS n FROM clickstream.{t}")[0]["n"]
              for t in ("tracks", "identifies", "pages", "screens", "groups", "aliases", "users")}
    assert counts == dict.fromkeys(counts, 1)
    [track] = live_pipeline.query("SELECT * FROM clickstream.tracks")
    assert track["event"] == "order_completed" and track["event_text"] == "Order Completed"
    assert track["user_id"] == "user-1" and track["source"] == "web"
    assert json.loads(track["properties"]) == {"revenue": 12.5}
    assert track["context_library_name"] == "analytics-python"
    assert track["original_timestamp"] == ts
    assert track["loaded_at"] is not None and track["received_at"] is not None
    [user] = live_pipeline.query("SELECT * FROM clickstream.users")
    assert (user["id"], user["email"], user["name"]) == ("user-1", "a@example.com", "Ada")
    [page] = live_pipeline.query("SELECT * FROM clickstream.pages")
    assert page["name"] == "Install" and page["category"] == "Docs"
    assert live_pipeline.query("SELECT group_id FROM clickstream.groups")[0]["group_id"] == "acme"
    assert live_pipeline.query("SELECT previous_id FROM clickstream.events WHERE type = 'alias'")[0][
        "previous_id"] == "anon-7"


def test_timestamps_are_skew_corrected_and_context_merged(live_pipeline):
    body = {
        "sentAt": "2026-11-28T10:00:10.000Z",  # the device clock is behind or ahead: only differences count
        "context": {"library": {"name": "analytics-python", "version": "9"}, "locale": "fr-FR",
                    "page": {"url": "https://batch.example/"}, "campaign": {"name": "spring", "source": "news"}},
        "batch": [
            {"type": "track", "event": "A", "userId": "u", "messageId": "skew-1",
             "timestamp": "2026-11-28T10:00:00.000Z",
             "context": {"page": {"url": "https://own.example/x", "path": "/x"}, "ip": "198.51.100.4"}},
            {"type": "track", "event": "B", "userId": "u", "messageId": "skew-2",
             "timestamp": "2026-11-28T10:00:05.500Z", "sentAt": "2026-11-28T10:00:06.000Z"},
            {"type": "track", "event": "C", "userId": "u", "messageId": "skew-3"},
        ],
    }
    post_batch(live_pipeline, body)
    live_pipeline.wait_loaded()
    rows = {r["id"]: r for r in live_pipeline.query("SELECT * FROM clickstream.tracks")}
    received = rows["skew-1"]["received_at"]
    assert all(r["received_at"] == received for r in rows.values())
    assert rows["skew-1"]["timestamp"] == received - dt.timedelta(seconds=10)
    assert rows["skew-1"]["original_timestamp"] == dt.datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)
    assert rows["skew-2"]["sent_at"] == dt.datetime(2026, 11, 28, 10, 0, 6, tzinfo=UTC)  # its own sentAt wins
    assert rows["skew-2"]["timestamp"] == received - dt.timedelta(seconds=0.5)
    assert rows["skew-3"]["original_timestamp"] is None and rows["skew-3"]["timestamp"] == received
    # message context keys win; batch context fills the rest (shallow merge per top-level key)
    assert rows["skew-1"]["context_page_url"] == "https://own.example/x"
    assert rows["skew-1"]["context_page_path"] == "/x" and rows["skew-1"]["context_ip"] == "198.51.100.4"
    assert rows["skew-2"]["context_page_url"] == "https://batch.example/"
    assert rows["skew-2"]["context_page_path"] is None
    for r in rows.values():
        assert (r["context_locale"], r["context_library_version"]) == ("fr-FR", "9")
        assert (r["context_campaign_name"], r["context_campaign_source"]) == ("spring", "news")
    assert rows["skew-2"]["context_ip"] is None  # a server library's event keeps what it sent


def test_browser_events_get_request_ip_and_user_agent(live_pipeline):
    msg = {"type": "page", "anonymousId": "anon-1", "name": "Home", "writeKey": KEY, "messageId": "ajs-1",
           "context": {"library": {"name": "analytics.js", "version": "npm:next-1.84.0"}}}
    r = httpx.post(live_pipeline.url + "/v1/p", content=json.dumps(msg),
                   headers={"Content-Type": "text/plain", "User-Agent": "Mozilla/5.0 test"})
    assert r.status_code == 200
    live_pipeline.wait_loaded()
    [page] = live_pipeline.query("SELECT * FROM clickstream.pages")
    assert page["context_ip"] == "127.0.0.1" and page["context_user_agent"] == "Mozilla/5.0 test"
    assert page["type"] == "page" and page["anonymous_id"] == "anon-1"


def test_same_batch_twice_adds_no_rows(live_pipeline):
    body = {"batch": [{"type": "track", "event": "E", "userId": "u", "messageId": f"dup-{i}"} for i in range(5)]}
    post_batch(live_pipeline, body)
    post_batch(live_pipeline, body)
    live_pipeline.wait_loaded()
    assert live_pipeline.query("SELECT COUNT(*) AS n FROM clickstream.tracks")[0]["n"] == 5
    assert len(live_pipeline.records()) == 10  # both copies are in the stream; the warehouse dedups


def test_hostile_records_are_rejected_with_reason(live_pipeline):
    post_batch(live_pipeline, {"batch": [
        {"type": "track", "event": "no ids"},
        {"type": "track", "userId": "u"},
        {"type": "bogus", "userId": "u"},
        {"type": "alias", "userId": "u"},
        {"type": "group", "anonymousId": "a"},
        {"type": "track", "event": "ok", "userId": "u", "messageId": "x" * 101},
        {"type": "track", "event": "ok", "userId": "u", "context": "{oops", "properties": "{nope",
         "timestamp": "2026-02-30T00:00:00Z", "messageId": "survivor"},
    ]})
    stream = LocalStream(live_pipeline.data_dir)  # records that did not come through the API
    stream.put([Record("k1", b"this is not json\n"), Record("k2", b'{"v":1,"source":"web"}\n'),
                Record("k3", b'[1,2,3]\n'), Record("k4", b"\xff\xfe not utf-8\n")])
    stream.close()
    live_pipeline.wait_loaded()
    reasons = sorted(r["reason"] for r in live_pipeline.query("SELECT reason FROM clickstream.rejected"))
    assert reasons == sorted([
        "missing_user_id_and_anonymous_id", "missing_event", "invalid_type", "missing_previous_id",
        "missing_group_id", "message_id_too_long", "invalid_json", "invalid_json", "invalid_envelope",
        "invalid_envelope"])
    [bad] = live_pipeline.query(
        "SELECT * FROM clickstream.rejected WHERE raw_format = 'hex' AND raw_record LIKE '7468%'")
    assert bytes.fromhex(bad["raw_record"]) == b"this is not json\n"
    [survivor] = live_pipeline.query("SELECT * FROM clickstream.tracks")
    assert survivor["id"] == "survivor" and survivor["original_timestamp"] is None and survivor["properties"] is None


def test_merge_is_idempotent_and_reload_of_same_records_changes_nothing(tmp_path, live_pipeline):
    post_batch(live_pipeline, {"batch": [{"type": "identify", "userId": f"u{i}", "traits": {"i": i}}
                                         for i in range(20)] + [{"type": "track"}]})
    live_pipeline.wait_loaded()
    before = {t: live_pipeline.query(f"SELECT * FROM clickstream.{t} ORDER BY 1")
              for t in ("events", "rejected", "users")}
    # a second, separate warehouse fed twice with the same stream (what a replay does) ends the same
    stream = LocalStream(live_pipeline.data_dir)
    records = stream.read(0, 1000)
    stream.close()
    wh = Warehouse(tmp_path / "other.duckdb")
    for _ in range(2):
        wh.load([type(r)(r.seq + 1000 * _, r.partition_key, r.data, r.arrival_ms) for r in records])
        wh.merge()
    assert wh.query("SELECT COUNT(*) FROM clickstream.events")[1][0][0] == len(before["events"]) == 20
    assert wh.query("SELECT COUNT(*) FROM clickstream.rejected")[1][0][0] == len(before["rejected"]) == 1
    _, rows = wh.query("SELECT * FROM clickstream.users ORDER BY 1")
    assert [r[0] for r in rows] == [u["id"] for u in before["users"]]
    wh.close()


def _envelope(source: str, message_id: str, received_ms: int, event: str = "E") -> bytes:
    return json.dumps({"v": 1, "source": source, "receivedAt": received_ms, "requestId": f"r-{received_ms}",
                       "index": 0, "route": "batch", "batch": {},
                       "message": {"type": "track", "event": event, "userId": "u", "messageId": message_id}}).encode()


def _load(wh: Warehouse, data_dir, records: list[bytes]) -> None:
    stream = LocalStream(data_dir)
    try:
        stream.put([Record(f"k{i}", data) for i, data in enumerate(records)])
        wh.load_from(stream)
    finally:
        stream.close()


DAY_MS = 86_400_000
T0 = 1_764_460_800_000  # 2025-11-30T00:00:00Z


def test_dedup_within_one_load_keeps_the_earliest_received_copy(tmp_path):
    """Both copies in ONE load (one merge): the copy received first wins, whatever the stream order."""
    wh = Warehouse(tmp_path / "w.duckdb")
    _load(wh, tmp_path, [_envelope("web", "m-1", T0 + 5000, event="retry"), _envelope("web", "m-1", T0, event="first")])
    assert wh.stats.merges == 1
    _, rows = wh.query("SELECT message_id, event_text, received_at FROM clickstream.events")
    assert rows == [("m-1", "first", dt.datetime(2025, 11, 30, tzinfo=UTC))]
    wh.close()


def test_dedup_within_one_load_breaks_ties_by_sequence_and_keeps_one_copy_per_key(tmp_path):
    """Copies received in the same millisecond: the one earlier in the stream wins, exactly one is kept;
    a later-received copy earlier in the stream still loses to the earliest received one."""
    wh = Warehouse(tmp_path / "w.duckdb")
    _load(wh, tmp_path, [_envelope("web", "t-1", T0 + 10, event="late"),
                         _envelope("web", "t-1", T0, event="first-in-stream"),
                         _envelope("web", "t-1", T0, event="second-in-stream"),
                         _envelope("web", "t-1", T0, event="third-in-stream"),
                         _envelope("backend", "t-1", T0 + 20, event="other-source"),
                         _envelope("web", "t-2", T0 + 30, event="alone")])
    _, rows = wh.query("SELECT source, message_id, event_text FROM clickstream.events ORDER BY 1, 2")
    assert rows == [("backend", "t-1", "other-source"), ("web", "t-1", "first-in-stream"),
                    ("web", "t-2", "alone")]
    wh.close()


def test_thousands_of_copies_of_one_message_in_one_load_keep_the_first(tmp_path):
    """A client retrying one message in a loop: 30,000 copies in one load. The in-load dedup ranks
    the copies of a key in one sort; comparing copies with copies (an anti-join on the key) is
    quadratic and took minutes here, so this test would hit its time limit."""
    wh = Warehouse(tmp_path / "w.duckdb")
    copies = [_envelope("web", "retried", T0 + 30_000 - i, event=f"copy-{i}") for i in range(30_000)]
    _load(wh, tmp_path, copies)
    _, rows = wh.query("SELECT message_id, event_text FROM clickstream.events")
    assert rows == [("retried", "copy-29999")]  # the earliest received
    wh.close()


def test_same_message_id_from_two_sources_is_two_events(tmp_path):
    """A message id first sent with the public web key must not suppress the server's event."""
    wh = Warehouse(tmp_path / "w.duckdb")
    _load(wh, tmp_path, [_envelope("web", "order-42", T0)])
    _load(wh, tmp_path, [_envelope("backend", "order-42", T0 + 1000), _envelope("web", "order-42", T0 + 2000)])
    _, rows = wh.query("SELECT source, message_id FROM clickstream.events ORDER BY source")
    assert rows == [("backend", "order-42"), ("web", "order-42")]
    wh.close()


def test_dedup_window_bounds_how_far_back_a_copy_is_found(tmp_path):
    from clickstream.sqlmodel import ModelNames

    wh = Warehouse(tmp_path / "w.duckdb", ModelNames(dedup_window_days=3))
    _load(wh, tmp_path, [_envelope("web", "w-1", T0)])
    _load(wh, tmp_path, [_envelope("web", "w-1", T0 + 2 * DAY_MS)])  # within 3 days: a duplicate
    assert wh.query("SELECT COUNT(*) FROM clickstream.events")[1] == [(1,)]
    _load(wh, tmp_path, [_envelope("web", "w-1", T0 + 4 * DAY_MS)])  # beyond the window: loaded again
    assert wh.query("SELECT COUNT(*) FROM clickstream.events")[1] == [(2,)]
    wh.close()


def test_a_failed_merge_keeps_nothing_and_the_next_merge_redoes_it(tmp_path):
    """Inserts and the watermark move together (on Redshift: one BatchExecuteStatement)."""
    import dataclasses

    import pytest

    wh = Warehouse(tmp_path / "w.duckdb")
    statements = list(wh._merge)
    last = statements[-1]
    assert "load_state" in last.sql
    wh._merge = [*statements[:-1], dataclasses.replace(last, sql="SELECT error('merge interrupted')")]
    with pytest.raises(Exception, match="merge interrupted"):
        _load(wh, tmp_path, [_envelope("web", "a-1", T0), b"not json"])
    counts = "SELECT (SELECT COUNT(*) FROM clickstream.events), (SELECT COUNT(*) FROM clickstream.rejected)"
    assert wh.query(counts)[1] == [(0, 0)]
    wh._merge = statements
    wh.merge()
    assert wh.query(counts)[1] == [(1, 1)]
    wh.close()


def test_the_merge_finds_its_first_write_behind_any_number_of_comments():
    """The local merge opens its transaction at the first write statement, recognised behind the
    comments sqlglot carries over from the SQL files. A comment pattern that could span several
    comments took seconds to *not* match the staging statement (backtracking; every merge paid it)
    and read a write out of a string literal."""
    from clickstream.warehouse import _WRITE

    comments = " ".join(f"/* note {i}: see r_{i}.html */" for i in range(40))
    assert _WRITE.match(f"{comments}\nINSERT INTO t SELECT 1") is not None
    assert _WRITE.match(f"-- a\n  -- b\n{comments} update t SET a = 1") is not None
    assert _WRITE.match(f"{comments}\nCREATE TEMPORARY TABLE staging AS SELECT '*/ INSERT'") is None
    assert _WRITE.match("/* INSERT */ SELECT 1") is None
