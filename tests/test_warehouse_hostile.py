"""No record can stop the merge: a hostile corpus through the real loader into a DuckDB file.

The local model enforces Redshift's limits (clickstream/redshift_rules.py): a value too long for its
VARCHAR(n) in bytes, JSON text over 64 KB, a DATEADD interval beyond 32 bits all fail the statement
here as they would on Redshift. Every record must end as an event (values truncated byte-safely) or
in `rejected` with a reason, the watermark must advance, and replaying the corpus changes nothing.
"""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import pytest

from clickstream.redshift_rules import MAX_RECORD_BYTES, truncate_utf8
from clickstream.warehouse import Warehouse
from tests.test_warehouse import _load as load  # records through the real stream and loader

RECEIVED_MS = 1_764_460_800_000  # 2025-11-30T00:00:00Z
RECEIVED = dt.datetime(2025, 11, 30, tzinfo=dt.UTC)


def envelope(message: dict, **fields) -> bytes:
    env = {"v": 1, "source": "web", "receivedAt": RECEIVED_MS, "requestId": "req-1", "index": 0,
           "ip": "203.0.113.9", "userAgent": "test", "route": "batch", "routeType": None,
           "batch": {"context": {"locale": "en-US"}}, **fields, "message": message}
    return json.dumps(env, ensure_ascii=False).encode()


def track(mid: str, **fields) -> dict:
    return {"type": "track", "event": "Hostile", "userId": "u", "messageId": mid, **fields}


