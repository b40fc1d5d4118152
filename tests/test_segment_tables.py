"""Segment's per-source tables on the local warehouse, filled by the loader after each merge."""

from __future__ import annotations

import datetime as dt
import itertools
import time

import orjson
import pytest

from clickstream import segment_schema as ss
from clickstream import segment_tables as st
from clickstream.ingest import RequestInfo, build_records
from clickstream.stream import StreamRecord
from clickstream.warehouse import Warehouse

_seq = itertools.count(1)


def feed(wh: Warehouse, messages: list[dict], source: str = "web", received_ms: int | None = None) -> None:
    """Messages through the real envelope and loader (load -> merge -> the Segment layer's pass, which
    the live loader runs once it has caught up)."""
    loaded = []
    for i in range(0, len(messages), 500):  # one load, in requests of the API's largest batch
        info = RequestInfo(route="b", request_id=f"req{next(_seq)}", ip="203.0.113.5",
                           received_at_ms=received_ms or int(time.time() * 1000))
        records = build_records(info, orjson.dumps({"batch": messages[i:i + 500], "writeKey": "k"}), {"k": source})
        loaded += [StreamRecord(next(_seq), r.partition_key, r.data, info.received_at_ms) for r in records]
    wh.load(loaded)
    wh.spread_segment_tables()


def rows(wh: Warehouse, sql: str) -> list[dict]:
    cols, data = wh.query(sql)
    return [dict(zip(cols, r, strict=True)) for r in data]


def columns(wh: Warehouse, schema: str, table: str) -> dict[str, str]:
    return {r["column_name"]: r["data_type"] for r in rows(
        wh, f"SELECT column_name, data_type FROM information_schema.columns "
            f"WHERE table_schema = '{schema}' AND table_name = '{table}' ORDER BY ordinal_position")}


@pytest.fixture
def wh(tmp_path):
    w = Warehouse(tmp_path / "wh.duckdb")
    yield w
    w.close()


def test_loader_spreads_every_message_type_into_segment_tables(wh):
    feed(wh, [
        {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "t1",
         "timestamp": "2026-11-01T12:00:00Z",
         "properties": {"total": 12.5, "orderId": "o-1", "address": {"city": "Paris", "geo": {"lat": 48.8}},
                        "products": [{"sku": "a"}, {"sku": "b"}], "coupon": None, "user_id": "spoof",
                        "shippedAt": "2026-11-02T08:00:00.000Z", "gift": False, "items": 3},
         "context": {"page": {"url": "https://shop.example/cart"}, "campaign": {"source": "news"}}},
        {"type": "track", "event": "productViewed", "anonymousId": "a1", "messageId": "t2",
         "properties": {"sku": "runner-2"}},
        {"type": "page", "anonymousId": "a1", "messageId": "p1", "name": "Pricing", "category": "Web",
         "properties": {"url": "https://shop.example/pricing?x=1", "path": "/pricing", "title": "Pricing",
                        "referrer": "https://www.google.com/", "search": "?x=1", "abVariant": "b"}},
        {"type": "screen", "anonymousId": "a2", "messageId": "s1", "name": "Welcome", "category": "Onboarding",
         "properties": {"tab": "home"}},
        {"type": "identify", "userId": "u1", "messageId": "i1", "traits": {"email": "ada@example.com",
                                                                            "address": {"city": "Paris"}}},
        {"type": "group", "userId": "u1", "messageId": "g1", "groupId": "acme",
         "traits": {"name": "ACME", "employeeCount": 12}},
        {"type": "alias", "userId": "u1", "previousId": "a1", "messageId": "al1"},
    ])
    [order] = rows(wh, "SELECT * FROM web.order_completed")
    assert order["id"] == "t1" and order["user_id"] == "u1"  # the spoofed user_id property is discarded
    assert (order["event"], order["event_text"]) == ("order_completed", "Order Completed")
    assert order["total"] == 12.5 and order["order_id"] == "o-1" and order["items"] == 3 and order["gift"] is False
    assert order["address_city"] == "Paris" and order["address_geo_lat"] == 48.8
    assert order["products"] == '[{"sku":"a"},{"sku":"b"}]'  # arrays as JSON text
    assert order["shipped_at"] == dt.datetime(2026, 11, 2, 8, 0, tzinfo=dt.UTC)
    assert order["context_page_url"] == "https://shop.example/cart" and order["context_campaign_source"] == "news"
    assert order["original_timestamp"] == dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
    assert order["uuid_ts"] is not None and order["received_at"] is not None
    oc = columns(wh, "web", "order_completed")
    assert "coupon" not in oc  # only null so far: no column
    assert (oc["total"], oc["items"], oc["gift"], oc["shipped_at"]) == (
        "DOUBLE", "BIGINT", "BOOLEAN", "TIMESTAMP WITH TIME ZONE")
    assert [r["sku"] for r in rows(wh, "SELECT sku FROM web.product_viewed")] == ["runner-2"]
    tracks = rows(wh, "SELECT id, event, event_text FROM web.tracks ORDER BY id")
    assert tracks == [{"id": "t1", "event": "order_completed", "event_text": "Order Completed"},
                      {"id": "t2", "event": "product_viewed", "event_text": "productViewed"}]
    assert "total" not in columns(wh, "web", "tracks")  # properties live in the per-event tables
    [page] = rows(wh, "SELECT * FROM web.pages")
    assert {k: page[k] for k in ("url", "path", "title", "referrer", "search", "name", "category", "ab_variant")} == {
        "url": "https://shop.example/pricing?x=1", "path": "/pricing", "title": "Pricing",
        "referrer": "https://www.google.com/", "search": "?x=1", "name": "Pricing", "category": "Web",
        "ab_variant": "b"}
    [screen] = rows(wh, "SELECT * FROM web.screens")
    assert (screen["name"], screen["category"], screen["tab"]) == ("Welcome", "Onboarding", "home")
    [ident] = rows(wh, "SELECT * FROM web.identifies")
    assert (ident["email"], ident["address_city"]) == ("ada@example.com", "Paris")
    [group] = rows(wh, "SELECT * FROM web.groups")
    assert (group["group_id"], group["name"], group["employee_count"]) == ("acme", "ACME", 12)
    [alias] = rows(wh, "SELECT * FROM web.aliases")
    assert (alias["previous_id"], alias["user_id"]) == ("a1", "u1")
    [user] = rows(wh, "SELECT * FROM web.users")
    assert (user["id"], user["email"], user["address_city"]) == ("u1", "ada@example.com", "Paris")
    assert "anonymous_id" not in user  # like Segment's: a user has many anonymous ids
    # the combined table is untouched: still the lossless record
    assert orjson.loads(rows(wh, "SELECT properties FROM clickstream.events WHERE message_id = 't1'")[0][
        "properties"])["user_id"] == "spoof"


