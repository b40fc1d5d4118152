"""The live events page's routes over plain HTTP: data, refused requests, SQL, status, same-origin rules."""

from __future__ import annotations

import sqlite3
import time

import httpx
import orjson
import pytest

from clickstream import contract
from clickstream.console import REFUSED_RING, Console, StreamReader, _loopback_host
from clickstream.local import banner
from clickstream.stream import LocalStream
from tests.conftest import KEY, WRITE_KEYS

PAGE = "/_clickstream/"
API = PAGE + "api/"
JSON = {"Content-Type": "application/json"}


def _track(url: str, key: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/track", json=body, auth=(key, ""), headers={"User-Agent": "ui-test"})


def _checkpoints(data_dir) -> dict[str, int]:
    conn = sqlite3.connect(data_dir / "stream.sqlite3")
    try:
        return dict(conn.execute("SELECT consumer, seq FROM checkpoints"))
    finally:
        conn.close()


def test_root_redirects_to_the_page_which_ships_its_own_files(live_pipeline):
    url = live_pipeline.url
    root = httpx.get(url + "/")
    assert root.status_code == 302 and root.headers["location"] == PAGE
    page = httpx.get(url + PAGE)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="app.js"' in page.text and "https://" not in page.text  # no CDN
    js = httpx.get(url + PAGE + "app.js")
    assert js.headers["content-type"].startswith("text/javascript") and "pollEvents" in js.text
    assert "innerHTML" not in js.text  # client-controlled event data is only ever set as text
    css = httpx.get(url + PAGE + "app.css")
    assert css.status_code == 200 and "--accent" in css.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert httpx.get(url + PAGE + "../stream.sqlite3").status_code == 404
    assert httpx.get(url + PAGE + "static/app.js").status_code == 404


def test_live_events_newest_first_with_envelope_and_no_checkpoint_moved(live_pipeline):
    url, data_dir = live_pipeline.url, live_pipeline.data_dir
    for i in range(3):
        body = {"userId": f"user-{i}", "anonymousId": f"anon-{i}", "event": f"Step {i}"}
        assert _track(url, KEY, body).status_code == 200
    assert httpx.post(f"{url}/v1/page", json={"anonymousId": "anon-9", "name": "Pricing"},
                      auth=("server-write-key", "")).status_code == 200
    data = httpx.get(url + API + "events").json()
    assert data["last"] == 4
    assert [e["seq"] for e in data["events"]] == [4, 3, 2, 1]
    # Each record as stored in the stream: its bytes (as text), arrival time and partition key.
    stored = {r.seq: r for r in live_pipeline.raw_records()}
    for item in data["events"]:
        record = stored[item["seq"]]
        assert item["data"].encode() == record.data
        assert (item["arrivalMs"], item["partitionKey"]) == (record.arrival_ms, record.partition_key)
    page = orjson.loads(data["events"][0]["data"])
    assert (page["source"], page["message"]["name"], page["message"]["anonymousId"]) == ("backend", "Pricing", "anon-9")
    # Only what is newer than `after`; filters by source, type and text.
    assert [e["seq"] for e in httpx.get(url + API + "events?after=3").json()["events"]] == [4]
    assert [e["seq"] for e in httpx.get(url + API + "events?source=backend").json()["events"]] == [4]
    assert [e["seq"] for e in httpx.get(url + API + "events?type=track&q=STEP%201").json()["events"]] == [2]
    assert [e["seq"] for e in httpx.get(url + API + "events?limit=2").json()["events"]] == [4, 3]
    # A number that is not ASCII digits ('²' passes str.isdigit) is ignored, not a 500.
    odd = httpx.get(url + API + "events?limit=%C2%B2&after=%D9%A3")
    assert odd.status_code == 200 and [e["seq"] for e in odd.json()["events"]] == [4, 3, 2, 1]
    # Watching the stream is not being a consumer: no checkpoint of its own (its connection is read-only).
    assert set(_checkpoints(data_dir)) <= {"warehouse", "archiver"}


def test_stream_reader_is_read_only(tmp_path):
    stream = LocalStream(tmp_path)
    stream.set_checkpoint("warehouse", 0)
    reader = StreamReader(tmp_path)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.set_checkpoint("warehouse", 99)
        assert reader.checkpoints() == {"warehouse": 0}
    finally:
        reader.close()
        stream.close()


def test_refused_requests_are_listed_with_reason_and_never_stored(live_pipeline):
    url = live_pipeline.url
    bad_key = _track(url, "no-such-key-1", {"userId": "u", "event": "X"})
    assert bad_key.status_code == 401
    bad_json = httpx.post(f"{url}/v1/track", content=b"{not json", auth=(KEY, ""), headers=JSON)
    assert bad_json.status_code == 400
    data = httpx.get(url + API + "rejected").json()
    newest, older = data["refused"][0], data["refused"][1]
    assert (newest["status"], newest["code"], newest["source"], newest["path"]) == (400, "invalid_json", "web",
                                                                                 "/v1/track")
    assert "not valid JSON" in newest["message"] and newest["ip"] == "127.0.0.1"
    assert (older["status"], older["code"], older["source"]) == (401, "invalid_write_key", None)
    assert older["message"] == contract.ERRORS["invalid_write_key"].message
    assert live_pipeline.records() == []  # nothing refused is stored as an event
    ring = httpx.get(url + API + "refused").json()  # the ring alone, without the warehouse query
    assert ring["refused"] == data["refused"] and "warehouse" not in ring
    # The page's own requests are not tracking-API refusals.
    httpx.get(url + API + "nope")
    assert len(httpx.get(url + API + "rejected").json()["refused"]) == 2


def test_records_the_warehouse_rejected_are_listed(live_pipeline):
    url = live_pipeline.url
    assert _track(url, KEY, {"event": "No Identity"}).status_code == 200  # accepted: the model rejects it
    live_pipeline.wait_loaded()
    wh = httpx.get(url + API + "rejected").json()["warehouse"]
    row = dict(zip(wh["columns"], wh["rows"][0], strict=True))
    assert row["reason"] == "missing_user_id_and_anonymous_id" and row["source"] == "web"
    assert '"No Identity"' in row["raw_record"]


def test_refused_ring_is_bounded_and_newest_first(tmp_path):
    console = Console(tmp_path, WRITE_KEYS)
    scope = {"method": "POST", "path": "/v1/track", "client": ("127.0.0.1", 1)}
    for i in range(REFUSED_RING + 50):
        console.refused(scope, {}, 400, b'{"code":"invalid_json","message":"m%d"}' % i)
    kept = console.refusals()
    assert len(kept) == REFUSED_RING
    assert kept[0]["message"] == f"m{REFUSED_RING + 49}" and kept[-1]["message"] == "m50"


def test_query_box_runs_read_only_sql_only(live_pipeline):
    url = live_pipeline.url
    assert _track(url, KEY, {"userId": "user-q", "event": "Queried"}).status_code == 200
    live_pipeline.wait_loaded()
    ok = httpx.post(url + API + "sql", json={"sql": "SELECT event, user_id FROM clickstream.tracks"})
    assert ok.status_code == 200 and ok.json() == {"columns": ["event", "user_id"], "rows": [["queried", "user-q"]]}
    refused = httpx.post(url + API + "sql", json={"sql": "DELETE FROM clickstream.events"})
    assert refused.status_code == 400 and "read-only" in refused.json()["message"]
    assert live_pipeline.query("SELECT COUNT(*) AS n FROM clickstream.events")[0]["n"] == 1
    broken = httpx.post(url + API + "sql", json={"sql": "SELECT * FROM clickstream.nope"})
    assert broken.status_code == 400 and "nope" in broken.json()["message"]
    # A cross-site form can only send simple content types: the SQL route takes JSON only.
    form = httpx.post(url + API + "sql", content=b'{"sql":"SELECT 1"}', headers={"Content-Type": "text/plain"})
    assert form.status_code == 415
    assert httpx.get(url + API + "sql").status_code == 405


def test_status_counts_per_minute_totals_lag_and_processes(live_pipeline):
    url = live_pipeline.url
    for i in range(5):
        assert _track(url, KEY, {"userId": f"u{i}", "event": "Counted"}).status_code == 200
    live_pipeline.wait_loaded()
    time.sleep(2.1)  # the status is cached for two seconds
    status = httpx.get(url + API + "status").json()
    minutes = status["perMinute"]
    assert len(minutes) == 60 and sum(m["events"] for m in minutes) == 5
    assert minutes[-1]["minute"] // 60000 == status["now"] // 60000
    assert status["stream"] == {"records": 5, "lastSeq": 5}
    assert status["warehouse"]["backlog"] == 0 and status["warehouse"]["checkpoint"] == 5
    assert status["warehouse"]["lastMerge"] is not None and status["warehouse"]["error"] is None
    assert status["totals"] == [{"source": "web", "type": "track", "events": 5}]
    archived = status["archive"]["checkpoint"]  # the archiver (1 s buffer) may not have written yet
    assert archived in (5, None) and status["archive"]["backlog"] == 5 - (archived or 0)
    assert status["processes"]["loader+archiver"]["alive"] is True


def test_page_and_data_carry_no_cors_headers_but_tracking_routes_do(live_pipeline):
    url = live_pipeline.url
    origin = {"Origin": "https://shop.example"}
    tracked = httpx.post(f"{url}/v1/track", json={"userId": "u", "event": "E"}, auth=(KEY, ""), headers=origin)
    assert tracked.headers["access-control-allow-origin"] == "*"
    for response in (httpx.get(url + "/"), httpx.get(url + PAGE, headers=origin), httpx.get(url + PAGE + "app.js"),
                     httpx.get(url + API + "events"), httpx.get(url + API + "status"),
                     httpx.get(url + API + "rejected"), httpx.options(url + API + "sql", headers=origin),
                     httpx.post(url + API + "sql", json={"sql": "SELECT 1"})):
        assert not [h for h in response.headers if h.lower().startswith("access-control-")], response.url


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "192.168.1.20:8080", "0.0.0.0:8080",
                                  "127.0.0.1.evil.example", "localhost.evil.example", ""])
