"""The warehouse's context merge, key by key: a message's own context key hides the batch's, and
ip / userAgent fall back to the request's only for client-side traffic.

Table-driven over every merged key (page, library, locale, campaign, timezone, userAgent, traits,
direct, ip), each from the message, the batch and the request; all cases load in one merge.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clickstream.ingest import RequestInfo, build_records
from clickstream.stream import LocalStream
from clickstream.warehouse import Warehouse

KEYS = {"test-write-key": "web"}
REQUEST_IP, REQUEST_UA = "198.51.100.9", "RequestAgent/1.0"
PAGE_M = {"url": "https://m.example/p?q=1", "path": "/p", "title": "M", "referrer": "https://r.example/",
          "search": "?q=1"}
PAGE_B = {"url": "https://b.example/x", "path": "/x", "title": "B", "referrer": "https://rb.example/",
          "search": "?b=2"}
CAMP_M = {"name": "spring", "source": "news", "medium": "email", "term": "shoes", "content": "top"}
CAMP_B = {"name": "autumn", "source": "ads", "medium": "cpc", "term": "boots", "content": "side"}
PAGE_COLS = ("context_page_url", "context_page_path", "context_page_title", "context_page_referrer",
             "context_page_search")
CAMP_COLS = ("context_campaign_name", "context_campaign_source", "context_campaign_medium",
             "context_campaign_term", "context_campaign_content")


def page(p):
    return dict(zip(PAGE_COLS, (p["url"], p["path"], p["title"], p["referrer"], p["search"]), strict=True))


def camp(c):
    return dict(zip(CAMP_COLS, (c["name"], c["source"], c["medium"], c["term"], c["content"]), strict=True))


NO_PAGE = dict.fromkeys(PAGE_COLS)
NO_CAMP = dict.fromkeys(CAMP_COLS)
SERVER = {"library": {"name": "analytics-python", "version": "2.3.0"}}

# (case id, route, message context, batch context, message fields, expected columns)
CASES = [
    # page
    ("page from message", "batch", {"page": PAGE_M}, {"page": PAGE_B}, {}, page(PAGE_M)),
    ("page from batch", "batch", {}, {"page": PAGE_B}, {}, page(PAGE_B)),
    ("page absent", "batch", {}, {}, {}, NO_PAGE),
    # library
    ("library from message", "batch", {"library": {"name": "m-lib", "version": "1"}},
     {"library": {"name": "b-lib", "version": "2"}}, {}, {"context_library_name": "m-lib",
                                                         "context_library_version": "1"}),
    ("library from batch", "batch", {}, {"library": {"name": "b-lib", "version": "2"}}, {},
     {"context_library_name": "b-lib", "context_library_version": "2"}),
    # locale
    ("locale from message", "batch", {"locale": "de-DE"}, {"locale": "fr-FR"}, {}, {"context_locale": "de-DE"}),
    ("locale from batch", "batch", {}, {"locale": "fr-FR"}, {}, {"context_locale": "fr-FR"}),
    ("locale absent", "batch", {}, {}, {}, {"context_locale": None}),
    # campaign
    ("campaign from message", "batch", {"campaign": CAMP_M}, {"campaign": CAMP_B}, {}, camp(CAMP_M)),
    ("campaign from batch", "batch", {}, {"campaign": CAMP_B}, {}, camp(CAMP_B)),
    ("campaign absent", "batch", {}, {}, {}, NO_CAMP),
    # timezone
    ("timezone from message", "batch", {"timezone": "Europe/Berlin"}, {"timezone": "America/Chicago"}, {},
     {"context_timezone": "Europe/Berlin"}),
    ("timezone from batch", "batch", {}, {"timezone": "America/Chicago"}, {},
     {"context_timezone": "America/Chicago"}),
    ("timezone absent", "batch", {}, {}, {}, {"context_timezone": None}),
    # userAgent: message, batch, then the request's for client-side routes only
    ("userAgent from message", "b", {"userAgent": "MsgAgent"}, {"userAgent": "BatchAgent"}, {},
     {"context_user_agent": "MsgAgent"}),
    ("userAgent from batch", "b", {}, {"userAgent": "BatchAgent"}, {}, {"context_user_agent": "BatchAgent"}),
    ("userAgent from request, client route", "b", {}, {}, {}, {"context_user_agent": REQUEST_UA}),
    ("userAgent not from request, server", "batch", SERVER, {}, {}, {"context_user_agent": None}),
    # ip: message, batch, then the request's for client-side traffic only
    ("ip from message", "batch", {"ip": "203.0.113.1"}, {"ip": "203.0.113.2"}, {}, {"context_ip": "203.0.113.1"}),
    ("ip from batch", "batch", {}, {"ip": "203.0.113.2"}, {}, {"context_ip": "203.0.113.2"}),
    ("ip from request, client route", "t", {}, None, {}, {"context_ip": REQUEST_IP}),
    ("ip not from request, server", "batch", SERVER, {}, {}, {"context_ip": None}),
    ("ip from request, client library", "batch", {"library": {"name": "analytics.js"}}, {}, {},
     {"context_ip": REQUEST_IP}),
    # direct: makes server-side traffic client-side (the request's ip/userAgent); message over batch
    ("direct from message", "batch", {**SERVER, "direct": True}, {"direct": False}, {},
     {"context_ip": REQUEST_IP, "context_user_agent": REQUEST_UA}),
    ("direct from batch", "batch", SERVER, {"direct": True}, {},
     {"context_ip": REQUEST_IP, "context_user_agent": REQUEST_UA}),
    ("direct false in message hides batch", "batch", {**SERVER, "direct": False}, {"direct": True}, {},
     {"context_ip": None, "context_user_agent": None}),
    # traits: the message's own, else context.traits (message over batch)
    ("traits from message", "batch", {"traits": {"plan": "ctx-m"}}, {"traits": {"plan": "ctx-b"}},
     {"traits": {"plan": "own"}}, {"traits": {"plan": "own"}}),
    ("traits from message context", "batch", {"traits": {"plan": "ctx-m"}}, {"traits": {"plan": "ctx-b"}}, {},
     {"traits": {"plan": "ctx-m"}}),
    ("traits from batch context", "batch", {}, {"traits": {"plan": "ctx-b"}}, {}, {"traits": {"plan": "ctx-b"}}),
]


def _records(index: int, route: str, message_ctx: dict, batch_ctx: dict | None, fields: dict):
    message = {"type": "identify" if "traits" in fields else "track", "event": "E", "userId": "u1",
               "messageId": f"case-{index}", "timestamp": "2026-11-28T10:00:00.000Z", **fields}
    if message_ctx:
        message["context"] = message_ctx
    if route in ("batch", "import", "b"):
        body: dict = {"batch": [message], "writeKey": "test-write-key"}
        if batch_ctx is not None:
            body["context"] = batch_ctx
    else:
        body = {**message, "writeKey": "test-write-key"}
    info = RequestInfo(route, f"req-{index}", 1795860000000 + index, REQUEST_IP, REQUEST_UA)
    return build_records(info, json.dumps(body).encode(), KEYS)


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> dict[str, dict]:
    data: Path = tmp_path_factory.mktemp("merge")
    stream = LocalStream(data)
    for i, (_, route, mctx, bctx, fields, _) in enumerate(CASES):
        stream.put(_records(i, route, mctx, bctx, fields))
    wh = Warehouse.in_dir(data)
    wh.load_from(stream)  # every case in one load and one merge
    columns = sorted({c for case in CASES for c in case[5]})
    names, rows = wh.query(f"SELECT message_id, {', '.join(columns)} FROM clickstream.events")
    wh.close()
    stream.close()
    return {row[0]: dict(zip(names[1:], row[1:], strict=True)) for row in rows}


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_context_key_merge(merged, index):
    expected = CASES[index][5]
    row = merged[f"case-{index}"]
    got = {k: (json.loads(row[k]) if k == "traits" and isinstance(row[k], str) else row[k]) for k in expected}
    assert got == expected


def test_every_merged_key_has_message_batch_and_request_cases():
    ids = " ".join(c[0] for c in CASES)
    for key in ("page", "library", "locale", "campaign", "timezone", "userAgent", "traits", "direct", "ip"):
        assert f"{key} from message" in ids and f"{key} from batch" in ids, key
    assert "ip from request" in ids and "userAgent from request" in ids
