"""The simulator: realistic, repeatable traffic through the official SDK into the warehouse."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from clickstream.cli import main
from clickstream.simulate import Simulator, run_simulation
from tests.conftest import KEY, free_port


class Recorder:
    """Stands in for the SDK client: records every call."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, method):
        return lambda **kwargs: self.calls.append((method, kwargs))


NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
PAGE_FIELDS = {"url", "path", "title", "referrer", "search"}


def simulated(events: int = 1500, users: int = 30, seed: int = 42, days: float = 7.0) -> tuple[Simulator, Recorder]:
    rec = Recorder()
    sim = Simulator(rec, users=users, seed=seed, days=days, clock=lambda: NOW)
    sim.run(events=events)
    return sim, rec


def visits_by_person(calls) -> dict[str, list[list[tuple[str, dict]]]]:
    """Each anonymous id's events split where 30 minutes pass without one (the usual sessionization)."""
    timeline: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for method, kw in calls:
        timeline[kw.get("anonymous_id") or kw["previous_id"]].append((method, kw))
    out = {}
    for person, events in timeline.items():
        events.sort(key=lambda e: e[1]["timestamp"])
        visits = [[events[0]]]
        for prev, cur in itertools.pairwise(events):
            if cur[1]["timestamp"] - prev[1]["timestamp"] >= dt.timedelta(minutes=30):
                visits.append([])
            visits[-1].append(cur)
        out[person] = visits
    return out


def test_same_seed_same_events_and_realistic_shapes():
    a, b = Recorder(), Recorder()
    Simulator(a, users=20, seed=42, clock=lambda: NOW).run(events=500)
    Simulator(b, users=20, seed=42, clock=lambda: NOW).run(events=500)
    assert a.calls == b.calls and len(a.calls) == 500
    c = Recorder()
    Simulator(c, users=20, seed=43, clock=lambda: NOW).run(events=500)
    assert c.calls != a.calls
    kinds = {m for m, _ in a.calls}
    assert {"page", "track", "identify", "alias", "screen"} <= kinds
    pages = [kw for m, kw in a.calls if m == "page"]
    assert all(kw["context"]["page"]["url"].startswith("https://") and kw["context"]["userAgent"] for kw in pages)
    # a user keeps one anonymous id, and sign-up aliases it to the new user id, after what it did anonymously
    for m, kw in a.calls:
        if m == "alias":
            before = [k for mm, k in a.calls if k.get("anonymous_id") == kw["previous_id"] and mm != "alias"]
            assert before and min(k["timestamp"] for k in before) < kw["timestamp"]
            identify = [k for mm, k in a.calls if mm == "identify" and k["user_id"] == kw["user_id"]]
            assert identify[0]["traits"]["created_at"] == identify[0]["timestamp"].isoformat(timespec="seconds")
    funnel = [kw["event"] for m, kw in a.calls if m == "track"]
    assert "Product Viewed" in funnel and len({kw["message_id"] for _, kw in a.calls if "message_id" in kw}) == 500


