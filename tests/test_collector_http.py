"""The local tracking API over real HTTP on loopback: what arrives in the stream, and every refusal."""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import uuid
import zlib

import httpx
import pytest

from clickstream import contract
from clickstream.ingest import RequestIds
from tests.conftest import KEY

BASIC = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}


def post(live, path: str, body, headers=None, raw: bytes | None = None) -> httpx.Response:
    data = raw if raw is not None else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    return httpx.post(live.url + path, content=data, headers=h, timeout=10)


@pytest.mark.parametrize("route,rtype", sorted(contract.SINGLE_ROUTES.items()))
def test_single_routes_store_one_envelope_with_route_type(live_collector, route, rtype):
    message = {"userId": "u-1", "event": "Clicked", "messageId": f"m-{route}", "properties": {"n": 1}}
    r = post(live_collector, f"/v1/{route}", message, BASIC)
    assert r.status_code == 200 and r.json() == {"success": True}
    [rec] = live_collector.records()
    assert rec["message"] == message
    assert rec["route"] == route and rec["routeType"] == rtype and rec["batch"] is None
    assert rec["source"] == "web" and rec["v"] == contract.ENVELOPE_VERSION
    assert rec["index"] == 0 and rec["ip"] == "127.0.0.1"
    assert rec["userAgent"].startswith("python-httpx/")
    assert KEY not in json.dumps({k: v for k, v in rec.items() if k != "message"})


@pytest.mark.parametrize("route", contract.BATCH_ROUTES)
def test_batch_routes_split_into_records_and_keep_batch_fields(live_collector, route):
    batch = [{"type": "track", "event": f"e{i}", "anonymousId": "a", "messageId": f"m{i}"} for i in range(3)]
    body = {"batch": batch, "writeKey": KEY, "sentAt": "2026-01-01T00:00:01Z",
            "context": {"library": {"name": "x"}}, "integrations": {"All": True}}
    r = post(live_collector, f"/v1/{route}", body)
    assert r.status_code == 200
    recs = live_collector.records()
    assert [r["message"] for r in recs] == batch
    assert [r["index"] for r in recs] == [0, 1, 2]
    assert {r["requestId"] for r in recs} == {recs[0]["requestId"]}
    for rec in recs:
        assert rec["route"] == route and rec["routeType"] is None
        assert rec["batch"] == {"sentAt": "2026-01-01T00:00:01Z", "context": {"library": {"name": "x"}},
                                "integrations": {"All": True}}
    keys = [r.partition_key for r in live_collector.raw_records()]
    assert keys == [f"{recs[0]['requestId']}:{i}" for i in range(3)]


def test_request_ids_are_uuids_unique_per_request_and_across_restarts(live_collector):
    for n in range(3):
        assert post(live_collector, "/v1/track", {"event": f"e{n}", "userId": "u", "writeKey": KEY}).status_code == 200
    ids = [r["requestId"] for r in live_collector.records()]
    assert len(set(ids)) == 3 and all(str(uuid.UUID(i)) == i for i in ids)
    # a restarted collector must not hand out the ids of the previous run (messageIds derive from them)
    assert not {RequestIds()() for _ in range(100)} & {RequestIds()() for _ in range(100)}


def test_batch_without_optional_fields_has_nulls(live_collector):
    r = post(live_collector, "/v1/batch", {"batch": [{"type": "identify", "userId": "u"}]}, BASIC)
    assert r.status_code == 200
    [rec] = live_collector.records()
    assert rec["batch"] == {"sentAt": None, "context": None, "integrations": None}


def test_text_plain_body_key_like_analytics_next(live_collector):
    msg = {"type": "page", "anonymousId": "a1", "writeKey": KEY, "name": "Home",
           "messageId": "ajs-next-1700000000000-8f1c", "context": {"page": {"path": "/"}}}
    r = post(live_collector, "/v1/p", msg, {"Content-Type": "text/plain"})
    assert r.status_code == 200
    [rec] = live_collector.records()
    assert rec["message"] == msg and rec["routeType"] == "page"