def test_a_host_header_not_naming_loopback_is_refused(live_pipeline, host):
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 sends Host: evil.example."""
    for path in ("/", PAGE, API + "events", API + "status"):
        response = httpx.get(live_pipeline.url + path, headers={"Host": host})
        assert response.status_code == 403, path
        assert "loopback" in response.json()["message"]
    refused = httpx.post(live_pipeline.url + API + "sql", json={"sql": "SELECT 1"}, headers={"Host": host})
    assert refused.status_code == 403
    # The tracking API itself does not depend on the Host header.
    assert _track(live_pipeline.url, KEY, {"userId": "u", "event": "E"}).status_code == 200


def test_loopback_hosts_are_served(live_pipeline):
    port = live_pipeline.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", f"127.0.0.2:{port}"):
        assert httpx.get(live_pipeline.url + API + "events", headers={"Host": host}).status_code == 200, host
    assert _loopback_host("LOCALHOST:80") and not _loopback_host("[::2]:80") and not _loopback_host("::ffff:1.2.3.4")


def test_cross_origin_data_requests_are_refused(live_pipeline):
    url = live_pipeline.url
    evil = {"Origin": "http://evil.example", "Content-Type": "application/json"}
    assert httpx.post(url + API + "sql", content=b'{"sql":"SELECT 1"}', headers=evil).status_code == 403
    assert httpx.get(url + API + "events", headers={"Origin": "http://evil.example"}).status_code == 403
    assert httpx.get(url + API + "events", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert httpx.get(url + API + "events", headers={"Origin": "null"}).status_code == 403  # sandboxed, file://
    same = {"Origin": url, "Sec-Fetch-Site": "same-origin"}
    assert httpx.get(url + API + "events", headers=same).status_code == 200
    # The page itself holds no data: a link from elsewhere may open it.
    assert httpx.get(url + PAGE, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_admin_query_route_still_belongs_to_the_collector(live_pipeline):
    """`clickstream query`'s loopback route shares the prefix; without the token it is still a 404."""
    response = httpx.post(live_pipeline.url + "/_clickstream/query", json={"sql": "SELECT 1"})
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_banner_links_the_page(tmp_path):
    text = banner("127.0.0.1", 8080, {"dev-write-key": "dev"}, tmp_path)
    assert "live events: http://127.0.0.1:8080/_clickstream/" in text
    assert "live events: http://127.0.0.1:9000/_clickstream/" in banner("0.0.0.0", 9000, {"k" * 8: "dev"}, tmp_path)