def test_new_property_mid_stream_adds_a_column_and_type_conflicts_follow_the_first_type(wh):
    feed(wh, [{"type": "track", "event": "Signed Up", "userId": "u1", "messageId": "a",
               "properties": {"plan": "pro", "seats": 3, "ratio": 1, "trial": True, "mixed": 1}},
              {"type": "track", "event": "Signed Up", "userId": "u1", "messageId": "b",
               "properties": {"mixed": 2.5}}])
    cols = columns(wh, "web", "signed_up")
    assert (cols["seats"], cols["mixed"]) == ("BIGINT", "DOUBLE")  # int and float in one batch: float
    assert "referrer" not in cols
    feed(wh, [{"type": "track", "event": "Signed Up", "userId": "u2", "messageId": "c",
               "properties": {"plan": 42, "seats": "many", "ratio": 2.0, "trial": "yes", "referrer": "friend",
                              "mixed": "x"}},
              {"type": "track", "event": "Signed Up", "userId": "u3", "messageId": "d",
               "properties": {"seats": "7", "trial": "false"}}])
    cols = columns(wh, "web", "signed_up")
    assert cols["referrer"] == "VARCHAR" and cols["seats"] == "BIGINT"  # types never change
    got = {r["id"]: r for r in rows(wh, "SELECT * FROM web.signed_up")}
    assert got["a"]["referrer"] is None and got["c"]["referrer"] == "friend"
    assert got["c"]["plan"] == "42"  # a number into a string column: its text
    assert got["c"]["seats"] is None and got["d"]["seats"] == 7  # "many" cannot be an integer; "7" can
    assert got["c"]["ratio"] == 2 and got["c"]["trial"] is None and got["d"]["trial"] is False
    assert got["c"]["mixed"] is None
    # the originals stay in `events`
    assert orjson.loads(rows(wh, "SELECT properties FROM clickstream.events WHERE message_id = 'c'")[0][
        "properties"])["seats"] == "many"