# (name, record bytes, expected: ("event", message_id) or ("rejected", reason))
CORPUS: list[tuple[str, bytes, tuple[str, str]]] = [
    ("page url over 4 KB", envelope(track("long-url", context={"page": {"url": "https://e.x/" + "a" * 5000}})),
     ("event", "long-url")),
    ("user id over 1 KB", envelope(track("long-user", userId="u" * 1500)), ("event", "long-user")),
    ("multi-byte user id over 1 KB", envelope(track("mb-user", userId="é" * 700)), ("event", "mb-user")),
    ("multi-byte user agent over 4 KB", envelope(track("mb-ua", context={"userAgent": "日本" * 1000})),
     ("event", "mb-ua")),
    ("multi-byte message id under 100 characters, over 100 bytes", envelope(track("é" * 60)),
     ("rejected", "message_id_too_long")),
    ("rejected message id over 1 KB", envelope({"type": "track", "messageId": "x" * 3000}),
     ("rejected", "missing_user_id_and_anonymous_id")),
    ("record over 64 KB", envelope(track("huge", properties={"p": "p" * 70_000})), ("rejected", "record_too_large")),
    ("multi-byte record over 64 KB", envelope(track("huge-mb", properties={"p": "é" * 33_000})),
     ("rejected", "record_too_large")),
    ("epoch-millisecond client timestamps", envelope(track("epoch-ms", timestamp=1_764_460_800_000,
                                                           sentAt=1_764_460_800_500)), ("event", "epoch-ms")),
    ("clock skew of 26 years", envelope(track("skew", timestamp="2000-01-01T00:00:00Z",
                                              sentAt="2026-01-01T00:00:00Z")), ("event", "skew")),
    ("skew beyond year 1", envelope(track("skew-out", timestamp="0001-01-01T00:00:00Z",
                                          sentAt="9999-12-31T00:00:00Z")), ("event", "skew-out")),
    ("receivedAt in epoch microseconds", envelope(track("recv-us"), receivedAt=RECEIVED_MS * 1000),
     ("rejected", "invalid_envelope")),
    ("receivedAt beyond int64", envelope(track("recv-big"), receivedAt=10**20), ("rejected", "invalid_envelope")),
    ("receivedAt as text", envelope(track("recv-text"), receivedAt="yesterday"), ("rejected", "invalid_envelope")),
    ("non-JSON bytes over 32 KB", b"\x00\x01garbage" * 5000, ("rejected", "invalid_json")),
    ("timestamp in year 1", envelope(track("y1", timestamp="0001-01-01T00:00:00Z")), ("event", "y1")),
    ("timestamp in year 9999", envelope(track("y9999", timestamp="9999-12-31T23:59:59Z")), ("event", "y9999")),
    ("timestamp at the epoch", envelope(track("y1970", timestamp="1970-01-01T00:00:00Z")), ("event", "y1970")),
    ("garbage timestamps", envelope(track("garbage-ts", timestamp="2026-13-45T99:99:99Z", sentAt="soon")),
     ("event", "garbage-ts")),
    ("numbers beyond int64", envelope(track("big-num", properties={"n": 123456789012345678901234567890,
                                                                   "f": 1e308})), ("event", "big-num")),
    ("duplicate JSON keys", b'{"source":"web","v":1,"receivedAt":1764460800000,"requestId":"r","index":0,'
                            b'"message":{"type":"track","event":"e","userId":"a","userId":"b","messageId":"dup-key"}}',
     ("rejected", "invalid_json")),
    ("deep nesting", envelope(track("deep", properties={"d": json.loads("[" * 500 + "]" * 500)})), ("event", "deep")),
    ("invalid UTF-8", envelope(track("bad-utf8"))[:-3] + b"\xff\xfe}}", ("rejected", "invalid_json")),
    ("empty strings", envelope({"type": "track", "event": "", "userId": "", "anonymousId": "", "messageId": ""}),
     ("rejected", "missing_user_id_and_anonymous_id")),
    ("empty record", b"", ("rejected", "invalid_json")),
    ("empty message", envelope({}), ("rejected", "invalid_type")),
    # under 64,000 bytes as sent, over 65,535 once written the way the engine serialises numbers
    # (1e15 -> 1000000000000000.0): JSON_SIZE measures the serialised form, so it is too large
    ("numbers that grow when written", envelope(track("grow")).replace(
        b'"messageId": "grow"', b'"messageId": "grow", "properties": {"p": [' + b",".join([b"9e15"] * 12000) + b"]}"),
     ("rejected", "record_too_large")),
    ("NaN is not JSON", envelope(track("nan")).replace(b'"userId": "u"', b'"userId": NaN'),
     ("rejected", "invalid_json")),
    ("-Infinity is not JSON", envelope(track("inf")).replace(b'"messageId": "inf"', b'"messageId": -Infinity'),
     ("rejected", "invalid_json")),
    ("no message at all", json.dumps({"v": 1, "source": "web", "receivedAt": RECEIVED_MS, "requestId": "req-nm",
                                      "index": 0, "routeType": "track"}).encode(), ("rejected", "invalid_message")),
    ("message not an object", envelope("track me", routeType="track"), ("rejected", "invalid_message")),
    ("source over 64 bytes", envelope(track("long-source"), source="s" * 100), ("rejected", "invalid_envelope")),
    ("no message id and no request id", json.dumps({"v": 1, "source": "web", "receivedAt": RECEIVED_MS, "message": {
        "type": "track", "event": "e", "userId": "u"}}).encode(), ("rejected", "missing_message_id")),
    # JSON escapes: a lone UTF-16 surrogate is not text (VARCHAR refuses it); an escaped pair is
    # one character (the Python SDK escapes every non-ASCII character); NUL is a character.
    ("lone surrogate escape", envelope(track("lone-surrogate")).replace(b'"userId": "u"', b'"userId": "\\ud800"'),
     ("rejected", "invalid_json")),
    ("escaped surrogate pair", envelope(track("emoji-pair")).replace(b'"userId": "u"', b'"userId": "\\ud83d\\ude00"'),
     ("event", "emoji-pair")),
    ("escaped NUL", envelope(track("nul")).replace(b'"userId": "u"', b'"userId": "a\\u0000b"'), ("event", "nul")),
    ("context and properties not objects", envelope(track("not-objects", context="{oops", properties=[1])),
     ("event", "not-objects")),
]



def snapshot(wh: Warehouse) -> dict[str, list]:
    return {t: wh.query(f"SELECT * EXCLUDE (loaded_at, sequence_number) FROM clickstream.{t} ORDER BY ALL")[1]
            for t in ("events", "rejected")}


@pytest.fixture
def loaded(tmp_path):
    wh = Warehouse(tmp_path / "warehouse.duckdb")
    load(wh, tmp_path, [data for _, data, _ in CORPUS])
    yield wh, tmp_path
    wh.close()


def test_every_hostile_record_ends_as_an_event_or_rejected_with_its_reason(loaded):
    wh, _ = loaded
    events = {r[0] for r in wh.query("SELECT message_id FROM clickstream.events")[1]}
    rejected = sorted(r[0] for r in wh.query("SELECT reason FROM clickstream.rejected")[1])
    assert events == {mid for _, _, (kind, mid) in CORPUS if kind == "event"}
    assert rejected == sorted(reason for _, _, (kind, reason) in CORPUS if kind == "rejected")
    # the watermark advanced past everything: nothing is left for a later merge to fail on
    _, [(pending,)] = wh.query("SELECT COUNT(*) FROM clickstream.clickstream_stream s, clickstream.load_state w "
                               "WHERE w.name = 'events' AND s.refresh_time > w.watermark")
    assert pending == 0