def test_minute_counts_scan_only_new_chunks(tmp_path):
    from clickstream.console import MinuteCounts
    from clickstream.contract import Record
    from clickstream.stream import append, connect, pack

    conn = connect(tmp_path / "stream.sqlite3")
    hour_ago = 1_800_000_000_000 - 3_600_000
    append(conn, [pack([Record("k", b"{}")] * 4)], arrival_ms=hour_ago - 60_000)  # outside the window
    append(conn, [pack([Record("k", b"{}")] * 2)], arrival_ms=hour_ago + 60_000)
    reader = StreamReader(tmp_path)
    counts = MinuteCounts()
    now = 1_800_000_000_000
    first = counts.update(reader, now)
    assert len(first) == 60 and sum(p["events"] for p in first) == 2 and counts.seq == 6
    append(conn, [pack([Record("k", b"{}")] * 3)], arrival_ms=now)
    append(conn, [pack([Record("k", b"{}")])], arrival_ms=now + 1)
    second = counts.update(reader, now + 1)
    assert second[-1] == {"minute": now // 60000 * 60000, "events": 4} and counts.seq == 10
    assert sum(p["events"] for p in second) == 6
    # An hour later the old minutes have left the window.
    assert sum(p["events"] for p in counts.update(reader, now + 3_600_000)) == 0
    reader.close()
    conn.close()


def test_non_loopback_clients_are_refused_even_with_a_loopback_host():
    """With --host 0.0.0.0 the tracking API is on the network; the page and its data are not."""
    headers = {"host": "127.0.0.1:8080"}
    assert Console._refuse({"client": ("192.168.1.5", 50000)}, headers, data=False) == \
        "the live events page answers loopback clients only"
    assert Console._refuse({"client": ("127.0.0.1", 50000)}, headers, data=True) is None
    assert Console._refuse({"client": ("::1", 50000)}, headers, data=True) is None


def test_query_box_says_unavailable_when_the_pipeline_not_the_sql_failed(tmp_path):
    """The admin endpoint answers 503 while the consumer process restarts; the page must say so
    (503 unavailable), not blame the user's SQL (400)."""
    import asyncio
    import http.server
    import json as jsonlib
    import threading

    from clickstream.query import QueryError, run_query, write_state

    class Down(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            body = jsonlib.dumps({"code": "unavailable", "message": "the warehouse process is restarting"}).encode()
            self.send_response(503)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Down)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        write_state(tmp_path, f"http://127.0.0.1:{server.server_port}/_clickstream/query", "token")
        with pytest.raises(QueryError) as caught:
            run_query(tmp_path, "SELECT 1")
        assert caught.value.server_fault and "restarting" in str(caught.value)
        console = Console(tmp_path, WRITE_KEYS)
        status, body = asyncio.run(console.run_sql("SELECT 1"))
        assert (status, body["code"]) == (503, "unavailable")
    finally:
        server.shutdown()