def test_long_strings_are_truncated_to_512_characters(wh):
    feed(wh, [{"type": "page", "anonymousId": "a", "messageId": "p", "properties": {"url": "€" * 700}},
              {"type": "identify", "userId": "u" * 600, "messageId": "i", "traits": {"bio": "x" * 513}}])
    [page] = rows(wh, "SELECT url FROM web.pages")
    assert page["url"] == "€" * 512 and len(page["url"].encode()) <= ss.STRING_BYTES
    [ident] = rows(wh, "SELECT user_id, bio FROM web.identifies")
    assert ident == {"user_id": "u" * 512, "bio": "x" * 512}


def test_users_hold_the_latest_value_of_each_trait(wh):
    feed(wh, [{"type": "identify", "userId": "u1", "messageId": "1", "timestamp": "2026-11-01T10:00:00Z",
               "traits": {"email": "old@example.com", "plan": "free"}},
              {"type": "identify", "userId": "u1", "messageId": "2", "timestamp": "2026-11-01T11:00:00Z",
               "traits": {"plan": "pro"}},
              {"type": "identify", "userId": "u2", "messageId": "3", "traits": {"email": "b@example.com"}},
              {"type": "identify", "anonymousId": "anon", "messageId": "4", "traits": {"email": "c@example.com"}}])
    users = {u["id"]: u for u in rows(wh, "SELECT * FROM web.users")}
    assert set(users) == {"u1", "u2"}  # one row per user_id; anonymous identifies make none
    assert (users["u1"]["email"], users["u1"]["plan"]) == ("old@example.com", "pro")
    feed(wh, [{"type": "identify", "userId": "u1", "messageId": "5", "traits": {"email": "new@example.com",
                                                                                 "company": "acme"}}])
    users = {u["id"]: u for u in rows(wh, "SELECT * FROM web.users")}
    assert len(rows(wh, "SELECT * FROM web.users")) == 2
    assert (users["u1"]["email"], users["u1"]["plan"], users["u1"]["company"]) == ("new@example.com", "pro", "acme")
    assert users["u2"]["company"] is None


def test_one_schema_per_source(wh):
    feed(wh, [{"type": "track", "event": "Clicked", "userId": "u", "messageId": "w"}], source="web")
    feed(wh, [{"type": "track", "event": "Clicked", "userId": "u", "messageId": "s"}], source="Server Side")
    feed(wh, [{"type": "track", "event": "Clicked", "userId": "u", "messageId": "c"}], source="clickstream")
    assert [r["id"] for r in rows(wh, "SELECT id FROM web.clicked")] == ["w"]
    assert [r["id"] for r in rows(wh, "SELECT id FROM server_side.clicked")] == ["s"]
    # a source named like the pipeline's own schema gets its own
    assert [r["id"] for r in rows(wh, "SELECT id FROM clickstream_source.tracks")] == ["c"]


def test_a_rerun_adds_nothing_and_a_failed_run_changes_nothing(wh, monkeypatch):
    feed(wh, [{"type": "track", "event": "A", "userId": "u", "messageId": "1", "properties": {"x": 1}}])
    layer = st._layers[id(wh.conn)]
    assert layer.spread() == 0  # nothing new
    real = st.data_sql

    def failing(*args, **kwargs):
        return [*real(*args, **kwargs)[:-1], "SELECT no_such_column FROM clickstream.events;"]

    monkeypatch.setattr(st, "data_sql", failing)
    feed(wh, [{"type": "track", "event": "B", "userId": "u", "messageId": "2", "properties": {"y": 1}},
              {"type": "track", "event": "A", "userId": "u", "messageId": "3", "properties": {"z": 1}}])
    assert layer.stats.last_error is not None
    assert rows(wh, "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_name = 'b'")[0]["n"] == 0
    assert "z" not in columns(wh, "web", "a") and len(rows(wh, "SELECT * FROM web.tracks")) == 1
    monkeypatch.setattr(st, "data_sql", real)
    assert layer.spread() == 2  # the next run redoes the failed one
    assert [r["id"] for r in rows(wh, "SELECT id FROM web.tracks ORDER BY id")] == ["1", "2", "3"]
    assert [r["z"] for r in rows(wh, "SELECT z FROM web.a ORDER BY id")] == [None, 1]
    assert layer.spread() == 0 and len(rows(wh, "SELECT * FROM web.tracks")) == 3