def test_over_long_values_are_truncated_byte_safely(loaded):
    wh, _ = loaded
    cols, rows = wh.query("SELECT * FROM clickstream.events")
    by_id = {r[cols.index("message_id")]: dict(zip(cols, r, strict=True)) for r in rows}
    assert by_id["long-url"]["context_page_url"] == ("https://e.x/" + "a" * 5000)[:4096]
    assert by_id["long-user"]["user_id"] == "u" * 1024
    assert by_id["mb-user"]["user_id"] == "é" * 512  # 1,024 bytes: no character split
    ua = by_id["mb-ua"]["context_user_agent"]
    assert ua == truncate_utf8("日本" * 1000, 4096) and len(ua.encode()) <= 4096 and ua == ("日本" * 1000)[:1365]
    assert by_id["emoji-pair"]["user_id"] == "\U0001F600" and by_id["nul"]["user_id"] == "a\x00b"
    for row in by_id.values():  # every VARCHAR(n) holds at most n bytes, as Redshift requires
        for col, width in (("user_id", 1024), ("context_page_url", 4096), ("context_user_agent", 4096)):
            assert row[col] is None or len(row[col].encode()) <= width


def test_times_never_overflow_and_fall_back_sensibly(loaded):
    wh, _ = loaded
    _, rows = wh.query('SELECT message_id, original_timestamp, sent_at, "timestamp", received_at '
                       "FROM clickstream.events")
    t = {r[0]: r[1:] for r in rows}
    assert t["epoch-ms"][:2] == (None, None) and t["epoch-ms"][2] == RECEIVED  # numbers are not timestamps
    skew = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) - dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    assert t["skew"][2] == RECEIVED - skew  # 26 years: beyond a 32-bit millisecond DATEADD
    assert t["skew-out"][2] == RECEIVED  # the correction would leave year 1..9999: received_at
    assert t["y1"][0] == dt.datetime(1, 1, 1, tzinfo=dt.UTC) == t["y1"][2]
    assert t["y9999"][0] == dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    assert t["y1970"][0] == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert t["garbage-ts"][:2] == (None, None) and t["garbage-ts"][2] == RECEIVED


def test_rejected_keeps_what_fits_with_the_record_size(loaded):
    wh, _ = loaded
    cols, rows = wh.query("SELECT reason, raw_format, raw_record, record_bytes, message_id FROM clickstream.rejected")
    rows = [dict(zip(cols, r, strict=True)) for r in rows]
    huge = [r for r in rows if r["reason"] == "record_too_large" and r["record_bytes"] > MAX_RECORD_BYTES]
    assert len(huge) == 2
    assert all(r["raw_format"] == "hex" and len(r["raw_record"]) == 64_000 for r in huge)  # first 32,000 bytes
    # under 64,000 bytes as sent, too large as serialised: too large to keep its text
    [grown] = [r for r in rows if r["reason"] == "record_too_large" and r["record_bytes"] <= MAX_RECORD_BYTES]
    assert grown["raw_format"] == "none" and grown["raw_record"] is None  # the archive has it
    garbage = next(r for r in rows if r["raw_record"] and r["raw_record"].startswith("0001676172"))
    assert garbage["record_bytes"] == 45_000
    assert bytes.fromhex(garbage["raw_record"]) == (b"\x00\x01garbage" * 5000)[:32_000]
    long_id = next(r for r in rows if r["message_id"] and r["message_id"].startswith("xxx"))
    assert long_id["message_id"] == "x" * 1024
    dup = next(r for r in rows if r["raw_format"] == "hex" and b"dup-key" in bytes.fromhex(r["raw_record"]))
    assert dup["reason"] == "invalid_json"  # a repeated key is not valid SUPER: CAN_JSON_PARSE is false


def test_replaying_the_corpus_changes_nothing(loaded):
    wh, data_dir = loaded
    before = snapshot(wh)
    load(wh, data_dir, [data for _, data, _ in CORPUS])  # the same records again, new sequence numbers
    assert snapshot(wh) == before