@pytest.mark.parametrize("encoding,compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_bodies(live_collector, encoding, compress):
    body = {"batch": [{"type": "track", "event": "é✓", "userId": "u"}], "writeKey": KEY}
    r = post(live_collector, "/v1/batch", None, {"Content-Encoding": encoding},
             raw=compress(json.dumps(body).encode()))
    assert r.status_code == 200
    assert live_collector.records()[0]["message"]["event"] == "é✓"


def test_a_gzip_body_of_several_members_is_read_whole(live_collector):
    """RFC 1952 2.2: a gzip file is a series of members; all of them are the body (as gzip -d)."""
    batch = [{"type": "track", "event": f"part-{i}", "userId": "u", "messageId": f"mm-{i}"} for i in range(3)]
    text = json.dumps({"batch": batch, "writeKey": KEY}).encode()
    cuts = [0, 20, len(text) // 2, len(text)]
    raw = b"".join(gzip.compress(text[a:b]) for a, b in itertools.pairwise(cuts))
    r = post(live_collector, "/v1/batch", None, {"Content-Encoding": "gzip"}, raw=raw)
    assert r.status_code == 200
    assert [rec["message"] for rec in live_collector.records()] == batch


def test_basic_auth_without_colon_and_bearer_with_body_key(live_collector):
    no_colon = {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()}
    assert post(live_collector, "/v1/track", {"userId": "u", "event": "a"}, no_colon).status_code == 200
    bearer = {"Authorization": "Bearer some.oauth.token"}
    r = post(live_collector, "/v1/batch", {"batch": [{"type": "track", "userId": "u", "event": "b"}],
                                           "writeKey": "server-write-key"}, bearer)
    assert r.status_code == 200
    assert [r["source"] for r in live_collector.records()] == ["web", "backend"]


def test_settings_endpoint_for_analytics_next(live_collector):
    r = httpx.get(f"{live_collector.url}/v1/projects/{KEY}/settings")
    assert r.status_code == 200
    seg = r.json()["integrations"]["Segment.io"]
    assert seg["apiKey"] == KEY and seg["apiHost"] == live_collector.url.removeprefix("http://") + "/v1"
    assert r.headers["access-control-allow-origin"] == "*"
    r = httpx.get(f"{live_collector.url}/v1/projects/nope-nope-nope/settings")
    assert r.status_code == 401 and r.json()["code"] == "invalid_write_key"


def test_metrics_route_accepts_and_stores_nothing(live_collector):
    r = post(live_collector, "/v1/m", {"series": [{"type": "Counter", "metric": "x", "value": 1}]},
             {"Content-Type": "text/plain"})
    assert r.status_code == 200 and r.json() == {"success": True}
    assert live_collector.records() == []


def test_preflight_lists_authorization_by_name(live_collector):
    r = httpx.options(live_collector.url + "/v1/t", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-retry-count"} <= allowed


GOOD = {"userId": "u", "event": "e"}
BAD_INPUTS = [
    # (name, path, headers, raw body, status, code)
    ("invalid json", "/v1/track", BASIC, b"{not json", 400, "invalid_json"),
    ("empty body", "/v1/track", BASIC, b"", 400, "invalid_json"),
    ("non-utf8", "/v1/track", BASIC, b'{"userId":"\xff\xfe"}', 400, "invalid_json"),
    ("array body", "/v1/track", BASIC, b"[1,2]", 400, "invalid_request"),
    ("deep nesting", "/v1/track", BASIC, b'{"a":' + b"[" * 10000 + b"]" * 10000 + b"}", 400, "invalid_json"),
    ("missing key", "/v1/track", {}, json.dumps(GOOD).encode(), 401, "invalid_write_key"),
    ("wrong key", "/v1/track", {}, json.dumps({**GOOD, "writeKey": "wrong-key-123"}).encode(), 401,
     "invalid_write_key"),
    ("bearer only", "/v1/track", {"Authorization": "Bearer abc"}, json.dumps(GOOD).encode(), 401,
     "invalid_write_key"),
    ("wrong basic", "/v1/track", {"Authorization": "Basic " + base64.b64encode(b"nope-nope:").decode()},
     json.dumps({**GOOD, "writeKey": KEY}).encode(), 401, "invalid_write_key"),
    ("batch not list", "/v1/batch", BASIC, b'{"batch":{"a":1}}', 400, "invalid_request"),
    ("batch missing", "/v1/batch", BASIC, b'{"type":"track"}', 400, "invalid_request"),
    ("empty batch", "/v1/batch", BASIC, b'{"batch":[]}', 400, "empty_batch"),
    ("batch item not object", "/v1/batch", BASIC, b'{"batch":[{"type":"track"}, 3]}', 400, "invalid_request"),
    ("too many items", "/v1/batch", BASIC,
     json.dumps({"batch": [{"type": "track"}] * (contract.MAX_BATCH_ITEMS + 1)}).encode(), 400, "batch_too_large"),
    ("2501 items", "/v1/batch", BASIC, json.dumps({"batch": [{}] * 2501}).encode(), 400, "batch_too_large"),
    ("33 KB message", "/v1/track", BASIC, json.dumps({**GOOD, "p": "x" * 33 * 1024}).encode(), 400,
     "message_too_large"),
    ("33 KB batch item", "/v1/batch", BASIC,
     json.dumps({"batch": [GOOD, {**GOOD, "p": "x" * 33 * 1024}]}).encode(), 400, "message_too_large"),
    ("600 KB batch", "/v1/batch", BASIC,
     json.dumps({"batch": [{**GOOD, "p": "x" * 20000}] * 30}).encode(), 413, "request_too_large"),
    ("unknown route", "/v1/nope", BASIC, b"{}", 404, "not_found"),
    ("wrong content type", "/v1/track", {**BASIC, "Content-Type": "application/xml"}, b"<a/>", 415,
     "unsupported_media_type"),
    ("brotli", "/v1/track", {**BASIC, "Content-Encoding": "br"}, b"xx", 415, "unsupported_encoding"),
    ("truncated gzip", "/v1/track", {**BASIC, "Content-Encoding": "gzip"},
     gzip.compress(json.dumps(GOOD).encode())[:-8], 400, "invalid_encoding"),
    ("not gzip", "/v1/track", {**BASIC, "Content-Encoding": "gzip"}, b"plain", 400, "invalid_encoding"),
    ("gzip bomb", "/v1/batch", {**BASIC, "Content-Encoding": "gzip"},
     gzip.compress(b'{"batch":[' + b" " * (64 * 1024 * 1024) + b"]}"), 413, "request_too_large"),
    # bytes after the end of the compressed data: refused, never ignored behind a 200
    ("gzip + garbage", "/v1/track", {**BASIC, "Content-Encoding": "gzip"},
     gzip.compress(json.dumps(GOOD).encode()) + b"trailing bytes", 400, "invalid_encoding"),
    ("gzip + 2 MB trailer", "/v1/track", {**BASIC, "Content-Encoding": "gzip"},
     gzip.compress(json.dumps(GOOD).encode()) + b"\0" * 2 * 1024 * 1024, 400, "invalid_encoding"),
    ("deflate + second stream", "/v1/track", {**BASIC, "Content-Encoding": "deflate"},
     zlib.compress(json.dumps(GOOD).encode()) + zlib.compress(b" "), 400, "invalid_encoding"),
    # compressed bytes are bounded as well: 40,000 empty members inflate to nothing but are 800 KB
    ("800 KB of empty gzip members", "/v1/track", {**BASIC, "Content-Encoding": "gzip"},
     gzip.compress(json.dumps(GOOD).encode()) + gzip.compress(b"") * 40_000, 413, "request_too_large"),
]


@pytest.mark.parametrize("name,path,headers,raw,status,code", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_documented_error_and_writes_nothing(live_collector, name, path, headers, raw, status,
                                                            code):
    r = post(live_collector, path, None, headers, raw=raw)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and body["message"]
    assert r.headers["access-control-allow-origin"] == "*"
    assert live_collector.records() == []
    # the server is still up and still accepts good data
    assert post(live_collector, "/v1/track", GOOD, BASIC).status_code == 200
    assert len(live_collector.records()) == 1


def test_get_on_tracking_route_is_405(live_collector):
    r = httpx.get(live_collector.url + "/v1/track")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    assert r.headers["allow"] == "POST, OPTIONS"
    assert live_collector.records() == []


def test_routes_and_mounted_apps_extend_the_collector(tmp_path):
    """Hooks for other local features: add_route (JSON handlers) and mount (a whole ASGI app)."""
    import asyncio

    from clickstream.collector import Collector
    from clickstream.stream import GroupCommitWriter
    from tests.conftest import WRITE_KEYS

    app = Collector(WRITE_KEYS, GroupCommitWriter(tmp_path))
    seen = []

    async def ui(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": b"<h1>ui</h1>"})

    async def hello(scope, headers, receive):
        return 200, json.dumps({"hello": headers.get("x-name")}).encode(), []

    app.mount("/_clickstream/ui/", ui)
    app.add_route("/_clickstream/hello", hello)
    with pytest.raises(ValueError):
        app.add_route("/v1/track", hello)  # tracking routes cannot be shadowed
    with pytest.raises(ValueError):
        app.mount("/v1/", ui)

    async def calls():
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://local") as client:
            return (await client.get("/_clickstream/ui/index.html"),
                    await client.get("/_clickstream/hello", headers={"X-Name": "ada"}),
                    await client.post("/_clickstream/hello"),
                    await client.post("/_clickstream/query", json={"sql": "SELECT 1"}))

    page, hello_r, wrong, query = asyncio.run(calls())
    assert page.text == "<h1>ui</h1>" and seen == ["/_clickstream/ui/index.html"]
    assert hello_r.json() == {"hello": "ada"} and hello_r.headers["access-control-allow-origin"] == "*"
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, HEAD, OPTIONS"
    assert query.status_code == 404  # no query function and no token: the admin route stays hidden