def test_limits_defer_new_columns_to_a_later_run(wh):
    layer = st._layers.setdefault(id(wh.conn), st.DuckDBSegment(wh.conn, wh.names, ss.Limits(new_columns=2)))
    feed(wh, [{"type": "track", "event": "Wide", "userId": "u", "messageId": "1",
               "properties": {"a": 1, "b": 2, "c": 3}}])
    assert [c for c in columns(wh, "web", "wide") if c in "abc"] == ["a", "b"]
    assert layer.stats.deferred == 1
    feed(wh, [{"type": "track", "event": "Wide", "userId": "u", "messageId": "2", "properties": {"c": 30}}])
    assert [r["c"] for r in rows(wh, "SELECT c FROM web.wide ORDER BY id")] == [None, 30]


@pytest.mark.slow  # ~10-20 s: a thousand CREATE TABLE and INSERT statements
def test_a_thousand_distinct_event_names(wh):
    feed(wh, [{"type": "track", "event": f"Event Number {i}", "userId": "u", "messageId": f"m{i}",
               "properties": {"n": i}} for i in range(1000)])
    tables = rows(wh, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'web'")
    assert len(tables) == 1000 + 1  # + tracks
    assert rows(wh, "SELECT id, n, event FROM web.event_number_999") == [
        {"id": "m999", "n": 999, "event": "event_number_999"}]
    assert rows(wh, "SELECT COUNT(DISTINCT event) AS n FROM web.tracks")[0]["n"] == 1000


def test_context_json_is_flattened_when_the_combined_table_keeps_it(wh, monkeypatch):
    """`events` keeps the whole merged context as JSON: every context key becomes a context_*
    column (Segment: context.app.version -> context_app_version)."""
    monkeypatch.setattr(st, "after_merge", lambda *a: None)
    feed(wh, [{"type": "screen", "anonymousId": "a", "messageId": "s", "name": "Home"},
              {"type": "track", "event": "Opened", "anonymousId": "a", "messageId": "t"}])
    wh.conn.execute("""UPDATE clickstream.events SET context = '{"app": {"version": "1.0.0", "build": 321},
        "device": {"type": "ios"}, "os": {"name": "iOS"}, "page": {"url": "https://ignored.example/"},
        "campaign": {"source": "news"}, "tags": ["x"]}'""")
    layer = st.DuckDBSegment(wh.conn, wh.names)
    assert layer.spread() == 2
    for table in ("screens", "tracks", "opened"):
        [row] = rows(wh, f"SELECT * FROM web.{table}")
        assert (row["context_app_version"], row["context_app_build"], row["context_device_type"],
                row["context_os_name"], row["context_tags"]) == ("1.0.0", 321, "ios", "iOS", '["x"]')
        # keys the combined table has as columns keep the model's values (its own context rules)
        assert row["context_page_url"] is None and row["context_campaign_source"] is None


def test_hostile_names_and_values_never_stop_the_layer(wh):
    deep: dict = {"v": 1}
    for i in range(40):
        deep = {f"level{i}": deep}
    props = {'a"b': "dq", "a'b": "sq", "a\\b": "bs", "": "empty", "%%": "symbols", "k" * 300: "long",
             "huge": 1e308, "deep": deep, "nested": [1, [2, {"x": None}]], "none": {}}
    feed(wh, [{"type": "track", "event": "Say \"hi\" 'there' \\", "userId": "u'\\", "messageId": "h1",
               "properties": props}], source="we'b\\src")
    assert st._layers[id(wh.conn)].stats.last_error is None
    [row] = rows(wh, "SELECT * FROM we_b_src.say_hi_there")
    assert row["user_id"] == "u'\\" and row["event_text"] == "Say \"hi\" 'there' \\"
    assert row["a_b"] == "dq"  # three keys share the column: the first in sorted order wins
    assert row["k" * ss.MAX_IDENTIFIER_BYTES] == "long" and row["huge"] == 1e308
    assert row["nested"] == '[1,[2,{"x":null}]]'
    assert len([c for c in row if c.startswith("deep_")]) == 1  # cut to 127 bytes, still one column


def test_the_layer_can_be_switched_off(wh, monkeypatch):
    monkeypatch.setenv(st.ENABLE_ENV, "off")
    feed(wh, [{"type": "track", "event": "Quiet", "userId": "u", "messageId": "q"}])
    assert rows(wh, "SELECT COUNT(*) AS n FROM information_schema.schemata WHERE schema_name = 'web'")[0]["n"] == 0
    monkeypatch.delenv(st.ENABLE_ENV)
    feed(wh, [{"type": "track", "event": "Loud", "userId": "u", "messageId": "l"}])
    # switched on again, it catches up from its own watermark: nothing is skipped
    assert [r["id"] for r in rows(wh, "SELECT id FROM web.tracks ORDER BY id")] == ["l", "q"]