def test_the_local_model_refuses_what_redshift_refuses(tmp_path):
    """The checks are real: bypassing truncation makes the merge fail as Redshift would."""
    wh = Warehouse(tmp_path / "w.duckdb")
    with pytest.raises(duckdb.InvalidInputException, match=r"value too long for type character varying\(1024\)"):
        wh.conn.execute("INSERT INTO clickstream.events (message_id, type, source, received_at, \"timestamp\", "
                        "loaded_at, user_id) SELECT 'm', 'track', 'web', now(), now(), now(), "
                        "redshift_varchar(repeat('é', 600), 1024, 'events.user_id')")
    for sql, message in [("SELECT json_serialize(to_json(repeat('a', 70000)))", "JSON_SERIALIZE"),
                         ("SELECT redshift_json_text(repeat('a', 70000))", "64 KB"),
                         ("SELECT redshift_int32(1764460800000)", "out of range for type integer")]:
        with pytest.raises(duckdb.InvalidInputException, match=message):
            wh.conn.execute(sql)
    merge = "\n".join(s.sql for s in wh._merge)
    assert "redshift_varchar(" in merge.lower() and "json_serialize(" in merge.lower()
    wh.close()


def test_json_too_large_to_serialise_is_rejected_not_fatal(tmp_path):
    """On Redshift a record under 64,000 bytes can serialise to more than JSON_SERIALIZE's 65,535
    bytes (JSON_SIZE says so first); such a row is rejected without its text, not a failed merge."""
    wh = Warehouse(tmp_path / "w.duckdb")
    big = envelope(track("grown", properties={"p": "n" * 70_000})).decode()
    wh.conn.execute("INSERT INTO clickstream.clickstream_stream (approximate_arrival_timestamp, partition_key, "
                    "shard_id, sequence_number, refresh_time, payload, raw_data, record_bytes) "
                    "VALUES (now(), 'k', 'shard-1', '00000000000000000001', now()::TIMESTAMP, ?, NULL, 1000)", [big])
    wh.merge()
    assert wh.query("SELECT reason, raw_format, raw_record, record_bytes FROM clickstream.rejected")[1] == [
        ("record_too_large", "none", None, 1000)]
    wh.close()


# (case, message fields, expected columns). The model reads each value through a type test on the
# SUPER record (IS_VARCHAR, IS_OBJECT, JSON_TYPEOF): a value of the wrong type is NULL, an absent
# one is NULL (not the text 'null'), and numeric identifiers are written as their JSON text.
VALUE_TYPES = [
    ("absent ids stay NULL", {"userId": "u"}, {"group_id": None, "previous_id": None, "anonymous_id": None,
                                                "name": None, "category": None}),
    ("numeric ids as text", {"userId": 123, "anonymousId": -7.5}, {"user_id": "123", "anonymous_id": "-7.5"}),
    ("ids of other types are absent", {"userId": "u", "anonymousId": True, "groupId": {"a": 1}},
     {"anonymous_id": None, "group_id": None}),
    ("non-string fields", {"userId": "u", "name": 5, "category": ["a"], "timestamp": 17644608},
     {"name": None, "category": None, "original_timestamp": None}),
    ("strings with escapes", {"userId": "a\"b\\c\u00e9\n", "event": "Tab\there"},
     {"user_id": "a\"b\\c\u00e9\n", "event_text": "Tab\there"}),
    ("context values of the wrong type fall back to the batch's", {"userId": "u", "context": {
        "locale": 5, "page": "not an object", "ip": None, "library": {"name": 3, "version": "1.0"}}},
     {"context_locale": "en-US", "context_page_url": None, "context_ip": None, "context_library_name": None,
      "context_library_version": "1.0"}),
    ("direct must be the boolean true", {"userId": "u", "context": {"direct": "true", "ip": None}},
     {"context_ip": None}),
    ("direct true takes the request's ip", {"userId": "u", "context": {"direct": True}},
     {"context_ip": "203.0.113.9"}),
    ("properties and traits only as objects", {"userId": "u", "properties": [1, 2], "traits": "x"},
     {"properties": None, "traits": None}),
]


@pytest.mark.parametrize("case,fields,expected", VALUE_TYPES, ids=[c[0] for c in VALUE_TYPES])
def test_each_value_is_read_by_its_json_type(tmp_path, case, fields, expected):
    wh = Warehouse(tmp_path / "warehouse.duckdb")
    message = {"type": "track", "event": "Typed", "messageId": "typed", **fields}
    load(wh, tmp_path, [envelope(message)])
    columns = ", ".join(expected)
    rows = wh.query(f"SELECT {columns} FROM clickstream.events WHERE message_id = 'typed'")[1]
    assert rows == [tuple(expected.values())], wh.query("SELECT reason FROM clickstream.rejected")[1]
    wh.close()