def test_visits_spread_over_days_and_events_over_each_visit():
    sim, rec = simulated()
    stamps = [kw["timestamp"] for _, kw in rec.calls]
    assert all(NOW - dt.timedelta(days=7) <= t <= NOW for t in stamps), "nothing outside the window or in the future"
    assert len({t.date() for t in stamps}) >= 7  # 7 days back from noon touch 8 dates
    visits = visits_by_person(rec.calls)
    # visits are 30+ minutes apart, so sessionizing the events finds exactly the visits made
    assert sum(len(v) for v in visits.values()) == sum(u.visits for u in sim.users)
    for person_visits in visits.values():
        for visit in person_visits:
            times = [kw["timestamp"] for _, kw in visit]
            assert times == sorted(times)
            if len(visit) >= 3:
                assert times[-1] - times[0] >= dt.timedelta(seconds=10), "events spread across the visit"
            assert times[-1] - times[0] < dt.timedelta(minutes=30)
    # retention: people come back on other days
    days_active = sorted(len({kw["timestamp"].date() for v in pv for _, kw in v}) for pv in visits.values())
    assert days_active[len(days_active) // 2] >= 3 and days_active[-1] >= 5
    assert sum(1 for pv in visits.values() if len(pv) >= 2) >= 0.8 * len(visits)
    # a short run (fewer visits than users) is spread over the window too, not bunched at its start
    for events, users in [(60, 50), (300, 10)]:
        _, short = simulated(events=events, users=users)
        assert len({kw["timestamp"].date() for _, kw in short.calls}) >= 4
        assert max(kw["timestamp"] for _, kw in short.calls) >= NOW - dt.timedelta(days=3.5)  # second half


def test_page_calls_carry_what_analytics_js_sends():
    _, rec = simulated()
    pages = [kw for m, kw in rec.calls if m == "page"]
    assert len(pages) > 300
    for kw in pages:
        page = kw["context"]["page"]
        assert set(page) == PAGE_FIELDS
        assert kw["properties"] == {**page, "name": kw["name"]}  # analytics.js: page defaults in properties too
        assert page["url"] == f"https://shop.example.com{page['path']}{page['search']}"
        assert page["title"].endswith(" | Shop") and kw["context"]["timezone"] and kw["context"]["locale"]
        campaign = kw["context"].get("campaign")
        if campaign:  # UTM parameters: in the landing URL's search and, parsed, in context.campaign
            query = parse_qs(page["search"].removeprefix("?"))
            assert {k.removeprefix("utm_").replace("campaign", "name"): v for k, (v,) in query.items()} == campaign
        else:
            assert page["search"] == ""
    campaigns = [kw for kw in pages if kw["context"].get("campaign")]
    assert {c["context"]["campaign"]["name"] for c in campaigns} == {"spring_sale", "brand"}
    assert any(kw["context"]["campaign"].get("term") == "clickstream" for kw in campaigns)
    # within a visit each page's referrer is the page before it; the landing page's is external or empty
    internal = 0
    for person_visits in visits_by_person(rec.calls).values():
        for visit in person_visits:
            urls = [kw["context"]["page"]["url"] for m, kw in visit if m == "page"]
            refs = [kw["context"]["page"]["referrer"] for m, kw in visit if m == "page"]
            if urls:
                assert not refs[0].startswith("https://shop.example.com")
                assert refs[1:] == urls[:-1]
                internal += len(urls) - 1
            tracked = [kw for m, kw in visit if m == "track" and kw["event"] == "Checkout Started"]
            assert all(kw["context"]["page"]["path"] == "/checkout" if urls else "page" not in kw["context"]
                       and kw["context"]["app"]["name"] == "Shop" for kw in tracked)
    assert internal > 100


def test_simulated_events_arrive_in_the_warehouse(live_pipeline):
    summary = run_simulation(live_pipeline.url, KEY, users=10, events=300, duration=None, rate=None, seed=1,
                             progress=False, days=3)
    assert summary.events == 300 and summary.errors == 0
    live_pipeline.wait_loaded()
    rows = live_pipeline.query("SELECT type, COUNT(*) AS n FROM clickstream.events GROUP BY type")
    assert {r["type"]: r["n"] for r in rows} == dict(summary.by_type)
    assert live_pipeline.query("SELECT COUNT(*) AS n FROM clickstream.rejected")[0]["n"] == 0
    # the SDK set sentAt at upload; the server's skew correction keeps each event's own time
    [times] = live_pipeline.query(
        "SELECT COUNT(DISTINCT CAST(original_timestamp AS DATE)) AS days, "
        "MAX(ABS(epoch(\"timestamp\") - epoch(original_timestamp))) AS skew, "
        "MIN(epoch(sent_at) - epoch(original_timestamp)) AS min_delay, "
        "MAX(epoch(sent_at) - epoch(original_timestamp)) AS max_delay, "
        "MAX(ABS(epoch(received_at) - epoch(sent_at))) AS upload "
        "FROM clickstream.segment_events")
    assert times["days"] >= 3 and times["skew"] < 5 and times["upload"] < 30
    assert times["min_delay"] >= 0 and times["max_delay"] > 2 * 86400
    # sessions and page context as Segment's tables show them
    pages = live_pipeline.query(
        "SELECT context_page_url AS url, context_page_path AS path, context_page_search AS search, "
        "context_page_referrer AS referrer, context_campaign_name AS campaign, properties FROM clickstream.pages")
    assert len(pages) == summary.by_type["page"]
    for row in pages:
        assert json.loads(row["properties"])["url"] == row["url"] == f"https://shop.example.com{row['path']}" \
            f"{row['search']}"
        assert (row["campaign"] is None) == (row["search"] == "")
    [sessions] = live_pipeline.query(
        "SELECT COUNT(*) AS visits, COUNT(DISTINCT anonymous_id) AS people FROM ("
        " SELECT anonymous_id, \"timestamp\", LAG(\"timestamp\") OVER (PARTITION BY anonymous_id "
        " ORDER BY \"timestamp\") AS prev FROM clickstream.segment_events WHERE anonymous_id IS NOT NULL) "
        "WHERE prev IS NULL OR \"timestamp\" - prev > INTERVAL 30 MINUTE")
    assert sessions["visits"] >= 2 * sessions["people"]


def test_simulate_with_no_server_says_what_to_do_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CLICKSTREAM_HOST", raising=False)
    port = free_port()  # nothing listens there
    began = time.monotonic()
    code = main(["simulate", "--host", f"http://127.0.0.1:{port}", "--events", "5", "--data-dir", str(tmp_path)])
    elapsed = time.monotonic() - began
    captured = capsys.readouterr()
    assert code == 1 and elapsed < 10 and captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith(f"clickstream simulate: nothing answers at http://127.0.0.1:{port} (")
    assert "`make run`" in line and "--host" in line


def test_simulate_finds_the_running_pipeline_without_host(live_pipeline, capsys, monkeypatch):
    """`make run PORT=N` then a bare `clickstream simulate`: the port comes from the running pipeline."""
    monkeypatch.delenv("CLICKSTREAM_HOST", raising=False)
    code = main(["simulate", "--data-dir", str(live_pipeline.data_dir), "--write-key", KEY, "--events", "20",
                 "--seed", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith(f"sent 20 of 20 events to {live_pipeline.url} in ")
    assert out.rstrip().endswith("; 0 failed")
    assert len(live_pipeline.records()) == 20


def test_simulate_with_a_refused_write_key_says_so(live_pipeline, capsys):
    code = main(["simulate", "--host", live_pipeline.url, "--write-key", "not-a-key-at-all", "--events", "5"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.splitlines() == [
        f"clickstream simulate: {live_pipeline.url} refuses the write key 'not-a-key-at-all' (HTTP 401): pass one it "
        "accepts with --write-key (env CLICKSTREAM_WRITE_KEY)"]
    assert live_pipeline.records() == []


class _RefusesEvents(BaseHTTPRequestHandler):
    """Answers the settings probe, refuses every event (a non-retryable 400)."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"code":"invalid_request","message":"nope"}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_simulate_says_0_sent_when_every_event_failed(capsys):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusesEvents)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code = main(["simulate", "--host", f"http://127.0.0.1:{server.server_port}", "--events", "7", "--seed", "1"])
    finally:
        server.shutdown()
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.startswith(f"sent 0 of 7 events to http://127.0.0.1:{server.server_port} in ")
    assert "; 7 failed (" in captured.out and "Traceback" not in captured.err
